"""PixelRNN (Row LSTM, Diagonal BiLSTM): skewing, LSTM layers against numpy loops,
causality and receptive fields by exact-zero Jacobians, bits/dim, an end-to-end run."""

import functools
import itertools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

import datasets
from configs import pixelrnn_cifar, pixelrnn_digits
from models import masked_conv, pixelrnn
from tests.test_pixelcnn import assert_strictly_causal, dependence
from train import autoregressive, families, loop

LAYER_TYPES = ("row_lstm", "diagonal_bilstm")


@functools.partial(jax.jit, static_argnums=(1, 2))
def perturbed(params, scale=0.5, seed=11):
  """Params plus Gaussian noise: nonzero biases and initial states, larger weights."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape)
                                   for x, k in zip(leaves, keys)])


def sigmoid(x):
  return special.expit(x)


def lstm_numpy(pre, c_prev):
  o, f, i, g = np.split(pre, 4, axis=-1)
  c = sigmoid(f) * c_prev + sigmoid(i) * np.tanh(g)
  return sigmoid(o) * np.tanh(c), c


# --------------------------------------------------------------------- skewing
def test_skew_puts_pixel_i_j_in_column_i_plus_j_and_unskew_inverts_it():
  x = np.random.default_rng(0).normal(size=(2, 4, 5, 3)).astype(np.float32)
  expected = np.zeros((2, 4, 5 + 4 - 1, 3), np.float32)
  for i, j in itertools.product(range(4), range(5)):
    expected[:, i, i + j] = x[:, i, j]
  skewed = np.asarray(pixelrnn.skew(jnp.asarray(x)))
  np.testing.assert_array_equal(skewed, expected)
  np.testing.assert_array_equal(pixelrnn.unskew(jnp.asarray(skewed), 5), x)
  # Tall and single-row maps too.
  for shape in [(1, 7, 2, 1), (1, 1, 6, 2)]:
    y = jnp.arange(math.prod(shape), dtype=jnp.float32).reshape(shape)
    np.testing.assert_array_equal(pixelrnn.unskew(pixelrnn.skew(y), shape[2]), y)
  with pytest.raises(ValueError, match="has 7 columns, got 8"):
    pixelrnn.unskew(jnp.asarray(skewed), 4)


# ------------------------------------------------------- layers against numpy
def masked_kernel_numpy(layer, kernel_size, mask_type, groups, parts):
  kernel = np.asarray(layer["kernel"], np.float64)
  mask = masked_conv.causal_mask(kernel_size, kernel.shape[2], kernel.shape[3],
                                 mask_type=mask_type, num_groups=groups, out_parts=parts)
  return kernel * mask


def row_lstm_numpy(x, p, k, groups):
  """Row by row and pixel by pixel, eq. 3 of the paper, float64."""
  b, height, width, _ = x.shape
  kis = masked_kernel_numpy(p["input_to_state"], (1, k), "B", groups, 4)[0]   # [k, F, 4h]
  bias = np.asarray(p["input_to_state"]["bias"], np.float64)
  kss = np.asarray(p["state_to_state"], np.float64)                            # [k, h, 4h]
  hidden = kss.shape[1]
  h_prev = np.broadcast_to(np.asarray(p["initial_hidden"], np.float64), (b, width, hidden))
  c_prev = np.broadcast_to(np.asarray(p["initial_cell"], np.float64), (b, width, hidden))
  out = np.zeros((b, height, width, hidden))
  for i in range(height):
    h_row, c_row = np.zeros_like(h_prev), np.zeros_like(c_prev)
    for j in range(width):
      pre = bias.copy()
      for d in range(k):
        col = j - k // 2 + d
        if 0 <= col < width:
          pre = pre + x[:, i, col] @ kis[d] + h_prev[:, col] @ kss[d]
      h_row[:, j], c_row[:, j] = lstm_numpy(pre, c_prev[:, j])
    out[:, i] = h_row
    h_prev, c_prev = h_row, c_row
  return out


def diagonal_bilstm_numpy(x, p, groups):
  """Each direction pixel by pixel: the left-to-right state of (i, j) from (i - 1, j)
  and (i, j - 1), the right-to-left one from (i - 1, j) and (i, j + 1); the second
  shifted down one row and added (section 3.2)."""
  b, height, width, _ = x.shape
  kss = np.asarray(p["state_to_state"], np.float64)         # [2, (above, side) 2h, 4h]
  hidden = kss.shape[1] // 2
  outputs = []
  for d, name, step in [(0, "input_to_state_left", -1), (1, "input_to_state_right", 1)]:
    kis = masked_kernel_numpy(p[name], (1, 1), "B", groups, 4)[0, 0]
    pre_in = x @ kis + np.asarray(p[name]["bias"], np.float64)
    h0 = np.asarray(p["initial_hidden"], np.float64)[d]
    c0 = np.asarray(p["initial_cell"], np.float64)[d]
    hs = np.zeros((b, height, width, hidden))
    cs = np.zeros((b, height, width, hidden))
    columns = range(width) if step == -1 else range(width - 1, -1, -1)
    for i in range(height):
      for j in columns:
        above = hs[:, i - 1, j] if i > 0 else np.broadcast_to(h0, (b, hidden))
        side_j = j + step
        inside = 0 <= side_j < width
        side_h = hs[:, i, side_j] if inside else np.broadcast_to(h0, (b, hidden))
        side_c = cs[:, i, side_j] if inside else np.broadcast_to(c0, (b, hidden))
        pre = pre_in[:, i, j] + np.concatenate([above, side_h], -1) @ kss[d]
        hs[:, i, j], cs[:, i, j] = lstm_numpy(pre, side_c)
    outputs.append(hs)
  right_shifted = np.concatenate([np.zeros_like(outputs[1][:, :1]), outputs[1][:, :-1]], 1)
  return outputs[0] + right_shifted


@pytest.mark.parametrize("groups,features", [(1, 4), (3, 6)])
def test_row_lstm_layer_equals_a_numpy_row_by_row_lstm(groups, features, fast_compile):
  x = np.random.default_rng(1).normal(size=(2, 4, 5, 7))
  layer = pixelrnn.RowLSTM(features, kernel_size=3, num_groups=groups)
  params = perturbed(jax.jit(layer.init)(jax.random.PRNGKey(0), jnp.asarray(x, jnp.float32)))
  out = jax.jit(layer.apply)(params, jnp.asarray(x, jnp.float32))
  expected = row_lstm_numpy(x, params["params"], 3, groups)
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 4, 5, 6), (1, 6, 3, 6)])
def test_diagonal_bilstm_layer_equals_a_numpy_pixel_by_pixel_lstm(shape, fast_compile):
  x = np.random.default_rng(2).normal(size=shape)
  layer = pixelrnn.DiagonalBiLSTM(6, num_groups=3)
  params = perturbed(jax.jit(layer.init)(jax.random.PRNGKey(0), jnp.asarray(x, jnp.float32)))
  out = jax.jit(layer.apply)(params, jnp.asarray(x, jnp.float32))
  expected = diagonal_bilstm_numpy(x, params["params"], 3)
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- causality
def make_model(layer_type, channels, **kw):
  kw = {"ch": 6, "num_layers": 2, "head_features": 12, **kw}
  return pixelrnn.PixelRNN(channels, layer_type=layer_type, **kw)


def init(model, shape):
  return perturbed(jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, *shape))), 0.3)


@pytest.mark.parametrize("layer_type", LAYER_TYPES)
def test_pixelrnn_is_causal_over_sub_pixels(layer_type, fast_compile):
  """RGB: the colour masks. (Grey images: test_receptive_field_... below, exactly.)"""
  h, w, channels = 3, 4, 3
  model = make_model(layer_type, channels)
  shape = (h, w, channels)
  params = init(model, shape)
  assert jax.eval_shape(model.apply, params, jnp.zeros((2, *shape))).shape == (
      2, h, w, channels, 256)
  dep = dependence(model, params, shape)
  assert_strictly_causal(dep)
  index = lambda i, j, c: (i * w + j) * channels + c  # noqa: E731
  assert dep[index(2, 2, 0), index(2, 1, channels - 1)]    # the previous pixel
  assert dep[index(2, 2, 0), index(1, 2, 0)]               # the pixel above
  assert dep[index(2, 2, 1), index(2, 2, 0)]               # G sees R
  assert dep[index(2, 2, 2), index(2, 2, 0)]               # B sees R ...
  assert dep[index(2, 2, 2), index(2, 2, 1)]               # ... and G


def paper_dependence(layer_type, h, w, first_kernel_size, num_layers):
  """[H W, H W] bool, output pixel -> input pixel, grey images, derived from the
  connectivity that sections 3.1-3.3 and table 1 describe (not from the code):
  - 7x7 (here k0 x k0) mask A: the k0//2 rows above (k0 columns) and the pixels to
    the left on the current row;
  - Row LSTM, k = 3: state(i, j) <- input(i, j-1..j) (mask B), state(i-1, j-1..j+1);
  - Diagonal BiLSTM: left(i, j) <- input(i, j), left(i-1, j), left(i, j-1);
    right(i, j) <- input(i, j), right(i-1, j), right(i, j+1); output(i, j) <-
    left(i, j), right(i-1, j);
  - residual blocks: block output(i, j) <- block input(i, j), layer output(i, j);
    skip connections and the 1x1 output layers are per pixel.
  Dependencies are followed through positions inside the image only.
  """
  r0 = first_kernel_size // 2
  inside = lambda i, j: 0 <= i < h and 0 <= j < w  # noqa: E731

  @functools.lru_cache(maxsize=None)
  def stream(layer, i, j):        # input pixels reaching block `layer`'s input at (i, j)
    if layer == 0:
      return frozenset((i2, j2) for i2 in range(i - r0, i + 1)
                       for j2 in range(j - r0, j + r0 + 1)
                       if inside(i2, j2) and (i2 < i or j2 < j))
    return stream(layer - 1, i, j) | lstm(layer - 1, i, j)

  @functools.lru_cache(maxsize=None)
  def row_state(layer, i, j):
    out = set()
    for j2 in (j - 1, j):
      if inside(i, j2):
        out |= stream(layer, i, j2)
    for j2 in (j - 1, j, j + 1):
      if inside(i - 1, j2):
        out |= row_state(layer, i - 1, j2)
    return frozenset(out)

  @functools.lru_cache(maxsize=None)
  def diagonal_state(layer, i, j, side):
    out = set(stream(layer, i, j))
    for i2, j2 in ((i - 1, j), (i, j + side)):
      if inside(i2, j2):
        out |= diagonal_state(layer, i2, j2, side)
    return frozenset(out)

  def lstm(layer, i, j):
    if layer_type == "row_lstm":
      return row_state(layer, i, j)
    above_right = diagonal_state(layer, i - 1, j, +1) if i > 0 else frozenset()
    return diagonal_state(layer, i, j, -1) | above_right

  dep = np.zeros((h * w, h * w), bool)
  for i, j in itertools.product(range(h), range(w)):
    for i2, j2 in stream(num_layers, i, j):
      dep[i * w + j, i2 * w + j2] = True
  return dep


@pytest.mark.parametrize("layer_type,num_layers", [("row_lstm", 2), ("diagonal_bilstm", 2)])
def test_receptive_field_is_the_papers_connectivity(layer_type, num_layers, fast_compile):
  """Grey 6x7 images, a 3x3 first convolution: the measured dependence equals the one
  derived from the paper's description, exactly."""
  h, w = 6, 7
  model = make_model(layer_type, 1, first_kernel_size=3, num_layers=num_layers)
  dep = dependence(model, init(model, (h, w, 1)), (h, w, 1))
  expected = paper_dependence(layer_type, h, w, 3, num_layers)
  np.testing.assert_array_equal(dep, expected)
  index = lambda i, j: i * w + j  # noqa: E731
  if layer_type == "row_lstm":
    # A triangle: two rows up, 3 columns right is out of reach; 2 columns right is not.
    assert not dep[index(4, 1), index(2, 4 + num_layers)]
    assert dep[index(4, 1), index(2, 3)]
  else:
    # Every earlier pixel but one: the last pixel of the previous row is seen only
    # from the pixels within first_kernel_size // 2 = 1 column of the row's end.
    earlier = np.tril(np.ones_like(dep), -1)
    missing = np.argwhere(earlier & ~dep)
    assert {(int(o), int(i)) for o, i in missing} == {
        (index(i, j), index(i - 1, w - 1)) for i in range(1, h) for j in range(w - 2)}


