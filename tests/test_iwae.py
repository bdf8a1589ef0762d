"""The ELBO / IWAE bounds of evaluation/iwae.py against closed forms and scipy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from evaluation import iwae


def test_reparameterized_gradient_matches_finite_differences_of_the_expectation():
  """d/d(mean, log_std) E_{z~q}[f(z)], f(z) = sum sin(z) + 0.3 z^2."""
  mean = np.array([0.3, -1.2, 0.8])
  log_std = np.array([-0.5, 0.2, 0.0])
  eps = np.random.default_rng(1).normal(size=(400_000, 3))

  def f_numpy(z):
    return np.sum(np.sin(z) + 0.3 * z ** 2, axis=-1)

  def expectation(m, s):     # Monte Carlo with common random numbers, float64
    return f_numpy(m + np.exp(s) * eps).mean()

  def reparameterized(m, s):
    z = iwae.reparameterize(m, s, jnp.asarray(eps, jnp.float32))
    return jnp.mean(jnp.sum(jnp.sin(z) + 0.3 * z ** 2, axis=-1))

  grad_mean, grad_log_std = jax.grad(reparameterized, argnums=(0, 1))(
      jnp.asarray(mean, jnp.float32), jnp.asarray(log_std, jnp.float32))
  h = 1e-4
  for i in range(3):
    e = np.eye(3)[i] * h
    fd_mean = (expectation(mean + e, log_std) - expectation(mean - e, log_std)) / (2 * h)
    fd_log_std = (expectation(mean, log_std + e) - expectation(mean, log_std - e)) / (2 * h)
    np.testing.assert_allclose(grad_mean[i], fd_mean, atol=2e-3)
    np.testing.assert_allclose(grad_log_std[i], fd_log_std, atol=2e-3)
  # And both match the closed form: E sin(m + s e) = sin(m) exp(-s^2/2).
  std = np.exp(log_std)
  exact_grad_mean = np.cos(mean) * np.exp(-std ** 2 / 2) + 0.6 * mean
  exact_grad_log_std = (-np.sin(mean) * std ** 2 * np.exp(-std ** 2 / 2) + 0.6 * std ** 2)
  np.testing.assert_allclose(grad_mean, exact_grad_mean, atol=1e-2)
  np.testing.assert_allclose(grad_log_std, exact_grad_log_std, atol=1e-2)


# ------------------------------------------------------------ probabilistic PCA
class PPCA:
  """z ~ N(0, I_3), x | z ~ N(W z + b, s^2 I_6): p(x) = N(b, W W^T + s^2 I) exactly.

  W has orthogonal columns, so the exact posterior is diagonal and a diagonal Gaussian
  proposal a little wider than it gives low-variance importance weights.
  """

  def __init__(self, seed=0):
    rng = np.random.default_rng(seed)
    orthonormal, _ = np.linalg.qr(rng.normal(size=(6, 3)))
    self.w = orthonormal * np.array([2.0, 1.0, 0.5])
    self.b = rng.normal(size=6)
    self.s = 0.7
    self.x = rng.normal(size=6) * 2.0

  def log_marginal(self):
    cov = self.w @ self.w.T + self.s ** 2 * np.eye(6)
    return stats.multivariate_normal(self.b, cov).logpdf(self.x)

  def log_likelihood_fn(self):
    w, b, s, x = (jnp.asarray(a, jnp.float32) for a in (self.w, self.b, self.s, self.x))

    def fn(z):   # [n, B, 3] -> [n, B]
      mean = z @ w.T + b
      return jnp.sum(-0.5 * ((x - mean) / s) ** 2 - jnp.log(s) - 0.5 * np.log(2 * np.pi),
                     axis=-1)
    return fn

  def proposal(self, std_factor=1.2, mean_shift=0.0):
    """The exact posterior's mean and (inflated) marginal std: a diagonal proposal."""
    precision = self.w.T @ self.w / self.s ** 2 + np.eye(3)
    cov = np.linalg.inv(precision)
    mean = cov @ self.w.T @ (self.x - self.b) / self.s ** 2 + mean_shift
    return mean, np.log(np.sqrt(np.diag(cov)) * std_factor)


def _batch(mean, log_std, batch):
  return (jnp.tile(jnp.asarray(mean, jnp.float32)[None], (batch, 1)),
          jnp.tile(jnp.asarray(log_std, jnp.float32)[None], (batch, 1)))


