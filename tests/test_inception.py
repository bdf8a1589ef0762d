"""The Flax FID Inception against torch-fidelity's PyTorch port of the same TF graph.

Needs the test extras (`pip install --no-deps -r requirements-test.txt`: torch and
torch-fidelity); those tests skip without them. torch-fidelity's package `__init__`
imports torchvision, which is neither needed nor importable beside the CPU torch build,
so its modules are loaded under a bare package object that skips that `__init__`.
"""
import importlib.machinery
import importlib.util
import sys
import types

import jax
import numpy as np
import PIL.Image
import pytest

from evaluation import inception

# Acceptance bound for float32 features from two frameworks (the bound).
_ATOL = 1e-4


def _torch():
  """torch, or a skip: it is a test extra, not a dependency of the project."""
  return pytest.importorskip("torch", reason="test extras: pip install --no-deps -r "
                             "requirements-test.txt")


def _import_torch_fidelity_module(name: str):
  """Imports torch_fidelity.<name> without running the package's __init__."""
  _torch()
  if "torch_fidelity" not in sys.modules:
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
    package.__spec__.submodule_search_locations = list(
        spec.submodule_search_locations)
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["torch_fidelity"] = package
  return importlib.import_module(f"torch_fidelity.{name}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """torch-fidelity's FID Inception with calibrated random weights, and their file.

  The weights go through a .pth file, so torch-fidelity's own strict
  `load_state_dict` and our `load_params` read the same bytes.
  """
  torch = _torch()
  module = _import_torch_fidelity_module("feature_extractor_inceptionv3")
  torch.manual_seed(0)

  class _Untrained(module.FeatureExtractorInceptionV3):
    """Skips the pretrained-weight download: torch's default init is kept."""

    def load_state_dict(self, state_dict, *args, **kwargs):
      if state_dict is not None:
        return super().load_state_dict(state_dict, *args, **kwargs)

  original_loader = module.load_state_dict_from_url
  module.load_state_dict_from_url = lambda *args, **kwargs: None
  try:
    fresh = _Untrained("inception-v3-compat", ["2048"])
  finally:
    module.load_state_dict_from_url = original_loader

  # Random batch-norm affine params, then running statistics set to those of a real
  # batch (train mode, cumulative average): activations stay O(1), as in the real
  # network, through all 94 layers, so that a wrong op or layout shows up. Positive
  # shifts keep most ReLUs open (about 1 in 6 closed): a random net with half of them
  # closed is chaotic and amplifies float32 rounding, which both frameworks make,
  # ~1.6x per block, to 1e-4 of its outputs; this one stays ~1e-5 from float64.
  calibration = torch.from_numpy(np.ascontiguousarray(
      _random_images((2, 32, 32, 3), seed=9).transpose(0, 3, 1, 2)))
  with torch.no_grad():
    for layer in fresh.modules():
      if isinstance(layer, torch.nn.BatchNorm2d):
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(0.5, 1.5)
        layer.reset_running_stats()
        layer.momentum = None
    fresh.train()
    fresh(calibration)
  state_dict = fresh.state_dict()
  weights_path = (tmp_path_factory.mktemp("inception")
                  / inception.WEIGHTS_FILENAMES[0])
  torch.save(state_dict, weights_path)
  model = module.FeatureExtractorInceptionV3(
      "inception-v3-compat", ["2048", "logits_unbiased", "logits"],
      feature_extractor_weights_path=str(weights_path))
  return model, weights_path


@pytest.fixture(scope="module")
def flax_params(reference):
  return inception.load_params(reference[1])


def _reference_features(model, images: np.ndarray) -> dict[str, np.ndarray]:
  torch = _torch()
  with torch.no_grad():
    pool, logits_unbiased, logits = model(
        torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))))
  return {"pool": pool.numpy(), "logits_unbiased": logits_unbiased.numpy(),
          "logits": logits.numpy()}