def test_skip_connections_and_bernoulli_outputs(fast_compile):
  shape = (5, 4, 1)
  model = make_model("row_lstm", 1, num_levels=1, skip_connections=False)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
  assert jax.eval_shape(model.apply, params, jnp.zeros((3, *shape))).shape == (3, 5, 4, 1, 1)
  assert "skip_0" not in params["params"]
  with pytest.raises(ValueError, match="unconditional"):
    jax.eval_shape(model.apply, params, jnp.zeros((1, *shape)), jnp.zeros((1,), jnp.int32))


# --------------------------------------------------------------------- family
@pytest.fixture
def register_family(monkeypatch):
  monkeypatch.setitem(families.FAMILIES, "autoregressive", autoregressive.Autoregressive)


def digits_config(layer_type, **model):
  config = pixelrnn_digits.get_config(layer_type)
  config.data.data_dir = os.environ.get("TFDS_DATA_DIR")
  m = config.model
  m.ch, m.num_layers, m.head_features, m.first_kernel_size = 6, 1, 12, 5
  for key, value in model.items():
    m[key] = value
  return config


def digits_batch(size=8):
  config = digits_config("row_lstm")
  batch = next(iter(datasets.make_eval_batches(config.data, split="test",
                                               global_batch_size=size,
                                               num_examples=size)))
  return {k: batch[k] for k in ("image", "label")}


