"""Input images/s of the training pipeline: grain (0 and 2 workers) vs the old loader.

  python benchmarks/input_pipeline.py                      # digits and jpeg, 0 and 2
  python benchmarks/input_pipeline.py --datasets=jpeg --workers=0,1,2,4 --batches=40

For each dataset it times make_train_batches(...).iterate(0) as the training loop
reads it (batch 128, random flips, nothing else running in the process): seconds to
the first batch (worker start-up included), then images/s over the next --batches
batches. The old loader is datasets/pipeline.py at --baseline_rev (the last commit
with the hand-written two-thread loader), loaded from git into a module of its own;
its first batch is compared with grain's (the column `same`: bit-identical).

Datasets: `digits` (8x8 PNGs in ArrayRecord, the embedded dataset) and `jpeg`, built
here once into --data_dir: --jpeg_examples random smooth colour images of
--jpeg_size^2 pixels stored as JPEG, decoded and resized to --image_size by the
pipeline (what an ImageNet-style dataset costs per image).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from PIL import Image  # noqa: E402

from datasets import pipeline  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_list("datasets", ["digits", "jpeg"], "digits and/or jpeg.")
flags.DEFINE_list("workers", ["0", "2"], "config.data.num_workers values for grain.")
flags.DEFINE_integer("batch_size", 128, "Global batch size (one process).")
flags.DEFINE_integer("batches", 30, "Timed batches after the first.")
flags.DEFINE_string("data_dir", None, "tfds data_dir (default: a new temp dir).")
flags.DEFINE_string("baseline_rev", "647b103", "Git revision of the old loader; '' "
                    "skips it.")
flags.DEFINE_integer("jpeg_examples", 2048, "Images in the generated jpeg dataset.")
flags.DEFINE_integer("jpeg_size", 128, "Side of the generated JPEG images.")
flags.DEFINE_integer("image_size", 64, "Side the jpeg images are resized to.")
FLAGS = flags.FLAGS


class RandomJpeg(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Random smooth colour images stored as JPEG (a stand-in for photo datasets).

  Not registered: the pipeline opens the prepared files by name from data_dir as any
  prepared dataset (tfds's read-only builder), so worker processes need no class.
  """

  VERSION = tfds.core.Version("1.0.0")
  num_examples, num_test_examples, size = 0, 0, 0   # set from the flags

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "label": tfds.features.ClassLabel(num_classes=10),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(self.num_examples, 0),
            "test": self._generate_examples(self.num_test_examples, 1)}

  def _generate_examples(self, count: int, seed: int):
    rng = np.random.default_rng(seed)
    size = self.size
    for key in range(count):
      # Low-frequency colour fields plus grain: JPEG sizes like a photo's, not noise's.
      coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
      smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))
      noise = rng.integers(-8, 9, smooth.shape)
      image = np.clip(smooth.astype(np.int64) + noise, 0, 255).astype(np.uint8)
      yield key, {"image": image, "label": int(rng.integers(10))}


def load_old_pipeline(rev: str):
  """datasets/pipeline.py at `rev`, as a module of its own (our code, from git)."""
  source = subprocess.run(["git", "-C", REPO, "show", f"{rev}:datasets/pipeline.py"],
                          check=True, capture_output=True, text=True).stdout
  path = os.path.join(tempfile.mkdtemp(), "old_pipeline.py")
  with open(path, "w") as f:
    f.write(source)
  spec = importlib.util.spec_from_file_location("old_pipeline", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules["old_pipeline"] = module   # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


def data_config(name: str, data_dir: str,
                num_workers: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      dataset="random_jpeg" if name == "jpeg" else name, data_dir=data_dir,
      train_split="train", eval_split="test", download=False, random_flip=True,
      image_size=FLAGS.image_size if name == "jpeg" else None, num_workers=num_workers))


def measure(module, config) -> tuple[float, float, dict[str, np.ndarray]]:
  """(seconds to the first batch, images/s over FLAGS.batches more, first batch)."""
  start = time.perf_counter()
  batches = module.make_train_batches(config, seed=0,
                                      global_batch_size=FLAGS.batch_size)
  iterator = batches.iterate(0)
  first = next(iterator)
  first_seconds = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(FLAGS.batches):
    next(iterator)
  rate = FLAGS.batches * FLAGS.batch_size / (time.perf_counter() - start)
  iterator.close()
  return first_seconds, rate, first


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  tfds.disable_progress_bar()
  data_dir = FLAGS.data_dir or tempfile.mkdtemp(prefix="input_pipeline_")
  old = load_old_pipeline(FLAGS.baseline_rev) if FLAGS.baseline_rev else None
  rows = []
  for name in FLAGS.datasets:
    if name not in ("digits", "jpeg"):
      raise app.UsageError(f"--datasets: digits or jpeg, got {name!r}.")
    RandomJpeg.num_examples, RandomJpeg.size = FLAGS.jpeg_examples, FLAGS.jpeg_size
    RandomJpeg.num_test_examples = FLAGS.batch_size
    if name == "jpeg" and not RandomJpeg(data_dir=data_dir).is_prepared():
      RandomJpeg(data_dir=data_dir).download_and_prepare(file_format="array_record")
    pipeline.get_dataset_info(data_config(name, data_dir, 0))  # prepares digits
    reference = None
    if old is not None:
      first_seconds, rate, reference = measure(old, data_config(name, data_dir, 0))
      rows.append((name, f"old ({FLAGS.baseline_rev})", "2 threads", first_seconds,
                   rate, ""))
    for workers in map(int, FLAGS.workers):
      config = data_config(name, data_dir, workers)
      first_seconds, rate, first = measure(pipeline, config)
      same = "" if reference is None else ("yes" if all(
          np.array_equal(first[k], reference[k]) for k in reference) else "NO")
      rows.append((name, "grain", str(workers), first_seconds, rate, same))
      del first
  print(f"\nbatch {FLAGS.batch_size}, {FLAGS.batches} timed batches, "
        f"{os.cpu_count()} CPUs\n")
  print("| dataset | loader | workers | first batch (s) | images/s | same |")
  print("|---|---|---|---:|---:|---|")
  for name, loader, workers, first_seconds, rate, same in rows:
    print(f"| {name} | {loader} | {workers} | {first_seconds:.2f} | {rate:,.0f} | "
          f"{same} |")


if __name__ == "__main__":
  app.run(main)
