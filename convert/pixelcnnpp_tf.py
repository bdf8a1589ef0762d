"""The released PixelCNN++ TensorFlow checkpoint as models/pixelcnnpp.py parameters.

openai/pixel-cnn's README links the CIFAR-10 model of the paper (2.92 bits/dim) as
pxpp.zip, which holds `params_cifar.ckpt`: what train.py's tf.train.Saver() wrote of
every global variable of its graph (model_spec at nr_resnet=5, nr_filters=160,
nr_logistic_mix=10, unconditional), as one V1-format file. It is read with
tf.train.load_checkpoint (a tensor reader: no graph is imported, no code runs); a V2
checkpoint (<prefix>.index beside <prefix>.data-*) reads the same way.

What it holds (tests/manifests/pixelcnnpp_cifar10.txt lists all 2,269 tensors):
- model/<layer>_<n>/{V, g, b}: every layer is weight-normalised (Salimans & Kingma
  2016, eq. 2: w = g v / ||v||), the norm taken per output unit over all its inputs.
  Layers are named by kind with one counter per kind, in the order model_spec creates
  them (`layer_table`): conv2d (a plain or a down-/down-right-shifted convolution),
  deconv2d (the transposed convolutions of the second pass), dense (a 1x1 "nin"
  layer); in a gated ResNet block conv2d (first convolution), dense (the short-cut
  input's nin, where there is one), conv2d (the gate's convolution).
- model/.../{V, g, b}/ExponentialMovingAverage: tf.train.ExponentialMovingAverage's
  shadow of every one (polyak_decay 0.9995), which the authors evaluate and sample
  with: these become ema_params, the raw variables params.
- Variable, Variable_1, ...: nn.adam_updates' state (its tf.Variable(value, 'name')
  passes the name as `trainable`, so TF named them): the step t, then per trainable
  variable in creation order its first and second moments. Not converted (the project
  starts a fresh optimizer); checked to be exactly that state.

The project keeps the same parametrisation (models/pixelcnnpp.WeightNormConv: kernel =
g v / ||v||, eq. 2), so V, g and b map one to one onto v, g and bias:
- conv2d V [kh, kw, in, out] is the project's HWIO v as is (norm over kh, kw, in);
- dense V [in, out] is a 1x1 convolution's v [1, 1, in, out] (norm over in);
- deconv2d V [kh, kw, out, in] (tf.nn.conv2d_transpose, norm over kh, kw, in) becomes
  v [kh, kw, in, out] flipped in both spatial axes: jax.lax.conv_transpose without
  transpose_kernel correlates the stride-dilated input with the kernel, while TF's
  transposed convolution is the gradient of a convolution, i.e. the same with the
  kernel flipped; the norm runs over the same entries.
The computation is the authors' in every other respect (the shifts, the paddings and
crops of the shifted convolutions, concat_elu, the short-cut nin inputs, the
mixture-parameter layout of the output nin: models/pixelcnnpp.py and
models/logistic_mixture.py follow pixel_cnn_pp/nn.py), so no config field changes the
network; tests/test_convert_pixelcnnpp.py checks the converted network against a
forward pass in TF written on the checkpoint's own tensors.
"""

from __future__ import annotations

import collections
import re
from typing import Any

import ml_collections
import numpy as np
from convert import common
from models import pixelcnnpp

SCOPE = "model"                          # tf.make_template('model', model_spec)
EMA_SUFFIX = "/ExponentialMovingAverage"
OPTIMIZER_NAME = re.compile(r"Variable(?:_(\d+))?")
# The project's leaf -> the authors' variable, per layer.
LEAVES = {"v": "V", "g": "g", "bias": "b"}
# The published model (train.py's defaults, with which params_cifar.ckpt was trained).
PUBLISHED = dict(nr_resnet=5, nr_filters=160, nr_logistic_mix=10)


