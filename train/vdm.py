"""The VDM family: Kingma et al. 2021, "Variational Diffusion Models".

Variance-preserving diffusion z_t = alpha_t x + sigma_t eps with alpha_t^2 =
sigmoid(-gamma(t)), sigma_t^2 = sigmoid(gamma(t)) (eq. 4), gamma = -log SNR
(models/vdm.py). The loss is the variational bound itself, in bits/dim (eq. 11):

  -log p(x) <= KL(q(z_1|x) || N(0, I))          prior loss
             + E_q[-log p(x|z_0)]                 reconstruction loss
             + L_T(x)                             diffusion loss,

with L_T = T/2 E_{t, eps}[expm1(gamma(t) - gamma(s)) ||eps - eps_hat(z_t; t)||^2],
s = t - 1/T, over t uniform on {1/T, ..., 1} (eq. 13, eps form), or its T -> infinity
limit L_inf = 1/2 E_{t~U(0,1), eps}[gamma'(t) ||eps - eps_hat(z_t; t)||^2] (eq. 17),
with gamma'(t) from forward-mode autodiff. Times are drawn low-discrepancy across the
batch (t_i = mod(u + i/B, 1), section 5.2 / Appendix I). The data x are the 256
levels at the bin centres of [-1, 1], and p(x|z_0) is a per-sub-pixel distribution
over them (Appendix C): softmax over the levels v of -(z_0/alpha_0 - v)^2 / (2
exp(gamma_0)).

Learned schedules: L_inf depends on the schedule only through its endpoints
gamma(0), gamma(1) (section 5.1), so the endpoints follow the gradient of the bound
while the shape parameters follow the gradient of the mean *squared* diffusion loss,
which lowers the variance of the Monte Carlo estimate (section 5.2, Appendix I.2):
d E[L^2]/d eta = E[2 L dL/d eta]. Each example's loss depends on eta only through its
own gamma(t_i), gamma'(t_i) (or gamma(s_i)), so one backward pass gives both: the
cotangents that reach those values are scaled by 2 L_i before they enter the
schedule's pullback (`VDM.loss_and_grads`). This is a custom gradient of gamma that
multiplies its incoming cotangent by 2 L_i, written as explicit vector-Jacobian
products so that the U-Net is differentiated once.
"""

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from models import distributions
from models import vdm as vdm_models
from sampling import common as sampling_common
from sampling import guidance as guidance_lib
from train import contract
from train import optim as optim_lib
from train.state import DTYPES, TrainState

VOCAB_SIZE = 256          # 8-bit data
SCHEDULES = ("fixed_linear", "learned_linear", "learned")
SCHEDULE_GRADIENTS = ("variance", "vlb")
TERMS = ("diffusion", "prior", "recon")

GammaFn = Callable[[jax.Array], jax.Array]
EpsFn = Callable[[jax.Array, jax.Array], jax.Array]


# ------------------------------------------------------------------ pure pieces
def scale_images(images_uint8: jax.Array) -> jax.Array:
  """uint8 levels k -> bin centres 2 (k + 1/2) / 256 - 1 in (-1, 1) (Appendix C)."""
  return 2.0 * (images_uint8.astype(jnp.float32) + 0.5) / VOCAB_SIZE - 1.0


