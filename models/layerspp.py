"""Building blocks of NCSN++ / DDPM++ (Song et al. 2021, App. H), all NHWC.

Relative to the DDPM blocks (models/layers.py) they add: FIR resampling,
BigGAN-style residual blocks that resample inside the block (Brock et al. 2019),
skip rescaling by 1/sqrt(2) (so a sum of two unit-variance branches stays unit
variance), Gaussian Fourier features of the noise level (Tancik et al. 2020), and
the input/output pyramids ("progressive growing" connections of StyleGAN2).

Initialisation follows the reference: variance scaling ('fan_avg', uniform) with
scale 1 (`layers.default_init`), 0.1 for the 1x1 "NIN" projections of the
attention and DDPM shortcuts, and `init_scale` (0 -> 1e-10) for the last layer of
every residual branch, so a fresh block passes its skip path through.
GroupNorm uses min(32, C / 4) groups (`layers.num_norm_groups`) and epsilon 1e-6.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import layers
from models import up_or_down_sampling as resampling

Dtype = Any
# The reference initialises the 1x1 projections of attention and of the DDPM
# shortcut ("NIN" layers) with variance scale 0.1.
NIN_INIT_SCALE = 0.1


def conv1x1(features: int, init_scale: float = 1.0, dtype: Dtype = jnp.float32,
            name: str | None = None) -> nn.Conv:
  """1x1 convolution with the reference initialisation."""
  return nn.Conv(features, kernel_size=(1, 1),
                 kernel_init=layers.default_init(init_scale),
                 bias_init=nn.initializers.zeros, dtype=dtype,
                 param_dtype=jnp.float32, name=name)


def rescale_sum(x: jax.Array, h: jax.Array, skip_rescale: bool) -> jax.Array:
  """x + h, divided by sqrt(2) when skip_rescale (keeps unit variance)."""
  return (x + h) / math.sqrt(2.0) if skip_rescale else x + h


class GaussianFourierProjection(nn.Module):
  """[sin(2 pi W s), cos(2 pi W s)] of a [B] input s, W ~ N(0, scale^2) fixed.

  W is a parameter (named 'W', as in the reference) so that it is saved with the
  checkpoint, but it is never trained: the forward pass stops its gradient, so
  every gradient-based optimiser leaves it unchanged (an optimiser with weight
  decay would still shrink it; the papers' Adam has none). A parameter rather than
  a constant from a fixed seed keeps the checkpoint self-contained.
  """
  embedding_size: int = 256
  scale: float = 1.0

  @nn.compact
  def __call__(self, s: jax.Array) -> jax.Array:
    weights = self.param("W", nn.initializers.normal(stddev=self.scale),
                         (self.embedding_size,), jnp.float32)
    weights = jax.lax.stop_gradient(weights)
    angles = s.astype(jnp.float32)[:, None] * weights[None, :] * (2 * math.pi)
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class Combine(nn.Module):
  """Merges an input-pyramid level y into h: 1x1 conv of y, then sum or concat."""
  method: str = "cat"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pyramid: jax.Array, h: jax.Array) -> jax.Array:
    projected = conv1x1(h.shape[-1], dtype=self.dtype, name="conv")(pyramid)
    if self.method == "cat":
      return jnp.concatenate([projected, h.astype(projected.dtype)], axis=-1)
    if self.method == "sum":
      return projected + h
    raise ValueError(f"Combine method must be 'cat' or 'sum', got {self.method!r}.")


class AttnBlockpp(nn.Module):
  """Single-head self-attention over all H*W positions, plus the input."""
  skip_rescale: bool = False
  init_scale: float = 0.0
  num_groups: int = 32
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, height, width, channels = x.shape
    h = layers.group_norm(channels, self.num_groups, self.dtype, "norm")(x)
    q, k, v = (layers.dense(channels, NIN_INIT_SCALE, self.dtype, name)(h)
               for name in ("q", "k", "v"))
    q, k, v = (a.reshape(batch, height * width, channels) for a in (q, k, v))
    logits = jnp.einsum("bic,bjc->bij", q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits * channels**-0.5, axis=-1).astype(v.dtype)
    h = jnp.einsum("bij,bjc->bic", weights, v).reshape(x.shape)
    h = layers.dense(channels, self.init_scale, self.dtype, "proj_out")(h)
    return rescale_sum(x, h, self.skip_rescale)


class Upsample(nn.Module):
  """2x upsampling: FIR or nearest, with an optional 3x3 conv (fused for FIR)."""
  out_ch: int | None = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    out_ch = self.out_ch or x.shape[-1]
    if not self.with_conv and out_ch != x.shape[-1]:
      raise ValueError("Upsample without a conv cannot change the channel count.")
    if self.fir:
      if self.with_conv:
        return resampling.Conv2d(out_ch, 3, up=True, resample_kernel=self.fir_kernel,
                                 dtype=self.dtype, name="conv")(x)
      return resampling.upsample_2d(x, self.fir_kernel, factor=2)
    h = resampling.naive_upsample_2d(x, factor=2)
    if self.with_conv:
      h = layers.conv3x3(out_ch, dtype=self.dtype, name="conv")(h)
    return h


class Downsample(nn.Module):
  """2x downsampling: FIR or average pooling / strided conv (fused for FIR)."""
  out_ch: int | None = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    out_ch = self.out_ch or x.shape[-1]
    if not self.with_conv and out_ch != x.shape[-1]:
      raise ValueError("Downsample without a conv cannot change the channel count.")
    if self.fir:
      if self.with_conv:
        return resampling.Conv2d(out_ch, 3, down=True, resample_kernel=self.fir_kernel,
                                 dtype=self.dtype, name="conv")(x)
      return resampling.downsample_2d(x, self.fir_kernel, factor=2)
    if self.with_conv:
      # 'SAME' with stride 2 pads (0, 1) on even sizes, as in the reference.
      return layers.conv3x3(out_ch, stride=2, dtype=self.dtype, name="conv")(x)
    return resampling.naive_downsample_2d(x, factor=2)


def _add_temb(h: jax.Array, temb: jax.Array | None, dtype: Dtype) -> jax.Array:
  """Adds a per-channel bias Dense(act(temb)) (the conditioning of every block)."""
  if temb is None:
    return h
  return h + layers.dense(h.shape[-1], dtype=dtype, name="temb_proj")(
      nn.silu(temb))[:, None, None, :]


class ResnetBlockDDPMpp(nn.Module):
  """The DDPM residual block with optional skip rescaling (DDPM++ 'ddpm' type)."""
  out_ch: int | None = None
  conv_shortcut: bool = False
  dropout: float = 0.1
  skip_rescale: bool = False
  init_scale: float = 0.0
  num_groups: int = 32
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array | None = None, *,
               train: bool) -> jax.Array:
    in_ch = x.shape[-1]
    out_ch = self.out_ch or in_ch
    h = nn.silu(layers.group_norm(in_ch, self.num_groups, self.dtype, "norm1")(x))
    h = layers.conv3x3(out_ch, dtype=self.dtype, name="conv1")(h)
    h = _add_temb(h, temb, self.dtype)
    h = nn.silu(layers.group_norm(out_ch, self.num_groups, self.dtype, "norm2")(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = layers.conv3x3(out_ch, init_scale=self.init_scale, dtype=self.dtype,
                       name="conv2")(h)
    if in_ch != out_ch:
      if self.conv_shortcut:
        x = layers.conv3x3(out_ch, dtype=self.dtype, name="shortcut")(x)
      else:
        x = layers.dense(out_ch, NIN_INIT_SCALE, self.dtype, "shortcut")(x)
    return rescale_sum(x, h, self.skip_rescale)


class ResnetBlockBigGANpp(nn.Module):
  """BigGAN residual block: resampling inside the block, 1x1 conv shortcut.

  norm-act-[up|down]-conv3x3-(+temb)-norm-act-dropout-conv3x3, plus the skip path
  [up|down]-conv1x1 (conv only when resampling or changing channels).
  """
  up: bool = False
  down: bool = False
  out_ch: int | None = None
  dropout: float = 0.1
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  skip_rescale: bool = True
  init_scale: float = 0.0
  num_groups: int = 32
  dtype: Dtype = jnp.float32

  def _resample(self, x: jax.Array) -> jax.Array:
    if self.up:
      return (resampling.upsample_2d(x, self.fir_kernel, factor=2) if self.fir
              else resampling.naive_upsample_2d(x, factor=2))
    if self.down:
      return (resampling.downsample_2d(x, self.fir_kernel, factor=2) if self.fir
              else resampling.naive_downsample_2d(x, factor=2))
    return x

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array | None = None, *,
               train: bool) -> jax.Array:
    if self.up and self.down:
      raise ValueError("A residual block cannot both upsample and downsample.")
    in_ch = x.shape[-1]
    out_ch = self.out_ch or in_ch
    h = nn.silu(layers.group_norm(in_ch, self.num_groups, self.dtype, "norm1")(x))
    h = self._resample(h)
    x = self._resample(x.astype(h.dtype))
    h = layers.conv3x3(out_ch, dtype=self.dtype, name="conv1")(h)
    h = _add_temb(h, temb, self.dtype)
    h = nn.silu(layers.group_norm(out_ch, self.num_groups, self.dtype, "norm2")(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = layers.conv3x3(out_ch, init_scale=self.init_scale, dtype=self.dtype,
                       name="conv2")(h)
    if in_ch != out_ch or self.up or self.down:
      x = conv1x1(out_ch, dtype=self.dtype, name="shortcut")(x)
    return rescale_sum(x, h, self.skip_rescale)
