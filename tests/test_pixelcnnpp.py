"""Tests for the PixelCNN++ network (models/pixelcnnpp.py)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import logistic_mixture
from models.pixelcnnpp import PixelCNNPP, WeightNormConv

TINY = dict(nr_filters=8, nr_resnet=1, nr_logistic_mix=2)
IMAGE_SHAPE = (1, 8, 12, 3)  # H != W catches transposed axes; 3 levels: 8x12, 4x6, 2x3


def _num_params(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _random_params(model, seed: int, *args):
  """Random parameters of the right shapes, without compiling the initialisation.

  Weight-norm scales g near 1, everything else N(0, 0.05^2): no path is zero (as the
  zero biases at initialisation would leave some). numpy, because jax.random per
  leaf would cost seconds of compilation.
  """
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, train=False))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    noise = 0.05 * rng.standard_normal(leaf.shape)
    is_scale = jax.tree_util.keystr(path).endswith("['g']")
    return jnp.asarray(noise + (1.0 if is_scale else 0.0), jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _random_images(shape, seed=0):
  levels = np.random.default_rng(seed).integers(0, 256, shape)
  return jnp.asarray(levels / 127.5 - 1.0, jnp.float32)


@pytest.fixture(scope="module")
def tiny():
  """The tiny class-conditional network (dropout 0.5), one image, a label, random
  parameters, and the jitted apply (train static) that the tests share."""
  model = PixelCNNPP(dropout=0.5, num_classes=3, **TINY)
  x = _random_images(IMAGE_SHAPE)
  y = jnp.array([1])
  params = _random_params(model, 1, x, y)
  apply = jax.jit(lambda p, x, y, rng, train: model.apply(p, x, y, train=train,
                                                          rngs={"dropout": rng}),
                  static_argnums=4)
  return model, x, y, params, apply


# -------------------------------------------------------------------- causality
@jax.jit
def _dependence(params, x, y) -> jax.Array:
  """D[o, i] = sum |d out(o) . w / d x(i)| over channels; o, i raster pixel indices."""
  model = PixelCNNPP(dropout=0.5, num_classes=3, **TINY)
  _, height, width, _ = x.shape
  out, vjp = jax.vjp(lambda x: model.apply(params, x, y, train=False), x)
  # Random channel weights: a plain sum of the outputs could cancel by chance.
  weights = jax.random.normal(jax.random.key(5), out.shape[-1:])
  num_pixels = height * width

  def grad_for_pixel(index):
    one_pixel = jax.nn.one_hot(index, num_pixels).reshape(1, height, width, 1)
    return jnp.sum(jnp.abs(vjp(one_pixel * weights)[0]), axis=(0, 3)).reshape(-1)

  return jax.vmap(grad_for_pixel)(jnp.arange(num_pixels))


def test_each_pixel_depends_only_on_earlier_pixels(tiny, fast_compile):
  """Raster order: nothing at or after pixel (i, j), not even its own channels."""
  _, x, y, params, _ = tiny
  _, height, width, _ = x.shape
  dependence = np.asarray(_dependence(params, x, y))
  later_or_same = np.triu(np.ones_like(dependence, dtype=bool))  # input index >= output
  assert np.all(dependence[later_or_same] == 0.0)
  # ... and on the neighbours it must see: left on the same row, above, and above
  # right (the blind spot of a stack of masked convolutions).
  for i in range(height):
    for j in range(width):
      o = i * width + j
      if j > 0:
        assert dependence[o, o - 1] > 0, (i, j)
      if i > 0:
        assert dependence[o, o - width] > 0, (i, j)
      if i > 0 and j < width - 1:
        assert dependence[o, o - width + 1] > 0, (i, j)
  # Down-sampling widens the view: the last pixel sees every row above it whole.
  assert np.all(dependence[-1, :(height - 1) * width] > 0)


# ------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("channels,num_mixtures,expected", [(3, 2, 20), (1, 2, 6),
                                                             (3, 10, 100)])
def test_output_shape_is_the_mixture_parameter_count(channels, num_mixtures, expected):
  model = PixelCNNPP(**{**TINY, "nr_logistic_mix": num_mixtures})
  x = jnp.zeros((2, 8, 4, channels))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  out = jax.eval_shape(lambda p: model.apply(p, x, train=False), shapes)
  assert expected == logistic_mixture.num_output_channels(channels, num_mixtures)
  assert out.shape == (2, 8, 4, expected) and out.dtype == jnp.float32


def test_dropout_only_in_training(tiny, fast_compile):
  _, x, y, params, apply = tiny
  eval_a = apply(params, x, y, jax.random.key(0), False)
  eval_b = apply(params, x, y, jax.random.key(1), False)
  train_a = apply(params, x, y, jax.random.key(0), True)
  train_a2 = apply(params, x, y, jax.random.key(0), True)
  train_b = apply(params, x, y, jax.random.key(1), True)
  assert np.all(np.isfinite(np.asarray(eval_a))) and np.all(np.isfinite(train_a))
  np.testing.assert_array_equal(eval_a, eval_b)        # no randomness in eval
  np.testing.assert_array_equal(train_a, train_a2)     # the rng decides the mask
  assert np.max(np.abs(train_a - train_b)) > 1e-3
  assert np.max(np.abs(train_a - eval_a)) > 1e-3


def test_class_label_changes_the_output(tiny, fast_compile):
  model, x, y, params, apply = tiny
  rng = jax.random.key(0)
  out = {label: apply(params, x, jnp.array([label]), rng, False) for label in (0, 1, 2)}
  assert np.max(np.abs(out[0] - out[1])) > 1e-3 and np.max(np.abs(out[1] - out[2])) > 1e-3
  np.testing.assert_array_equal(out[1], apply(params, x, y, rng, False))
  # One embedding of 2 * nr_filters per gated ResNet block (6 first pass + 8 second).
  embeddings = [v for k, v in jax.tree_util.tree_flatten_with_path(params)[0]
                if "class_embedding" in jax.tree_util.keystr(k)]
  assert len(embeddings) == 2 * (3 * 1 + 3 * 1 + 2)
  assert all(e.shape == (3, 2 * TINY["nr_filters"]) for e in embeddings)


def test_remat_gives_the_same_gradients(fast_compile):
  """Rematerialised blocks recompute the same function, dropout masks included."""
  # nr_resnet=0 still has one gated block per stream at levels 1 and 0 (second pass).
  model = PixelCNNPP(nr_filters=4, nr_resnet=0, nr_logistic_mix=1, dropout=0.5,
                     num_classes=2)
  x, y = _random_images((1, 4, 4, 3)), jnp.array([1])
  params = _random_params(model, 4, x, y)

  def grads(m):
    loss = lambda p: jnp.sum(m.apply(p, x, y, train=True,  # noqa: E731
                                     rngs={"dropout": jax.random.key(4)})**2)
    return jax.jit(jax.grad(loss))(params)

  forward = lambda m: str(jax.make_jaxpr(  # noqa: E731
      lambda p: m.apply(p, x, y, train=False))(params))
  assert forward(model).count("remat") == 0
  assert forward(model.clone(remat=True)).count("remat") == 4   # one per block
  plain, remat = grads(model), grads(model.clone(remat=True))
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
    # float32 sums in another order: error relative to the leaf's largest entry
    # (gradients here reach ~20; a 2e-5 difference on an entry of 0.07 was seen).
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(a).max()))


def test_bad_inputs_are_rejected_before_compiling():
  x = jnp.zeros((1, 8, 8, 3))
  with pytest.raises(ValueError, match="divisible by 4"):
    PixelCNNPP(**TINY).init(jax.random.key(0), jnp.zeros((1, 6, 8, 3)), train=False)
  with pytest.raises(ValueError, match="class-conditional"):
    PixelCNNPP(num_classes=10, **TINY).init(jax.random.key(0), x, train=False)
  with pytest.raises(ValueError, match="num_classes=0"):
    PixelCNNPP(**TINY).init(jax.random.key(0), x, jnp.zeros((1,), jnp.int32),
                            train=False)
  with pytest.raises(ValueError, match="integer labels"):
    PixelCNNPP(num_classes=10, **TINY).init(jax.random.key(0), x, jnp.zeros((1,)),
                                            train=False)
  with pytest.raises(ValueError, match="dropout"):
    PixelCNNPP(dropout=1.0, **TINY).init(jax.random.key(0), x, train=False)
  with pytest.raises(ValueError, match="C=2"):
    PixelCNNPP(**TINY).init(jax.random.key(0), jnp.zeros((1, 8, 8, 2)), train=False)


def test_bfloat16_compute_keeps_float32_parameters_and_output(fast_compile):
  model = PixelCNNPP(dtype=jnp.bfloat16, **TINY)
  x = _random_images((1, 4, 4, 3))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes))
  params = _random_params(model, 2, x)
  out = jax.jit(lambda p: model.apply(p, x, train=False))(params)
  assert out.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(out)))


# ------------------------------------------------------------- weight norm
def _kernel_of(conv: WeightNormConv, variables, in_features: int) -> np.ndarray:
  """Reads the effective kernel off the layer's responses to unit inputs."""
  kh, kw = conv.kernel_size
  basis = np.eye(kh * kw * in_features, dtype=np.float32).reshape(-1, kh, kw,
                                                                  in_features)
  response = conv.apply(variables, jnp.asarray(basis))[:, 0, 0, :]  # [kh kw cin, cout]
  zero = conv.apply(variables, jnp.zeros((1, kh, kw, in_features)))[:, 0, 0, :]
  return np.asarray(response - zero)


