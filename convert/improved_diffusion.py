"""An improved-diffusion UNetModel state dict (.pt) as models/unet.py parameters.

Nichol & Dhariwal 2021 publish their CIFAR-10 networks (openai/improved-diffusion's
README: cifar10_uncond_50M_500K.pt for L_hybrid, cifar10_uncond_vlb_50M_500K.pt for
L_vlb) as `torch.save(model.state_dict())` of improved_diffusion/unet.py's UNetModel.
The file is read only with torch.load(weights_only=True): tensors, nothing else, so
no code from it ever runs. The names follow UNetModel.__init__, which numbers its
modules in construction order (tests/manifests/improved_diffusion_cifar10.txt lists
the CIFAR-10 file's 446 tensors):
  time_embed.0, time_embed.2 -> temb_dense0, temb_dense1 (the sinusoid has no weights:
    config.model.timestep_embedding='improved_diffusion', cosines first);
  input_blocks.0.0 -> conv_in; then per level l, per block j, input_blocks.k.0 (a
    ResBlock) -> down_{l}_block_{j} and input_blocks.k.1 (an AttentionBlock, where
    the map's size is in config.model.attn_resolutions) -> down_{l}_attn_{j}; below
    every level but the last, input_blocks.k.0.op (Downsample's stride-2 conv, padded
    (1, 1): config.model.downsample_padding='symmetric') -> down_{l}_downsample/conv;
  middle_block.0, .1, .2 -> mid_block_0, mid_attn, mid_block_1;
  output_blocks.k from the lowest level up, num_res_blocks + 1 per level:
    .0 -> up_{l}_block_{i}, .1 -> up_{l}_attn_{i}, and after a level's last block
    (l > 0) .1 or .2 (Upsample's conv) -> up_{l}_upsample/conv;
  out.0, out.2 -> norm_out, conv_out.
In a ResBlock in_layers.0, in_layers.2, emb_layers.1, out_layers.0, out_layers.3,
skip_connection (a 1x1 conv) -> norm1, conv1, temb_proj, norm2, conv2, nin_shortcut;
use_scale_shift_norm=True gives emb_layers.1 2C outputs, scale then shift, as
config.model.scale_shift_norm=True. In an AttentionBlock norm, qkv, proj_out (1x1
Conv1d) -> norm, (q, k, v), proj_out. qkv's 3C output channels are ordered per head,
[q, k, v] of head 0, then of head 1, ... (improved-diffusion's QKVAttention, which
guided-diffusion keeps as QKVAttentionLegacy); guided-diffusion's
use_new_attention_order=True orders them [q of all heads, k, v] instead
(`split_qkv`'s order 'new'). The checkpoint does not record its head count: it is
config.model.num_heads (the CIFAR-10 flags: 4).
Every GroupNorm is nn.GroupNorm(32, C): 32 groups, epsilon 1e-5
(config.model.norm_epsilon). Conv weights OIHW -> HWIO, Conv1d (out, in, 1) and
Linear (out, in) -> Dense (in, out), GroupNorm weight -> scale.

Not in the file: the diffusion process. The network was trained for the README's
flags (T=4000, cosine schedule, learned_range variances, timesteps rescaled to
t * 1000 / T): configs/iddpm_cifar.py.
"""

from __future__ import annotations

import re
from typing import Any

import ml_collections
import numpy as np
from flax import traverse_util

from convert import common
from models import layers

# UNetModel's fixed choices (improved_diffusion/nn.py: normalization = GroupNorm32(32,
# C), nn.GroupNorm's default epsilon).
NUM_GROUPS = 32
NORM_EPSILON = 1e-5
QKV_ORDERS = ("legacy", "new")

_TOP = {"conv_in": "input_blocks.0.0", "temb_dense0": "time_embed.0",
        "temb_dense1": "time_embed.2", "norm_out": "out.0", "conv_out": "out.2",
        "mid_block_0": "middle_block.0", "mid_attn": "middle_block.1",
        "mid_block_1": "middle_block.2"}
_RESBLOCK = {"norm1": "in_layers.0", "conv1": "in_layers.2",
             "temb_proj": "emb_layers.1", "norm2": "out_layers.0",
             "conv2": "out_layers.3", "nin_shortcut": "skip_connection"}
_ATTENTION = {"norm": "norm", "q": "qkv", "k": "qkv", "v": "qkv",
              "proj_out": "proj_out"}
