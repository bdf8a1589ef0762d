"""The read-only modes: eval (the newest checkpoint), eval_watch (every checkpoint, as
training writes them) and sample. They write eval/ and samples/ files only, never a
checkpoint. SIGTERM ends each of them between two batches or sample chunks, with the
chunks kept, and returns (exit 0): run again, they resume from the chunks.

Training may sample and evaluate by a quick protocol, which the config's eval.quick_*
fields set (`quick_config`): its sample grids and end-of-run sample metric with a
faster sampler, fewer samples, and the test-set metrics on a random subset of the
test set with the standard error of each mean. The eval JSON's "evaluation_protocol"
is then "quick: ..." and says which; --mode=eval, eval_watch and sample always run
the full protocol.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import shutil
import time
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

import datasets
from evaluation import reference_stats as reference_lib
from evaluation import sample_chunks
from evaluation import sample_metrics
from evaluation.progress import progress_line
from sampling import common as sampling_common
from sampling import image_io
from train import sharding
from train.run import EVAL, SAMPLE, SAMPLE_EVAL, Run
from train.state import TrainState
from train.user_errors import UserError
from train.workdir_guard import (PreemptionWatcher, exit_on_preemption,
                                 write_text_atomically)


FULL_PROTOCOL = "full"


class QuickProtocol(NamedTuple):
  """What training samples and evaluates by: its config (eval.num_samples and
  config.sampling replaced), the test-subset size (None: as --mode=eval) and the
  protocol's label for the eval JSON."""
  config: ml_collections.ConfigDict
  test_subset: int | None
  protocol: str


def _sampling_overrides(text: str) -> dict[str, Any]:
  """'method=ddim,ddim_steps=50' -> {'sampling.method': 'ddim', 'sampling.ddim_steps':
  50}: each value a Python literal (50, 0.5, True, None) or else a string."""
  overrides = {}
  for item in filter(None, (part.strip() for part in text.split(","))):
    name, equals, value = (part.strip() for part in item.partition("="))
    if not equals or not name:
      raise UserError(f"config.eval.quick_sampling={text!r}: write "
                      f"'field=value,...' (fields of config.sampling), got {item!r}.")
    try:
      overrides[f"sampling.{name}"] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[f"sampling.{name}"] = value
  return overrides


def quick_config(config: ml_collections.ConfigDict,
                      split_size: int | None = None) -> QuickProtocol:
  """The quick protocol of config.eval.quick_* (unset: the full protocol).

  Raises UserError for bad fields (before training: train/loop.py calls it first).
  The quick counts never exceed the full protocol's: eval.num_eval_examples (or
  `split_size`, the eval split's size) and eval.num_samples.
  """
  ev = config.eval
  subset, num_samples = ev.quick_num_eval_examples, ev.quick_num_samples
  overrides = _sampling_overrides(ev.quick_sampling)
  if subset is not None and subset < 2:
    raise UserError(f"config.eval.quick_num_eval_examples={subset} must be >= 2 "
                    "(None: as --mode=eval).")
  if num_samples is not None and num_samples < 1:
    raise UserError(f"config.eval.quick_num_samples={num_samples} must be >= 1.")
  # Never more than the full protocol's (e.g. a small eval.num_eval_examples).
  full_examples = ev.num_eval_examples or split_size
  if subset is not None and full_examples is not None:
    subset = min(subset, full_examples)
  if num_samples is not None:
    num_samples = min(num_samples, ev.num_samples)
  if subset is None and num_samples is None and not overrides:
    return QuickProtocol(config, None, FULL_PROTOCOL)
  quick = config.copy_and_resolve_references()
  quick.lock()   # an unknown field is an error, not a new field
  try:
    quick.update_from_flattened_dict(overrides)
  except (KeyError, TypeError) as error:
    raise UserError(f"config.eval.quick_sampling={ev.quick_sampling!r}: "
                    f"{error}".replace("\n", " ")) from None
  shortcuts = []
  if subset is not None:
    shortcuts.append(f"test-set metrics on {subset} test images drawn at random "
                     "(seeded, without replacement), each with its standard error "
                     "(<metric>_stderr)")
  # The label names only what this run does: SR3 and the like draw no samples.
  metric_samples = _sample_metric_names(config) != ["none"]
  if num_samples is not None:
    quick.eval.num_samples = num_samples
    if metric_samples:
      shortcuts.append(f"{num_samples} samples (eval.num_samples: {ev.num_samples})")
  if overrides and (metric_samples or config.training.sample_every_steps):
    shortcuts.append("sampler " + ", ".join(f"{k}={v}" for k, v in overrides.items()))
  if not shortcuts:
    return QuickProtocol(quick, None, FULL_PROTOCOL)
  protocol = (f"quick: {'; '.join(shortcuts)}. Training's evaluation only; "
              "--mode=eval runs the full protocol")
  return QuickProtocol(quick, subset, protocol)


