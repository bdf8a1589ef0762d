"""PixelRNN: Row LSTM and Diagonal BiLSTM (van den Oord et al. 2016a, section 3).

Both map an image x in [-1, 1], [B, H, W, C], to `num_levels` outputs per sub-pixel,
[B, H, W, C, num_levels]: 256 logits of a softmax (natural images) or one logit of a
sigmoid (binarized MNIST; table 1), each a function of the earlier pixels in raster
order and of the earlier channels (R -> G -> B) of the same pixel.

Architecture (table 1, section 3.3, figure 5 right):
- a 7x7 mask-A convolution to 2h feature maps;
- `num_layers` residual blocks: an LSTM layer reads the 2h maps with a mask-B
  input-to-state convolution giving h maps per gate (4h), its h-map output goes
  through a mask-B 1x1 convolution back to 2h maps, which are added to the input;
- optional learnable skip connections (section 3.3): a mask-B 1x1 convolution of
  every layer's LSTM output, summed, feeds the output layers instead of the last
  residual stream;
- ReLU -> 1x1 (head_features) -> ReLU -> 1x1 to C x num_levels, mask B.

Every masked convolution splits its feature maps into one group per colour channel
(models/masked_conv.py), and the LSTM's element-wise updates keep those groups, so
a feature of colour group g never sees the current pixel's channels >= g (mask A at
the first layer, mask B after).

LSTM update (eq. 3): [o, f, i, g] = [sigmoid, sigmoid, sigmoid, tanh](K^ss * h_prev +
K^is * x), c = f c_prev + i g, h = o tanh(c). The initial states are learned
(section 5.2 of the paper: the initial recurrent state is learned), one h- and one
c-vector per layer and direction, broadcast over positions.

Row LSTM (section 3.1): the input-to-state convolution is a masked 1 x k convolution
along the row (the row's pixels j-k//2..j; mask B at pixel j), computed for the whole
map at once; the state-to-state convolution is an unmasked 1 x k convolution of the
previous row's hidden state, applied row by row with `lax.scan`. Receptive field: a
triangle above the pixel.

Diagonal BiLSTM (section 3.2, figure 3): the input-to-state component is a mask-B 1x1
convolution; the gate maps are skewed (row i shifted right by i, `skew`) so that
the diagonals i + j = t become the columns t of an H x (W + H - 1) map, then a 2 x 1
convolution of the previous column's hidden state (rows i - 1 and i, i.e. the pixels
above and to the left) is applied column by column with `lax.scan`; the output is
unskewed. The right-to-left direction is the same computation on the mirrored image
(pixels above and to the right); its output is shifted down one row before it is
added to the left-to-right output, so that a pixel only sees rows above through it.
The union covers every earlier pixel except one: the last pixel of the previous row
(i - 1, W - 1), which reaches pixel (i, j) only through the first convolution, i.e.
when j >= W - 1 - first_kernel_size // 2 (the shifted right-to-left pass sees row
i - 1 only through features of that row, which exclude their own pixel). Tests
derive this receptive field from the paper's description and compare it with the
network's Jacobian.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models import pixelcnn
from models.masked_conv import MaskedConv

LAYER_TYPES = ("row_lstm", "diagonal_bilstm")
NUM_GATES = 4   # o, f, i, g


# ---------------------------------------------------------------- skewing
def skew(x: jax.Array) -> jax.Array:
  """[B, H, W, F] -> [B, H, W + H - 1, F]: row i shifted right by i (figure 3).

  Pixel (i, j) lands in column i + j, so each diagonal becomes a column. Done with
  a pad and two reshapes: rows of length W + H laid end to end and cut into rows of
  length W + H - 1 start one position further right each.
  """
  b, h, w, f = x.shape
  flat = jnp.pad(x, ((0, 0), (0, 0), (0, h), (0, 0))).reshape(b, h * (w + h), f)
  return flat[:, :h * (w + h - 1)].reshape(b, h, w + h - 1, f)


def unskew(x: jax.Array, width: int) -> jax.Array:
  """Inverse of `skew`: [B, H, W + H - 1, F] -> [B, H, W, F], out[i, j] = x[i, i + j]."""
  b, h, skewed_width, f = x.shape
  if skewed_width != width + h - 1:
    raise ValueError(f"A skewed map of {h} rows and width {width} has {width + h - 1} "
                     f"columns, got {skewed_width}.")
  flat = jnp.pad(x.reshape(b, h * skewed_width, f), ((0, 0), (0, h), (0, 0)))
  return flat.reshape(b, h, width + h, f)[:, :, :width]


def shift_down(x: jax.Array) -> jax.Array:
  """Row i takes row i - 1's values (row 0 gets zeros): [B, H, W, F]."""
  return jnp.pad(x[:, :-1], ((0, 0), (1, 0), (0, 0), (0, 0)))


