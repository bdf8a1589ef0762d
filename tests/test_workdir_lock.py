"""One writer per workdir: a second writer fails at once; stale locks are taken over."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.test_faults import main_command, restore_on_one_device, run_config
from tests.test_multihost import REPO, Processes, compile_cache, subprocess_env
from train import workdir_lock
from train.workdir_lock import WorkdirLock, WorkdirLockedError

assert compile_cache   # a fixture, used by name below


def write_holder(workdir, kind: str = "train", **fields) -> dict:
  holder = dict(kind=kind, host=socket.gethostname(), pid=os.getpid(), pid_start=None,
                start_time=time.time() - 60, command="python main.py --mode=train",
                token="theirs", heartbeat=time.time())
  holder.update(fields)
  (workdir / f"{kind}.lock").write_text(json.dumps(holder))
  return holder


def dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_a_live_holder_refuses_a_second_writer_naming_it(tmp_path):
  write_holder(tmp_path, host="node-7", heartbeat=time.time() - 5)
  with pytest.raises(WorkdirLockedError) as raised:
    WorkdirLock(str(tmp_path), "train").acquire()
  message = str(raised.value)
  assert "\n" not in message
  assert "pid " + str(os.getpid()) in message and "node-7" in message, message
  assert "python main.py --mode=train" in message
  assert json.loads((tmp_path / "train.lock").read_text())["token"] == "theirs"


def test_a_lock_whose_process_is_gone_is_taken_over(tmp_path, caplog):
  write_holder(tmp_path, pid=dead_pid())
  caplog.set_level(logging.WARNING)
  with WorkdirLock(str(tmp_path), "train").acquire() as lock:
    holder = json.loads((tmp_path / "train.lock").read_text())
    assert holder["token"] == lock.holder["token"] and holder["pid"] == os.getpid()
  assert not (tmp_path / "train.lock").exists()   # released
  assert any("process is gone" in r.getMessage() for r in caplog.records)


def test_an_old_heartbeat_from_another_host_is_taken_over(tmp_path, caplog):
  write_holder(tmp_path, host="node-elsewhere", pid=1,
               heartbeat=time.time() - workdir_lock.STALE_S - 5)
  caplog.set_level(logging.WARNING)
  with WorkdirLock(str(tmp_path), "train").acquire():
    assert json.loads((tmp_path / "train.lock").read_text())["host"] == \
        socket.gethostname()
  assert any("heartbeat" in r.getMessage() and "node-elsewhere" in r.getMessage()
             for r in caplog.records)
  # Fresh from another host: held (its process cannot be checked from here).
  write_holder(tmp_path, host="node-elsewhere", pid=1)
  with pytest.raises(WorkdirLockedError, match="node-elsewhere"):
    WorkdirLock(str(tmp_path), "train").acquire()


def test_the_earlier_run_of_a_requeued_slurm_job_is_taken_over(tmp_path, monkeypatch):
  write_holder(tmp_path, host="node-1", pid=1, slurm_job_id="77", slurm_restart=0)
  monkeypatch.setenv("SLURM_JOB_ID", "77")
  monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
  with WorkdirLock(str(tmp_path), "train").acquire():
    pass


def test_the_heartbeat_is_refreshed_and_each_kind_has_its_own_lock(tmp_path,
                                                                   monkeypatch):
  monkeypatch.setattr(workdir_lock, "HEARTBEAT_S", 0.05)
  with WorkdirLock(str(tmp_path), "train").acquire():
    first = json.loads((tmp_path / "train.lock").read_text())["heartbeat"]
    time.sleep(0.5)
    assert json.loads((tmp_path / "train.lock").read_text())["heartbeat"] > first
    # eval_watch beside training: the eval lock is a separate one.
    with WorkdirLock(str(tmp_path), "eval").acquire():
      with pytest.raises(WorkdirLockedError, match="eval lock"):
        WorkdirLock(str(tmp_path), "eval").acquire()
  assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.integration
def test_a_second_training_run_fails_at_once_and_the_first_finishes_untouched(
    tmp_path, compile_cache, fast_compile):
  workdir = tmp_path / "run"
  steps = 12
  env = subprocess_env(1, compile_cache)
  with Processes(str(tmp_path)) as procs:
    procs.start("first", main_command(workdir, steps), env)
    procs.wait_for_line("first", r"step 2/12", 300)
    start = time.time()
    second = subprocess.run(main_command(workdir, steps), env=env, capture_output=True,
                            text=True, timeout=60)
    elapsed = time.time() - start
    # main.py checks the lock before importing TensorFlow and the families.
    start = time.time()
    heavy = subprocess.run(
        [sys.executable, "-c", "import sys, main; print('tensorflow' in sys.modules, "
         "'flax' in sys.modules)"], env=env, cwd=REPO, check=True, capture_output=True,
        text=True, timeout=60)
    imports = time.time() - start
    assert heavy.stdout.split() == ["False", "False"], heavy.stdout
    assert second.returncode == 2, second.stderr[-3000:]
    # One line from this project (TensorFlow's C++ start-up notices aside).
    lines = [line for line in second.stderr.strip().splitlines()
             if not line.startswith(("WARNING: All log messages", "I0000"))]
    assert len(lines) == 1 and lines[0].startswith("error: "), second.stderr[-3000:]
    assert f"pid {procs.procs['first'].pid} on {socket.gethostname()}" in lines[0]
    assert "train lock" in lines[0] and "--mode" not in lines[0].split(": ", 1)[0]
    # Under 5 s on a quiet machine; on a loaded one, no more than Python's start-up and
    # main.py's light imports (measured just above) take there.
    assert elapsed < max(5.0, imports + 2.0), (elapsed, imports)
    assert procs.wait_all(300) == {"first": 0}, procs.log("first")[-3000:]
    log = procs.log("first")
  assert "Taking over" not in log and "taken over" not in log
  assert int(restore_on_one_device(str(workdir), run_config(steps))["step"]) == steps
  assert os.path.exists(workdir / "eval" / f"step_{steps:08d}.json")
  assert not [n for n in os.listdir(workdir) if n.endswith(".lock")]   # released
  print(f"second writer refused in {elapsed:.1f} s (main.py's imports: {imports:.1f} s)")
