"""The job launcher: SLURM batch scripts and TPU VM pod commands (train/cluster.py).

The generated scripts are run by bash with fake `srun`, `scontrol` and `gcloud` on
the PATH that record the arguments they receive, so that quoting, requeueing and
signal handling are checked by the shell itself, not by reading the text.
"""

import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

from train import cluster

REPO = cluster.REPO
# A path that breaks naive quoting: spaces, quotes, and a command substitution.
AWKWARD = "my runs/it's a \"test\" $(touch INJECTED)"
OVERRIDES = ["--config.training.batch_size=256", "--config.data.data_dir=/data/my tfds"]


def slurm_argv(workdir, *extra: str) -> list[str]:
  return ["slurm", "--config=configs/ddpm_cifar.py", f"--workdir={workdir}", "--nodes=2",
          "--gpus_per_node=8", "--time=48:00:00", "--partition=gpu", "--account=proj",
          "--extra=--qos=high", "--extra=--mem=0", *extra, *OVERRIDES]


def tpu_argv(*extra: str) -> list[str]:
  return ["tpu", "--config=configs/ddpm_cifar.py", "--workdir=gs://bucket/ddpm runs/a",
          "--tpu_name=ddpm", "--zone=us-central2-b", "--accelerator_type=v4-32",
          *extra, *OVERRIDES]


def fake_commands(directory, names: list[str]) -> str:
  """Executables that record their working directory and arguments (NUL-separated),
  then sleep $FAKE_SECONDS and exit with $FAKE_EXIT. Returns the folder."""
  bin_dir = os.path.join(directory, "bin")
  os.makedirs(bin_dir, exist_ok=True)
  for name in names:
    path = os.path.join(bin_dir, name)
    with open(path, "w") as f:
      f.write(f"""#!/bin/bash
n=$(ls "$FAKE_LOG" | grep -c "^{name}\\..*\\.args$" || true)
pwd > "$FAKE_LOG/{name}.$n.cwd"
printf '%s\\0' "$@" > "$FAKE_LOG/{name}.$n.args"
if [[ {name} == srun ]]; then sleep "${{FAKE_SECONDS:-0}}"; exit "${{FAKE_EXIT:-0}}"; fi
""")
    os.chmod(path, 0o755)
  return bin_dir


def recorded(log_dir, name: str) -> list[list[str]]:
  """The argument lists of every call of fake `name`, in order."""
  calls, n = [], 0
  while os.path.exists(os.path.join(log_dir, f"{name}.{n}.args")):
    with open(os.path.join(log_dir, f"{name}.{n}.args"), "rb") as f:
      calls.append([a.decode() for a in f.read().split(b"\0")[:-1]])
    n += 1
  return calls


def run_script(tmp_path, text: str, fakes: list[str], **env: str):
  """Starts the script under bash with the fakes first on the PATH."""
  script = tmp_path / "job.sh"
  script.write_text(text)
  log_dir = tmp_path / "calls"
  log_dir.mkdir(exist_ok=True)
  bin_dir = fake_commands(str(tmp_path), fakes)
  full_env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ["PATH"],
                  FAKE_LOG=str(log_dir), SLURM_JOB_ID="4242", SLURM_NTASKS="16",
                  SLURM_NNODES="2", **env)
  return subprocess.Popen(["bash", str(script)], cwd=tmp_path, env=full_env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), \
      str(log_dir)


