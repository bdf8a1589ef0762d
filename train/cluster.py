"""Job launcher: a config and a workdir -> SLURM jobs (submitit, or a batch script),
or TPU VM pod commands.

  python -m train.cluster submit --config=configs/ddpm_cifar.py --workdir=/shared/W \\
      --nodes=2 --gpus_per_node=8 --time=48:00:00 --partition=gpu
  python -m train.cluster submit --config=configs/ddpm_cifar.py --workdir=/shared/S \\
      --nodes=1 --gpus_per_node=8 --time=48:00:00 \\
      --sweep="config.optim.learning_rate=1e-4,2e-4 config.seed=0,1"

  python -m train.cluster slurm --config=configs/ddpm_cifar.py --workdir=/shared/W \\
      --nodes=2 --gpus_per_node=8 --time=48:00:00 --partition=gpu > job.sbatch
  sbatch job.sbatch

  python -m train.cluster tpu --config=configs/ddpm_cifar.py --workdir=gs://B/W \\
      --tpu_name=ddpm --zone=us-central2-b --accelerator_type=v4-32 > tpu.sh
  bash tpu.sh

Anything of the form --config.<field>=<value> is checked against the config here and
passed on to every main.py process unchanged.

`submit` (the SLURM path; needs submitit, pinned in requirements.txt) submits through
submitit: one job, or with --sweep a job array over the cartesian product of the
listed values, each run in its own workdir <workdir>/<field>=<value>,... (seeds are a
sweep over config.seed). Preemption and the time limit are handled by submitit's
checkpointing hook (train/submitit_job.py): main.py is stopped with SIGTERM, saves,
and the job is requeued until the run's final artifact exists. Logs:
<workdir>/submitit/<job id>/. --cluster=local runs the same jobs as local processes
(no SLURM); --dry_run lists the jobs and submits nothing.

`slurm` and `tpu` only print; they submit nothing, so the output can be read and
edited first. `slurm` is the plain sbatch script, for machines without submitit.

SLURM: one task (process) per GPU, the layout JAX's SLURM detection expects (each
process takes the GPU numbered by its SLURM_LOCALID); process 0 on the first node is
the coordinator. `--signal=TERM@<s>` sends SIGTERM to every task <s> seconds before
the time limit: main.py saves what it has (the checkpoint of the step it is at, or the
sample chunks of the final evaluation or of --mode=sample) and exits 0, and the script
requeues the job until the run's final artifact exists (train and eval: the eval file
of the last step; sample: its samples.npz). `--requeue` lets SLURM requeue a job
preempted by a higher-priority one; `srun --kill-on-bad-exit` and the heartbeat
(train/distributed.py) end the job when a process dies.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import re
import shlex
import sys
import urllib.parse
from collections.abc import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")   # SLURM: [D-]HH[:MM[:SS]], MM, ...
_SAFE_DIRECTIVE = re.compile(r"^[A-Za-z0-9_.,:@%=/+\-\[\]]+$")
MODES = ("train", "eval", "sample")   # main.py's modes a batch job can run to the end


# ---------------------------------------------------------------------- the config
def load_config(config: str, overrides: Sequence[str]):
  """The config main.py would build from `--config=<config> <overrides>`.

  Raises ValueError naming the bad argument: a missing file, an unknown field, a
  value of the wrong type.
  """
  from absl import flags   # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags   # pylint: disable=g-import-not-at-top
  path = config.split(":", 1)[0]
  if not os.path.isfile(path):
    raise ValueError(f"--config={config}: no file {path!r} (a config is a .py file "
                     "such as configs/ddpm_cifar.py).")
  bad = [o for o in overrides if not re.match(r"^--config\.[A-Za-z_][\w.]*=", o)]
  if bad:
    raise ValueError(f"Unexpected arguments {bad}: config overrides are written "
                     "--config.<field>=<value>.")
  argv = ["main.py", f"--config={config}", *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values,
                                  lock_config=True, sys_argv=argv)
  try:
    values(argv)
    return values.config
  except (flags.Error, AttributeError, KeyError, TypeError) as e:
    raise ValueError(f"--config={config} {' '.join(overrides)}: {e}") from None


def _absolute_config(config: str) -> str:
  """The config path made absolute (jobs start in the repository, not here)."""
  path, colon, argument = config.partition(":")
  return os.path.abspath(path) + colon + argument


def _is_remote(path: str) -> bool:
  return "://" in path


def main_arguments(config: str, workdir: str, overrides: Sequence[str]) -> list[str]:
  return [f"--config={config}", f"--workdir={workdir}", *overrides]


def _command_line(argv: Sequence[str]) -> str:
  return " ".join(shlex.quote(a) for a in ["python", "-m", "train.cluster", *argv])


# --------------------------------------------------------------------------- SLURM
def _check_slurm_options(*, mode: str, nodes: int, gpus_per_node: int, time: str,
                         signal_seconds: int, workdir: str) -> None:
  if mode not in MODES:
    raise ValueError(f"--mode={mode!r}; choose one of {MODES}.")
  if nodes < 1:
    raise ValueError(f"--nodes={nodes} must be >= 1.")
  if gpus_per_node < 0:
    raise ValueError(f"--gpus_per_node={gpus_per_node} must be >= 0 (0: CPU nodes).")
  if not _TIME.match(time):
    raise ValueError(f"--time={time!r} is not a SLURM time limit such as 48:00:00 or "
                     "2-00:00:00.")
  if signal_seconds < 10:
    raise ValueError(f"--signal_seconds={signal_seconds}: leave at least 10 s (better "
                     "minutes) to save a checkpoint before the time limit.")
  if _is_remote(workdir):
    raise ValueError(f"--workdir={workdir}: a SLURM job writes to a filesystem every "
                     "node mounts (e.g. /shared/...), not a URL.")


def final_artifact(workdir: str, last_step: int, mode: str) -> str:
  """What a finished job leaves: the eval file of the last step (train and eval), or
  the samples.npz of the last step (sample); a job is requeued until it exists."""
  if mode == "sample":
    return os.path.join(workdir, "samples", f"step_{last_step:08d}", "samples.npz")
  return os.path.join(workdir, "eval", f"step_{last_step:08d}.json")


def time_minutes(time: str) -> int:
  """A SLURM time limit ([D-]HH:MM:SS, MM, MM:SS, D-HH, D-HH:MM) in whole minutes."""
  if not _TIME.match(time):
    raise ValueError(f"--time={time!r} is not a SLURM time limit such as 48:00:00 or "
                     "2-00:00:00.")
  days, _, clock = time.rpartition("-")
  parts = [int(p) for p in clock.split(":")]
  if days:   # D-HH[:MM[:SS]]
    hours, minutes, seconds = (parts + [0, 0])[:3]
    hours += 24 * int(days)
  else:      # MM, MM:SS, HH:MM:SS
    hours, minutes, seconds = ([0] * (3 - len(parts)) + parts if len(parts) == 3 else
                               [0, *(parts + [0])[:2]])
  return max(1, math.ceil(hours * 60 + minutes + seconds / 60))


def slurm_script(*, config: str, workdir: str, overrides: Sequence[str] = (),
                 nodes: int, gpus_per_node: int, time: str,
                 partition: str | None = None, account: str | None = None,
                 job_name: str | None = None, cpus_per_task: int | None = None,
                 signal_seconds: int = 120, output: str | None = None,
                 extra: Sequence[str] = (), setup: Sequence[str] = (),
                 python: str = sys.executable, repo: str = REPO,
                 heartbeat_timeout_seconds: int | None = None, mode: str = "train",
                 argv: Sequence[str] = ()) -> str:
  """A SLURM batch script that trains `config` in `workdir` (or evaluates or samples
  its final checkpoint: `mode`) and survives preemption."""
  _check_slurm_options(mode=mode, nodes=nodes, gpus_per_node=gpus_per_node, time=time,
                       signal_seconds=signal_seconds, workdir=workdir)
  loaded = load_config(config, overrides)
  config, workdir = _absolute_config(config), os.path.abspath(workdir)
  job_name = job_name or loaded.get("name", "train")
  tasks_per_node = max(gpus_per_node, 1)
  directives = [("job-name", job_name), ("nodes", str(nodes)),
                ("ntasks-per-node", str(tasks_per_node))]
  if gpus_per_node:
    directives.append(("gpus-per-node", str(gpus_per_node)))
  if cpus_per_task:
    directives.append(("cpus-per-task", str(cpus_per_task)))
  directives += [("time", time), ("requeue", None),
                 ("signal", f"TERM@{signal_seconds}"), ("open-mode", "append"),
                 ("output", output or "%x-%j.out")]
  directives += [("partition", partition)] if partition else []
  directives += [("account", account)] if account else []
  lines = []
  for name, value in directives:
    text = f"--{name}" if value is None else f"--{name}={value}"
    if not _SAFE_DIRECTIVE.match(text):
      raise ValueError(f"#SBATCH {text}: sbatch does not quote; use a value without "
                       "spaces or shell characters.")
    lines.append(f"#SBATCH {text}")
  for option in extra:
    if not option.startswith("--") or "\n" in option:
      raise ValueError(f"--extra={option!r} must be one sbatch option such as "
                       "--qos=high or --mem=0.")
    lines.append(f"#SBATCH {option}")

  last = loaded.training.num_train_steps
  final = final_artifact(workdir, last, mode)
  run = [python, "main.py", *main_arguments(config, workdir, overrides)]
  if mode != "train":
    run.append(f"--mode={mode}")
  environment = ["export PYTHONUNBUFFERED=1"]
  if heartbeat_timeout_seconds:
    environment.append(f"export TRAIN_HEARTBEAT_TIMEOUT_SECONDS={heartbeat_timeout_seconds}")
  body = f"""\
