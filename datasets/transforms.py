"""Pure image transforms: the input pipeline's (host numpy) and the families' (jnp).

The jnp functions are the data scalings every family shares, jit-able: the 256
uint8 levels k to [-1, 1] (k / 127.5 - 1, Ho et al. 2020 sec. 3.3) or [0, 1]
and back, binarization and dequantization, and SR3's low-res training pair.
"""
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
BINARIZATIONS = ('dynamic', 'threshold', 'binary')
UPSAMPLE_METHODS = ('nearest', 'bilinear', 'bicubic')


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


# ------------------------------------------------------------ model scalings
def uint8_to_centered(images: jax.Array) -> jax.Array:
  """uint8 levels k (or ints 0..255) -> float32 k / 127.5 - 1 in [-1, 1] (Ho et al. sec. 3.3)."""
  return jnp.asarray(images).astype(jnp.float32) / 127.5 - 1.0


def uint8_to_unit(images: jax.Array) -> jax.Array:
  """uint8 levels k -> float32 k / 255 in [0, 1], correctly rounded (0 -> 0.0, 255 -> 1.0)."""
  # A table lookup rather than x / 255: XLA rewrites the division as a
  # multiplication by 1/255, which is off by one ulp for some x.
  return jnp.asarray(_UINT8_OVER_255)[jnp.asarray(images).astype(jnp.int32)]


def unit_to_centered(x: jax.Array) -> jax.Array:
  """[0, 1] -> [-1, 1]: 2 x - 1 (binary data {0, 1} -> {-1, 1})."""
  return 2.0 * jnp.asarray(x).astype(jnp.float32) - 1.0


def centered_to_uint8(x: jax.Array) -> jax.Array:
  """Maps [-1, 1] to the 256 levels: round((x + 1) * 127.5), clipped to [0, 255]."""
  return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def unit_to_uint8(x: jax.Array) -> jax.Array:
  """Maps [0, 1] (probabilities, bits) to the 256 levels: round(255 x), clipped."""
  return jnp.clip(jnp.round(255.0 * jnp.asarray(x).astype(jnp.float32)), 0, 255).astype(
      jnp.uint8)


def binarize(images: jax.Array, rng: jax.Array | None, method: str) -> jax.Array:
  """uint8 images -> float32 {0, 1} (jit-able; `method` must be static).

  - 'dynamic': x ~ Bernoulli(k / 255) i.i.d. per sub-pixel, a function of `rng`
    (a fresh draw per step when the caller folds the step into `rng`);
  - 'threshold': x = [k >= 128];
  - 'binary': data already binary, x = [k > 0] (tfds 'binarized_mnist' stores 0/1).
  """
  if method not in BINARIZATIONS:
    raise ValueError(f'binarization={method!r}; choose one of {BINARIZATIONS}.')
  if method == 'dynamic':
    return jax.random.bernoulli(rng, uint8_to_unit(images)).astype(jnp.float32)
  if method == 'threshold':
    return (jnp.asarray(images) >= 128).astype(jnp.float32)
  return (jnp.asarray(images) > 0).astype(jnp.float32)


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
    return uint8_to_unit(images_uint8)
  x = jnp.asarray(images_uint8).astype(jnp.float32)
  if method == 'uniform':
    noise = jnp.minimum(jax.random.uniform(rng, x.shape, jnp.float32), _MAX_NOISE)
    return (x + noise) / 256.0  # Division by a power of two: exact.
  raise ValueError(f"Unknown dequantization method {method!r}; use 'none' or 'uniform'.")


# ------------------------------------------------------ SR3 super-resolution
def box_downsample(images: jax.Array, factor: int) -> jax.Array:
  """Box filter: the mean of each factor x factor block of [B, H, W, C] images."""
  b, h, w, c = images.shape
  if not isinstance(factor, int) or factor < 1 or h % factor or w % factor:
    raise ValueError(f'factor must be a positive integer dividing the image size '
                     f'{h}x{w}, got {factor!r}.')
  return images.reshape(b, h // factor, factor, w // factor, factor, c).mean((2, 4))


def upsample(images: jax.Array, factor: int, method: str = 'bicubic') -> jax.Array:
  """[B, h, w, C] -> [B, h f, w f, C] by jax.image.resize (SR3 uses bicubic)."""
  if method not in UPSAMPLE_METHODS:
    raise ValueError(f'Unknown upsample method {method!r}; choose one of '
                     f'{UPSAMPLE_METHODS}.')
  if not isinstance(factor, int) or factor < 1:
    raise ValueError(f'factor must be a positive integer, got {factor!r}.')
  b, h, w, c = images.shape
  return jax.image.resize(images, (b, h * factor, w * factor, c), method)


def superres_training_pair(images_uint8: jax.Array, factor: int,
                           method: str = 'bicubic') -> tuple[jax.Array, jax.Array]:
  """(x_0 in [-1, 1], conditioning image) of a batch of uint8 high-res images.

  The conditioning image is the box-downsampled x_0 upsampled back to full size
  (Saharia et al. 2021 train on bicubic-downsampled pairs; the box filter is the
  exact area average).
  """
  x0 = uint8_to_centered(images_uint8)
  return x0, upsample(box_downsample(x0, factor), factor, method)
