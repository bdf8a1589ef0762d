"""A small CNN classifier per embedded dataset: the offline sample-quality metric.

Inception features mean little for 8x8 digits or 16-64 px synthetic shapes, and the
Inception weights need a download. For the embedded datasets (`digits`, `shapes/16`,
`shapes/32`, `shapes/64`; `shapes` is `shapes/32`) a small CNN trained on the
dataset's own train split plays Inception's role, as a pretrained MNIST classifier
does in the GAN mode-collapse literature (Metz et al. 2017, stacked MNIST):

- its penultimate layer (the global average pool of the last conv block, like
  Inception's pool3) gives the features of a Fréchet distance ("classifier FD",
  computed with `metrics.frechet_distance`, the FID formula);
- its class probabilities give class coverage, the KL divergences of the predicted
  class histogram, and the classifier's confidence (see `class_statistics`).

For `shapes` the class is the `label` feature, which is the shape (circle, square,
triangle, cross). The classifier works at the dataset's own resolution (or at
`image_size`, when the pipeline resizes): samples must have that shape.

Training is deterministic: a fixed seed for the initialisation and for the order of
the examples (numpy permutations), one compiled step, no dropout; on one machine two
trainings give the same weights bit for bit. Trained classifiers are cached in
`<cache_dir>/<key>/` (`params.npz` + `meta.json`), where `cache_dir` is the argument,
else $EVAL_CLASSIFIER_DIR, else ~/.cache/genmodels/classifiers, and `key` is the
dataset name with '/' as '_' (e.g. `shapes_32`), plus `_<size>px` when resized.
A cached classifier is used only if its recorded training config equals the current
one and its weights match their recorded SHA-256; otherwise it is retrained.

    python -m evaluation.cli train_classifier --dataset=digits
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from datasets import transforms
from evaluation import files

CLASSIFIER_DIR_ENV_VAR = "EVAL_CLASSIFIER_DIR"
DEFAULT_CLASSIFIER_DIR = "~/.cache/genmodels/classifiers"
DATA_AXIS = "data"  # the batch axis of a feature-extraction mesh
# Bumped whenever the network or the training recipe changes: cached weights from
# another version are retrained rather than silently reused.
RECIPE_VERSION = 1
_ALIASES = {"shapes": "shapes/32"}

Params = Mapping[str, Any]


# ------------------------------------------------------------------------ network
class ClassifierNet(nn.Module):
  """uint8 NHWC -> (features [N, widths[-1]], logits [N, num_classes]).

  Per stage: conv3x3 -> ReLU -> conv3x3 stride 2 -> ReLU, halving the resolution;
  then one conv3x3 -> ReLU and a global average pool (the features, as Inception's
  pool3 is the mean of its last block) and a linear layer to the logits.
  """
  num_classes: int
  widths: tuple[int, ...]

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    x = transforms.uint8_to_centered(images)
    for width in self.widths:
      x = nn.relu(nn.Conv(width, (3, 3))(x))
      x = nn.relu(nn.Conv(width, (3, 3), strides=(2, 2))(x))
    x = nn.relu(nn.Conv(self.widths[-1], (3, 3))(x))
    features = jnp.mean(x, axis=(1, 2))
    return {"features": features, "logits": nn.Dense(self.num_classes)(features)}


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
  """How a classifier is trained; recorded with its weights (a cache key)."""
  widths: tuple[int, ...]
  num_steps: int
  batch_size: int = 64
  learning_rate: float = 2e-3
  weight_decay: float = 1e-4
  seed: int = 0
  recipe_version: int = RECIPE_VERSION

  def to_json(self) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items()}


def default_training_config(image_size: int) -> TrainingConfig:
  """Stages halve the resolution down to 4x4 (one stage for 8 px digits)."""
  num_stages = max(1, round(math.log2(image_size)) - 2)
  if image_size <= 8:  # digits: 1,442 images, ~45 epochs (98.9% test accuracy)
    return TrainingConfig(widths=(32,) * num_stages, num_steps=1000)
  # shapes: 10,000 images, ~3 epochs, for 4 classes (>= 99.8% test accuracy at 16,
  # 32 and 64 px); narrow full-resolution layers keep the training short on a CPU.
  first_width = 16 if image_size <= 32 else 8
  widths = tuple(min(first_width * 2**i, 64) for i in range(num_stages))
  return TrainingConfig(widths=widths, num_steps=500)


# ------------------------------------------------------------------- data access
def canonical_dataset(dataset: str) -> str:
  """`shapes` -> `shapes/32` (the builder's default config); others unchanged."""
  if not isinstance(dataset, str) or not dataset:
    raise ValueError(f"dataset must be a tfds name such as 'digits', got {dataset!r}.")
  return _ALIASES.get(dataset, dataset)


def cache_key(dataset: str, image_size: int | None = None) -> str:
  key = canonical_dataset(dataset).replace("/", "_")
  return key if image_size is None else f"{key}_{image_size}px"


def default_cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get(CLASSIFIER_DIR_ENV_VAR)
                      or DEFAULT_CLASSIFIER_DIR).expanduser()


