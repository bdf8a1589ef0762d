"""The variational bound on -log p(x_0) of a DDPM over all timesteps, in bits/dim.

    L = L_T + sum_{t>1} L_{t-1} + L_0                          (Ho et al. eq. 5)

The evaluation driver: every term at once, per example. The terms themselves
(models/diffusion.py `prior_bpd`, `vb_terms_bpd`) are shared with the training
loss. Bits/dim is per sub-pixel over the 256-level data (D = H W C): nats /
(D ln 2), as in the DDPM paper's appendix and the DDPM code's `calc_bpd_loop`.
"""
from __future__ import annotations

import numbers
from typing import Callable

import jax
import jax.numpy as jnp

from datasets import transforms
from models.diffusion import GaussianDiffusion, VAR_TYPES, prior_bpd, vb_terms_bpd

# eps_fn(x_t [B, ...] float32, t int32 [B]) -> predicted noise, as in sampling.
EpsFn = Callable[[jax.Array, jax.Array], jax.Array]


def vlb_bpd(
    eps_fn: EpsFn,
    diffusion: GaussianDiffusion,
    x0_uint8: jax.Array,
    rng: jax.Array,
    *,
    var_type: str = 'fixedlarge',
    clip_denoised: bool = False,
    timestep_chunk: int = 1,
    noise: jax.Array | None = None,
) -> dict[str, jax.Array]:
  """The full variational bound (eq. 5) per example, in bits/dim.

  Every one of the T terms is evaluated, one eps_fn call per (example, t),
  with x_t = q_sample(x_0, t, noise_t), noise_t = normal(fold_in(rng, t)), or
  noise[t] when `noise` [T, *x0.shape] is given (to compare two implementations on
  the same draws; rng is then unused).
  The T timesteps run in a `lax.map` over chunks of `timestep_chunk`
  timesteps, vmapped within a chunk: eps_fn always sees a [B] batch, and
  memory grows with timestep_chunk * B, so raise it to trade memory for
  speed. Jit-able (close over eps_fn).

  Returns:
    'bpd_vlb' [B]: prior_bpd + sum of terms_bpd.
    'prior_bpd' [B]: L_T.
    'decoder_bpd' [B]: L_0 (= terms_bpd[:, 0]).
    'terms_bpd' [B, T]: column 0 is L_0, column t >= 1 the KL for x_{t-1}.
  """
  if var_type not in VAR_TYPES:
    raise ValueError(f'Unknown var_type {var_type!r}; choose one of {VAR_TYPES}.')
  if not jnp.issubdtype(x0_uint8.dtype, jnp.integer):
    raise ValueError(
        f'x0_uint8 must hold integer levels in [0, 255], got dtype '
        f'{x0_uint8.dtype}; pass the uint8 images, not the [-1, 1] floats.')
  if x0_uint8.ndim < 2:
    raise ValueError(f'x0_uint8 must be [B, ...], got shape {x0_uint8.shape}.')
  if not isinstance(timestep_chunk, numbers.Integral) or timestep_chunk < 1:
    raise ValueError(
        f'timestep_chunk must be a positive integer, got {timestep_chunk!r}.')
  num_timesteps = diffusion.num_timesteps
  if noise is not None and tuple(noise.shape) != (num_timesteps, *x0_uint8.shape):
    raise ValueError(f'noise must have shape [T, *x0.shape] = '
                     f'{(num_timesteps, *x0_uint8.shape)}, got {tuple(noise.shape)}.')
  chunk = min(int(timestep_chunk), num_timesteps)
  num_chunks = -(-num_timesteps // chunk)
  batch = x0_uint8.shape[0]
  x0 = transforms.uint8_to_centered(x0_uint8)

  def timestep_terms(t: jax.Array) -> jax.Array:
    """One timestep t (a scalar) -> the [B] bound terms."""
    noise_t = (jax.random.normal(jax.random.fold_in(rng, t), x0.shape) if noise is None
               else noise[t].astype(jnp.float32))
    t_batch = jnp.full((batch,), t, dtype=jnp.int32)
    x_t = diffusion.q_sample(x0, t_batch, noise_t)
    return vb_terms_bpd(
        eps_fn(x_t, t_batch), diffusion, x0, x_t, t_batch,
        var_type=var_type, clip_denoised=clip_denoised)

  if chunk == 1:
    terms = jax.lax.map(timestep_terms, jnp.arange(num_timesteps, dtype=jnp.int32))
  else:
    # vmap keeps eps_fn's contract (a [B] batch, e.g. for closed-over labels)
    # while XLA runs the chunk's timesteps together. The last chunk is padded
    # with t = T-1 and the padded terms are dropped, so eps_fn is traced once.
    timesteps = jnp.minimum(
        jnp.arange(num_chunks * chunk, dtype=jnp.int32), num_timesteps - 1)
    terms = jax.lax.map(jax.vmap(timestep_terms),
                        timesteps.reshape(num_chunks, chunk))
  terms_bpd = terms.reshape(num_chunks * chunk, batch)[:num_timesteps].T
  prior = prior_bpd(diffusion, x0)
  return {
      'bpd_vlb': prior + jnp.sum(terms_bpd, axis=1),
      'prior_bpd': prior,
      'decoder_bpd': terms_bpd[:, 0],
      'terms_bpd': terms_bpd,
  }
