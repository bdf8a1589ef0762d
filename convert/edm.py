"""An EDM network's state dict (.pt) as models/ncsnpp.py SongUNet parameters.

Karras et al. 2022 publish their networks (NVlabs/edm's README, e.g.
edm-cifar10-32x32-uncond-vp.pkl) as pickles of dict(ema=EDMPrecond, loss_fn,
augment_pipe, dataset_kwargs) whose classes carry their own source code
(torch_utils.persistence): unpickling one runs that code, so a .pkl is refused. The
EMA network's state dict, exported once with the authors' code in a checkout of
NVlabs/edm (`export_command`), is read with torch.load(weights_only=True) only.

The names are EDMPrecond's: its SongUNet (training/networks.py) is `model`, and
models/ncsnpp.py's SongUNet uses SongUNet's module names, '_' for the ModuleDict's '.':
  model.map_noise.freqs (NCSN++'s FourierEmbedding buffer) -> map_noise/W;
  model.map_label, map_augment (no bias), map_layer0, map_layer1 -> the same Denses;
  model.enc.<R>x<R>_conv, _aux_residual, _aux_skip -> enc_<R>x<R>_conv, ...;
  model.enc.<R>x<R>_down, _block<i> and model.dec.<R>x<R>_in0, _in1, _up, _block<i>
    (UNetBlocks) -> enc_<R>x<R>_down, ..., with norm0, conv0, affine, norm1, conv1,
    skip, norm2, qkv, proj inside;
  model.dec.<R>x<R>_aux_norm, _aux_conv -> dec_<R>x<R>_aux_norm, dec_<R>x<R>_aux_conv.
Conv weights OIHW -> HWIO, Linear (out, in) -> Dense (in, out), GroupNorm weight ->
scale. The attention's qkv 1x1 conv has its 3C output channels interleaved per channel
(UNetBlock reshapes them to [C / heads, 3] with one head: q, k, v = channels 0, 1, 2
mod 3); the project's qkv conv has [q | k | v] blocks. The resampling convs' fixed
`resample_filter` buffers hold no parameters: each must be config.model.fir_kernel's
outer product, normalised (checked, then dropped).

Not in the file: the preconditioning (EDMPrecond's sigma_data 0.5, c_noise =
log(sigma) / 4: config.sde.type='edm') and the sampler: configs/edm_cifar.py.
"""

from __future__ import annotations

import os
import re
from typing import Any

import ml_collections
import numpy as np
from flax import traverse_util

from convert import common
from models import layers

PREFIX = "model."     # EDMPrecond's attribute holding the SongUNet
SIGMA_DATA = 0.5      # EDMPrecond's default, which the published networks use
_BLOCK = re.compile(r"(enc|dec)_(\d+)x(\d+)_(down|up|in\d|block\d+)")
_BLOCK_LAYERS = ("norm0", "conv0", "affine", "norm1", "conv1", "skip", "norm2", "qkv",
                 "proj")
_DENSE = ("map_label", "map_augment", "map_layer0", "map_layer1")


def export_command(pkl_path: str) -> str:
  """The one line a user runs in a checkout of NVlabs/edm (its torch_utils and dnnlib
  unpickle the network) to write the EMA network's state dict beside the .pkl."""
  pt_path = os.path.splitext(pkl_path)[0] + ".pt"
  return (f"python -c \"import pickle, torch; net = pickle.load(open({pkl_path!r}, "
          f"'rb'))['ema']; torch.save(net.state_dict(), {pt_path!r})\"")


def refusal(path: str) -> str:
  return (f"{path} is a pickle of EDM's network classes, whose code runs when it is "
          "unpickled, so it is not read; export its EMA network's state dict with the "
          f"authors' code, in a checkout of NVlabs/edm: {export_command(path)} and "
          "pass the .pt as --source.")


