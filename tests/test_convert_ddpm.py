"""The DDPM paper's other published weights: the 256x256 diffusers uploads and the
authors' own TensorFlow checkpoints (convert/ddpm_tf.py).

The reference is diffusers' UNet2DModel: built from the published 256x256 config.json
for --from=diffusers, and loaded, through a name table written here, with the same
random weights a test writes into a real TF checkpoint under the names of
tests/manifests/ddpm_tf_*.txt for --from=ddpm_tf. Narrow widths keep the networks
small; at the published widths the names and shapes are checked without weights.
"""

import dataclasses
import functools
import math
import os
import re

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import flags
from flax import traverse_util

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from configs import bases, ddpm_bedroom256, ddpm_cat256, ddpm_celebahq256  # noqa: E402
from configs import ddpm_church256, ddpm_cifar  # noqa: E402
from convert import __main__ as cli  # noqa: E402
from convert import ddpm_tf, diffusers_unet  # noqa: E402
from convert import workdir as workdir_lib  # noqa: E402
from tests import manifests  # noqa: E402
from tests.convert_testing import (  # noqa: E402
    assert_converting_again_is_refused, assert_fails_before_writing, cli_flags,
    family_and_abstract_params, restore)

# google/ddpm-cat-256's config.json (diffusers 0.0.4, as uploaded); the church, bedroom
# and CelebA-HQ uploads hold the same network (the paper's one 256x256 architecture).
PUBLISHED_256 = dict(
    _class_name="UNet2DModel", _diffusers_version="0.0.4", act_fn="silu",
    attention_head_dim=None, block_out_channels=[128, 128, 256, 256, 512, 512],
    center_input_sample=False,
    down_block_types=["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D",
                      "AttnDownBlock2D", "DownBlock2D"],
    downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, in_channels=3,
    layers_per_block=2, mid_block_scale_factor=1, norm_eps=1e-06, norm_num_groups=32,
    out_channels=3, sample_size=256, time_embedding_type="positional",
    up_block_types=["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D",
                    "UpBlock2D"])
# Its scheduler_config.json.
PUBLISHED_256_SCHEDULER = dict(
    _class_name="DDPMScheduler", _diffusers_version="0.1.1", beta_end=0.02,
    beta_schedule="linear", beta_start=0.0001, clip_sample=True,
    num_train_timesteps=1000, trained_betas=None, variance_type="fixed_small")
# google/ddpm-cifar10-32's (tests/test_convert.py): the diffusers twin of the TF
# CIFAR-10 network.
PUBLISHED_32 = dict(
    sample_size=32, block_out_channels=[128, 256, 256, 256], layers_per_block=2,
    down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    attention_head_dim=None, norm_eps=1e-6, norm_num_groups=32, downsample_padding=0,
    flip_sin_to_cos=False, freq_shift=1)
NUM_PARAMETERS_256 = 113_673_219    # the paper's "114 million"
NUM_PARAMETERS_32 = 35_746_307      # its "35.7 million"
TOLERANCE = 1e-4                    # float32 (tests/test_convert.py)
TIMESTEPS = np.array([0, 17, 500, 999], np.int32)
CONFIGS_256 = (ddpm_church256, ddpm_bedroom256, ddpm_cat256, ddpm_celebahq256)


# ------------------------------------------------------------------------ helpers
def diffusers_config(published: dict, ch: int, groups: int, size: int) -> dict:
  """`published` without its bookkeeping fields, at base width `ch`, `size` pixels."""
  config = {k: v for k, v in published.items() if not k.startswith("_")}
  scale = ch / published["block_out_channels"][0]
  config.update(block_out_channels=[int(w * scale) for w in published[
      "block_out_channels"]], norm_num_groups=groups, sample_size=size)
  return config


def random_unet(config: dict, seed: int = 0):
  torch.manual_seed(seed)
  unet = diffusers.UNet2DModel(**config)
  with torch.no_grad():   # no zero-initialised layer that would hide a mis-mapped one
    for p in unet.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return unet.eval()


