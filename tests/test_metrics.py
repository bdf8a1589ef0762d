"""FID, IS, KID and precision/recall against closed forms and brute-force sums, and
(with the test extras installed) against torch-fidelity's implementations."""
import importlib
import importlib.machinery
import importlib.util
import sys
import types

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.special
import scipy.stats

from evaluation import metrics


def _random_spd(dim: int, rng: np.random.Generator) -> np.ndarray:
  a = rng.normal(size=(dim, dim))
  return a @ a.T / dim + 0.1 * np.eye(dim)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
  """Symmetric PSD square root by eigendecomposition (independent of sqrtm)."""
  values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
  return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def _closed_form_fid(mu1, s1, mu2, s2) -> float:
  """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), all in float64."""
  root1 = _sqrt_psd(s1)
  cross = _sqrt_psd(root1 @ s2 @ root1)
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
               - 2 * np.trace(cross))


# ----------------------------------------------------------------------------------
# FID.


def test_fid_of_stats_with_itself_is_zero():
  rng = np.random.default_rng(0)
  stats = metrics.feature_statistics(rng.normal(size=(500, 32)) * 3 + 1)
  assert abs(metrics.frechet_distance(stats, stats)) < 1e-9 * np.trace(stats.sigma)


def test_fid_matches_closed_form_for_known_gaussians():
  rng = np.random.default_rng(1)
  dim = 16
  mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
  s1, s2 = _random_spd(dim, rng), _random_spd(dim, rng)
  expected = _closed_form_fid(mu1, s1, mu2, s2)
  actual = metrics.frechet_distance((mu1, s1), (mu2, s2))
  np.testing.assert_allclose(actual, expected, rtol=1e-9)


def test_fid_of_diagonal_gaussians_is_sum_of_squared_root_differences():
  """Commuting covariances: Tr term = sum (sqrt(a_i) - sqrt(b_i))^2."""
  a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
  mu1, mu2 = np.array([0.0, 0.0, 0.0]), np.array([1.0, 2.0, 2.0])
  expected = 9.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0.0
  actual = metrics.frechet_distance((mu1, np.diag(a)), (mu2, np.diag(b)))
  np.testing.assert_allclose(actual, expected, rtol=1e-12)


def test_fid_is_symmetric():
  rng = np.random.default_rng(2)
  stats_a = metrics.feature_statistics(rng.normal(size=(300, 24)))
  stats_b = metrics.feature_statistics(rng.standard_t(3, size=(300, 24)) + 0.5)
  np.testing.assert_allclose(metrics.frechet_distance(stats_a, stats_b),
                             metrics.frechet_distance(stats_b, stats_a), rtol=1e-9)


def test_fid_with_fewer_samples_than_dimensions_is_finite_and_close():
  """Rank-deficient covariances (N < D, the singular-product path): no NaN."""
  rng = np.random.default_rng(3)
  stats_a = metrics.feature_statistics(rng.normal(size=(20, 64)))
  stats_b = metrics.feature_statistics(rng.normal(size=(30, 64)) + 0.2)
  actual = metrics.frechet_distance(stats_a, stats_b)
  assert np.isfinite(actual)
  expected = _closed_form_fid(*stats_a, *stats_b)
  np.testing.assert_allclose(actual, expected, rtol=1e-6)


def test_fid_of_singular_covariances_uses_the_offset():
  """Zero covariances: the product is singular, so eps I is added to both.

  Then Tr(S_a + S_b - 2 ((S_a + eps I)(S_b + eps I))^1/2) = -2 D eps exactly.
  """
  zeros = np.zeros((4, 4))
  actual = metrics.frechet_distance((np.zeros(4), zeros), (np.ones(4), zeros))
  assert np.isfinite(actual)
  np.testing.assert_allclose(actual, 4.0 - 2 * 4 * metrics.FID_EPS, rtol=0,
                             atol=1e-12)


def test_fid_rejects_mismatched_stats():
  with pytest.raises(ValueError, match="different dimensions"):
    metrics.frechet_distance((np.zeros(3), np.eye(3)), (np.zeros(4), np.eye(4)))
  with pytest.raises(ValueError, match="sigma"):
    metrics.frechet_distance((np.zeros(3), np.eye(4)), (np.zeros(3), np.eye(3)))


