"""The quick protocol of a first run (issue 25): training's evaluation on a random test
subset with standard errors, fewer samples and a faster sampler, all labelled in the
eval JSON, while --mode=eval keeps the full protocol; the phases' progress lines; the
phase arithmetic of benchmarks/quickstart.py."""

from __future__ import annotations

import itertools
import json
import logging
import math
import re

import numpy as np
import pytest

import datasets
from benchmarks import quickstart
from configs import ddpm_digits
from evaluation.progress import progress_line
from train import families, loop, modes
from train.user_errors import UserError

_LEFT = re.compile(r"\|  \d+m\d\ds left$")


# ------------------------------------------------------------- standard error
@pytest.mark.parametrize("population,n", [((0.3, 1.7, 2.0, 5.5, 4.1, 0.9, 3.2), 3),
                                          ((1.0, 2.0, 4.0, 8.0), 2),
                                          ((2.5, -1.0, 0.0, 7.0, 3.0), 4)])
def test_subset_standard_error_against_every_subset(population, n):
  """Over all C(N, n) subsets, the mean of SE^2 equals the variance of the subset
  mean (its exact value, by enumeration): the estimate is unbiased."""
  subsets = [np.asarray(s) for s in itertools.combinations(population, n)]
  means = np.asarray([s.mean() for s in subsets])
  assert means.mean() == pytest.approx(np.mean(population))   # the mean is unbiased
  exact_variance = np.mean((means - np.mean(population)) ** 2)
  se_squared = [modes.subset_mean_standard_error(s, len(population)) ** 2
                for s in subsets]
  assert np.mean(se_squared) == pytest.approx(exact_variance, rel=1e-12)


def test_subset_standard_error_edge_cases():
  assert modes.subset_mean_standard_error([1.0, 3.0, 8.0], 3) == 0.0   # the census
  # Without the finite-population factor it is the textbook s / sqrt(n).
  values = np.asarray([1.0, 2.0, 4.0, 9.0])
  assert modes.subset_mean_standard_error(values, 10**12) == pytest.approx(
      np.std(values, ddof=1) / 2.0)
  for values, size in (([1.0], 5), ([1.0, 2.0, 3.0], 2)):
    with pytest.raises(ValueError, match="2 <= n <= N"):
      modes.subset_mean_standard_error(values, size)


# ------------------------------------------------------------ random subsets
def test_random_test_subset_is_seeded_distinct_and_in_storage_order():
  config = ddpm_digits.get_config()

  def images(**kwargs):
    out = [b["image"][b["mask"]] for b in datasets.make_eval_batches(
        config.data, split="test", global_batch_size=8, **kwargs)]
    return np.concatenate(out)

  every = images()
  first = images(num_examples=20)
  chosen = images(num_examples=20, random_subset_seed=3)
  np.testing.assert_array_equal(first, every[:20])
  np.testing.assert_array_equal(chosen, images(num_examples=20, random_subset_seed=3))
  assert not np.array_equal(chosen, images(num_examples=20, random_subset_seed=4))
  # The draw itself: 20 distinct positions of the 355, read in storage order.
  positions = np.sort(np.random.default_rng(3).choice(len(every), 20, replace=False))
  assert len(set(positions)) == 20 and positions[-1] > 20
  np.testing.assert_array_equal(chosen, every[positions])


