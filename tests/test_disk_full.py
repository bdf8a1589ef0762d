"""A real full disk: training on a small tmpfs that fills during a checkpoint save.

The run trains to step 2 on an ordinary disk (checkpoint of step 2), then resumes on a
tmpfs sized to hold that workdir and half of one more checkpoint, so the save of step
4 hits ENOSPC where the operating system puts it (TensorStore's writes, Orbax's
renames), not where a test injects it (tests/test_user_errors.py does that). Expected:
one `error:` line, exit 2, the checkpoint of step 2 intact; and a rerun with room on
an ordinary disk, from what the full disk left behind (a partial step-4 directory
included), finishes the run.

The tmpfs is mounted in a private user and mount namespace (`unshare -rm`), so the
test needs neither root nor a change to the machine; where the kernel refuses that,
the same run goes through the injected ENOSPC instead and the test says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import ddpm_digits
from tests.test_faults import RUN
from tests.test_multihost import (REPO, as_flags, compile_cache, restore_on_one_device,
                                  subprocess_env, with_overrides)
from tests.test_user_errors import INJECT_FULL_DISK, assert_one_error_line, run_main

assert compile_cache   # a fixture, used by name below
pytestmark = pytest.mark.integration

DIGITS = os.path.join(REPO, "configs", "ddpm_digits.py")
OVERRIDES = {**RUN, "training.checkpoint_every_steps": 2,
             "training.async_checkpointing": False, "eval.num_eval_examples": 8,
             "training.keep_checkpoints": 3}


def _size(path) -> int:
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names)


def _tmpfs_works(mount_point) -> bool:
  probe = subprocess.run(["unshare", "-rm", "sh", "-c",
                          f"mount -t tmpfs -o size=1m tmpfs '{mount_point}'"],
                         capture_output=True, timeout=30)
  return probe.returncode == 0 and shutil.which("unshare") is not None


def _main_args(workdir, steps: int) -> list[str]:
  return [f"--config={DIGITS}", f"--workdir={workdir}",
          *as_flags({**OVERRIDES, "training.num_train_steps": steps})]


def test_a_full_tmpfs_during_a_save_is_one_line_keeps_the_checkpoint_and_reruns(
    tmp_path, compile_cache):
  env = subprocess_env(1, compile_cache)
  first = tmp_path / "first"
  proc = run_main(_main_args(first, 2), env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  checkpoint = _size(first / "checkpoints" / "2")
  assert checkpoint > 0
  # Room for today's workdir, its logs growing, and half of the next checkpoint.
  size_kib = (_size(first) + checkpoint // 2) // 1024 + 64
  mount = tmp_path / "tmpfs"
  mount.mkdir()
  out = tmp_path / "after"
  run = (f"cp -a '{first}/.' '{mount}/' && '{sys.executable}' "
         f"'{os.path.join(REPO, 'main.py')}' "
         + " ".join(f"'{a}'" for a in _main_args(mount, 6))
         + f"; rc=$?; mkdir -p '{out}'; cp -a '{mount}/.' '{out}/'; exit $rc")
  if _tmpfs_works(mount):
    disk = f"a {size_kib} KiB tmpfs"
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c",
         f"mount -t tmpfs -o size={size_kib}k tmpfs '{mount}' && {run}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  else:
    disk = "an injected ENOSPC (this kernel refuses a private tmpfs)"
    shutil.copytree(first, out)
    proc = run_main([os.path.join(REPO, "main.py"), *_main_args(out, 6)], env=env,
                    prefix=["-c", INJECT_FULL_DISK])
  line = assert_one_error_line(proc, "disk full while saving the checkpoint of step 4",
                               "the checkpoint of step 2 is kept")
  config = with_overrides(ddpm_digits.get_config(),
                          {**OVERRIDES, "training.num_train_steps": 6})
  assert int(np.asarray(restore_on_one_device(str(out), config)["step"])) == 2, line
  print(f"full disk ({disk}): {line}")
  print("left in checkpoints/:", sorted(os.listdir(out / "checkpoints")))

  # With room again, the rerun resumes from step 2 past what the full disk left.
  proc = run_main(_main_args(out, 6), env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Restored checkpoint at step 2" in proc.stderr, proc.stderr[-2000:]
  assert int(np.asarray(restore_on_one_device(str(out), config)["step"])) == 6
  assert os.path.exists(out / "eval" / "step_00000006.json")
