"""python -m convert --from=improved_diffusion: an improved-diffusion UNetModel state
dict -> models/unet.py in configs/iddpm_cifar.py.

No PyPI package implements improved-diffusion's UNetModel, so the reference is written
here: `unet_model_shapes` lists the state dict UNetModel.__init__ registers
(openai/improved-diffusion, improved_diffusion/unet.py) and `reference_output` is its
forward pass in torch.nn.functional, on those tensors in the authors' layout (NCHW,
OIHW convs, the fused qkv Conv1d split per head, GroupNorm(32, C) with epsilon 1e-5,
cosine-first timestep embedding). Random weights under those names are written with
torch.save, converted, and the project's network must give the reference's output.
The published CIFAR-10 file's complete name/shape list
(tests/manifests/improved_diffusion_cifar10.txt) must convert at its full size.
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import flags

torch = pytest.importorskip("torch")
F = torch.nn.functional

from configs import iddpm_cifar  # noqa: E402
from convert import __main__ as cli  # noqa: E402
from convert import improved_diffusion  # noqa: E402
from tests import manifests  # noqa: E402
from tests.convert_testing import (  # noqa: E402
    Reading, assert_fails_before_writing, assert_same_params, cli_flags,
    family_and_abstract_params, restore, save_code_pickle, write_first_half)

IMAGE_SHAPE = (32, 32, 3)
MANIFEST = "improved_diffusion_cifar10"
# The README's CIFAR-10 flags (--image_size 32 --num_channels 128 --num_res_blocks 3
# --learn_sigma True), create_model's channel_mult for 32 px, and the defaults
# (num_heads 4, attention_resolutions "16,8" -> downsample rates 2 and 4,
# use_scale_shift_norm True, conv_resample True).
PUBLISHED = dict(model_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=3,
                 attention_ds=(2, 4), out_channels=6, scale_shift=True)
# Narrow enough for CPU, wide enough that every GroupNorm has UNetModel's 32 groups
# (>= 128 channels); three levels: an Upsample after attention (.2.conv) and one
# without (.1.conv).
SMALL = dict(model_channels=128, channel_mult=(1, 2, 2), num_res_blocks=1,
             attention_ds=(2,), out_channels=6, scale_shift=True)
TOLERANCE = 1e-4   # float32; the sinusoid's angles reach 1000 radians


# ------------------------------------------------- the authors' layout, from their code
def unet_model_shapes(model_channels: int, channel_mult: tuple[int, ...],
                      num_res_blocks: int, attention_ds: tuple[int, ...],
                      out_channels: int, scale_shift: bool, in_channels: int = 3
                      ) -> dict[str, tuple[int, ...]]:
  """UNetModel(...).state_dict()'s names and shapes, in its order (construction
  order; unconditional, conv_resample=True)."""
  shapes: dict[str, tuple[int, ...]] = {}
  emb = 4 * model_channels

  def add(prefix, **tensors):
    shapes.update({f"{prefix}.{name}": shape for name, shape in tensors.items()})

  def conv(prefix, cin, cout, k=3):
    add(prefix, weight=(cout, cin, k, k), bias=(cout,))

  def norm(prefix, c):
    add(prefix, weight=(c,), bias=(c,))

  def resblock(prefix, cin, cout):
    norm(f"{prefix}.in_layers.0", cin)
    conv(f"{prefix}.in_layers.2", cin, cout)
    add(f"{prefix}.emb_layers.1", weight=((2 if scale_shift else 1) * cout, emb),
        bias=((2 if scale_shift else 1) * cout,))
    norm(f"{prefix}.out_layers.0", cout)
    conv(f"{prefix}.out_layers.3", cout, cout)
    if cin != cout:
      conv(f"{prefix}.skip_connection", cin, cout, k=1)

  def attention(prefix, c):
    norm(f"{prefix}.norm", c)
    add(f"{prefix}.qkv", weight=(3 * c, c, 1), bias=(3 * c,))
    add(f"{prefix}.proj_out", weight=(c, c, 1), bias=(c,))

  add("time_embed.0", weight=(emb, model_channels), bias=(emb,))
  add("time_embed.2", weight=(emb, emb), bias=(emb,))
  conv("input_blocks.0.0", in_channels, model_channels)
  chans, ch, ds, k = [model_channels], model_channels, 1, 1
  for level, mult in enumerate(channel_mult):
    for _ in range(num_res_blocks):
      resblock(f"input_blocks.{k}.0", ch, mult * model_channels)
      ch = mult * model_channels
      if ds in attention_ds:
        attention(f"input_blocks.{k}.1", ch)
      chans.append(ch)
      k += 1
    if level != len(channel_mult) - 1:
      conv(f"input_blocks.{k}.0.op", ch, ch)
      chans.append(ch)
      k, ds = k + 1, ds * 2
  resblock("middle_block.0", ch, ch)
  attention("middle_block.1", ch)
  resblock("middle_block.2", ch, ch)
  k = 0
  for level, mult in list(enumerate(channel_mult))[::-1]:
    for i in range(num_res_blocks + 1):
      resblock(f"output_blocks.{k}.0", ch + chans.pop(), model_channels * mult)
      ch, j = model_channels * mult, 1
      if ds in attention_ds:
        attention(f"output_blocks.{k}.1", ch)
        j = 2
      if level and i == num_res_blocks:
        conv(f"output_blocks.{k}.{j}.conv", ch, ch)
        ds //= 2
      k += 1
  norm("out.0", ch)
  conv("out.2", model_channels, out_channels)
  return shapes


def reference_output(sd: Reading, x: np.ndarray, t: np.ndarray, *,
                     channel_mult: tuple[int, ...], num_res_blocks: int,
                     attention_ds: tuple[int, ...], num_heads: int,
                     qkv_order: str = "legacy") -> np.ndarray:
  """UNetModel.forward(x, t) on the state dict's tensors: NHWC numpy in and out."""
  def group_norm(h, prefix):
    return F.group_norm(h, 32, sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], eps=1e-5)

  def conv(h, prefix, stride=1):
    weight = sd[f"{prefix}.weight"]
    return F.conv2d(h, weight, sd[f"{prefix}.bias"], stride=stride,
                    padding=weight.shape[-1] // 2)

  def resblock(h, prefix):
    out = conv(F.silu(group_norm(h, f"{prefix}.in_layers.0")), f"{prefix}.in_layers.2")
    e = F.linear(F.silu(emb), sd[f"{prefix}.emb_layers.1.weight"],
                 sd[f"{prefix}.emb_layers.1.bias"])[:, :, None, None]
    if e.shape[1] == 2 * out.shape[1]:       # use_scale_shift_norm
      scale, shift = torch.chunk(e, 2, dim=1)
      out = group_norm(out, f"{prefix}.out_layers.0") * (1 + scale) + shift
    else:
      out = group_norm(out + e, f"{prefix}.out_layers.0")
    out = conv(F.silu(out), f"{prefix}.out_layers.3")
    if f"{prefix}.skip_connection.weight" in sd:
      h = conv(h, f"{prefix}.skip_connection")
    return h + out

  def attention(h, prefix):
    b, c, height, width = h.shape
    flat = h.reshape(b, c, -1)
    qkv = F.conv1d(group_norm(flat, f"{prefix}.norm"), sd[f"{prefix}.qkv.weight"],
                   sd[f"{prefix}.qkv.bias"])
    d = c // num_heads
    if qkv_order == "legacy":   # heads first, then q, k, v
      q, k, v = qkv.reshape(b * num_heads, 3 * d, -1).split(d, dim=1)
    else:                       # q, k, v first, then heads
      q, k, v = (a.reshape(b * num_heads, d, -1) for a in qkv.chunk(3, dim=1))
    scale = 1 / math.sqrt(math.sqrt(d))
    weights = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    a = torch.einsum("bts,bcs->bct", weights, v).reshape(b, c, -1)
    a = F.conv1d(a, sd[f"{prefix}.proj_out.weight"], sd[f"{prefix}.proj_out.bias"])
    return (flat + a).reshape(b, c, height, width)

  with torch.no_grad():
    h = torch.from_numpy(x).permute(0, 3, 1, 2)
    t = torch.from_numpy(t)
    half = sd["time_embed.0.weight"].shape[1] // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    angles = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    emb = F.linear(F.silu(F.linear(emb, sd["time_embed.0.weight"],
                                   sd["time_embed.0.bias"])),
                   sd["time_embed.2.weight"], sd["time_embed.2.bias"])
    h = conv(h, "input_blocks.0.0")
    skips, k, ds = [h], 1, 1
    for level in range(len(channel_mult)):
      for _ in range(num_res_blocks):
        h = resblock(h, f"input_blocks.{k}.0")
        if ds in attention_ds:
          h = attention(h, f"input_blocks.{k}.1")
        skips.append(h)
        k += 1
      if level != len(channel_mult) - 1:
        h = conv(h, f"input_blocks.{k}.0.op", stride=2)
        skips.append(h)
        k, ds = k + 1, ds * 2
    h = resblock(h, "middle_block.0")
    h = attention(h, "middle_block.1")
    h = resblock(h, "middle_block.2")
    k = 0
    for level in reversed(range(len(channel_mult))):
      for i in range(num_res_blocks + 1):
        h = resblock(torch.cat([h, skips.pop()], dim=1), f"output_blocks.{k}.0")
        j = 1
        if ds in attention_ds:
          h = attention(h, f"output_blocks.{k}.1")
          j = 2
        if level and i == num_res_blocks:
          h = conv(F.interpolate(h, scale_factor=2, mode="nearest"),
                   f"output_blocks.{k}.{j}.conv")
          ds //= 2
        k += 1
    h = conv(F.silu(group_norm(h, "out.0")), "out.2")
    return h.permute(0, 2, 3, 1).numpy()


