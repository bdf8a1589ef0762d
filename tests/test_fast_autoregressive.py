"""The fast (cached-activation) sampler: the naive sampler's logits and samples."""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import pixelcnn_digits
from datasets import transforms
from models import pixelcnn
from sampling import fast_autoregressive
from train import autoregressive

DIGITS_SHAPE = (8, 8, 1)


@functools.partial(jax.jit, static_argnums=(1, 2))
def perturbed(params, scale=0.5, seed=11):
  """Params plus Gaussian noise: nonzero biases and sharper, varied logits."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape)
                                   for x, k in zip(leaves, keys)])


NETWORKS = {
    "pixelcnn_rgb": (pixelcnn.PixelCNN(3, ch=6, num_layers=2, head_features=12,
                                       first_kernel_size=5), (2, 4, 5, 3), False, None),
    "pixelcnn_bernoulli": (pixelcnn.PixelCNN(1, ch=4, num_layers=2, head_features=8,
                                             num_levels=1), (2, 5, 6, 1), True, None),
    "gated_rgb": (pixelcnn.GatedPixelCNN(3, ch=6, num_layers=3, kernel_size=3,
                                         head_features=12), (2, 4, 5, 3), False, None),
    "gated_conditional_5x5": (pixelcnn.GatedPixelCNN(
        1, ch=4, num_layers=3, kernel_size=5, head_features=8, num_classes=3),
        (3, 6, 7, 1), False, (0, 2, 1)),
    "gated_bernoulli_rgb": (pixelcnn.GatedPixelCNN(
        3, ch=6, num_layers=2, kernel_size=3, head_features=12, num_levels=1),
        (2, 4, 4, 3), True, None),
}


def setup(name):
  model, shape, binary, labels = NETWORKS[name]
  labels = None if labels is None else jnp.asarray(labels, jnp.int32)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, *shape[1:])),
                               None if labels is None else labels[:1])["params"]
  input_fn = transforms.unit_to_centered if binary else transforms.uint8_to_centered
  logits_fn = (autoregressive.bernoulli_as_categorical if binary else lambda out: out)
  return model, perturbed(params), shape, labels, input_fn, logits_fn, binary


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_cached_logits_equal_the_networks_logits(name, fast_compile):
  """Teacher-forced through the caches, every position's logits are the network's."""
  model, params, shape, labels, input_fn, logits_fn, binary = setup(name)
  data = jax.random.randint(jax.random.PRNGKey(5), shape, 0, 2 if binary else 256)
  cached = jax.jit(lambda p, x: fast_autoregressive.forced_logits(
      model, p, x, input_fn=input_fn, logits_fn=logits_fn, labels=labels))(params, data)
  full = jax.jit(lambda p, x: logits_fn(model.apply({"params": p}, input_fn(x), labels)))(
      params, data)
  assert cached.shape == full.shape
  scale = float(jnp.max(jnp.abs(full)))
  assert scale > 1.0      # informative logits, not a near-uniform distribution
  np.testing.assert_allclose(np.asarray(cached), np.asarray(full), rtol=1e-5,
                             atol=1e-5 * scale)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_fast_samples_equal_naive_samples(name, fast_compile):
  model, params, shape, labels, input_fn, logits_fn, binary = setup(name)

  def network_logits(canvas):
    return logits_fn(model.apply({"params": params}, input_fn(canvas), labels))

  rng = jax.random.PRNGKey(3)
  naive = jax.jit(lambda r: autoregressive.sample_subpixels(network_logits, r, shape))(rng)
  fast = jax.jit(lambda r: fast_autoregressive.sample_subpixels(
      model, params, r, shape, input_fn=input_fn, logits_fn=logits_fn, labels=labels))(rng)
  np.testing.assert_array_equal(np.asarray(fast), np.asarray(naive))
  assert len(np.unique(np.asarray(naive))) > 1     # not a constant image


def test_unsupported_networks_and_bad_arguments_are_refused(fast_compile):
  model, params, shape, labels, input_fn, logits_fn, _ = setup("gated_conditional_5x5")
  with pytest.raises(ValueError, match="labels exactly when"):
    fast_autoregressive.sample_subpixels(model, params, jax.random.PRNGKey(0), shape,
                                         input_fn=input_fn)
  with pytest.raises(ValueError, match="models 1 channels"):
    fast_autoregressive.sample_subpixels(model, params, jax.random.PRNGKey(0),
                                         (1, 4, 4, 3), input_fn=input_fn, labels=labels)
  with pytest.raises(ValueError, match="No fast sampler for Dense"):
    fast_autoregressive.sample_subpixels(nn.Dense(3), {}, jax.random.PRNGKey(0),
                                         (1, 2, 2, 1), input_fn=input_fn)
  assert fast_autoregressive.supports(model)


# --------------------------------------------------------------------- family
def family_config(name, method, **model):
  config = pixelcnn_digits.get_config()
  config.data.data_dir = os.environ.get("TFDS_DATA_DIR")
  config.sampling.method = method
  m = config.model
  m.name = name
  m.ch, m.num_layers, m.head_features, m.first_kernel_size, m.kernel_size = 6, 2, 12, 5, 3
  for key, value in model.items():
    m[key] = value
  return config


@pytest.mark.parametrize("name,model", [
    ("pixelcnn", {}),
    ("gated_pixelcnn", dict(conditional=True)),
    ("pixelcnn", dict(likelihood="bernoulli", binarization="threshold")),
])
def test_family_fast_and_naive_samplers_draw_the_same_images(name, model, fast_compile):
  naive = autoregressive.Autoregressive(family_config(name, "naive", **model),
                                        DIGITS_SHAPE, 10)
  fast = autoregressive.Autoregressive(family_config(name, "fast", **model),
                                       DIGITS_SHAPE, 10)
  batch = {"image": jnp.zeros((1, *DIGITS_SHAPE), jnp.uint8),
           "label": jnp.zeros((1,), jnp.int32)}
  params = perturbed(jax.jit(naive.init)(jax.random.PRNGKey(0), batch).params)
  rng = jax.random.PRNGKey(4)
  a = np.asarray(jax.jit(naive.sample, static_argnums=2)(params, rng, 3))
  b = np.asarray(jax.jit(fast.sample, static_argnums=2)(params, rng, 3))
  assert a.dtype == b.dtype == np.uint8 and a.shape == (3, *DIGITS_SHAPE)
  np.testing.assert_array_equal(a, b)
  settings = fast.sampler_settings()
  assert settings["sampler"] == "fast_autoregressive" and settings["nfe"] == 64
  assert naive.sampler_settings()["sampler"] == "naive_autoregressive"


@pytest.mark.parametrize("name,method,match", [
    ("pixelcnnpp", "fast", "set sampling.method='naive'"),
    ("pixelcnn", "ancestral", "samples with one of"),
])
def test_family_refuses_samplers_it_cannot_run(name, method, match):
  config = family_config(name, method)
  if name == "pixelcnnpp":
    config.model.likelihood = "logistic_mixture"
  with pytest.raises(ValueError, match=match):
    autoregressive.Autoregressive(config, DIGITS_SHAPE, 10)
