"""The Gaussian forward process of DDPM (Ho et al. 2020) and its posteriors.

Not a network: this is the fixed noising process q(x_{1:T} | x_0) shared by the
diffusion training loss, the samplers and the likelihood evaluation, and the
terms of its variational bound (eq. 5) in bits/dim. It also
holds the two additions of Nichol & Dhariwal (2021, "Improved DDPM"): learned
reverse variances interpolated between beta_t and beta-tilde_t (eq. 15) and
timestep respacing (sec. 4), which samples with a subsequence of the T steps.

Timesteps are 0-based as in the official DDPM code: `t = 0` is the first noising
step (the paper's t = 1) and `t = T - 1` the last. Every per-timestep quantity is
a [T] float32 array computed in float64 numpy first, so that 1 - alphas_cumprod
near t = 0 keeps its precision.
"""
from __future__ import annotations

import math

import flax
import jax
import jax.numpy as jnp
import numpy as np

from models import distributions

BETA_SCHEDULES = ('linear', 'quad', 'const', 'jsd', 'cosine')
# 'learned_range': the network outputs [eps, v] (2C channels); v in [-1, 1]
# interpolates the log variance between beta-tilde_t and beta_t (Nichol &
# Dhariwal eq. 15).
VAR_TYPES = ('fixedlarge', 'fixedsmall', 'learned_range')
LEARNED_VAR_TYPES = ('learned_range',)
RESPACINGS = ('uniform', 'sections "n1,n2,..."')

# Nichol & Dhariwal (2021), eq. 17: the offset s and the cap on beta_t.
_COSINE_OFFSET = 0.008
_COSINE_MAX_BETA = 0.999


def _cosine_f(u: float) -> float:
  """f(t) of Nichol & Dhariwal eq. 17 at u = t / T; alphas_cumprod = f(t) / f(0)."""
  return math.cos((u + _COSINE_OFFSET) / (1 + _COSINE_OFFSET) * math.pi / 2) ** 2


def get_beta_schedule(
    kind: str, *, beta_start: float, beta_end: float, num_timesteps: int
) -> np.ndarray:
  """Returns the [num_timesteps] float64 noise schedule beta_1..beta_T.

  Kinds:
    'linear': evenly spaced from beta_start to beta_end (Ho et al., sec. 4).
    'quad':   sqrt(beta) evenly spaced, then squared (DDPM code).
    'const':  beta_end everywhere (DDPM code); beta_start is unused.
    'jsd':    1/T, 1/(T-1), ..., 1 (Sohl-Dickstein et al.); betas unused.
    'cosine': Nichol & Dhariwal (2021) eq. 17 with s = 0.008,
              beta_t = min(1 - abar(t+1)/abar(t), 0.999); betas unused.
  """
  if not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 2:
    raise ValueError(
        f'num_timesteps must be an integer >= 2, got {num_timesteps!r}.')
  if kind == 'linear':
    betas = np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
  elif kind == 'quad':
    betas = np.linspace(
        beta_start**0.5, beta_end**0.5, num_timesteps, dtype=np.float64)**2
  elif kind == 'const':
    betas = np.full(num_timesteps, beta_end, dtype=np.float64)
  elif kind == 'jsd':
    betas = 1.0 / np.linspace(num_timesteps, 1, num_timesteps, dtype=np.float64)
  elif kind == 'cosine':
    betas = np.array([
        min(1 - _cosine_f((i + 1) / num_timesteps)
            / _cosine_f(i / num_timesteps), _COSINE_MAX_BETA)
        for i in range(num_timesteps)
    ], dtype=np.float64)
  else:
    raise ValueError(
        f'Unknown beta schedule {kind!r}; choose one of {BETA_SCHEDULES}.')
  _check_betas(betas)
  return betas


def _check_betas(betas: np.ndarray) -> None:
  """Raises unless betas is a 1-D array of at least 2 values in (0, 1]."""
  if betas.ndim != 1:
    raise ValueError(f'betas must be 1-D, got shape {betas.shape}.')
  if betas.shape[0] < 2:
    # The t = 0 decoder variance is borrowed from posterior_variance[1].
    raise ValueError(f'Need at least 2 timesteps, got {betas.shape[0]}.')
  if not np.all((betas > 0) & (betas <= 1)):
    raise ValueError(
        'Every beta must lie in (0, 1]; got min '
        f'{betas.min()} and max {betas.max()}: change beta_start/beta_end.')