def _data_config(dataset: str, data_dir: str | None,
                 image_size: int | None) -> dict[str, Any]:
  return {"dataset": canonical_dataset(dataset), "data_dir": data_dir,
          "image_size": image_size}


def dataset_spec(dataset: str, data_dir: str | None = None,
                 image_size: int | None = None
                 ) -> tuple[str, tuple[str, ...], tuple[int, int, int]]:
  """(canonical name, class names, image shape after the pipeline) of a dataset.

  Read from the tfds builder's info: nothing is prepared or read.
  """
  import datasets  # pylint: disable=g-import-not-at-top  (registers the builders)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  del datasets
  dataset = canonical_dataset(dataset)
  try:
    builder = tfds.builder(dataset, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(f"Unknown dataset {dataset!r}: classifiers exist for labelled "
                     "tfds datasets such as the embedded 'digits' and "
                     "'shapes/16|32|64'.") from None
  features = builder.info.features
  label = features["label"] if "label" in features else None
  if not isinstance(label, tfds.features.ClassLabel):
    raise ValueError(f"Dataset {dataset!r} has no class `label`: classifier metrics "
                     "need one; use fid/is/kid/pr instead.")
  height, width, channels = features["image"].shape
  if image_size is not None:
    height = width = image_size
  if height is None or width is None:
    raise ValueError(f"Dataset {dataset!r} has images of varying size: pass an "
                     "image_size.")
  return dataset, tuple(label.names), (int(height), int(width), int(channels))


def read_split(dataset: str, split: str, *, data_dir: str | None = None,
               image_size: int | None = None, num_examples: int | None = None,
               batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
  """All images (uint8 NHWC) and labels (int32) of a split, in storage order.

  Reads through `datasets.make_eval_batches` and keeps the rows its mask marks
  real, so the last, padded batch adds nothing.
  """
  import datasets  # pylint: disable=g-import-not-at-top
  images, labels = [], []
  for batch in datasets.make_eval_batches(
      _data_config(dataset, data_dir, image_size), split=split,
      global_batch_size=batch_size, num_examples=num_examples):
    images.append(batch["image"][batch["mask"]])
    labels.append(batch["label"][batch["mask"]])
  if not images:
    raise ValueError(f"Split {split!r} of {dataset!r} has no examples.")
  return np.concatenate(images), np.concatenate(labels)


# --------------------------------------------------------- batched, sharded apply
def data_mesh() -> Mesh:
  """All devices of all processes along one 'data' axis."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def round_batch_size(batch_size: int, mesh: Mesh | None) -> int:
  """`batch_size` rounded up to a multiple of the mesh's devices."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  devices = 1 if mesh is None else mesh.size
  return math.ceil(batch_size / devices) * devices


def apply_to_batches(fn: Callable[[Params, jax.Array], Mapping[str, jax.Array]],
                     params: Params, batches: Iterable[np.ndarray], *,
                     mesh: Mesh | None = None) -> Iterator[dict[str, np.ndarray]]:
  """fn(params, batch) for each full-size uint8 batch, as host numpy arrays.

  With a mesh (axis 'data'), each batch is split over all its devices and the
  params replicated; every process must pass the same batches (the global ones),
  and gets back every row. Without, jit places everything on the default device.
  """
  if mesh is not None:
    if DATA_AXIS not in mesh.axis_names:
      raise ValueError(f"The mesh needs an axis named {DATA_AXIS!r}, got "
                       f"{mesh.axis_names}.")
    params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
    data_sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
  for batch in batches:
    if mesh is None:
      out = jax.device_get(fn(params, batch))
    else:
      global_batch = jax.make_array_from_callback(
          batch.shape, data_sharding, lambda index, b=batch: b[index])
      out = multihost_utils.process_allgather(fn(params, global_batch), tiled=True)
    yield {name: np.asarray(value) for name, value in out.items()}


def padded_batches(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
  """Consecutive batches of `batch_size` rows; the last one zero-padded (one compile)."""
  for start in range(0, len(images), batch_size):
    batch = images[start:start + batch_size]
    if len(batch) < batch_size:
      pad = np.zeros((batch_size - len(batch), *batch.shape[1:]), batch.dtype)
      batch = np.concatenate([batch, pad])
    yield batch


def apply_in_batches(fn: Callable[[Params, jax.Array], Mapping[str, jax.Array]],
                     params: Params, images: np.ndarray, *, batch_size: int,
                     mesh: Mesh | None = None,
                     progress: Callable[[int], None] | None = None
                     ) -> dict[str, np.ndarray]:
  """fn over all `images` in batches (sharded over `mesh`), outputs concatenated.

  `progress(rows_done)` is called after each batch.
  """
  batch_size = round_batch_size(batch_size, mesh)
  parts: dict[str, list[np.ndarray]] = {}
  for start, out in zip(range(0, len(images), batch_size),
                        apply_to_batches(fn, params, padded_batches(images, batch_size),
                                         mesh=mesh)):
    count = min(batch_size, len(images) - start)
    for name, value in out.items():
      parts.setdefault(name, []).append(value[:count])
    if progress is not None:
      progress(start + count)
  return {name: np.concatenate(values) for name, values in parts.items()}


# ------------------------------------------------------------------- classifier
def _check_images(images: Any, image_shape: tuple[int, int, int],
                  what: str) -> np.ndarray:
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f"{what} expects uint8 images in [0, 255], got dtype "
                     f"{images.dtype}: convert samples to uint8 first.")
  if images.ndim != 4 or tuple(images.shape[1:]) != tuple(image_shape):
    raise ValueError(f"{what} expects NHWC images of shape [N, "
                     f"{', '.join(map(str, image_shape))}], got {images.shape}.")
  return images


def params_sha256(params: Params) -> str:
  """SHA-256 over the params' paths, dtypes, shapes and bytes (sorted by path)."""
  digest = hashlib.sha256()
  for path, value in sorted(_flatten(params).items()):
    value = np.ascontiguousarray(np.asarray(value))
    digest.update(f"{path}:{value.dtype.str}:{value.shape};".encode())
    digest.update(value.tobytes())
  return digest.hexdigest()


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for name, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, f"{prefix}{name}/"))
    else:
      flat[f"{prefix}{name}"] = value
  return flat


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  return tree


