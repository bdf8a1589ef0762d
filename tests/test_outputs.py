"""Outputs other tools read: the PNG folder and labels of --mode=sample, the torch-free
FID Inception weights of `convert_inception`, and score_sde's / EDM's statistics.

torch-fidelity reads the PNG folder through its own folder loader. Its package
imports torchvision, which does not import beside the CPU torch build (see
tests/test_inception.py), so a stand-in `torchvision` supplies the two things its
folder path touches: dataset classes it subclasses (never used here), `Compose` and
`pil_to_tensor`; listing, ordering and decoding the files stay torch-fidelity's.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import types

import jax
import numpy as np
import pytest
import scipy.linalg
from PIL import Image

from evaluation import cli
from evaluation import inception
from evaluation import reference_stats as reference_lib
from evaluation import sample_metrics
from sampling import image_io
from tests.test_sample_metrics import random_inception_params


def _images(shape, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _read_png_folder(folder) -> np.ndarray:
  names = sorted(os.listdir(folder))
  return np.stack([np.asarray(Image.open(os.path.join(folder, n))) for n in names])


# ------------------------------------------------------------- samples: PNGs, labels
def test_png_folder_equals_the_npz_and_labels_go_under_arr_1(tmp_path):
  images, labels = _images((7, 5, 6, 3)), np.arange(7) % 3
  directory = str(tmp_path / "step")
  paths = image_io.save_samples(directory, images, dict(config_name="c"),
                                labels=labels, png_folder=True)
  assert paths["png_folder"] == os.path.join(directory, "png")
  assert sorted(os.listdir(paths["png_folder"])) == [f"{i:06d}.png" for i in range(7)]
  np.testing.assert_array_equal(_read_png_folder(paths["png_folder"]), images)
  with np.load(paths["npz"]) as f:
    np.testing.assert_array_equal(f["arr_0"], images)
    np.testing.assert_array_equal(f["arr_1"], labels)
    assert np.issubdtype(f["arr_1"].dtype, np.integer)
    assert json.loads(str(f["provenance"]))["labels"] == "arr_1"
  provenance = image_io.read_png_provenance(os.path.join(paths["png_folder"],
                                                         "000004.png"))
  assert provenance["index"] == 4 and provenance["config_name"] == "c"

  # Again with fewer samples (a rerun, or another sample set): no stale PNG is left
  # for an FID tool to read; files that are not ours stay.
  (tmp_path / "step" / "png" / "notes.txt").write_text("mine")
  image_io.save_samples(directory, images[:3], {}, png_folder=True)
  assert sorted(os.listdir(paths["png_folder"])) == [
      "000000.png", "000001.png", "000002.png", "notes.txt"]
  with np.load(paths["npz"]) as f:
    assert "arr_1" not in f.files                # unconditional: no labels
  image_io.save_samples(directory, images[:3], {})   # no png_folder: ours go
  assert os.listdir(paths["png_folder"]) == ["notes.txt"]


def test_grayscale_samples_are_single_channel_pngs(tmp_path):
  images = _images((3, 4, 4, 1))
  paths = image_io.save_samples(str(tmp_path), images, {}, png_folder=True)
  np.testing.assert_array_equal(_read_png_folder(paths["png_folder"]),
                                images[..., 0])


def test_bad_labels_and_points_with_a_png_folder_are_refused(tmp_path):
  images = _images((4, 2, 2, 3))
  with pytest.raises(ValueError, match=r"labels must be int \[4\]"):
    image_io.save_samples(str(tmp_path), images, {}, labels=np.zeros(3, np.int32))
  with pytest.raises(ValueError, match="labels must be int"):
    image_io.save_samples(str(tmp_path), images, {}, labels=np.zeros(4, np.float32))
  points = types.SimpleNamespace(kind="points", extent=1.0, landmarks=())
  with pytest.raises(ValueError, match="2-D points"):
    image_io.save_samples(str(tmp_path), np.zeros((4, 2), np.float32), {}, points,
                          png_folder=True)


def test_sample_labels_repeat_the_cycle_of_each_sampling_call():
  from train import modes  # pylint: disable=g-import-not-at-top
  assert modes.sample_labels(0, 5, 4) is None
  # family.sample(params, rng, 4) conditions sample i of each call on i % 3.
  np.testing.assert_array_equal(modes.sample_labels(3, 10, 4),
                                [0, 1, 2, 0, 0, 1, 2, 0, 0, 1])


# --------------------------------------------------- torch-fidelity reads the folder
def _torch_state_dict(params) -> dict:
  """Flax Inception params under the published file's (torchvision's) names."""
  torch = pytest.importorskip("torch")
  layers = dict(kernel=("conv", "weight"), scale=("bn", "weight"),
                bias=("bn", "bias"), mean=("bn", "running_mean"),
                var=("bn", "running_var"))
  state = {}
  for path, value in inception._flatten(params):
    value = np.asarray(value)
    if path == ("fc_kernel",):
      state["fc.weight"] = value.T
    elif path == ("fc_bias",):
      state["fc.bias"] = value
    else:
      *modules, _, name = path
      layer, torch_name = layers[name]
      state[".".join((*modules, layer, torch_name))] = (
          value.transpose(3, 2, 0, 1) if name == "kernel" else value)
      if name == "mean":   # newer torch writes this counter beside every batch norm
        state[".".join((*modules, "bn", "num_batches_tracked"))] = np.asarray(0)
  return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


@pytest.fixture
def torch_fidelity():
  """The whole torch_fidelity package, imported beside a stand-in torchvision; the
  modules in sys.modules before are put back after."""
  torch = pytest.importorskip("torch")
  prefixes = ("torch_fidelity", "torchvision")
  saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in prefixes}
  for name in saved:
    del sys.modules[name]
  vision = types.ModuleType("torchvision")
  vision.datasets = types.ModuleType("torchvision.datasets")
  for name in ("CIFAR10", "CIFAR100", "STL10"):
    setattr(vision.datasets, name, type(name, (), {}))
  vision.transforms = types.ModuleType("torchvision.transforms")
  vision.transforms.Compose = lambda steps: functools.reduce(
      lambda f, g: lambda x: g(f(x)), steps, lambda x: x)
  vision.transforms.functional = types.ModuleType("torchvision.transforms.functional")
  vision.transforms.functional.pil_to_tensor = lambda image: torch.from_numpy(
      np.array(image)).permute(2, 0, 1).contiguous()
  sys.modules.update({"torchvision": vision, "torchvision.datasets": vision.datasets,
                      "torchvision.transforms": vision.transforms,
                      "torchvision.transforms.functional":
                      vision.transforms.functional})
  try:
    import torch_fidelity as package  # pylint: disable=g-import-not-at-top
    import torch_fidelity.utils  # noqa: F401  pylint: disable=g-import-not-at-top
    yield package
  finally:
    for name in [k for k in sys.modules if k.split(".")[0] in prefixes]:
      del sys.modules[name]
    sys.modules.update(saved)


def _folder_input(torch_fidelity, folder):
  """torch-fidelity's dataset of a folder given as input1 (its defaults spelled out)."""
  return torch_fidelity.utils.prepare_input_from_id(
      1, input1=folder, samples_find_deep=False, samples_find_ext="png,jpg,jpeg",
      samples_ext_lossy="jpg,jpeg", samples_resize_and_crop=0, verbose=False)


