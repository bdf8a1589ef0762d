"""Tests for evaluation/ode_likelihood.py.

With the exact score of Gaussian data x0 ~ N(mu, diag(s^2)), the probability flow
is affine: from eps to T it maps x to z = m_T mu + sqrt(v_T / v_eps) (x - m_eps mu)
per dim (v = m^2 s^2 + std^2), so the model density it defines is
log N(z; 0, prior_std^2) + sum_d log sqrt(v_T / v_eps), in closed form. Its
Jacobian is diagonal, so a Rademacher probe v (v_d^2 = 1) gives the trace exactly
and the per-example log-likelihood must match to solver tolerance.

Bits/dim conversion is checked by hand on densities whose discrete probabilities
are known: the uniform density (exactly 8 bits) and a density constant on each
of the 256 bins (the dequantization bound is then tight: -log2 P(k)).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from evaluation.ode_likelihood import (
    LikelihoodOutput, bits_per_dim, dequantize, ode_bpd, ode_log_likelihood)
from models.sde import SubVPSDE, VESDE, VPSDE

SHAPE = (8, 2, 2, 3)
_rng = np.random.default_rng(0)
MU = _rng.uniform(-0.5, 0.5, SHAPE[1:])
STD = _rng.uniform(0.2, 0.8, SHAPE[1:])
SDES = [VESDE(), VPSDE(), SubVPSDE()]
IDS = ['ve', 'vp', 'subvp']


@pytest.fixture(autouse=True)
def _fast(fast_compile):
  """Compilation dominates these small solves."""


def gaussian_score(sde):
  def score_fn(x, t):
    m = sde.alpha(t).reshape(-1, 1, 1, 1)
    sd = sde.sigma(t).reshape(-1, 1, 1, 1)
    return -(x - m * MU) / (m**2 * STD**2 + sd**2)
  return score_fn


def pushforward_logp(sde, x, eps):
  """log density of the affine flow's pushforward of the prior, float64."""
  x = np.asarray(x, np.float64)
  variance = lambda t: sde.alpha(t) ** 2 * STD**2 + sde.sigma(t) ** 2
  scale = np.sqrt(variance(1.0) / variance(eps))
  z = sde.alpha(1.0) * MU + scale * (x - sde.alpha(eps) * MU)
  prior = stats.norm.logpdf(z, scale=sde.prior_std)
  return (prior + np.log(scale)).reshape(x.shape[0], -1).sum(-1)


def _samples(sde, eps, seed=1, batch=SHAPE[0]):
  rng = np.random.default_rng(seed)
  std = np.sqrt(sde.alpha(eps) ** 2 * STD**2 + sde.sigma(eps) ** 2)
  return jnp.asarray(sde.alpha(eps) * MU + std * rng.normal(size=(batch,) + SHAPE[1:]),
                     jnp.float32)


@pytest.mark.parametrize('sde', SDES, ids=IDS)
def test_log_likelihood_of_gaussian_data_is_exact(sde):
  eps = 1e-5
  x = _samples(sde, eps)
  out = jax.jit(lambda x, rng: ode_log_likelihood(gaussian_score(sde), sde, x, rng))(
      x, jax.random.key(2))
  assert isinstance(out, LikelihoodOutput)
  assert out.logp.shape == (SHAPE[0],) and out.z.shape == SHAPE
  np.testing.assert_allclose(out.logp, pushforward_logp(sde, x, eps), rtol=1e-4,
                             atol=2e-3)
  np.testing.assert_allclose(out.logp, out.prior_logp + out.delta_logp, rtol=1e-6)
  # And close to the data's own marginal at eps, N(m mu, v): they differ only
  # because the prior is not exactly p_T (for VE by ~ sum_d mu_d z_d / sigma_max^2,
  # up to ~0.05 here).
  std = np.sqrt(sde.alpha(eps) ** 2 * STD**2 + sde.sigma(eps) ** 2)
  marginal = stats.norm.logpdf(np.asarray(x, np.float64), sde.alpha(eps) * MU, std)
  np.testing.assert_allclose(out.logp, marginal.reshape(SHAPE[0], -1).sum(-1),
                             atol=0.15)


def test_exact_divergence_and_unbiased_gaussian_probes():
  sde, eps = VPSDE(), 1e-5
  x = _samples(sde, eps, batch=2)
  exact = pushforward_logp(sde, x, eps)
  out = ode_log_likelihood(gaussian_score(sde), sde, x, jax.random.key(3),
                           hutchinson='exact')
  np.testing.assert_allclose(out.logp, exact, rtol=1e-4, atol=2e-3)
  # Gaussian probes are noisy per example but unbiased: 1000 copies of one x.
  copies = jnp.repeat(x[:1], 1000, axis=0)
  noisy = np.asarray(ode_log_likelihood(gaussian_score(sde), sde, copies,
                                        jax.random.key(4), hutchinson='gaussian',
                                        rtol=1e-4, atol=1e-4).logp, np.float64)
  assert noisy.std() > 0.1  # Really a stochastic estimate.
  assert abs(noisy.mean() - exact[0]) < 4 * noisy.std() / math.sqrt(noisy.size)


