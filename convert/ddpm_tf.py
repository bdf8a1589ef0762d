"""The original DDPM TensorFlow checkpoints as models/unet.py parameters.

Ho et al. 2020 released TF1 checkpoints of their own code (github.com/hojonathanho/
diffusion, `diffusion_tf`): `diffusion_cifar10_model/model.ckpt-790000`, the LSUN
church, bedroom and cat models and CelebA-HQ, each `<prefix>.index` beside
`<prefix>.data-*-of-*` (and a `.meta` graph, never read here). `--source` is the prefix.
The files are read with tf.train.load_checkpoint, a tensor reader: no graph is imported
and nothing from the checkpoint runs.

What the checkpoint holds (diffusion_tf/models/unet.py and nn.py, and
tpu_utils.run_training's Adam and EMA; tests/manifests/ddpm_tf_*.txt list them):
  - the network under `model/`: conv_in, temb/dense0, temb/dense1,
    down_{i}/block_{j}, down_{i}/attn_{j}, down_{i}/downsample/conv, mid/block_1,
    mid/attn_1, mid/block_2, up_{i}/block_{j}, up_{i}/attn_{j}, up_{i}/upsample/conv,
    norm_out, conv_out; conv2d and dense layers hold W and b, the NIN (1x1) layers of
    attention (q, k, v, proj_out) and nin_shortcut hold W [in, out] and b, group norms
    (tf.contrib.layers.group_norm: 32 groups, epsilon 1e-6) hold gamma and beta;
  - `<variable>/ExponentialMovingAverage` for every network variable (decay 0.9999: the
    weights the paper's samples and scores use);
  - Adam's slots `<variable>/Adam` and `<variable>/Adam_1`, `beta1_power`,
    `beta2_power`, and `global_step`, which are ignored by name.
Anything else fails the conversion, naming it.

The raw weights go to params and the EMA weights to ema_params (`--mode=eval|sample`
use ema_params unless config.sampling.use_ema=False), so both of the authors' networks
can be sampled; a checkpoint without EMA variables gives its raw weights for both.

The layouts are the project's own: conv W is HWIO, dense and NIN W are [in, out];
the names map one to one (models/unet.py was written after this network):
  model/down_{i}/block_{j}/{norm1,conv1,temb_proj,norm2,conv2,nin_shortcut}
    -> down_{i}_block_{j}/..., likewise attn_{j} -> down_{i}_attn_{j}/{norm,q,k,v,
    proj_out}, down_{i}/downsample/conv -> down_{i}_downsample/conv, up_* alike;
  model/mid/{block_1, attn_1, block_2} -> mid_block_0, mid_attn, mid_block_1;
  model/temb/dense{0,1} -> temb_dense{0,1}; W, b, gamma, beta -> kernel, bias, scale,
    bias.
"""

from __future__ import annotations

import collections.abc
import os
import re
from typing import Any, Iterator

import ml_collections
import numpy as np
from flax import traverse_util

from convert import common
from models import layers

INDEX_SUFFIX = ".index"
EMA_SUFFIX = "/ExponentialMovingAverage"
# Adam's state (TF1 AdamOptimizer's slot and non-slot variable names) and the step:
# the training loop's, not the network's.
_ADAM_SLOT = re.compile(r"(.+)/Adam(_1)?")
IGNORED_NAMES = ("beta1_power", "beta2_power", "global_step")
# tf.contrib.layers.group_norm's defaults, which diffusion_tf/models/unet.py uses.
AUTHORS_GROUPS = 32
AUTHORS_NORM_EPSILON = 1e-6
# The forward process every released model was trained with (the paper's section 4;
# the scripts' defaults): T=1000, linear betas 1e-4 to 0.02, eps prediction.
AUTHORS_DIFFUSION = (("num_timesteps", 1000), ("beta_schedule", "linear"),
                     ("beta_start", 1e-4), ("beta_end", 0.02), ("prediction", "eps"))

_LEVEL_MODULE = re.compile(r"(down|up)_(\d+)_(block|attn)_(\d+)")
_RESAMPLE_MODULE = re.compile(r"(down|up)_(\d+)_(down|up)sample")
_TOP = {"conv_in": "conv_in", "conv_out": "conv_out", "norm_out": "norm_out",
        "temb_dense0": "temb/dense0", "temb_dense1": "temb/dense1"}
