"""`digits`: scikit-learn's 1,797 real handwritten 8x8 digits as a tfds builder.

The data are the UCI "Optical Recognition of Handwritten Digits" test set as
shipped inside scikit-learn (`sklearn.datasets.load_digits`), so preparing this
dataset needs no download. Pixels are counts 0..16 (number of "on" pixels in a
4x4 block of the 32x32 bitmap); they are stored as uint8 `round(v * 255 / 16)`
(v = 8 is the only half-way case and rounds to 128).

Fixed, stratified split: within each class, examples are taken in scikit-learn's
order and every fifth one (class-rank 4, 9, 14, ...) goes to `test`.

| split | examples | per class (0..9)                            |
|-------|----------|---------------------------------------------|
| train | 1,442    | 143 146 142 147 145 146 145 144 140 144     |
| test  | 355      | 35 36 35 36 36 36 36 35 34 36               |
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

NUM_CLASSES = 10
MAX_SKLEARN_VALUE = 16  # sklearn digit pixels are counts in 0..16.
TEST_EVERY = 5  # Every 5th example of each class goes to `test` (an 80/20 split).


def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
  """Returns scikit-learn's digits as (uint8 [1797, 8, 8, 1] in 0..255, int64 labels)."""
  from sklearn import datasets as sklearn_datasets  # pylint: disable=g-import-not-at-top
  digits = sklearn_datasets.load_digits()
  counts = np.asarray(digits.images, np.float64)
  images = np.round(counts * 255.0 / MAX_SKLEARN_VALUE).astype(np.uint8)
  return images[..., None], np.asarray(digits.target, np.int64)


def is_test_example(labels: np.ndarray) -> np.ndarray:
  """Boolean mask of the fixed test split: every TEST_EVERY-th example per class."""
  rank_in_class = np.zeros(len(labels), np.int64)
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    rank_in_class[members] = np.arange(len(members))
  return rank_in_class % TEST_EVERY == TEST_EVERY - 1


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 handwritten digits (embedded: prepared without download)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: fixed stratified 1442/355 split.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=(
            '1,797 8x8 grayscale handwritten digits shipped with scikit-learn '
            '(UCI optdigits test set), pixels round(v*255/16). Split: every '
            '5th example of each class is test (1,442 train / 355 test).'
        ),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(8, 8, 1)),
            'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://archive.ics.uci.edu/dataset/80',
        citation=(
            '@misc{alpaydin1998optdigits, author={Alpaydin, E. and Kaynak, C.},'
            ' title={Optical Recognition of Handwritten Digits}, year={1998},'
            ' publisher={UCI Machine Learning Repository}}'
        ),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Embedded: nothing to download.
    images, labels = load_digit_images()
    test = is_test_example(labels)
    return {
        'train': self._generate_examples(images, labels, np.flatnonzero(~test)),
        'test': self._generate_examples(images, labels, np.flatnonzero(test)),
    }

  def _generate_examples(
      self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray
  ) -> Iterator[tuple[int, dict[str, Any]]]:
    # The key is the index into scikit-learn's arrays: unique and stable.
    for index in indices:
      yield int(index), {'image': images[index], 'label': int(labels[index])}
