"""DDPM ancestral sampling (Ho et al. 2020) and DDIM (Song et al. 2021).

Pure functions of a noise-prediction function, the forward process, an rng and
a shape; each runs one `lax.fori_loop`, so it can be jitted whole. Arguments that
change the loop's structure (shape, var_type, num_steps, eta, spacing, clipping)
are Python values, checked before tracing.

Randomness: x_T is drawn from `split(rng)[0]` (or given as `x_init`); the noise of
loop iteration i from `fold_in(split(rng)[1], i)` (or given as `noise[i]`, to replay
another implementation's draws: tests/test_scheduler_parity.py).

Respacing (Nichol & Dhariwal 2021, sec. 4): pass the respaced process
(`models.diffusion.respaced_diffusion(betas, kept)`) as `diffusion` and the
kept original timesteps as `timestep_map`; the samplers then step through the
K respaced steps and call eps_fn with the original timesteps the network was
trained on. A learned-variance network (eps_fn returning [eps, v], 2C
channels) then interpolates between the respaced beta and beta-tilde.
"""
from __future__ import annotations

from typing import Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from models.diffusion import GaussianDiffusion, VAR_TYPES
from sampling.common import initial_sample, step_noise, step_noises

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]
DDIM_SPACINGS = ('uniform', 'quadratic')


@flax.struct.dataclass
class SampleOutput:
  """Samples in [-1, 1] (unclipped when clip_denoised=False) and their cost."""
  images: jax.Array
  nfe: int = flax.struct.field(pytree_node=False)


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
  shape = tuple(int(s) for s in shape)
  if len(shape) < 1 or any(s < 1 for s in shape):
    raise ValueError(
        f'shape must be a non-empty tuple of positive sizes [B, ...], got {shape}.')
  return shape


def _model_timesteps(
    diffusion: GaussianDiffusion, timestep_map: Sequence[int] | None
) -> jax.Array | None:
  """Checks timestep_map (process index -> network timestep) against diffusion."""
  if timestep_map is None:
    return None
  timestep_map = np.asarray(timestep_map)
  if timestep_map.shape != (diffusion.num_timesteps,):
    raise ValueError(
        f'timestep_map must hold one network timestep per step of the '
        f'(respaced) process, i.e. shape ({diffusion.num_timesteps},), got '
        f'{timestep_map.shape}.')
  return jnp.asarray(timestep_map, dtype=jnp.int32)


def _network_fn(eps_fn: EpsFn, model_timesteps: jax.Array | None) -> EpsFn:
  """eps_fn called with the network's own timesteps on a respaced process."""
  if model_timesteps is None:
    return eps_fn
  return lambda x, t: eps_fn(x, model_timesteps[t])


def ancestral_sample(
    eps_fn: EpsFn,
    diffusion: GaussianDiffusion,
    rng: jax.Array,
    shape: Sequence[int],
    *,
    var_type: str = 'fixedlarge',
    clip_denoised: bool = True,
    timestep_map: Sequence[int] | None = None,
    x_init: jax.Array | None = None,
    noise: jax.Array | None = None,
) -> SampleOutput:
  """Algorithm 2 of Ho et al.: x_{t-1} = mu(x_t, t) + sigma_t z, z = 0 at t = 0.

  One eps_fn call per step of `diffusion`, so nfe = its num_timesteps (K on a
  respaced process, see the module docstring). With clip_denoised the last
  step returns the clipped x_0 prediction (the posterior mean at t = 0 is x_0).
  noise: [num_timesteps, *shape], z of loop iteration i (t = T - 1 - i) in row i
  instead of the rng's; the last row (t = 0) is multiplied by 0.
  """
  shape = _check_shape(shape)
  if var_type not in VAR_TYPES:
    raise ValueError(f'Unknown var_type {var_type!r}; choose one of {VAR_TYPES}.')
  eps_fn = _network_fn(eps_fn, _model_timesteps(diffusion, timestep_map))
  num_timesteps = diffusion.num_timesteps
  noise = step_noises(noise, (num_timesteps, *shape))
  init_rng, loop_rng = jax.random.split(rng)
  x_init = initial_sample(x_init, shape,
                          lambda: jax.random.normal(init_rng, shape, jnp.float32))

  def step(i, x_t):
    t = num_timesteps - 1 - i
    t_batch = jnp.full((shape[0],), t, dtype=jnp.int32)
    eps = eps_fn(x_t, t_batch)
    mean, _, log_variance, _ = diffusion.p_mean_variance(
        eps, x_t, t_batch, var_type=var_type, clip_denoised=clip_denoised)
    z = step_noise(noise, i, lambda: jax.random.normal(
        jax.random.fold_in(loop_rng, i), shape, jnp.float32))
    # No noise on the last step (t = 0): the sample is the decoder's mean.
    noise_scale = jnp.where(t > 0, jnp.exp(0.5 * log_variance), 0.0)
    return mean + noise_scale * z

  images = jax.lax.fori_loop(0, num_timesteps, step, x_init)
  return SampleOutput(images=images, nfe=num_timesteps)


