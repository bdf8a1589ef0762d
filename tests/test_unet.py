"""Tests for the DDPM U-Net (models/unet.py) and its blocks (models/layers.py)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import layers
from models.unet import UNet

# The paper's CIFAR-10 network: "35.7 million parameters" (Ho et al. 2020, Sec. 4).
CIFAR10_NUM_PARAMS = 35_746_307

TINY = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,))


def _num_params(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _param_shapes(model, image_shape, y=None):
  """Parameter shapes without compiling or allocating anything."""
  x = jnp.zeros(image_shape, jnp.float32)
  t = jnp.zeros(image_shape[:1], jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, y,
                                           train=False))


def _perturb(params, seed: int, scale: float = 0.05):
  """Adds noise to every parameter so no branch is (near) zero as at init.

  numpy noise: jax.random per leaf would cost seconds of compilation.
  """
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda leaf: jnp.asarray(leaf + scale * rng.standard_normal(leaf.shape),
                               jnp.float32), params)


def _init(model, x, t, y=None):
  return jax.jit(lambda rng: model.init(rng, x, t, y, train=False))(
      jax.random.key(1))


@pytest.fixture(scope="module")
def tiny():
  """The tiny network, an input batch and its initial parameters (built once)."""
  model = UNet(**TINY)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))
  jax.config.update("jax_disable_most_optimizations", True)
  try:
    params = _init(model, x, jnp.zeros((2,), jnp.int32))
  finally:
    jax.config.update("jax_disable_most_optimizations", False)
  return model, x, params


# ---------------------------------------------------------------- hand count


def _conv(kernel, cin, cout):
  return kernel * kernel * cin * cout + cout


def _dense(cin, cout):
  return cin * cout + cout


def _norm(channels):
  return 2 * channels  # scale and bias


def _resblock(cin, cout, temb_dim):
  shortcut = _dense(cin, cout) if cin != cout else 0
  return (_norm(cin) + _conv(3, cin, cout) + _dense(temb_dim, cout) +
          _norm(cout) + _conv(3, cout, cout) + shortcut)


def _attention(channels):
  return _norm(channels) + 4 * _dense(channels, channels)  # q, k, v, proj_out


def _hand_count(image_size, image_channels, ch=128, ch_mult=(1, 2, 2, 2),
                num_res_blocks=2, attn_resolutions=(16,), resamp_with_conv=True,
                num_classes=0, **unused):
  """Parameter count of the architecture of Ho et al. 2020, Appendix B."""
  del unused
  temb_dim = 4 * ch
  total = _dense(ch, temb_dim) + _dense(temb_dim, temb_dim)
  if num_classes:
    total += (num_classes + 1) * temb_dim
  total += _conv(3, image_channels, ch)
  channels, size, skip_channels = ch, image_size, [ch]
  for level, mult in enumerate(ch_mult):
    for _ in range(num_res_blocks):
      total += _resblock(channels, ch * mult, temb_dim)
      channels = ch * mult
      total += _attention(channels) if size in attn_resolutions else 0
      skip_channels.append(channels)
    if level != len(ch_mult) - 1:
      total += _conv(3, channels, channels) if resamp_with_conv else 0
      size //= 2
      skip_channels.append(channels)
  total += 2 * _resblock(channels, channels, temb_dim) + _attention(channels)
  for level in reversed(range(len(ch_mult))):
    for _ in range(num_res_blocks + 1):
      total += _resblock(channels + skip_channels.pop(), ch * ch_mult[level],
                         temb_dim)
      channels = ch * ch_mult[level]
      total += _attention(channels) if size in attn_resolutions else 0
    if level != 0:
      total += _conv(3, channels, channels) if resamp_with_conv else 0
      size *= 2
  assert not skip_channels
  return total + _norm(channels) + _conv(3, channels, image_channels)


def test_cifar10_parameter_count_is_the_papers_35_7m():
  n = _num_params(_param_shapes(UNet(), (1, 32, 32, 3)))
  print(f"CIFAR-10 DDPM U-Net parameters: {n}")
  assert round(n / 1e6, 1) == 35.7
  assert n == CIFAR10_NUM_PARAMS
  assert n == _hand_count(32, 3)


@pytest.mark.parametrize("config", [
    dict(TINY),
    dict(TINY, num_classes=10),
    dict(TINY, resamp_with_conv=False),
    dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(8, 4)),
])
def test_parameter_count_matches_hand_count(config):
  labels = jnp.zeros((1,), jnp.int32) if config.get("num_classes") else None
  n = _num_params(_param_shapes(UNet(**config), (1, 16, 16, 1), labels))
  assert n == _hand_count(16, 1, **config)


# ---------------------------------------------------------------- forward


def test_tiny_output_shape_and_dtype(tiny, fast_compile):
  model, x, params = tiny
  t = jnp.array([0, 999])
  out = jax.jit(lambda p: model.apply(p, x, t, train=False))(params)
  assert out.shape == (2, 16, 16, 1) and out.dtype == jnp.float32
  # The output conv starts at scale 1e-10: a fresh network predicts ~0.
  assert float(jnp.max(jnp.abs(out))) < 1e-3


def test_out_channels_and_bfloat16_compute(fast_compile):
  model = UNet(**TINY, out_channels=2, dtype=jnp.bfloat16)
  x = jnp.ones((2, 16, 16, 3))
  t = jnp.array([3.5, 7.0])  # float timesteps (continuous-time models)
  params = _init(model, x, t)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
  out = jax.jit(lambda p: model.apply(p, x, t, train=False))(_perturb(params, 1))
  assert out.shape == (2, 16, 16, 2) and out.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out)))


def test_class_conditional(fast_compile):
  model = UNet(**TINY, num_classes=10)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))
  t = jnp.array([10, 10])
  params = _init(model, x, t, jnp.array([0, 1]))
  assert params["params"]["class_embed"]["embedding"].shape == (11, 64)
  apply = jax.jit(lambda p, y: model.apply(p, x, t, y, train=False))
  params = _perturb(params, 2)
  out_a = apply(params, jnp.array([3, 10]))  # 10 = the null label
  out_b = apply(params, jnp.array([4, 10]))
  assert out_a.shape == (2, 16, 16, 1)
  assert float(jnp.max(jnp.abs(out_a[0] - out_b[0]))) > 1e-3  # depends on y
  np.testing.assert_allclose(out_a[1], out_b[1], atol=1e-6)  # per example


@pytest.mark.parametrize("model,x_shape,y,match", [
    (UNet(ch_mult=(1, 2, 2)), (1, 18, 16, 1), None, "divisible by 4"),
    (UNet(ch_mult=(1, 2)), (1, 16, 15, 1), None, "divisible by 2"),
    (UNet(), (16, 16, 1), None, "NHWC"),
    (UNet(num_classes=10), (1, 16, 16, 1), None, "pass integer labels"),
    (UNet(), (1, 16, 16, 1), np.zeros((1,), np.int32), "num_classes=0"),
    (UNet(num_classes=10), (1, 16, 16, 1), np.zeros((1,)),
     "y must be integer labels"),
])
def test_bad_input_raises_before_compiling(model, x_shape, y, match):
  with pytest.raises(ValueError, match=match):
    _param_shapes(model, x_shape, y)


def test_bad_timestep_shape_raises():
  with pytest.raises(ValueError, match=r"t must have shape \[batch\]"):
    jax.eval_shape(lambda: UNet(**TINY).init(
        jax.random.key(0), jnp.zeros((2, 16, 16, 1)), jnp.zeros((3,)),
        train=False))


def test_output_depends_on_t(tiny, fast_compile):
  model, x, params = tiny
  params = _perturb(params, 3)
  apply = jax.jit(lambda t: model.apply(params, x, t, train=False))
  out_early, out_late = apply(jnp.array([1, 1])), apply(jnp.array([1, 500]))
  np.testing.assert_allclose(out_early[0], out_late[0], atol=1e-6)
  assert float(jnp.max(jnp.abs(out_early[1] - out_late[1]))) > 1e-3


def test_dropout(tiny, fast_compile):
  _, x, params = tiny
  model = UNet(**TINY, dropout=0.5)  # dropout does not change the parameters
  t = jnp.array([5, 50])
  params = _perturb(params, 4)
  apply = jax.jit(lambda rng, train: model.apply(
      params, x, t, train=train, rngs={"dropout": rng}), static_argnums=1)
  np.testing.assert_array_equal(apply(jax.random.key(0), False),
                                apply(jax.random.key(1), False))
  train_a, train_b = apply(jax.random.key(0), True), apply(jax.random.key(1), True)
  np.testing.assert_array_equal(train_a, apply(jax.random.key(0), True))
  assert float(jnp.max(jnp.abs(train_a - train_b))) > 1e-3


@pytest.mark.integration   # compiles the network four times
def test_remat_and_fused_attention_change_neither_outputs_nor_gradients(tiny, fast_compile):
  """Rematerialized ResNet blocks and jax.nn.dot_product_attention compute the same
  function with the same parameter tree: outputs and gradients (dropout on, so the
  recomputed forward pass must redraw the same masks) agree with the plain U-Net."""
  _, x, params = tiny
  params = _perturb(params, 5)
  t = jnp.array([5, 50])

  def loss_and_grad(model):
    def loss(p):
      out = model.apply(p, x, t, train=True, rngs={"dropout": jax.random.key(2)})
      return jnp.mean(jnp.square(out - x)), out
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

  (want_loss, want_out), want_grad = loss_and_grad(UNet(**TINY, dropout=0.3))
  for options in (dict(remat=True), dict(fused_attention=True)):
    model = UNet(**TINY, dropout=0.3, **options)
    assert jax.tree.structure(_init(model, x, t)) == jax.tree.structure(params)
    (got_loss, got_out), got_grad = loss_and_grad(model)
    np.testing.assert_allclose(got_out, want_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 got_grad, want_grad)


def test_fused_multi_head_attention_matches_numpy_reference():
  block = layers.AttentionBlock(num_groups=2, num_heads=2, fused=True)
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
  params = _perturb(jax.jit(block.init)(jax.random.key(1), x), 2, scale=0.5)
  as_numpy = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
  want = _reference_attention(np.asarray(x, np.float64), as_numpy, 2, heads=2)
  np.testing.assert_allclose(block.apply(params, x), want, rtol=1e-4, atol=1e-4)


def test_initialisation_follows_the_reference(tiny):
  """fan_avg uniform: bound sqrt(3 * scale / ((fan_in + fan_out) / 2))."""
  params = tiny[2]["params"]

  def bound(kernel, scale):
    receptive = math.prod(kernel.shape[:-2])
    fan_avg = receptive * (kernel.shape[-2] + kernel.shape[-1]) / 2
    return math.sqrt(3 * scale / fan_avg)

  block = params["down_1_block_0"]
  for kernel, scale in [(params["conv_in"]["kernel"], 1.0),
                        (block["conv1"]["kernel"], 1.0),
                        (block["nin_shortcut"]["kernel"], 1.0),
                        (params["temb_dense0"]["kernel"], 1.0),
                        (block["conv2"]["kernel"], 1e-10),
                        (params["down_1_attn_0"]["proj_out"]["kernel"], 1e-10),
                        (params["conv_out"]["kernel"], 1e-10)]:
    limit = bound(kernel, scale)
    assert float(jnp.max(jnp.abs(kernel))) <= limit
    # Uniform on [-limit, limit] has standard deviation limit / sqrt(3).
    np.testing.assert_allclose(float(jnp.std(kernel)), limit / math.sqrt(3),
                               rtol=0.25)
  np.testing.assert_array_equal(block["conv1"]["bias"], 0.0)


# ---------------------------------------------------------------- layers


def _reference_timestep_embedding(timesteps, dim):
  """tensor2tensor get_timestep_embedding, written out element by element."""
  half = dim // 2
  out = np.zeros((len(timesteps), dim))
  for b, t in enumerate(timesteps):
    for i in range(half):
      frequency = 10000.0**(-i / (half - 1))
      out[b, i] = math.sin(t * frequency)
      out[b, half + i] = math.cos(t * frequency)
  return out


@pytest.mark.parametrize("dim", [128, 33, 4])
def test_timestep_embedding_matches_reference(dim):
  timesteps = np.array([0, 1, 17, 250.5, 999])
  got = layers.timestep_embedding(jnp.asarray(timesteps), dim)
  assert got.shape == (len(timesteps), dim) and got.dtype == jnp.float32
  # float32 angles up to ~1000 rad carry ~1e-4 rounding error.
  np.testing.assert_allclose(got, _reference_timestep_embedding(timesteps, dim),
                             rtol=0, atol=2e-4)


@pytest.mark.parametrize("channels,groups", [
    (128, 32), (512, 32), (384, 32), (96, 24), (48, 12), (16, 4), (8, 2), (3, 1),
])
def test_num_norm_groups(channels, groups):
  got = layers.num_norm_groups(channels, 32)
  assert got == groups
  assert channels % got == 0 and (channels < 4 or channels // got >= 4)


def _reference_group_norm(x, scale, bias, groups, eps=1e-6):
  batch, height, width, channels = x.shape
  g = x.reshape(batch, height * width, groups, channels // groups)
  mean = g.mean(axis=(1, 3), keepdims=True)
  var = g.var(axis=(1, 3), keepdims=True)
  g = (g - mean) / np.sqrt(var + eps)
  return g.reshape(x.shape) * scale + bias


def _reference_attention(x, p, groups, heads=1, context=None, context_mask=None):
  """Attention over pixels, softmax over keys, logits / sqrt(C / heads) per head;
  with a context, its real tokens (context_mask) are extra keys and values."""
  batch, height, width, channels = x.shape
  h = _reference_group_norm(x, p["norm"]["scale"], p["norm"]["bias"], groups)
  h = h.reshape(batch, height * width, channels)
  q, k, v = (h @ p[n]["kernel"] + p[n]["bias"] for n in ("q", "k", "v"))
  out = np.zeros_like(q)
  d = channels // heads
  for b in range(batch):
    keys, values = list(k[b]), list(v[b])
    if context is not None:
      for token, real in zip(context[b], context_mask[b]):
        if real:
          keys.append(token @ p["context_k"]["kernel"] + p["context_k"]["bias"])
          values.append(token @ p["context_v"]["kernel"] + p["context_v"]["bias"])
    keys, values = np.asarray(keys), np.asarray(values)
    for i in range(height * width):
      for head in range(heads):
        c = slice(head * d, (head + 1) * d)
        logits = np.array([q[b, i, c] @ key[c] for key in keys])
        logits /= math.sqrt(d)
        weights = np.exp(logits - logits.max())
        out[b, i, c] = (weights / weights.sum()) @ values[:, c]
  out = out @ p["proj_out"]["kernel"] + p["proj_out"]["bias"]
  return x + out.reshape(x.shape)


def _attention_setup():
  block = layers.AttentionBlock(num_groups=2)  # 8 channels: 2 groups of 4
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
  params = _perturb(jax.jit(block.init)(jax.random.key(1), x), 2, scale=0.5)
  return block, x, params


def test_attention_matches_numpy_reference():
  block, x, params = _attention_setup()
  want = _reference_attention(
      np.asarray(x, np.float64),
      jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"]), 2)
  np.testing.assert_allclose(block.apply(params, x), want, rtol=1e-4, atol=1e-4)


def test_multi_head_attention_matches_numpy_reference():
  block = layers.AttentionBlock(num_groups=2, num_heads=4)
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
  params = _perturb(jax.jit(block.init)(jax.random.key(1), x), 2, scale=0.5)
  as_numpy = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
  want = _reference_attention(np.asarray(x, np.float64), as_numpy, 2, heads=4)
  np.testing.assert_allclose(block.apply(params, x), want, rtol=1e-4, atol=1e-4)
  # Four heads of 2 channels differ from one head of 8 with the same weights.
  one_head = layers.AttentionBlock(num_groups=2).apply(params, x)
  assert float(jnp.max(jnp.abs(one_head - block.apply(params, x)))) > 1e-3
  with pytest.raises(ValueError, match="num_heads=3"):
    layers.AttentionBlock(num_groups=2, num_heads=3).init(jax.random.key(1), x)


def test_cross_attention_matches_numpy_reference_and_ignores_padding():
  """Context tokens join the keys and values (GLIDE); padded tokens count for
  nothing, so an all-padding context is exactly self-attention."""
  block = layers.AttentionBlock(num_groups=2, num_heads=2)
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
  context = jax.random.normal(jax.random.key(1), (2, 5, 6))
  mask = jnp.asarray([[True, True, True, False, False], [True] * 5])
  params = _perturb(jax.jit(block.init)(jax.random.key(2), x, context, mask), 3,
                    scale=0.5)
  as_numpy = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
  want = _reference_attention(np.asarray(x, np.float64), as_numpy, 2, heads=2,
                              context=np.asarray(context, np.float64),
                              context_mask=np.asarray(mask))
  got = block.apply(params, x, context, mask)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  fused = layers.AttentionBlock(num_groups=2, num_heads=2, fused=True)
  np.testing.assert_allclose(fused.apply(params, x, context, mask), got, rtol=1e-5,
                             atol=1e-5)
  # Changing a padded token changes nothing; changing a real one does.
  moved = context.at[0, 3].add(5.0)
  np.testing.assert_array_equal(block.apply(params, x, moved, mask), got)
  assert float(jnp.max(jnp.abs(block.apply(params, x, context.at[0, 1].add(5.0),
                                           mask) - got))) > 1e-3
  no_tokens = jnp.zeros_like(mask)
  self_only = {"params": {k: v for k, v in params["params"].items()
                          if not k.startswith("context_")}}
  np.testing.assert_allclose(block.apply(params, x, context, no_tokens),
                             block.apply(self_only, x), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="context_mask"):
    block.apply(params, x, context, mask[:, :3])


def test_cross_attention_unet_needs_context_and_uses_it(fast_compile):
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))
  t = jnp.array([5, 50])
  context = jax.random.normal(jax.random.key(1), (2, 3, 4))
  mask = jnp.ones((2, 3), bool)
  model = UNet(**TINY, cross_attention=True)
  params = _perturb(jax.jit(lambda r: model.init(r, x, t, train=False, context=context,
                                                 context_mask=mask))(jax.random.key(2)), 4)
  names = [n for n in params["params"] if "attn" in n]
  assert names and all("context_k" in params["params"][n] for n in names)
  apply = jax.jit(lambda c: model.apply(params, x, t, train=False, context=c,
                                        context_mask=mask))
  assert float(jnp.max(jnp.abs(apply(context) - apply(context + 1.0)))) > 1e-4
  with pytest.raises(ValueError, match="needs context"):
    model.apply(params, x, t, train=False)
  with pytest.raises(ValueError, match="needs context"):
    UNet(**TINY).init(jax.random.key(0), x, t, train=False, context=context)


def test_attention_is_permutation_equivariant():
  block, x, params = _attention_setup()
  perm = np.random.default_rng(0).permutation(16)
  flat = x.reshape(2, 16, 8)
  permuted = flat[:, perm].reshape(x.shape)
  out = block.apply(params, x).reshape(2, 16, 8)
  out_permuted = block.apply(params, permuted).reshape(2, 16, 8)
  np.testing.assert_allclose(out_permuted, out[:, perm], rtol=1e-5, atol=1e-5)
  assert float(jnp.max(jnp.abs(out - flat))) > 1e-2  # not the identity


def _reference_conv(x, kernel, bias, stride=1):
  """TF 'SAME' convolution: out = ceil(n / stride), extra padding at the end."""
  k = kernel.shape[0]
  batch, height, width, _ = x.shape
  out_h, out_w = -(-height // stride), -(-width // stride)
  pad_h = max((out_h - 1) * stride + k - height, 0)
  pad_w = max((out_w - 1) * stride + k - width, 0)
  x = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                 (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
  out = np.zeros((batch, out_h, out_w, kernel.shape[-1])) + bias
  for i in range(out_h):
    for j in range(out_w):
      patch = x[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
      out[:, i, j] += np.einsum("bhwc,hwcd->bd", patch, kernel)
  return out


def _silu(x):
  return x / (1 + np.exp(-x))


def test_resnet_block_matches_numpy_reference(fast_compile):
  block = layers.ResnetBlock(out_channels=8, dropout=0.0, num_groups=2)
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
  temb = jax.random.normal(jax.random.key(1), (2, 16))
  params = _perturb(
      jax.jit(lambda: block.init(jax.random.key(2), x, temb, train=False))(),
      5, scale=0.3)
  got = jax.jit(lambda p: block.apply(p, x, temb, train=False))(params)
  as_numpy = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
  # 4 input channels -> 1 group; 8 output channels -> 2 groups of 4.
  norm_groups = {"norm1": 1, "norm2": 2}
  assert [layers.num_norm_groups(c, 2) for c in (4, 8)] == list(
      norm_groups.values())
  want = _reference_resnet_block(np.asarray(x, np.float64),
                                        np.asarray(temb, np.float64),
                                        as_numpy, norm_groups)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_scale_shift_resnet_block_matches_numpy_reference(fast_compile):
  """Improved DDPM's block: norm2(h) * (1 + scale) + shift, (scale, shift) = Dense(temb)."""
  block = layers.ResnetBlock(out_channels=8, num_groups=2, scale_shift_norm=True)
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
  temb = jax.random.normal(jax.random.key(1), (2, 16))
  params = _perturb(
      jax.jit(lambda: block.init(jax.random.key(2), x, temb, train=False))(), 5, scale=0.3)
  assert params["params"]["temb_proj"]["kernel"].shape == (16, 16)
  got = jax.jit(lambda p: block.apply(p, x, temb, train=False))(params)
  as_numpy = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
  want = _reference_resnet_block(np.asarray(x, np.float64), np.asarray(temb, np.float64),
                                 as_numpy, {"norm1": 1, "norm2": 2}, scale_shift=True)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _reference_resnet_block(x, temb, p, norm_groups, scale_shift=False):
  h = _silu(_reference_group_norm(x, p["norm1"]["scale"], p["norm1"]["bias"],
                                  norm_groups["norm1"]))
  h = _reference_conv(h, p["conv1"]["kernel"], p["conv1"]["bias"])
  emb = (_silu(temb) @ p["temb_proj"]["kernel"] + p["temb_proj"]["bias"])[:, None, None, :]
  if scale_shift:
    scale, shift = emb[..., :emb.shape[-1] // 2], emb[..., emb.shape[-1] // 2:]
    h = _reference_group_norm(h, p["norm2"]["scale"], p["norm2"]["bias"],
                              norm_groups["norm2"]) * (1 + scale) + shift
  else:
    h = _reference_group_norm(h + emb, p["norm2"]["scale"], p["norm2"]["bias"],
                              norm_groups["norm2"])
  h = _silu(h)
  h = _reference_conv(h, p["conv2"]["kernel"], p["conv2"]["bias"])
  shortcut = x @ p["nin_shortcut"]["kernel"] + p["nin_shortcut"]["bias"]
  return shortcut + h


def test_strided_downsample_matches_tf_same_padding(fast_compile):
  x = jax.random.normal(jax.random.key(0), (1, 6, 4, 3))
  down = layers.Downsample(with_conv=True)
  params = _perturb(jax.jit(down.init)(jax.random.key(1), x), 6, scale=0.3)
  conv = jax.tree.map(lambda a: np.asarray(a, np.float64),
                      params["params"]["conv"])
  want = _reference_conv(np.asarray(x, np.float64), conv["kernel"],
                         conv["bias"], stride=2)
  np.testing.assert_allclose(jax.jit(down.apply)(params, x), want, rtol=1e-4,
                             atol=1e-4)


def test_resnet_block_starts_as_its_shortcut(fast_compile):
  block = layers.ResnetBlock(out_channels=8, dropout=0.0, num_groups=4)
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
  temb = jax.random.normal(jax.random.key(1), (2, 16))
  init = jax.jit(lambda module: module.init(jax.random.key(2), x, temb,
                                             train=False), static_argnums=0)
  apply = jax.jit(lambda module, p: module.apply(p, x, temb, train=False),
                  static_argnums=0)
  params = init(block)
  nin = params["params"]["nin_shortcut"]
  out = apply(block, params)
  np.testing.assert_allclose(out, np.asarray(x) @ nin["kernel"] + nin["bias"],
                             atol=1e-4)
  same = layers.ResnetBlock(dropout=0.0, num_groups=4)
  same_params = init(same)
  assert "nin_shortcut" not in same_params["params"]
  np.testing.assert_allclose(apply(same, same_params), x, atol=1e-4)


def test_resampling():
  x = jax.random.normal(jax.random.key(0), (1, 4, 6, 3))
  pooled = layers.Downsample(with_conv=False).apply({}, x)
  np.testing.assert_allclose(
      pooled, np.asarray(x).reshape(1, 2, 2, 3, 2, 3).mean(axis=(2, 4)),
      rtol=1e-6)
  repeated = layers.Upsample(with_conv=False).apply({}, x)
  np.testing.assert_array_equal(repeated[:, ::2, ::2], x)
  np.testing.assert_array_equal(repeated[:, 1::2, 1::2], x)
  np.testing.assert_array_equal(repeated[:, ::2, 1::2], x)
  conv_down = layers.Downsample(with_conv=True)
  assert conv_down.init_with_output(jax.random.key(0), x)[0].shape == (1, 2, 3, 3)
  conv_up = layers.Upsample(with_conv=True)
  assert conv_up.init_with_output(jax.random.key(0), x)[0].shape == (1, 8, 12, 3)


def test_coordinate_channels_are_the_input_concatenated_with_pixel_centres(fast_compile):
  """coordinate_channels=True is the plain U-Net fed [x, row, col], with the pixel
  centres' coordinates computed here independently: (i + 1/2) / size * 2 - 1."""
  x = jax.random.normal(jax.random.key(0), (2, 16, 8, 1))
  t = jnp.array([5, 50])
  model = UNet(**TINY, coordinate_channels=True)
  params = _perturb(_init(model, x, t), 6)
  assert params["params"]["conv_in"]["kernel"].shape == (3, 3, 3, TINY["ch"])
  rows = (np.arange(16) + 0.5) / 16 * 2 - 1
  cols = (np.arange(8) + 0.5) / 8 * 2 - 1
  coords = np.stack(np.broadcast_arrays(rows[:, None], cols[None, :]), -1)
  assert coords[0, 0].tolist() == [-15 / 16, -7 / 8]
  x_with_coords = jnp.concatenate([x, jnp.broadcast_to(coords, (2, 16, 8, 2))], -1)
  plain = UNet(**TINY, out_channels=1)
  want = jax.jit(lambda p: plain.apply(p, x_with_coords, t, train=False))(params)
  got = jax.jit(lambda p: model.apply(p, x, t, train=False))(params)
  assert got.shape == x.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