def project_config(module, ch: int, num_groups: int, attn: int | None = None):
  config = module.get_config()
  config.model.ch, config.model.num_groups = ch, num_groups
  if attn is not None:    # attention kept at the published level of a smaller image
    config.model.attn_resolutions = (attn,)
  return config


def family_and_params(config, image_shape):
  return family_and_abstract_params(config, image_shape, num_classes=0)


def max_difference(family, params, unet, image_shape) -> float:
  """max |project - diffusers| over 4 images at 4 timesteps."""
  x = np.random.default_rng(0).standard_normal((4, *image_shape)).astype(np.float32)
  apply = jax.jit(lambda p, x, t: family.model.apply({"params": p}, x, t, None,
                                                     train=False))
  ours = np.asarray(apply(params, x, TIMESTEPS))
  with torch.no_grad():
    theirs = unet(torch.from_numpy(x).permute(0, 3, 1, 2),
                  torch.from_numpy(TIMESTEPS).long()).sample.permute(0, 2, 3, 1).numpy()
  assert np.abs(theirs).max() > 0.1   # a real output, not a zero-initialised one
  return float(np.abs(ours - theirs).max())


def param_count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


# ------------------------------------------------------------ 256x256 diffusers
def test_256_configs_have_the_papers_settings():
  expected = {"ddpm_church256": ("lsun/church_outdoor", True, 1_200_000, "validation"),
              "ddpm_bedroom256": ("lsun/bedroom", False, 2_400_000, "validation"),
              "ddpm_cat256": ("lsun/cat", True, 1_800_000, "train"),
              "ddpm_celebahq256": ("celeb_a_hq/256", True, 500_000, "train")}
  for module in CONFIGS_256:
    c = module.get_config()
    assert (c.data.dataset, c.data.random_flip, c.training.num_train_steps,
            c.data.eval_split) == expected[c.name]
    assert c.data.image_size == 256
    assert (c.model.ch, tuple(c.model.ch_mult), c.model.num_res_blocks,
            tuple(c.model.attn_resolutions), c.model.dropout) == (
                128, (1, 1, 2, 2, 4, 4), 2, (16,), 0.0)
    d = c.diffusion
    assert (d.num_timesteps, d.beta_schedule, d.beta_start, d.beta_end, d.var_type) == (
        1000, "linear", 1e-4, 0.02, "fixedsmall")
    assert (c.optim.optimizer, c.optim.learning_rate, c.optim.warmup_steps,
            c.optim.grad_clip_norm, c.optim.ema_decay, c.training.batch_size) == (
                "adam", 2e-5, 5000, 1.0, 0.9999, 64)


# The four configs hold one network (test_256_configs_have_the_papers_settings):
# church256 maps it in the default tier, the other three in the integration tier.
@pytest.mark.parametrize("module", [
    pytest.param(m, marks=() if m.__name__.endswith("church256") else
                 pytest.mark.integration) for m in CONFIGS_256],
                         ids=lambda m: m.__name__.split(".")[-1])
def test_published_256_config_maps_every_tensor(module):
  """The published config.json passes the check as is, and the published network's
  tensor names and shapes (diffusers' own, on the meta device: no weights) are the
  project's parameters one to one."""
  config = module.get_config()
  image_shape = (256, 256, 3)
  _, abstract = family_and_params(config, image_shape)
  diffusers_unet.check_unet_config(PUBLISHED_256, config.model, image_shape, abstract,
                                   "config.json")
  diffusers_unet.check_scheduler_config(PUBLISHED_256_SCHEDULER, config.diffusion,
                                        "scheduler_config.json")
  with torch.device("meta"):
    unet = diffusers.UNet2DModel(**{k: v for k, v in PUBLISHED_256.items()
                                    if not k.startswith("_")})
  published = {name: tuple(t.shape) for name, t in unet.state_dict().items()}
  mapped = {}
  for key, leaf in traverse_util.flatten_dict(abstract).items():
    name, layout = diffusers_unet.diffusers_name(key, num_levels=6)
    mapped[name] = diffusers_unet.torch_shape(tuple(leaf.shape), layout)
  assert mapped == published
  assert len(published) == 450
  assert param_count(abstract) == NUM_PARAMETERS_256 == sum(
      math.prod(s) for s in published.values())


