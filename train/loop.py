"""The one training loop, shared by every family.

The loop knows a family only through its contract (train/contract.py) and a dataset
only through its declared batch keys. Steps are jitted with the TrainState donated and
sharded over a 'data' mesh axis; metrics stay on the device until a log step, so the
hot loop never waits on the host.
"""

import logging as std_logging
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

import datasets
from evaluation.progress import progress_line
from sampling import image_io
from train import modes, sharding, workdir_lock
from train.run import SAMPLE_GRID, Run
from train.state import TrainState, leafwise
from train.workdir_guard import (PreemptionWatcher, check_workdir_config, flatten_config,
                                 preemption_scope, write_workdir_config)


class NonFiniteLossError(FloatingPointError):
  pass


class _QuietLibraries(std_logging.Filter):
  """Keeps Orbax's per-save INFO chatter out of the progress log (warnings pass)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


_QUIET_LIBRARIES = _QuietLibraries()
_GRID_BATCHES = 4   # a sample grid is drawn in this many batches
logging.get_absl_logger().addFilter(_QUIET_LIBRARIES)


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


class _ProfileWindow:
  """A jax.profiler trace of the steps (start, start + num] into workdir/profile/.

  Started and stopped between compiled calls, so steps stay asynchronous; the one
  host sync is at the window's end, so that the trace holds its steps' device work.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.start = config.logging.profile_start_step
    self.stop = self.start + config.logging.profile_num_steps
    self.directory = os.path.join(workdir, "profile")
    self.active = False

  def before_call(self, step: int) -> None:
    if not self.active and self.start <= step < self.stop:
      jax.profiler.start_trace(self.directory)
      self.active, self.first = True, step + 1

  def after_call(self, step: int, state) -> None:
    if self.active and step >= self.stop:
      jax.block_until_ready(state)
      self.end(step)

  def end(self, step: int) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
      logging.info("Wrote a profile of steps %d-%d to %s.", self.first, step,
                   self.directory)


# ------------------------------------------------------------------------- training
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       defaults: ml_collections.ConfigDict | None = None) -> TrainState:
  """Trains (resuming from the workdir's newest checkpoint), then writes bits/dim.

  `defaults` (the family's base config) lets a run resume after a field was added to
  the code at its default value (train/workdir_guard.py).

  SIGTERM (what SLURM and TPU preemption send) makes the run checkpoint the step it
  is at and return without evaluating; the restarted job resumes from there. SIGTERM
  during the final evaluation keeps its sample chunks and returns; the restarted job
  evaluates again from them (train/modes.py).
  """
  with preemption_scope() as preemption:   # one handler, training through evaluation
    return _train_and_evaluate(config, workdir, defaults, preemption)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        defaults: ml_collections.ConfigDict | None,
                        preemption: PreemptionWatcher) -> TrainState:
  # Training samples (its grids) by the quick protocol's sampler, if there is one
  # (config.eval.quick_*; its fields are checked here, before anything compiles).
  run = Run(modes.quick_config(config, datasets.get_dataset_info(
      config.data).num_eval_examples).config, workdir)
  rewrite_config = check_workdir_config(config, workdir, defaults, write=False)
  t = config.training
  k = t.steps_per_call
  state = run.init_or_restore()
  if rewrite_config:   # only once the resume succeeded
    write_workdir_config(config, workdir)
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
    writer.write_hparams(flatten_config(config))
  logging.info("Training %s from step %d to %d: global batch %d on %d device(s).",
               config.name, start_step, t.num_train_steps, t.batch_size,
               jax.device_count())

  pending: list[tuple[int, dict]] = []   # (first step, device metrics) not yet read
  # The pipeline's position is the step (no iterator state in checkpoints); k steps
  # come stacked, and are put on the devices in a thread ahead of their call.
  iterator = batches.iterate(start_step, steps_per_call=k, put=lambda local: (
      sharding.to_global({key: local[key] for key in run.info.batch_keys},
                         batch_sharding)))
  step, last_log_step, last_log_time = start_step, start_step, time.time()
  profile = _ProfileWindow(config, workdir)
  try:
    while step < t.num_train_steps:
      batch = next(iterator)
      profile.before_call(step)
      state, metrics = step_fn(state, batch)
      pending.append((step, metrics))
      step += k
      profile.after_call(step, state)
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
        scalars["steps_in_mean"] = len(rows)   # fewer after a resume: said, not hidden
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
    iterator.close()
    profile.end(step)
    run.checkpointer.wait()
    writer.close()   # W&B's run is finished; the final evaluation resumes it
  run.close()
  # eval/ has its own writer lock: wait while an eval_watch beside this run holds it.
  with workdir_lock.acquire(workdir, "eval", wait=True):
    modes.evaluate(config, workdir, state=state, end_of_run=True)
  return state


def _save_checkpoint(run: Run, state: TrainState, step: int, pending) -> None:
  """Checks the metrics not yet read and the params for NaN/Inf, then saves."""
  halt = run.config.training.halt_on_nonfinite
  _read_metrics(pending, halt=halt, run=run)
  if halt and not bool(_all_finite(state.params)):
    raise NonFiniteLossError(
        f"Non-finite parameters at step {step}; not checkpointed. "
        f"{_nonfinite_advice(run)}")
  run.checkpointer.save(step, state.checkpoint_tree(),
                        dict(config_name=run.config.name, step=step))


def _progress_line(step: int, num_steps: int, scalars: dict[str, float]) -> str:
  rate, n = scalars["steps_per_sec"], int(scalars["steps_in_mean"])
  names = sorted(set(scalars) - {"steps_per_sec", "images_per_sec", "steps_in_mean"},
                 key=lambda k: (k != "loss", k))
  values = "  ".join(f"{k} {scalars[k]:.4g}" for k in names)
  covered = f"(mean of steps {step - n + 1}-{step}, {n})" if n > 1 else f"(step {step})"
  return progress_line("step", step, num_steps, rate, "steps", f"{values} {covered}",
                       f" {scalars['images_per_sec']:.0f} img/s")


def _read_metrics(pending, *, halt: bool, run: Run) -> list[dict[str, float]]:
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


def _nonfinite_advice(run: Run) -> str:
  last = run.checkpointer.latest_step()
  where = (f"The newest good checkpoint is step {last} in {run.checkpointer.directory}"
           if last is not None else "No checkpoint was written yet")
  return (f"{where}. Lower config.optim.learning_rate, keep "
          "config.optim.grad_clip_norm > 0, or check the input data.")


def _write_sample_grid(run: Run, state: TrainState, step: int, writer) -> None:
  n = run.config.training.num_samples_in_grid
  start = time.time()
  rng = jax.random.fold_in(jax.random.fold_in(run.root_rng, SAMPLE_GRID), step)
  # In a few batches, for a progress line after each.
  images = run.sample_images(run.sampling_params(state), rng, n,
                             math.ceil(n / _GRID_BATCHES), log_progress="sample grid")
  grid = image_io.preview(images, run.info)   # a grid, or a scatter plot of points
  if run.is_writer:
    path = os.path.join(run.workdir, "samples", f"train_step_{step:08d}.png")
    image_io.save_png(path, image_io.upscale(grid), run.provenance(step, "train_grid"))
    writer.write_images(step, {"samples": grid[None]})
    logging.info("Wrote %d samples to %s (%.1f s).", n, path, time.time() - start)
  if run.capabilities.image_grids:   # e.g. a VAE's reconstructions/interpolations
    _write_family_grids(run, state, step, writer)


def _write_family_grids(run: Run, state: TrainState, step: int, writer) -> None:
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
