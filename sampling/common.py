"""What every sampler shares: where its initial sample x_T comes from."""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp


def initial_sample(x_init: jax.Array | None, shape: Sequence[int],
                   draw: Callable[[], jax.Array]) -> jax.Array:
  """x_T: `x_init` when given (float32, checked against `shape`), else `draw()`.

  Every sampler takes an optional x_init, so that two samplers (or this code and
  another implementation) can be compared on the same draw; passing the draw a
  sampler makes itself gives exactly its own samples.
  """
  if x_init is None:
    return draw()
  x_init = jnp.asarray(x_init, jnp.float32)
  if x_init.shape != tuple(shape):
    raise ValueError(f'x_init has shape {x_init.shape}; the samples have shape '
                     f'{tuple(shape)}.')
  return x_init
