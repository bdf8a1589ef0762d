"""Pure image transforms of the input pipeline (host numpy) and dequantization (jnp)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

_UINT64_MASK = (1 << 64) - 1
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15  # splitmix64 increment (odd; 2^64 / golden ratio).
_UINT8_OVER_255 = np.arange(256, dtype=np.float32) / np.float32(255)  # Correctly rounded.
# Above 128 the float32 spacing is 2^-16, so x + u with u > 1 - 2^-17 rounds to x + 1.
_MAX_NOISE = 1.0 - 2.0**-16


def mix64(values: np.ndarray) -> np.ndarray:
  """splitmix64 finaliser (Steele et al. 2014): a bijective 64-bit mix of uint64s."""
  x = np.asarray(values, np.uint64)
  with np.errstate(over='ignore'):
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def derive_key(*parts: int) -> int:
  """A 64-bit key from a sequence of ints (seed, purpose, epoch, ...), chained through mix64."""
  key = 0
  for part in parts:
    key = int(mix64(np.array([(key + _GOLDEN_GAMMA + part) & _UINT64_MASK], np.uint64))[0])
  return key


def hash_counters(key: int, counters: np.ndarray) -> np.ndarray:
  """Pseudo-random uint64 per counter, a pure function of (key, counter).

  Counter-based (like JAX's threefry) so that any element can be computed on its
  own: what makes batches a pure function of the step.
  """
  counters = np.asarray(counters, np.int64).astype(np.uint64)
  with np.errstate(over='ignore'):
    return mix64((counters * np.uint64(_GOLDEN_GAMMA)) ^ np.uint64(key))


def permutation(key: int, size: int) -> np.ndarray:
  """A permutation of range(size): the indices sorted by their hash."""
  return np.argsort(hash_counters(key, np.arange(size)), kind='stable')


def center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Central height x width window; offsets floor((H - h) / 2) as in score_sde."""
  top = (image.shape[0] - height) // 2
  left = (image.shape[1] - width) // 2
  if top < 0 or left < 0:
    raise ValueError(f'Cannot crop {height}x{width} from an image of shape {image.shape}.')
  return image[top : top + height, left : left + width]


def resize(image: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of a uint8 HxWxC image to size x size, rounded to uint8.

  Pillow widens the bilinear (triangle) kernel by the scale factor when
  shrinking, i.e. it is antialiased like `tf.image.resize(antialias=True)`.
  """
  if image.shape[0] == size and image.shape[1] == size:
    return image
  channels = image.shape[-1]
  pil_image = Image.fromarray(image[..., 0] if channels == 1 else image)
  resized = np.asarray(pil_image.resize((size, size), Image.Resampling.BILINEAR))
  return resized.reshape(size, size, channels)


def square_and_resize(image: np.ndarray, size: int, pre_crop: int | None = None) -> np.ndarray:
  """Optional centre crop to pre_crop^2, centre crop to a square, resize to size^2."""
  if pre_crop is not None:
    image = center_crop(image, pre_crop, pre_crop)
  side = min(image.shape[0], image.shape[1])
  return resize(center_crop(image, side, side), size)


def dequantize(images_uint8: jax.Array, rng: jax.Array, method: str) -> jax.Array:
  """Maps uint8 images to float32 in [0, 1] (jit-able; `method` must be static).

  - 'none': x / 255 correctly rounded to float32 (0 -> 0.0, 255 -> 1.0);
    `rng` is unused.
  - 'uniform': (x + u) / 256 with u ~ U[0, 1) i.i.d. per sub-pixel, in [0, 1).
    A continuous density on this variable lower-bounds the discrete
    log-likelihood (Theis et al. 2016, "A note on the evaluation of generative
    models"): with P(x) the mass a density p on [0, 1)^D gives to x's bin,
    log P(x) >= E_u[log p((x + u) / 256)] - D log 256 (Jensen; D sub-pixels).
    u is capped at 1 - 2^-16, the largest value for which float32 x + u stays
    below x + 1 for every x <= 255, so each value stays inside its own bin.
  """
  if method == 'none':
    # A table lookup rather than x / 255: XLA may rewrite the division as a
    # multiplication by 1/255, which is off by one ulp for some x.
    return jnp.asarray(_UINT8_OVER_255)[jnp.asarray(images_uint8).astype(jnp.int32)]
  x = jnp.asarray(images_uint8).astype(jnp.float32)
  if method == 'uniform':
    noise = jnp.minimum(jax.random.uniform(rng, x.shape, jnp.float32), _MAX_NOISE)
    return (x + noise) / 256.0  # Division by a power of two: exact.
  raise ValueError(f"Unknown dequantization method {method!r}; use 'none' or 'uniform'.")
