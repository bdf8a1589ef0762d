"""A diffusers NCSN++ folder (UNet2DModel with Fourier features and Skip blocks) as
models/ncsnpp.py parameters (files in, numpy out).

google/ncsnpp-celebahq-256, -ffhq-256, -church-256, -bedroom-256 and -ffhq-1024 are
score_sde's VE NCSN++ networks (Song et al. 2021, App. H) ported by diffusers'
scripts/convert_ncsnpp_original_checkpoint_to_diffusers.py: a UNet2DModel with
time_embedding_type="fourier", SkipDownBlock2D / AttnSkipDownBlock2D down and
SkipUpBlock2D / AttnSkipUpBlock2D up (BigGAN blocks with FIR [1, 3, 3, 1] resampling,
the input pyramid summed in through a 1x1 conv, the output pyramid of norm-act-conv
RGB predictions), residual sums over sqrt(2) (mid_block_scale_factor), beside a
ScoreSdeVeScheduler. The folder is read as diffusers_unet.read_folder reads it (the
.safetensors without torch, the .bin only through torch.load(weights_only=True)).

The two networks compute the same function of the same weights (tested against
diffusers itself), with these conventions:
  - diffusers takes timesteps = sigma, takes its log inside GaussianFourierProjection
    and divides its output by sigma (scale_by_sigma); NCSNpp takes noise_labels =
    log(sigma) and returns the raw output, which train/score.py divides by sigma;
  - center_input_sample=True (2x - 1 of data in [0, 1]) is config.model.center_input;
  - diffusers' attention always normalises over 32 groups, and AttnSkipUpBlock2D's
    first norms over min(in + skip // 4, 32): every GroupNorm's group count is compared
    with the project's (equal at the published widths, >= 128 channels there).
The correspondence (L levels; diffusers numbers the up path from the bottom):
  time_proj.weight (older files: time_proj.W) -> fourier_proj/W;
  time_embedding.linear_1/2, conv_in -> temb_dense0/1, conv_in;
  down_blocks.i.{resnets.j, attentions.j, resnet_down, skip_conv} -> down_{i}_block_{j},
    down_{i}_attn_{j}, down_{i}_downsample, down_{i}_combine/conv;
  mid_block.{resnets.0, attentions.0, resnets.1} -> mid_block_0, mid_attn, mid_block_1;
  up_blocks.k.{resnets.j, attentions.0, resnet_up, skip_norm, skip_conv} with
    level l = L-1-k -> up_{l}_block_{j}, up_{l}_attn, up_{l}_upsample,
    up_{l}_pyramid_norm, up_{l}_pyramid_conv; conv_norm_out, conv_out -> level 0's
    up_0_pyramid_norm, up_0_pyramid_conv (its RGB prediction);
  in a ResNet block norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut -> norm1,
    conv1, temb_proj, norm2, conv2, shortcut; in attention group_norm, to_q, to_k, to_v,
    to_out.0 (older files: query, key, value, proj_attn) -> norm, q, k, v, proj_out.
Conv weights OIHW -> HWIO, linear (out, in) -> (in, out), GroupNorm weight -> scale.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from convert import common, diffusers_unet
from models import layers

# The VE SDE scheduler's class names (VeSdeScheduler: diffusers 0.0.4's files).
SCHEDULERS = ("ScoreSdeVeScheduler", "VeSdeScheduler")
# ScoreSdeVeScheduler's defaults (diffusers 0.42.1) for the fields compared.
SCHEDULER_DEFAULTS = dict(num_train_timesteps=2000, snr=0.15, sigma_min=0.01,
                          sigma_max=1348.0, sampling_eps=1e-5, correct_steps=1)

_TOP = {"fourier_proj": "time_proj", "temb_dense0": "time_embedding.linear_1",
        "temb_dense1": "time_embedding.linear_2", "conv_in": "conv_in"}
_RESNET = {"norm1": "norm1", "conv1": "conv1", "temb_proj": "time_emb_proj",
           "norm2": "norm2", "conv2": "conv2", "shortcut": "conv_shortcut"}
_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v",
              "proj_out": "to_out.0"}
_DOWN = re.compile(r"down_(\d+)_(block|attn)_(\d+)|down_(\d+)_(downsample|combine)")
_UP = re.compile(r"up_(\d+)_block_(\d+)|up_(\d+)_(attn|upsample|pyramid_norm|"
                 r"pyramid_conv)")


_field = diffusers_unet.config_field  # a config.json field or its default
# ---------------------------------------------------------------- GroupNorm groups
def diffusers_norm_groups(config: dict[str, Any]) -> dict[str, int]:
  """{diffusers GroupNorm module name: its group count}, as UNet2DModel and its Skip
  blocks build them (unet_2d.py, unet_2d_blocks.py of diffusers 0.42.1)."""
  widths = list(_field(config, "block_out_channels"))
  per_block = int(_field(config, "layers_per_block"))
  norm_groups = _field(config, "norm_num_groups")
  num_levels = len(widths)
  quarter = lambda channels: min(channels // 4, 32)  # noqa: E731
  groups = {}
  down_types = _field(config, "down_block_types")
  for level, out in enumerate(widths):
    in_ = widths[max(level - 1, 0)]
    for j in range(per_block):
      prefix = f"down_blocks.{level}.resnets.{j}"
      groups[f"{prefix}.norm1"] = quarter(in_ if j == 0 else out)
      groups[f"{prefix}.norm2"] = quarter(out)
      if down_types[level] == "AttnSkipDownBlock2D":
        groups[f"down_blocks.{level}.attentions.{j}.group_norm"] = 32
    if level < num_levels - 1:
      groups[f"down_blocks.{level}.resnet_down.norm1"] = quarter(out)
      groups[f"down_blocks.{level}.resnet_down.norm2"] = quarter(out)
  middle = widths[-1]
  mid_groups = norm_groups if norm_groups is not None else quarter(middle)
  for j in range(2):
    groups[f"mid_block.resnets.{j}.norm1"] = mid_groups
    groups[f"mid_block.resnets.{j}.norm2"] = mid_groups
  attn_groups = _field(config, "attn_norm_num_groups")
  groups["mid_block.attentions.0.group_norm"] = (
      attn_groups if attn_groups is not None else mid_groups)
  reversed_widths = widths[::-1]
  out = reversed_widths[0]
  up_types = _field(config, "up_block_types")
  for k in range(num_levels):
    previous, out = out, reversed_widths[k]
    in_ = reversed_widths[min(k + 1, num_levels - 1)]
    attention = up_types[k] == "AttnSkipUpBlock2D"
    for j in range(per_block + 1):
      skip = in_ if j == per_block else out
      resnet_in = previous if j == 0 else out
      prefix = f"up_blocks.{k}.resnets.{j}"
      # AttnSkipUpBlock2D writes min(resnet_in + skip // 4, 32) (operator precedence).
      groups[f"{prefix}.norm1"] = (min(resnet_in + skip // 4, 32) if attention
                                   else quarter(resnet_in + skip))
      groups[f"{prefix}.norm2"] = quarter(out)
    if attention:
      groups[f"up_blocks.{k}.attentions.0.group_norm"] = 32
    if k < num_levels - 1:
      groups[f"up_blocks.{k}.resnet_up.norm1"] = quarter(out)
      groups[f"up_blocks.{k}.resnet_up.norm2"] = quarter(out)
      groups[f"up_blocks.{k}.skip_norm"] = quarter(out)
  groups["conv_norm_out"] = (norm_groups if norm_groups is not None
                             else quarter(widths[0]))
  return groups


# --------------------------------------------------------------------- the configs
def check_model_config(model: ml_collections.ConfigDict) -> None:
  """The project's network must be the NCSN++ diffusers can express."""
  for name, want in (("name", "ncsnpp"), ("resblock_type", "biggan"), ("fir", True),
                     ("fir_kernel", (1, 3, 3, 1)), ("skip_rescale", True),
                     ("progressive", "output_skip"),
                     ("progressive_input", "input_skip"),
                     ("progressive_combine", "sum"), ("embedding_type", "fourier"),
                     ("conditional", False)):
    value = tuple(model[name]) if name == "fir_kernel" else model[name]
    if value != want:
      raise ValueError(f"config.model.{name}={value!r}: a diffusers NCSN++ "
                       f"(UNet2DModel with Skip blocks) converts to "
                       f"config.model.{name}={want!r} only.")


