"""The VQ-VAE family (van den Oord et al. 2017): a two-stage pipeline.

config.vq.stage = 'autoencoder' (stage 1) trains encoder, decoder and codebook
(models/vqvae.py) with eq. 3 of the paper, per example
  -log p(x | z_q(x)) + ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2,
the squared errors averaged over the N latents (section 3.2), the middle term dropped
when the codebook follows EMA updates (vq.codebook_update='ema', appendix A.1). The
loss is reported in bits/dim (divided by H W C ln 2). p(x|z) is a discretized logistic
per sub-pixel over the 256 levels (models/distributions.py), so the bound is a discrete
likelihood: with the uniform prior p(z) = K^-N of stage 1, q(z|x) one-hot,
  -log p(x) <= -log p(x | z_q) + N log K               (section 3.1: KL = log K each)
which eval_step reports as `bpd` (the paper's CIFAR-10 4.67 bits/dim, section 4.1).
EMA codebook statistics (and the usage counts that decide dead-code restarts) live
in TrainState.model_state, which the optimizer never sees.

config.vq.stage = 'prior' (stage 2) restores the encoder, decoder and codebook of the
finished stage-1 run in config.vq.autoencoder_workdir (its newest checkpoint; the
params it evaluated with, EMA or raw by its sampling.use_ema), freezes them in
TrainState.model_state['autoencoder'], and trains a (Gated) PixelCNN over the code
map (config.model) with a K-way softmax per latent (section 3.3). Every train step
encodes its batch to codes inside the compiled step. eval_step reports
  bpd = (-log p(x | z_q) - log p_prior(z_q)) / (H W C ln 2),
a proper bound on -log p(x) (Jensen, section 3.2), and the prior's bits per code.
sample() draws codes one latent at a time in one compiled lax.fori_loop (nfe = N
network evaluations on the whole code map), then decodes them.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from datasets import transforms
from models import distributions
from models import masked_conv
from models import vqvae as vq
from sampling import common as sampling_common
from train import contract
from train import optim as optim_lib
from train.checkpoint import Checkpointer
from train.state import TrainState, ema_update

STAGES = ("autoencoder", "prior")
CODEBOOK_UPDATES = ("ema", "loss")
DECODER_OUTPUTS = ("mean", "sample")
_RESTART = 1     # fold_in purpose of the dead-code restart key inside a step's rng


def uniform_prior_bound_bpd(log_likelihood: jax.Array, num_latents: int, num_codes: int,
                            num_dims: int) -> jax.Array:
  """(-log p(x|z_q) + N log K) / (dims ln 2): the stage-1 bound under p(z) = K^-N."""
  return distributions.nats_to_bits_per_dim(
      -log_likelihood + num_latents * math.log(num_codes), num_dims)


# ------------------------------------------------------------------- autoencoder
class Autoencoder:
  """Encoder, quantizer and decoder of a VQ-VAE, from config.model and config.vq.

  Shared by both stages. A `bundle` is {'network': params, 'codebook': [K, D]}: what
  encoding and decoding need, whichever way the codebook was trained.
  """

  def __init__(self, model: ml_collections.ConfigDict, vq_config: ml_collections.ConfigDict,
               image_shape: tuple[int, int, int]):
    self.image_shape = tuple(image_shape)
    h, w, c = self.image_shape
    for field, value in (("ch", model.ch), ("res_ch", model.res_ch),
                         ("num_downsamples", model.num_downsamples)):
      if int(value) < 1:
        raise ValueError(f"config.model.{field} must be >= 1, got {value}.")
    if int(model.num_res_blocks) < 0:
      raise ValueError(f"config.model.num_res_blocks must be >= 0, got "
                       f"{model.num_res_blocks}.")
    factor = 2 ** int(model.num_downsamples)
    if h % factor or w % factor:
      raise ValueError(f"Images of {h}x{w} cannot be halved {model.num_downsamples} times "
                       "(config.model.num_downsamples); use fewer or set "
                       f"config.data.image_size to a multiple of {factor}.")
    for field, value in (("num_codes", vq_config.num_codes), ("code_dim", vq_config.code_dim),
                         ("latents_per_position", vq_config.latents_per_position)):
      if int(value) < 1:
        raise ValueError(f"config.vq.{field} must be >= 1, got {value}.")
    if int(vq_config.num_codes) < 2:
      raise ValueError(f"config.vq.num_codes must be >= 2, got {vq_config.num_codes}.")
    self.num_codes = int(vq_config.num_codes)
    self.code_dim = int(vq_config.code_dim)
    self.groups = int(vq_config.latents_per_position)
    self.latent_shape = (h // factor, w // factor, self.groups)   # codes [h, w, G]
    self.num_latents = math.prod(self.latent_shape)
    self.num_dims = math.prod(self.image_shape)
    self.network = vq.VQAutoencoder(
        num_channels=c, latents_per_position=self.groups, code_dim=self.code_dim,
        ch=int(model.ch), res_ch=int(model.res_ch),
        num_res_blocks=int(model.num_res_blocks),
        num_downsamples=int(model.num_downsamples), params_per_subpixel=2)

  def init_network(self, rng: jax.Array) -> Any:
    x = jnp.zeros((1, *self.image_shape), jnp.float32)
    return self.network.init({"params": rng}, x)["params"]

  def encode(self, network_params, x: jax.Array) -> jax.Array:
    """z_e [B, h, w, G, D] of x in [-1, 1]."""
    return self.network.apply({"params": network_params}, x, method=self.network.encode)

  def decode(self, network_params, z: jax.Array) -> jax.Array:
    """Decoder parameters (mean, log-scale) [B, H, W, C, 2] of z [B, h, w, G, D]."""
    return self.network.apply({"params": network_params}, z, method=self.network.decode)

  @staticmethod
  def log_likelihood(x: jax.Array, decoder_params: jax.Array) -> jax.Array:
    """log p(x|z) in nats [B]: a discretized logistic per sub-pixel."""
    per_subpixel = distributions.discretized_logistic_log_likelihood(
        x, mean=decoder_params[..., 0],
        log_scale=jnp.maximum(decoder_params[..., 1], distributions.MIN_LOG_SCALE))
    return jnp.sum(per_subpixel, axis=(1, 2, 3))

  def encode_codes(self, bundle, images: jax.Array) -> jax.Array:
    """int32 codes [B, h, w, G] of uint8 images."""
    z_e = self.encode(bundle["network"], transforms.uint8_to_centered(images))
    return vq.nearest_codes(z_e, bundle["codebook"])

  def decode_codes(self, bundle, codes: jax.Array, rng: jax.Array,
                   decoder_output: str = "mean") -> jax.Array:
    """uint8 images of codes [N, h, w, G]: the decoder's mean, or a draw from p(x|z)."""
    params = self.decode(bundle["network"], bundle["codebook"][codes])
    mean = params[..., 0]
    if decoder_output == "mean":
      return transforms.centered_to_uint8(mean)
    log_scale = jnp.maximum(params[..., 1], distributions.MIN_LOG_SCALE)
    # Rounding a logistic draw to the nearest level draws from the discretized logistic.
    return transforms.centered_to_uint8(
        mean + jnp.exp(log_scale) * jax.random.logistic(rng, mean.shape))

  def reconstruction(self, bundle, images: jax.Array):
    """(x in [-1, 1], codes, decoder params) of uint8 images through the quantizer."""
    x = transforms.uint8_to_centered(images)
    codes = vq.nearest_codes(self.encode(bundle["network"], x), bundle["codebook"])
    return x, codes, self.decode(bundle["network"], bundle["codebook"][codes])

  def image_grids(self, bundle, images, rng: jax.Array,
                  decoder_output: str) -> dict[str, Any]:
    """Reconstructions, and interpolations between z_e's (quantized, then decoded)."""
    from sampling import latent  # pylint: disable=g-import-not-at-top
    latent_shape = (*self.latent_shape, self.code_dim)

    def encode_fn(x):
      return self.encode(bundle["network"],
                         transforms.uint8_to_centered(x)).reshape(x.shape[0], -1)

    def decode_fn(z):
      z = z.reshape(-1, *latent_shape)
      return self.decode_codes(bundle, vq.nearest_codes(z, bundle["codebook"]), rng,
                               decoder_output)

    return latent.latent_grids(jax.jit(encode_fn), jax.jit(decode_fn), images)


