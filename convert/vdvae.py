"""openai/vdvae's published PyTorch state dicts as models/hvae.py parameters.

The README of openai/vdvae publishes, per dataset, `<run>-model-ema.th` (the EMA
weights its --test_eval evaluates; for CIFAR-10 only these, four seeds) and for some
runs `<run>-model.th` (the raw weights) beside it: train_helpers.save_model's
torch.save of a VAE's state_dict(), the raw one through DistributedDataParallel (its
names start with 'module.', which restore_params strips, as here). They are read with
torch.load(weights_only=True): tensors only, no code runs.

--source is the EMA file. When `<run>-model.th` lies beside `<run>-model-ema.th`, the
raw weights become params and the EMA weights ema_params (what --mode=eval and sampling
use, config.sampling.use_ema); otherwise both are the EMA weights.

The state dict (vae.py, vae_helpers.py; tests/manifests/vdvae_cifar10.txt lists the
CIFAR-10 one) and the project's names:
  encoder.in_conv                          -> encoder/in_conv
  encoder.enc_blocks.<i>.c1..c4            -> encoder/block_<i>/c1..c4
  decoder.dec_blocks.<i>.enc.c1..c4        -> dec_block_<i>/posterior/c1..c4
  decoder.dec_blocks.<i>.prior.c1..c4      -> dec_block_<i>/prior/c1..c4
  decoder.dec_blocks.<i>.z_proj            -> dec_block_<i>/z_proj
  decoder.dec_blocks.<i>.resnet.c1..c4     -> dec_block_<i>/resnet/c1..c4
  decoder.bias_xs.<j> [1, W, r, r]         -> initial_state_<r> [1, r, r, W], the j-th
                                              decoder resolution in increasing order
  decoder.gain, decoder.bias [1, W, 1, 1]  -> out_gain, out_bias [W]
  decoder.out_net.out_conv                 -> out_conv
Conv weights OIHW -> HWIO. The computation is VDVAE's (models/hvae.py follows vae.py:
the same bottleneck blocks with exact GELUs, the posterior on [state, activation]
before the prior's features are added, nearest-neighbour mixing-in, 1 / sqrt(N) only
at initialisation; the encoder input standardised as data.py does, the likelihood on
[-1, 1] with the same mixture layout), so no config field changes the network.
What the weights cannot show is checked against the config where it can be: the
resolutions of the decoder's initial states, the block counts, kernel sizes (3x3 above
resolution 2) and widths; the 'm' mixing-in of config.hvae.dec_blocks must be the
hps.py string (configs/vdvae_cifar.py has CIFAR-10's).
"""

from __future__ import annotations

import os
import re
from typing import Any

import ml_collections
import numpy as np

from convert import common
from models import hvae as hvae_models

EMA_SUFFIX, RAW_SUFFIX = "-model-ema.th", "-model.th"
DDP_PREFIX = "module."
# The project's decoder-block part -> VDVAE's DecBlock attribute.
DECODER_PARTS = {"posterior": "enc", "prior": "prior", "resnet": "resnet"}
# data.py's encoder-input statistics (shift = -mean, scale = 1 / std) per dataset.
INPUT_STATISTICS = {"cifar10": (120.63838, 64.16736)}


def torch_name(key: tuple[str, ...], resolutions: list[int]) -> tuple[str, str]:
  """(VDVAE's tensor name, layout) of one project parameter path. Layouts: conv
  (OIHW), vector, state ([1, W, r, r]), channel ([1, W, 1, 1])."""
  *module, leaf = key
  if not module:
    if match := re.fullmatch(r"initial_state_(\d+)", leaf):
      if int(match.group(1)) not in resolutions:
        raise KeyError(key)
      return f"decoder.bias_xs.{resolutions.index(int(match.group(1)))}", "state"
    names = {"out_gain": "decoder.gain", "out_bias": "decoder.bias"}
    if leaf not in names:
      raise KeyError(key)
    return names[leaf], "channel"
  if module == ["encoder", "in_conv"]:
    prefix = "encoder.in_conv"
  elif module == ["out_conv"]:
    prefix = "decoder.out_net.out_conv"
  elif len(module) == 3 and module[0] == "encoder" and (
      match := re.fullmatch(r"block_(\d+)", module[1])) and re.fullmatch(r"c[1-4]",
                                                                         module[2]):
    prefix = f"encoder.enc_blocks.{match.group(1)}.{module[2]}"
  elif match := re.fullmatch(r"dec_block_(\d+)", module[0]):
    block = f"decoder.dec_blocks.{match.group(1)}"
    if module[1:] == ["z_proj"]:
      prefix = f"{block}.z_proj"
    elif (len(module) == 3 and module[1] in DECODER_PARTS
          and re.fullmatch(r"c[1-4]", module[2])):
      prefix = f"{block}.{DECODER_PARTS[module[1]]}.{module[2]}"
    else:
      raise KeyError(key)
  else:
    raise KeyError(key)
  if leaf == "kernel":
    return f"{prefix}.weight", "conv"
  if leaf == "bias":
    return f"{prefix}.bias", "vector"
  raise KeyError(key)


def torch_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
  """VDVAE's shape of a project parameter of `shape`."""
  if layout == "state":     # [1, r, r, W] <- [1, W, r, r]
    return (shape[0], shape[3], shape[1], shape[2])
  if layout == "channel":   # [W] <- [1, W, 1, 1]
    return (1, shape[0], 1, 1)
  return common.torch_shape(shape, layout)


def to_project(array: np.ndarray, layout: str) -> np.ndarray:
  if layout == "state":
    return array.transpose(0, 2, 3, 1)
  if layout == "channel":
    return array.reshape(-1)
  return common.torch_to_project(array, layout)