def _assert_features_match(params, model, images: np.ndarray,
                           batch_size: int) -> None:
  expected = _reference_features(model, images)
  actual = inception.extract_features(params, images, batch_size=batch_size)
  for name in inception.FEATURE_NAMES:
    # The random network must produce non-trivial numbers, or the check is empty.
    assert 0.05 < np.std(expected[name]) < 20, name
    np.testing.assert_allclose(actual[name], expected[name], rtol=0, atol=_ATOL,
                               err_msg=name)


def _noise(shape, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _random_images(shape, seed=0) -> np.ndarray:
  """Uniform noise at 32x32, bilinearly resized (PIL) to other sizes.

  The network then sees the same kind of input at every size as in the batch-norm
  calibration (noise at 299x299 would drive the random net's activations to ~100).
  """
  count, height, width, channels = shape
  noise = _noise((count, 32, 32, channels), seed)
  if (height, width) == (32, 32):
    return noise
  return np.stack([np.asarray(PIL.Image.fromarray(image).resize(
      (width, height), PIL.Image.BILINEAR)) for image in noise])


# The network against torch-fidelity's (an outside reference, as the converters'
# parity tests): integration tier.
@pytest.mark.integration
def test_features_match_torch_fidelity_three_images(reference, flax_params):
  """Pool features and both logits agree within 1e-4 on CIFAR-sized inputs.

  Batches of 2 make the last batch a padded one, whose padding must not leak.
  """
  _assert_features_match(flax_params, reference[0], _random_images((3, 32, 32, 3)),
                         batch_size=2)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(8, 32, 32, 3), (4, 64, 48, 3),
                                   (3, 299, 299, 3), (2, 400, 333, 3)])
def test_features_match_torch_fidelity_sizes(reference, flax_params, shape):
  """Up-, down- and no resampling, non-square images, larger batches."""
  _assert_features_match(flax_params, reference[0], _random_images(shape, seed=1),
                         batch_size=shape[0])


@pytest.mark.parametrize("in_hw", [(32, 32), (8, 8), (64, 48), (400, 333), (299, 299)])
def test_tf1_resize_matches_torch_fidelity(in_hw):
  """The TF1 bilinear resize equals torch-fidelity's port (bit-exact on CPU)."""
  torch = _torch()
  interp = _import_torch_fidelity_module("interpolate_compat_tensorflow")
  images = _noise((2, *in_hw, 3)).astype(np.float32)
  expected = interp.interpolate_bilinear_2d_like_tensorflow1x(
      torch.from_numpy(images.transpose(0, 3, 1, 2)), size=(299, 299),
      align_corners=False).numpy().transpose(0, 2, 3, 1)
  actual = np.asarray(inception.resize_bilinear_tf1(images, (299, 299)))
  np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("in_hw", [(32, 32), (8, 8), (64, 48), (400, 333)])
def test_half_pixel_resize_matches_torch_interpolate(in_hw):
  """pytorch-fid's convention: F.interpolate(bilinear, align_corners=False)."""
  torch = _torch()
  images = _noise((2, *in_hw, 3)).astype(np.float32) / 255.0
  expected = torch.nn.functional.interpolate(
      torch.from_numpy(images.transpose(0, 3, 1, 2)), size=(299, 299),
      mode="bilinear", align_corners=False).numpy().transpose(0, 2, 3, 1)
  actual = np.asarray(inception.resize_bilinear_half_pixel(images, (299, 299)))
  np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)


def test_tf1_resize_known_values():
  """TF1 without half-pixel centres: output i samples input i * in / out."""
  row = np.array([0.0, 10.0, 20.0, 30.0], np.float32).reshape(1, 1, 4, 1)
  # in / out = 4 / 8: positions 0, .5, 1, ..., 3.5; the last clamps to the edge.
  actual = np.asarray(inception.resize_bilinear_tf1(row, (1, 8)))[0, 0, :, 0]
  np.testing.assert_allclose(actual, [0, 5, 10, 15, 20, 25, 30, 30])


