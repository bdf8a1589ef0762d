"""Tests for models/sde.py against independent computations.

The SDE coefficients are written out here from Song et al. 2021 (eqs. 30-34) and
the marginals are checked against a numerical solution of the moment ODEs
dm/dt = f m, dv/dt = 2 f v + g^2; inverses are checked by root finding; the
adapters by Gaussian conditioning in closed form.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, optimize, stats

from models.sde import (SubVPSDE, VESDE, VPSDE, data_prediction_from_score,
                        edm_denoiser_from_score, edm_sigma_schedule,
                        score_from_ddpm_model, score_from_smld_model)

SDES = [
    VESDE(sigma_min=0.01, sigma_max=50.0),
    VESDE(sigma_min=0.002, sigma_max=10.0, num_scales=100),
    VPSDE(beta_min=0.1, beta_max=20.0),
    VPSDE(beta_min=0.5, beta_max=0.5, num_scales=50),  # constant beta
    SubVPSDE(beta_min=0.1, beta_max=20.0),
    SubVPSDE(beta_min=1.0, beta_max=5.0),
]
IDS = [f'{type(s).__name__}-{i}' for i, s in enumerate(SDES)]
TIMES = np.array([1e-3, 0.01, 0.1, 0.3, 0.5, 0.8, 1.0])


def _paper_coefficients(sde):
  """(f(t), g(t)) of the forward SDE, written out from the paper."""
  if isinstance(sde, VESDE):
    log_ratio = math.log(sde.sigma_max / sde.sigma_min)
    return (lambda t: 0.0,
            lambda t: sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
            * math.sqrt(2 * log_ratio))
  beta = lambda t: sde.beta_min + t * (sde.beta_max - sde.beta_min)
  if isinstance(sde, VPSDE):
    return lambda t: -0.5 * beta(t), lambda t: math.sqrt(beta(t))
  integral = lambda t: sde.beta_min * t + 0.5 * (sde.beta_max - sde.beta_min) * t**2
  return (lambda t: -0.5 * beta(t),
          lambda t: math.sqrt(beta(t) * (1 - math.exp(-2 * integral(t)))))


@pytest.mark.parametrize('sde', SDES, ids=IDS)
def test_sde_coefficients_match_paper(sde):
  f, g = _paper_coefficients(sde)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(len(TIMES), 3)), jnp.float32)
  drift, diffusion = sde.sde(x, jnp.asarray(TIMES, jnp.float32))
  expected_f = np.array([f(t) for t in TIMES])[:, None]
  np.testing.assert_allclose(drift, expected_f * np.asarray(x), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(
      np.asarray(diffusion)[:, 0], [g(t) for t in TIMES], rtol=1e-5)


@pytest.mark.parametrize('sde', SDES, ids=IDS)
def test_marginal_prob_solves_the_moment_odes(sde):
  """mean = m(t) x0, std^2 = v(t) with dm/dt = f m, dv/dt = 2 f v + g^2."""
  f, g = _paper_coefficients(sde)
  # score_sde's VE convention: the perturbation std is sigma(t) itself, i.e. the
  # variance ODE started from sigma_min^2 at t = 0 (see VESDE.sigma).
  v0 = sde.sigma_min**2 if isinstance(sde, VESDE) else 0.0
  solution = integrate.solve_ivp(
      lambda t, y: [f(t) * y[0], 2 * f(t) * y[1] + g(t) ** 2], (0.0, 1.0),
      [1.0, v0], t_eval=TIMES, rtol=1e-10, atol=1e-12, method='DOP853')
  m_ode, v_ode = solution.y
  x0 = jnp.full((len(TIMES), 2), 0.7, jnp.float32)
  mean, std = sde.marginal_prob(x0, jnp.asarray(TIMES, jnp.float32))
  np.testing.assert_allclose(np.asarray(mean)[:, 0], 0.7 * m_ode, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(std)[:, 0], np.sqrt(v_ode), rtol=1e-4)
  # The float64 host path agrees with the float32 device path.
  np.testing.assert_allclose(sde.alpha(TIMES), m_ode, rtol=1e-8)
  np.testing.assert_allclose(sde.sigma(TIMES), np.sqrt(v_ode), rtol=1e-7)


@pytest.mark.parametrize('sde', SDES, ids=IDS)
def test_log_snr_inverse_by_root_finding(sde):
  log_snr = sde.log_snr(TIMES)
  np.testing.assert_allclose(
      log_snr, np.log(sde.alpha(TIMES) / sde.sigma(TIMES)), rtol=1e-10)
  assert np.all(np.diff(log_snr) < 0), 'lambda(t) must decrease'
  for t, lam in zip(TIMES, log_snr):
    root = optimize.brentq(lambda s: float(sde.log_snr(s)) - lam, 1e-6, 1.0,
                           xtol=1e-14)
    np.testing.assert_allclose(float(sde.t_from_log_snr(lam)), root, rtol=1e-7)
  # The device path, float32.
  np.testing.assert_allclose(
      sde.t_from_log_snr(jnp.asarray(log_snr, jnp.float32)), TIMES, rtol=2e-3)


@pytest.mark.parametrize('sde', SDES, ids=IDS)
def test_likelihood_importance_weight_is_an_antiderivative(sde):
  """dF/dt = g(t)^2 / sigma(t)^2 (central differences), and F is inverted."""
  _, g = _paper_coefficients(sde)
  t = np.array([1e-3, 0.05, 0.3, 0.7, 0.95])
  h = 1e-6
  derivative = (sde.likelihood_importance_cum_weight(t + h)
                - sde.likelihood_importance_cum_weight(t - h)) / (2 * h)
  expected = np.array([g(s) ** 2 for s in t]) / sde.sigma(t) ** 2
  np.testing.assert_allclose(derivative, expected, rtol=1e-5)
  cum = sde.likelihood_importance_cum_weight(t)
  np.testing.assert_allclose(
      sde.t_from_likelihood_importance_cum_weight(cum), t, rtol=1e-9)


@pytest.mark.parametrize('sde', SDES, ids=IDS)
def test_prior_logp_and_sampling(sde):
  z = sde.prior_sampling(jax.random.key(0), (20_000, 3, 2))
  assert z.shape == (20_000, 3, 2)
  # 5 standard errors of a sample std: std * 5 / sqrt(2 n).
  np.testing.assert_allclose(np.std(np.asarray(z)), sde.prior_std,
                             rtol=5 / math.sqrt(2 * z.size))
  logp = sde.prior_logp(z[:5])
  expected = stats.norm.logpdf(np.asarray(z[:5], np.float64), scale=sde.prior_std)
  np.testing.assert_allclose(logp, expected.reshape(5, -1).sum(-1), rtol=1e-5)


@pytest.mark.parametrize('sde', SDES, ids=IDS)
def test_probability_flow_transports_gaussian_marginals(sde):
  """For x0 ~ N(mu, s^2) the flow maps x_t - m mu by sqrt(v(t) / v(t0)), so its
  velocity is m' mu + v' / (2 v) (x - m mu), by finite differences of m and v."""
  mu, s = np.array([0.3, -0.5]), np.array([0.4, 1.2])
  variance = lambda t: sde.alpha(t) ** 2 * s**2 + sde.sigma(t) ** 2

  def score_fn(x, t):
    m, sd = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    return -(x - m * mu) / (m**2 * s**2 + sd**2)

  x = jnp.asarray([[0.1, 2.0], [-1.0, 0.5]], jnp.float32)
  for t in [0.05, 0.4, 0.9]:
    h = 1e-5
    dm = (sde.alpha(t + h) - sde.alpha(t - h)) / (2 * h)
    dv = (variance(t + h) - variance(t - h)) / (2 * h)
    velocity = dm * mu + dv / (2 * variance(t)) * (np.asarray(x) - sde.alpha(t) * mu)
    drift, diffusion = sde.reverse_sde(
        score_fn, x, jnp.full((2,), t, jnp.float32), probability_flow=True)
    np.testing.assert_allclose(drift, velocity, rtol=2e-4, atol=1e-4)
    np.testing.assert_array_equal(diffusion, 0.0)


def test_discrete_index_on_the_sampling_grid():
  # float32 t (N - 1) lands just below the integer for many grid points; the
  # index must still be exact (score_sde's truncation would drop one step).
  for sde, eps in [(VESDE(), 1e-5), (VPSDE(), 1e-3)]:
    grid = jnp.asarray(np.linspace(1.0, eps, sde.num_scales), jnp.float32)
    np.testing.assert_array_equal(sde.discrete_index(grid),
                                  np.arange(sde.num_scales)[::-1])


def test_smld_chain_accumulates_the_discrete_sigmas():
  """x_i = x_{i-1} + G_i z with x_{-1} = x0: Var(x_i) = sum G_j^2 = sigma_i^2."""
  sde = VESDE(sigma_min=0.01, sigma_max=50.0, num_scales=200)
  t = jnp.asarray(np.arange(sde.num_scales) / (sde.num_scales - 1), jnp.float32)
  f, g = sde.discretize(jnp.ones((sde.num_scales, 1)), t)
  np.testing.assert_array_equal(f, 0.0)
  np.testing.assert_allclose(np.cumsum(np.asarray(g, np.float64)[:, 0] ** 2),
                             sde.discrete_sigmas**2, rtol=1e-4)
  expected = np.geomspace(0.01, 50.0, 200)
  np.testing.assert_allclose(sde.discrete_sigmas, expected, rtol=1e-12)


def test_ddpm_chain_matches_the_continuous_vp_sde():
  """x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z: prod sqrt(1 - beta) and
  1 - abar; and as N grows abar_i -> alpha(t_i)^2 of the continuous SDE."""
  sde = VPSDE(beta_min=0.1, beta_max=20.0, num_scales=1000)
  t = jnp.asarray(np.arange(sde.num_scales) / (sde.num_scales - 1), jnp.float32)
  x = jnp.ones((sde.num_scales, 1))
  f, g = sde.discretize(x, t)
  betas = np.linspace(0.1 / 1000, 20.0 / 1000, 1000)  # Ho et al.'s 1e-4 .. 0.02
  np.testing.assert_allclose(np.asarray(g)[:, 0] ** 2, betas, rtol=1e-5)
  mean_coef = np.cumprod(1.0 + np.asarray(f, np.float64)[:, 0])
  np.testing.assert_allclose(mean_coef**2, sde.alphas_cumprod, rtol=1e-4)
  # Step i is continuous time (i + 1) / N; log abar_i = sum log(1 - beta_j) differs
  # from log alpha^2 = -B by O(1/N) (sum of beta_j^2 / 2 and the Riemann sum).
  def log_gap(num_scales):
    chain = VPSDE(beta_min=0.1, beta_max=20.0, num_scales=num_scales)
    t = np.arange(1, num_scales + 1) / num_scales
    return np.max(np.abs(np.log(chain.alphas_cumprod) - 2 * np.log(chain.alpha(t))))
  assert log_gap(1000) < 0.2
  assert log_gap(4000) < log_gap(1000) / 3.5


def test_base_discretize_is_euler_maruyama_for_subvp():
  sde = SubVPSDE(num_scales=100)
  x = jnp.ones((3, 2))
  t = jnp.asarray([0.1, 0.5, 0.9])
  f, g = sde.discretize(x, t)
  drift, diffusion = sde.sde(x, t)
  np.testing.assert_allclose(f, drift / 100, rtol=1e-6)
  np.testing.assert_allclose(g, diffusion * 0.1, rtol=1e-6)


def test_edm_sigma_schedule():
  sigmas = edm_sigma_schedule(18, 0.002, 80.0, 7.0)
  assert sigmas.shape == (19,)
  np.testing.assert_allclose(sigmas[[0, 17, 18]], [80.0, 0.002, 0.0], rtol=1e-12)
  # Karras eq. 5: sigma^(1/rho) evenly spaced.
  steps = np.diff(sigmas[:-1] ** (1 / 7.0))
  np.testing.assert_allclose(steps, steps[0], rtol=1e-10)
  # rho = 1 is a linear ramp.
  np.testing.assert_allclose(edm_sigma_schedule(5, 1.0, 5.0, 1.0),
                             [5, 4, 3, 2, 1, 0], rtol=1e-12)
  np.testing.assert_allclose(edm_sigma_schedule(1, 0.1, 3.0), [3.0, 0.0])


def test_edm_denoiser_from_score_is_the_gaussian_posterior_mean():
  """x0 ~ N(mu, s^2), x = x0 + sigma n: E[x0 | x] = mu + s^2 (x - mu) / (s^2 + sigma^2)."""
  mu, s = np.array([0.3, -0.2]), np.array([0.5, 1.5])
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 2)) * 3, jnp.float32)
  sigma = jnp.asarray([0.01, 0.3, 2.0, 40.0], jnp.float32)
  expected = mu + s**2 * (np.asarray(x) - mu) / (s**2 + np.asarray(sigma)[:, None] ** 2)
  for sde in [VESDE(), VPSDE(), SubVPSDE()]:
    def score_fn(x, t, sde=sde):
      m, sd = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
      return -(x - m * mu) / (m**2 * s**2 + sd**2)
    denoised = edm_denoiser_from_score(score_fn, sde)(x, sigma)
    np.testing.assert_allclose(denoised, expected, rtol=2e-3, atol=2e-4)
    # data_prediction_from_score: the same posterior mean in the SDE's own scale.
    t = jnp.asarray([0.01, 0.2, 0.5, 0.9])
    a, sd = np.asarray(sde.alpha(t))[:, None], np.asarray(sde.sigma(t))[:, None]
    x_t = a * mu + np.sqrt(a**2 * s**2 + sd**2) * np.asarray(x) / 3
    expected_t = mu + a * s**2 * (x_t - a * mu) / (a**2 * s**2 + sd**2)
    np.testing.assert_allclose(
        data_prediction_from_score(score_fn, sde)(jnp.asarray(x_t, jnp.float32), t),
        expected_t, rtol=1e-3, atol=1e-4)


def test_discrete_model_adapters():
  mu, s = 0.2, 0.5
  vp = VPSDE(num_scales=100)
  abar = vp.alphas_cumprod

  def eps_fn(x, labels):  # E[eps | x_i] of the discrete DDPM chain.
    a = jnp.asarray(abar, jnp.float32)[labels][:, None]
    return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * mu) / (a * s**2 + 1 - a)

  # Times on the grid t_i = i / (N - 1) of the discrete chains.
  t = jnp.asarray([0.0, 50 / 99, 1.0], jnp.float32)
  x = jnp.asarray([[0.3], [-1.0], [2.0]])
  indices = np.array([0, 50, 99])
  a = abar[indices][:, None]
  expected = -(np.asarray(x) - np.sqrt(a) * mu) / (a * s**2 + 1 - a)
  np.testing.assert_allclose(score_from_ddpm_model(eps_fn, vp)(x, t), expected,
                             rtol=1e-5)

  ve = VESDE(num_scales=100)
  seen = {}

  def model_fn(x, labels):
    seen['labels'] = labels
    return x
  score_from_smld_model(model_fn, ve)(x, t)
  # Label 0 is sigma_max (t = T); the labels index the descending sigmas.
  np.testing.assert_array_equal(seen['labels'], [99, 49, 0])
  np.testing.assert_allclose(ve.discrete_sigmas[::-1][seen['labels']],
                             ve.sigma(np.asarray([0.0, 50 / 99, 1.0])), rtol=1e-9)


def test_sdes_are_hashable_static_arguments():
  f = jax.jit(lambda sde, x: sde.marginal_prob(x, jnp.ones(x.shape[0]))[1],
              static_argnums=0)
  a, b = VPSDE(), VPSDE()
  assert a == b and hash(a) == hash(b) and a != SubVPSDE()
  np.testing.assert_allclose(f(a, jnp.ones((2, 3)))[:, 0], a.sigma(np.ones(2)),
                             rtol=1e-6)
  with pytest.raises(dataclasses.FrozenInstanceError):
    a.beta_min = 3.0


@pytest.mark.parametrize('build,match', [
    (lambda: VESDE(sigma_min=1.0, sigma_max=0.5), 'sigma_min < sigma_max'),
    (lambda: VESDE(sigma_min=0.0), 'sigma_min < sigma_max'),
    (lambda: VPSDE(beta_min=2.0, beta_max=1.0), 'beta_min <= beta_max'),
    (lambda: SubVPSDE(beta_min=-1.0), 'beta_min <= beta_max'),
    (lambda: VPSDE(num_scales=1), 'num_scales'),
    (lambda: edm_sigma_schedule(0), 'num_steps'),
    (lambda: edm_sigma_schedule(5, 1.0, 0.5), 'sigma_min <= sigma_max'),
    (lambda: edm_sigma_schedule(5, rho=0.0), 'rho'),
])
def test_bad_arguments_raise(build, match):
  with pytest.raises(ValueError, match=match):
    build()
