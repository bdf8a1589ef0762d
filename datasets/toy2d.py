"""2-D mixtures of Gaussians for mode-collapse studies, with their diagnostics.

- `ring`: 8 Gaussians with means on a circle of radius 2, std 0.02;
- `grid`: 25 Gaussians with means on the grid {-4, -2, 0, 2, 4}^2, std 0.05
(the 2D-ring and 2D-grid of Metz et al. 2017 / Srivastava et al. 2017, equal weights).

Diagnostics, as in those papers: a sample is *high quality* when it lies within
3 standard deviations of its nearest mode centre; a mode is *covered* when at least
`min_samples_per_mode` high-quality samples have it as nearest centre. As a balance
indicator, KL(p || uniform) = sum_k p_k log(K p_k) of the histogram p of high-quality
samples over the K modes: 0 when balanced, log K when all samples sit on one mode.

As a dataset (datasets/pipeline.py serves `toy2d/ring` and `toy2d/grid` through the
same interfaces as images): float32 points [B, 2] under 'image'. Training draws fresh
points every step, a pure function of (seed, step), so a resumed run sees the batches
an uninterrupted one does; each eval split is a fixed set of `EVAL_EXAMPLES` points.
"""

from __future__ import annotations

import dataclasses
import zlib
import numpy as np

MIXTURES = ("ring", "grid")
PREFIX = "toy2d/"
SPLITS = ("train", "test")
EVAL_EXAMPLES = 10_000        # points per eval split (make_eval_batches)
HIGH_QUALITY_STDS = 3.0       # "high quality": within this many std of a mode centre
_TRAIN_STREAM, _SPLIT_STREAM = 1, 2   # seed streams: training draws vs fixed splits


@dataclasses.dataclass(frozen=True)
class Mixture:
  name: str
  centres: np.ndarray      # [K, 2]
  std: float

  @property
  def num_modes(self) -> int:
    return len(self.centres)

  @property
  def extent(self) -> float:
    """Half-width of a square around the origin that holds the mixture, with margin."""
    return 1.25 * float(np.max(np.abs(self.centres)))


def get_mixture(name: str) -> Mixture:
  if name == "ring":
    angles = 2.0 * np.pi * np.arange(8) / 8
    return Mixture("ring", 2.0 * np.stack([np.cos(angles), np.sin(angles)], -1), 0.02)
  if name == "grid":
    xs = np.arange(-4.0, 5.0, 2.0)
    return Mixture("grid", np.stack(np.meshgrid(xs, xs, indexing="ij"), -1).reshape(-1, 2),
                   0.05)
  raise ValueError(f"Unknown toy mixture {name!r}; choose one of {MIXTURES}.")


def sample(mixture: Mixture, rng: np.random.Generator, n: int) -> np.ndarray:
  """n points [n, 2] float32: a uniform mode, plus isotropic Gaussian noise."""
  modes = rng.integers(0, mixture.num_modes, n)
  points = mixture.centres[modes] + mixture.std * rng.standard_normal((n, 2))
  return points.astype(np.float32)


def is_toy(dataset: str | None) -> bool:
  return isinstance(dataset, str) and dataset.startswith(PREFIX)


def mixture_of(dataset: str) -> Mixture:
  """'toy2d/ring' -> the ring mixture; other names raise."""
  if not is_toy(dataset):
    raise ValueError(f"{dataset!r} is not a 2-D mixture; use "
                     f"{', '.join(PREFIX + m for m in MIXTURES)}.")
  return get_mixture(dataset[len(PREFIX):])


def check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"The 2-D mixtures have the splits {SPLITS}, got {split!r}; check "
                     "config.data.train_split / eval_split.")


class TrainPoints:
  """Training batches of fresh points: `get(step)` is a pure function of (seed, step).

  Process p takes rows [p * local_B, (p + 1) * local_B) of the global batch, as
  pipeline.TrainBatches does, so the global batch is the same on any process count.
  pipeline.make_train_batches serves `get` through the same grain pipeline as images.
  """

  def __init__(self, mixture: Mixture, *, seed: int, global_batch_size: int,
               process_index: int = 0, process_count: int = 1):
    self._mixture, self._seed = mixture, seed
    self._global_batch_size = global_batch_size
    self._local_batch_size = global_batch_size // process_count
    self._row_offset = process_index * self._local_batch_size

  def get(self, step: int) -> dict[str, np.ndarray]:
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}.")
    rng = np.random.default_rng((_TRAIN_STREAM, self._seed, step))
    rows = slice(self._row_offset, self._row_offset + self._local_batch_size)
    points = sample(self._mixture, rng, self._global_batch_size)[rows]
    return dict(image=points, label=np.zeros((len(points),), np.int32))


def split_points(mixture: Mixture, split: str) -> np.ndarray:
  """The fixed EVAL_EXAMPLES points [N, 2] of an eval split (the same for every seed)."""
  check_split(split)
  rng = np.random.default_rng((_SPLIT_STREAM, zlib.crc32(split.encode())))
  return sample(mixture, rng, EVAL_EXAMPLES)


def diagnostics(mixture: Mixture, points: np.ndarray,
                min_samples_per_mode: int = 1) -> dict[str, float]:
  """Mode coverage and sample quality of `points` [N, 2] (see module docstring)."""
  points = np.asarray(points, np.float64).reshape(-1, 2)
  distances = np.linalg.norm(points[:, None, :] - mixture.centres[None], axis=-1)
  nearest = np.argmin(distances, axis=1)
  radius = HIGH_QUALITY_STDS * mixture.std
  high_quality = distances[np.arange(len(points)), nearest] <= radius
  counts = np.bincount(nearest[high_quality], minlength=mixture.num_modes)
  covered = counts >= min_samples_per_mode
  kl = float("nan")
  if counts.sum():
    p = counts[counts > 0] / counts.sum()
    kl = float(np.sum(p * np.log(p * mixture.num_modes)))
  return dict(modes_covered=int(covered.sum()), num_modes=mixture.num_modes,
              high_quality_fraction=float(high_quality.mean()),
              mode_kl_to_uniform=kl,
              min_mode_count=int(counts.min()), max_mode_count=int(counts.max()))
