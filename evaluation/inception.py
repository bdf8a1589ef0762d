"""The Inception-v3 network that FID, IS and KID are defined on, in Flax linen.

This is the 2015-12-05 TensorFlow graph (`inception-2015-12-05.tgz`) that TTUR's FID
code and the Inception Score code run, as ported to PyTorch by pytorch-fid
(`FIDInceptionA/C/E_1/E_2`) and torch-fidelity (`feature_extractor_inceptionv3`).
It differs from torchvision's Inception-v3 in exactly the ways the TF graph does:

- the average pools inside Mixed_5b-d (A), Mixed_6b-e (C) and Mixed_7b (E_1) ignore
  the zero padding (TF's SAME average pool, `count_include_pad=False`);
- the pool branch of Mixed_7c (E_2) is a 3x3 *max* pool, not an average pool;
- the classifier has 1008 outputs (1000 ImageNet classes and 8 unused ones).

Outputs (per image): `pool` (2048-d pool3 features: FID, KID, precision/recall),
`logits_unbiased` (pool @ W, no bias: the Inception Score code multiplies pool3 by
the `softmax/logits/MatMul` weight alone, and torch-fidelity calls this layer
`logits_unbiased`) and `logits` (pool @ W + b).

Input handling, `input_convention`:

- "tf1" (the default, the FID standard): uint8 -> float32, TF1 `resize_bilinear`
  to 299x299 with `align_corners=False` and no half-pixel centres (the graph's own
  `ResizeBilinear` node; torch-fidelity's `interpolate_bilinear_2d_like_tensorflow1x`,
  bit-exact), then (x - 128) / 128 (the graph's `Sub`, `Mul` by 1/128).
- "pytorch_fid": pytorch-fid's `InceptionV3(resize_input=True, normalize_input=True)`:
  x / 255, `F.interpolate(bilinear, align_corners=False)` (half-pixel centres, no
  antialiasing), then 2x - 1. FIDs differ from "tf1" by a small amount; use it only to
  compare with numbers that pytorch-fid produced.

Every convolution and matmul runs at `Precision.HIGHEST` (true float32, never TF32 or
bf16 passes), because FID compares numbers across codebases to a few decimals.

Weights: the standard file `pt_inception-2015-12-05-6726825d.pth` (pytorch-fid's
name; torch-fidelity publishes it as `weights-inception-2015-12-05-6726825d.pth`, with
the same SHA-256 prefix) is a torch state_dict with torchvision's parameter names;
`load_params` converts it (torch is imported only there), and `save_params_npz`
writes a copy that later loads without torch (`python -m evaluation.cli
convert_inception` does it once, after checking the file's SHA-256 against
PUBLISHED_SHA256).
"""
from __future__ import annotations

import functools
import json
import os
import pathlib
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from datasets import transforms
from evaluation import files

INPUT_SIZE = 299
POOL_DIM = 2048
NUM_LOGITS = 1008
INPUT_CONVENTIONS = ("tf1", "pytorch_fid")
# Names of the features the network returns, in the order of the docstring above.
FEATURE_NAMES = ("pool", "logits_unbiased", "logits")

WEIGHTS_ENV_VAR = "INCEPTION_WEIGHTS"
WEIGHTS_FILENAMES = ("pt_inception-2015-12-05-6726825d.pth",
                     "weights-inception-2015-12-05-6726825d.pth")
WEIGHTS_CACHE_DIR = pathlib.Path("~/.cache/inception").expanduser()
WEIGHTS_URLS = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth",
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth",
)

# The published weight file (both URLs serve the same bytes): its full SHA-256, of
# which the names carry the first 8 hex digits (torch.hub's convention), and size.
PUBLISHED_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
PUBLISHED_SIZE = 95_628_359
# The key of save_params_npz's JSON record of where the weights came from.
NPZ_META_KEY = "meta"

