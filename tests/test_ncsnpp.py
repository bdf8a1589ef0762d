"""Tests for NCSN++ / DDPM++ / EDM SongUNet (models/ncsnpp.py, models/layerspp.py)
and FIR resampling (models/up_or_down_sampling.py).

References used here, all independent of the code under test: a direct numpy loop
for upfirdn2d, closed-form border values of FIR upsampling, a hand count of the
parameters from the architecture description, and (when installed) the PyTorch
NCSN++ of `diffusers` (UNet2DModel with Skip/AttnSkip blocks) and its FIR layers.
"""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import layerspp
from models import ncsnpp
from models import up_or_down_sampling as resampling


def _num_params(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _param_shapes(model, image_shape=(1, 32, 32, 3)):
  """Parameter shapes from jax.eval_shape: nothing is compiled or allocated."""
  x = jnp.zeros(image_shape, jnp.float32)
  labels = jnp.zeros(image_shape[:1], jnp.float32)
  return jax.eval_shape(
      lambda: model.init(jax.random.key(0), x, labels, train=False))["params"]


def _random_params(model, x, labels, y=None, seed: int = 0):
  """Random parameters of the right shapes, no branch near zero as at init.

  numpy draws on eval_shape: compiling `init` (a threefry per parameter) costs
  far more than the forward pass of these small networks on CPU.
  """
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), x, labels, y, train=False))["params"]
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    noise = rng.standard_normal(leaf.shape)
    if path[-1].key == "scale":  # GroupNorm gains
      value = 1 + 0.1 * noise
    elif leaf.ndim >= 2:  # kernels: unit-variance outputs
      value = noise / math.sqrt(math.prod(leaf.shape[:-1]))
    else:
      value = 0.1 * noise
    return jnp.asarray(value, jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _apply(model, params, x, labels, y=None, train=False, seed=0, **kwargs):
  """One jitted forward pass (dropout rng from `seed` when training)."""
  rngs = {"dropout": jax.random.key(seed)} if train else {}
  return jax.jit(lambda p: model.apply({"params": p}, x, labels, y, train=train,
                                       rngs=rngs, **kwargs))(params)


# ------------------------------------------------------------ FIR resampling

def _upfirdn2d_loop(image: np.ndarray, kernel: np.ndarray, up: int, down: int,
                    pad: tuple[int, int]) -> np.ndarray:
  """StyleGAN2's upfirdn2d on one [H, W] channel, written as explicit loops."""
  height, width = image.shape
  upsampled = np.zeros((height * up, width * up))
  upsampled[::up, ::up] = image
  padded = np.pad(upsampled, (pad, pad))
  kh, kw = kernel.shape
  out_h = (padded.shape[0] - kh) // down + 1
  out_w = (padded.shape[1] - kw) // down + 1
  out = np.zeros((out_h, out_w))
  for i in range(out_h):
    for j in range(out_w):
      for a in range(kh):
        for b in range(kw):
          # A true convolution: the kernel is read backwards.
          out[i, j] += (padded[i * down + a, j * down + b]
                        * kernel[kh - 1 - a, kw - 1 - b])
  return out


def _per_channel(fn, x: np.ndarray) -> np.ndarray:
  """Applies a [H, W] -> [H', W'] function to every image and channel of NHWC x."""
  return np.stack([np.stack([fn(x[n, :, :, c]) for c in range(x.shape[3])], -1)
                   for n in range(x.shape[0])])


@pytest.mark.parametrize("up,down,pad", [(1, 1, (1, 2)), (2, 1, (2, 1)),
                                         (1, 2, (1, 1)), (3, 2, (0, 3))])
def test_upfirdn2d_matches_loop(up, down, pad):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 5, 6, 3)).astype(np.float32)
  kernel = rng.standard_normal((4, 4))  # asymmetric: catches a missing flip
  got = resampling.upfirdn2d(jnp.asarray(x), kernel, up=up, down=down, pad=pad)
  want = _per_channel(lambda c: _upfirdn2d_loop(c, kernel, up, down, pad), x)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_fir_kernel_normalisation_and_gain():
  kernel = resampling.fir_kernel_2d([1, 3, 3, 1])
  np.testing.assert_allclose(kernel, np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0)
  assert kernel.sum() == pytest.approx(1.0)
  x = jax.random.normal(jax.random.key(0), (1, 6, 6, 2))
  for fn in (resampling.upsample_2d, resampling.downsample_2d):
    np.testing.assert_allclose(fn(x, (1, 3, 3, 1), gain=2.5),
                               2.5 * fn(x, (1, 3, 3, 1)), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="sum to zero"):
    resampling.fir_kernel_2d([1, -1])