# ---------------------------------------------------------------------- the names
def edm_name(key: tuple[str, ...]) -> tuple[str, str]:
  """(EDMPrecond state-dict name, layout) of one project parameter path. Layouts:
  conv (OIHW), qkv and qkv_bias (outputs interleaved), linear (out, in), vector."""
  module, *layer, leaf = key
  if module == "map_noise" and not layer and leaf == "W":
    return f"{PREFIX}map_noise.freqs", "vector"
  match = _BLOCK.fullmatch(module)
  if match:
    if len(layer) != 1 or layer[0] not in _BLOCK_LAYERS:
      raise KeyError(key)
    prefix = f"{PREFIX}{match.group(1)}.{module.split('_', 1)[1]}.{layer[0]}"
  elif layer:
    raise KeyError(key)
  elif module in _DENSE:
    prefix = f"{PREFIX}{module}"
  elif re.fullmatch(r"(enc|dec)_\d+x\d+_(conv|aux_residual|aux_skip|aux_norm|aux_conv)",
                    module):
    side, rest = module.split("_", 1)
    prefix = f"{PREFIX}{side}.{rest}"
  else:
    raise KeyError(key)
  if leaf == "bias" and layer == ["qkv"]:
    return f"{prefix}.bias", "qkv_bias"
  if leaf in ("scale", "bias"):
    return f"{prefix}.{'weight' if leaf == 'scale' else 'bias'}", "vector"
  if leaf != "kernel":
    raise KeyError(key)
  if layer == ["qkv"]:
    return f"{prefix}.weight", "qkv"
  linear = module in _DENSE or layer == ["affine"]
  return f"{prefix}.weight", "linear" if linear else "conv"


def torch_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
  return common.torch_shape(shape, "conv" if layout == "qkv" else layout)


def to_project(array: np.ndarray, layout: str) -> np.ndarray:
  if layout in ("qkv", "qkv_bias"):   # output rows c * 3 + j (j: q, k, v) -> j * C + c
    rows = array.shape[0] // 3
    array = array.reshape(rows, 3, *array.shape[1:]).swapaxes(0, 1).reshape(array.shape)
  return common.torch_to_project(array, "conv" if layout == "qkv" else layout)


# ------------------------------------------------------------------------ checks
def resample_buffers(model: ml_collections.ConfigDict, height: int) -> list[str]:
  """The `resample_filter` buffers SongUNet(...).state_dict() holds: every Conv2d
  with up or down (the resampling blocks' conv0 and skip, the encoder's aux convs,
  the skip decoder's aux_up)."""
  names = []
  num_levels = len(model.ch_mult)
  for level in range(1, num_levels):
    res = height >> level
    for layer in ("conv0", "skip"):
      names.append(f"{PREFIX}enc.{res}x{res}_down.{layer}.resample_filter")
    if model.encoder_type == "skip":
      names.append(f"{PREFIX}enc.{res}x{res}_aux_down.resample_filter")
    elif model.encoder_type == "residual":
      names.append(f"{PREFIX}enc.{res}x{res}_aux_residual.resample_filter")
  for level in reversed(range(num_levels - 1)):
    res = height >> level
    for layer in ("conv0", "skip"):
      names.append(f"{PREFIX}dec.{res}x{res}_up.{layer}.resample_filter")
    if model.decoder_type == "skip":
      names.append(f"{PREFIX}dec.{res}x{res}_aux_up.resample_filter")
  return names


def resample_filter(kernel: tuple[float, ...]) -> np.ndarray:
  """EDM's Conv2d buffer for a 1-D filter f: outer(f, f) / sum(f)^2, [1, 1, k, k]."""
  f = np.asarray(kernel, np.float32)
  return (np.outer(f, f) / np.square(f.sum()))[None, None]


