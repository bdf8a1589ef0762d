"""Orbax checkpointing of the TrainState: async saves, retention, automatic resume."""

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from train import user_errors
from train.state import leafwise


class CheckpointCorruptError(IOError):
  pass


class CheckpointUnreadableError(ValueError):
  """A read-only mode's step cannot be read: reported, never moved; the user chooses."""


class CheckpointShapeError(ValueError):
  """The checkpoint holds arrays of other shapes than the config makes: not damage."""


def one_line(error: BaseException, limit: int = 300) -> str:
  """An exception as one short line (Orbax's messages run over many)."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  text = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
  return text if len(text) <= limit else text[:limit - 3] + "..."


def absolute_path(path: str) -> str:
  """A local path made absolute; a URL such as gs://bucket/run is kept as it is."""
  return path if "://" in path else os.path.abspath(path)


@jax.jit
def _leaf_fingerprint(x: jax.Array) -> jax.Array:
  """A position-weighted uint32 sum of one array's raw bits."""
  if x.dtype.itemsize in (4, 8):
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  elif x.dtype.itemsize == 2:
    bits = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
  else:
    bits = x.astype(jnp.uint8).astype(jnp.uint32)
  bits = bits.reshape(-1)
  weights = (jnp.arange(bits.size, dtype=jnp.uint32) % 65521) * 2 + 1
  return jnp.sum(bits * weights, dtype=jnp.uint32)


def fingerprint(tree: Any) -> list[int]:
  """A uint32 checksum per leaf: a position-weighted sum of the leaf's raw bits.

  Orbax stores array chunks without a checksum, so flipped bits in a data file would
  restore as wrong numbers; these fingerprints, saved beside the arrays and checked
  after every restore, catch that. Computed on the device (`state.leafwise`):
  nothing but the sums is copied.
  """
  return [int(v) for v in leafwise(_leaf_fingerprint, tree)]


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """'params/conv_in/kernel' -> shape; namedtuple fields are named like dict keys."""
  def name(entry) -> str:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        return str(getattr(entry, attr))
    return str(entry)
  return {"/".join(name(e) for e in path): tuple(getattr(leaf, "shape", None) or ())
          for path, leaf in jax.tree_util.tree_leaves_with_path(
              tree, is_leaf=lambda x: hasattr(x, "shape"))}


