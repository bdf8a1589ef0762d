"""The DDPM family (Ho et al. 2020) with the Improved DDPM additions (Nichol & Dhariwal 2021).

Losses (config.diffusion.loss):
  'simple': L_simple, Ho et al. eq. 14.
  'hybrid': L_simple + lambda L_vlb (Nichol & Dhariwal eq. 16), the L_vlb term
            with a stop-gradient on the mean so that it trains only the variance.
  'vlb':    L_vlb alone; pair it with importance sampling of t (eq. 18).
Variances (config.diffusion.var_type): fixed ('fixedlarge', 'fixedsmall') or
'learned_range' (eq. 15, the U-Net outputs 2C channels [eps, v]). Sampling
(ancestral or DDIM) can use a respaced subsequence of K timesteps (sec. 4).

Conditioning (configs/ddpm_base.py: config.guidance, config.text, config.superres):
  class labels (model.conditional) or `shapes` captions (text.enabled, a text
  encoder trained jointly, models/text_encoder.py, over datasets/captions.py's
  tokens), with label dropout at rate guidance.p_uncond and classifier-free
  guidance of weight guidance.weight at sampling time (Ho & Salimans 2022, eq. 6;
  bits/dim stay unguided); or SR3 super-resolution (superres.factor > 0, Saharia
  et al. 2021): the U-Net sees [x_t, upsampled low-res image]. `edit_eps_fn`
  serves sampling/editing.py.

A family is a small object of pure functions that the one training loop calls:
`init`, `train_step`, `eval_step`, `sample`. Nothing here touches files or devices.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from datasets import captions, shapes, transforms
from evaluation import ddpm_likelihood
from models import diffusion as diffusion_lib
from models import text_encoder
from models import unet
from sampling import common as sampling_common
from sampling import ddpm as ddpm_sampling
from sampling import editing
from sampling import guidance as guidance_lib
from train import contract
from train import optim as optim_lib
from train.state import DTYPES, TrainState

VAR_TYPES = diffusion_lib.VAR_TYPES
SAMPLERS = ("ancestral", "ddim")
LOSSES = ("simple", "hybrid", "vlb")
TIMESTEP_SAMPLERS = ("uniform", "loss_second_moment")
PREDICTIONS = ("eps", "v")


# ------------------------------------------------ importance sampling of t (eq. 18)
def init_loss_history(num_timesteps: int, history_size: int) -> dict[str, jax.Array]:
  """Empty per-timestep history of the last `history_size` training losses."""
  return dict(loss_history=jnp.zeros((num_timesteps, history_size), jnp.float32),
              loss_counts=jnp.zeros((num_timesteps,), jnp.int32))


def timestep_probabilities(loss_history: jax.Array, loss_counts: jax.Array,
                           uniform_prob: float) -> jax.Array:
  """p_t of Nichol & Dhariwal eq. 18: p_t ∝ sqrt(E[L_t^2]) over the recent losses.

  Uniform until every timestep has a full history. As in the paper's code, the
  result is mixed with `uniform_prob` of the uniform distribution so that no
  timestep's probability (and importance weight 1 / (T p_t)) degenerates.
  """
  num_timesteps, history_size = loss_history.shape
  warmed_up = jnp.all(loss_counts >= history_size)
  root_mean_square = jnp.sqrt(jnp.mean(jnp.square(loss_history), axis=-1))
  probs = root_mean_square / jnp.sum(root_mean_square)
  probs = (1.0 - uniform_prob) * probs + uniform_prob / num_timesteps
  uniform = jnp.full((num_timesteps,), 1.0 / num_timesteps, jnp.float32)
  return jnp.where(warmed_up, probs, uniform)


def importance_weights(probs: jax.Array, t: jax.Array) -> jax.Array:
  """1 / (T p_t): E_{t~p}[w_t L_t] = (1/T) sum_t L_t, the uniform-t average."""
  return 1.0 / (probs.shape[0] * probs[t])


def sample_timesteps(rng: jax.Array, probs: jax.Array,
                     batch_size: int) -> tuple[jax.Array, jax.Array]:
  """t ~ probs and their importance weights (see `importance_weights`)."""
  t = jax.random.categorical(rng, jnp.log(probs), shape=(batch_size,)).astype(jnp.int32)
  return t, importance_weights(probs, t)


def update_loss_history(loss_history: jax.Array, loss_counts: jax.Array, t: jax.Array,
                        losses: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Appends each (t_b, loss_b) in batch order; a full row drops its oldest loss."""
  history_size = loss_history.shape[1]

  def add_one(b, carry):
    history, counts = carry
    t_b, count = t[b], counts[t[b]]
    row = history[t_b]
    full = count >= history_size
    shifted = jnp.concatenate([row[1:], losses[b][None]])
    filled = row.at[jnp.minimum(count, history_size - 1)].set(losses[b])
    history = history.at[t_b].set(jnp.where(full, shifted, filled))
    counts = counts.at[t_b].set(jnp.minimum(count + 1, history_size))
    return history, counts

  return jax.lax.fori_loop(0, t.shape[0], add_one, (loss_history, loss_counts))


