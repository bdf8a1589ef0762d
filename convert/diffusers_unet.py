"""A diffusers UNet2DModel folder as models/unet.py parameters (files in, numpy out).

The folder is what google/ddpm-cifar10-32 publishes (config.json beside
diffusion_pytorch_model.safetensors or .bin) or a pipeline's `save_pretrained` layout,
the U-Net in unet/ beside scheduler/. The .safetensors file is read with
safetensors.numpy (no torch); the .bin only with torch.load(weights_only=True), which
unpickles tensors and refuses anything else: nothing here runs code from a checkpoint.

The correspondence (benchmarks/vs_diffusers.py builds the same network the other way):
  conv_in, time_embedding.linear_1/2 -> conv_in, temb_dense0/1 (the sinusoidal part has
    no weights: flip_sin_to_cos=False, freq_shift=1 is layers.timestep_embedding);
  down_blocks.i.{resnets.j, attentions.j, downsamplers.0.conv} -> down_{i}_block_{j},
    down_{i}_attn_{j}, down_{i}_downsample/conv (downsample_padding=0: TF's 'SAME');
  mid_block.{resnets.0, attentions.0, resnets.1} -> mid_block_0, mid_attn, mid_block_1;
  up_blocks.i.* -> up_{L-1-i}_* (diffusers numbers the up path from the bottom);
  conv_norm_out, conv_out -> norm_out, conv_out;
  in a ResNet block norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut (1x1 conv)
    -> norm1, conv1, temb_proj, norm2, conv2, nin_shortcut (a Dense);
  in an attention block group_norm, to_q, to_k, to_v, to_out.0 (before diffusers 0.14:
    query, key, value, proj_attn) -> norm, q, k, v, proj_out.
Conv weights OIHW -> HWIO, linear (out, in) -> (in, out), GroupNorm weight -> scale.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Any

import ml_collections
import numpy as np
from flax import traverse_util

from convert import common
from models import layers

CONFIG_FILE = "config.json"
# In the order they are preferred: safetensors needs no unpickling at all.
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
SCHEDULER_FILE = "scheduler_config.json"

# UNet2DModel.__init__'s defaults (diffusers 0.42.1) for the fields checked below: a
# config.json that leaves a field out means its default (tests/test_convert.py compares).
UNET_DEFAULTS = dict(
    sample_size=None, in_channels=3, out_channels=3, center_input_sample=False,
    time_embedding_type="positional", time_embedding_dim=None, freq_shift=0,
    flip_sin_to_cos=True,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D",
                      "AttnDownBlock2D"),
    mid_block_type="UNetMidBlock2D",
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(224, 448, 672, 896), layers_per_block=2, mid_block_scale_factor=1,
    downsample_padding=1, downsample_type="conv", upsample_type="conv", act_fn="silu",
    attention_head_dim=8, norm_num_groups=32, attn_norm_num_groups=None, norm_eps=1e-5,
    resnet_time_scale_shift="default", add_attention=True, class_embed_type=None,
    num_class_embeds=None)
# DDPMScheduler's defaults (the DDPM paper's) for the fields checked.
SCHEDULER_DEFAULTS = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                          beta_schedule="linear", trained_betas=None,
                          prediction_type="epsilon")
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v"}   # diffusers -> config.diffusion

_TOP = {"conv_in": "conv_in", "temb_dense0": "time_embedding.linear_1",
        "temb_dense1": "time_embedding.linear_2", "norm_out": "conv_norm_out",
        "conv_out": "conv_out"}
_RESNET = {"norm1": "norm1", "conv1": "conv1", "temb_proj": "time_emb_proj",
           "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v",
              "proj_out": "to_out.0"}
_DEPRECATED_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v",
                         "proj_attn": "to_out.0"}
_MODULE = re.compile(r"(down|up)_(\d+)_(block|attn)_(\d+)|(down|up)_(\d+)_(down|up)sample")


# ----------------------------------------------------------------------- reading
def unet_folder(source: str) -> str:
  """The folder holding the U-Net's config.json: `source` or `source`/unet."""
  for folder in (os.path.join(source, "unet"), source):
    if os.path.isfile(os.path.join(folder, CONFIG_FILE)):
      return folder
  raise ValueError(f"No {CONFIG_FILE} in {source} or {os.path.join(source, 'unet')}: "
                   "--source must be a diffusers UNet2DModel (or pipeline) folder.")


@dataclasses.dataclass
class Folder:
  """What a diffusers folder holds, as read."""
  tensors: dict[str, np.ndarray]
  config: dict[str, Any]
  config_path: str
  weights_path: str
  scheduler: dict[str, Any] | None
  scheduler_path: str | None
  files: dict[str, str]   # absolute path -> SHA-256 of the bytes read


