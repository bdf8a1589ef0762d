"""The unchanged training loop on 2 forced CPU devices agrees with a 1-device run.

JAX fixes its device count when it starts, so the 2-device run happens in ONE
subprocess started with `--xla_force_host_platform_device_count=2`. It writes what it
saw (shardings of the state and of every train batch, the final params, compile
events around a bad batch size) to a folder; the tests below read that folder. The
1-device reference run happens in this process while the subprocess works.
"""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import jax
import numpy as np
import pytest

import datasets
from tests.test_train_loop import tiny_config
from train import loop
from train.checkpoint import Checkpointer, abstract_like

# One 2-device subprocess and a 1-device run through the loop: end to end.
pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_DEVICES = 2
NUM_STEPS = 4

# Runs under forced CPU devices. argv: output folder, number of train steps.
_TWO_DEVICE_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    from tests.test_train_loop import tiny_config
    from train import loop, modes, sharding
    from train import run as run_lib
    from train.checkpoint import Checkpointer

    out_dir, num_steps = sys.argv[1], int(sys.argv[2])
    results = dict(device_count=jax.device_count(),
                   device_ids=sorted(d.id for d in jax.devices()))

    # Every compilation (including eager ops) emits one of these events.
    compile_events = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, *a, **k: compile_events.append(event)
        if event.startswith("/jax/core/compile") else None)

    # What the loop puts on the devices for the jitted train step: each global batch.
    phase = ["train"]
    train_batches = []
    to_global = sharding.to_global
    def recording_to_global(local, batch_sharding):
      arrays = to_global(local, batch_sharding)
      if phase[0] == "train":
        train_batches.append({
            key: dict(shape=list(x.shape),
                      devices=sorted(d.id for d in x.sharding.device_set),
                      shard_shapes=[list(s.data.shape) for s in x.addressable_shards],
                      replicated=x.sharding.is_fully_replicated)
            for key, x in arrays.items()})
      return arrays
    sharding.to_global = recording_to_global
    evaluate = modes.evaluate
    def evaluate_after_training(*args, **kwargs):
      phase[0] = "eval"
      return evaluate(*args, **kwargs)
    modes.evaluate = evaluate_after_training

    workdir = os.path.join(out_dir, "run")
    state = loop.train_and_evaluate(tiny_config(num_steps), workdir)
    results["train_batches"] = train_batches
    results["step"] = int(state.step)
    with open(os.path.join(workdir, "eval", f"step_{num_steps:08d}.json")) as f:
      results["report"] = json.load(f)

    # The whole TrainState lives on both devices, each holding an identical copy.
    state_leaves = jax.tree_util.tree_leaves_with_path(state.checkpoint_tree())
    results["state_leaves"] = {
        jax.tree_util.keystr(path): dict(
            devices=sorted(d.id for d in x.sharding.device_set),
            replicated=x.sharding.is_fully_replicated,
            copies_equal=all(np.array_equal(np.asarray(s.data),
                                            np.asarray(x.addressable_shards[0].data))
                             for s in x.addressable_shards))
        for path, x in state_leaves}
    np.savez(os.path.join(out_dir, "params.npz"), **{
        jax.tree_util.keystr(path): np.asarray(x)
        for path, x in jax.tree_util.tree_leaves_with_path(state.params)})

    # Restore the saved step onto the devices in a layout other than the saved one:
    # leaves whose leading axis divides evenly are split over 'data', the rest
    # replicated.
    mesh = sharding.make_mesh()
    def target_sharding(x):
      split = x.ndim >= 1 and x.shape[0] % jax.device_count() == 0
      return NamedSharding(mesh, P(sharding.DATA_AXIS) if split else P())
    tree = state.checkpoint_tree()
    targets = jax.tree.map(target_sharding, tree)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, targets)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    restored, meta, step = checkpointer.restore(abstract)
    checkpointer.close()
    results["restore"] = dict(
        step=step, meta=meta,
        num_split=sum(not s.is_fully_replicated for s in jax.tree.leaves(targets)),
        shardings_match=all(r.sharding == s for r, s in zip(jax.tree.leaves(restored),
                                                            jax.tree.leaves(targets))),
        values_equal=all(np.array_equal(np.asarray(r), np.asarray(x)) for r, x in
                         zip(jax.tree.leaves(restored), jax.tree.leaves(tree))))

    # A global batch that does not split over the devices: refused before compiling.
    config = tiny_config(num_steps)
    config.training.batch_size = 3
    compiles_before = len(compile_events)
    try:
      loop.train_and_evaluate(config, os.path.join(out_dir, "odd_batch"))
      message = None
    except ValueError as e:
      message = str(e)
    results["odd_batch"] = dict(
        message=message, compiles=len(compile_events) - compiles_before,
        checkpoints_dir=os.path.exists(os.path.join(out_dir, "odd_batch", "checkpoints")))
    # An eval batch that does not split: should be refused with the other config
    # errors, before training starts.
    config = tiny_config(num_steps)
    config.eval.batch_size = 3
    try:
      run_lib.validate_config(config)
      results["odd_eval_batch_message"] = None
    except ValueError as e:
      results["odd_eval_batch_message"] = str(e)

    with open(os.path.join(out_dir, "results.json"), "w") as f:
      json.dump(results, f)