def ddim_timesteps(num_timesteps: int, num_steps: int, spacing: str) -> np.ndarray:
  """The increasing 0-based timesteps tau_1..tau_S visited by DDIM.

  As in the DDIM code (Song et al. 2021, App. D.2): 'uniform' is
  0, c, 2c, ... with c = T // S, 'quadratic' is int(linspace(0, sqrt(0.8 T), S)^2).
  'uniform' takes exactly S steps even when S does not divide T (the DDIM code
  would take a few more). 'quadratic' may repeat early timesteps when S is large
  relative to T; a repeated step leaves x unchanged but still costs an eps_fn call.
  """
  if not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= num_timesteps:
    raise ValueError(
        f'num_steps must be an integer in [1, {num_timesteps}], got {num_steps!r}.')
  if spacing == 'uniform':
    return np.arange(num_steps, dtype=np.int64) * (num_timesteps // num_steps)
  if spacing == 'quadratic':
    # The 1e-6 undoes float rounding (sqrt(0.8 T)^2 can land just below 0.8 T).
    squares = np.linspace(0, np.sqrt(num_timesteps * 0.8), num_steps) ** 2
    return np.floor(squares + 1e-6).astype(np.int64)
  raise ValueError(
      f'Unknown step_spacing {spacing!r}; choose one of {DDIM_SPACINGS}.')


def ddim_sample(
    eps_fn: EpsFn,
    diffusion: GaussianDiffusion,
    rng: jax.Array,
    shape: Sequence[int],
    *,
    num_steps: int,
    eta: float = 0.0,
    step_spacing: str = 'uniform',
    clip_denoised: bool = True,
    timestep_map: Sequence[int] | None = None,
    x_init: jax.Array | None = None,
    noise: jax.Array | None = None,
) -> SampleOutput:
  """DDIM, Song et al. 2021 eq. 12, over the subsequence `ddim_timesteps`.

    x_prev = sqrt(abar_prev) x0_pred + sqrt(1 - abar_prev - sigma^2) eps + sigma z,
    sigma = eta sqrt((1 - abar_prev) / (1 - abar) (1 - abar / abar_prev))   (eq. 16)

  with abar_prev = 1 on the step that lands on x_0. eta = 0 is deterministic given
  x_T; eta = 1 over all T steps is ancestral sampling with 'fixedsmall'
  variances. With clip_denoised, x0_pred is clipped to [-1, 1] and eps is
  recomputed from it so that eq. 12 stays consistent.

  On a respaced process (`timestep_map`, see the module docstring) the
  subsequence is taken from its K steps: num_steps=K visits all of them.
  A learned-variance eps_fn may return [eps, v]; DDIM uses only eps.
  noise: [num_steps, *shape], z of loop iteration i (the i-th step taken) in row i
  instead of the rng's; read only when eta > 0.
  """
  shape = _check_shape(shape)
  eps_fn = _network_fn(eps_fn, _model_timesteps(diffusion, timestep_map))
  num_timesteps = diffusion.num_timesteps
  timesteps = ddim_timesteps(num_timesteps, num_steps, step_spacing)
  eta = float(eta)
  if not eta >= 0.0:
    raise ValueError(f'eta must be >= 0, got {eta}.')
  noise = step_noises(noise, (num_steps, *shape))
  prev_timesteps = np.append(-1, timesteps[:-1])
  timesteps = jnp.asarray(timesteps, dtype=jnp.int32)
  prev_timesteps = jnp.asarray(prev_timesteps, dtype=jnp.int32)
  init_rng, loop_rng = jax.random.split(rng)
  x_init = initial_sample(x_init, shape,
                          lambda: jax.random.normal(init_rng, shape, jnp.float32))

  def step(i, x_t):
    k = num_steps - 1 - i
    t, t_prev = timesteps[k], prev_timesteps[k]
    t_batch = jnp.full((shape[0],), t, dtype=jnp.int32)
    # The first C channels are eps for fixed and learned variances alike.
    eps = eps_fn(x_t, t_batch)[..., :shape[-1]]
    x0_pred = diffusion.predict_x0_from_eps(x_t, t_batch, eps)
    if clip_denoised:
      x0_pred = jnp.clip(x0_pred, -1.0, 1.0)
      eps = diffusion.predict_eps_from_x0(x_t, t_batch, x0_pred)
    alpha_bar = diffusion.alphas_cumprod[t]
    alpha_bar_prev = jnp.where(
        t_prev >= 0, diffusion.alphas_cumprod[jnp.maximum(t_prev, 0)], 1.0)
    x_prev = jnp.sqrt(alpha_bar_prev) * x0_pred
    if eta > 0.0:
      variance = (eta**2 * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
                  * (1.0 - alpha_bar / alpha_bar_prev))
      z = step_noise(noise, i, lambda: jax.random.normal(
          jax.random.fold_in(loop_rng, i), shape, jnp.float32))
      x_prev = x_prev + jnp.sqrt(variance) * z
    else:
      variance = 0.0
    # eta > 1 can make sigma^2 exceed 1 - abar_prev; eq. 12 then drops eps.
    direction_scale = jnp.sqrt(jnp.maximum(1.0 - alpha_bar_prev - variance, 0.0))
    return x_prev + direction_scale * eps

  images = jax.lax.fori_loop(0, num_steps, step, x_init)
  return SampleOutput(images=images, nfe=int(num_steps))