def test_uniform_density_is_exactly_eight_bits():
  """p_y uniform on the data range puts mass 1/256 on every level: 8 bits/dim."""
  num_dims = 12
  for data_range, logp in [('[-1,1]', -num_dims * math.log(2.0)), ('[0,1]', 0.0)]:
    np.testing.assert_allclose(
        bits_per_dim(jnp.full((3,), logp), num_dims, data_range), 8.0, rtol=1e-6)


def test_bits_per_dim_of_a_binwise_constant_density_by_hand():
  """If p_y is constant on each bin, every dequantized y gives -log2 P(k) exactly."""
  rng = np.random.default_rng(5)
  masses = rng.dirichlet(np.full(256, 0.5))  # P(k) for k = 0..255
  images = rng.integers(0, 256, size=(6, 3), dtype=np.uint8)
  expected = -np.log2(masses[images]).sum(-1) / 3
  for data_range, width in [('[-1,1]', 2.0), ('[0,1]', 1.0)]:
    y = np.asarray(dequantize(jax.random.key(6), jnp.asarray(images), data_range),
                   np.float64)
    # Density on y: mass of the bin divided by its width (width / 256).
    bins = np.floor((y - (-1.0 if width == 2.0 else 0.0)) / width * 256).astype(int)
    np.testing.assert_array_equal(bins, images)
    log_density = np.log(masses[bins] * 256 / width).sum(-1)
    np.testing.assert_allclose(bits_per_dim(jnp.asarray(log_density), 3, data_range),
                               expected, rtol=1e-5)


def test_dequantization_is_uniform_within_the_bin():
  images = jnp.full((20_000, 1), 17, jnp.uint8)
  y = np.asarray(dequantize(jax.random.key(7), images, '[-1,1]'), np.float64)
  offset = (y + 1) / 2 * 256 - 17
  assert offset.min() >= 0 and offset.max() < 1
  assert stats.kstest(offset.ravel(), 'uniform').pvalue > 1e-3


def test_ode_bpd_end_to_end():
  sde = VPSDE()
  # Images whose [-1, 1] scaling is Gaussian-ish around MU.
  x = np.clip(np.asarray(_samples(sde, 1e-5, seed=8)), -1, 0.99)
  images = jnp.asarray(np.floor((x + 1) / 2 * 256), jnp.uint8)
  rng = jax.random.key(9)
  out = jax.jit(lambda images, rng: ode_bpd(gaussian_score(sde), sde, images, rng))(
      images, rng)
  y = dequantize(jax.random.split(rng)[0], images, '[-1,1]')  # documented split
  logp = pushforward_logp(sde, y, 1e-5)
  expected = -logp / (12 * math.log(2)) + 7.0
  np.testing.assert_allclose(out.bpd, expected, rtol=1e-4, atol=1e-3)
  assert out.bpd.shape == (SHAPE[0],) and out.nfe.shape == ()


class _CallCounter:
  def __init__(self, fn):
    self.fn, self.count = fn, 0

  def _increment(self):
    self.count += 1

  def __call__(self, x, t):
    jax.debug.callback(self._increment)
    return self.fn(x, t)


@pytest.mark.parametrize('hutchinson', ['rademacher', 'exact'])
def test_reported_nfe_counts_score_calls(hutchinson):
  sde = VESDE()
  counter = _CallCounter(gaussian_score(sde))
  x = _samples(sde, 1e-5, batch=2)
  out = jax.jit(lambda x: ode_log_likelihood(counter, sde, x, jax.random.key(0),
                                             hutchinson=hutchinson, rtol=1e-3,
                                             atol=1e-3))(x)
  jax.block_until_ready(out)
  assert counter.count == int(out.nfe) > 0


@pytest.mark.parametrize('call,match', [
    (lambda x: ode_log_likelihood(None, VPSDE(), x, jax.random.key(0),
                                  hutchinson='x'), 'hutchinson'),
    (lambda x: ode_log_likelihood(None, VPSDE(), x[0, 0, 0], jax.random.key(0)),
     'rank'),
    (lambda x: ode_log_likelihood(None, VPSDE(), x, jax.random.key(0), eps=0.0), 'eps'),
    (lambda x: ode_log_likelihood(None, VPSDE(), x, jax.random.key(0), atol=-1.0),
     'atol'),
    (lambda x: dequantize(jax.random.key(0), x, '[-1,1]'), 'uint8'),
    (lambda x: bits_per_dim(x, 3, '[0,255]'), 'data_range'),
])
def test_bad_arguments_raise(call, match):
  with pytest.raises(ValueError, match=match):
    call(jnp.zeros(SHAPE))