def make_apply_fn(num_classes: int, widths: Sequence[int]
                  ) -> Callable[[Params, jax.Array], dict[str, jax.Array]]:
  """A jitted (params, uint8 images) -> {'features', 'logits'}, float32 throughout."""
  net = ClassifierNet(num_classes, tuple(widths))

  @jax.jit
  def apply_fn(params, images):
    # Highest precision: no TF32 / bf16 passes on accelerators, as for Inception.
    with jax.default_matmul_precision("highest"):
      return net.apply({"params": params}, images)

  return apply_fn


@dataclasses.dataclass(frozen=True, eq=False)
class Classifier:
  """A trained classifier of one dataset at one resolution."""
  dataset: str
  image_shape: tuple[int, int, int]
  class_names: tuple[str, ...]
  config: TrainingConfig
  params: Params
  meta: Mapping[str, Any]  # accuracies, training time, weights hash, versions

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def feature_dim(self) -> int:
    return self.config.widths[-1]

  @property
  def name(self) -> str:
    """Identifies the feature network in statistics files and protocols."""
    return f"classifier/{cache_key(self.dataset)}/{self.image_shape[0]}px"

  @property
  def weights_sha256(self) -> str:
    return self.meta["weights_sha256"]

  @property
  def apply_fn(self) -> Callable[[Params, jax.Array], dict[str, jax.Array]]:
    return _cached_apply_fn(self.num_classes, self.config.widths)

  def check_images(self, images: Any) -> np.ndarray:
    return _check_images(images, self.image_shape, f"The {self.dataset} classifier")

  def outputs(self, images: Any, batch_size: int = 500,
              mesh: Mesh | None = None) -> dict[str, np.ndarray]:
    """{'features': [N, D], 'logits': [N, C]} of uint8 NHWC images."""
    images = self.check_images(images)
    return apply_in_batches(self.apply_fn, self.params, images,
                            batch_size=batch_size, mesh=mesh)

  def features(self, images: Any, batch_size: int = 500,
               mesh: Mesh | None = None) -> np.ndarray:
    """Penultimate features [N, D] (the Fréchet distance's space)."""
    return self.outputs(images, batch_size, mesh)["features"]

  def predict_proba(self, images: Any, batch_size: int = 500,
                    mesh: Mesh | None = None) -> np.ndarray:
    """Class probabilities [N, C] (softmax of the logits, in float64)."""
    return softmax(self.outputs(images, batch_size, mesh)["logits"])