# --------------------------------------------------------------- stage-1 restore
def _read_run_config(workdir: str) -> dict[str, Any]:
  """The flattened config.json that the training loop wrote into `workdir`."""
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    raise ValueError(f"config.vq.autoencoder_workdir={workdir!r} has no config.json: it "
                     "is not a training workdir. Train stage 1 first with "
                     "vq.stage='autoencoder' and --workdir=<that directory>.")
  return json.loads(path.read_text())


def load_autoencoder(workdir: str, config: ml_collections.ConfigDict,
                     image_shape: tuple[int, int, int]):
  """(Autoencoder, bundle of numpy arrays, stage-1 flat config, step) of a finished
  stage-1 run: the newest checkpoint of `workdir`, params by its sampling.use_ema."""
  if not workdir or workdir == "None":
    raise ValueError("config.vq.stage='prior' needs the stage-1 run: set "
                     "--config.vq.autoencoder_workdir=<workdir of a vq.stage="
                     "'autoencoder' run>.")
  if not epath.Path(workdir).is_dir():
    raise ValueError(f"config.vq.autoencoder_workdir={workdir!r} does not exist; train "
                     "stage 1 there first (vq.stage='autoencoder').")
  flat = _read_run_config(workdir)
  if flat.get("model.family") != "vqvae" or flat.get("vq.stage") != "autoencoder":
    raise ValueError(
        f"config.vq.autoencoder_workdir={workdir!r} holds a run of model.family="
        f"{flat.get('model.family')!r}, vq.stage={flat.get('vq.stage')!r}; the prior "
        "stage needs a VQ-VAE stage-1 run (model.family='vqvae', vq.stage='autoencoder').")
  for key, value in (("data.dataset", config.data.dataset),
                     ("data.image_size", config.data.image_size)):
    if str(flat.get(key)) != str(value):
      raise ValueError(f"The stage-1 run in {workdir!r} has {key}={flat.get(key)!r} but "
                       f"this config has {value!r}; the prior must see the same images.")
  # The codes are the stage-1 run's: its saved model and vq fields build the autoencoder.
  saved_vq = dict(num_codes=flat["vq.num_codes"], code_dim=flat["vq.code_dim"],
                  latents_per_position=flat["vq.latents_per_position"])
  for field, value in (("num_codes", config.vq.num_codes), ("code_dim", config.vq.code_dim),
                       ("latents_per_position", config.vq.latents_per_position)):
    if value != saved_vq[field]:
      raise ValueError(f"config.vq.{field}={value} but the stage-1 run in {workdir!r} has "
                       f"{saved_vq[field]}: the prior stage uses the stage-1 codebook; set "
                       f"--config.vq.{field}={saved_vq[field]}.")
  stage1_model = ml_collections.ConfigDict(dict(
      ch=flat["model.ch"], res_ch=flat["model.res_ch"],
      num_res_blocks=flat["model.num_res_blocks"],
      num_downsamples=flat["model.num_downsamples"]))
  stage1_vq = ml_collections.ConfigDict(dict(saved_vq,
                                             codebook_update=flat["vq.codebook_update"]))
  autoencoder = Autoencoder(stage1_model, stage1_vq, image_shape)
  checkpoint_dir = os.path.join(workdir, "checkpoints")
  if not epath.Path(checkpoint_dir).is_dir():
    raise ValueError(f"The stage-1 workdir {workdir!r} has no checkpoints/ directory; "
                     "its training has not saved a checkpoint yet.")
  checkpointer = Checkpointer(checkpoint_dir, async_save=False)
  try:
    if checkpointer.latest_step() is None:
      raise ValueError(f"No checkpoint in {checkpoint_dir}; finish stage 1 first.")
    tree, _, step = checkpointer.restore(None)
  finally:
    checkpointer.close()
  use_ema = bool(flat["sampling.use_ema"])
  params = tree["ema_params"] if use_ema else tree["params"]
  codebook = (tree["model_state"]["codebook"] if stage1_vq.codebook_update == "ema"
              else params["codebook"])
  bundle = jax.tree.map(np.asarray, dict(network=params["network"], codebook=codebook))
  expected = dict(network=jax.eval_shape(autoencoder.init_network, jax.random.PRNGKey(0)),
                  codebook=jax.ShapeDtypeStruct((autoencoder.num_codes,
                                                 autoencoder.code_dim), jnp.float32))
  got = jax.tree.map(lambda x: (x.shape, x.dtype), bundle)
  want = jax.tree.map(lambda x: (tuple(x.shape), x.dtype), expected)
  if jax.tree.structure(got) != jax.tree.structure(want) or got != want:
    raise ValueError(f"The checkpoint at step {step} of {workdir!r} does not match the "
                     "architecture in its config.json; it cannot be restored.")
  return autoencoder, bundle, flat, int(step)


