"""The hierarchical VAE family: a very deep top-down VAE (Child 2021, "VDVAE").

Model (models/hvae.py): latents z_1..z_L, one per decoder block, each zdim channels
per position of its resolution, with
  p(x, z) = p(z_1) prod_i p(z_i | z_<i) p(x | z),   q(z | x) = prod_i q(z_i | x, z_<i),
all conditionals diagonal Gaussians and p(x | z) PixelCNN++'s discretized logistic
mixture over the 256 levels of each sub-pixel (models/logistic_mixture.py).

Objective: the negative ELBO (Child 2021, eq. 1; Sonderby et al. 2016)
  -ELBO = E_q[-log p(x | z)] + sum_i E_q(z_<i)[KL(q(z_i | x, z_<i) || p(z_i | z_<i))],
with one reparameterized sample of z and each layer's KL in closed form given that
sample's z_<i. The reported loss is in bits per dimension. The gradient is taken of
the same bound in nats per dimension, VDVAE's unit, so that its gradient-norm
thresholds mean what they mean there:
- clipping: the gradient is rescaled to global norm <= hvae.grad_clip;
- skipping: when the norm before clipping is >= hvae.skip_threshold, or the loss or
  the norm is not finite, the update is skipped whole (params, optimizer state and
  EMA stay bit-identical; only the step counter moves) (Child 2021, sec. 5.2).
Skipped steps are counted in the metric 'skipped'. A skipped step with a NaN loss
still reports that loss; the configs turn training.halt_on_nonfinite off, since the
skip keeps every NaN out of the weights.

The encoder sees the images standardized with hvae.input_mean / input_std (VDVAE
uses the training set's mean and standard deviation); the likelihood is of the
images scaled to [-1, 1].

Evaluation reports the ELBO from one posterior draw and, with config.eval.iwae_samples
= k > 0, the importance-weighted bound (Burda et al. 2016, eq. 8) with
  log w = log p(x | z) + sum_i [log p(z_i | z_<i) - log q(z_i | x, z_<i)],
z ~ q drawn top-down k times (the encoder runs once; the decoder k times, in chunks of
config.eval.iwae_chunk). L_k >= ELBO, and tends to log p(x) as k grows.

Sampling runs the decoder top-down from the prior, each prior's standard deviation
multiplied by config.sampling.temperature, and draws x from the mixture.
"""

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from datasets import transforms
from evaluation import iwae as iwae_lib
from models import distributions
from models import hvae as hvae_models
from models import logistic_mixture
from train import contract
from train import optim as optim_lib
from train.state import TrainState


def layer_kls(stats: Sequence[dict[str, jax.Array]]) -> jax.Array:
  """Per-example KL of every latent layer, summed over its positions: [L, B] nats."""
  return jnp.stack([
      jnp.sum(distributions.gaussian_kl(s["q_mean"], 2.0 * s["q_log_std"],
                                        s["p_mean"], 2.0 * s["p_log_std"]),
              axis=(1, 2, 3)) for s in stats])


