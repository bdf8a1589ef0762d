"""Orbax checkpointing of the TrainState: async saves, retention, automatic resume."""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
  """Saves and restores `TrainState.checkpoint_tree()` plus a small JSON of metadata.

  Keeps the last `keep` checkpoints plus every step that is a multiple of
  `keep_every` (0: none). Orbax writes each step to a temporary directory and renames
  it when complete, so a save cut short by a crash is never taken for a checkpoint.
  """

  def __init__(self, directory: str, *, keep: int = 3, keep_every: int = 0,
               async_save: bool = True):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_every or None,
        enable_async_checkpointing=async_save, create=True)
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, tree: Any, metadata: dict[str, Any]) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(metadata)))

  def restore(self, abstract_tree: Any, step: int | None = None) -> tuple[Any, dict, int]:
    """Restores `step` (default: the newest readable one) into `abstract_tree`'s layout.

    `abstract_tree` holds jax.ShapeDtypeStruct leaves carrying the target shardings.
    An unreadable newest checkpoint is reported and the next older one is used, so a
    damaged save never stops a resumed run; if none can be read, this raises.
    """
    steps = [step] if step is not None else self.all_steps()[::-1]
    if not steps:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    errors = []
    for s in steps:
      try:
        restored = self._manager.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_tree), meta=ocp.args.JsonRestore()))
        if errors:
          logging.warning("Restored checkpoint %d after newer ones failed: %s", s, errors)
        return restored["state"], dict(restored["meta"] or {}), s
      except Exception as e:  # pylint: disable=broad-except
        logging.error("Checkpoint at step %d in %s cannot be read: %r", s,
                      self.directory, e)
        errors.append((s, repr(e)))
    raise RuntimeError(
        f"No readable checkpoint in {self.directory}; tried steps "
        f"{[s for s, _ in errors]}: {errors}. Move the damaged step directories away "
        "or start from a new --workdir.")

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs with the shardings of `tree`'s arrays (the restore target)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