def read_folder(source: str) -> Folder:
  """The U-Net's config, tensors and (where present) its scheduler's config."""
  folder = unet_folder(source)
  files: dict[str, str] = {}
  config_path = os.path.join(folder, CONFIG_FILE)
  config = common.read_json(config_path, files)
  scheduler = scheduler_path = None
  # A pipeline's scheduler/ beside unet/, or the lone U-Net's scheduler_config.json.
  for path in (os.path.join(source, "scheduler", SCHEDULER_FILE),
               os.path.join(folder, SCHEDULER_FILE)):
    if os.path.isfile(path):
      scheduler, scheduler_path = common.read_json(path, files), path
      break
  weights = next((os.path.join(folder, name) for name in WEIGHT_FILES
                  if os.path.isfile(os.path.join(folder, name))), None)
  if weights is None:
    present = sorted(os.listdir(folder))
    raise ValueError(f"No {' or '.join(WEIGHT_FILES)} in {folder} (it holds {present}); "
                     "sharded or other checkpoint files are not supported.")
  data = common.read_bytes(weights, files)
  read = (common.read_safetensors if weights.endswith(".safetensors")
          else common.read_torch_state_dict)
  return Folder(tensors=read(data, weights), config=config, config_path=config_path,
                weights_path=weights, scheduler=scheduler, scheduler_path=scheduler_path,
                files=files)


# --------------------------------------------------------------------- the configs
def config_field(config: dict[str, Any], name: str) -> Any:
  """A UNet2DModel config.json field, its default where left out (lists as tuples)."""
  value = config.get(name, UNET_DEFAULTS[name])
  return tuple(value) if isinstance(value, list) else value


_field = config_field


def sample_size(config: dict[str, Any]) -> tuple[int, int] | None:
  """config.json's sample_size as (height, width); None where it is not given."""
  size = _field(config, "sample_size")
  return tuple(size) if isinstance(size, tuple) else (
      None if size is None else (size, size))


def attention_levels(model: ml_collections.ConfigDict, image_size: int) -> list[bool]:
  """Per level: whether models/unet.py puts attention there (its feature-map size)."""
  return [image_size // 2**level in tuple(model.attn_resolutions)
          for level in range(len(model.ch_mult))]


