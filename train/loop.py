"""The one training loop, evaluation and sampling, shared by every family.

The loop knows nothing about a family beyond its pure functions (train/families.py).
Steps are jitted with the TrainState donated and sharded over a 'data' mesh axis;
metrics stay on the device until a log step, so the hot loop never waits on the host.
"""

import datetime
import functools
import json
import logging as std_logging
import math
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers
from etils import epath
from jax.experimental import multihost_utils

import datasets
from configs import default as default_config
from sampling import image_io
from train import families, sharding
from train.checkpoint import Checkpointer, absolute_path, abstract_like
from train.state import TrainState, jit_run_once, leafwise, num_params

# Purposes that keys are folded with: fold_in(PRNGKey(seed), purpose).
INIT, SAMPLE_GRID, EVAL, SAMPLE, SAMPLE_EVAL = 0, 1, 2, 3, 4
EDIT = 5
# What a family's step may read from a batch ("colour"/"position": shapes' caption
# factors, present only for datasets that have them).
DEVICE_KEYS = ("image", "label", "colour", "position")


class NonFiniteLossError(FloatingPointError):
  pass


class _QuietLibraries(std_logging.Filter):
  """Keeps Orbax's per-save INFO chatter out of the progress log (warnings pass)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


_QUIET_LIBRARIES = _QuietLibraries()
logging.get_absl_logger().addFilter(_QUIET_LIBRARIES)


# --------------------------------------------------------------------------- set-up
def validate_config(config: ml_collections.ConfigDict) -> None:
  """Errors a user can cause, raised before anything is compiled."""
  t = config.training
  k = t.steps_per_call
  if k < 1:
    raise ValueError(f"config.training.steps_per_call must be >= 1, got {k}.")
  if t.num_train_steps < 0:
    raise ValueError(f"config.training.num_train_steps must be >= 0, got "
                     f"{t.num_train_steps}.")
  for name in ("num_train_steps", "log_every_steps", "checkpoint_every_steps",
               "sample_every_steps"):
    value = t[name]
    if name != "num_train_steps" and name != "sample_every_steps" and value <= 0:
      raise ValueError(f"config.training.{name} must be > 0, got {value}.")
    if value % k:
      raise ValueError(f"config.training.{name}={value} must be a multiple of "
                       f"config.training.steps_per_call={k}.")
  sharding.check_batch_size(t.batch_size, "training.batch_size")
  sharding.check_batch_size(config.eval.batch_size, "eval.batch_size")


class _Run:
  """What train, eval and sample share: dataset info, family, mesh, checkpoints."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    validate_config(config)
    self.config, self.workdir = config, workdir
    self.info = datasets.get_dataset_info(config.data)
    self.family = families.get_family(config, self.info.image_shape,
                                      self.info.num_classes)
    self.mesh = sharding.make_mesh()
    self.replicated = sharding.replicated(self.mesh)
    self.root_rng = jax.random.PRNGKey(config.seed)
    t = config.training
    self.checkpointer = Checkpointer(
        os.path.join(workdir, "checkpoints"), keep=t.keep_checkpoints,
        keep_every=t.keep_checkpoint_every_steps, async_save=t.async_checkpointing)
    self.is_writer = jax.process_index() == 0
    self.measured_nfe: float | None = None

  def example_batch(self) -> dict[str, np.ndarray]:
    h, w, c = self.info.image_shape
    return dict(image=np.zeros((1, h, w, c), np.uint8), label=np.zeros((1,), np.int32))

  def init_or_restore(self, *, must_exist: bool = False,
                      step: int | None = None) -> TrainState:
    """The newest checkpoint (or `step`) in the workdir, or a freshly initialised state."""
    init_fn = jit_run_once(self.family.init, out_shardings=self.replicated)
    init_rng = jax.random.fold_in(self.root_rng, INIT)
    example = self.example_batch()
    if self.checkpointer.latest_step() is None:
      if must_exist:
        raise FileNotFoundError(
            f"No checkpoint in {self.checkpointer.directory}: train first with "
            f"--mode=train --workdir={self.workdir}.")
      state = init_fn(init_rng, example)
      logging.info("Initialised %s: %s parameters.", self.config.name,
                   f"{num_params(state.params):,}")
      return state
    # Restore straight into the target shardings without running init.
    abstract = jax.eval_shape(init_fn, init_rng, example)
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated),
        abstract.checkpoint_tree())
    tree, meta, step = self.checkpointer.restore(target, step=step)
    logging.info("Restored checkpoint at step %d from %s (%s).", step,
                 self.checkpointer.directory, meta.get("config_name"))
    return abstract.replace_from_checkpoint(tree)

  def sampling_params(self, state: TrainState):
    """What `family.sample` takes: EMA or raw params, or the family's own choice (a GAN
    also needs its generator's batch-norm statistics from `model_state`)."""
    use_ema = self.config.sampling.use_ema
    if hasattr(self.family, "sampling_params"):
      return self.family.sampling_params(state, use_ema=use_ema)
    return state.ema_params if use_ema else state.params

  @functools.cached_property
  def sample_fn(self):
    """`family.sample` compiled once per run (one compilation per batch size).

    Families whose samplers take a data-dependent number of network evaluations
    (adaptive ODE solvers) offer `sample_with_nfe`; its count is kept for provenance.
    """
    images = sharding.batch_sharding(self.mesh)
    if hasattr(self.family, "sample_with_nfe"):
      return jax.jit(self.family.sample_with_nfe, static_argnums=2,
                     out_shardings=(images, self.replicated))
    return jax.jit(self.family.sample, static_argnums=2, out_shardings=images)

  def provenance(self, step: int, purpose: str) -> dict[str, Any]:
    return dict(generated=True, config_name=self.config.name, checkpoint_step=int(step),
                seed=int(self.config.seed), dataset=self.config.data.dataset,
                family=self.config.model.family, purpose=purpose,
                workdir=absolute_path(self.workdir),
                created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                **self.family.sampler_settings(),
                **({"nfe_measured": self.measured_nfe} if self.measured_nfe is not None
                   else {}))

  def make_writer(self) -> metric_writers.MetricWriter:
    """TensorBoard event files from process 0 (the console gets `_progress_line`)."""
    if not self.is_writer:
      return metric_writers.MultiWriter([])
    return metric_writers.AsyncMultiWriter(
        [metric_writers.SummaryWriter(os.path.join(self.workdir, "tensorboard"))])

  def sample_images(self, params, rng: jax.Array, num_samples: int,
                    batch_size: int | None = None, log_progress: bool = False) -> np.ndarray:
    """`num_samples` uint8 NHWC images, generated in sharded batches of `batch_size`."""
    batch_size = batch_size or num_samples
    batch_size = math.ceil(batch_size / jax.device_count()) * jax.device_count()
    fn = self.sample_fn
    chunks, start = [], time.time()
    num_batches = math.ceil(num_samples / batch_size)
    nfes = []
    for i in range(num_batches):
      images = fn(params, jax.random.fold_in(rng, i), batch_size)
      if isinstance(images, tuple):
        images, nfe = images
        nfes.append(float(nfe))
      chunks.append(np.asarray(multihost_utils.process_allgather(images, tiled=True)))
      if log_progress:
        done = (i + 1) * batch_size
        rate = done / (time.time() - start)
        logging.info("Sampled %d/%d images (%.1f images/s, %s left).",
                     min(done, num_samples), num_samples, rate,
                     _format_seconds((num_samples - done) / rate))
    # Network evaluations per sample, as measured (the mean over batches).
    self.measured_nfe = float(np.mean(nfes)) if nfes else None
    return np.concatenate(chunks)[:num_samples]


