"""SIGTERM in every phase: training, the final evaluation, eval_watch, --mode=sample.

main.py runs in subprocesses (a tiny 2-D GAN: seconds of training, an evaluation in
ten sample chunks) and gets SIGTERM at a moment of the phase under test, seen from
its files; it must save what it has, exit 0 and, rerun, finish with the numbers of an
uninterrupted run. The generated SLURM script runs with stand-in `srun` (which runs
main.py for real) and `scontrol` (which records the requeue) through a SIGTERM in
each phase: it must requeue until the artifact exists, then finish.

The chunks are slowed down (0.3 s each, by a sitecustomize on the subprocesses'
PYTHONPATH) so that the signal lands while the evaluation or sampling runs.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import gan_toy
from tests.test_cluster import recorded
from tests.test_faults import RUN
from tests.test_multihost import REPO, as_flags, with_overrides
from train import cluster, modes

# main.py and the SLURM script in subprocesses, signalled: end to end.
pytestmark = pytest.mark.integration

CONFIG = os.path.join(REPO, "configs/gan_toy.py") + ":runlocal"
NUM_STEPS = 20
# 2,500 points for mode coverage, in 10 chunks of 250.
OVERRIDES = {"sampling.batch_size": 250, "training.sample_every_steps": 0}
FINAL_EVAL = os.path.join("eval", f"step_{NUM_STEPS:08d}.json")
TIMEOUT_S = 240

_SITECUSTOMIZE = """\
import os
if os.environ.get("SLOW_CHUNK_SECONDS"):
  import time
  from evaluation import sample_chunks
  _write = sample_chunks._write_chunk
  def _slow_write(*args):
    _write(*args)
    time.sleep(float(os.environ["SLOW_CHUNK_SECONDS"]))
  sample_chunks._write_chunk = _slow_write