class Checkpointer:
  """Saves and restores `TrainState.checkpoint_tree()` plus a small JSON of metadata.

  Keeps the last `keep` checkpoints plus every step that is a multiple of
  `keep_every` (0: none). Orbax writes each step to a temporary directory and renames
  it when complete, so a save cut short by a crash is never taken for a checkpoint;
  a per-leaf fingerprint catches data files damaged after the fact.
  """

  def __init__(self, directory: str, *, keep: int = 3, keep_every: int = 0,
               async_save: bool = True):
    # Orbax's preservation policies (max_to_keep/keep_period are deprecated): a step
    # survives if any policy keeps it.
    policies = [ocp.checkpoint_managers.LatestN(n=keep)]
    if keep_every:
      policies.append(ocp.checkpoint_managers.EveryNSteps(interval_steps=keep_every))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save, create=True)
    self.directory = absolute_path(directory)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, tree: Any, metadata: dict[str, Any]) -> None:
    """Saves `step` (asynchronously if so made); a full disk, here or in the save
    before it, raises a one-line UserError naming the step kept."""
    sums = fingerprint(tree)
    self._saving = step
    try:
      saved = self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(metadata),
          fingerprint=ocp.args.JsonSave(dict(leaf_sums=sums))))
    except Exception as error:  # pylint: disable=broad-except
      if not user_errors.is_disk_full(error):
        raise
      raise user_errors.disk_full_error(self.directory, step, error) from error
    if not saved:
      raise RuntimeError(
          f"Checkpoint for step {step} was not written to {self.directory} (its newest "
          f"step is {self.latest_step()}); another run may be writing to this workdir.")

  def _restore_step(self, step: int, abstract_tree: Any) -> tuple[Any, dict]:
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_tree), meta=ocp.args.JsonRestore()))
    tree, meta = restored["state"], dict(restored["meta"] or {})
    if (epath.Path(self.directory) / str(step) / "fingerprint").is_dir():
      expected = self._manager.restore(step, args=ocp.args.Composite(
          fingerprint=ocp.args.JsonRestore()))["fingerprint"]["leaf_sums"]
      actual = fingerprint(tree)
      if actual != expected:
        bad = [i for i, (a, e) in enumerate(zip(actual, expected)) if a != e]
        raise CheckpointCorruptError(
            f"step {step}: {len(bad)} array(s) differ from their saved fingerprint "
            f"(leaves {bad[:10]}); the data files were damaged after saving.")
    return tree, meta

  def restore(self, abstract_tree: Any, step: int | None = None, *,
              read_only: bool = False) -> tuple[Any, dict, int]:
    """Restores `step` (default: the newest readable one) into `abstract_tree`'s layout.

    `abstract_tree` holds jax.ShapeDtypeStruct leaves carrying the target shardings.
    Training (read_only=False): an unreadable newest checkpoint is reported, moved
    aside to `<step>.unreadable-*` (so that the resumed run can save that step again)
    and the next older one is used; if none can be read, this raises. Eval, sample
    and edit (read_only=True) read `step` or the newest only and change nothing: an
    unreadable one raises CheckpointUnreadableError naming the step and the reason.
    """
    steps = [step] if step is not None else self.all_steps()[::-1]
    if not steps:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    if read_only and steps[0] not in self.all_steps():
      raise CheckpointUnreadableError(
          f"No checkpoint of step {steps[0]} in {self.directory}; its steps are "
          f"{self.all_steps()}.")
    # Other shapes than the config makes are a config mismatch, not damage: nothing
    # is moved aside for them, in any mode.
    mismatched = self.shape_mismatches(steps[0], abstract_tree)
    if mismatched:
      raise CheckpointShapeError(
          f"The checkpoint of step {steps[0]} in {self.directory} holds arrays of "
          f"other shapes than this config makes ({'; '.join(mismatched[:5])}"
          f"{'; ...' if len(mismatched) > 5 else ''}).")
    if read_only:
      steps = steps[:1]
      try:
        tree, meta = self._restore_step(steps[0], abstract_tree)
      except Exception as e:  # pylint: disable=broad-except
        others = [s for s in self.all_steps() if s != steps[0]]
        raise CheckpointUnreadableError(
            f"Checkpoint step {steps[0]} in {self.directory} cannot be read "
            f"({one_line(e)}); nothing was changed. Choose another step with "
            f"--config.checkpoint.step=N (steps here: {others}), or resume training, "
            "which moves an unreadable step aside.") from e
      return tree, meta, steps[0]
    errors = []
    for s in steps:
      try:
        tree, meta = self._restore_step(s, abstract_tree)
      except Exception as e:  # pylint: disable=broad-except
        logging.error("Checkpoint at step %d in %s cannot be read: %r", s,
                      self.directory, e)
        errors.append((s, repr(e)))
        continue
      if errors:
        logging.warning("Restored checkpoint %d after newer ones failed: %s", s, errors)
        self._move_aside([bad for bad, _ in errors])
      return tree, meta, s
    raise RuntimeError(
        f"No readable checkpoint in {self.directory}; tried steps "
        f"{[s for s, _ in errors]}: {errors}. Move the damaged step directories away "
        "or start from a new --workdir.")

  def shape_mismatches(self, step: int, abstract_tree: Any) -> list[str]:
    """'path: saved -> wanted' for each array whose shape differs from the target's.

    Read from the step's metadata; arrays only one side has are left to the restore
    (the metadata may name containers differently), and so is metadata that cannot
    be read ([]): only a shape that differs is surely a config mismatch.
    """
    handler = ocp.StandardCheckpointHandler()
    try:
      saved = handler.metadata(epath.Path(self.directory) / str(step) / "state").tree
    except Exception:  # pylint: disable=broad-except
      return []
    finally:
      handler.close()
    have, want = _shapes(saved), _shapes(abstract_tree)
    both = sorted(set(have) & set(want))
    return [f"{key}: {have[key]} -> {want[key]}" for key in both
            if have[key] != want[key]]

  def _move_aside(self, steps: list[int]) -> None:
    if jax.process_index() == 0:
      stamp = time.strftime("%Y%m%d-%H%M%S")
      for s in steps:
        src = epath.Path(self.directory) / str(s)
        dst = src.parent / f"{s}.unreadable-{stamp}"
        src.rename(dst)
        logging.warning("Moved unreadable checkpoint %s to %s.", src, dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices("checkpoint_move_aside")
    self._manager.reload()

  def reload(self) -> None:
    """Sees checkpoints that another process has written since this one started."""
    self._manager.reload()

  def wait(self) -> None:
    """Waits for an asynchronous save; its full disk is a one-line UserError."""
    try:
      self._manager.wait_until_finished()
    except Exception as error:  # pylint: disable=broad-except
      if not user_errors.is_disk_full(error):
        raise
      raise user_errors.disk_full_error(self.directory, getattr(self, "_saving", None),
                                        error) from error

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs with the shardings of `tree`'s arrays (the restore target)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
