"""Multi-process start-up: `jax.distributed.initialize()` when the job has several.

One process per host (TPU pods, CPU tests) or one per GPU (SLURM, Open MPI) joins
JAX's multi-controller runtime. Its coordination service is also what turns a dead
peer into an error: every process sends heartbeats to the coordinator, and when one
stops (SIGKILL, a lost node) the others abort within `heartbeat_timeout_seconds`
instead of waiting forever inside a collective.

Environment variables (read only when the matching argument is None):
  TRAIN_DISTRIBUTED                  auto (default): join when flags or cluster
                                     variables say the job has several processes;
                                     on: always join, letting JAX detect the cluster
                                     (TPU pods, whose workers are known only to the
                                     metadata server); off: never join unless
                                     --coordinator_address/--num_processes say so.
  TRAIN_HEARTBEAT_TIMEOUT_SECONDS    a peer silent this long counts as dead.
  TRAIN_SHUTDOWN_TIMEOUT_SECONDS     how long an exiting process waits for the rest.
  TRAIN_INITIALIZATION_TIMEOUT_SECONDS  how long to wait for every process to join.
"""

import os
from collections.abc import Mapping

import jax
from absl import logging

# A dead peer is noticed within this time (JAX's own default is 100 s). Heartbeats
# come from a C++ thread, so long compilations or Python pauses do not miss them;
# 60 s still rides out a network blip while freeing a SLURM/TPU allocation
# (and letting a requeue start) a minute after a node dies.
DEFAULT_HEARTBEAT_TIMEOUT_SECONDS = 60
# At exit every process waits at a barrier for the others. A peer that failed with a
# Python exception still heartbeats while it waits there, so this bounds how long the
# survivors block in that case (JAX's default: 300 s). Processes finish the same
# work, so healthy ones reach the barrier within seconds of each other.
DEFAULT_SHUTDOWN_TIMEOUT_SECONDS = 120
# Processes of a cluster job start within a few minutes of each other (JAX: 300 s).
DEFAULT_INITIALIZATION_TIMEOUT_SECONDS = 300

_MODES = ("auto", "on", "off")

# Environment variables that mean "this process is one of several".
_CLUSTER_HINTS = {
    "SLURM_NTASKS": lambda v: int(v) > 1,
    "OMPI_COMM_WORLD_SIZE": lambda v: int(v) > 1,
    "JAX_COORDINATOR_ADDRESS": bool,
    "MEGASCALE_COORDINATOR_ADDRESS": bool,
    "TPU_WORKER_HOSTNAMES": lambda v: "," in v,
}


def is_multi_process_job(environ: Mapping[str, str] = os.environ) -> bool:
  """Whether cluster variables describe a job of more than one process."""
  for name, test in _CLUSTER_HINTS.items():
    value = environ.get(name)
    if value:
      try:
        if test(value):
          return True
      except ValueError:
        continue
  return False


def _seconds_from(value: int | None, variable: str, default: int,
                  environ: Mapping[str, str]) -> int:
  """`value`, else the environment variable, else `default`; always positive."""
  source = f"argument ({variable.lower().removeprefix('train_')})"
  if value is None and environ.get(variable):
    source = f"${variable}"
    try:
      value = int(environ[variable])
    except ValueError:
      raise ValueError(f"{source}={environ[variable]!r} must be a whole number of "
                       "seconds.") from None
  if value is None:
    return default
  if value <= 0:
    raise ValueError(f"{source}={value} must be a positive number of seconds.")
  return value


def _mode(environ: Mapping[str, str]) -> str:
  mode = environ.get("TRAIN_DISTRIBUTED", "auto").strip().lower() or "auto"
  aliases = {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off",
             "no": "off"}
  mode = aliases.get(mode, mode)
  if mode not in _MODES:
    raise ValueError(f"$TRAIN_DISTRIBUTED={environ['TRAIN_DISTRIBUTED']!r}: use one "
                     f"of {', '.join(_MODES)}.")
  return mode