_APPLY_FNS: dict[tuple[int, tuple[int, ...]], Callable] = {}


def _cached_apply_fn(num_classes: int, widths: tuple[int, ...]) -> Callable:
  key = (num_classes, tuple(widths))
  if key not in _APPLY_FNS:
    _APPLY_FNS[key] = make_apply_fn(num_classes, widths)
  return _APPLY_FNS[key]


def softmax(logits: np.ndarray) -> np.ndarray:
  logits = np.asarray(logits, np.float64)
  shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
  return shifted / shifted.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------- training
def _train_params(images: np.ndarray, labels: np.ndarray, num_classes: int,
                  config: TrainingConfig) -> Params:
  """Adam(W) on the cross-entropy; example order from a seeded numpy generator."""
  net = ClassifierNet(num_classes, config.widths)
  params = net.init(jax.random.PRNGKey(config.seed), images[:1])["params"]
  optimizer = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
  opt_state = optimizer.init(params)

  @jax.jit
  def train_step(params, opt_state, batch_images, batch_labels):
    def loss_fn(p):
      logits = net.apply({"params": p}, batch_images)["logits"]
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch_labels).mean()
    with jax.default_matmul_precision("highest"):
      grads = jax.grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  batch_size = min(config.batch_size, len(images))
  order = _example_order(len(images), batch_size, config.num_steps, config.seed)
  for step in range(config.num_steps):
    rows = order[step]
    params, opt_state = train_step(params, opt_state, images[rows], labels[rows])
  return jax.device_get(params)


def _example_order(num_examples: int, batch_size: int, num_steps: int,
                   seed: int) -> np.ndarray:
  """[num_steps, batch_size] indices: epochs of fresh permutations, remainder dropped."""
  rng = np.random.default_rng(seed)
  per_epoch = num_examples // batch_size
  epochs = math.ceil(num_steps / per_epoch)
  rows = [rng.permutation(num_examples)[:per_epoch * batch_size].reshape(
      per_epoch, batch_size) for _ in range(epochs)]
  return np.concatenate(rows)[:num_steps]