# ------------------------------------------------------------ quick protocol
def test_quick_config_labels_and_bounds():
  config = ddpm_digits.get_config()
  quick = modes.quick_config(config, 355)
  assert quick.test_subset == 75 and quick.config.eval.num_samples == 256
  sampling = quick.config.sampling
  assert (sampling.method, sampling.ddim_steps, sampling.ddim_eta) == ("ddim", 50, 1.0)
  assert config.sampling.method == "ancestral" and config.eval.num_samples == 1024
  assert quick.protocol.startswith("quick: ") and "--mode=eval" in quick.protocol
  for part in ("75 test images drawn at random", "standard error", "256 samples",
               "sampling.method=ddim", "sampling.ddim_steps=50",
               "sampling.ddim_eta=1.0"):
    assert part in quick.protocol
  # The quick counts never exceed the full protocol's.
  config.eval.num_eval_examples, config.eval.num_samples = 30, 40
  quick = modes.quick_config(config, 355)
  assert quick.test_subset == 30 and quick.config.eval.num_samples == 40
  # Without samples (SR3), the label names only the test subset.
  config.eval.sample_metrics, config.training.sample_every_steps = "none", 0
  assert modes.quick_config(config, 355).protocol == (
      "quick: test-set metrics on 30 test images drawn at random (seeded, without "
      "replacement), each with its standard error (<metric>_stderr). Training's "
      "evaluation only; --mode=eval runs the full protocol")
  # Unset: the full protocol, the same config.
  config.eval.quick_num_eval_examples = config.eval.quick_num_samples = None
  config.eval.quick_sampling = ""
  assert modes.quick_config(config, 355) == (config, None, modes.FULL_PROTOCOL)


@pytest.mark.parametrize("field,value,message", [
    ("quick_sampling", "method", "write 'field=value"),
    ("quick_sampling", "nope=1", "nope"),
    ("quick_sampling", "ddim_steps=many", "ddim_steps"),
    ("quick_num_eval_examples", 1, ">= 2"),
    ("quick_num_samples", 0, ">= 1"),
])
def test_quick_config_errors_are_one_line(field, value, message):
  config = ddpm_digits.get_config()
  config.eval[field] = value
  with pytest.raises(UserError, match=message) as error:
    modes.quick_config(config, 355)
  assert "\n" not in str(error.value)


def test_bad_quick_fields_fail_before_training(tmp_path):
  config = ddpm_digits.get_config()
  config.eval.quick_sampling = "method=bogus"     # the family's own check
  with pytest.raises(ValueError, match="sampling.method='bogus'"):
    loop.train_and_evaluate(config, str(tmp_path))
  config.eval.quick_sampling = "ddim_steps=-"     # a value of the wrong type
  with pytest.raises(UserError, match="ddim_steps"):
    loop.train_and_evaluate(config, str(tmp_path))
  assert not list(tmp_path.glob("checkpoints/*"))


def test_digits_configs_quick_samplers_build():
  """ddpm_digits and its :runlocal: the quick sampler is one the family accepts."""
  for arg in (None, "runlocal"):
    config = ddpm_digits.get_config(arg)
    info = datasets.get_dataset_info(config.data)
    quick = modes.quick_config(config, info.num_eval_examples)
    families.build_family(quick.config, info.image_shape, info.num_classes)
    assert quick.protocol != modes.FULL_PROTOCOL


# ------------------------------------------------------------- progress lines
def test_progress_line_format():
  assert progress_line("test-set metrics: examples", 25, 100, 5.0, "examples") == (
      "test-set metrics: examples 25/100  |  5.00 examples/s  |  0m15s left")
  line = loop._progress_line(300, 2500, dict(loss=0.11, steps_per_sec=4.0,
                                             images_per_sec=256.0, steps_in_mean=100))
  assert line == ("step 300/2500  loss 0.11 (mean of steps 201-300, 100)  |  "
                  "4.00 steps/s 256 img/s  |  9m10s left")


