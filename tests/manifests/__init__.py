"""Name-and-shape lists of published checkpoints no PyPI package can build.

Each `<name>.txt` holds one tensor per line, `name<TAB>d0,d1,...` (a scalar: an empty
shape), in the checkpoint's own names, layouts and order, written from the published
checkpoint's variable list. A test writes random weights under these names into the
published file format, converts them and checks the converted network.
"""

from __future__ import annotations

import os

import numpy as np

FOLDER = os.path.dirname(os.path.abspath(__file__))


def read(name: str) -> dict[str, tuple[int, ...]]:
  """The manifest `name` (without .txt) as {tensor name: shape}, in file order."""
  shapes = {}
  with open(os.path.join(FOLDER, f"{name}.txt")) as f:
    for number, line in enumerate(f, 1):
      line = line.rstrip("\n")
      if not line or line.startswith("#"):
        continue
      tensor, _, shape = line.partition("\t")
      if tensor in shapes:
        raise ValueError(f"{name}.txt:{number}: {tensor!r} listed twice.")
      shapes[tensor] = tuple(int(d) for d in shape.split(",") if d)
  return shapes


def random_tensors(shapes: dict[str, tuple[int, ...]], seed: int = 0,
                   scale: float = 0.05) -> dict[str, np.ndarray]:
  """float32 normal(0, scale) tensors of the manifest's shapes."""
  rng = np.random.default_rng(seed)
  return {name: rng.normal(0.0, scale, shape).astype(np.float32)
          for name, shape in shapes.items()}