def check_unet_config(config: dict[str, Any], model: ml_collections.ConfigDict,
                      image_shape: tuple[int, ...], abstract_params: Any,
                      path: str) -> None:
  """Raises a one-line ValueError for the first config.json field the project's NCSNpp
  (config.model and the dataset's image shape) cannot hold exactly."""
  height, width, channels = image_shape
  ch, mult = int(model.ch), tuple(int(m) for m in model.ch_mult)
  attention = [height // 2**level in tuple(model.attn_resolutions)
               for level in range(len(mult))]
  head_dim = _field(config, "attention_head_dim")
  attention_widths = sorted({ch * m for m, a in zip(mult, attention) if a} |
                            {ch * mult[-1]})
  single_head = head_dim is None or all(head_dim == w for w in attention_widths)
  scale = _field(config, "mid_block_scale_factor")
  expected = [  # (field, what the project needs, value, what the project has)
      ("_class_name", "UNet2DModel", config.get("_class_name", "UNet2DModel"),
       "models/ncsnpp.py"),
      ("sample_size", (height, width),
       diffusers_unet.sample_size(config) or (height, width),
       f"the dataset's {height}x{width} images"),
      ("in_channels", channels, _field(config, "in_channels"),
       f"the dataset's {channels} channels"),
      ("out_channels", channels, _field(config, "out_channels"),
       f"{channels} output channels"),
      ("center_input_sample", bool(model.center_input),
       _field(config, "center_input_sample"), "config.model.center_input"),
      ("time_embedding_type", "fourier", _field(config, "time_embedding_type"),
       "Fourier features of log sigma"),
      ("time_embedding_dim", 4 * ch, _field(config, "time_embedding_dim") or 4 * ch,
       "4 * config.model.ch"),
      ("block_out_channels", tuple(ch * m for m in mult),
       _field(config, "block_out_channels"), "config.model.ch * config.model.ch_mult"),
      ("layers_per_block", int(model.num_res_blocks),
       _field(config, "layers_per_block"), "config.model.num_res_blocks"),
      ("down_block_types", tuple("AttnSkipDownBlock2D" if a else "SkipDownBlock2D"
                                 for a in attention),
       _field(config, "down_block_types"), "config.model.attn_resolutions"),
      ("up_block_types", tuple("AttnSkipUpBlock2D" if a else "SkipUpBlock2D"
                               for a in reversed(attention)),
       _field(config, "up_block_types"), "config.model.attn_resolutions"),
      ("mid_block_type", "UNetMidBlock2D", _field(config, "mid_block_type"),
       "a ResNet-attention-ResNet middle"),
      ("add_attention", True, _field(config, "add_attention"), "middle attention"),
      # The published files write sqrt(2) as 1.41421356237: the same float32.
      ("mid_block_scale_factor", "sqrt(2)",
       "sqrt(2)" if abs(float(scale) - math.sqrt(2.0)) < 1e-9 else scale,
       "residual sums over sqrt(2) (config.model.skip_rescale)"),
      ("act_fn", "silu", {"swish": "silu"}.get(_field(config, "act_fn"),
                                               _field(config, "act_fn")), "SiLU"),
      ("attention_head_dim", True, single_head,
       f"single-head attention at widths {attention_widths}"),
      ("norm_eps", layers.GROUP_NORM_EPSILON, _field(config, "norm_eps"),
       "layers.GROUP_NORM_EPSILON"),
      ("resnet_time_scale_shift", "default", _field(config, "resnet_time_scale_shift"),
       "a per-channel bias from the embedding"),
      ("class_embed_type", None, _field(config, "class_embed_type"),
       "an unconditional network"),
      ("num_class_embeds", None, _field(config, "num_class_embeds"),
       "an unconditional network"),
  ]
  for name, want, value, project in expected:
    if value != want:
      shown = config.get(name) if name in ("attention_head_dim",
                                           "mid_block_scale_factor") else value
      raise ValueError(f"{path}: {name}={shown!r} cannot be held exactly by this "
                       f"project's NCSN++, which has {project} ({want!r}).")
  check_norm_groups(config, model, abstract_params, path)


