"""Sample-quality metrics on Inception features: FID, IS, KID, precision/recall.

Each is computed as the reference implementation that papers report computes it:

- FID (Heusel et al. 2017): Fréchet distance between Gaussians fitted to the 2048-d
  pool3 features, statistics in float64, the matrix square root by
  `scipy.linalg.sqrtm` with pytorch-fid's handling of singular products and of
  round-off imaginary parts. Statistics files are `.npz` with keys `mu` and `sigma`,
  the format of pytorch-fid and of TTUR's published stats.
- IS (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))) over 10 consecutive splits,
  softmax over all 1008 outputs of `logits_unbiased` (pool3 @ W without the bias), as
  the original Inception Score code and torch-fidelity do.
- KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel
  k(x, y) = (x.y / d + 1)^3, averaged over 100 random subsets of 1000 from each set,
  with torch-fidelity's draws (same seed, same features -> same number).
- Improved precision and recall (Kynkäänniemi et al. 2019): k = 3 nearest-neighbour
  balls around each sample, distances computed in batches on the device. The paper
  used VGG-16 features; here the features are whatever is passed in (Inception pool3
  by default, as torch-fidelity), so compare only with numbers from the same features.

All functions take numpy feature arrays [N, D] (e.g. `inception.extract_features`).
"""
from __future__ import annotations

import os
import warnings
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.special

# pytorch-fid's offset added to both covariances when their product is singular.
FID_EPS = 1e-6
IS_NUM_SPLITS = 10
KID_NUM_SUBSETS = 100
KID_SUBSET_SIZE = 1000
# torch-fidelity's default seed: the same subsets, hence the same KID, as it reports.
KID_SEED = 2020
PR_NEIGHBOURS = 3

_HIGHEST = jax.lax.Precision.HIGHEST


def _as_features(features: np.ndarray, name: str) -> np.ndarray:
  features = np.asarray(features)
  if features.ndim != 2 or len(features) == 0:
    raise ValueError(f"{name} must be a non-empty [N, D] array of features, got "
                     f"shape {features.shape}.")
  return features


# ----------------------------------------------------------------------------------
# FID.


class FeatureStats(NamedTuple):
  """Mean [D] and covariance [D, D] of features, float64 (a stats file's content)."""
  mu: np.ndarray
  sigma: np.ndarray


class HasMuSigma(Protocol):
  """Anything with `.mu` and `.sigma`, e.g. reference_stats.ReferenceStats.

  Matched by attribute, so that this module needs no import of the stats cache
  (which imports this one).
  """
  mu: np.ndarray
  sigma: np.ndarray


# What the FID functions take: a (mu, sigma) pair or an object with .mu and .sigma.
StatsLike = FeatureStats | tuple[np.ndarray, np.ndarray] | HasMuSigma


def feature_statistics(features: np.ndarray) -> FeatureStats:
  """Mean and unbiased covariance (ddof = 1, as np.cov in pytorch-fid and TTUR)."""
  features = _as_features(features, "features").astype(np.float64)
  if len(features) < 2:
    raise ValueError("A covariance needs at least 2 samples; got 1.")
  return FeatureStats(features.mean(axis=0), np.cov(features, rowvar=False))


def _check_stats(stats: StatsLike, name: str) -> FeatureStats:
  if hasattr(stats, "mu") and hasattr(stats, "sigma"):
    mu, sigma = stats.mu, stats.sigma
  else:
    mu, sigma = stats[0], stats[1]
  mu = np.atleast_1d(np.asarray(mu, np.float64))
  sigma = np.atleast_2d(np.asarray(sigma, np.float64))
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(f"{name}: mu must be [D] and sigma [D, D], got {mu.shape} and "
                     f"{sigma.shape}.")
  return FeatureStats(mu, sigma)


def _sqrtm(matrix: np.ndarray) -> tuple[np.ndarray, bool]:
  """scipy's sqrtm, and whether the matrix was found singular.

  Older scipy returned non-finite values for a singular matrix (what pytorch-fid
  tests for); scipy >= 1.16 returns a result and warns instead. Both count.
  """
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", scipy.linalg.LinAlgWarning)
    root = scipy.linalg.sqrtm(matrix)
  singular = any(issubclass(w.category, scipy.linalg.LinAlgWarning) for w in caught)
  return root, singular or not np.isfinite(root).all()