def test_fid_takes_any_object_with_mu_and_sigma():
  # As reference_stats.ReferenceStats, which metrics.py does not import (a cycle).
  rng = np.random.default_rng(3)
  mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
  s1, s2 = _random_spd(5, rng), _random_spd(5, rng)
  expected = metrics.frechet_distance((mu1, s1), (mu2, s2))
  with_attributes = types.SimpleNamespace(mu=mu2.astype(np.float32), sigma=s2,
                                          features=None, meta={})
  actual = metrics.frechet_distance(metrics.FeatureStats(mu1, s1), with_attributes)
  assert actual == pytest.approx(expected, rel=1e-6)
  assert metrics.frechet_distance(with_attributes, (mu1, s1)) == pytest.approx(
      expected, rel=1e-6)
  with pytest.raises(ValueError, match="sigma"):
    metrics.frechet_distance(types.SimpleNamespace(mu=mu1, sigma=np.eye(4)), (mu2, s2))


def test_feature_statistics_are_float64_mean_and_unbiased_covariance():
  rng = np.random.default_rng(4)
  features = rng.normal(size=(7, 3)).astype(np.float32)
  stats = metrics.feature_statistics(features)
  x = features.astype(np.float64)
  mean = sum(x) / len(x)
  cov = sum(np.outer(row - mean, row - mean) for row in x) / (len(x) - 1)
  assert stats.mu.dtype == np.float64 and stats.sigma.dtype == np.float64
  np.testing.assert_allclose(stats.mu, mean, rtol=1e-12)
  np.testing.assert_allclose(stats.sigma, cov, rtol=1e-12)


def test_stats_file_round_trip_and_pytorch_fid_format(tmp_path):
  rng = np.random.default_rng(5)
  stats = metrics.feature_statistics(rng.normal(size=(50, 8)))
  path = tmp_path / "stats.npz"
  metrics.save_stats(path, stats)
  with np.load(path) as data:
    assert sorted(data.files) == ["mu", "sigma"]
  loaded = metrics.load_stats(path)
  np.testing.assert_array_equal(loaded.mu, stats.mu)
  np.testing.assert_array_equal(loaded.sigma, stats.sigma)
  # As pytorch-fid and TTUR write them (float32 mean from np.mean of float32).
  foreign = tmp_path / "foreign.npz"
  np.savez_compressed(foreign, mu=stats.mu.astype(np.float32), sigma=stats.sigma)
  assert metrics.load_stats(foreign).mu.dtype == np.float64


def test_load_stats_explains_wrong_files(tmp_path):
  samples = tmp_path / "samples.npz"
  np.savez(samples, np.zeros((2, 8, 8, 3), np.uint8))
  with pytest.raises(ValueError, match="arr_0"):
    metrics.load_stats(samples)
  with pytest.raises(FileNotFoundError):
    metrics.load_stats(tmp_path / "missing.npz")


# ----------------------------------------------------------------------------------
# Inception Score.


def test_inception_score_of_uniform_logits_is_one():
  mean, std = metrics.inception_score(np.zeros((100, 1008)))
  np.testing.assert_allclose([mean, std], [1.0, 0.0], atol=1e-12)


@pytest.mark.parametrize("num_classes", [1, 7, 50])
def test_inception_score_of_distinct_one_hot_classes_is_their_number(num_classes):
  """Each of 10 splits holds num_classes confident, distinct predictions."""
  labels = np.tile(np.arange(num_classes), 10)
  logits = np.full((len(labels), 1008), -1e4)
  logits[np.arange(len(labels)), labels] = 0.0
  mean, std = metrics.inception_score(logits, num_splits=10)
  np.testing.assert_allclose([mean, std], [num_classes, 0.0], atol=1e-9)


def test_inception_score_equals_entropy_difference():
  """IS = exp(H(mean p) - mean H(p)) per split, via scipy's entropy."""
  rng = np.random.default_rng(6)
  logits = rng.normal(size=(60, 20)) * 2
  probs = scipy.special.softmax(logits, axis=1)
  scores = [np.exp(scipy.stats.entropy(part.mean(axis=0))
                   - np.mean([scipy.stats.entropy(p) for p in part]))
            for part in np.split(probs, 3)]
  mean, std = metrics.inception_score(logits, num_splits=3)
  np.testing.assert_allclose([mean, std], [np.mean(scores), np.std(scores)],
                             rtol=1e-10)


def test_inception_score_rejects_too_many_splits():
  with pytest.raises(ValueError, match="num_splits"):
    metrics.inception_score(np.zeros((5, 10)), num_splits=10)


# ----------------------------------------------------------------------------------
# KID.


def _brute_force_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
  def k(a, b):
    return (sum(ai * bi for ai, bi in zip(a, b)) / len(a) + 1.0) ** 3
  m, n = len(x), len(y)
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
  yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j)
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n))
  return xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2 * xy / (m * n)