@pytest.mark.integration
def test_narrow_256_network_output_equals_diffusers(tmp_path, fast_compile):
  """The published 256x256 layout (six levels, attention at level 4 only) at base width
  16 on 64x64 images, where level 4 is 4x4: saved by diffusers, converted, run."""
  image_shape = (64, 64, 3)
  unet = random_unet(diffusers_config(PUBLISHED_256, ch=16, groups=4, size=64))
  unet.save_pretrained(tmp_path)
  config = project_config(ddpm_church256, ch=16, num_groups=4, attn=4)
  family, abstract = family_and_params(config, image_shape)
  converted = diffusers_unet.convert(str(tmp_path), config.model, config.diffusion,
                                     image_shape, abstract)
  assert converted.num_tensors == 450 == len(unet.state_dict())
  difference = max_difference(family, converted.params, unet, image_shape)
  assert difference < TOLERANCE, f"max |project - diffusers| = {difference:.3g}"
  print(f"diffusers 256x256 layout: max |project - diffusers| = {difference:.3g}")


# ------------------------------------------------------------ TF checkpoints
def narrow(shapes: dict, factor: int) -> dict:
  """The manifest's shapes at 1/factor of its widths (every width is a multiple of 128;
  kernel sizes and the 3 image channels stay)."""
  return {name: tuple(d // factor if d % 128 == 0 else d for d in shape)
          for name, shape in shapes.items()}


def write_tf_checkpoint(prefix: str, tensors: dict) -> None:
  """A TF2 checkpoint (.index + .data) holding exactly `tensors` under their names."""
  names = sorted(tensors)
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names,
                    shape_and_slices=[""] * len(names),
                    tensors=[tensors[n] for n in names])


def checkpoint_tensors(shapes: dict, seed: int = 0, step: int = 790_000) -> dict:
  """Random tensors under the manifest's names, raw, EMA and Adam all different, at the
  scales of a trained network (weights ~ 1/sqrt(fan-in), norm scales ~ 1), so that
  every layer, attention's softmax among them, shapes the output."""
  tensors = manifests.random_tensors(shapes, seed, scale=1.0)
  for name, value in tensors.items():
    leaf = re.sub(r"/(Adam|Adam_1|ExponentialMovingAverage)$", "", name).split("/")[-1]
    if leaf == "W":
      tensors[name] = value / np.sqrt(math.prod(value.shape[:-1]))
    elif leaf == "gamma":
      tensors[name] = 1.0 + 0.1 * value
    else:
      tensors[name] = 0.1 * value
    tensors[name] = tensors[name].astype(np.float32)
  tensors["global_step"] = np.int64(step)
  tensors["beta1_power"], tensors["beta2_power"] = np.float32(0.9), np.float32(0.999)
  return tensors


# diffusion_tf's layer names -> (diffusers' module name, kind of layer).
_TF_LAYERS = {"norm1": ("norm1", "norm"), "conv1": ("conv1", "conv"),
              "temb_proj": ("time_emb_proj", "linear"), "norm2": ("norm2", "norm"),
              "conv2": ("conv2", "conv"), "nin_shortcut": ("conv_shortcut", "conv1x1"),
              "norm": ("group_norm", "norm"), "q": ("to_q", "linear"),
              "k": ("to_k", "linear"), "v": ("to_v", "linear"),
              "proj_out": ("to_out.0", "linear")}
