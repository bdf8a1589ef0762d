"""`shapes`: procedural coloured shapes with captions, as a tfds builder.

Each image shows one filled shape on a uniform dark-grey background. Factors,
each drawn uniformly and independently:

- shape (also the `label`): circle, square, triangle (apex up), cross (a plus);
- colour: red, green, blue, yellow, magenta, cyan (exact RGB in `COLOURS`);
- position: a 3x3 grid, "top left" ... "bottom right"; the shape's centre is
  the centre of pixel (floor(fy * S), floor(fx * S)) with fy, fx in
  {0.2, 0.5, 0.8} (see `POSITIONS`), S the image size;
- half-size: uniform in [0.13, 0.17] * S (continuous, so images differ);
- background grey level: uniform integer in [0, 64].

Captions read "a {colour} {shape} at {position}", e.g. "a red circle at top
left". Edges are anti-aliased by 4x4 supersampling; pixels fully inside the
shape hold exactly the named colour.

Configs `shapes/16`, `shapes/32` (default), `shapes/64` set the image size.
Splits: train 10,000, test 2,000, generated from fixed seeds, so every build
is identical.
"""
from __future__ import annotations

from collections.abc import Iterator
import dataclasses
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

SHAPES = ('circle', 'square', 'triangle', 'cross')
COLOURS = {
    'red': (230, 25, 25),
    'green': (30, 200, 50),
    'blue': (40, 90, 255),
    'yellow': (245, 220, 30),
    'magenta': (220, 40, 220),
    'cyan': (30, 220, 230),
}
# name -> (fraction of height, fraction of width) of the shape's centre.
POSITIONS = {
    'top left': (0.2, 0.2),
    'top center': (0.2, 0.5),
    'top right': (0.2, 0.8),
    'center left': (0.5, 0.2),
    'center': (0.5, 0.5),
    'center right': (0.5, 0.8),
    'bottom left': (0.8, 0.2),
    'bottom center': (0.8, 0.5),
    'bottom right': (0.8, 0.8),
}
HALF_SIZE_RANGE = (0.13, 0.17)  # Fractions of the image size.
MAX_BACKGROUND_LEVEL = 64
CROSS_ARM_HALF_WIDTH = 0.35  # Fraction of the half-size.
SUPERSAMPLING = 4
SPLIT_SIZES = {'train': 10_000, 'test': 2_000}
_SPLIT_SEEDS = {'train': 0, 'test': 1}
_DATASET_SEED = 20240611


def centre_pixel(position: str, image_size: int) -> tuple[int, int]:
  """(row, column) of the pixel whose centre is the shape's centre."""
  fy, fx = POSITIONS[position]
  return int(np.floor(fy * image_size)), int(np.floor(fx * image_size))


def inside_shape(shape: str, dy: np.ndarray, dx: np.ndarray, half_size: float) -> np.ndarray:
  """Whether offsets (dy down, dx right) from the centre lie inside `shape`."""
  h = half_size
  if shape == 'circle':
    return dy**2 + dx**2 <= h**2
  if shape == 'square':
    return (np.abs(dy) <= h) & (np.abs(dx) <= h)
  if shape == 'triangle':  # Apex at (-h, 0), base from (h, -h) to (h, h).
    return (dy <= h) & (np.abs(dx) <= (dy + h) / 2)
  if shape == 'cross':
    arm = CROSS_ARM_HALF_WIDTH * h
    in_box = (np.abs(dy) <= h) & (np.abs(dx) <= h)
    return in_box & ((np.abs(dy) <= arm) | (np.abs(dx) <= arm))
  raise ValueError(f'Unknown shape {shape!r}; expected one of {SHAPES}.')


