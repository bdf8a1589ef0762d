"""Binary data in the autoregressive family: the Bernoulli likelihood, binarization,
NLL in nats, sampling, and the binarized MNIST configs."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import pixelcnn_binarized_mnist, pixelrnn_binarized_mnist
from train import autoregressive, families, loop

MNIST_SHAPE = (28, 28, 1)


def binary_config(name="pixelcnn", binarization="binary", **model):
  config = pixelcnn_binarized_mnist.get_config()
  config.data.data_dir = os.environ.get("TFDS_DATA_DIR")
  m = config.model
  m.name, m.binarization = name, binarization
  if name not in autoregressive.FAST_NETWORKS:
    config.sampling.method = "naive"
  m.ch, m.num_layers, m.head_features, m.first_kernel_size = 4, 1, 8, 5
  for key, value in model.items():
    m[key] = value
  return config


def random_images(shape, seed=0):
  return jax.random.randint(jax.random.PRNGKey(seed), shape, 0, 256).astype(jnp.uint8)


@pytest.mark.parametrize("name", ["pixelcnn", "row_lstm"])
def test_a_uniform_bernoulli_costs_exactly_ln2_nats_per_pixel(name, fast_compile):
  """All-zero weights give logit 0 everywhere: 784 ln 2 nats per 28x28 image, 1 bit/dim."""
  family = autoregressive.Autoregressive(binary_config(name), MNIST_SHAPE, 0)
  batch = {"image": random_images((3, *MNIST_SHAPE)), "label": jnp.zeros(3, jnp.int32)}
  params = jax.jit(family.init)(jax.random.PRNGKey(0), batch).params
  params = jax.tree.map(jnp.zeros_like, params)
  out = jax.jit(family.eval_step)(params, batch, jax.random.PRNGKey(0))
  np.testing.assert_allclose(out["nll_nats"], 784 * math.log(2), rtol=1e-6)
  np.testing.assert_allclose(out["bpd"], 1.0, rtol=1e-6)


def test_bernoulli_nll_equals_a_numpy_computation(fast_compile):
  """-sum log sigmoid((2x - 1) logit) over the pixels, in float64 numpy."""
  family = autoregressive.Autoregressive(binary_config(binarization="threshold"),
                                         (6, 5, 1), 0)
  batch = {"image": random_images((4, 6, 5, 1), 1), "label": jnp.zeros(4, jnp.int32)}
  params = jax.jit(family.init)(jax.random.PRNGKey(0), batch).params
  leaves, tree = jax.tree.flatten(params)     # noise: nonzero, moderate logits
  keys = jax.random.split(jax.random.PRNGKey(9), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape)
                                     for x, k in zip(leaves, keys)])
  bits = (np.asarray(batch["image"]) >= 128).astype(np.float64)
  logits = np.asarray(jax.jit(family.model.apply)(
      {"params": params}, jnp.asarray(2 * bits - 1, jnp.float32)), np.float64)[..., 0]
  p_one = 1 / (1 + np.exp(-logits))
  expected = -np.sum(np.log(np.where(bits == 1, p_one, 1 - p_one)), axis=(1, 2, 3))
  out = jax.jit(family.eval_step)(params, batch, jax.random.PRNGKey(0))
  assert 0.1 < np.std(logits) < 10
  np.testing.assert_allclose(out["nll_nats"], expected, rtol=1e-5)
  np.testing.assert_allclose(out["bpd"], expected / (30 * math.log(2)), rtol=1e-5)


def test_training_uses_a_fresh_dynamic_binarization_each_step(fast_compile):
  family = autoregressive.Autoregressive(binary_config(binarization="dynamic"),
                                         (6, 5, 1), 0)
  batch = {"image": jnp.full((4, 6, 5, 1), 128, jnp.uint8), "label": jnp.zeros(4, jnp.int32)}
  params = jax.jit(family.init)(jax.random.PRNGKey(0), batch).params
  loss = jax.jit(family.loss)
  assert float(loss(params, batch, jax.random.PRNGKey(1))) != float(
      loss(params, batch, jax.random.PRNGKey(2)))
  evaluate = jax.jit(family.eval_step)
  np.testing.assert_array_equal(evaluate(params, batch, jax.random.PRNGKey(3))["nll_nats"],
                                evaluate(params, batch, jax.random.PRNGKey(3))["nll_nats"])


@pytest.mark.parametrize("method", ["naive", "fast"])
def test_samples_are_black_or_white(method, fast_compile):
  config = binary_config(binarization="threshold")
  config.sampling.method = method
  family = autoregressive.Autoregressive(config, (5, 4, 1), 0)
  batch = {"image": random_images((1, 5, 4, 1)), "label": jnp.zeros(1, jnp.int32)}
  params = jax.jit(family.init)(jax.random.PRNGKey(0), batch).params
  images = np.asarray(jax.jit(family.sample, static_argnums=2)(
      params, jax.random.PRNGKey(1), 6))
  assert images.dtype == np.uint8 and images.shape == (6, 5, 4, 1)
  assert set(np.unique(images)) == {0, 255}
  assert family.sampler_settings()["binarization"] == "threshold"


@pytest.mark.parametrize("change,match", [
    (dict(binarization="otsu"), "needs one of"),
    (dict(name="pixelcnnpp"), "set model.likelihood='logistic_mixture'"),
])
def test_bad_binary_settings_fail_before_compiling(change, match):
  config = binary_config(**change)
  with pytest.raises(ValueError, match=match):
    autoregressive.Autoregressive(config, MNIST_SHAPE, 0)


def test_binarized_mnist_configs_have_the_papers_settings():
  for module in (pixelcnn_binarized_mnist, pixelrnn_binarized_mnist):
    c = module.get_config()
    assert (c.data.dataset, c.model.likelihood, c.model.binarization) == (
        "binarized_mnist", "bernoulli", "binary")
    assert (c.model.head_features, c.optim.optimizer, c.training.batch_size) == (
        32, "rmsprop", 16)
    dynamic = module.get_config("dynamic")
    assert (dynamic.data.dataset, dynamic.model.binarization) == ("mnist", "dynamic")
  c = pixelrnn_binarized_mnist.get_config()
  assert (c.model.name, c.model.num_layers, c.model.ch) == ("diagonal_bilstm", 7, 16)
  assert pixelrnn_binarized_mnist.get_config("row_lstm").model.name == "row_lstm"
  assert pixelcnn_binarized_mnist.get_config().sampling.method == "fast"


@pytest.mark.integration
def test_end_to_end_on_thresholded_digits(monkeypatch, tmp_path, fast_compile):
  """The binarized MNIST config's family on the embedded digits (no download)."""
  monkeypatch.setitem(families.FAMILIES, "autoregressive", autoregressive.Autoregressive)
  config = pixelcnn_binarized_mnist.get_config("runlocal")
  config.data.dataset = "digits"
  config.data.data_dir = os.environ.get("TFDS_DATA_DIR")
  config.model.binarization = "threshold"
  config.training.async_checkpointing = False
  state = loop.train_and_evaluate(config, str(tmp_path))
  steps = config.training.num_train_steps
  assert int(state.step) == steps
  report = json.load(open(tmp_path / "eval" / f"step_{steps:08d}.json"))
  assert 0 < report["nll_nats"] < 64 * math.log(2) * 1.5
  np.testing.assert_allclose(report["nll_nats"], report["bpd"] * 64 * math.log(2),
                             rtol=1e-5)