def initialize_arguments(coordinator_address: str | None = None,
                         num_processes: int | None = None,
                         process_id: int | None = None, *,
                         heartbeat_timeout_seconds: int | None = None,
                         shutdown_timeout_seconds: int | None = None,
                         initialization_timeout_seconds: int | None = None,
                         environ: Mapping[str, str] = os.environ) -> dict | None:
  """The keyword arguments for `jax.distributed.initialize`, or None: stay alone.

  Pure (no JAX state is touched), so that every decision is testable.
  """
  explicit = coordinator_address is not None or (num_processes or 0) > 1
  if num_processes is not None and num_processes < 1:
    raise ValueError(f"--num_processes={num_processes} must be >= 1.")
  cluster = is_multi_process_job(environ)
  if explicit:
    missing = [name for name, value in (("--coordinator_address", coordinator_address),
                                        ("--num_processes", num_processes),
                                        ("--process_id", process_id)) if value is None]
    if missing and not cluster:   # on SLURM/Open MPI, JAX fills in what is missing
      raise ValueError(f"A multi-process job started by hand needs all of "
                       f"--coordinator_address, --num_processes and --process_id; "
                       f"missing {', '.join(missing)}.")
    if None not in (num_processes, process_id) and not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id={process_id} must be in [0, {num_processes}).")
    if coordinator_address is not None and ":" not in coordinator_address:
      raise ValueError(f"--coordinator_address={coordinator_address!r} must be "
                       "host:port (process 0's host, any free port).")
  # Explicit flags always join; the environment variable only steers detection.
  mode = _mode(environ)
  if not explicit and (mode == "off" or (mode == "auto" and not cluster)):
    return None
  arguments = dict(
      heartbeat_timeout_seconds=_seconds_from(
          heartbeat_timeout_seconds, "TRAIN_HEARTBEAT_TIMEOUT_SECONDS",
          DEFAULT_HEARTBEAT_TIMEOUT_SECONDS, environ),
      shutdown_timeout_seconds=_seconds_from(
          shutdown_timeout_seconds, "TRAIN_SHUTDOWN_TIMEOUT_SECONDS",
          DEFAULT_SHUTDOWN_TIMEOUT_SECONDS, environ),
      initialization_timeout=_seconds_from(
          initialization_timeout_seconds, "TRAIN_INITIALIZATION_TIMEOUT_SECONDS",
          DEFAULT_INITIALIZATION_TIMEOUT_SECONDS, environ))
  arguments.update({name: value for name, value in (
      ("coordinator_address", coordinator_address), ("num_processes", num_processes),
      ("process_id", process_id)) if value is not None})
  return arguments


def maybe_initialize(coordinator_address: str | None = None,
                     num_processes: int | None = None,
                     process_id: int | None = None, *,
                     heartbeat_timeout_seconds: int | None = None,
                     shutdown_timeout_seconds: int | None = None,
                     initialization_timeout_seconds: int | None = None) -> bool:
  """Joins the multi-controller runtime when flags or the environment ask for it.

  Explicit flags win; otherwise JAX detects SLURM, Open MPI and TPU pods itself.
  A single-process run does nothing. Returns whether the runtime was joined. Must
  run before anything touches a JAX device.
  """
  arguments = initialize_arguments(
      coordinator_address, num_processes, process_id,
      heartbeat_timeout_seconds=heartbeat_timeout_seconds,
      shutdown_timeout_seconds=shutdown_timeout_seconds,
      initialization_timeout_seconds=initialization_timeout_seconds)
  if arguments is None:
    return False
  # Cross-process collectives on CPU (tests, CPU clusters): gloo over TCP needs no
  # MPI installation. It is JAX's default; set it in case a user config cleared it.
  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**arguments)
  logging.info("Process %d of %d; %d local / %d global devices; a peer silent for "
               "%d s counts as dead.", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(),
               arguments["heartbeat_timeout_seconds"])
  return True
