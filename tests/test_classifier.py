"""The digits classifier: accuracy, determinism, caching, and its class statistics."""
import functools
import json
import tempfile

import numpy as np
import pytest
import scipy.stats

from evaluation import classifier as classifier_lib
from evaluation import metrics as metrics_lib

NUM_DIGIT_CLASSES = 10


@functools.lru_cache(maxsize=None)
def digits_classifier_dir() -> str:
  """A cache root holding the trained digits classifier (trained once per session).

  Other test files import this, so the whole session trains digits once.
  """
  root = tempfile.mkdtemp(prefix="classifier_cache_")
  classifier_lib.load_or_train("digits", root)
  return root


@pytest.fixture(scope="module")
def test_split():
  return classifier_lib.read_split("digits", "test")


@pytest.fixture(scope="module")
def train_split():
  return classifier_lib.read_split("digits", "train")


def test_digits_test_accuracy_is_at_least_95_percent(digits, test_split):
  images, labels = test_split
  assert len(images) == 355
  predictions = np.argmax(digits.predict_proba(images), axis=1)
  accuracy = np.mean(predictions == labels)
  assert accuracy >= 0.95
  assert digits.meta["test_accuracy"] == pytest.approx(accuracy)
  # "Well under a minute on 2 CPU cores" (the measured time is ~5 s).
  assert digits.meta["train_seconds"] < 60


def test_outputs_have_documented_shapes_and_probabilities_sum_to_one(digits,
                                                                    test_split):
  images = test_split[0][:7]
  assert digits.features(images).shape == (7, digits.feature_dim)
  probabilities = digits.predict_proba(images)
  assert probabilities.shape == (7, NUM_DIGIT_CLASSES)
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-12)
  assert digits.class_names == tuple(str(i) for i in range(10))


def _frechet(features_a, features_b):
  return metrics_lib.frechet_distance(metrics_lib.feature_statistics(features_a),
                                      metrics_lib.feature_statistics(features_b))


def test_test_set_is_much_closer_than_noise_or_one_repeated_image(digits, test_split,
                                                                   train_split):
  reference = digits.features(train_split[0])
  test_images = test_split[0]
  rng = np.random.default_rng(0)
  noise = rng.integers(0, 256, size=test_images.shape, dtype=np.uint8)
  repeated = np.repeat(test_images[:1], len(test_images), axis=0)
  fd_test = _frechet(digits.features(test_images), reference)
  fd_noise = _frechet(digits.features(noise), reference)
  fd_repeated = _frechet(digits.features(repeated), reference)
  assert fd_test < 0.05 * fd_noise
  assert fd_test < 0.05 * fd_repeated


def test_coverage_of_test_set_is_all_classes_and_of_one_class_is_one_over_c(
    digits, test_split):
  images, labels = test_split
  everything = classifier_lib.class_statistics(digits.predict_proba(images))
  assert everything["class_coverage"] == 1.0
  only_sevens = classifier_lib.class_statistics(digits.predict_proba(
      images[labels == 7]))
  assert only_sevens["class_coverage"] == pytest.approx(1 / NUM_DIGIT_CLASSES)
  # Nearly all mass on one class: KL to uniform is close to its maximum, log C.
  assert only_sevens["class_kl_uniform"] > 0.9 * np.log(NUM_DIGIT_CLASSES)


def test_class_statistics_against_hand_counts_and_scipy():
  # 100 samples over 4 classes: 60, 30, 9, 1. Threshold 1 / (2 * 4) = 12.5%.
  counts = np.array([60, 30, 9, 1])
  labels = np.repeat(np.arange(4), counts)
  probabilities = np.full((100, 4), 0.1)
  probabilities[np.arange(100), labels] = 0.7
  reference = np.array([0.4, 0.3, 0.2, 0.1])
  stats = classifier_lib.class_statistics(probabilities, reference)
  histogram = counts / 100
  assert stats["class_coverage"] == 0.5             # 60% and 30% pass 12.5%
  assert stats["classes_with_any_sample"] == 1.0    # Metz et al.'s "any sample"
  assert stats["class_kl_uniform"] == pytest.approx(
      scipy.stats.entropy(histogram, np.full(4, 0.25)))
  assert stats["class_kl_reference"] == pytest.approx(
      scipy.stats.entropy(histogram, reference))
  assert stats["classifier_confidence"] == pytest.approx(0.7)
  assert classifier_lib.class_statistics(probabilities, min_fraction=0.05)[
      "class_coverage"] == 0.75


def test_kl_is_infinite_where_reference_lacks_a_sampled_class():
  assert classifier_lib.kl_divergence([0.5, 0.5], [1.0, 0.0]) == float("inf")
  assert classifier_lib.kl_divergence([1.0, 0.0], [0.5, 0.5]) == pytest.approx(
      np.log(2))