def render(
    *,
    shape: str,
    colour: str,
    position: str,
    half_size: float,
    background_level: int,
    image_size: int,
) -> np.ndarray:
  """Draws one anti-aliased shape; returns uint8 [image_size, image_size, 3]."""
  row, col = centre_pixel(position, image_size)
  # Subsample centres in pixel units, pixel i spans [i, i + 1).
  ticks = (np.arange(image_size * SUPERSAMPLING) + 0.5) / SUPERSAMPLING
  dy = ticks[:, None] - (row + 0.5)
  dx = ticks[None, :] - (col + 0.5)
  inside = inside_shape(shape, dy, dx, half_size)
  coverage = inside.reshape(image_size, SUPERSAMPLING, image_size, SUPERSAMPLING).mean(axis=(1, 3))
  background = np.full(3, background_level, np.float64)
  foreground = np.asarray(COLOURS[colour], np.float64)
  image = background + coverage[..., None] * (foreground - background)
  return np.round(image).astype(np.uint8)


def caption(shape: str, colour: str, position: str) -> str:
  return f'a {colour} {shape} at {position}'


def cycling_caption_factors(num_samples: int) -> dict[str, np.ndarray]:
  """Factor ids of caption i: shape i % 4, colour (i // 4) % 6, position (i // 24) % 9.

  Every one of the 4 x 6 x 9 = 216 captions once per 216 samples, each factor balanced
  (what a caption model's `sample` draws, and --prompt=all).
  """
  i = np.arange(num_samples, dtype=np.int32)
  num_shapes, num_colours = len(SHAPES), len(COLOURS)
  return dict(shape=i % num_shapes, colour=(i // num_shapes) % num_colours,
              position=(i // (num_shapes * num_colours)) % len(POSITIONS))


def sample_factors(split: str, num_examples: int) -> dict[str, np.ndarray]:
  """Draws every factor of a split from the split's fixed seed."""
  rng = np.random.default_rng([_DATASET_SEED, _SPLIT_SEEDS[split]])
  return {
      'shape': rng.integers(0, len(SHAPES), num_examples),
      'colour': rng.integers(0, len(COLOURS), num_examples),
      'position': rng.integers(0, len(POSITIONS), num_examples),
      'half_size': rng.uniform(*HALF_SIZE_RANGE, num_examples),
      'background_level': rng.integers(0, MAX_BACKGROUND_LEVEL + 1, num_examples),
  }


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
  image_size: int = 32


class Shapes(tfds.core.GeneratorBasedBuilder):
  """Coloured shapes with captions and factor labels (embedded: no download)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      ShapesConfig(name=str(size), description=f'{size}x{size} RGB images.', image_size=size)
      for size in (16, 32, 64)
  ]
  DEFAULT_BUILDER_CONFIG_NAME = '32'

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return self.dataset_info_from_configs(
        description=(
            'One filled shape (circle/square/triangle/cross) of one of six '
            'colours at one of nine grid positions on a dark-grey background, '
            'with a caption "a {colour} {shape} at {position}". label = shape.'
        ),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(size, size, 3)),
            'label': tfds.features.ClassLabel(names=SHAPES),
            'caption': tfds.features.Text(),
            'shape': tfds.features.ClassLabel(names=SHAPES),
            'colour': tfds.features.ClassLabel(names=tuple(COLOURS)),
            'position': tfds.features.ClassLabel(names=tuple(POSITIONS)),
        }),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Procedural: nothing to download.
    return {split: self._generate_examples(split) for split in SPLIT_SIZES}

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
    factors = sample_factors(split, SPLIT_SIZES[split])
    colour_names, position_names = tuple(COLOURS), tuple(POSITIONS)
    for index in range(SPLIT_SIZES[split]):
      shape = SHAPES[factors['shape'][index]]
      colour = colour_names[factors['colour'][index]]
      position = position_names[factors['position'][index]]
      image = render(
          shape=shape,
          colour=colour,
          position=position,
          half_size=float(factors['half_size'][index]) * self.builder_config.image_size,
          background_level=int(factors['background_level'][index]),
          image_size=self.builder_config.image_size,
      )
      yield index, {
          'image': image,
          'label': shape,
          'caption': caption(shape, colour, position),
          'shape': shape,
          'colour': colour,
          'position': position,
      }