# ------------------------------------------------------------------------ family
class VQVAE(contract.Family):
  """Both stages of a VQ-VAE; config.vq.stage picks one. See the module docstring."""

  def __init__(self, config: ml_collections.ConfigDict, image_shape: tuple[int, int, int],
               num_classes: int):
    self.config = config
    v = config.vq
    self.image_shape = tuple(image_shape)
    self.num_dims = math.prod(self.image_shape)
    if v.stage not in STAGES:
      raise ValueError(f"config.vq.stage={v.stage!r}; choose one of {STAGES}.")
    self.stage = v.stage
    if config.sampling.decoder_output not in DECODER_OUTPUTS:
      raise ValueError(f"config.sampling.decoder_output={config.sampling.decoder_output!r};"
                       f" choose one of {DECODER_OUTPUTS}.")
    self.tx = optim_lib.make_optimizer(config.optim)
    self.num_classes = 0
    if self.stage == "autoencoder":
      self._check_quantizer(v)
      self.autoencoder = Autoencoder(config.model, v, self.image_shape)
      self.frozen_bundle = None
    else:
      self.autoencoder, self.frozen_bundle, self.stage1_config, self.stage1_step = (
          load_autoencoder(v.autoencoder_workdir, config, self.image_shape))
      self.prior = self._prior_network(config.model, num_classes)

  @staticmethod
  def _check_quantizer(vq_config: ml_collections.ConfigDict) -> None:
    v = vq_config
    if v.codebook_update not in CODEBOOK_UPDATES:
      raise ValueError(f"config.vq.codebook_update={v.codebook_update!r}; choose one of "
                       f"{CODEBOOK_UPDATES}.")
    if v.beta < 0:
      raise ValueError(f"config.vq.beta must be >= 0, got {v.beta}.")
    if not 0.0 <= v.ema_decay < 1.0:
      raise ValueError(f"config.vq.ema_decay must be in [0, 1), got {v.ema_decay}.")
    if v.ema_epsilon <= 0 or v.dead_code_threshold < 0:
      raise ValueError("config.vq.ema_epsilon must be > 0 and dead_code_threshold >= 0, "
                       f"got {v.ema_epsilon} and {v.dead_code_threshold}.")

  def _prior_network(self, model: ml_collections.ConfigDict,
                     num_classes: int) -> vq.CodePrior:
    m = model
    groups = self.autoencoder.groups
    if m.name not in vq.PRIOR_NETWORKS:
      raise ValueError(f"config.model.name={m.name!r}; the prior is one of "
                       f"{vq.PRIOR_NETWORKS}.")
    if m.conditional:
      if num_classes <= 0:
        raise ValueError(f"config.model.conditional=True but {self.config.data.dataset!r} "
                         "has no class labels.")
      if m.name != "gated_pixelcnn":
        raise ValueError("Only the Gated PixelCNN prior is class-conditional; set "
                         "model.name='gated_pixelcnn' or model.conditional=False.")
      self.num_classes = num_classes
    if m.ch < groups or m.head_features < groups:
      raise ValueError(f"config.model.ch={m.ch} and head_features={m.head_features} must "
                       f"be >= vq.latents_per_position={groups} of the stage-1 run (one "
                       "feature group per latent of a position).")
    if m.num_layers < 1 or m.embed_dim < 1:
      raise ValueError(f"config.model.num_layers and embed_dim must be >= 1, got "
                       f"{m.num_layers} and {m.embed_dim}.")
    masked_conv.check_kernel_sizes(m.kernel_size, m.first_kernel_size)
    return vq.CodePrior(
        num_codes=self.autoencoder.num_codes, latents_per_position=groups, network=m.name,
        embed_dim=m.embed_dim, ch=m.ch, num_layers=m.num_layers,
        kernel_size=m.kernel_size, first_kernel_size=m.first_kernel_size,
        head_features=m.head_features, num_classes=self.num_classes)

  # ------------------------------------------------------------------ state
  def init(self, rng: jax.Array, example_batch: dict[str, Any]) -> TrainState:
    del example_batch   # shapes come from image_shape
    net_rng, code_rng = jax.random.split(rng)
    if self.stage == "prior":
      codes = jnp.zeros((1, *self.autoencoder.latent_shape), jnp.int32)
      y = jnp.zeros((1,), jnp.int32) if self.num_classes else None
      params = self.prior.init({"params": net_rng}, codes, y)["params"]
      model_state = dict(autoencoder=jax.tree.map(jnp.asarray, self.frozen_bundle))
    else:
      ae, v = self.autoencoder, self.config.vq
      codebook = vq.init_codebook(code_rng, ae.num_codes, ae.code_dim)
      params = dict(network=ae.init_network(net_rng))
      # Usage starts at one assignment per code (see RESTART_COUNT); with EMA updates
      # m = N e, so that eq. 8 gives back the initial codebook.
      model_state = dict(cluster_size=jnp.ones((ae.num_codes,), jnp.float32))
      if v.codebook_update == "ema":
        model_state.update(codebook=codebook, embed_sum=codebook)
      else:
        params["codebook"] = codebook
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=self.tx.init(params), rng=jax.random.fold_in(rng, 1),
                      model_state=model_state, tx=self.tx)

  def sampling_params(self, state: TrainState, use_ema: bool = True) -> dict[str, Any]:
    """What eval_step, sample and image_grids take: a stage-1 bundle
    {'network', 'codebook'}, or {'prior', 'autoencoder': bundle} in stage 2."""
    params = state.ema_params if use_ema else state.params
    if self.stage == "prior":
      return dict(prior=params, autoencoder=state.model_state["autoencoder"])
    return self._bundle(params, state.model_state)

  def _bundle(self, params, model_state) -> dict[str, Any]:
    codebook = (model_state["codebook"] if self.config.vq.codebook_update == "ema"
                else params["codebook"])
    return dict(network=params["network"], codebook=codebook)

  def _autoencoder_bundle(self, params) -> dict[str, Any]:
    return params["autoencoder"] if self.stage == "prior" else params

  # --------------------------------------------------------------- stage 1
  def autoencoder_loss(self, params, model_state, images: jax.Array):
    """Eq. 3 in bits/dim (batch mean), and what the codebook update needs."""
    ae, v = self.autoencoder, self.config.vq
    bundle = self._bundle(params, model_state)
    x = transforms.uint8_to_centered(images)
    z_e = ae.encode(params["network"], x)
    codes = vq.nearest_codes(jax.lax.stop_gradient(z_e),
                             jax.lax.stop_gradient(bundle["codebook"]))
    z_q = bundle["codebook"][codes]
    log_lik = ae.log_likelihood(x, ae.decode(params["network"],
                                             vq.straight_through(z_e, z_q)))
    commitment = vq.commitment_loss(z_e, z_q)
    codebook_term = (vq.codebook_loss(z_e, z_q) if v.codebook_update == "loss"
                     else jnp.zeros_like(commitment))
    objective = jnp.mean(-log_lik + codebook_term + v.beta * commitment)
    loss = distributions.nats_to_bits_per_dim(objective, self.num_dims)
    counts = vq.code_counts(codes, ae.num_codes)
    metrics = dict(
        loss=loss,
        recon_bpd=distributions.nats_to_bits_per_dim(-jnp.mean(log_lik), self.num_dims),
        bpd_uniform_prior=jnp.mean(uniform_prior_bound_bpd(
            log_lik, ae.num_latents, ae.num_codes, self.num_dims)),
        commitment=jnp.mean(commitment), codebook_loss=jnp.mean(codebook_term),
        perplexity=vq.perplexity(counts),
        codes_used=jnp.mean((counts > 0).astype(jnp.float32)))
    return loss, (metrics, jax.lax.stop_gradient(z_e), codes)

  def _update_codebook(self, params, model_state, z_e, codes, rng):
    """EMA statistics (appendix A.1) or usage counts, then dead-code restarts."""
    v, k = self.config.vq, self.autoencoder.num_codes
    z = z_e.reshape(-1, z_e.shape[-1])
    flat_codes = codes.reshape(-1)
    if v.codebook_update == "ema":
      size, embed_sum, codebook = vq.ema_codebook_update(
          model_state["cluster_size"], model_state["embed_sum"], z, flat_codes,
          decay=v.ema_decay, epsilon=v.ema_epsilon)
    else:
      size = (v.ema_decay * model_state["cluster_size"]
              + (1.0 - v.ema_decay) * vq.code_counts(flat_codes, k))
      embed_sum, codebook = None, params["codebook"]
    dead = jnp.zeros((k,), bool)
    if v.dead_code_threshold > 0:
      codebook, size, embed_sum, dead = vq.restart_dead_codes(
          codebook, size, z, rng, v.dead_code_threshold, embed_sum)
    model_state = dict(model_state, cluster_size=size)
    if v.codebook_update == "ema":
      model_state.update(codebook=codebook, embed_sum=embed_sum)
    else:
      params = dict(params, codebook=codebook)
    return params, model_state, jnp.mean(dead.astype(jnp.float32))

  # --------------------------------------------------------------- stage 2
  def _labels(self, batch: dict[str, Any]) -> jax.Array | None:
    return batch["label"].astype(jnp.int32) if self.num_classes else None

  def prior_log_prob(self, prior_params, codes: jax.Array,
                     y: jax.Array | None) -> jax.Array:
    """log p_prior(codes) in nats [B], teacher-forced."""
    logits = self.prior.apply({"params": prior_params}, codes, y)
    log_probs = distributions.categorical_log_likelihood(codes, logits)
    return jnp.sum(log_probs.reshape(codes.shape[0], -1), axis=-1)

  def prior_loss(self, prior_params, bundle, batch: dict[str, Any]):
    codes = self.autoencoder.encode_codes(bundle, batch["image"])
    log_prob = self.prior_log_prob(prior_params, codes, self._labels(batch))
    bits_per_code = distributions.nats_to_bits_per_dim(-jnp.mean(log_prob),
                                                       self.autoencoder.num_latents)
    return bits_per_code, dict(loss=bits_per_code, bits_per_code=bits_per_code)

  # ------------------------------------------------------------------ steps
  def train_step(self, state: TrainState, batch: dict[str, Any]):
    rng = jax.random.fold_in(state.rng, state.step)
    model_state = state.model_state
    if self.stage == "prior":
      grads, metrics = jax.grad(self.prior_loss, has_aux=True)(
          state.params, model_state["autoencoder"], batch)
    else:
      grads, (metrics, z_e, codes) = jax.grad(self.autoencoder_loss, has_aux=True)(
          state.params, model_state, batch["image"])
    new_state, step_metrics = optim_lib.apply_gradients(state, grads, self.config.optim)
    metrics = dict(metrics, **step_metrics)
    if self.stage == "autoencoder":
      params, model_state, restarted = self._update_codebook(
          new_state.params, model_state, z_e, codes, jax.random.fold_in(rng, _RESTART))
      metrics["codes_restarted"] = restarted
      if "codebook" in params:
        # Dead-code restarts replace rows of a trained codebook after the update: its
        # EMA is taken of the restarted codebook (EMA is per leaf).
        ema = dict(new_state.ema_params, codebook=ema_update(
            state.ema_params["codebook"], params["codebook"], self.config.optim.ema_decay))
        new_state = new_state.replace(params=params, ema_params=ema)
    return new_state.replace(model_state=model_state), metrics

  def eval_step(self, params, batch: dict[str, Any], rng: jax.Array) -> dict[str, jax.Array]:
    """Per-example bits/dim of the bound (uniform prior in stage 1, the learned prior in
    stage 2), reconstruction bits/dim and MSE (in [-1, 1] units of the decoder mean)."""
    del rng
    ae = self.autoencoder
    bundle = self._autoencoder_bundle(params)
    x, codes, decoder_params = ae.reconstruction(bundle, batch["image"])
    log_lik = ae.log_likelihood(x, decoder_params)
    out = dict(recon_bpd=distributions.nats_to_bits_per_dim(-log_lik, self.num_dims),
               recon_mse=jnp.mean(jnp.square(decoder_params[..., 0] - x), axis=(1, 2, 3)))
    uniform = uniform_prior_bound_bpd(log_lik, ae.num_latents, ae.num_codes, self.num_dims)
    if self.stage == "autoencoder":
      out["bpd"] = uniform
    else:
      prior_nll = -self.prior_log_prob(params["prior"], codes, self._labels(batch))
      out.update(bpd=distributions.nats_to_bits_per_dim(-log_lik + prior_nll, self.num_dims),
                 bpd_uniform_prior=uniform,
                 bits_per_code=distributions.nats_to_bits_per_dim(prior_nll, ae.num_latents))
    return out

  # --------------------------------------------------------------- sampling
  def sample_codes(self, prior_params, rng: jax.Array, num_samples: int) -> jax.Array:
    """Codes [N, h, w, G] from the prior, one latent at a time (raster order, then the
    G latents of a position) in one lax.fori_loop; key of latent t: fold_in(rng, t)."""
    h, w, g = self.autoencoder.latent_shape
    y = sampling_common.cycled_labels(num_samples, self.num_classes)

    def body(t, canvas):
      i, rest = jnp.divmod(t, w * g)
      j, group = jnp.divmod(rest, g)
      logits = self.prior.apply({"params": prior_params}, canvas, y)
      k = logits.shape[-1]
      logits = jax.lax.dynamic_slice(logits, (0, i, j, group, 0),
                                     (num_samples, 1, 1, 1, k)).reshape(num_samples, k)
      value = jax.random.categorical(jax.random.fold_in(rng, t), logits, axis=-1)
      return jax.lax.dynamic_update_slice(
          canvas, value.astype(jnp.int32).reshape(num_samples, 1, 1, 1), (0, i, j, group))

    return jax.lax.fori_loop(0, h * w * g, body,
                             jnp.zeros((num_samples, h, w, g), jnp.int32))

  def sample(self, params, rng: jax.Array, num_samples: int) -> jax.Array:
    """uint8 NHWC: codes from the learned prior (stage 2) or the uniform prior of
    stage 1, decoded."""
    code_rng, decode_rng = jax.random.split(rng)
    ae = self.autoencoder
    if self.stage == "prior":
      codes = self.sample_codes(params["prior"], code_rng, num_samples)
    else:
      codes = jax.random.randint(code_rng, (num_samples, *ae.latent_shape), 0,
                                 ae.num_codes)
    return ae.decode_codes(self._autoencoder_bundle(params), codes, decode_rng,
                           self.config.sampling.decoder_output)

  def sampler_settings(self) -> dict[str, Any]:
    ae = self.autoencoder
    settings = dict(latent_shape=list(ae.latent_shape), num_codes=ae.num_codes,
                    decoder_output=self.config.sampling.decoder_output,
                    use_ema=self.config.sampling.use_ema, stage=self.stage)
    if self.stage == "autoencoder":
      # Stage 1's own generative model: p(z) uniform, one decoder call.
      return dict(settings, sampler="uniform_prior_codes", nfe=1)
    return dict(settings, sampler="naive_autoregressive_codes", nfe=ae.num_latents,
                evaluation="whole code map", network=self.config.model.name,
                order="raster, then the latents of a position",
                conditional=bool(self.num_classes),
                autoencoder_workdir=str(self.config.vq.autoencoder_workdir),
                autoencoder_step=self.stage1_step)

  def image_grids(self, params, images, rng: jax.Array) -> dict[str, Any]:
    """Reconstructions and z_e interpolation grids of real images (sampling/latent.py)."""
    return self.autoencoder.image_grids(self._autoencoder_bundle(params), images, rng,
                                        self.config.sampling.decoder_output)