def accuracy(classifier: Classifier, images: np.ndarray, labels: np.ndarray) -> float:
  predictions = np.argmax(classifier.outputs(images)["logits"], axis=1)
  return float(np.mean(predictions == labels))


def train_classifier(dataset: str, *, data_dir: str | None = None,
                     image_size: int | None = None,
                     config: TrainingConfig | None = None) -> Classifier:
  """Trains on the train split and measures accuracy on the test split (no caching)."""
  dataset, names, image_shape = dataset_spec(dataset, data_dir, image_size)
  config = config or default_training_config(image_shape[0])
  train_images, train_labels = read_split(dataset, "train", data_dir=data_dir,
                                          image_size=image_size)
  test_images, test_labels = read_split(dataset, "test", data_dir=data_dir,
                                        image_size=image_size)
  start = time.time()
  params = _train_params(train_images, train_labels, len(names), config)
  seconds = time.time() - start
  meta = dict(train_seconds=seconds, num_train_examples=len(train_images),
              num_test_examples=len(test_images), weights_sha256=params_sha256(params),
              jax_version=jax.__version__, platform=jax.devices()[0].platform)
  classifier = Classifier(dataset, image_shape, names, config, params, meta)
  meta["train_accuracy"] = accuracy(classifier, train_images, train_labels)
  meta["test_accuracy"] = accuracy(classifier, test_images, test_labels)
  logging.info("Trained the %s classifier in %.1f s: test accuracy %.4f.", dataset,
               seconds, meta["test_accuracy"])
  return classifier


# ---------------------------------------------------------------------- caching
def save_classifier(classifier: Classifier, directory: str | os.PathLike) -> pathlib.Path:
  """Writes params.npz and meta.json atomically (concurrent writers are harmless)."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  flat = {path: np.asarray(v) for path, v in _flatten(classifier.params).items()}
  files.atomic_write(directory / "params.npz", lambda f: np.savez(f, **flat))
  meta = dict(classifier.meta, dataset=classifier.dataset,
              image_shape=list(classifier.image_shape),
              class_names=list(classifier.class_names),
              config=classifier.config.to_json())
  files.atomic_write(directory / "meta.json",
                lambda f: f.write(json.dumps(meta, indent=2, sort_keys=True).encode()))
  return directory


def load_classifier(directory: str | os.PathLike) -> Classifier:
  """Reads a classifier written by `save_classifier`; checks the weights' hash."""
  directory = pathlib.Path(directory)
  params_path, meta_path = directory / "params.npz", directory / "meta.json"
  if not params_path.is_file() or not meta_path.is_file():
    raise FileNotFoundError(
        f"No classifier in {directory} (needs params.npz and meta.json): train one "
        "with `python -m evaluation.cli train_classifier --dataset=NAME`.")
  meta = json.loads(meta_path.read_text())
  with np.load(params_path) as data:
    params = _unflatten({k: data[k] for k in data.files})
  if params_sha256(params) != meta.get("weights_sha256"):
    raise ValueError(f"{params_path} does not match the weights hash in {meta_path}: "
                     "the files are corrupt or from different runs; delete "
                     f"{directory} to retrain.")
  cfg = dict(meta["config"], widths=tuple(meta["config"]["widths"]))
  return Classifier(meta["dataset"], tuple(meta["image_shape"]),
                    tuple(meta["class_names"]), TrainingConfig(**cfg), params, meta)