_QKV = re.compile(r"(.*)\.qkv\.(weight|bias)")


# ------------------------------------------------------------------ the structure
def attention_levels(model: ml_collections.ConfigDict, height: int) -> list[bool]:
  """Per level: whether models/unet.py puts attention there (its feature-map size)."""
  return [height // 2**level in tuple(model.attn_resolutions)
          for level in range(len(model.ch_mult))]


def module_prefixes(num_levels: int, num_res_blocks: int,
                    attention: list[bool]) -> dict[str, tuple[str, dict[str, str]]]:
  """project module -> (UNetModel module name, {project layer: UNetModel layer}), in
  UNetModel.__init__'s construction order."""
  table: dict[str, tuple[str, dict[str, str]]] = {
      name: (prefix, _ATTENTION if name == "mid_attn" else
             _RESBLOCK if name.startswith("mid_block") else {})
      for name, prefix in _TOP.items()}
  index = 1
  for level in range(num_levels):
    for block in range(num_res_blocks):
      table[f"down_{level}_block_{block}"] = (f"input_blocks.{index}.0", _RESBLOCK)
      if attention[level]:
        table[f"down_{level}_attn_{block}"] = (f"input_blocks.{index}.1", _ATTENTION)
      index += 1
    if level != num_levels - 1:
      table[f"down_{level}_downsample"] = (f"input_blocks.{index}.0", {"conv": "op"})
      index += 1
  index = 0
  for level in reversed(range(num_levels)):
    for block in range(num_res_blocks + 1):
      table[f"up_{level}_block_{block}"] = (f"output_blocks.{index}.0", _RESBLOCK)
      if attention[level]:
        table[f"up_{level}_attn_{block}"] = (f"output_blocks.{index}.1", _ATTENTION)
      if level and block == num_res_blocks:
        table[f"up_{level}_upsample"] = (
            f"output_blocks.{index}.{1 + int(attention[level])}", {"conv": "conv"})
      index += 1
  return table


def source_name(key: tuple[str, ...], table: dict[str, tuple[str, dict[str, str]]]
                ) -> tuple[str, str]:
  """(UNetModel tensor name, layout) of one project parameter path. q, k and v are
  thirds of one qkv tensor: named '<...>.qkv.weight[q]' and so on (`split_qkv`).
  Layouts: conv (OIHW), linear (out, in), conv1x1 (out, in, 1, 1), conv1d
  (out, in, 1), vector."""
  module, *layer, leaf = key
  if module not in table:
    raise KeyError(key)
  prefix, sublayers = table[module]
  if sublayers:
    if len(layer) != 1 or layer[0] not in sublayers:
      raise KeyError(key)
    prefix = f"{prefix}.{sublayers[layer[0]]}"
  elif layer:
    raise KeyError(key)
  name = {"kernel": "weight", "scale": "weight", "bias": "bias"}.get(leaf)
  if name is None:
    raise KeyError(key)
  name = f"{prefix}.{name}"
  if layer and layer[0] in ("q", "k", "v"):
    name = f"{name}[{layer[0]}]"
  if leaf != "kernel":
    return name, "vector"
  if layer in (["q"], ["k"], ["v"], ["proj_out"]):
    return name, "conv1d"
  if layer == ["nin_shortcut"]:
    return name, "conv1x1"
  if module.startswith("temb_dense") or layer == ["temb_proj"]:
    return name, "linear"
  return name, "conv"


# The checkpoint's layouts are PyTorch's (common.torch_shape, torch_to_project).
torch_shape = common.torch_shape
to_project = common.torch_to_project


def split_qkv(array: np.ndarray, num_heads: int, order: str) -> dict[str, np.ndarray]:
  """A qkv Conv1d weight (3C, C, 1) or bias (3C,) -> its q, k, v parts (C rows each),
  in the project's head-major channel order (channel = head * C / heads + d).

  'legacy' (improved-diffusion; guided-diffusion's QKVAttentionLegacy): the 3C rows
  are heads x [q, k, v] x C / heads. 'new' (guided-diffusion's QKVAttention):
  [q, k, v] x heads x C / heads.
  """
  rows = array.shape[0] // 3
  head_dim = rows // num_heads
  if order == "legacy":
    parts = array.reshape(num_heads, 3, head_dim, *array.shape[1:])
    parts = [parts[:, i].reshape(rows, *array.shape[1:]) for i in range(3)]
  elif order == "new":
    parts = [array[i * rows:(i + 1) * rows] for i in range(3)]
  else:
    raise ValueError(f"qkv order {order!r}; choose one of {QKV_ORDERS}.")
  return dict(zip("qkv", parts))


