"""GAN networks, StyleGAN2 building blocks and DiffAugment against independent
computations (numpy loops, jax.image.resize)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import gan as gan_models
from models import stylegan2
from train import diffaugment

KEY = jax.random.PRNGKey(0)


def init_apply(module, *args, train=True, **kwargs):
  """Initialises, then applies in train mode; returns (output, variables)."""
  rngs = {"params": KEY, "noise": jax.random.PRNGKey(1)}
  variables = module.init(rngs, *args, train=False, **kwargs)
  state = [k for k in variables if k != "params"]
  out = module.apply(variables, *args, train=train, rngs={"noise": jax.random.PRNGKey(2)},
                     mutable=state, **kwargs)
  return out[0], variables


# ------------------------------------------------------------------ architectures
@pytest.mark.parametrize("name,generator,discriminator,shape", [
    ("dcgan", gan_models.DCGANGenerator(4, (4, 2), (8, 8, 1)),
     gan_models.DCGANDiscriminator(4, (1, 2)), (8, 8, 1)),
    ("sngan_cnn", gan_models.SNGANCNNGenerator(4, (4, 2, 1), (16, 16, 3)),
     gan_models.SNGANCNNDiscriminator(4, (1, 2, 4)), (16, 16, 3)),
    ("resnet", gan_models.ResNetGenerator(4, (1, 1), (16, 16, 3)),
     gan_models.ResNetDiscriminator(4, (1, 1, 1), (True, True, False)), (16, 16, 3)),
    pytest.param("stylegan2", stylegan2.StyleGAN2Generator((16, 16, 3), (8, 8, 8), w_dim=8,
                                                           mapping_layers=2),
                 stylegan2.StyleGAN2Discriminator((16, 16, 3), (8, 8, 8), mbstd_group_size=2),
                 (16, 16, 3), marks=pytest.mark.slow),
])
def test_generators_make_images_and_discriminators_one_logit(name, generator, discriminator,
                                                             shape, fast_compile):
  z = jax.random.normal(KEY, (4, 8))
  images, _ = init_apply(generator, z, None)
  assert images.shape == (4, *shape), name
  if name != "stylegan2":                     # StyleGAN2's skip output is not squashed
    assert float(jnp.max(jnp.abs(images))) <= 1.0
  logits, _ = init_apply(discriminator, images, None)
  assert logits.shape == (4,)
  assert np.all(np.isfinite(np.asarray(logits)))


def test_dcgan_discriminator_has_no_batch_norm_on_its_input_layer():
  d = gan_models.DCGANDiscriminator(4, (1, 2, 4))
  variables = d.init(KEY, jnp.zeros((2, 16, 16, 3)), None, train=False)
  assert len(variables["batch_stats"]) == 2               # layers 2 and 3 only
  kernels = [v["kernel"].shape for k, v in variables["params"].items() if "Conv" in k]
  assert kernels == [(4, 4, 3, 4), (4, 4, 4, 8), (4, 4, 8, 16)]


def test_sngan_cnn_discriminator_follows_table_3():
  """3x3/4x4-stride-2 pairs of 64, 128, 256, then a 3x3 conv of 512 (ch=64)."""
  d = gan_models.SNGANCNNDiscriminator(64, (1, 2, 4, 8))
  variables = jax.eval_shape(lambda: d.init(KEY, jnp.zeros((1, 32, 32, 3)), None))
  kernels = [v["kernel"].shape for k, v in variables["params"].items() if "Conv" in k]
  assert kernels == [(3, 3, 3, 64), (4, 4, 64, 64), (3, 3, 64, 128), (4, 4, 128, 128),
                     (3, 3, 128, 256), (4, 4, 256, 256), (3, 3, 256, 512)]
  assert variables["params"]["SNDense_0"]["kernel"].shape == (4 * 4 * 512, 1)


def test_generator_rejects_an_image_side_its_multipliers_cannot_reach():
  g = gan_models.ResNetGenerator(4, (1, 1, 1), (12, 12, 3))
  with pytest.raises(ValueError, match="ch_mult"):
    g.init(KEY, jnp.zeros((1, 8)), None, train=False)


def test_conditional_batch_norm_uses_class_gains_and_biases():
  x = jax.random.normal(KEY, (6, 2, 2, 3)) * 2.0 + 1.0
  labels = jnp.array([0, 1, 2, 0, 1, 2])
  module = gan_models.ConditionalBatchNorm(num_classes=3)
  variables = module.init(KEY, x, labels, train=False)
  out, _ = module.apply(variables, x, labels, train=True, mutable=["batch_stats"])
  gain = np.asarray(variables["params"]["gain"]["embedding"])
  bias = np.asarray(variables["params"]["bias"]["embedding"])
  xn = np.asarray(x, np.float64)
  mean, var = xn.mean(axis=(0, 1, 2)), xn.var(axis=(0, 1, 2))
  want = ((xn - mean) / np.sqrt(var + 1e-5) * (1 + gain[np.asarray(labels)][:, None, None])
          + bias[np.asarray(labels)][:, None, None])
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-4, atol=1e-4)


def test_resnet_generator_with_shared_embedding_and_hierarchical_latents(fast_compile):
  g = gan_models.ResNetGenerator(4, (1, 1), (8, 8, 3), num_classes=5, shared_dim=6,
                                 hierarchical_z=True, spectral_norm=True)
  z = jax.random.normal(KEY, (3, 9))        # 3 chunks of 3
  images, variables = init_apply(g, z, jnp.array([0, 1, 4]))
  assert images.shape == (3, 8, 8, 3)
  # Each block's conditional BN projects [shared embedding (6), chunk (3)] = 9 inputs.
  gain = variables["params"]["GeneratorBlock_0"]["ConditionalBatchNorm_0"]["gain"]
  assert gain["kernel"].shape == (9, 4)
  assert "spectral_norm" in variables


def test_projection_discriminator_is_linear_in_the_class_embedding(fast_compile):
  """D(x, y) = psi(h) + <E[y], h>: scaling E scales D(x, y) - psi(h)."""
  d = gan_models.ResNetDiscriminator(4, (1, 1), (True, False), num_classes=3,
                                     spectral_norm=False)
  x = jax.random.normal(KEY, (2, 8, 8, 3))
  y = jnp.array([1, 2])
  variables = d.init(KEY, x, y, train=False)
  name = [k for k in variables["params"] if k.startswith("Embed")][0]

  def with_table(scale):
    params = jax.tree.map(lambda a: a, variables["params"])
    params[name] = {"embedding": variables["params"][name]["embedding"] * scale}
    return np.asarray(d.apply({"params": params}, x, y), np.float64)

  base = with_table(0.0)
  np.testing.assert_allclose(with_table(2.0) - base, 2 * (with_table(1.0) - base),
                             rtol=1e-4, atol=1e-5)
  assert not np.allclose(with_table(1.0), base)


def test_mlp_networks_map_points_to_points():
  g = gan_models.MLPGenerator(16, 2, (2,))
  d = gan_models.MLPDiscriminator(16, 2, spectral_norm=True)
  points, _ = init_apply(g, jnp.ones((5, 2)), None)
  assert points.shape == (5, 2)
  logits, _ = init_apply(d, points, None)
  assert logits.shape == (5,)


# ---------------------------------------------------------------- StyleGAN2 parts
def numpy_modulated_conv(x, weight, styles, demodulate=True):
  """Per example: w' = s_i w, demodulated over (kh, kw, in), 'SAME' 3x3 correlation."""
  b, h, w, _ = x.shape
  k = weight.shape[0]
  out = np.zeros((b, h, w, weight.shape[-1]))
  xp = np.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
  for n in range(b):
    wn = weight * styles[n][None, None, :, None]
    if demodulate:
      wn = wn / np.sqrt(np.sum(wn ** 2, axis=(0, 1, 2)) + 1e-8)
    for i in range(h):
      for j in range(w):
        out[n, i, j] = np.einsum("abc,abcd->d", xp[n, i:i + k, j:j + k], wn)
  return out