def evaluate(config: ml_collections.ConfigDict, workdir: str,
             state: TrainState | None = None, *,
             end_of_run: bool = False) -> dict[str, Any] | None:
  """Test-set bits/dim and sample metrics of the newest checkpoint, to workdir/eval/.

  end_of_run: training's evaluation, by the protocol of `quick_config`.
  None if SIGTERM stopped it (its sample chunks are kept for the next run)."""
  with exit_on_preemption("the evaluation") as watcher:
    split_size = datasets.get_dataset_info(config.data).num_eval_examples
    quick = (quick_config(config, split_size) if end_of_run
             else QuickProtocol(config, None, FULL_PROTOCOL))
    run = Run(quick.config, workdir)
    try:
      return evaluate_run(run, state, watcher, test_subset=quick.test_subset,
                          protocol=quick.protocol)
    finally:
      run.close()
  return None


def evaluate_run(run: Run, state: TrainState | None,
                 preemption: PreemptionWatcher | None = None, *,
                 test_subset: int | None = None,
                 protocol: str = FULL_PROTOCOL) -> dict[str, Any]:
  """The evaluation of `state` (None: the newest checkpoint); with `preemption`, SIGTERM
  raises Preempted between two eval batches or sample chunks. test_subset: the
  test-set metrics on that many random test images, with standard errors."""
  config, workdir = run.config, run.workdir
  if state is None:
    state = run.init_or_restore(must_exist=True)
  step = int(state.step)
  params = run.sampling_params(state)
  report = dict(config_name=config.name, step=step, dataset=config.data.dataset,
                split=config.data.eval_split,
                params="ema" if config.sampling.use_ema else "raw",
                evaluation_protocol=protocol)
  results: dict[str, float] = {}
  if run.capabilities.likelihood:    # GANs have none
    likelihood, count = _test_set_metrics(run, params, preemption, test_subset)
    results.update(likelihood)
    report["num_examples"] = count
    if test_subset is not None:
      report["num_examples_in_split"] = run.info.num_eval_examples
  names = _sample_metric_names(config)
  if names != ["none"]:
    values, protocol = _sample_metrics(run, params, step, names or None, preemption)
    results.update(values)
    report["protocol"] = protocol
  report.update(results)
  if run.is_writer:
    path = epath.Path(workdir) / "eval" / f"step_{step:08d}.json"
    write_text_atomically(path, json.dumps(report, indent=2))
    writer = run.make_writer()
    writer.write_scalars(step, {f"eval/{k}": v for k, v in results.items()})
    writer.close()
    logging.info("Eval at step %d: %s -> %s", step,
                 ", ".join(f"{k}={v:.4f}" for k, v in results.items()), path)
  return report


def _fingerprint(settings: dict[str, Any]) -> str:
  """8 hex digits of the settings' SHA-256 (sorted JSON): a name for a sample set."""
  text = json.dumps(settings, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:8]


def _sample_metric_names(config: ml_collections.ConfigDict) -> list[str]:
  return [n.strip() for n in config.eval.sample_metrics.split(",") if n.strip()]


def _sampler(run: Run) -> dict[str, Any]:
  """What decides the samples besides the weights' step: a sample set's name."""
  return dict(run.family.sampler_settings(), seed=int(run.config.seed),
              params="ema" if run.config.sampling.use_ema else "raw")


def _sample_metrics(run: Run, params, step: int, names: list[str] | None,
                    preemption: PreemptionWatcher | None = None
                    ) -> tuple[dict[str, float], dict[str, Any]]:
  """FID / IS / KID / P&R (or the offline classifier metrics, or a 2-D mixture's mode
  coverage) of eval.num_samples samples.

  Samples are written in chunks under eval/samples_step_N_<sampler>/, so an
  interrupted evaluation resumes where it stopped and gives the same samples.
  <sampler> fingerprints the sampler's settings and the weights (EMA or raw): an
  evaluation with another sampler never reuses these samples.
  """
  config, ev = run.config, run.config.eval
  batch_size = run.sample_batch_size(config.sampling.batch_size)
  sampler = _sampler(run)
  directory = os.path.join(run.workdir, "eval",
                           f"samples_step_{step:08d}_{_fingerprint(sampler)}")
  nfes: list[float] = []
  images = sample_chunks.generate_samples_resumable(
      lambda rng, n: run.sample_batch(params, rng, n, nfes),
      jax.random.fold_in(run.root_rng, SAMPLE_EVAL), ev.num_samples, batch_size,
      directory, is_writer=run.is_writer,
      stop=preemption.reached if preemption is not None else None,
      progress_label="sample metric")
  reference = reference_lib.ReferenceSpec.from_data_config(
      config.data, split=ev.reference_split, num_examples=ev.num_reference_examples)
  result = sample_metrics.compute_sample_metrics(
      images, reference=reference, metrics=names, cache_dir=ev.stats_dir,
      inception_weights=ev.inception_weights, classifier_dir=ev.classifier_dir,
      batch_size=ev.feature_batch_size, mesh=run.mesh)
  if nfes:   # samples resumed from disk add no measurement
    sampler["nfe_measured"] = float(np.mean(nfes))
  protocol = dict(result.protocol, sampler=sampler)
  return {k: float(v) for k, v in result.values.items()}, protocol


