"""The DDPM U-Net of Ho et al. 2020 ("Denoising Diffusion Probabilistic Models").

A PixelCNN++-style U-Net backbone (paper Sec. 4 and Appendix B): wide ResNet blocks
with GroupNorm, a sinusoidal timestep embedding added in every block, single-head
self-attention at the 16x16 resolution, and skip connections concatenated on the
way up. The defaults are the paper's CIFAR-10 network (35.7M parameters).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import layers


def coordinate_channels(batch: int, height: int, width: int,
                        dtype: Any = jnp.float32) -> jax.Array:
  """[batch, H, W, 2]: each pixel centre's (row, column), scaled to [-1, 1]."""
  rows = (jnp.arange(height, dtype=jnp.float32) + 0.5) / height * 2.0 - 1.0
  cols = (jnp.arange(width, dtype=jnp.float32) + 0.5) / width * 2.0 - 1.0
  grid = jnp.stack(jnp.meshgrid(rows, cols, indexing="ij"), axis=-1)
  return jnp.broadcast_to(grid, (batch, height, width, 2)).astype(dtype)


def concat_condition(x_t: jax.Array, condition: jax.Array) -> jax.Array:
  """SR3's network input: [x_t, upsampled low-res image] along channels (2C channels).

  Saharia et al. 2021, sec. 2: the low-res image, upsampled to x_t's size, is
  concatenated with x_t and the U-Net denoises the pair.
  """
  if x_t.shape != condition.shape:
    raise ValueError(f"x_t {x_t.shape} and the condition {condition.shape} must "
                     "have the same shape (upsample the low-res image first).")
  return jnp.concatenate([x_t, condition], axis=-1)


