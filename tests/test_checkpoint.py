"""Checkpointer: round trip, retention, and surviving damaged or half-written steps."""

import glob
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from orbax.checkpoint._src.path import atomicity

from tests.test_train_loop import tiny_config
from train import loop, sharding
from train import modes
from train.checkpoint import (Checkpointer, CheckpointUnreadableError, abstract_like,
                              fingerprint)

# When a restore fails, Orbax closes its asyncio loop while tensorstore still posts
# the other reads' completions to it ("Event loop is closed", harmless): expected in
# a file that damages checkpoints on purpose.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in:pytest.PytestUnraisableExceptionWarning")


def make_tree(step: int = 0) -> dict:
  """A TrainState-like pytree whose values depend on `step`: several dtypes."""
  rng = np.random.RandomState(0)
  return dict(
      step=jnp.asarray(step, jnp.int32),
      # 64x64 floats are large enough to live in their own data file.
      params=dict(kernel=jnp.asarray(rng.randn(64, 64).astype(np.float32) + step),
                  bias=jnp.asarray(rng.randn(5).astype(np.float32) + step)),
      opt_state=[jnp.asarray(rng.randn(3, 2).astype(np.float32)),
                 jnp.asarray(step, jnp.int32)],
      rng=jnp.asarray([7, step], jnp.uint32),
      half=jnp.asarray(rng.randn(4), jnp.bfloat16))


def save_steps(directory, steps, **options) -> None:
  """Saves make_tree(step) with metadata {'step': step} for each step, then closes."""
  checkpointer = Checkpointer(str(directory), async_save=False, **options)
  for step in steps:
    checkpointer.save(step, make_tree(step), dict(step=step))
  checkpointer.close()


def restore(directory, step=None):
  checkpointer = Checkpointer(str(directory), async_save=False)
  try:
    return checkpointer.restore(abstract_like(make_tree()), step=step)
  finally:
    checkpointer.close()


def assert_trees_equal(actual, expected) -> None:
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    assert a.dtype == e.dtype and a.shape == e.shape
    np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def step_files(directory, step: int, pattern: str) -> list[str]:
  """Files matching `pattern` (relative to <step>/state) of a saved step."""
  pattern = os.path.join(str(directory), str(step), "state", pattern)
  files = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
  assert files, f"no file {pattern} in step {step}: the on-disk layout changed"
  return files


def truncate_to_half(path: str) -> None:
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def invert_middle_bytes(path: str) -> None:
  """Flips every bit of the middle half of a file (its size stays the same)."""
  with open(path, "rb") as f:
    data = bytearray(f.read())
  for i in range(len(data) // 4, 3 * len(data) // 4):
    data[i] ^= 0xFF
  with open(path, "wb") as f:
    f.write(bytes(data))


def overwrite(path: str, content: bytes = b"{not json") -> None:
  with open(path, "wb") as f:
    f.write(content)


# Ways a step's state/ can be damaged: a copy stopped part-way, a bad disk block.
DAMAGE = {
    "every_file_truncated": ("**/*", truncate_to_half),
    "data_files_truncated": ("ocdbt.process_0/d/*", truncate_to_half),
    "index_node_garbled": ("d/*", invert_middle_bytes),
    "manifest_garbled": ("manifest.ocdbt", invert_middle_bytes),
    "tree_metadata_garbled": ("_METADATA", overwrite),
}


def damage(directory, step: int, how: str) -> None:
  pattern, fn = DAMAGE[how]
  for path in step_files(directory, step, pattern):
    fn(path)


# ------------------------------------------------------------------------ round trip
def test_round_trip_restores_values_metadata_and_target_sharding(tmp_path):
  save_steps(tmp_path, [3, 7])
  mesh = sharding.make_mesh()
  # Restore into an explicit mesh layout, as the loop does (not the saved one).
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, P())),
      make_tree())
  checkpointer = Checkpointer(str(tmp_path), async_save=False)
  assert checkpointer.all_steps() == [3, 7] and checkpointer.latest_step() == 7
  tree, meta, step = checkpointer.restore(target)
  assert step == 7 and meta == dict(step=7)
  assert_trees_equal(tree, make_tree(7))
  for restored, wanted in zip(jax.tree.leaves(tree), jax.tree.leaves(target)):
    assert restored.sharding == wanted.sharding
  # An explicit older step.
  tree, meta, step = checkpointer.restore(target, step=3)
  assert step == 3 and meta == dict(step=3)
  assert_trees_equal(tree, make_tree(3))
  checkpointer.close()