def test_fir_upsample_of_constant_is_constant_inside():
  """Unit DC gain inside; with zero padding the 1-D taps [1, 3, 3, 1] / 4 reach
  one real sample fewer at the border, which gets 3/4 of the value per axis."""
  c = 1.7
  up = resampling.upsample_2d(jnp.full((1, 8, 8, 1), c), (1, 3, 3, 1))
  up = np.asarray(up)[0, :, :, 0]
  assert up.shape == (16, 16)
  np.testing.assert_allclose(up[1:-1, 1:-1], c, rtol=1e-6)
  edge = 0.75 * c
  np.testing.assert_allclose(up[0, 1:-1], edge, rtol=1e-6)
  np.testing.assert_allclose(up[1:-1, -1], edge, rtol=1e-6)
  np.testing.assert_allclose(up[[0, 0, -1, -1], [0, -1, 0, -1]], 0.75 * edge, rtol=1e-6)
  down = np.asarray(resampling.downsample_2d(jnp.full((1, 8, 8, 1), c), (1, 3, 3, 1)))
  np.testing.assert_allclose(down[0, 1:-1, 1:-1, 0], c, rtol=1e-6)


def test_down_of_up_matches_numpy():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((1, 6, 8, 2)).astype(np.float32)
  taps = np.array([1.0, 3.0, 3.0, 1.0])
  kernel = np.outer(taps, taps) / taps.sum()**2
  # upsample: kernel * factor^2, pads (2, 1); downsample: pads (1, 1) (StyleGAN2).
  want = _per_channel(
      lambda c: _upfirdn2d_loop(_upfirdn2d_loop(c, 4 * kernel, 2, 1, (2, 1)),
                                kernel, 1, 2, (1, 1)), x)
  got = resampling.downsample_2d(resampling.upsample_2d(jnp.asarray(x), taps), taps)
  assert got.shape == x.shape
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_box_filter_is_nearest_and_average_pooling():
  """EDM's [1, 1] resample filter is exactly DDPM++'s naive resampling."""
  x = jax.random.normal(jax.random.key(2), (2, 4, 6, 3))
  np.testing.assert_allclose(resampling.upsample_2d(x, (1, 1)),
                             np.repeat(np.repeat(np.asarray(x), 2, 1), 2, 2), atol=1e-6)
  np.testing.assert_allclose(resampling.naive_upsample_2d(x),
                             np.repeat(np.repeat(np.asarray(x), 2, 1), 2, 2))
  pooled = np.asarray(x).reshape(2, 2, 2, 3, 2, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(resampling.downsample_2d(x, (1, 1)), pooled, atol=1e-6)
  np.testing.assert_allclose(resampling.naive_downsample_2d(x), pooled, atol=1e-6)


def _conv_same(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_fused_resampling_convs_match_two_step_inside():
  """Fused ops = conv after FIR upsampling / FIR downsampling after conv, away
  from the border (the fused ops pad once, the two-step ones twice)."""
  x = jax.random.normal(jax.random.key(3), (1, 12, 12, 3))
  w = jax.random.normal(jax.random.key(4), (3, 3, 3, 5))
  taps = (1, 3, 3, 1)
  fused_up = resampling.upsample_conv_2d(x, w, taps)
  two_step_up = _conv_same(resampling.upsample_2d(x, taps), w)
  assert fused_up.shape == (1, 24, 24, 5)
  np.testing.assert_allclose(fused_up[:, 3:-3, 3:-3], two_step_up[:, 3:-3, 3:-3],
                             rtol=1e-4, atol=1e-5)
  assert not np.allclose(fused_up[:, 0], two_step_up[:, 0], atol=1e-3)
  fused_down = resampling.conv_downsample_2d(x, w, taps)
  two_step_down = resampling.downsample_2d(_conv_same(x, w), taps)
  assert fused_down.shape == (1, 6, 6, 5)
  np.testing.assert_allclose(fused_down[:, 1:-1, 1:-1], two_step_down[:, 1:-1, 1:-1],
                             rtol=1e-4, atol=1e-5)


def test_fused_resampling_matches_diffusers():
  torch = pytest.importorskip("torch")
  upsampling = pytest.importorskip("diffusers.models.upsampling")
  downsampling = pytest.importorskip("diffusers.models.downsampling")
  x = np.random.default_rng(5).standard_normal((2, 8, 8, 5)).astype(np.float32)
  for layer_cls, down in ((upsampling.FirUpsample2D, False),
                          (downsampling.FirDownsample2D, True)):
    torch.manual_seed(0)
    layer = layer_cls(5, out_channels=7, use_conv=True)
    with torch.no_grad():
      layer.Conv2d_0.bias.normal_()
      want = layer(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    weight = layer.Conv2d_0.weight.detach().numpy().transpose(2, 3, 1, 0)  # HWIO
    params = {"kernel": jnp.asarray(weight),
              "bias": jnp.asarray(layer.Conv2d_0.bias.detach().numpy())}
    got = resampling.Conv2d(7, 3, up=not down, down=down).apply(
        {"params": params}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), want.transpose(0, 2, 3, 1),
                               rtol=1e-4, atol=1e-5)


# ------------------------------------------------------ blocks at initialisation

def _fresh_params(module, *args, **kwargs):
  """A module's initial parameters (init compiled once, jitted)."""
  return jax.jit(lambda: module.init(jax.random.key(0), *args, **kwargs))()["params"]


def test_fresh_blocks_pass_the_skip_path_rescaled(fast_compile):
  """init_scale=0 zeroes (1e-10) each branch's last layer: a fresh block returns
  its skip path, divided by sqrt(2) with skip_rescale (EDM: times sqrt(1/2))."""
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 16))
  temb = jax.random.normal(jax.random.key(2), (2, 32))
  root_half = 1 / math.sqrt(2.0)
  for block_cls, args in ((layerspp.ResnetBlockBigGANpp, (x, temb)),
                          (layerspp.ResnetBlockDDPMpp, (x, temb)),
                          (layerspp.AttnBlockpp, (x,))):
    kwargs = {} if block_cls is layerspp.AttnBlockpp else {"train": False}
    params = _fresh_params(block_cls(), *args, **kwargs)
    last = params["proj_out" if block_cls is layerspp.AttnBlockpp else "conv2"]
    assert np.abs(last["kernel"]).max() < 1e-4  # "zero" init
    for skip_rescale, factor in ((True, root_half), (False, 1.0)):
      block = block_cls(skip_rescale=skip_rescale)
      out = block.apply({"params": params}, *args, **kwargs)
      np.testing.assert_allclose(out, factor * x, atol=1e-4)

  # Resampling / channel-changing blocks: the skip path is conv1x1(resample(x)).
  up_block = layerspp.ResnetBlockBigGANpp(up=True, out_ch=8, fir=True)
  params = _fresh_params(up_block, x, temb, train=False)
  out = up_block.apply({"params": params}, x, temb, train=False)
  shortcut = params["shortcut"]
  skip = jnp.einsum("bhwc,cd->bhwd", resampling.upsample_2d(x, (1, 3, 3, 1)),
                    shortcut["kernel"][0, 0]) + shortcut["bias"]
  np.testing.assert_allclose(out, root_half * skip, atol=1e-4)

  edm_block = ncsnpp.UNetBlock(16, attention=True)
  params = _fresh_params(edm_block, x, temb, train=False)
  out = edm_block.apply({"params": params}, x, temb, train=False)
  np.testing.assert_allclose(out, 0.5 * x, atol=1e-4)  # two sqrt(1/2) sums