def test_weight_norm_sets_each_filter_norm_to_g(fast_compile):
  conv = WeightNormConv(5, (2, 3), init_scale=0.1)
  x = jnp.zeros((1, 2, 3, 4))
  variables = conv.init(jax.random.key(0), x)
  np.testing.assert_allclose(np.linalg.norm(_kernel_of(conv, variables, 4), axis=0),
                             0.1, rtol=1e-5)
  g = jnp.array([0.5, 1.0, 2.0, 3.0, 4.0])
  variables = {"params": {**variables["params"], "g": g}}
  np.testing.assert_allclose(np.linalg.norm(_kernel_of(conv, variables, 4), axis=0),
                             g, rtol=1e-5)
  # Scaling the direction v leaves the layer unchanged.
  scaled = {"params": {**variables["params"], "v": 7.0 * variables["params"]["v"]}}
  np.testing.assert_allclose(_kernel_of(conv, scaled, 4),
                             _kernel_of(conv, variables, 4), rtol=1e-5, atol=1e-7)


def test_without_weight_norm_the_kernel_is_the_parameter():
  conv = WeightNormConv(5, (2, 3), init_scale=0.1, weight_norm=False)
  variables = conv.init(jax.random.key(0), jnp.zeros((1, 2, 3, 4)))
  assert set(variables["params"]) == {"kernel", "bias"}
  # The same unit-norm filters times init_scale as the weight-normalised layer.
  np.testing.assert_allclose(np.linalg.norm(_kernel_of(conv, variables, 4), axis=0),
                             0.1, rtol=1e-5)
  model = PixelCNNPP(weight_norm=False, **TINY)
  x = jnp.zeros((1, 4, 4, 3))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  leaves = jax.tree_util.tree_flatten_with_path(shapes)[0]
  assert {jax.tree_util.keystr(k).split("'")[-2] for k, _ in leaves} == {"kernel", "bias"}
  with_wn = jax.eval_shape(lambda: model.clone(weight_norm=True).init(
      jax.random.key(0), x, train=False))
  # v and g replaced by a single kernel: one scale fewer per output channel.
  num_scales = sum(leaf.size for k, leaf in jax.tree_util.tree_flatten_with_path(
      with_wn)[0] if jax.tree_util.keystr(k).endswith("['g']"))
  assert _num_params(with_wn) - _num_params(shapes) == num_scales > 0


