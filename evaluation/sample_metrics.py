"""Sample-quality metrics of a set of generated images, with the protocol recorded.

`compute_sample_metrics(images, reference=..., metrics=...)` is what `--mode=eval`
calls: it extracts features in batches sharded over every device (a 'data' mesh
axis), compares them with reference statistics (evaluation/reference_stats.py), and
returns the numbers together with a `protocol` dict saying how they were computed
(sample count, reference split and size, feature network and the SHA-256 of its
weights, resize filter, precision), because FID moves with every one of these (the
papers' protocol is in evaluation/paper_tables.py).

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
| `mode_coverage`  | none        | modes_covered, num_modes, high_quality_fraction,     |
|                  | (2-D points)| mode_kl_to_uniform, min_mode_count, max_mode_count   |

Inception metrics follow `evaluation/metrics.py` (FID, IS, KID, P&R as their reference
implementations); the classifier metrics use the dataset's small CNN
(`evaluation/classifier.py`). For the embedded datasets (`digits`, `shapes`) the
defaults are the classifier metrics (Inception at 8-64 px is computable, by resizing
to 299, but says little); for the 2-D mixtures (`toy2d/...`, samples are float points
[N, 2]) `mode_coverage`, the diagnostics of `datasets/toy2d.diagnostics` against the
mixture's known modes; for every other dataset FID and IS.

The feature nets (`inception_feature_net`, `classifier_feature_net`) are built here;
their type, `reference_stats.FeatureNet`, and its kinds live with the references.
Resumable sample generation is in evaluation/sample_chunks.py.
"""
from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh

from datasets import toy2d
from evaluation import classifier as classifier_lib
from evaluation import inception
from evaluation import metrics as metrics_lib
from evaluation import reference_stats as reference_lib
# The vocabulary of compute_sample_metrics' arguments, by name for brevity.
from evaluation.reference_stats import (CLASSIFIER, INCEPTION, FeatureNet,
                                        ReferenceSpec, ReferenceStats)

INCEPTION_METRICS = ("fid", "is", "kid", "pr")
CLASSIFIER_METRICS = ("classifier_fd", "class_coverage")
POINT_METRICS = ("mode_coverage",)   # 2-D points, scored against their mixture
METRIC_NAMES = INCEPTION_METRICS + CLASSIFIER_METRICS + POINT_METRICS
PRECISION = "highest"  # every feature net's convolutions and matmuls
_EMBEDDED_PREFIXES = ("digits", "shapes")


def _kind(metric: str) -> str:
  return INCEPTION if metric in INCEPTION_METRICS else CLASSIFIER


def default_metrics(dataset: str) -> tuple[str, ...]:
  """Classifier metrics for the embedded datasets, mode coverage for the 2-D
  mixtures, FID and IS for the others."""
  if toy2d.is_toy(dataset):
    return POINT_METRICS
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


# ------------------------------------------------------------------ feature nets
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
                          params: reference_lib.Params | None = None) -> FeatureNet:
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
    return reference_lib.reference_statistics(
        reference, net, cache_dir=cache_dir, batch_size=batch_size, mesh=mesh,
        log_progress=log_progress)
  if isinstance(reference, ReferenceStats):
    return reference
  return reference_lib.stats_of_images(reference, net, batch_size=batch_size,
                                       mesh=mesh, source="reference images")


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
    images: the samples, uint8 [N, H, W, C], the same array on every process
      (mode_coverage: float points [N, 2], see `point_metrics`).
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
  dataset = (reference.dataset if isinstance(reference, ReferenceSpec)
             else getattr(reference, "meta", {}).get("dataset"))
  if metrics is None:
    metrics = default_metrics(dataset) if dataset else ("fid", "is")
  names = parse_metric_names(metrics)
  if set(names) & set(POINT_METRICS):
    return point_metrics(images, dataset, names, log_progress=log_progress)
  images = reference_lib.check_sample_images(images)
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
    nets[kind].check_input(images, "samples")
    kind_names = [m for m in names if _kind(m) == kind]
    if kind_names == ["is"]:
      continue  # no reference needed
    if isinstance(reference, ReferenceStats):
      _check_precomputed_reference(reference, nets[kind], kind_names)
    elif not isinstance(reference, ReferenceSpec):
      reference = reference_lib.check_sample_images(reference, "reference images")
      nets[kind].check_input(reference, "reference images")
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
        progress=reference_lib.ThrottledProgress(f"Sample features ({net.name})",
                                                 len(images), log_progress))
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


def point_metrics(points: np.ndarray, dataset: str | None,
                  metrics: Sequence[str] = POINT_METRICS, *,
                  log_progress: bool = True) -> SampleMetrics:
  """Mode coverage of 2-D points [N, 2] from the mixture `dataset` ('toy2d/ring'),
  whose modes are known: no feature net, no reference statistics."""
  names = parse_metric_names(metrics)
  others = [m for m in names if m not in POINT_METRICS]
  if others:
    raise ValueError(f"{', '.join(POINT_METRICS)} score 2-D points and cannot be "
                     f"combined with the image metrics {others}.")
  if not toy2d.is_toy(dataset):
    raise ValueError(f"mode_coverage needs a 2-D mixture's reference "
                     f"({', '.join(toy2d.PREFIX + m for m in toy2d.MIXTURES)}), got "
                     f"dataset {dataset!r}.")
  mixture = toy2d.mixture_of(dataset)
  points = np.asarray(points)
  if points.ndim != 2 or points.shape[1] != 2 or not np.issubdtype(points.dtype,
                                                                   np.floating):
    raise ValueError(f"mode_coverage takes float points [N, 2], got {points.dtype} "
                     f"{points.shape}.")
  if not np.all(np.isfinite(points)):
    raise FloatingPointError("The samples hold non-finite points.")
  values = {k: float(v) for k, v in toy2d.diagnostics(mixture, points).items()}
  protocol = dict(
      num_samples=int(len(points)), sample_shape=list(points.shape[1:]),
      metrics=list(names), reference=dict(
          dataset=dataset, mixture=mixture.name, num_modes=mixture.num_modes,
          std=mixture.std, source="the mixture's mode centres and std "
                                  "(datasets/toy2d.py), not data"),
      high_quality=f"within {toy2d.HIGH_QUALITY_STDS:g} std "
                   f"({toy2d.HIGH_QUALITY_STDS * mixture.std:g}) of the nearest centre",
      min_samples_per_mode=1,
      mode_kl_to_uniform="KL(histogram of high-quality samples over modes || uniform)")
  if log_progress:
    logging.info("Mode coverage: %s", ", ".join(f"{k}={v:.4g}"
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
