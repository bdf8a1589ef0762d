"""The 2-D mixtures as a dataset of points, their diagnostics, and GAN mode coverage
on them, trained through the one loop (train/loop.py) as `main.py` runs it."""

import glob
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

import datasets
from configs import gan_toy
from datasets import toy2d
from evaluation import reference_stats, sample_metrics
from sampling import image_io
from train import loop, modes


@pytest.mark.parametrize("name,num_modes,std,extent", [("ring", 8, 0.02, 2.0),
                                                       ("grid", 25, 0.05, 4.0)])
def test_mixture_geometry(name, num_modes, std, extent):
  mixture = toy2d.get_mixture(name)
  assert mixture.num_modes == num_modes and mixture.std == std
  if name == "ring":
    np.testing.assert_allclose(np.linalg.norm(mixture.centres, axis=1), 2.0)
    np.testing.assert_allclose(mixture.centres[2], [0.0, 2.0], atol=1e-12)
  else:
    assert sorted(set(mixture.centres[:, 0])) == [-4.0, -2.0, 0.0, 2.0, 4.0]
  assert np.max(np.abs(mixture.centres)) == extent


def test_samples_are_uniform_over_modes_with_the_right_spread():
  mixture = toy2d.get_mixture("ring")
  points = toy2d.sample(mixture, np.random.default_rng(0), 80_000)
  assert points.dtype == np.float32 and points.shape == (80_000, 2)
  nearest = np.argmin(np.linalg.norm(points[:, None] - mixture.centres[None], axis=-1), 1)
  counts = np.bincount(nearest, minlength=8)
  np.testing.assert_allclose(counts / 80_000, 1 / 8, atol=0.01)
  offsets = points - mixture.centres[nearest]
  np.testing.assert_allclose(offsets.std(axis=0), 0.02, rtol=0.02)
  # Real data: 3 std in 2-D holds 1 - exp(-9/2) = 98.9% of the mass (Rayleigh).
  d = toy2d.diagnostics(mixture, points, min_samples_per_mode=100)
  assert d["modes_covered"] == 8
  np.testing.assert_allclose(d["high_quality_fraction"], 1 - np.exp(-4.5), atol=0.002)
  assert d["mode_kl_to_uniform"] < 1e-3


def test_diagnostics_of_collapsed_and_far_samples():
  mixture = toy2d.get_mixture("ring")
  one_mode = np.tile(mixture.centres[3], (50, 1))
  d = toy2d.diagnostics(mixture, one_mode)
  assert (d["modes_covered"], d["high_quality_fraction"]) == (1, 1.0)
  np.testing.assert_allclose(d["mode_kl_to_uniform"], np.log(8))
  far = toy2d.diagnostics(mixture, np.zeros((10, 2)))     # the ring's centre
  assert (far["modes_covered"], far["high_quality_fraction"]) == (0, 0.0)
  # Just within 3 std (0.06) counts as high quality; just beyond does not.
  edge = mixture.centres[:2] + np.array([[0.0599, 0.0], [0.0, 0.0601]])
  d = toy2d.diagnostics(mixture, edge)
  assert d["high_quality_fraction"] == 0.5


def test_min_samples_per_mode_sets_the_coverage_threshold():
  mixture = toy2d.get_mixture("grid")
  points = np.concatenate([np.tile(mixture.centres[:5], (3, 1)), mixture.centres[5:]])
  assert toy2d.diagnostics(mixture, points)["modes_covered"] == 25
  assert toy2d.diagnostics(mixture, points, min_samples_per_mode=3)["modes_covered"] == 5


