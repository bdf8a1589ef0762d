"""What every format's reader shares: reading files without running code from them,
recording their SHA-256, and assembling the project's parameter tree from named
tensors with every name and shape checked.

Nothing here unpickles anything but tensors: PyTorch files go through
torch.load(weights_only=True), safetensors through safetensors.numpy, TensorFlow
checkpoints through tf.train.load_checkpoint, Flax checkpoints through msgpack.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import glob
import hashlib
import io
import json
import os
import pickle
from typing import Any, Callable, Iterator

import ml_collections
import numpy as np
from flax import traverse_util


@dataclasses.dataclass
class Converted:
  """The project's parameters and where they came from."""
  params: dict[str, Any]        # the family's tree of float32 numpy arrays
  files: dict[str, str]         # every file read (absolute path) -> its SHA-256
  num_tensors: int
  details: dict[str, Any] = dataclasses.field(default_factory=dict)  # -> metadata
  # The checkpoint's own averaged weights where it keeps them apart (e.g. an EMA or
  # Polyak average beside the raw ones); None: ema_params are `params`.
  ema_params: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class Format:
  """One --from= choice: which families it converts into and how it reads."""
  families: tuple[str, ...]
  # What --source must be: "folder", "file", or "tf_checkpoint" (a TensorFlow
  # checkpoint's prefix: <prefix>.index beside its data files, or a V1 checkpoint's
  # single file).
  source: str
  description: str
  # (source, config, image_shape, abstract_params) -> Converted; raises ValueError.
  convert: Callable[[str, ml_collections.ConfigDict, tuple[int, ...], Any], Converted]