_MID = {"mid_block_0": "mid/block_1", "mid_attn": "mid/attn_1",
        "mid_block_1": "mid/block_2"}
_RESNET_LAYERS = ("norm1", "conv1", "temb_proj", "norm2", "conv2", "nin_shortcut")
_ATTENTION_LAYERS = ("norm", "q", "k", "v", "proj_out")
_NORMS = ("norm1", "norm2", "norm")


# ----------------------------------------------------------------------- reading
def index_path(prefix: str) -> str:
  return prefix + INDEX_SUFFIX


def open_checkpoint(prefix: str) -> common.TFCheckpoint:
  """The V2 checkpoint at `prefix` (its tensors read lazily by name)."""
  if not os.path.isfile(index_path(prefix)):
    raise ValueError(f"No {index_path(prefix)}: --source must be a TensorFlow "
                     "checkpoint prefix such as .../model.ckpt-790000 (the path "
                     "before .index and .data-00000-of-00001).")
  return common.TFCheckpoint(prefix, what="TensorFlow checkpoint")


class _Subset(collections.abc.Mapping):
  """Some of a checkpoint's names, still read lazily."""

  def __init__(self, checkpoint: collections.abc.Mapping, names: list[str]):
    self._checkpoint, self._names = checkpoint, names

  def __getitem__(self, name: str) -> np.ndarray:
    if name not in self._names:
      raise KeyError(name)
    return self._checkpoint[name]

  def __iter__(self) -> Iterator[str]:
    return iter(self._names)

  def __len__(self) -> int:
    return len(self._names)


def split_names(names: list[str]) -> tuple[list[str], list[str], list[str]]:
  """(network variables, their EMA shadows, ignored optimizer/step variables).

  An Adam slot is ignored only when the variable it belongs to is in the checkpoint;
  every name that is neither ignored nor an EMA shadow counts as a network variable
  (common.assemble then rejects the ones with no place in the network).
  """
  present = set(names)
  network, ema, ignored = [], [], []
  for name in names:
    slot = _ADAM_SLOT.fullmatch(name)
    if name in IGNORED_NAMES or (slot and slot.group(1) in present):
      ignored.append(name)
    elif name.endswith(EMA_SUFFIX):
      ema.append(name)
    else:
      network.append(name)
  return network, ema, ignored


# --------------------------------------------------------------------- the names
def tf_name(key: tuple[str, ...]) -> tuple[str, str]:
  """(checkpoint variable name, layout) of one project parameter path such as
  ('up_1_block_0', 'conv1', 'kernel'); the layout is always "same"."""
  module, *layer, leaf = key
  if module in _TOP and not layer:
    scope, is_norm = _TOP[module], module == "norm_out"
  else:
    level = _LEVEL_MODULE.fullmatch(module)
    resample = _RESAMPLE_MODULE.fullmatch(module)
    if module in _MID:
      scope, allowed = _MID[module], (_ATTENTION_LAYERS if module == "mid_attn"
                                      else _RESNET_LAYERS)
    elif level:
      side, index, kind, block = level.groups()
      scope = f"{side}_{index}/{kind}_{block}"
      allowed = _RESNET_LAYERS if kind == "block" else _ATTENTION_LAYERS
    elif resample and resample.group(1) == resample.group(3):
      side, index, _ = resample.groups()
      scope, allowed = f"{side}_{index}/{side}sample", ("conv",)
    else:
      raise KeyError(key)
    if len(layer) != 1 or layer[0] not in allowed:
      raise KeyError(key)
    scope, is_norm = f"{scope}/{layer[0]}", layer[0] in _NORMS
  names = ({"scale": "gamma", "bias": "beta"} if is_norm else
           {"kernel": "W", "bias": "b"})
  if leaf not in names:
    raise KeyError(key)
  return f"model/{scope}/{names[leaf]}", "same"


def _ema_name(key: tuple[str, ...]) -> tuple[str, str]:
  name, layout = tf_name(key)
  return name + EMA_SUFFIX, layout


def _same_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
  del layout
  return tuple(shape)


def _same_array(array: np.ndarray, layout: str) -> np.ndarray:
  del layout
  return array


