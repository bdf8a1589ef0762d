"""score_sde's released checkpoints (Song et al. 2021) as models/ncsnpp.py parameters.

Two formats, one network (score_sde's NCSNpp, App. H: NCSN++ and DDPM++):
  --from=score_sde_pytorch: a .pth of yang-song/score_sde_pytorch
    (utils.save_checkpoint) = {'model': the DataParallel state dict
    'module.all_modules.<i>.<layer>.<param>' plus the buffer 'module.sigmas',
    'ema': {'decay', 'num_updates', 'shadow_params': the EMA weights as a list in
    model.parameters() order, without the Fourier frequencies W (requires_grad=False)},
    'optimizer': Adam's state dict, 'step'},
    read with torch.load(weights_only=True) only;
  --from=score_sde_flax: a `checkpoint_<N>` of yang-song/score_sde (flax.training.
    checkpoints, msgpack) = the State dataclass {'step', 'optimizer': {'target': the
    raw parameters, 'state': Adam's}, 'lr', 'model_state', 'ema_rate', 'params_ema',
    'rng'}, read with flax.serialization.msgpack_restore (data only, no code).
Parameter names follow the authors' module creation order (models/ncsnpp.py of either
repository), which `authors_modules` walks for any NCSNpp config: in PyTorch the
index in the all_modules list, in Flax the per-class automatic names (Conv_0,
Dense_1, ResnetBlockBigGANpp_7, AttnBlockpp_2, Combine_0, Downsample_1, GroupNorm_3,
GaussianFourierProjection_0, ...), where parameterless pyramid resamplers still take a
number. tests/manifests/score_sde_*.txt list the full published name/shape sets.

Weights: where the file holds both the raw and the EMA weights (both formats always
do), the raw ones go to params and the EMA ones to ema_params (the ones score_sde
evaluated, and the ones `--mode=eval` / `--mode=sample` use by default); a file with
only one of them gives it to both.

The networks compute the same function with config.model.center_input equal to
`not config.sde.data_centered` (score_sde's `if not config.data.centered: x = 2x - 1`)
and GroupNorm groups min(C / 4, 32) (config.model.num_groups=32); both are checked. VP
and sub-VP checkpoints share a network: the config's sde.type says which it was.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import ml_collections
import numpy as np
from flax import traverse_util

from convert import common
from models import layers


@dataclasses.dataclass(frozen=True)
class AuthorsModule:
  """One module of the authors' NCSNpp, in creation order."""
  kind: str   # fourier | dense | conv | norm | resnet | attn | combine | resample
  project: str       # the project's module name ('' when it has no parameters)
  flax_class: str    # the class whose automatic Flax name it takes
  in_torch_list: bool = True   # an entry of the PyTorch model's all_modules


def authors_modules(model: ml_collections.ConfigDict,
                    image_size: int) -> Iterator[AuthorsModule]:
  """score_sde's NCSNpp modules in the order its __init__ (PyTorch) and __call__
  (Flax) create them, each with the project's name for it (models/ncsnpp.py)."""
  mult = tuple(model.ch_mult)
  num_levels = len(mult)
  blocks = int(model.num_res_blocks)
  ddpm = model.resblock_type == "ddpm"
  resnet = "ResnetBlockDDPMpp" if ddpm else "ResnetBlockBigGANpp"
  attention = tuple(model.attn_resolutions)
  module = AuthorsModule
  if model.embedding_type == "fourier":
    yield module("fourier", "fourier_proj", "GaussianFourierProjection")
  yield module("dense", "temb_dense0", "Dense")
  yield module("dense", "temb_dense1", "Dense")
  yield module("conv", "conv_in", "Conv")
  for level in range(num_levels):
    for block in range(blocks):
      yield module("resnet", f"down_{level}_block_{block}", resnet)
      if image_size // 2**level in attention:
        yield module("attn", f"down_{level}_attn_{block}", "AttnBlockpp")
    if level == num_levels - 1:
      continue
    if ddpm:
      yield module("resample", f"down_{level}_downsample", "Downsample")
    else:
      yield module("resnet", f"down_{level}_downsample", resnet)
    if model.progressive_input == "input_skip":
      # pyramid_downsample(): a Flax instance without parameters; a plain attribute of
      # the PyTorch model, not in all_modules.
      yield module("resample", "", "Downsample", in_torch_list=False)
      yield module("combine", f"down_{level}_combine", "Combine")
    elif model.progressive_input == "residual":
      yield module("resample", f"down_{level}_pyramid", "Downsample")
  yield module("resnet", "mid_block_0", resnet)
  yield module("attn", "mid_attn", "AttnBlockpp")
  yield module("resnet", "mid_block_1", resnet)
  for level in reversed(range(num_levels)):
    for block in range(blocks + 1):
      yield module("resnet", f"up_{level}_block_{block}", resnet)
    if image_size // 2**level in attention:
      yield module("attn", f"up_{level}_attn", "AttnBlockpp")
    if model.progressive != "none":
      if level == num_levels - 1 or model.progressive == "output_skip":
        if level != num_levels - 1:
          yield module("resample", "", "Upsample", in_torch_list=False)
        yield module("norm", f"up_{level}_pyramid_norm", "GroupNorm")
        yield module("conv", f"up_{level}_pyramid_conv", "Conv")
      else:
        yield module("resample", f"up_{level}_pyramid_upsample", "Upsample")
    if level != 0:
      if ddpm:
        yield module("resample", f"up_{level}_upsample", "Upsample")
      else:
        yield module("resnet", f"up_{level}_upsample", resnet)
  if model.progressive != "output_skip":
    yield module("norm", "out_norm", "GroupNorm")
    yield module("conv", "out_conv", "Conv")