_HIGHEST = jax.lax.Precision.HIGHEST
# TF's batch norm epsilon in the 2015 graph (torchvision's BasicConv2d uses the same).
_BN_EPSILON = 1e-3

Params = Mapping[str, Any]


# ----------------------------------------------------------------------------------
# Input handling.


def _tf1_source_coords(in_size: int, out_size: int):
  """TF1 `resize_bilinear(align_corners=False)` sampling positions along one axis.

  TF1 maps output pixel i to input coordinate i * (in / out) (no half-pixel offset).
  The product is taken in float32, as torch-fidelity's port does, so that the
  fractional weights are bit-identical to the reference.
  """
  scale = np.float32(in_size / out_size)
  coords = np.arange(out_size, dtype=np.float32) * scale
  lower = coords.astype(np.int64)  # coords >= 0: truncation is floor.
  upper = np.minimum(lower + 1, in_size - 1)
  frac = coords - lower.astype(np.float32)
  return lower, upper, frac


def _half_pixel_source_coords(in_size: int, out_size: int):
  """PyTorch `F.interpolate(bilinear, align_corners=False)` positions along one axis.

  Half-pixel centres: output pixel i samples input coordinate (i + 0.5) * in / out
  - 0.5, clamped at 0 (PyTorch's `area_pixel_compute_source_index`). The scale is a
  float32 and the multiply-add is rounded once to float32 (PyTorch's CPU kernel
  fuses it), which float64 arithmetic followed by one rounding reproduces exactly.
  """
  scale = np.float64(np.float32(in_size / out_size))
  coords = ((np.arange(out_size) + 0.5) * scale - 0.5).astype(np.float32)
  coords = np.maximum(coords, np.float32(0.0))
  lower = coords.astype(np.int64)
  upper = np.minimum(lower + 1, in_size - 1)
  frac = coords - lower.astype(np.float32)
  return lower, upper, frac


def resize_bilinear_tf1(images: jax.Array, size: tuple[int, int]) -> jax.Array:
  """TF1 `tf.image.resize_bilinear(align_corners=False)` of float NHWC images.

  Reproduces torch-fidelity's `interpolate_bilinear_2d_like_tensorflow1x` operation
  by operation: blend along the width at the two source rows, then along the height.
  No antialiasing when shrinking, as in TF1 (unlike `jax.image.resize`).
  """
  (y_lo, y_hi, dy), (x_lo, x_hi, dx) = (
      _tf1_source_coords(images.shape[1], size[0]),
      _tf1_source_coords(images.shape[2], size[1]))
  dx = jnp.asarray(dx)[None, None, :, None]
  dy = jnp.asarray(dy)[None, :, None, None]
  rows_lo, rows_hi = images[:, y_lo], images[:, y_hi]
  top = rows_lo[:, :, x_lo] + (rows_lo[:, :, x_hi] - rows_lo[:, :, x_lo]) * dx
  bottom = rows_hi[:, :, x_lo] + (rows_hi[:, :, x_hi] - rows_hi[:, :, x_lo]) * dx
  return top + (bottom - top) * dy


def resize_bilinear_half_pixel(images: jax.Array,
                               size: tuple[int, int]) -> jax.Array:
  """PyTorch `F.interpolate(mode="bilinear", align_corners=False)` of NHWC images."""
  (y_lo, y_hi, dy), (x_lo, x_hi, dx) = (
      _half_pixel_source_coords(images.shape[1], size[0]),
      _half_pixel_source_coords(images.shape[2], size[1]))
  dx = jnp.asarray(dx)[None, None, :, None]
  dy = jnp.asarray(dy)[None, :, None, None]
  rows_lo, rows_hi = images[:, y_lo], images[:, y_hi]
  top = (1 - dx) * rows_lo[:, :, x_lo] + dx * rows_lo[:, :, x_hi]
  bottom = (1 - dx) * rows_hi[:, :, x_lo] + dx * rows_hi[:, :, x_hi]
  return (1 - dy) * top + dy * bottom