# --------------------------------------------------------------------------- SLURM
def test_slurm_script_has_the_directives_and_is_valid_bash(tmp_path):
  text = cluster.main(slurm_argv(tmp_path / "w"))
  lines = text.splitlines()
  assert lines[0] == "#!/bin/bash"
  directives = [line.split(" ", 1)[1] for line in lines if line.startswith("#SBATCH ")]
  assert directives == [
      "--job-name=ddpm_cifar", "--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8",
      "--time=48:00:00", "--requeue", "--signal=TERM@120", "--open-mode=append",
      "--output=%x-%j.out", "--partition=gpu", "--account=proj", "--qos=high",
      "--mem=0"]
  # sbatch stops reading directives at the first command.
  first_command = next(i for i, line in enumerate(lines)
                       if line.strip() and not line.startswith("#"))
  assert all(i < first_command for i, line in enumerate(lines)
             if line.startswith("#SBATCH"))
  script = tmp_path / "job.sbatch"
  script.write_text(text)
  subprocess.run(["bash", "-n", str(script)], check=True, timeout=10)


def test_cpu_nodes_get_one_task_per_node_and_no_gpus(tmp_path):
  text = cluster.main(["slurm", "--config=configs/ddpm_digits.py",
                       f"--workdir={tmp_path}", "--nodes=4", "--gpus_per_node=0",
                       "--time=1:00:00", "--signal_seconds=300"])
  directives = [line for line in text.splitlines() if line.startswith("#SBATCH")]
  assert "#SBATCH --ntasks-per-node=1" in directives
  assert "#SBATCH --signal=TERM@300" in directives
  assert not [d for d in directives if "gpu" in d]


def test_srun_starts_main_py_with_the_exact_paths_and_overrides(tmp_path):
  workdir = str(tmp_path / AWKWARD)
  text = cluster.main(slurm_argv(workdir, "--setup=export MARKER=set-up"))
  proc, log_dir = run_script(tmp_path, text, ["srun", "scontrol"])
  out, err = proc.communicate(timeout=30)
  assert proc.returncode == 0, err
  (srun_args,) = recorded(log_dir, "srun")
  assert srun_args == [
      "--kill-on-bad-exit=1", sys.executable, "main.py",
      "--config=" + os.path.join(REPO, "configs/ddpm_cifar.py"),
      f"--workdir={workdir}", *OVERRIDES]
  with open(os.path.join(log_dir, "srun.0.cwd")) as f:
    assert f.read().strip() == REPO       # main.py is found from the repository
  assert not list(tmp_path.rglob("INJECTED")) and not os.path.exists(
      os.path.join(REPO, "INJECTED"))      # $(...) in a path stayed text


@pytest.mark.parametrize("srun_exit,finished,requeued", [
    (0, False, True),    # SIGTERM before the time limit: checkpoint saved, go again
    (0, True, False),    # training and the final eval are done
    (1, False, False),   # a real failure: do not loop on it
])
def test_the_job_requeues_itself_only_when_stopped_early(tmp_path, srun_exit, finished,
                                                          requeued):
  workdir = tmp_path / "w"
  text = cluster.main(slurm_argv(workdir, "--config.training.num_train_steps=1000"))
  if finished:
    (workdir / "eval").mkdir(parents=True)
    (workdir / "eval" / "step_00001000.json").write_text("{}")
  proc, log_dir = run_script(tmp_path, text, ["srun", "scontrol"],
                             FAKE_EXIT=str(srun_exit))
  _, err = proc.communicate(timeout=30)
  assert proc.returncode == srun_exit, err
  assert recorded(log_dir, "scontrol") == ([["requeue", "4242"]] if requeued else [])


def test_the_batch_script_waits_for_the_tasks_through_sigterm(tmp_path):
  """Preemption signals the batch shell too; it must not exit while tasks save."""
  text = cluster.main(slurm_argv(tmp_path / "w"))
  start = time.time()
  proc, log_dir = run_script(tmp_path, text, ["srun", "scontrol"], FAKE_SECONDS="3")
  deadline = time.time() + 20
  while not recorded(log_dir, "srun") and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=30)
  assert proc.returncode == 0, err
  assert "SIGTERM" in err and time.time() - start >= 3   # it waited for srun
  assert recorded(log_dir, "scontrol") == [["requeue", "4242"]]