_TF_TOP = {"conv_in": ("conv_in", "conv"), "conv_out": ("conv_out", "conv"),
           "norm_out": ("conv_norm_out", "norm"),
           "temb/dense0": ("time_embedding.linear_1", "linear"),
           "temb/dense1": ("time_embedding.linear_2", "linear")}
_TF_MID = {"block_1": "mid_block.resnets.0", "attn_1": "mid_block.attentions.0",
           "block_2": "mid_block.resnets.1"}


def diffusers_module(scope: str, num_levels: int) -> tuple[str, str]:
  """(diffusers module, kind) of a diffusion_tf scope such as 'up_1/block_0/conv1',
  read off diffusion_tf/models/unet.py's variable scopes: the test's own table, apart
  from convert/ddpm_tf.py's."""
  if scope in _TF_TOP:
    return _TF_TOP[scope]
  outer, inner, *rest = scope.split("/")
  if outer == "mid":
    block = _TF_MID[inner]
  else:
    side, level = outer.split("_")
    index = int(level) if side == "down" else num_levels - 1 - int(level)
    if inner == f"{side}sample":
      return f"{side}_blocks.{index}.{side}samplers.0.conv", "conv"
    kind, number = inner.split("_")
    block = f"{side}_blocks.{index}.{'resnets' if kind == 'block' else 'attentions'}."
    block += number
  name, kind = _TF_LAYERS[rest[0]]
  return f"{block}.{name}", kind


def diffusers_state_dict(tensors: dict, num_levels: int, suffix: str) -> dict:
  """UNet2DModel's state dict from the TF variables 'model/<scope>/<leaf><suffix>'."""
  state = {}
  for name, value in tensors.items():
    match = re.fullmatch(r"model/(.+)/(W|b|gamma|beta)" + re.escape(suffix), name)
    if not match:
      continue
    module, kind = diffusers_module(match.group(1), num_levels)
    array = np.asarray(value, np.float32)
    if match.group(2) in ("b", "beta"):
      state[f"{module}.bias"] = array
      continue
    if kind == "conv":
      array = array.transpose(3, 2, 0, 1)           # HWIO -> OIHW
    elif kind == "linear":
      array = array.T                               # [in, out] -> [out, in]
    elif kind == "conv1x1":
      array = array.T[:, :, None, None]             # a 1x1 Conv2d in diffusers
    state[f"{module}.weight"] = array
  return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


def reference_unet(published: dict, ch: int, groups: int, size: int, tensors: dict,
                   suffix: str):
  config = diffusers_config(published, ch=ch, groups=groups, size=size)
  unet = diffusers.UNet2DModel(**config)
  unet.load_state_dict(diffusers_state_dict(tensors, len(config["block_out_channels"]),
                                            suffix), strict=True)
  return unet.eval()


@dataclasses.dataclass(frozen=True)
class Case:
  """A narrow network in a published checkpoint's layout."""
  manifest: str
  factor: int         # the manifest's widths / the narrow ones
  config: object      # the project's config module at the published widths
  ch: int
  groups: int         # GroupNorm groups (narrow widths cannot have the authors' 32)
  size: int           # image side
  attn: int | None    # the project's attention resolution at that size
  published: dict     # the diffusers config.json of the same layout


CASES = {
    "cifar10": Case("ddpm_tf_cifar10", 4, ddpm_cifar, 32, 8, 32, None, PUBLISHED_32),
    "256": Case("ddpm_tf_256", 8, ddpm_church256, 16, 4, 64, 4, PUBLISHED_256),
}