# A module's layers: the project's name -> (the authors' name, its kind), in the
# authors' parameter order. Kinds: conv, dense, norm, nin (a kernel of NIN's (in, out)
# layout), fir (up_or_down_sampling.Conv2d: 'weight', OIHW in PyTorch, HWIO in Flax).
_RESNET = (("norm1", "GroupNorm_0", "norm"), ("conv1", "Conv_0", "conv"),
           ("temb_proj", "Dense_0", "dense"), ("norm2", "GroupNorm_1", "norm"),
           ("conv2", "Conv_1", "conv"))
_SHORTCUT = {"ResnetBlockBigGANpp": ("shortcut", "Conv_2", "conv"),
             "ResnetBlockDDPMpp": ("shortcut", "NIN_0", "nin")}
_ATTENTION = (("norm", "GroupNorm_0", "norm"), ("q", "NIN_0", "nin"),
              ("k", "NIN_1", "nin"), ("v", "NIN_2", "nin"),
              ("proj_out", "NIN_3", "nin"))
# The leaves of a layer kind: the project's name -> (PyTorch's, Flax's), in order.
_LEAVES = {"conv": (("kernel", "weight", "kernel"), ("bias", "bias", "bias")),
           "dense": (("kernel", "weight", "kernel"), ("bias", "bias", "bias")),
           "norm": (("scale", "weight", "scale"), ("bias", "bias", "bias")),
           "nin": (("kernel", "W", "W"), ("bias", "b", "b")),
           "fir": (("kernel", "weight", "weight"), ("bias", "bias", "bias")),
           "fourier": (("W", "W", "W"),)}


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One checkpoint tensor and the project parameter it is."""
  torch_name: str    # without DataParallel's 'module.' prefix
  flax_name: str     # '/'-joined path in the parameter tree
  project: tuple[str, ...]
  layout: str        # conv | dense | vector | nin (PyTorch layouts; Flax's are ours)


def _layers(entry: AuthorsModule, model: ml_collections.ConfigDict
            ) -> tuple[tuple[str | None, str | None, str], ...]:
  """(project layer, authors' layer, kind) of a module; None: the module itself."""
  if entry.kind in ("fourier", "dense", "conv", "norm"):
    return ((None, None, entry.kind),)
  if entry.kind == "resnet":
    return _RESNET + (_SHORTCUT[entry.flax_class],)
  if entry.kind == "attn":
    return _ATTENTION
  if entry.kind == "combine":
    return (("conv", "Conv_0", "conv"),)
  return (("conv", "Conv2d_0", "fir") if model.fir else ("conv", "Conv_0", "conv"),)


def tensors_of(model: ml_collections.ConfigDict, image_size: int,
               abstract_params: Any) -> list[Tensor]:
  """Every checkpoint tensor of the network, in the authors' parameter order (that of
  model.parameters() in PyTorch), for the layers the project's network has (a
  shortcut exists in both exactly when channels change or the block resamples)."""
  present = set(traverse_util.flatten_dict(abstract_params))
  counters: dict[str, int] = {}
  tensors = []
  index = 0
  for entry in authors_modules(model, image_size):
    number = counters.get(entry.flax_class, 0)
    counters[entry.flax_class] = number + 1
    flax_module = f"{entry.flax_class}_{number}"
    torch_module = f"all_modules.{index}"
    index += entry.in_torch_list
    if not entry.project:
      continue
    for project_layer, authors_layer, kind in _layers(entry, model):
      for leaf, torch_leaf, flax_leaf in _LEAVES[kind]:
        key = tuple(p for p in (entry.project, project_layer, leaf) if p)
        if key not in present:
          continue
        torch_name = ".".join(p for p in (torch_module, authors_layer, torch_leaf) if p)
        flax_name = "/".join(p for p in (flax_module, authors_layer, flax_leaf) if p)
        layout = ("vector" if leaf in ("bias", "scale", "W")
                  else {"fir": "conv", "dense": "linear"}.get(kind, kind))
        tensors.append(Tensor(torch_name, flax_name, key, layout))
  return tensors


# ----------------------------------------------------------------------- checks
def check_config(config: ml_collections.ConfigDict, image_shape: tuple[int, ...],
                 abstract_params: Any) -> None:
  """Raises a one-line ValueError for the first config field that keeps the project's
  NCSNpp from computing score_sde's network."""
  model = config.model
  if model.name != "ncsnpp":
    raise ValueError(f"config.model.name={model.name!r}: score_sde's checkpoints are "
                     "NCSN++ / DDPM++ networks (config.model.name='ncsnpp').")
  if model.conditional:
    raise ValueError("config.model.conditional=True: score_sde's released networks are "
                     "unconditional.")
  if model.center_input != (not config.sde.data_centered):
    raise ValueError(
        f"config.model.center_input={model.center_input!r} with config.sde."
        f"data_centered={config.sde.data_centered!r}: score_sde's network maps its "
        "input to 2x - 1 exactly when the data are in [0, 1] (data.centered=False); "
        f"set config.model.center_input={not config.sde.data_centered!r}.")
  fourier = model.embedding_type == "fourier"
  if fourier != (config.sde.type == "vesde"):
    raise ValueError(f"config.model.embedding_type={model.embedding_type!r} with "
                     f"config.sde.type={config.sde.type!r}: score_sde's continuous VE "
                     "networks take Fourier features of log sigma, its VP / sub-VP "
                     "ones positional embeddings of 999 t.")
  if image_shape[0] != image_shape[1]:
    raise ValueError(f"score_sde's networks take square images, not {image_shape[:2]}.")
  for key, leaf in traverse_util.flatten_dict(abstract_params).items():
    channels = int(leaf.shape[0])
    if key[-1] == "scale" and layers.num_norm_groups(
        channels, int(model.num_groups)) != min(channels // 4, 32):
      raise ValueError(
          f"The project's GroupNorm {'/'.join(key[:-1])} splits {channels} channels "
          f"into {layers.num_norm_groups(channels, int(model.num_groups))} groups, "
          f"score_sde's into min(C / 4, 32) = {min(channels // 4, 32)} (set "
          "config.model.num_groups=32).")


def _project_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
  return shape


def _identity(array: np.ndarray, layout: str) -> np.ndarray:
  return array


def assemble(named: dict[str, np.ndarray], table: list[Tensor], abstract_params: Any,
             flax: bool, path: str) -> dict[str, Any]:
  """The project's tree from tensors named as in the checkpoint (common.assemble)."""
  by_key = {t.project: t for t in table}

  def source_name(key: tuple[str, ...]) -> tuple[str, str]:
    tensor = by_key[key]
    return (tensor.flax_name if flax else tensor.torch_name), tensor.layout

  return common.assemble(
      named, abstract_params, source_name,
      _project_shape if flax else common.torch_shape,
      _identity if flax else common.torch_to_project, path,
      "score_sde's NCSNpp of this config (check config.model and the config file)")


# ----------------------------------------------------------------------- PyTorch
DATA_PARALLEL = "module."


def _strip_data_parallel(names: dict[str, Any]) -> dict[str, Any]:
  if names and all(name.startswith(DATA_PARALLEL) for name in names):
    return {name[len(DATA_PARALLEL):]: value for name, value in names.items()}
  return dict(names)


def check_sigmas(sigmas: np.ndarray, sde: ml_collections.ConfigDict, path: str) -> None:
  """score_sde's 'sigmas' buffer, exp(linspace(log sigma_max, log sigma_min, N)): a VE
  network was trained on sigma in [sigma_min, sigma_max], which must be the config's
  (N only sets the sampler's steps; a VP network stores, but never reads, the
  buffer)."""
  if sde.type != "vesde":
    return
  sigmas = np.asarray(sigmas, np.float64).reshape(-1)
  if sigmas.size < 2 or not np.allclose(
      [sigmas[0], sigmas[-1]], [sde.sigma_max, sde.sigma_min], rtol=1e-5, atol=0):
    ends = f"from {sigmas[0]:.6g} to {sigmas[-1]:.6g}" if sigmas.size else "none"
    raise ValueError(
        f"{path}: module.sigmas holds the noise levels {ends}, but config.sde has "
        f"sigma_max={sde.sigma_max} and sigma_min={sde.sigma_min}: the weights belong "
        "to another config.")


def convert_pytorch(source: str, config: ml_collections.ConfigDict,
                    image_shape: tuple[int, ...], abstract_params: Any
                    ) -> common.Converted:
  """A score_sde_pytorch .pth -> the project's params (raw) and ema_params (EMA)."""
  check_config(config, image_shape, abstract_params)
  files: dict[str, str] = {}
  data = common.read_bytes(source, files)
  content = common.torch_load(data, source)
  if not isinstance(content, dict) or not ({"model", "ema"} & set(content)):
    found = sorted(map(str, content)) if isinstance(content, dict) else type(
        content).__name__
    raise ValueError(f"{source} is not a score_sde_pytorch checkpoint: it holds "
                     f"{found}, not a dict with 'model' and 'ema' "
                     "(utils.save_checkpoint).")
  table = tensors_of(config.model, int(image_shape[0]), abstract_params)
  details: dict[str, Any] = dict(step=_number(content.get("step")))
  raw = params = ema = ema_params = None
  if "model" in content:
    raw = _strip_data_parallel(common.torch_tensors(content["model"], source))
    if "sigmas" in raw:
      check_sigmas(raw.pop("sigmas"), config.sde, source)
    params = assemble(raw, table, abstract_params, False, source)
  if "ema" in content:
    ema, details["ema"] = _ema_tensors(content["ema"], raw, table, source)
    ema_params = assemble(ema, table, abstract_params, False, f"{source} ('ema')")
  if params is None:
    params, ema_params = ema_params, None
  details["weights"] = ("params: 'model', ema_params: 'ema'" if ema_params is not None
                        else f"params and ema_params: {'model' if raw else 'ema'}")
  return common.Converted(params=params, ema_params=ema_params, files=files,
                          num_tensors=len(raw if raw is not None else ema),
                          details=details)


def _number(value: Any) -> Any:
  try:
    return value.item() if hasattr(value, "item") else value
  except (TypeError, ValueError):
    return None


def _ema_tensors(ema: Any, raw: dict[str, np.ndarray] | None, table: list[Tensor],
                 path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """models/ema.py's state dict -> {name: tensor}: shadow_params follow the model's
  trainable parameters in order (all but the Fourier W, which EMA leaves as is)."""
  import torch
  if not isinstance(ema, dict) or not isinstance(ema.get("shadow_params"),
                                                 (list, tuple)):
    raise ValueError(f"{path}: 'ema' is not models/ema.py's state dict (a dict with a "
                     "'shadow_params' list).")
  shadow = ema["shadow_params"]
  if not all(isinstance(t, torch.Tensor) for t in shadow):
    raise ValueError(f"{path}: 'ema' shadow_params holds something other than tensors.")
  # The order is the model's own where the file has it, else the authors' module order.
  names = list(raw) if raw is not None else [t.torch_name for t in table]
  frozen = {t.torch_name for t in table if t.project[-1] == "W"}   # requires_grad=False
  trainable = [name for name in names if name not in frozen]
  if len(shadow) != len(trainable):
    raise ValueError(f"{path}: 'ema' holds {len(shadow)} shadow parameters, but the "
                     f"network has {len(trainable)} trainable tensors.")
  tensors = {}
  for name, value in zip(trainable, shadow):
    value = value.detach().cpu()
    array = (value.float() if value.is_floating_point() else value).numpy()
    if raw is not None and array.shape != raw[name].shape:
      raise ValueError(f"{path}: 'ema' shadow parameter {len(tensors)} has shape "
                       f"{tuple(array.shape)}, but {name!r} has "
                       f"{tuple(raw[name].shape)}.")
    tensors[name] = array
  for name in frozen:   # EMA leaves the untrained Fourier frequencies as they are
    if raw is not None and name in raw:
      tensors[name] = raw[name]
  info = dict(decay=_number(ema.get("decay")),
              num_updates=_number(ema.get("num_updates")))
  return tensors, info


PYTORCH_FORMAT = common.Format(
    families=("score",), source="file",
    description="a score_sde_pytorch checkpoint_<N>.pth ('model', 'ema', 'optimizer', "
    "'step'), e.g. ve/cifar10_ncsnpp_continuous/checkpoint_<N>.pth",
    convert=convert_pytorch)


# -------------------------------------------------------------------------- Flax
def read_flax_state(data: bytes, path: str) -> dict[str, Any]:
  """flax.training.checkpoints' msgpack bytes -> nested dicts of numpy arrays."""
  import msgpack
  from flax import serialization
  try:
    state = serialization.msgpack_restore(data)
  except (ValueError, TypeError, KeyError, IndexError, OverflowError,
          msgpack.exceptions.UnpackException) as error:
    message = common.first_line(error, "error")
    raise ValueError(f"{path} is not a readable Flax msgpack checkpoint "
                     f"({type(error).__name__}: {message}).") from None
  if not isinstance(state, dict):
    raise ValueError(f"{path} holds a {type(state).__name__}, not a Flax state dict.")
  return state


def _flat_arrays(tree: Any, what: str, path: str) -> dict[str, np.ndarray]:
  if not isinstance(tree, dict):
    raise ValueError(f"{path}: {what} is a {type(tree).__name__}, not a parameter "
                     "tree.")
  flat = {}
  for key, value in traverse_util.flatten_dict(tree, sep="/").items():
    if not isinstance(value, np.ndarray):
      raise ValueError(f"{path}: {what} entry {key!r} is a {type(value).__name__}, not "
                       "an array.")
    flat[key] = value
  return flat


def convert_flax(source: str, config: ml_collections.ConfigDict,
                 image_shape: tuple[int, ...], abstract_params: Any
                 ) -> common.Converted:
  """A score_sde checkpoint_<N> -> the project's params (raw) and ema_params (EMA)."""
  check_config(config, image_shape, abstract_params)
  files: dict[str, str] = {}
  state = read_flax_state(common.read_bytes(source, files), source)
  optimizer = state.get("optimizer")
  raw_tree = optimizer.get("target") if isinstance(optimizer, dict) else None
  ema_tree = state.get("params_ema")
  if raw_tree is None and ema_tree is None:
    raise ValueError(f"{source} is not a score_sde checkpoint: it holds "
                     f"{sorted(map(str, state))}, without 'params_ema' or "
                     "'optimizer'/'target' (run_lib.py's State).")
  table = tensors_of(config.model, int(image_shape[0]), abstract_params)
  raw = None if raw_tree is None else _flat_arrays(raw_tree, "optimizer/target", source)
  ema = None if ema_tree is None else _flat_arrays(ema_tree, "params_ema", source)
  params = assemble(raw if raw is not None else ema, table, abstract_params, True,
                    source)
  ema_params = None
  if raw is not None and ema is not None:
    ema_params = assemble(ema, table, abstract_params, True, f"{source} (params_ema)")
  details = dict(step=_number(state.get("step")),
                 ema_rate=_number(state.get("ema_rate")),
                 weights=("params: optimizer/target, ema_params: params_ema"
                          if ema_params is not None else "params and ema_params: "
                          f"{'optimizer/target' if raw is not None else 'params_ema'}"))
  return common.Converted(params=params, ema_params=ema_params, files=files,
                          num_tensors=len(raw if raw is not None else ema),
                          details=details)


FLAX_FORMAT = common.Format(
    families=("score",), source="file",
    description="a score_sde (JAX) checkpoint_<N> (flax.training.checkpoints msgpack: "
    "params_ema, optimizer/target, ...), e.g. ve/cifar10_ncsnpp_continuous/"
    "checkpoint_<N>",
    convert=convert_flax)


