"""Fast exact sampling of PixelCNN and Gated PixelCNN by caching activations.

The naive sampler (train/autoregressive.py, `sample_subpixels`) runs the whole
network on the whole canvas for every one of the H W C sub-pixels, although drawing
sub-pixel (i, j, c) needs the network's output at pixel (i, j) only, and every
activation at earlier pixels is the same as at the previous step. Following
Ramachandran et al. 2017 ("Fast Generation for Convolutional Autoregressive Models"),
this sampler keeps each layer's activations in a cache and computes, per step, only
what is new:

- PixelCNN (van den Oord et al. 2016a): every layer's output at pixel p depends on
  the layer below at pixels <= p in raster order (mask A/B), so the column of
  activations at p is computed from the caches: the k x k masked convolutions read
  the cached rows above and pixels to the left, the 1x1 layers are per pixel. One
  step costs one pixel's worth of the network instead of H W pixels. Each cache
  holds only the k // 2 + 1 rows that its convolution reads (rolled at every row).
- Gated PixelCNN (van den Oord et al. 2016b): the vertical stack at row i looks at
  row i's pixels to the right, so it cannot be computed pixel by pixel; but it feeds
  the horizontal stack only from the row above (shifted down). Once row i - 1 is
  complete, the vertical stack of every layer is computed for that whole row (one
  row of convolutions; each layer keeps its last k // 2 + 1 rows), then the
  horizontal stack of every layer runs pixel by pixel along row i, reading the row
  above through the 1x1 vertical-to-horizontal connection and the current row's
  cached outputs.

Sub-pixels: the c-th draw of pixel p recomputes p's column with the channels < c
drawn so far; colour group g of every layer sees the current pixel's channels < g
only, so after the last channel every group's cached activation at p is final.

The draws are those of the naive sampler: position t = (i W + j) C + c uses key
fold_in(rng, t) and `jax.random.categorical` of the same logits. The logits agree
with the naive sampler's up to float rounding (the same sums in another order, about
1e-7 relative), so a draw can only differ where two Gumbel-perturbed logits come that
close; tests check that the logits agree and that the samples are identical.

A simpler exact speed-up for the PixelCNN would run the whole network on only the
rows that an output row's receptive field covers (first_kernel_size // 2 +
num_layers * (kernel_size // 2) rows above it). On 8x8 digits those are all the rows
and on CIFAR-10 (7x7 and 15 layers: 18 of 32 rows) it saves at most 1.8x per step;
caching saves a factor of about H W, so caching is what this module does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import pixelcnn
from models.masked_conv import causal_mask

Params = dict[str, Any]
SUPPORTED_NETWORKS = (pixelcnn.PixelCNN, pixelcnn.GatedPixelCNN)


def supports(model: nn.Module) -> bool:
  """Whether `sample_subpixels` knows how to cache this network's activations."""
  return isinstance(model, SUPPORTED_NETWORKS)


def _masked_kernel(layer: Params, mask_type: str, num_groups: int, *,
                   center: tuple[int, int] | None = None, out_parts: int = 1) -> jax.Array:
  """kernel * causal_mask, exactly as models/masked_conv.MaskedConv applies it."""
  kernel = layer["kernel"]
  kh, kw, fan_in, fan_out = kernel.shape
  mask = causal_mask((kh, kw), fan_in, fan_out, mask_type=mask_type,
                     num_groups=num_groups, center=center, out_parts=out_parts)
  return kernel * jnp.asarray(mask, kernel.dtype)