def _gather(values: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
  """values[t] shaped to broadcast against an array of rank `ndim` ([B, ...])."""
  t = jnp.asarray(t)
  picked = values[t]
  if t.ndim == 0:
    return picked
  return picked.reshape(picked.shape + (1,) * (ndim - t.ndim))


@flax.struct.dataclass
class GaussianDiffusion:
  """The per-timestep constants of q and their use (Ho et al. eqs. 4, 6, 7).

  A pytree of [T] float32 arrays (num_timesteps is static), so it can be closed
  over or passed into a jitted function. Build it with `from_betas`.
  """
  betas: jax.Array
  alphas_cumprod: jax.Array
  alphas_cumprod_prev: jax.Array
  sqrt_alphas_cumprod: jax.Array
  sqrt_one_minus_alphas_cumprod: jax.Array
  log_one_minus_alphas_cumprod: jax.Array
  sqrt_recip_alphas_cumprod: jax.Array
  sqrt_recipm1_alphas_cumprod: jax.Array
  posterior_variance: jax.Array
  posterior_log_variance_clipped: jax.Array
  posterior_mean_coef1: jax.Array
  posterior_mean_coef2: jax.Array
  num_timesteps: int = flax.struct.field(pytree_node=False)

  @classmethod
  def from_betas(cls, betas: np.ndarray) -> 'GaussianDiffusion':
    """Precomputes every constant in float64, then stores float32."""
    betas = np.asarray(betas, dtype=np.float64)
    _check_betas(betas)
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    # Eq. 7: q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, posterior_var).
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (
        1.0 - alphas_cumprod)
    with np.errstate(divide='ignore'):
      # posterior_variance[0] = 0 (x_0 is known); its log is clipped to the
      # t = 1 value as in the DDPM code, which also sets the decoder scale.
      posterior_log_variance_clipped = np.log(
          np.append(posterior_variance[1], posterior_variance[1:]))
      sqrt_recip_alphas_cumprod = np.sqrt(1.0 / alphas_cumprod)
      sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / alphas_cumprod - 1.0)
    consts = dict(
        betas=betas,
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=alphas_cumprod_prev,
        sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
        log_one_minus_alphas_cumprod=np.log(1.0 - alphas_cumprod),
        sqrt_recip_alphas_cumprod=sqrt_recip_alphas_cumprod,
        sqrt_recipm1_alphas_cumprod=sqrt_recipm1_alphas_cumprod,
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=posterior_log_variance_clipped,
        posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (
            1.0 - alphas_cumprod),
        posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (
            1.0 - alphas_cumprod),
    )
    return cls(
        **{k: jnp.asarray(v, dtype=jnp.float32) for k, v in consts.items()},
        num_timesteps=int(betas.shape[0]))

  def q_mean_variance(
      self, x0: jax.Array, t: jax.Array
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean, variance and log-variance of q(x_t | x_0) (eq. 4)."""
    mean = _gather(self.sqrt_alphas_cumprod, t, x0.ndim) * x0
    # Squaring the stored sqrt keeps float32 precision where abar_t ~ 1.
    variance = _gather(jnp.square(self.sqrt_one_minus_alphas_cumprod), t, x0.ndim)
    log_variance = _gather(self.log_one_minus_alphas_cumprod, t, x0.ndim)
    return (mean, jnp.broadcast_to(variance, mean.shape),
            jnp.broadcast_to(log_variance, mean.shape))

  def signal_noise_scales(self, t: jax.Array, ndim: int) -> tuple[jax.Array, jax.Array]:
    """(sqrt(abar_t), sqrt(1 - abar_t)), shaped to broadcast over an array of rank
    `ndim` ([B, ...]): the scales of x_0 and of the noise in eq. 4."""
    return (_gather(self.sqrt_alphas_cumprod, t, ndim),
            _gather(self.sqrt_one_minus_alphas_cumprod, t, ndim))

  def q_sample(self, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise (eq. 4)."""
    signal, noise_scale = self.signal_noise_scales(t, x0.ndim)
    return signal * x0 + noise_scale * noise

  def q_posterior_mean_variance(
      self, x0: jax.Array, x_t: jax.Array, t: jax.Array
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean, variance, clipped log-variance of q(x_{t-1} | x_t, x_0) (eqs. 6-7).

    At t = 0 the variance is 0 (x_{-1} is x_0 itself) while the log-variance
    is clipped to its t = 1 value, as in the DDPM code.
    """
    mean = (_gather(self.posterior_mean_coef1, t, x_t.ndim) * x0
            + _gather(self.posterior_mean_coef2, t, x_t.ndim) * x_t)
    variance = _gather(self.posterior_variance, t, x_t.ndim)
    log_variance = _gather(self.posterior_log_variance_clipped, t, x_t.ndim)
    return (mean, jnp.broadcast_to(variance, mean.shape),
            jnp.broadcast_to(log_variance, mean.shape))

  def predict_x0_from_eps(
      self, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """Inverts eq. 4: x_0 = x_t / sqrt(abar_t) - sqrt(1/abar_t - 1) eps."""
    return (_gather(self.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t
            - _gather(self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * eps)

  def predict_eps_from_x0(
      self, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
    """Inverts eq. 4: eps = (x_t/sqrt(abar_t) - x_0) / sqrt(1/abar_t - 1)."""
    return ((_gather(self.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t - x0)
            / _gather(self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim))

  def model_log_variance(self, t: jax.Array, ndim: int, var_type: str) -> jax.Array:
    """log sigma_t^2 of p(x_{t-1} | x_t) for a fixed-variance model (sec. 3.2).

    'fixedlarge': sigma_t^2 = beta_t, except at t = 0 where, as in the DDPM
    code, the decoder's variance is posterior_variance[1].
    'fixedsmall': sigma_t^2 = the posterior variance of eq. 7, clipped at t = 0.
    'learned_range' depends on the network's output: see
    `learned_range_log_variance`.
    """
    if var_type == 'fixedlarge':
      log_variances = jnp.log(
          jnp.concatenate([self.posterior_variance[1:2], self.betas[1:]]))
    elif var_type == 'fixedsmall':
      log_variances = self.posterior_log_variance_clipped
    elif var_type in LEARNED_VAR_TYPES:
      raise ValueError(
          f'var_type {var_type!r} needs the network output v: call '
          'learned_range_log_variance or p_mean_variance instead.')
    else:
      raise ValueError(
          f'Unknown var_type {var_type!r}; choose one of {VAR_TYPES}.')
    return _gather(log_variances, t, ndim)

  def learned_range_log_variance(self, v: jax.Array, t: jax.Array) -> jax.Array:
    """log Sigma_theta of Nichol & Dhariwal eq. 15 for a network output v.

    v in [-1, 1] maps to frac = (v + 1) / 2 and
      log Sigma = frac log beta_t + (1 - frac) log beta-tilde_t,
    so v = -1 is the posterior variance beta-tilde_t (clipped at t = 0 to its
    t = 1 value, as in `posterior_log_variance_clipped`) and v = 1 is beta_t.
    v is not clipped: outside [-1, 1] the line is extrapolated, as in the
    paper's code.
    """
    frac = (v + 1.0) / 2.0
    max_log = _gather(jnp.log(self.betas), t, v.ndim)
    min_log = _gather(self.posterior_log_variance_clipped, t, v.ndim)
    return frac * max_log + (1.0 - frac) * min_log

  def p_mean_variance(
      self,
      eps: jax.Array,
      x_t: jax.Array,
      t: jax.Array,
      *,
      var_type: str = 'fixedlarge',
      clip_denoised: bool = True,
  ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Mean, variance, log-variance of p(x_{t-1} | x_t), and the x_0 prediction.

    eps is the network output: the predicted noise (x_t's shape) for a fixed
    variance, or [eps, v] concatenated on the last axis (2C channels) for
    'learned_range'. The mean is the posterior mean of eq. 7 at the predicted
    x_0, which equals eq. 11 when x_0 is not clipped. The variance is always
    exp(log_variance): at t = 0 it is the decoder's variance.
    """
    eps, v = split_model_output(eps, x_t, var_type)
    if v is None:
      log_variance = self.model_log_variance(t, x_t.ndim, var_type)
    else:
      log_variance = self.learned_range_log_variance(v, t)
    log_variance = jnp.broadcast_to(log_variance, x_t.shape)
    pred_x0 = self.predict_x0_from_eps(x_t, t, eps)
    if clip_denoised:
      pred_x0 = jnp.clip(pred_x0, -1.0, 1.0)
    mean, _, _ = self.q_posterior_mean_variance(pred_x0, x_t, t)
    return mean, jnp.exp(log_variance), log_variance, pred_x0


def split_model_output(
    output: jax.Array, x_t: jax.Array, var_type: str
) -> tuple[jax.Array, jax.Array | None]:
  """Splits a network output into (eps, v); v is None for a fixed variance.

  A 'learned_range' network outputs 2C channels: eps first, then v.
  Raises ValueError (from static shapes) when the channel count does not fit.
  """
  if var_type not in VAR_TYPES:
    raise ValueError(f'Unknown var_type {var_type!r}; choose one of {VAR_TYPES}.')
  channels = x_t.shape[-1]
  learned = var_type in LEARNED_VAR_TYPES
  expected = output.shape[:-1] + (2 * channels if learned else channels,)
  if output.shape != expected:
    raise ValueError(
        f'With var_type={var_type!r} the network output must have shape '
        f'{expected} for x_t of shape {x_t.shape}, got {output.shape}: a '
        "'learned_range' network outputs 2C channels ([eps, v]), a "
        'fixed-variance one C.')
  if not learned:
    return output, None
  return output[..., :channels], output[..., channels:]


# ------------------------------------------------- terms of the variational bound
# Ho et al. eq. 5: L = L_T + sum_{t>1} L_{t-1} + L_0 with
#   L_T     = KL(q(x_T | x_0) || N(0, I)),
#   L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)),
#   L_0     = -log p(x_0 | x_1), the discretized decoder of eq. 13,
# each in bits/dim: the mean over the sub-pixels of nats, / ln 2.
def _mean_over_dims(x: jax.Array) -> jax.Array:
  """[B, ...] -> [B]: the mean over every non-batch axis."""
  return jnp.mean(x.reshape(x.shape[0], -1), axis=1)


def prior_bpd(diffusion: GaussianDiffusion, x0: jax.Array) -> jax.Array:
  """L_T = KL(q(x_T | x_0) || N(0, I)) in bits/dim, per example [B] (eq. 5)."""
  t = jnp.full((x0.shape[0],), diffusion.num_timesteps - 1, dtype=jnp.int32)
  mean, _, log_variance = diffusion.q_mean_variance(x0, t)
  kl = distributions.gaussian_kl(mean, log_variance, 0.0, 0.0)
  # Already per dimension: bits/dim of one dimension's nats.
  return distributions.nats_to_bits_per_dim(_mean_over_dims(kl), 1)


def vb_terms_bpd(
    eps: jax.Array,
    diffusion: GaussianDiffusion,
    x0: jax.Array,
    x_t: jax.Array,
    t: jax.Array,
    *,
    var_type: str = 'fixedlarge',
    clip_denoised: bool = False,
) -> jax.Array:
  """One bound term per example [B], in bits/dim: L_0 where t = 0, else L_{t-1}.

  eps is the network output at (x_t, t) (`p_mean_variance`); x0 is on the
  [-1, 1] scale and on the 256-level grid. The training loss of Nichol &
  Dhariwal (L_vlb, eq. 16) and the bits/dim evaluation both use it.
  """
  true_mean, _, true_log_variance = diffusion.q_posterior_mean_variance(x0, x_t, t)
  model_mean, _, model_log_variance, _ = diffusion.p_mean_variance(
      eps, x_t, t, var_type=var_type, clip_denoised=clip_denoised)
  kl = _mean_over_dims(distributions.gaussian_kl(
      true_mean, true_log_variance, model_mean, model_log_variance))
  decoder_nll = -_mean_over_dims(distributions.discretized_gaussian_log_likelihood(
      x0, means=model_mean, log_scales=0.5 * model_log_variance))
  # Already per dimension: bits/dim of one dimension's nats.
  return distributions.nats_to_bits_per_dim(jnp.where(t == 0, decoder_nll, kl), 1)


# ---------------------------------------------------------------- respacing
def respaced_timesteps(
    num_timesteps: int, num_steps: int | None = None, spacing: str = 'uniform'
) -> np.ndarray:
  """The increasing 0-based timesteps kept by respacing (Nichol & Dhariwal sec. 4).

  spacing 'uniform' keeps num_steps timesteps evenly spread over [0, T-1],
  first and last included (one section). A section string "n1,n2,..." splits
  [0, T-1] into as many equal parts (the first T % len parts one step longer)
  and keeps n_i evenly spread steps in part i, each part's first and last
  included: the spacing of the paper's code; num_steps, when given, must equal
  the sum. num_steps=None with 'uniform' keeps all T steps.
  """
  if not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 1:
    raise ValueError(f'num_timesteps must be a positive integer, got {num_timesteps!r}.')
  if spacing == 'uniform':
    if num_steps is None:
      num_steps = num_timesteps
    if not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= num_timesteps:
      raise ValueError(
          f'config.sampling.num_steps={num_steps!r} must be an integer in '
          f'[1, {num_timesteps}] (or None for all T steps).')
    sections = [int(num_steps)]
  else:
    try:
      sections = [int(part) for part in str(spacing).split(',')]
    except ValueError:
      raise ValueError(
          f'Unknown respacing {spacing!r}: use "uniform" or comma-separated step '
          'counts per section such as "10,10,5".') from None
    if any(n < 1 for n in sections) or len(sections) > num_timesteps:
      raise ValueError(
          f'Respacing {spacing!r} needs at most {num_timesteps} sections of '
          'at least one step each.')
    if num_steps is not None and num_steps != sum(sections):
      raise ValueError(
          f'config.sampling.num_steps={num_steps} differs from the {sum(sections)} '
          f'steps of respacing {spacing!r}: set num_steps=None or make them agree.')
  base, extra = divmod(num_timesteps, len(sections))
  kept, section_start = [], 0
  for i, count in enumerate(sections):
    size = base + (1 if i < extra else 0)
    if count > size:
      raise ValueError(
          f'Respacing section {i} asks for {count} steps but has only {size} '
          f'timesteps (T={num_timesteps}, {len(sections)} sections).')
    stride = 1.0 if count == 1 else (size - 1) / (count - 1)
    # round() (half to even) keeps the section's last step exactly size - 1.
    kept.extend(section_start + round(j * stride) for j in range(count))
    section_start += size
  return np.asarray(sorted(set(kept)), dtype=np.int64)


def betas_from_alphas_cumprod(alphas_cumprod: np.ndarray) -> np.ndarray:
  """beta_i = 1 - abar_i / abar_{i-1} with abar_{-1} = 1 (float64): the betas of the
  process with these alphas_cumprod (respacing, and score SDEs read as DDPM).

  Raises ValueError unless every beta lies in (0, 1], i.e. unless abar strictly
  decreases from below 1.
  """
  abar = np.asarray(alphas_cumprod, np.float64)
  betas = 1.0 - abar / np.append(1.0, abar[:-1])
  bad = np.flatnonzero(~((betas > 0.0) & (betas <= 1.0)))
  if bad.size:
    i = int(bad[0])
    raise ValueError(
        f'The noise levels are no DDPM process: beta_{i} = {betas[i]:.3g} is outside '
        f'(0, 1] (abar_{i} = {abar[i]:.6g} must lie strictly below abar_{i - 1}, '
        '1 for level -1).')
  return betas


def respace_betas(betas: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
  """The betas of the process that visits only `timesteps` (Nichol & Dhariwal sec. 4).

  The respaced process keeps alphas_cumprod at the kept steps:
  beta'_i = 1 - abar_{t_i} / abar_{t_{i-1}}, with abar = 1 before t_0. With every
  timestep kept it is the original schedule (up to float64 rounding).
  """
  betas = np.asarray(betas, dtype=np.float64)
  _check_betas(betas)
  timesteps = np.asarray(timesteps)
  if (timesteps.ndim != 1 or timesteps.size == 0 or np.any(np.diff(timesteps) <= 0)
      or timesteps[0] < 0 or timesteps[-1] >= betas.shape[0]):
    raise ValueError(
        'timesteps must be a non-empty, strictly increasing list of indices in '
        f'[0, {betas.shape[0] - 1}], got {timesteps}.')
  return betas_from_alphas_cumprod(np.cumprod(1.0 - betas)[timesteps])


def respaced_diffusion(betas: np.ndarray, timesteps: np.ndarray) -> GaussianDiffusion:
  """GaussianDiffusion of the respaced process; index i stands for timesteps[i]."""
  return GaussianDiffusion.from_betas(respace_betas(betas, timesteps))
