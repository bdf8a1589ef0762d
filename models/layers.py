"""Building blocks shared by the diffusion networks (Ho et al. 2020, Appendix B).

Timestep embedding, GroupNorm-SiLU-conv ResNet block, single-head self-attention,
and 2x up/down-sampling, all NHWC. Initialisation follows the DDPM reference:
variance scaling ('fan_avg', uniform) with scale 1, and scale 1e-10 ("zero") for
the last layer of every residual branch, so each block starts as the identity.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# The reference asks for scale 0 on the last layer of each residual branch and
# replaces it by 1e-10, since variance scaling needs a positive scale.
ZERO_INIT_SCALE = 1e-10
# tf.contrib.layers.group_norm's epsilon, which the reference used.
GROUP_NORM_EPSILON = 1e-6


def default_init(scale: float = 1.0) -> nn.initializers.Initializer:
  """Variance scaling with mode 'fan_avg' and a uniform distribution."""
  return nn.initializers.variance_scaling(
      ZERO_INIT_SCALE if scale == 0 else scale, "fan_avg", "uniform")


# Timestep-embedding conventions (`timestep_embedding`'s `convention`).
TIMESTEP_EMBEDDINGS = ("ddpm", "improved_diffusion")
# Downsampling-conv paddings (`Downsample`'s `padding`).
DOWNSAMPLE_PADDINGS = ("same", "symmetric")


def timestep_embedding(timesteps: jax.Array, embedding_dim: int,
                       max_period: float = 10000.0,
                       convention: str = "ddpm") -> jax.Array:
  """Sinusoidal embedding of (possibly fractional) timesteps, shape [B, dim].

  convention 'ddpm': the tensor2tensor variant used by DDPM, frequencies
  max_period**(-i / (half - 1)) for i = 0..half-1, sines then cosines.
  'improved_diffusion': Nichol & Dhariwal's released code (improved_diffusion/nn.py
  timestep_embedding, also guided-diffusion's), frequencies max_period**(-i / half),
  cosines then sines. Either way one zero column is appended when dim is odd.
  (Vaswani et al. 2017, Sec. 3.5, interleave them and use max_period**(-i / half).)
  """
  if timesteps.ndim != 1:
    raise ValueError(f"timesteps must have shape [batch], got {timesteps.shape}.")
  if convention not in TIMESTEP_EMBEDDINGS:
    raise ValueError(f"Unknown timestep embedding convention {convention!r}; choose "
                     f"one of {TIMESTEP_EMBEDDINGS}.")
  half_dim = embedding_dim // 2
  if half_dim < 2:
    raise ValueError(f"embedding_dim must be at least 4, got {embedding_dim}.")
  if convention == "ddpm":
    exponent = -math.log(max_period) / (half_dim - 1)
    frequencies = jnp.exp(jnp.arange(half_dim, dtype=jnp.float32) * exponent)
    angles = timesteps.astype(jnp.float32)[:, None] * frequencies[None, :]
    embedding = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)
  else:
    frequencies = jnp.exp(-math.log(max_period) *
                          jnp.arange(half_dim, dtype=jnp.float32) / half_dim)
    angles = timesteps.astype(jnp.float32)[:, None] * frequencies[None, :]
    embedding = jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=1)
  if embedding_dim % 2 == 1:
    embedding = jnp.pad(embedding, ((0, 0), (0, 1)))
  return embedding


def num_norm_groups(channels: int, num_groups: int) -> int:
  """gcd(min(num_groups, channels // 4), channels): at least 4 channels per group.

  This is num_groups (32) on every layer of the paper's networks (>= 128
  channels). Narrow test networks need fewer groups: with one channel per group
  GroupNorm would subtract the per-channel timestep bias that the ResNet block
  has just added, so the network would ignore t. The gcd keeps it a divisor
  (concatenated skips can have e.g. 48 channels).
  """
  return math.gcd(max(1, min(num_groups, channels // 4)), channels)


def group_norm(channels: int, num_groups: int, dtype: Dtype,
               name: str | None = None,
               epsilon: float = GROUP_NORM_EPSILON) -> nn.GroupNorm:
  """GroupNorm with num_norm_groups(channels, num_groups) groups.

  Epsilon GROUP_NORM_EPSILON (1e-6) as in tf.contrib.layers.group_norm used by the
  reference (PyTorch's nn.GroupNorm, e.g. in Improved DDPM's code, uses 1e-5).
  """
  return nn.GroupNorm(num_groups=num_norm_groups(channels, num_groups),
                      epsilon=epsilon, dtype=dtype, param_dtype=jnp.float32,
                      name=name)


def conv3x3(features: int, stride: int = 1, init_scale: float = 1.0,
            dtype: Dtype = jnp.float32, name: str | None = None,
            padding: Any = "SAME") -> nn.Conv:
  """3x3 convolution ('SAME' unless told) with the reference initialisation."""
  return nn.Conv(features, kernel_size=(3, 3), strides=(stride, stride),
                 padding=padding, kernel_init=default_init(init_scale),
                 bias_init=nn.initializers.zeros, dtype=dtype,
                 param_dtype=jnp.float32, name=name)


def dense(features: int, init_scale: float = 1.0, dtype: Dtype = jnp.float32,
          name: str | None = None) -> nn.Dense:
  """Dense on the last axis; on NHWC maps it is the reference's 'NIN' (1x1 conv)."""
  return nn.Dense(features, kernel_init=default_init(init_scale),
                  bias_init=nn.initializers.zeros, dtype=dtype,
                  param_dtype=jnp.float32, name=name)


class ResnetBlock(nn.Module):
  """x + conv(drop(act(norm(conv(act(norm(x))) + Dense(act(temb)))))).

  With scale_shift_norm (Nichol & Dhariwal 2021's U-Net) the embedding gives a
  per-channel scale and shift of the second norm instead of a bias before it:
  x + conv(drop(act(norm(h) * (1 + scale) + shift))), h = conv(act(norm(x))).
  The second conv starts near zero, so the block starts as the (shortcut) identity.
  """
  out_channels: int | None = None
  dropout: float = 0.0
  conv_shortcut: bool = False  # 3x3 conv instead of a 1x1 NIN when channels change
  num_groups: int = 32
  scale_shift_norm: bool = False
  dtype: Dtype = jnp.float32
  norm_epsilon: float = GROUP_NORM_EPSILON

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array | None,
               train: bool) -> jax.Array:
    in_channels = x.shape[-1]
    out_channels = self.out_channels or in_channels
    h = nn.silu(group_norm(in_channels, self.num_groups, self.dtype, "norm1",
                           self.norm_epsilon)(x))
    h = conv3x3(out_channels, dtype=self.dtype, name="conv1")(h)
    norm2 = group_norm(out_channels, self.num_groups, self.dtype, "norm2",
                       self.norm_epsilon)
    if temb is not None and self.scale_shift_norm:
      scale, shift = jnp.split(dense(2 * out_channels, dtype=self.dtype, name="temb_proj")(
          nn.silu(temb))[:, None, None, :], 2, axis=-1)
      h = norm2(h) * (1 + scale) + shift
    else:
      if temb is not None:
        # Per-channel bias from the timestep (and class) embedding.
        h += dense(out_channels, dtype=self.dtype, name="temb_proj")(
            nn.silu(temb))[:, None, None, :]
      h = norm2(h)
    h = nn.silu(h)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = conv3x3(out_channels, init_scale=0.0, dtype=self.dtype, name="conv2")(h)
    if in_channels != out_channels:
      if self.conv_shortcut:
        x = conv3x3(out_channels, dtype=self.dtype, name="conv_shortcut")(x)
      else:
        x = dense(out_channels, dtype=self.dtype, name="nin_shortcut")(x)
    return x + h