def check_unet_config(config: dict[str, Any], model: ml_collections.ConfigDict,
                      image_shape: tuple[int, ...], abstract_params: Any,
                      path: str) -> None:
  """Raises a one-line ValueError for the first field the project's U-Net (config.model
  and the dataset's image shape) cannot hold exactly."""
  height, width, channels = image_shape
  ch, mult = int(model.ch), tuple(int(m) for m in model.ch_mult)
  flat = traverse_util.flatten_dict(abstract_params)
  out_channels = int(flat[("conv_out", "kernel")].shape[-1])
  attention = attention_levels(model, height)

  def heads(width_: int) -> int | None:
    head_dim = _field(config, "attention_head_dim")
    if head_dim is None:
      return 1
    return width_ // head_dim if width_ % head_dim == 0 else None

  attention_widths = sorted({ch * m for m, a in zip(mult, attention) if a} |
                            {ch * mult[-1]})
  expected = [  # (field, what the project needs, value, what the project has)
      ("_class_name", "UNet2DModel", config.get("_class_name", "UNet2DModel"),
       "models/unet.py"),
      ("sample_size", (height, width), sample_size(config) or (height, width),
       f"the dataset's {height}x{width} images"),
      ("in_channels", channels, _field(config, "in_channels"),
       f"the dataset's {channels} channels"),
      ("out_channels", out_channels, _field(config, "out_channels"),
       f"{out_channels} network outputs (config.diffusion.var_type)"),
      ("center_input_sample", False, _field(config, "center_input_sample"),
       "inputs in [-1, 1]"),
      ("time_embedding_type", "positional", _field(config, "time_embedding_type"),
       "the sinusoidal embedding"),
      ("time_embedding_dim", 4 * ch, _field(config, "time_embedding_dim") or 4 * ch,
       "4 * config.model.ch"),
      ("flip_sin_to_cos", False, _field(config, "flip_sin_to_cos"), "sines first"),
      ("freq_shift", 1, _field(config, "freq_shift"),
       "frequencies max_period**(-i / (half - 1))"),
      ("block_out_channels", tuple(ch * m for m in mult),
       _field(config, "block_out_channels"), "config.model.ch * config.model.ch_mult"),
      ("layers_per_block", int(model.num_res_blocks), _field(config, "layers_per_block"),
       "config.model.num_res_blocks"),
      ("down_block_types", tuple("AttnDownBlock2D" if a else "DownBlock2D"
                                 for a in attention),
       _field(config, "down_block_types"), "config.model.attn_resolutions"),
      ("up_block_types", tuple("AttnUpBlock2D" if a else "UpBlock2D"
                               for a in reversed(attention)),
       _field(config, "up_block_types"), "config.model.attn_resolutions"),
      ("mid_block_type", "UNetMidBlock2D", _field(config, "mid_block_type"),
       "a ResNet-attention-ResNet middle"),
      ("mid_block_scale_factor", 1, _field(config, "mid_block_scale_factor"),
       "unscaled residuals"),
      ("downsample_padding", 0, _field(config, "downsample_padding"),
       "TF 'SAME' padding (0, 1) of the strided conv"),
      ("downsample_type", "conv", _field(config, "downsample_type"),
       "config.model.resamp_with_conv=True"),
      ("upsample_type", "conv", _field(config, "upsample_type"),
       "config.model.resamp_with_conv=True"),
      ("act_fn", "silu", {"swish": "silu"}.get(_field(config, "act_fn"),
                                               _field(config, "act_fn")), "SiLU"),
      ("attention_head_dim", [int(model.num_heads)] * len(attention_widths),
       [heads(w) for w in attention_widths],
       f"config.model.num_heads heads at widths {attention_widths}"),
      ("norm_eps", layers.GROUP_NORM_EPSILON, _field(config, "norm_eps"),
       "layers.GROUP_NORM_EPSILON"),
      ("attn_norm_num_groups", _field(config, "norm_num_groups"),
       _field(config, "attn_norm_num_groups") or _field(config, "norm_num_groups"),
       "one group count for every GroupNorm"),
      ("resnet_time_scale_shift", "default", _field(config, "resnet_time_scale_shift"),
       "config.model.scale_shift_norm=False"),
      ("add_attention", True, _field(config, "add_attention"), "middle attention"),
      ("class_embed_type", None, _field(config, "class_embed_type"),
       "an unconditional U-Net"),
      ("num_class_embeds", None, _field(config, "num_class_embeds"),
       "an unconditional U-Net"),
  ]
  for name, want, value, project in expected:
    if value != want:
      shown = value if name != "attention_head_dim" else config.get(name)
      raise ValueError(f"{path}: {name}={shown!r} cannot be held exactly by this "
                       f"project's U-Net, which has {project} ({want!r}).")
  for name, want in (("resamp_with_conv", True), ("scale_shift_norm", False),
                     ("conditional", False), ("coordinate_channels", False)):
    if model[name] != want:
      raise ValueError(f"config.model.{name}={model[name]!r}: a diffusers UNet2DModel "
                       f"converts to config.model.{name}={want!r} only.")
  groups = _field(config, "norm_num_groups")
  for key, leaf in flat.items():
    if key[-1] == "scale":   # every GroupNorm: the project's count must be diffusers'
      have = layers.num_norm_groups(int(leaf.shape[0]), int(model.num_groups))
      if have != groups:
        raise ValueError(
            f"{path}: norm_num_groups={groups} but the project's GroupNorm "
            f"{'/'.join(key[:-1])} ({leaf.shape[0]} channels) has {have} groups with "
            f"config.model.num_groups={model.num_groups}.")


def check_scheduler_config(config: dict[str, Any], diffusion: ml_collections.ConfigDict,
                           path: str) -> None:
  """The forward process the weights were trained for must be config.diffusion's."""
  field = lambda name: config.get(name, SCHEDULER_DEFAULTS[name])  # noqa: E731
  prediction = PREDICTIONS.get(field("prediction_type"), field("prediction_type"))
  for name, want, value, project in (
      ("trained_betas", None, field("trained_betas"), "a named beta schedule"),
      ("num_train_timesteps", int(diffusion.num_timesteps), field("num_train_timesteps"),
       "config.diffusion.num_timesteps"),
      ("beta_schedule", str(diffusion.beta_schedule), field("beta_schedule"),
       "config.diffusion.beta_schedule"),
      ("prediction_type", str(diffusion.prediction), prediction,
       "config.diffusion.prediction")):
    if value != want:
      raise ValueError(f"{path}: {name}={value!r} differs from {project} ({want!r}); "
                       "set the config to the scheduler the weights were trained with.")
  for name in ("beta_start", "beta_end"):
    value, want = float(field(name)), float(diffusion[name])
    if not np.isclose(value, want, rtol=1e-9, atol=0.0):
      raise ValueError(f"{path}: {name}={value!r} differs from config.diffusion.{name} "
                       f"({want!r}).")


