"""compute_sample_metrics: the metrics of a set of samples and their protocol."""
import functools
import os
import subprocess
import sys
import tempfile
import textwrap

import jax
import numpy as np
import pytest

from evaluation import classifier as classifier_lib
from evaluation import inception
from evaluation import metrics as metrics_lib
from evaluation import reference_stats as reference_lib
from evaluation import sample_metrics
from tests.test_classifier import digits_classifier_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.lru_cache(maxsize=None)
def random_inception_params():
  """The FID Inception's params, He-normal at random: features stay O(1), finite."""
  rng = np.random.default_rng(0)
  flat = {}
  for path, shape in inception._flatten(inception.param_shapes()):
    if path[-1] in ("kernel", "fc_kernel"):
      fan_in = int(np.prod(shape.shape[:-1]))
      value = rng.normal(size=shape.shape) * np.sqrt(2.0 / fan_in)
    elif path[-1] in ("scale", "var"):
      value = np.ones(shape.shape)
    else:
      value = np.zeros(shape.shape)
    flat[path] = value.astype(np.float32)
  return inception._unflatten(flat)


@functools.lru_cache(maxsize=None)
def random_inception_weights_file() -> str:
  """The random params as a weights .npz (the format load_params reads)."""
  path = os.path.join(tempfile.mkdtemp(prefix="inception_"), "random_inception.npz")
  inception.save_params_npz(random_inception_params(), path)
  return path


def classifier_metrics(images, tmp_path, **kwargs):
  """The digits classifier metrics of `images`, references cached under tmp_path."""
  return sample_metrics.compute_sample_metrics(
      images, reference=reference_lib.ReferenceSpec("digits"),
      cache_dir=tmp_path / "stats", classifier_dir=digits_classifier_dir(),
      log_progress=False, **kwargs)


def test_classifier_metrics_match_an_independent_computation(digits, digits_test,
                                                             tmp_path):
  images, _ = digits_test
  result = classifier_metrics(images, tmp_path)
  assert set(result.values) == {"classifier_fd", "class_coverage",
                                "classes_with_any_sample", "class_kl_uniform",
                                "class_kl_reference", "classifier_confidence"}
  # Independently: the whole train split in memory, one batch, no mesh.
  train_images, train_labels = classifier_lib.read_split("digits", "train")
  assert len(train_images) == 1442
  reference_out = digits.outputs(train_images, batch_size=2000)
  sample_out = digits.outputs(images, batch_size=2000)
  expected_fd = metrics_lib.frechet_distance(
      metrics_lib.feature_statistics(sample_out["features"]),
      metrics_lib.feature_statistics(reference_out["features"]))
  assert result.values["classifier_fd"] == pytest.approx(expected_fd, rel=1e-4)
  reference_histogram = np.bincount(np.argmax(reference_out["logits"], 1),
                                    minlength=10) / len(train_images)
  expected = classifier_lib.class_statistics(
      classifier_lib.softmax(sample_out["logits"]), reference_histogram)
  for key, value in expected.items():
    assert result.values[key] == pytest.approx(value, rel=1e-6), key
  assert result.values["class_coverage"] == 1.0

  reference = result.protocol["reference"]["classifier"]
  assert reference["num_examples"] == 1442      # the masked last batch counted once
  assert (reference["dataset"], reference["split"]) == ("digits", "train")
  net = result.protocol["feature_nets"]["classifier"]
  assert net["weights_sha256"] == digits.weights_sha256
  assert result.protocol["num_samples"] == 355
  assert result.protocol["precision"] == "highest"


def test_test_set_scores_far_better_than_noise(digits_test, tmp_path):
  images, labels = digits_test
  noise = np.random.default_rng(1).integers(0, 256, images.shape, dtype=np.uint8)
  real = classifier_metrics(images, tmp_path).values
  fake = classifier_metrics(noise, tmp_path).values
  one_class = classifier_metrics(images[labels == 2], tmp_path).values
  assert real["classifier_fd"] < 0.05 * fake["classifier_fd"]
  assert one_class["class_coverage"] == pytest.approx(0.1)
  assert one_class["class_kl_reference"] > 10 * real["class_kl_reference"]


def test_defaults_are_classifier_metrics_for_embedded_datasets():
  assert sample_metrics.default_metrics("digits") == ("classifier_fd",
                                                      "class_coverage")
  assert sample_metrics.default_metrics("shapes/32") == ("classifier_fd",
                                                         "class_coverage")
  assert sample_metrics.default_metrics("cifar10") == ("fid", "is")
  assert sample_metrics.parse_metric_names("fid, IS,kid") == ("fid", "is", "kid")


