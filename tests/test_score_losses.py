"""Tests for train/score_losses.py with the exact score of Gaussian data.

For x0 ~ N(mu, diag(s^2)) and x_t = alpha x0 + sigma z, Tweedie gives
E[z | x_t] = -sigma score(x_t), so at the exact score the DSM loss is the
posterior variance of z: E||sigma s* + z||^2 = sum_d alpha^2 s_d^2 / (alpha^2 s_d^2
+ sigma^2), integrated over t here with scipy's quad. Any other score adds
E||sigma (s - s*)||^2 on top. Monte Carlo means are compared with an explicit
tolerance of 4 standard errors of the per-example losses.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from models.sde import SubVPSDE, VESDE, VPSDE
from train.score_losses import (
    ddpm_loss, dsm_loss, edm_denoiser, edm_loss, edm_loss_weight, edm_preconditioning,
    sample_edm_sigma, sample_importance_weighted_time, smld_loss)

MU = np.array([0.5, -0.3, 0.0])
STD = np.array([0.4, 1.0, 2.0])
NUM_EXAMPLES = 20_000
SDES = [VESDE(), VPSDE(), SubVPSDE()]
SDE_IDS = ['ve', 'vp', 'subvp']


@pytest.fixture(scope='module')
def data():
  rng = np.random.default_rng(0)
  return jnp.asarray(MU + STD * rng.normal(size=(NUM_EXAMPLES, 3)), jnp.float32)


def _exact_score(sde, shift=0.0):
  def score_fn(x, t):
    m, sd = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    return -(x - m * MU) / (m**2 * STD**2 + sd**2) + shift
  return score_fn


def _posterior_var_of_z(sde, t):
  """sum_d Var(z_d | x_t) = sum_d alpha^2 s_d^2 / (alpha^2 s_d^2 + sigma^2)."""
  a2, s2 = sde.alpha(t) ** 2, sde.sigma(t) ** 2
  return float(np.sum(a2 * STD**2 / (a2 * STD**2 + s2)))


def _assert_mc_mean(samples, expected, num_se=4.0):
  samples = np.asarray(samples, np.float64)
  standard_error = samples.std() / math.sqrt(samples.size)
  assert abs(samples.mean() - expected) < num_se * standard_error, (
      f'mean {samples.mean():.5f} vs expected {expected:.5f} '
      f'(standard error {standard_error:.5f})')


@pytest.mark.parametrize('sde', SDES, ids=SDE_IDS)
def test_dsm_loss_minimum_at_the_exact_score(sde, data):
  eps = 1e-5
  losses = jax.jit(lambda r: dsm_loss(_exact_score(sde), sde, r, data, eps=eps))(
      jax.random.key(1))
  assert losses.shape == (NUM_EXAMPLES,)
  # Half the sum over dims (reduce_mean=False), t ~ U(eps, T).
  expected = 0.5 * integrate.quad(
      lambda t: _posterior_var_of_z(sde, t), eps, 1.0, limit=200)[0] / (1.0 - eps)
  _assert_mc_mean(losses, expected)
  # reduce_mean averages over the 3 dims instead of taking half the sum.
  mean_losses = dsm_loss(_exact_score(sde), sde, jax.random.key(1), data,
                         eps=eps, reduce_mean=True)
  np.testing.assert_allclose(mean_losses, losses * 2 / 3, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize('sde', SDES, ids=SDE_IDS)
def test_dsm_loss_grows_by_the_score_error(sde, data):
  """Same t and z (same rng): the loss rises by 1/2 sum_d sigma^2 delta^2 on average."""
  delta = 0.3
  exact = dsm_loss(_exact_score(sde), sde, jax.random.key(2), data)
  shifted = dsm_loss(_exact_score(sde, delta), sde, jax.random.key(2), data)
  expected_gap = 0.5 * 3 * delta**2 * integrate.quad(
      lambda t: sde.sigma(t) ** 2, 1e-5, 1.0)[0] / (1.0 - 1e-5)
  _assert_mc_mean(shifted - exact, expected_gap)
  assert float(jnp.mean(shifted)) > float(jnp.mean(exact))


@pytest.mark.parametrize('sde', SDES, ids=SDE_IDS)
def test_likelihood_weighting_with_and_without_importance_sampling(sde, data):
  """Both estimate (T - eps)^-1 int g^2 / sigma^2 E||sigma s* + z||^2 / 2 dt."""
  eps = 1e-3  # Keeps the variance of the uniform estimate (~1/eps) testable.

  def g2(t):
    return float(sde.diffusion_coef(t)) ** 2

  expected = 0.5 * integrate.quad(
      lambda t: g2(t) / sde.sigma(t) ** 2 * _posterior_var_of_z(sde, t),
      eps, 1.0, limit=200, points=[2 * eps, 1e-2])[0] / (1.0 - eps)
  uniform = dsm_loss(_exact_score(sde), sde, jax.random.key(3), data, eps=eps,
                     likelihood_weighting=True)
  weighted = dsm_loss(_exact_score(sde), sde, jax.random.key(4), data, eps=eps,
                      likelihood_weighting=True, importance_sampling=True)
  _assert_mc_mean(uniform, expected)
  _assert_mc_mean(weighted, expected)
  if not isinstance(sde, VESDE):  # For VE the importance density is uniform.
    assert np.std(weighted) < 0.5 * np.std(uniform)


@pytest.mark.parametrize('sde', SDES, ids=SDE_IDS)
def test_importance_sampled_times_follow_g2_over_sigma2(sde):
  """Kolmogorov-Smirnov against the CDF of g^2 / sigma^2 integrated by quad."""
  eps = 1e-5
  t, normaliser = sample_importance_weighted_time(sde, jax.random.key(5), 20_000, eps)
  t = np.asarray(t, np.float64)
  assert t.min() >= eps and t.max() <= 1.0
  density = lambda s: float(sde.diffusion_coef(s)) ** 2 / sde.sigma(s) ** 2
  total = integrate.quad(density, eps, 1.0, limit=200, points=[1e-4, 1e-3, 1e-2])[0]
  np.testing.assert_allclose(float(normaliser), total, rtol=1e-4)
  grid = np.concatenate([np.geomspace(eps, 1e-2, 60), np.linspace(1e-2, 1.0, 100)[1:]])
  pieces = [integrate.quad(density, a, b)[0] for a, b in zip(grid[:-1], grid[1:])]
  cdf_values = np.concatenate([[0.0], np.cumsum(pieces)]) / total
  statistic = stats.kstest(t, lambda s: np.interp(s, grid, cdf_values)).statistic
  # The 0.001 critical value of the KS statistic is 1.95 / sqrt(n).
  assert statistic < 1.95 / math.sqrt(t.size)


def test_smld_loss_minimum_at_the_exact_score(data):
  sde = VESDE(sigma_min=0.01, sigma_max=50.0, num_scales=10)
  sigmas_descending = np.geomspace(50.0, 0.01, 10)  # label 0 is sigma_max

  def model_fn(x, labels):
    sigma = jnp.asarray(sigmas_descending, jnp.float32)[labels][:, None]
    return -(x - MU) / (STD**2 + sigma**2)

  losses = smld_loss(model_fn, sde, jax.random.key(6), data)
  expected = 0.5 * np.mean([np.sum(STD**2 / (STD**2 + sigma**2))
                            for sigma in sigmas_descending])
  _assert_mc_mean(losses, expected)
  worse = smld_loss(lambda x, l: model_fn(x, l) + 0.2, sde, jax.random.key(6), data)
  assert float(jnp.mean(worse)) > float(jnp.mean(losses))


def test_ddpm_loss_minimum_at_the_exact_noise_prediction(data):
  sde = VPSDE(beta_min=0.1, beta_max=20.0, num_scales=50)
  abar = np.cumprod(1 - np.linspace(0.1 / 50, 20.0 / 50, 50))

  def eps_fn(x, labels):
    a = jnp.asarray(abar, jnp.float32)[labels][:, None]
    return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * MU) / (a * STD**2 + 1 - a)

  losses = ddpm_loss(eps_fn, sde, jax.random.key(7), data)  # reduce_mean=True
  expected = np.mean([np.mean(a * STD**2 / (a * STD**2 + 1 - a)) for a in abar])
  _assert_mc_mean(losses, expected)
  worse = ddpm_loss(lambda x, l: eps_fn(x, l) * 1.1, sde, jax.random.key(7), data)
  assert float(jnp.mean(worse)) > float(jnp.mean(losses))


@pytest.mark.parametrize('sigma_data', [1.0, 0.5])
def test_edm_preconditioning_gives_unit_variance_input_and_target(sigma_data):
  """Karras et al. App. B.6: Var(c_in (y + n)) = 1 and
  Var((y - c_skip (y + n)) / c_out) = 1 for Var(y) = sigma_data^2, any sigma."""
  sigmas = np.array([0.002, 0.05, 0.5, 1.0, 3.0, 80.0])
  c_skip, c_out, c_in, c_noise = (np.asarray(c, np.float64) for c in
                                  edm_preconditioning(sigmas, sigma_data))
  # Closed form: y and n independent with variances sigma_data^2 and sigma^2.
  np.testing.assert_allclose(c_in**2 * (sigma_data**2 + sigmas**2), 1.0, rtol=1e-5)
  target_var = ((1 - c_skip) ** 2 * sigma_data**2 + c_skip**2 * sigmas**2) / c_out**2
  np.testing.assert_allclose(target_var, 1.0, rtol=1e-5)
  np.testing.assert_allclose(c_noise, np.log(sigmas) / 4, rtol=1e-5)
  # Monte Carlo with non-Gaussian (uniform) data of std sigma_data.
  n = 100_000
  rng = np.random.default_rng(8)
  y = rng.uniform(-1, 1, n) * math.sqrt(3) * sigma_data
  # The sample variance of a platykurtic variable has standard error < sqrt(2 / n).
  tolerance = 5 * math.sqrt(2 / n)
  for sigma, skip, out, cin in zip(sigmas, c_skip, c_out, c_in):
    noisy = y + sigma * rng.normal(size=n)
    assert abs(np.var(cin * noisy) - 1) < tolerance
    assert abs(np.var((y - skip * noisy) / out) - 1) < tolerance


def test_edm_loss_weight_makes_the_effective_weight_uniform():
  sigmas = np.geomspace(1e-3, 100.0, 9)
  for sigma_data in [0.5, 1.0]:
    _, c_out, _, _ = edm_preconditioning(sigmas, sigma_data)
    np.testing.assert_allclose(
        np.asarray(edm_loss_weight(sigmas, sigma_data)) * np.asarray(c_out) ** 2,
        1.0, rtol=1e-5)


def test_edm_loss_is_unit_weight_regression_on_the_raw_network():
  """lambda ||D - x0||^2 = ||F - (x0 - c_skip x) / c_out||^2 with D = edm_denoiser(F)."""
  sigma_data = 0.5
  x0 = jnp.asarray(np.random.default_rng(9).normal(size=(64, 4, 4, 1)) * 0.5,
                   jnp.float32)
  seen = {}

  def raw_fn(scaled_x, c_noise):
    seen['scaled_x'], seen['c_noise'] = scaled_x, c_noise
    return jnp.tanh(scaled_x) * 0.3 + c_noise[:, None, None, None] * 0.1

  losses = edm_loss(edm_denoiser(raw_fn, sigma_data), jax.random.key(10), x0,
                    sigma_data=sigma_data)
  sigma = np.exp(4 * np.asarray(seen['c_noise'], np.float64))[:, None, None, None]
  x = np.asarray(seen['scaled_x'], np.float64) * np.sqrt(sigma**2 + sigma_data**2)
  c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
  c_out = sigma * sigma_data / np.sqrt(sigma**2 + sigma_data**2)
  target = (np.asarray(x0) - c_skip * x) / c_out
  raw = np.asarray(raw_fn(seen['scaled_x'], seen['c_noise']), np.float64)
  np.testing.assert_allclose(losses, ((raw - target) ** 2).reshape(64, -1).sum(-1),
                             rtol=2e-4)


@pytest.mark.parametrize('data_std', [0.5, 1.0])
def test_edm_loss_minimum_at_the_exact_denoiser(data, data_std):
  """E[lambda(sigma) Var(x0 | x)] per dim = E_sigma[lambda sd^2 sigma^2 / (sd^2 + sigma^2)],
  which is exactly 1 when the data std equals sigma_data = 0.5."""
  sigma_data = 0.5
  x0 = (data - MU) / STD * data_std + MU  # std data_std in every dim

  def denoiser_fn(x, sigma):
    sigma = sigma[:, None]
    return MU + data_std**2 / (data_std**2 + sigma**2) * (x - MU)

  losses = edm_loss(denoiser_fn, jax.random.key(11), x0, sigma_data=sigma_data)
  per_dim = integrate.quad(
      lambda u: stats.norm.pdf(u, -1.2, 1.2)
      * float(edm_loss_weight(math.exp(u), sigma_data))
      * data_std**2 * math.exp(2 * u) / (data_std**2 + math.exp(2 * u)),
      -12, 10)[0]
  if data_std == sigma_data:
    np.testing.assert_allclose(per_dim, 1.0, rtol=1e-4)
  _assert_mc_mean(losses, 3 * per_dim)
  worse = edm_loss(lambda x, s: denoiser_fn(x, s) + 0.05, jax.random.key(11), x0,
                   sigma_data=sigma_data)
  assert float(jnp.mean(worse)) > float(jnp.mean(losses))


def test_edm_sigma_is_log_normal():
  log_sigma = np.log(np.asarray(sample_edm_sigma(jax.random.key(12), 50_000), np.float64))
  assert abs(log_sigma.mean() + 1.2) < 4 * 1.2 / math.sqrt(50_000)
  assert abs(log_sigma.std() - 1.2) < 4 * 1.2 / math.sqrt(2 * 50_000)


def test_losses_compose_into_one_jitted_gradient_step():
  """A tiny linear score model: every loss differentiates under one jit."""
  x0 = jnp.asarray(np.random.default_rng(13).normal(size=(8, 2, 2, 3)), jnp.float32)
  sde_ve, sde_vp = VESDE(num_scales=10), VPSDE(num_scales=50)

  def model(params, x, cond):
    return x * params['w'] + params['b'] + 0.01 * cond.reshape(-1, 1, 1, 1)

  def total_loss(params, rng):
    rngs = jax.random.split(rng, 5)
    fn = lambda x, c: model(params, x, c)
    return (dsm_loss(fn, sde_vp, rngs[0], x0).mean()
            + dsm_loss(fn, SubVPSDE(), rngs[1], x0, likelihood_weighting=True,
                       importance_sampling=True).mean()
            + smld_loss(fn, sde_ve, rngs[2], x0).mean()
            + ddpm_loss(fn, sde_vp, rngs[3], x0).mean()
            + edm_loss(edm_denoiser(fn), rngs[4], x0).mean())

  params = {'w': jnp.float32(0.1), 'b': jnp.zeros((3,), jnp.float32)}
  value, grads = jax.jit(jax.value_and_grad(total_loss))(params, jax.random.key(0))
  assert np.isfinite(float(value))
  assert all(np.all(np.isfinite(g)) and np.any(g != 0)
             for g in jax.tree_util.tree_leaves(grads))


@pytest.mark.parametrize('call,match', [
    (lambda x: dsm_loss(lambda a, t: a, VPSDE(), jax.random.key(0), x,
                        importance_sampling=True), 'likelihood_weighting'),
    (lambda x: dsm_loss(lambda a, t: a, VPSDE(), jax.random.key(0), x, eps=0.0), 'eps'),
    (lambda x: dsm_loss(lambda a, t: a, VPSDE(), jax.random.key(0), x[0]), 'rank'),
    (lambda x: smld_loss(lambda a, l: a, VPSDE(), jax.random.key(0), x), 'VESDE'),
    (lambda x: ddpm_loss(lambda a, l: a, SubVPSDE(), jax.random.key(0), x), 'VPSDE'),
    (lambda x: ddpm_loss(lambda a, l: a, VPSDE(num_scales=10), jax.random.key(0), x),
     'num_scales'),
    (lambda x: edm_loss(lambda a, s: a, jax.random.key(0), x, sigma_data=0.0),
     'sigma_data'),
])
def test_bad_arguments_raise(call, match):
  with pytest.raises(ValueError, match=match):
    call(jnp.zeros((2, 3)))


def test_uint8_images_are_rejected():
  with pytest.raises(ValueError, match='float'):
    dsm_loss(lambda a, t: a, VPSDE(), jax.random.key(0), jnp.zeros((2, 3), jnp.uint8))
