"""Sample-quality metrics of a set of generated images, with the protocol recorded.

`compute_sample_metrics(images, reference=..., metrics=...)` is what `--mode=eval`
calls: it extracts features in batches sharded over every device (a 'data' mesh
axis), compares them with reference statistics, and returns the numbers together
with a `protocol` dict saying how they were computed (sample count, reference split
and size, feature network and the SHA-256 of its weights, resize filter, precision),
because FID moves with every one of these (the papers' protocol:
evaluation/paper_tables.py, PROTOCOL).

Metric names and what they add to the results:

| name             | feature net | keys                                                 |
|------------------|-------------|------------------------------------------------------|
| `fid`            | Inception   | fid                                                  |
| `is`             | Inception   | is, is_std                                           |
| `kid`            | Inception   | kid, kid_std                                         |
| `pr`             | Inception   | precision, recall                                    |
| `classifier_fd`  | classifier  | classifier_fd                                        |
| `class_coverage` | classifier  | class_coverage, classes_with_any_sample,             |
|                  |             | class_kl_uniform, class_kl_reference,                |
|                  |             | classifier_confidence                                |

Inception metrics follow `evaluation/metrics.py` (FID, IS, KID, P&R as their reference
implementations); the classifier metrics use the dataset's small CNN
(`evaluation/classifier.py`). For the embedded datasets (`digits`, `shapes`) the
defaults are the classifier metrics (Inception at 8-64 px is computable, by resizing
to 299, but says little); for every other dataset FID and IS.

Reference statistics of a tfds split are computed once from its uint8 images, as
stored (no dequantization, no flips; the padded rows of the last batch are dropped
by the pipeline's mask) and cached as `.npz` (mu, sigma, features, class histogram,
and a JSON `meta`) under `cache_dir`, else $EVAL_STATS_DIR, else
~/.cache/genmodels/reference_stats, keyed by dataset, split, example count, image
size and feature network (with its weights' hash).

Sample generation that survives interruption: `generate_samples_resumable` writes
each chunk of samples to its own `.npz`; a rerun loads the chunks already written
and generates only the rest, with the same keys, hence the same images.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import math
import os
import pathlib
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from evaluation import classifier as classifier_lib
from evaluation import inception
from evaluation import metrics as metrics_lib

INCEPTION_METRICS = ("fid", "is", "kid", "pr")
CLASSIFIER_METRICS = ("classifier_fd", "class_coverage")
METRIC_NAMES = INCEPTION_METRICS + CLASSIFIER_METRICS
INCEPTION, CLASSIFIER = "inception", "classifier"  # the two kinds of feature net
STATS_DIR_ENV_VAR = "EVAL_STATS_DIR"
DEFAULT_STATS_DIR = "~/.cache/genmodels/reference_stats"
PRECISION = "highest"  # every feature net's convolutions and matmuls
_EMBEDDED_PREFIXES = ("digits", "shapes")

Params = Mapping[str, Any]


def _kind(metric: str) -> str:
  return INCEPTION if metric in INCEPTION_METRICS else CLASSIFIER


def default_metrics(dataset: str) -> tuple[str, ...]:
  """Classifier metrics for the embedded datasets, FID and IS for the others."""
  name = dataset.split("/")[0]
  return CLASSIFIER_METRICS if name in _EMBEDDED_PREFIXES else ("fid", "is")


def parse_metric_names(metrics: str | Sequence[str]) -> tuple[str, ...]:
  """'fid,is' or ['fid', 'is'] -> ('fid', 'is'); unknown or no names raise."""
  if isinstance(metrics, str):
    metrics = [m for m in metrics.split(",")]
  names = tuple(dict.fromkeys(m.strip().lower() for m in metrics if m.strip()))
  unknown = [m for m in names if m not in METRIC_NAMES]
  if unknown or not names:
    raise ValueError(f"Unknown metric(s) {unknown or list(metrics)}: choose from "
                     f"{', '.join(METRIC_NAMES)}.")
  return names


def check_sample_images(images: Any, what: str = "samples") -> np.ndarray:
  """uint8 [N, H, W, C] with C in (1, 3) and N >= 2, else ValueError."""
  images = np.asarray(images) if not hasattr(images, "dtype") else images
  if images.dtype != np.uint8:
    raise ValueError(f"The {what} must be uint8 images in [0, 255], got dtype "
                     f"{images.dtype}: quantise them as they would be saved to PNG.")
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"The {what} must be NHWC with 1 or 3 channels, got shape "
                     f"{tuple(images.shape)}.")
  if images.shape[0] < 2:
    raise ValueError(f"The {what} hold {images.shape[0]} image(s): the metrics need "
                     "at least 2.")
  return np.asarray(images)


# ------------------------------------------------------------------ feature nets
@dataclasses.dataclass(frozen=True)
class FeatureNet:
  """A network that maps uint8 NHWC images to {'features', 'logits'}."""
  kind: str                        # INCEPTION or CLASSIFIER
  name: str                        # identifies the net in caches and protocols
  apply_fn: Callable[[Params, Any], Mapping[str, Any]]  # jitted
  params: Params
  weights_sha256: str
  input_shape: tuple[int, int, int] | None  # required image shape; None: any
  protocol: Mapping[str, Any]      # how images become features (for the record)


@functools.lru_cache(maxsize=4)
def _file_sha256(path: str, size: int, mtime: float) -> str:
  del size, mtime  # part of the cache key only: a rewritten file is hashed again
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
  stat = os.stat(path)
  return _file_sha256(os.fspath(path), stat.st_size, stat.st_mtime)


@functools.lru_cache(maxsize=None)
def _inception_apply_fn(input_convention: str) -> Callable:
  feature_fn = inception.make_feature_fn(input_convention)

  @jax.jit
  def apply_fn(params, images):
    out = feature_fn(params, images)
    # pool3 for FID/KID/P&R; the bias-free logits for IS (see inception.py).
    return {"features": out["pool"], "logits": out["logits_unbiased"]}

  return apply_fn


def inception_feature_net(weights_path: str | os.PathLike | None = None,
                          input_convention: str = "tf1",
                          params: Params | None = None) -> FeatureNet:
  """The FID Inception-v3, weights from `weights_path` / $INCEPTION_WEIGHTS / cache.

  `params` (e.g. random weights in tests) skips loading; the hash is then of them.
  """
  if input_convention not in inception.INPUT_CONVENTIONS:
    raise ValueError(f"input_convention must be one of {inception.INPUT_CONVENTIONS}, "
                     f"got {input_convention!r}.")
  if params is None:
    path = inception.resolve_weights_path(weights_path)  # clear error if missing
    params = inception.load_params(path)
    weights_file, sha = path.name, file_sha256(path)
  else:
    weights_file, sha = "(params given in memory)", classifier_lib.params_sha256(params)
  resize = ("TF1 resize_bilinear(align_corners=False), no antialiasing"
            if input_convention == "tf1" else
            "torch F.interpolate(bilinear, align_corners=False), no antialiasing")
  protocol = dict(
      network="Inception-v3 2015-12-05 (the FID graph, Flax port)",
      weights_file=weights_file, weights_sha256=sha,
      features="pool3 (2048)", logits="logits_unbiased (1008, for IS)",
      input_convention=input_convention,
      resize=f"{resize} to {inception.INPUT_SIZE}x{inception.INPUT_SIZE}",
      grayscale="repeated to 3 channels", precision=PRECISION)
  return FeatureNet(INCEPTION, f"inception-2015-12-05-pool3-{input_convention}",
                    _inception_apply_fn(input_convention), params, sha, None, protocol)


def classifier_feature_net(classifier: classifier_lib.Classifier) -> FeatureNet:
  protocol = dict(
      network=f"CNN classifier of {classifier.dataset} (evaluation/classifier.py)",
      weights_sha256=classifier.weights_sha256,
      features=f"penultimate global average pool ({classifier.feature_dim})",
      classes=list(classifier.class_names),
      test_accuracy=classifier.meta.get("test_accuracy"),
      training=classifier.config.to_json(), resize="none (native resolution)",
      precision=PRECISION)
  return FeatureNet(CLASSIFIER, classifier.name, classifier.apply_fn, classifier.params,
                    classifier.weights_sha256, tuple(classifier.image_shape), protocol)


# ------------------------------------------------------------------- references
@dataclasses.dataclass(frozen=True)
class ReferenceSpec:
  """A tfds split whose statistics the samples are compared with."""
  dataset: str
  split: str = "train"             # FID's standard: the training set
  data_dir: str | None = None
  image_size: int | None = None    # the pipeline's resize (config.data.image_size)
  num_examples: int | None = None  # None: the whole split

  @classmethod
  def from_data_config(cls, data_config: Any, split: str = "train",
                       num_examples: int | None = None) -> "ReferenceSpec":
    """From config.data: the same dataset, data_dir and resize as training."""
    get = data_config.get
    return cls(dataset=get("dataset"), split=split, data_dir=get("data_dir", None),
               image_size=get("image_size", None), num_examples=num_examples)

  def data_config(self) -> dict[str, Any]:
    return dict(dataset=self.dataset, data_dir=self.data_dir,
                image_size=self.image_size)


@dataclasses.dataclass
class ReferenceStats:
  """Statistics of reference images in one feature net's space."""
  mu: np.ndarray
  sigma: np.ndarray
  features: np.ndarray | None = None         # [N, D] float32 (KID, P&R)
  class_histogram: np.ndarray | None = None  # [C] (classifier nets)
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def feature_net(self) -> str | None:
    return self.meta.get("feature_net")

  def save(self, path: str | os.PathLike) -> None:
    """A pytorch-fid compatible .npz (mu, sigma) with the rest beside, atomically."""
    arrays = dict(mu=self.mu, sigma=self.sigma,
                  meta=np.asarray(json.dumps(self.meta, sort_keys=True)))
    if self.features is not None:
      arrays["features"] = self.features
    if self.class_histogram is not None:
      arrays["class_histogram"] = self.class_histogram
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    os.close(fd)
    try:
      np.savez(tmp, **arrays)
      os.replace(tmp, path)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)

  @classmethod
  def load(cls, path: str | os.PathLike) -> "ReferenceStats":
    """Reads our files and plain pytorch-fid / TTUR ones (taken as Inception pool3)."""
    mu, sigma = metrics_lib.load_stats(path)  # checks the keys, explains others
    with np.load(path) as data:
      meta = json.loads(str(data["meta"])) if "meta" in data.files else {
          "feature_net": None, "source": f"stats file {os.fspath(path)}"}
      features = data["features"] if "features" in data.files else None
      histogram = data["class_histogram"] if "class_histogram" in data.files else None
    return cls(mu, sigma, features, histogram, meta)

  def describe(self) -> dict[str, Any]:
    """The protocol's account of the reference."""
    keys = ("dataset", "split", "num_examples", "image_shape", "feature_net",
            "weights_sha256", "source", "stats_file")
    return {k: self.meta[k] for k in keys if k in self.meta}


