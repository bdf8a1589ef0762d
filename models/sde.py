"""The forward SDEs of score-based generative modelling (Song et al. 2021).

Not a network: the fixed noising processes dx = f(t) x dt + g(t) dw on t in [0, T]
shared by the score losses (train/score_losses.py), the samplers (sampling/sde_samplers.py)
and the probability-flow likelihood (evaluation/ode_likelihood.py).

  VESDE     f = 0,            g = sigma(t) sqrt(2 log(sigma_max / sigma_min))  (eq. 30)
  VPSDE     f = -beta(t) / 2, g = sqrt(beta(t))                                (eq. 32)
  SubVPSDE  f = -beta(t) / 2, g = sqrt(beta(t) (1 - exp(-2 int_0^t beta)))      (eq. 34)

with sigma(t) = sigma_min (sigma_max / sigma_min)^t and beta(t) = beta_min +
t (beta_max - beta_min). The perturbation kernels are Gaussian,
x_t | x_0 ~ N(alpha(t) x_0, sigma(t)^2 I) (`marginal_prob`), which also gives the
half-log-SNR lambda(t) = log(alpha / sigma) used by DPM-Solver (Lu et al. 2022).

Every SDE is a small frozen dataclass of Python floats, so it hashes and can be a
static argument of `jax.jit`. Time arrays `t` are scalars or [B] (one per example)
and broadcast against x of shape [B, ...]. The discrete chains (`discretize`,
`discrete_sigmas`, `discrete_betas`) are those of SMLD (Song & Ermon 2019) and
DDPM (Ho et al. 2020) with `num_scales` steps, as in the official score_sde code.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Union

import jax
import jax.numpy as jnp
import numpy as np

# score_fn(x [B, ...], t [B]) -> grad_x log p_t(x), shaped like x.
ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def broadcast_to_rank(values: jax.Array, ndim: int) -> jax.Array:
  """A scalar or [B] array reshaped to [B, 1, ..., 1] for arrays of rank ndim."""
  values = jnp.asarray(values)
  if values.ndim == 0:
    return values
  return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def _as_time(t):
  """(array namespace, t): numpy float64 for host values, jnp float32 for jax arrays.

  Schedules (e.g. DPM-Solver's time grid) are computed on the host in float64 even
  while a sampler is being traced; model-time values stay on the device.
  """
  if isinstance(t, jax.Array):
    return jnp, t.astype(jnp.float32)
  return np, np.asarray(t, np.float64)


def _check_num_scales(num_scales) -> None:
  if not isinstance(num_scales, (int, np.integer)) or num_scales < 2:
    raise ValueError(f'num_scales must be an integer >= 2, got {num_scales!r}.')


def _discrete_index(t: jax.Array, num_scales: int, total_time: float) -> jax.Array:
  """The discrete step i in [0, N - 1] that continuous time t stands for.

  score_sde truncates t (N - 1) / T. On its sampling grid linspace(T, eps, N),
  t_k (N - 1) / T = (N - 1 - k) + k eps / T, whose fractional part is at most
  (N - 1) eps / T (0.999 for VP with N = 1000, eps = 1e-3; 0.01 for VE with
  eps = 1e-5). In float32, t (N - 1) is off by up to ~1e-4 for N <= 1000, which
  would drop VE steps to the integer below; 2^-12 (2.4e-4) absorbs it. The PC
  sampler passes its step index explicitly, so it never relies on this.
  """
  index = jnp.floor(jnp.asarray(t) * (num_scales - 1) / total_time + 2.0**-12)
  return jnp.clip(index, 0, num_scales - 1).astype(jnp.int32)


class _SDEBase:
  """Methods shared by the three SDEs; subclasses define the scalar coefficients."""

  num_scales: int

  @property
  def T(self) -> float:  # noqa: N802 (the paper's name)
    """The end time of the forward process."""
    return 1.0

  # -- Scalar coefficients, defined by each subclass. ------------------------------

  def drift_coef(self, t: jax.Array) -> jax.Array:
    """f(t) in the drift f(t) x."""
    raise NotImplementedError

  def diffusion_coef(self, t: jax.Array) -> jax.Array:
    """g(t)."""
    raise NotImplementedError

  def alpha(self, t: jax.Array) -> jax.Array:
    """The mean coefficient: E[x_t | x_0] = alpha(t) x_0."""
    raise NotImplementedError

  def sigma(self, t: jax.Array) -> jax.Array:
    """The perturbation std: x_t = alpha(t) x_0 + sigma(t) z."""
    raise NotImplementedError

  def log_snr(self, t: jax.Array) -> jax.Array:
    """lambda(t) = log(alpha(t) / sigma(t)), half the log signal-to-noise ratio."""
    raise NotImplementedError

  def t_from_log_snr(self, log_snr: jax.Array) -> jax.Array:
    """The inverse of `log_snr` (lambda is strictly decreasing in t)."""
    raise NotImplementedError

  def likelihood_importance_cum_weight(self, t: jax.Array) -> jax.Array:
    """An antiderivative F(t) of g(t)^2 / sigma(t)^2 (Song et al. 2021b, sec. 5)."""
    raise NotImplementedError

  def t_from_likelihood_importance_cum_weight(self, cum: jax.Array) -> jax.Array:
    """The inverse of `likelihood_importance_cum_weight`."""
    raise NotImplementedError

  def prior_logp(self, z: jax.Array) -> jax.Array:
    """log N(z; 0, prior_std^2 I) per example [B], summed over all other axes."""
    prior_std = self.prior_std
    num_dims = math.prod(z.shape[1:])
    sq_norm = jnp.sum(jnp.square(z).reshape(z.shape[0], -1), axis=-1)
    return (-0.5 * num_dims * math.log(2 * math.pi * prior_std**2)
            - 0.5 * sq_norm / prior_std**2)

  @property
  def prior_std(self) -> float:
    raise NotImplementedError

  @property
  def eps(self) -> float:
    """The default smallest time of sampling (score_sde's `sampling_eps`)."""
    raise NotImplementedError

  # -- Generic forms built from the coefficients. ----------------------------------

  def sde(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(drift f(t) x, diffusion g(t)) of the forward SDE; g broadcasts against x."""
    return (broadcast_to_rank(self.drift_coef(t), x.ndim) * x,
            broadcast_to_rank(self.diffusion_coef(t), x.ndim))

  def marginal_prob(self, x0: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean alpha(t) x0, std sigma(t)) of the perturbation kernel p_0t(x_t | x_0)."""
    return (broadcast_to_rank(self.alpha(t), x0.ndim) * x0,
            broadcast_to_rank(self.sigma(t), x0.ndim))

  def prior_sampling(self, rng: jax.Array, shape) -> jax.Array:
    """A draw from the prior p_T = N(0, prior_std^2 I)."""
    return self.prior_std * jax.random.normal(rng, tuple(shape), jnp.float32)

  def discretize(self, x: jax.Array, t: jax.Array,
                 index: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(f_i, G_i) of one forward step x_{i+1} = x_i + f_i + G_i z.

    Euler-Maruyama with dt = T / N by default; VE and VP override it with the
    exact SMLD / DDPM chains at step `index` (default: `discrete_index(t)`).
    """
    del index  # Euler-Maruyama needs only t.
    dt = self.T / self.num_scales
    drift, diffusion = self.sde(x, t)
    return drift * dt, diffusion * math.sqrt(dt)

  def reverse_sde(self, score_fn: ScoreFn, x: jax.Array, t: jax.Array,
                  probability_flow: bool = False) -> tuple[jax.Array, jax.Array]:
    """(drift, diffusion) of the reverse-time SDE (eq. 6) or probability flow (eq. 13).

      reverse SDE:      dx = [f - g^2 score] dt + g dw_bar
      probability flow: dx = [f - g^2 score / 2] dt
    """
    drift, diffusion = self.sde(x, t)
    weight = 0.5 if probability_flow else 1.0
    drift = drift - jnp.square(diffusion) * score_fn(x, t) * weight
    return drift, (jnp.zeros_like(diffusion) if probability_flow else diffusion)

  def reverse_discretize(
      self, score_fn: ScoreFn, x: jax.Array, t: jax.Array,
      probability_flow: bool = False, index: jax.Array | None = None,
  ) -> tuple[jax.Array, jax.Array]:
    """(f_i, G_i) of the discretized reverse step, x_{i-1} = x_i - f_i + G_i z."""
    f, g = self.discretize(x, t, index)
    weight = 0.5 if probability_flow else 1.0
    f = f - jnp.square(g) * score_fn(x, t) * weight
    return f, (jnp.zeros_like(g) if probability_flow else g)

  def discrete_index(self, t: jax.Array) -> jax.Array:
    """The step i in [0, N - 1] of the discrete chain at continuous time t."""
    return _discrete_index(t, self.num_scales, self.T)


@dataclasses.dataclass(frozen=True)
class VESDE(_SDEBase):
  """Variance exploding SDE (Song et al. 2021, eq. 30); SMLD in the discrete case."""
  sigma_min: float = 0.01
  sigma_max: float = 50.0
  num_scales: int = 1000

  def __post_init__(self):
    if not 0 < self.sigma_min < self.sigma_max:
      raise ValueError('VESDE needs 0 < sigma_min < sigma_max, got sigma_min='
                       f'{self.sigma_min}, sigma_max={self.sigma_max}.')
    _check_num_scales(self.num_scales)

  @property
  def _log_ratio(self) -> float:
    return math.log(self.sigma_max / self.sigma_min)

  @property
  def eps(self) -> float:
    return 1e-5

  @property
  def prior_std(self) -> float:
    return float(self.sigma_max)

  def drift_coef(self, t):
    xp, t = _as_time(t)
    return xp.zeros_like(t)

  def diffusion_coef(self, t):
    # d sigma(t)^2 / dt = 2 log(sigma_max / sigma_min) sigma(t)^2.
    return self.sigma(t) * math.sqrt(2 * self._log_ratio)

  def alpha(self, t):
    xp, t = _as_time(t)
    return xp.ones_like(t)

  def sigma(self, t):
    # As score_sde, the std is sigma(t) itself, not sqrt(sigma(t)^2 - sigma_min^2)
    # that the SDE started at t = 0 would give; the two differ by sigma_min^2.
    xp, t = _as_time(t)
    return self.sigma_min * xp.exp(t * self._log_ratio)

  def log_snr(self, t):
    _, t = _as_time(t)
    return -(math.log(self.sigma_min) + t * self._log_ratio)

  def t_from_log_snr(self, log_snr):
    _, log_snr = _as_time(log_snr)
    return (-log_snr - math.log(self.sigma_min)) / self._log_ratio

  def likelihood_importance_cum_weight(self, t):
    # g^2 / sigma^2 = 2 log(sigma_max / sigma_min), a constant: uniform t.
    _, t = _as_time(t)
    return 2 * self._log_ratio * t

  def t_from_likelihood_importance_cum_weight(self, cum):
    _, cum = _as_time(cum)
    return cum / (2 * self._log_ratio)

  @property
  def discrete_sigmas(self) -> np.ndarray:
    """SMLD's N noise levels, geometric from sigma_min up to sigma_max (float64)."""
    return np.exp(np.linspace(
        math.log(self.sigma_min), math.log(self.sigma_max), self.num_scales))

  def discretize(self, x, t, index=None):
    """SMLD: x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z, sigma_{-1} = 0."""
    index = self.discrete_index(t) if index is None else index
    sigmas = jnp.asarray(self.discrete_sigmas, jnp.float32)
    sigma = sigmas[index]
    previous_sigma = jnp.where(index == 0, 0.0, sigmas[jnp.maximum(index - 1, 0)])
    diffusion = jnp.sqrt(jnp.square(sigma) - jnp.square(previous_sigma))
    return jnp.zeros_like(x), broadcast_to_rank(diffusion, x.ndim)


class _BetaLinearSDE(_SDEBase):
  """Shared by VP and sub-VP: beta(t) linear, B(t) = int_0^t beta(s) ds."""
  beta_min: float
  beta_max: float
  num_scales: int

  def __post_init__(self):
    if not (0 <= self.beta_min <= self.beta_max and self.beta_max > 0):
      raise ValueError(f'{type(self).__name__} needs 0 <= beta_min <= beta_max, '
                       f'beta_max > 0; got beta_min={self.beta_min}, '
                       f'beta_max={self.beta_max}.')
    _check_num_scales(self.num_scales)

  @property
  def eps(self) -> float:
    return 1e-3

  @property
  def prior_std(self) -> float:
    return 1.0

  def beta(self, t):
    _, t = _as_time(t)
    return self.beta_min + t * (self.beta_max - self.beta_min)

  def integrated_beta(self, t):
    """B(t) = beta_min t + (beta_max - beta_min) t^2 / 2."""
    _, t = _as_time(t)
    return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

  def t_from_integrated_beta(self, integrated_beta):
    """The positive root of (beta_max - beta_min) t^2 / 2 + beta_min t - B = 0.

    Written as 2B / (beta_min + sqrt(beta_min^2 + 2 (beta_max - beta_min) B)),
    which neither cancels for small B nor divides by zero when beta is constant.
    """
    xp, b = _as_time(integrated_beta)
    delta = self.beta_max - self.beta_min
    return 2 * b / (self.beta_min + xp.sqrt(self.beta_min**2 + 2 * delta * b))

  def drift_coef(self, t):
    return -0.5 * self.beta(t)

  def alpha(self, t):
    # log alpha = -B(t) / 2 (score_sde's log_mean_coeff).
    xp, _ = _as_time(t)
    return xp.exp(-0.5 * self.integrated_beta(t))

  @property
  def discrete_betas(self) -> np.ndarray:
    """DDPM's N betas, linear from beta_min / N to beta_max / N (float64)."""
    n = self.num_scales
    if self.beta_max >= n:
      raise ValueError(
          f'The discrete chain needs beta_max / num_scales < 1, got beta_max='
          f'{self.beta_max}, num_scales={n}: raise num_scales.')
    return np.linspace(self.beta_min / n, self.beta_max / n, n)

  @property
  def alphas_cumprod(self) -> np.ndarray:
    """prod_{j <= i} (1 - beta_j) of the discrete chain (float64)."""
    return np.cumprod(1.0 - self.discrete_betas)


@dataclasses.dataclass(frozen=True)
class VPSDE(_BetaLinearSDE):
  """Variance preserving SDE (Song et al. 2021, eq. 32); DDPM in the discrete case."""
  beta_min: float = 0.1
  beta_max: float = 20.0
  num_scales: int = 1000

  def diffusion_coef(self, t):
    xp, _ = _as_time(t)
    return xp.sqrt(self.beta(t))

  def sigma(self, t):
    # sigma^2 = 1 - exp(-B); expm1 keeps it accurate for small t in float32.
    xp, _ = _as_time(t)
    return xp.sqrt(-xp.expm1(-self.integrated_beta(t)))

  def log_snr(self, t):
    # lambda = -B/2 - log(1 - e^{-B}) / 2 = -log(e^B - 1) / 2.
    xp, _ = _as_time(t)
    b = self.integrated_beta(t)
    return -0.5 * (b + xp.log(-xp.expm1(-b)))

  def t_from_log_snr(self, log_snr):
    # e^{-2 lambda} = e^B - 1, so B = softplus(-2 lambda) = log(1 + e^{-2 lambda}).
    xp, log_snr = _as_time(log_snr)
    return self.t_from_integrated_beta(xp.logaddexp(0.0, -2 * log_snr))

  def likelihood_importance_cum_weight(self, t):
    # g^2 / sigma^2 = beta / (1 - e^{-B}) = d/dt log(e^B - 1).
    xp, _ = _as_time(t)
    return xp.log(xp.expm1(self.integrated_beta(t)))

  def t_from_likelihood_importance_cum_weight(self, cum):
    xp, cum = _as_time(cum)
    return self.t_from_integrated_beta(xp.logaddexp(0.0, cum))

  def discretize(self, x, t, index=None):
    """DDPM: x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z (Ho et al. eq. 2)."""
    index = self.discrete_index(t) if index is None else index
    beta = jnp.asarray(self.discrete_betas, jnp.float32)[index]
    beta = broadcast_to_rank(beta, x.ndim)
    return jnp.sqrt(1.0 - beta) * x - x, jnp.sqrt(beta)


@dataclasses.dataclass(frozen=True)
class SubVPSDE(_BetaLinearSDE):
  """Sub-VP SDE (Song et al. 2021, eq. 34): variance below the VP's at every t."""
  beta_min: float = 0.1
  beta_max: float = 20.0
  num_scales: int = 1000

  def diffusion_coef(self, t):
    xp, _ = _as_time(t)
    return xp.sqrt(self.beta(t) * -xp.expm1(-2 * self.integrated_beta(t)))

  def sigma(self, t):
    # Song et al. eq. 34: Sigma(t) = (1 - e^{-B})^2 I, so the std is 1 - e^{-B}.
    xp, _ = _as_time(t)
    return -xp.expm1(-self.integrated_beta(t))

  def log_snr(self, t):
    xp, _ = _as_time(t)
    b = self.integrated_beta(t)
    return -0.5 * b - xp.log(-xp.expm1(-b))

  def t_from_log_snr(self, log_snr):
    # With y = e^{-B/2}: e^lambda = y / (1 - y^2), whose root in (0, 1) gives
    # -log y = asinh(e^{-lambda} / 2), so B = 2 asinh(e^{-lambda} / 2).
    xp, log_snr = _as_time(log_snr)
    return self.t_from_integrated_beta(2 * xp.arcsinh(0.5 * xp.exp(-log_snr)))

  def likelihood_importance_cum_weight(self, t):
    # g^2 / sigma^2 = beta (1 + e^{-B}) / (1 - e^{-B}) = d/dt [2 log(e^B - 1) - B].
    xp, _ = _as_time(t)
    b = self.integrated_beta(t)
    return 2 * xp.log(xp.expm1(b)) - b

  def t_from_likelihood_importance_cum_weight(self, cum):
    # With q = e^F and y = e^B: q = (y - 1)^2 / y, whose root y > 1 is
    # y - 1 = (q + sqrt(q (q + 4))) / 2.
    xp, cum = _as_time(cum)
    q = xp.exp(cum)
    return self.t_from_integrated_beta(xp.log1p(0.5 * (q + xp.sqrt(q * (q + 4)))))


SDE = Union[VESDE, VPSDE, SubVPSDE]


def edm_sigma_schedule(num_steps: int, sigma_min: float = 0.002,
                       sigma_max: float = 80.0, rho: float = 7.0) -> np.ndarray:
  """The EDM noise levels (Karras et al. 2022, eq. 5) with sigma_N = 0 appended.

    sigma_i = (s_max^(1/rho) + i / (N - 1) (s_min^(1/rho) - s_max^(1/rho)))^rho

  for i = 0..N-1, so [num_steps + 1] float64 values from sigma_max down to 0.
  """
  if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise ValueError(f'num_steps must be an integer >= 1, got {num_steps!r}.')
  if not 0 < sigma_min <= sigma_max:
    raise ValueError('Need 0 < sigma_min <= sigma_max, got sigma_min='
                     f'{sigma_min}, sigma_max={sigma_max}.')
  if not rho > 0:
    raise ValueError(f'rho must be > 0, got {rho}.')
  if num_steps == 1:
    return np.array([sigma_max, 0.0])
  fraction = np.arange(num_steps, dtype=np.float64) / (num_steps - 1)
  inv_rho_min, inv_rho_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
  sigmas = (inv_rho_max + fraction * (inv_rho_min - inv_rho_max)) ** rho
  return np.append(sigmas, 0.0)


# -- Adapters between the model outputs the losses train and what samplers need. ----


def data_prediction_from_score(score_fn: ScoreFn, sde: SDE):
  """x0_fn(x_t, t) = E[x_0 | x_t] = (x_t + sigma^2 score) / alpha (Tweedie)."""
  def x0_fn(x, t):
    alpha = broadcast_to_rank(sde.alpha(t), x.ndim)
    sigma = broadcast_to_rank(sde.sigma(t), x.ndim)
    return (x + jnp.square(sigma) * score_fn(x, t)) / alpha
  return x0_fn


def edm_denoiser_from_score(score_fn: ScoreFn, sde: SDE):
  """An EDM denoiser D(x, sigma) (x = x_0 + sigma n) from a score of any SDE.

  Karras et al. sec. 4: x_t = alpha(t) x_hat with x_hat = x_0 + (sigma_t / alpha_t) n,
  so sigma_edm = sigma_t / alpha_t = exp(-lambda(t)); we invert lambda for t, query
  the score at alpha(t) x and return E[x_0 | x_t]. sigma is [B] (or scalar).
  """
  x0_fn = data_prediction_from_score(score_fn, sde)

  def denoiser_fn(x, sigma):
    t = sde.t_from_log_snr(-jnp.log(sigma))
    t = jnp.broadcast_to(t, (x.shape[0],))
    return x0_fn(broadcast_to_rank(sde.alpha(t), x.ndim) * x, t)
  return denoiser_fn


def score_from_smld_model(model_fn: Callable[[jax.Array, jax.Array], jax.Array],
                          sde: VESDE) -> ScoreFn:
  """score_fn(x, t) from a network trained by `smld_loss` on integer labels.

  The SMLD label indexes the descending sigmas (label 0 is sigma_max): label =
  N - 1 - discrete_index(t), which on the sampling grid equals score_sde's
  round((T - t)(N - 1) / T) for discrete VE models.
  """
  def score_fn(x, t):
    labels = sde.num_scales - 1 - sde.discrete_index(t)
    return model_fn(x, jnp.broadcast_to(labels, (x.shape[0],)))
  return score_fn


def score_from_ddpm_model(eps_fn: Callable[[jax.Array, jax.Array], jax.Array],
                          sde: VPSDE) -> ScoreFn:
  """score_fn(x, t) = -eps(x, i) / sqrt(1 - abar_i) from an eps network of `ddpm_loss`.

  The DDPM label is the discrete step i = discrete_index(t) (0 = least noise).
  """
  sqrt_one_minus = jnp.asarray(np.sqrt(1.0 - sde.alphas_cumprod), jnp.float32)

  def score_fn(x, t):
    labels = jnp.broadcast_to(sde.discrete_index(t), (x.shape[0],))
    std = broadcast_to_rank(sqrt_one_minus[labels], x.ndim)
    return -eps_fn(x, labels) / std
  return score_fn