class HierarchicalVAE(contract.Family):
  """A VDVAE-style hierarchical VAE; see the module docstring."""

  def __init__(self, config: ml_collections.ConfigDict, image_shape: tuple[int, int, int],
               num_classes: int):
    del num_classes   # unconditional
    self.config = config
    h = config.hvae
    self.image_shape = tuple(image_shape)
    self.num_dims = math.prod(self.image_shape)
    height, width, channels = self.image_shape
    if height != width:
      raise ValueError(f"The hierarchical VAE needs square images, got {height}x{width}; "
                       "set config.data.image_size.")
    if channels not in logistic_mixture.SUPPORTED_CHANNELS:
      raise ValueError(f"The mixture likelihood models 1 or 3 channels, got {channels}.")
    enc = hvae_models.parse_block_spec(h.enc_blocks)
    dec = hvae_models.parse_block_spec(h.dec_blocks)
    try:
      enc_res = hvae_models.encoder_resolutions(enc, height)
      hvae_models.check_decoder_spec(dec, height, enc_res)
    except ValueError as e:
      raise ValueError(f"{e} (config.hvae.enc_blocks={h.enc_blocks!r}, "
                       f"config.hvae.dec_blocks={h.dec_blocks!r})") from None
    if config.model.ch < 1 or h.zdim < 1 or h.num_mixtures < 1:
      raise ValueError("config.model.ch, config.hvae.zdim and config.hvae.num_mixtures "
                       f"must be >= 1, got {config.model.ch}, {h.zdim}, {h.num_mixtures}.")
    if not 0.0 < h.bottleneck_multiple <= 4.0:
      raise ValueError("config.hvae.bottleneck_multiple must be in (0, 4], got "
                       f"{h.bottleneck_multiple}.")
    if h.grad_clip <= 0:
      raise ValueError(f"config.hvae.grad_clip must be > 0, got {h.grad_clip}.")
    if h.input_std <= 0:
      raise ValueError(f"config.hvae.input_std must be > 0, got {h.input_std}.")
    if config.optim.grad_clip_norm:
      raise ValueError("The hierarchical VAE clips inside its step (config.hvae.grad_clip, "
                       "which it also needs for skipping); set config.optim.grad_clip_norm"
                       "=0.")
    if config.sampling.temperature <= 0:
      raise ValueError("config.sampling.temperature must be > 0, got "
                       f"{config.sampling.temperature}.")
    self.iwae_samples = config.eval.iwae_samples
    if self.iwae_samples:
      iwae_lib.check_num_samples(self.iwae_samples, config.eval.iwae_chunk)
    self.network = hvae_models.HierarchicalVAENetwork(
        image_shape=self.image_shape, enc_blocks=enc, dec_blocks=dec,
        width=config.model.ch, zdim=h.zdim, bottleneck_multiple=h.bottleneck_multiple,
        num_mixtures=h.num_mixtures)
    self.dec_blocks = dec
    self.tx = optim_lib.make_optimizer(config.optim)

  # ------------------------------------------------------------------ data
  def prepare(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """uint8 images -> (encoder input, likelihood target in [-1, 1])."""
    h = self.config.hvae
    x = images.astype(jnp.float32)
    return (x - h.input_mean) / h.input_std, transforms.uint8_to_centered(images)

  # ------------------------------------------------------------ networks
  def _apply(self, params, *args, method=None, rng=None, **kwargs):
    rngs = {"latent": rng} if rng is not None else {}
    if method is not None:
      kwargs["method"] = method
    return self.network.apply({"params": params}, *args, rngs=rngs, **kwargs)

  def log_likelihood(self, target: jax.Array, mixture_params: jax.Array) -> jax.Array:
    """log p(x | z) in nats per example [B]; target in [-1, 1]."""
    return logistic_mixture.log_prob(target, mixture_params,
                                     num_mixtures=self.config.hvae.num_mixtures)

  def negative_elbo_terms(self, params, images: jax.Array, rng: jax.Array):
    """(-log p(x | z) [B], per-layer KL [L, B]) in nats for one draw z ~ q(z | x)."""
    x_in, target = self.prepare(images)
    mixture_params, stats = self._apply(params, x_in, rng=rng)
    return -self.log_likelihood(target, mixture_params), layer_kls(stats)

  # ------------------------------------------------------------------ training
  def init(self, rng: jax.Array, example_batch: dict[str, Any]) -> TrainState:
    x_in, _ = self.prepare(example_batch["image"][:1])
    params = self.network.init({"params": rng, "latent": jax.random.fold_in(rng, 2)},
                               x_in)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=self.tx.init(params), rng=jax.random.fold_in(rng, 1),
                      tx=self.tx)

  def objective(self, params, batch: dict[str, Any], rng: jax.Array):
    """The negative ELBO in nats per dimension (what is differentiated), and metrics."""
    recon, kls = self.negative_elbo_terms(params, batch["image"], rng)
    kl = jnp.sum(kls, axis=0)
    nats_per_dim = jnp.mean(recon + kl) / self.num_dims
    bpd = distributions.nats_to_bits_per_dim(jnp.mean(recon + kl), self.num_dims)
    metrics = dict(loss=bpd, bpd_elbo=bpd,
                   recon_bpd=distributions.nats_to_bits_per_dim(jnp.mean(recon), self.num_dims),
                   kl_bpd=distributions.nats_to_bits_per_dim(jnp.mean(kl), self.num_dims),
                   recon_nats=jnp.mean(recon), kl_nats=jnp.mean(kl),
                   # Latent layers carrying information (a cheap collapse monitor).
                   active_layers=jnp.sum(jnp.mean(kls, axis=1) > 0.01))
    return nats_per_dim, metrics

  def train_step(self, state: TrainState, batch: dict[str, Any]):
    h = self.config.hvae
    rng = jax.random.fold_in(state.rng, state.step)
    grads, metrics = jax.grad(self.objective, has_aux=True)(state.params, batch, rng)
    state, step_metrics = optim_lib.apply_gradients(
        state, grads, self.config.optim, loss=metrics["loss"], clip_norm=h.grad_clip,
        skip_threshold=h.skip_threshold)
    return state, dict(metrics, **step_metrics)

  # ---------------------------------------------------------------- evaluation
  def log_importance_weights(self, params, images: jax.Array, rng: jax.Array,
                             num_draws: int) -> dict[str, jax.Array]:
    """log w and log p(x | z) [num_draws, B] in nats for z ~ q(z | x) (module docstring).

    The encoder runs once; its activations are repeated for the num_draws * B
    top-down passes.
    """
    x_in, target = self.prepare(images)
    batch = images.shape[0]
    activations = self._apply(params, x_in, method=self.network.encode)
    tiled = {r: jnp.tile(a, (num_draws, 1, 1, 1)) for r, a in activations.items()}
    mixture_params, stats = self._apply(params, tiled, num_draws * batch,
                                        method=self.network.decode, rng=rng)
    log_lik = self.log_likelihood(jnp.tile(target, (num_draws, 1, 1, 1)), mixture_params)
    log_w = log_lik
    for s in stats:
      log_p = iwae_lib.diagonal_gaussian_log_prob(s["z"], s["p_mean"], s["p_log_std"])
      log_q = iwae_lib.diagonal_gaussian_log_prob(s["z"], s["q_mean"], s["q_log_std"])
      # Summed over the last axis above; the positions remain.
      log_w = log_w + jnp.sum((log_p - log_q).reshape(num_draws * batch, -1), axis=-1)
    return dict(log_w=log_w.reshape(num_draws, batch),
                log_lik=log_lik.reshape(num_draws, batch))

  def eval_step(self, params, batch: dict[str, Any], rng: jax.Array) -> dict[str, jax.Array]:
    """Per-example bits/dim of the ELBO (one posterior sample), and its parts.

    Also the KL per resolution, in nats: 'kl_nats_res{r}', and with
    config.eval.iwae_samples = k > 0 the IWAE bound 'bpd_iwae' (k draws).
    """
    elbo_rng, iwae_rng = jax.random.split(rng)
    recon, kls = self.negative_elbo_terms(params, batch["image"], elbo_rng)
    kl = jnp.sum(kls, axis=0)
    to_bpd = distributions.nats_to_bits_per_dim(1.0, self.num_dims)   # per nat
    out = dict(bpd_elbo=(recon + kl) * to_bpd, recon_nats=recon, kl_nats=kl)
    for r in sorted({b.resolution for b in self.dec_blocks}):
      rows = [i for i, b in enumerate(self.dec_blocks) if b.resolution == r]
      out[f"kl_nats_res{r}"] = jnp.sum(kls[jnp.asarray(rows)], axis=0)
    if self.iwae_samples:
      bounds = iwae_lib.chunked_log_mean_weight(
          lambda key, n: self.log_importance_weights(params, batch["image"], key, n),
          iwae_rng, num_samples=self.iwae_samples,
          chunk_size=self.config.eval.iwae_chunk)
      out["bpd_iwae"] = -bounds["iwae"] * to_bpd
    return out

  # ------------------------------------------------------------------ sampling
  def _draw_images(self, mixture_params: jax.Array, rng: jax.Array) -> jax.Array:
    return transforms.centered_to_uint8(logistic_mixture.sample(
        rng, mixture_params, num_mixtures=self.config.hvae.num_mixtures))

  def sample(self, params, rng: jax.Array, num_samples: int) -> jax.Array:
    """uint8 NHWC images: z top-down from the prior at the temperature, then x ~ p(x|z)."""
    z_rng, x_rng = jax.random.split(rng)
    mixture_params, _ = self._apply(params, num_samples, self.config.sampling.temperature,
                                    method=self.network.sample_prior, rng=z_rng)
    return self._draw_images(mixture_params, x_rng)

  def sampler_settings(self) -> dict[str, Any]:
    h = self.config.hvae
    return dict(sampler="top_down_prior", temperature=self.config.sampling.temperature,
                num_latent_layers=len(self.dec_blocks), zdim=h.zdim,
                decoder="logistic_mixture", num_mixtures=h.num_mixtures, nfe=1,
                use_ema=self.config.sampling.use_ema)

  # ----------------------------------------------------------- latent tools
  def latent_shapes(self) -> list[tuple[int, int, int]]:
    return [(b.resolution, b.resolution, self.config.hvae.zdim) for b in self.dec_blocks]

  def flatten_latents(self, latents: Sequence[jax.Array]) -> jax.Array:
    return jnp.concatenate([z.reshape(z.shape[0], -1) for z in latents], axis=-1)

  def unflatten_latents(self, flat: jax.Array) -> list[jax.Array]:
    out, start = [], 0
    for shape in self.latent_shapes():
      size = math.prod(shape)
      out.append(flat[:, start:start + size].reshape(flat.shape[0], *shape))
      start += size
    return out

  def encode_images(self, params, images: jax.Array) -> jax.Array:
    """All posterior means, top-down with z_<i at their means, flattened: [N, D]."""
    x_in, _ = self.prepare(images)
    _, stats = self._apply(params, x_in, posterior_mean=True)
    return self.flatten_latents([s["z"] for s in stats])

  def decode_images(self, params, flat_latents: jax.Array, rng: jax.Array,
                    num_fixed: int | jax.Array | None = None,
                    temperature: float | jax.Array = 1.0) -> jax.Array:
    """uint8 images from flattened latents; layers from `num_fixed` on are drawn from
    the prior at `temperature` instead (num_fixed may be traced: one compilation)."""
    latents = self.unflatten_latents(flat_latents)
    keep = None
    if num_fixed is not None:
      keep = jnp.arange(len(latents)) < num_fixed
    z_rng, x_rng = jax.random.split(rng)
    mixture_params, _ = self._apply(params, latents, temperature, keep,
                                    method=self.network.decode_latents, rng=z_rng)
    return self._draw_images(mixture_params, x_rng)

  def image_grids(self, params, images, rng: jax.Array) -> dict[str, Any]:
    """Reconstructions and interpolations (all latents), and VDVAE's prefix grid.

    'latent_prefixes': the inputs, then rows decoded with the first k latent layers
    fixed to the posterior means and the rest drawn from the prior at temperature 0.1
    (Child 2021, fig. 4), for a few k from coarse to fine.
    """
    import numpy as np  # pylint: disable=g-import-not-at-top
    from sampling import image_io, latent  # pylint: disable=g-import-not-at-top
    encode = jax.jit(lambda x: self.encode_images(params, x))
    decode = jax.jit(lambda z: self.decode_images(params, z, rng))
    grids = latent.latent_grids(encode, decode, images)
    num_layers = len(self.dec_blocks)
    prefixes = sorted({max(1, int(num_layers * f)) for f in (0.0, 0.25, 0.5, 0.75, 1.0)})
    decode_prefix = jax.jit(lambda z, k: self.decode_images(params, z, rng, num_fixed=k,
                                                            temperature=0.1))
    z = encode(images)
    rows = [np.asarray(images)] + [np.asarray(decode_prefix(z, k)) for k in prefixes]
    grids["latent_prefixes"] = image_io.make_grid(np.concatenate(rows),
                                                  num_cols=len(images), padding=1)
    return grids