# ------------------------------------------------------------------- losses
def eps_from_v(output: jax.Array, x: jax.Array, t: jax.Array,
               process: diffusion_lib.GaussianDiffusion, channels: int) -> jax.Array:
  """eps = sqrt(abar) v + sqrt(1 - abar) x_t for v = sqrt(abar) eps - sqrt(1 - abar) x0
  (Salimans & Ho 2022, sec. 4). The first `channels` of output are v; learned-variance
  channels pass through. x may carry SR3's condition channels after x_t's."""
  a, b = process.signal_noise_scales(t, x.ndim)
  eps = a * output[..., :channels] + b * x[..., :channels]
  if output.shape[-1] > channels:
    return jnp.concatenate([eps, output[..., channels:]], axis=-1)
  return eps


def loss_terms(raw: jax.Array, process: diffusion_lib.GaussianDiffusion, x0: jax.Array,
               t: jax.Array, noise: jax.Array, *, var_type: str, loss: str = "simple",
               prediction: str = "eps", vlb_weight: float = 0.001) -> dict[str, jax.Array]:
  """Per-example [B] loss terms of a network output `raw` at x_t = q_sample(x0, t, noise).

  A pure function of (model output, targets, noise), callable without a config:
  process is the forward process (models/diffusion.py's GaussianDiffusion); raw is eps
  (or v for prediction='v'), with [.., v] channels appended for
  var_type='learned_range'.
  'mse': ||eps - eps_theta||^2 averaged over dimensions (L_simple, Ho et al. eq. 14),
    or ||v - v_theta||^2 for prediction='v'.
  'vb': the bound term L_t in bits/dim (the KL for t > 0, the decoder NLL at t = 0),
    as in the bits/dim evaluation; for 'hybrid' the mean enters through a
    stop-gradient (Nichol & Dhariwal eq. 16), so it trains only v. Absent for 'simple'.
  'loss': mse | mse + vlb_weight T vb ('hybrid') | T vb ('vlb'). T vb estimates
    sum_t L_t = L_vlb (up to the constant L_T), so vlb_weight = 0.001 is the paper's
    lambda.
  """
  x_t = process.q_sample(x0, t, noise)
  dims = tuple(range(1, x0.ndim))
  v_prediction = prediction == "v"
  output = eps_from_v(raw, x_t, t, process, x0.shape[-1]) if v_prediction else raw
  eps, v = diffusion_lib.split_model_output(output, x_t, var_type)
  if v_prediction:
    # L_simple on v (Salimans & Ho 2022): ||v - v_theta||^2 = ||eps - eps_theta||^2
    # / abar_t, which weights the low-SNR steps, where a caption's layout is set.
    a, b = process.signal_noise_scales(t, x0.ndim)
    mse = jnp.mean(jnp.square(raw[..., :x0.shape[-1]] - (a * noise - b * x0)), axis=dims)
  else:
    mse = jnp.mean(jnp.square(eps - noise), axis=dims)
  terms = dict(mse=mse)
  if loss == "simple":
    terms["loss"] = mse
    return terms
  if loss == "hybrid":
    # Eq. 16: L_vlb must not move the mean, only the variance.
    frozen = jax.lax.stop_gradient(eps)
    output = frozen if v is None else jnp.concatenate([frozen, v], axis=-1)
  terms["vb"] = diffusion_lib.vb_terms_bpd(
      output, process, x0, x_t, t, var_type=var_type, clip_denoised=False)
  scaled_vb = process.num_timesteps * terms["vb"]
  terms["loss"] = mse + vlb_weight * scaled_vb if loss == "hybrid" else scaled_vb
  return terms


