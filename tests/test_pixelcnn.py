"""Masked convolutions, PixelCNN, Gated PixelCNN (and PixelCNN++): causality by gradients.

The dependence of output sub-pixel t on input sub-pixel s is read off the Jacobian of
the network (its logits projected on a fixed random vector) with respect to the input:
an autoregressive network must give exact zeros for every s >= t (raster order, R -> G
-> B within a pixel). Dependencies that do exist are nonzero for almost every input;
ReLUs can zero a path at one input, so "depends" means nonzero at any of a few
random inputs.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import masked_conv, pixelcnn, pixelcnnpp

NUM_INPUTS = 3


def dependence(model, params, shape, y=None, out_fn=None):
  """Boolean [D_out, D_in]: output sub-pixel (flat) depends on input sub-pixel (flat).

  Outputs are [B, H, W, C, 256] logits (projected on a random vector) or, with out_fn,
  whatever out_fn maps the network output to, flattened per example.
  """
  if out_fn is None:
    projection = jax.random.normal(jax.random.PRNGKey(7), (pixelcnn.NUM_LEVELS,))
    out_fn = lambda out: out @ projection  # noqa: E731

  def f(x):
    return out_fn(model.apply(params, x, y)).reshape(-1)

  xs = jax.random.uniform(jax.random.PRNGKey(3), (NUM_INPUTS, 1, *shape), minval=-1.0,
                          maxval=1.0)
  jac = jax.jit(jax.vmap(jax.jacrev(f)))(xs)           # [N, D_out, 1, H, W, C]
  jac = np.asarray(jac).reshape(NUM_INPUTS, -1, int(np.prod(shape)))
  return np.any(jac != 0, axis=0)


def init(model, shape, y=None):
  return model.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)), y)


# ------------------------------------------------------------------ masked conv
def test_causal_mask_matches_the_papers_figure_2_connectivity():
  # RGB input (groups R, G, B) to 6 features (R R G G B B), 3x3 kernel.
  a = masked_conv.causal_mask((3, 3), 3, 6, mask_type="A", num_groups=3)
  b = masked_conv.causal_mask((3, 3), 3, 6, mask_type="B", num_groups=3)
  spatial = np.array([[1, 1, 1], [1, 0, 0], [0, 0, 0]], np.float32)  # centre aside
  for mask in (a, b):
    for r, c in itertools.product(range(3), range(3)):
      if (r, c) != (1, 1):
        np.testing.assert_array_equal(mask[r, c], np.full((3, 6), spatial[r, c]))
  # At the current pixel: type A lets G outputs see R, B outputs see R and G ...
  np.testing.assert_array_equal(a[1, 1], [[0, 0, 1, 1, 1, 1],
                                          [0, 0, 0, 0, 1, 1],
                                          [0, 0, 0, 0, 0, 0]])
  # ... and type B also each group itself.
  np.testing.assert_array_equal(b[1, 1], [[1, 1, 1, 1, 1, 1],
                                          [0, 0, 1, 1, 1, 1],
                                          [0, 0, 0, 0, 1, 1]])


def test_grey_images_have_one_group_so_mask_a_drops_the_centre():
  a = masked_conv.causal_mask((1, 1), 1, 4, mask_type="A", num_groups=1)
  b = masked_conv.causal_mask((1, 1), 1, 4, mask_type="B", num_groups=1)
  assert a.sum() == 0 and b.sum() == 4


def test_gate_halves_share_the_same_groups():
  groups = masked_conv.channel_groups(8, 3, num_parts=2)
  np.testing.assert_array_equal(groups[:4], groups[4:])
  np.testing.assert_array_equal(groups[:4], [0, 0, 1, 2])


def test_too_few_features_for_the_colour_groups_is_refused():
  with pytest.raises(ValueError, match="cannot hold 3 colour groups"):
    masked_conv.channel_groups(2, 3)


def test_masked_conv_equals_a_numpy_convolution_with_the_masked_kernel(fast_compile):
  """The module's output is conv(x, kernel * mask) with the 'SAME' alignment."""
  layer = masked_conv.MaskedConv(4, (3, 3), "A", num_groups=2)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 4, 5, 2))
  params = layer.init(jax.random.PRNGKey(1), x)
  out = np.asarray(layer.apply(params, x))
  kernel = np.asarray(params["params"]["kernel"]) * masked_conv.causal_mask(
      (3, 3), 2, 4, mask_type="A", num_groups=2)
  padded = np.pad(np.asarray(x[0], np.float64), ((1, 1), (1, 1), (0, 0)))
  expected = np.zeros((4, 5, 4))
  for i, j in itertools.product(range(4), range(5)):
    expected[i, j] = np.einsum("hwi,hwio->o", padded[i:i + 3, j:j + 3], kernel)
  np.testing.assert_allclose(out[0], expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------- causality
def assert_strictly_causal(dep):
  """No output sub-pixel depends on itself or on any later sub-pixel."""
  later_or_same = np.triu(np.ones_like(dep, bool))
  assert not np.any(dep & later_or_same), np.argwhere(dep & later_or_same)[:5]


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("network", ["pixelcnn", "gated_pixelcnn"])
def test_categorical_networks_are_causal_over_sub_pixels(network, channels, fast_compile):
  h, w = 4, 5
  if network == "pixelcnn":
    model = pixelcnn.PixelCNN(channels, ch=12, num_layers=2, head_features=24)
  else:
    model = pixelcnn.GatedPixelCNN(channels, ch=12, num_layers=3, kernel_size=3,
                                   head_features=24)
  shape = (h, w, channels)
  params = init(model, shape)
  out = model.apply(params, jnp.zeros((2, *shape)))
  assert out.shape == (2, h, w, channels, 256)
  dep = dependence(model, params, shape)
  assert_strictly_causal(dep)
  # Mask A does not blind a sub-pixel to the earlier channels of its own pixel, nor to
  # the previous pixel.
  index = lambda i, j, c: (i * w + j) * channels + c  # noqa: E731
  assert dep[index(2, 2, 0), index(2, 1, channels - 1)]
  assert dep[index(2, 2, 0), index(1, 2, 0)]
  if channels == 3:
    assert dep[index(2, 2, 1), index(2, 2, 0)]          # G sees R
    assert dep[index(2, 2, 2), index(2, 2, 0)]          # B sees R ...
    assert dep[index(2, 2, 2), index(2, 2, 1)]          # ... and G


# tests/test_pixelcnnpp.py::test_each_pixel_depends_only_on_earlier_pixels checks the
# same property (and every required neighbour) in the default tier.
@pytest.mark.integration
def test_pixelcnnpp_is_causal_over_whole_pixels(fast_compile):
  model = pixelcnnpp.PixelCNNPP(nr_filters=8, nr_resnet=1, nr_logistic_mix=2,
                                dropout=0.0)
  h, w, c = 4, 4, 3
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, h, w, c)), train=False)
  projection = jax.random.normal(jax.random.PRNGKey(7), (20,))   # 10 M = 20 params
  apply = lambda x: model.apply(params, x, train=False)  # noqa: E731
  xs = jax.random.uniform(jax.random.PRNGKey(3), (NUM_INPUTS, 1, h, w, c), minval=-1,
                          maxval=1)
  jac = jax.jit(jax.vmap(jax.jacrev(lambda x: (apply(x) @ projection).reshape(-1))))(xs)
  # [pixel out, pixel in]: any channel of the input pixel.
  dep = np.any(np.asarray(jac).reshape(NUM_INPUTS, h * w, h * w, c) != 0, axis=(0, 3))
  assert_strictly_causal(dep)
  assert dep[5, 4] and dep[5, 1] and dep[5, 2]   # left, above, above-right