# ---------------------------------------------------------------------- checks
def check_config(config: ml_collections.ConfigDict, abstract_params: Any,
                 path: str) -> None:
  """Raises a one-line ValueError for the first config field with which the project's
  U-Net does not compute UNetModel's function exactly."""
  model = config.model
  for name, want, why in (
      ("timestep_embedding", "improved_diffusion",
       "UNetModel's timestep_embedding (cosines first, 10000^(-i/half))"),
      ("norm_epsilon", NORM_EPSILON, "nn.GroupNorm's epsilon"),
      ("conditional", False, "an unconditional UNetModel (no label_emb)"),
      ("coordinate_channels", False, "UNetModel's 3 input channels"),
      ("dtype", "float32", "float32 weights and activations")):
    if model[name] != want:
      raise ValueError(f"{path}: config.model.{name}={model[name]!r}, but "
                       f"improved-diffusion's UNetModel needs {want!r} ({why}).")
  if model.resamp_with_conv and model.downsample_padding != "symmetric":
    raise ValueError(f"{path}: config.model.downsample_padding="
                     f"{model.downsample_padding!r}, but UNetModel's Downsample conv "
                     "pads (1, 1): set it to 'symmetric'.")
  for name, want, why in (
      ("text.enabled", False, "no caption encoder"),
      ("superres.factor", 0, "no low-res input (SuperResModel is not supported)"),
      ("diffusion.rescale_timesteps", True,
       "the network saw t * 1000 / T (rescale_timesteps=True, the code's default)"),
      ("diffusion.prediction", "eps", "eps prediction (predict_xstart=False)")):
    section, field = name.split(".")
    if config[section][field] != want:
      raise ValueError(f"{path}: config.{name}={config[section][field]!r}, but the "
                       f"checkpoint needs {want!r} ({why}).")
  for key, leaf in traverse_util.flatten_dict(abstract_params).items():
    if key[-1] == "scale":   # every GroupNorm: UNetModel's has 32 groups
      groups = layers.num_norm_groups(int(leaf.shape[0]), int(model.num_groups))
      if groups != NUM_GROUPS:
        raise ValueError(
            f"{path}: the project's GroupNorm {'/'.join(key[:-1])} ({leaf.shape[0]} "
            f"channels) has {groups} groups with config.model.num_groups="
            f"{model.num_groups}, but UNetModel's have {NUM_GROUPS}.")


def check_checkpoint(tensors: dict[str, np.ndarray],
                     config: ml_collections.ConfigDict, abstract_params: Any,
                     table: dict[str, tuple[str, dict[str, str]]], path: str) -> None:
  """The architecture choices a state dict shows, against the config: one-line
  errors naming the config field (before the name-by-name check)."""
  model = config.model
  flat = traverse_util.flatten_dict(abstract_params)
  if "label_emb.weight" in tensors:
    raise ValueError(f"{path} is class-conditional (label_emb.weight): only "
                     "unconditional UNetModels convert.")
  has_downsample_conv = any(name.endswith(".op.weight") for name in tensors)
  for module, (prefix, _) in table.items():
    if module.endswith("_downsample") and not has_downsample_conv and \
        f"{prefix}.in_layers.0.weight" in tensors:
      raise ValueError(f"{path}: {prefix} is a ResBlock, not a Downsample conv "
                       "(guided-diffusion's resblock_updown=True), which "
                       "models/unet.py does not have.")
  checks = (  # (tensor, axis, project parameter, axis, config field)
      ("input_blocks.0.0.weight", 0, ("conv_in", "kernel"), 3, "config.model.ch"),
      ("out.2.weight", 0, ("conv_out", "kernel"), 3,
       "config.diffusion.var_type (6 outputs: 'learned_range')"))
  for name, axis, key, project_axis, field in checks:
    if name in tensors and key in flat and tensors[name].ndim > axis and \
        tensors[name].shape[axis] != flat[key].shape[project_axis]:
      raise ValueError(f"{path}: {name} has {tensors[name].shape[axis]} output "
                       f"channels, the project's {'/'.join(key)} "
                       f"{flat[key].shape[project_axis]}: check {field}.")
  emb, conv = (f"{_TOP['mid_block_0']}.{_RESBLOCK[n]}.weight"
               for n in ("temb_proj", "conv2"))
  if emb in tensors and conv in tensors and tensors[emb].ndim and tensors[conv].ndim:
    scale_shift = tensors[emb].shape[0] == 2 * tensors[conv].shape[0]
    if scale_shift != bool(model.scale_shift_norm):
      raise ValueError(f"{path}: {emb} has {tensors[emb].shape[0]} outputs for "
                       f"{tensors[conv].shape[0]} channels (use_scale_shift_norm="
                       f"{scale_shift}), but config.model.scale_shift_norm="
                       f"{model.scale_shift_norm}.")


