"""Tests for models/diffusion.py against closed forms computed independently."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from models.diffusion import (
    BETA_SCHEDULES, GaussianDiffusion, get_beta_schedule, prior_bpd, vb_terms_bpd)


def _linear(num_timesteps=1000, beta_start=1e-4, beta_end=0.02):
  return get_beta_schedule(
      'linear', beta_start=beta_start, beta_end=beta_end,
      num_timesteps=num_timesteps)


def _alphas_cumprod_loop(betas):
  """prod_{s <= t} (1 - beta_s), one float64 multiplication at a time."""
  out, running = [], 1.0
  for beta in betas:
    running *= 1.0 - float(beta)
    out.append(running)
  return np.array(out)


# ------------------------------------------------------------------ schedules


def test_linear_schedule_endpoints_and_even_steps():
  betas = _linear(1000)
  assert betas.dtype == np.float64 and betas.shape == (1000,)
  assert betas[0] == 1e-4 and betas[-1] == 0.02
  np.testing.assert_allclose(np.diff(betas), (0.02 - 1e-4) / 999, rtol=1e-9)


def test_quad_schedule_is_squared_linear_in_sqrt():
  betas = get_beta_schedule(
      'quad', beta_start=1e-4, beta_end=0.02, num_timesteps=50)
  np.testing.assert_allclose(betas[[0, -1]], [1e-4, 0.02], rtol=1e-12)
  step = (math.sqrt(0.02) - math.sqrt(1e-4)) / 49
  np.testing.assert_allclose(np.diff(np.sqrt(betas)), step, rtol=1e-9)


def test_const_and_jsd_schedules():
  const = get_beta_schedule(
      'const', beta_start=1e-4, beta_end=0.03, num_timesteps=7)
  np.testing.assert_array_equal(const, np.full(7, 0.03))
  jsd = get_beta_schedule('jsd', beta_start=0.0, beta_end=0.0, num_timesteps=5)
  np.testing.assert_allclose(jsd, [1 / 5, 1 / 4, 1 / 3, 1 / 2, 1.0], rtol=1e-15)


def test_cosine_schedule_matches_eq17_before_clipping():
  num_timesteps, s = 1000, 0.008
  betas = get_beta_schedule(
      'cosine', beta_start=0.0, beta_end=0.0, num_timesteps=num_timesteps)
  f = lambda t: np.cos((t / num_timesteps + s) / (1 + s) * np.pi / 2) ** 2
  # 0-based index i is the paper's t = i + 1: alphas_cumprod = f(t) / f(0).
  expected = f(np.arange(1, num_timesteps + 1)) / f(0)
  clipped = betas >= 0.999
  first_clipped = np.argmax(clipped) if clipped.any() else num_timesteps
  assert first_clipped >= num_timesteps - 2  # only the very end is clipped
  cumprod = _alphas_cumprod_loop(betas)
  np.testing.assert_allclose(
      cumprod[:first_clipped], expected[:first_clipped], rtol=1e-9, atol=1e-15)
  assert betas.max() == pytest.approx(0.999)
  assert np.all(betas > 0)


def test_unknown_schedule_lists_the_kinds():
  with pytest.raises(ValueError) as error:
    get_beta_schedule('sigmoid', beta_start=1e-4, beta_end=0.02, num_timesteps=10)
  for kind in BETA_SCHEDULES:
    assert kind in str(error.value)


@pytest.mark.parametrize('betas', [
    np.array([0.1, 0.0, 0.2]),       # zero
    np.array([0.1, 1.2]),            # above one
    np.array([[0.1, 0.2]]),          # 2-D
    np.array([0.1]),                 # too short for the t = 0 decoder variance
])
def test_from_betas_rejects_bad_betas(betas):
  with pytest.raises(ValueError):
    GaussianDiffusion.from_betas(betas)


def test_schedule_rejects_bad_values():
  with pytest.raises(ValueError, match='beta'):
    get_beta_schedule('linear', beta_start=0.0, beta_end=0.02, num_timesteps=10)
  with pytest.raises(ValueError, match='num_timesteps'):
    get_beta_schedule('linear', beta_start=1e-4, beta_end=0.02, num_timesteps=0)


# ------------------------------------------------------------ the constants


def test_constants_match_closed_forms():
  betas = _linear(1000)
  diffusion = GaussianDiffusion.from_betas(betas)
  alphas_cumprod = _alphas_cumprod_loop(betas)
  prev = np.concatenate([[1.0], alphas_cumprod[:-1]])
  got = lambda name: np.asarray(getattr(diffusion, name), np.float64)
  for field in ('betas', 'alphas_cumprod', 'posterior_variance'):
    assert getattr(diffusion, field).dtype == jnp.float32
  checks = {
      'betas': betas,
      'alphas_cumprod': alphas_cumprod,
      'alphas_cumprod_prev': prev,
      'sqrt_alphas_cumprod': alphas_cumprod ** 0.5,
      'sqrt_one_minus_alphas_cumprod': (1 - alphas_cumprod) ** 0.5,
      'log_one_minus_alphas_cumprod': np.log(1 - alphas_cumprod),
      'sqrt_recip_alphas_cumprod': alphas_cumprod ** -0.5,
      'sqrt_recipm1_alphas_cumprod': (1 / alphas_cumprod - 1) ** 0.5,
  }
  for name, expected in checks.items():
    np.testing.assert_allclose(got(name), expected, rtol=2e-6, err_msg=name)
  assert diffusion.num_timesteps == 1000


def test_posterior_coefficients_match_eq7():
  betas = _linear(1000)
  diffusion = GaussianDiffusion.from_betas(betas)
  for t in (0, 1, 2, 10, 500, 999):
    abar_t = np.prod(1 - betas[:t + 1])
    abar_prev = np.prod(1 - betas[:t])  # empty product = 1 at t = 0
    alpha_t = 1 - betas[t]
    # Ho et al. eq. 7.
    coef1 = math.sqrt(abar_prev) * betas[t] / (1 - abar_t)
    coef2 = math.sqrt(alpha_t) * (1 - abar_prev) / (1 - abar_t)
    variance = (1 - abar_prev) / (1 - abar_t) * betas[t]
    assert float(diffusion.posterior_mean_coef1[t]) == pytest.approx(coef1, rel=2e-6)
    assert float(diffusion.posterior_mean_coef2[t]) == pytest.approx(
        coef2, rel=2e-6, abs=1e-12)
    assert float(diffusion.posterior_variance[t]) == pytest.approx(
        variance, rel=2e-6, abs=1e-20)
  # At t = 0 the posterior is a point mass at x_0; its log-variance is clipped.
  assert float(diffusion.posterior_variance[0]) == 0.0
  np.testing.assert_allclose(
      float(diffusion.posterior_log_variance_clipped[0]),
      math.log(betas[1] * betas[0] / (1 - (1 - betas[0]) * (1 - betas[1]))),
      rtol=1e-6)


@pytest.mark.parametrize('betas,t', [
    (np.linspace(0.05, 0.3, 10), 1),
    (np.linspace(0.05, 0.3, 10), 5),
    (np.linspace(0.05, 0.3, 10), 9),
    (_linear(1000), 1),
    (_linear(1000), 300),
])
def test_posterior_is_bayes_rule_on_a_grid(betas, t):
  """q(x_{t-1}|x_t,x_0) = q(x_{t-1}|x_0) q(x_t|x_{t-1}) / q(x_t|x_0), numerically."""
  diffusion = GaussianDiffusion.from_betas(betas)
  abar = np.cumprod(1 - betas)
  x0 = 0.4
  x_t = math.sqrt(abar[t]) * x0 + 0.7 * math.sqrt(1 - abar[t])
  prior_mean = math.sqrt(abar[t - 1]) * x0
  prior_std = math.sqrt(1 - abar[t - 1])
  grid = np.linspace(prior_mean - 12 * prior_std, prior_mean + 12 * prior_std,
                     400001)
  density = (stats.norm.pdf(grid, prior_mean, prior_std)
             * stats.norm.pdf(x_t, math.sqrt(1 - betas[t]) * grid,
                              math.sqrt(betas[t]))
             / stats.norm.pdf(x_t, math.sqrt(abar[t]) * x0, math.sqrt(1 - abar[t])))
  assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-6)
  mean, variance, log_variance = diffusion.q_posterior_mean_variance(
      jnp.full((1, 1), x0), jnp.full((1, 1), x_t), jnp.array([t]))
  mean, variance = float(mean[0, 0]), float(variance[0, 0])
  assert math.log(variance) == pytest.approx(float(log_variance[0, 0]), rel=1e-5)
  np.testing.assert_allclose(
      stats.norm.pdf(grid, mean, math.sqrt(variance)), density,
      rtol=5e-4, atol=5e-4 * density.max())
  # The moments of the numeric density, too.
  numeric_mean = np.trapezoid(grid * density, grid)
  numeric_var = np.trapezoid((grid - numeric_mean) ** 2 * density, grid)
  assert mean == pytest.approx(numeric_mean, abs=1e-5)
  assert variance == pytest.approx(numeric_var, rel=1e-4)


# ------------------------------------------------------------- q and inverses


def test_q_sample_statistics():
  diffusion = GaussianDiffusion.from_betas(_linear(1000))
  t_values = np.array([0, 50, 400, 999])
  num_samples = 200_000
  x0 = jnp.array([0.7, -0.4, 0.1, 0.9]).reshape(4, 1)
  noise = jax.random.normal(jax.random.key(0), (4, num_samples))
  x_t = np.asarray(diffusion.q_sample(x0, jnp.asarray(t_values), noise),
                   np.float64)
  abar = np.cumprod(1 - _linear(1000))[t_values]
  expected_mean = np.sqrt(abar) * np.asarray(x0[:, 0])
  expected_var = 1 - abar
  # Within 6 standard errors.
  mean_error = np.abs(x_t.mean(1) - expected_mean)
  assert np.all(mean_error < 6 * np.sqrt(expected_var / num_samples))
  var_error = np.abs(x_t.var(1) / expected_var - 1)
  assert np.all(var_error < 6 * math.sqrt(2 / num_samples))
  mean, variance, log_variance = diffusion.q_mean_variance(x0, jnp.asarray(t_values))
  np.testing.assert_allclose(mean[:, 0], expected_mean, rtol=1e-5)
  np.testing.assert_allclose(variance[:, 0], expected_var, rtol=1e-5)
  np.testing.assert_allclose(log_variance[:, 0], np.log(expected_var), rtol=1e-5)


def test_predict_x0_and_eps_invert_q_sample_per_example_t():
  diffusion = GaussianDiffusion.from_betas(_linear(1000))
  keys = jax.random.split(jax.random.key(1), 2)
  x0 = jax.random.uniform(keys[0], (5, 4, 4, 3), minval=-1, maxval=1)
  noise = jax.random.normal(keys[1], x0.shape)
  t = jnp.array([0, 3, 100, 700, 999])
  x_t = diffusion.q_sample(x0, t, noise)
  np.testing.assert_allclose(
      diffusion.predict_x0_from_eps(x_t, t, noise), x0, atol=2e-4)
  np.testing.assert_allclose(
      diffusion.predict_eps_from_x0(x_t[1:], t[1:], x0[1:]), noise[1:], atol=2e-3)
  # Each example used its own t: compare with one example at a time.
  for i in range(5):
    single = diffusion.q_sample(x0[i:i + 1], t[i:i + 1], noise[i:i + 1])
    np.testing.assert_allclose(single, x_t[i:i + 1], rtol=1e-6)


def test_p_mean_variance_with_true_noise_is_the_true_posterior():
  diffusion = GaussianDiffusion.from_betas(_linear(1000))
  keys = jax.random.split(jax.random.key(2), 2)
  x0 = jax.random.uniform(keys[0], (4, 3, 3, 1), minval=-0.9, maxval=0.9)
  noise = jax.random.normal(keys[1], x0.shape)
  t = jnp.array([0, 1, 200, 800])
  x_t = diffusion.q_sample(x0, t, noise)
  true_mean, _, _ = diffusion.q_posterior_mean_variance(x0, x_t, t)
  for var_type in ('fixedlarge', 'fixedsmall'):
    mean, variance, log_variance, pred_x0 = diffusion.p_mean_variance(
        noise, x_t, t, var_type=var_type, clip_denoised=False)
    np.testing.assert_allclose(pred_x0, x0, atol=2e-4)
    np.testing.assert_allclose(mean, true_mean, atol=2e-5)
    np.testing.assert_allclose(variance, np.exp(log_variance), rtol=1e-6)
  betas = _linear(1000)
  abar = np.cumprod(1 - betas)
  posterior_var_1 = betas[1] * (1 - abar[0]) / (1 - abar[1])
  _, large, _, _ = diffusion.p_mean_variance(noise, x_t, t, var_type='fixedlarge')
  _, small, _, _ = diffusion.p_mean_variance(noise, x_t, t, var_type='fixedsmall')
  # fixedlarge: beta_t, and the t = 1 posterior variance at t = 0.
  np.testing.assert_allclose(
      large[:, 0, 0, 0], [posterior_var_1, betas[1], betas[200], betas[800]],
      rtol=1e-5)
  np.testing.assert_allclose(
      small[:, 0, 0, 0],
      [posterior_var_1] + [betas[i] * (1 - abar[i - 1]) / (1 - abar[i])
                           for i in (1, 200, 800)], rtol=1e-5)


def test_p_mean_variance_clips_x0_and_rejects_bad_var_type():
  diffusion = GaussianDiffusion.from_betas(_linear(100, 1e-3, 0.2))
  x_t = jnp.full((2, 2), 3.0)
  t = jnp.array([10, 50])
  eps = jnp.zeros_like(x_t)
  _, _, _, unclipped = diffusion.p_mean_variance(eps, x_t, t, clip_denoised=False)
  mean, _, _, clipped = diffusion.p_mean_variance(eps, x_t, t, clip_denoised=True)
  assert float(unclipped.min()) > 1.0
  np.testing.assert_array_equal(clipped, 1.0)
  expected, _, _ = diffusion.q_posterior_mean_variance(jnp.ones_like(x_t), x_t, t)
  np.testing.assert_allclose(mean, expected, rtol=1e-6)
  with pytest.raises(ValueError, match='var_type'):
    diffusion.p_mean_variance(eps, x_t, t, var_type='learned')


# ------------------------------------------------------- variational bound terms


def test_prior_bpd_is_the_closed_form_kl_to_the_standard_normal():
  betas = np.linspace(0.05, 0.4, 6)
  diffusion = GaussianDiffusion.from_betas(betas)
  x0 = np.random.default_rng(0).uniform(-1, 1, (3, 2, 2, 2))
  abar = np.prod(1 - betas)
  # KL(N(sqrt(abar) x0, 1 - abar) || N(0, 1)) per sub-pixel, float64.
  kl = 0.5 * (abar * x0**2 + (1 - abar) - 1 - np.log(1 - abar))
  expected = kl.reshape(3, -1).mean(1) / math.log(2)
  np.testing.assert_allclose(prior_bpd(diffusion, jnp.asarray(x0, jnp.float32)), expected,
                             rtol=1e-5)


def test_vb_terms_with_the_true_noise_are_variance_kls_and_the_decoder():
  """eps = the true noise puts the model mean on the posterior mean: for t > 0 the
  KL is that of the variances alone (0 for 'fixedsmall'), and at t = 0 the decoder
  NLL is the Gaussian mass of x_0's bin around x_0 itself (scipy)."""
  betas = _linear(100, 1e-3, 0.2)
  diffusion = GaussianDiffusion.from_betas(betas)
  abar = np.cumprod(1 - betas)
  levels = np.random.default_rng(1).integers(1, 255, (4, 3, 3, 1))  # interior bins
  x0 = jnp.asarray(levels / 127.5 - 1, jnp.float32)
  noise = jax.random.normal(jax.random.key(3), x0.shape)
  t = jnp.array([0, 1, 40, 99])
  x_t = diffusion.q_sample(x0, t, noise)
  posterior_var = betas[1:] * (1 - abar[:-1]) / (1 - abar[1:])     # t = 1..T-1
  small = np.asarray(vb_terms_bpd(noise, diffusion, x0, x_t, t, var_type='fixedsmall'))
  large = np.asarray(vb_terms_bpd(noise, diffusion, x0, x_t, t, var_type='fixedlarge'))
  # t = 0: both variance types use posterior_var[t = 1] for the decoder.
  scale = math.sqrt(posterior_var[0])
  half = 1 / 255 / scale
  decoder_bits = -math.log2(stats.norm.cdf(half) - stats.norm.cdf(-half))
  np.testing.assert_allclose([small[0], large[0]], decoder_bits, rtol=2e-3)
  np.testing.assert_allclose(small[1:], 0.0, atol=2e-4)
  ratio = posterior_var[np.array([0, 39, 98])] / betas[np.array([1, 40, 99])]
  kl_bits = 0.5 * (ratio - 1 - np.log(ratio)) / math.log(2)
  np.testing.assert_allclose(large[1:], kl_bits, rtol=1e-2, atol=2e-4)
  assert kl_bits[0] > 0.1   # at t = 1, beta_1 is far from the posterior variance


def test_is_a_pytree_usable_inside_jit():
  diffusion = GaussianDiffusion.from_betas(_linear(20, 1e-3, 0.2))
  leaves = jax.tree.leaves(diffusion)
  assert len(leaves) == 12 and all(leaf.shape == (20,) for leaf in leaves)

  @jax.jit
  def sample(d, x0, noise):
    assert d.num_timesteps == 20  # static, so a Python int under tracing
    return d.q_sample(x0, jnp.array([d.num_timesteps - 1]), noise)

  x0 = jnp.ones((1, 2))
  np.testing.assert_allclose(
      sample(diffusion, x0, x0), diffusion.q_sample(x0, jnp.array([19]), x0))
