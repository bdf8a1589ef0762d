"""PixelCNN (van den Oord et al. 2016a) and Gated PixelCNN (van den Oord et al. 2016b).

Both map an image x in [-1, 1], [B, H, W, C], to 256 logits per sub-pixel,
[B, H, W, C, 256]: logits[b, i, j, c] parameterise p(x_{i,j,c} | x_{<(i,j,c)}), the
softmax over the 256 intensity levels of sub-pixel c of pixel (i, j) given every
earlier pixel in raster order and the earlier channels (R -> G -> B) of pixel (i, j).

PixelCNN ("Pixel Recurrent Neural Networks", table 1 and figure 5): a 7x7 mask-A
convolution to 2h feature maps; residual blocks ReLU -> 1x1 (h) -> ReLU -> masked 3x3
(h) -> ReLU -> 1x1 (2h) added to their input; then ReLU -> 1x1 (1024 maps for
CIFAR-10) -> ReLU -> 1x1 to 256 C logits, all later layers with mask B. Its stacked
masked 3x3 convolutions leave a blind spot: pixel (i-1, j+4) and the wedge to its
upper right, (i-d, j+3+d), never reach pixel (i, j), however deep the network.

Gated PixelCNN ("Conditional Image Generation with PixelCNN Decoders", section 2,
figure 2) removes the blind spot with two stacks:
- the vertical stack, an (n//2 + 1) x n convolution over the rows up to and including
  the current one (every column of them, no mask);
- the horizontal stack, a 1 x (n//2 + 1) masked convolution over the current row up to
  the current pixel;
- the vertical stack's pre-activations, shifted down one row (so they only see rows
  above), feed the horizontal stack through a 1x1 convolution; the horizontal stack
  never feeds the vertical one;
- gated activations y = tanh(W_f * x + V_f h) * sigmoid(W_g * x + V_g h) (eqs. 2 and 4;
  one convolution computes both gates, 2p maps split into two halves of p), with an
  optional class embedding V h added to both gates of both stacks;
- a 1x1 convolution and a residual connection on the horizontal stack.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.masked_conv import MaskedConv

NUM_LEVELS = 256  # intensity levels of 8-bit data


def _check_odd(name: str, size: int) -> None:
  if size < 1 or size % 2 == 0:
    raise ValueError(f"{name} must be a positive odd number, got {size}.")


def output_logits(h: jax.Array, head_features: int, num_channels: int,
                  num_levels: int) -> jax.Array:
  """ReLU -> 1x1 (head) -> ReLU -> 1x1 to logits, both mask B: [B, H, W, C, levels]."""
  h = MaskedConv(head_features, (1, 1), "B", num_channels, name="head")(nn.relu(h))
  out = MaskedConv(num_channels * num_levels, (1, 1), "B", num_channels,
                   name="logits")(nn.relu(h))
  # Channel groups are contiguous blocks: features [c*levels, (c+1)*levels) are group c.
  return out.reshape(*out.shape[:-1], num_channels, num_levels)


class PixelCNNResidualBlock(nn.Module):
  """Figure 5 (left) of van den Oord et al. 2016a: 2h -> h -> masked kxk -> h -> 2h."""
  ch: int
  kernel_size: int
  num_groups: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    h = MaskedConv(self.ch, (1, 1), "B", self.num_groups, name="reduce")(nn.relu(x))
    h = MaskedConv(self.ch, (k, k), "B", self.num_groups, name="masked")(nn.relu(h))
    h = MaskedConv(2 * self.ch, (1, 1), "B", self.num_groups, name="expand")(nn.relu(h))
    return x + h


class PixelCNN(nn.Module):
  """PixelCNN with a 256-way softmax per sub-pixel (unconditional)."""
  num_channels: int                # C of the image: 3 (RGB) or 1
  ch: int = 128                    # h; the residual stream has 2h feature maps
  num_layers: int = 15             # residual blocks, one masked kxk conv each
  kernel_size: int = 3
  first_kernel_size: int = 7
  head_features: int = 1024
  num_levels: int = NUM_LEVELS

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    del train   # no dropout or normalisation
    if y is not None:
      raise ValueError("PixelCNN is unconditional; use the Gated PixelCNN for labels.")
    _check_odd("kernel_size", self.kernel_size)
    _check_odd("first_kernel_size", self.first_kernel_size)
    k0, c = self.first_kernel_size, self.num_channels
    h = MaskedConv(2 * self.ch, (k0, k0), "A", c, name="input_conv")(x)
    for i in range(self.num_layers):
      h = PixelCNNResidualBlock(self.ch, self.kernel_size, c, name=f"block_{i}")(h)
    return output_logits(h, self.head_features, c, self.num_levels)


def shift_down(x: jax.Array) -> jax.Array:
  """Row i takes row i - 1's values (row 0 gets zeros): [B, H, W, F]."""
  return jnp.pad(x[:, :-1], ((0, 0), (1, 0), (0, 0), (0, 0)))


