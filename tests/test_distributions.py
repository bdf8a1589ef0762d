"""models/distributions.py against scipy, quadrature, Monte Carlo and brute-force sums."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special, stats

from models import distributions as dist

LEVELS = np.arange(256)
CENTERS = LEVELS / 127.5 - 1.0  # the 256 levels of [-1, 1]
# Bin edges of the 256 levels, the outer two open to infinity.
EDGES = np.concatenate([[-np.inf], CENTERS[:-1] + 1 / 255, [np.inf]])


def _f32(x):
  return jnp.asarray(x, jnp.float32)


# ------------------------------------------------------------------ Gaussian KL
@pytest.mark.parametrize('mean1,var1,mean2,var2', [
    (0.0, 1.0, 0.0, 1.0), (0.3, 0.5, -0.2, 2.0), (1.0, 0.01, 0.9, 0.02),
    (-2.0, 3.0, 1.0, 0.5), (2.0, 1.0, 0.0, 1.0)])
def test_gaussian_kl_matches_quadrature(mean1, var1, mean2, var2):
  p = stats.norm(mean1, math.sqrt(var1))
  q = stats.norm(mean2, math.sqrt(var2))
  lo, hi = mean1 - 15 * math.sqrt(var1), mean1 + 15 * math.sqrt(var1)
  expected, _ = integrate.quad(
      lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), lo, hi, limit=200)
  got = dist.gaussian_kl(_f32(mean1), _f32(math.log(var1)), _f32(mean2),
                         _f32(math.log(var2)))
  assert float(got) == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_gaussian_kl_matches_monte_carlo_and_broadcasts():
  rng = np.random.default_rng(0)
  mean1, std1, mean2, std2 = 0.5, 0.7, 0.0, 1.3
  x = rng.normal(mean1, std1, size=1_000_000)
  log_ratio = stats.norm.logpdf(x, mean1, std1) - stats.norm.logpdf(x, mean2, std2)
  got = dist.gaussian_kl(jnp.full((2, 3), mean1), 2 * math.log(std1), mean2,
                         jnp.full((3,), 2 * math.log(std2)))
  assert got.shape == (2, 3)
  standard_error = log_ratio.std() / math.sqrt(x.size)
  np.testing.assert_allclose(got, log_ratio.mean(), atol=5 * standard_error)


def test_gaussian_kl_is_zero_only_between_equal_gaussians():
  mean, log_var = _f32([0.3, -2.0, 5.0]), _f32([-3.0, 0.0, 2.5])
  np.testing.assert_array_equal(dist.gaussian_kl(mean, log_var, mean, log_var), 0.0)
  assert np.all(np.asarray(dist.gaussian_kl(mean, log_var, mean + 0.1, log_var)) > 0)
  assert np.all(np.asarray(dist.gaussian_kl(mean, log_var, mean, log_var + 0.1)) > 0)


def test_kl_to_standard_normal_matches_monte_carlo_with_scipy_densities():
  rng = np.random.default_rng(0)
  mean = rng.normal(size=4)
  log_std = rng.normal(scale=0.5, size=4)
  std = np.exp(log_std)
  z = mean + std * rng.normal(size=(200_000, 4))
  # KL(q || p) = E_q[log q(z) - log p(z)], with scipy's densities.
  samples = np.sum(stats.norm.logpdf(z, mean, std) - stats.norm.logpdf(z), axis=1)
  closed = np.sum(np.asarray(dist.gaussian_kl_to_standard_normal(
      _f32(mean), _f32(2 * log_std))))
  standard_error = samples.std() / np.sqrt(len(samples))
  assert abs(closed - samples.mean()) < 4 * standard_error + 1e-4, (closed, samples.mean())


@pytest.mark.parametrize('mean,var', [(0.0, 1.0), (1.5, 0.2), (-0.7, 4.0), (0.0, 1e-3)])
def test_kl_to_standard_normal_matches_quadrature(mean, var):
  q = stats.norm(mean, math.sqrt(var))
  lo, hi = mean - 15 * math.sqrt(var), mean + 15 * math.sqrt(var)
  expected, _ = integrate.quad(
      lambda x: q.pdf(x) * (q.logpdf(x) - stats.norm.logpdf(x)), lo, hi, limit=200)
  got = dist.gaussian_kl_to_standard_normal(_f32(mean), _f32(math.log(var)))
  assert float(got) == pytest.approx(expected, rel=1e-5, abs=1e-6)


# --------------------------------------------------------- discretized Gaussian
def test_normal_cdfs():
  x = np.linspace(-8, 8, 2001)
  np.testing.assert_allclose(dist.standard_normal_cdf(jnp.asarray(x)), stats.norm.cdf(x),
                             atol=1e-6)
  # The DDPM code's tanh approximation is close but not exact.
  error = np.abs(np.asarray(dist.approx_standard_normal_cdf(jnp.asarray(x)))
                 - stats.norm.cdf(x))
  assert error.max() < 3e-4 and error.max() > 1e-5


@pytest.mark.parametrize('mean,scale', [
    (0.0, 0.01), (0.3, 0.2), (-0.995, 0.005), (1.0, 0.05), (1.4, 0.3),
    (0.0, 3.0), (-0.5, 1e-3)])
@pytest.mark.parametrize('exact_cdf', [True, False])
def test_discretized_gaussian_bins_sum_to_one_and_match_scipy(mean, scale, exact_cdf):
  log_probs = dist.discretized_gaussian_log_likelihood(
      _f32(CENTERS), means=_f32(mean), log_scales=_f32(math.log(scale)),
      exact_cdf=exact_cdf)
  probs = np.exp(np.asarray(log_probs, np.float64))
  expected = np.diff(stats.norm.cdf(EDGES, mean, scale))
  atol = 1e-5 if exact_cdf else 5e-4  # the tanh CDF costs accuracy
  assert probs.sum() == pytest.approx(1.0, abs=256 * atol)
  np.testing.assert_allclose(probs, expected, atol=atol)
  if exact_cdf:
    significant = expected > 1e-6
    np.testing.assert_allclose(probs[significant], expected[significant], rtol=2e-3)


@pytest.mark.parametrize('distance', [6.0, 12.0, 40.0])
def test_discretized_gaussian_far_tail_bins_are_accurate(distance):
  """A bin `distance` scales above the mean: mass by quadrature, scaled by pdf."""
  scale = 0.02
  x = CENTERS[200]
  mean = x - distance * scale
  a, b = (x - 1 / 255 - mean) / scale, (x + 1 / 255 - mean) / scale
  # mass = phi(a) * int_a^b exp(-(z^2 - a^2) / 2) dz, in log space.
  ratio, _ = integrate.quad(lambda z: math.exp(-(z * z - a * a) / 2), a, b)
  expected = -a * a / 2 - 0.5 * math.log(2 * math.pi) + math.log(ratio)
  got = dist.discretized_gaussian_log_likelihood(
      _f32(x), means=_f32(mean), log_scales=_f32(math.log(scale)))
  assert float(got) == pytest.approx(expected, rel=2e-4)
  # The same bin mirrored below the mean (the lower tail).
  mirrored = dist.discretized_gaussian_log_likelihood(
      _f32(-x), means=_f32(-mean), log_scales=_f32(math.log(scale)))
  assert float(mirrored) == pytest.approx(expected, rel=2e-4)


# --------------------------------------------------------- discretized logistic
def _logistic_masses(mean, scale):
  """scipy's logistic CDF differences over the 256 bins, in float64."""
  return np.diff(stats.logistic.cdf(EDGES, loc=mean, scale=scale))


