"""The PixelCNN++ network (Salimans et al. 2017, Sec. 2 and Fig. 2).

Two causal streams replace masked convolutions: the "u" stream sees only the rows
above a pixel (down-shifted convolutions, kernel 2x3), the "ul" stream the rows above
and the pixels to the left on the same row (down-right-shifted convolutions, kernel
2x2), and ul reads u at every block, so there is no blind spot. Gated ResNet blocks
with concatenated ELUs and dropout (Sec. 2.5) make up three resolution levels (32, 16
and 8 on CIFAR-10) joined by stride-2 shifted convolutions and transposed
convolutions; every block of the first pass feeds the mirror block of the second pass
(the short-cut connections of Sec. 2.4). The output, after an ELU and a 1x1 ("NIN")
layer, parameterises the discretized logistic mixture of models/logistic_mixture.py for
every pixel given only earlier pixels: the network never sees the pixel it predicts,
the R -> G -> B dependence inside a pixel lives in the likelihood.

Every convolution is weight-normalised (Salimans & Kingma 2016), w = g v / ||v||, as in
the reference code. The reference initialises g and the bias from the statistics of a
first batch (data-dependent init); here g starts at the layer's init scale (1, or 0.1 on
the last convolution of each residual branch) and the bias at 0, so that each unit-norm
filter roughly preserves the variance of its input. The defaults are the paper's
CIFAR-10 network (nr_resnet=5, nr_filters=160, 10 mixture components: 53.66M
parameters).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import logistic_mixture

Dtype = Any
NUM_LEVELS = 3  # resolutions H, H/2, H/4
DOWN_KERNEL = (2, 3)        # down-shifted convolutions (u stream)
DOWN_RIGHT_KERNEL = (2, 2)  # down-right-shifted convolutions (ul stream)


def concat_elu(x: jax.Array) -> jax.Array:
  """ELU of [x, -x] on the channel axis (the reference's nonlinearity, after the
  concatenated ReLU of Shang et al. 2016): no sign's information is cut off."""
  return nn.elu(jnp.concatenate([x, -x], axis=-1))


def down_shift(x: jax.Array) -> jax.Array:
  """Moves the map one row down (zeros enter at the top): row i sees rows < i only."""
  return jnp.pad(x, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]


def right_shift(x: jax.Array) -> jax.Array:
  """Moves the map one column right (zeros enter on the left)."""
  return jnp.pad(x, ((0, 0), (0, 0), (1, 0), (0, 0)))[:, :, :-1]