def test_preprocess_scales_like_the_tf_graph():
  """(x - 128) / 128 at 299x299 (no resize): 0 -> -1, 128 -> 0, 255 -> 127/128."""
  images = np.zeros((1, 299, 299, 3), np.uint8)
  images[0, 0, 0] = [0, 128, 255]
  out = np.asarray(inception.preprocess(images))
  np.testing.assert_array_equal(out[0, 0, 0], [-1.0, 0.0, 127 / 128])
  gray = np.asarray(inception.preprocess(images[..., :1]))
  np.testing.assert_array_equal(gray[0, 0, 0], [-1.0, -1.0, -1.0])


def test_bad_images_raise_value_error():
  with pytest.raises(ValueError, match="uint8"):
    inception.preprocess(np.zeros((1, 8, 8, 3), np.float32))
  with pytest.raises(ValueError, match="NHWC"):
    inception.preprocess(np.zeros((1, 8, 8, 4), np.uint8))
  with pytest.raises(ValueError, match="input_convention"):
    inception.make_feature_fn("tf2")


def test_missing_weights_file_names_the_place_and_url(tmp_path, monkeypatch):
  monkeypatch.setattr(inception, "WEIGHTS_CACHE_DIR", tmp_path)
  monkeypatch.delenv(inception.WEIGHTS_ENV_VAR, raising=False)
  with pytest.raises(FileNotFoundError) as error:
    inception.load_params()
  message = str(error.value)
  assert str(tmp_path) in message
  assert inception.WEIGHTS_ENV_VAR in message
  assert "releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth" in message
  monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, str(tmp_path / "nowhere.pth"))
  with pytest.raises(FileNotFoundError, match="nowhere.pth"):
    inception.load_params()


def _conv_and_dot_precisions(jaxpr) -> list:
  """The precision param of every conv and matmul, sub-jaxprs included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
      found.append(eqn.params["precision"])
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          found += _conv_and_dot_precisions(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          found += _conv_and_dot_precisions(sub)
  return found


def test_every_conv_and_matmul_runs_at_highest_precision():
  """No TF32 / bf16 passes on accelerators: precision is pinned in the graph."""
  params = inception.param_shapes()
  images = jax.ShapeDtypeStruct((1, 32, 32, 3), np.uint8)
  jaxpr = jax.make_jaxpr(inception.make_feature_fn())(params, images)
  precisions = _conv_and_dot_precisions(jaxpr.jaxpr)
  assert len(precisions) == 94 + 1  # 94 convolutions and the classifier.
  highest = jax.lax.Precision.HIGHEST
  assert all(p == (highest, highest) for p in precisions), set(precisions)


def test_weights_found_through_env_var_and_npz_round_trip(reference, flax_params,
                                                          tmp_path, monkeypatch):
  """$INCEPTION_WEIGHTS (a file or a directory) is honoured; the .npz copy loads
  without torch, identical."""
  monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, str(reference[1]))
  assert inception.resolve_weights_path() == reference[1]
  monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, str(reference[1].parent))
  assert inception.resolve_weights_path() == reference[1]
  npz_path = tmp_path / "inception.npz"
  inception.save_params_npz(flax_params, npz_path)
  reloaded = inception.load_params(npz_path)
  jax.tree.map(np.testing.assert_array_equal, reloaded, flax_params)


def test_legacy_torch_serialization_loads(reference, flax_params, tmp_path):
  """Files written by torch < 1.6 (pre-zip format), as old weight files may be."""
  torch = _torch()
  legacy_path = tmp_path / "legacy.pth"
  torch.save(torch.load(reference[1], weights_only=True), legacy_path,
             _use_new_zipfile_serialization=False)
  jax.tree.map(np.testing.assert_array_equal, inception.load_params(legacy_path),
               flax_params)


def test_wrong_state_dict_is_rejected(reference):
  torch = _torch()
  state_dict = torch.load(reference[1], weights_only=True)
  del state_dict["Mixed_7c.branch_pool.conv.weight"]
  with pytest.raises(ValueError, match="Mixed_7c/branch_pool/conv/kernel"):
    inception.convert_state_dict(state_dict)
  state_dict = torch.load(reference[1], weights_only=True)
  state_dict["fc.weight"] = state_dict["fc.weight"][:1000]
  with pytest.raises(ValueError, match="fc_kernel has shape"):
    inception.convert_state_dict(state_dict)