def check_images(images: Any) -> None:
  """Raises ValueError unless `images` is uint8 [N, H, W, C] with C in (1, 3)."""
  shape, dtype = np.shape(images), getattr(images, "dtype", None)
  if dtype != np.uint8:
    raise ValueError(
        f"Inception expects uint8 images in [0, 255], got dtype {dtype}: convert "
        "samples to uint8 (as they would be saved to PNG) before computing features.")
  if len(shape) != 4 or shape[-1] not in (1, 3):
    raise ValueError(
        f"Inception expects NHWC images with 1 or 3 channels, got shape {shape}.")


def preprocess(images: jax.Array, input_convention: str = "tf1") -> jax.Array:
  """uint8 [N, H, W, C] -> float32 [N, 299, 299, 3] in [-1, 1], as the reference.

  Grayscale (C = 1) is repeated to RGB, as PIL's `convert("RGB")` does in pytorch-fid.
  """
  if input_convention not in INPUT_CONVENTIONS:
    raise ValueError(f"input_convention must be one of {INPUT_CONVENTIONS}, "
                     f"got {input_convention!r}.")
  check_images(images)
  tf1 = input_convention == "tf1"
  # tf1 works on the levels 0..255, pytorch-fid on x / 255 in [0, 1].
  x = jnp.asarray(images).astype(jnp.float32) if tf1 else transforms.uint8_to_unit(images)
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  size = (INPUT_SIZE, INPUT_SIZE)
  if tf1:
    if x.shape[1:3] != size:  # Both resizes are the identity at 299x299.
      x = resize_bilinear_tf1(x, size)
    return (x - 128.0) / 128.0
  if x.shape[1:3] != size:
    x = resize_bilinear_half_pixel(x, size)
  return transforms.unit_to_centered(x)


# ----------------------------------------------------------------------------------
# The network. Module and parameter names follow the torch state_dict so that the
# conversion is a rename: Mixed_5b.branch1x1.conv.weight -> Mixed_5b/branch1x1/conv.


def _max_pool(x: jax.Array, stride: int, padding: int = 0) -> jax.Array:
  # Padding is -inf (reduce_window's max identity), as torch's max_pool2d.
  return nn.max_pool(x, (3, 3), strides=(stride, stride),
                     padding=((padding, padding), (padding, padding)))


def _avg_pool_exclude_pad(x: jax.Array) -> jax.Array:
  # TF's SAME average pool divides by the number of real pixels in the window.
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