class UNet(nn.Module):
  """Predicts a [B, H, W, out_channels] map (e.g. the noise eps) from x_t, t, y."""
  ch: int = 128  # base channel count; the time embedding has 4 * ch features
  ch_mult: Sequence[int] = (1, 2, 2, 2)  # channels ch * ch_mult[i] at level i
  num_res_blocks: int = 2  # ResNet blocks per level on the way down (+1 up)
  attn_resolutions: Sequence[int] = (16,)  # feature-map sizes with attention
  dropout: float = 0.1
  resamp_with_conv: bool = True  # strided / post-upsample 3x3 convs, else pooling
  out_channels: int | None = None  # default: the input's channel count
  # > 0: a learned class embedding (num_classes + 1 rows; the last row, index
  # num_classes, is the "null" label for classifier-free guidance) joins temb.
  num_classes: int = 0
  num_groups: int = 32  # GroupNorm groups; fewer below 128 channels, see layers
  num_heads: int = 1    # attention heads (Improved DDPM: 4)
  scale_shift_norm: bool = False  # temb scales/shifts the 2nd norm (Improved DDPM)
  dtype: Any = jnp.float32  # computation dtype; parameters stay float32
  fused_attention: bool = False  # jax.nn.dot_product_attention (layers.AttentionBlock)
  # Recompute each ResNet block's activations in the backward pass instead of
  # storing them: less memory per image, about one more forward pass of compute.
  remat: bool = False
  # Two extra input channels holding each pixel's row and column in [-1, 1]
  # (CoordConv, Liu et al. 2018). Convolutions and attention are translation
  # equivariant and the conditioning vector is spatially uniform, so without them
  # the only cue for absolute position is the zero padding at the border: a
  # caption's "at top left" is then learned far more slowly than its colour.
  coordinate_channels: bool = False
  # Attention layers also attend to a `context` of caption tokens (GLIDE's
  # U-Net, Nichol et al. 2022): per-position conditioning, besides the global
  # caption vector added to the time embedding.
  cross_attention: bool = False
  # Three details where Improved DDPM's released U-Net (openai/improved-diffusion,
  # unet.py) differs from the DDPM reference; the defaults are the reference's.
  # layers.timestep_embedding's convention: 'ddpm' | 'improved_diffusion'.
  timestep_embedding: str = "ddpm"
  # Every GroupNorm's epsilon: TF's 1e-6 in the reference, PyTorch's 1e-5.
  norm_epsilon: float = layers.GROUP_NORM_EPSILON
  # The strided downsampling conv's padding (layers.Downsample): 'same' | 'symmetric'.
  downsample_padding: str = "same"

  def _check_inputs(self, x: jax.Array, t: jax.Array,
                    y: jax.Array | None) -> None:
    """Raises ValueError for bad shapes or settings, from static shapes only."""
    if not self.ch_mult:
      raise ValueError("ch_mult must name at least one resolution level.")
    if self.ch < 4:
      raise ValueError(f"ch must be at least 4 (time embedding), got {self.ch}.")
    if self.num_res_blocks < 0:
      raise ValueError(f"num_res_blocks must be >= 0, got {self.num_res_blocks}.")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}.")
    if x.ndim != 4:
      raise ValueError(f"x must be NHWC [B, H, W, C], got shape {x.shape}.")
    batch, height, width, _ = x.shape
    factor = 2**(len(self.ch_mult) - 1)
    if height % factor or width % factor:
      raise ValueError(
          f"Image size {height}x{width} is not divisible by {factor} = 2**"
          f"(len(ch_mult) - 1) with ch_mult={tuple(self.ch_mult)}: resize the "
          "images or use fewer resolution levels.")
    if t.shape != (batch,):
      raise ValueError(f"t must have shape [batch] = ({batch},), got {t.shape}.")
    if self.num_classes > 0:
      if y is None:
        raise ValueError(
            f"This UNet is class-conditional (num_classes={self.num_classes}): "
            f"pass integer labels y of shape ({batch},); use y={self.num_classes} "
            "for the null (unconditional) label.")
      if y.shape != (batch,) or not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(
            f"y must be integer labels of shape ({batch},), got {y.dtype} "
            f"{y.shape}.")
    elif y is not None:
      raise ValueError("Labels y were given but num_classes=0: set num_classes "
                       "in the model config to condition on labels.")

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array | None = None, *,
               train: bool, cond_embedding: jax.Array | None = None,
               context: jax.Array | None = None,
               context_mask: jax.Array | None = None) -> jax.Array:
    """x: [B, H, W, C] float; t: [B] int or float; y: [B] int labels or None.

    cond_embedding: None or a [B, 4 * ch] vector added to the time embedding as the
    class embedding is (e.g. a caption's models.text_encoder.TextEncoder output).
    context, context_mask: [B, L, D] token features and [B, L] bool for
    cross_attention (layers.AttentionBlock); required by it and only with it.
    """
    self._check_inputs(x, t, y)
    if cond_embedding is not None and cond_embedding.shape != (x.shape[0], 4 * self.ch):
      raise ValueError(f"cond_embedding must have shape [batch, 4 * ch] = "
                       f"({x.shape[0]}, {4 * self.ch}), got {cond_embedding.shape}.")
    if self.cross_attention != (context is not None):
      raise ValueError("A cross_attention U-Net needs context tokens, and only it takes "
                       f"them: cross_attention={self.cross_attention}, context "
                       f"{'given' if context is not None else 'missing'}.")
    num_levels = len(self.ch_mult)
    out_channels = self.out_channels or x.shape[-1]
    # static_argnums counts self as 0: `train` (argument 3) selects the dropout code.
    block_cls = (nn.remat(layers.ResnetBlock, static_argnums=(3,)) if self.remat
                 else layers.ResnetBlock)
    resnet_block = lambda channels, name: block_cls(  # noqa: E731
        out_channels=channels, dropout=self.dropout, num_groups=self.num_groups,
        scale_shift_norm=self.scale_shift_norm, dtype=self.dtype,
        norm_epsilon=self.norm_epsilon, name=name)
    attention = lambda name: layers.AttentionBlock(  # noqa: E731
        num_groups=self.num_groups, num_heads=self.num_heads, dtype=self.dtype,
        fused=self.fused_attention, norm_epsilon=self.norm_epsilon, name=name)

    # Timestep embedding (Appendix B: Transformer sinusoidal position embedding).
    temb = layers.timestep_embedding(t, self.ch, convention=self.timestep_embedding)
    temb = layers.dense(4 * self.ch, dtype=self.dtype, name="temb_dense0")(temb)
    temb = layers.dense(4 * self.ch, dtype=self.dtype, name="temb_dense1")(
        nn.silu(temb))
    if self.num_classes > 0:
      temb += nn.Embed(self.num_classes + 1, 4 * self.ch, dtype=self.dtype,
                       param_dtype=jnp.float32, name="class_embed")(y)
    if cond_embedding is not None:
      temb += cond_embedding.astype(temb.dtype)

    # Downsampling path: keep every intermediate map for the skip connections.
    if self.coordinate_channels:
      x = jnp.concatenate([x, coordinate_channels(x.shape[0], x.shape[1], x.shape[2],
                                                  x.dtype)], axis=-1)
    h = layers.conv3x3(self.ch, dtype=self.dtype, name="conv_in")(x)
    skips = [h]
    for level, mult in enumerate(self.ch_mult):
      for block in range(self.num_res_blocks):
        h = resnet_block(self.ch * mult, f"down_{level}_block_{block}")(h, temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attention(f"down_{level}_attn_{block}")(h, context, context_mask)
        skips.append(h)
      if level != num_levels - 1:
        h = layers.Downsample(self.resamp_with_conv, dtype=self.dtype,
                              padding=self.downsample_padding,
                              name=f"down_{level}_downsample")(h)
        skips.append(h)

    # Middle: always attention at the lowest resolution.
    h = resnet_block(h.shape[-1], "mid_block_0")(h, temb, train)
    h = attention("mid_attn")(h, context, context_mask)
    h = resnet_block(h.shape[-1], "mid_block_1")(h, temb, train)

    # Upsampling path: one extra block per level consumes the downsampler's skip.
    for level in reversed(range(num_levels)):
      for block in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop().astype(h.dtype)], axis=-1)
        h = resnet_block(self.ch * self.ch_mult[level], f"up_{level}_block_{block}")(
            h, temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attention(f"up_{level}_attn_{block}")(h, context, context_mask)
      if level != 0:
        h = layers.Upsample(self.resamp_with_conv, dtype=self.dtype,
                            name=f"up_{level}_upsample")(h)
    assert not skips, "every skip connection must be consumed"

    h = nn.silu(layers.group_norm(h.shape[-1], self.num_groups, self.dtype,
                                  "norm_out", self.norm_epsilon)(h))
    h = layers.conv3x3(out_channels, init_scale=0.0, dtype=self.dtype,
                       name="conv_out")(h)
    return h.astype(jnp.float32)
