"""The workdir guard: config drift, atomic writes and preemption.

A workdir belongs to one experiment: its first run writes workdir/config.json and later
runs are compared with it. Files other processes read are written atomically. SIGTERM
(SLURM, TPU preemption) is noticed by every process at the same step.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from evaluation import sample_chunks


class Preempted(Exception):
  """A phase stopped on SIGTERM after saving what it had; the message says what."""


class PreemptionWatcher:
  """Notices SIGTERM; all processes agree on the point at which to stop.

  One process: a Python signal handler sets a flag. Several processes: JAX's
  coordination service hears the signal and `reached_preemption_sync_point` makes
  every process stop at the same point (a training step, then the same evaluation
  batch or sample chunk), so that they all join the same save.
  """

  def __init__(self):
    self._requested = False
    self._previous = None
    self._sync_id = -1   # ids for the sync points: increasing, the same on every process
    self._multi_process = jax.process_count() > 1
    if not self._multi_process and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self._requested = True   # no logging here: the handler may interrupt a log call

  def reached(self, step: int | None = None) -> bool:
    """True once SIGTERM came (every process: at the same call). `step`: the training
    step; calls without one (evaluation, sampling) count on from the last."""
    self._sync_id = self._sync_id + 1 if step is None else step
    if self._multi_process:
      return multihost_utils.reached_preemption_sync_point(self._sync_id)
    return self._requested

  def check(self, what: str = "") -> None:
    """Raises Preempted (naming `what` was saved) once SIGTERM came."""
    if self.reached():
      raise Preempted(what or "stopped between two units of work.")

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


_WATCHER: PreemptionWatcher | None = None
_DEPTH = 0


@contextlib.contextmanager
def preemption_scope() -> Iterator[PreemptionWatcher]:
  """The process's one watcher, installed by the outermost scope and removed when it
  ends: SIGTERM stays noticed from training into the final evaluation."""
  global _WATCHER, _DEPTH
  if _WATCHER is None:
    _WATCHER = PreemptionWatcher()
  _DEPTH += 1
  try:
    yield _WATCHER
  finally:
    _DEPTH -= 1
    if not _DEPTH:
      _WATCHER.close()
      _WATCHER = None


def check_preemption(what: str = "") -> None:
  """Raises Preempted once SIGTERM came, under a preemption_scope (else nothing)."""
  if _WATCHER is not None:
    _WATCHER.check(what)


@contextlib.contextmanager
def exit_on_preemption(phase: str) -> Iterator[PreemptionWatcher]:
  """A phase (evaluation, sampling, an edit) under the process's watcher: SIGTERM
  ends it at its next check with a warning instead of an error, so the command exits
  0 and the job can be requeued; what was saved (sample chunks) is resumed then."""
  with preemption_scope() as watcher:
    try:
      yield watcher
    except (Preempted, sample_chunks.Stopped) as stopped:
      logging.warning("Preempted (SIGTERM) during %s: %s Exiting; restart the same "
                      "command to resume.", phase, stopped)


# Fields that may change when a run is resumed: how long, how often, where the data
# lives, how it is evaluated, sampled and logged, which checkpoint a read-only mode
# reads. Anything else changes the experiment.
RESUMABLE_CHANGES = ("name", "data.data_dir", "data.download", "training.num_train_steps",
                     "training.log_every_steps", "training.checkpoint_every_steps",
                     "training.sample_every_steps", "training.num_samples_in_grid",
                     "training.keep_checkpoints", "training.keep_checkpoint_every_steps",
                     "training.async_checkpointing", "training.allow_config_change",
                     "training.halt_on_nonfinite", "sampling.", "eval.", "checkpoint.",
                     "logging.", "guidance.weight")


def _changed_fields(config: ml_collections.ConfigDict, saved: dict[str, Any],
                    defaults: ml_collections.ConfigDict | None,
                    missing_ok: bool = False) -> list[str]:
  """Fields that change the experiment, where `config` differs from `saved`."""
  current = {k: jsonable(v) for k, v in flatten_config(config).items()}
  base = {} if defaults is None else {
      k: jsonable(v) for k, v in flatten_config(defaults).items()}
  return sorted(
      key for key in set(saved) | set(current)
      if key in current and saved.get(key) != current[key]
      and not (key not in saved and (missing_ok or (key in base
                                                    and current[key] == base[key])))
      and not any(key == c or (c.endswith(".") and key.startswith(c))
                  for c in RESUMABLE_CHANGES))


def _diffs(config: ml_collections.ConfigDict, saved: dict[str, Any],
           changed: list[str]) -> str:
  current = flatten_config(config)
  return "; ".join(f"{key}: {saved.get(key)!r} -> {jsonable(current.get(key))!r}"
                   for key in changed)


def check_workdir_config(config: ml_collections.ConfigDict, workdir: str,
                         defaults: ml_collections.ConfigDict | None = None, *,
                         write: bool = True) -> bool:
  """Refuses to resume a workdir written by a different config (unless allowed).

  The first run writes workdir/config.json; later runs compare against it. Two
  differences change nothing and pass: a field the saved run lacks that is at its
  value in `defaults` (the family's base config: a field added to the code after the
  run started keeps the earlier behaviour), and a field the current config no longer
  has (a field removed from the code: nothing reads it). Returns whether config.json
  is (to be) written: write=False leaves that to `write_workdir_config`, which
  training calls once the resume succeeded, so that a failed attempt with
  allow_config_change keeps the original.
  """
  path = epath.Path(workdir) / "config.json"
  if path.exists():
    saved = json.loads(path.read_text())
    changed = _changed_fields(config, saved, defaults)
    if changed and not config.training.allow_config_change:
      raise ValueError(
          f"{workdir} holds a run of a different config "
          f"({_diffs(config, saved, changed)}). Use a new --workdir, or pass "
          "--config.training.allow_config_change=True to resume anyway.")
    if not changed:
      return False
  if write:
    write_workdir_config(config, workdir)
  return True


def write_workdir_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes workdir/config.json (process 0)."""
  if jax.process_index() == 0:
    current = {k: jsonable(v) for k, v in flatten_config(config).items()}
    write_text_atomically(epath.Path(workdir) / "config.json",
                          json.dumps(current, indent=2, sort_keys=True))


def check_read_only_config(config: ml_collections.ConfigDict,
                           workdir: str) -> list[str]:
  """What eval, sample and edit check before restoring: the workdir's config.json.

  Fields that change the experiment (the model's shapes among them) and differ stop
  the mode, named, unless config.training.allow_config_change; then they are returned
  (for the restore's error message). Fields config.json lacks are not compared (added
  to the code later: the restore itself tells whether the shapes still match). A
  workdir without config.json passes. Nothing is written.
  """
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    return []
  saved = json.loads(path.read_text())
  changed = _changed_fields(config, saved, None, missing_ok=True)
  if changed and not config.training.allow_config_change:
    raise ValueError(
        f"This config differs from the one {workdir} was trained with (its "
        f"config.json) in {_diffs(config, saved, changed)}; its checkpoints hold that "
        "run's parameters. Pass the same config (and overrides) as the training run, "
        "or --config.training.allow_config_change=True to try anyway.")
  return changed


def write_text_atomically(path: epath.Path, text: str) -> None:
  """Writes beside `path`, then renames: a reader never sees half a file."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(text)
  tmp.replace(path)


def jsonable(value):
  return list(value) if isinstance(value, tuple) else value


def flatten_config(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      flat.update(flatten_config(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) \
          else str(value)
  return flat