# ------------------------------------------------------------------------ helpers
def project_config(small: bool = True):
  config = iddpm_cifar.get_config()
  if small:
    config.model.ch_mult, config.model.num_res_blocks = (1, 2, 2), 1
    config.model.attn_resolutions = (16,)
  return config


def family_and_params(config):
  return family_and_abstract_params(config, IMAGE_SHAPE)


NORM_WEIGHTS = (".in_layers.0.weight", ".out_layers.0.weight", ".norm.weight",
                "out.0.weight")


def random_state_dict(shapes, seed=0):
  """Normal(0, 0.05) tensors, GroupNorm weights around 1: no layer is zero."""
  tensors = manifests.random_tensors(shapes, seed)
  for name in tensors:
    if name.endswith(NORM_WEIGHTS):
      tensors[name] += 1.0
  return {name: torch.from_numpy(value) for name, value in tensors.items()}


def save(state, path) -> str:
  torch.save(state, path)
  return str(path)


def inputs():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, *IMAGE_SHAPE)).astype(np.float32)
  # The family feeds t * 1000 / T (rescale_timesteps): fractional timesteps.
  t = np.array([3.25, 999.75], np.float32)
  return x, t


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  """(state dict, its file, the converted params) of the narrow network."""
  state = random_state_dict(unet_model_shapes(**SMALL))
  path = save(state, tmp_path_factory.mktemp("small") / "model.pt")
  config = project_config()
  _, abstract = family_and_params(config)
  converted = improved_diffusion.convert(path, config, IMAGE_SHAPE, abstract)
  return state, path, converted


