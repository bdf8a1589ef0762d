"""Prompt accuracy: how often generated `shapes` images show what their prompts asked.

The shape is judged by the shapes classifier (evaluation/classifier.py predicts
the shape only), the colour and the position by reading the pixels. Prompts
become factor ids with datasets/captions.py's `parse_caption`.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from datasets import shapes as shapes_data

# Dataset background is grey (R = G = B) and every COLOURS entry has a channel
# spread (max - min) of at least 215, so spread separates shape from background.
_FOREGROUND_SPREAD = 100


def read_colour_and_position(images: np.ndarray) -> dict[str, np.ndarray]:
  """Colour and position ids read off uint8 [N, H, W, 3] shapes images.

  Foreground = pixels with channel spread > 100 (the background is grey).
  Colour: the COLOURS entry nearest (RGB) to the foreground's mean colour.
  Position: the POSITIONS centre nearest to the foreground's centroid (the
  triangle's centroid sits h/3 below its centre, h <= 0.17 S, well inside the
  0.15 S half-spacing of the grid). An image with no foreground gets -1.
  """
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'Expected uint8 RGB images [N, H, W, 3], got {images.dtype} '
                     f'{images.shape}.')
  n, height, width, _ = images.shape
  pixels = images.astype(np.float64)
  foreground = (pixels.max(-1) - pixels.min(-1)) > _FOREGROUND_SPREAD  # [N, H, W]
  counts = foreground.sum(axis=(1, 2))
  safe = np.maximum(counts, 1)[:, None]
  mean_colour = np.einsum('nhw,nhwc->nc', foreground, pixels) / safe
  palette = np.asarray(list(shapes_data.COLOURS.values()), np.float64)
  colour = np.argmin(
      ((mean_colour[:, None] - palette[None]) ** 2).sum(-1), axis=1)
  rows = (np.arange(height) + 0.5)[None, :, None]
  cols = (np.arange(width) + 0.5)[None, None, :]
  centroid = np.stack([(foreground * rows).sum((1, 2)),
                       (foreground * cols).sum((1, 2))], axis=1) / safe
  # Centre of pixel floor(f S), as datasets.shapes.centre_pixel places it.
  grid = np.asarray([[np.floor(fy * height) + 0.5, np.floor(fx * width) + 0.5]
                     for fy, fx in shapes_data.POSITIONS.values()])
  position = np.argmin(((centroid[:, None] - grid[None]) ** 2).sum(-1), axis=1)
  empty = counts == 0
  return {'colour': np.where(empty, -1, colour).astype(np.int64),
          'position': np.where(empty, -1, position).astype(np.int64)}


def prompt_accuracy(images: np.ndarray, factors: Mapping[str, Any],
                    classifier: Any = None) -> dict[str, float]:
  """Fractions of images that show what their prompts asked for.

  Args:
    images: uint8 [N, H, W, 3] generated images.
    factors: integer ids [N] under 'shape', 'colour', 'position' (dataset
      order; from `datasets.captions.parse_caption` of each prompt, or the
      dataset's labels).
    classifier: the shapes classifier (evaluation.classifier.load_or_train
      ('shapes/<size>')) or anything with `predict_proba(images) -> [N, C]` and
      `class_names`; it predicts the shape. None skips the shape.

  Returns:
    'shape_accuracy' (classifier argmax == prompted shape; only with a
    classifier), 'colour_accuracy', 'position_accuracy' (read off the pixels,
    `read_colour_and_position`), and 'all_accuracy' (every measured factor right).
  """
  images = np.asarray(images)
  n = images.shape[0]
  for key in ('shape', 'colour', 'position'):
    if key not in factors or np.shape(factors[key]) != (n,):
      raise ValueError(f"factors[{key!r}] must be integer ids of shape ({n},); "
                       f'got keys {sorted(factors)}.')
  read = read_colour_and_position(images)
  correct = {
      'colour': read['colour'] == np.asarray(factors['colour']),
      'position': read['position'] == np.asarray(factors['position']),
  }
  if classifier is not None:
    names = tuple(classifier.class_names)
    if names != tuple(shapes_data.SHAPES):
      raise ValueError(f'The classifier predicts {names}, not the shapes '
                       f'{shapes_data.SHAPES}: load the shapes classifier.')
    predicted = np.argmax(np.asarray(classifier.predict_proba(images)), axis=1)
    correct['shape'] = predicted == np.asarray(factors['shape'])
  out = {f'{key}_accuracy': float(np.mean(value)) for key, value in correct.items()}
  out['all_accuracy'] = float(np.mean(np.all(np.stack(list(correct.values())), 0)))
  return out