def test_iwae_with_one_sample_is_the_elbo_of_the_same_noise():
  model = PPCA()
  mean, log_std = _batch(*model.proposal(), batch=5)
  rng = jax.random.PRNGKey(3)
  out = iwae.importance_weighted_bounds(model.log_likelihood_fn(), mean, log_std, rng,
                                        num_samples=1, chunk_size=1)
  # The single sample the function draws: chunk 0's noise.
  eps = np.asarray(jax.random.normal(jax.random.fold_in(rng, 0), (1, 5, 3)))[0]
  z = np.asarray(mean) + np.exp(np.asarray(log_std)) * eps
  # ELBO of that sample with scipy's densities: log p(x|z) + log p(z) - log q(z|x).
  log_lik = stats.norm.logpdf(model.x, z @ model.w.T + model.b, model.s).sum(-1)
  elbo = (log_lik + stats.norm.logpdf(z).sum(-1)
          - stats.norm.logpdf(z, np.asarray(mean), np.exp(np.asarray(log_std))).sum(-1))
  np.testing.assert_allclose(out["iwae"], elbo, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(out["elbo_mc"], elbo, rtol=1e-5, atol=1e-4)
  std = np.exp(np.asarray(log_std, np.float64))
  kl = np.sum(0.5 * (np.asarray(mean, np.float64)**2 + std**2 - 1) - np.log(std), -1)
  np.testing.assert_allclose(out["elbo"], log_lik - kl, rtol=1e-5, atol=1e-4)


def test_iwae_is_non_decreasing_in_k_on_average_and_below_log_p():
  model = PPCA()
  # A poor proposal (shifted, too narrow) so that the bounds are far apart.
  mean, log_std = _batch(*model.proposal(std_factor=0.7, mean_shift=0.3), batch=400)
  log_p = model.log_marginal()
  means, errors = [], []
  for i, k in enumerate((1, 4, 16, 64)):
    out = iwae.importance_weighted_bounds(model.log_likelihood_fn(), mean, log_std,
                                          jax.random.PRNGKey(i), num_samples=k,
                                          chunk_size=16)
    values = np.asarray(out["iwae"], np.float64)   # 400 independent draws of L_k
    # Jensen, draw by draw: mean_i log w_i <= log mean_i w_i.
    assert np.all(np.asarray(out["elbo_mc"]) <= values + 1e-4)
    means.append(values.mean())
    errors.append(values.std() / np.sqrt(len(values)))
  for a, b, ea, eb in zip(means, means[1:], errors, errors[1:]):
    assert b > a - 2 * np.hypot(ea, eb), means
  assert means[-1] - means[0] > 4 * np.hypot(errors[0], errors[-1]), means
  assert means[-1] < log_p + 2 * errors[-1], (means, log_p)


def test_iwae_converges_to_the_exact_marginal_likelihood_of_ppca():
  model = PPCA()
  mean, log_std = _batch(*model.proposal(), batch=4)
  out = iwae.importance_weighted_bounds(model.log_likelihood_fn(), mean, log_std,
                                        jax.random.PRNGKey(0), num_samples=5000,
                                        chunk_size=500)
  log_p = model.log_marginal()
  np.testing.assert_allclose(out["iwae"], log_p, atol=0.01)
  assert np.all(np.asarray(out["elbo"]) < log_p - 0.05)   # the ELBO is a looser bound


def test_streaming_logsumexp_equals_scipy_and_survives_huge_magnitudes():
  rng = np.random.default_rng(0)
  values = rng.normal(scale=300.0, size=(12, 5)) - 2000.0
  values[:, 0] = -np.inf           # a column with no finite weight at all
  values[3:, 1] = -np.inf
  running_max = jnp.full((5,), -jnp.inf)
  running_sum = jnp.zeros((5,))
  for chunk in np.split(values, 4):
    running_max, running_sum = iwae._merge_logsumexp(running_max, running_sum,
                                                     jnp.asarray(chunk, jnp.float32))
  got = np.asarray(running_max + jnp.log(running_sum))
  want = special.logsumexp(values, axis=0)
  np.testing.assert_allclose(got[1:], want[1:], rtol=1e-6)
  assert got[0] == -np.inf


def test_chunking_does_not_change_a_bound_shifted_far_from_zero():
  """Log-likelihoods of -1e4 nats (large images) do not underflow the average."""
  model = PPCA()
  mean, log_std = _batch(*model.proposal(), batch=3)
  base = model.log_likelihood_fn()
  a = iwae.importance_weighted_bounds(base, mean, log_std, jax.random.PRNGKey(1),
                                      num_samples=40, chunk_size=8)
  b = iwae.importance_weighted_bounds(lambda z: base(z) - 1e4, mean, log_std,
                                      jax.random.PRNGKey(1), num_samples=40, chunk_size=8)
  np.testing.assert_allclose(np.asarray(b["iwae"]) + 1e4, a["iwae"], atol=2e-3)


def test_bad_sample_counts_are_refused():
  with pytest.raises(ValueError, match="multiple of config.eval.iwae_chunk"):
    iwae.check_num_samples(100, 30)
  with pytest.raises(ValueError, match="iwae_samples must be >= 1"):
    iwae.check_num_samples(0, 10)
  assert iwae.check_num_samples(5, 100) == 5
