"""Multi-process start-up: `jax.distributed.initialize()` when the job has several."""

import os

import jax
from absl import logging

# Environment variables that mean "this process is one of several".
_CLUSTER_HINTS = {
    "SLURM_NTASKS": lambda v: int(v) > 1,
    "OMPI_COMM_WORLD_SIZE": lambda v: int(v) > 1,
    "JAX_COORDINATOR_ADDRESS": bool,
    "MEGASCALE_COORDINATOR_ADDRESS": bool,
    "TPU_WORKER_HOSTNAMES": lambda v: "," in v,
}


def is_multi_process_job(environ=os.environ) -> bool:
  for name, test in _CLUSTER_HINTS.items():
    value = environ.get(name)
    if value:
      try:
        if test(value):
          return True
      except ValueError:
        continue
  return False


def maybe_initialize(coordinator_address: str | None = None,
                     num_processes: int | None = None,
                     process_id: int | None = None) -> None:
  """Joins the multi-controller runtime when flags or the environment ask for it.

  Explicit flags win; otherwise JAX detects SLURM, Open MPI and TPU pods itself.
  A single-process run does nothing.
  """
  if coordinator_address or (num_processes and num_processes > 1):
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif is_multi_process_job():
    jax.distributed.initialize()
  else:
    return
  logging.info("Process %d of %d; %d local / %d global devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