# --------------------------------------------------------------------- the layers
def layer_table(nr_resnet: int) -> list[tuple[tuple[str, ...], str, str]]:
  """(the project's module path, the authors' variable scope, layer kind) of every
  layer, in the order pixel_cnn_pp/model.py's model_spec creates them."""
  counters: collections.Counter = collections.Counter()
  table = []

  def add(path: tuple[str, ...], kind: str) -> None:
    table.append((path, f"{SCOPE}/{kind}_{counters[kind]}", kind))
    counters[kind] += 1

  def gated_resnet(name: str, has_aux: bool) -> None:
    add((name, "conv_in", "conv"), "conv2d")
    if has_aux:
      add((name, "nin_aux"), "dense")
    add((name, "conv_out", "conv"), "conv2d")

  for name in ("u_in", "ul_in_above", "ul_in_left"):
    add((name, "conv"), "conv2d")
  for level in range(pixelcnnpp.NUM_LEVELS):               # the authors' "up pass"
    if level > 0:
      for stream in ("u", "ul"):
        add((f"pass1_level{level}_{stream}_downsample", "conv"), "conv2d")
    for i in range(nr_resnet):
      gated_resnet(f"pass1_level{level}_u{i}", has_aux=False)
      gated_resnet(f"pass1_level{level}_ul{i}", has_aux=True)
  for level in reversed(range(pixelcnnpp.NUM_LEVELS)):     # the "down pass"
    upsampled = level < pixelcnnpp.NUM_LEVELS - 1
    if upsampled:
      for stream in ("u", "ul"):
        add((f"pass2_level{level}_{stream}_upsample", "conv"), "deconv2d")
    for i in range(nr_resnet + upsampled):
      gated_resnet(f"pass2_level{level}_u{i}", has_aux=True)
      gated_resnet(f"pass2_level{level}_ul{i}", has_aux=True)
  add(("nin_out",), "dense")
  return table


def num_conv2d_layers(nr_resnet: int) -> int:
  """conv2d layers of model_spec: 3 inputs, 2 x 2 down-samplings, 2 per block of the
  first pass (3 levels x nr_resnet x 2 streams) and of the second (3 nr_resnet + 2)."""
  return 3 + 4 + 2 * 2 * pixelcnnpp.NUM_LEVELS * nr_resnet + 2 * 2 * (
      pixelcnnpp.NUM_LEVELS * nr_resnet + 2)


def variable_order(nr_resnet: int) -> list[str]:
  """The trainable variables' names in creation order (tf.trainable_variables())."""
  return [f"{scope}/{leaf}" for _, scope, _ in layer_table(nr_resnet)
          for leaf in ("V", "g", "b")]


def source_name(key: tuple[str, ...], layers: dict[tuple[str, ...], tuple[str, str]],
                suffix: str) -> tuple[str, str]:
  """(the checkpoint's tensor name, layout) of one project parameter path."""
  *module, leaf = key
  scope, kind = layers[tuple(module)]
  if leaf not in LEAVES:
    raise KeyError(key)
  return f"{scope}/{LEAVES[leaf]}{suffix}", (kind if leaf == "v" else "vector")


def checkpoint_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
  """The authors' shape of a project parameter of `shape`."""
  if layout == "dense":       # v [1, 1, in, out] <- V [in, out]
    return tuple(shape[2:])
  if layout == "deconv2d":    # v [kh, kw, in, out] <- V [kh, kw, out, in]
    return (shape[0], shape[1], shape[3], shape[2])
  return tuple(shape)


def to_project(array: np.ndarray, layout: str) -> np.ndarray:
  if layout == "dense":
    return array[None, None]
  if layout == "deconv2d":   # TF's transposed convolution = JAX's with a flipped kernel
    return array[::-1, ::-1].transpose(0, 1, 3, 2)
  return array


