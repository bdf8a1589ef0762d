"""Masked convolutions (van den Oord et al. 2016a, "Pixel Recurrent Neural Networks").

Section 3.4 and figure 2 of the paper: the image is modelled sub-pixel by sub-pixel in
raster order, R then G then B within a pixel. A convolution stays causal when its
kernel is multiplied by a constant mask that
- keeps every kernel position before the current pixel in raster order (rows above,
  and the same row to the left),
- zeroes every position after it,
- at the current pixel connects channel groups only "downwards": the feature maps of
  every layer are split into one group per colour channel (R, G, B; a single group for
  grey images), and an output of group g sees inputs of group < g (mask type A, the
  first layer: a sub-pixel must not see itself) or <= g (mask type B, every later layer).

Groups are contiguous blocks of channels: of F features, channel c belongs to group
c * G // F. A layer whose output is split into `num_parts` equal blocks (the two gates
of a gated activation, van den Oord et al. 2016b, figure 2) assigns groups within each
block, so channel k of every part has the same group.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

MASK_TYPES = ("A", "B")


def channel_groups(num_features: int, num_groups: int, num_parts: int = 1) -> np.ndarray:
  """The colour group (0..num_groups-1) of each of `num_features` channels."""
  if num_features % num_parts:
    raise ValueError(f"{num_features} features cannot be split into {num_parts} parts.")
  per_part = num_features // num_parts
  if per_part < num_groups:
    raise ValueError(f"{per_part} feature maps cannot hold {num_groups} colour groups; "
                     f"use at least {num_groups} features per layer.")
  return (np.arange(num_features) % per_part) * num_groups // per_part


def check_kernel_sizes(kernel_size: int, first_kernel_size: int) -> None:
  """Masked convolutions centre their kernel on the output pixel: odd sizes >= 3 only
  (config.model.kernel_size, config.model.first_kernel_size)."""
  for field, size in (("kernel_size", kernel_size), ("first_kernel_size", first_kernel_size)):
    if size < 3 or size % 2 == 0:
      raise ValueError(f"config.model.{field} must be odd and >= 3, got {size}.")


def causal_mask(kernel_size: tuple[int, int], in_features: int, out_features: int, *,
                mask_type: str, num_groups: int, center: tuple[int, int] | None = None,
                out_parts: int = 1) -> np.ndarray:
  """The constant [kh, kw, in, out] 0/1 mask of a masked convolution (HWIO layout).

  `center` is the kernel position that lines up with the output pixel (default: the
  kernel's centre, as for 'SAME' convolutions with odd kernels).
  """
  if mask_type not in MASK_TYPES:
    raise ValueError(f"mask_type={mask_type!r}; choose one of {MASK_TYPES}.")
  kh, kw = kernel_size
  cr, cc = center if center is not None else (kh // 2, kw // 2)
  if not (0 <= cr < kh and 0 <= cc < kw):
    raise ValueError(f"center={center} lies outside a {kernel_size} kernel.")
  rows, cols = np.meshgrid(np.arange(kh), np.arange(kw), indexing="ij")
  before = (rows < cr) | ((rows == cr) & (cols < cc))        # earlier pixels
  mask = np.broadcast_to(before[:, :, None, None],
                         (kh, kw, in_features, out_features)).astype(np.float32)
  in_group = channel_groups(in_features, num_groups)[:, None]
  out_group = channel_groups(out_features, num_groups, out_parts)[None, :]
  allowed = in_group < out_group if mask_type == "A" else in_group <= out_group
  mask[cr, cc] = allowed.astype(np.float32)
  return mask


class MaskedConv(nn.Module):
  """A stride-1 2-D convolution (NHWC) whose kernel is multiplied by `causal_mask`.

  Padding lines kernel position `center` up with each output pixel, so the output
  has the input's height and width.
  """
  features: int
  kernel_size: tuple[int, int]
  mask_type: str = "B"
  num_groups: int = 1            # colour channels of the modelled image: 3 RGB, 1 grey
  center: tuple[int, int] | None = None
  out_parts: int = 1
  use_bias: bool = True
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw = self.kernel_size
    cr, cc = self.center if self.center is not None else (kh // 2, kw // 2)
    in_features = x.shape[-1]
    mask = causal_mask(self.kernel_size, in_features, self.features,
                       mask_type=self.mask_type, num_groups=self.num_groups,
                       center=(cr, cc), out_parts=self.out_parts)
    kernel = self.param("kernel", self.kernel_init, (kh, kw, in_features, self.features))
    y = jax.lax.conv_general_dilated(
        x, kernel * jnp.asarray(mask, kernel.dtype), window_strides=(1, 1),
        padding=((cr, kh - 1 - cr), (cc, kw - 1 - cc)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,))
    return y