def test_fourier_weights_are_not_trained():
  projection = layerspp.GaussianFourierProjection(embedding_size=8, scale=16.0)
  s = jnp.array([0.3, -1.2])
  params = projection.init(jax.random.key(0), s)
  weights = np.asarray(params["params"]["W"])
  # The same float32 angles (they reach hundreds of radians), then float64 sin/cos.
  angles = (np.asarray(s)[:, None] * weights[None, :] * np.float32(2 * np.pi)).astype(
      np.float64)
  np.testing.assert_allclose(projection.apply(params, s),
                             np.concatenate([np.sin(angles), np.cos(angles)], 1),
                             rtol=1e-5, atol=1e-5)
  assert 8 < np.std(weights) < 32  # N(0, 16^2) draws
  grads = jax.grad(lambda p: projection.apply(p, s).sum())(params)
  assert not np.any(np.asarray(grads["params"]["W"]))


# ------------------------------------------------------------- parameter counts

def _gn(c):
  return 2 * c


def _conv(k, cin, cout):
  return k * k * cin * cout + cout


def _dense(cin, cout):
  return cin * cout + cout


def _res_block(cin, cout, emb, resample=False):
  """BigGAN / EDM block: GN, conv3, Dense(temb), GN, conv3, conv1 shortcut."""
  shortcut = _conv(1, cin, cout) if cin != cout or resample else 0
  return _gn(cin) + _conv(3, cin, cout) + _dense(emb, cout) + _gn(cout) + \
      _conv(3, cout, cout) + shortcut