# --------------------------------------------------------------------- the checks
def check_config(config: ml_collections.ConfigDict, abstract_params: Any,
                 groups: int | None = AUTHORS_GROUPS) -> None:
  """Raises a one-line ValueError for the first setting the weights cannot be run with
  exactly: what the tensor shapes do not show (group counts, heads, the forward
  process) and the model fields with a clearer message than a shape error.

  `groups`: the group count every GroupNorm must have (None skips it: tests with
  narrow networks that cannot have 32 groups).
  """
  model, diffusion = config.model, config.diffusion
  for name, want in (("resamp_with_conv", True), ("scale_shift_norm", False),
                     ("conditional", False), ("coordinate_channels", False),
                     ("num_heads", 1)):
    if model[name] != want:
      raise ValueError(f"config.model.{name}={model[name]!r}: diffusion_tf's U-Net "
                       f"converts to config.model.{name}={want!r} only.")
  if layers.GROUP_NORM_EPSILON != AUTHORS_NORM_EPSILON:
    raise ValueError(f"layers.GROUP_NORM_EPSILON={layers.GROUP_NORM_EPSILON} differs "
                     f"from tf.contrib.layers.group_norm's {AUTHORS_NORM_EPSILON}.")
  if groups is not None:
    for key, leaf in traverse_util.flatten_dict(abstract_params).items():
      if key[-1] != "scale":
        continue
      have = layers.num_norm_groups(int(leaf.shape[0]), int(model.num_groups))
      if have != groups:
        raise ValueError(
            f"The project's GroupNorm {'/'.join(key[:-1])} ({leaf.shape[0]} channels) "
            f"has {have} groups with config.model.num_groups={model.num_groups}; "
            f"diffusion_tf's group norms have {groups}.")
  for name, want in AUTHORS_DIFFUSION:
    value = diffusion[name]
    same = (np.isclose(float(value), want, rtol=1e-9, atol=0.0)
            if isinstance(want, float) else value == want)
    if not same:
      raise ValueError(f"config.diffusion.{name}={value!r}, but the released DDPM "
                       f"models were trained with {name}={want!r}.")


# ------------------------------------------------------------------ converting
def convert_checkpoint(checkpoint: collections.abc.Mapping, abstract_params: Any,
                       path: str) -> tuple[dict[str, Any], dict[str, Any] | None,
                                           dict[str, Any]]:
  """(params, ema_params or None, details) from a checkpoint's tensors by name;
  common.assemble checks every name and shape (one-line errors naming the first
  unmapped, missing or mis-shaped variable)."""
  network, ema, ignored = split_names(list(checkpoint))
  params = common.assemble(_Subset(checkpoint, network), abstract_params, tf_name,
                           _same_shape, _same_array, path, "diffusion_tf's U-Net")
  ema_params = None
  if ema:
    ema_params = common.assemble(_Subset(checkpoint, ema), abstract_params, _ema_name,
                                 _same_shape, _same_array, path,
                                 "diffusion_tf's U-Net's EMA variables")
  details = dict(num_variables=len(checkpoint), num_ignored=len(ignored),
                 ema=bool(ema))
  if "global_step" in checkpoint:
    step = np.asarray(checkpoint["global_step"])
    if step.shape == () and np.issubdtype(step.dtype, np.integer):
      details["global_step"] = int(step)
  return params, ema_params, details


def convert(source: str, config: ml_collections.ConfigDict,
            image_shape: tuple[int, ...], abstract_params: Any,
            groups: int | None = AUTHORS_GROUPS) -> common.Converted:
  """Reads the checkpoint at prefix `source`; every check passes before it returns."""
  del image_shape   # the variable names and shapes fix it (attention at 16x16)
  check_config(config, abstract_params, groups)
  checkpoint = open_checkpoint(source)
  params, ema_params, details = convert_checkpoint(checkpoint, abstract_params, source)
  files: dict[str, str] = {}
  checkpoint.record_files(files)
  num_tensors = details["num_variables"] - details["num_ignored"]
  return common.Converted(params=params, ema_params=ema_params, files=files,
                          num_tensors=num_tensors, details=details)


FORMAT = common.Format(
    families=("ddpm",), source="tf_checkpoint",
    description="a diffusion_tf (Ho et al. 2020) TensorFlow checkpoint prefix, e.g. "
    "diffusion_cifar10_model/model.ckpt-790000 (beside its .index and .data-* files); "
    "raw weights -> params, EMA -> ema_params",
    convert=convert)