# ----------------------------------------------------------------------------- TPU
def tpu_calls(tmp_path) -> list[list[str]]:
  """Runs the TPU commands against a fake gcloud; returns its calls."""
  proc, log_dir = run_script(tmp_path, cluster.main(tpu_argv()), ["gcloud"])
  _, err = proc.communicate(timeout=30)
  assert proc.returncode == 0, err
  return recorded(log_dir, "gcloud")


def remote_command(call: list[str]) -> str:
  (command,) = [a.split("=", 1)[1] for a in call if a.startswith("--command=")]
  return command


def test_tpu_commands_create_copy_install_and_train_on_every_worker(tmp_path):
  calls = tpu_calls(tmp_path)
  prefix = ["compute", "tpus", "tpu-vm"]
  assert [c[:4] for c in calls] == [prefix + ["create"]] + [prefix + ["ssh"]] + [
      prefix + ["scp"]] + [prefix + ["ssh"]] * 2
  create, mkdir, copy, install, train = calls
  assert create[4] == "ddpm" and "--accelerator-type=v4-32" in create
  assert "--zone=us-central2-b" in create
  for call in (mkdir, copy, install, train):   # every worker of the pod, not one
    assert "--worker=all" in call and "--zone=us-central2-b" in call
  copied = {os.path.basename(p) for p in copy[4:] if p.startswith(REPO)}
  assert {"main.py", "requirements.txt", "configs", "train", "datasets", "models",
          "sampling"} <= copied and "tests" not in copied
  assert copy[-1] == "ddpm:~/generative/"
  assert "requirements.txt" in remote_command(install)
  assert "jax[tpu]==0.10.2" in shlex.split(remote_command(install).split("&&")[-1])
  # The remote shell gets main.py with the config, workdir and overrides intact.
  words = shlex.split(remote_command(train))
  start = words.index("main.py")
  assert words[start:start + 5] == ["main.py", "--config=configs/ddpm_cifar.py",
                                    "--workdir=gs://bucket/ddpm runs/a", *OVERRIDES]
  assert "TRAIN_DISTRIBUTED=on" in words and "nohup" in words
  for call in (mkdir, install, train):
    subprocess.run(["bash", "-n", "-c", remote_command(call)], check=True, timeout=10)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("argv,message", [
    (slurm_argv("/w", "--time=2h"), "not a SLURM time limit"),
    (slurm_argv("gs://b/w"), "filesystem every node mounts"),
    (slurm_argv("/w", "--partition=a b"), "sbatch does not quote"),
    (slurm_argv("/w", "--extra=qos"), "one sbatch option"),
    (slurm_argv("/w", "--config.training.no_such_field=1"), "no_such_field"),
    (slurm_argv("/w", "--config.training.batch_size=many"), "batch_size"),
    (slurm_argv("/w", "--bogus"), "unrecognized arguments: --bogus"),
    (slurm_argv("/w\nrm -rf /"), "line breaks"),
    (["slurm", "--config=configs/none.py", "--workdir=/w", "--nodes=1",
      "--gpus_per_node=1", "--time=1:00:00"], "no file 'configs/none.py'"),
    (tpu_argv("--workdir=/local/w"), "gs://<bucket>"),
    (tpu_argv("--zone=us central"), "plain name"),
])
def test_bad_input_is_refused_with_what_to_change(argv, message, capsys):
  with pytest.raises(SystemExit):
    cluster.main(argv)
  assert re.search(message, capsys.readouterr().err)


def test_tpu_config_must_be_inside_the_repository(tmp_path):
  outside = tmp_path / "mine.py"
  outside.write_text("from configs import ddpm_digits\n"
                     "def get_config():\n  return ddpm_digits.get_config()\n")
  with pytest.raises(ValueError, match="put the config inside it"):
    cluster.tpu_commands(config=str(outside), workdir="gs://b/w", tpu_name="t",
                         zone="z", accelerator_type="v4-8")