set -uo pipefail
cd {shlex.quote(repo)}
{chr(10).join(setup)}
{chr(10).join(environment)}
FINAL={shlex.quote(final)}   # requeued until this exists
{_CHECKPOINT_CHECK.format(checkpoint=shlex.quote(os.path.join(workdir, "checkpoints", str(last))), mode=mode) if mode != "train" else ""}
echo "$(date -Is) job $SLURM_JOB_ID (restart ${{SLURM_RESTART_COUNT:-0}}): ${{SLURM_NTASKS:-?}} task(s) on ${{SLURM_NNODES:-?}} node(s)"

# JAX reads SLURM_* to join the processes (train/distributed.py): no address needed.
srun --kill-on-bad-exit=1 {" ".join(shlex.quote(a) for a in run)} &
srun_pid=$!
# On preemption SLURM signals this script too: keep waiting while the tasks save.
trap 'echo "$(date -Is) SIGTERM: main.py saves what it has and exits" >&2' TERM
while true; do
  wait "$srun_pid"; status=$?
  kill -0 "$srun_pid" 2>/dev/null || break   # wait was interrupted by the trap
done

if [[ $status -eq 0 && ! -e "$FINAL" ]]; then
  # main.py exits 0 before the end only when SIGTERM stopped it (time limit or
  # preemption) after saving: queue the job again; it resumes from what was saved
  # (the checkpoint, or the sample chunks of the evaluation or sampling).
  echo "$(date -Is) stopped before the end; requeueing job $SLURM_JOB_ID" >&2
  scontrol requeue "$SLURM_JOB_ID"
