"""What every sampler shares: where its initial sample x_T and its per-step noise come
from, and the labels of class-conditional samples."""
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


def step_noises(noise: jax.Array | None, shape: Sequence[int]) -> jax.Array | None:
  """`noise` as float32, checked against `shape` (steps first); None stays None.

  The seam for replaying another implementation's draws (tests/test_scheduler_parity.py
  feeds diffusers' noise to these samplers): a sampler given `noise` takes loop
  iteration i's standard normal draws from noise[i] instead of its rng; without it
  every draw is the rng's, exactly as before the seam existed.
  """
  if noise is None:
    return None
  noise = jnp.asarray(noise, jnp.float32)
  if noise.shape != tuple(shape):
    raise ValueError(f'noise has shape {noise.shape}; this sampler takes one draw of '
                     f'shape {tuple(shape)} (steps first).')
  return noise


def step_noise(noise: jax.Array | None, i: jax.Array,
               draw: Callable[[], jax.Array]) -> jax.Array:
  """Loop iteration i's draw: noise[i] when `noise` is given, else `draw()`."""
  return draw() if noise is None else noise[i]


def cycled_labels(num_samples: int, num_classes: int) -> jax.Array | None:
  """Class labels 0, 1, ..., num_classes - 1, 0, 1, ... for num_samples samples, so that
  every class is drawn equally often; None for an unconditional model (num_classes 0)."""
  if num_classes <= 0:
    return None
  return jnp.arange(num_samples, dtype=jnp.int32) % num_classes