class FrozenBatchNorm(nn.Module):
  """Inference batch norm with its statistics stored as params (the net is frozen)."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.ones, (self.features,))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    mean = self.param("mean", nn.initializers.zeros, (self.features,))
    var = self.param("var", nn.initializers.ones, (self.features,))
    return (x - mean) * jax.lax.rsqrt(var + _BN_EPSILON) * scale + bias


class BasicConv2d(nn.Module):
  """Conv (no bias) -> batch norm -> ReLU; padding is explicit, as in the port."""
  features: int
  kernel_size: tuple[int, int]
  stride: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = self.padding
    x = nn.Conv(self.features, self.kernel_size, strides=(self.stride,) * 2,
                padding=((ph, ph), (pw, pw)), use_bias=False, precision=_HIGHEST,
                name="conv")(x)
    return nn.relu(FrozenBatchNorm(self.features, name="bn")(x))


def _conv(features: int, kernel: int | tuple[int, int], name: str, stride: int = 1,
          padding: int | tuple[int, int] = 0) -> BasicConv2d:
  kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
  padding = (padding, padding) if isinstance(padding, int) else padding
  return BasicConv2d(features, kernel, stride, padding, name=name)


class InceptionA(nn.Module):
  """Mixed_5b-d (pytorch-fid's FIDInceptionA): pool branch excludes padding."""
  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = _conv(64, 1, "branch1x1")(x)
    b5 = _conv(48, 1, "branch5x5_1")(x)
    b5 = _conv(64, 5, "branch5x5_2", padding=2)(b5)
    b3 = _conv(64, 1, "branch3x3dbl_1")(x)
    b3 = _conv(96, 3, "branch3x3dbl_2", padding=1)(b3)
    b3 = _conv(96, 3, "branch3x3dbl_3", padding=1)(b3)
    bp = _conv(self.pool_features, 1, "branch_pool")(_avg_pool_exclude_pad(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: grid reduction 35 -> 17."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = _conv(384, 3, "branch3x3", stride=2)(x)
    bd = _conv(64, 1, "branch3x3dbl_1")(x)
    bd = _conv(96, 3, "branch3x3dbl_2", padding=1)(bd)
    bd = _conv(96, 3, "branch3x3dbl_3", stride=2)(bd)
    return jnp.concatenate([b3, bd, _max_pool(x, stride=2)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b-e (pytorch-fid's FIDInceptionC): factorised 7x7, pool excludes padding."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    b1 = _conv(192, 1, "branch1x1")(x)
    b7 = _conv(c7, 1, "branch7x7_1")(x)
    b7 = _conv(c7, (1, 7), "branch7x7_2", padding=(0, 3))(b7)
    b7 = _conv(192, (7, 1), "branch7x7_3", padding=(3, 0))(b7)
    bd = _conv(c7, 1, "branch7x7dbl_1")(x)
    bd = _conv(c7, (7, 1), "branch7x7dbl_2", padding=(3, 0))(bd)
    bd = _conv(c7, (1, 7), "branch7x7dbl_3", padding=(0, 3))(bd)
    bd = _conv(c7, (7, 1), "branch7x7dbl_4", padding=(3, 0))(bd)
    bd = _conv(192, (1, 7), "branch7x7dbl_5", padding=(0, 3))(bd)
    bp = _conv(192, 1, "branch_pool")(_avg_pool_exclude_pad(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: grid reduction 17 -> 8."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = _conv(192, 1, "branch3x3_1")(x)
    b3 = _conv(320, 3, "branch3x3_2", stride=2)(b3)
    b7 = _conv(192, 1, "branch7x7x3_1")(x)
    b7 = _conv(192, (1, 7), "branch7x7x3_2", padding=(0, 3))(b7)
    b7 = _conv(192, (7, 1), "branch7x7x3_3", padding=(3, 0))(b7)
    b7 = _conv(192, 3, "branch7x7x3_4", stride=2)(b7)
    return jnp.concatenate([b3, b7, _max_pool(x, stride=2)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b (E_1: average pool excluding padding) and Mixed_7c (E_2: max pool).

  The max pool in Mixed_7c is a quirk of the 2015 TF graph that FID is defined on.
  """
  pool: str  # "avg" (FIDInceptionE_1) or "max" (FIDInceptionE_2)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = _conv(320, 1, "branch1x1")(x)
    b3 = _conv(384, 1, "branch3x3_1")(x)
    b3 = jnp.concatenate([_conv(384, (1, 3), "branch3x3_2a", padding=(0, 1))(b3),
                          _conv(384, (3, 1), "branch3x3_2b", padding=(1, 0))(b3)],
                         axis=-1)
    bd = _conv(448, 1, "branch3x3dbl_1")(x)
    bd = _conv(384, 3, "branch3x3dbl_2", padding=1)(bd)
    bd = jnp.concatenate([_conv(384, (1, 3), "branch3x3dbl_3a", padding=(0, 1))(bd),
                          _conv(384, (3, 1), "branch3x3dbl_3b", padding=(1, 0))(bd)],
                         axis=-1)
    pooled = (_avg_pool_exclude_pad(x) if self.pool == "avg"
              else _max_pool(x, stride=1, padding=1))
    bp = _conv(192, 1, "branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """The FID Inception-v3: uint8 NHWC images -> {pool, logits_unbiased, logits}."""
  input_convention: str = "tf1"

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    x = preprocess(images, self.input_convention)             # N x 299 x 299 x 3
    x = _conv(32, 3, "Conv2d_1a_3x3", stride=2)(x)            # 149 x 149 x 32
    x = _conv(32, 3, "Conv2d_2a_3x3")(x)                      # 147 x 147 x 32
    x = _conv(64, 3, "Conv2d_2b_3x3", padding=1)(x)           # 147 x 147 x 64
    x = _max_pool(x, stride=2)                                # 73 x 73 x 64
    x = _conv(80, 1, "Conv2d_3b_1x1")(x)                      # 73 x 73 x 80
    x = _conv(192, 3, "Conv2d_4a_3x3")(x)                     # 71 x 71 x 192
    x = _max_pool(x, stride=2)                                # 35 x 35 x 192
    x = InceptionA(32, name="Mixed_5b")(x)                    # 35 x 35 x 256
    x = InceptionA(64, name="Mixed_5c")(x)                    # 35 x 35 x 288
    x = InceptionA(64, name="Mixed_5d")(x)                    # 35 x 35 x 288
    x = InceptionB(name="Mixed_6a")(x)                        # 17 x 17 x 768
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)                   # 17 x 17 x 768
    x = InceptionD(name="Mixed_7a")(x)                        # 8 x 8 x 1280
    x = InceptionE("avg", name="Mixed_7b")(x)                 # 8 x 8 x 2048
    x = InceptionE("max", name="Mixed_7c")(x)                 # 8 x 8 x 2048
    pool = jnp.mean(x, axis=(1, 2))                           # pool3: N x 2048
    kernel = self.param("fc_kernel", nn.initializers.lecun_normal(),
                        (POOL_DIM, NUM_LOGITS))
    bias = self.param("fc_bias", nn.initializers.zeros, (NUM_LOGITS,))
    logits_unbiased = jnp.dot(pool, kernel, precision=_HIGHEST)
    return {"pool": pool, "logits_unbiased": logits_unbiased,
            "logits": logits_unbiased + bias}


# ----------------------------------------------------------------------------------
# Weights.


def _torch_key_to_path(key: str) -> tuple[str, ...]:
  """Maps a torch state_dict key to the path of the Flax param it fills."""
  parts = key.split(".")
  if parts == ["fc", "weight"]:
    return ("fc_kernel",)
  if parts == ["fc", "bias"]:
    return ("fc_bias",)
  if len(parts) < 3:
    raise ValueError(f"Unexpected key {key!r} in the Inception state_dict.")
  *modules, layer, name = parts
  renames = {("conv", "weight"): "kernel", ("bn", "weight"): "scale",
             ("bn", "bias"): "bias", ("bn", "running_mean"): "mean",
             ("bn", "running_var"): "var"}
  if (layer, name) not in renames:
    raise ValueError(f"Unexpected key {key!r} in the Inception state_dict.")
  return (*modules, layer, renames[(layer, name)])


def _torch_to_flax_array(key: str, value: np.ndarray) -> np.ndarray:
  if key.endswith("conv.weight"):  # torch OIHW -> Flax HWIO
    return np.transpose(value, (2, 3, 1, 0))
  if key == "fc.weight":           # torch [out, in] -> Flax [in, out]
    return value.T
  return value


def param_shapes() -> dict[str, Any]:
  """The shapes of the network's params (no computation, no weights)."""
  images = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.uint8)
  variables = jax.eval_shape(InceptionV3().init, jax.random.key(0), images)
  return variables["params"]


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()):
  for name, value in tree.items():
    if isinstance(value, Mapping):
      yield from _flatten(value, (*prefix, name))
    else:
      yield (*prefix, name), value


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  return tree


def _check_and_build(flat: Mapping[tuple[str, ...], np.ndarray],
                     source: str) -> dict[str, Any]:
  """Checks names and shapes against the network, then builds the params tree."""
  expected = dict(_flatten(param_shapes()))
  missing = sorted("/".join(p) for p in expected.keys() - flat.keys())
  unexpected = sorted("/".join(p) for p in flat.keys() - expected.keys())
  if missing or unexpected:
    raise ValueError(
        f"{source} does not hold the FID Inception-v3 weights: missing "
        f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
        f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}.")
  for path, value in flat.items():
    if tuple(value.shape) != tuple(expected[path].shape):
      raise ValueError(f"{source}: {'/'.join(path)} has shape {value.shape}, the "
                       f"network needs {expected[path].shape}.")
  return _unflatten({p: jnp.asarray(v, jnp.float32) for p, v in flat.items()})


def convert_state_dict(state_dict: Mapping[str, Any],
                       source: str = "state_dict") -> dict[str, Any]:
  """A torch FID-Inception state_dict (arrays or tensors) -> Flax params.

  `num_batches_tracked` entries (bookkeeping of newer torch versions) are dropped.
  """
  flat = {}
  for key, value in state_dict.items():
    if key.endswith("num_batches_tracked"):
      continue
    array = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
    flat[_torch_key_to_path(key)] = _torch_to_flax_array(key, array)
  return _check_and_build(flat, source)


def save_params_npz(params: Params, path: str | os.PathLike,
                    meta: Mapping[str, Any] | None = None) -> None:
  """Saves params as a flat `.npz` ("Mixed_5b/branch1x1/conv/kernel" keys), with
  `meta` (e.g. the source file's SHA-256) as JSON under NPZ_META_KEY; atomically, so
  that an interrupted write never leaves a file that load_params would find."""
  path = pathlib.Path(path)
  if path.suffix != ".npz":
    raise ValueError(f"{path}: the converted weights must be a .npz file.")
  arrays = {"/".join(p): np.asarray(v) for p, v in _flatten(params)}
  if meta is not None:
    arrays[NPZ_META_KEY] = np.asarray(json.dumps(dict(meta), sort_keys=True))
  files.save_npz_atomically(path, arrays)


def read_npz_meta(path: str | os.PathLike) -> dict[str, Any]:
  """save_params_npz's `meta` record of a converted file ({} if it has none)."""
  with np.load(path) as data:
    if NPZ_META_KEY not in data.files:
      return {}
    return json.loads(str(data[NPZ_META_KEY]))


def check_published(sha256: str, source: str) -> None:
  """ValueError unless `sha256` is the published weight file's."""
  if sha256 != PUBLISHED_SHA256:
    raise ValueError(
        f"{source} has SHA-256 {sha256}, not that of the published FID Inception "
        f"weights ({PUBLISHED_SHA256}, {PUBLISHED_SIZE:,} bytes, from "
        f"{WEIGHTS_URLS[1]}): use that file, or pass --allow_unpublished to convert "
        "this one knowingly.")


def _missing_weights_error(searched: list[pathlib.Path]) -> FileNotFoundError:
  places = "\n".join(f"  {p}" for p in searched)
  urls = "\n".join(f"  {u}" for u in WEIGHTS_URLS)
  return FileNotFoundError(
      "The FID Inception-v3 weights were not found. Looked at:\n"
      f"{places}\n"
      "Download the weight file once (either URL holds the same weights):\n"
      f"{urls}\n"
      f"and put it in {WEIGHTS_CACHE_DIR}/, or point the {WEIGHTS_ENV_VAR} "
      "environment variable (or the path argument) at it. Converting the .pth file "
      "needs torch (CPU build is enough); save_params_npz writes a copy that loads "
      "without torch.")


def resolve_weights_path(path: str | os.PathLike | None = None) -> pathlib.Path:
  """The weight file to use: `path`, else $INCEPTION_WEIGHTS, else the cache dir.

  A directory (as `path` or in the variable) is searched for the standard file
  names, or their `.npz` conversions. Raises FileNotFoundError, naming the places
  searched and the download URLs, when no file is there.
  """
  names = (*WEIGHTS_FILENAMES,
           *(pathlib.Path(n).with_suffix(".npz").name for n in WEIGHTS_FILENAMES))
  explicit = path if path is not None else os.environ.get(WEIGHTS_ENV_VAR) or None
  if explicit is None:
    candidates = [WEIGHTS_CACHE_DIR / n for n in names]
  elif pathlib.Path(explicit).expanduser().is_dir():
    candidates = [pathlib.Path(explicit).expanduser() / n for n in names]
  else:
    candidates = [pathlib.Path(explicit).expanduser()]
  for candidate in candidates:
    if candidate.is_file():
      return candidate
  raise _missing_weights_error(candidates)


def _load_torch_state_dict(path: pathlib.Path) -> Mapping[str, Any]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"Reading {path} (a torch state_dict) needs torch: `pip install torch` (the "
        "CPU build is enough), or load a .npz written by save_params_npz.") from e
  # weights_only: a state_dict is plain tensors, so no arbitrary code is unpickled.
  return torch.load(path, map_location="cpu", weights_only=True)


def load_params(path: str | os.PathLike | None = None) -> dict[str, Any]:
  """Loads the FID Inception-v3 params from a torch `.pth` or a converted `.npz`.

  Without `path`, $INCEPTION_WEIGHTS, then ~/.cache/inception/ are searched.
  """
  resolved = resolve_weights_path(path)
  if resolved.suffix == ".npz":   # no torch needed
    with np.load(resolved) as data:
      flat = {tuple(k.split("/")): data[k] for k in data.files if k != NPZ_META_KEY}
    return _check_and_build(flat, str(resolved))
  return convert_state_dict(_load_torch_state_dict(resolved), str(resolved))


# ----------------------------------------------------------------------------------
# Batched features.


@functools.lru_cache(maxsize=None)
def make_feature_fn(input_convention: str = "tf1"
                    ) -> Callable[[Params, jax.Array], dict[str, jax.Array]]:
  """A jitted `(params, uint8 images) -> {pool, logits_unbiased, logits}`.

  One function per convention, so its compilations are reused across calls. The
  caller picks the sharding: jit follows its inputs' (e.g. images split over a
  `Mesh`'s batch axis, params replicated).
  """
  if input_convention not in INPUT_CONVENTIONS:
    raise ValueError(f"input_convention must be one of {INPUT_CONVENTIONS}, "
                     f"got {input_convention!r}.")
  model = InceptionV3(input_convention)

  @jax.jit
  def feature_fn(params, images):
    with jax.default_matmul_precision("highest"):
      return model.apply({"params": params}, images)

  return feature_fn


def extract_features(params: Params, images: np.ndarray, batch_size: int = 100,
                     input_convention: str = "tf1",
                     feature_fn: Callable | None = None) -> dict[str, np.ndarray]:
  """Features of all `images` (uint8 NHWC), in float32 numpy, in batches.

  The last batch is padded to `batch_size` so that one compilation serves all.
  """
  check_images(images)
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  feature_fn = feature_fn or make_feature_fn(input_convention)
  images = np.asarray(images)
  outputs = {name: [] for name in FEATURE_NAMES}
  for start in range(0, len(images), batch_size):
    batch = images[start:start + batch_size]
    count = len(batch)
    if count < batch_size:
      pad = np.zeros((batch_size - count, *batch.shape[1:]), np.uint8)
      batch = np.concatenate([batch, pad])
    features = jax.device_get(feature_fn(params, batch))
    for name in FEATURE_NAMES:
      outputs[name].append(np.asarray(features[name][:count], np.float32))
  return {name: (np.concatenate(parts) if parts else
                 np.zeros((0, POOL_DIM if name == "pool" else NUM_LOGITS), np.float32))
          for name, parts in outputs.items()}