def check_config(config: ml_collections.ConfigDict, abstract_params: Any,
                 path: str) -> None:
  """Raises a one-line ValueError for the first config field with which the project's
  network does not compute EDMPrecond's SongUNet exactly."""
  model = config.model
  for name, want, why in (
      ("model.name", "songunet", "EDM's SongUNet (models/ncsnpp.py)"),
      ("model.dtype", "float32", "float32 weights and activations"),
      ("sde.type", "edm", "EDMPrecond's preconditioning, c_noise = log(sigma) / 4"),
      ("sde.sigma_data", SIGMA_DATA, "EDMPrecond's sigma_data"),
      ("sde.data_centered", True, "images in [-1, 1]")):
    section, field = name.split(".")
    if config[section][field] != want:
      raise ValueError(f"{path}: config.{name}={config[section][field]!r}, but EDM's "
                       f"network needs {want!r} ({why}).")
  for key, leaf in traverse_util.flatten_dict(abstract_params).items():
    if key[-1] == "scale":   # EDM's GroupNorm: min(32, C // 4) groups
      channels = int(leaf.shape[0])
      groups = layers.num_norm_groups(channels, int(model.num_groups))
      if groups != min(32, channels // 4):
        raise ValueError(
            f"{path}: the project's GroupNorm {'/'.join(key[:-1])} ({channels} "
            f"channels) has {groups} groups with config.model.num_groups="
            f"{model.num_groups}, but EDM's has min(32, C // 4) = "
            f"{min(32, channels // 4)}.")


def check_buffers(tensors: dict[str, np.ndarray], model: ml_collections.ConfigDict,
                  height: int, path: str) -> dict[str, np.ndarray]:
  """The tensors without the resampling filters, each checked against
  config.model.fir_kernel."""
  want = resample_filter(tuple(model.fir_kernel))
  expected = resample_buffers(model, height)
  for name in expected:
    if name not in tensors:
      raise ValueError(f"{path}: buffer {name!r} is missing (check "
                       "config.model.encoder_type, decoder_type and ch_mult).")
    value = np.asarray(tensors[name])
    if value.shape != want.shape or not np.allclose(value, want, rtol=0, atol=1e-7):
      raise ValueError(f"{path}: {name} is not config.model.fir_kernel="
                       f"{tuple(model.fir_kernel)}'s filter (shape {value.shape}, "
                       f"{value.reshape(-1)[:4].tolist()}...).")
  if "model.map_noise.freqs" in tensors and model.embedding_type != "fourier":
    raise ValueError(f"{path} has Fourier noise features (model.map_noise.freqs: "
                     "NCSN++), but config.model.embedding_type="
                     f"{model.embedding_type!r}.")
  return {name: value for name, value in tensors.items() if name not in set(expected)}


# --------------------------------------------------------------------- converting
def convert_tensors(tensors: dict[str, np.ndarray], model: ml_collections.ConfigDict,
                    image_shape: tuple[int, ...], abstract_params: Any,
                    path: str) -> dict[str, Any]:
  """The project's SongUNet parameters from EDMPrecond's state dict, every name and
  shape checked (common.assemble: one-line errors)."""
  tensors = check_buffers(tensors, model, int(image_shape[0]), path)
  return common.assemble(tensors, abstract_params, edm_name, torch_shape, to_project,
                         path, "EDM's SongUNet")


def convert(source: str, config: ml_collections.ConfigDict,
            image_shape: tuple[int, ...], abstract_params: Any) -> common.Converted:
  """Reads the exported state dict at `source`; every check passes before it returns.
  A .pkl (or any pickle holding more than tensors) is refused with the export
  command."""
  if source.endswith(".pkl"):
    raise ValueError(refusal(source))
  files: dict[str, str] = {}
  data = common.read_bytes(source, files)
  try:
    state = common.torch_load(data, source)
  except ValueError as error:
    if "holds more than tensors" in str(error):
      raise ValueError(f"{error} If it is EDM's network pickle: "
                       f"{refusal(source)}") from None
    raise
  tensors = common.torch_tensors(state, source)
  check_config(config, abstract_params, source)
  params = convert_tensors(tensors, config.model, image_shape, abstract_params, source)
  return common.Converted(
      params=params, files=files, num_tensors=len(tensors),
      details=dict(network="EDMPrecond(SongUNet)", embedding_type=str(
          config.model.embedding_type)))


FORMAT = common.Format(
    families=("score",), source="file",
    description="an EDM network's state dict (.pt) exported from NVlabs/edm's .pkl "
    "(e.g. edm-cifar10-32x32-uncond-vp.pkl) with the authors' code; a .pkl itself is "
    "refused with the export command",
    convert=convert)