def test_abstract_like_keeps_shapes_dtypes_and_shardings():
  tree = make_tree()
  abstract = abstract_like(tree)
  for a, x in zip(jax.tree.leaves(abstract), jax.tree.leaves(tree)):
    assert isinstance(a, jax.ShapeDtypeStruct)
    assert (a.shape, a.dtype, a.sharding) == (x.shape, x.dtype, x.sharding)


def test_fingerprint_is_the_position_weighted_sum_of_each_leafs_bits():
  """Against numpy: sum_i bits_i * (2 (i mod 65521) + 1) mod 2^32, per leaf."""
  rng = np.random.RandomState(1)
  tree = dict(f32=rng.randn(300, 7).astype(np.float32),
              bf16=jnp.asarray(rng.randn(70_000), jnp.bfloat16),
              i32=np.arange(-5, 5, dtype=np.int32), u8=np.arange(256, dtype=np.uint8),
              scalar=np.float32(3.5))
  def numpy_sum(x):
    x = np.asarray(x)
    bits = {4: np.uint32, 2: np.uint16, 1: np.uint8}[x.dtype.itemsize]
    bits = x.reshape(-1).view(bits).astype(np.uint64)
    weights = (np.arange(bits.size, dtype=np.uint64) % 65521) * 2 + 1
    return int(np.sum(bits * weights) % 2**32)
  assert fingerprint(tree) == [numpy_sum(x) for x in jax.tree.leaves(tree)]
  # One flipped bit changes its leaf's sum only.
  damaged = dict(tree, f32=tree["f32"].copy())
  damaged["f32"].view(np.uint32)[123, 4] ^= 1 << 7
  changed = [a != b for a, b in zip(fingerprint(tree), fingerprint(damaged))]
  assert changed == [leaf is tree["f32"] for leaf in jax.tree.leaves(tree)]


def test_empty_directory_has_no_step_and_restore_says_so(tmp_path):
  checkpointer = Checkpointer(str(tmp_path / "ckpt"), async_save=False)
  assert checkpointer.latest_step() is None and checkpointer.all_steps() == []
  with pytest.raises(FileNotFoundError, match="No checkpoint in .*ckpt"):
    checkpointer.restore(abstract_like(make_tree()))
  checkpointer.close()


# ------------------------------------------------------------------------- retention
@pytest.mark.parametrize("keep, keep_every, async_save, expected", [
    (2, 0, False, [9, 10]),                  # the last two
    (2, 3, False, [3, 6, 9, 10]),            # ... and every multiple of 3
    (3, 4, True, [4, 8, 9, 10]),             # the loop's default: async saves
])
def test_retention_keeps_the_last_steps_and_the_periodic_ones(tmp_path, keep, keep_every,
                                                              async_save, expected):
  checkpointer = Checkpointer(str(tmp_path), keep=keep, keep_every=keep_every,
                              async_save=async_save)
  for step in range(1, 11):
    checkpointer.save(step, make_tree(step), dict(step=step))
  checkpointer.close()
  on_disk = sorted(int(name) for name in os.listdir(tmp_path))
  assert on_disk == expected
  reopened = Checkpointer(str(tmp_path), keep=keep, keep_every=keep_every)
  assert reopened.all_steps() == expected
  tree, _, step = reopened.restore(abstract_like(make_tree()))
  assert step == 10
  assert_trees_equal(tree, make_tree(10))
  reopened.close()


# ------------------------------------------------------------------------ robustness
@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_damaged_newest_step_is_reported_and_older_one_restored(tmp_path, caplog, how):
  save_steps(tmp_path, [1, 2])
  damage(tmp_path, 2, how)
  caplog.set_level(logging.WARNING)
  tree, meta, step = restore(tmp_path)
  assert step == 1 and meta == dict(step=1)
  assert_trees_equal(tree, make_tree(1))
  errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
  assert any("step 2" in m and str(tmp_path) in m and "cannot be read" in m
             for m in errors), errors
  # Asked for by number, the damaged step fails rather than silently giving step 1.
  with pytest.raises(RuntimeError, match=f"No readable checkpoint in {tmp_path}"):
    restore(tmp_path, step=2)


def test_garbled_array_data_is_detected(tmp_path):
  save_steps(tmp_path, [1, 2])
  for path in step_files(tmp_path, 2, "ocdbt.process_0/d/*"):
    invert_middle_bytes(path)
  tree, _, step = restore(tmp_path)
  assert step == 1   # the fingerprint check noticed the damage and fell back
  expected = make_tree(step)
  assert all(np.array_equal(np.asarray(a), np.asarray(e))
             for a, e in zip(jax.tree.leaves(tree), jax.tree.leaves(expected)))


