"""Device mesh and shardings: one 'data' axis over every device of every process.

The same code runs on 1 CPU, N forced CPU devices, a GPU node or a TPU pod: the
TrainState is replicated and batches are split along their leading (batch) axis.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, leading_axes: int = 0) -> NamedSharding:
  """Shards the batch axis; `leading_axes` unsharded axes come first (fused steps)."""
  return NamedSharding(mesh, P(*([None] * leading_axes), DATA_AXIS))


def check_batch_size(global_batch_size: int, what: str = "training.batch_size") -> None:
  """A global batch must split evenly over devices and processes."""
  devices, processes = jax.device_count(), jax.process_count()
  if global_batch_size <= 0 or global_batch_size % devices:
    raise ValueError(
        f"{what}={global_batch_size} must be a positive multiple of the number of "
        f"devices ({devices}, over {processes} process(es)); set --config.{what} to a "
        f"multiple of {devices}.")


def to_global(local_batch, sharding: NamedSharding):
  """Builds global arrays from this process's share of a batch (numpy, host memory)."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_batch)
