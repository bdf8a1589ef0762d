"""The families' image scalings, binarization and SR3 pairs (datasets/transforms.py),
against float64 numpy, exact enumeration of the 256 levels and binomial statistics."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from datasets import transforms

LEVELS = np.arange(256)


# ------------------------------------------------------------------- scalings
def test_uint8_to_centered_maps_the_256_levels_onto_minus_one_one():
  out = jax.jit(transforms.uint8_to_centered)(jnp.asarray(LEVELS, jnp.uint8))
  assert out.dtype == jnp.float32
  expected = LEVELS / 127.5 - 1.0   # float64
  # float32 k / 127.5 in [0, 2] then - 1: a couple of ulps of 2 (2^-22) at most.
  np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=0, atol=2**-21)
  assert float(out[0]) == -1.0 and abs(float(out[255]) - 1.0) <= 2**-21
  assert np.all(np.diff(np.asarray(out)) > 0)
  # Integer levels of any dtype, numpy or jnp, give the same values.
  np.testing.assert_array_equal(
      jax.jit(transforms.uint8_to_centered)(LEVELS.astype(np.int32)), out)


def test_uint8_to_unit_is_the_correctly_rounded_division_by_255():
  out = jax.jit(transforms.uint8_to_unit)(jnp.asarray(LEVELS, jnp.uint8).reshape(16, 16))
  assert out.dtype == jnp.float32
  # numpy's float32 division is correctly rounded (IEEE 754).
  expected = (LEVELS.astype(np.float32) / np.float32(255)).reshape(16, 16)
  np.testing.assert_array_equal(np.asarray(out), expected)
  assert float(out.min()) == 0.0 and float(out.max()) == 1.0


def test_unit_to_centered_and_the_two_routes_to_minus_one_one_agree():
  np.testing.assert_array_equal(
      transforms.unit_to_centered(jnp.array([0, 1], jnp.uint8)), [-1.0, 1.0])
  np.testing.assert_array_equal(
      transforms.unit_to_centered(jnp.array([0.0, 0.25, 0.5, 1.0])), [-1.0, -0.5, 0.0, 1.0])
  levels = jnp.asarray(LEVELS, jnp.uint8)
  via_unit = transforms.unit_to_centered(transforms.uint8_to_unit(levels))
  np.testing.assert_allclose(via_unit, transforms.uint8_to_centered(levels), rtol=0,
                             atol=2**-21)


def test_centered_to_uint8_round_trips_the_256_levels():
  levels = np.arange(256, dtype=np.uint8)
  as_float = jnp.asarray(levels / 127.5 - 1.0, jnp.float32)   # from float64
  out = transforms.centered_to_uint8(as_float)
  assert out.dtype == jnp.uint8
  np.testing.assert_array_equal(out, levels)
  np.testing.assert_array_equal(
      transforms.centered_to_uint8(transforms.uint8_to_centered(levels)), levels)
  # Out of range values are clipped; less than half a level either way rounds back.
  np.testing.assert_array_equal(
      transforms.centered_to_uint8(jnp.array([-3.0, -1.0, 1.0, 3.0])), [0, 0, 255, 255])
  shifted = as_float + 0.45 / 127.5 * jnp.where(levels % 2 == 0, 1.0, -1.0)
  np.testing.assert_array_equal(transforms.centered_to_uint8(shifted), levels)
  # Past half a level, the neighbour.
  np.testing.assert_array_equal(
      transforms.centered_to_uint8(as_float[:-1] + 0.55 / 127.5), levels[1:])


def test_unit_to_uint8_rounds_255_p_and_maps_bits_to_0_and_255():
  p = np.array([0.0, 0.4 / 255, 0.6 / 255, 0.5, 1.0, 1.2, -0.1])
  np.testing.assert_array_equal(transforms.unit_to_uint8(jnp.asarray(p, jnp.float32)),
                                [0, 0, 1, 128, 255, 255, 0])
  bits = jnp.array([[True, False], [False, True]])
  np.testing.assert_array_equal(transforms.unit_to_uint8(bits), [[255, 0], [0, 255]])
  np.testing.assert_array_equal(
      transforms.unit_to_uint8(transforms.uint8_to_unit(jnp.asarray(LEVELS, jnp.uint8))),
      LEVELS)


# --------------------------------------------------------------- binarization
def test_binarization_modes():
  images = jnp.array([0, 1, 64, 127, 128, 200, 255], jnp.uint8).reshape(1, 7, 1, 1)
  key = jax.random.PRNGKey(0)
  threshold = transforms.binarize(images, key, "threshold")
  assert threshold.dtype == jnp.float32
  np.testing.assert_array_equal(threshold.ravel(), [0, 0, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(transforms.binarize(images, key, "binary").ravel(),
                                [0, 1, 1, 1, 1, 1, 1])
  # Dynamic: x ~ Bernoulli(pixel / 255), a function of the key.
  level = jnp.full((200, 20, 20, 1), 64, jnp.uint8)
  draws = np.asarray(transforms.binarize(level, key, "dynamic"))
  assert set(np.unique(draws)) == {0, 1}
  p = 64 / 255
  assert abs(draws.mean() - p) < 4 * math.sqrt(p * (1 - p) / draws.size)
  np.testing.assert_array_equal(draws, transforms.binarize(level, key, "dynamic"))
  assert np.any(draws != np.asarray(transforms.binarize(level, jax.random.PRNGKey(1),
                                                        "dynamic")))
  edges = transforms.binarize(jnp.array([0, 255], jnp.uint8), key, "dynamic")
  np.testing.assert_array_equal(edges, [0, 1])
  with pytest.raises(ValueError, match="binarization='otsu'"):
    transforms.binarize(images, key, "otsu")


def test_dynamic_binarization_follows_every_level():
  """Each of the 256 levels k is 1 with probability k / 255 (binomial bounds)."""
  n = 4000
  images = jnp.broadcast_to(jnp.asarray(LEVELS, jnp.uint8), (n, 256))
  draws = np.asarray(jax.jit(lambda x: transforms.binarize(x, jax.random.key(5), "dynamic"))(
      images))
  p = LEVELS / 255
  sd = np.sqrt(p * (1 - p) / n)
  assert np.all(np.abs(draws.mean(0) - p) <= 5 * sd + 1e-12)


# ---------------------------------------------------------- super-resolution
def test_box_downsample_and_upsample():
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 3, 3, 2)), jnp.float32)
  up = transforms.upsample(x, 2, 'nearest')
  assert up.shape == (2, 6, 6, 2)
  np.testing.assert_array_equal(up, np.repeat(np.repeat(np.asarray(x), 2, 1), 2, 2))
  np.testing.assert_allclose(transforms.box_downsample(up, 2), x, rtol=1e-6)
  blocks = jnp.arange(16.0).reshape(1, 4, 4, 1)
  np.testing.assert_allclose(transforms.box_downsample(blocks, 2)[0, :, :, 0],
                             [[2.5, 4.5], [10.5, 12.5]])
  # A constant image stays constant under every interpolation.
  for method in transforms.UPSAMPLE_METHODS:
    np.testing.assert_allclose(transforms.upsample(jnp.full((1, 3, 3, 1), 0.3), 3, method),
                               0.3, atol=1e-6)
  with pytest.raises(ValueError, match='dividing'):
    transforms.box_downsample(blocks, 3)
  with pytest.raises(ValueError, match='Unknown upsample'):
    transforms.upsample(x, 2, 'lanczos7')
  with pytest.raises(ValueError, match='positive integer'):
    transforms.upsample(x, 0)


def test_superres_training_pair_is_the_block_mean_image_brought_back_to_size():
  images = np.random.default_rng(1).integers(0, 256, (2, 6, 6, 3)).astype(np.uint8)
  x0, condition = transforms.superres_training_pair(jnp.asarray(images), 3, 'nearest')
  centered = images / 127.5 - 1.0
  np.testing.assert_allclose(x0, centered, atol=2**-21)
  # Brute force: the mean of each 3x3 block, repeated over the block.
  expected = np.zeros_like(centered)
  for i in range(2):
    for j in range(2):
      block = centered[:, 3 * i:3 * i + 3, 3 * j:3 * j + 3]
      expected[:, 3 * i:3 * i + 3, 3 * j:3 * j + 3] = block.mean(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(condition, expected, atol=1e-6)
  x0, condition = transforms.superres_training_pair(
      np.full((1, 4, 4, 3), 255, np.uint8), 2)   # bicubic, the default
  np.testing.assert_allclose(x0, 1.0, atol=2**-21)
  np.testing.assert_allclose(condition, 1.0, atol=1e-6)