def test_no_readable_step_raises_a_runtime_error_naming_the_directory(tmp_path):
  save_steps(tmp_path, [1, 2])
  damage(tmp_path, 1, "tree_metadata_garbled")
  damage(tmp_path, 2, "every_file_truncated")
  with pytest.raises(RuntimeError, match=f"No readable checkpoint in {tmp_path}; "
                     r"tried steps \[2, 1\]"):
    restore(tmp_path)


def test_half_written_save_is_ignored_and_its_step_saved_again(tmp_path, monkeypatch):
  save_steps(tmp_path, [1, 2])
  # A crash just before Orbax's final rename leaves what it really leaves on disk.
  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def crash_before_renaming_step_3(self):
    if self._final_path.name == "3":
      raise OSError("simulated crash")
    return await finalize(self)

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize",
                      crash_before_renaming_step_3)
  checkpointer = Checkpointer(str(tmp_path), async_save=False)
  with pytest.raises(OSError, match="simulated crash"):
    checkpointer.save(3, make_tree(3), dict(step=3))
  monkeypatch.undo()
  checkpointer.close()
  leftovers = sorted(name for name in os.listdir(tmp_path) if not name.isdigit())
  assert leftovers == ["3.orbax-checkpoint-tmp"]   # Orbax 0.12.8's name
  # The timestamped name older Orbax versions use, half-written: also not a step.
  partial = tmp_path / "4.orbax-checkpoint-tmp-1712345678"
  os.makedirs(partial / "state")
  overwrite(str(partial / "state" / "_METADATA"), b"{")

  # The restarted run sees only complete steps and restores the newest one.
  restarted = Checkpointer(str(tmp_path), async_save=False)
  assert restarted.all_steps() == [1, 2] and restarted.latest_step() == 2
  tree, meta, step = restarted.restore(abstract_like(make_tree()))
  assert step == 2 and meta == dict(step=2)
  assert_trees_equal(tree, make_tree(2))
  # Reaching step 3 again, it saves it despite the leftover.
  restarted.save(3, make_tree(3), dict(step=3))
  restarted.close()
  tree, meta, step = restore(tmp_path)
  assert step == 3 and meta == dict(step=3)
  assert_trees_equal(tree, make_tree(3))


def test_step_saved_again_after_falling_back_from_its_damaged_checkpoint(tmp_path):
  save_steps(tmp_path, [2, 4])
  damage(tmp_path, 4, "tree_metadata_garbled")
  checkpointer = Checkpointer(str(tmp_path), async_save=False)
  _, _, step = checkpointer.restore(abstract_like(make_tree()))
  assert step == 2
  # The resumed run reaches step 4 again and saves it.
  checkpointer.save(4, make_tree(4), dict(step=4))
  checkpointer.close()
  tree, meta, step = restore(tmp_path)
  assert step == 4, "the resumed run's step 4 was not saved"
  assert_trees_equal(tree, make_tree(4))


# ---------------------------------------------------------------------- in the loop
@pytest.mark.integration
def test_evaluate_reports_a_damaged_newest_checkpoint_and_reads_the_step_chosen(
    tmp_path, fast_compile):
  """Evaluation is read-only: it names the unreadable step and moves nothing; the
  user picks an older one (tests/test_read_only_modes.py covers sample and edit)."""
  workdir = tmp_path / "run"
  config = tiny_config(4, checkpoint_every_steps=2, keep_checkpoints=3)
  loop.train_and_evaluate(config, str(workdir))
  checkpoints = workdir / "checkpoints"
  assert sorted(os.listdir(checkpoints)) == ["2", "4"]
  damage(checkpoints, 4, "tree_metadata_garbled")
  with pytest.raises(CheckpointUnreadableError, match="step 4 .* cannot be read"):
    modes.evaluate(config, str(workdir))
  assert sorted(os.listdir(checkpoints)) == ["2", "4"]
  config.checkpoint.step = 2
  report = modes.evaluate(config, str(workdir))
  assert report["step"] == 2 and np.isfinite(report["bpd_vlb"])
  assert os.path.exists(workdir / "eval" / "step_00000002.json")
  # The chosen step unreadable too: named, and still nothing moves.
  damage(checkpoints, 2, "tree_metadata_garbled")
  with pytest.raises(CheckpointUnreadableError, match="step 2 .* cannot be read"):
    modes.evaluate(config, str(workdir))
  assert sorted(os.listdir(checkpoints)) == ["2", "4"]