def _attention(c):
  return _gn(c) + 4 * _dense(c, c)  # q, k, v, output projection


def _hand_count_ddpmpp(nf, ch_mult, num_blocks, attn_res=(16,), size=32,
                       embedding_in=None, channels=3):
  """DDPM++ (Song et al. 2021, App. H) counted layer by layer from its description."""
  emb = 4 * nf
  total = _dense(embedding_in or nf, emb) + _dense(emb, emb)  # embedding MLP
  total += _conv(3, channels, nf)  # input conv
  skips, ch, res = [nf], nf, size
  for level, mult in enumerate(ch_mult):
    for _ in range(num_blocks):
      total += _res_block(ch, nf * mult, emb)
      ch = nf * mult
      total += _attention(ch) if res in attn_res else 0
      skips.append(ch)
    if level < len(ch_mult) - 1:
      total += _res_block(ch, ch, emb, resample=True)
      skips.append(ch)
      res //= 2
  total += 2 * _res_block(ch, ch, emb) + _attention(ch)  # middle
  for level in reversed(range(len(ch_mult))):
    for _ in range(num_blocks + 1):
      total += _res_block(ch + skips.pop(), nf * ch_mult[level], emb)
      ch = nf * ch_mult[level]
    total += _attention(ch) if res in attn_res else 0  # once per level
    if level > 0:
      total += _res_block(ch, ch, emb, resample=True)
      res *= 2
  assert not skips
  return total + _gn(ch) + _conv(3, ch, channels)  # output head


def _ncsnpp_extra(nf, ch_mult, channels=3):
  """NCSN++ minus DDPM++: Fourier W (nf), a 2 nf-wide embedding input, and the
  3x3 convs of the input pyramid ('residual' progressive input)."""
  extra = nf + nf * 4 * nf
  cin = channels
  # The pyramid joins the output of each downsampling block, which keeps the
  # channels of the level it leaves.
  for mult in ch_mult[:-1]:
    extra += _conv(3, cin, nf * mult)
    cin = nf * mult
  return extra


def test_ddpmpp_hand_count_formula_on_a_small_network():
  model = ncsnpp.NCSNpp(**dict(ncsnpp.SCORE_SDE_CIFAR10["vp_ddpmpp_continuous"],
                               nf=32, ch_mult=(1, 2, 3), num_res_blocks=2,
                               attn_resolutions=(8,)))
  assert _num_params(_param_shapes(model, (1, 16, 16, 3))) == _hand_count_ddpmpp(
      32, (1, 2, 3), 2, attn_res=(8,), size=16)