def load_or_train(dataset: str, cache_dir: str | os.PathLike | None = None, *,
                  data_dir: str | None = None, image_size: int | None = None,
                  config: TrainingConfig | None = None) -> Classifier:
  """The cached classifier for `dataset` (at `image_size`), training it if needed.

  A cached classifier trained with another config (or recipe version) is retrained.
  Only process 0 writes the cache; every process trains the same weights.
  """
  dataset, _, image_shape = dataset_spec(dataset, data_dir, image_size)
  config = config or default_training_config(image_shape[0])
  directory = pathlib.Path(cache_dir or default_cache_dir()).expanduser() / cache_key(
      dataset, image_size)
  if directory.exists():
    try:
      cached = load_classifier(directory)
      if cached.config == config and cached.image_shape == image_shape:
        return cached
      logging.info("The classifier in %s was trained with %s; retraining with %s.",
                   directory, cached.config, config)
    except (FileNotFoundError, ValueError, KeyError, TypeError) as error:
      logging.warning("Ignoring the classifier cache in %s: %s", directory, error)
  classifier = train_classifier(dataset, data_dir=data_dir, image_size=image_size,
                                config=config)
  if jax.process_index() == 0:
    save_classifier(classifier, directory)
    logging.info("Cached the %s classifier in %s.", dataset, directory)
  return classifier


# ------------------------------------------------------------ class statistics
def class_histogram(probabilities: np.ndarray) -> np.ndarray:
  """Fraction of images whose most probable class is each class, [C]."""
  probabilities = np.asarray(probabilities)
  counts = np.bincount(np.argmax(probabilities, axis=1),
                       minlength=probabilities.shape[1])
  return counts / counts.sum()


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
  """KL(p || q) = sum_c p_c log(p_c / q_c) in nats.

  0 log 0 = 0; infinite where some q_c = 0 < p_c.
  """
  p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
  support = p > 0
  if np.any(q[support] == 0):
    return float("inf")
  return float(np.sum(p[support] * np.log(p[support] / q[support])))


def class_statistics(probabilities: np.ndarray,
                     reference_histogram: np.ndarray | None = None,
                     min_fraction: float | None = None) -> dict[str, float]:
  """Mode-coverage numbers of samples from their class probabilities [N, C].

  Each sample is assigned its argmax class, as in the mode counting of the
  stacked-MNIST experiments of Metz et al. 2017 ("Unrolled Generative Adversarial
  Networks"), which label samples with a pretrained classifier:

  - `class_coverage`: the fraction of the C classes that receive at least
    `min_fraction` of the samples (default 1 / (2C), half a class's share under a
    uniform distribution). Metz et al. count a mode as generated if *any* sample
    falls in it; with few samples per class, a handful of misclassified samples
    would then count as coverage, so the threshold asks for a real share.
  - `classes_with_any_sample`: Metz et al.'s count, as a fraction of C.
  - `class_kl_uniform`: KL(h || uniform) = log C - H(h) in nats, h the histogram.
  - `class_kl_reference`: KL(h || h_ref), h_ref the same classifier's histogram on
    the reference images (Metz et al. report a KL between the generated and the
    data class distributions next to the mode count); inf if some class has
    samples but no reference image.
  - `classifier_confidence`: mean over samples of max_c p(c | x).
  """
  probabilities = np.asarray(probabilities, np.float64)
  if probabilities.ndim != 2 or len(probabilities) == 0:
    raise ValueError(f"probabilities must be a non-empty [N, C] array, got "
                     f"{probabilities.shape}.")
  num_classes = probabilities.shape[1]
  if min_fraction is None:
    min_fraction = 1.0 / (2 * num_classes)
  if not 0.0 <= min_fraction <= 1.0:
    raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}.")
  histogram = class_histogram(probabilities)
  stats = {
      "class_coverage": float(np.mean(histogram >= min_fraction)
                              if min_fraction > 0 else np.mean(histogram > 0)),
      "classes_with_any_sample": float(np.mean(histogram > 0)),
      "class_kl_uniform": kl_divergence(histogram, np.full(num_classes, 1 / num_classes)),
      "classifier_confidence": float(np.mean(np.max(probabilities, axis=1))),
  }
  if reference_histogram is not None:
    reference_histogram = np.asarray(reference_histogram, np.float64)
    if reference_histogram.shape != (num_classes,):
      raise ValueError(f"reference_histogram must have shape ({num_classes},), got "
                       f"{reference_histogram.shape}.")
    stats["class_kl_reference"] = kl_divergence(histogram, reference_histogram)
  return stats
