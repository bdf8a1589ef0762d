"""The autoregressive family: exact bits/dim, training, the naive sampler, the loop."""

import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

import datasets
from configs import pixelcnn_digits
from train import autoregressive, families, loop

DIGITS_SHAPE = (8, 8, 1)


@pytest.fixture(autouse=True)
def register_family(monkeypatch):
  monkeypatch.setitem(families.FAMILIES, "autoregressive", autoregressive.Autoregressive)


def tiny_config(name: str = "pixelcnn", **model):
  config = pixelcnn_digits.get_config()
  config.data.data_dir = os.environ.get("TFDS_DATA_DIR")
  m = config.model
  m.name = name
  m.ch, m.num_layers, m.head_features = 8, 1, 16
  m.first_kernel_size, m.kernel_size = 5, 3
  if name == "pixelcnnpp":
    m.likelihood = "logistic_mixture"
    m.nr_filters, m.nr_resnet, m.nr_logistic_mix = 8, 1, 2
  for key, value in model.items():
    m[key] = value
  return config


def make_family(config, image_shape=DIGITS_SHAPE, num_classes=10):
  return autoregressive.Autoregressive(config, image_shape, num_classes)


def digits_batch(split="test", size=32):
  config = tiny_config()
  batch = next(iter(datasets.make_eval_batches(config.data, split=split,
                                               global_batch_size=size,
                                               num_examples=size)))
  return {k: batch[k] for k in ("image", "label")}


def init_state(family, batch):
  return jax.jit(family.init)(jax.random.PRNGKey(0), batch)


# ------------------------------------------------------------------ likelihood
@pytest.mark.parametrize("name", ["pixelcnn", "gated_pixelcnn"])
def test_uniform_distributions_give_exactly_8_bits_per_dim(name, fast_compile):
  """All-zero weights give zero logits: log 256 nats per sub-pixel = 8 bits."""
  family = make_family(tiny_config(name))
  batch = digits_batch(size=8)
  params = jax.tree.map(jnp.zeros_like, init_state(family, batch).params)
  out = family.eval_step(params, batch, jax.random.PRNGKey(0))
  np.testing.assert_allclose(out["bpd"], 8.0, rtol=1e-6)
  np.testing.assert_allclose(out["nll_nats"], 64 * math.log(256), rtol=1e-6)


@pytest.mark.parametrize("name,conditional", [("pixelcnn", False),
                                              ("gated_pixelcnn", True)])
def test_bits_per_dim_equal_a_numpy_computation(name, conditional, fast_compile):
  """bpd = -sum_{i,j,c} log softmax(logits)[x_ijc] / (D ln 2), in float64 numpy."""
  family = make_family(tiny_config(name, conditional=conditional))
  batch = digits_batch(size=8)
  params = init_state(family, batch).params
  y = jnp.asarray(batch["label"]) if conditional else None
  logits = np.asarray(family.model.apply(
      {"params": params}, batch["image"].astype(np.float32) / 127.5 - 1.0, y), np.float64)
  log_probs = logits - special.logsumexp(logits, axis=-1, keepdims=True)
  picked = np.take_along_axis(log_probs, batch["image"][..., None].astype(np.int64), -1)
  expected_nats = -picked.sum(axis=(1, 2, 3, 4))
  out = family.eval_step(params, batch, jax.random.PRNGKey(0))
  np.testing.assert_allclose(out["nll_nats"], expected_nats, rtol=1e-5)
  np.testing.assert_allclose(out["bpd"], expected_nats / (64 * math.log(2)), rtol=1e-5)


class ConstantLogistic(nn.Module):
  """Stands in for PixelCNN++: one logistic (mean 0.1, scale 0.3) for every pixel."""

  @nn.compact
  def __call__(self, x, y=None, *, train=False):
    bias = self.param("bias", nn.initializers.zeros, ())
    params = jnp.array([0.0, 0.1, math.log(0.3)]) + bias
    return jnp.broadcast_to(params, (*x.shape[:3], 3))


def test_mixture_bits_per_dim_equal_a_numpy_discretized_logistic(fast_compile):
  """The family's 'logistic_mixture' path on grey digits, against numpy sigmoids."""
  family = make_family(tiny_config("pixelcnnpp", nr_logistic_mix=1))
  family.model = ConstantLogistic()
  batch = digits_batch(size=8)
  params = init_state(family, batch).params
  x = batch["image"].astype(np.float64) / 127.5 - 1.0
  cdf = lambda v: special.expit((v - 0.1) / 0.3)  # noqa: E731
  upper = np.where(batch["image"] == 255, 1.0, cdf(x + 1 / 255))
  lower = np.where(batch["image"] == 0, 0.0, cdf(x - 1 / 255))
  expected_nats = -np.log(upper - lower).sum(axis=(1, 2, 3))
  out = family.eval_step(params, batch, jax.random.PRNGKey(0))
  np.testing.assert_allclose(out["nll_nats"], expected_nats, rtol=1e-4)
  np.testing.assert_allclose(out["bpd"], expected_nats / (64 * math.log(2)), rtol=1e-4)