def _format_seconds(seconds: float) -> str:
  seconds = max(0, int(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _fused_train_step(train_step, steps_per_call: int):
  """`steps_per_call` train steps as one lax.scan over a stacked batch [k, B, ...]."""
  if steps_per_call == 1:
    return train_step

  def multi_step(state, batches):
    return jax.lax.scan(train_step, state, batches)

  return multi_step


_leaf_all_finite = jax.jit(lambda x: jnp.all(jnp.isfinite(x)))


def _all_finite(tree) -> bool:
  """Every entry of every leaf is finite (per leaf on the device: `state.leafwise`)."""
  return all(leafwise(_leaf_all_finite, tree))


# ------------------------------------------------------------------------- training
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains (resuming from the workdir's newest checkpoint), then writes bits/dim.

  SIGTERM (what SLURM and TPU preemption send) makes the run checkpoint the step it
  is at and return without evaluating; the restarted job resumes from there.
  """
  run = _Run(config, workdir)
  check_workdir_config(config, workdir)
  t = config.training
  k = t.steps_per_call
  state = run.init_or_restore()
  start_step = int(state.step)
  batches = datasets.make_train_batches(
      config.data, seed=config.seed, global_batch_size=t.batch_size,
      process_index=jax.process_index(), process_count=jax.process_count())
  batch_sharding = sharding.batch_sharding(run.mesh, leading_axes=int(k > 1))
  step_fn = jax.jit(_fused_train_step(run.family.train_step, k),
                    in_shardings=(run.replicated, batch_sharding),
                    out_shardings=(run.replicated, run.replicated), donate_argnums=0)
  writer = run.make_writer()
  if start_step == 0 and run.is_writer:
    writer.write_hparams(_flatten(config))
  logging.info("Training %s from step %d to %d: global batch %d on %d device(s).",
               config.name, start_step, t.num_train_steps, t.batch_size,
               jax.device_count())

  pending: list[tuple[int, dict]] = []   # (first step, device metrics) not yet read
  iterator = batches.iterate(start_step)
  step, last_log_step, last_log_time = start_step, start_step, time.time()
  preemption = PreemptionWatcher()
  try:
    while step < t.num_train_steps:
      local = [next(iterator) for _ in range(k)]
      local = {key: (np.stack([b[key] for b in local]) if k > 1 else local[0][key])
               for key in DEVICE_KEYS if key in local[0]}
      state, metrics = step_fn(state, sharding.to_global(local, batch_sharding))
      pending.append((step, metrics))
      step += k
      is_last = step >= t.num_train_steps
      if step % t.log_every_steps == 0 or is_last:
        rows = _read_metrics(pending, halt=t.halt_on_nonfinite, run=run)
        pending = []
        now = time.time()
        rate = (step - last_log_step) / max(now - last_log_time, 1e-9)
        last_log_step, last_log_time = step, now
        scalars = {name: float(np.mean([r[name] for r in rows])) for name in rows[0]}
        scalars["steps_per_sec"] = rate
        scalars["images_per_sec"] = rate * t.batch_size
        writer.write_scalars(step, scalars)
        logging.info(_progress_line(step, t.num_train_steps, scalars))
      if step % t.checkpoint_every_steps == 0 or is_last:
        _save_checkpoint(run, state, step, pending)
        pending = []
      if preemption.reached(step):
        if step % t.checkpoint_every_steps and not is_last:
          _save_checkpoint(run, state, step, pending)
        run.checkpointer.wait()
        logging.warning("Preempted (SIGTERM): checkpoint of step %d saved in %s; "
                        "exiting. Restart the same command to resume.", step,
                        run.checkpointer.directory)
        return state
      if t.sample_every_steps and (step % t.sample_every_steps == 0 or is_last):
        sampling_start = time.time()
        _write_sample_grid(run, state, step, writer)
        last_log_time += time.time() - sampling_start   # steps/s counts training only
  finally:
    preemption.close()
    run.checkpointer.wait()
    writer.flush()
  run.checkpointer.close()
  evaluate(config, workdir, state=state)
  return state


def _save_checkpoint(run: _Run, state: TrainState, step: int, pending) -> None:
  """Checks the metrics not yet read and the params for NaN/Inf, then saves."""
  halt = run.config.training.halt_on_nonfinite
  _read_metrics(pending, halt=halt, run=run)
  if halt and not bool(_all_finite(state.params)):
    raise NonFiniteLossError(
        f"Non-finite parameters at step {step}; not checkpointed. "
        f"{_nonfinite_advice(run)}")
  run.checkpointer.save(step, state.checkpoint_tree(),
                        dict(config_name=run.config.name, step=step))


class PreemptionWatcher:
  """Notices SIGTERM; all processes agree on the step at which to stop.

  One process: a Python signal handler sets a flag. Several processes: JAX's
  coordination service hears the signal and `reached_preemption_sync_point` makes
  every process stop at the same step, so that they all join the same checkpoint.
  """

  def __init__(self):
    self._requested = False
    self._previous = None
    self._multi_process = jax.process_count() > 1
    if not self._multi_process and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self._requested = True

  def reached(self, step: int) -> bool:
    if self._multi_process:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._requested

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


# Fields that may change when a run is resumed: how long, how often, where the data
# lives, how it is evaluated and sampled. Anything else changes the experiment.
RESUMABLE_CHANGES = ("name", "data.data_dir", "data.download", "training.num_train_steps",
                     "training.log_every_steps", "training.checkpoint_every_steps",
                     "training.sample_every_steps", "training.num_samples_in_grid",
                     "training.keep_checkpoints", "training.keep_checkpoint_every_steps",
                     "training.async_checkpointing", "training.allow_config_change",
                     "training.halt_on_nonfinite", "sampling.", "eval.",
                     "guidance.weight")


def check_workdir_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume a workdir written by a different config (unless allowed).

  The first run writes workdir/config.json; later runs compare against it.
  """
  path = epath.Path(workdir) / "config.json"
  current = {k: _jsonable(v) for k, v in _flatten(config).items()}
  if path.exists():
    saved = json.loads(path.read_text())
    # A field added to the code after the run started, at its default value, changes
    # nothing: new fields' defaults keep the earlier behaviour.
    defaults = {k: _jsonable(v) for k, v in _flatten(default_config.get_config()).items()}
    changed = sorted(
        key for key in set(saved) | set(current)
        if saved.get(key) != current.get(key)
        and not (key not in saved and key in defaults and current[key] == defaults[key])
        and not any(key == c or (c.endswith(".") and key.startswith(c))
                    for c in RESUMABLE_CHANGES))
    if changed and not config.training.allow_config_change:
      diffs = "; ".join(f"{key}: {saved.get(key)!r} -> {current.get(key)!r}"
                        for key in changed)
      raise ValueError(
          f"{workdir} holds a run of a different config ({diffs}). Use a new --workdir, "
          "or pass --config.training.allow_config_change=True to resume anyway.")
    if not changed:
      return
  if jax.process_index() == 0:
    _write_text_atomically(path, json.dumps(current, indent=2, sort_keys=True))


def _write_text_atomically(path: epath.Path, text: str) -> None:
  """Writes beside `path`, then renames: a reader never sees half a file."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(text)
  tmp.replace(path)


def _jsonable(value):
  return list(value) if isinstance(value, tuple) else value


def _progress_line(step: int, num_steps: int, scalars: dict[str, float]) -> str:
  rate = scalars["steps_per_sec"]
  names = sorted(set(scalars) - {"steps_per_sec", "images_per_sec"},
                 key=lambda k: (k != "loss", k))
  values = "  ".join(f"{k} {scalars[k]:.4g}" for k in names)
  return (f"step {step}/{num_steps}  {values}  |  {rate:.2f} steps/s "
          f"{scalars['images_per_sec']:.0f} img/s  |  "
          f"{_format_seconds((num_steps - step) / max(rate, 1e-9))} left")


def _read_metrics(pending, *, halt: bool, run: _Run) -> list[dict[str, float]]:
  """Brings pending metrics to the host (one transfer) and checks them for NaN/Inf."""
  rows = []
  for first_step, metrics in jax.device_get(pending):
    metrics = {name: np.atleast_1d(v) for name, v in metrics.items()}
    for i in range(len(metrics["loss"])):
      row = {name: float(v[i]) for name, v in metrics.items()}
      if halt and not math.isfinite(row["loss"]):
        raise NonFiniteLossError(
            f"The loss is {row['loss']} at step {first_step + i + 1}: training stopped "
            f"and these weights were not checkpointed. {_nonfinite_advice(run)}")
      rows.append(row)
  return rows


def _nonfinite_advice(run: _Run) -> str:
  last = run.checkpointer.latest_step()
  where = (f"The newest good checkpoint is step {last} in {run.checkpointer.directory}"
           if last is not None else "No checkpoint was written yet")
  return (f"{where}. Lower config.optim.learning_rate, keep "
          "config.optim.grad_clip_norm > 0, or check the input data.")


def _write_sample_grid(run: _Run, state: TrainState, step: int, writer) -> None:
  n = run.config.training.num_samples_in_grid
  start = time.time()
  images = run.sample_images(run.sampling_params(state),
                             jax.random.fold_in(jax.random.fold_in(run.root_rng,
                                                                   SAMPLE_GRID), step), n)
  grid = image_io.make_grid(images)
  if run.is_writer:
    path = os.path.join(run.workdir, "samples", f"train_step_{step:08d}.png")
    image_io.save_png(path, image_io.upscale(grid), run.provenance(step, "train_grid"))
    writer.write_images(step, {"samples": grid[None]})
    logging.info("Wrote %d samples to %s (%.1f s).", n, path, time.time() - start)
  if hasattr(run.family, "image_grids"):   # e.g. a VAE's reconstructions/interpolations
    _write_family_grids(run, state, step, writer)


def _write_family_grids(run: _Run, state: TrainState, step: int, writer) -> None:
  """Grids a family makes from real test images (reconstructions, interpolations)."""
  n = max(2, min(16, run.config.training.num_samples_in_grid))
  batch = next(iter(datasets.make_eval_batches(
      run.config.data, split=run.config.data.eval_split, global_batch_size=n,
      num_examples=n)))
  grids = run.family.image_grids(run.sampling_params(state), batch["image"],
                                 jax.random.fold_in(jax.random.fold_in(
                                     run.root_rng, SAMPLE_GRID), step))
  if run.is_writer:
    for name, grid in grids.items():
      grid = np.asarray(grid)
      image_io.save_png(os.path.join(run.workdir, "samples", f"{name}_{step:08d}.png"),
                        image_io.upscale(grid), run.provenance(step, name))
      writer.write_images(step, {name: grid[None]})


# ----------------------------------------------------------------------- evaluation
def evaluate(config: ml_collections.ConfigDict, workdir: str,
             state: TrainState | None = None) -> dict[str, Any]:
  """Test-set bits/dim of the newest checkpoint, written to workdir/eval/."""
  run = _Run(config, workdir)
  try:
    return _evaluate(run, state)
  finally:
    run.checkpointer.close()


def _evaluate(run: _Run, state: TrainState | None) -> dict[str, Any]:
  config, workdir = run.config, run.workdir
  if state is None:
    state = run.init_or_restore(must_exist=True)
  step = int(state.step)
  params = run.sampling_params(state)
  report = dict(config_name=config.name, step=step, dataset=config.data.dataset,
                split=config.data.eval_split,
                params="ema" if config.sampling.use_ema else "raw")
  results: dict[str, float] = {}
  if hasattr(run.family, "eval_step"):    # GANs have no likelihood
    likelihood, count = _test_set_metrics(run, params)
    results.update(likelihood)
    report["num_examples"] = count
  names = _sample_metric_names(config)
  if names != ["none"]:
    values, protocol = _sample_metrics(run, params, step, names or None)
    results.update(values)
    report["protocol"] = protocol
  report.update(results)
  if run.is_writer:
    path = epath.Path(workdir) / "eval" / f"step_{step:08d}.json"
    _write_text_atomically(path, json.dumps(report, indent=2))
    writer = run.make_writer()
    writer.write_scalars(step, {f"eval/{k}": v for k, v in results.items()})
    writer.flush()
    logging.info("Eval at step %d: %s -> %s", step,
                 ", ".join(f"{k}={v:.4f}" for k, v in results.items()), path)
  return report


def _sample_metric_names(config: ml_collections.ConfigDict) -> list[str]:
  return [n.strip() for n in config.eval.sample_metrics.split(",") if n.strip()]


def _sample_metrics(run: _Run, params, step: int,
                    names: list[str] | None) -> tuple[dict[str, float], dict[str, Any]]:
  """FID / IS / KID / P&R (or the offline classifier metrics) of eval.num_samples samples.

  Samples are written in chunks under eval/samples_step_N/, so an interrupted
  evaluation resumes where it stopped and gives the same samples.
  """
  from evaluation import sample_metrics  # pylint: disable=g-import-not-at-top
  config, ev = run.config, run.config.eval
  batch_size = math.ceil(config.sampling.batch_size / jax.device_count()) * \
      jax.device_count()

  nfes = []

  def sample_fn(rng, n):
    images = run.sample_fn(params, rng, n)
    if isinstance(images, tuple):
      images, nfe = images
      nfes.append(float(nfe))
    return np.asarray(multihost_utils.process_allgather(images, tiled=True))

  images = sample_metrics.generate_samples_resumable(
      sample_fn, jax.random.fold_in(run.root_rng, SAMPLE_EVAL), ev.num_samples,
      batch_size, os.path.join(run.workdir, "eval", f"samples_step_{step:08d}"),
      is_writer=run.is_writer)
  reference = sample_metrics.ReferenceSpec.from_data_config(
      config.data, split=ev.reference_split, num_examples=ev.num_reference_examples)
  result = sample_metrics.compute_sample_metrics(
      images, reference=reference, metrics=names, cache_dir=ev.stats_dir,
      inception_weights=ev.inception_weights, classifier_dir=ev.classifier_dir,
      batch_size=ev.feature_batch_size, mesh=run.mesh)
  sampler = dict(run.family.sampler_settings(), seed=int(config.seed),
                 params="ema" if config.sampling.use_ema else "raw")
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
  """
  run = _Run(config, workdir)
  reports, idle_since = [], time.time()
  final = config.training.num_train_steps
  try:
    while True:
      run.checkpointer.reload()
      done = {int(p.name[5:13]) for p in (epath.Path(workdir) / "eval").glob("step_*.json")} \
          if (epath.Path(workdir) / "eval").exists() else set()
      pending = [s for s in run.checkpointer.all_steps() if s not in done]
      for step in pending:
        logging.info("Evaluating checkpoint %d of %s.", step, workdir)
        reports.append(_evaluate(run, run.init_or_restore(must_exist=True, step=step)))
        done.add(step)
      if final in done:
        return reports
      if pending:
        idle_since = time.time()
      elif timeout_seconds is not None and time.time() - idle_since > timeout_seconds:
        logging.info("No new checkpoint in %d s; stopping.", timeout_seconds)
        return reports
      time.sleep(poll_seconds)
  finally:
    run.checkpointer.close()


def _test_set_metrics(run: _Run, params) -> tuple[dict[str, float], int]:
  """Means over the eval split of the family's per-example metrics (e.g. bits/dim)."""
  config, ev = run.config, run.config.eval
  sharding.check_batch_size(ev.batch_size, "eval.batch_size")
  batch_sharding = sharding.batch_sharding(run.mesh)
  eval_fn = jax.jit(run.family.eval_step,
                    in_shardings=(run.replicated, batch_sharding, run.replicated),
                    out_shardings=batch_sharding)
  rng = jax.random.fold_in(run.root_rng, EVAL)
  sums: dict[str, float] = {}
  count, start = 0, time.time()
  total = ev.num_eval_examples or run.info.num_eval_examples
  batches = datasets.make_eval_batches(
      config.data, split=config.data.eval_split, global_batch_size=ev.batch_size,
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_examples=ev.num_eval_examples)
  for i, batch in enumerate(batches):
    out = eval_fn(params, sharding.to_global({k: batch[k] for k in DEVICE_KEYS if k in batch},
                                             batch_sharding), jax.random.fold_in(rng, i))
    out, mask = multihost_utils.process_allgather(
        (out, sharding.to_global(batch["mask"], batch_sharding)), tiled=True)
    mask = np.asarray(mask, bool)
    for name, values in out.items():
      sums[name] = sums.get(name, 0.0) + float(np.sum(np.asarray(values, np.float64)[mask]))
    count += int(mask.sum())
    rate = count / (time.time() - start)
    logging.info("Evaluated %d/%d examples (%.1f examples/s, %s left).", count, total,
                 rate, _format_seconds((total - count) / max(rate, 1e-9)))
  if not count:
    raise ValueError(f"The split {config.data.eval_split!r} of {config.data.dataset!r} "
                     "gave no examples.")
  return {name: value / count for name, value in sums.items()}, count


# ------------------------------------------------------------------------- sampling
def sample(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes eval.num_samples samples of the newest checkpoint: .npz + PNG grid."""
  run = _Run(config, workdir)
  try:
    return _sample(run)
  finally:
    run.checkpointer.close()


def _sample(run: _Run) -> str:
  config, workdir = run.config, run.workdir
  state = run.init_or_restore(must_exist=True)
  step = int(state.step)
  images = run.sample_images(run.sampling_params(state),
                             jax.random.fold_in(run.root_rng, SAMPLE),
                             config.eval.num_samples, config.sampling.batch_size,
                             log_progress=True)
  directory = os.path.join(workdir, "samples", f"step_{step:08d}")
  if run.is_writer:
    paths = image_io.save_samples(directory, images, run.provenance(step, "samples"))
    logging.info("Wrote %d samples to %s and a grid to %s.", len(images), paths["npz"],
                 paths["grid"])
  return directory


def _flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) \
          else str(value)
  return flat
