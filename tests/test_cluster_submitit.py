"""`python -m train.cluster submit`: sweeps, the submitit executor, requeue when
preempted.

No SLURM here: the SLURM executor's batch script is read with a stand-in `srun` on
PATH, and jobs run through submitit's LocalExecutor (real processes, the same
USR2 -> checkpoint -> requeue path that SLURM takes).
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import re
import signal
import time

import psutil
import pytest

from train import cluster

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "ddpm_digits.py")


# ------------------------------------------------------------------------- sweeps
def test_sweep_is_the_exact_cartesian_product_with_distinct_workdirs():
  jobs = cluster.expand_sweep(
      "/w", "config.optim.learning_rate=1e-4,2e-4 config.seed=0,1,2 "
      "--config.model.ch_mult=(1,2),(1,2,2)", ["--config.training.batch_size=8"])
  expected = {("--config.training.batch_size=8", f"--config.optim.learning_rate={lr}",
               f"--config.seed={seed}", f"--config.model.ch_mult={mult}")
              for lr in ("1e-4", "2e-4") for seed in "012"
              for mult in ("(1,2)", "(1,2,2)")}
  assert len(jobs) == 12 and {tuple(o) for _, o in jobs} == expected
  workdirs = [w for w, _ in jobs]
  assert len(set(workdirs)) == 12
  assert all(os.path.dirname(w) == "/w" for w in workdirs)   # one level, no "/"
  assert "/w/optim.learning_rate=1e-4,seed=0,model.ch_mult=(1%2C2)" in workdirs


def test_no_sweep_is_one_job_in_the_workdir():
  jobs = cluster.expand_sweep("/w", "", ["--config.seed=3"])
  assert jobs == [("/w", ["--config.seed=3"])]


def test_seeds_sweep_orders_jobs_like_itertools_product():
  jobs = cluster.expand_sweep("/w", "config.seed=5,6 config.optim.learning_rate=1,2")
  assert [o for _, o in jobs] == [
      [f"--config.seed={s}", f"--config.optim.learning_rate={lr}"]
      for s, lr in itertools.product("56", "12")]


@pytest.mark.parametrize("sweep, message", [
    ("optim.learning_rate=1,2", "write config.<field>"),
    ("config.seed=0,,1", "empty value"),
    ("config.seed=0,0", "repeats a value"),
    ("config.seed=0 config.seed=1", "twice"),
])
def test_bad_sweeps_are_refused(sweep, message):
  with pytest.raises(ValueError, match=message):
    cluster.expand_sweep("/w", sweep)


def test_a_field_both_swept_and_set_is_refused():
  with pytest.raises(ValueError, match="both swept and set"):
    cluster.expand_sweep("/w", "config.seed=0,1", ["--config.seed=2"])


@pytest.mark.parametrize("text, minutes", [
    ("30", 30), ("30:30", 31), ("48:00:00", 2880), ("2-00:00:00", 2880),
    ("1-12", 2160), ("1-12:30", 2190), ("0:00:59", 1)])
def test_slurm_time_limits_in_minutes(text, minutes):
  assert cluster.time_minutes(text) == minutes


def _submit(*extra):
  return cluster.main(["submit", f"--config={CONFIG}", "--workdir=/tmp/sweep",
                       "--nodes=1", "--gpus_per_node=0", "--time=10", *extra])


def test_dry_run_checks_every_job_and_lists_them(capsys):
  report = _submit("--sweep=config.seed=0,1 config.optim.learning_rate=1e-4,2e-4",
                   "--dry_run")
  lines = report.splitlines()
  assert lines[0].startswith("4 job(s)") and len(lines) == 5
  assert "--workdir=/tmp/sweep/seed=1,optim.learning_rate=2e-4" in report
  with pytest.raises(SystemExit):   # an unknown field in any combination
    _submit("--sweep=config.optim.no_such_field=1,2", "--dry_run")
  assert "no_such_field" in capsys.readouterr().err


# ------------------------------------------------------- the SLURM executor's script
def test_slurm_executor_requeues_and_signals_before_the_time_limit(tmp_path,
                                                                  monkeypatch):
  pytest.importorskip("submitit")
  srun = tmp_path / "bin" / "srun"   # submitit looks for srun before it builds anything
  srun.parent.mkdir()
  srun.write_text("#!/bin/sh\n")
  srun.chmod(0o755)
  monkeypatch.setenv("PATH", f"{srun.parent}{os.pathsep}{os.environ['PATH']}")
  executor = cluster.make_executor(
      str(tmp_path / "%j"), cluster="slurm", nodes=2, gpus_per_node=8, minutes=2880,
      job_name="ddpm", partition="gpu", account="lab", signal_seconds=150,
      extra=["--qos=high", "--exclusive"], setup=["module load cuda"], repo="/code")
  script = executor._executor._make_submission_file_text("python -m job", "uid")
  for line in ["#SBATCH --requeue", "#SBATCH --signal=USR2@150", "#SBATCH --nodes=2",
               "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
               "#SBATCH --time=2880", "#SBATCH --partition=gpu", "#SBATCH --qos=high",
               "#SBATCH --account=lab", "#SBATCH --exclusive",
               "#SBATCH --job-name=ddpm",
               "cd /code", "module load cuda"]:
    assert line in script.splitlines(), (line, script)


def test_without_slurm_submit_is_a_one_line_error(capsys, monkeypatch):
  pytest.importorskip("submitit")
  monkeypatch.setenv("PATH", "/nonexistent")
  with pytest.raises(SystemExit):
    _submit()
  assert "--cluster=local" in capsys.readouterr().err


# ------------------------------------------------------- real jobs, LocalExecutor
TINY = ["--config.training.checkpoint_every_steps=10",
        "--config.training.log_every_steps=10",
        "--config.training.sample_every_steps=0", "--config.eval.sample_metrics=none",
        "--config.model.ch=16", "--config.training.batch_size=8",
        "--config.training.async_checkpointing=False"]


@pytest.mark.integration
def test_local_sweep_runs_every_job_and_a_preempted_one_is_requeued(tmp_path,
                                                                    monkeypatch):
  pytest.importorskip("submitit")
  from tests.test_train_loop import cli_env  # pylint: disable=g-import-not-at-top
  for key, value in cli_env().items():   # the jobs inherit these
    if key.startswith(("JAX_", "XLA_")):
      monkeypatch.setenv(key, value)
  report, jobs = cluster.submit_jobs(
      config=f"{CONFIG}:runlocal", workdir=str(tmp_path / "sweep"),
      overrides=[*TINY, "--config.training.num_train_steps=60"],
      sweep="config.seed=0,1", nodes=1, gpus_per_node=0, time="30",
      cluster="local", signal_seconds=60)
  assert len(jobs) == 2, report
  first = tmp_path / "sweep" / "seed=0"
  deadline = time.time() + 400
  while not glob.glob(str(first / "checkpoints" / "[0-9]*[0-9]")):   # once it saved
    assert time.time() < deadline and not jobs[0].done(), jobs[0].stderr()
    time.sleep(0.2)
  # USR2 to the job's task, as SLURM sends it before preemption or the time limit
  # (submitit's local controller would only forward it at its own time limit).
  tasks = [p for p in psutil.Process(jobs[0]._process.pid).children()
           if "submitit.core._submit" in " ".join(p.cmdline())]
  assert len(tasks) == 1
  tasks[0].send_signal(signal.SIGUSR2)
  for job in jobs:
    job.result()   # raises if the job failed
  seeds = []
  for seed in (0, 1):
    workdir = tmp_path / "sweep" / f"seed={seed}"
    with open(workdir / "eval" / "step_00000060.json") as f:
      assert json.load(f)["config_name"] == "ddpm_digits"
    with open(workdir / "config.json") as f:
      seeds.append(json.load(f)["seed"])
  assert seeds == [0, 1]
  log = "".join(open(p).read() for p in glob.glob(
      str(tmp_path / "sweep" / "submitit" / str(jobs[0].job_id) / "*")) if
      p.endswith((".out", ".err")))
  # main.py saved and stopped on the forwarded SIGTERM, and the requeued job resumed.
  assert "Preempted (SIGTERM)" in log, log[-3000:]
  restored = [int(s) for s in re.findall(r"Restored checkpoint at step (\d+)", log)]
  assert len(restored) == 1 and 10 <= restored[0] < 60, log[-3000:]