# -------------------------------------------------------------- the benchmark
def test_quickstart_phases_from_a_log():
  log = [(10.0, "I] Training ddpm_digits from step 0 to 300: global batch 64"),
         (40.0, "I] step 100/300  loss 0.2 (mean)  |  3.33 steps/s  |  1m00s left"),
         (55.0, "I] sample grid: images 16/64  |  1.00 images/s  |  0m48s left"),
         (60.0, "I] Wrote 64 samples to W/samples/train_step_00000100.png (10.0 s)."),
         (80.0, "I] step 200/300  loss 0.1 (mean)  |  5.00 steps/s  |  0m20s left"),
         (100.0, "I] step 300/300  loss 0.1 (mean)  |  5.00 steps/s  |  0m00s left"),
         (112.0, "I] Wrote 64 samples to W/samples/train_step_00000300.png (12.0 s)."),
         (130.0, "I] test-set metrics: examples 100/100  |  5.56 examples/s  |  0m00s"),
         (150.0, "I] sample metric: images 256/256  (chunk 4/4)  |  13 images/s  |  0m"),
         (151.0, "I] Eval at step 300: bpd_vlb=5.0 -> W/eval/step_00000300.json")]
  timing = quickstart.phases_from_log(log, total=155.0)
  # Steady rate: 200 steps in 60 s less the 10 s grid between progress lines.
  assert timing.steps_per_sec == pytest.approx(4.0) and timing.num_steps == 300
  assert timing.phases == pytest.approx({
      "start-up + compile": 10.0 + (30.0 - 25.0), "training": 90.0 - 5.0 - 10.0,
      "sample grids": 22.0, "test-set bound": 18.0, "sample metric": 21.0,
      "total": 155.0})
  # A run without samples (SR3) or without a bound (GANs) has no such phases.
  timing = quickstart.phases_from_log([log[0], log[1], log[5], log[7], log[9]], 140.0)
  assert timing.phases["sample grids"] is None
  assert timing.phases["sample metric"] is None
  assert timing.phases["test-set bound"] == pytest.approx(30.0)
  with pytest.raises(ValueError, match="no training progress"):
    quickstart.phases_from_log(log[:1], 5.0)


# --------------------------------------------------------------- end to end
def _tiny_quick_config():
  from tests.test_train_loop import tiny_config  # pylint: disable=g-import-not-at-top
  config = tiny_config(4, sample_every_steps=4)
  config.eval.sample_metrics = ""          # the digits classifier's FD and coverage
  config.eval.batch_size = 4               # the bound in batches: progress lines
  config.sampling.batch_size = 2
  config.eval.quick_num_eval_examples = 6
  config.eval.quick_num_samples = 4
  config.eval.quick_sampling = "method=ddim,ddim_steps=3"
  return config


@pytest.mark.integration
def test_training_evaluates_by_the_quick_protocol_and_eval_by_the_full(tmp_path,
                                                                       caplog):
  config = _tiny_quick_config()
  workdir = str(tmp_path / "run")
  with caplog.at_level(logging.INFO):
    loop.train_and_evaluate(config, workdir)
  lines = [r.getMessage() for r in caplog.records]
  report = json.load(open(tmp_path / "run" / "eval" / "step_00000004.json"))
  assert report["evaluation_protocol"].startswith("quick: test-set metrics on 6 test")
  assert report["num_examples"] == 6 and report["num_examples_in_split"] == 355
  assert report["bpd_vlb_stderr"] > 0 and math.isfinite(report["bpd_vlb"])
  sampler = report["protocol"]["sampler"]
  assert report["protocol"]["num_samples"] == 4
  assert (sampler["sampler"], sampler["nfe"], sampler["ddim_steps"]) == ("ddim", 3, 3)
  assert 0 <= report["class_coverage"] <= 1 and report["classifier_fd"] >= 0
  # Every phase prints its progress, in the one format, with the time left.
  # (The sample metric's lines come at most every 10 s, and after its last chunk.)
  for phase, done in (("sample grid: images", ["1/4", "2/4", "3/4", "4/4"]),
                      ("test-set metrics: examples", ["4/6", "6/6"]),
                      ("sample metric: images", ["4/4"])):
    mine = [line for line in lines if line.startswith(phase)]
    counts = [line.split()[len(phase.split())] for line in mine]
    assert counts[-len(done):] == done and len(counts) <= 2 * len(done), mine
    assert all(_LEFT.search(line) for line in mine), mine

  # --mode=eval (what main.py calls) on the same checkpoint: the full protocol.
  full = modes.evaluate(config, workdir)
  assert json.load(open(tmp_path / "run" / "eval" / "step_00000004.json")) == full
  assert full["evaluation_protocol"] == modes.FULL_PROTOCOL
  assert full["num_examples"] == 16 and "num_examples_in_split" not in full
  assert not [k for k in full if k.endswith("_stderr")]
  sampler = full["protocol"]["sampler"]
  assert full["protocol"]["num_samples"] == 6
  assert (sampler["sampler"], sampler["nfe"]) == ("ancestral", 10)