def evaluate_continuously(config: ml_collections.ConfigDict, workdir: str, *,
                          poll_seconds: float = 60.0, timeout_seconds: float | None = None
                          ) -> list[dict[str, Any]]:
  """Evaluates every checkpoint that has no eval/step_N.json yet, as training writes them.

  Runs beside a training job (another process, possibly another machine sharing the
  workdir) until the checkpoint of step num_train_steps is evaluated, or until
  `timeout_seconds` pass without a new checkpoint. Restarted, it carries on: steps
  already evaluated are skipped, and a half-done sample set resumes from its chunks.
  SIGTERM stops it within one sample chunk (or one second of waiting): it returns the
  reports so far.
  """
  reports: list[dict[str, Any]] = []
  with exit_on_preemption("eval_watch") as watcher:
    _evaluate_continuously(config, workdir, reports, watcher, poll_seconds,
                           timeout_seconds)
  return reports


def _evaluate_continuously(config: ml_collections.ConfigDict, workdir: str,
                           reports: list[dict[str, Any]], preemption: PreemptionWatcher,
                           poll_seconds: float, timeout_seconds: float | None) -> None:
  run = Run(config, workdir)
  idle_since = time.time()
  final = config.training.num_train_steps
  try:
    while True:
      run.checkpointer.reload()
      done = {int(p.name[5:13]) for p in (epath.Path(workdir) / "eval").glob("step_*.json")} \
          if (epath.Path(workdir) / "eval").exists() else set()
      pending = [s for s in run.checkpointer.all_steps() if s not in done]
      for step in pending:
        logging.info("Evaluating checkpoint %d of %s.", step, workdir)
        reports.append(evaluate_run(run, run.init_or_restore(must_exist=True, step=step),
                                    preemption))
        done.add(step)
      if final in done:
        return
      if pending:
        idle_since = time.time()
      elif timeout_seconds is not None and time.time() - idle_since > timeout_seconds:
        logging.info("No new checkpoint in %d s; stopping.", timeout_seconds)
        return
      # In slices, so that SIGTERM is seen within a second; a fixed number of them, so
      # that every process asks the watcher equally often.
      slices = max(1, math.ceil(poll_seconds))
      for _ in range(slices):
        preemption.check("waiting for a new checkpoint.")
        time.sleep(poll_seconds / slices)
  finally:
    run.close()


def subset_mean_standard_error(values: np.ndarray, population_size: int) -> float:
  """Standard error of the mean of `values`, a simple random sample (without
  replacement) of n of a population of N, as an estimate of the population's mean:
  sqrt((1 - n/N) s^2 / n), s^2 the sample variance (n - 1 in the denominator). Its
  square is unbiased for the variance of the sample mean over the draws; 0 at n = N.
  """
  values = np.asarray(values, np.float64)
  n = len(values)
  if not 2 <= n <= population_size:
    raise ValueError(f"A standard error needs 2 <= n <= N, got n={n}, "
                     f"N={population_size}.")
  return float(math.sqrt((1.0 - n / population_size) * np.var(values, ddof=1) / n))