fi
exit $status
"""
  header = ["#!/bin/bash",
            f"# {_command_line(argv)}" if argv else "# Generated by train/cluster.py",
            f"# Trains {loaded.get('name', config)} in {workdir}: {nodes} node(s) x "
            f"{tasks_per_node} task(s), one process per "
            f"{'GPU' if gpus_per_node else 'node'}; submit with: sbatch <this file>"]
  return "\n".join(header + lines) + "\n\n" + body


# eval and sample jobs read the final checkpoint: without it they would end without
# the artifact at every start, and be requeued forever.
_CHECKPOINT_CHECK = """\
if [[ ! -d {checkpoint} ]]; then
  echo "$(date -Is) --mode={mode} needs the checkpoint {checkpoint}: train first" >&2
  exit 1
fi"""


# -------------------------------------------------------------- sweeps (submitit)
_SWEEP_ITEM = re.compile(r"^(?:--)?config\.([A-Za-z_][\w.]*)=(.*)$", re.S)


def _split_values(text: str) -> list[str]:
  """'1e-4,2e-4' -> ['1e-4', '2e-4']; commas inside brackets ('(1,2),(1,2,2)') stay."""
  values, depth, current = [], 0, ""
  for char in text:
    depth += (char in "([{") - (char in ")]}")
    if char == "," and depth == 0:
      values.append(current)
      current = ""
    else:
      current += char
  return values + [current]


def parse_sweep(sweep: str) -> list[tuple[str, list[str]]]:
  """'config.optim.learning_rate=1e-4,2e-4 config.seed=0,1' -> [(field, values)].

  Items are separated by spaces (shell quoting applies); each is
  config.<field>=<value>,<value>,... A value holding commas is bracketed: (1,2).
  """
  fields: list[tuple[str, list[str]]] = []
  for item in shlex.split(sweep):
    match = _SWEEP_ITEM.match(item)
    if not match:
      raise ValueError(f"--sweep item {item!r}: write "
                       "config.<field>=<value>,<value>,...")
    field, values = match.group(1), _split_values(match.group(2))
    if any(not v.strip() for v in values):
      raise ValueError(f"--sweep item {item!r} has an empty value.")
    if len(set(values)) != len(values):
      raise ValueError(f"--sweep item {item!r} repeats a value.")
    if field in dict(fields):
      raise ValueError(f"--sweep names config.{field} twice.")
    fields.append((field, values))
  return fields


def _workdir_name(assignments: Sequence[tuple[str, str]]) -> str:
  """'optim.learning_rate=0.0001,seed=0': readable, and one folder level."""
  return ",".join(f"{field}={urllib.parse.quote(value, safe='()')}"
                  for field, value in assignments)


def expand_sweep(workdir: str, sweep: str = "",
                 overrides: Sequence[str] = ()) -> list[tuple[str, list[str]]]:
  """(workdir, overrides) of every job: the cartesian product of the sweep's values,
  each in its own workdir under `workdir`; without a sweep, the one job in `workdir`."""
  fields = parse_sweep(sweep)
  fixed = {o.split("=", 1)[0][len("--config."):] for o in overrides}
  both = sorted(fixed & {field for field, _ in fields})
  if both:
    raise ValueError(f"config.{both[0]} is both swept and set by --config.{both[0]}=.")
  if not fields:
    return [(workdir, list(overrides))]
  jobs = []
  for values in itertools.product(*(v for _, v in fields)):
    assignments = [(field, value) for (field, _), value in zip(fields, values)]
    jobs.append((os.path.join(workdir, _workdir_name(assignments)),
                 [*overrides, *(f"--config.{f}={v}" for f, v in assignments)]))
  return jobs


def _sbatch_parameters(extra: Sequence[str]) -> dict[str, object]:
  """['--qos=high', '--exclusive'] -> {'qos': 'high', 'exclusive': True}."""
  parameters: dict[str, object] = {}
  for option in extra:
    if not option.startswith("--") or "\n" in option:
      raise ValueError(f"--extra={option!r} must be one sbatch option such as "
                       "--qos=high or --mem=0.")
    name, equals, value = option[2:].partition("=")
    parameters[name.replace("-", "_")] = value if equals else True
  return parameters


def make_executor(folder: str, *, cluster: str, nodes: int, gpus_per_node: int,
                  minutes: int, job_name: str, partition: str | None = None,
                  account: str | None = None, cpus_per_task: int | None = None,
                  signal_seconds: int = 120, extra: Sequence[str] = (),
                  setup: Sequence[str] = (), array_parallelism: int | None = None,
                  repo: str = REPO):
  """A submitit executor: `cluster` slurm (requeued on preemption and at the time
  limit), local (processes on this machine) or debug (in this process)."""
  import submitit  # pylint: disable=g-import-not-at-top
  executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
  parameters = dict(name=job_name, timeout_min=minutes, nodes=nodes,
                    tasks_per_node=max(gpus_per_node, 1))
  if gpus_per_node:
    parameters["gpus_per_node"] = gpus_per_node
  if cpus_per_task:
    parameters["cpus_per_task"] = cpus_per_task
  if cluster == "slurm":
    slurm = dict(signal_delay_s=signal_seconds,
                 setup=[f"cd {shlex.quote(repo)}", *setup],
                 additional_parameters=dict(requeue=True, open_mode="append",
                                            **_sbatch_parameters(extra)))
    slurm.update({k: v for k, v in (("partition", partition), ("account", account),
                                     ("array_parallelism", array_parallelism)) if v})
    parameters.update({f"slurm_{k}": v for k, v in slurm.items()})
  executor.update_parameters(**parameters)
  return executor


def submit_jobs(*, config: str, workdir: str, overrides: Sequence[str] = (),
                sweep: str = "", nodes: int, gpus_per_node: int, time: str,
                partition: str | None = None, account: str | None = None,
                job_name: str | None = None, cpus_per_task: int | None = None,
                signal_seconds: int = 120, extra: Sequence[str] = (),
                setup: Sequence[str] = (), python: str = sys.executable,
                repo: str = REPO, heartbeat_timeout_seconds: int | None = None,
                mode: str = "train", cluster: str = "slurm",
                array_parallelism: int | None = None, dry_run: bool = False,
                argv: Sequence[str] = ()) -> tuple[str, list]:
  """Submits main.py through submitit: one job, or a job array over `sweep`.

  Every job's config is checked before anything is submitted. Returns a report (the
  jobs, their workdirs, where the logs go) and the submitit jobs ([] for dry_run).
  """
  del argv
  _check_slurm_options(mode=mode, nodes=nodes, gpus_per_node=gpus_per_node, time=time,
                       signal_seconds=signal_seconds, workdir=workdir)
  if cluster not in ("slurm", "local", "debug"):
    raise ValueError(f"--cluster={cluster!r}; choose slurm, local or debug.")
  jobs = expand_sweep(os.path.abspath(workdir), sweep, overrides)
  loaded = [load_config(config, job_overrides) for _, job_overrides in jobs]
  config = _absolute_config(config)
  job_name = job_name or loaded[0].get("name", "train")
  environment = ({"TRAIN_HEARTBEAT_TIMEOUT_SECONDS": str(heartbeat_timeout_seconds)}
                 if heartbeat_timeout_seconds else {})
  calls = []
  for (job_workdir, job_overrides), job_config in zip(jobs, loaded):
    last = job_config.training.num_train_steps
    argv = main_arguments(config, job_workdir, job_overrides)
    argv += [f"--mode={mode}"] if mode != "train" else []
    calls.append(dict(argv=argv, final=final_artifact(job_workdir, last, mode),
                      required=(os.path.join(job_workdir, "checkpoints", str(last))
                                if mode != "train" else None)))
  folder = os.path.join(os.path.abspath(workdir), "submitit", "%j")
  lines = [f"{len(calls)} job(s) of {config} ({mode}), logs in {folder}:"]
  if dry_run:
    return "\n".join(lines + [f"  {' '.join(shlex.quote(a) for a in c['argv'])}"
                              for c in calls]) + "\n", []
  from train import submitit_job  # pylint: disable=g-import-not-at-top
  import cloudpickle  # pylint: disable=g-import-not-at-top
  # By value: a job process loads MainJob without this repository on its path.
  cloudpickle.register_pickle_by_value(submitit_job)
  try:
    executor = make_executor(
        folder, cluster=cluster, nodes=nodes, gpus_per_node=gpus_per_node,
        minutes=time_minutes(time), job_name=job_name, partition=partition,
        account=account, cpus_per_task=cpus_per_task, signal_seconds=signal_seconds,
        extra=extra, setup=setup, array_parallelism=array_parallelism, repo=repo)
  except RuntimeError as e:   # submitit finds no SLURM here
    raise ValueError(f"{e} (--cluster=local runs the jobs on this machine).") from None
  with executor.batch():   # one job array on SLURM
    submitted = [executor.submit(submitit_job.MainJob(
        c["argv"], repo=repo, python=python, final=c["final"], required=c["required"],
        grace_seconds=max(signal_seconds - 10, 5), environment=environment))
                 for c in calls]
  lines += [f"  job {job.job_id}: {c['argv'][1].split('=', 1)[1]}"
            for job, c in zip(submitted, calls)]
  return "\n".join(lines) + "\n", submitted


# ---------------------------------------------------------------------------- TPU
def _code_paths(repo: str) -> list[str]:
  """What the workers need: the top-level modules and packages (no workdirs, venvs)."""
  names = []
  for name in sorted(set(os.listdir(repo)) - {"tests"}):
    path = os.path.join(repo, name)
    if name.endswith(".py") or name == "requirements.txt" or (
        os.path.isdir(path) and os.path.exists(os.path.join(path, "__init__.py"))):
      names.append(name)
  return names


def _jax_version(repo: str) -> str:
  with open(os.path.join(repo, "requirements.txt")) as f:
    for line in f:
      if line.startswith("jax=="):
        return line.strip().split("==", 1)[1]
  raise ValueError(f"No jax==<version> pin in {repo}/requirements.txt.")


def tpu_commands(*, config: str, workdir: str, overrides: Sequence[str] = (),
                 tpu_name: str, zone: str, accelerator_type: str,
                 project: str | None = None, runtime_version: str = "tpu-ubuntu2204-base",
                 spot: bool = False, remote_dir: str = "generative",
                 python_version: str = "3.11", repo: str = REPO,
                 heartbeat_timeout_seconds: int | None = None,
                 argv: Sequence[str] = ()) -> str:
  """The gcloud commands that create a TPU VM pod, install the code, and train."""
  if not _is_remote(workdir) or not workdir.startswith("gs://"):
    raise ValueError(f"--workdir={workdir}: every TPU worker writes checkpoints to one "
                     "place; use a Cloud Storage path gs://<bucket>/<dir>.")
  for name, value in (("tpu_name", tpu_name), ("zone", zone),
                      ("accelerator_type", accelerator_type), ("remote_dir", remote_dir)):
    if not re.match(r"^[A-Za-z0-9][\w.\-]*$", value or ""):
      raise ValueError(f"--{name}={value!r} must be a plain name (letters, digits, -).")
  load_config(config, overrides)
  config_path, colon, argument = config.partition(":")
  relative = os.path.relpath(os.path.abspath(config_path), repo)
  if relative.startswith(os.pardir):
    raise ValueError(f"--config={config}: the workers get a copy of {repo}; put the "
                     "config inside it (e.g. configs/).")
  remote_config = relative + colon + argument

  where = [f"--zone={zone}"] + ([f"--project={project}"] if project else [])
  tpu = ["gcloud", "compute", "tpus", "tpu-vm"]

  def on_all_workers(command: str) -> str:
    return " ".join(shlex.quote(a) for a in [*tpu, "ssh", tpu_name, *where,
                                             "--worker=all", f"--command={command}"])

  python = f"python{python_version}"
  venv = f"~/{remote_dir}/.venv"
  jax_version = _jax_version(repo)
  install = " && ".join([
      "sudo apt-get update -qq",
      f"sudo apt-get install -y -qq {python} {python}-venv",
      f"{python} -m venv {venv}",
      f"cd ~/{shlex.quote(remote_dir)}",
      f"{venv}/bin/pip install -q -r requirements.txt "
      f"{shlex.quote(f'jax[tpu]=={jax_version}')}"])
  main = " ".join(shlex.quote(a) for a in [
      "main.py", *main_arguments(remote_config, workdir, overrides)])
  environment = "TRAIN_DISTRIBUTED=on"   # workers are known to the metadata server only
  if heartbeat_timeout_seconds:
    environment += f" TRAIN_HEARTBEAT_TIMEOUT_SECONDS={heartbeat_timeout_seconds}"
  # Detached from the ssh session (it may drop during a days-long run); a log per host.
  train = (f"cd ~/{shlex.quote(remote_dir)} && {environment} nohup {venv}/bin/python "
           f"{main} > ~/train.log 2>&1 < /dev/null & echo $! > ~/train.pid")
  create = [*tpu, "create", tpu_name, *where, f"--accelerator-type={accelerator_type}",
            f"--version={runtime_version}"] + (["--spot"] if spot else [])
  copy = [*tpu, "scp", "--recurse", *where, "--worker=all",
          *[os.path.join(repo, name) for name in _code_paths(repo)],
          f"{tpu_name}:~/{remote_dir}/"]
  q = lambda words: " ".join(shlex.quote(w) for w in words)  # noqa: E731
  return f"""\