@pytest.mark.parametrize("channels", [3, 1])
def test_torch_fidelity_reads_the_png_folder_as_the_npz(torch_fidelity, tmp_path,
                                                        channels):
  images = _images((12, 6, 5, channels), seed=channels)
  paths = image_io.save_samples(str(tmp_path / "s"), images, {}, png_folder=True)
  (tmp_path / "s" / "png" / "notes.txt").write_text("not an image")
  # torch-fidelity's own folder input: which files, in which order, decoded how.
  folder = _folder_input(torch_fidelity, paths["png_folder"])
  assert len(folder) == 12
  read = np.stack([folder[i].numpy().transpose(1, 2, 0) for i in range(12)])
  with np.load(paths["npz"]) as f:
    # Grey images are read as RGB, as the Inception (ours too) takes them.
    np.testing.assert_array_equal(read, np.repeat(f["arr_0"], 3 // channels, -1))


@pytest.mark.integration    # two CPU Inception passes: tens of seconds
def test_torch_fidelity_computes_the_same_features_from_the_folder(
    torch_fidelity, tmp_path):
  torch = pytest.importorskip("torch")
  images = _images((3, 8, 8, 3), seed=2)
  paths = image_io.save_samples(str(tmp_path / "s"), images, {}, png_folder=True)
  weights = tmp_path / "random_inception.pth"
  torch.save(_torch_state_dict(random_inception_params()), weights)
  extractor = torch_fidelity.FeatureExtractorInceptionV3(
      "inception-v3-compat", ["2048", "logits_unbiased"],
      feature_extractor_weights_path=str(weights))
  kwargs = dict(batch_size=3, cuda=False, save_cpu_ram=True, verbose=False)

  class Npz(torch.utils.data.Dataset):
    def __init__(self, path):
      with np.load(path) as f:
        self.images = f["arr_0"]

    def __len__(self):
      return len(self.images)

    def __getitem__(self, i):
      return torch.from_numpy(self.images[i].transpose(2, 0, 1).copy())

  get = torch_fidelity.utils.get_featuresdict_from_dataset
  from_folder = get(_folder_input(torch_fidelity, paths["png_folder"]), extractor,
                    **kwargs)
  from_npz = get(Npz(paths["npz"]), extractor, **kwargs)
  for name in ("2048", "logits_unbiased"):
    assert from_folder[name].shape[0] == 3
    assert 0.01 < float(from_folder[name].std()) < 1e3   # not a degenerate net
    np.testing.assert_array_equal(from_folder[name].numpy(), from_npz[name].numpy())


# ------------------------------------------------------------ convert_inception
def _run(argv, capsys):
  code = cli.main([str(a) for a in argv])
  captured = capsys.readouterr()
  return code, (json.loads(captured.out) if code == 0 else None), captured.err


@pytest.fixture(scope="module")
def random_pth(tmp_path_factory):
  """Random weights under the published names, in the published file's name."""
  torch = pytest.importorskip("torch")
  path = tmp_path_factory.mktemp("weights") / inception.WEIGHTS_FILENAMES[0]
  torch.save(_torch_state_dict(random_inception_params()), path)
  return path


def test_published_sha256_is_the_one_the_file_names_carry():
  assert len(inception.PUBLISHED_SHA256) == 64
  int(inception.PUBLISHED_SHA256, 16)
  for name in inception.WEIGHTS_FILENAMES:   # torch.hub's 8-hex prefix convention
    assert name.endswith(f"-{inception.PUBLISHED_SHA256[:8]}.pth")


def test_a_file_that_is_not_the_published_one_is_refused(random_pth, tmp_path,
                                                         capsys):
  out = tmp_path / "converted.npz"
  code, _, err = _run(["convert_inception", f"--weights={random_pth}",
                       f"--out={out}"], capsys)
  sha = sample_metrics.file_sha256(random_pth)
  assert code == 2 and err.count("\n") == 1
  assert sha in err and inception.PUBLISHED_SHA256 in err
  assert "--allow_unpublished" in err
  assert not out.exists()


def test_converted_npz_equals_the_direct_load_and_needs_no_torch(
    random_pth, tmp_path, capsys, monkeypatch):
  out = tmp_path / "converted.npz"
  code, report, err = _run(["convert_inception", f"--weights={random_pth}",
                            f"--out={out}", "--allow_unpublished"], capsys)
  assert code == 0, err
  sha = sample_metrics.file_sha256(random_pth)
  assert report == dict(out=str(out), source=str(random_pth), source_sha256=sha,
                        published=False, out_sha256=sample_metrics.file_sha256(out))
  assert inception.read_npz_meta(out) == dict(
      source_file=random_pth.name, source_sha256=sha, published=False)
  direct = inception.load_params(random_pth)
  monkeypatch.setitem(sys.modules, "torch", None)    # `import torch` now fails
  converted = inception.load_params(out)
  jax.tree.map(np.testing.assert_array_equal, converted, direct)
  jax.tree.map(np.testing.assert_array_equal, converted, random_inception_params())
  # The converted file is found where the weights are looked for.
  monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, str(out))
  assert inception.resolve_weights_path() == out


def test_the_published_file_converts_beside_itself(random_pth, tmp_path, capsys,
                                                   monkeypatch):
  # A stand-in for the published file: the check accepts exactly its SHA-256.
  monkeypatch.setattr(inception, "PUBLISHED_SHA256",
                      sample_metrics.file_sha256(random_pth))
  copy = tmp_path / random_pth.name
  copy.write_bytes(random_pth.read_bytes())
  monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, str(tmp_path))  # a folder: searched
  code, report, err = _run(["convert_inception"], capsys)
  assert code == 0, err
  assert report["published"] and report["out"] == str(copy.with_suffix(".npz"))
  assert inception.read_npz_meta(copy.with_suffix(".npz"))["published"] is True


