"""2-D mixtures of Gaussians for mode-collapse studies, with their diagnostics.

- `ring`: 8 Gaussians with means on a circle of radius 2, std 0.02;
- `grid`: 25 Gaussians with means on the grid {-4, -2, 0, 2, 4}^2, std 0.05
(the 2D-ring and 2D-grid of Metz et al. 2017 / Srivastava et al. 2017, equal weights).

Diagnostics, as in those papers: a sample is *high quality* when it lies within
3 standard deviations of its nearest mode centre; a mode is *covered* when at least
`min_samples_per_mode` high-quality samples have it as nearest centre. As a balance
indicator, KL(p || uniform) = sum_k p_k log(K p_k) of the histogram p of high-quality
samples over the K modes: 0 when balanced, log K when all samples sit on one mode.
"""

from __future__ import annotations

import dataclasses

import numpy as np

MIXTURES = ("ring", "grid")


@dataclasses.dataclass(frozen=True)
class Mixture:
  name: str
  centres: np.ndarray      # [K, 2]
  std: float

  @property
  def num_modes(self) -> int:
    return len(self.centres)


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


def batches(mixture: Mixture, seed: int, batch_size: int):
  """An endless, seeded stream of {'image': [B, 2] float32, 'label': [B] int32}."""
  rng = np.random.default_rng(seed)
  while True:
    yield dict(image=sample(mixture, rng, batch_size),
               label=np.zeros((batch_size,), np.int32))


def diagnostics(mixture: Mixture, points: np.ndarray,
                min_samples_per_mode: int = 1) -> dict[str, float]:
  """Mode coverage and sample quality of `points` [N, 2] (see module docstring)."""
  points = np.asarray(points, np.float64).reshape(-1, 2)
  distances = np.linalg.norm(points[:, None, :] - mixture.centres[None], axis=-1)
  nearest = np.argmin(distances, axis=1)
  high_quality = distances[np.arange(len(points)), nearest] <= 3.0 * mixture.std
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