# ------------------------------------------------------------ parameter count
def expected_num_params(filters: int, nr_resnet: int, num_mixtures: int, channels: int,
                        num_classes: int = 0) -> int:
  """Counted from the architecture of the paper's Fig. 2 and the reference code.

  A weight-normalised layer with a kh x kw kernel has kh kw c_in c_out weights plus a
  scale g and a bias per output channel.
  """
  f = filters
  layer = lambda kh, kw, c_in, c_out: kh * kw * c_in * c_out + 2 * c_out  # noqa: E731
  first_layers = (layer(2, 3, channels + 1, f) + layer(1, 3, channels + 1, f)
                  + layer(2, 1, channels + 1, f))
  # Gated ResNet: conv(2f -> f) [+ nin(2 aux -> f)] + conv(2f -> 2f), concat_elu inputs.
  def u_block(aux):
    return (layer(2, 3, 2 * f, f) + (layer(1, 1, 2 * aux, f) if aux else 0)
            + layer(2, 3, 2 * f, 2 * f))

  def ul_block(aux):
    return layer(2, 2, 2 * f, f) + layer(1, 1, 2 * aux, f) + layer(2, 2, 2 * f, 2 * f)

  first_pass = 3 * nr_resnet * (u_block(0) + ul_block(f))
  second_pass = (3 * nr_resnet + 2) * (u_block(f) + ul_block(2 * f))
  resampling = 2 * 2 * (layer(2, 3, f, f) + layer(2, 2, f, f))  # 2 down, 2 up
  out_channels = num_mixtures * (10 if channels == 3 else 3)
  embeddings = 2 * (6 * nr_resnet + 2) * num_classes * 2 * f  # one per block
  return (first_layers + first_pass + second_pass + resampling
          + layer(1, 1, f, out_channels) + embeddings)


def _count(model, image_shape, y=None):
  x = jnp.zeros(image_shape, jnp.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, y, train=False))
  return _num_params(shapes)


def test_paper_cifar10_network_has_about_53m_parameters():
  count = _count(PixelCNNPP(), (1, 32, 32, 3))
  print(f"PixelCNN++ CIFAR-10 network (nr_resnet=5, nr_filters=160, 10 logistics): "
        f"{count:,} parameters")
  assert count == expected_num_params(160, 5, 10, 3) == 53_659_080
  # The reference model is about 53M parameters (its weight-normalised layers carry
  # the same g and b per output channel).
  assert 52e6 < count < 55e6


@pytest.mark.parametrize("kwargs,image_shape,labels", [
    (dict(nr_filters=12, nr_resnet=2, nr_logistic_mix=3), (1, 8, 8, 1), None),
    (dict(nr_filters=6, nr_resnet=1, nr_logistic_mix=4, num_classes=10),
     (2, 16, 8, 3), jnp.zeros((2,), jnp.int32)),
])
def test_parameter_count_matches_the_architecture(kwargs, image_shape, labels):
  count = _count(PixelCNNPP(**kwargs), image_shape, labels)
  assert count == expected_num_params(
      kwargs["nr_filters"], kwargs["nr_resnet"], kwargs["nr_logistic_mix"],
      image_shape[-1], kwargs.get("num_classes", 0))
