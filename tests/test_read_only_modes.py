"""Read-only means read-only: eval, sample and edit leave checkpoints/ byte-identical.

A mismatched config is named as one (never as damage); an unreadable newest step is
reported with its step and reason, and --config.checkpoint.step picks another; only
training moves a damaged step aside; a failed allow_config_change resume keeps
config.json.
"""

from __future__ import annotations

import hashlib
import os
import shutil

import jax
import numpy as np
import pytest

import datasets
from tests.test_checkpoint import damage
from tests.test_train_loop import tiny_config
from train import edit_mode, loop, modes, workdir_guard
from train.checkpoint import CheckpointShapeError, CheckpointUnreadableError

# Damaging checkpoints on purpose: Orbax's closed-event-loop notices are expected.
# A workdir trained through the loop, then eval/sample/edit on it: end to end.
pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings(
    "ignore:Exception ignored in:pytest.PytestUnraisableExceptionWarning")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
  """A workdir with the checkpoints of steps 2 and 4 and its config.json."""
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  loop.train_and_evaluate(tiny_config(4), workdir)
  jax.config.update("jax_disable_most_optimizations", previous)
  return workdir


@pytest.fixture
def workdir(trained, tmp_path) -> str:
  copy = str(tmp_path / "run")
  shutil.copytree(trained, copy)
  return copy


def tree_hash(directory: str) -> dict[str, str]:
  """Every file and folder under `directory`: path -> SHA-256 of its bytes ('dir')."""
  out = {}
  for root, dirs, files in os.walk(directory):
    for name in dirs:
      out[os.path.relpath(os.path.join(root, name), directory)] = "dir"
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return out


def sdedit_inputs(tmp_path, config) -> str:
  info = datasets.get_dataset_info(config.data)
  images = np.random.default_rng(0).integers(0, 256, (2, *info.image_shape), np.uint8)
  path = str(tmp_path / "inputs.npz")
  np.savez(path, images)
  return path


def read_only_modes(tmp_path):
  """name -> fn(config, workdir): the modes that must not write into checkpoints/."""
  return {
      "eval": modes.evaluate,
      "sample": modes.sample,
      "edit": lambda config, workdir: edit_mode.edit(
          config, workdir, dict(edit="sdedit", input=sdedit_inputs(tmp_path, config),
                                strength=0.3)),
  }


@pytest.mark.parametrize("mode", ["eval", "sample", "edit"])
def test_a_damaged_newest_step_is_reported_and_nothing_moves(workdir, tmp_path, mode,
                                                             fast_compile):
  checkpoints = os.path.join(workdir, "checkpoints")
  damage(checkpoints, 4, "tree_metadata_garbled")
  before = tree_hash(checkpoints)
  run = read_only_modes(tmp_path)[mode]
  config = tiny_config(4)
  with pytest.raises(CheckpointUnreadableError) as raised:
    run(config, workdir)
  message = str(raised.value)
  assert "\n" not in message and "step 4" in message, message
  assert "cannot be read (" in message and "--config.checkpoint.step=N" in message
  assert "steps here: [2]" in message, message
  assert tree_hash(checkpoints) == before
  # The user picks the older step: it is used, and still nothing moves.
  config.checkpoint.step = 2
  out = run(config, workdir)
  assert tree_hash(checkpoints) == before
  if mode == "eval":
    assert out["step"] == 2
    assert os.path.exists(os.path.join(workdir, "eval", "step_00000002.json"))
  elif mode == "sample":
    assert out.endswith("step_00000002")


def test_intact_read_only_modes_leave_checkpoints_byte_identical(workdir, tmp_path,
                                                                 fast_compile):
  checkpoints = os.path.join(workdir, "checkpoints")
  before = tree_hash(checkpoints)
  for run in read_only_modes(tmp_path).values():
    run(tiny_config(4), workdir)
  assert tree_hash(checkpoints) == before


def test_only_training_moves_a_damaged_step_aside(workdir, fast_compile):
  checkpoints = os.path.join(workdir, "checkpoints")
  damage(checkpoints, 4, "tree_metadata_garbled")
  state = loop.train_and_evaluate(tiny_config(4), workdir)
  assert int(state.step) == 4   # resumed from 2 and saved 4 again
  names = os.listdir(checkpoints)
  assert "4" in names and any(n.startswith("4.unreadable-") for n in names), names


@pytest.mark.parametrize("mode", ["eval", "sample"])
def test_a_config_mismatch_is_named_and_changes_nothing(workdir, tmp_path, mode):
  before = tree_hash(workdir)
  config = tiny_config(4)
  config.model.ch = 16
  config.optim.learning_rate = 1e-2
  run = read_only_modes(tmp_path)[mode]
  with pytest.raises(ValueError) as raised:
    run(config, workdir)
  message = str(raised.value)
  assert "\n" not in message
  assert "model.ch: 8 -> 16" in message and "optim.learning_rate" in message, message
  assert "damage" not in message and "unreadable" not in message.lower()
  assert tree_hash(workdir) == before
  # Allowed anyway, a shape-changing field fails on the shapes, named as such.
  config.training.allow_config_change = True
  with pytest.raises(CheckpointShapeError) as raised:
    run(config, workdir)
  message = str(raised.value)
  assert "other shapes than this config makes" in message and "model.ch" in message
  assert "damage" not in message and "cannot be read" not in message
  assert tree_hash(workdir) == before


def test_a_failed_allow_config_change_resume_keeps_config_json(workdir):
  path = os.path.join(workdir, "config.json")
  with open(path, "rb") as f:
    original = f.read()
  checkpoints = os.path.join(workdir, "checkpoints")
  before = tree_hash(checkpoints)
  changed = tiny_config(6)
  changed.model.ch = 16
  changed.training.allow_config_change = True
  with pytest.raises(CheckpointShapeError, match=r"model.*\(8,\) -> \(16,\)|8.*16"):
    loop.train_and_evaluate(changed, workdir)
  with open(path, "rb") as f:
    assert f.read() == original
  assert tree_hash(checkpoints) == before   # a mismatch is not damage: nothing moved
  # The original config is still accepted.
  assert not workdir_guard.check_workdir_config(tiny_config(6), workdir, write=False)