def test_mixture_family_uses_dropout_in_training_only(fast_compile):
  family = make_family(tiny_config("pixelcnnpp", dropout=0.5))
  batch = digits_batch(size=4)
  params = init_state(family, batch).params
  loss = jax.jit(family.loss)
  assert float(loss(params, batch, jax.random.PRNGKey(1))) != float(
      loss(params, batch, jax.random.PRNGKey(2)))
  ev = jax.jit(family.eval_step)
  np.testing.assert_array_equal(ev(params, batch, jax.random.PRNGKey(1))["bpd"],
                                ev(params, batch, jax.random.PRNGKey(2))["bpd"])


# -------------------------------------------------------------------- training
@pytest.mark.integration
def test_training_reduces_test_bits_per_dim_on_digits(fast_compile):
  config = tiny_config(ch=16, num_layers=2, head_features=32)
  config.optim.learning_rate = 3e-3
  config.optim.warmup_steps = 20
  config.optim.ema_decay = 0.9
  family = make_family(config)
  batches = datasets.make_train_batches(config.data, seed=0, global_batch_size=32)
  test = digits_batch("test", size=128)
  state = init_state(family, batches.get(0))
  evaluate = jax.jit(family.eval_step)
  before = float(np.mean(evaluate(state.params, test, jax.random.PRNGKey(0))["bpd"]))
  step = jax.jit(family.train_step, donate_argnums=0)
  for _, batch in zip(range(300), batches.iterate(0)):
    state, metrics = step(state, {k: batch[k] for k in ("image", "label")})
  after = float(np.mean(evaluate(state.ema_params, test, jax.random.PRNGKey(0))["bpd"]))
  assert 7.0 < before < 9.0, before          # near uniform at initialisation
  assert after < 3.0, (before, after)        # 17 distinct levels, mostly 0: far below 8
  assert np.isfinite(float(metrics["loss"]))


# -------------------------------------------------------------------- sampling
def test_subpixel_sampler_visits_raster_then_channel_order():
  """Logits put all mass on (previous sub-pixel's value + 1): the canvas must read
  7, 8, 9, ... in raster order, R -> G -> B within a pixel."""
  n, h, w, c = 2, 3, 4, 3

  def logits_fn(canvas):
    flat = canvas.reshape(n, -1)
    previous = jnp.concatenate([jnp.full((n, 1), 6), flat[:, :-1]], axis=1)
    target = (previous + 1) % 256
    return (30.0 * jax.nn.one_hot(target, 256)).reshape(n, h, w, c, 256)

  out = jax.jit(lambda r: autoregressive.sample_subpixels(logits_fn, r, (n, h, w, c)))(
      jax.random.PRNGKey(0))
  assert out.dtype == jnp.uint8 and out.shape == (n, h, w, c)
  expected = (7 + np.arange(h * w * c)).reshape(h, w, c)
  np.testing.assert_array_equal(out, np.broadcast_to(expected, out.shape))


def test_pixel_sampler_visits_raster_order_whole_pixels():
  """params = (previous pixel's levels + 1) in [-1, 1]; draw = params: 7, 8, 9, ..."""
  n, h, w, c = 2, 3, 4, 3

  def params_fn(canvas):
    flat = canvas.reshape(n, h * w, c)
    previous = jnp.concatenate([jnp.full((n, 1, c), 6), flat[:, :-1]], axis=1)
    return ((previous + 1) / 127.5 - 1.0).reshape(n, h, w, c)

  draw = lambda rng, p: p  # noqa: E731
  out = autoregressive.sample_pixels(params_fn, draw, jax.random.PRNGKey(0), (n, h, w, c))
  expected = np.repeat((7 + np.arange(h * w))[:, None], c, axis=1).reshape(h, w, c)
  np.testing.assert_array_equal(out, np.broadcast_to(expected, out.shape))


class DeltaLogits(nn.Module):
  """Logits with all mass on level (3 * position + 5) % 256 at every sub-pixel."""

  @nn.compact
  def __call__(self, x, y=None, *, train=False):
    bias = self.param("bias", nn.initializers.zeros, ())
    position = jnp.arange(math.prod(x.shape[1:])).reshape(x.shape[1:])
    logits = 50.0 * jax.nn.one_hot((3 * position + 5) % 256, 256) + bias
    return jnp.broadcast_to(logits, (*x.shape, 256))


