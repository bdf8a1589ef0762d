"""Tests for evaluation/prompt_accuracy.py: colour, position and shape of prompts."""
import itertools

import numpy as np
import pytest

from datasets import shapes as shapes_data
from evaluation import prompt_accuracy

ALL_FACTORS = list(itertools.product(
    range(len(shapes_data.SHAPES)), range(len(shapes_data.COLOURS)),
    range(len(shapes_data.POSITIONS))))


def _rendered(image_size, seed=0):
  rng = np.random.default_rng(seed)
  images = [shapes_data.render(
      shape=shapes_data.SHAPES[s], colour=tuple(shapes_data.COLOURS)[c],
      position=tuple(shapes_data.POSITIONS)[p],
      half_size=rng.uniform(*shapes_data.HALF_SIZE_RANGE) * image_size,
      background_level=int(rng.integers(0, shapes_data.MAX_BACKGROUND_LEVEL + 1)),
      image_size=image_size) for s, c, p in ALL_FACTORS]
  f = np.asarray(ALL_FACTORS)
  return np.stack(images), {'shape': f[:, 0], 'colour': f[:, 1], 'position': f[:, 2]}


class _OracleClassifier:
  """Predicts given shapes (a stand-in for the trained shapes classifier)."""
  class_names = shapes_data.SHAPES

  def __init__(self, predictions):
    self.predictions = predictions

  def predict_proba(self, images):
    assert images.dtype == np.uint8
    return np.eye(len(self.class_names))[self.predictions]


@pytest.mark.parametrize('image_size', [16, 32])
def test_prompt_accuracy_on_dataset_renderings(image_size):
  images, factors = _rendered(image_size)
  wrong = factors['shape'].copy()
  wrong[::4] = (wrong[::4] + 1) % 4  # a quarter of the shapes misclassified
  out = prompt_accuracy.prompt_accuracy(images, factors, _OracleClassifier(wrong))
  assert out['colour_accuracy'] == 1.0 and out['position_accuracy'] == 1.0
  assert out['shape_accuracy'] == pytest.approx(0.75)
  assert out['all_accuracy'] == pytest.approx(0.75)
  # Prompts that ask for other colours / positions are judged wrong.
  shifted = dict(factors, colour=(factors['colour'] + 1) % 6,
                 position=(factors['position'] + 1) % 9)
  out = prompt_accuracy.prompt_accuracy(images, shifted)
  assert out['colour_accuracy'] == 0.0 and out['position_accuracy'] == 0.0
  assert 'shape_accuracy' not in out


def test_blank_images_are_wrong_and_bad_inputs_raise():
  blank = np.full((2, 16, 16, 3), 40, np.uint8)
  read = prompt_accuracy.read_colour_and_position(blank)
  np.testing.assert_array_equal(read['colour'], [-1, -1])
  factors = {'shape': np.zeros(2, int), 'colour': np.zeros(2, int),
             'position': np.zeros(2, int)}
  assert prompt_accuracy.prompt_accuracy(blank, factors)['all_accuracy'] == 0.0
  with pytest.raises(ValueError, match='uint8'):
    prompt_accuracy.prompt_accuracy(blank.astype(np.float32), factors)
  with pytest.raises(ValueError, match='factors'):
    prompt_accuracy.prompt_accuracy(blank, {'shape': np.zeros(2, int)})
  oracle = _OracleClassifier(np.zeros(2, int))
  oracle.class_names = ('zero', 'one')
  with pytest.raises(ValueError, match='shapes classifier'):
    prompt_accuracy.prompt_accuracy(blank, factors, oracle)