class AttentionBlock(nn.Module):
  """Self-attention over all H*W positions, plus the input (num_heads heads of
  channels / num_heads each; DDPM uses one, Improved DDPM four).

  With a `context` [B, L, D] (a caption's token features) the keys and values of
  the L context tokens are appended to the H*W image ones, as GLIDE's U-Net
  (Nichol et al. 2022, sec. 4) does: every position can attend to every word, so
  "at top left" can act where it applies. `context_mask` [B, L] marks the real
  tokens; a context with no real token gives exactly the self-attention output.

  fused: jax.nn.dot_product_attention (cuDNN's flash attention where the GPU and
  dtype allow it, XLA's otherwise) instead of two einsums and a softmax; the same
  function, without the [B, heads, HW, HW] logits in memory on GPU.
  """
  num_groups: int = 32
  num_heads: int = 1
  dtype: Dtype = jnp.float32
  fused: bool = False
  norm_epsilon: float = GROUP_NORM_EPSILON

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None,
               context_mask: jax.Array | None = None) -> jax.Array:
    batch, height, width, channels = x.shape
    h = group_norm(channels, self.num_groups, self.dtype, "norm", self.norm_epsilon)(x)
    q = dense(channels, dtype=self.dtype, name="q")(h)
    k = dense(channels, dtype=self.dtype, name="k")(h)
    v = dense(channels, dtype=self.dtype, name="v")(h)
    if channels % self.num_heads:
      raise ValueError(f"{channels} channels do not split into num_heads="
                       f"{self.num_heads} heads.")
    head_dim = channels // self.num_heads
    q, k, v = (a.reshape(batch, height * width, self.num_heads, head_dim)
               for a in (q, k, v))
    mask = None   # [B, 1, 1, keys]: which keys may be attended to
    if context is not None:
      if context.ndim != 3 or context.shape[0] != batch:
        raise ValueError(f"context must be [batch, tokens, features] with batch "
                         f"{batch}, got shape {context.shape}.")
      length = context.shape[1]
      if context_mask is None:
        context_mask = jnp.ones((batch, length), bool)
      if context_mask.shape != (batch, length):
        raise ValueError(f"context_mask must have shape {(batch, length)}, got "
                         f"{context_mask.shape}.")
      kc, vc = (dense(channels, dtype=self.dtype, name=name)(context).reshape(
          batch, length, self.num_heads, head_dim) for name in ("context_k", "context_v"))
      k = jnp.concatenate([k, kc.astype(k.dtype)], axis=1)
      v = jnp.concatenate([v, vc.astype(v.dtype)], axis=1)
      mask = jnp.concatenate([jnp.ones((batch, height * width), bool),
                              context_mask.astype(bool)], axis=1)[:, None, None, :]
    if self.fused:
      h = jax.nn.dot_product_attention(q, k, v, scale=head_dim**-0.5,
                                       mask=mask).reshape(x.shape)
    else:
      # Scaled dot-product logits; softmax in float32 even for bf16 activations.
      logits = jnp.einsum("bihc,bjhc->bhij", q, k, preferred_element_type=jnp.float32)
      logits = logits * head_dim**-0.5
      if mask is not None:   # image keys are always there, so no row is all masked
        logits = jnp.where(mask, logits, -jnp.inf)
      weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
      h = jnp.einsum("bhij,bjhc->bihc", weights, v).reshape(x.shape)
    h = dense(channels, init_scale=0.0, dtype=self.dtype, name="proj_out")(h)
    return x + h


class Downsample(nn.Module):
  """Halves H and W: 3x3 conv with stride 2, or 2x2 average pooling.

  padding 'same': TF's 'SAME', which with stride 2 pads (0, 1) on even sizes, as in
  the DDPM reference; 'symmetric': (1, 1), PyTorch's Conv2d(padding=1) in Improved
  DDPM's code. The two sample the map at offsets one pixel apart.
  """
  with_conv: bool = True
  dtype: Dtype = jnp.float32
  padding: str = "same"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.padding not in DOWNSAMPLE_PADDINGS:
      raise ValueError(f"Unknown downsample padding {self.padding!r}; choose one of "
                       f"{DOWNSAMPLE_PADDINGS}.")
    if self.with_conv:
      padding = "SAME" if self.padding == "same" else ((1, 1), (1, 1))
      return conv3x3(x.shape[-1], stride=2, dtype=self.dtype, name="conv",
                     padding=padding)(x)
    return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))


class Upsample(nn.Module):
  """Doubles H and W by nearest-neighbour repetition, then an optional 3x3 conv."""
  with_conv: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    if self.with_conv:
      x = conv3x3(x.shape[-1], dtype=self.dtype, name="conv")(x)
    return x