@pytest.mark.parametrize("layer_type", LAYER_TYPES)
def test_zero_weights_give_exactly_8_bits_per_dim(layer_type, fast_compile):
  family = autoregressive.Autoregressive(digits_config(layer_type), (8, 8, 1), 10)
  batch = digits_batch()
  params = jax.jit(family.init)(jax.random.PRNGKey(0), batch).params
  params = jax.tree.map(jnp.zeros_like, params)
  out = jax.jit(family.eval_step)(params, batch, jax.random.PRNGKey(0))
  np.testing.assert_allclose(out["bpd"], 8.0, rtol=1e-6)


def test_bits_per_dim_equal_a_numpy_computation(fast_compile):
  family = autoregressive.Autoregressive(digits_config("diagonal_bilstm"), (8, 8, 1), 10)
  batch = digits_batch()
  params = perturbed(jax.jit(family.init)(jax.random.PRNGKey(0), batch).params, 0.3)
  logits = np.asarray(jax.jit(family.model.apply)(
      {"params": params}, batch["image"].astype(np.float32) / 127.5 - 1.0), np.float64)
  log_probs = logits - special.logsumexp(logits, axis=-1, keepdims=True)
  picked = np.take_along_axis(log_probs, batch["image"][..., None].astype(np.int64), -1)
  expected_nats = -picked.sum(axis=(1, 2, 3, 4))
  out = jax.jit(family.eval_step)(params, batch, jax.random.PRNGKey(0))
  np.testing.assert_allclose(out["nll_nats"], expected_nats, rtol=1e-5)
  np.testing.assert_allclose(out["bpd"], expected_nats / (64 * math.log(2)), rtol=1e-5)