def test_inception_metrics_with_random_weights_match_direct_computation(monkeypatch):
  # The Fréchet distance itself is tested in test_metrics.py; here, where its sqrtm
  # of a 2048 x 2048 product would take a minute, a spy checks what it is given.
  fd_inputs = []
  monkeypatch.setattr(sample_metrics.metrics_lib, "frechet_distance",
                      lambda a, b: fd_inputs.append((a, b)) or 123.0)
  # Few images: every one is resized to 299x299 (~6 GFLOPs each on the CPU).
  rng = np.random.default_rng(0)
  samples = rng.integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
  reference_images = rng.integers(0, 200, (5, 8, 8, 1), dtype=np.uint8)
  net = sample_metrics.inception_feature_net(params=random_inception_params())
  result = sample_metrics.compute_sample_metrics(
      samples, reference=reference_images, metrics="fid,is,kid,pr", batch_size=4,
      feature_nets={"inception": net}, log_progress=False, is_splits=2)
  # Independently: inception.extract_features (no mesh), metrics.py on the outputs.
  ours = inception.extract_features(random_inception_params(), samples, batch_size=6)
  theirs = inception.extract_features(random_inception_params(), reference_images,
                                      batch_size=6)
  assert np.all(np.isfinite(ours["pool"])) and np.std(ours["pool"]) > 0
  (sample_stats, reference_stats), = fd_inputs
  for got, features in ((sample_stats, ours["pool"]), (reference_stats, theirs["pool"])):
    np.testing.assert_allclose(got[0], features.mean(axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got[1], np.cov(features, rowvar=False), rtol=1e-3,
                               atol=1e-6)
  assert result.values["fid"] == 123.0
  expected_is = metrics_lib.inception_score(ours["logits_unbiased"], num_splits=2)
  assert result.values["is"] == pytest.approx(expected_is[0], rel=1e-4)
  expected_kid = metrics_lib.kernel_inception_distance(ours["pool"], theirs["pool"],
                                                       subset_size=5)
  assert result.values["kid"] == pytest.approx(expected_kid[0], rel=1e-3, abs=1e-6)
  assert (result.values["precision"], result.values["recall"]) == pytest.approx(
      metrics_lib.precision_recall(theirs["pool"], ours["pool"]))
  protocol = result.protocol
  assert protocol["kid_subset_size"] == 5 and protocol["is_splits"] == 2
  net_protocol = protocol["feature_nets"]["inception"]
  assert net_protocol["input_convention"] == "tf1"
  assert "299x299" in net_protocol["resize"]


def test_bad_inputs_fail_before_any_feature_is_computed(tmp_path, monkeypatch):
  spec = reference_lib.ReferenceSpec("digits")
  images = np.zeros((4, 8, 8, 1), np.uint8)
  with pytest.raises(ValueError, match="uint8"):
    sample_metrics.compute_sample_metrics(images.astype(np.float32), reference=spec)
  with pytest.raises(ValueError, match="NHWC"):
    sample_metrics.compute_sample_metrics(images[..., 0], reference=spec)
  with pytest.raises(ValueError, match="at least 2"):
    sample_metrics.compute_sample_metrics(images[:1], reference=spec)
  with pytest.raises(ValueError, match="Unknown metric"):
    sample_metrics.compute_sample_metrics(images, reference=spec, metrics="fid,mmd")
  with pytest.raises(ValueError, match="splits"):
    sample_metrics.compute_sample_metrics(images, reference=spec, metrics="is")

  def no_training(*args, **kwargs):
    raise AssertionError("must fail before training a classifier")

  monkeypatch.setattr(classifier_lib, "load_or_train", no_training)
  with pytest.raises(ValueError, match="takes \\(8, 8, 1\\)"):
    sample_metrics.compute_sample_metrics(np.zeros((4, 16, 16, 1), np.uint8),
                                          reference=spec)
  monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, str(tmp_path / "missing.pth"))
  with pytest.raises(FileNotFoundError, match="Inception-v3 weights were not found"):
    sample_metrics.compute_sample_metrics(images, reference=spec, metrics="fid")


def test_reference_statistics_of_another_net_or_without_features_are_refused(
    tmp_path):
  stats = reference_lib.ReferenceStats(
      np.zeros(3), np.eye(3), meta={"feature_net": "classifier/digits/8px",
                                    "dataset": "digits"})
  net = sample_metrics.inception_feature_net(params=random_inception_params())
  images = np.zeros((4, 8, 8, 1), np.uint8)
  with pytest.raises(ValueError, match="feature net"):
    sample_metrics.compute_sample_metrics(images, reference=stats, metrics="fid",
                                          feature_nets={"inception": net},
                                          log_progress=False)
  # A pytorch-fid file (mu, sigma only) is Inception pool3: fine for FID, not KID.
  path = tmp_path / "fid_stats.npz"
  metrics_lib.save_stats(path, metrics_lib.FeatureStats(np.zeros(2048), np.eye(2048)))
  plain = reference_lib.ReferenceStats.load(path)
  assert plain.feature_net is None and plain.features is None
  with pytest.raises(ValueError, match="KID need the reference features"):
    sample_metrics.compute_sample_metrics(images, reference=plain, metrics="kid",
                                          feature_nets={"inception": net},
                                          log_progress=False)


# ------------------------------------------------------------------ two devices
_TWO_DEVICE_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import jax
    from evaluation import classifier as classifier_lib
    net = classifier_lib.ClassifierNet(4, (8,))
    images = np.random.default_rng(0).integers(0, 256, (13, 8, 8, 3), dtype=np.uint8)
    params = net.init(jax.random.PRNGKey(0), images[:1])["params"]
    mesh = classifier_lib.data_mesh()
    out = classifier_lib.apply_in_batches(
        classifier_lib.make_apply_fn(4, (8,)), params, images, batch_size=3,
        mesh=mesh)
    np.savez(sys.argv[1], devices=mesh.size, **out)
""")


@pytest.mark.integration
def test_features_sharded_over_two_devices_equal_one_device(tmp_path):
  out_path = tmp_path / "two.npz"
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2"
             " --xla_cpu_collective_call_terminate_timeout_seconds=600")  # loaded CI
  subprocess.run([sys.executable, "-c", _TWO_DEVICE_SCRIPT, str(out_path)], env=env,
                 cwd=REPO, check=True, timeout=300)
  net = classifier_lib.ClassifierNet(4, (8,))
  images = np.random.default_rng(0).integers(0, 256, (13, 8, 8, 3), dtype=np.uint8)
  params = net.init(jax.random.PRNGKey(0), images[:1])["params"]
  expected = net.apply({"params": params}, images)
  with np.load(out_path) as two:
    assert int(two["devices"]) == 2
    for name in ("features", "logits"):
      assert two[name].shape[0] == 13
      np.testing.assert_allclose(two[name], expected[name], rtol=1e-5, atol=1e-6)