def tf_case(name: str, tmp_path, seed: int = 0):
  """(config, image shape, checkpoint prefix, its tensors) of a narrow checkpoint."""
  case = CASES[name]
  tensors = checkpoint_tensors(narrow(manifests.read(case.manifest), case.factor), seed)
  prefix = str(tmp_path / "ckpt" / "model.ckpt-790000")
  os.makedirs(os.path.dirname(prefix), exist_ok=True)
  write_tf_checkpoint(prefix, tensors)
  config = project_config(case.config, case.ch, case.groups, case.attn)
  return config, (case.size, case.size, 3), prefix, tensors


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.integration
def test_tf_checkpoint_output_equals_diffusers(name, tmp_path, fast_compile):
  """Raw weights -> params and EMA -> ema_params, each bit for bit; the network on
  ema_params gives the output of diffusers' UNet2DModel loaded with the EMA tensors."""
  config, image_shape, prefix, tensors = tf_case(name, tmp_path)
  family, abstract = family_and_params(config, image_shape)
  converted = ddpm_tf.convert(prefix, config, image_shape, abstract, groups=None)
  flat_params = traverse_util.flatten_dict(converted.params)
  flat_ema = traverse_util.flatten_dict(converted.ema_params)
  for key in flat_params:
    tf_name, _ = ddpm_tf.tf_name(key)
    np.testing.assert_array_equal(flat_params[key], tensors[tf_name])
    np.testing.assert_array_equal(flat_ema[key], tensors[tf_name + ddpm_tf.EMA_SUFFIX])
  num_network = len(flat_params)
  assert converted.num_tensors == 2 * num_network
  assert converted.details == dict(num_variables=len(tensors),
                                   num_ignored=2 * num_network + 3, ema=True,
                                   global_step=790_000)
  assert sorted(os.path.basename(p) for p in converted.files) == [
      "model.ckpt-790000.data-00000-of-00001", "model.ckpt-790000.index"]
  case = CASES[name]
  unet = reference_unet(case.published, case.ch, case.groups, case.size, tensors,
                        ddpm_tf.EMA_SUFFIX)
  difference = max_difference(family, converted.ema_params, unet, image_shape)
  assert difference < TOLERANCE, f"max |project - diffusers| = {difference:.3g}"
  print(f"{name}: {converted.num_tensors} tensors, max |project - diffusers| = "
        f"{difference:.3g}")


@pytest.mark.parametrize("manifest,module,image_shape,num_parameters", [
    ("ddpm_tf_cifar10", ddpm_cifar, (32, 32, 3), NUM_PARAMETERS_32),
    ("ddpm_tf_256", ddpm_church256, (256, 256, 3), NUM_PARAMETERS_256),
])
def test_published_manifest_maps_every_variable(manifest, module, image_shape,
                                                num_parameters):
  """The released checkpoint's whole variable list at the published config: every
  network variable and its EMA shadow is a project parameter of the same shape, the
  optimizer's and the step are ignored, nothing is left over (names and shapes only)."""
  config = module.get_config()
  _, abstract = family_and_params(config, image_shape)
  ddpm_tf.check_config(config, abstract)      # 32 groups everywhere at these widths
  shapes = manifests.read(manifest)
  network, ema, ignored = ddpm_tf.split_names(list(shapes))
  wanted = {}
  for key, leaf in traverse_util.flatten_dict(abstract).items():
    wanted[ddpm_tf.tf_name(key)[0]] = tuple(leaf.shape)
  assert {name: shapes[name] for name in network} == wanted
  assert {name[:-len(ddpm_tf.EMA_SUFFIX)]: shapes[name] for name in ema} == wanted
  assert len(ignored) == 2 * len(wanted) + 3
  assert sum(math.prod(s) for s in wanted.values()) == num_parameters


# ------------------------------------------------ the command line and the workdir
def narrow_format(monkeypatch):
  """--from=ddpm_tf without the 32-group check, which narrow networks cannot pass."""
  monkeypatch.setitem(workdir_lib.FORMATS, "ddpm_tf", dataclasses.replace(
      ddpm_tf.FORMAT, convert=functools.partial(ddpm_tf.convert, groups=None)))


def _flags(source, workdir, *overrides) -> flags.FlagValues:
  return cli_flags("ddpm_tf", source, "ddpm_cifar.py", workdir, "--config.model.ch=32",
                   "--config.model.num_groups=8", "--step=790000", *overrides)