# -------------------------------------------------------------------- the checks
def check_config(shapes: dict[str, tuple[int, ...]], config: ml_collections.ConfigDict,
                 image_shape: tuple[int, ...], path: str) -> None:
  """Raises a one-line ValueError for the first config field that differs from the
  network the state dict was saved from (where its shapes show it)."""
  h, width = config.hvae, int(config.model.ch)

  def shape(name: str) -> tuple[int, ...]:
    if name not in shapes:
      raise ValueError(f"{path}: no tensor {name!r}: not a state dict of "
                       "openai/vdvae's VAE.")
    return shapes[name]

  enc = hvae_models.parse_block_spec(h.enc_blocks)
  dec = hvae_models.parse_block_spec(h.dec_blocks)
  found_enc = len({m.group(1) for n in shapes
                   if (m := re.match(r"encoder\.enc_blocks\.(\d+)\.", n))})
  found_dec = len({m.group(1) for n in shapes
                   if (m := re.match(r"decoder\.dec_blocks\.(\d+)\.", n))})
  in_conv = shape("encoder.in_conv.weight")
  states = sorted((int(m.group(1)), shapes[n]) for n in shapes
                  if (m := re.fullmatch(r"decoder\.bias_xs\.(\d+)", n)))
  resolutions = sorted({b.resolution for b in dec})
  checks = [  # (config field, the checkpoint's value, the config's)
      ("model.ch", int(in_conv[0]), width),
      ("hvae.zdim", int(shape("decoder.dec_blocks.0.z_proj.weight")[1]), int(h.zdim)),
      ("hvae.bottleneck_multiple (inner width int(ch * multiple))",
       int(shape("decoder.dec_blocks.0.resnet.c1.weight")[0]),
       max(1, int(width * h.bottleneck_multiple))),
      ("hvae.num_mixtures", int(shape("decoder.out_net.out_conv.weight")[0]) // 10,
       int(h.num_mixtures)),
      ("hvae.enc_blocks (number of blocks)", found_enc, len(enc)),
      ("hvae.dec_blocks (number of blocks)", found_dec, len(dec)),
      ("hvae.dec_blocks (resolutions)", [s[-1] for _, s in states], resolutions),
  ]
  if int(in_conv[1]) != image_shape[-1] or image_shape[-1] != 3:
    raise ValueError(f"{path}: the state dict models {in_conv[1]}-channel images with "
                     "an RGB mixture (10 outputs per component); the dataset has "
                     f"{image_shape[-1]} channels.")
  for field, theirs, ours in checks:
    if theirs != ours:
      raise ValueError(f"{path}: the state dict has {theirs} where config.{field} "
                       f"gives {ours}; set the config to the network the weights "
                       "belong to.")
  expected = INPUT_STATISTICS.get(config.data.dataset)
  if expected and (float(h.input_mean), float(h.input_std)) != expected:
    raise ValueError(f"config.hvae.input_mean, input_std = {h.input_mean}, "
                     f"{h.input_std}: VDVAE standardises {config.data.dataset} with "
                     f"{expected[0]}, {expected[1]} (data.py); set them so.")


# ------------------------------------------------------------------- converting
def strip_ddp(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Names without DistributedDataParallel's 'module.' (as restore_params does)."""
  return {(n[len(DDP_PREFIX):] if n.startswith(DDP_PREFIX) else n): t
          for n, t in tensors.items()}


def convert_tensors(tensors: dict[str, np.ndarray], config: ml_collections.ConfigDict,
                    image_shape: tuple[int, ...], abstract_params: Any,
                    path: str) -> dict[str, Any]:
  """The project's parameter tree from one state dict, every check first."""
  tensors = strip_ddp(tensors)
  check_config({n: tuple(np.shape(t)) for n, t in tensors.items()}, config,
               tuple(image_shape), path)
  resolutions = sorted({b.resolution
                        for b in hvae_models.parse_block_spec(config.hvae.dec_blocks)})
  return common.assemble(tensors, abstract_params,
                         lambda key: torch_name(key, resolutions), torch_shape,
                         to_project, path, "openai/vdvae's VAE")


def raw_path(source: str) -> str | None:
  """`<run>-model.th` beside `<run>-model-ema.th`, if it exists."""
  if not source.endswith(EMA_SUFFIX):
    return None
  path = source[:-len(EMA_SUFFIX)] + RAW_SUFFIX
  return path if os.path.isfile(path) else None


def convert(source: str, config: ml_collections.ConfigDict,
            image_shape: tuple[int, ...], abstract_params: Any) -> common.Converted:
  """The EMA state dict `source` (and the raw one beside it, if any) -> params and
  ema_params; every check passes first."""
  files: dict[str, str] = {}
  ema_tensors = common.read_torch_state_dict(common.read_bytes(source, files), source)
  ema_params = convert_tensors(ema_tensors, config, image_shape, abstract_params,
                               source)
  params, num_tensors, raw = ema_params, len(ema_tensors), raw_path(source)
  if raw is not None:
    raw_tensors = common.read_torch_state_dict(common.read_bytes(raw, files), raw)
    params = convert_tensors(raw_tensors, config, image_shape, abstract_params, raw)
    num_tensors += len(raw_tensors)
  details = dict(ema_source=os.path.abspath(source),
                 raw_source=None if raw is None else os.path.abspath(raw),
                 params="raw weights" if raw else "EMA weights (no raw file beside)")
  return common.Converted(params=params, ema_params=ema_params, files=files,
                          num_tensors=num_tensors, details=details)


FORMAT = common.Format(
    families=("hvae",), source="file",
    description="an openai/vdvae state dict, <run>-model-ema.th (with <run>-model.th "
    "beside it, the raw weights become params and the EMA ones ema_params), e.g. "
    "cifar10-seed0-iter-900000-model-ema.th",
    convert=convert)