# ------------------------------------------------------------------- LSTM
def lstm_update(pre_activations: jax.Array, c_prev: jax.Array):
  """Eq. 3 of the paper: gates [o, f, i, g] (4 blocks of h on the last axis) -> (h, c)."""
  o, f, i, g = jnp.split(pre_activations, NUM_GATES, axis=-1)
  c = nn.sigmoid(f) * c_prev + nn.sigmoid(i) * jnp.tanh(g)
  return nn.sigmoid(o) * jnp.tanh(c), c


def _initial_state(module: nn.Module, features: int, shape: tuple[int, ...]):
  """Learned initial (h, c), one vector each, broadcast to `shape` + (features,)."""
  h0 = module.param("initial_hidden", nn.initializers.zeros, (features,))
  c0 = module.param("initial_cell", nn.initializers.zeros, (features,))
  return (jnp.broadcast_to(h0, (*shape, features)), jnp.broadcast_to(c0, (*shape, features)))


class RowLSTM(nn.Module):
  """Row LSTM layer (section 3.1): [B, H, W, F] -> hidden states [B, H, W, h]."""
  features: int                    # h
  kernel_size: int = 3             # k of both 1 x k convolutions
  num_groups: int = 1              # colour channels of the modelled image

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, height, width, _ = x.shape
    h, k = self.features, self.kernel_size
    # Input-to-state: pixels j-k//2..j of the same row; the gate blocks are the
    # `out_parts` of the mask so that each gate's channel n has the same colour group.
    input_to_state = MaskedConv(NUM_GATES * h, (1, k), "B", self.num_groups,
                                out_parts=NUM_GATES, name="input_to_state")(x)
    # State-to-state: unmasked (the previous row is entirely in the past).
    state_kernel = self.param("state_to_state", nn.initializers.lecun_normal(),
                              (k, h, NUM_GATES * h))
    h0, c0 = _initial_state(self, h, (b, width))

    def step(carry, row_pre):
      h_prev, c_prev = carry
      recurrent = jax.lax.conv_general_dilated(
          h_prev, state_kernel, window_strides=(1,), padding=((k // 2, k // 2),),
          dimension_numbers=("NWC", "WIO", "NWC"))
      h_row, c_row = lstm_update(row_pre + recurrent, c_prev)
      return (h_row, c_row), h_row

    _, rows = jax.lax.scan(step, (h0, c0), jnp.moveaxis(input_to_state, 1, 0))
    return jnp.moveaxis(rows, 0, 1)


def diagonal_valid(height: int, width: int) -> np.ndarray:
  """[W + H - 1, H] bool: column t of the skewed map holds a pixel in row i."""
  t = np.arange(width + height - 1)[:, None]
  i = np.arange(height)[None, :]
  return (t - i >= 0) & (t - i < width)


class DiagonalBiLSTM(nn.Module):
  """Diagonal BiLSTM layer (section 3.2): [B, H, W, F] -> [B, H, W, h]."""
  features: int                    # h
  num_groups: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, height, width, _ = x.shape
    h = self.features
    gates = NUM_GATES * h
    left = MaskedConv(gates, (1, 1), "B", self.num_groups, out_parts=NUM_GATES,
                      name="input_to_state_left")(x)
    right = MaskedConv(gates, (1, 1), "B", self.num_groups, out_parts=NUM_GATES,
                       name="input_to_state_right")(x)
    # The right-to-left direction is the left-to-right one on the mirrored image. Both
    # run in one scan: direction d is the leading axis.
    pre = jnp.stack([left, jnp.flip(right, axis=2)])             # [2, B, H, W, 4h]
    pre = skew(pre.reshape(2 * b, height, width, gates))          # [2B, H, T, 4h]
    pre = jnp.moveaxis(pre.reshape(2, b, height, -1, gates), 3, 0)   # [T, 2, B, H, 4h]
    # 2 x 1 state-to-state kernel: rows i - 1 (above) and i (left) of the previous
    # column, concatenated on the feature axis.
    state_kernel = self.param("state_to_state", nn.initializers.lecun_normal(),
                              (2, 2 * h, gates))
    h0 = self.param("initial_hidden", nn.initializers.zeros, (2, h))
    c0 = self.param("initial_cell", nn.initializers.zeros, (2, h))
    h_init = jnp.broadcast_to(h0[:, None, None], (2, b, height, h))
    c_init = jnp.broadcast_to(c0[:, None, None], (2, b, height, h))
    valid = jnp.asarray(diagonal_valid(height, width))[:, None, None, :, None]

    def step(carry, inputs):
      h_prev, c_prev = carry
      column_pre, column_valid = inputs
      # Row i - 1 of the previous column is the pixel above; row -1 is the initial state.
      above = jnp.concatenate([h_init[:, :, :1], h_prev[:, :, :-1]], axis=2)
      recurrent = jnp.einsum("dbhk,dkg->dbhg", jnp.concatenate([above, h_prev], -1),
                             state_kernel)
      h_new, c_new = lstm_update(column_pre + recurrent, c_prev)
      # Positions outside the image hold the initial state: a pixel's left neighbour
      # beyond the image edge is the initial state, as is the row above row 0.
      h_new = jnp.where(column_valid, h_new, h_init)
      c_new = jnp.where(column_valid, c_new, c_init)
      return (h_new, c_new), h_new

    _, columns = jax.lax.scan(step, (h_init, c_init), (pre, valid))   # [T, 2, B, H, h]
    out = jnp.moveaxis(columns, 0, 3).reshape(2 * b, height, -1, h)
    out = unskew(out, width).reshape(2, b, height, width, h)
    # Right-to-left: mirror back, then shift down a row so that row i only sees rows < i.
    return out[0] + shift_down(jnp.flip(out[1], axis=2))


class PixelRNN(nn.Module):
  """PixelRNN with Row LSTM or Diagonal BiLSTM layers; see the module docstring."""
  num_channels: int                # C of the image: 3 (RGB) or 1
  layer_type: str = "diagonal_bilstm"   # row_lstm | diagonal_bilstm
  ch: int = 128                    # h; the residual stream has 2h feature maps
  num_layers: int = 12             # LSTM layers (residual blocks)
  first_kernel_size: int = 7       # the mask-A input convolution
  kernel_size: int = 3             # Row LSTM: k of its 1 x k convolutions
  head_features: int = 1024        # the two output 1x1 layers (32 for MNIST)
  skip_connections: bool = True    # learnable skip connections to the output
  num_levels: int = pixelcnn.NUM_LEVELS   # 256 (softmax) or 1 (sigmoid logit)

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    del train   # no dropout or normalisation
    if y is not None:
      raise ValueError("PixelRNN is unconditional; pass no labels.")
    if self.layer_type not in LAYER_TYPES:
      raise ValueError(f"layer_type={self.layer_type!r}; choose one of {LAYER_TYPES}.")
    if self.num_layers < 1:
      raise ValueError(f"num_layers must be >= 1, got {self.num_layers}.")
    c, k0 = self.num_channels, self.first_kernel_size
    stream = MaskedConv(2 * self.ch, (k0, k0), "A", c, name="input_conv")(x)
    skips = []
    for i in range(self.num_layers):
      if self.layer_type == "row_lstm":
        hidden = RowLSTM(self.ch, self.kernel_size, c, name=f"lstm_{i}")(stream)
      else:
        hidden = DiagonalBiLSTM(self.ch, c, name=f"lstm_{i}")(stream)
      # Figure 5 (right): h -> 2h by a 1x1 convolution, added to the block's input.
      stream = stream + MaskedConv(2 * self.ch, (1, 1), "B", c, name=f"up_{i}")(hidden)
      if self.skip_connections:
        skips.append(MaskedConv(2 * self.ch, (1, 1), "B", c, name=f"skip_{i}")(hidden))
    features = sum(skips) if self.skip_connections else stream
    return pixelcnn.output_logits(features, self.head_features, c, self.num_levels)