@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_conv_matches_per_example_computation(demodulate):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3, 5, 5, 2))
  weight = rng.standard_normal((3, 3, 2, 4))
  styles = rng.standard_normal((3, 2))
  got = stylegan2.modulated_conv(jnp.asarray(x, jnp.float32), jnp.asarray(weight, jnp.float32),
                                 jnp.asarray(styles, jnp.float32), demodulate=demodulate)
  np.testing.assert_allclose(np.asarray(got), numpy_modulated_conv(x, weight, styles,
                                                                   demodulate),
                             rtol=1e-4, atol=1e-4)


def test_demodulated_outputs_have_unit_variance_for_unit_inputs():
  """Karras et al. 2020, eq. 3: i.i.d. unit-variance inputs give unit-variance outputs."""
  x = jax.random.normal(KEY, (2, 32, 32, 64))
  weight = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 64, 16))
  styles = jax.random.normal(jax.random.PRNGKey(2), (2, 64)) * 3.0
  y = stylegan2.modulated_conv(x, weight, styles)
  np.testing.assert_allclose(float(jnp.std(y[:, 1:-1, 1:-1])), 1.0, rtol=0.05)


def test_fir_upsampling_is_bilinear_away_from_the_border():
  x = jax.random.normal(KEY, (1, 6, 6, 2))
  up = stylegan2.upsample2d(x, stylegan2.fir_filter())
  want = jax.image.resize(x, (1, 12, 12, 2), "bilinear")
  assert up.shape == (1, 12, 12, 2)
  np.testing.assert_allclose(np.asarray(up)[:, 1:-1, 1:-1], np.asarray(want)[:, 1:-1, 1:-1],
                             rtol=1e-5, atol=1e-5)