def test_paper_parameter_counts():
  """Counts at 32x32x3, unconditional, against the hand count of each network.

  No parameter count for the score_sde networks could be found in the paper or its
  code; EDM's DDPM++ count, 55.73M, is the number the EDM paper is reported to give
  (Karras et al. 2022, via the project lead; the paper itself was not available
  here), and the hand count reproduces it. Fourier W is a parameter here; EDM
  keeps it as a buffer (not counted), so its NCSN++ count is ours minus 128.
  """
  # sub-VP uses the VP networks.
  assert ncsnpp.SCORE_SDE_CIFAR10["subvp_ddpmpp_continuous"] == \
      ncsnpp.SCORE_SDE_CIFAR10["vp_ddpmpp_continuous"]
  assert ncsnpp.SCORE_SDE_CIFAR10["subvp_ddpmpp_deep_continuous"] == \
      ncsnpp.SCORE_SDE_CIFAR10["vp_ddpmpp_deep_continuous"]
  counts = {name: _num_params(_param_shapes(ncsnpp.score_sde_cifar10(name)))
            for name in ncsnpp.SCORE_SDE_CIFAR10 if not name.startswith("subvp")}
  counts["edm_ddpmpp"] = _num_params(_param_shapes(ncsnpp.edm_cifar10("ddpmpp")))
  counts["edm_ncsnpp"] = _num_params(_param_shapes(ncsnpp.edm_cifar10("ncsnpp")))

  for depth, suffix in ((4, ""), (8, "_deep")):
    ddpmpp = _hand_count_ddpmpp(128, (1, 2, 2, 2), depth)
    assert counts[f"vp_ddpmpp{suffix}_continuous"] == ddpmpp
    assert counts[f"ve_ncsnpp{suffix}_continuous"] == ddpmpp + _ncsnpp_extra(
        128, (1, 2, 2, 2))
  # EDM: channel_mult (2, 2, 2), plus a bias-free Linear of the 9 augment labels.
  edm_ddpmpp = _hand_count_ddpmpp(128, (2, 2, 2), 4) + 9 * 128
  assert counts["edm_ddpmpp"] == edm_ddpmpp
  assert round(counts["edm_ddpmpp"] / 1e6, 2) == 55.73
  # NCSN++: 256-wide noise embedding (+128 * 512 in map_layer0, +9 * 128 in
  # map_augment), Fourier W of 128, and the residual encoder's two 3x3 convs.
  assert counts["edm_ncsnpp"] == (edm_ddpmpp + 128 * 512 + 9 * 128 + 128
                                  + _conv(3, 3, 256) + _conv(3, 256, 256))
  # The table in the module docstring is what these tests measured.
  for name, count in ncsnpp.PARAM_COUNTS_CIFAR10.items():
    assert counts[name] == count, name


def test_class_conditioning_adds_the_expected_parameters():
  base = _num_params(_param_shapes(ncsnpp.score_sde_cifar10("vp_ddpmpp_continuous")))
  model = ncsnpp.score_sde_cifar10("vp_ddpmpp_continuous", num_classes=10)
  x, t, y = jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, y, train=False))
  assert _num_params(shapes) == base + 11 * 512  # 10 classes + the null label


# ------------------------------------------------------------- full networks

TINY_NCSNPP = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,))
TINY_SONG = dict(model_channels=16, channel_mult=(1, 2), num_blocks=1,
                 attn_resolutions=(8,))

NCSNPP_VARIANTS = {
    "ve_ncsnpp": dict(ncsnpp.SCORE_SDE_CIFAR10["ve_ncsnpp_continuous"], **TINY_NCSNPP),
    "skips_cat": dict(TINY_NCSNPP, progressive="output_skip",
                      progressive_input="input_skip", progressive_combine="cat"),
    "residual_pyramids_ddpm_blocks": dict(TINY_NCSNPP, progressive="residual",
                                          progressive_input="residual",
                                          resblock_type="ddpm"),
    "ddpm_blocks_no_fir": dict(TINY_NCSNPP, resblock_type="ddpm", fir=False,
                               embedding_type="positional"),
}


# DDPM++ and NCSN++ themselves run in test_song_unet_computes_the_score_sde_network.
@pytest.mark.parametrize("name,num_classes", [
    ("ve_ncsnpp", 3), ("skips_cat", 3), ("residual_pyramids_ddpm_blocks", 0),
    ("ddpm_blocks_no_fir", 0)])
def test_ncsnpp_output_shape_and_dtype(name, num_classes, fast_compile):
  model = ncsnpp.NCSNpp(**NCSNPP_VARIANTS[name], num_classes=num_classes,
                        out_channels=2)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  labels = jnp.array([0.5, -2.0])
  y = jnp.array([0, 3]) if num_classes else None  # 3 is the null label
  params = _random_params(model, x, labels, y)
  out = _apply(model, params, x, labels, y, train=True)
  assert out.shape == (2, 16, 16, 2) and out.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(out)))


@pytest.mark.parametrize("arch,coders", [("ddpmpp", ("skip", "skip")),
                                         ("ncsnpp", ("residual", "standard"))])
def test_song_unet_output_shape_and_dtype(arch, coders, fast_compile):
  model = ncsnpp.edm_cifar10(arch, **TINY_SONG, num_classes=10, label_dropout=0.2,
                             encoder_type=coders[0], decoder_type=coders[1])
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  labels, y = jnp.array([0.1, 3.0]), jnp.array([4, 10])
  augment = jax.random.normal(jax.random.key(3), (2, 9))
  params = _random_params(model, x, labels, y)
  out = _apply(model, params, x, labels, y, train=True, augment_labels=augment)
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(out)))


