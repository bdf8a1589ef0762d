"""Samplers for score-based models: predictor-corrector, probability-flow ODE, EDM
Heun, and DPM-Solver++(2M).

Pure functions of a model callable, an rng and a shape; every sampler returns a
`SampleOutput(images, nfe)` and jits whole. Arguments that shape the computation
(the SDE, shape, names of predictors, step counts, schedules) are Python values,
checked before tracing. Model callables:

  score_fn(x, t [B])        -> grad_x log p_t(x)                 PC, ODE
  denoiser_fn(x, sigma [B]) -> E[x_0 | x_0 + sigma n]            EDM Heun, DPM-Solver++ EDM
  data_fn(x, t [B])         -> E[x_0 | x_t = alpha x_0 + sigma n] DPM-Solver++ on an SDE

models/sde.py turns a score into the other two (`data_prediction_from_score`,
`edm_denoiser_from_score`).

NFE is the number of model evaluations: a Python int for the fixed-step samplers
and an int32 scalar for the adaptive ODE sampler. Randomness: the initial noise
comes from `split(rng)[0]` (or is given as `x_init`, x_T at the first level, to
compare samplers on one draw), the noise of step i from `fold_in(split(rng)[1], i)`
(pc_sample also takes the draws as `noise`, to replay another implementation's:
tests/test_scheduler_parity.py).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence, Union

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from models.sde import SDE, VESDE, VPSDE, broadcast_to_rank, edm_sigma_schedule
from sampling.common import initial_sample, step_noise, step_noises

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]
DenoiserFn = Callable[[jax.Array, jax.Array], jax.Array]

PREDICTORS = ('euler_maruyama', 'reverse_diffusion', 'ancestral_sampling', 'none')
CORRECTORS = ('langevin', 'none')
ODE_SOLVERS = ('tsit5', 'dopri5')
DPM_SKIP_TYPES = ('logSNR', 'time_uniform', 'karras')
# Linear-in-sigma steps never resolve small sigma, so the EDM form offers these two.
DPM_EDM_SKIP_TYPES = ('karras', 'logSNR')
# Both solvers have 7 stages whose last is the first of the next step (FSAL): each
# step, accepted or rejected, costs 6 new evaluations, and the solve one more.
_NEW_EVALS_PER_STEP = {'tsit5': 6, 'dopri5': 6}
# The official DPM-Solver takes its last step at first order below this many steps.
_LOWER_ORDER_FINAL_BELOW = 10


class SampleOutput(NamedTuple):
  """Samples (in the data scaling, unclipped) and the model evaluations they cost."""
  images: jax.Array
  nfe: Union[int, jax.Array]


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
  shape = tuple(int(s) for s in shape)
  if len(shape) < 2 or any(s < 1 for s in shape):
    raise ValueError(
        f'shape must be [B, ...] with rank >= 2 and positive sizes, got {shape}.')
  return shape


def _check_eps(sde: SDE, eps: float | None) -> float:
  eps = sde.eps if eps is None else float(eps)
  if not 0 < eps < sde.T:
    raise ValueError(f'eps must lie in (0, {sde.T}), got {eps}.')
  return eps


def _batch_time(t: jax.Array, batch_size: int) -> jax.Array:
  return jnp.full((batch_size,), t, jnp.float32)


# -- Predictor-corrector (Song et al. 2021, Algorithms 2-4 and App. G). ------------
# A predictor or corrector maps (x, t [B]) to (x, x_mean): the next state and its
# noise-free mean.


def _normal(rng: jax.Array, x: jax.Array, noise: jax.Array | None) -> jax.Array:
  """A predictor's z: `noise` when given (pc_sample's replay), else drawn from rng."""
  return jax.random.normal(rng, x.shape, jnp.float32) if noise is None else noise


def euler_maruyama_predictor(
    score_fn: ScoreFn, sde: SDE, rng: jax.Array, x: jax.Array, t: jax.Array,
    probability_flow: bool = False, index: jax.Array | None = None,
    noise: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """x <- x - f_rev dt + g sqrt(dt) z with dt = T / N (score_sde's step size)."""
  del index  # Continuous time only.
  dt = sde.T / sde.num_scales
  drift, diffusion = sde.reverse_sde(score_fn, x, t, probability_flow)
  x_mean = x - drift * dt
  return x_mean + diffusion * math.sqrt(dt) * _normal(rng, x, noise), x_mean


def reverse_diffusion_predictor(
    score_fn: ScoreFn, sde: SDE, rng: jax.Array, x: jax.Array, t: jax.Array,
    probability_flow: bool = False, index: jax.Array | None = None,
    noise: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """The reverse of the discretized forward chain (eq. 46): x <- x - f_i + G_i z."""
  f, g = sde.reverse_discretize(score_fn, x, t, probability_flow, index)
  x_mean = x - f
  return x_mean + g * _normal(rng, x, noise), x_mean


def ancestral_sampling_predictor(
    score_fn: ScoreFn, sde: SDE, rng: jax.Array, x: jax.Array, t: jax.Array,
    probability_flow: bool = False, index: jax.Array | None = None,
    noise: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Ancestral sampling of the SMLD (eq. 47) or DDPM (eq. 45) chain."""
  del probability_flow  # Rejected before tracing.
  index = sde.discrete_index(t) if index is None else index
  noise = _normal(rng, x, noise)
  score = score_fn(x, t)
  if isinstance(sde, VESDE):
    sigmas = jnp.asarray(sde.discrete_sigmas, jnp.float32)
    sigma = broadcast_to_rank(sigmas[index], x.ndim)
    previous = broadcast_to_rank(
        jnp.where(index == 0, 0.0, sigmas[jnp.maximum(index - 1, 0)]), x.ndim)
    gap = jnp.square(sigma) - jnp.square(previous)
    x_mean = x + score * gap
    std = jnp.sqrt(jnp.square(previous) * gap / jnp.square(sigma))
    return x_mean + std * noise, x_mean
  beta = broadcast_to_rank(
      jnp.asarray(sde.discrete_betas, jnp.float32)[index], x.ndim)
  x_mean = (x + beta * score) / jnp.sqrt(1.0 - beta)
  return x_mean + jnp.sqrt(beta) * noise, x_mean


_PREDICTOR_FNS = {
    'euler_maruyama': euler_maruyama_predictor,
    'reverse_diffusion': reverse_diffusion_predictor,
    'ancestral_sampling': ancestral_sampling_predictor,
}


def langevin_corrector(
    score_fn: ScoreFn, sde: SDE, rng: jax.Array, x: jax.Array, t: jax.Array,
    snr: float, n_steps: int, index: jax.Array | None = None,
    noise: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """n_steps of Langevin MCMC with the step set by a target SNR (Algorithm 4/5).

  step = 2 alpha (snr ||z|| / ||s||)^2 with the norms averaged over the batch, as
  score_sde does; alpha = 1 - beta_i for VP / sub-VP and 1 for VE. noise:
  [n_steps, *x.shape], the z of step k in row k instead of fold_in(rng, k)'s.
  """
  if isinstance(sde, VESDE):
    alpha = jnp.ones((), jnp.float32)
  else:
    index = sde.discrete_index(t) if index is None else index
    alpha = 1.0 - jnp.asarray(sde.discrete_betas, jnp.float32)[index]
    alpha = broadcast_to_rank(alpha, x.ndim)
  batch_size = x.shape[0]

  def step(k, carry):
    x, _ = carry
    grad = score_fn(x, t)
    z = step_noise(noise, k, lambda: jax.random.normal(
        jax.random.fold_in(rng, k), x.shape, jnp.float32))
    grad_norm = jnp.mean(jnp.linalg.norm(grad.reshape(batch_size, -1), axis=-1))
    noise_norm = jnp.mean(jnp.linalg.norm(z.reshape(batch_size, -1), axis=-1))
    step_size = 2 * alpha * jnp.square(snr * noise_norm / grad_norm)
    x_mean = x + step_size * grad
    return x_mean + jnp.sqrt(2 * step_size) * z, x_mean

  return jax.lax.fori_loop(0, n_steps, step, (x, x))


def pc_sample(
    score_fn: ScoreFn,
    sde: SDE,
    rng: jax.Array,
    shape: Sequence[int],
    *,
    predictor: str = 'reverse_diffusion',
    corrector: str = 'langevin',
    snr: float = 0.16,
    n_steps: int = 1,
    probability_flow: bool = False,
    denoise: bool = True,
    eps: float | None = None,
    x_init: jax.Array | None = None,
    noise: jax.Array | None = None,
) -> SampleOutput:
  """The predictor-corrector sampler of Song et al. 2021 (Algorithm 1).

  N = sde.num_scales steps at t_i = linspace(T, eps, N); at each, the corrector
  (Langevin, n_steps) then the predictor. `denoise` returns the last predictor's
  noise-free mean (score_sde's noise removal). NFE = N (p + c) where p = 1 for a
  predictor (0 for 'none') and c = n_steps for Langevin (0 for 'none').
  noise: [N, c + 1, *shape], the draws of step i in row i instead of the rng's, in
  the order they are used: the corrector's c, then the predictor's (unused for
  predictor 'none').
  """
  shape = _check_shape(shape)
  if predictor not in PREDICTORS:
    raise ValueError(f'Unknown predictor {predictor!r}; choose one of {PREDICTORS}.')
  if corrector not in CORRECTORS:
    raise ValueError(f'Unknown corrector {corrector!r}; choose one of {CORRECTORS}.')
  if predictor == 'ancestral_sampling':
    if not isinstance(sde, (VESDE, VPSDE)):
      raise ValueError('ancestral_sampling needs a VESDE or VPSDE (SMLD / DDPM '
                       f'chains), got {type(sde).__name__}: use reverse_diffusion.')
    if probability_flow:
      raise ValueError('ancestral_sampling has no probability-flow form; set '
                       'probability_flow=False or use reverse_diffusion.')
  if corrector == 'langevin':
    if not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
      raise ValueError(f'n_steps must be an integer >= 1, got {n_steps!r}.')
    if not snr > 0:
      raise ValueError(f'snr must be > 0, got {snr}.')
  eps = _check_eps(sde, eps)
  num_steps = sde.num_scales
  corrector_draws = n_steps if corrector == 'langevin' else 0
  noise = step_noises(noise, (num_steps, corrector_draws + 1, *shape))
  timesteps = jnp.asarray(np.linspace(sde.T, eps, num_steps), jnp.float32)
  init_rng, loop_rng = jax.random.split(rng)
  x_init = initial_sample(x_init, shape, lambda: sde.prior_sampling(init_rng, shape))

  def step(i, carry):
    x, x_mean = carry
    t = _batch_time(timesteps[i], shape[0])
    # Step i of the sampler is step N - 1 - i of the discrete chain.
    index = jnp.full((shape[0],), num_steps - 1 - i, jnp.int32)
    corrector_rng, predictor_rng = jax.random.split(jax.random.fold_in(loop_rng, i))
    draws = None if noise is None else noise[i]
    if corrector == 'langevin':
      x, x_mean = langevin_corrector(
          score_fn, sde, corrector_rng, x, t, snr, n_steps, index,
          noise=None if draws is None else draws[:corrector_draws])
    if predictor != 'none':
      x, x_mean = _PREDICTOR_FNS[predictor](
          score_fn, sde, predictor_rng, x, t, probability_flow, index,
          noise=None if draws is None else draws[corrector_draws])
    return x, x_mean

  x, x_mean = jax.lax.fori_loop(0, num_steps, step, (x_init, x_init))
  calls_per_step = ((predictor != 'none')
                    + (n_steps if corrector == 'langevin' else 0))
  return SampleOutput(x_mean if denoise else x, int(num_steps * calls_per_step))


# -- Probability-flow ODE (Song et al. 2021, sec. 4.3). ---------------------------


def get_ode_solver(name: str) -> diffrax.AbstractSolver:
  """The diffrax solver named `name` (one of ODE_SOLVERS)."""
  if name not in ODE_SOLVERS:
    raise ValueError(f'Unknown ODE solver {name!r}; choose one of {ODE_SOLVERS}.')
  return diffrax.Tsit5() if name == 'tsit5' else diffrax.Dopri5()


def check_ode_tolerances(rtol: float, atol: float, dt0: float, max_steps: int) -> None:
  """Raises a ValueError for tolerances or step settings diffrax cannot use."""
  if not (rtol > 0 and atol > 0):
    raise ValueError(f'rtol and atol must be > 0, got rtol={rtol}, atol={atol}.')
  if not dt0 > 0:
    raise ValueError(f'dt0 (the first step size) must be > 0, got {dt0}.')
  if not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
    raise ValueError(f'max_steps must be an integer >= 1, got {max_steps!r}.')


def ode_solve_nfe(solver: str, stats: dict) -> jax.Array:
  """Vector-field evaluations of one diffrax solve from its step statistics."""
  return 1 + _NEW_EVALS_PER_STEP[solver] * jnp.asarray(stats['num_steps'], jnp.int32)


def ode_sample(
    score_fn: ScoreFn,
    sde: SDE,
    rng: jax.Array,
    shape: Sequence[int],
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    solver: str = 'tsit5',
    eps: float | None = None,
    denoise: bool = False,
    dt0: float = 0.01,
    max_steps: int = 4096,
    x_init: jax.Array | None = None,
) -> SampleOutput:
  """Integrates the probability-flow ODE (eq. 13) from x_T ~ prior at T down to eps.

  One adaptive diffrax solve for the whole batch (PID step control on the RMS
  error over the batch, as score_sde's RK45 on the flattened batch). `denoise`
  adds one reverse-diffusion step at eps and returns its mean (one more NFE).
  NFE (an int32 scalar) = 1 + 6 * (accepted + rejected steps) [+ 1].
  """
  shape = _check_shape(shape)
  diffrax_solver = get_ode_solver(solver)
  check_ode_tolerances(rtol, atol, dt0, max_steps)
  eps = _check_eps(sde, eps)
  x_init = initial_sample(x_init, shape,
                          lambda: sde.prior_sampling(jax.random.split(rng)[0], shape))

  def vector_field(t, x, args):
    del args
    drift, _ = sde.reverse_sde(
        score_fn, x, _batch_time(t, shape[0]), probability_flow=True)
    return drift

  solution = diffrax.diffeqsolve(
      diffrax.ODETerm(vector_field), diffrax_solver, t0=sde.T, t1=eps, dt0=-dt0,
      y0=x_init, stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
      saveat=diffrax.SaveAt(t1=True), max_steps=max_steps)
  x = solution.ys[-1]
  nfe = ode_solve_nfe(solver, solution.stats)
  if denoise:
    _, x = reverse_diffusion_predictor(score_fn, sde, jax.random.split(rng)[1], x,
                                       _batch_time(eps, shape[0]))
    nfe = nfe + 1
  return SampleOutput(x, nfe)


# -- EDM (Karras et al. 2022, Algorithms 1 and 2). --------------------------------


def edm_sample(
    denoiser_fn: DenoiserFn,
    rng: jax.Array,
    shape: Sequence[int],
    *,
    num_steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    s_churn: float = 0.0,
    s_min: float = 0.0,
    s_max: float = float('inf'),
    s_noise: float = 1.0,
    sigma_limit: float | None = None,
    x_init: jax.Array | None = None,
) -> SampleOutput:
  """Heun's 2nd-order sampler on the EDM ODE dx/dsigma = (x - D(x, sigma)) / sigma.

  s_churn = 0 is the deterministic Algorithm 1; s_churn > 0 is the stochastic
  Algorithm 2, which first raises sigma_i to sigma_hat = (1 + gamma_i) sigma_i
  with gamma_i = min(s_churn / N, sqrt(2) - 1) for sigma_i in [s_min, s_max]
  (else 0) and adds fresh noise of std s_noise sqrt(sigma_hat^2 - sigma_i^2).
  The schedule is eq. 5 (`edm_sigma_schedule`); the last step, to sigma = 0, is
  an Euler step, so NFE = 2 num_steps - 1.

  sigma_limit: the largest sigma the denoiser is defined at. EDM's preconditioned
  network takes any sigma (None), but a VE score network knows only its training
  range [sigma_min, sigma_max], and churn at sigma_max would query it above: that is
  an error naming the sigma, not a silent extrapolation.
  """
  shape = _check_shape(shape)
  sigmas = edm_sigma_schedule(num_steps, sigma_min, sigma_max, rho)
  if not (s_churn >= 0 and s_noise >= 0 and s_min <= s_max):
    raise ValueError('Need s_churn >= 0, s_noise >= 0 and s_min <= s_max; got '
                     f's_churn={s_churn}, s_noise={s_noise}, s_min={s_min}, '
                     f's_max={s_max}.')
  in_churn_range = (sigmas[:-1] >= s_min) & (sigmas[:-1] <= s_max)
  gamma = min(s_churn / num_steps, math.sqrt(2) - 1)
  gammas = np.where(in_churn_range, gamma, 0.0)
  sigma_hats = sigmas[:-1] * (1 + gammas)
  if sigma_limit is not None and sigma_hats.max() > sigma_limit * (1 + 1e-6):
    raise ValueError(
        f'edm_sample would query the denoiser at sigma={sigma_hats.max():.6g}, above '
        f'its range (sigma_limit={sigma_limit:.6g}): churn raises sigma_i by 1 + '
        f'gamma = {1 + gamma:.6g} for sigma_i in [s_min, s_max]. Set s_max below '
        f'{sigma_limit / (1 + gamma):.6g}, or s_churn=0.')
  churn_stds = s_noise * np.sqrt(np.square(sigma_hats) - np.square(sigmas[:-1]))
  stochastic = bool(np.any(churn_stds > 0))
  sigmas_f32 = jnp.asarray(sigmas, jnp.float32)
  sigma_hats_f32 = jnp.asarray(sigma_hats, jnp.float32)
  churn_stds_f32 = jnp.asarray(churn_stds, jnp.float32)
  batch_size = shape[0]
  init_rng, loop_rng = jax.random.split(rng)
  x_init = initial_sample(
      x_init, shape, lambda: sigmas_f32[0] * jax.random.normal(init_rng, shape, jnp.float32))

  def euler_from_hat(i, x):
    """Churn, then the Euler step sigma_hat_i -> sigma_{i+1}; returns the slope too."""
    sigma_hat = sigma_hats_f32[i]
    if stochastic:
      noise = jax.random.normal(jax.random.fold_in(loop_rng, i), shape, jnp.float32)
      x = x + churn_stds_f32[i] * noise
    slope = (x - denoiser_fn(x, _batch_time(sigma_hat, batch_size))) / sigma_hat
    return x, slope, x + (sigmas_f32[i + 1] - sigma_hat) * slope

  def heun_step(i, x):
    x_hat, slope, x_next = euler_from_hat(i, x)
    sigma_next = sigmas_f32[i + 1]
    slope_next = (x_next - denoiser_fn(x_next, _batch_time(sigma_next, batch_size))
                  ) / sigma_next
    return x_hat + (sigma_next - sigma_hats_f32[i]) * 0.5 * (slope + slope_next)

  x = jax.lax.fori_loop(0, num_steps - 1, heun_step, x_init)
  _, _, x = euler_from_hat(num_steps - 1, x)
  return SampleOutput(x, int(2 * num_steps - 1))


# -- DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2). ------------------------------


def _dpm_solver_pp_2m(data_fn, x, model_times, alphas, sigmas, second_order):
  """Multistep DPM-Solver++ over the grid i = 0..M (float64 numpy schedules).

  With h_i = lambda_{i+1} - lambda_i and D_i the data prediction at step i:
    x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (e^{-h_i} - 1) D~_i
    D~_i = (1 + 1/(2 r_i)) D_i - 1/(2 r_i) D_{i-1},  r_i = h_{i-1} / h_i
  at second order, D~_i = D_i at first order (the first step always). sigma_M may
  be 0 (lambda_M = inf): that step returns D~ itself.
  """
  num_steps = len(model_times) - 1
  with np.errstate(divide='ignore'):
    lambdas = np.log(alphas) - np.log(sigmas)
    h = np.diff(lambdas)
    ratio = sigmas[1:] / sigmas[:-1]
  data_coef = -alphas[1:] * np.expm1(-h)
  use_second = np.asarray(second_order, bool) & (np.arange(num_steps) > 0)
  r = np.ones(num_steps)
  r[1:] = np.where(use_second[1:], h[:-1] / np.where(use_second[1:], h[1:], 1.0), 1.0)
  current_coef = np.where(use_second, 1 + 0.5 / r, 1.0)
  previous_coef = np.where(use_second, -0.5 / r, 0.0)
  consts = [jnp.asarray(a, jnp.float32) for a in
            (model_times, ratio, data_coef, current_coef, previous_coef)]
  model_times, ratio, data_coef, current_coef, previous_coef = consts
  batch_size = x.shape[0]

  def step(i, carry):
    x, previous = carry
    current = data_fn(x, _batch_time(model_times[i], batch_size))
    combined = current_coef[i] * current + previous_coef[i] * previous
    return ratio[i] * x + data_coef[i] * combined, current

  x, _ = jax.lax.fori_loop(0, num_steps, step, (x, jnp.zeros_like(x)))
  return x


def _check_num_steps(num_steps) -> None:
  if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise ValueError(f'num_steps must be an integer >= 1, got {num_steps!r}.')


def _karras_spacing(sigma_hi: float, sigma_lo: float, num_points: int, rho: float):
  """num_points values from sigma_hi to sigma_lo, evenly spaced in sigma^(1/rho)."""
  fraction = np.linspace(0.0, 1.0, num_points)
  return (sigma_hi ** (1 / rho)
          + fraction * (sigma_lo ** (1 / rho) - sigma_hi ** (1 / rho))) ** rho


def dpm_solver_timesteps(sde: SDE, num_steps: int, skip_type: str = 'logSNR',
                         eps: float | None = None, rho: float = 7.0) -> np.ndarray:
  """The num_steps + 1 decreasing times from T to eps visited by DPM-Solver++.

  'logSNR': lambda(t) evenly spaced (Lu et al. recommend it); 'time_uniform': t
  evenly spaced; 'karras': sigma(t)/alpha(t) spaced as Karras et al. eq. 5.
  """
  _check_num_steps(num_steps)
  eps = _check_eps(sde, eps)
  if skip_type == 'time_uniform':
    return np.linspace(sde.T, eps, num_steps + 1)
  lambda_hi, lambda_lo = (float(sde.log_snr(eps)), float(sde.log_snr(sde.T)))
  if skip_type == 'logSNR':
    lambdas = np.linspace(lambda_lo, lambda_hi, num_steps + 1)
  elif skip_type == 'karras':
    lambdas = -np.log(_karras_spacing(
        math.exp(-lambda_lo), math.exp(-lambda_hi), num_steps + 1, rho))
  else:
    raise ValueError(f'Unknown skip_type {skip_type!r}; choose one of {DPM_SKIP_TYPES}.')
  times = np.asarray(sde.t_from_log_snr(lambdas), np.float64)
  # The end points exactly, not their float32 round trip through lambda.
  times[0], times[-1] = sde.T, eps
  return times


def dpm_solver_pp_sample(
    data_fn: Callable[[jax.Array, jax.Array], jax.Array],
    sde: SDE,
    rng: jax.Array,
    shape: Sequence[int],
    *,
    num_steps: int = 20,
    skip_type: str = 'logSNR',
    eps: float | None = None,
    lower_order_final: bool = True,
    denoise_to_zero: bool = False,
    rho: float = 7.0,
    x_init: jax.Array | None = None,
) -> SampleOutput:
  """DPM-Solver++(2M) on the probability-flow ODE of `sde` with a data predictor.

  x_T ~ prior at t = T, then num_steps multistep updates down to eps. As the
  official code, `lower_order_final` takes the last step at first order when
  num_steps < 10; `denoise_to_zero` returns data_fn at eps (one more NFE).
  NFE = num_steps (+ 1).
  """
  shape = _check_shape(shape)
  times = dpm_solver_timesteps(sde, num_steps, skip_type, eps, rho)
  alphas = np.asarray(sde.alpha(times), np.float64)
  sigmas = np.asarray(sde.sigma(times), np.float64)
  second_order = np.ones(num_steps, bool)
  if lower_order_final and num_steps < _LOWER_ORDER_FINAL_BELOW:
    second_order[-1] = False
  x = initial_sample(x_init, shape,
                     lambda: sde.prior_sampling(jax.random.split(rng)[0], shape))
  x = _dpm_solver_pp_2m(data_fn, x, times, alphas, sigmas, second_order)
  nfe = num_steps
  if denoise_to_zero:
    x = data_fn(x, _batch_time(times[-1], shape[0]))
    nfe += 1
  return SampleOutput(x, int(nfe))


def dpm_solver_pp_edm_sample(
    denoiser_fn: DenoiserFn,
    rng: jax.Array,
    shape: Sequence[int],
    *,
    num_steps: int = 20,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    skip_type: str = 'karras',
    x_init: jax.Array | None = None,
) -> SampleOutput:
  """DPM-Solver++(2M) in EDM's parameterisation x = x_0 + sigma n (alpha = 1).

  lambda = -log sigma. The num_steps levels run from sigma_max to sigma_min
  ('karras': eq. 5 with rho; 'logSNR': geometric) with sigma = 0 appended; the
  last step, to 0, is first order and lands on the denoiser output (as
  k-diffusion's sample_dpmpp_2m). NFE = num_steps.
  """
  shape = _check_shape(shape)
  _check_num_steps(num_steps)
  if not 0 < sigma_min < sigma_max:
    raise ValueError('Need 0 < sigma_min < sigma_max, got sigma_min='
                     f'{sigma_min}, sigma_max={sigma_max}.')
  if skip_type == 'karras':
    sigmas = edm_sigma_schedule(num_steps, sigma_min, sigma_max, rho)
  elif skip_type == 'logSNR':
    sigmas = np.append(np.geomspace(sigma_max, sigma_min, num_steps), 0.0)
  else:
    raise ValueError(
        f'Unknown skip_type {skip_type!r}; choose one of {DPM_EDM_SKIP_TYPES}.')
  second_order = np.ones(num_steps, bool)
  second_order[-1] = False
  x = initial_sample(x_init, shape, lambda: sigma_max * jax.random.normal(
      jax.random.split(rng)[0], shape, jnp.float32))
  x = _dpm_solver_pp_2m(denoiser_fn, x, sigmas, np.ones_like(sigmas), sigmas,
                        second_order)
  return SampleOutput(x, int(num_steps))
