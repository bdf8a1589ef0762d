"""Reference statistics of a dataset split in a feature net's space, cached on disk.

The statistics of a tfds split are computed once from its uint8 images, as stored
(no dequantization, no flips; the padded rows of the last batch are dropped by the
pipeline's mask) and cached as `.npz` (mu, sigma, features, class histogram, and a
JSON `meta`) under `cache_dir`, else $EVAL_STATS_DIR, else
~/.cache/genmodels/reference_stats, keyed by dataset, split, example count, image
size and feature network (with its weights' hash). The files are pytorch-fid
compatible (keys `mu`, `sigma`); plain pytorch-fid / TTUR / EDM files (`mu`, `sigma`)
and score_sde's (`pool_3` features) load as Inception pool3 statistics.

Also what the sample metrics share with the references: `FeatureNet` (a network from
uint8 images to features and logits, built in evaluation/sample_metrics.py), the
check of uint8 NHWC image arrays, and throttled progress logging.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh

from evaluation import classifier as classifier_lib
from evaluation import files
from evaluation import metrics as metrics_lib

INCEPTION, CLASSIFIER = "inception", "classifier"  # the two kinds of feature net
STATS_DIR_ENV_VAR = "EVAL_STATS_DIR"
DEFAULT_STATS_DIR = "~/.cache/genmodels/reference_stats"
LOG_EVERY_SECONDS = 30.0

Params = Mapping[str, Any]


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

  def check_input(self, images: np.ndarray, what: str) -> None:
    """ValueError unless `images` have the shape this net takes."""
    if self.input_shape is not None and tuple(images.shape[1:]) != self.input_shape:
      raise ValueError(
          f"The {what} have shape {tuple(images.shape[1:])} but the feature net "
          f"{self.name} takes {self.input_shape}: classifier metrics need images at "
          "the resolution the classifier was trained at (set the reference's "
          "image_size to the samples' size).")


# ---------------------------------------------------------------------- progress
class ThrottledProgress:
  """Logs `what: done/total images` at most every LOG_EVERY_SECONDS, and at the end."""

  def __init__(self, what: str, total: int | None, enabled: bool = True):
    self.what, self.total, self.enabled = what, total, enabled
    self.start = self.last = time.time()

  def __call__(self, done: int) -> None:
    now = time.time()
    if self.enabled and (now - self.last > LOG_EVERY_SECONDS or done == self.total):
      self.last = now
      log_rate(self.what, done, self.total, self.start)


def log_rate(what: str, done: int, total: int | None, start: float) -> None:
  rate = done / max(time.time() - start, 1e-9)
  left = "" if total is None else f", {(total - done) / max(rate, 1e-9):.0f} s left"
  logging.info("%s: %d%s images (%.1f images/s%s).", what, done,
               "" if total is None else f"/{total}", rate, left)


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
    files.save_npz_atomically(path, arrays)

  @classmethod
  def load(cls, path: str | os.PathLike) -> "ReferenceStats":
    """Reads our files and the published layouts of STATS_LAYOUTS: pytorch-fid, TTUR
    and EDM files (mu, sigma) and score_sde's (pool_3 features), the files without
    our `meta` taken as Inception pool3 statistics."""
    if not os.path.isfile(path):
      raise FileNotFoundError(f"No statistics file at {path}.")
    with np.load(path) as data:
      layout = stats_layout(data.files)
      if layout is None:
        raise ValueError(f"{path} holds {sorted(data.files)}, not a statistics file: "
                         f"{describe_stats_layouts()}.")
      meta = json.loads(str(data["meta"])) if "meta" in data.files else {
          "feature_net": None,
          "source": f"{STATS_LAYOUTS[layout]} stats file {os.fspath(path)}"}
      histogram = data["class_histogram"] if "class_histogram" in data.files else None
      if layout == POOL_3:
        features = np.asarray(data[POOL_3], np.float32)
        if features.ndim != 2 or len(features) < 2:
          raise ValueError(f"{path}: {POOL_3} must be features [N >= 2, D], got shape "
                           f"{features.shape}.")
        stats = metrics_lib.feature_statistics(features)
        return cls(stats.mu, stats.sigma, features, histogram,
                   dict(meta, num_examples=int(len(features))))
      features = data["features"] if "features" in data.files else None
    mu, sigma = metrics_lib.load_stats(path)
    return cls(mu, sigma, features, histogram, meta)

  def describe(self) -> dict[str, Any]:
    """The protocol's account of the reference."""
    keys = ("dataset", "split", "num_examples", "image_shape", "feature_net",
            "weights_sha256", "source", "stats_file")
    return {k: self.meta[k] for k in keys if k in self.meta}


# Statistics files by their keys: mu and sigma (this project's, pytorch-fid's, TTUR's,
# EDM's fid.py: cifar10-32x32.npz), or score_sde's pool_3 (cifar10_stats.npz: the
# reference images' pool3 features [N, 2048], as its evaluation.py reads them; for
# 256x256 and larger images score_sde used another network, TF-Hub's inception_v3
# feature vector, whose files are not FID Inception statistics though they look alike).
MU_SIGMA, POOL_3 = "mu_sigma", "pool_3"
STATS_LAYOUTS = {MU_SIGMA: "mu/sigma (pytorch-fid, TTUR, EDM)",
                 POOL_3: "pool_3 features (score_sde)"}


def stats_layout(keys: Iterable[str]) -> str | None:
  """MU_SIGMA or POOL_3 by a file's keys; None: not a statistics file."""
  keys = set(keys)
  if {"mu", "sigma"} <= keys:
    return MU_SIGMA
  return POOL_3 if POOL_3 in keys else None


def describe_stats_layouts() -> str:
  return ("statistics have keys mu and sigma (pytorch-fid, TTUR, EDM, this project) "
          "or pool_3 (score_sde's features)")


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
        net.check_input(batch["image"], f"{spec.dataset} images")
        shapes.append(tuple(batch["image"].shape[1:]))
      masks.append(batch["mask"])
      yield batch["image"]

  features, logits = [], []
  progress = ThrottledProgress(f"Reference {spec.dataset}/{spec.split} features",
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
    log_rate(progress.what, len(features_array), len(features_array), progress.start)
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
  net.check_input(images, source)
  out = classifier_lib.apply_in_batches(net.apply_fn, net.params, images,
                                        batch_size=batch_size, mesh=mesh)
  stats, histogram = _stats_from_outputs(out["features"], out["logits"], net.kind)
  meta = dict(num_examples=int(len(images)), image_shape=list(images.shape[1:]),
              feature_net=net.name, feature_net_kind=net.kind,
              weights_sha256=net.weights_sha256, source=source)
  return ReferenceStats(stats.mu, stats.sigma, out["features"], histogram, meta)