def alpha_sigma_sq(gamma: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(alpha^2, sigma^2) = (sigmoid(-gamma), sigmoid(gamma)) (eq. 4)."""
  return jax.nn.sigmoid(-gamma), jax.nn.sigmoid(gamma)


def antithetic_times(rng: jax.Array, num: int) -> jax.Array:
  """t_i = mod(u + i/num, 1), u ~ U(0, 1): one time in each [i/num, (i+1)/num)."""
  u = jax.random.uniform(rng, (), jnp.float32)
  return jnp.mod(u + jnp.arange(num, dtype=jnp.float32) / num, 1.0)


def discretize_times(t: jax.Array, num_timesteps: int) -> jax.Array:
  """t in [0, 1) -> the grid time i/T >= t, i in {1..T} (t = 0 maps to 1/T)."""
  return jnp.maximum(jnp.ceil(t * num_timesteps), 1.0) / num_timesteps


def prior_kl(f: jax.Array, gamma_1: jax.Array) -> jax.Array:
  """KL(N(alpha_1 f, sigma_1^2) || N(0, 1)) summed over each example's sub-pixels, [B]."""
  alpha_sq, sigma_sq = alpha_sigma_sq(gamma_1)
  per_dim = distributions.gaussian_kl_to_standard_normal(jnp.sqrt(alpha_sq) * f,
                                                         jnp.log(sigma_sq))
  return jnp.sum(per_dim, axis=tuple(range(1, f.ndim)))


def decoder_logits(z0_rescaled: jax.Array, gamma_0: jax.Array) -> jax.Array:
  """Unnormalised log p(x = v | z_0) for the 256 levels v, shape [..., 256].

  A Gaussian of variance sigma_0^2 / alpha_0^2 = exp(gamma_0) around z_0 / alpha_0,
  evaluated at the level centres (Appendix C); a softmax over v normalises it.
  """
  levels = scale_images(jnp.arange(VOCAB_SIZE))
  return -0.5 * jnp.square(z0_rescaled[..., None] - levels) * jnp.exp(-gamma_0)


def decoder_log_probs(z0_rescaled: jax.Array, gamma_0: jax.Array) -> jax.Array:
  """log p(x = v | z_0) for the 256 levels v, shape [..., 256] (Appendix C)."""
  return jax.nn.log_softmax(decoder_logits(z0_rescaled, gamma_0), axis=-1)


def reconstruction_log_likelihood(images_uint8: jax.Array, z0_rescaled: jax.Array,
                                  gamma_0: jax.Array) -> jax.Array:
  """log p(x|z_0) summed over each example's sub-pixels, [B]."""
  picked = distributions.categorical_log_likelihood(
      images_uint8, decoder_logits(z0_rescaled, gamma_0))
  return jnp.sum(picked, axis=tuple(range(1, picked.ndim)))


def continuous_diffusion_loss(dgamma_t: jax.Array, sq_err: jax.Array) -> jax.Array:
  """Single-sample L_inf: 1/2 gamma'(t) ||eps - eps_hat||^2 (eq. 17)."""
  return 0.5 * dgamma_t * sq_err


def discrete_diffusion_loss(gamma_s: jax.Array, gamma_t: jax.Array, sq_err: jax.Array,
                            num_timesteps: int) -> jax.Array:
  """Single-sample L_T: T/2 (SNR(s)/SNR(t) - 1) ||eps - eps_hat||^2 (eq. 13)."""
  return 0.5 * num_timesteps * jnp.expm1(gamma_t - gamma_s) * sq_err


def bound_terms(eps_fn: EpsFn, images_uint8: jax.Array, values: dict[str, jax.Array],
                eps_0: jax.Array, eps: jax.Array, *,
                num_timesteps: int = 0) -> dict[str, jax.Array]:
  """Per-example diffusion, prior and reconstruction terms of the bound in nats, [B].

  A pure function of the model (eps_fn(z_t, gamma_t)), the data, the schedule values
  at each example's t (`gamma_0`, `gamma_1`, `gamma_t` and `dgamma_t` for the
  continuous-time loss, eq. 17, or `gamma_s` for T = num_timesteps steps, eq. 13) and
  the noise: eps_0 of the reconstruction's z_0 and eps of z_t (both [B, ...] like the
  images), so two implementations can be compared on the same draws.
  """
  f = scale_images(images_uint8)
  gamma_0, gamma_1 = values["gamma_0"], values["gamma_1"]
  # Reconstruction: z_0 / alpha_0 = f + exp(gamma_0 / 2) eps_0.
  z0_rescaled = f + jnp.exp(0.5 * gamma_0) * eps_0
  recon = -reconstruction_log_likelihood(images_uint8, z0_rescaled, gamma_0)
  # Diffusion: one (t, eps) per example.
  gamma_t = values["gamma_t"]
  alpha_sq, sigma_sq = alpha_sigma_sq(gamma_t[:, None, None, None])
  z_t = jnp.sqrt(alpha_sq) * f + jnp.sqrt(sigma_sq) * eps
  sq_err = jnp.sum(jnp.square(eps - eps_fn(z_t, gamma_t)), axis=(1, 2, 3))
  if "dgamma_t" in values:
    diffusion = continuous_diffusion_loss(values["dgamma_t"], sq_err)
  else:
    if num_timesteps < 1:
      raise ValueError("The discrete-time bound (values without 'dgamma_t') needs "
                       "num_timesteps >= 1.")
    diffusion = discrete_diffusion_loss(values["gamma_s"], gamma_t, sq_err, num_timesteps)
  return dict(diffusion=diffusion, prior=prior_kl(f, gamma_1), recon=recon)


def ancestral_step(z_t: jax.Array, eps_hat: jax.Array, gamma_s: jax.Array,
                   gamma_t: jax.Array, noise: jax.Array) -> jax.Array:
  """z_s ~ p(z_s|z_t) = q(z_s|z_t, x = x_hat(z_t)) (eqs. 27-32).

  Mean alpha_s/alpha_t (z_t - sigma_t c eps_hat), variance sigma_s^2 c, with
  c = 1 - SNR(t)/SNR(s) = -expm1(gamma_s - gamma_t).
  """
  alpha_sq_s, sigma_sq_s = alpha_sigma_sq(gamma_s)
  alpha_sq_t, sigma_sq_t = alpha_sigma_sq(gamma_t)
  c = -jnp.expm1(gamma_s - gamma_t)
  mean = jnp.sqrt(alpha_sq_s / alpha_sq_t) * (z_t - jnp.sqrt(sigma_sq_t) * c * eps_hat)
  return mean + jnp.sqrt(sigma_sq_s * c) * noise


def ancestral_sample(eps_fn: EpsFn, gamma_fn: GammaFn, rng: jax.Array,
                     shape: tuple[int, ...], num_steps: int) -> jax.Array:
  """z_0 from z_1 ~ N(0, I) by num_steps ancestral steps t = i/N -> (i-1)/N.

  One `lax.fori_loop`; eps_fn(z, gamma) takes a scalar gamma. The noise of step i
  is drawn from fold_in(split(rng)[1], i).
  """
  init_rng, loop_rng = jax.random.split(rng)
  z = jax.random.normal(init_rng, shape, jnp.float32)

  def body(i, z_t):
    t = (num_steps - i) / num_steps
    s = (num_steps - i - 1) / num_steps
    gamma_t, gamma_s = gamma_fn(t), gamma_fn(s)
    noise = jax.random.normal(jax.random.fold_in(loop_rng, i), shape, jnp.float32)
    return ancestral_step(z_t, eps_fn(z_t, gamma_t), gamma_s, gamma_t, noise)

  return jax.lax.fori_loop(0, num_steps, body, z)


# ------------------------------------------------------------------------ family
class VDM(contract.Family):
  """Variational diffusion model with a fixed or learned noise schedule."""

  def __init__(self, config: ml_collections.ConfigDict, image_shape: tuple[int, int, int],
               num_classes: int):
    self.config = config
    v, m, s = config.vdm, config.model, config.sampling
    if v.schedule not in SCHEDULES:
      raise ValueError(f"config.vdm.schedule={v.schedule!r}; choose {SCHEDULES}.")
    if v.schedule_gradient not in SCHEDULE_GRADIENTS:
      raise ValueError(f"config.vdm.schedule_gradient={v.schedule_gradient!r}; choose "
                       f"{SCHEDULE_GRADIENTS}.")
    if not v.gamma_min < v.gamma_max:
      raise ValueError(f"config.vdm.gamma_min={v.gamma_min} must be below "
                       f"config.vdm.gamma_max={v.gamma_max}.")
    if v.num_timesteps < 0:
      raise ValueError(f"config.vdm.num_timesteps must be >= 0 (0: continuous time), "
                       f"got {v.num_timesteps}.")
    if v.schedule == "learned" and v.schedule_num_features < 1:
      raise ValueError("config.vdm.schedule='learned' needs config.vdm."
                       f"schedule_num_features >= 1, got {v.schedule_num_features}; use "
                       "schedule='learned_linear' for learned endpoints only.")
    if v.eval_num_times < 1:
      raise ValueError(f"config.vdm.eval_num_times must be >= 1, got {v.eval_num_times}.")
    if s.num_steps < 1:
      raise ValueError(f"config.sampling.num_steps must be >= 1, got {s.num_steps}.")
    if m.dtype not in DTYPES:
      raise ValueError(f"config.model.dtype={m.dtype!r}; choose {tuple(DTYPES)}.")
    if m.ch < 4 or m.num_res_blocks < 0 or not 0.0 <= m.dropout < 1.0:
      raise ValueError("config.model needs ch >= 4, num_res_blocks >= 0 and dropout in "
                       f"[0, 1); got {m.ch}, {m.num_res_blocks}, {m.dropout}.")
    if m.conditional and num_classes <= 0:
      raise ValueError(f"config.model.conditional=True but {config.data.dataset!r} has "
                       "no class labels.")
    self.image_shape = tuple(image_shape)
    self.num_dims = math.prod(self.image_shape)
    self.num_classes = num_classes if m.conditional else 0
    # Class labels as the DDPM and score families hold them; VDM trains no null
    # condition (no classifier-free guidance), so the null label is never drawn.
    self.conditioning = guidance_lib.Conditioning(
        kind="class" if self.num_classes else "none", num_classes=self.num_classes,
        null_value=self.num_classes)
    self.score_model = vdm_models.ScoreUNet(
        ch=m.ch, num_res_blocks=m.num_res_blocks, dropout=m.dropout,
        num_groups=m.num_groups, fourier_exponents=tuple(m.fourier_exponents),
        gamma_min=v.gamma_min, gamma_max=v.gamma_max, num_classes=self.num_classes,
        dtype=DTYPES[m.dtype])
    self.schedule_model = None
    if v.schedule != "fixed_linear":
      self.schedule_model = vdm_models.LearnedSchedule(
          gamma_0_init=v.gamma_min, gamma_1_init=v.gamma_max,
          num_features=v.schedule_num_features if v.schedule == "learned" else 0)
    self.tx = optim_lib.make_optimizer(config.optim)

  # ------------------------------------------------------------ networks
  def init(self, rng: jax.Array, example_batch: dict[str, Any]) -> TrainState:
    score_rng, schedule_rng = jax.random.split(rng)
    z = scale_images(example_batch["image"][:1])
    y = self._labels(example_batch)
    y = None if y is None else y[:1]
    score = self.score_model.init({"params": score_rng}, z, jnp.zeros((1,)), y,
                                  train=False)["params"]
    schedule = ({} if self.schedule_model is None else
                self.schedule_model.init(schedule_rng, jnp.zeros(()))["params"])
    params = {"score": score, "schedule": schedule}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=self.tx.init(params), rng=jax.random.fold_in(rng, 1),
                      tx=self.tx)

  def _labels(self, batch):
    return batch["label"].astype(jnp.int32) if self.conditioning.is_conditional else None

  def gamma_fn(self, schedule_params) -> GammaFn:
    """t -> gamma(t) = -log SNR(t), for t of any shape."""
    v = self.config.vdm
    if self.schedule_model is None:
      return lambda t: vdm_models.fixed_linear_gamma(t, v.gamma_min, v.gamma_max)
    return lambda t: self.schedule_model.apply({"params": schedule_params},
                                               jnp.asarray(t, jnp.float32))

  def eps_fn(self, score_params, y=None, *, train=False, rng=None) -> EpsFn:
    """eps_hat(z_t, gamma_t); gamma_t is a scalar or [B]; y: labels of a conditional model."""
    self.conditioning.check(y)
    rngs = {"dropout": rng} if train else {}
    return lambda z, gamma: self.score_model.apply(
        {"params": score_params}, z, gamma, y, train=train, rngs=rngs)

  # --------------------------------------------------------------- bound
  def schedule_values(self, schedule_params, t: jax.Array) -> dict[str, jax.Array]:
    """The schedule quantities the bound needs at the per-example times t [B]."""
    gamma = self.gamma_fn(schedule_params)
    values = dict(gamma_0=gamma(0.0), gamma_1=gamma(1.0))
    num_timesteps = self.config.vdm.num_timesteps
    if num_timesteps:
      t = discretize_times(t, num_timesteps)
      values.update(gamma_t=gamma(t), gamma_s=gamma(t - 1.0 / num_timesteps))
    else:   # gamma'(t) by forward-mode autodiff (exact for any schedule).
      gamma_t, dgamma_t = jax.jvp(gamma, (t,), (jnp.ones_like(t),))
      values.update(gamma_t=gamma_t, dgamma_t=dgamma_t)
    return values

  def bound_terms(self, score_params, values: dict[str, jax.Array],
                  batch: dict[str, Any], rng: jax.Array, *,
                  train: bool) -> dict[str, jax.Array]:
    """Per-example diffusion, prior and reconstruction losses in nats, each [B]
    (the module-level `bound_terms`, with the noise drawn from rng)."""
    images = batch["image"]
    recon_rng, eps_rng, dropout_rng = jax.random.split(rng, 3)
    eps_0 = jax.random.normal(recon_rng, images.shape, jnp.float32)
    eps = jax.random.normal(eps_rng, images.shape, jnp.float32)
    eps_fn = self.eps_fn(score_params, self._labels(batch), train=train, rng=dropout_rng)
    return bound_terms(eps_fn, images, values, eps_0, eps,
                       num_timesteps=self.config.vdm.num_timesteps)

  def per_example_terms(self, params, batch: dict[str, Any], rng: jax.Array, *,
                        train: bool) -> dict[str, jax.Array]:
    """bound_terms at low-discrepancy times across the batch (the training estimate)."""
    time_rng, noise_rng = jax.random.split(rng)
    t = self._times(time_rng, batch["image"].shape[0])
    values = self.schedule_values(params["schedule"], t)
    return self.bound_terms(params["score"], values, batch, noise_rng, train=train)

  def _times(self, rng: jax.Array, num: int) -> jax.Array:
    if self.config.vdm.antithetic_time_sampling:
      return antithetic_times(rng, num)
    return jax.random.uniform(rng, (num,), jnp.float32)

  def loss_and_grads(self, params, batch: dict[str, Any], rng: jax.Array):
    """(metrics, grads): the bound's gradient; the variance gradient for the shape.

    Same rng split as `per_example_terms`, so both see the same times and noise.
    """
    time_rng, noise_rng = jax.random.split(rng)
    t = self._times(time_rng, batch["image"].shape[0])
    to_bpd = distributions.nats_to_bits_per_dim(1.0, self.num_dims)   # per nat
    values, schedule_pullback = jax.vjp(
        lambda sp: self.schedule_values(sp, t), params["schedule"])
    terms, terms_pullback = jax.vjp(
        lambda sc, vals: self.bound_terms(sc, vals, batch, noise_rng, train=True),
        params["score"], values)
    batch_size = batch["image"].shape[0]
    bpd = {k: terms[k] * to_bpd for k in TERMS}
    # Cotangent of mean_i(total bpd_i) for every per-example term.
    cotangent = {k: jnp.full((batch_size,), to_bpd / batch_size) for k in TERMS}
    score_grads, value_grads = terms_pullback(cotangent)
    schedule_grads = schedule_pullback(value_grads)[0]
    if (self.config.vdm.schedule == "learned"
        and self.config.vdm.schedule_gradient == "variance"):
      # d mean_i(L_i^2) / d v_i = 2 L_i d mean_i(L_i) / d v_i for the per-example
      # values v_i = gamma(t_i), gamma'(t_i) / gamma(s_i); the endpoints get none.
      scale = 2.0 * bpd["diffusion"]
      var_value_grads = {k: (g * scale if k not in ("gamma_0", "gamma_1")
                             else jnp.zeros_like(g)) for k, g in value_grads.items()}
      var_grads = schedule_pullback(var_value_grads)[0]
      schedule_grads = {k: (g if k in vdm_models.ENDPOINT_PARAMS else var_grads[k])
                        for k, g in schedule_grads.items()}
    grads = {"score": score_grads, "schedule": schedule_grads}
    metrics = {f"{k}_bpd": jnp.mean(b) for k, b in bpd.items()}
    metrics["bpd_vlb"] = sum(metrics[f"{k}_bpd"] for k in TERMS)
    metrics["loss"] = metrics["bpd_vlb"]
    metrics["diffusion_bpd_var"] = jnp.var(bpd["diffusion"])
    metrics["gamma_0"], metrics["gamma_1"] = values["gamma_0"], values["gamma_1"]
    return metrics, grads

  def train_step(self, state: TrainState, batch: dict[str, Any]):
    rng = jax.random.fold_in(state.rng, state.step)
    metrics, grads = self.loss_and_grads(state.params, batch, rng)
    state, step_metrics = optim_lib.apply_gradients(state, grads, self.config.optim)
    return state, dict(metrics, **step_metrics)

  # ---------------------------------------------------------- evaluation
  def eval_step(self, params, batch: dict[str, Any], rng: jax.Array) -> dict[str, jax.Array]:
    """Per-example bits/dim of the bound; the diffusion term averages eval_num_times
    draws of (t, eps) per example, stratified: t_k = mod(u + k/K, 1)."""
    num_times = self.config.vdm.eval_num_times
    batch_size = batch["image"].shape[0]
    u_rng, noise_rng = jax.random.split(rng)
    u = jax.random.uniform(u_rng, (batch_size,), jnp.float32)
    to_bpd = distributions.nats_to_bits_per_dim(1.0, self.num_dims)   # per nat

    def one_draw(k):
      t = jnp.mod(u + k / num_times, 1.0)
      values = self.schedule_values(params["schedule"], t)
      return self.bound_terms(params["score"], values, batch,
                              jax.random.fold_in(noise_rng, k), train=False)

    terms = jax.lax.map(one_draw, jnp.arange(num_times))
    out = {f"{k}_bpd": jnp.mean(terms[k], axis=0) * to_bpd for k in TERMS}
    out["bpd_vlb"] = out["diffusion_bpd"] + out["prior_bpd"] + out["recon_bpd"]
    return out

  # ------------------------------------------------------------ sampling
  def sample(self, params, rng: jax.Array, num_samples: int) -> jax.Array:
    """uint8 NHWC samples by ancestral sampling; conditional models cycle the classes."""
    s = self.config.sampling
    y = sampling_common.cycled_labels(num_samples, self.conditioning.num_classes)
    gamma = self.gamma_fn(params["schedule"])
    z_rng, x_rng = jax.random.split(rng)
    z_0 = ancestral_sample(self.eps_fn(params["score"], y), gamma, z_rng,
                           (num_samples, *self.image_shape), self.num_sampling_steps)
    gamma_0 = gamma(0.0)
    alpha_sq_0, _ = alpha_sigma_sq(gamma_0)
    log_probs = decoder_log_probs(z_0 / jnp.sqrt(alpha_sq_0), gamma_0)
    if s.sample_softmax:
      levels = jax.random.categorical(x_rng, log_probs, axis=-1)
    else:
      levels = jnp.argmax(log_probs, axis=-1)
    return levels.astype(jnp.uint8)

  @property
  def num_sampling_steps(self) -> int:
    """A discrete-time model samples on its own T steps; continuous on sampling.num_steps."""
    return self.config.vdm.num_timesteps or self.config.sampling.num_steps

  def sampler_settings(self) -> dict[str, Any]:
    s, v = self.config.sampling, self.config.vdm
    return dict(sampler="vdm_ancestral", num_steps=self.num_sampling_steps,
                nfe=self.num_sampling_steps, schedule=v.schedule,
                num_timesteps=v.num_timesteps, sample_softmax=s.sample_softmax,
                use_ema=s.use_ema)
