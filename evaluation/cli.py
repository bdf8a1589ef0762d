"""Command line for sample metrics, reference statistics and the dataset classifiers.

  # Statistics of a tfds split (Inception pool3; a pytorch-fid compatible .npz with
  # mu and sigma, plus the features for KID / precision-recall):
  python -m evaluation.cli reference_stats --dataset=cifar10 --split=train \\
      --out=cifar10_train.npz --data_dir=/data/tfds --inception_weights=PATH

  # Metrics of a samples .npz (uint8 NHWC under 'arr_0', as --mode=sample writes)
  # against a statistics file, another samples file, or a dataset split:
  python -m evaluation.cli metrics --samples=W/samples/step_X/samples.npz \\
      --reference=cifar10_train.npz --metrics=fid,is,kid,pr
  python -m evaluation.cli metrics --samples=samples.npz --dataset=digits \\
      --metrics=classifier_fd,class_coverage

  # The reference may also be statistics that score_sde (cifar10_stats.npz: pool_3
  # features) or EDM (cifar10-32x32.npz: mu, sigma) publish, as they are:
  python -m evaluation.cli metrics --samples=samples.npz --reference=cifar10_stats.npz

  # The FID Inception weights, once, to a .npz that loads without torch (the .pth's
  # SHA-256 is checked against the published file's first):
  python -m evaluation.cli convert_inception \\
      --weights=~/.cache/inception/pt_inception-2015-12-05-6726825d.pth

  # The small classifier of an embedded dataset (cached; see evaluation/classifier.py):
  python -m evaluation.cli train_classifier --dataset=digits

`--out_dir` of train_classifier and `--classifier_dir` of the others are the same
cache root ($EVAL_CLASSIFIER_DIR, else ~/.cache/genmodels/classifiers); each dataset
gets a folder in it. Errors a user can cause print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow is only a library here

import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

from evaluation import classifier as classifier_lib  # noqa: E402
from evaluation import inception  # noqa: E402
from evaluation import reference_stats as reference_lib  # noqa: E402
from evaluation import sample_metrics  # noqa: E402

_USAGE_ERROR = 2


def load_samples(path: str) -> np.ndarray:
  """uint8 NHWC images stored under 'arr_0' of a .npz."""
  with _open_npz(path, "samples") as data:
    if "arr_0" not in data.files:
      hint = (" (a statistics file: pass it as --reference)"
              if reference_lib.stats_layout(data.files) else "")
      raise ValueError(f"{path} holds {sorted(data.files)}, no 'arr_0' key with "
                       f"uint8 NHWC images{hint}.")
    images = data["arr_0"]
  return reference_lib.check_sample_images(images, f"images in {path}")


def _open_npz(path: str, what: str):
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No {what} file at {path}.")
  try:
    data = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as error:
    raise ValueError(f"{path} is not a readable .npz file ({error}).") from None
  if isinstance(data, np.ndarray):
    raise ValueError(f"{path} is a bare .npy array: save {what} with "
                     "np.savez(path, arr_0=images) (or as statistics, mu and sigma).")
  return data


def _load_reference(path: str) -> reference_lib.ReferenceStats | np.ndarray:
  """A statistics .npz (reference_stats.STATS_LAYOUTS) or images ('arr_0')."""
  with _open_npz(path, "reference") as data:
    keys = set(data.files)
  if reference_lib.stats_layout(keys) is not None:
    return reference_lib.ReferenceStats.load(path)
  if "arr_0" in keys:
    return load_samples(path)
  raise ValueError(f"{path} holds {sorted(keys)}: a reference must be statistics ("
                   f"{reference_lib.describe_stats_layouts()}) or images (key arr_0).")


def _write_json(result: dict[str, Any], out: str | None) -> None:
  text = json.dumps(result, indent=2, sort_keys=True)
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
      f.write(text + "\n")
  print(text)


def _reference_spec(args: argparse.Namespace) -> reference_lib.ReferenceSpec:
  return reference_lib.ReferenceSpec(
      dataset=args.dataset, split=args.split, data_dir=args.data_dir,
      image_size=args.image_size, num_examples=args.num_examples)


def _classifier_net(args: argparse.Namespace) -> reference_lib.FeatureNet:
  return sample_metrics.classifier_feature_net(classifier_lib.load_or_train(
      args.dataset, args.classifier_dir, data_dir=args.data_dir,
      image_size=args.image_size))


# ----------------------------------------------------------------------- commands
def reference_stats(args: argparse.Namespace) -> dict[str, Any]:
  spec = _reference_spec(args)
  if args.feature_net == "classifier":
    net = _classifier_net(args)
  else:
    net = sample_metrics.inception_feature_net(args.inception_weights,
                                               args.input_convention)
  stats = reference_lib.compute_reference_stats(spec, net, batch_size=args.batch_size)
  if not args.features:
    stats.features = None
  stats.save(args.out)
  return dict(stats.meta, out=args.out, feature_dim=int(stats.mu.shape[0]))


def metrics(args: argparse.Namespace) -> dict[str, Any]:
  images = load_samples(args.samples)
  if args.reference is None and args.dataset is None:
    raise ValueError("Give the reference: --reference=stats.npz|images.npz, or "
                     "--dataset=NAME [--split=train].")
  if args.reference is not None:
    reference = _load_reference(args.reference)
    dataset = args.dataset or (getattr(reference, "meta", {}) or {}).get("dataset")
  else:
    reference, dataset = _reference_spec(args), args.dataset
  names = sample_metrics.parse_metric_names(
      args.metrics or sample_metrics.default_metrics(dataset or ""))
  nets: dict[str, reference_lib.FeatureNet] = {}
  if any(n in sample_metrics.CLASSIFIER_METRICS for n in names) and args.dataset:
    nets[reference_lib.CLASSIFIER] = _classifier_net(args)
  if any(n in sample_metrics.INCEPTION_METRICS for n in names):
    nets[reference_lib.INCEPTION] = sample_metrics.inception_feature_net(
        args.inception_weights, args.input_convention)
  result = sample_metrics.compute_sample_metrics(
      images, reference=reference, metrics=names, cache_dir=args.cache_dir,
      inception_weights=args.inception_weights, classifier_dir=args.classifier_dir,
      batch_size=args.batch_size, feature_nets=nets, is_splits=args.is_splits,
      kid_subset_size=args.kid_subset_size)
  return dict(result.values, samples=args.samples, protocol=result.protocol)


def convert_inception(args: argparse.Namespace) -> dict[str, Any]:
  """The FID Inception .pth, checked against the published SHA-256, as a .npz that
  loads without torch (the file --inception_weights and the cache search find)."""
  source = inception.resolve_weights_path(args.weights)
  if source.suffix == ".npz":
    raise ValueError(f"{source} is already a converted .npz: pass the .pth file.")
  sha256 = sample_metrics.file_sha256(source)
  published = sha256 == inception.PUBLISHED_SHA256
  if not args.allow_unpublished:
    inception.check_published(sha256, str(source))
  out = pathlib.Path(args.out).expanduser() if args.out else source.with_suffix(".npz")
  if out.suffix != ".npz":
    raise ValueError(f"--out={args.out} must name a .npz file.")
  params = inception.load_params(source)   # checks every name and shape
  inception.save_params_npz(params, out, meta=dict(
      source_file=source.name, source_sha256=sha256, published=published))
  return dict(out=str(out), source=str(source), source_sha256=sha256,
              published=published, out_sha256=sample_metrics.file_sha256(out))


def train_classifier(args: argparse.Namespace) -> dict[str, Any]:
  root = args.out_dir or classifier_lib.default_cache_dir()
  if args.force:
    classifier = classifier_lib.train_classifier(args.dataset, data_dir=args.data_dir,
                                                 image_size=args.image_size)
    classifier_lib.save_classifier(classifier, os.path.join(
        root, classifier_lib.cache_key(args.dataset, args.image_size)))
  else:
    classifier = classifier_lib.load_or_train(args.dataset, root, data_dir=args.data_dir,
                                              image_size=args.image_size)
  keys = ("test_accuracy", "train_accuracy", "train_seconds", "weights_sha256",
          "num_train_examples", "num_test_examples")
  return dict({k: classifier.meta.get(k) for k in keys}, dataset=classifier.dataset,
              directory=os.path.join(os.fspath(root), classifier_lib.cache_key(
                  args.dataset, args.image_size)),
              image_shape=list(classifier.image_shape),
              classes=list(classifier.class_names))


# ------------------------------------------------------------------------ parsing
def _add_data_flags(parser: argparse.ArgumentParser, split_default: str) -> None:
  parser.add_argument("--dataset", help="tfds name, e.g. cifar10, digits, shapes/32")
  parser.add_argument("--split", default=split_default, help="tfds split")
  parser.add_argument("--data_dir", default=None, help="tfds data_dir")
  parser.add_argument("--image_size", type=int, default=None,
                      help="resize as config.data.image_size does (default: native)")
  parser.add_argument("--num_examples", type=int, default=None,
                      help="first N examples of the split (default: all)")


def _add_net_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--inception_weights", default=None,
                      help="FID Inception weight file (.pth or converted .npz); "
                      "default $INCEPTION_WEIGHTS, then ~/.cache/inception/")
  parser.add_argument("--input_convention", default="tf1",
                      choices=("tf1", "pytorch_fid"),
                      help="Inception input resize/scaling (tf1: the FID standard)")
  parser.add_argument("--classifier_dir", default=None,
                      help="classifier cache root (default $EVAL_CLASSIFIER_DIR, then "
                      "~/.cache/genmodels/classifiers)")
  parser.add_argument("--batch_size", type=int, default=200,
                      help="images per feature batch")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m evaluation.cli",
      description="Sample metrics (FID, IS, KID, P&R, classifier metrics), reference "
      "statistics and dataset classifiers.")
  commands = parser.add_subparsers(dest="command", required=True)

  ref = commands.add_parser("reference_stats", help="statistics of a tfds split")
  _add_data_flags(ref, "train")
  _add_net_flags(ref)
  ref.add_argument("--out", required=True, help="output .npz")
  ref.add_argument("--feature_net", default="inception",
                   choices=("inception", "classifier"))
  ref.add_argument("--features", action=argparse.BooleanOptionalAction, default=True,
                   help="also store the features (needed by KID and P&R)")
  ref.set_defaults(run=reference_stats, needs_dataset=True)

  met = commands.add_parser("metrics", help="metrics of a samples .npz")
  met.add_argument("--samples", required=True, help=".npz with uint8 NHWC 'arr_0'")
  met.add_argument("--reference", default=None,
                   help="statistics .npz (mu, sigma[, features]: this project, "
                   "pytorch-fid, EDM; pool_3: score_sde) or images .npz")
  met.add_argument("--metrics", default=None,
                   help=f"comma-separated, from {','.join(sample_metrics.METRIC_NAMES)}"
                   " (default: classifier metrics for digits/shapes, else fid,is)")
  _add_data_flags(met, "train")
  _add_net_flags(met)
  met.add_argument("--cache_dir", default=None,
                   help="reference statistics cache (default $EVAL_STATS_DIR, then "
                   "~/.cache/genmodels/reference_stats)")
  met.add_argument("--is_splits", type=int, default=10,
                   help="Inception Score splits (10: the standard)")
  met.add_argument("--kid_subset_size", type=int, default=1000,
                   help="KID subset size (lowered to the smaller set if needed)")
  met.add_argument("--out", default=None, help="also write the result JSON here")
  met.set_defaults(run=metrics, needs_dataset=False)

  conv = commands.add_parser(
      "convert_inception", help="FID Inception .pth -> .npz that loads without torch")
  conv.add_argument("--weights", default=None,
                    help="the .pth (pt_inception-2015-12-05-6726825d.pth or "
                    "weights-inception-2015-12-05-6726825d.pth); default "
                    "$INCEPTION_WEIGHTS, then ~/.cache/inception/")
  conv.add_argument("--out", default=None,
                    help="output .npz (default: beside the .pth, same name)")
  conv.add_argument("--allow_unpublished", action="store_true",
                    help="convert a file whose SHA-256 is not the published one's")
  conv.set_defaults(run=convert_inception, needs_dataset=False)

  cls = commands.add_parser("train_classifier", help="train (or load) a classifier")
  cls.add_argument("--dataset", help="digits, shapes/16, shapes/32, shapes/64")
  cls.add_argument("--data_dir", default=None, help="tfds data_dir")
  cls.add_argument("--image_size", type=int, default=None,
                   help="train at this resolution (default: native)")
  cls.add_argument("--out_dir", default=None,
                   help="cache root (default $EVAL_CLASSIFIER_DIR, then "
                   "~/.cache/genmodels/classifiers)")
  cls.add_argument("--force", action="store_true", help="retrain even if cached")
  cls.set_defaults(run=train_classifier, needs_dataset=True)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.needs_dataset and not args.dataset:
    parser.error(f"{args.command} needs --dataset")
  logging.set_verbosity(logging.INFO)
  import datasets  # pylint: disable=g-import-not-at-top  (its error type)
  try:
    result = args.run(args)
  except (ValueError, FileNotFoundError, ImportError,
          datasets.DatasetNotPreparedError) as error:
    print(f"error: {error}", file=sys.stderr)
    return _USAGE_ERROR
  if args.command != "metrics":
    print(json.dumps(result, indent=2, sort_keys=True))
  else:
    _write_json(result, args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