def test_convert_inception_user_errors(random_pth, tmp_path, capsys):
  code, _, err = _run(["convert_inception", f"--weights={random_pth}",
                       f"--out={tmp_path / 'w.txt'}", "--allow_unpublished"], capsys)
  assert code == 2 and "must name a .npz" in err
  npz = tmp_path / "w.npz"
  inception.save_params_npz(random_inception_params(), npz)
  code, _, err = _run(["convert_inception", f"--weights={npz}"], capsys)
  assert code == 2 and "already a converted .npz" in err
  code, _, err = _run(["convert_inception", f"--weights={tmp_path / 'no.pth'}"],
                      capsys)
  assert code == 2 and "were not found" in err


# --------------------------------------------------- score_sde and EDM statistics
_DIM = 6


def _tiny_inception_net() -> reference_lib.FeatureNet:
  """A stand-in for the Inception: 6 fixed random projections of the pixels, so that
  FID's covariances are full rank from a few dozen images (2048-d sqrtm is slow)."""
  projection = np.random.default_rng(1).normal(size=(4 * 4 * 3, _DIM)) / 48

  def apply_fn(params, images):
    x = np.asarray(images, np.float32).reshape(len(images), -1) / 255.0
    features = np.tanh(x @ params["w"]).astype(np.float32)
    return {"features": features, "logits": features}

  return reference_lib.FeatureNet(reference_lib.INCEPTION, "tiny-pool3", apply_fn,
                                  {"w": projection}, "0" * 64, None, {})