def gate(pre_activation: jax.Array) -> jax.Array:
  """tanh(first half) * sigmoid(second half): eq. 2 of van den Oord et al. 2016b."""
  f, g = jnp.split(pre_activation, 2, axis=-1)
  return jnp.tanh(f) * nn.sigmoid(g)


class GatedLayer(nn.Module):
  """One layer of figure 2 of van den Oord et al. 2016b: (v, h) -> (v', h')."""
  features: int                    # p
  kernel_size: int                 # n
  num_groups: int                  # colour channels of the image
  first: bool = False              # mask A, and no residual (h has C channels)
  num_classes: int = 0

  @nn.compact
  def __call__(self, v: jax.Array, h: jax.Array, y: jax.Array | None):
    p, n = self.features, self.kernel_size
    r = n // 2
    # Vertical stack: output row i sees input rows i-r..i, columns j-r..j+r.
    v_pre = nn.Conv(2 * p, (r + 1, n), padding=((r, 0), (r, r)), name="vertical")(v)
    # Horizontal stack: the current row, columns j-r..j; the current pixel is the
    # kernel's last column, where the colour-group mask applies.
    h_pre = MaskedConv(2 * p, (1, r + 1), "A" if self.first else "B", self.num_groups,
                       center=(0, r), out_parts=2, name="horizontal")(h)
    # The vertical stack reaches the horizontal one shifted down a row, so that row i
    # sees only rows < i through it (section 2.2).
    h_pre = h_pre + nn.Conv(2 * p, (1, 1), name="vertical_to_horizontal")(
        shift_down(v_pre))
    if y is not None:
      # Class-conditional biases V_f^T h, V_g^T h (eq. 4), one-hot h: an embedding.
      v_pre = v_pre + nn.Embed(self.num_classes, 2 * p, name="vertical_class")(
          y)[:, None, None, :]
      h_pre = h_pre + nn.Embed(self.num_classes, 2 * p, name="horizontal_class")(
          y)[:, None, None, :]
    v_out = gate(v_pre)
    h_out = MaskedConv(p, (1, 1), "B", self.num_groups, name="horizontal_out")(
        gate(h_pre))
    if not self.first:
      h_out = h_out + h
    return v_out, h_out


class GatedPixelCNN(nn.Module):
  """Gated PixelCNN, 256-way softmax per sub-pixel, optionally class-conditional."""
  num_channels: int
  ch: int = 384                    # p, the feature maps of each gated layer
  num_layers: int = 20             # gated layers, the first included
  kernel_size: int = 5             # n of every gated layer after the first
  first_kernel_size: int = 7       # n of the first gated layer (mask A)
  head_features: int = 1024
  num_classes: int = 0             # > 0: class-conditional (labels y in [0, num_classes))
  num_levels: int = NUM_LEVELS

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    del train
    _check_odd("kernel_size", self.kernel_size)
    _check_odd("first_kernel_size", self.first_kernel_size)
    if self.num_layers < 1:
      raise ValueError(f"num_layers must be >= 1, got {self.num_layers}.")
    if (y is None) != (self.num_classes == 0):
      raise ValueError("Pass labels y exactly when num_classes > 0 "
                       f"(num_classes={self.num_classes}, y given: {y is not None}).")
    v, h = x, x
    for i in range(self.num_layers):
      v, h = GatedLayer(self.ch, self.first_kernel_size if i == 0 else self.kernel_size,
                        self.num_channels, first=i == 0, num_classes=self.num_classes,
                        name=f"layer_{i}")(v, h, y)
    return output_logits(h, self.head_features, self.num_channels, self.num_levels)
