"""Latent-space pictures of a VAE: reconstructions and interpolations, as uint8 grids.

Pure functions of an encoder and a decoder given as callables, so that they serve any
latent-variable family:
  encode_fn(images uint8 [N, H, W, C]) -> latents [N, D]   (e.g. the posterior mean)
  decode_fn(latents [N, D]) -> images uint8 [N, H, W, C]
The grids are HWC uint8 arrays ready for sampling.image_io.save_png or TensorBoard.
"""

from typing import Callable

import numpy as np

from sampling import image_io

EncodeFn = Callable[[np.ndarray], np.ndarray]
DecodeFn = Callable[[np.ndarray], np.ndarray]
METHODS = ("linear", "slerp")


def lerp(z_start: np.ndarray, z_end: np.ndarray, t: np.ndarray) -> np.ndarray:
  """(1 - t) z_start + t z_end for every t: [T] -> [T, D]."""
  t = np.asarray(t, np.float64)[:, None]
  return (1.0 - t) * np.asarray(z_start)[None] + t * np.asarray(z_end)[None]


def slerp(z_start: np.ndarray, z_end: np.ndarray, t: np.ndarray) -> np.ndarray:
  """Spherical interpolation (Shoemake 1985; White 2016 for latent spaces): [T] -> [T, D].

  Moves along the great circle between the two directions at constant angular speed,
  the norm changing linearly between the endpoints'. A Gaussian latent puts its mass
  near a sphere; the straight line cuts inside it, where samples look washed out.
  Falls back to `lerp` when the vectors are (anti)parallel, where the arc is undefined.
  """
  z_start, z_end = np.asarray(z_start, np.float64), np.asarray(z_end, np.float64)
  t = np.asarray(t, np.float64)
  norm_start, norm_end = np.linalg.norm(z_start), np.linalg.norm(z_end)
  if norm_start == 0 or norm_end == 0:
    return lerp(z_start, z_end, t)
  u_start, u_end = z_start / norm_start, z_end / norm_end
  omega = np.arccos(np.clip(np.dot(u_start, u_end), -1.0, 1.0))
  if np.sin(omega) < 1e-6:
    return lerp(z_start, z_end, t)
  directions = (np.sin((1.0 - t) * omega)[:, None] * u_start[None]
                + np.sin(t * omega)[:, None] * u_end[None]) / np.sin(omega)
  norms = (1.0 - t) * norm_start + t * norm_end
  return directions * norms[:, None]


def interpolation_path(z_start: np.ndarray, z_end: np.ndarray, num_steps: int,
                       method: str = "linear") -> np.ndarray:
  """`num_steps` latents from z_start to z_end inclusive, [num_steps, D]."""
  if method not in METHODS:
    raise ValueError(f"Interpolation method {method!r}; choose one of {METHODS}.")
  if num_steps < 2:
    raise ValueError(f"num_steps must be >= 2 (both endpoints), got {num_steps}.")
  t = np.linspace(0.0, 1.0, num_steps)
  return (lerp if method == "linear" else slerp)(z_start, z_end, t)


def reconstruction_grid(inputs: np.ndarray, reconstructions: np.ndarray,
                        padding: int = 1) -> np.ndarray:
  """Top row the inputs, bottom row their reconstructions: uint8 HWC."""
  inputs, reconstructions = np.asarray(inputs), np.asarray(reconstructions)
  if inputs.shape != reconstructions.shape:
    raise ValueError(f"inputs {inputs.shape} and reconstructions {reconstructions.shape} "
                     "must have the same shape.")
  return image_io.make_grid(np.concatenate([inputs, reconstructions]),
                            num_cols=len(inputs), padding=padding)


def interpolation_grid(encode_fn: EncodeFn, decode_fn: DecodeFn, starts: np.ndarray,
                       ends: np.ndarray, num_steps: int = 8, method: str = "linear",
                       padding: int = 1) -> np.ndarray:
  """One row per (start, end) pair: the start image, `num_steps` decoded latents from
  encode(start) to encode(end) inclusive, then the end image. uint8 HWC."""
  starts, ends = np.asarray(starts), np.asarray(ends)
  if starts.shape != ends.shape or starts.ndim != 4:
    raise ValueError(f"starts {starts.shape} and ends {ends.shape} must be equal NHWC.")
  z_starts = np.asarray(encode_fn(starts))
  z_ends = np.asarray(encode_fn(ends))
  paths = np.concatenate([interpolation_path(a, b, num_steps, method)
                          for a, b in zip(z_starts, z_ends)])
  decoded = np.asarray(decode_fn(paths.astype(np.float32)))
  decoded = decoded.reshape(len(starts), num_steps, *starts.shape[1:])
  rows = np.concatenate([starts[:, None], decoded, ends[:, None]], axis=1)
  return image_io.make_grid(rows.reshape(-1, *starts.shape[1:]), num_cols=num_steps + 2,
                            padding=padding)


def latent_grids(encode_fn: EncodeFn, decode_fn: DecodeFn, images: np.ndarray,
                 num_steps: int = 8) -> dict[str, np.ndarray]:
  """Reconstructions of `images` and both interpolation grids between its halves.

  Pairs image i with image i + N // 2. Keys: 'reconstructions',
  'interpolation_linear', 'interpolation_slerp'.
  """
  images = np.asarray(images)
  if len(images) < 2:
    raise ValueError(f"Need at least 2 images to interpolate, got {len(images)}.")
  half = len(images) // 2
  grids = {"reconstructions": reconstruction_grid(
      images, np.asarray(decode_fn(np.asarray(encode_fn(images)))))}
  for method in METHODS:
    grids[f"interpolation_{method}"] = interpolation_grid(
        encode_fn, decode_fn, images[:half], images[half:2 * half], num_steps, method)
  return grids