def _pointwise(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
  """A 1x1 convolution at one pixel: x [N, F] @ kernel[0, 0] + bias."""
  return x @ kernel[0, 0] + bias


# choose(t, i, j, channel, logits [N, K]) -> int32 levels [N] of sub-pixel t.
Choose = Callable[..., jax.Array]


def _sampling_choice(rng: jax.Array) -> Choose:
  """The naive sampler's draw at position t: categorical with key fold_in(rng, t)."""
  def choose(t, i, j, channel, logits):
    del i, j, channel
    return jax.random.categorical(jax.random.fold_in(rng, t), logits, axis=-1)
  return choose


def _forced_choice(data: jax.Array) -> Choose:
  """Teacher forcing: sub-pixel (i, j, channel) takes its value in data [N, H, W, C]."""
  def choose(t, i, j, channel, logits):
    del t, logits
    return jax.lax.dynamic_slice(data, (0, i, j, channel), (data.shape[0], 1, 1, 1))[
        :, 0, 0, 0].astype(jnp.int32)
  return choose


def _record(log: jax.Array | None, t: jax.Array, logits: jax.Array) -> jax.Array | None:
  """Stores the logits of position t in log [N, H W C, K] (None: not recorded)."""
  if log is None:
    return None
  return jax.lax.dynamic_update_slice(log, logits[:, None].astype(log.dtype), (0, t, 0))


def _head(params: Params, x: jax.Array, num_groups: int) -> jax.Array:
  """models/pixelcnn.output_logits at one pixel: [N, F] -> [N, C, levels]."""
  head = params["head"]
  out = params["logits"]
  h = _pointwise(nn.relu(x), _masked_kernel(head, "B", num_groups), head["bias"])
  h = _pointwise(nn.relu(h), _masked_kernel(out, "B", num_groups), out["bias"])
  return h.reshape(h.shape[0], num_groups, -1)


def _write_pixel(canvas: jax.Array, x_pad: jax.Array, value: jax.Array,
                 input_fn: Callable[[jax.Array], jax.Array], i, j, channel, pad: int):
  """Puts the drawn levels into the canvas and their network input into x_pad."""
  value = value.astype(canvas.dtype)[:, None, None, None]
  canvas = jax.lax.dynamic_update_slice(canvas, value, (0, i, j, channel))
  x_pad = jax.lax.dynamic_update_slice(x_pad, input_fn(value).astype(x_pad.dtype),
                                       (0, i + pad, j + pad, channel))
  return canvas, x_pad


# ------------------------------------------------------------------- PixelCNN
def _run_pixelcnn(model: pixelcnn.PixelCNN, params: Params, shape: tuple[int, int, int, int],
                  input_fn, logits_fn, choose: Choose, log: jax.Array | None):
  n, height, width, num_channels = shape
  k0, k = model.first_kernel_size, model.kernel_size
  r0, r = k0 // 2, k // 2
  groups = model.num_channels
  # Kernel rows below the centre are zero in every mask: keep the rows above and the
  # centre row, which line up with the cached rows i - r .. i.
  first = _masked_kernel(params["input_conv"], "A", groups)[:r0 + 1]
  blocks = []
  for b in range(model.num_layers):
    p = params[f"block_{b}"]
    blocks.append(dict(
        reduce=(_masked_kernel(p["reduce"], "B", groups), p["reduce"]["bias"]),
        masked=(_masked_kernel(p["masked"], "B", groups)[:r + 1], p["masked"]["bias"]),
        expand=(_masked_kernel(p["expand"], "B", groups), p["expand"]["bias"])))
  # Network inputs, zero-padded as the first convolution pads them: r0 rows above, r0
  # columns on each side.
  x_pad = jnp.zeros((n, height + r0, width + 2 * r0, num_channels), jnp.float32)
  # Each block's ReLU(reduce) maps on the rows that its masked convolution reads at the
  # current row i: rows i - r .. i (the last one being filled), r zero columns on each
  # side; zeros at first, which is the padding above row 0.
  caches = tuple(jnp.zeros((n, r + 1, width + 2 * r, model.ch), jnp.float32)
                 for _ in blocks)
  canvas = jnp.zeros(shape, jnp.int32)

  def pixel(i, s, state):
    canvas, x_pad, caches, log = state
    j, channel = jnp.divmod(s, num_channels)
    t = (i * width + j) * num_channels + channel
    patch = jax.lax.dynamic_slice(x_pad, (0, i, j, 0), (n, r0 + 1, k0, num_channels))
    stream = jnp.einsum("nhwc,hwco->no", patch, first) + params["input_conv"]["bias"]
    new_caches = []
    for block, cache in zip(blocks, caches):
      reduced = nn.relu(_pointwise(nn.relu(stream), *block["reduce"]))
      cache = jax.lax.dynamic_update_slice(cache, reduced[:, None, None], (0, r, j + r, 0))
      patch = jax.lax.dynamic_slice(cache, (0, 0, j, 0), (n, r + 1, k, model.ch))
      kernel, bias = block["masked"]
      masked = jnp.einsum("nhwc,hwco->no", patch, kernel) + bias
      stream = stream + _pointwise(nn.relu(masked), *block["expand"])
      new_caches.append(cache)
    logits = logits_fn(jax.lax.dynamic_index_in_dim(_head(params, stream, groups),
                                                    channel, axis=1, keepdims=False))
    value = choose(t, i, j, channel, logits)
    canvas, x_pad = _write_pixel(canvas, x_pad, value, input_fn, i, j, channel, r0)
    return canvas, x_pad, tuple(new_caches), _record(log, t, logits)

  def row(i, state):
    canvas, x_pad, caches, log = state
    # A new row: drop the oldest cached row, start an empty one.
    caches = tuple(jnp.concatenate([c[:, 1:], jnp.zeros_like(c[:, :1])], axis=1)
                   for c in caches)
    return jax.lax.fori_loop(0, width * num_channels, lambda s, st: pixel(i, s, st),
                             (canvas, x_pad, caches, log))

  # The caches start one row "early": the first row's roll makes them rows -r .. 0.
  canvas, _, _, log = jax.lax.fori_loop(0, height, row, (canvas, x_pad, caches, log))
  return canvas, log


# ------------------------------------------------------------- Gated PixelCNN
def _gated_layers(model: pixelcnn.GatedPixelCNN, params: Params,
                  labels: jax.Array | None) -> list[dict[str, Any]]:
  """Per layer: radius, kernels (masks applied) and class biases of figure 2's layer."""
  groups = model.num_channels
  layers = []
  for index in range(model.num_layers):
    p = params[f"layer_{index}"]
    first = index == 0
    radius = (model.first_kernel_size if first else model.kernel_size) // 2
    layer = dict(
        radius=radius, first=first,
        vertical=(p["vertical"]["kernel"], p["vertical"]["bias"]),
        horizontal=(_masked_kernel(p["horizontal"], "A" if first else "B", groups,
                                   center=(0, radius), out_parts=2)[0],
                    p["horizontal"]["bias"]),
        vertical_to_horizontal=(p["vertical_to_horizontal"]["kernel"],
                                p["vertical_to_horizontal"]["bias"]),
        out=(_masked_kernel(p["horizontal_out"], "B", groups),
             p["horizontal_out"]["bias"]),
        vertical_class=0.0, horizontal_class=0.0)
    if labels is not None:
      layer["vertical_class"] = p["vertical_class"]["embedding"][labels][:, None]
      layer["horizontal_class"] = p["horizontal_class"]["embedding"][labels]
    layers.append(layer)
  return layers


def _run_gated(model: pixelcnn.GatedPixelCNN, params: Params,
               shape: tuple[int, int, int, int], labels: jax.Array | None, input_fn,
               logits_fn, choose: Choose, log: jax.Array | None):
  n, height, width, num_channels = shape
  groups = model.num_channels
  layers = _gated_layers(model, params, labels)
  r0 = layers[0]["radius"]
  r = model.kernel_size // 2          # radius of every layer after the first
  p = model.ch
  x_pad = jnp.zeros((n, height + r0, width + 2 * r0, num_channels), jnp.float32)
  # Vertical outputs of layers 0..L-2 (inputs of layers 1..L-1): the last r + 1 rows
  # only, which is all that a vertical convolution reads, zero-padded by r columns on
  # each side; zeros at first, which is the padding above row 0.
  vertical = tuple(jnp.zeros((n, r + 1, width + 2 * r, p), jnp.float32)
                   for _ in layers[:-1])
  # Horizontal outputs of layers 0..L-2 along the current row, r zero columns on the left.
  horizontal = tuple(jnp.zeros((n, width + r, p), jnp.float32) for _ in layers[:-1])
  # Per layer, the vertical stack's contribution to the horizontal stack of the
  # current row: 1x1(v_pre of the row above); above row 0 v_pre is the zero padding.
  from_above = tuple(jnp.broadcast_to(layer["vertical_to_horizontal"][1], (n, width, 2 * p))
                     for layer in layers)
  canvas = jnp.zeros(shape, jnp.int32)

  def vertical_row(i, x_pad, vertical):
    """Every layer's vertical stack at the finished row i -> (vertical, from_above)."""
    new_vertical, new_from_above = [], []
    # Layer 0 reads rows i - r0 .. i of the inputs, later layers their rolling buffer.
    rows = jax.lax.dynamic_slice(x_pad, (0, i, 0, 0),
                                 (n, r0 + 1, width + 2 * r0, num_channels))
    for index, layer in enumerate(layers):
      kernel, bias = layer["vertical"]
      v_pre = jax.lax.conv_general_dilated(
          rows, kernel, window_strides=(1, 1), padding="VALID",
          dimension_numbers=("NHWC", "HWIO", "NHWC"))[:, 0] + bias     # [N, W, 2p]
      # The horizontal stack gets v_pre before the class bias (models/pixelcnn.py).
      new_from_above.append(_pointwise(v_pre, *layer["vertical_to_horizontal"]))
      v_out = pixelcnn.gate(v_pre + layer["vertical_class"])
      if index < len(layers) - 1:
        # Drop the oldest row, append row i.
        rows = jnp.concatenate(
            [vertical[index][:, 1:], jnp.pad(v_out, ((0, 0), (r, r), (0, 0)))[:, None]],
            axis=1)
        new_vertical.append(rows)
    return tuple(new_vertical), tuple(new_from_above)

  def pixel(i, s, state):
    canvas, x_pad, horizontal, from_above, log = state
    j, channel = jnp.divmod(s, num_channels)
    t = (i * width + j) * num_channels + channel
    h_in = None
    new_horizontal = []
    for index, layer in enumerate(layers):
      radius = layer["radius"]
      if index == 0:
        patch = jax.lax.dynamic_slice(x_pad, (0, i + r0, j, 0),
                                      (n, 1, radius + 1, num_channels))[:, 0]
      else:
        # The layer below's outputs along this row, its output at pixel j included.
        patch = jax.lax.dynamic_slice(new_horizontal[index - 1], (0, j, 0),
                                      (n, radius + 1, p))
      kernel, bias = layer["horizontal"]
      h_pre = (jnp.einsum("nkc,kco->no", patch, kernel) + bias
               + jax.lax.dynamic_index_in_dim(from_above[index], j, axis=1, keepdims=False)
               + layer["horizontal_class"])
      h_out = _pointwise(pixelcnn.gate(h_pre), *layer["out"])
      if not layer["first"]:
        h_out = h_out + h_in
      if index < len(layers) - 1:
        new_horizontal.append(jax.lax.dynamic_update_slice(
            horizontal[index], h_out[:, None], (0, j + r, 0)))
      h_in = h_out
    logits = logits_fn(jax.lax.dynamic_index_in_dim(_head(params, h_in, groups),
                                                    channel, axis=1, keepdims=False))
    value = choose(t, i, j, channel, logits)
    canvas, x_pad = _write_pixel(canvas, x_pad, value, input_fn, i, j, channel, r0)
    return canvas, x_pad, tuple(new_horizontal), from_above, _record(log, t, logits)

  def row(i, state):
    canvas, x_pad, vertical, horizontal, from_above, log = state
    canvas, x_pad, horizontal, _, log = jax.lax.fori_loop(
        0, width * num_channels, lambda s, st: pixel(i, s, st),
        (canvas, x_pad, horizontal, from_above, log))
    vertical, from_above = vertical_row(i, x_pad, vertical)
    return canvas, x_pad, vertical, horizontal, from_above, log

  canvas, *_, log = jax.lax.fori_loop(
      0, height, row, (canvas, x_pad, vertical, horizontal, from_above, log))
  return canvas, log


# --------------------------------------------------------------------- entry
def _run(model: nn.Module, params: Params, shape: tuple[int, int, int, int], *, input_fn,
         logits_fn, labels, choose: Choose, log: jax.Array | None):
  if not supports(model):
    raise ValueError(f"No fast sampler for {type(model).__name__}; the fast sampler "
                     "supports the PixelCNN and the Gated PixelCNN "
                     "(config.sampling.method='naive' samples any network).")
  if shape[-1] != model.num_channels:
    raise ValueError(f"The network models {model.num_channels} channels, the requested "
                     f"shape {shape} has {shape[-1]}.")
  if isinstance(model, pixelcnn.GatedPixelCNN):
    if (labels is None) != (model.num_classes == 0):
      raise ValueError("Pass labels exactly when the Gated PixelCNN is conditional "
                       f"(num_classes={model.num_classes}).")
    return _run_gated(model, params, shape, labels, input_fn, logits_fn, choose, log)
  if labels is not None:
    raise ValueError("The PixelCNN is unconditional; pass no labels.")
  return _run_pixelcnn(model, params, shape, input_fn, logits_fn, choose, log)


def _identity(out: jax.Array) -> jax.Array:
  return out


def sample_subpixels(model: nn.Module, params: Params, rng: jax.Array,
                     shape: tuple[int, int, int, int], *,
                     input_fn: Callable[[jax.Array], jax.Array],
                     logits_fn: Callable[[jax.Array], jax.Array] = _identity,
                     labels: jax.Array | None = None) -> jax.Array:
  """Samples [N, H, W, C] int32 levels, the naive sampler's draws, from cached activations.

  model: a PixelCNN or GatedPixelCNN (models/pixelcnn.py); params: its 'params'
  collection. input_fn maps int32 levels to the network's input (elementwise, as the
  caller's network function does); logits_fn maps the network's outputs for one
  sub-pixel, [N, num_levels], to the categorical logits that are drawn from
  (identity for a 256-way softmax). labels [N]: class labels of a conditional
  Gated PixelCNN.
  """
  canvas, _ = _run(model, params, shape, input_fn=input_fn, logits_fn=logits_fn,
                   labels=labels, choose=_sampling_choice(rng), log=None)
  return canvas


def forced_logits(model: nn.Module, params: Params, data: jax.Array, *,
                  input_fn: Callable[[jax.Array], jax.Array],
                  logits_fn: Callable[[jax.Array], jax.Array] = _identity,
                  labels: jax.Array | None = None) -> jax.Array:
  """The logits [N, H, W, C, K] the fast sampler computes when it draws data [N, H, W, C].

  The sampler's own recurrences, with every draw replaced by the data's value
  (teacher forcing through the caches): equal to logits_fn of the network's output
  on data, which is what tests check.
  """
  n, height, width, num_channels = data.shape
  out_shape = jax.eval_shape(
      lambda: logits_fn(jnp.zeros((n, model.num_levels), jnp.float32))).shape
  log = jnp.zeros((n, height * width * num_channels, out_shape[-1]), jnp.float32)
  _, log = _run(model, params, data.shape, input_fn=input_fn, logits_fn=logits_fn,
                labels=labels, choose=_forced_choice(data), log=log)
  return log.reshape(n, height, width, num_channels, -1)