# -------------------------------------------------------------------------- tests
@pytest.mark.parametrize("qkv_order", ["legacy", "new"])
@pytest.mark.integration
def test_output_equals_the_reference_forward_pass(small, qkv_order, tmp_path):
  """improved-diffusion's (legacy) qkv order, and guided-diffusion's
  use_new_attention_order=True (the same tensors read the other way)."""
  state, path, converted = small
  config = project_config()
  family, abstract = family_and_params(config)
  if qkv_order == "new":
    converted = improved_diffusion.convert(path, config, IMAGE_SHAPE, abstract,
                                           qkv_order="new")
  assert converted.num_tensors == len(state)
  assert converted.details == dict(qkv_order=qkv_order, num_heads=4)
  x, t = inputs()
  sd = Reading(state)
  theirs = reference_output(sd, x, t, channel_mult=SMALL["channel_mult"],
                            num_res_blocks=SMALL["num_res_blocks"],
                            attention_ds=SMALL["attention_ds"], num_heads=4,
                            qkv_order=qkv_order)
  assert sd.read == set(state), "the reference reads every tensor of the state dict"
  assert theirs.shape == (2, *IMAGE_SHAPE[:2], 6) and np.abs(theirs).max() > 0.1
  ours = np.asarray(family.model.apply({"params": converted.params}, x, t, None,
                                       train=False))
  difference = float(np.abs(ours - theirs).max())
  assert difference < TOLERANCE, f"max |project - reference| = {difference:.3g}"
  print(f"{qkv_order}: max |project - reference| = {difference:.3g}")