def check_norm_groups(config: dict[str, Any], model: ml_collections.ConfigDict,
                      abstract_params: Any, path: str) -> None:
  """Every GroupNorm must split its channels into diffusers' number of groups."""
  groups = diffusers_norm_groups(config)
  num_levels = len(tuple(model.ch_mult))
  for key, leaf in traverse_util.flatten_dict(abstract_params).items():
    if key[-1] != "scale":
      continue
    name, _ = diffusers_name(key, num_levels)
    module = name[:-len(".weight")]
    have = layers.num_norm_groups(int(leaf.shape[0]), int(model.num_groups))
    if module in groups and groups[module] != have:
      fixed = ".attentions." in module and not module.startswith("mid_block")
      raise ValueError(
          f"{path}: diffusers' {module} normalises {leaf.shape[0]} channels in "
          f"{groups[module]} groups, the project's {'/'.join(key[:-1])} in {have} "
          f"(config.model.num_groups={model.num_groups})" +
          ("; diffusers' Skip-block attention always uses 32 groups: attention levels "
           "need >= 128 channels." if fixed else "."))


def compare_scheduler(config: dict[str, Any], sde: ml_collections.ConfigDict,
                      sampling: ml_collections.ConfigDict, path: str) -> dict[str, Any]:
  """{field: (scheduler's value, config's)} where a ScoreSdeVeScheduler config differs
  from the project's sampler settings; raises for a scheduler of another process.

  The network is a function of (x, sigma), so these fields set only how it is sampled:
  the config (score_sde's training values) governs; differences are recorded in the
  checkpoint's metadata and logged.
  """
  name = config.get("_class_name", SCHEDULERS[0])
  if name not in SCHEDULERS:
    raise ValueError(f"{path}: _class_name={name!r}; an NCSN++ folder goes with a VE "
                     f"SDE scheduler ({' or '.join(SCHEDULERS)}).")
  field = lambda key: config.get(key, SCHEDULER_DEFAULTS[key])  # noqa: E731
  pairs = dict(sigma_min=(field("sigma_min"), sde.sigma_min),
               sigma_max=(field("sigma_max"), sde.sigma_max),
               num_train_timesteps=(field("num_train_timesteps"), sde.num_scales),
               sampling_eps=(field("sampling_eps"), sde.sample_eps),
               snr=(field("snr"), sampling.snr),
               correct_steps=(field("correct_steps"), sampling.n_steps_each))
  differences = {key: [float(a), float(b)] for key, (a, b) in pairs.items()
                 if not np.isclose(float(a), float(b), rtol=1e-9, atol=0.0)}
  for key, (theirs, ours) in differences.items():
    logging.warning("%s: %s=%s, the config has %s (the config's value is used).", path,
                    key, theirs, ours)
  return differences


