"""The ELBO and the importance-weighted bound (Burda et al. 2016) of a Gaussian-latent model.

For a model p(x, z) = p(z) p(x|z) with p(z) = N(0, I) and a diagonal Gaussian proposal
q(z|x) = N(mean, diag(exp(log_std))^2), with log-weights log w = log p(x|z) + log p(z)
- log q(z|x) and z_1..z_k ~ q:

  ELBO      = E_q[log p(x|z)] - KL(q || p)                  (Kingma & Welling 2014, eq. 10)
  L_k       = E[log (1/k) sum_i w_i] <= log p(x)           (Burda et al. 2016, eq. 8)

L_1 is the ELBO, L_k is non-decreasing in k and tends to log p(x) (their Theorem 1).
The k samples are drawn in chunks inside a `lax.scan`, and the logsumexp over them is
accumulated as a running (max, scaled sum), so memory is one chunk whatever k is.
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp

from models import distributions

# log_likelihood_fn(z [n, B, D]) -> log p(x_b | z_{n, b}) [n, B]
LogLikelihoodFn = Callable[[jax.Array], jax.Array]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def diagonal_gaussian_log_prob(z: jax.Array, mean: jax.Array, log_std: jax.Array) -> jax.Array:
  """log N(z; mean, diag(exp(log_std))^2), summed over the last axis."""
  standardized = (z - mean) * jnp.exp(-log_std)
  return jnp.sum(-0.5 * jnp.square(standardized) - log_std - _HALF_LOG_2PI, axis=-1)


def standard_normal_log_prob(z: jax.Array) -> jax.Array:
  """log N(z; 0, I), summed over the last axis."""
  return jnp.sum(-0.5 * jnp.square(z) - _HALF_LOG_2PI, axis=-1)


def reparameterize(mean: jax.Array, log_std: jax.Array, eps: jax.Array) -> jax.Array:
  """z = mean + std * eps, eps ~ N(0, I) (the reparameterization trick, K&W sec. 2.4)."""
  return mean + jnp.exp(log_std) * eps


def log_importance_weights(log_likelihood_fn: LogLikelihoodFn, mean: jax.Array,
                           log_std: jax.Array, eps: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(log w, log p(x|z)) for z = mean + std * eps; eps [n, B, D], both outputs [n, B]."""
  z = reparameterize(mean[None], log_std[None], eps)
  log_likelihood = log_likelihood_fn(z)
  log_w = (log_likelihood + standard_normal_log_prob(z)
           - diagonal_gaussian_log_prob(z, mean[None], log_std[None]))
  return log_w, log_likelihood


def _merge_logsumexp(running_max: jax.Array, running_sum: jax.Array,
                     values: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Adds exp(values) (over axis 0) to sum * exp(max), rescaled to the new max."""
  new_max = jnp.maximum(running_max, jnp.max(values, axis=0))
  # Both maxima can be -inf (no finite weight yet); exp(-inf - -inf) would be NaN.
  safe_max = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
  old_scale = jnp.where(jnp.isfinite(running_max), jnp.exp(running_max - safe_max), 0.0)
  new_sum = running_sum * old_scale + jnp.sum(jnp.exp(values - safe_max), axis=0)
  return new_max, new_sum


def check_num_samples(num_samples: int, chunk_size: int) -> int:
  """The chunk size actually used; a ValueError for sizes that cannot be chunked."""
  if num_samples < 1:
    raise ValueError(f"config.eval.iwae_samples must be >= 1, got {num_samples}.")
  if chunk_size < 1:
    raise ValueError(f"config.eval.iwae_chunk must be >= 1, got {chunk_size}.")
  chunk = min(chunk_size, num_samples)
  if num_samples % chunk:
    raise ValueError(f"config.eval.iwae_samples={num_samples} must be a multiple of "
                     f"config.eval.iwae_chunk={chunk_size}.")
  return chunk


# sample_log_weights(rng, n) -> {'log_w': [n, B], other per-draw terms: [n, B]}
SampleLogWeightsFn = Callable[[jax.Array, int], dict[str, jax.Array]]


def chunked_log_mean_weight(sample_log_weights: SampleLogWeightsFn, rng: jax.Array, *,
                            num_samples: int, chunk_size: int) -> dict[str, jax.Array]:
  """log (1/k) sum_i w_i over k = num_samples draws, made `chunk_size` at a time.

  Chunk i calls sample_log_weights(fold_in(rng, i), chunk), so a result depends on
  (rng, num_samples, chunk_size) only. Returns [B] arrays: 'iwae' (Burda et al. eq. 8)
  and, for every key the function returns (log_w included), 'mean_<key>', the mean
  over the k draws (mean_log_w is the all-Monte-Carlo ELBO).
  """
  chunk = check_num_samples(num_samples, chunk_size)
  shapes = jax.eval_shape(lambda key: sample_log_weights(key, chunk), rng)
  batch_shape = shapes["log_w"].shape[1:]

  def body(carry, index):
    running_max, running_sum, sums = carry
    terms = sample_log_weights(jax.random.fold_in(rng, index), chunk)
    running_max, running_sum = _merge_logsumexp(running_max, running_sum, terms["log_w"])
    sums = {k: sums[k] + jnp.sum(v.astype(jnp.float32), 0) for k, v in terms.items()}
    return (running_max, running_sum, sums), None

  zeros = {k: jnp.zeros(batch_shape, jnp.float32) for k in shapes}
  init = (jnp.full(batch_shape, -jnp.inf, jnp.float32), jnp.zeros(batch_shape, jnp.float32),
          zeros)
  (running_max, running_sum, sums), _ = jax.lax.scan(
      body, init, jnp.arange(num_samples // chunk))
  out = {f"mean_{k}": v / num_samples for k, v in sums.items()}
  out["iwae"] = running_max + jnp.log(running_sum) - math.log(num_samples)
  return out


def importance_weighted_bounds(log_likelihood_fn: LogLikelihoodFn, mean: jax.Array,
                               log_std: jax.Array, rng: jax.Array, *, num_samples: int,
                               chunk_size: int) -> dict[str, jax.Array]:
  """Per-example bounds on log p(x) in nats from `num_samples` posterior samples.

  mean, log_std: [B, D]; eps ~ N(0, I) of shape [chunk, B, D] per chunk (see
  chunked_log_mean_weight). Returns [B] arrays:
    'iwae': log (1/k) sum_i w_i (Burda et al. eq. 8);
    'elbo': mean_i log p(x|z_i) - KL(q || p), the KL in closed form (lower variance);
    'elbo_mc': mean_i log w_i, the all-Monte-Carlo ELBO (equals 'iwae' when k = 1).
  """
  def sample_log_weights(key, n):
    eps = jax.random.normal(key, (n, *mean.shape), mean.dtype)
    log_w, log_lik = log_importance_weights(log_likelihood_fn, mean, log_std, eps)
    return dict(log_w=log_w, log_lik=log_lik)

  out = chunked_log_mean_weight(sample_log_weights, rng, num_samples=num_samples,
                                chunk_size=chunk_size)
  kl = jnp.sum(distributions.gaussian_kl_to_standard_normal(mean, 2.0 * log_std), axis=-1)
  return dict(iwae=out["iwae"], elbo=out["mean_log_lik"] - kl, elbo_mc=out["mean_log_w"])