# ---------------------------------------------------------- receptive fields
def minkowski_sum(a: set, b: set) -> set:
  return {(r1 + r2, c1 + c2) for r1, c1 in a for r2, c2 in b}


def full_rows(radius_rows: int, radius_cols: int, include_current_row: bool) -> set:
  last = 0 if include_current_row else -1
  return {(dr, dc) for dr in range(-radius_rows, last + 1)
          for dc in range(-radius_cols, radius_cols + 1)}


def pixelcnn_offsets(first_kernel_size: int, kernel_size: int, num_layers: int) -> set:
  """Input offsets (dr, dc) that reach an output pixel: the mask shapes composed."""
  r0, r = first_kernel_size // 2, kernel_size // 2
  offsets = full_rows(r0, r0, False) | {(0, dc) for dc in range(-r0, 0)}   # mask A
  mask_b = full_rows(r, r, False) | {(0, dc) for dc in range(-r, 1)}
  for _ in range(num_layers):
    offsets = minkowski_sum(offsets, mask_b)
  return offsets


def gated_offsets(first_kernel_size: int, kernel_size: int, num_layers: int) -> set:
  """Vertical stack: rows up to the current one; horizontal: current row to the left,
  plus the vertical stack shifted down one row (van den Oord et al. 2016b, figure 2)."""
  r0, r = first_kernel_size // 2, kernel_size // 2
  vertical = full_rows(r0, r0, True)
  horizontal = ({(0, dc) for dc in range(-r0, 0)}
                | {(dr - 1, dc) for dr, dc in vertical})
  for _ in range(num_layers - 1):
    vertical = minkowski_sum(vertical, full_rows(r, r, True))
    horizontal = (minkowski_sum(horizontal, {(0, dc) for dc in range(-r, 1)})
                  | {(dr - 1, dc) for dr, dc in vertical})
  return horizontal