@pytest.mark.integration
def test_reference_is_sensitive_to_what_the_converter_must_get_right(small):
  """The reference tells the attention orders, the embedding convention and the
  downsampling padding apart: a converter or config wrong in any of them fails."""
  state, _, converted = small
  x, t = inputs()
  kwargs = dict(channel_mult=SMALL["channel_mult"], num_heads=4,
                num_res_blocks=SMALL["num_res_blocks"],
                attention_ds=SMALL["attention_ds"])
  legacy = reference_output(Reading(state), x, t, **kwargs)
  new = reference_output(Reading(state), x, t, qkv_order="new", **kwargs)
  assert np.abs(legacy - new).max() > 1e-3
  # (GroupNorm's epsilon, 1e-5 against 1e-6, moves outputs of unit-scale activations
  # by about 1e-4 only: check_config requires it.)
  for field, value in (("timestep_embedding", "ddpm"), ("downsample_padding", "same")):
    config = project_config()
    config.model[field] = value
    family, _ = family_and_params(config)
    ours = np.asarray(family.model.apply({"params": converted.params}, x, t, None,
                                         train=False))
    assert np.abs(ours - legacy).max() > 10 * TOLERANCE, field


def test_manifest_is_unet_model_at_the_published_flags():
  shapes = manifests.read(MANIFEST)
  assert list(shapes.items()) == list(unet_model_shapes(**PUBLISHED).items())
  assert len(shapes) == 446
  # The "50M" of the file name: models/unet.py's count for configs/iddpm_cifar.py.
  assert sum(math.prod(s) for s in shapes.values()) == 52_546_438


def test_full_manifest_converts_with_no_tensor_left_over():
  """configs/iddpm_cifar.py holds the published file's every tensor (shapes only:
  zero-strided arrays, no forward pass)."""
  shapes = manifests.read(MANIFEST)
  config = project_config(small=False)
  _, abstract = family_and_params(config)
  improved_diffusion.check_config(config, abstract, "cifar10_uncond_50M_500K.pt")
  tensors = {name: np.broadcast_to(np.float32(0.0), shape)
             for name, shape in shapes.items()}
  params = improved_diffusion.convert_tensors(tensors, config.model, IMAGE_SHAPE,
                                              abstract, "cifar10_uncond_50M_500K.pt")
  assert jax.tree.structure(params) == jax.tree.structure(abstract)
  for ours, want in zip(jax.tree.leaves(params), jax.tree.leaves(abstract)):
    assert ours.shape == want.shape
  assert sum(x.size for x in jax.tree.leaves(params)) == 52_546_438


def _flags(source, workdir, *overrides) -> flags.FlagValues:
  return cli_flags("improved_diffusion", source, "iddpm_cifar.py", workdir,
                   "--config.model.ch_mult=(1, 2, 2)",
                   "--config.model.num_res_blocks=1",
                   "--config.model.attn_resolutions=(16,)", *overrides)