@pytest.mark.parametrize('mean,log_scale', [(0.0, -3.0), (0.9, -5.0), (-1.3, 0.5),
                                            (0.2, -7.0), (3.0, -2.0), (-0.99, -6.0)])
@pytest.mark.parametrize('exact', [True, False])
def test_discretized_logistic_sums_to_one_and_matches_scipy(mean, log_scale, exact):
  log_p = np.asarray(dist.discretized_logistic_log_likelihood(
      _f32(CENTERS), mean=_f32(mean), log_scale=_f32(log_scale), exact=exact), np.float64)
  np.testing.assert_allclose(np.exp(log_p).sum(), 1.0, rtol=1e-4)
  want = _logistic_masses(mean, math.exp(log_scale))
  big = want > 1e-5
  np.testing.assert_allclose(np.exp(log_p[big]), want[big], rtol=2e-3)


@pytest.mark.parametrize('z', [-19.0, 19.0, 27.0, 60.0])
def test_discretized_logistic_tails_exact_and_reference(z):
  """A bin z scales from the mean: the exact form to float32 precision; the PixelCNN++
  form's bin-centre density times the bin width to its midpoint-rule error."""
  scale = 0.04
  x = CENTERS[200 if z > 0 else 50]
  mean = x - z * scale
  upper, lower = (x + 1 / 255 - mean) / scale, (x - 1 / 255 - mean) / scale
  # log(sigma(u) - sigma(l)) in float64 via log-sigmoids: exact, no cancellation.
  expected = (-np.logaddexp(0, -upper) - np.logaddexp(0, lower)
              + np.log(-np.expm1(lower - upper)))
  assert expected < math.log(1e-5)
  kwargs = dict(mean=_f32(mean), log_scale=_f32(math.log(scale)))
  exact = float(dist.discretized_logistic_log_likelihood(_f32(x), **kwargs))
  assert exact == pytest.approx(expected, rel=1e-5)
  reference = float(dist.discretized_logistic_log_likelihood(_f32(x), exact=False, **kwargs))
  # Relative error of the midpoint rule ~ (w / s)^2 / 24 with w = 2/255: ~1.6e-3.
  assert reference == pytest.approx(expected, abs=5e-3)
  assert reference != exact