#!/bin/bash
# {_command_line(argv) if argv else "Generated by train/cluster.py"}
# Trains {remote_config} on TPU VM {tpu_name} ({accelerator_type}, {zone}) into {workdir}.
# Every worker runs main.py; JAX joins them into one job. Read before running:
# each step can also be pasted by hand.
set -euo pipefail

# 1. Create the TPU VM (skip if it exists). A preempted spot TPU is deleted and
#    created again; then rerun steps 2-4: training resumes from {workdir}.
{q(create)}

# 2. Copy the code to every worker.
{on_all_workers(f"mkdir -p ~/{remote_dir}")}
{q(copy)}

# 3. Install Python {python_version} and the pinned requirements, with JAX for TPU.
{on_all_workers(install)}

# 4. Train on every worker (logs in ~/train.log on each; process 0 writes TensorBoard,
#    samples and eval to {workdir}).
{on_all_workers(train)}

# Follow worker 0:
#   {q([*tpu, "ssh", tpu_name, *where, "--worker=0", "--command=tail -f ~/train.log"])}
# Stop by hand (SIGTERM, as preemption: every worker saves the current step, exits 0):
#   {q([*tpu, "ssh", tpu_name, *where, "--worker=all",
        "--command=kill -TERM $(cat ~/train.pid)"])}
