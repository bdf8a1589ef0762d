"""python -m convert for the score family: diffusers NCSN++ folders and score_sde's
PyTorch (.pth) and Flax (msgpack) checkpoints -> models/ncsnpp.py parameters.

References, none of them the code under test:
  - diffusers' UNet2DModel (google/ncsnpp-* layout, narrow widths) with seeded random
    weights written by its own save_pretrained;
  - for score_sde's files, `authors_layout` below, written from reading score_sde's
    NCSNpp.__init__ (both repositories), must reproduce tests/manifests/score_sde_*.txt
    exactly at the published configs; at small widths it names the random tensors.
    `authors_forward` is score_sde_pytorch's NCSNpp.forward written out in torch on
    those named tensors (upfirdn2d as StyleGAN2 defines it); it is itself checked
    against diffusers on the NCSN++ layout diffusers has (output and input pyramids),
    and then it is the reference for the layouts diffusers lacks (CIFAR-10's NCSN++
    residual input pyramid, DDPM++).
Malformed sources fail with one line, before anything is written.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import flags
from flax import serialization, traverse_util

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
F = torch.nn.functional

from configs import ddpmpp_cifar, ncsnpp_256, ncsnpp_cifar  # noqa: E402
from configs import ncsnpp_ffhq1024  # noqa: E402
from convert import __main__ as cli  # noqa: E402
from convert import common, diffusers_ncsnpp, score_sde  # noqa: E402
from tests import manifests  # noqa: E402
from tests.convert_testing import (assert_fails_before_writing,  # noqa: E402
                                   assert_same_params, cli_flags, save_code_pickle,
                                   write_first_half)
from train import modes, score  # noqa: E402
from train.run import Run  # noqa: E402

TOLERANCE = 1e-4    # float32
# google/ncsnpp-church-256's config.json (bedroom, CelebA-HQ, FFHQ-256: the same).
PUBLISHED_256 = dict(
    sample_size=256, in_channels=3, out_channels=3, center_input_sample=True,
    time_embedding_type="fourier", flip_sin_to_cos=True, freq_shift=0,
    block_out_channels=(128, 128, 256, 256, 256, 256, 256), layers_per_block=2,
    down_block_types=("SkipDownBlock2D",) * 4 + ("AttnSkipDownBlock2D",) +
    ("SkipDownBlock2D",) * 2,
    up_block_types=("SkipUpBlock2D",) * 2 + ("AttnSkipUpBlock2D",) +
    ("SkipUpBlock2D",) * 4,
    mid_block_scale_factor=1.41421356237, norm_eps=1e-6, norm_num_groups=None,
    attention_head_dim=None, downsample_padding=1, act_fn="silu")
# google/ncsnpp-ffhq-1024's.
PUBLISHED_1024 = dict(
    PUBLISHED_256, sample_size=1024, block_out_channels=(16, 32, 64, 128, 256, 512, 512,
                                                         512),
    layers_per_block=1,
    down_block_types=("SkipDownBlock2D",) * 6 + ("AttnSkipDownBlock2D",
                                                 "SkipDownBlock2D"),
    up_block_types=("SkipUpBlock2D", "AttnSkipUpBlock2D") + ("SkipUpBlock2D",) * 6)
# The same layout, narrow: 16x16 images, 3 levels; attention at 4x4, where diffusers'
# fixed 32 attention groups need >= 128 channels.
SMALL_256 = dict(PUBLISHED_256, sample_size=16, block_out_channels=(16, 32, 128),
                 down_block_types=("SkipDownBlock2D", "SkipDownBlock2D",
                                   "AttnSkipDownBlock2D"),
                 up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D", "SkipUpBlock2D"))
SMALL_SHAPE = (16, 16, 3)


# ------------------------------------------------------------------- project side
def small_ncsnpp_256(arg: str = "church"):
  config = ncsnpp_256.get_config(arg)
  m = config.model
  m.ch, m.ch_mult, m.num_res_blocks, m.attn_resolutions = 16, (1, 2, 8), 2, (4,)
  config.data.image_size = SMALL_SHAPE[0]
  return config


def small_cifar(config, ch: int = 16):
  """A score_sde CIFAR-10 config at small widths: 3 levels, 1 block, attention at 16."""
  m = config.model
  m.ch, m.ch_mult, m.num_res_blocks, m.num_groups = ch, (1, 2, 2), 1, 32
  return config


def abstract_params(config, image_shape):
  family = score.ScoreSDE(config, image_shape, 0)
  batch = dict(image=np.zeros((1, *image_shape), np.uint8), label=np.zeros(1, np.int32))
  return family, jax.eval_shape(family.init, jax.random.PRNGKey(0), batch).params


_SCORE = {}


def family_score(family, params, x_nhwc, t) -> np.ndarray:
  """train/score.py's score s(x, t), one compiled function per network and SDE."""
  key = repr(family.network) + family.config.sde.to_json()
  if key not in _SCORE:
    _SCORE[key] = jax.jit(lambda p, x, t: family.score_fn(p)(x, t))
  return np.asarray(_SCORE[key](params, jnp.asarray(x_nhwc), jnp.asarray(t)))


def noise_std(family, t) -> np.ndarray:
  """sigma(t) of the family's SDE (VE: the noise level; VP: the std), float32."""
  return np.array(family.sde.sigma(jnp.asarray(t)), np.float32)   # a writable copy


def lazy_zeros(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
  """Zero tensors of the shapes that take no memory (full-size name/shape checks)."""
  return {name: np.broadcast_to(np.float32(0), shape) for name, shape in shapes.items()}


# ------------------------------------------------------------------ diffusers side
def make_unet(seed: int = 0, **config):
  torch.manual_seed(seed)
  unet = diffusers.UNet2DModel(**config)
  with torch.no_grad():   # perturb every weight: no zero-initialised layer hides a bug
    for name, p in unet.named_parameters():
      if name != "time_proj.weight":   # the Fourier frequencies keep their N(0, 16^2)
        p.add_(0.1 * torch.randn_like(p))
  return unet.eval()


def unet_score(unet, x_nhwc: np.ndarray, sigma: np.ndarray) -> np.ndarray:
  """diffusers' output at timesteps = sigma: the score (it divides by sigma)."""
  with torch.no_grad():
    out = unet(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2),
               torch.from_numpy(sigma)).sample
  return out.permute(0, 2, 3, 1).numpy()