def test_labels_and_dropout_change_the_output(fast_compile):
  model = ncsnpp.NCSNpp(**dict(NCSNPP_VARIANTS["ve_ncsnpp"], num_classes=3,
                               dropout=0.5))
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  labels = jnp.array([0.5, 0.5])
  params = _random_params(model, x, labels, jnp.array([0, 0]))
  forward = jax.jit(lambda y, rng: model.apply(
      {"params": params}, x, labels, y, train=True, rngs={"dropout": rng}))
  same_rng = jax.random.key(5)
  out_0 = np.asarray(forward(jnp.array([0, 0]), same_rng))
  assert np.abs(out_0 - forward(jnp.array([1, 3]), same_rng)).max() > 1e-3
  np.testing.assert_array_equal(out_0, forward(jnp.array([0, 0]), same_rng))
  assert np.abs(out_0 - forward(jnp.array([0, 0]), jax.random.key(6))).max() > 1e-3


@pytest.mark.parametrize("model", [
    ncsnpp.NCSNpp(**NCSNPP_VARIANTS["ve_ncsnpp"], dtype=jnp.bfloat16),
    ncsnpp.edm_cifar10("ncsnpp", **TINY_SONG, dtype=jnp.bfloat16)])
def test_bfloat16_computation_keeps_float32_params(model):
  """Traced only (eval_shape): bf16 convolutions compile slowly on CPU."""
  x = jnp.zeros((1, 16, 16, 3))
  params = _param_shapes(model, x.shape)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
  out = jax.eval_shape(lambda p: model.apply({"params": p}, x, jnp.zeros((1,)),
                                             train=False), params)
  assert out.dtype == jnp.float32 and out.shape == x.shape


def _song_to_ncsnpp(song, num_levels, num_blocks, size, attn_res):
  """Renames SongUNet parameters to the NCSNpp layer that plays the same role."""
  out = {"temb_dense0": song["map_layer0"], "temb_dense1": song["map_layer1"],
         "conv_in": song[f"enc_{size}x{size}_conv"]}
  if "map_noise" in song:
    out["fourier_proj"] = song["map_noise"]

  def block(src, dst):
    p = song[src]
    out[dst] = {"norm1": p["norm0"], "conv1": p["conv0"], "temb_proj": p["affine"],
                "norm2": p["norm1"], "conv2": p["conv1"]}
    if "skip" in p:
      out[dst]["shortcut"] = p["skip"]

  def attention(src, dst):
    p = song[src]
    kernel, bias = p["qkv"]["kernel"][0, 0], p["qkv"]["bias"]
    c = bias.shape[0] // 3
    out[dst] = {"norm": p["norm2"],
                "proj_out": {"kernel": p["proj"]["kernel"][0, 0],
                             "bias": p["proj"]["bias"]}}
    for i, name in enumerate("qkv"):
      part = slice(i * c, (i + 1) * c)  # [q | k | v] along the output channels
      out[dst][name] = {"kernel": kernel[:, part], "bias": bias[part]}

  for level in range(num_levels):
    r = size >> level
    if level > 0:
      block(f"enc_{r}x{r}_down", f"down_{level - 1}_downsample")
      if f"enc_{r}x{r}_aux_residual" in song:
        out[f"down_{level - 1}_pyramid"] = {"conv": song[f"enc_{r}x{r}_aux_residual"]}
    for i in range(num_blocks):
      block(f"enc_{r}x{r}_block{i}", f"down_{level}_block_{i}")
      if r in attn_res:
        attention(f"enc_{r}x{r}_block{i}", f"down_{level}_attn_{i}")
  r = size >> (num_levels - 1)
  block(f"dec_{r}x{r}_in0", "mid_block_0")
  attention(f"dec_{r}x{r}_in0", "mid_attn")
  block(f"dec_{r}x{r}_in1", "mid_block_1")
  for level in reversed(range(num_levels)):
    r = size >> level
    if level < num_levels - 1:
      block(f"dec_{r}x{r}_up", f"up_{level + 1}_upsample")
    for i in range(num_blocks + 1):
      block(f"dec_{r}x{r}_block{i}", f"up_{level}_block_{i}")
    if r in attn_res:
      attention(f"dec_{r}x{r}_block{num_blocks}", f"up_{level}_attn")
  out["out_norm"] = song[f"dec_{size}x{size}_aux_norm"]
  out["out_conv"] = song[f"dec_{size}x{size}_aux_conv"]
  return out


