"""Image editing with a trained DDPM: inpainting, colorization, SDEdit,
DDIM-latent interpolation and SR3-style super-resolution.

Every function is pure and jit-able, a function of a noise-prediction
eps_fn(x_t, t [B] int) and a `GaussianDiffusion` (models/diffusion.py), like
sampling/ddpm.py. A score model of a VP SDE can use them through
`eps = -sqrt(1 - abar_t) score` (see models/sde.py `score_from_ddpm_model` for the
converse); guidance composes by passing a guided eps_fn (sampling/guidance.py).

Images: uint8 [0, 255] or float in [-1, 1] ([B, ...], NHWC for images; the
colour functions need C = 3); outputs are float32 [-1, 1]-scaled arrays (not
clipped: `datasets.transforms.centered_to_uint8` rounds and clips for writing).
Masks are 1 where a pixel is known (kept) and 0 where it is generated.

Randomness follows sampling/ddpm.py: the initial draw comes from split(rng)[0],
the noise of loop iteration i from fold_in(split(rng)[1], i).
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from datasets import transforms
from models.diffusion import GaussianDiffusion, VAR_TYPES
from models.unet import concat_condition
from sampling.ddpm import SampleOutput, ancestral_sample, ddim_timesteps
from sampling.edit_options import EDIT_KINDS, MASK_KINDS

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]
LatentMap = Callable[[jax.Array], jax.Array]

# score_sde's colorization basis (Song et al. 2021, App. I.2): an orthonormal
# 3x3 matrix whose first column is (1, 1, 1)/sqrt(3), so channel 0 of x @ M is
# the (scaled) grey level and the other two carry colour only. Being orthonormal
# it maps isotropic Gaussian noise to isotropic noise, so q(x_t | x_0) stays
# decoupled channel by channel in this basis.
COLOUR_DECOUPLING = np.stack([
    np.array([1.0, 1.0, 1.0]) / np.sqrt(3.0),
    np.array([-2.0, 1.0, 1.0]) / np.sqrt(6.0),
    np.array([0.0, 1.0, -1.0]) / np.sqrt(2.0),
], axis=1)


# ---------------------------------------------------------------- inputs
def to_model_images(images: np.ndarray | jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1]; float input must already lie in [-1, 1]."""
  if images.dtype == np.uint8 or images.dtype == jnp.uint8:
    return transforms.uint8_to_centered(images)
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f'Images must be uint8 [0, 255] or float [-1, 1], got '
                     f'{images.dtype}.')
  if not isinstance(images, jax.core.Tracer):  # concrete: check the range now
    low, high = float(np.min(images)), float(np.max(images))
    if low < -1.0 - 1e-3 or high > 1.0 + 1e-3:
      raise ValueError(f'Float images must lie in [-1, 1], got [{low:.3g}, '
                       f'{high:.3g}]: pass uint8 images for [0, 255].')
  return jnp.asarray(images, jnp.float32)


def to_mask(mask: np.ndarray | jax.Array, image_shape: Sequence[int]) -> jax.Array:
  """A {0, 1} float32 mask broadcast to image_shape ([B, ...]); 1 = known.

  Accepts bool, {0, 1} numbers or a uint8 {0, 255} image (e.g. a PNG: white =
  known), shaped [H, W], [H, W, C], [B, H, W] + [1 or C], anything broadcastable.
  """
  mask = np.asarray(mask)
  if mask.dtype == np.uint8 and mask.max(initial=0) > 1:
    mask = mask > 127
  mask = mask.astype(np.float32)
  if not np.all((mask == 0) | (mask == 1)):
    raise ValueError('mask must hold only 0 (generate) and 1 (known) values, or '
                     'a uint8 image with 0 and 255.')
  image_shape = tuple(image_shape)
  if mask.ndim == len(image_shape) - 2:  # [H, W] for NHWC images
    mask = mask[..., None]
  try:
    return jnp.asarray(np.broadcast_to(mask, image_shape))
  except ValueError:
    raise ValueError(f'mask of shape {mask.shape} does not broadcast to the '
                     f'images {image_shape}.') from None