def frechet_distance(stats_a: StatsLike, stats_b: StatsLike,
                     eps: float = FID_EPS) -> float:
  """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})  (Heusel et al. 2017).

  Each argument is a (mu, sigma) pair (e.g. FeatureStats) or any object with `.mu`
  and `.sigma` attributes (e.g. the ReferenceStats of evaluation/reference_stats.py,
  as its cache returns them).

  Follows pytorch-fid's `calculate_frechet_distance`: if the product is singular
  (e.g. fewer samples than dimensions), eps * I is added to both covariances;
  imaginary parts from round-off are dropped, and a large one (> 1e-3 on the
  diagonal) is an error.
  """
  mu_a, sigma_a = _check_stats(stats_a, "stats_a")
  mu_b, sigma_b = _check_stats(stats_b, "stats_b")
  if mu_a.shape != mu_b.shape:
    raise ValueError(f"The two statistics have different dimensions: {mu_a.shape} vs "
                     f"{mu_b.shape}; compute both from the same feature layer.")
  diff = mu_a - mu_b
  covmean, singular = _sqrtm(sigma_a @ sigma_b)
  if singular:
    offset = np.eye(sigma_a.shape[0]) * eps
    covmean, _ = _sqrtm((sigma_a + offset) @ (sigma_b + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError("The square root of the covariance product has an imaginary "
                       f"component of {np.max(np.abs(covmean.imag)):.3g}: the "
                       "statistics are not valid covariances.")
    covmean = covmean.real
  return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b)
               - 2.0 * np.trace(covmean))


def save_stats(path: str | os.PathLike, stats: FeatureStats) -> None:
  """Writes a pytorch-fid / TTUR compatible `.npz` with keys `mu` and `sigma`.

  numpy appends `.npz` to a path without it.
  """
  stats = _check_stats(stats, str(path))
  np.savez_compressed(path, mu=stats.mu, sigma=stats.sigma)