@pytest.mark.parametrize("arch", ["ddpmpp", "ncsnpp"])
def test_song_unet_computes_the_score_sde_network(arch, fast_compile):
  """EDM re-implements DDPM++ / NCSN++ "equivalent to the original": with the same
  weights, SongUNet and NCSNpp must give the same output. The two modules share
  no block code: this checks EDM's [1, 1] filter = naive resampling, the fused
  residual encoder = NCSN++'s 'residual' input pyramid, and the block layouts."""
  song = ncsnpp.edm_cifar10(arch, **TINY_SONG, dropout=0.0, augment_dim=0)
  score_sde = ncsnpp.NCSNpp(
      **TINY_NCSNPP, dropout=0.0, fir=arch == "ncsnpp",
      progressive_input="residual" if arch == "ncsnpp" else "none",
      embedding_type="fourier" if arch == "ncsnpp" else "positional")
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  labels = jnp.array([0.7, -1.3]) if arch == "ncsnpp" else jnp.array([3.0, 900.0])
  song_params = _random_params(song, x, labels, seed=1)
  mapped = _song_to_ncsnpp(song_params, 2, 1, 16, (8,))
  expected_shapes = _param_shapes(score_sde, x.shape)
  assert jax.tree.map(lambda a: a.shape, mapped) == jax.tree.map(
      lambda a: a.shape, expected_shapes)
  want = _apply(song, song_params, x, labels)
  got = _apply(score_sde, mapped, x, labels)
  assert np.abs(np.asarray(want)).max() > 0.1
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_matches_diffusers_ncsnpp(fast_compile):
  """diffusers' port of score_sde's NCSN++ (as used by its ScoreSdeVe pipeline:
  output_skip + input_skip pyramids, FIR, Fourier features of log sigma, output
  divided by sigma) against NCSNpp with the same random weights."""
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  reference = diffusers.UNet2DModel(
      sample_size=16, in_channels=3, out_channels=3, time_embedding_type="fourier",
      down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D"),
      up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D"),
      # diffusers' attention always uses 32 GroupNorm groups: 128 channels there.
      block_out_channels=(32, 128), layers_per_block=1,
      mid_block_scale_factor=math.sqrt(2.0), norm_eps=1e-6, norm_num_groups=None,
      attention_head_dim=None, act_fn="silu").eval()
  generator = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, p in reference.named_parameters():
      noise = torch.randn(p.shape, generator=generator)
      if name == "time_proj.weight":
        continue  # keep its N(0, 16^2) draws
      if "norm" in name and name.endswith("weight"):
        p.copy_(1 + 0.1 * noise)
      elif p.ndim == 1:
        p.copy_(0.1 * noise)
      else:
        p.copy_(noise / math.sqrt(math.prod(p.shape[1:])))
  params = _diffusers_to_ncsnpp(reference.state_dict(), num_levels=2)
  model = ncsnpp.NCSNpp(nf=32, ch_mult=(1, 4), num_res_blocks=1,
                        attn_resolutions=(8,), dropout=0.0, progressive="output_skip",
                        progressive_input="input_skip", progressive_combine="sum")
  x = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype(np.float32)
  sigma = np.array([0.5, 3.0], np.float32)
  with torch.no_grad():
    want = reference(torch.from_numpy(x.transpose(0, 3, 1, 2)),
                     torch.from_numpy(sigma)).sample.numpy().transpose(0, 2, 3, 1)
  want = want * sigma[:, None, None, None]  # undo its scale_by_sigma
  got = _apply(model, params, jnp.asarray(x), jnp.log(sigma))
  assert np.abs(want).max() > 0.5
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def _diffusers_to_ncsnpp(state_dict, num_levels):
  """diffusers UNet2DModel (NCSN++ blocks) state dict -> NCSNpp params."""
  up_level = lambda i: num_levels - 1 - int(i)  # noqa: E731
  renames = [
      (r"^time_proj\.weight$", "fourier_proj.W"),
      (r"^time_embedding\.linear_1", "temb_dense0"),
      (r"^time_embedding\.linear_2", "temb_dense1"),
      (r"^down_blocks\.(\d)\.resnets\.(\d)", lambda m: f"down_{m[1]}_block_{m[2]}"),
      (r"^down_blocks\.(\d)\.attentions\.(\d)", lambda m: f"down_{m[1]}_attn_{m[2]}"),
      (r"^down_blocks\.(\d)\.resnet_down", lambda m: f"down_{m[1]}_downsample"),
      (r"^down_blocks\.(\d)\.skip_conv", lambda m: f"down_{m[1]}_combine.conv"),
      (r"^mid_block\.resnets\.(\d)", lambda m: f"mid_block_{m[1]}"),
      (r"^mid_block\.attentions\.0", "mid_attn"),
      (r"^up_blocks\.(\d)\.resnets\.(\d)",
       lambda m: f"up_{up_level(m[1])}_block_{m[2]}"),
      (r"^up_blocks\.(\d)\.attentions\.0", lambda m: f"up_{up_level(m[1])}_attn"),
      (r"^up_blocks\.(\d)\.resnet_up", lambda m: f"up_{up_level(m[1])}_upsample"),
      (r"^up_blocks\.(\d)\.skip_norm", lambda m: f"up_{up_level(m[1])}_pyramid_norm"),
      (r"^up_blocks\.(\d)\.skip_conv", lambda m: f"up_{up_level(m[1])}_pyramid_conv"),
      (r"^conv_norm_out", "up_0_pyramid_norm"), (r"^conv_out", "up_0_pyramid_conv"),
      (r"\.time_emb_proj", ".temb_proj"), (r"\.conv_shortcut", ".shortcut"),
      (r"\.group_norm", ".norm"), (r"\.to_q", ".q"), (r"\.to_k", ".k"),
      (r"\.to_v", ".v"), (r"\.to_out\.0", ".proj_out"),
  ]
  params = {}
  for key, value in state_dict.items():
    for pattern, replacement in renames:
      key = re.sub(pattern, replacement, key)
    *modules, leaf = key.split(".")
    value = value.numpy()
    if leaf == "weight":
      if value.ndim == 4:  # OIHW -> HWIO
        value, leaf = value.transpose(2, 3, 1, 0), "kernel"
      elif value.ndim == 2:  # [out, in] -> [in, out]
        value, leaf = value.T, "kernel"
      else:
        leaf = "scale"
    node = params
    for module in modules:
      node = node.setdefault(module, {})
    node[leaf] = jnp.asarray(value)
  return params


