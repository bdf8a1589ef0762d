"""Reference statistics of a dataset split: the .npz cache and its file format."""
import os

import numpy as np
import pytest

from evaluation import metrics as metrics_lib
from evaluation import reference_stats as reference_lib
from tests.test_sample_metrics import classifier_metrics


def test_reference_statistics_are_cached_in_pytorch_fid_format(digits, digits_test,
                                                               tmp_path, monkeypatch):
  images = digits_test[0][:50]
  first = classifier_metrics(images, tmp_path, metrics=["classifier_fd"])
  path = first.protocol["reference"]["classifier"]["stats_file"]
  assert os.path.dirname(path) == str(tmp_path / "stats")
  mu, sigma = metrics_lib.load_stats(path)           # keys mu, sigma
  assert mu.shape == (digits.feature_dim,) and sigma.shape == (digits.feature_dim,) * 2

  def must_not_recompute(*args, **kwargs):
    raise AssertionError("the cached statistics should have been used")

  monkeypatch.setattr(reference_lib, "compute_reference_stats", must_not_recompute)
  second = classifier_metrics(images, tmp_path, metrics=["classifier_fd"])
  assert second.values == first.values


def test_reference_stats_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  stats = reference_lib.ReferenceStats(
      rng.normal(size=4), np.eye(4), rng.normal(size=(6, 4)).astype(np.float32),
      np.array([0.5, 0.5]), {"feature_net": "x", "dataset": "digits"})
  stats.save(tmp_path / "s.npz")
  loaded = reference_lib.ReferenceStats.load(tmp_path / "s.npz")
  np.testing.assert_array_equal(loaded.mu, stats.mu)
  np.testing.assert_array_equal(loaded.sigma, stats.sigma)
  np.testing.assert_array_equal(loaded.features, stats.features)
  np.testing.assert_array_equal(loaded.class_histogram, stats.class_histogram)
  assert loaded.meta == stats.meta
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp left


def test_frechet_distance_takes_reference_stats_as_the_cache_returns_them(tmp_path):
  rng = np.random.default_rng(1)
  a = metrics_lib.feature_statistics(rng.normal(size=(40, 3)))
  b = metrics_lib.feature_statistics(rng.normal(1.0, 2.0, size=(40, 3)))
  reference_lib.ReferenceStats(b.mu, b.sigma, meta={"feature_net": "x"}).save(
      tmp_path / "b.npz")
  loaded = reference_lib.ReferenceStats.load(tmp_path / "b.npz")
  expected = metrics_lib.frechet_distance((a.mu, a.sigma), (b.mu, b.sigma))
  assert expected > 1.0
  assert metrics_lib.frechet_distance(a, loaded) == pytest.approx(expected, rel=1e-12)
  assert metrics_lib.frechet_distance(loaded, a) == pytest.approx(expected, rel=1e-9)