"""


# --------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m train.cluster", description=__doc__.split("\n\n")[0],
      epilog="Any --config.<field>=<value> is passed on to main.py.")
  sub = parser.add_subparsers(dest="target", required=True)
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("--config", required=True, help="e.g. configs/ddpm_cifar.py")
  common.add_argument("--workdir", required=True)
  common.add_argument("--heartbeat_timeout_seconds", type=int, default=None,
                      help="a process silent this long counts as dead (default: "
                      "train/distributed.py)")
  options = argparse.ArgumentParser(add_help=False)   # what a SLURM job takes
  options.add_argument("--mode", default="train", choices=MODES,
                       help="main.py's mode: train (then the final eval), or eval / "
                       "sample the final checkpoint; requeued until its output exists")
  options.add_argument("--nodes", type=int, required=True)
  options.add_argument("--gpus_per_node", type=int, required=True,
                       help="one process per GPU; 0: one process per (CPU) node")
  options.add_argument("--time", required=True, help="time limit, e.g. 48:00:00")
  options.add_argument("--partition")
  options.add_argument("--account")
  options.add_argument("--job_name")
  options.add_argument("--cpus_per_task", type=int)
  options.add_argument("--signal_seconds", type=int, default=120,
                       help="SIGTERM this long before the time limit (checkpoint time)")
  options.add_argument("--extra", action="append", default=[],
                       help="another #SBATCH option, e.g. --extra=--qos=high "
                       "(repeatable)")
  options.add_argument("--setup", action="append", default=[],
                       help="a shell line run before training, e.g. 'module load cuda' "
                       "(repeatable)")
  options.add_argument("--python", default=sys.executable,
                       help="the Python on the nodes (default: this one)")
  submit = sub.add_parser(
      "submit", parents=[common, options],
      help="submit through submitit (SLURM's default path): requeued on preemption, "
      "a job array for --sweep")
  submit.add_argument("--sweep", default="",
                      help='e.g. "config.optim.learning_rate=1e-4,2e-4 '
                      'config.seed=0,1": '
                      "a job per combination, each in <workdir>/<field>=<value>,...")
  submit.add_argument("--cluster", default="slurm", choices=("slurm", "local", "debug"),
                      help="local: processes on this machine (no SLURM); debug: here")
  submit.add_argument("--array_parallelism", type=int,
                      help="at most this many jobs of the array run at once")
  submit.add_argument("--dry_run", action="store_true",
                      help="check every job's config and list the jobs; submit nothing")
  slurm = sub.add_parser("slurm", parents=[common, options],
                         help="a plain SLURM batch script (without submitit)")
  slurm.add_argument("--output", help="log file (sbatch patterns: %%x name, %%j id)")
  tpu = sub.add_parser("tpu", parents=[common], help="gcloud commands for a TPU VM pod")
  tpu.add_argument("--tpu_name", required=True)
  tpu.add_argument("--zone", required=True)
  tpu.add_argument("--accelerator_type", required=True, help="e.g. v4-32, v5p-64")
  tpu.add_argument("--project")
  tpu.add_argument("--runtime_version", default="tpu-ubuntu2204-base")
  tpu.add_argument("--spot", action="store_true", help="a spot (preemptible) TPU")
  tpu.add_argument("--remote_dir", default="generative",
                   help="where the code goes in each worker's home")
  tpu.add_argument("--python_version", default="3.11")
  return parser


def main(argv: Sequence[str] | None = None) -> str:
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = _parser()
  if any("\n" in a or "\r" in a for a in argv):
    # Arguments are echoed in comments, where a line break would start a command.
    parser.error("arguments must not contain line breaks.")
  args, rest = parser.parse_known_args(argv)
  overrides = [a for a in rest if a.startswith("--config.")]
  unknown = [a for a in rest if not a.startswith("--config.")]
  if unknown:
    parser.error(f"unrecognized arguments: {' '.join(unknown)}")
  options = {k: v for k, v in vars(args).items() if k != "target"}
  try:
    if args.target == "submit":
      return submit_jobs(overrides=overrides, argv=argv, **options)[0]
    if args.target == "slurm":
      return slurm_script(overrides=overrides, argv=argv, **options)
    return tpu_commands(overrides=overrides, argv=argv, **options)
  except ValueError as e:
    parser.error(str(e))
  except ImportError as e:
    parser.error(f"{e}: `submit` needs submitit (pip install -r requirements.txt); "
                 "`slurm` prints a batch script without it.")


if __name__ == "__main__":
  sys.stdout.write(main())