@pytest.mark.integration
def test_tf_checkpoint_through_the_command_line(tmp_path, monkeypatch, fast_compile):
  """`python -m convert --from=ddpm_tf`: the workdir holds the raw weights as params
  and the EMA weights as ema_params; a second conversion into it is refused."""
  narrow_format(monkeypatch)
  _, _, prefix, tensors = tf_case("cifar10", tmp_path)
  workdir = str(tmp_path / "workdir")
  flag_values = _flags(prefix, workdir)
  with tfds.testing.mock_data(num_examples=4):
    metadata = cli.run(flag_values)
    record = metadata["converted_from"]
    assert record["format"] == "ddpm_tf" and record["global_step"] == 790_000
    assert record["source"] == os.path.abspath(prefix) and len(record["files"]) == 2
    assert metadata["step"] == 790_000
    state = restore(flag_values.config, workdir)
    assert int(state.step) == 790_000
    for tree, suffix in ((state.params, ""), (state.ema_params, ddpm_tf.EMA_SUFFIX)):
      for key, value in traverse_util.flatten_dict(tree).items():
        np.testing.assert_array_equal(np.asarray(value),
                                      tensors[ddpm_tf.tf_name(key)[0] + suffix])
    assert_converting_again_is_refused(_flags(prefix, workdir))