# --------------------------------------------------------------------- converting
def convert_tensors(tensors: dict[str, np.ndarray], model: ml_collections.ConfigDict,
                    image_shape: tuple[int, ...], abstract_params: Any, path: str,
                    qkv_order: str = "legacy") -> dict[str, Any]:
  """The project's parameter tree from a UNetModel state dict: every name and shape
  checked, with one-line errors naming the first unmapped, missing or mis-shaped
  tensor (the qkv tensors by their own names, before they are split)."""
  flat = traverse_util.flatten_dict(abstract_params)
  table = module_prefixes(len(model.ch_mult), int(model.num_res_blocks),
                          attention_levels(model, int(image_shape[0])))
  keys = {}
  for key in flat:
    try:
      keys[key] = source_name(key, table)
    except KeyError:
      raise ValueError(f"The project's parameter {'/'.join(key)} has no counterpart in "
                       "improved-diffusion's UNetModel (check config.model).") from None
  wanted: dict[str, tuple[int, ...]] = {}   # whole tensors, qkv unsplit
  for key, (name, layout) in keys.items():
    shape = torch_shape(tuple(flat[key].shape), layout)
    if name.endswith("]"):
      name = name[:-3]
      shape = (3 * shape[0], *shape[1:])
    wanted[name] = shape
  unmapped = [name for name in tensors if name not in wanted]
  if unmapped:
    raise ValueError(f"{path}: tensor {unmapped[0]!r} has no place in the project's "
                     f"network ({len(unmapped)} such tensor(s); check config.model).")
  missing = [name for name in wanted if name not in tensors]
  if missing:
    raise ValueError(f"{path}: tensor {missing[0]!r} is missing ({len(missing)} "
                     "missing; check config.model).")
  split = {}
  for name, array in tensors.items():
    match = _QKV.fullmatch(name)
    if match is None:
      split[name] = array
      continue
    if tuple(array.shape) != wanted[name]:
      raise ValueError(f"{path}: tensor {name!r} has shape {tuple(array.shape)}, but "
                       f"the project's attention needs {wanted[name]}.")
    for part, value in split_qkv(array, int(model.num_heads), qkv_order).items():
      split[f"{name}[{part}]"] = value
  return common.assemble(split, abstract_params, lambda key: keys[key], torch_shape,
                         to_project, path, "improved-diffusion's UNetModel")


def convert(source: str, config: ml_collections.ConfigDict,
            image_shape: tuple[int, ...], abstract_params: Any,
            qkv_order: str = "legacy") -> common.Converted:
  """Reads the state dict at `source`; every check passes before it returns."""
  files: dict[str, str] = {}
  tensors = common.read_torch_state_dict(common.read_bytes(source, files), source)
  check_config(config, abstract_params, source)
  model = config.model
  table = module_prefixes(len(model.ch_mult), int(model.num_res_blocks),
                          attention_levels(model, int(image_shape[0])))
  check_checkpoint(tensors, config, abstract_params, table, source)
  params = convert_tensors(tensors, model, image_shape, abstract_params, source,
                           qkv_order)
  return common.Converted(
      params=params, files=files, num_tensors=len(tensors),
      details=dict(qkv_order=qkv_order, num_heads=int(model.num_heads)))


FORMAT = common.Format(
    families=("ddpm",), source="file",
    description="an improved-diffusion UNetModel state dict (.pt) such as "
    "openai/improved-diffusion's cifar10_uncond_50M_500K.pt",
    convert=convert)