def _unit_norm_normal(rng: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
  """Normal directions scaled to unit norm per output channel (last axis)."""
  v = jax.random.normal(rng, shape, dtype)
  return v / jnp.sqrt(jnp.sum(v**2, axis=tuple(range(len(shape) - 1)), keepdims=True))


class WeightNormConv(nn.Module):
  """'VALID' convolution (or transposed convolution) with weight normalisation.

  kernel = g * v / ||v|| with the norm over (height, width, input channels) of each
  output channel; v starts as N(0, 0.05^2) as in the reference, g at init_scale.
  Without weight_norm the kernel itself is the parameter, initialised to the same
  unit-norm filters times init_scale.
  """
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  transpose: bool = False
  init_scale: float = 1.0
  weight_norm: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = (*self.kernel_size, x.shape[-1], self.features)
    if self.weight_norm:
      v = self.param("v", nn.initializers.normal(0.05), shape, jnp.float32)
      g = self.param("g", nn.initializers.constant(self.init_scale), (self.features,),
                     jnp.float32)
      kernel = g * v * jax.lax.rsqrt(jnp.sum(v**2, axis=(0, 1, 2)))
    else:
      kernel = self.param(
          "kernel", lambda rng, s: self.init_scale * _unit_norm_normal(rng, s), shape)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    dimension_numbers = ("NHWC", "HWIO", "NHWC")
    if self.transpose:
      y = jax.lax.conv_transpose(x, kernel, self.strides, "VALID",
                                 dimension_numbers=dimension_numbers)
    else:
      y = jax.lax.conv_general_dilated(x, kernel, self.strides, "VALID",
                                       dimension_numbers=dimension_numbers)
    return y + bias.astype(self.dtype)


class ShiftedConv(nn.Module):
  """Causal convolution by padding: 'down' (u stream) or 'down_right' (ul stream).

  'down' pads kh-1 rows on top and (kw-1)/2 columns on each side, so output row i
  reads input rows i-kh+1..i; 'down_right' pads kh-1 rows on top and kw-1 columns on
  the left, so output (i, j) reads rows <= i and columns <= j. Whatever each input
  position summarises (only pixels before it), the output summarises too. Stride 2
  halves H and W; transpose=True doubles them with a stride-2 transposed convolution
  cropped to 2H x 2W in the same causal alignment (output rows 2i, 2i+1 read input
  row i).
  """
  features: int
  direction: str  # 'down' | 'down_right'
  kernel_size: tuple[int, int] | None = None
  stride: int = 1
  transpose: bool = False
  init_scale: float = 1.0
  weight_norm: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.direction not in ("down", "down_right"):
      raise ValueError(
          f"direction must be 'down' or 'down_right', got {self.direction!r}.")
    kernel = self.kernel_size or (DOWN_KERNEL if self.direction == "down"
                                  else DOWN_RIGHT_KERNEL)
    kh, kw = kernel
    if self.direction == "down" and kw % 2 == 0:
      raise ValueError(f"A down-shifted kernel needs an odd width, got {kernel}.")
    conv = WeightNormConv(self.features, kernel, (self.stride, self.stride),
                          transpose=self.transpose, init_scale=self.init_scale,
                          weight_norm=self.weight_norm, dtype=self.dtype, name="conv")
    centred = (kw - 1) // 2  # 'down' kernels are centred horizontally
    if self.transpose:
      _, height, width, _ = x.shape
      y = conv(x)  # [(H-1)s + kh, (W-1)s + kw] before the crop
      # Keep the first sH rows and sW columns ('down_right'), or the sW centred
      # columns ('down').
      start = centred if self.direction == "down" else 0
      return y[:, :height * self.stride, start:start + width * self.stride]
    left, right = (centred, centred) if self.direction == "down" else (kw - 1, 0)
    x = jnp.pad(x, ((0, 0), (kh - 1, 0), (left, right), (0, 0)))
    return conv(x)


def nin(features: int, init_scale: float = 1.0, weight_norm: bool = True,
        dtype: Dtype = jnp.float32, name: str | None = None) -> WeightNormConv:
  """'Network in network': a weight-normalised 1x1 convolution."""
  return WeightNormConv(features, (1, 1), init_scale=init_scale, weight_norm=weight_norm,
                        dtype=dtype, name=name)


class GatedResnet(nn.Module):
  """x + a * sigmoid(b), [a, b] = conv(dropout(celu(conv(celu(x)) + nin(celu(aux))))).

  celu is concat_elu; aux is the short-cut input (u for the ul stream, skip
  connections in the second pass); with labels a per-block class embedding is
  added before the gate (the reference's conditional weights, N(0, 0.05^2) init).
  The last convolution starts at init scale 0.1 so each block starts near identity.
  """
  direction: str
  dropout: float = 0.0
  num_classes: int = 0
  weight_norm: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, aux: jax.Array | None, y: jax.Array | None,
               train: bool) -> jax.Array:
    features = x.shape[-1]
    conv = lambda f, scale, name: ShiftedConv(  # noqa: E731
        f, self.direction, init_scale=scale, weight_norm=self.weight_norm,
        dtype=self.dtype, name=name)
    h = conv(features, 1.0, "conv_in")(concat_elu(x))
    if aux is not None:
      h += nin(features, weight_norm=self.weight_norm, dtype=self.dtype,
               name="nin_aux")(concat_elu(aux))
    h = concat_elu(h)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = conv(2 * features, 0.1, "conv_out")(h)
    if y is not None:
      embedding = nn.Embed(self.num_classes, 2 * features,
                           embedding_init=nn.initializers.normal(0.05),
                           param_dtype=jnp.float32, name="class_embedding")(y)
      h += embedding.astype(h.dtype)[:, None, None, :]
    a, b = jnp.split(h, 2, axis=-1)
    return x + a * nn.sigmoid(b)