def test_kid_matches_brute_force_double_loop():
  """One subset holding every sample (a permutation) is the plain MMD^2_u."""
  rng = np.random.default_rng(7)
  x, y = rng.normal(size=(6, 4)), rng.normal(size=(6, 4)) + 0.5
  mean, std = metrics.kernel_inception_distance(x, y, num_subsets=1, subset_size=6)
  np.testing.assert_allclose(mean, _brute_force_mmd2_unbiased(x, y), rtol=1e-12)
  assert std == 0.0
  np.testing.assert_allclose(
      metrics.mmd2_unbiased(metrics.polynomial_kernel(x[:4], x[:4]),
                            metrics.polynomial_kernel(y, y),
                            metrics.polynomial_kernel(x[:4], y)),
      _brute_force_mmd2_unbiased(x[:4], y), rtol=1e-12)


def test_kid_is_unbiased_for_one_distribution():
  """Over independent draws from one distribution the mean MMD^2_u is 0 within error,
  while the biased V-statistic (diagonals kept) is clearly positive."""
  rng = np.random.default_rng(8)
  unbiased, biased = [], []
  for _ in range(400):
    x, y = rng.normal(size=(2, 20, 8))
    k_xx, k_yy = metrics.polynomial_kernel(x, x), metrics.polynomial_kernel(y, y)
    k_xy = metrics.polynomial_kernel(x, y)
    unbiased.append(metrics.mmd2_unbiased(k_xx, k_yy, k_xy))
    biased.append(k_xx.mean() + k_yy.mean() - 2 * k_xy.mean())
  standard_error = np.std(unbiased) / np.sqrt(len(unbiased))
  assert abs(np.mean(unbiased)) < 4 * standard_error
  assert np.mean(biased) > 10 * standard_error


def test_kid_separates_different_distributions_and_uses_subsets():
  rng = np.random.default_rng(9)
  x = rng.normal(size=(300, 16))
  same = metrics.kernel_inception_distance(x, rng.normal(size=(300, 16)),
                                           num_subsets=20, subset_size=100)
  shifted = metrics.kernel_inception_distance(x, rng.normal(size=(300, 16)) + 0.5,
                                              num_subsets=20, subset_size=100)
  assert abs(same[0]) < 3 * same[1]
  assert shifted[0] > 5 * shifted[1] > 0


def test_kid_rejects_sets_smaller_than_the_subset():
  with pytest.raises(ValueError, match="subset"):
    metrics.kernel_inception_distance(np.zeros((50, 4)), np.zeros((2000, 4)))


# ----------------------------------------------------------------------------------
# Precision and recall.


def _brute_force_precision_recall(real, generated, k):
  """The paper's definition with scipy distances and a full sort."""
  def coverage(centres, queries):
    radii = np.sort(scipy.spatial.distance.cdist(centres, centres), axis=1)[:, k]
    cross = scipy.spatial.distance.cdist(queries, centres)
    return np.mean([any(cross[i, j] <= radii[j] for j in range(len(centres)))
                    for i in range(len(queries))])
  return coverage(real, generated), coverage(generated, real)


def test_precision_recall_of_a_set_with_itself_are_one():
  features = np.random.default_rng(10).normal(size=(200, 32))
  assert metrics.precision_recall(features, features) == (1.0, 1.0)


def test_precision_recall_of_far_apart_sets_are_zero():
  rng = np.random.default_rng(11)
  real = rng.normal(size=(100, 8))
  assert metrics.precision_recall(real, rng.normal(size=(80, 8)) + 100.0) == (0.0, 0.0)


def test_precision_recall_match_brute_force_in_batches():
  """Partly overlapping sets; batches of 16 with a padded last batch."""
  rng = np.random.default_rng(12)
  real = rng.normal(size=(70, 5))
  generated = rng.normal(size=(50, 5)) * 0.7 + 0.8
  expected = _brute_force_precision_recall(real, generated, k=3)
  assert 0.0 < expected[0] < 1.0 and 0.0 < expected[1] < 1.0
  np.testing.assert_allclose(
      metrics.precision_recall(real, generated, k=3, batch_size=16), expected)
  np.testing.assert_allclose(
      metrics.precision_recall(real, generated, k=3, batch_size=1000), expected)


def test_mode_dropping_lowers_recall_not_precision():
  """Real data has two far clusters; generated covers one: P ~ 1, R ~ 1/2."""
  rng = np.random.default_rng(13)
  real = np.concatenate([rng.normal(size=(200, 4)), rng.normal(size=(200, 4)) + 50])
  generated = rng.normal(size=(200, 4))
  precision, recall = metrics.precision_recall(real, generated)
  assert precision > 0.9
  assert 0.4 < recall < 0.52