# --------------------------------------------------------------------- the tensors
def diffusers_name(key: tuple[str, ...], num_levels: int) -> tuple[str, str]:
  """(diffusers tensor name, layout) of one project parameter path such as
  ('up_1_block_0', 'conv1', 'kernel'). Layouts: kernel (conv or linear), vector."""
  module, *layer, leaf = key
  top = num_levels - 1
  if module in _TOP:
    if layer:
      raise KeyError(key)
    prefix = _TOP[module]
  elif module in ("mid_block_0", "mid_block_1", "mid_attn"):
    table = _ATTENTION if module == "mid_attn" else _RESNET
    prefix = ("mid_block.attentions.0" if module == "mid_attn"
              else f"mid_block.resnets.{module[-1]}")
    if len(layer) != 1 or layer[0] not in table:
      raise KeyError(key)
    prefix = f"{prefix}.{table[layer[0]]}"
  elif match := _DOWN.fullmatch(module):
    if match.group(1):
      level, kind, index = match.group(1, 2, 3)
      table = _RESNET if kind == "block" else _ATTENTION
      prefix = f"down_blocks.{level}.{'resnets' if kind == 'block' else 'attentions'}"
      prefix = f"{prefix}.{index}"
    else:
      level, kind = match.group(4, 5)
      table = _RESNET if kind == "downsample" else {"conv": ""}
      prefix = (f"down_blocks.{level}.resnet_down" if kind == "downsample"
                else f"down_blocks.{level}.skip_conv")
    if len(layer) != 1 or layer[0] not in table:
      raise KeyError(key)
    prefix = f"{prefix}.{table[layer[0]]}".rstrip(".")
  elif match := _UP.fullmatch(module):
    if match.group(1):
      level, kind, index = match.group(1), "block", match.group(2)
    else:
      level, kind, index = match.group(3), match.group(4), None
    block = f"up_blocks.{top - int(level)}"
    if kind in ("pyramid_norm", "pyramid_conv"):
      if layer:
        raise KeyError(key)
      norm = kind == "pyramid_norm"
      prefix = ((f"{block}.skip_norm" if norm else f"{block}.skip_conv") if int(level)
                else ("conv_norm_out" if norm else "conv_out"))
    else:
      table = _ATTENTION if kind == "attn" else _RESNET
      if len(layer) != 1 or layer[0] not in table:
        raise KeyError(key)
      sub = {"block": f"resnets.{index}", "attn": "attentions.0",
             "upsample": "resnet_up"}[kind]
      prefix = f"{block}.{sub}.{table[layer[0]]}"
  else:
    raise KeyError(key)
  if module == "fourier_proj":
    if leaf != "W":
      raise KeyError(key)
    return f"{prefix}.weight", "vector"
  if leaf == "bias":
    return f"{prefix}.bias", "vector"
  if leaf == "scale":
    return f"{prefix}.weight", "vector"
  if leaf != "kernel":
    raise KeyError(key)
  return f"{prefix}.weight", "kernel"