def test_modulated_up_conv_and_down_conv_halve_and_double_the_side(fast_compile):
  x = jax.random.normal(KEY, (2, 4, 4, 3))
  y = stylegan2.modulated_conv(x, jnp.ones((3, 3, 3, 5)), jnp.ones((2, 3)), up=True)
  assert y.shape == (2, 8, 8, 5)
  down = stylegan2.EqualConv(5, down=True)
  z, _ = down.init_with_output(KEY, jnp.ones((2, 8, 8, 3)))
  assert z.shape == (2, 4, 4, 5)
  skip = stylegan2.EqualConv(5, kernel_size=1, down=True)
  z, _ = skip.init_with_output(KEY, jnp.ones((2, 8, 8, 3)))
  assert z.shape == (2, 4, 4, 5)


def test_minibatch_std_matches_numpy():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((6, 3, 3, 4))
  got = np.asarray(stylegan2.MinibatchStd(group_size=3).apply({}, jnp.asarray(x,
                                                                            jnp.float32)))
  groups = [[0, 2, 4], [1, 3, 5]]          # examples i, i + n, i + 2n with n = 2
  for members in groups:
    std = np.sqrt(x[members].var(axis=0) + 1e-8).mean()
    for m in members:
      np.testing.assert_allclose(got[m, ..., 4], std, rtol=1e-5)
  np.testing.assert_allclose(got[..., :4], x, rtol=1e-6)
  with pytest.raises(ValueError, match="group size"):
    stylegan2.MinibatchStd(group_size=4).apply({}, jnp.asarray(x, jnp.float32))