def test_precision_recall_reject_bad_arguments():
  with pytest.raises(ValueError, match="neighbours"):
    metrics.precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3)
  with pytest.raises(ValueError, match="dimensions"):
    metrics.precision_recall(np.zeros((10, 2)), np.zeros((10, 3)))


# ----------------------------------------------------------------------------------
# All four against torch-fidelity (test extras: pip install --no-deps -r
# requirements-test.txt).


def _import_torch_fidelity_metrics(monkeypatch):
  """torch_fidelity.metric_{fid,isc,kid,prc}, without torchvision.

  The package's `__init__` and its `utils` module import torchvision, which does not
  import beside the CPU torch build; the metric functions used here need neither,
  so a bare package and an empty `utils` stand in for them.
  """
  pytest.importorskip("torch", reason="test extras: pip install --no-deps -r "
                      "requirements-test.txt")
  try:
    spec = importlib.util.find_spec("torch_fidelity")
  except ImportError:
    spec = None
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("torch-fidelity is not installed (pip install --no-deps -r "
                "requirements-test.txt)")
  package = types.ModuleType("torch_fidelity")
  package.__spec__ = importlib.machinery.ModuleSpec(
      "torch_fidelity", None, is_package=True)
  package.__spec__.submodule_search_locations = list(spec.submodule_search_locations)
  package.__path__ = list(spec.submodule_search_locations)
  utils = types.ModuleType("torch_fidelity.utils")
  for name in ("get_cacheable_input_name", "cache_lookup_one_recompute_on_miss",
               "extract_featuresdict_from_input_id_cached", "create_feature_extractor",
               "resolve_feature_extractor", "resolve_feature_layer_for_metric"):
    setattr(utils, name, None)
  monkeypatch.setitem(sys.modules, "torch_fidelity", package)
  monkeypatch.setitem(sys.modules, "torch_fidelity.utils", utils)
  for name in ("metric_fid", "metric_isc", "metric_kid", "metric_prc"):
    monkeypatch.delitem(sys.modules, f"torch_fidelity.{name}", raising=False)
  return [importlib.import_module(f"torch_fidelity.{name}")
          for name in ("metric_fid", "metric_isc", "metric_kid", "metric_prc")]


def test_metrics_match_torch_fidelity(monkeypatch):
  fid, isc, kid, prc = _import_torch_fidelity_metrics(monkeypatch)
  import torch  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(14)
  real = rng.normal(size=(1100, 32)).astype(np.float32)
  generated = (rng.normal(size=(1050, 32)) * 1.1 + 0.05).astype(np.float32)
  logits = (rng.normal(size=(200, 1008)) * 3).astype(np.float32)

  expected_fid = fid.fid_statistics_to_metric(
      fid.fid_features_to_statistics(torch.from_numpy(real)),
      fid.fid_features_to_statistics(torch.from_numpy(generated)), False)
  actual_fid = metrics.frechet_distance(metrics.feature_statistics(real),
                                        metrics.feature_statistics(generated))
  np.testing.assert_allclose(actual_fid, expected_fid[fid.KEY_METRIC_FID], rtol=1e-6)

  expected_is = isc.isc_features_to_metric(torch.from_numpy(logits), splits=10,
                                           shuffle=False)
  np.testing.assert_allclose(metrics.inception_score(logits),
                             [expected_is[isc.KEY_METRIC_ISC_MEAN],
                              expected_is[isc.KEY_METRIC_ISC_STD]], rtol=1e-9)

  # torch-fidelity's kernel is float32 for float32 features; ours is float64.
  expected_kid = kid.kid_features_to_metric(
      torch.from_numpy(real), torch.from_numpy(generated), kid_subsets=5,
      kid_subset_size=1000, rng_seed=metrics.KID_SEED, verbose=False,
      kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
      kid_kernel_poly_coef0=1)
  np.testing.assert_allclose(
      metrics.kernel_inception_distance(real, generated, num_subsets=5),
      [expected_kid[kid.KEY_METRIC_KID_MEAN], expected_kid[kid.KEY_METRIC_KID_STD]],
      rtol=1e-4)

  # torch-fidelity's convention: input 1 is generated, input 2 is real.
  expected_prc = prc.prc_features_to_metric(
      torch.from_numpy(generated[:300]), torch.from_numpy(real[:400]),
      prc_neighborhood=3, prc_batch_size=10000, save_cpu_ram=False, verbose=False)
  np.testing.assert_allclose(
      metrics.precision_recall(real[:400], generated[:300], batch_size=128),
      [expected_prc[prc.KEY_METRIC_PRECISION], expected_prc[prc.KEY_METRIC_RECALL]],
      rtol=1e-6)