# ----------------------------------------------------------------------- reading
def sha256_bytes(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def read_bytes(path: str, files: dict[str, str]) -> bytes:
  """A file's bytes; its SHA-256 goes into `files`."""
  with open(path, "rb") as f:
    data = f.read()
  files[os.path.abspath(path)] = sha256_bytes(data)
  return data


def read_json(path: str, files: dict[str, str]) -> dict[str, Any]:
  data = read_bytes(path, files)
  try:
    value = json.loads(data)
  except ValueError as error:
    raise ValueError(f"{path} is not valid JSON ({error}).") from None
  if not isinstance(value, dict):
    raise ValueError(f"{path} holds {type(value).__name__}, not a JSON object.")
  return value


def read_safetensors(data: bytes, path: str) -> dict[str, np.ndarray]:
  """The tensors of a .safetensors file's bytes (no torch, no unpickling)."""
  import safetensors
  import safetensors.numpy
  try:
    return safetensors.numpy.load(data)
  except (safetensors.SafetensorError, KeyError, ValueError, TypeError) as error:
    raise ValueError(f"{path} is not a readable safetensors file "
                     f"({type(error).__name__}: {error}).") from None


def first_line(error: Exception, marker: str) -> str:
  """The line of a long error message that holds `marker` (any case), else its first."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return next((line for line in lines if marker.lower() in line.lower()),
              lines[0] if lines else "")


def torch_load(data: bytes, path: str) -> Any:
  """A PyTorch file's contents via torch.load(weights_only=True) only: tensors and
  plain containers (dict, list, tuple, numbers, strings); anything else is refused."""
  try:
    import torch
  except ImportError:
    raise ValueError(f"{path} is a PyTorch pickle: reading it needs torch (pip install "
                     "torch).") from None
  try:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as error:
    raise ValueError(
        f"{path} holds more than tensors and is refused (torch.load(weights_only=True): "
        f"{first_line(error, 'global')}); no code from a checkpoint is "
        "ever run.") from None
  except (RuntimeError, EOFError, OSError, ValueError) as error:
    raise ValueError(f"{path} is not a readable PyTorch checkpoint "
                     f"({type(error).__name__}: {first_line(error, 'error')}).") from None


def torch_tensors(state: Any, path: str) -> dict[str, np.ndarray]:
  """A state dict {name: tensor} as float32-or-integer numpy arrays."""
  import torch
  if not isinstance(state, dict):
    raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of "
                     "tensors.")
  tensors = {}
  for name, value in state.items():
    if not isinstance(name, str) or not isinstance(value, torch.Tensor):
      raise ValueError(f"{path}: entry {name!r} is a {type(value).__name__}, not a "
                       "tensor.")
    # numpy has no bfloat16: floats go through float32, which holds them exactly.
    value = value.detach().cpu()
    tensors[name] = (value.float() if value.is_floating_point() else value).numpy()
  return tensors


def torch_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
  """A PyTorch tensor's shape for a project parameter of `shape`, by layout: conv
  (HWIO <- OIHW), linear ((in, out) <- (out, in)), conv1x1 and conv1d (a Dense
  kernel <- a 1x1 Conv2d's (out, in, 1, 1) or Conv1d's (out, in, 1)); others as is."""
  if layout == "conv":
    return (shape[3], shape[2], shape[0], shape[1])
  if layout == "linear":
    return (shape[1], shape[0])
  if layout == "conv1x1":
    return (shape[1], shape[0], 1, 1)
  if layout == "conv1d":
    return (shape[1], shape[0], 1)
  return tuple(shape)


def torch_to_project(array: np.ndarray, layout: str) -> np.ndarray:
  """A PyTorch tensor in the project's layout (the layouts of `torch_shape`)."""
  if layout == "conv":
    return array.transpose(2, 3, 1, 0)
  if layout == "linear":
    return array.T
  if layout == "conv1x1":
    return array[:, :, 0, 0].T
  if layout == "conv1d":
    return array[:, :, 0].T
  return array


def read_torch_state_dict(data: bytes, path: str) -> dict[str, np.ndarray]:
  """A PyTorch state dict file's tensors (torch.load(weights_only=True) only)."""
  return torch_tensors(torch_load(data, path), path)


def sha256_file(path: str) -> str:
  """SHA-256 of a file read in chunks (the DDPM 256-px checkpoints are about 1.8 GB)."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 24), b""):
      digest.update(chunk)
  return digest.hexdigest()


def tf_checkpoint_files(prefix: str) -> tuple[str, list[str]]:
  """The files tf.train.load_checkpoint reads for `prefix`: ('V2', [<prefix>.index, its
  <prefix>.data-*-of-* shards]) where the .index exists, else ('V1', [prefix])."""
  if os.path.isfile(prefix + ".index"):
    data = sorted(glob.glob(glob.escape(prefix) + ".data-*-of-*"))
    return "V2", [prefix + ".index", *data]
  return "V1", [prefix]


class TFCheckpoint(collections.abc.Mapping):
  """A TensorFlow checkpoint's tensors by name, each read from disk only when looked up.

  tf.train.load_checkpoint is a tensor reader: no graph is imported, nothing from the
  checkpoint runs. A file it cannot read (truncated, corrupted) fails as one line,
  "<prefix> is not a readable <what> (...)"; `what` defaults to "TensorFlow V1|V2
  checkpoint".
  """

  def __init__(self, prefix: str, what: str | None = None):
    import tensorflow as tf
    self.prefix = prefix
    self.version, self.paths = tf_checkpoint_files(prefix)
    self.what = what or f"TensorFlow {self.version} checkpoint"
    # A truncated file fails as an OpError (DataLossError, ...) or, reading past the
    # end of a data file, as an IndexError.
    self._errors = (tf.errors.OpError, IndexError, ValueError, RuntimeError)
    try:
      self._reader = tf.train.load_checkpoint(prefix)
      self.shapes = {name: tuple(int(d) for d in shape) for name, shape in
                     self._reader.get_variable_to_shape_map().items()}
      self.dtypes = self._reader.get_variable_to_dtype_map()
    except self._errors as error:
      raise self.unreadable(error) from None

  def unreadable(self, error: Exception) -> ValueError:
    return ValueError(f"{self.prefix} is not a readable {self.what} "
                      f"({type(error).__name__}: {first_line(error, 'error')}).")

  def record_files(self, files: dict[str, str]) -> None:
    """Every file of the checkpoint (absolute path) -> its SHA-256, into `files`."""
    for path in self.paths:
      files[os.path.abspath(path)] = sha256_file(path)

  def __getitem__(self, name: str) -> np.ndarray:
    if name not in self.shapes:
      raise KeyError(name)
    try:
      return np.asarray(self._reader.get_tensor(name))
    except self._errors as error:
      raise self.unreadable(error) from None

  def __iter__(self) -> Iterator[str]:
    return iter(sorted(self.shapes))

  def __len__(self) -> int:
    return len(self.shapes)


# -------------------------------------------------------------------- assembling
def assemble(tensors: dict[str, np.ndarray], abstract_params: Any,
             source_name: Callable[[tuple[str, ...]], tuple[str, str]],
             source_shape: Callable[[tuple[int, ...], str], tuple[int, ...]],
             to_project: Callable[[np.ndarray, str], np.ndarray], path: str,
             what: str) -> dict[str, Any]:
  """The project's parameter tree from a checkpoint's named tensors.

  source_name(project key) -> (the checkpoint's tensor name, layout), raising KeyError
  for a parameter with no counterpart; source_shape(project shape, layout) -> the
  checkpoint's shape; to_project(array, layout) -> the project's array. Raises a
  one-line ValueError naming the first tensor with no place in the project's network
  (`what`), the first missing, or the first of a wrong shape or type.
  """
  flat = traverse_util.flatten_dict(abstract_params)
  wanted = {}
  for key, leaf in flat.items():
    try:
      name, layout = source_name(key)
    except KeyError:
      raise ValueError(f"The project's parameter {'/'.join(key)} has no counterpart in "
                       f"{what} (check config.model).") from None
    wanted[name] = (key, layout, tuple(leaf.shape))
  unmapped = [name for name in tensors if name not in wanted]
  if unmapped:
    raise ValueError(f"{path}: tensor {unmapped[0]!r} has no place in the project's "
                     f"network ({len(unmapped)} such tensor(s)).")
  missing = [name for name in wanted if name not in tensors]
  if missing:
    raise ValueError(f"{path}: tensor {missing[0]!r} (the project's "
                     f"{'/'.join(wanted[missing[0]][0])}) is missing ({len(missing)} "
                     "missing).")
  params = {}
  for name, (key, layout, shape) in wanted.items():
    array = np.asarray(tensors[name])
    if tuple(array.shape) != tuple(source_shape(shape, layout)):
      raise ValueError(f"{path}: tensor {name!r} has shape {tuple(array.shape)}, but the "
                       f"project's {'/'.join(key)} needs "
                       f"{tuple(source_shape(shape, layout))}.")
    if not np.issubdtype(array.dtype, np.floating):
      raise ValueError(f"{path}: tensor {name!r} is {array.dtype}, not floating point.")
    params[key] = np.ascontiguousarray(to_project(array, layout), dtype=np.float32)
  return traverse_util.unflatten_dict(params)
