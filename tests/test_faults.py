"""Faults a long run meets: SIGKILL at any moment, and weights that turn NaN.

A run of main.py (asynchronous checkpointing, a checkpoint every 2 steps) is killed
with SIGKILL at whatever step it has reached, restarted, and finished: its final
checkpoint equals, bit for bit, that of a run that was never interrupted. A family
that turns the loss or the weights non-finite stops the run, and the newest
checkpoint on disk holds only finite numbers.
"""

import os
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import datasets
from configs import ddpm_digits
from tests.test_multihost import (REPO, SMALL_TRAIN_STEP, Processes, as_flags, by_path,
                                  compile_cache, restore_on_one_device, subprocess_env,
                                  with_overrides)
from train import ddpm as ddpm_family
from train import families, loop
from train.checkpoint import Checkpointer

assert compile_cache   # a fixture, used by name below

CHECKPOINT_EVERY = 2
# configs/ddpm_digits.py with these is the small model of tests/test_multihost.py,
# checkpointed asynchronously (the default) every CHECKPOINT_EVERY steps.
RUN = {**SMALL_TRAIN_STEP, "training.log_every_steps": 1,
       "training.checkpoint_every_steps": CHECKPOINT_EVERY,
       "training.sample_every_steps": 0, "training.async_checkpointing": True,
       "eval.num_eval_examples": 16, "eval.batch_size": 8, "eval.vlb_timestep_chunk": 10}


def run_config(num_train_steps: int, **overrides):
  return with_overrides(ddpm_digits.get_config(),
                        {**RUN, "training.num_train_steps": num_train_steps, **overrides})


def main_command(workdir, num_train_steps: int) -> list[str]:
  return [sys.executable, os.path.join(REPO, "main.py"),
          "--config=" + os.path.join(REPO, "configs/ddpm_digits.py"),
          f"--workdir={workdir}",
          *as_flags({**RUN, "training.num_train_steps": num_train_steps})]


def complete_steps(workdir) -> list[int]:
  """Steps whose checkpoint Orbax finished (a save in flight has a temporary name)."""
  directory = os.path.join(workdir, "checkpoints")
  return sorted(int(s) for s in os.listdir(directory) if s.isdigit())


@pytest.mark.integration
def test_sigkill_at_any_step_then_restart_ends_like_an_uninterrupted_run(
    tmp_path, compile_cache, fast_compile):
  datasets.get_dataset_info(run_config(1).data)
  env = subprocess_env(1, compile_cache)
  killed = tmp_path / "killed"
  with Processes(str(tmp_path)) as procs:
    procs.start("killed", main_command(killed, 100_000), env)
    procs.wait_for_line("killed", r"step 7/100000", 300)
    procs.procs["killed"].send_signal(signal.SIGKILL)
    assert procs.procs["killed"].wait(timeout=30) == -signal.SIGKILL
    log = procs.log("killed")
  last_logged = max(int(s) for s in re.findall(r"step (\d+)/100000", log))
  left = os.listdir(killed / "checkpoints")
  resumable = complete_steps(killed)
  assert resumable and resumable[-1] > 0, left
  resume_step = resumable[-1]
  # Lost: the steps since the newest save began (< CHECKPOINT_EVERY) plus that save's
  # own interval if it was still in flight. The next save waits for it, so never more.
  lost = last_logged - resume_step
  assert 0 <= lost <= 2 * CHECKPOINT_EVERY, (last_logged, left)
  # Restart (same run; only the length changes, which a resume allows) and finish a
  # few steps past the point of death.
  end = last_logged + 3
  with Processes(str(tmp_path)) as procs:
    procs.start("restarted", main_command(killed, end), env)
    assert procs.wait_all(300) == {"restarted": 0}, procs.log("restarted")[-4000:]
    log = procs.log("restarted")
  assert f"from step {resume_step} to {end}" in log, log[-3000:]
  # The uninterrupted run, here (same compiled steps through the shared cache).
  reference = loop.train_and_evaluate(run_config(end), str(tmp_path / "uninterrupted"))
  assert int(reference.step) == end
  restored = restore_on_one_device(str(killed), run_config(end))
  assert int(restored["step"]) == end
  expected = by_path(reference.checkpoint_tree())
  actual = by_path(restored)
  assert sorted(actual) == sorted(expected)
  for path in expected:   # params, EMA, optimizer state, step, rng: bit for bit
    np.testing.assert_array_equal(actual[path], expected[path], err_msg=path)
  print(f"killed after step {last_logged} (checkpoint dirs then: {sorted(left)}); "
        f"resumed from {resume_step}: {lost} step(s) lost")


# A NaN loss with synchronous saves is also tested in test_train_loop.py.
@pytest.mark.parametrize("what", [pytest.param("loss", marks=pytest.mark.slow),
                                  pytest.param("params", marks=pytest.mark.integration)])
def test_nonfinite_values_stop_the_run_and_the_newest_checkpoint_is_finite(
    tmp_path, monkeypatch, fast_compile, what):
  """From step 3 on, either the loss and weights or only the weights are NaN."""

  class NaNFamily(ddpm_family.DDPM):
    def train_step(self, state, batch):
      new_state, metrics = super().train_step(state, batch)
      nan_if_bad = jnp.where(state.step >= 2, jnp.nan, 0.0)
      params = jax.tree.map(lambda p: p + nan_if_bad, new_state.params)
      if what == "loss":
        metrics = dict(metrics, loss=metrics["loss"] + nan_if_bad)
      # Else the loss of step 3 is still finite (computed before the update): only
      # the check of the weights before saving can catch it.
      return new_state.replace(params=params), metrics

  monkeypatch.setitem(families.FAMILIES, "nan_ddpm", NaNFamily)
  # Checkpoint every step, asynchronously; read the metrics only every 4 steps.
  config = run_config(8, **{"model.family": "nan_ddpm", "training.log_every_steps": 4,
                            "training.checkpoint_every_steps": 1})
  workdir = str(tmp_path / "run")
  message = {"loss": r"The loss is nan at step 3",
             "params": r"Non-finite parameters at step 3"}[what]
  with pytest.raises(loop.NonFiniteLossError, match=message + ".*newest good checkpoint "
                     "is step 2"):
    loop.train_and_evaluate(config, workdir)
  # Nothing newer than step 2 reached the disk, finished or not.
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  assert checkpointer.latest_step() == 2
  checkpointer.close()
  tree = restore_on_one_device(workdir, config)
  assert int(tree["step"]) == 2
  for path, value in by_path(tree).items():
    if np.issubdtype(value.dtype, np.floating):
      assert np.all(np.isfinite(value)), path