# ----------------------------------------------------------- the data layer
def test_points_are_served_through_the_dataset_interfaces():
  config = dict(dataset="toy2d/grid")
  info = datasets.get_dataset_info(config)
  assert (info.kind, info.dtype, info.image_shape, info.num_classes) == (
      "points", "float32", (2,), 0)
  assert info.batch_keys == ("image", "label") and info.extent == 5.0
  np.testing.assert_array_equal(info.landmarks, toy2d.get_mixture("grid").centres)
  example = info.example_batch(3)
  assert example["image"].shape == (3, 2) and example["image"].dtype == np.float32
  batches = datasets.make_train_batches(config, seed=3, global_batch_size=64)
  fresh = datasets.make_train_batches(config, seed=3, global_batch_size=64)
  for step in (5, 0, 1000):   # out of order: a pure function of (seed, step)
    batch = batches.get(step)
    assert batch["image"].shape == (64, 2) and batch["image"].dtype == np.float32
    np.testing.assert_array_equal(batch["image"], fresh.get(step)["image"])
  assert not np.array_equal(batches.get(0)["image"], batches.get(1)["image"])
  other_seed = datasets.make_train_batches(config, seed=4, global_batch_size=64)
  assert not np.array_equal(batches.get(0)["image"], other_seed.get(0)["image"])
  iterator = batches.iterate(7)
  np.testing.assert_array_equal(next(iterator)["image"], batches.get(7)["image"])
  np.testing.assert_array_equal(next(iterator)["image"], batches.get(8)["image"])
  halves = [datasets.make_train_batches(config, seed=3, global_batch_size=64,
                                        process_index=p, process_count=2)
            for p in range(2)]
  np.testing.assert_array_equal(
      np.concatenate([h.get(5)["image"] for h in halves]), batches.get(5)["image"])


def test_eval_splits_are_fixed_points_padded_like_images():
  config = dict(dataset="toy2d/ring")
  first, second = (list(datasets.make_eval_batches(config, split="test",
                                                   global_batch_size=8, num_examples=12))
                   for _ in range(2))
  assert len(first) == 2 and first[1]["image"].dtype == np.float32
  np.testing.assert_array_equal(first[0]["image"], second[0]["image"])
  np.testing.assert_array_equal(first[1]["mask"], [True] * 4 + [False] * 4)
  assert np.all(first[1]["image"][4:] == 0)
  train = next(iter(datasets.make_eval_batches(config, split="train",
                                               global_batch_size=8)))
  assert not np.array_equal(train["image"], first[0]["image"])
  with pytest.raises(ValueError, match="splits"):
    datasets.get_dataset_info(dict(dataset="toy2d/ring", eval_split="validation"))
  with pytest.raises(ValueError, match="Unknown toy mixture"):
    datasets.get_dataset_info(dict(dataset="toy2d/spiral"))


# ------------------------------------------------------- metric and pictures
def test_mode_coverage_is_the_default_metric_of_the_mixtures():
  assert sample_metrics.default_metrics("toy2d/ring") == ("mode_coverage",)
  mixture = toy2d.get_mixture("ring")
  points = toy2d.sample(mixture, np.random.default_rng(1), 500)
  result = sample_metrics.compute_sample_metrics(
      points, reference=reference_stats.ReferenceSpec("toy2d/ring"))
  assert result.values == pytest.approx(toy2d.diagnostics(mixture, points))
  assert result.protocol["num_samples"] == 500
  assert result.protocol["reference"]["mixture"] == "ring"
  with pytest.raises(ValueError, match="combined"):
    sample_metrics.compute_sample_metrics(
        points, reference=reference_stats.ReferenceSpec("toy2d/ring"),
        metrics="mode_coverage,fid")
  with pytest.raises(ValueError, match="2-D mixture"):
    sample_metrics.point_metrics(points, "digits")


def test_scatter_plot_draws_dots_and_marks_the_modes():
  white, mark = np.array([255, 255, 255]), np.array([214, 39, 40])
  image = image_io.scatter_plot(np.array([[0.0, 1.0], [5.0, 5.0]]), extent=2.0,
                                landmarks=[(-1.0, -1.0)], size=64)
  assert image.shape == (64, 64, 3) and image.dtype == np.uint8
  # (0, 1) is column 32, row 16 (y points up); (5, 5) lies outside and is not drawn.
  assert np.all(image[16, 32] < white) and not np.array_equal(image[16, 32], mark)
  np.testing.assert_array_equal(image[48, 16], mark)      # the cross at (-1, -1)
  drawn = np.any(image != 255, axis=-1)
  assert drawn[14:19, 30:35].sum() == 5 and drawn.sum() == 5 + 9
  info = datasets.get_dataset_info(dict(dataset="toy2d/ring"))
  points = np.zeros((10, 2), np.float32)
  np.testing.assert_array_equal(image_io.preview(points, info),
                                image_io.scatter_plot(points, extent=2.5,
                                                      landmarks=info.landmarks))


# ------------------------------------------------------- training via the loop
def small_config(num_train_steps, arg="ring,wgangp,runlocal"):
  """A seconds-long toy run through the loop (tiny MLP, 2,500 eval samples)."""
  config = gan_toy.get_config(arg)
  t = config.training
  t.num_train_steps = num_train_steps
  t.log_every_steps = t.checkpoint_every_steps = t.sample_every_steps = 2
  t.async_checkpointing = False
  return config


def leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.integration
def test_resumed_toy_run_equals_uninterrupted_run(tmp_path, fast_compile):
  full = loop.train_and_evaluate(small_config(4), str(tmp_path / "full"))
  loop.train_and_evaluate(small_config(2), str(tmp_path / "split"))
  resumed = loop.train_and_evaluate(small_config(4), str(tmp_path / "split"))
  assert int(full.step) == int(resumed.step) == 4
  for a, b in zip(leaves(full.checkpoint_tree()), leaves(resumed.checkpoint_tree())):
    np.testing.assert_array_equal(a, b)   # bit for bit on CPU
  reports = [json.load(open(tmp_path / run / "eval" / "step_00000004.json"))
             for run in ("full", "split")]
  keys = ("modes_covered", "high_quality_fraction", "mode_kl_to_uniform")
  np.testing.assert_equal(*[{k: r[k] for k in keys} for r in reports])   # NaN == NaN


@pytest.mark.integration
def test_eval_json_holds_the_diagnostics_and_sample_writes_points(tmp_path, fast_compile):
  workdir = str(tmp_path)
  config = small_config(2)
  loop.train_and_evaluate(config, workdir)
  report = json.load(open(os.path.join(workdir, "eval", "step_00000002.json")))
  for key in ("modes_covered", "num_modes", "high_quality_fraction",
              "mode_kl_to_uniform", "min_mode_count", "max_mode_count"):
    assert key in report, report
  assert report["num_modes"] == 8 and report["dataset"] == "toy2d/ring"
  protocol = report["protocol"]
  assert protocol["num_samples"] == 2500 and protocol["metrics"] == ["mode_coverage"]
  assert protocol["sampler"]["params"] == "ema" and "std" in protocol["reference"]
  # The diagnostics are those of the eval samples written beside them.
  (chunks,) = glob.glob(os.path.join(workdir, "eval", "samples_step_00000002_*"))
  with np.load(os.path.join(chunks, "chunk_000000.npz")) as f:
    points = f["arr_0"][:2500]
  assert points.dtype == np.float32 and points.shape == (2500, 2)
  expected = toy2d.diagnostics(toy2d.get_mixture("ring"), points)
  assert report["high_quality_fraction"] == expected["high_quality_fraction"]
  # Training's sample "grid" is a scatter plot on a white canvas.
  grid = np.asarray(Image.open(os.path.join(workdir, "samples",
                                            "train_step_00000002.png")))
  assert grid.shape == (256, 256, 3) and np.mean(grid == 255) > 0.5
  directory = modes.sample(config, workdir)
  with np.load(os.path.join(directory, "samples.npz")) as f:
    assert f["arr_0"].shape == (2500, 2) and f["arr_0"].dtype == np.float32
  scatter = os.path.join(directory, "scatter.png")
  assert image_io.read_png_provenance(scatter)["purpose"] == "samples"


@pytest.mark.integration
def test_wgangp_covers_the_ring_quickly(tmp_path, fast_compile):
  """A short, small run: all 8 modes get >= 5 high-quality samples of 2500."""
  config = gan_toy.get_config("ring,wgangp")
  config.model.mlp_hidden = 64
  config.training.batch_size = config.gan.n_critic * 128
  config.training.num_train_steps = 600
  config.training.checkpoint_every_steps = config.training.sample_every_steps = 600
  config.optim.learning_rate = 1e-3
  config.optim.ema_decay = 0.99
  loop.train_and_evaluate(config, str(tmp_path))
  report = json.load(open(tmp_path / "eval" / "step_00000600.json"))
  assert report["modes_covered"] == 8 and report["min_mode_count"] >= 5, report
  assert report["high_quality_fraction"] > 0.1, report


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["wgangp", "hinge"])
def test_gan_toy_config_covers_all_8_modes_with_high_quality_samples(loss, tmp_path):
  """configs/gan_toy.py as shipped (2000 steps), as main.py trains it: 8/8 modes with
  >= 20 samples each and more than half of the samples within 3 std of a mode
  (README gives the measured numbers)."""
  loop.train_and_evaluate(gan_toy.get_config(f"ring,{loss}"), str(tmp_path))
  report = json.load(open(tmp_path / "eval" / "step_00002000.json"))
  assert report["modes_covered"] == 8 and report["min_mode_count"] >= 20, report
  assert report["high_quality_fraction"] > 0.5, report
