"""FIR up- and down-sampling of NHWC images (the `upfirdn2d` of StyleGAN2).

NCSN++ (Song et al. 2021, Sec. 4 and App. H) resamples with the anti-aliasing FIR
filter [1, 3, 3, 1] of StyleGAN2 (Karras et al. 2020) instead of nearest-neighbour
repetition and average pooling; EDM's SongUNet (Karras et al. 2022) does the same
with its `resample_filter` ([1, 1] for DDPM++, which is exactly nearest / average
pooling, [1, 3, 3, 1] for NCSN++).

Everything is built on one primitive,

  upfirdn2d(x, k, up, down, pad):  insert up-1 zeros after every sample, zero-pad by
    pad = (before, after) on both spatial axes, convolve with the 2-D kernel k
    (a true convolution: k is flipped), keep every down-th sample,

written with `lax.pad` (zero insertion and padding in one op) and a depthwise
`lax.conv_general_dilated`. Pixels outside the image count as zero, so a constant
image stays constant only away from the border (the kernel's reach).

The kernels are normalised to unit sum and multiplied by `gain * factor**2` when
upsampling (each output sees 1 / factor**2 of the taps), so a constant image keeps
its value (times `gain`) in the interior.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from models import layers

Dtype = Any
_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def fir_kernel_2d(taps: Sequence[float] | np.ndarray) -> np.ndarray:
  """A 2-D FIR kernel with unit sum: the outer product of 1-D taps, or a 2-D array."""
  kernel = np.asarray(taps, dtype=np.float64)
  if kernel.ndim == 1:
    kernel = np.outer(kernel, kernel)
  if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or kernel.size == 0:
    raise ValueError(f"An FIR kernel must be 1-D taps or a square 2-D array, got "
                     f"shape {kernel.shape}.")
  total = kernel.sum()
  if total == 0:
    raise ValueError("FIR kernel taps must not sum to zero (they are normalised).")
  return kernel / total


def upfirdn2d(x: jax.Array, kernel: np.ndarray, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> jax.Array:
  """Upsample by zero insertion, pad, FIR-filter, downsample; x is [B, H, W, C].

  Output size per axis: (H * up + pad[0] + pad[1] - k) // down + 1 for a k x k
  kernel. Negative pads crop, as in StyleGAN2.
  """
  if x.ndim != 4:
    raise ValueError(f"upfirdn2d expects NHWC images, got shape {x.shape}.")
  kernel = np.asarray(kernel, dtype=np.float32)
  if kernel.ndim != 2:
    raise ValueError(f"upfirdn2d expects a 2-D kernel, got shape {kernel.shape}.")
  if up < 1 or down < 1:
    raise ValueError(f"up and down must be >= 1, got up={up}, down={down}.")
  channels = x.shape[-1]
  before, after = pad
  # Interior padding inserts up-1 zeros between samples; upfirdn2d also has up-1
  # zeros after the last sample, hence `after + up - 1`.
  spatial = (before, after + up - 1, up - 1)
  x = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), spatial, spatial, (0, 0, 0)))
  # Correlating with the flipped kernel is a convolution with the kernel.
  flipped = kernel[::-1, ::-1]
  weights = jnp.asarray(np.tile(flipped[:, :, None, None], (1, 1, 1, channels)),
                        dtype=x.dtype)
  return lax.conv_general_dilated(
      x, weights, window_strides=(down, down), padding="VALID",
      dimension_numbers=_DIMENSIONS, feature_group_count=channels)


def _resample_kernel(taps: Sequence[float] | None, factor: int,
                     gain: float) -> np.ndarray:
  if not isinstance(factor, int) or factor < 1:
    raise ValueError(f"factor must be a positive integer, got {factor!r}.")
  return fir_kernel_2d([1] * factor if taps is None else taps) * gain


def upsample_2d(x: jax.Array, taps: Sequence[float] | None = None, factor: int = 2,
                gain: float = 1.0) -> jax.Array:
  """[B, H, W, C] -> [B, factor H, factor W, C] with the FIR filter `taps`.

  The default taps [1] * factor give nearest-neighbour upsampling.
  """
  kernel = _resample_kernel(taps, factor, gain) * factor**2
  excess = kernel.shape[0] - factor
  return upfirdn2d(x, kernel, up=factor,
                   pad=((excess + 1) // 2 + factor - 1, excess // 2))


def downsample_2d(x: jax.Array, taps: Sequence[float] | None = None,
                  factor: int = 2, gain: float = 1.0) -> jax.Array:
  """[B, H, W, C] -> [B, H / factor, W / factor, C] with the FIR filter `taps`.

  The default taps [1] * factor give average pooling.
  """
  kernel = _resample_kernel(taps, factor, gain)
  excess = kernel.shape[0] - factor
  return upfirdn2d(x, kernel, down=factor, pad=((excess + 1) // 2, excess // 2))


def upsample_conv_2d(x: jax.Array, weight: jax.Array,
                     taps: Sequence[float] | None = None, factor: int = 2,
                     gain: float = 1.0) -> jax.Array:
  """Fused `upsample_2d` then a 'SAME' convolution with `weight` [k, k, in, out].

  A strided transposed convolution (zero insertion, full padding k-1, correlation
  with `weight`) followed by one FIR pass: the padding is applied once, so near
  the border it differs from the two-step version, in the interior it agrees.
  """
  size = weight.shape[0]
  if weight.ndim != 4 or weight.shape[1] != size or size % 2 == 0:
    raise ValueError(f"weight must be [k, k, in, out] with odd k, got {weight.shape}.")
  kernel = _resample_kernel(taps, factor, gain) * factor**2
  excess = (kernel.shape[0] - factor) - (size - 1)
  x = lax.conv_general_dilated(
      x, weight.astype(x.dtype), window_strides=(1, 1),
      padding=((size - 1, size - 1), (size - 1, size - 1)),
      lhs_dilation=(factor, factor), dimension_numbers=_DIMENSIONS)
  return upfirdn2d(x, kernel, pad=((excess + 1) // 2 + factor - 1, excess // 2 + 1))


def conv_downsample_2d(x: jax.Array, weight: jax.Array,
                       taps: Sequence[float] | None = None, factor: int = 2,
                       gain: float = 1.0) -> jax.Array:
  """Fused 'SAME' convolution with `weight` [k, k, in, out] then `downsample_2d`.

  One FIR pass (padded once) followed by a strided correlation with `weight`.
  """
  size = weight.shape[0]
  if weight.ndim != 4 or weight.shape[1] != size or size % 2 == 0:
    raise ValueError(f"weight must be [k, k, in, out] with odd k, got {weight.shape}.")
  kernel = _resample_kernel(taps, factor, gain)
  excess = (kernel.shape[0] - factor) + (size - 1)
  x = upfirdn2d(x, kernel, pad=((excess + 1) // 2, excess // 2))
  return lax.conv_general_dilated(
      x, weight.astype(x.dtype), window_strides=(factor, factor), padding="VALID",
      dimension_numbers=_DIMENSIONS)


def naive_upsample_2d(x: jax.Array, factor: int = 2) -> jax.Array:
  """Nearest-neighbour upsampling: every pixel becomes a factor x factor block."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def naive_downsample_2d(x: jax.Array, factor: int = 2) -> jax.Array:
  """Average pooling over non-overlapping factor x factor blocks."""
  batch, height, width, channels = x.shape
  if height % factor or width % factor:
    raise ValueError(f"Image size {height}x{width} is not divisible by {factor}.")
  x = x.reshape(batch, height // factor, factor, width // factor, factor, channels)
  return x.mean(axis=(2, 4))


class Conv2d(nn.Module):
  """A k x k convolution, optionally fused with FIR 2x up- or down-sampling.

  The kernel is [k, k, in, features] (HWIO) with the given initialiser, so its
  fans are those of nn.Conv; the bias starts at zero.
  """
  features: int
  kernel_size: int = 3
  up: bool = False
  down: bool = False
  resample_kernel: Sequence[float] = (1, 3, 3, 1)
  use_bias: bool = True
  kernel_init: nn.initializers.Initializer = layers.default_init()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.up and self.down:
      raise ValueError("Conv2d cannot both upsample and downsample.")
    if self.kernel_size < 1 or self.kernel_size % 2 == 0:
      raise ValueError(f"kernel_size must be odd and positive, got {self.kernel_size}.")
    weight = self.param("kernel", self.kernel_init,
                        (self.kernel_size, self.kernel_size, x.shape[-1],
                         self.features), jnp.float32)
    x = x.astype(self.dtype)
    weight = weight.astype(self.dtype)
    if self.up:
      x = upsample_conv_2d(x, weight, self.resample_kernel)
    elif self.down:
      x = conv_downsample_2d(x, weight, self.resample_kernel)
    else:
      x = lax.conv_general_dilated(x, weight, window_strides=(1, 1), padding="SAME",
                                   dimension_numbers=_DIMENSIONS)
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
      x = x + bias.astype(self.dtype)
    return x
