"""Job launcher: a config and a workdir -> a SLURM batch script, or TPU VM pod commands.

  python -m train.cluster slurm --config=configs/ddpm_cifar.py --workdir=/shared/W \\
      --nodes=2 --gpus_per_node=8 --time=48:00:00 --partition=gpu > job.sbatch
  sbatch job.sbatch

  python -m train.cluster tpu --config=configs/ddpm_cifar.py --workdir=gs://B/W \\
      --tpu_name=ddpm --zone=us-central2-b --accelerator_type=v4-32 > tpu.sh
  bash tpu.sh

Anything of the form --config.<field>=<value> is checked against the config here and
passed on to every main.py process unchanged. The launcher only prints; it submits
nothing, so the output can be read and edited first.

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

import argparse
import os
import re
import shlex
import sys
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
  final = os.path.join(workdir, *{
      "sample": ("samples", f"step_{last:08d}", "samples.npz")}.get(
          mode, ("eval", f"step_{last:08d}.json")))
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
  slurm = sub.add_parser("slurm", parents=[common], help="a SLURM batch script")
  slurm.add_argument("--mode", default="train", choices=MODES,
                     help="main.py's mode: train (then the final eval), or eval / "
                     "sample the final checkpoint; requeued until its output exists")
  slurm.add_argument("--nodes", type=int, required=True)
  slurm.add_argument("--gpus_per_node", type=int, required=True,
                     help="one process per GPU; 0: one process per (CPU) node")
  slurm.add_argument("--time", required=True, help="time limit, e.g. 48:00:00")
  slurm.add_argument("--partition")
  slurm.add_argument("--account")
  slurm.add_argument("--job_name")
  slurm.add_argument("--cpus_per_task", type=int)
  slurm.add_argument("--signal_seconds", type=int, default=120,
                     help="SIGTERM this long before the time limit (checkpoint time)")
  slurm.add_argument("--output", help="log file (sbatch patterns: %%x name, %%j id)")
  slurm.add_argument("--extra", action="append", default=[],
                     help="another #SBATCH option, e.g. --extra=--qos=high (repeatable)")
  slurm.add_argument("--setup", action="append", default=[],
                     help="a shell line run before training, e.g. 'module load cuda' "
                     "(repeatable)")
  slurm.add_argument("--python", default=sys.executable,
                     help="the Python on the nodes (default: this one)")
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
    if args.target == "slurm":
      return slurm_script(overrides=overrides, argv=argv, **options)
    return tpu_commands(overrides=overrides, argv=argv, **options)
  except ValueError as e:
    parser.error(str(e))


if __name__ == "__main__":
  sys.stdout.write(main())