def expected_dependence(offsets: set, h: int, w: int) -> np.ndarray:
  dep = np.zeros((h * w, h * w), bool)
  for i, j, i2, j2 in itertools.product(range(h), range(w), range(h), range(w)):
    dep[i * w + j, i2 * w + j2] = (i2 - i, j2 - j) in offsets
  return dep


@pytest.mark.parametrize("network", ["pixelcnn", "gated_pixelcnn"])
def test_receptive_field_is_the_composition_of_the_mask_shapes(network, fast_compile):
  """Grey images: the measured dependence equals the one derived from the kernels,
  which for the PixelCNN has the blind spot and for the Gated PixelCNN has none."""
  h, w = 6, 9
  if network == "pixelcnn":
    model = pixelcnn.PixelCNN(1, ch=16, num_layers=2, first_kernel_size=5,
                              head_features=32)
    offsets = pixelcnn_offsets(5, 3, 2)
  else:
    model = pixelcnn.GatedPixelCNN(1, ch=16, num_layers=3, first_kernel_size=5,
                                   kernel_size=3, head_features=32)
    offsets = gated_offsets(5, 3, 3)
  dep = dependence(model, init(model, (h, w, 1)), (h, w, 1))
  np.testing.assert_array_equal(dep, expected_dependence(offsets, h, w))


def test_gated_pixelcnn_has_no_blind_spot_and_pixelcnn_has_one(fast_compile):
  """4x6 RGB images, nets deep enough that every earlier sub-pixel is in reach.

  The Gated PixelCNN's output depends on EVERY earlier sub-pixel. The PixelCNN of the
  same depth does not see pixel (i-1, j+4) from pixel (i, j): its masked kernels only
  grow up-and-right one column per row, the blind spot of van den Oord et al. 2016b,
  section 2.2.
  """
  h, w, c = 4, 6, 3
  gated = pixelcnn.GatedPixelCNN(c, ch=12, num_layers=3, kernel_size=3, head_features=24)
  dep = dependence(gated, init(gated, (h, w, c)), (h, w, c))
  assert_strictly_causal(dep)
  earlier = np.tril(np.ones_like(dep, bool), k=-1)
  assert np.all(dep[earlier]), np.argwhere(earlier & ~dep)[:5]

  plain = pixelcnn.PixelCNN(c, ch=12, num_layers=3, head_features=24)
  dep = dependence(plain, init(plain, (h, w, c)), (h, w, c))
  assert_strictly_causal(dep)
  index = lambda i, j, ch: (i * w + j) * c + ch  # noqa: E731
  for ch_out, ch_in in itertools.product(range(c), range(c)):
    assert not dep[index(1, 0, ch_out), index(0, 4, ch_in)]   # the blind spot
    assert not dep[index(2, 1, ch_out), index(1, 5, ch_in)]
  assert dep[index(1, 0, 0), index(0, 3, 0)]                  # its edge is seen
  assert dep[index(2, 0, 0), index(0, 4, 0)]                  # two rows up is seen


# ------------------------------------------------------------- conditioning
def test_class_labels_change_the_gated_pixelcnn_and_keep_it_causal(fast_compile):
  h, w, c = 3, 3, 3
  model = pixelcnn.GatedPixelCNN(c, ch=6, num_layers=2, kernel_size=3, head_features=12,
                                 num_classes=4)
  y = jnp.array([1])
  params = init(model, (h, w, c), y)
  x = jax.random.uniform(jax.random.PRNGKey(1), (1, h, w, c), minval=-1, maxval=1)
  out1 = model.apply(params, x, jnp.array([1]))
  out2 = model.apply(params, x, jnp.array([2]))
  # Even the very first sub-pixel, which sees no pixel, depends on the label.
  assert not np.allclose(out1[0, 0, 0, 0], out2[0, 0, 0, 0])
  assert_strictly_causal(dependence(model, params, (h, w, c), y=y))
  with pytest.raises(ValueError, match="labels y exactly when num_classes > 0"):
    model.apply(params, x)