def default_stats_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get(STATS_DIR_ENV_VAR) or DEFAULT_STATS_DIR).expanduser()


def _slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")


def reference_cache_path(spec: ReferenceSpec, net: FeatureNet,
                         cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  size = "native" if spec.image_size is None else f"{spec.image_size}px"
  count = "all" if spec.num_examples is None else str(spec.num_examples)
  name = "-".join(_slug(p) for p in (spec.dataset, spec.split, count, size, net.name,
                                       net.weights_sha256[:12]))
  return pathlib.Path(cache_dir or default_stats_dir()).expanduser() / f"{name}.npz"


_REFERENCE_SOURCE = ("uint8 images of the split in storage order via "
                     "datasets.make_eval_batches: no dequantization, no flips, padded "
                     "rows of the last batch dropped by the mask")


_LOG_EVERY_SECONDS = 30.0


class _ThrottledProgress:
  """Logs `what: done/total images` at most every _LOG_EVERY_SECONDS, and at the end."""

  def __init__(self, what: str, total: int | None, enabled: bool = True):
    self.what, self.total, self.enabled = what, total, enabled
    self.start = self.last = time.time()

  def __call__(self, done: int) -> None:
    now = time.time()
    if self.enabled and (now - self.last > _LOG_EVERY_SECONDS or done == self.total):
      self.last = now
      _log_rate(self.what, done, self.total, self.start)


def _log_rate(what: str, done: int, total: int | None, start: float) -> None:
  rate = done / max(time.time() - start, 1e-9)
  left = "" if total is None else f", {(total - done) / max(rate, 1e-9):.0f} s left"
  logging.info("%s: %d%s images (%.1f images/s%s).", what, done,
               "" if total is None else f"/{total}", rate, left)


def _stats_from_outputs(features: np.ndarray, logits: np.ndarray | None,
                        kind: str) -> tuple[metrics_lib.FeatureStats, np.ndarray | None]:
  stats = metrics_lib.feature_statistics(features)
  histogram = None
  if kind == CLASSIFIER and logits is not None:
    histogram = classifier_lib.class_histogram(classifier_lib.softmax(logits))
  return stats, histogram


def compute_reference_stats(spec: ReferenceSpec, net: FeatureNet, *,
                            batch_size: int = 200, mesh: Mesh | None = None,
                            log_progress: bool = True) -> ReferenceStats:
  """Features of every image of the split (masked last batch), and their statistics."""
  import datasets  # pylint: disable=g-import-not-at-top  (tensorflow: load lazily)
  batch_size = classifier_lib.round_batch_size(batch_size, mesh)
  # Every process reads the whole split: all take part in the sharded computation
  # and all end with the same statistics.
  batches = datasets.make_eval_batches(
      spec.data_config(), split=spec.split, global_batch_size=batch_size,
      num_examples=spec.num_examples)
  masks: list[np.ndarray] = []
  shapes: list[tuple[int, ...]] = []

  def images_of(batches: Iterable[dict[str, np.ndarray]]):
    for batch in batches:
      if not shapes:
        _check_net_input(net, batch["image"], f"{spec.dataset} images")
        shapes.append(tuple(batch["image"].shape[1:]))
      masks.append(batch["mask"])
      yield batch["image"]

  features, logits = [], []
  progress = _ThrottledProgress(f"Reference {spec.dataset}/{spec.split} features",
                                spec.num_examples, log_progress)
  for out in classifier_lib.apply_to_batches(net.apply_fn, net.params,
                                             images_of(batches), mesh=mesh):
    mask = masks.pop(0)
    features.append(np.asarray(out["features"][mask], np.float32))
    logits.append(np.asarray(out["logits"][mask], np.float32))
    progress(sum(map(len, features)))
  if not features:
    raise ValueError(f"Split {spec.split!r} of {spec.dataset!r} has no examples.")
  features_array = np.concatenate(features)
  if log_progress:
    _log_rate(progress.what, len(features_array), len(features_array), progress.start)
  stats, histogram = _stats_from_outputs(features_array, np.concatenate(logits),
                                         net.kind)
  meta = dict(dataset=spec.dataset, split=spec.split,
              num_examples=int(len(features_array)), image_shape=list(shapes[0]),
              image_size=spec.image_size, feature_net=net.name,
              feature_net_kind=net.kind, weights_sha256=net.weights_sha256,
              source=_REFERENCE_SOURCE, feature_protocol=dict(net.protocol),
              created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat())
  return ReferenceStats(stats.mu, stats.sigma, features_array, histogram, meta)


def reference_statistics(spec: ReferenceSpec, net: FeatureNet, *,
                         cache_dir: str | os.PathLike | None = None,
                         batch_size: int = 200, mesh: Mesh | None = None,
                         log_progress: bool = True) -> ReferenceStats:
  """The cached statistics of `spec` in `net`'s space, computed on first use.

  Process 0 writes the cache file; a file whose meta names another dataset, split,
  net or weights is recomputed (and replaced).
  """
  path = reference_cache_path(spec, net, cache_dir)
  if path.is_file():
    try:
      cached = ReferenceStats.load(path)
      meta = cached.meta
      if (meta.get("dataset"), meta.get("split"), meta.get("feature_net"),
          meta.get("weights_sha256")) == (spec.dataset, spec.split, net.name,
                                          net.weights_sha256):
        cached.meta["stats_file"] = os.fspath(path)
        return cached
      logging.warning("%s holds statistics of something else (%s); recomputing.",
                      path, {k: meta.get(k) for k in ("dataset", "split",
                                                       "feature_net")})
    except (ValueError, OSError, KeyError) as error:
      logging.warning("Ignoring unreadable reference statistics %s: %s", path, error)
  stats = compute_reference_stats(spec, net, batch_size=batch_size, mesh=mesh,
                                  log_progress=log_progress)
  if jax.process_index() == 0:
    stats.save(path)
    logging.info("Cached reference statistics in %s.", path)
  stats.meta["stats_file"] = os.fspath(path)
  return stats


def stats_of_images(images: np.ndarray, net: FeatureNet, *, batch_size: int = 200,
                    mesh: Mesh | None = None, source: str = "images"
                    ) -> ReferenceStats:
  """Reference statistics of images in memory (e.g. another samples file)."""
  images = check_sample_images(images, source)
  _check_net_input(net, images, source)
  out = classifier_lib.apply_in_batches(net.apply_fn, net.params, images,
                                        batch_size=batch_size, mesh=mesh)
  stats, histogram = _stats_from_outputs(out["features"], out["logits"], net.kind)
  meta = dict(num_examples=int(len(images)), image_shape=list(images.shape[1:]),
              feature_net=net.name, feature_net_kind=net.kind,
              weights_sha256=net.weights_sha256, source=source)
  return ReferenceStats(stats.mu, stats.sigma, out["features"], histogram, meta)


def _check_net_input(net: FeatureNet, images: np.ndarray, what: str) -> None:
  if net.input_shape is not None and tuple(images.shape[1:]) != net.input_shape:
    raise ValueError(
        f"The {what} have shape {tuple(images.shape[1:])} but the feature net "
        f"{net.name} takes {net.input_shape}: classifier metrics need images at the "
        "resolution the classifier was trained at (set the reference's image_size "
        "to the samples' size).")


# ---------------------------------------------------------------------- metrics
class SampleMetrics(NamedTuple):
  """`values`: metric name -> float; `protocol`: how they were computed."""
  values: dict[str, float]
  protocol: dict[str, Any]


Reference = ReferenceSpec | ReferenceStats | np.ndarray


def _check_precomputed_reference(reference: ReferenceStats, net: FeatureNet,
                                 names: Sequence[str]) -> None:
  """Statistics from a file must come from `net` and hold what `names` need."""
  recorded = reference.feature_net
  # Files without a `meta` (pytorch-fid, TTUR) hold Inception pool3 statistics.
  if recorded != net.name and not (recorded is None and net.kind == INCEPTION):
    raise ValueError(
        f"The reference statistics are of feature net {recorded or 'Inception pool3'}"
        f", but {net.name} is needed: pass statistics computed with it, a "
        "reference dataset, or reference images.")
  if recorded is not None and reference.meta.get("weights_sha256") not in (
      None, net.weights_sha256):
    raise ValueError(f"The reference statistics were computed with other "
                     f"{net.name} weights (sha256 "
                     f"{reference.meta['weights_sha256'][:12]}..., now "
                     f"{net.weights_sha256[:12]}...): recompute them.")
  if tuple(reference.mu.shape) != (reference.sigma.shape[0],):
    raise ValueError("The reference statistics' mu and sigma disagree in size.")
  needs_features = [m for m in names if m in ("kid", "pr")]
  if needs_features and reference.features is None:
    raise ValueError(f"{', '.join(needs_features).upper()} need the reference "
                     "features, which these statistics do not hold (mu/sigma only): "
                     "compute them with `python -m evaluation.cli reference_stats`, or "
                     "pass a reference dataset or images.")


def _reference_for(reference: Reference, net: FeatureNet, *, cache_dir, batch_size,
                   mesh, log_progress) -> ReferenceStats:
  if isinstance(reference, ReferenceSpec):
    return reference_statistics(reference, net, cache_dir=cache_dir,
                                batch_size=batch_size, mesh=mesh,
                                log_progress=log_progress)
  if isinstance(reference, ReferenceStats):
    return reference
  return stats_of_images(reference, net, batch_size=batch_size, mesh=mesh,
                         source="reference images")


def _resolve_feature_nets(kinds: set[str], reference: Reference, image_shape, *,
                          inception_weights, classifier_dir, feature_nets
                          ) -> dict[str, FeatureNet]:
  """The nets the metrics need; user errors raised before anything is trained."""
  nets = dict(feature_nets or {})
  if INCEPTION in kinds and INCEPTION not in nets:
    inception.resolve_weights_path(inception_weights)  # fails fast, says where
  if CLASSIFIER in kinds and CLASSIFIER not in nets:
    if not isinstance(reference, ReferenceSpec):
      dataset = getattr(reference, "meta", {}).get("dataset")
      if dataset is None:
        raise ValueError("Classifier metrics need to know the dataset: pass a "
                         "ReferenceSpec (or statistics that record their dataset).")
      spec = ReferenceSpec(dataset, image_size=reference.meta.get("image_size"))
    else:
      spec = reference
    _, _, shape = classifier_lib.dataset_spec(spec.dataset, spec.data_dir,
                                              spec.image_size)
    if tuple(image_shape) != shape:
      raise ValueError(
          f"Samples of shape {tuple(image_shape)} cannot be scored by the "
          f"{spec.dataset} classifier, which takes {shape}: set the reference's "
          "image_size to the samples' resolution.")
    nets[CLASSIFIER] = classifier_feature_net(classifier_lib.load_or_train(
        spec.dataset, classifier_dir, data_dir=spec.data_dir,
        image_size=spec.image_size))
  if INCEPTION in kinds and INCEPTION not in nets:
    nets[INCEPTION] = inception_feature_net(inception_weights)
  return nets


def compute_sample_metrics(
    images: np.ndarray,
    *,
    reference: Reference,
    metrics: str | Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    inception_weights: str | os.PathLike | None = None,
    classifier_dir: str | os.PathLike | None = None,
    batch_size: int = 200,
    mesh: Mesh | None = None,
    log_progress: bool = True,
    feature_nets: Mapping[str, FeatureNet] | None = None,
    kid_subset_size: int = metrics_lib.KID_SUBSET_SIZE,
    is_splits: int = metrics_lib.IS_NUM_SPLITS,
) -> SampleMetrics:
  """Metrics of uint8 NHWC `images` against `reference`, and their protocol.

  Args:
    images: the samples, uint8 [N, H, W, C], the same array on every process.
    reference: a `ReferenceSpec` (statistics of a tfds split, cached), a
      `ReferenceStats` (e.g. loaded from a file), or uint8 reference images.
    metrics: names from METRIC_NAMES (or 'fid,is'); None: `default_metrics` of the
      reference's dataset (FID and IS if it is unknown).
    cache_dir: reference statistics cache ($EVAL_STATS_DIR, ~/.cache/...).
    inception_weights: the FID Inception weight file (else $INCEPTION_WEIGHTS, ...).
    classifier_dir: classifier cache ($EVAL_CLASSIFIER_DIR, ~/.cache/...).
    batch_size: images per feature batch (rounded up to a multiple of the devices).
    mesh: a mesh with a 'data' axis to shard batches over; None: every device.
    log_progress: log feature-extraction progress.
    feature_nets: prebuilt nets by kind ('inception', 'classifier'), e.g. to reuse
      them across evaluations or to test with random weights.
    kid_subset_size: KID's subset size, lowered to the smaller set if needed (the
      protocol records the size used).
    is_splits: Inception Score splits (10 is the standard).
  """
  images = check_sample_images(images)
  if metrics is None:
    dataset = (reference.dataset if isinstance(reference, ReferenceSpec)
               else getattr(reference, "meta", {}).get("dataset"))
    metrics = default_metrics(dataset) if dataset else ("fid", "is")
  names = parse_metric_names(metrics)
  if "is" in names and not 1 <= is_splits <= len(images):
    raise ValueError(f"The Inception Score's {is_splits} splits need at least that "
                     f"many samples, got {len(images)}.")
  if "pr" in names and len(images) <= metrics_lib.PR_NEIGHBOURS:
    raise ValueError(f"Precision/recall need more than {metrics_lib.PR_NEIGHBOURS} "
                     f"samples, got {len(images)}.")
  kinds = {_kind(m) for m in names}
  mesh = mesh if mesh is not None else classifier_lib.data_mesh()
  nets = _resolve_feature_nets(kinds, reference, images.shape[1:],
                               inception_weights=inception_weights,
                               classifier_dir=classifier_dir, feature_nets=feature_nets)
  for kind in kinds:
    _check_net_input(nets[kind], images, "samples")
    kind_names = [m for m in names if _kind(m) == kind]
    if kind_names == ["is"]:
      continue  # no reference needed
    if isinstance(reference, ReferenceStats):
      _check_precomputed_reference(reference, nets[kind], kind_names)
    elif not isinstance(reference, ReferenceSpec):
      reference = check_sample_images(reference, "reference images")
      _check_net_input(nets[kind], reference, "reference images")
  values: dict[str, float] = {}
  protocol: dict[str, Any] = dict(
      num_samples=int(len(images)), sample_shape=list(images.shape[1:]),
      metrics=list(names), precision=PRECISION, batch_size=int(
          classifier_lib.round_batch_size(batch_size, mesh)),
      num_devices=int(mesh.size), feature_nets={}, reference={})
  for kind in sorted(kinds):
    net = nets[kind]
    out = classifier_lib.apply_in_batches(
        net.apply_fn, net.params, images, batch_size=batch_size, mesh=mesh,
        progress=_ThrottledProgress(f"Sample features ({net.name})", len(images),
                                    log_progress))
    kind_names = [m for m in names if _kind(m) == kind]
    ref = None
    if kind_names != ["is"]:  # the Inception Score alone needs no reference
      ref = _reference_for(reference, net, cache_dir=cache_dir,
                           batch_size=batch_size, mesh=mesh, log_progress=log_progress)
      protocol["reference"][kind] = ref.describe()
    values.update(_metrics_of(kind_names, out, ref, protocol,
                              kid_subset_size=kid_subset_size, is_splits=is_splits))
    protocol["feature_nets"][kind] = dict(net.protocol, name=net.name)
  if log_progress:
    logging.info("Sample metrics: %s", ", ".join(f"{k}={v:.4g}"
                                                 for k, v in values.items()))
  return SampleMetrics(values, protocol)


def _metrics_of(names: Sequence[str], out: Mapping[str, np.ndarray],
                ref: ReferenceStats | None, protocol: dict[str, Any], *,
                kid_subset_size: int, is_splits: int) -> dict[str, float]:
  """The named metrics from sample outputs and reference statistics."""
  values: dict[str, float] = {}
  features = np.asarray(out["features"], np.float64)
  for name in names:
    if name in ("fid", "classifier_fd"):
      values[name] = metrics_lib.frechet_distance(
          metrics_lib.feature_statistics(features), (ref.mu, ref.sigma))
    elif name == "is":
      values["is"], values["is_std"] = metrics_lib.inception_score(
          out["logits"], num_splits=is_splits)
      protocol["is_splits"] = is_splits
    elif name == "kid":
      subset = min(kid_subset_size, len(features), len(ref.features))
      values["kid"], values["kid_std"] = metrics_lib.kernel_inception_distance(
          features, ref.features, subset_size=subset)
      protocol.update(kid_subset_size=subset,
                      kid_num_subsets=metrics_lib.KID_NUM_SUBSETS)
    elif name == "pr":
      if len(ref.features) <= metrics_lib.PR_NEIGHBOURS:
        raise ValueError("Precision/recall need more than "
                         f"{metrics_lib.PR_NEIGHBOURS} reference images.")
      values["precision"], values["recall"] = metrics_lib.precision_recall(
          ref.features, features)
      protocol["pr_neighbours"] = metrics_lib.PR_NEIGHBOURS
    elif name == "class_coverage":
      probabilities = classifier_lib.softmax(out["logits"])
      values.update(classifier_lib.class_statistics(probabilities,
                                                    ref.class_histogram))
      protocol["class_coverage_min_fraction"] = 1.0 / (2 * probabilities.shape[1])
  return values


# ----------------------------------------------------- resumable sample generation
def _key_fingerprint(rng: jax.Array) -> str:
  data = rng
  if jax.dtypes.issubdtype(getattr(rng, "dtype", None), jax.dtypes.prng_key):
    data = jax.random.key_data(rng)
  return hashlib.sha256(np.asarray(data).tobytes()).hexdigest()[:16]


def chunk_path(out_dir: str | os.PathLike, index: int) -> pathlib.Path:
  return pathlib.Path(out_dir) / f"chunk_{index:06d}.npz"


def _read_chunk(path: pathlib.Path, index: int, batch_size: int,
                fingerprint: str) -> np.ndarray | None:
  """A finished chunk's images; None if absent or unreadable; raises if foreign."""
  if not path.is_file():
    return None
  try:
    with np.load(path) as data:
      images, meta = data["arr_0"], json.loads(str(data["meta"]))
  except (OSError, ValueError, KeyError) as error:
    logging.warning("Regenerating unreadable sample chunk %s: %s", path, error)
    return None
  if (meta.get("chunk_index"), meta.get("batch_size"), meta.get("rng")) != (
      index, batch_size, fingerprint) or images.shape[0] != batch_size:
    raise ValueError(
        f"{path} was written by another sampling run (chunk {meta.get('chunk_index')}, "
        f"batch size {meta.get('batch_size')}, rng {meta.get('rng')}; this run: chunk "
        f"{index}, batch size {batch_size}, rng {fingerprint}): use another out_dir "
        "or delete it.")
  return images


def generate_samples_resumable(sample_fn: Callable[[jax.Array, int], Any],
                               rng: jax.Array, num_samples: int, batch_size: int,
                               out_dir: str | os.PathLike, *,
                               is_writer: bool | None = None,
                               log_progress: bool = True) -> np.ndarray:
  """`num_samples` images from `sample_fn`, saved chunk by chunk so a rerun resumes.

  Chunk i holds `sample_fn(fold_in(rng, i), batch_size)` (uint8 NHWC, the whole
  batch on every process) in `out_dir/chunk_{i:06d}.npz`, written atomically by the
  writer process (process 0 by default). Chunks already there (same rng, same
  batch size) are read, not regenerated, so an interrupted run continues where it
  stopped and returns the same images as an uninterrupted one. The result is the
  first `num_samples` images of the concatenated chunks.
  """
  if num_samples < 1 or batch_size < 1:
    raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples} "
                     f"and {batch_size}.")
  out_dir = pathlib.Path(out_dir)
  is_writer = jax.process_index() == 0 if is_writer is None else is_writer
  if is_writer:
    out_dir.mkdir(parents=True, exist_ok=True)
  fingerprint = _key_fingerprint(rng)
  num_chunks = math.ceil(num_samples / batch_size)
  done = np.asarray([chunk_path(out_dir, i).is_file() for i in range(num_chunks)])
  if jax.process_count() > 1:  # all processes must generate the same chunks
    done = np.asarray(multihost_utils.broadcast_one_to_all(done), bool)
  if log_progress and done.any():
    logging.info("Resuming sampling in %s: %d of %d chunks already written.",
                 out_dir, int(done.sum()), num_chunks)
  chunks: list[np.ndarray] = []
  start = last_log = time.time()
  generated = 0
  for i in range(num_chunks):
    images = (_read_chunk(chunk_path(out_dir, i), i, batch_size, fingerprint)
              if done[i] else None)
    if images is None:
      images = np.asarray(sample_fn(jax.random.fold_in(rng, i), batch_size))
      if images.dtype != np.uint8 or images.ndim != 4 or len(images) != batch_size:
        raise ValueError(f"sample_fn must return {batch_size} uint8 NHWC images, got "
                         f"{images.dtype} {images.shape}.")
      if is_writer:
        _write_chunk(chunk_path(out_dir, i), images,
                     dict(chunk_index=i, batch_size=batch_size, rng=fingerprint))
      generated += len(images)
      if log_progress and (time.time() - last_log > _LOG_EVERY_SECONDS
                           or i == num_chunks - 1):
        last_log = time.time()
        rate = generated / max(time.time() - start, 1e-9)
        remaining = int((~done[i + 1:]).sum()) * batch_size
        logging.info("Sampled chunk %d/%d (%.1f images/s, %.0f s left).", i + 1,
                     num_chunks, rate, remaining / rate)
    chunks.append(images)
  return np.concatenate(chunks)[:num_samples]


def _write_chunk(path: pathlib.Path, images: np.ndarray, meta: dict[str, Any]) -> None:
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
  os.close(fd)
  try:
    np.savez(tmp, arr_0=images, meta=np.asarray(json.dumps(meta, sort_keys=True)))
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