def load_stats(path: str | os.PathLike) -> FeatureStats:
  """Reads a stats `.npz` (keys `mu`, `sigma`), as float64."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No statistics file at {path}.")
  with np.load(path) as data:
    if "mu" not in data.files or "sigma" not in data.files:
      raise ValueError(
          f"{path} holds {sorted(data.files)}, not the keys 'mu' and 'sigma' of a "
          "statistics file (a samples .npz keeps images under 'arr_0': compute its "
          "features and statistics first).")
    return _check_stats((data["mu"], data["sigma"]), str(path))


# ----------------------------------------------------------------------------------
# Inception Score.


def inception_score(logits: np.ndarray,
                    num_splits: int = IS_NUM_SPLITS) -> tuple[float, float]:
  """(mean, std) over splits of exp(E_x KL(p(y|x) || p(y)))  (Salimans et al. 2016).

  `logits`: [N, C], the network's `logits_unbiased` ([N, 1008], all classes kept, as
  the original code). The samples are split in order into `num_splits` consecutive
  parts of N // num_splits (the original code's slicing); p(y) is each part's mean.
  """
  logits = _as_features(logits, "logits").astype(np.float64)
  if not 1 <= num_splits <= len(logits):
    raise ValueError(f"num_splits must be in [1, N = {len(logits)}], got {num_splits}.")
  log_p = scipy.special.log_softmax(logits, axis=1)
  scores = []
  for i in range(num_splits):
    part = log_p[i * len(log_p) // num_splits:(i + 1) * len(log_p) // num_splits]
    # log p(y) = log mean_x p(y|x), in log space: finite even where p underflows.
    log_marginal = scipy.special.logsumexp(part, axis=0) - np.log(len(part))
    kl = (np.exp(part) * (part - log_marginal)).sum(axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))


# ----------------------------------------------------------------------------------
# KID.


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """k(x, y) = (x.y / d + 1)^3, the KID kernel (Binkowski et al. 2018)."""
  return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
  """Unbiased MMD^2 from kernel matrices (Gretton et al. 2012, MMD^2_u).

  sum_{i != j} k(x_i, x_j) / (m (m-1)) + sum_{i != j} k(y_i, y_j) / (n (n-1))
  - 2 sum_{i, j} k(x_i, y_j) / (m n).
  """
  m, n = len(k_xx), len(k_yy)
  if m < 2 or n < 2:
    raise ValueError("The unbiased MMD needs at least 2 samples in each set.")
  sum_xx = k_xx.sum() - np.trace(k_xx)
  sum_yy = k_yy.sum() - np.trace(k_yy)
  return float(sum_xx / (m * (m - 1)) + sum_yy / (n * (n - 1))
               - 2.0 * k_xy.sum() / (m * n))


def kernel_inception_distance(features_a: np.ndarray, features_b: np.ndarray,
                              num_subsets: int = KID_NUM_SUBSETS,
                              subset_size: int = KID_SUBSET_SIZE,
                              seed: int = KID_SEED) -> tuple[float, float]:
  """(mean, std) of the unbiased polynomial-kernel MMD^2 over random subsets.

  Each subset draws `subset_size` of each set without replacement (torch-fidelity's
  order of draws from `np.random.RandomState(seed)`). Values slightly below 0 are
  valid: the estimator is unbiased.
  """
  features_a = _as_features(features_a, "features_a").astype(np.float64)
  features_b = _as_features(features_b, "features_b").astype(np.float64)
  if features_a.shape[1] != features_b.shape[1]:
    raise ValueError(f"Feature dimensions differ: {features_a.shape[1]} vs "
                     f"{features_b.shape[1]}.")
  if min(len(features_a), len(features_b)) < subset_size or subset_size < 2:
    raise ValueError(
        f"KID subsets of {subset_size} need at least that many samples in each set "
        f"(have {len(features_a)} and {len(features_b)}): pass more samples or a "
        f"subset_size >= 2 no larger than the smaller set (the standard is "
        f"{KID_SUBSET_SIZE}).")
  if num_subsets < 1:
    raise ValueError(f"num_subsets must be >= 1, got {num_subsets}.")
  rng = np.random.RandomState(seed)
  mmds = np.zeros(num_subsets)
  for i in range(num_subsets):
    a = features_a[rng.choice(len(features_a), subset_size, replace=False)]
    b = features_b[rng.choice(len(features_b), subset_size, replace=False)]
    mmds[i] = mmd2_unbiased(polynomial_kernel(a, a), polynomial_kernel(b, b),
                            polynomial_kernel(a, b))
  return float(mmds.mean()), float(mmds.std())


# ----------------------------------------------------------------------------------
# Improved precision and recall.


def _squared_distances(queries: jax.Array, points: jax.Array) -> jax.Array:
  """||q - p||^2 for all pairs, [Q, P], at full float32 precision."""
  dots = jnp.dot(queries, points.T, precision=_HIGHEST)
  q2 = jnp.sum(queries * queries, axis=1)[:, None]
  p2 = jnp.sum(points * points, axis=1)[None, :]
  return jnp.maximum(q2 - 2.0 * dots + p2, 0.0)


@jax.jit(static_argnames="k")
def _kth_neighbour_batch(queries: jax.Array, points: jax.Array, k: int) -> jax.Array:
  # The (k+1)-th smallest distance: each query is itself in `points` at distance 0.
  neg_smallest, _ = jax.lax.top_k(-_squared_distances(queries, points), k + 1)
  return -neg_smallest[:, -1]


@jax.jit
def _in_any_ball_batch(queries: jax.Array, centres: jax.Array,
                       radii_sq: jax.Array) -> jax.Array:
  return jnp.any(_squared_distances(queries, centres) <= radii_sq[None, :], axis=1)


def _map_batches(fn, queries: np.ndarray, batch_size: int, *args) -> np.ndarray:
  """fn over fixed-size batches of `queries` (last one zero-padded: one compile)."""
  outputs = []
  for start in range(0, len(queries), batch_size):
    batch = queries[start:start + batch_size]
    count = len(batch)
    if count < batch_size and len(queries) > batch_size:
      batch = np.concatenate([batch, np.zeros((batch_size - count, batch.shape[1]),
                                              batch.dtype)])
    outputs.append(np.asarray(fn(batch, *args))[:count])
  return np.concatenate(outputs)


def _manifold_coverage(centres: np.ndarray, queries: np.ndarray, k: int,
                       batch_size: int) -> float:
  """Fraction of queries inside the union of the k-NN balls around `centres`."""
  points = jnp.asarray(centres)
  radii_sq = jnp.asarray(_map_batches(
      lambda q: _kth_neighbour_batch(q, points, k), centres, batch_size))
  inside = _map_batches(lambda q: _in_any_ball_batch(q, points, radii_sq), queries,
                        batch_size)
  return float(np.mean(inside))


def precision_recall(real_features: np.ndarray, generated_features: np.ndarray,
                     k: int = PR_NEIGHBOURS,
                     batch_size: int = 1000) -> tuple[float, float]:
  """Improved (precision, recall) of Kynkäänniemi et al. 2019.

  Precision: fraction of generated samples within the k-NN radius of some real
  sample; recall: fraction of real samples within the k-NN radius of some generated
  sample (a sample lies on its ball's boundary inclusive). Distances are float32
  on the device, `batch_size` query rows at a time (memory ~ batch_size x N floats).
  """
  real = _as_features(real_features, "real_features").astype(np.float32)
  generated = _as_features(generated_features, "generated_features").astype(np.float32)
  if real.shape[1] != generated.shape[1]:
    raise ValueError(f"Feature dimensions differ: {real.shape[1]} vs "
                     f"{generated.shape[1]}.")
  if k < 1 or k >= min(len(real), len(generated)):
    raise ValueError(f"k = {k} neighbours needs k >= 1 and more than k samples in each "
                     f"set (have {len(real)} and {len(generated)}).")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  precision = _manifold_coverage(real, generated, k, batch_size)
  recall = _manifold_coverage(generated, real, k, batch_size)
  return precision, recall