def test_discretized_likelihoods_have_finite_gradients_at_extremes():
  x = _f32(CENTERS[[0, 1, 127, 254, 255]])
  for mean in (-50.0, 0.0, 50.0):
    for log_scale in (dist.MIN_LOG_SCALE, 0.0, 5.0):
      for fn in (
          lambda m, s: dist.discretized_logistic_log_likelihood(x, mean=m, log_scale=s),
          lambda m, s: dist.discretized_logistic_log_likelihood(
              x, mean=m, log_scale=s, exact=False),
          lambda m, s: dist.discretized_gaussian_log_likelihood(
              x, means=m, log_scales=s)):
        value, grads = jax.value_and_grad(lambda m, s: jnp.sum(fn(m, s)), (0, 1))(
            _f32(mean), _f32(log_scale))
        assert np.isfinite(value) and all(np.isfinite(g) for g in grads), (mean, log_scale)


# ------------------------------------------------------------ discrete variables
def test_bernoulli_log_likelihood_matches_scipy():
  logits = np.array([-30.0, -3.0, -0.2, 0.0, 1.5, 8.0, 30.0])
  for value in (0, 1):
    got = dist.bernoulli_log_likelihood(jnp.full(7, float(value)), _f32(logits))
    # scipy's pmf of p = expit(l) while 1 - p keeps its digits; scipy's log_expit
    # (log sigma(+-l), no subtraction) in the far tails.
    want = np.where(np.abs(logits) <= 8, stats.bernoulli.logpmf(value, special.expit(logits)),
                    special.log_expit(logits if value else -logits))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_categorical_log_likelihood_matches_scipy_and_sums_to_one():
  logits = np.random.default_rng(0).normal(size=(3, 4, 256)) * 4
  levels = np.random.default_rng(1).integers(0, 256, size=(3, 4))
  got = dist.categorical_log_likelihood(jnp.asarray(levels), _f32(logits))
  assert got.shape == (3, 4)
  want = np.take_along_axis(special.log_softmax(logits, -1), levels[..., None], -1)[..., 0]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  every_level = dist.categorical_log_likelihood(
      jnp.arange(256).reshape(256, 1, 1), _f32(logits)[None])   # [256, 3, 4]
  np.testing.assert_allclose(np.exp(np.asarray(every_level, np.float64)).sum(0), 1.0,
                             rtol=1e-5)


# ----------------------------------------------------------------------- units
def test_bits_per_dim_of_uniform_256_level_data_is_8():
  num_dims = 3 * 32 * 32
  nats = -np.sum(np.full(num_dims, math.log(1 / 256)))   # -log p of uniform levels
  assert float(dist.nats_to_bits_per_dim(jnp.float32(nats), num_dims)) == pytest.approx(
      8.0, rel=1e-6)
  # A uniform categorical over the levels through the library: 8 bits per sub-pixel.
  log_p = dist.categorical_log_likelihood(jnp.zeros((num_dims,), jnp.int32),
                                          jnp.zeros((num_dims, 256)))
  assert float(dist.nats_to_bits_per_dim(-jnp.sum(log_p), num_dims)) == pytest.approx(
      8.0, rel=1e-5)
  # One binary dimension of a fair coin: 1 bit.
  assert float(dist.nats_to_bits_per_dim(
      -dist.bernoulli_log_likelihood(jnp.float32(1.0), jnp.float32(0.0)), 1)) == (
          pytest.approx(1.0, rel=1e-6))