def test_stylegan2_truncation_psi_zero_gives_the_average_image(fast_compile):
  g = stylegan2.StyleGAN2Generator((8, 8, 3), (8, 8), w_dim=8, mapping_layers=2,
                                   num_classes=3)
  z = jax.random.normal(KEY, (4, 8))
  labels = jnp.zeros((4,), jnp.int32)
  variables = g.init({"params": KEY, "noise": KEY}, z, labels, train=False)
  assert float(jnp.abs(variables["w_avg"]["mapping"]["w_avg"]).sum()) == 0.0
  _, state = g.apply(variables, z, labels, train=True, rngs={"noise": KEY},
                     mutable=["w_avg"])
  assert float(jnp.abs(state["w_avg"]["mapping"]["w_avg"]).sum()) > 0.0  # tracked
  variables = {**variables, **state}
  images = g.apply(variables, z, labels, truncation_psi=0.0, randomize_noise=False)
  np.testing.assert_allclose(np.asarray(images[1:]), np.broadcast_to(images[:1],
                                                                     images[1:].shape),
                             atol=1e-5)
  free = g.apply(variables, z, labels, randomize_noise=False)
  assert not np.allclose(free[0], free[1])


def test_stylegan2_style_mixing_changes_training_outputs_only(fast_compile):
  g = stylegan2.StyleGAN2Generator((8, 8, 3), (8, 8), w_dim=8, mapping_layers=1,
                                   style_mixing_prob=1.0)
  z = jax.random.normal(KEY, (2, 8))
  variables = g.init({"params": KEY, "noise": KEY}, z, None, train=False)
  plain = g.apply(variables, z, None, randomize_noise=False)
  mixed, _ = g.apply(variables, z, None, train=True, randomize_noise=False,
                     rngs={"noise": jax.random.PRNGKey(7)}, mutable=["w_avg"])
  assert not np.allclose(plain, mixed)


# ----------------------------------------------------------------------- DiffAugment
def numpy_translate(x, shifts):
  out = np.zeros_like(x)
  h, w = x.shape[1:3]
  for b, (dy, dx) in enumerate(shifts):
    for i in range(h):
      for j in range(w):
        if 0 <= i + dy < h and 0 <= j + dx < w:
          out[b, i, j] = x[b, i + dy, j + dx]
  return out


def test_translation_shifts_in_zeros():
  x = np.random.default_rng(2).standard_normal((3, 5, 6, 2)).astype(np.float32)
  shifts = np.array([[1, -2], [0, 0], [-3, 4]])
  got = diffaugment.translate(jnp.asarray(x), jnp.asarray(shifts))
  np.testing.assert_array_equal(np.asarray(got), numpy_translate(x, shifts))


def test_cutout_zeroes_one_square_clipped_at_the_border():
  mask = np.asarray(diffaugment.cutout_mask((2, 6, 6), jnp.array([[3, 3], [0, 5]]), (2, 3)))
  want = np.ones((2, 6, 6))
  want[0, 2:4, 2:5] = 0        # starts at offset - size // 2 = (2, 2)
  want[1, 0:1, 4:6] = 0        # (-1, 4): clipped to rows [0, 1), cols [4, 6)
  np.testing.assert_array_equal(mask, want)


@pytest.mark.slow
def test_random_augmentations_stay_in_their_ranges_and_are_differentiable():
  x = jax.random.uniform(KEY, (64, 8, 8, 3), minval=-1.0, maxval=1.0)
  policy = diffaugment.parse_policy("color,translation,cutout")
  y = diffaugment.diff_augment(x, jax.random.PRNGKey(3), policy)
  assert y.shape == x.shape
  zero_fraction = float(jnp.mean(jnp.all(y == 0, axis=-1)))
  assert 0.1 < zero_fraction < 0.5          # cutout (<= 1/4) plus translated borders
  grad = jax.grad(lambda a: jnp.sum(diffaugment.random_translation(
      a, jax.random.PRNGKey(4))))(x)
  assert set(np.unique(np.asarray(grad))) <= {0.0, 1.0}   # each pixel used once or not
  b = diffaugment.brightness(x, jax.random.PRNGKey(5)) - x
  assert float(jnp.max(jnp.abs(b))) <= 0.5
  np.testing.assert_allclose(np.asarray(jnp.std(b, axis=(1, 2, 3))), 0.0, atol=1e-5)


def test_unknown_augmentation_is_rejected():
  with pytest.raises(ValueError, match="diffaugment"):
    diffaugment.parse_policy("color,flip")
  assert diffaugment.parse_policy("") == ()