class DDPM(contract.Family):
  """Denoising diffusion with an epsilon-predicting U-Net (and optionally learned variances)."""

  def __init__(self, config: ml_collections.ConfigDict, image_shape: tuple[int, int, int],
               num_classes: int):
    self.config = config
    d, m, s = config.diffusion, config.model, config.sampling
    if d.var_type not in VAR_TYPES:
      raise ValueError(f"config.diffusion.var_type={d.var_type!r}; choose {VAR_TYPES}.")
    if d.loss not in LOSSES:
      raise ValueError(f"config.diffusion.loss={d.loss!r}; choose {LOSSES}.")
    if d.prediction not in PREDICTIONS:
      raise ValueError(f"config.diffusion.prediction={d.prediction!r}; choose "
                       f"{PREDICTIONS}.")
    if d.timestep_sampler not in TIMESTEP_SAMPLERS:
      raise ValueError(f"config.diffusion.timestep_sampler={d.timestep_sampler!r}; "
                       f"choose {TIMESTEP_SAMPLERS}.")
    if not d.vlb_weight >= 0.0:
      raise ValueError(f"config.diffusion.vlb_weight={d.vlb_weight} must be >= 0.")
    if not (isinstance(d.loss_history_size, int) and d.loss_history_size >= 1):
      raise ValueError("config.diffusion.loss_history_size must be a positive integer, "
                       f"got {d.loss_history_size!r}.")
    if not 0.0 <= d.uniform_prob <= 1.0:
      raise ValueError(f"config.diffusion.uniform_prob={d.uniform_prob} must be in "
                       "[0, 1].")
    if s.method not in SAMPLERS:
      raise ValueError(f"config.sampling.method={s.method!r}; choose {SAMPLERS}.")
    if m.dtype not in DTYPES:
      raise ValueError(f"config.model.dtype={m.dtype!r}; choose {tuple(DTYPES)}.")
    if m.conditional and num_classes <= 0:
      raise ValueError(f"config.model.conditional=True but {config.data.dataset!r} has "
                       "no class labels.")
    guidance = config.guidance
    self.text, self.superres = config.text, config.superres
    self._check_conditioning(config, image_shape)
    self.respaced = s.num_steps is not None or s.respacing != "uniform"
    if (s.method == "ddim" and not self.respaced
        and not 1 <= s.ddim_steps <= d.num_timesteps):
      raise ValueError(f"config.sampling.ddim_steps={s.ddim_steps} must be in "
                       f"[1, {d.num_timesteps}].")
    self.image_shape = tuple(image_shape)
    self.num_classes = num_classes if m.conditional and not self.text.enabled else 0
    self.text_conditioned = bool(self.text.enabled)
    self.conditioning = guidance_lib.Conditioning(
        kind="caption" if self.text_conditioned else "class" if self.num_classes else "none",
        num_classes=self.num_classes,
        # The null condition: the padding id, or the extra label row.
        null_value=captions.PAD_ID if self.text_conditioned else self.num_classes,
        p_uncond=float(guidance.p_uncond), guidance_weight=float(guidance.weight))
    self.superres_factor = int(self.superres.factor)
    self.learned_variance = d.var_type in diffusion_lib.LEARNED_VAR_TYPES
    channels = image_shape[-1]
    network = unet.UNet(
        ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
        attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
        resamp_with_conv=m.resamp_with_conv,
        # Learned variances: [eps, v], 2C channels (Nichol & Dhariwal sec. 3.1).
        # SR3 takes 2C input channels but predicts the C of eps all the same.
        out_channels=2 * channels if self.learned_variance else channels,
        num_classes=self.num_classes, num_groups=m.num_groups,
        num_heads=m.num_heads, scale_shift_norm=m.scale_shift_norm,
        timestep_embedding=m.timestep_embedding, norm_epsilon=m.norm_epsilon,
        downsample_padding=m.downsample_padding,
        dtype=DTYPES[m.dtype], fused_attention=m.fused_attention, remat=m.remat,
        coordinate_channels=m.coordinate_channels,
        cross_attention=self.text_conditioned and bool(self.text.cross_attention))
    if self.text_conditioned:
      # The caption vector joins the time embedding, as a class embedding does;
      # with text.cross_attention the attention layers also see every token.
      network = text_encoder.TextConditioned(
          network=network, encoder=text_encoder.TextEncoder(
              out_dim=4 * m.ch, vocab_size=captions.VOCAB_SIZE,
              max_length=captions.MAX_CAPTION_TOKENS, pad_id=captions.PAD_ID,
              width=self.text.width, num_layers=self.text.num_layers,
              num_heads=self.text.num_heads,
              context_dim=self.text.width if self.text.cross_attention else 0))
    self.model = network
    self.betas = diffusion_lib.get_beta_schedule(
        d.beta_schedule, beta_start=d.beta_start, beta_end=d.beta_end,
        num_timesteps=d.num_timesteps)
    self.diffusion = diffusion_lib.GaussianDiffusion.from_betas(self.betas)
    # The process the samplers walk: all T steps, or K respaced ones (sec. 4).
    if self.respaced:
      self.sampling_timesteps = diffusion_lib.respaced_timesteps(
          d.num_timesteps, s.num_steps, s.respacing)
      if self.sampling_timesteps.shape[0] < 2:
        raise ValueError("Respaced sampling needs at least 2 steps; raise "
                         "config.sampling.num_steps.")
      self.sampling_diffusion = diffusion_lib.respaced_diffusion(
          self.betas, self.sampling_timesteps)
    else:
      self.sampling_timesteps = None
      self.sampling_diffusion = self.diffusion
    self.edit_process = contract.EditProcess(
        diffusion=self.diffusion, sampling_diffusion=self.sampling_diffusion,
        sampling_timesteps=self.sampling_timesteps, var_type=d.var_type,
        clip_denoised=bool(s.clip_denoised), superres_factor=self.superres_factor,
        upsample_method=str(self.superres.upsample_method))
    self.tx = optim_lib.make_optimizer(config.optim)

  def _check_conditioning(self, config, image_shape) -> None:
    """Bad combinations of guidance / text / SR3 fields, before anything compiles."""
    text, sr, m = self.text, self.superres, config.model
    conditioned = m.conditional or text.enabled
    if text.enabled:
      if m.conditional:
        raise ValueError("config.text.enabled=True conditions on captions, which "
                         "name the class already: set config.model.conditional=False.")
      if not str(config.data.dataset).startswith("shapes"):
        raise ValueError(f"config.text.enabled=True needs the captions of 'shapes' "
                         f"(or shapes/16, shapes/64), not {config.data.dataset!r}.")
      if text.width % text.num_heads:
        raise ValueError(f"config.text.width={text.width} must be divisible by "
                         f"config.text.num_heads={text.num_heads}.")
    if sr.factor:
      if not isinstance(sr.factor, int) or sr.factor < 2:
        raise ValueError(f"config.superres.factor={sr.factor!r} must be 0 (off) or an "
                         "integer >= 2.")
      h, w = image_shape[:2]
      if h % sr.factor or w % sr.factor:
        raise ValueError(f"config.superres.factor={sr.factor} must divide the image "
                         f"size {h}x{w}.")
      if sr.upsample_method not in transforms.UPSAMPLE_METHODS:
        raise ValueError(f"config.superres.upsample_method={sr.upsample_method!r}; "
                         f"choose {transforms.UPSAMPLE_METHODS}.")
      if conditioned:
        raise ValueError("An SR3 model (config.superres.factor > 0) is conditioned on "
                         "its low-res image only: set config.model.conditional=False "
                         "and config.text.enabled=False.")

  # ---------------------------------------------------------------- conditions
  def condition(self, batch: dict[str, Any]) -> jax.Array | None:
    """The network's condition for a data batch: caption tokens, labels or None."""
    if self.text_conditioned:
      missing = [k for k in ("label", "colour", "position") if k not in batch]
      if missing:
        raise ValueError(f"A caption-conditioned model needs the batch keys {missing} "
                         "(the shapes datasets provide them).")
      return captions.tokens_from_factors(
          batch["label"].astype(jnp.int32), batch["colour"].astype(jnp.int32),
          batch["position"].astype(jnp.int32))
    return self._labels(batch)

  def sample_conditions(self, num_samples: int) -> jax.Array | None:
    """Conditions of `sample`: every caption (or class) in turn."""
    if self.text_conditioned:
      f = shapes.cycling_caption_factors(num_samples)
      return captions.tokens_from_factors(f["shape"], f["colour"], f["position"])
    return sampling_common.cycled_labels(num_samples, self.num_classes)

  def _network_input(self, x_t: jax.Array, condition_image: jax.Array | None):
    """x_t, or SR3's [x_t, upsampled low-res] along channels."""
    if self.superres_factor:
      if condition_image is None:
        raise ValueError("An SR3 model needs its upsampled low-res condition image.")
      return unet.concat_condition(x_t, condition_image)
    return x_t

  # ------------------------------------------------------------------ training
  def init(self, rng: jax.Array, example_batch: dict[str, Any]) -> TrainState:
    x = transforms.uint8_to_centered(example_batch["image"][:1])
    if self.superres_factor:   # the 2C-channel input [x_t, condition]
      x = jnp.concatenate([x, x], axis=-1)
    t = jnp.zeros((1,), jnp.int32)
    if self.text_conditioned:  # the loop's example batch has no caption factors
      y = jnp.asarray(captions.null_tokens(1))
    else:
      y = self._labels(example_batch)
      y = None if y is None else y[:1]
    params = self.model.init({"params": rng}, x, t, y, train=False)["params"]
    model_state = {}
    d = self.config.diffusion
    if d.timestep_sampler == "loss_second_moment":
      model_state = init_loss_history(self.diffusion.num_timesteps, d.loss_history_size)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=self.tx.init(params), rng=jax.random.fold_in(rng, 1),
                      model_state=model_state, tx=self.tx)

  def _labels(self, batch):
    return batch["label"].astype(jnp.int32) if self.num_classes else None

  def eps_fn(self, params, y=None, *, train=False, rng=None):
    """The network output at (x_t, t) as the samplers and the likelihood want it.

    eps_theta for fixed variances; [eps_theta, v] (2C channels) for
    'learned_range'. t is the 0-based integer timestep; with
    config.diffusion.rescale_timesteps the network sees t * 1000 / T, as in the
    Improved DDPM code, so that its embedding spans [0, 1000) whatever T is. A
    v-prediction network's output is turned into eps here (`eps_from_v`), so every
    sampler, guidance and the likelihood see eps.
    """
    network = self._network_fn(params, y, train=train, rng=rng)
    if self.config.diffusion.prediction == "eps":
      return network
    return lambda x, t: self.eps_from_v(network(x, t), x, t)  # noqa: E731

  def _network_fn(self, params, y=None, *, train=False, rng=None):
    """The raw network output at (x_t, t): eps or v (config.diffusion.prediction)."""
    rngs = {"dropout": rng} if train else {}
    rescale = self.config.diffusion.rescale_timesteps
    scale = 1000.0 / self.diffusion.num_timesteps if rescale else None

    def fn(x, t):
      t_in = t if scale is None else t.astype(jnp.float32) * scale
      return self.model.apply({"params": params}, x, t_in, y, train=train, rngs=rngs)
    return fn

  def eps_from_v(self, output: jax.Array, x: jax.Array, t: jax.Array) -> jax.Array:
    """`eps_from_v` with this model's process and image channels."""
    return eps_from_v(output, x, t, self.diffusion, self.image_shape[-1])

  def loss_terms(self, params, x0: jax.Array, t: jax.Array, noise: jax.Array,
                 y: jax.Array | None = None, dropout_rng: jax.Array | None = None,
                 condition_image: jax.Array | None = None) -> dict[str, jax.Array]:
    """The module's `loss_terms` of this network at x_t = q_sample(x0, t, noise).

    y: the condition (labels [B] or caption tokens [B, L]); condition_image: SR3's
    upsampled low-res image [B, H, W, C]; dropout_rng: training mode.
    """
    train = dropout_rng is not None
    x_t = self.diffusion.q_sample(x0, t, noise)
    raw = self._network_fn(params, y, train=train, rng=dropout_rng)(
        self._network_input(x_t, condition_image), t).astype(jnp.float32)
    d = self.config.diffusion
    return loss_terms(raw, self.diffusion, x0, t, noise, var_type=d.var_type, loss=d.loss,
                      prediction=d.prediction, vlb_weight=d.vlb_weight)

  def _loss_and_aux(self, params, batch, rng, model_state):
    condition_image = None
    if self.superres_factor:   # (x_0, upsampled box-downsampled x_0), SR3
      x0, condition_image = transforms.superres_training_pair(
          batch["image"], self.superres_factor, self.superres.upsample_method)
    else:
      x0 = transforms.uint8_to_centered(batch["image"])
    t_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
    y = self.condition(batch)
    # Ho & Salimans Algorithm 1: c <- null with probability p_uncond. A key of its
    # own, so that the other draws are those of an undropped run.
    y = self.conditioning.drop(y, jax.random.fold_in(rng, 3))
    b = x0.shape[0]
    num_timesteps = self.diffusion.num_timesteps
    d = self.config.diffusion
    if d.timestep_sampler == "loss_second_moment":
      if not model_state:  # no history given: the sampler's uniform start
        model_state = init_loss_history(num_timesteps, d.loss_history_size)
      probs = timestep_probabilities(model_state["loss_history"],
                                     model_state["loss_counts"], d.uniform_prob)
      t, weights = sample_timesteps(t_rng, probs, b)
    else:
      t = jax.random.randint(t_rng, (b,), 0, num_timesteps)
      weights = jnp.ones((b,), jnp.float32)
    noise = jax.random.normal(noise_rng, x0.shape, jnp.float32)
    terms = self.loss_terms(params, x0, t, noise, y, dropout_rng, condition_image)
    loss = jnp.mean(weights * terms["loss"])
    return loss, dict(terms=terms, t=t)

  def loss(self, params, batch, rng, model_state=None):
    """The scalar training objective (importance-weighted when t is importance-sampled)."""
    return self._loss_and_aux(params, batch, rng, model_state)[0]

  def train_step(self, state: TrainState, batch: dict[str, Any]):
    rng = jax.random.fold_in(state.rng, state.step)
    (loss, aux), grads = jax.value_and_grad(self._loss_and_aux, has_aux=True)(
        state.params, batch, rng, state.model_state)
    new_state, metrics = optim_lib.apply_gradients(state, grads, self.config.optim,
                                                   loss=loss)
    terms = aux["terms"]
    model_state = state.model_state
    d = self.config.diffusion
    if d.loss != "simple":
      metrics.update(mse=jnp.mean(terms["mse"]), vb_bpd=jnp.mean(terms["vb"]))
    if d.timestep_sampler == "loss_second_moment":
      # The unweighted per-example losses, as in the paper's code.
      history, counts = update_loss_history(
          model_state["loss_history"], model_state["loss_counts"], aux["t"],
          jax.lax.stop_gradient(terms["loss"]))
      model_state = dict(loss_history=history, loss_counts=counts)
      metrics["timestep_sampler_warm"] = jnp.all(
          counts >= d.loss_history_size).astype(jnp.float32)
    return new_state.replace(model_state=model_state), metrics

  # ---------------------------------------------------------------- evaluation
  def eval_step(self, params, batch: dict[str, Any], rng: jax.Array) -> dict[str, jax.Array]:
    """Per-example bits/dim of the variational bound (all T terms, L_0 and L_T).

    Conditional models: the bound of p(x | c) at the batch's own condition (label,
    caption, or SR3's low-res image), unguided.
    """
    eps_fn = self.eps_fn(params, self.condition(batch))
    if self.superres_factor:
      _, condition_image = transforms.superres_training_pair(
          batch["image"], self.superres_factor, self.superres.upsample_method)
      eps_fn = editing.conditioned_eps_fn(eps_fn, condition_image)
    out = ddpm_likelihood.vlb_bpd(
        eps_fn, self.diffusion, batch["image"], rng,
        var_type=self.config.diffusion.var_type, clip_denoised=False,
        timestep_chunk=self.config.eval.vlb_timestep_chunk)
    return {k: out[k] for k in ("bpd_vlb", "prior_bpd", "decoder_bpd")}

  # ------------------------------------------------------------------ sampling
  def edit_eps_fn(self, params, condition: jax.Array | None = None,
                  guidance_weight: float | None = None):
    """eps_fn(x, t) for samplers and editing: guided by config.guidance.weight.

    condition: labels [B] / caption tokens [B, L] of a conditional model (the null
    condition gives the unconditional model), None for an unconditional one. With
    weight 0 this is the plain conditional network (Ho & Salimans eq. 6); for
    learned variances only eps is guided, v stays conditional (GLIDE).
    """
    model_fn = lambda x, t, c: self.eps_fn(params, c)(x, t)  # noqa: E731
    return self.conditioning.guide(
        model_fn, condition, guidance_weight,
        num_guided_channels=self.image_shape[-1] if self.learned_variance else None)

  def sample(self, params, rng: jax.Array, num_samples: int) -> jax.Array:
    """uint8 NHWC samples; conditional models cycle through the classes (captions)."""
    if self.superres_factor:
      raise ValueError(
          "An SR3 model samples given a low-res image: run --mode=sample "
          "--edit=superres --input=LOW_RES.png (config.training.sample_every_steps=0, "
          "config.eval.sample_metrics='none').")
    return self.sample_with_condition(params, rng, self.sample_conditions(num_samples),
                                      num_samples)

  def sample_with_condition(self, params, rng: jax.Array, condition: jax.Array | None,
                            num_samples: int) -> jax.Array:
    """uint8 NHWC samples of p(x | condition), guided by config.guidance.weight."""
    s = self.config.sampling
    eps_fn = self.edit_eps_fn(params, condition)
    shape = (num_samples, *self.image_shape)
    diffusion, timestep_map = self.sampling_diffusion, self.sampling_timesteps
    if s.method == "ancestral":
      out = ddpm_sampling.ancestral_sample(
          eps_fn, diffusion, rng, shape, var_type=self.config.diffusion.var_type,
          clip_denoised=s.clip_denoised, timestep_map=timestep_map)
    elif self.respaced:
      # DDIM through every one of the K respaced steps.
      out = ddpm_sampling.ddim_sample(
          eps_fn, diffusion, rng, shape, num_steps=diffusion.num_timesteps,
          eta=s.ddim_eta, step_spacing="uniform", clip_denoised=s.clip_denoised,
          timestep_map=timestep_map)
    else:
      out = ddpm_sampling.ddim_sample(
          eps_fn, diffusion, rng, shape, num_steps=s.ddim_steps, eta=s.ddim_eta,
          step_spacing=s.ddim_spacing, clip_denoised=s.clip_denoised)
    return transforms.centered_to_uint8(out.images)

  def sampler_settings(self) -> dict[str, Any]:
    s, d = self.config.sampling, self.config.diffusion
    settings = dict(sampler=s.method, clip_denoised=s.clip_denoised,
                    num_timesteps=d.num_timesteps, use_ema=s.use_ema)
    c = self.conditioning
    if c.is_conditional:
      settings.update(guidance_weight=c.guidance_weight, p_uncond=c.p_uncond,
                      condition=c.kind)
    if self.superres_factor:
      settings.update(superres_factor=self.superres_factor,
                      upsample_method=self.superres.upsample_method)
    if self.respaced:
      num_steps = int(self.sampling_timesteps.shape[0])
      settings.update(respacing=str(s.respacing), num_steps=num_steps, nfe=num_steps)
      if s.method == "ancestral":
        settings.update(var_type=d.var_type)
      else:
        settings.update(ddim_eta=s.ddim_eta)
    elif s.method == "ancestral":
      settings.update(var_type=d.var_type, nfe=d.num_timesteps)
    else:
      settings.update(ddim_steps=s.ddim_steps, ddim_eta=s.ddim_eta,
                      ddim_spacing=s.ddim_spacing, nfe=s.ddim_steps)
    if c.guided:
      # Each guided step evaluates the network on the batch [x; x]: twice the cost.
      settings["nfe_per_sample_network_passes"] = 2 * settings["nfe"]
    return settings