def inputs(shape=SMALL_SHAPE, seed: int = 0):
  """Data in [0, 1] and three times from little to much noise."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(0, 1, (3, *shape)).astype(np.float32)
  return x, np.array([0.05, 0.5, 0.95], np.float32)


def per_example(values: np.ndarray) -> np.ndarray:
  return values[:, None, None, None]


@pytest.fixture(scope="module")
def small_unet(tmp_path_factory):
  """(diffusers NCSN++, its save_pretrained folder, the project config, converted)."""
  unet = make_unet(**SMALL_256)
  folder = str(tmp_path_factory.mktemp("ncsnpp"))
  unet.save_pretrained(folder)
  config = small_ncsnpp_256()
  _, abstract = abstract_params(config, SMALL_SHAPE)
  converted = diffusers_ncsnpp.convert(folder, config, SMALL_SHAPE, abstract)
  return unet, folder, config, converted


# ============================================================ diffusers NCSN++
@pytest.mark.integration
def test_diffusers_ncsnpp_output_equals_diffusers(small_unet, fast_compile):
  """train/score.py's score of the converted network, F(x, log sigma_t) / sigma_t,
  against diffusers' UNet2DModel(x, sigma_t), which logs sigma and divides by it
  itself; compared as sigma * score (the networks' raw scale)."""
  unet, folder, config, converted = small_unet
  assert sorted(os.listdir(folder)) == ["config.json",
                                        "diffusion_pytorch_model.safetensors"]
  assert converted.num_tensors == len(unet.state_dict())
  assert converted.ema_params is None
  family, _ = abstract_params(config, SMALL_SHAPE)
  x, t = inputs()
  sigma = noise_std(family, t)
  ours = family_score(family, converted.params, x, t) * per_example(sigma)
  theirs = unet_score(unet, x, sigma) * per_example(sigma)
  assert np.abs(theirs).max() > 0.1
  difference = float(np.abs(ours - theirs).max())
  assert difference < TOLERANCE, f"max |project - diffusers| = {difference:.3g}"
  print(f"diffusers NCSN++: {converted.num_tensors} tensors, "
        f"max |diff| {difference:.3g}")


def test_bin_and_legacy_names_give_the_same_params(small_unet, tmp_path):
  """A .bin, the pre-0.14 attention names and time_proj.W (diffusers 0.0.4 files)."""
  unet, folder, config, converted = small_unet
  _, abstract = abstract_params(config, SMALL_SHAPE)
  state = {k: v.clone() for k, v in unet.state_dict().items()}
  renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
  legacy = collections.OrderedDict()
  for name, value in state.items():
    for new, old in renames.items():
      name = name.replace(f".{new}.", f".{old}.")
    legacy[name] = value
  legacy["time_proj.W"] = legacy["time_proj.weight"].clone()
  assert any(".proj_attn." in n for n in legacy)
  shutil.copy(os.path.join(folder, "config.json"), tmp_path)
  torch.save(legacy, tmp_path / "diffusion_pytorch_model.bin")
  from_bin = diffusers_ncsnpp.convert(str(tmp_path), config, SMALL_SHAPE, abstract)
  assert_same_params(from_bin.params, converted.params)
  del legacy["time_proj.weight"]
  torch.save(legacy, tmp_path / "diffusion_pytorch_model.bin")
  from_w = diffusers_ncsnpp.convert(str(tmp_path), config, SMALL_SHAPE, abstract)
  assert_same_params(from_w.params, converted.params)


@pytest.mark.parametrize("published, module, arg, image_size, count", [
    (PUBLISHED_256, ncsnpp_256, "church", 256, 65_574_549),
    (PUBLISHED_1024, ncsnpp_ffhq1024, None, 1024, 105_785_896),
])
def test_published_config_converts_at_full_size(published, module, arg, image_size,
                                               count):
  """The published layout's every tensor (diffusers on torch's meta device: shapes
  only) maps onto the config's network (jax.eval_shape), none left over; the group
  counts diffusers_norm_groups predicts are the modules' own."""
  config = module.get_config(arg) if arg else module.get_config()
  shape = (image_size, image_size, 3)
  _, abstract = abstract_params(config, shape)
  with torch.device("meta"):
    unet = diffusers.UNet2DModel(**published)
  # As the hub's config.json (diffusers 0.0.4) writes it: later fields take defaults.
  hub_file = json.loads(json.dumps(dict(_class_name="UNet2DModel",
                                        _diffusers_version="0.0.4", **published)))
  diffusers_ncsnpp.check_unet_config(hub_file, config.model, shape, abstract,
                                     "config.json")
  tensors = lazy_zeros({k: tuple(v.shape) for k, v in unet.state_dict().items()})
  params = diffusers_ncsnpp.convert_tensors(tensors, abstract,
                                            len(config.model.ch_mult), "meta")
  assert sum(x.size for x in jax.tree.leaves(params)) == count
  predicted = diffusers_ncsnpp.diffusers_norm_groups(dict(unet.config))
  actual = {name: m.num_groups for name, m in unet.named_modules()
            if isinstance(m, torch.nn.GroupNorm)}
  assert predicted == actual


def test_norm_group_rules_match_diffusers_at_small_widths():
  unet = diffusers.UNet2DModel(**dict(SMALL_256, norm_num_groups=4,
                                      attn_norm_num_groups=8))
  predicted = diffusers_ncsnpp.diffusers_norm_groups(dict(unet.config))
  actual = {name: m.num_groups for name, m in unet.named_modules()
            if isinstance(m, torch.nn.GroupNorm)}
  assert predicted == actual


@pytest.mark.parametrize("field, value, match", [
    ("center_input_sample", False, "center_input_sample=False"),
    ("attention_head_dim", 8, "attention_head_dim=8"),
    ("mid_block_scale_factor", 1, "mid_block_scale_factor=1"),
    ("norm_eps", 1e-5, "norm_eps=1e-05"),
    ("resnet_time_scale_shift", "scale_shift", "resnet_time_scale_shift"),
    ("down_block_types", ["SkipDownBlock2D", "AttnSkipDownBlock2D", "SkipDownBlock2D"],
     "down_block_types="),
    ("time_embedding_type", "positional", "time_embedding_type"),
    ("norm_num_groups", 4, r"mid_block.attentions.0.group_norm normalises 128 channels "
                           r"in 4 groups"),
])
def test_configs_the_project_cannot_hold_exactly_fail(small_unet, tmp_path, field,
                                                      value, match):
  _, folder, config, _ = small_unet
  shutil.copytree(folder, tmp_path / "source")
  path = tmp_path / "source" / "config.json"
  unet_config = json.loads(path.read_text())
  unet_config[field] = value
  path.write_text(json.dumps(unet_config))
  _, abstract = abstract_params(config, SMALL_SHAPE)
  with pytest.raises(ValueError, match=match) as error:
    diffusers_ncsnpp.convert(str(tmp_path / "source"), config, SMALL_SHAPE, abstract)
  assert "\n" not in str(error.value)


def test_narrow_attention_is_refused(tmp_path):
  """diffusers normalises attention over 32 groups whatever the width."""
  config = small_ncsnpp_256()
  config.model.ch_mult = (1, 2, 4)
  unet = make_unet(**dict(SMALL_256, block_out_channels=(16, 32, 64)))
  unet.save_pretrained(tmp_path)
  _, abstract = abstract_params(config, SMALL_SHAPE)
  with pytest.raises(ValueError, match=r"attentions.0.group_norm normalises 64 "
                     r"channels in 32 groups, the project's .* in 16"):
    diffusers_ncsnpp.convert(str(tmp_path), config, SMALL_SHAPE, abstract)


def test_scheduler_differences_are_recorded_not_guessed():
  config = small_ncsnpp_256("celebahq")
  scheduler = dict(diffusers.ScoreSdeVeScheduler(
      num_train_timesteps=2000, snr=0.075, sigma_max=380.0).config)
  differences = diffusers_ncsnpp.compare_scheduler(scheduler, config.sde,
                                                   config.sampling, "s.json")
  assert differences == {"sigma_max": [380.0, 348.0]}
  church = small_ncsnpp_256("church")
  assert diffusers_ncsnpp.compare_scheduler(scheduler, church.sde, church.sampling,
                                            "s.json") == {}
  with pytest.raises(ValueError, match="VE SDE scheduler"):
    diffusers_ncsnpp.compare_scheduler({"_class_name": "DDPMScheduler"}, config.sde,
                                       config.sampling, "s.json")
  defaults = diffusers.ScoreSdeVeScheduler().config
  for name, value in diffusers_ncsnpp.SCHEDULER_DEFAULTS.items():
    assert defaults[name] == value, name


def _flags(source_format, source, workdir, *overrides) -> flags.FlagValues:
  """The command line's flags (parsed apart from main.py's): the small NCSN++ layout."""
  return cli_flags(source_format, source, "ncsnpp_256.py:church", workdir,
                   "--config.model.ch=16", "--config.model.ch_mult=(1, 2, 8)",
                   "--config.model.num_res_blocks=2",
                   "--config.model.attn_resolutions=(4,)",
                   "--config.data.image_size=16", *overrides)


def test_pipeline_folder_reads_unet_and_scheduler(small_unet, tmp_path):
  """ScoreSdeVePipeline's save_pretrained folder (unet/, scheduler/): the same params;
  the scheduler's settings are recorded with where they differ from the config."""
  unet, _, _, converted = small_unet
  config = small_ncsnpp_256("celebahq")     # score_sde's sigma_max 348
  source = tmp_path / "pipeline"
  diffusers.ScoreSdeVePipeline(
      unet=unet, scheduler=diffusers.ScoreSdeVeScheduler(
          num_train_timesteps=2000, snr=0.075, sigma_max=380.0)).save_pretrained(source)
  assert {"unet", "scheduler"} <= set(os.listdir(source))
  _, abstract = abstract_params(config, SMALL_SHAPE)
  from_pipeline = diffusers_ncsnpp.convert(str(source), config, SMALL_SHAPE, abstract)
  assert_same_params(from_pipeline.params, converted.params)
  assert len(from_pipeline.files) == 3
  for path, digest in from_pipeline.files.items():
    with open(path, "rb") as f:
      assert hashlib.sha256(f.read()).hexdigest() == digest, path
  assert from_pipeline.details["scheduler_config"]["sigma_max"] == 380.0
  assert from_pipeline.details["scheduler_differs_from_config"] == {
      "sigma_max": [380.0, 348.0]}


def _broken_folder(tmp_path, folder, case) -> str:
  import safetensors.numpy
  source = tmp_path / "source"
  source.mkdir()
  shutil.copy(os.path.join(folder, "config.json"), source)
  weights = os.path.join(folder, "diffusion_pytorch_model.safetensors")
  tensors = safetensors.numpy.load_file(weights)
  if case == "truncated":
    write_first_half(weights, source / "diffusion_pytorch_model.safetensors")
    return str(source)
  if case == "code":
    save_code_pickle(source / "diffusion_pytorch_model.bin", "conv_in.weight", tmp_path)
    return str(source)
  if case == "missing":
    del tensors["up_blocks.0.skip_conv.bias"]
  elif case == "extra":
    tensors["time_proj.extra"] = np.zeros((3,), np.float32)
  elif case == "shape":
    tensors["down_blocks.1.skip_conv.weight"] = np.zeros((32, 3, 3, 3), np.float32)
  safetensors.numpy.save_file(tensors,
                              str(source / "diffusion_pytorch_model.safetensors"))
  return str(source)


@pytest.mark.parametrize("case, match", [
    ("missing", r"tensor 'up_blocks.0.skip_conv.bias' \(the project's "
                r"up_2_pyramid_conv/bias\) is missing"),
    ("extra", r"tensor 'time_proj.extra' has no place in the project's network"),
    ("shape", r"tensor 'down_blocks.1.skip_conv.weight' has shape \(32, 3, 3, 3\), but "
              r"the project's down_1_combine/conv/kernel needs \(32, 3, 1, 1\)"),
    ("truncated", r"is not a readable safetensors file"),
    ("code", r"(?i)holds more than tensors and is refused"),
])
def test_malformed_diffusers_folders_fail_before_writing(small_unet, tmp_path, case,
                                                         match):
  _, folder, config, _ = small_unet
  source = _broken_folder(tmp_path, folder, case)
  assert_fails_before_writing(tmp_path, config, source, "diffusers_ncsnpp", match,
                              num_examples=4)


# ===================================================== score_sde, the authors' side
def authors_layout(m: dict, image_size: int, channels: int = 3) -> list[tuple]:
  """score_sde's NCSNpp modules as its __init__ builds them (models/ncsnpp.py of
  yang-song/score_sde_pytorch; the Flax __call__ creates the same modules in the
  same order): [(Flax class, in all_modules, {layer.param: PyTorch shape})]."""
  nf, mult = m["nf"], tuple(m["ch_mult"])
  ddpm = m["resblock_type"] == "ddpm"
  layout = []

  def add(cls, params, listed=True):
    layout.append((cls, listed, params))

  def conv(cin, cout, k, name=""):
    p = f"{name}." if name else ""
    return {f"{p}weight": (cout, cin, k, k), f"{p}bias": (cout,)}

  def norm(c, name=""):
    p = f"{name}." if name else ""
    return {f"{p}weight": (c,), f"{p}bias": (c,)}

  def nin(cin, cout, name):
    return {f"{name}.W": (cin, cout), f"{name}.b": (cout,)}

  def resnet(cin, cout=None, resample=False):
    cout = cout or cin
    params = {**norm(cin, "GroupNorm_0"), **conv(cin, cout, 3, "Conv_0"),
              "Dense_0.weight": (cout, 4 * nf), "Dense_0.bias": (cout,),
              **norm(cout, "GroupNorm_1"), **conv(cout, cout, 3, "Conv_1")}
    if ddpm and cin != cout:
      params.update(nin(cin, cout, "NIN_0"))
    elif not ddpm and (cin != cout or resample):
      params.update(conv(cin, cout, 1, "Conv_2"))
    add("ResnetBlockDDPMpp" if ddpm else "ResnetBlockBigGANpp", params)

  def attention(c):
    projections = {k: v for i in range(4) for k, v in nin(c, c, f"NIN_{i}").items()}
    add("AttnBlockpp", {**norm(c, "GroupNorm_0"), **projections})

  def resampler(cls, cin, cout, with_conv):
    name = "Conv2d_0" if m["fir"] else "Conv_0"
    add(cls, conv(cin, cout, 3, name) if with_conv else {})

  if m["embedding_type"] == "fourier":
    add("GaussianFourierProjection", {"W": (nf,)})
  embed = 2 * nf if m["embedding_type"] == "fourier" else nf
  add("Dense", {"weight": (4 * nf, embed), "bias": (4 * nf,)})
  add("Dense", {"weight": (4 * nf, 4 * nf), "bias": (4 * nf,)})
  add("Conv", conv(channels, nf, 3))
  pyramid_ch, hs, in_ch = channels, [nf], nf
  for level, factor in enumerate(mult):
    for _ in range(m["num_res_blocks"]):
      resnet(in_ch, nf * factor)
      in_ch = nf * factor
      if image_size // 2**level in m["attn_resolutions"]:
        attention(in_ch)
      hs.append(in_ch)
    if level == len(mult) - 1:
      continue
    if ddpm:
      resampler("Downsample", in_ch, in_ch, m["resamp_with_conv"])
    else:
      resnet(in_ch, resample=True)
    if m["progressive_input"] == "input_skip":
      add("Downsample", {}, listed=False)
      add("Combine", conv(pyramid_ch, in_ch, 1, "Conv_0"))
      in_ch *= 2 if m["progressive_combine"] == "cat" else 1
    elif m["progressive_input"] == "residual":
      resampler("Downsample", pyramid_ch, in_ch, True)
      pyramid_ch = in_ch
    hs.append(in_ch)
  resnet(in_ch)
  attention(in_ch)
  resnet(in_ch)
  for level in reversed(range(len(mult))):
    for _ in range(m["num_res_blocks"] + 1):
      resnet(in_ch + hs.pop(), nf * mult[level])
      in_ch = nf * mult[level]
    if image_size // 2**level in m["attn_resolutions"]:
      attention(in_ch)
    if m["progressive"] != "none":
      if level == len(mult) - 1 or m["progressive"] == "output_skip":
        if level != len(mult) - 1:
          add("Upsample", {}, listed=False)
        out = channels if m["progressive"] == "output_skip" else in_ch
        add("GroupNorm", norm(in_ch))
        add("Conv", conv(in_ch, out, 3))
        pyramid_ch = out
      else:
        resampler("Upsample", pyramid_ch, in_ch, True)
        pyramid_ch = in_ch
    if level != 0:
      if ddpm:
        resampler("Upsample", in_ch, in_ch, m["resamp_with_conv"])
      else:
        resnet(in_ch, resample=True)
  assert not hs
  if m["progressive"] != "output_skip":
    add("GroupNorm", norm(in_ch))
    add("Conv", conv(in_ch, channels, 3))
  return layout


def torch_names(layout) -> dict[str, tuple[int, ...]]:
  """The 'model' state dict's parameters (without DataParallel's prefix), in order."""
  names, index = {}, 0
  for _, listed, params in layout:
    for name, shape in params.items():
      names[f"all_modules.{index}.{name}"] = shape
    index += listed
  return names


def flax_names(layout) -> dict[str, tuple[int, ...]]:
  """The Flax parameter tree, '/'-joined: automatic names <Class>_<n> per class in
  creation order; GroupNorm 'scale', nn.Conv / nn.Dense 'kernel' (HWIO, (in, out)),
  up_or_down_sampling.Conv2d 'weight' (HWIO), NIN 'W' (in, out)."""
  names, counters = {}, collections.Counter()
  for cls, _, params in layout:
    module = f"{cls}_{counters[cls]}"
    counters[cls] += 1
    for name, shape in params.items():
      *layer, leaf = name.split(".")
      kind = layer[0].rsplit("_", 1)[0] if layer else cls
      if leaf == "weight":
        leaf = {"GroupNorm": "scale", "Conv": "kernel", "Dense": "kernel",
                "Conv2d": "weight"}[kind]
      if len(shape) == 4:
        shape = (shape[2], shape[3], shape[1], shape[0])   # OIHW -> HWIO
      elif len(shape) == 2 and kind == "Dense":
        shape = shape[::-1]                                # (out, in) -> (in, out)
      names["/".join([module, *layer, leaf])] = tuple(shape)
  return names


def to_flax(flax_name: str, array: np.ndarray) -> np.ndarray:
  """A PyTorch-layout tensor in the Flax layout of flax_names."""
  if array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  if array.ndim == 2 and flax_name.split("/")[-2].startswith("Dense_"):
    return array.T
  return array


def authors_model(config) -> dict:
  """The score_sde model config fields of a project config."""
  m = config.model
  return dict(nf=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
              attn_resolutions=tuple(m.attn_resolutions), resblock_type=m.resblock_type,
              progressive=m.progressive, progressive_input=m.progressive_input,
              progressive_combine=m.progressive_combine, fir=m.fir,
              fir_kernel=tuple(m.fir_kernel), resamp_with_conv=m.resamp_with_conv,
              embedding_type=m.embedding_type, skip_rescale=m.skip_rescale,
              centered=not m.center_input)


@pytest.mark.parametrize("name, config", [
    ("score_sde_ncsnpp_cifar", ncsnpp_cifar.get_config()),
    ("score_sde_ddpmpp_cifar", ddpmpp_cifar.get_config("vp")),
])
def test_authors_layout_reproduces_the_manifests(name, config):
  layout = authors_layout(authors_model(config), 32)
  pytorch = manifests.read(f"{name}_pytorch")
  assert list(pytorch)[0] == "module.sigmas"
  assert {f"module.{k}": v for k, v in torch_names(layout).items()} == \
      dict(list(pytorch.items())[1:])
  assert list(torch_names(layout)) == [k[len("module."):] for k in list(pytorch)[1:]]
  assert flax_names(layout) == manifests.read(f"{name}_flax")


@pytest.mark.parametrize("name, config, flax", [
    ("score_sde_ncsnpp_cifar_pytorch", ncsnpp_cifar.get_config(), False),
    ("score_sde_ncsnpp_cifar_flax", ncsnpp_cifar.get_config(), True),
    ("score_sde_ddpmpp_cifar_pytorch", ddpmpp_cifar.get_config("vp"), False),
    ("score_sde_ddpmpp_cifar_flax", ddpmpp_cifar.get_config("subvp"), True),
])
def test_manifests_convert_at_full_size(name, config, flax):
  """Every published tensor has its place in the config's network (eval_shape), none
  is left over, and the parameter counts are the paper networks' own."""
  _, abstract = abstract_params(config, (32, 32, 3))
  shapes = manifests.read(name)
  shapes.pop("module.sigmas", None)
  table = score_sde.tensors_of(config.model, 32, abstract)
  names = {(t.flax_name if flax else f"module.{t.torch_name}") for t in table}
  assert names == set(shapes)
  tensors = lazy_zeros({k.removeprefix("module."): v for k, v in shapes.items()})
  params = score_sde.assemble(tensors, table, abstract, flax, name)
  assert sum(x.size for x in jax.tree.leaves(params)) == sum(
      math.prod(s) for s in shapes.values())


@pytest.mark.parametrize("module, arg, image_size", [
    (ncsnpp_256, "bedroom", 256), (ncsnpp_ffhq1024, None, 1024)])
def test_high_resolution_layouts_agree_with_diffusers_names(module, arg, image_size):
  """score_sde_pytorch's 256 / 1024 checkpoints: the converter's names are the
  authors' (authors_layout) and their shapes those of the published diffusers port."""
  config = module.get_config(arg) if arg else module.get_config()
  _, abstract = abstract_params(config, (image_size, image_size, 3))
  table = score_sde.tensors_of(config.model, image_size, abstract)
  flat = traverse_util.flatten_dict(abstract)
  ours = {t.torch_name: common.torch_shape(flat[t.project].shape, t.layout)
          for t in table}
  assert ours == torch_names(authors_layout(authors_model(config), image_size))
  published = PUBLISHED_256 if image_size == 256 else PUBLISHED_1024
  with torch.device("meta"):
    unet = diffusers.UNet2DModel(**published)
  state = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
  mapped = score_sde_to_diffusers(list(ours), unet)
  assert {mapped[k]: v for k, v in ours.items()} == state


# ------------------------------------------------ the authors' forward, test side
def setup_kernel(taps) -> torch.Tensor:
  k = np.outer(taps, taps).astype(np.float32)
  return torch.from_numpy(k / k.sum())


def upfirdn2d(x, k, up=1, down=1, pad=(0, 0)):
  """StyleGAN2's upfirdn2d on NCHW: zero insertion, padding, FIR (a convolution),
  subsampling."""
  b, c, h, w = x.shape
  if up > 1:
    y = x.new_zeros(b, c, h * up, w * up)
    y[:, :, ::up, ::up] = x
    x = y
  x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
  weight = torch.flip(k, (0, 1))[None, None].repeat(c, 1, 1, 1)
  return F.conv2d(x, weight, groups=c)[:, :, ::down, ::down]


def fir_up(x, taps):
  k = setup_kernel(taps) * 4
  p = k.shape[0] - 2
  return upfirdn2d(x, k, up=2, pad=((p + 1) // 2 + 1, p // 2))


def fir_down(x, taps):
  k = setup_kernel(taps)
  p = k.shape[0] - 2
  return upfirdn2d(x, k, down=2, pad=((p + 1) // 2, p // 2))


def fir_conv_down(x, w, taps):
  """up_or_down_sampling.conv_downsample_2d: one FIR pass, then a stride-2 conv."""
  k = setup_kernel(taps)
  p = (k.shape[0] - 2) + (w.shape[-1] - 1)
  return F.conv2d(upfirdn2d(x, k, pad=((p + 1) // 2, p // 2)), w, stride=2)


def authors_forward(t: dict, m: dict, x, time_cond):
  """score_sde_pytorch's NCSNpp.forward (output before scale_by_sigma) on the named
  tensors `t` ({'all_modules.<i>.<...>': tensor}), for BigGAN blocks."""
  assert m["resblock_type"] == "biggan"
  act = F.silu
  index = iter(range(10_000))
  taps = m["fir_kernel"]

  def take():
    i = next(index)
    return {k[len(f"all_modules.{i}."):]: v for k, v in t.items()
            if k.startswith(f"all_modules.{i}.")}

  def gn(h, p, prefix=""):
    c = h.shape[1]
    return F.group_norm(h, min(c // 4, 32), p[f"{prefix}weight"], p[f"{prefix}bias"],
                        1e-6)

  def conv(h, p, prefix="", **kw):
    return F.conv2d(h, p[f"{prefix}weight"], p[f"{prefix}bias"],
                    padding=p[f"{prefix}weight"].shape[-1] // 2, **kw)

  def rescale(a, b):
    return (a + b) / math.sqrt(2.0) if m["skip_rescale"] else a + b

  def resnet(h, temb, up=False, down=False):
    p = take()
    out = act(gn(h, p, "GroupNorm_0."))
    if up or down:
      if m["fir"]:
        resample = (lambda z: fir_up(z, taps)) if up else (lambda z: fir_down(z, taps))
      else:
        resample = ((lambda z: F.interpolate(z, scale_factor=2, mode="nearest")) if up
                    else (lambda z: F.avg_pool2d(z, 2)))
      out, h = resample(out), resample(h)
    out = conv(out, p, "Conv_0.")
    out = out + F.linear(act(temb), p["Dense_0.weight"], p["Dense_0.bias"])[:, :, None,
                                                                             None]
    out = conv(act(gn(out, p, "GroupNorm_1.")), p, "Conv_1.")
    if "Conv_2.weight" in p:
      h = F.conv2d(h, p["Conv_2.weight"], p["Conv_2.bias"])
    return rescale(h, out)

  def nin(h, p, name):
    out = torch.einsum("bchw,cd->bdhw", h, p[f"{name}.W"])
    return out + p[f"{name}.b"][None, :, None, None]

  def attention(h):
    p = take()
    b, c, hh, ww = h.shape
    a = gn(h, p, "GroupNorm_0.")
    q, k, v = (nin(a, p, f"NIN_{i}") for i in range(3))
    w = torch.einsum("bchw,bcij->bhwij", q, k) * c**-0.5
    w = torch.softmax(w.reshape(b, hh, ww, hh * ww), -1).reshape(b, hh, ww, hh, ww)
    a = torch.einsum("bhwij,bcij->bchw", w, v)
    return rescale(h, nin(a, p, "NIN_3"))

  if m["embedding_type"] == "fourier":
    w = take()["W"]
    angles = torch.log(time_cond)[:, None] * w[None, :] * 2 * math.pi
    temb = torch.cat([torch.sin(angles), torch.cos(angles)], -1)
  else:
    half = m["nf"] // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) *
                      -(math.log(10000) / (half - 1)))
    angles = time_cond.float()[:, None] * freqs[None, :]
    temb = torch.cat([torch.sin(angles), torch.cos(angles)], -1)
  p = take()
  temb = F.linear(temb, p["weight"], p["bias"])
  p = take()
  temb = F.linear(act(temb), p["weight"], p["bias"])
  if not m["centered"]:
    x = 2 * x - 1
  pyramid_in = x
  hs = [conv(x, take())]
  levels = len(m["ch_mult"])
  for level in range(levels):
    for _ in range(m["num_res_blocks"]):
      h = resnet(hs[-1], temb)
      if h.shape[-1] in m["attn_resolutions"]:
        h = attention(h)
      hs.append(h)
    if level != levels - 1:
      h = resnet(hs[-1], temb, down=True)
      if m["progressive_input"] == "input_skip":
        pyramid_in = (fir_down(pyramid_in, taps) if m["fir"]
                      else F.avg_pool2d(pyramid_in, 2))
        p = take()
        h = F.conv2d(pyramid_in, p["Conv_0.weight"], p["Conv_0.bias"]) + h
      elif m["progressive_input"] == "residual":
        p = take()
        pyramid_in = (fir_conv_down(pyramid_in, p["Conv2d_0.weight"], taps) +
                      p["Conv2d_0.bias"][None, :, None, None])
        h = pyramid_in = rescale(pyramid_in, h)
      hs.append(h)
  h = resnet(hs[-1], temb)
  h = attention(h)
  h = resnet(h, temb)
  pyramid = None
  for level in reversed(range(levels)):
    for _ in range(m["num_res_blocks"] + 1):
      h = resnet(torch.cat([h, hs.pop()], 1), temb)
    if h.shape[-1] in m["attn_resolutions"]:
      h = attention(h)
    if m["progressive"] == "output_skip":
      rgb = conv(act(gn(h, take())), take())
      pyramid = rgb if pyramid is None else fir_up(pyramid, taps) + rgb
    if level != 0:
      h = resnet(h, temb, up=True)
  if m["progressive"] == "output_skip":
    return pyramid
  return conv(act(gn(h, take())), take())


def score_sde_to_diffusers(names: list[str], unet) -> dict[str, str]:
  """score_sde_pytorch names -> diffusers', walking the modules in the order diffusers'
  scripts/convert_ncsnpp_original_checkpoint_to_diffusers.py does (read, not copied):
  W, the embedding's two linears, conv_in; per down block its (resnet, attention)
  pairs, then resnet_down and skip_conv; the middle; per up block its resnets, its one
  attention, then skip_norm, skip_conv and resnet_up; conv_norm_out, conv_out."""
  order = ["time_proj", "time_embedding.linear_1", "time_embedding.linear_2", "conv_in"]
  for i, block in enumerate(unet.down_blocks):
    for j in range(len(block.resnets)):
      order.append(f"down_blocks.{i}.resnets.{j}")
      if hasattr(block, "attentions"):
        order.append(f"down_blocks.{i}.attentions.{j}")
    if block.downsamplers is not None:
      order += [f"down_blocks.{i}.resnet_down", f"down_blocks.{i}.skip_conv"]
  order += ["mid_block.resnets.0", "mid_block.attentions.0", "mid_block.resnets.1"]
  for i, block in enumerate(unet.up_blocks):
    order += [f"up_blocks.{i}.resnets.{j}" for j in range(len(block.resnets))]
    if hasattr(block, "attentions"):
      order.append(f"up_blocks.{i}.attentions.0")
    if block.resnet_up is not None:
      order += [f"up_blocks.{i}.skip_norm", f"up_blocks.{i}.skip_conv",
                f"up_blocks.{i}.resnet_up"]
  order += ["conv_norm_out", "conv_out"]
  layers = {"GroupNorm_0": "norm1", "Conv_0": "conv1", "Dense_0": "time_emb_proj",
            "GroupNorm_1": "norm2", "Conv_1": "conv2", "Conv_2": "conv_shortcut"}
  attention = {"GroupNorm_0": "group_norm", "NIN_0": "to_q", "NIN_1": "to_k",
               "NIN_2": "to_v", "NIN_3": "to_out.0"}
  leaves = {"W": "weight", "b": "bias", "weight": "weight", "bias": "bias"}
  mapped = {}
  for name in names:
    _, index, *rest = name.split(".")
    target = order[int(index)]
    if target.endswith("skip_conv") or len(rest) == 1:
      mapped[name] = f"{target}.{leaves[rest[-1]]}"
    else:
      table = attention if ".attentions." in target else layers
      mapped[name] = f"{target}.{table[rest[0]]}.{leaves[rest[1]]}"
  return mapped


def diffusers_state(tensors: dict[str, np.ndarray], unet) -> dict[str, torch.Tensor]:
  """score_sde_pytorch tensors in diffusers' names and layouts (NIN's W transposed)."""
  mapped = score_sde_to_diffusers(list(tensors), unet)
  state = {}
  for name, value in tensors.items():
    value = torch.from_numpy(np.ascontiguousarray(value))
    state[mapped[name]] = value.T if name.endswith(".W") and value.ndim == 2 else value
  return state


# -------------------------------------------------- score_sde files, random weights
def random_checkpoint(config, image_size: int, seed: int = 0):
  """(raw, ema) tensors under the authors' PyTorch names, PyTorch layouts."""
  layout = authors_layout(authors_model(config), image_size)
  shapes = torch_names(layout)
  rng = np.random.default_rng(seed)

  def draw(name, shape):
    noise = rng.standard_normal(shape)
    if len(shape) == 1 and name.endswith(".W"):      # Fourier frequencies, N(0, 16^2)
      return (16 * noise).astype(np.float32)
    if len(shape) == 1:                              # GroupNorm gains, biases
      return ((1 if name.endswith("weight") else 0) + 0.1 * noise).astype(np.float32)
    # NIN's W is (in, out), the rest (out, in, ...).
    fan_in = shape[0] if name.endswith(".W") else math.prod(shape[1:])
    return (noise / math.sqrt(fan_in)).astype(np.float32)

  raw = {n: draw(n, s) for n, s in shapes.items()}
  ema = {n: (v if n == "all_modules.0.W" and v.ndim == 1 else
             v + 0.01 * rng.standard_normal(v.shape).astype(np.float32))
         for n, v in raw.items()}
  return raw, ema


def sigmas_of(sde) -> np.ndarray:
  return np.exp(np.linspace(np.log(sde.sigma_max), np.log(sde.sigma_min),
                            sde.num_scales)).astype(np.float32)


def write_pth(path, config, raw, ema, *, drop=(), sigmas=None, extra=None):
  """utils.save_checkpoint's layout: plain dicts, lists and tensors only."""
  fourier = config.model.embedding_type == "fourier"
  model = collections.OrderedDict()
  model["module.sigmas"] = torch.from_numpy(sigmas_of(config.sde) if sigmas is None
                                            else sigmas)
  for name, value in raw.items():
    model[f"module.{name}"] = torch.from_numpy(value)
  shadow = [torch.from_numpy(v) for n, v in ema.items()
            if not (fourier and n == "all_modules.0.W")]
  for name in drop:
    model.pop(name)
  content = {"model": model,
             "ema": {"decay": 0.999, "num_updates": 24, "shadow_params": shadow},
             "optimizer": {"state": {}, "param_groups": [
                 {"lr": 2e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0,
                  "amsgrad": False, "params": list(range(len(shadow)))}]},
             "step": 24}
  content.update(extra or {})
  torch.save(content, path)
  return str(path)


def write_msgpack(path, raw, ema, *, transform=None):
  """flax.training.checkpoints' layout of run_lib.py's State (numpy arrays only)."""
  def tree(tensors):
    flat = {tuple(k.split("/")): v for k, v in tensors.items()}
    return traverse_util.unflatten_dict(flat)
  state = {"step": 24, "optimizer": {"target": tree(raw), "state": {
      "step": np.int32(24), "param_states": {}}}, "lr": 2e-4, "model_state": {},
      "ema_rate": 0.999, "params_ema": tree(ema), "rng": np.zeros(2, np.uint32)}
  if transform:
    transform(state)
  data = serialization.msgpack_serialize(state)
  with open(path, "wb") as f:
    f.write(data)
  return str(path)


def flax_tensors(tensors: dict[str, np.ndarray], config, image_size: int):
  """The PyTorch-named tensors under Flax's names and layouts (module by module)."""
  layout = authors_layout(authors_model(config), image_size)
  torch_list, flax_list = list(torch_names(layout)), list(flax_names(layout))
  assert len(torch_list) == len(flax_list)
  out = {}
  for torch_name, flax_name in zip(torch_list, flax_list):
    out[flax_name] = to_flax(flax_name, tensors[torch_name])
  return out


def test_flax_and_torch_names_pair_up_in_order():
  """flax_tensors pairs names by position: both lists walk the same modules."""
  layout = authors_layout(authors_model(ncsnpp_cifar.get_config()), 32)
  leaves = {"weight": ("kernel", "scale", "weight"), "bias": ("bias",), "W": ("W",),
            "b": ("b",)}
  pairs = list(zip(torch_names(layout).items(), flax_names(layout).items()))
  assert len(pairs) == len(torch_names(layout)) == len(flax_names(layout))
  for (torch_name, torch_shape), (flax_name, flax_shape) in pairs:
    assert flax_name.split("/")[-1] in leaves[torch_name.split(".")[-1]]
    assert math.prod(torch_shape) == math.prod(flax_shape)


@pytest.fixture(scope="module")
def ncsnpp_files(tmp_path_factory):
  """NCSN++ (CIFAR-10 layout, small): .pth and msgpack of the same random weights."""
  folder = tmp_path_factory.mktemp("score_sde")
  config = small_cifar(ncsnpp_cifar.get_config())
  raw, ema = random_checkpoint(config, 32, seed=1)
  pth = write_pth(folder / "checkpoint_24.pth", config, raw, ema)
  msgpack_path = write_msgpack(folder / "checkpoint_24", flax_tensors(raw, config, 32),
                               flax_tensors(ema, config, 32))
  return config, raw, ema, pth, msgpack_path


@pytest.fixture(scope="module")
def ddpmpp_files(tmp_path_factory):
  folder = tmp_path_factory.mktemp("score_sde_vp")
  config = small_cifar(ddpmpp_cifar.get_config("subvp"))
  raw, ema = random_checkpoint(config, 32, seed=2)
  pth = write_pth(folder / "checkpoint_26.pth", config, raw, ema)
  msgpack_path = write_msgpack(folder / "checkpoint_26", flax_tensors(raw, config, 32),
                               flax_tensors(ema, config, 32))
  return config, raw, ema, pth, msgpack_path


@pytest.mark.integration
def test_authors_forward_equals_diffusers():
  """The test's own reference (authors_forward) is diffusers' NCSN++ on the layout
  they share: score_sde_pytorch tensors -> diffusers by the conversion script's
  order."""
  config = small_ncsnpp_256()
  raw, _ = random_checkpoint(config, 16, seed=3)
  unet = diffusers.UNet2DModel(**SMALL_256).eval()
  unet.load_state_dict(diffusers_state(raw, unet))
  x, _ = inputs()
  sigma = np.array([0.02, 1.5, 60.0], np.float32)
  with torch.no_grad():
    ours = authors_forward({k: torch.from_numpy(v) for k, v in raw.items()},
                           authors_model(config),
                           torch.from_numpy(x).permute(0, 3, 1, 2),
                           torch.from_numpy(sigma)).permute(0, 2, 3, 1).numpy()
  theirs = unet_score(unet, x, sigma) * per_example(sigma)
  difference = float(np.abs(ours - theirs).max())
  assert np.abs(theirs).max() > 0.1
  assert difference < TOLERANCE, f"max |reference - diffusers| = {difference:.3g}"


@pytest.mark.parametrize("files", ["ncsnpp_files", "ddpmpp_files"])
@pytest.mark.integration
def test_pytorch_checkpoint_output_equals_the_authors_forward(files, request,
                                                             fast_compile):
  """train/score.py's score of both converted weight sets against score_sde's own
  reading: VE s = F(x, sigma_t) / sigma_t (scale_by_sigma, data in [0, 1]), VP / sub-VP
  s = -F(x, 999 t) / std_t (data in [-1, 1]); compared on F's scale."""
  config, raw, ema, pth, _ = request.getfixturevalue(files)
  family, abstract = abstract_params(config, (32, 32, 3))
  converted = score_sde.convert_pytorch(pth, config, (32, 32, 3), abstract)
  assert converted.num_tensors == len(raw)
  assert converted.details["step"] == 24
  assert converted.details["ema"] == dict(decay=0.999, num_updates=24)
  x, t = inputs(shape=(32, 32, 3))
  ve = config.sde.type == "vesde"
  x_in = x if ve else 2 * x - 1
  std = noise_std(family, t)
  labels = std if ve else 999 * t
  for tensors, params, which in ((raw, converted.params, "model"),
                                 (ema, converted.ema_params, "ema")):
    ours = family_score(family, params, x_in, t) * per_example(std) * (1 if ve else -1)
    with torch.no_grad():
      theirs = authors_forward({k: torch.from_numpy(v) for k, v in tensors.items()},
                               authors_model(config),
                               torch.from_numpy(x_in).permute(0, 3, 1, 2),
                               torch.from_numpy(labels)).permute(0, 2, 3, 1).numpy()
    assert np.abs(theirs).max() > 0.1
    difference = float(np.abs(ours - theirs).max())
    assert difference < TOLERANCE, f"{files} {which}: max |project - authors| = " \
        f"{difference:.3g}"
    print(f"{files} ({which}): {converted.num_tensors} tensors, max |diff| "
          f"{difference:.3g}")


@pytest.mark.integration
def test_pytorch_output_skip_checkpoint_equals_diffusers(tmp_path, fast_compile):
  """score_sde_pytorch's 256-style layout (output and input pyramids) against
  diffusers with the same tensors."""
  config = small_ncsnpp_256()
  raw, ema = random_checkpoint(config, 16, seed=4)
  pth = write_pth(tmp_path / "checkpoint.pth", config, raw, ema)
  family, abstract = abstract_params(config, SMALL_SHAPE)
  converted = score_sde.convert_pytorch(pth, config, SMALL_SHAPE, abstract)
  unet = diffusers.UNet2DModel(**SMALL_256).eval()
  unet.load_state_dict(diffusers_state(ema, unet))
  x, t = inputs()
  sigma = noise_std(family, t)
  ours = family_score(family, converted.ema_params, x, t) * per_example(sigma)
  theirs = unet_score(unet, x, sigma) * per_example(sigma)
  difference = float(np.abs(ours - theirs).max())
  assert difference < TOLERANCE, f"max |project - diffusers| = {difference:.3g}"


@pytest.mark.parametrize("files", ["ncsnpp_files", "ddpmpp_files"])
def test_flax_checkpoint_gives_the_pytorch_params(files, request):
  config, _, _, pth, msgpack_path = request.getfixturevalue(files)
  _, abstract = abstract_params(config, (32, 32, 3))
  from_torch = score_sde.convert_pytorch(pth, config, (32, 32, 3), abstract)
  from_flax = score_sde.convert_flax(msgpack_path, config, (32, 32, 3), abstract)
  assert_same_params(from_flax.params, from_torch.params)
  assert_same_params(from_flax.ema_params, from_torch.ema_params)
  assert from_flax.details["step"] == 24 and from_flax.details["ema_rate"] == 0.999


def test_one_set_of_weights_goes_to_both(ncsnpp_files, tmp_path):
  """Only EMA weights (or only raw ones): params and ema_params are those."""
  config, raw, ema, pth, _ = ncsnpp_files
  _, abstract = abstract_params(config, (32, 32, 3))
  both = score_sde.convert_pytorch(pth, config, (32, 32, 3), abstract)
  only_ema = write_msgpack(tmp_path / "ema", flax_tensors(raw, config, 32),
                           flax_tensors(ema, config, 32),
                           transform=lambda state: state.pop("optimizer"))
  converted = score_sde.convert_flax(only_ema, config, (32, 32, 3), abstract)
  assert converted.ema_params is None
  assert_same_params(converted.params, both.ema_params)
  content = torch.load(pth, weights_only=True)
  del content["ema"]
  torch.save(content, tmp_path / "raw.pth")
  converted = score_sde.convert_pytorch(str(tmp_path / "raw.pth"), config, (32, 32, 3),
                                        abstract)
  assert converted.ema_params is None
  assert_same_params(converted.params, both.params)


@pytest.mark.integration
def test_pth_converts_through_the_command_line_and_samples(tmp_path, fast_compile):
  """A score_sde_pytorch .pth through `python -m convert`: the workdir holds the raw
  weights as params and the EMA ones as ema_params at the given step; main.py's
  sample mode reads it unchanged; converting into it again is refused."""
  config = small_ncsnpp_256()
  raw, ema = random_checkpoint(config, 16, seed=5)
  pth = write_pth(tmp_path / "checkpoint_48.pth", config, raw, ema)
  _, abstract = abstract_params(config, SMALL_SHAPE)
  converted = score_sde.convert_pytorch(pth, config, SMALL_SHAPE, abstract)
  workdir = str(tmp_path / "workdir")
  flag_values = _flags("score_sde_pytorch", pth, workdir, "--step=48",
                       "--config.sde.num_scales=2", "--config.sampling.corrector=none",
                       "--config.eval.num_samples=2", "--config.sampling.batch_size=2")
  config = flag_values.config
  with tfds.testing.mock_data(num_examples=4):
    metadata = cli.run(flag_values)
    record = metadata["converted_from"]
    assert record["format"] == "score_sde_pytorch" and record["step"] == 24
    assert record["weights"] == "params: 'model', ema_params: 'ema'"
    assert record["files"] == {os.path.abspath(pth): hashlib.sha256(
        open(pth, "rb").read()).hexdigest()}
    run = Run(config, workdir)
    try:
      state = run.init_or_restore(must_exist=True)
    finally:
      run.close()
    assert int(state.step) == 48
    assert_same_params(state.params, converted.params)
    assert_same_params(state.ema_params, converted.ema_params)
    directory = modes.sample(config, workdir)
    with np.load(os.path.join(directory, "samples.npz")) as samples:
      assert samples["arr_0"].shape == (2, *SMALL_SHAPE)
    with pytest.raises(ValueError, match="already holds checkpoints"):
      cli.run(_flags("score_sde_pytorch", pth, workdir))


def _broken_pth(tmp_path, files, case) -> tuple[str, object]:
  config, raw, ema, pth, msgpack_path = files
  path = tmp_path / "broken"
  if case == "truncated":
    write_first_half(pth, path)
  elif case == "code":
    save_code_pickle(path, "model", tmp_path)
  elif case == "missing":
    write_pth(path, config, raw, ema, drop=("module.all_modules.3.bias",))
  elif case == "extra":
    write_pth(path, config, {**raw, "all_modules.999.weight": np.zeros(3, np.float32)},
              ema)
  elif case == "shape":
    write_pth(path, config, {**raw, "all_modules.3.weight": raw["all_modules.3.weight"][
        :, :, :2]}, ema)
  elif case == "ema_length":
    write_pth(path, config, raw, dict(list(ema.items())[:-1]))
  elif case == "sigmas":
    write_pth(path, config, raw, ema, sigmas=sigmas_of(ncsnpp_256.get_config().sde))
  elif case == "not_a_checkpoint":
    torch.save({k: torch.from_numpy(v) for k, v in raw.items()}, path)
  elif case == "flax_truncated":
    write_first_half(msgpack_path, path)
  elif case == "flax_missing":
    tensors = flax_tensors(raw, config, 32)
    del tensors["Conv_0/bias"]
    write_msgpack(path, tensors, flax_tensors(ema, config, 32))
  elif case == "flax_state":
    path.write_bytes(serialization.msgpack_serialize({"params": {"a": np.zeros(2)}}))
  return str(path), config


@pytest.mark.parametrize("case, source_format, match", [
    ("missing", "score_sde_pytorch",
     r"tensor 'all_modules.3.bias' \(the project's conv_in/bias\) is missing"),
    ("extra", "score_sde_pytorch",
     r"tensor 'all_modules.999.weight' has no place in the project's network"),
    ("shape", "score_sde_pytorch", r"tensor 'all_modules.3.weight' has shape "
     r"\(16, 3, 2, 3\), but the project's conv_in/kernel needs \(16, 3, 3, 3\)"),
    ("ema_length", "score_sde_pytorch", r"'ema' holds \d+ shadow parameters, but the "
     r"network has \d+ trainable tensors"),
    ("sigmas", "score_sde_pytorch", r"module.sigmas holds the noise levels from 348 "
     r"to 0.01, but config.sde has sigma_max=50.0 .* the weights belong to another "
     r"config"),
    ("not_a_checkpoint", "score_sde_pytorch", r"is not a score_sde_pytorch checkpoint"),
    ("truncated", "score_sde_pytorch", r"is not a readable PyTorch checkpoint"),
    ("code", "score_sde_pytorch", r"(?i)holds more than tensors and is refused"),
    ("flax_truncated", "score_sde_flax", r"is not a readable Flax msgpack checkpoint"),
    ("flax_missing", "score_sde_flax",
     r"tensor 'Conv_0/bias' \(the project's conv_in/bias\) is missing"),
    ("flax_state", "score_sde_flax", r"is not a score_sde checkpoint"),
])
def test_malformed_score_sde_files_fail_before_writing(ncsnpp_files, tmp_path, case,
                                                       source_format, match):
  source, config = _broken_pth(tmp_path, ncsnpp_files, case)
  assert_fails_before_writing(tmp_path, config, source, source_format, match,
                              num_examples=4)


@pytest.mark.parametrize("field, value, match", [
    ("model.center_input", False, r"center_input=False with config.sde.data_centered="
                                  r"False"),
    ("model.num_groups", 2, r"splits 16 channels into 2 groups, score_sde's into"),
    ("model.embedding_type", "positional", r"embedding_type='positional' with "
                                           r"config.sde.type='vesde'"),
    ("model.name", "songunet", r"config.model.name='songunet'"),
])
def test_configs_that_cannot_hold_score_sde_fail(ncsnpp_files, field, value, match):
  config, _, _, pth, _ = ncsnpp_files
  config = small_cifar(ncsnpp_cifar.get_config())
  section, name = field.split(".")
  config[section][name] = value
  abstract = {} if name in ("name", "embedding_type") else abstract_params(
      config, (32, 32, 3))[1]
  with pytest.raises(ValueError, match=match):
    score_sde.convert_pytorch(pth, config, (32, 32, 3), abstract)