def renamed_legacy(tensors: dict[str, np.ndarray], path: str) -> dict[str, np.ndarray]:
  """Names of older diffusers files -> today's: attention query/key/value/proj_attn
  (before 0.14, as diffusers renames them on load) and the Fourier weights time_proj.W
  (beside or instead of time_proj.weight; both must then agree)."""
  tensors = diffusers_unet.renamed_deprecated(tensors)
  if "time_proj.W" in tensors:
    tensors = dict(tensors)
    legacy = tensors.pop("time_proj.W")
    if "time_proj.weight" not in tensors:
      tensors["time_proj.weight"] = legacy
    elif not np.array_equal(np.asarray(legacy),
                            np.asarray(tensors["time_proj.weight"])):
      raise ValueError(f"{path}: time_proj.W and time_proj.weight (both the Fourier "
                       "frequencies) differ.")
  return tensors


def convert_tensors(tensors: dict[str, np.ndarray], abstract_params: Any,
                    num_levels: int, path: str) -> dict[str, Any]:
  """The project's parameter tree from diffusers tensors, every name and shape checked
  (common.assemble)."""
  return common.assemble(
      renamed_legacy(tensors, path), abstract_params,
      functools.partial(diffusers_name, num_levels=num_levels),
      diffusers_unet.torch_shape, diffusers_unet.to_project, path,
      "a diffusers NCSN++ UNet2DModel")


def convert(source: str, config: ml_collections.ConfigDict,
            image_shape: tuple[int, ...], abstract_params: Any) -> common.Converted:
  """Reads `source` and returns the project's parameters; every check passes first.

  The published weights are score_sde's EMA weights: params and ema_params both.
  """
  check_model_config(config.model)
  if config.sde.type != "vesde":
    raise ValueError(f"config.sde.type={config.sde.type!r}: NCSN++ weights with "
                     "Fourier features of log sigma are a VE SDE's ('vesde').")
  folder = diffusers_unet.read_folder(source)
  check_unet_config(folder.config, config.model, tuple(image_shape), abstract_params,
                    folder.config_path)
  differences = {}
  if folder.scheduler is not None:
    differences = compare_scheduler(folder.scheduler, config.sde, config.sampling,
                                    folder.scheduler_path)
  params = convert_tensors(folder.tensors, abstract_params,
                           len(tuple(config.model.ch_mult)), folder.weights_path)
  return common.Converted(
      params=params, files=folder.files, num_tensors=len(folder.tensors),
      details=dict(unet_config=folder.config, scheduler_config=folder.scheduler,
                   scheduler_differs_from_config=differences))


FORMAT = common.Format(
    families=("score",), source="folder",
    description="a diffusers NCSN++ folder (UNet2DModel with Fourier features and Skip "
    "blocks: config.json and diffusion_pytorch_model.safetensors or .bin, possibly in "
    "unet/, beside a ScoreSdeVeScheduler), e.g. google/ncsnpp-church-256",
    convert=convert)
