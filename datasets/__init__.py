"""Datasets: tfds names -> deterministic, per-process batches of uint8 images + labels.

Importing this package registers two embedded tfds builders that need no
download and are prepared automatically on first use into config.data.data_dir
(default: $TFDS_DATA_DIR or ~/tensorflow_datasets):

- `digits`: scikit-learn's 1,797 real 8x8 handwritten digits (1,442 train /
  355 test), see `datasets/digits.py`;
- `shapes` (= `shapes/32`), `shapes/16`, `shapes/64`: coloured shapes with
  captions and factor labels (10,000 train / 2,000 test), see
  `datasets/shapes.py`.

`toy2d/ring` and `toy2d/grid` are 2-D mixtures of Gaussians (`datasets/toy2d.py`):
float32 points under the same interfaces (DatasetInfo.kind == 'points'), drawn
afresh every step, no tfds.

Every other name is a tfds dataset, read with random access through
`tfds.data_source`, so it must be prepared in the ArrayRecord format.

Preparing real datasets for a cluster (the cluster needs no internet):

1. On a machine with internet (and the same tensorflow-datasets version):

     tfds build cifar10 --data_dir=/data/tfds --file_format=array_record
     tfds build celeb_a --data_dir=/data/tfds --file_format=array_record

   Some datasets need a manual download first (e.g. imagenet_resized, lsun:
   see their tfds catalog pages; put the files in /data/tfds/downloads/manual).
2. Copy /data/tfds (only <name>/<version> folders are needed, not downloads/)
   to storage every host can read, and set `config.data.data_dir` to it.
3. A dataset already prepared as TFRecord can be converted in place with
   `tfds convert_format --dataset_version_dir=DIR/cifar10/3.0.2
   --out_file_format=array_record`.

An unprepared dataset fails at once, naming the folder it looked in, unless
`config.data.download=True` (which lets tfds download and prepare it here).

Note: this package's name shadows HuggingFace's `datasets` library. tfds only
imports `datasets` for `huggingface:` names, which this package rejects.
"""
from datasets import digits as _digits  # Registers the `digits` tfds builder.
from datasets import shapes as _shapes  # Registers the `shapes` tfds builder.
from datasets.pipeline import DatasetInfo
from datasets.pipeline import DatasetNotPreparedError
from datasets.pipeline import EMBEDDED_DATASETS
from datasets.pipeline import get_dataset_info
from datasets.pipeline import make_eval_batches
from datasets.pipeline import make_train_batches
from datasets.pipeline import TrainBatches
from datasets.transforms import dequantize

__all__ = [
    'DatasetInfo',
    'DatasetNotPreparedError',
    'EMBEDDED_DATASETS',
    'TrainBatches',
    'dequantize',
    'get_dataset_info',
    'make_eval_batches',
    'make_train_batches',
]