def _fid(a: np.ndarray, b: np.ndarray) -> float:
  """FID from the definition, in float64, from two feature sets."""
  mu_a, mu_b = a.mean(0), b.mean(0)
  cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  root = scipy.linalg.sqrtm(cov_a @ cov_b).real
  return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


@pytest.fixture
def stats_files(tmp_path):
  """The same reference statistics in each layout, and the reference features."""
  net = _tiny_inception_net()
  reference = _images((40, 4, 4, 3), seed=5)
  ours = reference_lib.stats_of_images(reference, net, batch_size=40)
  features = np.asarray(ours.features)
  files = dict(ours=tmp_path / "ours.npz", edm=tmp_path / "cifar10-32x32.npz",
               score_sde=tmp_path / "cifar10_stats.npz")
  ours.save(files["ours"])
  # EDM's fid.py `ref`: np.savez(dest, mu=mu, sigma=sigma), float64.
  np.savez(files["edm"], mu=features.astype(np.float64).mean(0),
           sigma=np.cov(features.astype(np.float64), rowvar=False))
  # score_sde: the reference images' pool_3 features (and logits), float32.
  np.savez(files["score_sde"], pool_3=features, logits=features[:, :3])
  return net, features, files


def test_each_layout_loads_as_the_same_statistics(stats_files):
  _, features, files = stats_files
  ours = reference_lib.ReferenceStats.load(files["ours"])
  for name in ("edm", "score_sde"):
    loaded = reference_lib.ReferenceStats.load(files[name])
    np.testing.assert_allclose(loaded.mu, ours.mu, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(loaded.sigma, ours.sigma, rtol=1e-12, atol=1e-12)
    assert loaded.feature_net is None    # taken as Inception pool3, as published
  score_sde = reference_lib.ReferenceStats.load(files["score_sde"])
  np.testing.assert_array_equal(score_sde.features, features)   # KID and P&R too
  assert score_sde.meta["num_examples"] == 40
  assert "score_sde" in score_sde.meta["source"]
  assert "EDM" in reference_lib.ReferenceStats.load(files["edm"]).meta["source"]


def test_metrics_command_gives_the_same_fid_against_every_layout(
    stats_files, tmp_path, capsys, monkeypatch):
  net, features, files = stats_files
  monkeypatch.setattr(sample_metrics, "inception_feature_net", lambda *a: net)
  samples = _images((30, 4, 4, 3), seed=6) // 2    # darker than the reference
  np.savez(tmp_path / "samples.npz", arr_0=samples)
  results = {}
  for name, path in files.items():
    metrics = "fid,kid" if name != "edm" else "fid"   # EDM's file has no features
    code, result, err = _run(["metrics", f"--samples={tmp_path / 'samples.npz'}",
                              f"--reference={path}", f"--metrics={metrics}",
                              "--kid_subset_size=20"], capsys)
    assert code == 0, err
    results[name] = result
  sample_features = net.apply_fn(net.params, samples)["features"]
  expected = _fid(sample_features.astype(np.float64), features.astype(np.float64))
  assert expected > 0.01
  for name in files:
    assert results[name]["fid"] == pytest.approx(expected, rel=1e-6), name
  assert results["score_sde"]["kid"] == pytest.approx(results["ours"]["kid"],
                                                      rel=1e-9)


def test_a_file_of_no_known_layout_is_named_with_its_keys(tmp_path, capsys):
  np.savez(tmp_path / "samples.npz", arr_0=_images((4, 4, 4, 3)))
  np.savez(tmp_path / "odd.npz", means=np.zeros(3), covariance=np.eye(3))
  code, _, err = _run(["metrics", f"--samples={tmp_path / 'samples.npz'}",
                       f"--reference={tmp_path / 'odd.npz'}", "--metrics=fid"], capsys)
  assert code == 2 and err.count("\n") == 1
  assert "['covariance', 'means']" in err and "pool_3" in err and "mu" in err
  with pytest.raises(ValueError, match=r"holds \['covariance', 'means'\]"):
    reference_lib.ReferenceStats.load(tmp_path / "odd.npz")
  np.savez(tmp_path / "flat.npz", pool_3=np.zeros(5, np.float32))
  with pytest.raises(ValueError, match=r"pool_3 must be features"):
    reference_lib.ReferenceStats.load(tmp_path / "flat.npz")
  # A score_sde file given as the samples is pointed to --reference.
  code, _, err = _run(["metrics", f"--samples={tmp_path / 'flat.npz'}",
                       "--dataset=digits"], capsys)
  assert code == 2 and "--reference" in err



# ------------------------------------------- --mode=sample of a class-conditional model
@pytest.mark.integration    # trains through the loop, then samples
def test_sample_mode_writes_the_labels_it_conditioned_on_and_a_png_folder(
    tmp_path, fast_compile, monkeypatch):
  from tests.test_train_loop import tiny_config  # pylint: disable=g-import-not-at-top
  from train import edit_mode, loop, modes  # pylint: disable=g-import-not-at-top
  from train.run import SAMPLE, Run  # pylint: disable=g-import-not-at-top
  config = tiny_config(2)
  config.model.conditional = True        # 10 digit classes
  config.sampling.png_folder = True
  config.eval.num_samples = 6            # two calls of 4: labels 0 1 2 3, 0 1
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(config, workdir)
  # A two-step model's output layer is still (near) zero, so every label would give
  # the same images and the label check below would be empty: sample with its
  # params perturbed at random (the same in modes.sample and in the check).
  sampling_params = Run.sampling_params

  def perturbed(self, state):
    params = sampling_params(self, state)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    return jax.tree.unflatten(tree, [
        leaf + 0.1 * jax.random.normal(k, leaf.shape, leaf.dtype)
        for leaf, k in zip(leaves, keys)])

  monkeypatch.setattr(Run, "sampling_params", perturbed)
  directory = modes.sample(config, workdir)

  with np.load(os.path.join(directory, "samples.npz")) as f:
    images, labels = f["arr_0"], f["arr_1"]
  np.testing.assert_array_equal(labels, [0, 1, 2, 3, 0, 1])
  np.testing.assert_array_equal(_read_png_folder(os.path.join(directory, "png")),
                                images[..., 0])
  assert not [n for n in os.listdir(directory) if n.startswith("chunks_")]

  # Independently: the images are those of the family's conditional sampler given
  # these labels (call i: key fold_in(rng, i)), and not those of other labels.
  run = Run(config, workdir)
  try:
    params = run.sampling_params(run.init_or_restore(must_exist=True))
    rng = jax.random.fold_in(run.root_rng, SAMPLE)
    sample = jax.jit(run.family.sample_with_condition, static_argnums=3)
    given = [np.asarray(sample(params, jax.random.fold_in(rng, i),
                               np.asarray(labels[:4] if i == 0 else [0, 1, 2, 3]), 4))
             for i in range(2)]
    other = np.asarray(sample(params, jax.random.fold_in(rng, 0),
                              np.asarray([5, 6, 7, 8]), 4))
  finally:
    run.close()
  expected = np.concatenate(given)[:6]
  assert np.mean(np.abs(expected.astype(int) - images.astype(int)) <= 1) > 0.999
  assert np.mean(other != images[:4]) > 0.05

  # A rerun (e.g. after preemption while writing) leaves the same files.
  modes.sample(config, workdir)
  with np.load(os.path.join(directory, "samples.npz")) as f:
    np.testing.assert_array_equal(f["arr_0"], images)
    np.testing.assert_array_equal(f["arr_1"], labels)
  assert len(os.listdir(os.path.join(directory, "png"))) == 6

  # --mode=sample --label=3 (train/edit_mode.py): that label for every image.
  result = edit_mode.edit(config, workdir, dict(label=3, num_samples=2))
  with np.load(result["paths"]["npz"]) as f:
    np.testing.assert_array_equal(f["arr_1"], [3, 3])
    np.testing.assert_array_equal(_read_png_folder(result["paths"]["png_folder"]),
                                  f["arr_0"][..., 0])
