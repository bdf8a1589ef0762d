"""Tests for the discretized logistic mixture likelihood (models/logistic_mixture.py).

The reference is the paper's formula written out directly in float64 numpy: bin
edges x_k +- 1/255 (the end levels' bins extended to -inf / +inf), logistic CDFs by
scipy's expit, mixture weights by a softmax, and the RGB coupling of eq. 3.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from models import logistic_mixture as lm

LEVELS = np.arange(256)


def to_levels(x) -> np.ndarray:
  return np.rint((np.asarray(x, np.float64) + 1.0) * 127.5).astype(np.int64)


def level_values(levels) -> np.ndarray:
  return np.asarray(levels, np.float64) / 127.5 - 1.0


# ------------------------------------------------------------ float64 reference
def unpack_reference(params: np.ndarray, channels: int, m: int):
  """The layout of the module docstring, unpacked in float64."""
  params = np.asarray(params, np.float64)
  logits = params[..., :m]
  rest = params[..., m:].reshape(*params.shape[:-1], channels, -1)
  means = rest[..., :m]
  log_scales = np.maximum(rest[..., m:2 * m], -7.0)
  coeffs = np.tanh(rest[..., 2 * m:3 * m]) if channels == 3 else None
  return logits, means, log_scales, coeffs


def bin_mass_reference(levels, mean, scale):
  """P(level) of a logistic(mean, scale) rounded to the grid; inf-wide end bins."""
  x = level_values(levels)
  upper = np.where(levels == 255, np.inf, x + 1 / 255)
  lower = np.where(levels == 0, -np.inf, x - 1 / 255)
  return special.expit((upper - mean) / scale) - special.expit((lower - mean) / scale)


def component_masses_reference(x, params, m):
  """Per-pixel, per-channel, per-component masses [..., C, M] and weights [..., M]."""
  channels = x.shape[-1]
  logits, means, log_scales, coeffs = unpack_reference(params, channels, m)
  levels = to_levels(x)[..., None]  # [..., C, 1]
  xv = level_values(levels)
  mu = means.copy()
  if channels == 3:  # eq. 3
    mu[..., 1, :] = means[..., 1, :] + coeffs[..., 0, :] * xv[..., 0, :]
    mu[..., 2, :] = (means[..., 2, :] + coeffs[..., 1, :] * xv[..., 0, :]
                     + coeffs[..., 2, :] * xv[..., 1, :])
  masses = bin_mass_reference(levels, mu, np.exp(log_scales))
  return masses, special.softmax(logits, axis=-1)


def log_prob_reference(x, params, m):
  """Sum over pixels of log sum_i pi_i prod_c P_i(x_c | earlier channels)."""
  masses, weights = component_masses_reference(x, params, m)
  per_pixel = np.sum(weights * np.prod(masses, axis=-2), axis=-1)
  return np.sum(np.log(per_pixel), axis=(1, 2))


def params_near(x: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
  """Parameters whose coupled means lie within 1.5 scales of x for every component.

  Every component then gives x a bin mass well above the 1e-5 of the low-probability
  approximation, so the exact formula applies everywhere.
  """
  batch, height, width, channels = x.shape
  log_scales = rng.uniform(-4.0, 0.0, (batch, height, width, channels, m))
  offsets = rng.uniform(-1.5, 1.5, log_scales.shape) * np.exp(log_scales)
  target = x[..., None] + offsets  # the coupled means
  raw_coeffs = rng.uniform(-2.0, 2.0, (batch, height, width, 3, m))
  coeffs = np.tanh(raw_coeffs)
  means = target.copy()
  if channels == 3:  # invert eq. 3 so the coupled means are `target`
    means[..., 1, :] = target[..., 1, :] - coeffs[..., 0, :] * x[..., 0, None]
    means[..., 2, :] = (target[..., 2, :] - coeffs[..., 1, :] * x[..., 0, None]
                        - coeffs[..., 2, :] * x[..., 1, None])
    per_channel = np.concatenate([means, log_scales, raw_coeffs], axis=-1)
  else:
    per_channel = np.concatenate([means, log_scales], axis=-1)
  logits = rng.normal(0.0, 1.0, (batch, height, width, m))
  return np.concatenate([logits, per_channel.reshape(batch, height, width, -1)], axis=-1)


def random_images(shape, rng):
  """Random levels with some pixels forced to the end levels 0 and 255."""
  levels = rng.integers(0, 256, shape)
  levels.reshape(-1)[::7] = 0
  levels.reshape(-1)[3::7] = 255
  return level_values(levels)


# ---------------------------------------------------------------------- tests
def test_num_output_channels():
  assert lm.num_output_channels(3, 10) == 100
  assert lm.num_output_channels(1, 5) == 15
  with pytest.raises(ValueError, match="C=2"):
    lm.num_output_channels(2, 5)
  with pytest.raises(ValueError, match="num_mixtures"):
    lm.num_output_channels(3, 0)


@pytest.mark.parametrize("channels", [1, 3])
def test_log_prob_matches_float64_formula(channels):
  rng = np.random.default_rng(channels)
  m = 3
  x = random_images((4, 3, 5, channels), rng)
  params = params_near(x, m, rng)
  masses, _ = component_masses_reference(x, params, m)
  assert masses.min() > 1e-4  # the exact branch everywhere
  expected = log_prob_reference(x, params, m)
  got = lm.log_prob(jnp.asarray(x, jnp.float32), jnp.asarray(params, jnp.float32),
                    num_mixtures=m)
  assert got.shape == (4,)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("channels", [1, 3])
def test_pixel_log_prob_is_each_pixels_term(channels):
  """pixel_log_prob [B, H, W] against the float64 formula pixel by pixel; log_prob
  is its sum."""
  rng = np.random.default_rng(10 + channels)
  m = 2
  x = random_images((2, 3, 4, channels), rng)
  params = params_near(x, m, rng)
  masses, weights = component_masses_reference(x, params, m)
  expected = np.log(np.sum(weights * np.prod(masses, axis=-2), axis=-1))
  xj, pj = jnp.asarray(x, jnp.float32), jnp.asarray(params, jnp.float32)
  got = lm.pixel_log_prob(xj, pj, num_mixtures=m)
  assert got.shape == (2, 3, 4)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(np.asarray(lm.log_prob(xj, pj, num_mixtures=m)),
                             np.asarray(got).sum(axis=(1, 2)), rtol=1e-6)


def test_coupling_moves_green_and_blue_means():
  """A one-component pixel whose G and B follow R exactly: mass is where eq. 3 says."""
  m = 1
  red = level_values(200)
  # Rows R, G, B of [mean, log-scale, pre-tanh coefficient]: m_R = R, m_G = m_B = 0,
  # s = exp(-5) = 0.007, coefficients c_0 = 0.5, c_1 = -0.5, c_2 = 0.25.
  raw = [math.atanh(0.5), math.atanh(-0.5), math.atanh(0.25)]
  per_channel = np.array([[red, -5.0, raw[0]], [0.0, -5.0, raw[1]], [0.0, -5.0, raw[2]]])
  params = np.concatenate([[0.0], per_channel.reshape(-1)])[None, None, None, :]
  green = level_values(to_levels(0.5 * red))       # mu_G = 0.5 R
  blue = level_values(to_levels(-0.5 * red + 0.25 * green))
  on_mean = np.array([red, green, blue])[None, None, None, :]
  off_mean = np.array([red, level_values(to_levels(0.0)), blue])[None, None, None, :]
  lp = lambda x: float(lm.log_prob(jnp.asarray(x, jnp.float32),  # noqa: E731
                                   jnp.asarray(params, jnp.float32), num_mixtures=m)[0])
  np.testing.assert_allclose(lp(on_mean), log_prob_reference(on_mean, params, m)[0],
                             rtol=1e-5)
  assert lp(on_mean) > lp(off_mean) + 20.0


def test_grey_distribution_sums_to_one_over_256_levels():
  rng = np.random.default_rng(0)
  m, num_param_sets = 4, 16
  # Wide to very narrow components (log-scales down to the -7 clip), means beyond the
  # ends too, so the end bins and the low-probability approximation both take part.
  logits = rng.normal(0.0, 2.0, (num_param_sets, m))
  means = rng.uniform(-1.3, 1.3, (num_param_sets, m))
  log_scales = rng.uniform(-8.0, 1.0, (num_param_sets, m))
  params = np.concatenate([logits, means, log_scales], axis=-1)
  x = np.broadcast_to(level_values(LEVELS)[None, :], (num_param_sets, 256))
  p = np.broadcast_to(params[:, None, :], (num_param_sets, 256, 3 * m))
  log_p = lm.log_prob(jnp.asarray(x.reshape(-1, 1, 1, 1), jnp.float32),
                      jnp.asarray(p.reshape(-1, 1, 1, 3 * m), jnp.float32),
                      num_mixtures=m)
  totals = np.exp(np.asarray(log_p, np.float64)).reshape(num_param_sets, 256).sum(-1)
  np.testing.assert_allclose(totals, 1.0, atol=2e-5)


def test_rgb_joint_sums_to_one_over_all_256_cubed_pixels():
  """Brute force: all 16.7M values of one RGB pixel, two coupled components."""
  m = 2
  per_channel = np.array([
      # means (2) | log-scales (2) | pre-tanh coefficients (2)
      [0.3, -0.6, -2.0, -4.5, 1.5, -0.7],
      [-0.2, 0.5, -3.0, -1.0, -2.5, 0.4],
      [0.9, 0.1, -5.0, -2.5, 0.8, 1.9],
  ])
  params = np.concatenate([[0.4, -0.3], per_channel.reshape(-1)]).astype(np.float32)
  grid = jnp.asarray(level_values(LEVELS), jnp.float32)
  green, blue = (a.reshape(-1) for a in jnp.meshgrid(grid, grid, indexing="ij"))

  def mass_for_red(red):
    x = jnp.stack([jnp.full_like(green, red), green, blue], axis=-1)[:, None, None, :]
    p = jnp.broadcast_to(params, (x.shape[0], 1, 1, params.shape[-1]))
    return jnp.sum(jnp.exp(lm.log_prob(x, p, num_mixtures=m)))

  per_red = jax.jit(lambda: jax.lax.map(mass_for_red, grid))()
  total = np.sum(np.asarray(per_red, np.float64))
  np.testing.assert_allclose(total, 1.0, atol=1e-4)


def test_low_probability_bins_use_the_density_at_the_bin_centre():
  """Far in either tail, where float32 sigmoids cancel, the value is still accurate."""
  m = 1
  mean, log_scale = -0.2, math.log(0.04)
  params = np.array([0.0, mean, log_scale], np.float64)
  levels = to_levels(np.array([-0.95, 0.55, 0.9]))  # z = -19, 19, 27: masses < 1e-5
  x = level_values(levels)
  expected = np.log(bin_mass_reference(levels, mean, math.exp(log_scale)))
  assert np.all(expected < math.log(1e-5))
  got = lm.log_prob(jnp.asarray(x.reshape(-1, 1, 1, 1), jnp.float32),
                    jnp.asarray(np.broadcast_to(params, (3, 1, 1, 3)), jnp.float32),
                    num_mixtures=m)
  # Density x bin width is the midpoint rule: relative error (w/s)^2 / 24 ~ 1e-3.
  np.testing.assert_allclose(np.asarray(got), expected, atol=5e-3)


def test_extreme_parameters_give_finite_values_and_gradients():
  m = 2
  x = jnp.asarray(level_values([[0, 255, 128, 3]]), jnp.float32).reshape(4, 1, 1, 1)
  params = jnp.asarray([[30.0, -30.0, 50.0, -50.0, -20.0, -20.0],
                        [0.0, 0.0, -50.0, 0.9, -9.0, 5.0],
                        [-5.0, 5.0, 1.0, -1.0, -7.5, -7.5],
                        [0.0, 0.0, 1e3, -1e3, 0.0, -7.0]], jnp.float32)
  params = params.reshape(4, 1, 1, 6)
  value, grad = jax.value_and_grad(
      lambda p: jnp.sum(lm.log_prob(x, p, num_mixtures=m)))(params)
  assert np.isfinite(value) and np.all(np.isfinite(grad))


def test_log_prob_rejects_bad_shapes():
  x = jnp.zeros((2, 4, 4, 3))
  with pytest.raises(ValueError, match="params must have shape"):
    lm.log_prob(x, jnp.zeros((2, 4, 4, 30)), num_mixtures=2)
  with pytest.raises(ValueError, match="C=2"):
    lm.log_prob(jnp.zeros((2, 4, 4, 2)), jnp.zeros((2, 4, 4, 20)), num_mixtures=2)
  with pytest.raises(ValueError, match="NHWC"):
    lm.log_prob(jnp.zeros((4, 4, 3)), jnp.zeros((4, 4, 20)), num_mixtures=2)
  with pytest.raises(ValueError, match="fits neither"):
    lm.sample(jax.random.key(0), jnp.zeros((2, 4, 4, 25)), num_mixtures=2)


# ------------------------------------------------------------------ sampling
def chi_square_p_value(samples_levels: np.ndarray, probs: dict) -> float:
  """Pearson test of sampled cells against exact cell probabilities.

  Cells with expected count < 5 are pooled into one, as is all unsampled mass.
  """
  n = len(samples_levels)
  cells, counts = np.unique(samples_levels, axis=0, return_counts=True)
  expected = np.array([probs[tuple(c)] for c in cells]) * n
  big = expected >= 5
  observed_small = counts[~big].sum()
  expected_small = n - expected[big].sum()
  stat = np.sum((counts[big] - expected[big])**2 / expected[big])
  stat += (observed_small - expected_small)**2 / expected_small
  return float(stats.chi2.sf(stat, df=int(big.sum())))


@pytest.mark.parametrize("means,log_scales,logits", [
    ([0.3], [-3.0], [0.0]),                      # one component, the brief's case
    ([0.97], [-3.5], [0.0]),                     # mass piling up at level 255
    ([-0.5, 0.2, 0.6], [-4.0, -2.5, -5.0], [0.5, -0.3, 1.0]),   # Gumbel-max choice
])
def test_grey_samples_follow_the_exact_bin_probabilities(means, log_scales, logits):
  m, n = len(means), 200_000
  params = np.concatenate([logits, means, log_scales])
  params = jnp.broadcast_to(jnp.asarray(params, jnp.float32), (n, 1, 1, 3 * m))
  samples = lm.sample(jax.random.key(3), params, num_mixtures=m)
  samples = np.asarray(samples, np.float64).reshape(-1)
  levels = to_levels(samples)
  np.testing.assert_allclose(level_values(levels), samples, atol=1e-6)   # on the grid
  weights = special.softmax(np.asarray(logits, np.float64))
  exact = sum(w * bin_mass_reference(LEVELS, mu, math.exp(ls))
              for w, mu, ls in zip(weights, means, log_scales))
  np.testing.assert_allclose(exact.sum(), 1.0, atol=1e-12)
  empirical = np.bincount(levels, minlength=256) / n
  assert np.max(np.abs(empirical - exact)) < 5e-3
  p_value = chi_square_p_value(levels[:, None], {(k,): exact[k] for k in LEVELS})
  assert p_value > 1e-3, p_value


def test_rgb_samples_follow_the_coupled_joint_distribution():
  """Whole-pixel samples against the exact joint of eq. 2-3 (float64 reference)."""
  m, n = 2, 300_000
  per_channel = np.array([
      [0.2, -0.4, -6.0, -4.3, 2.0, -1.4],    # R: means, log-scales, c_0 (G from R)
      [-0.1, 0.3, -6.5, -3.9, 1.3, 0.6],     # G: ..., c_1 (B from R)
      [0.5, 0.0, -5.5, -4.1, -1.1, 2.0],     # B: ..., c_2 (B from G)
  ])
  # Component 0 is narrower than a bin (s = e^-6 = 0.0025 against 2/255): its G and B
  # means move by up to a scale if the coupling used R before rounding.
  params = np.concatenate([[0.3, -0.2], per_channel.reshape(-1)])
  samples = lm.sample(jax.random.key(7),
                      jnp.broadcast_to(jnp.asarray(params, jnp.float32), (n, 1, 1, 20)),
                      num_mixtures=m)
  samples = np.asarray(samples, np.float64).reshape(n, 3)
  assert samples.min() >= -1.0 and samples.max() <= 1.0
  levels = to_levels(samples)
  np.testing.assert_allclose(level_values(levels), samples, atol=1e-6)
  cells = np.unique(levels, axis=0)
  x = level_values(cells)[:, None, None, :]
  masses, weights = component_masses_reference(
      x, np.broadcast_to(params, (len(cells), 1, 1, 10 * m)), m)
  exact = np.sum(weights * np.prod(masses, axis=-2), axis=-1).reshape(-1)
  probs = {tuple(c): p for c, p in zip(cells, exact)}
  assert sum(probs.values()) > 0.95   # the sampled cells hold nearly all the mass
  p_value = chi_square_p_value(levels, probs)
  assert p_value > 1e-3, p_value
