"""Tests for sampling/sde_samplers.py with the exact score of Gaussian data.

For x0 ~ N(mu, diag(s^2)) every SDE's marginal is Gaussian and its score is
score(x, t) = -(x - m(t) mu) / (m(t)^2 s^2 + std(t)^2); in EDM's form the exact
denoiser is D(x, sigma) = mu + s^2 (x - mu) / (s^2 + sigma^2). Each sampler driven
by them must return N(mu, s^2). Tolerances are 4 standard errors of the sample
mean (s / sqrt(n)) and variance (s^2 sqrt(2 / (n - 1))), plus, where stated, an
allowance for the sampler's own discretization bias measured with 400k samples.

The deterministic samplers are also checked sample by sample against the exact
flow map, which for Gaussian data is affine: x_end - m mu = sqrt(v_end / v_start)
(x_start - m mu), v = m^2 s^2 + std^2; their error must shrink at their order.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.sde import (SubVPSDE, VESDE, VPSDE, data_prediction_from_score,
                        edm_sigma_schedule)
from sampling.sde_samplers import (
    SampleOutput, dpm_solver_pp_edm_sample, dpm_solver_pp_sample, edm_sample,
    langevin_corrector, ode_sample, pc_sample)

MU = np.array([0.3, -0.2])
STD = np.array([0.3, 0.6])
NUM_SAMPLES = 100_000
SHAPE = (NUM_SAMPLES, 2)
# The PC samplers take 1000 steps: fewer samples keep them fast.
PC_SHAPE = (40_000, 2)
SDES = {'ve': VESDE(num_scales=1000), 'vp': VPSDE(num_scales=1000),
        'subvp': SubVPSDE(num_scales=1000)}


def gaussian_score(sde):
  def score_fn(x, t):
    m, sd = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    return -(x - m * MU) / (m**2 * STD**2 + sd**2)
  return score_fn


def gaussian_denoiser(x, sigma):
  sigma = sigma[:, None]
  return MU + STD**2 / (STD**2 + sigma**2) * (x - MU)


def _assert_matches_data(images, var_allowance=0.0, mean_allowance=0.0):
  samples = np.asarray(images, np.float64)
  n = samples.shape[0]
  mean_error = np.abs(samples.mean(0) - MU)
  var_error = np.abs(samples.var(0) / STD**2 - 1)
  assert np.all(mean_error < 4 * STD / math.sqrt(n) + mean_allowance), mean_error
  assert np.all(var_error < 4 * math.sqrt(2 / (n - 1)) + var_allowance), var_error


# -- Predictor-corrector. ----------------------------------------------------------

# With N = 1000 steps the largest biases (400k samples) are +1.5% (VP
# reverse_diffusion) and -1.4% (VE ancestral) in the variance of the narrow dim;
# they shrink as 1/N.
PC_VAR_ALLOWANCE = 0.02
# Every predictor on VE and VP, Langevin on all three SDEs (sub-VP's
# reverse_diffusion is its Euler-Maruyama discretization).
PC_CASES = [
    ('ve', 'euler_maruyama', 'none'),
    ('ve', 'ancestral_sampling', 'none'),
    ('ve', 'reverse_diffusion', 'langevin'),
    ('vp', 'euler_maruyama', 'none'),
    ('vp', 'reverse_diffusion', 'none'),
    ('vp', 'ancestral_sampling', 'langevin'),
    ('subvp', 'reverse_diffusion', 'langevin'),
]


# Every predictor and the corrector stay in the default tier (VE and VP); the other
# combinations run in the integration tier.
PC_INTEGRATION = {('ve', 'ancestral_sampling', 'none'),
                  ('ve', 'reverse_diffusion', 'langevin'),
                  ('vp', 'euler_maruyama', 'none'),
                  ('subvp', 'reverse_diffusion', 'langevin')}


@pytest.mark.parametrize('sde_name,predictor,corrector', [
    pytest.param(*c, marks=pytest.mark.integration) if c in PC_INTEGRATION else c
    for c in PC_CASES], ids=['-'.join(c) for c in PC_CASES])
def test_pc_sampler_reproduces_gaussian_data(sde_name, predictor, corrector):
  sde = SDES[sde_name]
  # snr = 0.05: the Langevin step's own bias, h / (2 v), stays below 0.5%.
  out = jax.jit(lambda rng: pc_sample(
      gaussian_score(sde), sde, rng, PC_SHAPE, predictor=predictor,
      corrector=corrector, snr=0.05))(jax.random.key(0))
  _assert_matches_data(out.images, var_allowance=PC_VAR_ALLOWANCE)


@pytest.mark.parametrize('sde,t', [(VPSDE(), 0.05), (VESDE(), 0.3)], ids=['vp', 've'])
def test_langevin_corrector_converges_to_the_marginal(sde, t):
  """From a wrong start (N(0, 1)) Langevin at fixed t must reach p_t = N(m mu, v).

  The step is h ~ 2 snr^2 ||z||^2 / ||s||^2 ~ 1e-3; the slowest mode (the mean of
  the wide dim) relaxes as exp(-h k / v) ~ e^-7 after k = 3000 steps.
  """
  n = 10_000
  x_start = jax.random.normal(jax.random.key(1), (n, 2))
  t_batch = jnp.full((n,), t, jnp.float32)
  x, _ = jax.jit(lambda x: langevin_corrector(
      gaussian_score(sde), sde, jax.random.key(2), x, t_batch, snr=0.05,
      n_steps=3000))(x_start)
  m, sd = float(sde.alpha(t)), float(sde.sigma(t))
  std_t = np.sqrt(m**2 * STD**2 + sd**2)
  samples = np.asarray(x, np.float64)
  assert np.all(np.abs(samples.mean(0) - m * MU) < 4 * std_t / math.sqrt(n))
  # ULA's stationary variance is v / (1 - h / (2 v)): +0.4% here.
  assert np.all(np.abs(samples.var(0) / std_t**2 - 1) < 4 * math.sqrt(2 / n) + 0.01)


@pytest.mark.parametrize('sde_class,predictor', [
    (VESDE, 'euler_maruyama'),
    pytest.param(VESDE, 'reverse_diffusion', marks=pytest.mark.integration),
    (VPSDE, 'reverse_diffusion')])
def test_probability_flow_predictors_converge_to_the_ode_solution(
    sde_class, predictor, fast_compile):
  """With probability_flow and no corrector, PC is a first-order ODE solver; it
  shares x_T with ode_sample (same rng), so its error must shrink as 1/N."""
  shape, rng = (64, 2), jax.random.key(3)
  reference = ode_sample(gaussian_score(sde_class()), sde_class(), rng, shape,
                         rtol=1e-6, atol=1e-6).images

  def error(num_scales):
    sde = sde_class(num_scales=num_scales)
    out = pc_sample(gaussian_score(sde), sde, rng, shape, predictor=predictor,
                    corrector='none', probability_flow=True)
    return float(jnp.max(jnp.abs(out.images - reference)))

  coarse, fine = error(100), error(400)
  assert coarse / fine > 3.0, (coarse, fine)


# -- Probability-flow ODE. ---------------------------------------------------------


@pytest.mark.parametrize('sde_name', [
    've', 'vp', pytest.param('subvp', marks=pytest.mark.integration)])
def test_ode_sampler_reproduces_gaussian_data(sde_name):
  sde = SDES[sde_name]
  out = jax.jit(lambda rng: ode_sample(gaussian_score(sde), sde, rng, SHAPE))(
      jax.random.key(4))
  # The sample at t = eps carries std(eps)^2 ~ 1e-4 of extra variance (0.1%).
  _assert_matches_data(out.images, var_allowance=0.003)
  assert 20 < int(out.nfe) < 500


# -- EDM. --------------------------------------------------------------------------


@pytest.mark.parametrize('s_churn', [0.0, 10.0])
def test_edm_heun_reproduces_gaussian_data(s_churn):
  # 100 steps: the deterministic sampler's variance bias is ~0.5%, and with
  # s_churn = 10 in [0.05, 50] about the same (400k samples).
  out = jax.jit(lambda rng: edm_sample(
      gaussian_denoiser, rng, SHAPE, num_steps=100, s_churn=s_churn, s_min=0.05,
      s_max=50.0))(jax.random.key(5))
  _assert_matches_data(out.images, var_allowance=0.01)


def test_edm_churn_above_a_limited_denoiser_range_is_an_error():
  """A VE score network knows sigma <= sigma_max: churn at sigma_max is refused."""
  calls = []

  def recording_denoiser(x, sigma):
    calls.append(sigma)
    return gaussian_denoiser(x, sigma)

  with pytest.raises(ValueError, match=r'sigma=84\.8, above.*sigma_limit=80\).*below 75\.4717'):
    edm_sample(recording_denoiser, jax.random.key(0), (4, 2), num_steps=10, s_churn=0.6,
               sigma_limit=80.0)
  assert not calls        # refused before the denoiser is called
  # Churn kept below the limit (s_max under sigma_max / (1 + gamma)), and no churn,
  # are accepted; so is any churn without a limit (EDM's preconditioned network).
  for kwargs in (dict(s_churn=0.6, s_max=75.0), dict(s_churn=0.0), dict(s_churn=0.6)):
    limit = None if kwargs == dict(s_churn=0.6) else 80.0
    out = edm_sample(gaussian_denoiser, jax.random.key(0), (4, 2), num_steps=10,
                     sigma_limit=limit, **kwargs)
    assert np.all(np.isfinite(out.images))


def _edm_flow_map_error(images, rng, shape, sigma_max=80.0):
  """Relative error against x_0 = mu + s / sqrt(s^2 + sigma_max^2) (x_init - mu)."""
  x_init = sigma_max * np.asarray(
      jax.random.normal(jax.random.split(rng)[0], shape), np.float64)
  exact = MU + STD / np.sqrt(STD**2 + sigma_max**2) * (x_init - MU)
  return float(np.max(np.abs(np.asarray(images) - exact) / np.abs(exact - MU)))


def test_edm_heun_is_second_order(fast_compile):
  shape, rng = (256, 2), jax.random.key(6)
  errors = [_edm_flow_map_error(edm_sample(gaussian_denoiser, rng, shape,
                                           num_steps=n).images, rng, shape)
            for n in (18, 36)]
  assert errors[0] / errors[1] > 3.5, errors


# -- DPM-Solver++(2M). --------------------------------------------------------------


@pytest.mark.parametrize('sde_name', ['ve', 'vp', 'subvp'])
def test_dpm_solver_reproduces_gaussian_data(sde_name):
  sde = SDES[sde_name]
  data_fn = data_prediction_from_score(gaussian_score(sde), sde)
  out = jax.jit(lambda rng: dpm_solver_pp_sample(data_fn, sde, rng, SHAPE,
                                                 num_steps=50))(jax.random.key(7))
  # 50 logSNR steps: flow-map error < 0.3% in std, so < 1% in variance.
  _assert_matches_data(out.images, var_allowance=0.01)


def test_dpm_solver_edm_reproduces_gaussian_data():
  out = jax.jit(lambda rng: dpm_solver_pp_edm_sample(
      gaussian_denoiser, rng, SHAPE, num_steps=50, skip_type='logSNR'))(
          jax.random.key(8))
  _assert_matches_data(out.images, var_allowance=0.01)


def _sde_flow_map_error(images, sde, rng, shape):
  """Relative error of x_eps against the exact affine map of x_T."""
  eps = sde.eps
  x_init = np.asarray(sde.prior_sampling(jax.random.split(rng)[0], shape), np.float64)
  variance = lambda t: sde.alpha(t) ** 2 * STD**2 + sde.sigma(t) ** 2
  exact = (sde.alpha(eps) * MU + np.sqrt(variance(eps) / variance(1.0))
           * (x_init - sde.alpha(1.0) * MU))
  return float(np.max(np.abs(np.asarray(images) - exact)
                      / np.abs(exact - sde.alpha(eps) * MU)))


@pytest.mark.parametrize('sde_name,skip_type', [
    ('ve', 'logSNR'), ('vp', 'logSNR'), ('subvp', 'logSNR'), ('vp', 'time_uniform'),
    ('subvp', 'karras')])
def test_dpm_solver_is_second_order(sde_name, skip_type, fast_compile):
  sde, shape, rng = SDES[sde_name], (64, 2), jax.random.key(9)
  data_fn = data_prediction_from_score(gaussian_score(sde), sde)
  errors = {n: _sde_flow_map_error(dpm_solver_pp_sample(
      data_fn, sde, rng, shape, num_steps=n, skip_type=skip_type).images,
      sde, rng, shape) for n in (20, 40, 80)}
  assert errors[40] / errors[80] > 3.0, errors
  if skip_type == 'logSNR':  # Accurate in the 10-25 NFE regime it is made for.
    assert errors[20] < 0.03, errors


@pytest.mark.parametrize('skip_type', ['karras', 'logSNR'])
def test_dpm_solver_edm_is_second_order(skip_type, fast_compile):
  shape, rng = (64, 2), jax.random.key(10)
  errors = {n: _edm_flow_map_error(dpm_solver_pp_edm_sample(
      gaussian_denoiser, rng, shape, num_steps=n, skip_type=skip_type).images,
      rng, shape) for n in (20, 40, 80)}
  assert errors[40] / errors[80] > 3.0, errors
  if skip_type == 'logSNR':
    assert errors[20] < 0.03, errors


# -- NFE: the reported count equals the model calls actually made. -----------------


class _CallCounter:
  """Wraps a model fn; a host callback counts its executions inside jit."""

  def __init__(self, fn):
    self.fn, self.count = fn, 0

  def _increment(self):
    self.count += 1

  def __call__(self, x, t):
    jax.debug.callback(self._increment)
    return self.fn(x, t)


def _count_calls(make_output, fn):
  counter = _CallCounter(fn)
  out = jax.jit(lambda rng: make_output(counter, rng))(jax.random.key(11))
  jax.block_until_ready(out)
  return counter.count, out


NFE_CASES = {
    'pc-em-none': lambda f, r: pc_sample(f, VESDE(num_scales=7), r, (4, 2),
                                         predictor='euler_maruyama', corrector='none'),
    'pc-rd-langevin2': lambda f, r: pc_sample(f, VESDE(num_scales=7), r, (4, 2),
                                              corrector='langevin', n_steps=2),
    'pc-none-langevin3': lambda f, r: pc_sample(f, VPSDE(num_scales=25), r, (4, 2),
                                                predictor='none', n_steps=3),
    'pc-ancestral': lambda f, r: pc_sample(f, VPSDE(num_scales=25), r, (4, 2),
                                           predictor='ancestral_sampling'),
    'ode-tsit5': lambda f, r: ode_sample(f, VPSDE(), r, (4, 2)),
    'ode-dopri5-denoise': lambda f, r: ode_sample(f, VESDE(), r, (4, 2),
                                                  solver='dopri5', denoise=True,
                                                  rtol=1e-3, atol=1e-3),
    'dpm-8-denoise': lambda f, r: dpm_solver_pp_sample(
        data_prediction_from_score(f, VPSDE()), VPSDE(), r, (4, 2), num_steps=8,
        denoise_to_zero=True),
}
EDM_NFE_CASES = {
    'edm-det-5': lambda f, r: edm_sample(f, r, (4, 2), num_steps=5),
    'edm-stoch-6': lambda f, r: edm_sample(f, r, (4, 2), num_steps=6, s_churn=5.0),
    'edm-1': lambda f, r: edm_sample(f, r, (4, 2), num_steps=1),
    'dpm-edm-12': lambda f, r: dpm_solver_pp_edm_sample(f, r, (4, 2), num_steps=12),
}


@pytest.mark.parametrize('name', list(NFE_CASES))
def test_reported_nfe_counts_score_calls(name, fast_compile):
  sde = VPSDE() if 'vp' in name else VESDE()
  calls, out = _count_calls(NFE_CASES[name], gaussian_score(sde))
  assert isinstance(out, SampleOutput)
  assert calls == int(out.nfe) and calls > 0, (calls, out.nfe)


@pytest.mark.parametrize('name', list(EDM_NFE_CASES))
def test_reported_nfe_counts_denoiser_calls(name, fast_compile):
  calls, out = _count_calls(EDM_NFE_CASES[name], gaussian_denoiser)
  assert calls == int(out.nfe) and calls > 0, (calls, out.nfe)


def test_fixed_step_nfe_is_a_python_int(fast_compile):
  out = edm_sample(gaussian_denoiser, jax.random.key(0), (2, 2), num_steps=4)
  assert out.nfe == 7 and isinstance(out.nfe, int)
  assert edm_sigma_schedule(4).shape == (5,)


# -- Bad arguments fail before tracing. -------------------------------------------


@pytest.mark.parametrize('call,match', [
    (lambda: pc_sample(None, VPSDE(), jax.random.key(0), (2, 2), predictor='x'),
     'predictor'),
    (lambda: pc_sample(None, VPSDE(), jax.random.key(0), (2, 2), corrector='x'),
     'corrector'),
    (lambda: pc_sample(None, SubVPSDE(), jax.random.key(0), (2, 2),
                       predictor='ancestral_sampling'), 'VESDE or VPSDE'),
    (lambda: pc_sample(None, VPSDE(), jax.random.key(0), (2, 2),
                       predictor='ancestral_sampling', probability_flow=True),
     'probability-flow'),
    (lambda: pc_sample(None, VPSDE(), jax.random.key(0), (2, 2), n_steps=0), 'n_steps'),
    (lambda: pc_sample(None, VPSDE(), jax.random.key(0), (2, 2), snr=0.0), 'snr'),
    (lambda: pc_sample(None, VPSDE(), jax.random.key(0), (2,)), 'shape'),
    (lambda: pc_sample(None, VPSDE(), jax.random.key(0), (2, 2), eps=1.5), 'eps'),
    (lambda: ode_sample(None, VPSDE(), jax.random.key(0), (2, 2), solver='rk4'),
     'solver'),
    (lambda: ode_sample(None, VPSDE(), jax.random.key(0), (2, 2), rtol=0.0), 'rtol'),
    (lambda: edm_sample(None, jax.random.key(0), (2, 2), num_steps=0), 'num_steps'),
    (lambda: edm_sample(None, jax.random.key(0), (2, 2), s_churn=-1.0), 's_churn'),
    (lambda: dpm_solver_pp_sample(None, VPSDE(), jax.random.key(0), (2, 2),
                                  skip_type='quadratic'), 'skip_type'),
    (lambda: dpm_solver_pp_edm_sample(None, jax.random.key(0), (2, 2),
                                      skip_type='time_uniform'), 'skip_type'),
    (lambda: dpm_solver_pp_edm_sample(None, jax.random.key(0), (2, 2),
                                      sigma_min=1.0, sigma_max=0.5), 'sigma_min'),
])
def test_bad_arguments_raise(call, match):
  with pytest.raises(ValueError, match=match):
    call()


# -- x_init: the same draw gives the same samples. --------------------------------

_VE5 = VESDE(num_scales=5)
_X_INIT_CASES = {
    # 5 levels: with 1000 the stochastic path forgets its start to float32 precision.
    'pc-ve': (lambda f, r, **k: pc_sample(gaussian_score(_VE5), _VE5, r, (4, 2), **k),
              lambda r: _VE5.prior_sampling(jax.random.split(r)[0], (4, 2)), False),
    'ode-vp': (lambda f, r, **k: ode_sample(gaussian_score(SDES['vp']), SDES['vp'], r,
                                            (4, 2), **k),
               lambda r: SDES['vp'].prior_sampling(jax.random.split(r)[0], (4, 2)), True),
    'edm-det': (lambda f, r, **k: edm_sample(gaussian_denoiser, r, (4, 2), num_steps=6, **k),
                lambda r: jnp.float32(80.0) * jax.random.normal(jax.random.split(r)[0],
                                                                (4, 2)), True),
    'edm-churn': (lambda f, r, **k: edm_sample(gaussian_denoiser, r, (4, 2), num_steps=6,
                                               s_churn=10.0, **k),
                  lambda r: jnp.float32(80.0) * jax.random.normal(jax.random.split(r)[0],
                                                                  (4, 2)), False),
    'dpm-vp': (lambda f, r, **k: dpm_solver_pp_sample(
        data_prediction_from_score(gaussian_score(SDES['vp']), SDES['vp']), SDES['vp'], r,
        (4, 2), num_steps=8, **k),
               lambda r: SDES['vp'].prior_sampling(jax.random.split(r)[0], (4, 2)), True),
    'dpm-edm': (lambda f, r, **k: dpm_solver_pp_edm_sample(gaussian_denoiser, r, (4, 2),
                                                           num_steps=8, **k),
                lambda r: 80.0 * jax.random.normal(jax.random.split(r)[0], (4, 2)), True),
}


@pytest.mark.parametrize('name', list(_X_INIT_CASES))
def test_x_init_is_the_draw_the_sampler_makes(name, fast_compile):
  """Passing the sampler's own x_T reproduces its samples exactly; another x_T changes
  them; a deterministic sampler then ignores its rng."""
  sample, draw, deterministic = _X_INIT_CASES[name]
  rng, other = jax.random.key(3), jax.random.key(4)
  x_t = draw(rng)
  own = np.asarray(sample(None, rng).images)
  np.testing.assert_array_equal(np.asarray(sample(None, rng, x_init=x_t).images), own)
  moved = np.asarray(sample(None, rng, x_init=-x_t).images)
  assert not np.allclose(moved, own)
  if deterministic:
    np.testing.assert_array_equal(np.asarray(sample(None, other, x_init=x_t).images), own)
  with pytest.raises(ValueError, match='x_init has shape'):
    sample(None, rng, x_init=jnp.zeros((3, 2)))