def test_family_samples_a_known_delta_distribution(fast_compile):
  family = make_family(tiny_config())
  family.model = DeltaLogits()
  params = init_state(family, digits_batch(size=1)).params
  images = jax.jit(family.sample, static_argnums=2)(params, jax.random.PRNGKey(0), 3)
  assert images.dtype == jnp.uint8 and images.shape == (3, *DIGITS_SHAPE)
  expected = ((3 * np.arange(64) + 5) % 256).reshape(DIGITS_SHAPE)
  np.testing.assert_array_equal(images, np.broadcast_to(expected, images.shape))


class AlternatingLogistic(nn.Module):
  """One sharp logistic per pixel at +-10: level 255 after a 0 (or first), else 0."""

  @nn.compact
  def __call__(self, x, y=None, *, train=False):
    bias = self.param("bias", nn.initializers.zeros, ())
    b, h, w, _ = x.shape
    flat = x[..., 0].reshape(b, h * w)
    previous = jnp.concatenate([jnp.full((b, 1), -1.0), flat[:, :-1]], axis=1)
    mean = jnp.where(previous < 0, 10.0, -10.0).reshape(b, h, w)
    return jnp.stack([jnp.zeros_like(mean), mean, jnp.full_like(mean, -7.0)], -1) + bias


def test_mixture_family_samples_whole_pixels_in_raster_order(fast_compile):
  family = make_family(tiny_config("pixelcnnpp", nr_logistic_mix=1))
  family.model = AlternatingLogistic()
  params = init_state(family, digits_batch(size=1)).params
  images = jax.jit(family.sample, static_argnums=2)(params, jax.random.PRNGKey(0), 2)
  expected = np.where(np.arange(64) % 2 == 0, 255, 0).reshape(DIGITS_SHAPE)
  np.testing.assert_array_equal(images, np.broadcast_to(expected, images.shape))
  assert family.sampler_settings()["nfe"] == 64


@pytest.mark.parametrize("name,conditional", [("pixelcnn", False),
                                              ("gated_pixelcnn", True),
                                              ("pixelcnnpp", False)])
def test_samples_are_uint8_images_and_a_function_of_the_rng(name, conditional,
                                                            fast_compile):
  family = make_family(tiny_config(name, conditional=conditional))
  params = init_state(family, digits_batch(size=1)).params
  sample = jax.jit(family.sample, static_argnums=2)
  a = np.asarray(sample(params, jax.random.PRNGKey(0), 4))
  b = np.asarray(sample(params, jax.random.PRNGKey(0), 4))
  c = np.asarray(sample(params, jax.random.PRNGKey(1), 4))
  assert a.dtype == np.uint8 and a.shape == (4, *DIGITS_SHAPE)
  np.testing.assert_array_equal(a, b)
  assert np.any(a != c)
  settings = family.sampler_settings()
  assert settings["sampler"] == "naive_autoregressive"
  assert settings["nfe"] == 64   # 8x8 grey: as many pixels as sub-pixels
  json.dumps(settings)


def test_nfe_counts_sub_pixels_for_rgb_and_pixels_for_the_mixture():
  assert make_family(tiny_config(), (4, 6, 3)).sampler_settings()["nfe"] == 72
  assert make_family(tiny_config("pixelcnnpp"), (4, 8, 3)).sampler_settings()["nfe"] == 32


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("change,match", [
    (dict(name="pixelrnn"), "model.name='pixelrnn'"),
    (dict(likelihood="logistic_mixture"), "set model.likelihood='categorical'"),
    (dict(likelihood="gaussian"), "model.likelihood='gaussian'"),
    (dict(conditional=True), "PixelCNN is unconditional"),
    (dict(dropout=0.1), "no dropout"),
    (dict(kernel_size=4), "kernel_size must be odd"),
    (dict(ch=2), "ch=2 cannot hold"),
])
def test_bad_model_settings_fail_before_compiling(change, match):
  config = tiny_config()
  for key, value in change.items():
    config.model[key] = value
  with pytest.raises(ValueError, match=match):
    make_family(config, (8, 8, 3))


def test_conditional_needs_labels():
  with pytest.raises(ValueError, match="no class labels"):
    make_family(tiny_config("gated_pixelcnn", conditional=True), num_classes=0)


# ------------------------------------------------------------------ the loop
@pytest.mark.integration
def test_train_and_evaluate_end_to_end_on_digits(tmp_path, fast_compile):
  config = pixelcnn_digits.get_config("runlocal")
  config.data.data_dir = os.environ.get("TFDS_DATA_DIR")
  config.training.async_checkpointing = False
  state = loop.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 20
  report = json.load(open(tmp_path / "eval" / "step_00000020.json"))
  assert report["num_examples"] == 32 and report["config_name"] == "pixelcnn_digits"
  assert 0.0 < report["bpd"] < 8.5
  np.testing.assert_allclose(report["nll_nats"], report["bpd"] * 64 * math.log(2),
                             rtol=1e-5)
  assert os.path.exists(tmp_path / "samples" / "train_step_00000020.png")