"""


def flags() -> list[str]:
  return [f"--config.{k}={v}" for k, v in OVERRIDES.items()]


def env_for(tmp_path, **extra: str) -> dict[str, str]:
  site = tmp_path / "site"
  site.mkdir(exist_ok=True)
  (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
  return dict(os.environ, JAX_PLATFORMS="cpu", SLOW_CHUNK_SECONDS="0.3",
              PYTHONPATH=os.pathsep.join([str(site), REPO,
                                          os.environ.get("PYTHONPATH", "")]), **extra)


def wait_for(predicate, proc, what: str, timeout: float = TIMEOUT_S) -> None:
  deadline = time.time() + timeout
  while not predicate():
    assert proc.poll() is None, f"exited ({proc.returncode}) before {what}"
    assert time.time() < deadline, f"no {what} within {timeout} s"
    time.sleep(0.05)


def chunks(workdir, pattern: str) -> list[str]:
  return sorted(glob.glob(os.path.join(str(workdir), pattern, "chunk_*.npz")))


def sigterm_at_the_first_chunk(command: list[str], env, log_path) -> float:
  """Runs `command`, SIGTERMs it once an eval sample chunk exists; it must exit 0.
  Returns the seconds from the signal to the exit."""
  workdir = next(a.split("=", 1)[1] for a in command if a.startswith("--workdir="))
  with open(log_path, "w") as log:
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
      wait_for(lambda: chunks(workdir, "eval/samples_step_*"), proc, "a sample chunk")
      start = time.time()
      proc.send_signal(signal.SIGTERM)
      assert proc.wait(timeout=60) == 0, log_path.read_text()[-3000:]
      return time.time() - start
    finally:
      proc.kill()


def assert_the_rerun_finishes_like_an_uninterrupted_eval(command, env, workdir, tmp_path,
                                                         kept: list[str]) -> None:
  rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=TIMEOUT_S)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f"{len(kept)} of 10 chunks already written" in rerun.stderr
  resumed = json.loads((workdir / FINAL_EVAL).read_text())
  # Uninterrupted: the same checkpoint, evaluated from scratch in a fresh workdir.
  fresh = tmp_path / "fresh"
  shutil.copytree(workdir, fresh, ignore=shutil.ignore_patterns("eval", "tensorboard"))
  config = with_overrides(gan_toy.get_config("runlocal"), dict(OVERRIDES))
  reference = modes.evaluate(config, str(fresh))
  assert json.dumps(resumed, sort_keys=True) == json.dumps(reference, sort_keys=True)


def test_sigterm_in_the_final_eval_exits_0_and_the_rerun_finishes_it_identically(
    tmp_path):
  workdir = tmp_path / "run"
  command = [sys.executable, os.path.join(REPO, "main.py"), f"--config={CONFIG}",
             f"--workdir={workdir}", *flags()]
  env = env_for(tmp_path)
  log_path = tmp_path / "first.log"
  stopped_in = sigterm_at_the_first_chunk(command, env, log_path)
  text = log_path.read_text()
  assert "Preempted (SIGTERM) during the evaluation" in text, text[-3000:]
  kept = chunks(workdir, "eval/samples_step_*")
  assert 1 <= len(kept) < 10, kept           # stopped between chunks, chunks kept
  assert not (workdir / FINAL_EVAL).exists()
  assert stopped_in < 10, stopped_in          # one chunk's time, not the whole eval

  assert_the_rerun_finishes_like_an_uninterrupted_eval(command, env, workdir, tmp_path,
                                                       kept)


# ---------------------------------------------------------------------------- SLURM
_SRUN = """#!/bin/bash
# Stand-in srun: records its arguments, then runs the task (main.py) in its place.
n=$(ls "$FAKE_LOG" | grep -c '^srun\\..*\\.args$' || true)
printf '%s\\0' "$@" > "$FAKE_LOG/srun.$n.args"
echo $$ > "$FAKE_LOG/srun.pid"
shift   # --kill-on-bad-exit=1
exec "$@"
"""
_SCONTROL = """#!/bin/bash
n=$(ls "$FAKE_LOG" | grep -c '^scontrol\\..*\\.args$' || true)
printf '%s\\0' "$@" > "$FAKE_LOG/scontrol.$n.args"
"""


def start_job(tmp_path, script: str, env: dict[str, str], restart: int):
  """One start of the batch script (SLURM runs it again after a requeue)."""
  bin_dir, log_dir = tmp_path / "bin", tmp_path / "calls"
  for directory in (bin_dir, log_dir):
    directory.mkdir(exist_ok=True)
  for name, text in (("srun", _SRUN), ("scontrol", _SCONTROL)):
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
  (log_dir / "srun.pid").unlink(missing_ok=True)
  log = open(tmp_path / f"job.{restart}.log", "w")
  proc = subprocess.Popen(
      ["bash", script], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
      env=dict(env, PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", FAKE_LOG=str(log_dir),
               SLURM_JOB_ID="77", SLURM_RESTART_COUNT=str(restart)))
  return proc, log


def run_job(tmp_path, script: str, env, restart: int, signal_when=None) -> int:
  """Runs one start to its end; SIGTERM to main.py once `signal_when()` holds."""
  proc, log = start_job(tmp_path, script, env, restart)
  pid_file = tmp_path / "calls" / "srun.pid"
  try:
    if signal_when is not None:
      wait_for(lambda: pid_file.exists() and signal_when(), proc, "the phase")
      os.kill(int(pid_file.read_text()), signal.SIGTERM)
    status = proc.wait(timeout=TIMEOUT_S)
  finally:
    proc.kill()
    log.close()
  return status


def test_the_slurm_script_requeues_through_sigterm_in_every_phase(tmp_path):
  workdir = tmp_path / "run"
  env = env_for(tmp_path)
  common = ["slurm", f"--config={CONFIG}", f"--workdir={workdir}", "--nodes=1",
            "--gpus_per_node=0", "--time=1:00:00", *flags()]
  train_script, sample_script = tmp_path / "train.sbatch", tmp_path / "sample.sbatch"
  train_script.write_text(cluster.main(common))
  sample_script.write_text(cluster.main(common + ["--mode=sample"]))
  requeues = lambda: recorded(str(tmp_path / "calls"), "scontrol")  # noqa: E731
  log = lambda i: (tmp_path / f"job.{i}.log").read_text()[-3000:]  # noqa: E731

  # 1. Training: SIGTERM once the loop started -> checkpoint, exit 0, requeue.
  assert run_job(tmp_path, str(train_script), env, 0, lambda: (
      workdir / "tensorboard").exists()) == 0, log(0)
  assert "Preempted (SIGTERM): checkpoint of step" in log(0)
  assert requeues() == [["requeue", "77"]]
  # 2. The final evaluation: SIGTERM once a chunk is written -> requeue again.
  assert run_job(tmp_path, str(train_script), env, 1, lambda: chunks(
      workdir, "eval/samples_step_*")) == 0, log(1)
  assert "during the evaluation" in log(1)
  assert not (workdir / FINAL_EVAL).exists() and len(requeues()) == 2
  # 3. No signal: the evaluation finishes from its chunks; no requeue.
  assert run_job(tmp_path, str(train_script), env, 2) == 0, log(2)
  assert (workdir / FINAL_EVAL).exists() and len(requeues()) == 2
  # 4. --mode=sample: SIGTERM once a chunk is written -> requeue; then it finishes.
  samples = workdir / "samples" / f"step_{NUM_STEPS:08d}"
  assert run_job(tmp_path, str(sample_script), env, 3, lambda: chunks(
      samples, "chunks_*")) == 0, log(3)
  assert "during sampling" in log(3) and not (samples / "samples.npz").exists()
  assert len(requeues()) == 3
  assert run_job(tmp_path, str(sample_script), env, 4) == 0, log(4)
  assert (samples / "samples.npz").exists() and not chunks(samples, "chunks_*")
  assert requeues() == [["requeue", "77"]] * 3
  srun_calls = recorded(str(tmp_path / "calls"), "srun")
  assert len(srun_calls) == 5 and srun_calls[-1][-1] == "--mode=sample"


def test_sigterm_in_eval_watch_exits_0_and_the_rerun_finishes_it_identically(tmp_path):
  workdir = tmp_path / "run"
  base = [sys.executable, os.path.join(REPO, "main.py"), f"--config={CONFIG}",
          f"--workdir={workdir}", *flags()]
  env = env_for(tmp_path)
  # A trained workdir whose final checkpoint has not been evaluated yet.
  trained = subprocess.run(base, cwd=REPO, env=dict(env, SLOW_CHUNK_SECONDS=""),
                           capture_output=True, text=True, timeout=TIMEOUT_S)
  assert trained.returncode == 0, trained.stderr[-3000:]
  shutil.rmtree(workdir / "eval")
  watch = [*base, "--mode=eval_watch"]
  log_path = tmp_path / "watch.log"
  stopped_in = sigterm_at_the_first_chunk(watch, env, log_path)
  text = log_path.read_text()
  assert "Preempted (SIGTERM) during eval_watch" in text, text[-3000:]
  kept = chunks(workdir, "eval/samples_step_*")
  assert 1 <= len(kept) < 10 and not (workdir / FINAL_EVAL).exists(), kept
  assert stopped_in < 10, stopped_in
  assert not [n for n in os.listdir(workdir) if n.endswith(".lock")]   # released

  assert_the_rerun_finishes_like_an_uninterrupted_eval(watch, env, workdir, tmp_path,
                                                       kept)


def test_sigterm_during_an_edit_exits_0_with_the_edit_whole_or_absent(tmp_path):
  workdir = tmp_path / "digits"
  base = [sys.executable, os.path.join(REPO, "main.py"),
          f"--config={os.path.join(REPO, 'configs', 'ddpm_digits.py')}",
          f"--workdir={workdir}", *as_flags({**RUN, "training.num_train_steps": 2,
                                             "eval.sample_metrics": "none"})]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
      [REPO, os.environ.get("PYTHONPATH", "")]))
  trained = subprocess.run(base, cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=TIMEOUT_S)
  assert trained.returncode == 0, trained.stderr[-3000:]
  guides = tmp_path / "guides.npz"
  np.savez(guides, arr_0=np.random.default_rng(0).integers(0, 256, (64, 8, 8, 1),
                                                            dtype=np.uint8))
  log_path = tmp_path / "edit.log"
  with open(log_path, "w") as log:
    proc = subprocess.Popen([*base, "--mode=sample", "--edit=inpaint", f"--input={guides}"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
      wait_for(lambda: "Restored checkpoint" in log_path.read_text(), proc,
               "the restored checkpoint")
      start = time.time()
      proc.send_signal(signal.SIGTERM)
      assert proc.wait(timeout=60) == 0, log_path.read_text()[-3000:]
      stopped_in = time.time() - start
    finally:
      proc.kill()
  assert stopped_in < 30, stopped_in     # one compiled edit call at most
  edits = workdir / "edits"
  written = sorted(p.name for p in edits.glob("*/*")) if edits.exists() else []
  # The edit is one compiled call: it finished and wrote everything, or wrote nothing.
  assert not written or {"samples.npz", "settings.json"} <= set(written), written
  assert not [n for n in os.listdir(workdir) if n.endswith(".lock")]   # released
  if not written:
    assert "Preempted (SIGTERM) during the edit" in log_path.read_text()