def _malformed(tmp_path, case: str) -> str:
  """The narrow CIFAR-10 checkpoint broken in one way; returns the --source."""
  _, _, prefix, tensors = tf_case("cifar10", tmp_path / "good")
  source = str(tmp_path / "bad" / "model.ckpt-790000")
  os.makedirs(os.path.dirname(source))
  if case in ("truncated_data", "truncated_index", "corrupted_data"):
    for suffix in (".index", ".data-00000-of-00001"):
      with open(prefix + suffix, "rb") as f:
        data = bytearray(f.read())
      if case == f"truncated_{'index' if suffix == '.index' else 'data'}":
        data = data[:len(data) // 2]
      if case == "corrupted_data" and suffix != ".index":
        for i in range(0, len(data), 997):    # every tensor's checksum fails
          data[i] ^= 0xFF
      with open(source + suffix, "wb") as f:
        f.write(data)
    return source
  if case == "directory":
    return os.path.dirname(prefix)
  if case == "missing":        # the variable and its Adam slots; its EMA stays
    for suffix in ("", "/Adam", "/Adam_1"):
      del tensors["model/conv_out/b" + suffix]
  elif case == "missing_ema":
    del tensors["model/conv_out/b/ExponentialMovingAverage"]
  elif case == "extra":
    tensors["model/extra/W"] = np.zeros((3,), np.float32)
  elif case == "unknown":
    tensors["RMSProp_state"] = np.zeros((3,), np.float32)
  elif case == "shape":
    tensors["model/conv_in/W"] = tensors["model/conv_in/W"][:, :2]
  elif case == "integer":
    tensors["model/conv_in/b"] = tensors["model/conv_in/b"].astype(np.int32)
  write_tf_checkpoint(source, tensors)
  return source


@pytest.mark.parametrize("case,match", [
    ("missing", r"tensor 'model/conv_out/b' \(the project's conv_out/bias\) is "
                r"missing"),
    ("missing_ema", r"tensor 'model/conv_out/b/ExponentialMovingAverage' \(the "
                    r"project's conv_out/bias\) is missing"),
    ("extra", r"tensor 'model/extra/W' has no place in the project's network"),
    ("unknown", r"tensor 'RMSProp_state' has no place in the project's network"),
    ("shape", r"tensor 'model/conv_in/W' has shape \(3, 2, 3, 32\), but the project's "
              r"conv_in/kernel needs \(3, 3, 3, 32\)"),
    ("integer", r"tensor 'model/conv_in/b' is int32, not floating point"),
    ("truncated_data", r"is not a readable TensorFlow checkpoint"),
    ("truncated_index", r"is not a readable TensorFlow checkpoint"),
    ("corrupted_data", r"is not a readable TensorFlow checkpoint .*Checksum does not "
                       r"match"),
    ("directory", r"is not a TensorFlow checkpoint: --from=ddpm_tf reads"),
])
def test_malformed_checkpoints_fail_before_writing(tmp_path, monkeypatch, case, match):
  narrow_format(monkeypatch)
  source = _malformed(tmp_path, case)
  config = project_config(ddpm_cifar, ch=32, num_groups=8)
  assert_fails_before_writing(tmp_path, config, source, "ddpm_tf", match,
                              num_examples=4)


def test_no_ema_variables_gives_the_raw_weights_to_both(tmp_path):
  config, image_shape, _, tensors = tf_case("cifar10", tmp_path / "full")
  raw = {n: v for n, v in tensors.items() if not n.endswith(ddpm_tf.EMA_SUFFIX)}
  prefix = str(tmp_path / "model.ckpt-1")
  write_tf_checkpoint(prefix, raw)
  _, abstract = family_and_params(config, image_shape)
  converted = ddpm_tf.convert(prefix, config, image_shape, abstract, groups=None)
  assert converted.ema_params is None and converted.details["ema"] is False


@pytest.mark.parametrize("field,value,match", [
    ("model.num_groups", 16, r"GroupNorm .* has 16 groups .*diffusion_tf's group norms "
                             r"have 32"),
    ("model.num_heads", 4, r"config.model.num_heads=4"),
    ("model.scale_shift_norm", True, r"config.model.scale_shift_norm=True"),
    ("diffusion.num_timesteps", 4000, r"num_timesteps=4000, but the released DDPM"),
    ("diffusion.beta_end", 0.03, r"beta_end=0.03"),
    ("diffusion.prediction", "v", r"prediction='v'"),
])
def test_settings_the_weights_cannot_run_with_fail(field, value, match):
  """What the shapes do not show: group counts, heads, the forward process."""
  config = ddpm_cifar.get_config()
  section, name = field.split(".")
  config[section][name] = value
  _, abstract = family_and_params(config, (32, 32, 3))
  with pytest.raises(ValueError, match=match):
    ddpm_tf.check_config(config, abstract)


def test_only_ddpm_configs_convert_and_adam_slots_need_their_variable():
  assert ddpm_tf.split_names(["model/a/W", "model/a/W/Adam", "model/b/W/Adam_1",
                              "global_step", "model/a/W/ExponentialMovingAverage"]) == (
      ["model/a/W", "model/b/W/Adam_1"], ["model/a/W/ExponentialMovingAverage"],
      ["model/a/W/Adam", "global_step"])
  config = bases.base_config("vae")
  with pytest.raises(ValueError, match=r"family in \('ddpm',\), not 'vae'"):
    workdir_lib.convert_to_workdir(config, "/nonexistent/w", "/nonexistent/ckpt",
                                   source_format="ddpm_tf")


def test_manifest_files_are_sorted_as_a_checkpoint_lists_them():
  for manifest in ("ddpm_tf_cifar10", "ddpm_tf_256"):
    names = list(manifests.read(manifest))
    assert names == sorted(names)
    assert all(re.fullmatch(r"model/[\w/]+|beta[12]_power|global_step", n)
               for n in names)


def test_the_meta_graph_is_never_read(tmp_path):
  """Only .index and .data are read: a graph (.meta) could hold code."""
  config, image_shape, prefix, _ = tf_case("cifar10", tmp_path)
  with open(prefix + ".meta", "wb") as f:
    f.write(b"not a graph")
  _, abstract = family_and_params(config, image_shape)
  converted = ddpm_tf.convert(prefix, config, image_shape, abstract, groups=None)
  assert not any(p.endswith(".meta") for p in converted.files)