def _test_set_metrics(run: Run, params, preemption: PreemptionWatcher | None = None,
                      test_subset: int | None = None) -> tuple[dict[str, float], int]:
  """Means over the eval split of the family's per-example metrics (e.g. bits/dim).

  test_subset: over that many examples drawn at random (config.seed), each mean with
  its standard error as `<name>_stderr` (`subset_mean_standard_error`)."""
  config, ev = run.config, run.config.eval
  sharding.check_batch_size(ev.batch_size, "eval.batch_size")
  batch_sharding = sharding.batch_sharding(run.mesh)
  eval_fn = jax.jit(run.family.eval_step,
                    in_shardings=(run.replicated, batch_sharding, run.replicated),
                    out_shardings=batch_sharding)
  rng = jax.random.fold_in(run.root_rng, EVAL)
  per_example: dict[str, list[np.ndarray]] = {}
  count, start = 0, time.time()
  num_examples = ev.num_eval_examples if test_subset is None else test_subset
  total = num_examples or run.info.num_eval_examples
  batches = datasets.make_eval_batches(
      config.data, split=config.data.eval_split, global_batch_size=ev.batch_size,
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_examples=num_examples,
      random_subset_seed=None if test_subset is None else config.seed)
  for i, batch in enumerate(batches):
    if preemption is not None:
      preemption.check(f"the test-set metrics stopped at {count}/{total} examples "
                       "(they start again from the first).")
    out = eval_fn(params, sharding.to_global(run.device_batch(batch), batch_sharding),
                  jax.random.fold_in(rng, i))
    out, mask = multihost_utils.process_allgather(
        (out, sharding.to_global(batch["mask"], batch_sharding)), tiled=True)
    mask = np.asarray(mask, bool)
    for name, values in out.items():
      per_example.setdefault(name, []).append(np.asarray(values, np.float64)[mask])
    count += int(mask.sum())
    logging.info(progress_line("test-set metrics: examples", count, total,
                               count / (time.time() - start), "examples"))
  if not count:
    raise ValueError(f"The split {config.data.eval_split!r} of {config.data.dataset!r} "
                     "gave no examples.")
  values = {name: np.concatenate(parts) for name, parts in per_example.items()}
  means = {name: float(np.sum(v) / count) for name, v in values.items()}
  if test_subset is not None:
    for name, v in values.items():
      means[f"{name}_stderr"] = subset_mean_standard_error(v, run.info.num_eval_examples)
  return means, count


# ------------------------------------------------------------------------- sampling
def sample(config: ml_collections.ConfigDict, workdir: str) -> str | None:
  """Writes eval.num_samples samples of the newest checkpoint: .npz (class labels under
  arr_1) + PNG grid (points: a scatter plot), and with config.sampling.png_folder one
  PNG per sample. Returns their folder; None if SIGTERM stopped it (the chunks done
  are kept there, and the next run resumes from them)."""
  with exit_on_preemption("sampling") as watcher:
    run = Run(config, workdir)
    try:
      return _sample(run, watcher)
    finally:
      run.close()
  return None


def _sample(run: Run, preemption: PreemptionWatcher | None = None) -> str:
  config, workdir = run.config, run.workdir
  if config.sampling.png_folder and run.info.kind == "points":
    raise ValueError("config.sampling.png_folder=True writes images; this dataset's "
                     f"samples ({config.data.dataset}) are 2-D points.")
  state = run.init_or_restore(must_exist=True)
  step = int(state.step)
  params = run.sampling_params(state)
  directory = os.path.join(workdir, "samples", f"step_{step:08d}")
  rng = jax.random.fold_in(run.root_rng, SAMPLE)
  chunks = os.path.join(directory, f"chunks_{_fingerprint(_sampler(run))}")
  if "://" in workdir:   # the chunks are local files (evaluation/sample_chunks.py)
    chunks = None
    images = run.sample_images(params, rng, config.eval.num_samples,
                               config.sampling.batch_size, log_progress="samples")
  else:
    # Chunk by chunk (the batches sample_images makes: the same images), so that a
    # preempted run resumes; the chunks go once samples.npz is written.
    nfes: list[float] = []
    images = sample_chunks.generate_samples_resumable(
        lambda rng, n: run.sample_batch(params, rng, n, nfes), rng,
        config.eval.num_samples, run.sample_batch_size(config.sampling.batch_size),
        chunks, is_writer=run.is_writer,
        stop=preemption.reached if preemption is not None else None)
    run.measured_nfe = float(np.mean(nfes)) if nfes else None
  if run.is_writer:
    labels = sample_labels(run.family.num_classes, len(images),
                           run.sample_batch_size(config.sampling.batch_size))
    # Written whole from the images, so a run stopped while writing rewrites the
    # same files from its chunks, which go only once everything is written.
    paths = image_io.save_samples(directory, images, run.provenance(step, "samples"),
                                  run.info, labels=labels,
                                  png_folder=config.sampling.png_folder)
    if chunks is not None:
      shutil.rmtree(chunks, ignore_errors=True)
    logging.info("Wrote %d samples to %s%s%s and a picture of them to %s.",
                 len(images), paths["npz"],
                 "" if labels is None else " (labels: arr_1)",
                 f", {paths['png_folder']}/" if "png_folder" in paths else "",
                 paths["preview"])
  return directory


def sample_labels(num_classes: int, num_samples: int,
                  batch_size: int) -> np.ndarray | None:
  """The labels of `num_samples` samples drawn `batch_size` per `family.sample` call:
  each call cycles through the classes from 0 (train.contract.Family.num_classes)."""
  if not num_classes:
    return None
  batches = math.ceil(num_samples / batch_size)
  per_batch = np.asarray(sampling_common.cycled_labels(batch_size, num_classes))
  return np.tile(per_batch, batches)[:num_samples]