class PixelCNNPP(nn.Module):
  """x [B, H, W, C] in [-1, 1] -> mixture parameters [B, H, W, out_channels].

  The parameters at pixel (i, j) depend only on pixels before (i, j) in raster order.
  """
  nr_filters: int = 160
  nr_resnet: int = 5  # gated ResNet blocks per level (+1 per level on the way back up)
  nr_logistic_mix: int = 10
  dropout: float = 0.5
  num_classes: int = 0  # > 0: class-conditional, labels y [B] in [0, num_classes)
  # Outputs per pixel; None: logistic_mixture.num_output_channels(C, nr_logistic_mix).
  out_channels: int | None = None
  weight_norm: bool = True
  # Recompute each gated ResNet block's activations in the backward pass instead of
  # keeping them (the reference trains with such gradient checkpointing): less
  # memory for about one more forward pass of compute.
  remat: bool = False
  dtype: Dtype = jnp.float32  # computation dtype; parameters and output are float32

  def _check_inputs(self, x: jax.Array, y: jax.Array | None) -> None:
    """Raises ValueError for bad shapes or settings, from static shapes only."""
    if self.nr_filters < 1 or self.nr_resnet < 0 or self.nr_logistic_mix < 1:
      raise ValueError(
          f"Need nr_filters >= 1, nr_resnet >= 0 and nr_logistic_mix >= 1, got "
          f"{self.nr_filters}, {self.nr_resnet} and {self.nr_logistic_mix}.")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}.")
    if x.ndim != 4:
      raise ValueError(f"x must be NHWC [B, H, W, C], got shape {x.shape}.")
    batch, height, width, _ = x.shape
    factor = 2**(NUM_LEVELS - 1)
    if height % factor or width % factor:
      raise ValueError(
          f"PixelCNN++ halves the image twice (3 resolution levels): H and W must be "
          f"divisible by {factor}, got {height}x{width}. Resize or pad the images.")
    if self.num_classes > 0:
      if y is None:
        raise ValueError(
            f"This PixelCNN++ is class-conditional (num_classes={self.num_classes}): "
            f"pass integer labels y of shape ({batch},).")
      if y.shape != (batch,) or not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(
            f"y must be integer labels of shape ({batch},), got {y.dtype} {y.shape}.")
    elif y is not None:
      raise ValueError("Labels y were given but num_classes=0: set num_classes to "
                       "condition on labels.")

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array | None = None, *,
               train: bool) -> jax.Array:
    self._check_inputs(x, y)
    out_channels = self.out_channels or logistic_mixture.num_output_channels(
        x.shape[-1], self.nr_logistic_mix)
    filters, wn, dtype = self.nr_filters, self.weight_norm, self.dtype
    shifted = lambda direction, name, **kw: ShiftedConv(  # noqa: E731
        filters, direction, weight_norm=wn, dtype=dtype, name=name, **kw)
    # static_argnums counts self as 0: `train` (argument 4) selects the dropout code.
    block_cls = nn.remat(GatedResnet, static_argnums=(4,)) if self.remat else GatedResnet
    block = lambda direction, name: block_cls(  # noqa: E731
        direction, dropout=self.dropout, num_classes=self.num_classes, weight_norm=wn,
        dtype=dtype, name=name)

    # A constant channel of ones tells image pixels from the zero padding of the
    # shifted convolutions.
    x = x.astype(dtype)
    h = jnp.concatenate([x, jnp.ones_like(x[..., :1])], axis=-1)
    # Shifting after the first convolution excludes the current pixel: u at (i, j)
    # sees rows < i; ul also sees (i, j-1) (the 2x1 column, shifted right).
    u_list = [down_shift(shifted("down", "u_in", kernel_size=(2, 3))(h))]
    ul_list = [down_shift(shifted("down", "ul_in_above", kernel_size=(1, 3))(h))
               + right_shift(shifted("down_right", "ul_in_left", kernel_size=(2, 1))(h))]

    # First pass (the reference code's "up pass"): blocks at levels 0, 1, 2 (H, H/2,
    # H/4); every output is kept for the short-cut connections.
    for level in range(NUM_LEVELS):
      if level > 0:
        u_list.append(shifted("down", f"pass1_level{level}_u_downsample",
                              stride=2)(u_list[-1]))
        ul_list.append(shifted("down_right", f"pass1_level{level}_ul_downsample",
                               stride=2)(ul_list[-1]))
      for i in range(self.nr_resnet):
        u_list.append(block("down", f"pass1_level{level}_u{i}")(
            u_list[-1], None, y, train))
        ul_list.append(block("down_right", f"pass1_level{level}_ul{i}")(
            ul_list[-1], u_list[-1], y, train))

    # Second pass (the reference's "down pass"): levels 2, 1, 0, each block taking the
    # first pass's kept outputs in reverse order as its short-cut input.
    u, ul = u_list.pop(), ul_list.pop()
    for level in reversed(range(NUM_LEVELS)):
      upsampled = level < NUM_LEVELS - 1
      if upsampled:
        u = shifted("down", f"pass2_level{level}_u_upsample", stride=2,
                    transpose=True)(u)
        ul = shifted("down_right", f"pass2_level{level}_ul_upsample", stride=2,
                     transpose=True)(ul)
      # One more block than the first pass had here: the level's extra kept output is
      # its down-sampling (levels 1, 2) or the input convolution (level 0).
      for i in range(self.nr_resnet + upsampled):
        u = block("down", f"pass2_level{level}_u{i}")(u, u_list.pop(), y, train)
        ul = block("down_right", f"pass2_level{level}_ul{i}")(
            ul, jnp.concatenate([u, ul_list.pop()], axis=-1), y, train)
    assert not u_list and not ul_list, "every kept output feeds one second-pass block"

    out = nin(out_channels, weight_norm=wn, dtype=dtype, name="nin_out")(nn.elu(ul))
    return out.astype(jnp.float32)