# --------------------------------------------------------------------- the tensors
def diffusers_name(key: tuple[str, ...], num_levels: int) -> tuple[str, str]:
  """(diffusers tensor name, layout) of one project parameter path such as
  ('up_1_block_0', 'conv1', 'kernel'). Layouts: conv, linear, conv1x1, vector."""
  module, *layer, leaf = key
  if module in _TOP:
    prefix = _TOP[module]
    if layer:
      raise KeyError(key)
  else:
    match = _MODULE.fullmatch(module)
    if module in ("mid_block_0", "mid_block_1"):
      prefix, table = f"mid_block.resnets.{module[-1]}", _RESNET
    elif module == "mid_attn":
      prefix, table = "mid_block.attentions.0", _ATTENTION
    elif match and match.group(1):
      side, level, kind, index = match.group(1, 2, 3, 4)
      block = int(level) if side == "down" else num_levels - 1 - int(level)
      prefix = f"{side}_blocks.{block}.{'resnets' if kind == 'block' else 'attentions'}"
      prefix, table = f"{prefix}.{index}", _RESNET if kind == "block" else _ATTENTION
    elif match:
      side, level = match.group(5, 6)
      block = int(level) if side == "down" else num_levels - 1 - int(level)
      prefix, table = f"{side}_blocks.{block}.{side}samplers.0", {"conv": "conv"}
    else:
      raise KeyError(key)
    if len(layer) != 1 or layer[0] not in table:
      raise KeyError(key)
    prefix = f"{prefix}.{table[layer[0]]}"
  if leaf == "bias":
    return f"{prefix}.bias", "vector"
  if leaf == "scale":
    return f"{prefix}.weight", "vector"
  if leaf != "kernel":
    raise KeyError(key)
  layout = "conv1x1" if layer == ["nin_shortcut"] else "kernel"
  return f"{prefix}.weight", layout


def torch_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
  """The diffusers tensor's shape for a project parameter of `shape`."""
  if layout == "kernel" and len(shape) == 4:      # HWIO -> OIHW
    return (shape[3], shape[2], shape[0], shape[1])
  if layout == "kernel" and len(shape) == 2:      # (in, out) -> (out, in)
    return (shape[1], shape[0])
  if layout == "conv1x1":                         # Dense (in, out) <- Conv2d 1x1
    return (shape[1], shape[0], 1, 1)
  return tuple(shape)


def to_project(array: np.ndarray, layout: str) -> np.ndarray:
  if layout == "kernel" and array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  if layout == "kernel" and array.ndim == 2:
    return array.T
  if layout == "conv1x1":
    return array[:, :, 0, 0].T
  return array


def renamed_deprecated(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Attention names of checkpoints saved before diffusers 0.14 (google/ddpm-* among
  them) -> today's, as diffusers renames them on load; a name already present wins."""
  out = {}
  for name, value in tensors.items():
    parts = name.split(".")
    if len(parts) >= 3 and parts[-3] != "to_out" and ".attentions." in name and \
        parts[-2] in _DEPRECATED_ATTENTION:
      new = ".".join(parts[:-2] + [_DEPRECATED_ATTENTION[parts[-2]], parts[-1]])
      if new not in tensors:
        name = new
    out[name] = value
  return out


def convert_tensors(tensors: dict[str, np.ndarray], abstract_params: Any,
                    path: str) -> dict[str, Any]:
  """The project's parameter tree from diffusers tensors, every name and shape checked
  (common.assemble: one-line errors naming the first unmapped, missing or mis-shaped
  tensor)."""
  flat = traverse_util.flatten_dict(abstract_params)
  num_levels = 1 + max(int(m.group(2)) for key in flat
                       if (m := _MODULE.fullmatch(key[0])) and m.group(1) == "down")
  return common.assemble(
      renamed_deprecated(tensors), abstract_params,
      functools.partial(diffusers_name, num_levels=num_levels), torch_shape, to_project,
      path, "a diffusers UNet2DModel")


def convert(source: str, model: ml_collections.ConfigDict,
            diffusion: ml_collections.ConfigDict, image_shape: tuple[int, ...],
            abstract_params: Any) -> common.Converted:
  """Reads `source` and returns the project's parameters; every check passes first.

  `abstract_params`: the family's parameter tree (shapes suffice, jax.eval_shape).
  """
  folder = read_folder(source)
  check_unet_config(folder.config, model, tuple(image_shape), abstract_params,
                    folder.config_path)
  if folder.scheduler is not None:
    check_scheduler_config(folder.scheduler, diffusion, folder.scheduler_path)
  params = convert_tensors(folder.tensors, abstract_params, folder.weights_path)
  return common.Converted(
      params=params, files=folder.files, num_tensors=len(folder.tensors),
      details=dict(unet_config=folder.config, scheduler_config=folder.scheduler))


def convert_for_config(source: str, config: ml_collections.ConfigDict,
                       image_shape: tuple[int, ...], abstract_params: Any
                       ) -> common.Converted:
  return convert(source, config.model, config.diffusion, image_shape, abstract_params)


FORMAT = common.Format(
    families=("ddpm",), source="folder",
    description="a diffusers UNet2DModel folder (config.json and "
    "diffusion_pytorch_model.safetensors or .bin, possibly in unet/), e.g. "
    "google/ddpm-cifar10-32",
    convert=convert_for_config)