@pytest.mark.integration
def test_command_line_writes_the_workdir(small, tmp_path):
  state, path, converted = small
  workdir = str(tmp_path / "workdir")
  flag_values = _flags(path, workdir)
  with tfds.testing.mock_data(num_examples=8):
    metadata = cli.run(flag_values)
    record = metadata["converted_from"]
    assert record["format"] == "improved_diffusion"
    assert record["num_tensors"] == len(state) and record["qkv_order"] == "legacy"
    assert list(record["files"]) == [os.path.abspath(path)]
    restored = restore(flag_values.config, workdir)
  assert_same_params(restored.params, converted.params)
  assert_same_params(restored.ema_params, converted.params)


def _malformed(tmp_path, state, case) -> str:
  path = tmp_path / "model.pt"
  state = dict(state)
  if case == "truncated":
    return write_first_half(save(state, path))
  if case == "code":
    return save_code_pickle(path, "time_embed.0.weight", tmp_path)
  if case == "missing":
    del state["output_blocks.3.2.conv.bias"]
  elif case == "extra":
    state["label_emb.weight"] = torch.zeros(10, 512)
  elif case == "unmapped":
    state["input_blocks.9.0.op.weight"] = torch.zeros(3)
  elif case == "shape":
    state["out.2.weight"] = state["out.2.weight"][:, :, :2, :]
  elif case == "qkv":
    state["middle_block.1.qkv.weight"] = state["middle_block.1.qkv.weight"][:-3]
  elif case == "no_scale_shift":
    for name in list(state):
      if "emb_layers.1" in name:
        state[name] = state[name][:state[name].shape[0] // 2]
  return save(state, path)


@pytest.mark.parametrize("case,match", [
    ("missing", r"tensor 'output_blocks.3.2.conv.bias' is missing \(1 missing"),
    ("extra", r"is class-conditional \(label_emb.weight\)"),
    ("unmapped", r"tensor 'input_blocks.9.0.op.weight' has no place in the project's "
                 r"network"),
    ("shape", r"out.2.weight' has shape \(6, 128, 2, 3\), but the project's "
              r"conv_out/kernel needs \(6, 128, 3, 3\)"),
    ("qkv", r"tensor 'middle_block.1.qkv.weight' has shape \(765, 256, 1\), but the "
            r"project's attention needs \(768, 256, 1\)"),
    ("no_scale_shift", r"use_scale_shift_norm=False\), but "
                       r"config.model.scale_shift_norm=True"),
    ("truncated", r"is not a readable PyTorch checkpoint"),
    ("code", r"(?i)holds more than tensors and is refused .*unsupported global"),
])
def test_malformed_files_fail_before_writing(small, tmp_path, case, match):
  state, _, _ = small
  source = _malformed(tmp_path, state, case)
  assert_fails_before_writing(tmp_path, project_config(), source, "improved_diffusion",
                              match)


@pytest.mark.parametrize("field,value,match", [
    ("model.timestep_embedding", "ddpm", "config.model.timestep_embedding='ddpm'"),
    ("model.norm_epsilon", 1e-6, "config.model.norm_epsilon=1e-06"),
    ("model.downsample_padding", "same", "config.model.downsample_padding='same'"),
    ("model.num_groups", 16, "has 16 groups with config.model.num_groups=16"),
    ("model.ch", 256, "input_blocks.0.0.weight has 128 output channels, the project's "
                      "conv_in/kernel 256: check config.model.ch"),
    ("model.num_res_blocks", 2, "tensor 'input_blocks.2.0.op.weight' has no place"),
    ("diffusion.var_type", "fixedlarge", "out.2.weight has 6 output channels"),
    ("diffusion.rescale_timesteps", False, "config.diffusion.rescale_timesteps=False"),
])
def test_configs_that_cannot_hold_the_file_fail(small, field, value, match):
  _, path, _ = small
  config = project_config()
  section, name = field.split(".")
  config[section][name] = value
  _, abstract = family_and_params(config)
  with pytest.raises(ValueError, match=match) as error:
    improved_diffusion.convert(path, config, IMAGE_SHAPE, abstract)
  assert "\n" not in str(error.value)