def test_training_is_deterministic_bit_for_bit():
  config = classifier_lib.TrainingConfig(widths=(8,), num_steps=15, batch_size=32)
  first = classifier_lib.train_classifier("digits", config=config)
  second = classifier_lib.train_classifier("digits", config=config)
  flat_first = classifier_lib._flatten(first.params)
  flat_second = classifier_lib._flatten(second.params)
  assert flat_first.keys() == flat_second.keys()
  for key in flat_first:
    np.testing.assert_array_equal(flat_first[key], flat_second[key])
  assert first.weights_sha256 == second.weights_sha256
  other_seed = classifier_lib.train_classifier(
      "digits", config=classifier_lib.TrainingConfig(widths=(8,), num_steps=15,
                                                     batch_size=32, seed=1))
  assert other_seed.weights_sha256 != first.weights_sha256


def test_cache_is_reused_and_retrained_when_config_or_files_change(tmp_path,
                                                                   monkeypatch):
  config = classifier_lib.TrainingConfig(widths=(8,), num_steps=5, batch_size=32)
  trained = classifier_lib.load_or_train("digits", tmp_path, config=config)
  directory = tmp_path / "digits"
  assert json.loads((directory / "meta.json").read_text())["weights_sha256"] == (
      trained.weights_sha256)

  real_train = classifier_lib.train_classifier
  calls = []
  monkeypatch.setattr(classifier_lib, "train_classifier",
                      lambda *a, **k: calls.append(k) or real_train(*a, **k))
  cached = classifier_lib.load_or_train("digits", tmp_path, config=config)
  assert not calls and cached.weights_sha256 == trained.weights_sha256

  other = classifier_lib.TrainingConfig(widths=(8,), num_steps=6, batch_size=32)
  assert classifier_lib.load_or_train("digits", tmp_path, config=other).config == other
  assert len(calls) == 1

  # Corrupt weights (hash mismatch) are retrained, not used.
  with np.load(directory / "params.npz") as data:
    flat = {k: data[k] + 1 for k in data.files}
  np.savez(directory / "params.npz", **flat)
  with pytest.raises(ValueError, match="hash"):
    classifier_lib.load_classifier(directory)
  classifier_lib.load_or_train("digits", tmp_path, config=other)
  assert len(calls) == 2


def test_cache_dir_from_environment(monkeypatch, tmp_path):
  monkeypatch.setenv(classifier_lib.CLASSIFIER_DIR_ENV_VAR, str(tmp_path))
  assert classifier_lib.default_cache_dir() == tmp_path
  monkeypatch.delenv(classifier_lib.CLASSIFIER_DIR_ENV_VAR)
  assert classifier_lib.default_cache_dir() == (
      classifier_lib.pathlib.Path("~/.cache/genmodels/classifiers").expanduser())


def test_shapes_alias_label_and_default_architecture():
  name, classes, shape = classifier_lib.dataset_spec("shapes")
  assert (name, classes, shape) == (
      "shapes/32", ("circle", "square", "triangle", "cross"), (32, 32, 3))
  assert classifier_lib.dataset_spec("shapes/16", image_size=8)[2] == (8, 8, 3)
  assert classifier_lib.cache_key("shapes") == "shapes_32"
  assert classifier_lib.cache_key("digits", 16) == "digits_16px"
  # Stages halve the resolution down to 4x4.
  assert len(classifier_lib.default_training_config(8).widths) == 1
  assert len(classifier_lib.default_training_config(32).widths) == 3
  assert len(classifier_lib.default_training_config(64).widths) == 4


def test_bad_inputs_raise_clear_errors(digits):
  with pytest.raises(ValueError, match="uint8"):
    digits.features(np.zeros((2, 8, 8, 1), np.float32))
  with pytest.raises(ValueError, match=r"\[N, 8, 8, 1\]"):
    digits.features(np.zeros((2, 16, 16, 1), np.uint8))
  with pytest.raises(ValueError, match="Unknown dataset"):
    classifier_lib.dataset_spec("no_such_dataset_anywhere")
  with pytest.raises(ValueError, match="min_fraction"):
    classifier_lib.class_statistics(np.eye(3), min_fraction=2.0)


def test_batched_apply_pads_the_last_batch_without_changing_results(digits,
                                                                    test_split):
  images = test_split[0][:23]
  whole = digits.outputs(images, batch_size=64)
  batched = classifier_lib.apply_in_batches(
      digits.apply_fn, digits.params, images, batch_size=5,
      mesh=classifier_lib.data_mesh())
  for name in ("features", "logits"):
    assert batched[name].shape[0] == 23
    np.testing.assert_allclose(batched[name], whole[name], rtol=1e-5, atol=1e-6)