# ------------------------------------------------------------- bad input

def test_bad_settings_and_inputs_raise_clear_errors():
  x, t = jnp.zeros((2, 16, 16, 3)), jnp.zeros((2,))
  init = lambda model, *args, **kw: jax.eval_shape(  # noqa: E731
      lambda: model.init(jax.random.key(0), *args, train=False, **kw))
  with pytest.raises(ValueError, match="resblock_type"):
    init(ncsnpp.NCSNpp(**TINY_NCSNPP, resblock_type="resnet"), x, t)
  with pytest.raises(ValueError, match="progressive_input"):
    init(ncsnpp.NCSNpp(**TINY_NCSNPP, progressive_input="skip"), x, t)
  with pytest.raises(ValueError, match="not divisible"):
    init(ncsnpp.NCSNpp(**dict(TINY_NCSNPP, ch_mult=(1, 2, 2))),
         jnp.zeros((2, 10, 10, 3)), t)
  with pytest.raises(ValueError, match="noise_labels"):
    init(ncsnpp.NCSNpp(**TINY_NCSNPP), x, jnp.zeros((3,)))
  with pytest.raises(ValueError, match="class-conditional"):
    init(ncsnpp.NCSNpp(**TINY_NCSNPP, num_classes=10), x, t)
  with pytest.raises(ValueError, match="num_classes=0"):
    init(ncsnpp.NCSNpp(**TINY_NCSNPP), x, t, jnp.zeros((2,), jnp.int32))
  with pytest.raises(ValueError, match="encoder_type"):
    init(ncsnpp.SongUNet(**TINY_SONG, encoder_type="pyramid"), x, t)
  with pytest.raises(ValueError, match="augment_labels"):
    init(ncsnpp.SongUNet(**TINY_SONG, augment_dim=9), x, t,
         augment_labels=jnp.zeros((2, 6)))
  with pytest.raises(ValueError, match="Unknown"):
    ncsnpp.score_sde_cifar10("ve_ncsnpp")