# -------------------------------------------------------------------- the checks
def num_dense_layers(nr_resnet: int) -> int:
  """dense (nin) layers of model_spec: one per block with a short-cut input (the ul
  blocks of the first pass, every block of the second) and the output layer."""
  return pixelcnnpp.NUM_LEVELS * nr_resnet + 2 * (
      pixelcnnpp.NUM_LEVELS * nr_resnet + 2) + 1


def architecture(shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
  """What the checkpoint's shapes say of the network it was trained as: nr_resnet (from
  the number of conv2d layers), nr_filters, the image channels and nr_logistic_mix
  (from the first and the output layer). A field that cannot be read is left out:
  the name-by-name check then names the first missing or unmapped tensor."""
  found = {}
  first = f"{SCOPE}/conv2d_0/V"
  if first in shapes and len(shapes[first]) == 4:
    found.update(nr_filters=int(shapes[first][-1]),
                 channels=int(shapes[first][2]) - 1)   # the input's channel of ones
  count = 0
  while f"{SCOPE}/conv2d_{count}/V" in shapes:
    count += 1
  nr_resnet, remainder = divmod(count - num_conv2d_layers(0),
                                num_conv2d_layers(1) - num_conv2d_layers(0))
  if remainder == 0 and nr_resnet >= 0:
    found["nr_resnet"] = nr_resnet
    last = f"{SCOPE}/dense_{num_dense_layers(nr_resnet) - 1}/V"
    if last in shapes and len(shapes[last]) == 2 and shapes[last][-1] % 10 == 0:
      found["nr_logistic_mix"] = int(shapes[last][-1]) // 10
  return found


def check_config(found: dict[str, int], config: ml_collections.ConfigDict,
                 image_shape: tuple[int, ...], path: str) -> None:
  """Raises a one-line ValueError for the first config field that differs from the
  checkpoint's network."""
  model = config.model
  if model.name != "pixelcnnpp":
    raise ValueError(f"--from=pixelcnnpp_tf converts PixelCNN++ weights: set "
                     f"config.model.name='pixelcnnpp', not {model.name!r}.")
  if model.conditional:
    raise ValueError("config.model.conditional=True: only unconditional checkpoints "
                     "(as released) convert; set config.model.conditional=False.")
  if "channels" in found and image_shape[-1] != found["channels"]:
    raise ValueError(f"{path}: the checkpoint models {found['channels']}-channel "
                     f"images, the dataset has {image_shape[-1]} channels.")
  for field in ("nr_resnet", "nr_filters", "nr_logistic_mix"):
    if field in found and int(model[field]) != found[field]:
      raise ValueError(f"{path}: the checkpoint has {field}={found[field]}; set "
                       f"config.model.{field}={found[field]} (it is {model[field]}).")


def check_optimizer_state(shapes: dict[str, tuple[int, ...]], nr_resnet: int,
                          path: str) -> int:
  """The Variable* tensors must be nn.adam_updates' state for exactly the trainable
  variables (t, then per variable in creation order its two moments), or absent.
  Returns how many there are."""
  names = [name for name in shapes if OPTIMIZER_NAME.fullmatch(name)]
  if not names:
    return 0
  trainable = variable_order(nr_resnet)
  expected = {"Variable": ()}
  for k, name in enumerate(trainable):
    for moment in (1, 2):
      expected[f"Variable_{2 * k + moment}"] = shapes.get(name, ())
  index = lambda name: int(OPTIMIZER_NAME.fullmatch(name).group(1) or 0)  # noqa: E731
  for name in sorted(names, key=index):
    if name not in expected:
      raise ValueError(f"{path}: tensor {name!r} is not part of the Adam state of the "
                       f"{len(trainable)} trainable variables.")
    if tuple(shapes[name]) != tuple(expected[name]):
      owner = trainable[(index(name) - 1) // 2] if index(name) else "the step count"
      raise ValueError(f"{path}: Adam state {name!r} has shape {tuple(shapes[name])}, "
                       f"but belongs to {owner!r} of shape {tuple(expected[name])}.")
  missing = [name for name in expected if name not in shapes]
  if missing:
    raise ValueError(f"{path}: Adam state {missing[0]!r} is missing ({len(missing)} "
                     "missing): the optimizer state must be complete or absent.")
  return len(names)


# ------------------------------------------------------------------- converting
def convert_tensors(tensors: dict[str, np.ndarray], config: ml_collections.ConfigDict,
                    image_shape: tuple[int, ...], abstract_params: Any, path: str
                    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
  """(params, ema_params, details) from the checkpoint's tensors by name, every name,
  shape and config field checked first (one-line ValueErrors)."""
  shapes = {name: tuple(np.shape(value)) for name, value in tensors.items()}
  found = architecture(shapes)
  check_config(found, config, image_shape, path)
  nr_resnet = int(config.model.nr_resnet)
  model = {n: t for n, t in tensors.items() if not OPTIMIZER_NAME.fullmatch(n)}
  raw = {n: t for n, t in model.items() if not n.endswith(EMA_SUFFIX)}
  ema = {n: t for n, t in model.items() if n.endswith(EMA_SUFFIX)}
  layers = {path_: (scope, kind) for path_, scope, kind in layer_table(nr_resnet)}
  what = "openai/pixel-cnn's model_spec"
  params = common.assemble(raw, abstract_params,
                           lambda key: source_name(key, layers, ""), checkpoint_shape,
                           to_project, path, what)
  ema_params = common.assemble(ema, abstract_params,
                               lambda key: source_name(key, layers, EMA_SUFFIX),
                               checkpoint_shape, to_project, path, what)
  num_optimizer = check_optimizer_state(shapes, nr_resnet, path)
  details = dict(architecture=found, num_params_tensors=len(raw),
                 num_ema_tensors=len(ema),
                 num_optimizer_tensors_not_converted=num_optimizer,
                 ema="the ExponentialMovingAverage shadow variables are ema_params")
  return params, ema_params, details


def read_checkpoint(prefix: str, files: dict[str, str]) -> dict[str, np.ndarray]:
  """Every tensor of the model (raw and EMA) by name; the optimizer state's shapes only
  (zero-stride arrays: it is checked, never converted)."""
  checkpoint = common.TFCheckpoint(prefix)
  checkpoint.record_files(files)
  tensors = {}
  for name in checkpoint:   # sorted by name
    if OPTIMIZER_NAME.fullmatch(name):
      tensors[name] = np.broadcast_to(np.zeros((), np.float32), checkpoint.shapes[name])
    elif not checkpoint.dtypes[name].is_floating:
      raise ValueError(f"{prefix}: tensor {name!r} is {checkpoint.dtypes[name].name}, "
                       "not floating point.")
    else:
      tensors[name] = checkpoint[name]
  return tensors


def convert(source: str, config: ml_collections.ConfigDict,
            image_shape: tuple[int, ...], abstract_params: Any) -> common.Converted:
  """Reads the checkpoint `source` (its prefix) and returns the project's params (the
  raw variables) and ema_params (their moving averages); every check passes first."""
  files: dict[str, str] = {}
  tensors = read_checkpoint(source, files)
  params, ema_params, details = convert_tensors(tensors, config, tuple(image_shape),
                                                abstract_params, source)
  details["checkpoint_version"] = common.tf_checkpoint_files(source)[0]
  return common.Converted(
      params=params, ema_params=ema_params, files=files,
      num_tensors=details["num_params_tensors"] + details["num_ema_tensors"],
      details=details)


FORMAT = common.Format(
    families=("autoregressive",), source="tf_checkpoint",
    description="openai/pixel-cnn's TensorFlow checkpoint of PixelCNN++, named by its "
    "prefix (params_cifar.ckpt from pxpp.zip: a V1 file; or <prefix>.index and "
    "<prefix>.data-*), raw variables -> params and their ExponentialMovingAverage -> "
    "ema_params",
    convert=convert)