""")


def _leaves_by_path(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(path): np.asarray(x)
          for path, x in jax.tree_util.tree_leaves_with_path(tree)}


@dataclasses.dataclass
class Runs:
  two_device: dict[str, Any]                 # what the subprocess recorded
  two_device_params: dict[str, np.ndarray]   # its final params, by tree path
  one_device_params: dict[str, np.ndarray]   # the same config trained here
  one_device_step2_params: dict[str, np.ndarray]   # ... and its step-2 checkpoint
  one_device_report: dict[str, Any]          # ... and its eval JSON


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
  """The 2-device subprocess and, meanwhile, the 1-device run in this process."""
  out_dir = tmp_path_factory.mktemp("two_devices")
  local_workdir = tmp_path_factory.mktemp("one_device")
  # Prepare `digits` here first so the two processes never prepare it at once.
  datasets.get_dataset_info(tiny_config().data)
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="true",
             # A loaded 2-core machine can delay one forced device's thread past XLA's
             # 40 s rendezvous limit for a collective, which aborts the process.
             XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={NUM_DEVICES}"
                        " --xla_cpu_collective_call_terminate_timeout_seconds=600"),
             PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
  # A file, not a pipe: a full pipe would stall the subprocess while this one trains.
  log = open(out_dir / "log.txt", "w")
  proc = subprocess.Popen([sys.executable, "-c", _TWO_DEVICE_SCRIPT, str(out_dir),
                           str(NUM_STEPS)], cwd=REPO, env=env, stdout=log,
                          stderr=subprocess.STDOUT)
  try:
    # What the fast_compile fixture does (a module-scoped fixture cannot use it).
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
      local = loop.train_and_evaluate(tiny_config(NUM_STEPS), str(local_workdir))
    finally:
      jax.config.update("jax_disable_most_optimizations", previous)
    checkpointer = Checkpointer(str(local_workdir / "checkpoints"), async_save=False)
    step2, _, _ = checkpointer.restore(abstract_like(local.checkpoint_tree()), step=2)
    checkpointer.close()
    proc.wait(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
    log.close()
  assert proc.returncode == 0, (out_dir / "log.txt").read_text()[-6000:]
  with open(out_dir / "results.json") as f:
    results = json.load(f)
  with np.load(out_dir / "params.npz") as f:
    two_device_params = dict(f)
  with open(local_workdir / "eval" / f"step_{NUM_STEPS:08d}.json") as f:
    local_report = json.load(f)
  assert int(local.step) == NUM_STEPS
  return Runs(results, two_device_params, _leaves_by_path(local.params),
              _leaves_by_path(step2["params"]), local_report)


def test_subprocess_sees_two_devices(runs):
  assert runs.two_device["device_count"] == NUM_DEVICES
  assert runs.two_device["device_ids"] == list(range(NUM_DEVICES))
  assert runs.two_device["step"] == NUM_STEPS


def test_state_is_replicated_on_every_device(runs):
  state_leaves = runs.two_device["state_leaves"]
  assert any(path.startswith("['params']") for path in state_leaves)
  assert any(path.startswith("['opt_state']") for path in state_leaves)
  for path, leaf in state_leaves.items():
    assert leaf["devices"] == list(range(NUM_DEVICES)), path
    assert leaf["replicated"] and leaf["copies_equal"], path


def test_train_batches_are_split_over_the_devices(runs):
  batches = runs.two_device["train_batches"]
  batch_size = tiny_config().training.batch_size
  # The pipeline puts batches on the devices a few steps ahead of the train step (a
  # bounded read-ahead), so a few more than the steps run are put before training ends.
  assert NUM_STEPS <= len(batches) <= NUM_STEPS + 4, len(batches)
  for batch in batches:
    assert set(batch) == {"image", "label"}   # digits has no caption factors
    for key, array in batch.items():
      assert array["shape"][0] == batch_size, key
      assert array["devices"] == list(range(NUM_DEVICES)), key
      assert not array["replicated"], key
      # Each device holds its own half of the batch, not a copy of it.
      shard_shapes = array["shard_shapes"]
      assert [s[0] for s in shard_shapes] == [batch_size // NUM_DEVICES] * NUM_DEVICES
      assert [s[1:] for s in shard_shapes] == [array["shape"][1:]] * NUM_DEVICES


def test_two_device_params_match_one_device_run(runs):
  one = runs.one_device_params
  two = runs.two_device_params
  assert sorted(two) == sorted(one)
  largest_difference, largest_update = 0.0, 0.0
  for path in one:
    # The loss mean is reduced in another order over two devices: close, not equal.
    np.testing.assert_allclose(two[path], one[path], rtol=1e-4, atol=1e-6, err_msg=path)
    largest_difference = max(largest_difference, np.max(np.abs(two[path] - one[path])))
    largest_update = max(largest_update,
                         np.max(np.abs(one[path] - runs.one_device_step2_params[path])))
  # The agreement means something only if two steps of training move the params by
  # far more than the two runs differ.
  assert largest_update > 5e-4 and largest_difference < 1e-3 * largest_update, (
      largest_difference, largest_update)


def test_eval_report_matches_one_device_run(runs):
  report, local_report = runs.two_device["report"], runs.one_device_report
  assert report["step"] == local_report["step"] == NUM_STEPS
  assert report["num_examples"] == local_report["num_examples"] == 16
  assert np.isfinite(report["bpd_vlb"])
  np.testing.assert_allclose(report["bpd_vlb"], local_report["bpd_vlb"], rtol=1e-4)


def test_restore_onto_two_devices_in_another_layout(runs):
  restore = runs.two_device["restore"]
  assert restore["step"] == NUM_STEPS
  assert restore["meta"] == dict(config_name="ddpm_digits", step=NUM_STEPS)
  assert restore["num_split"] > 0   # some leaves really were re-laid out
  assert restore["shardings_match"] and restore["values_equal"]


def test_indivisible_train_batch_fails_before_compiling(runs):
  failure = runs.two_device["odd_batch"]
  assert failure["message"] is not None, "batch 3 on 2 devices did not raise"
  assert "training.batch_size=3" in failure["message"]
  assert f"multiple of the number of devices ({NUM_DEVICES}" in failure["message"]
  assert failure["compiles"] == 0 and not failure["checkpoints_dir"]


def test_indivisible_eval_batch_is_refused_by_validate_config(runs):
  message = runs.two_device["odd_eval_batch_message"]
  assert message is not None and "eval.batch_size=3" in message