def make_mask(kind: str, height: int, width: int) -> np.ndarray:
  """A [H, W] {0, 1} mask that hides (sets 0) one region.

  'center': the central half-size box; 'left'/'right'/'top'/'bottom': that half.
  """
  mask = np.ones((height, width), np.float32)
  if kind == 'center':
    mask[height // 4:height - height // 4, width // 4:width - width // 4] = 0
  elif kind == 'left':
    mask[:, :width // 2] = 0
  elif kind == 'right':
    mask[:, width // 2:] = 0
  elif kind == 'top':
    mask[:height // 2] = 0
  elif kind == 'bottom':
    mask[height // 2:] = 0
  else:
    raise ValueError(f'Unknown mask kind {kind!r}; choose one of {MASK_KINDS} or '
                     'pass a mask image.')
  return mask


def _check_var_type(var_type: str) -> None:
  if var_type not in VAR_TYPES:
    raise ValueError(f'Unknown var_type {var_type!r}; choose one of {VAR_TYPES}.')


def _network_eps_fn(eps_fn: EpsFn, diffusion: GaussianDiffusion,
                    timestep_map: Sequence[int] | None) -> EpsFn:
  """eps_fn queried at the network's own timesteps on a respaced process.

  As in sampling/ddpm.py (Nichol & Dhariwal 2021 sec. 4): `diffusion` is the
  respaced process of K steps and timestep_map[i] the original timestep that
  its step i stands for.
  """
  if timestep_map is None:
    return eps_fn
  timestep_map = np.asarray(timestep_map)
  if timestep_map.shape != (diffusion.num_timesteps,):
    raise ValueError(
        'timestep_map must hold one network timestep per step of the (respaced) '
        f'process, i.e. shape ({diffusion.num_timesteps},), got '
        f'{timestep_map.shape}.')
  table = jnp.asarray(timestep_map, jnp.int32)
  return lambda x, t: eps_fn(x, table[t])


def _ancestral_step(eps_fn: EpsFn, diffusion: GaussianDiffusion, x_t: jax.Array,
                    t: jax.Array, noise: jax.Array, var_type: str,
                    clip_denoised: bool) -> jax.Array:
  """One draw of p(x_{t-1} | x_t) (Ho et al. Algorithm 2); no noise at t = 0."""
  t_batch = jnp.full((x_t.shape[0],), t, dtype=jnp.int32)
  eps = eps_fn(x_t, t_batch)
  mean, _, log_variance, _ = diffusion.p_mean_variance(
      eps, x_t, t_batch, var_type=var_type, clip_denoised=clip_denoised)
  return mean + jnp.where(t > 0, jnp.exp(0.5 * log_variance), 0.0) * noise


# ---------------------------------------------------- inpainting, colorization
def _identity(x: jax.Array) -> jax.Array:
  return x


def replacement_sample(
    eps_fn: EpsFn,
    diffusion: GaussianDiffusion,
    rng: jax.Array,
    known: jax.Array,
    mask: jax.Array,
    *,
    to_latent: LatentMap = _identity,
    from_latent: LatentMap = _identity,
    num_resample: int = 1,
    var_type: str = 'fixedlarge',
    clip_denoised: bool = True,
    timestep_map: Sequence[int] | None = None,
) -> SampleOutput:
  """Conditional sampling by replacement (Song et al. 2021 sec. 5, App. I).

  In the basis y = to_latent(x) (an orthogonal map, so q stays isotropic there),
  the entries with mask = 1 are known: after every reverse step the known part
  of x_{t-1} is replaced by a fresh draw of q(y_{t-1} | y_0) (eq. 4), and by
  y_0 itself after the last step, so the result carries the known values exactly.
  num_resample = U > 1 adds RePaint's resampling (Lugmayr et al. 2022,
  Algorithm 1, jump length 1): U - 1 times per step, x_{t-1} is diffused back
  to x_t ~ N(sqrt(1 - beta_t) x_{t-1}, beta_t I) and the step redone, which
  harmonises the generated part with the known part. nfe = T * U.

  Args:
    known: [B, ...] float [-1, 1] data whose masked latent entries are kept.
    mask: [B, ...] {0, 1} in the latent basis, 1 = known.
    timestep_map: for a respaced `diffusion`, the network timestep of each of
      its steps (see `_network_eps_fn`); None for the original process.
  """
  _check_var_type(var_type)
  eps_fn = _network_eps_fn(eps_fn, diffusion, timestep_map)
  if not isinstance(num_resample, int) or num_resample < 1:
    raise ValueError(f'num_resample must be an integer >= 1, got {num_resample!r}.')
  if known.shape != mask.shape:
    raise ValueError(f'mask {mask.shape} and images {known.shape} must match.')
  num_timesteps = diffusion.num_timesteps
  shape = known.shape
  known_latent = to_latent(known)
  init_rng, loop_rng = jax.random.split(rng)

  def combine(x_generated, known_part):
    y = to_latent(x_generated)
    return from_latent(mask * known_part + (1.0 - mask) * y)

  def known_at(t, key):
    """A draw of q(y_t | y_0); y_0 itself for t = -1."""
    noisy = diffusion.q_sample(
        known_latent, jnp.full((shape[0],), jnp.maximum(t, 0), jnp.int32),
        jax.random.normal(key, shape, jnp.float32))
    return jnp.where(t >= 0, noisy, known_latent)

  x_init = combine(jax.random.normal(init_rng, shape, jnp.float32),
                   known_at(num_timesteps - 1, jax.random.fold_in(init_rng, 1)))

  def step(i, x_t):
    t = num_timesteps - 1 - i
    step_rng = jax.random.fold_in(loop_rng, i)

    def resample(u, carry):
      x_t, _ = carry
      noise_key, known_key, back_key = jax.random.split(
          jax.random.fold_in(step_rng, u), 3)
      generated = _ancestral_step(
          eps_fn, diffusion, x_t, t,
          jax.random.normal(noise_key, shape, jnp.float32), var_type, clip_denoised)
      x_prev = combine(generated, known_at(t - 1, known_key))
      if num_resample == 1:
        return x_prev, x_prev
      # RePaint: diffuse one step back up, q(x_t | x_{t-1}) (Ho et al. eq. 2).
      beta = diffusion.betas[t]
      x_back = (jnp.sqrt(1.0 - beta) * x_prev + jnp.sqrt(beta)
                * jax.random.normal(back_key, shape, jnp.float32))
      return x_back, x_prev

    _, x_prev = jax.lax.fori_loop(0, num_resample, resample, (x_t, x_t))
    return x_prev

  images = jax.lax.fori_loop(0, num_timesteps, step, x_init)
  return SampleOutput(images=images, nfe=num_timesteps * num_resample)


def inpaint(
    eps_fn: EpsFn,
    diffusion: GaussianDiffusion,
    rng: jax.Array,
    images: np.ndarray | jax.Array,
    mask: np.ndarray | jax.Array,
    *,
    num_resample: int = 1,
    var_type: str = 'fixedlarge',
    clip_denoised: bool = True,
    timestep_map: Sequence[int] | None = None,
) -> SampleOutput:
  """Fills the pixels where mask = 0, keeping those where mask = 1 exactly.

  images: uint8 or [-1, 1] [B, ...]; mask: see `to_mask` (1 = known).
  `replacement_sample` in pixel space; num_resample > 1 is RePaint.
  """
  x0 = to_model_images(images)
  return replacement_sample(
      eps_fn, diffusion, rng, x0, to_mask(mask, x0.shape),
      num_resample=num_resample, var_type=var_type, clip_denoised=clip_denoised,
      timestep_map=timestep_map)


def decouple_color(x: jax.Array) -> jax.Array:
  """RGB [..., 3] -> the decoupled basis: channel 0 = (R + G + B) / sqrt(3)."""
  return jnp.einsum('...i,ij->...j', x, jnp.asarray(COLOUR_DECOUPLING, x.dtype))


def couple_color(y: jax.Array) -> jax.Array:
  """The inverse of `decouple_color` (the matrix is orthonormal: its transpose)."""
  return jnp.einsum('...j,ij->...i', y, jnp.asarray(COLOUR_DECOUPLING, y.dtype))


def to_gray(images: np.ndarray | jax.Array) -> jax.Array:
  """[-1, 1] grey level [B, H, W, 1]: the channel mean, which colorization keeps.

  Accepts uint8 or [-1, 1] images with 1 channel (already grey) or 3 (RGB).
  """
  x = to_model_images(images)
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f'Expected [B, H, W, 1 or 3] images, got {x.shape}.')
  return jnp.mean(x, axis=-1, keepdims=True)


def colorize(
    eps_fn: EpsFn,
    diffusion: GaussianDiffusion,
    rng: jax.Array,
    gray: np.ndarray | jax.Array,
    *,
    num_resample: int = 1,
    var_type: str = 'fixedlarge',
    clip_denoised: bool = True,
    timestep_map: Sequence[int] | None = None,
) -> SampleOutput:
  """RGB images whose channel mean is `gray`, from an RGB model (score_sde App. I.2).

  gray: uint8 or [-1, 1] [B, H, W, 1] (or RGB, whose channel mean is used).
  In the basis of `decouple_color` the grey channel is known and the two colour
  channels are generated: `replacement_sample` with a per-channel mask. The
  result's channel mean equals `gray` (up to float rounding; clipping to
  [-1, 1] for writing may change it where the colour leaves the cube).
  """
  gray = to_gray(gray)
  rgb_gray = jnp.repeat(gray, 3, axis=-1)
  mask = jnp.broadcast_to(jnp.asarray([1.0, 0.0, 0.0]), rgb_gray.shape)
  return replacement_sample(
      eps_fn, diffusion, rng, rgb_gray, mask, to_latent=decouple_color,
      from_latent=couple_color, num_resample=num_resample, var_type=var_type,
      clip_denoised=clip_denoised, timestep_map=timestep_map)


# ---------------------------------------------------------------- SDEdit
def sdedit_num_steps(strength: float, num_timesteps: int) -> int:
  """Reverse steps of SDEdit at t0 = strength: round(strength * T)."""
  strength = float(strength)
  if not 0.0 <= strength <= 1.0:
    raise ValueError(f'SDEdit strength t0 must be in [0, 1], got {strength}.')
  return int(round(strength * num_timesteps))


def sdedit(
    eps_fn: EpsFn,
    diffusion: GaussianDiffusion,
    rng: jax.Array,
    guide: np.ndarray | jax.Array,
    *,
    strength: float,
    var_type: str = 'fixedlarge',
    clip_denoised: bool = True,
    timestep_map: Sequence[int] | None = None,
) -> SampleOutput:
  """SDEdit (Meng et al. 2022, Algorithm 1) with the DDPM reverse process.

  The guide (uint8 or [-1, 1]) is noised to x_{k-1} ~ q(x_{k-1} | guide) with
  k = round(t0 T), t0 = strength in [0, 1], and denoised by k ancestral steps.
  Small t0 stays faithful to the guide; t0 = 1 ignores it. t0 = 0 (k = 0)
  returns the guide exactly (nfe = 0). On a respaced process (`timestep_map`,
  see `replacement_sample`) T is its number of steps K.
  """
  _check_var_type(var_type)
  eps_fn = _network_eps_fn(eps_fn, diffusion, timestep_map)
  x0 = to_model_images(guide)
  num_steps = sdedit_num_steps(strength, diffusion.num_timesteps)
  if num_steps == 0:
    return SampleOutput(images=x0, nfe=0)
  init_rng, loop_rng = jax.random.split(rng)
  start = num_steps - 1
  x_init = diffusion.q_sample(
      x0, jnp.full((x0.shape[0],), start, jnp.int32),
      jax.random.normal(init_rng, x0.shape, jnp.float32))

  def step(i, x_t):
    noise = jax.random.normal(jax.random.fold_in(loop_rng, i), x0.shape, jnp.float32)
    return _ancestral_step(eps_fn, diffusion, x_t, start - i, noise, var_type,
                           clip_denoised)

  images = jax.lax.fori_loop(0, num_steps, step, x_init)
  return SampleOutput(images=images, nfe=num_steps)


# ------------------------------------------------- DDIM latents, interpolation
def _ddim_levels(diffusion: GaussianDiffusion, num_steps: int, step_spacing: str):
  """DDIM timesteps tau_1..tau_S and abar at tau_k and at the level below it."""
  timesteps = ddim_timesteps(diffusion.num_timesteps, num_steps, step_spacing)
  alpha_bar = diffusion.alphas_cumprod[jnp.asarray(timesteps, jnp.int32)]
  # abar of x_{-1} = x_0 is 1 (DDIM eq. 12 lands on the data on its last step).
  alpha_bar_prev = jnp.concatenate([jnp.ones((1,)), alpha_bar[:-1]])
  return jnp.asarray(timesteps, jnp.int32), alpha_bar, alpha_bar_prev


def _ddim_move(x: jax.Array, eps: jax.Array, alpha_bar_from: jax.Array,
               alpha_bar_to: jax.Array) -> jax.Array:
  """DDIM eq. 12 with eta = 0 between two noise levels, either direction.

  x_to = sqrt(abar_to) x0_pred + sqrt(1 - abar_to) eps, x0_pred from eq. 9.
  A learned-variance output [eps, v] (2C channels) contributes its eps only.
  """
  eps = eps[..., :x.shape[-1]]
  x0_pred = (x - jnp.sqrt(1.0 - alpha_bar_from) * eps) / jnp.sqrt(alpha_bar_from)
  return jnp.sqrt(alpha_bar_to) * x0_pred + jnp.sqrt(1.0 - alpha_bar_to) * eps


def ddim_decode(
    eps_fn: EpsFn,
    diffusion: GaussianDiffusion,
    x_T: jax.Array,
    *,
    num_steps: int,
    step_spacing: str = 'uniform',
) -> SampleOutput:
  """Deterministic DDIM (eta = 0) from a given latent x_T to x_0, unclipped.

  The same steps as `sampling.ddpm.ddim_sample(eta=0, clip_denoised=False)`,
  which draws its own x_T; here x_T is an input (e.g. from `ddim_invert`).
  """
  timesteps, alpha_bar, alpha_bar_prev = _ddim_levels(
      diffusion, num_steps, step_spacing)

  def step(i, x):
    k = num_steps - 1 - i
    t_batch = jnp.full((x.shape[0],), timesteps[k], jnp.int32)
    return _ddim_move(x, eps_fn(x, t_batch), alpha_bar[k], alpha_bar_prev[k])

  return SampleOutput(images=jax.lax.fori_loop(0, num_steps, step, x_T),
                      nfe=int(num_steps))


def ddim_invert(
    eps_fn: EpsFn,
    diffusion: GaussianDiffusion,
    images: np.ndarray | jax.Array,
    *,
    num_steps: int,
    step_spacing: str = 'uniform',
    num_fixed_point_iterations: int = 0,
) -> SampleOutput:
  """DDIM inversion: the latent x_T that `ddim_decode` maps back to the images.

  Runs eq. 12 upwards (Song et al. 2021 sec. 4.3, the ODE of eq. 14 integrated
  from 0 to T): step k takes x at level tau_{k-1} to tau_k. A decoding step
  uses eps(x_{tau_k}, tau_k), unknown while inverting; plain inversion uses eps
  at the lower end (x, tau_{k-1}) instead (eps(x_0, tau_1) on the first step), a
  first-order error: the round trip error shrinks like 1 / num_steps.
  num_fixed_point_iterations = n > 0 then solves the implicit step
  x_{tau_k} = move(x_{tau_{k-1}}, eps(x_{tau_k}, tau_k)) by n fixed-point
  iterations (as in fixed-point DDIM inversion, Pan et al. 2023), after which a
  decoding step undoes the inversion step up to the iteration's residual.
  nfe = num_steps (1 + n).
  """
  if (not isinstance(num_fixed_point_iterations, int)
      or num_fixed_point_iterations < 0):
    raise ValueError('num_fixed_point_iterations must be an integer >= 0, got '
                     f'{num_fixed_point_iterations!r}.')
  x0 = to_model_images(images)
  timesteps, alpha_bar, alpha_bar_prev = _ddim_levels(
      diffusion, num_steps, step_spacing)
  eval_timesteps = jnp.concatenate([timesteps[:1], timesteps[:-1]])
  batch = x0.shape[0]

  def step(k, x):
    up = lambda eps: _ddim_move(x, eps, alpha_bar_prev[k], alpha_bar[k])  # noqa: E731
    x_next = up(eps_fn(x, jnp.full((batch,), eval_timesteps[k], jnp.int32)))
    t_batch = jnp.full((batch,), timesteps[k], jnp.int32)
    return jax.lax.fori_loop(
        0, num_fixed_point_iterations,
        lambda _, x_next: up(eps_fn(x_next, t_batch)), x_next)

  return SampleOutput(images=jax.lax.fori_loop(0, num_steps, step, x0),
                      nfe=int(num_steps * (1 + num_fixed_point_iterations)))


def slerp(z0: jax.Array, z1: jax.Array, fraction: jax.Array) -> jax.Array:
  """Spherical interpolation per example (Shoemake 1985), as in DDIM sec. 5.3.

  sin((1 - f) theta) / sin(theta) z0 + sin(f theta) / sin(theta) z1, theta the
  angle between the flattened examples; linear where they are (anti)parallel.
  fraction: a scalar or [B].
  """
  flat0 = z0.reshape(z0.shape[0], -1)
  flat1 = z1.reshape(z1.shape[0], -1)
  cos = jnp.sum(flat0 * flat1, axis=1) / (
      jnp.linalg.norm(flat0, axis=1) * jnp.linalg.norm(flat1, axis=1))
  theta = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
  f = jnp.broadcast_to(jnp.asarray(fraction, jnp.float32), theta.shape)
  sin = jnp.sin(theta)
  degenerate = sin < 1e-6
  safe_sin = jnp.where(degenerate, 1.0, sin)
  w0 = jnp.where(degenerate, 1.0 - f, jnp.sin((1.0 - f) * theta) / safe_sin)
  w1 = jnp.where(degenerate, f, jnp.sin(f * theta) / safe_sin)
  expand = (-1,) + (1,) * (z0.ndim - 1)
  return w0.reshape(expand) * z0 + w1.reshape(expand) * z1


def interpolate(
    eps_fn: EpsFn,
    diffusion: GaussianDiffusion,
    images_a: np.ndarray | jax.Array,
    images_b: np.ndarray | jax.Array,
    *,
    num_points: int,
    num_steps: int,
    step_spacing: str = 'uniform',
    num_fixed_point_iterations: int = 0,
) -> SampleOutput:
  """Interpolations [B, num_points, ...] between image pairs via DDIM latents.

  Both images are inverted to x_T (`ddim_invert`), their latents slerped at
  fractions linspace(0, 1, num_points), and each decoded (`ddim_decode`).
  The end points are the round trips of a and b (close to a and b; closer
  with fixed-point iterations, see `ddim_invert`). nfe = the inversion's
  (counted once for the a and b batch) + num_points S.
  """
  if not isinstance(num_points, int) or num_points < 2:
    raise ValueError(f'num_points must be an integer >= 2, got {num_points!r}.')
  a, b = to_model_images(images_a), to_model_images(images_b)
  if a.shape != b.shape:
    raise ValueError(f'Image pairs must match in shape: {a.shape} != {b.shape}.')
  inverted = ddim_invert(
      eps_fn, diffusion, jnp.concatenate([a, b]), num_steps=num_steps,
      step_spacing=step_spacing,
      num_fixed_point_iterations=num_fixed_point_iterations)
  latents = inverted.images
  z_a, z_b = latents[:a.shape[0]], latents[a.shape[0]:]
  fractions = jnp.linspace(0.0, 1.0, num_points)
  z = jax.vmap(lambda f: slerp(z_a, z_b, f), out_axes=1)(fractions)  # [B, P, ...]
  flat = z.reshape((-1,) + a.shape[1:])
  decoded = ddim_decode(eps_fn, diffusion, flat, num_steps=num_steps,
                        step_spacing=step_spacing).images
  return SampleOutput(images=decoded.reshape(z.shape),
                      nfe=int(inverted.nfe + num_points * num_steps))


# ------------------------------------------------------ SR3 super-resolution
def superres_condition(low_res: np.ndarray | jax.Array, factor: int,
                       method: str = 'bicubic') -> jax.Array:
  """The SR3 conditioning image: low-res (uint8 or [-1, 1]) upsampled to full size."""
  return transforms.upsample(to_model_images(low_res), factor, method)


def conditioned_eps_fn(sr_eps_fn: EpsFn, condition: jax.Array) -> EpsFn:
  """eps_fn(x_t, t) = sr_eps_fn(concat(x_t, condition), t), for any DDPM sampler."""
  return lambda x_t, t: sr_eps_fn(concat_condition(x_t, condition), t)


def superres_sample(
    sr_eps_fn: EpsFn,
    diffusion: GaussianDiffusion,
    rng: jax.Array,
    low_res: np.ndarray | jax.Array,
    *,
    factor: int,
    method: str = 'bicubic',
    var_type: str = 'fixedlarge',
    clip_denoised: bool = True,
    timestep_map: Sequence[int] | None = None,
) -> SampleOutput:
  """SR3 (Saharia et al. 2021): ancestral sampling of p(x | upsampled low_res).

  sr_eps_fn takes the 2C-channel input of `concat_condition` and predicts the C
  channels of eps. low_res: uint8 or [-1, 1] [B, h, w, C]; output [B, h f, w f, C].
  """
  condition = superres_condition(low_res, factor, method)
  eps_fn = _network_eps_fn(conditioned_eps_fn(sr_eps_fn, condition), diffusion,
                           timestep_map)
  return ancestral_sample(eps_fn, diffusion, rng, condition.shape,
                          var_type=var_type, clip_denoised=clip_denoised)


# ------------------------------------------------------------------ dispatch
def apply_edit(
    kind: str,
    eps_fn: EpsFn,
    diffusion: GaussianDiffusion,
    rng: jax.Array,
    images: np.ndarray | jax.Array,
    *,
    mask: np.ndarray | jax.Array | None = None,
    images_b: np.ndarray | jax.Array | None = None,
    strength: float = 0.5,
    num_resample: int = 1,
    num_points: int = 8,
    ddim_steps: int = 50,
    num_fixed_point_iterations: int = 0,
    superres_factor: int = 4,
    upsample_method: str = 'bicubic',
    var_type: str = 'fixedlarge',
    clip_denoised: bool = True,
    timestep_map: Sequence[int] | None = None,
) -> tuple[SampleOutput, dict]:
  """Runs one edit by name; returns its output and JSON-able settings (provenance).

  kind and its inputs (all images uint8 or [-1, 1], [B, H, W, C]):
    'inpaint':     images, mask (1 = known; `to_mask`, `make_mask`), num_resample.
    'colorize':    images (grey [B, H, W, 1] or RGB, reduced to the channel mean).
    'sdedit':      images (the guides), strength = t0 in [0, 1].
    'interpolate': images and images_b (pairs), num_points, ddim_steps,
                   num_fixed_point_iterations; output [B, num_points, H, W, C].
    'superres':    images (low-res [B, h, w, C]), superres_factor,
                   upsample_method; eps_fn is the SR3 model's (2C-channel input).
  Output images are [-1, 1]-scaled float32 ([B, ...]); `transforms.centered_to_uint8`
  turns them into the uint8 images that sampling/image_io.py writes.
  Not jitted here: wrap in jax.jit (static: every argument but rng and arrays)
  or call as is (the loops compile once per call).
  """
  if kind not in EDIT_KINDS:
    raise ValueError(f'Unknown edit {kind!r}; choose one of {EDIT_KINDS}.')
  settings: dict = dict(edit=kind)
  ancestral = dict(var_type=var_type, clip_denoised=clip_denoised,
                   timestep_map=timestep_map)
  if kind == 'inpaint':
    if mask is None:
      raise ValueError("The 'inpaint' edit needs a mask (1 = known pixel): a mask "
                       f'image or one of {MASK_KINDS} via make_mask.')
    out = inpaint(eps_fn, diffusion, rng, images, mask, num_resample=num_resample,
                  **ancestral)
    settings.update(num_resample=num_resample, sampler='replacement'
                    if num_resample == 1 else 'repaint')
  elif kind == 'colorize':
    out = colorize(eps_fn, diffusion, rng, images, num_resample=num_resample,
                   **ancestral)
    settings.update(num_resample=num_resample)
  elif kind == 'sdedit':
    out = sdedit(eps_fn, diffusion, rng, images, strength=strength, **ancestral)
    settings.update(strength=float(strength))
  elif kind == 'interpolate':
    if images_b is None:
      raise ValueError("The 'interpolate' edit needs a second batch of images "
                       '(images_b), one per image in images.')
    if timestep_map is not None:
      raise ValueError("'interpolate' runs DDIM on the process's own steps: pass "
                       'the original (not respaced) diffusion and no timestep_map.')
    out = interpolate(eps_fn, diffusion, images, images_b, num_points=num_points,
                      num_steps=ddim_steps,
                      num_fixed_point_iterations=num_fixed_point_iterations)
    settings.update(num_points=num_points, ddim_steps=ddim_steps,
                    num_fixed_point_iterations=num_fixed_point_iterations)
  else:
    out = superres_sample(eps_fn, diffusion, rng, images, factor=superres_factor,
                          method=upsample_method, **ancestral)
    settings.update(superres_factor=superres_factor, upsample_method=upsample_method)
  if kind != 'interpolate':
    settings.update(var_type=var_type, clip_denoised=clip_denoised,
                    respaced=timestep_map is not None)
  settings['nfe'] = int(out.nfe)
  return out, settings