@pytest.mark.parametrize("change,match", [
    (dict(conditional=True), "PixelRNN is unconditional"),
    (dict(likelihood="logistic_mixture"), "set model.likelihood='categorical'"),
])
def test_bad_settings_fail_before_compiling(change, match):
  config = digits_config("row_lstm", **change)
  with pytest.raises(ValueError, match=match):
    autoregressive.Autoregressive(config, (8, 8, 1), 10)
  config = digits_config("diagonal_bilstm")
  config.sampling.method = "fast"
  with pytest.raises(ValueError, match="set sampling.method='naive'"):
    autoregressive.Autoregressive(config, (8, 8, 1), 10)


def test_cifar_config_has_the_papers_settings():
  for arg, name in [(None, "diagonal_bilstm"), ("row_lstm", "row_lstm"),
                    ("diagonal_bilstm,runlocal", "diagonal_bilstm")]:
    config = pixelrnn_cifar.get_config(arg)
    assert config.model.name == name
  c = pixelrnn_cifar.get_config("row_lstm")
  assert (c.model.num_layers, c.model.ch, c.model.first_kernel_size, c.model.kernel_size,
          c.model.head_features) == (12, 128, 7, 3, 1024)
  assert (c.optim.optimizer, c.training.batch_size, c.data.dataset) == (
      "rmsprop", 16, "cifar10")
  with pytest.raises(ValueError, match="exclude each other"):
    pixelrnn_cifar.get_config("row_lstm,diagonal_bilstm")
  with pytest.raises(ValueError, match="has no argument"):
    pixelrnn_digits.get_config("gru")


@pytest.mark.parametrize("layer_type", LAYER_TYPES)
@pytest.mark.integration
def test_train_and_evaluate_end_to_end_on_digits(layer_type, register_family, tmp_path,
                                                 fast_compile):
  config = pixelrnn_digits.get_config(f"{layer_type},runlocal")
  config.data.data_dir = os.environ.get("TFDS_DATA_DIR")
  config.training.async_checkpointing = False
  config.training.num_train_steps = config.training.sample_every_steps = 10
  config.training.checkpoint_every_steps = 10
  config.training.num_samples_in_grid = 2
  config.eval.sample_metrics = "none"   # bits/dim only: the sampler runs in the grid
  state = loop.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 10
  report = json.load(open(tmp_path / "eval" / "step_00000010.json"))
  assert report["config_name"] == f"{layer_type}_digits" and 0.0 < report["bpd"] < 8.5
  assert os.path.exists(tmp_path / "samples" / "train_step_00000010.png")
