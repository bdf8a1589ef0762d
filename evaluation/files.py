"""Files the evaluation writes whole or not at all (weights, statistics, sample chunks)."""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np


def atomic_write(path: str | os.PathLike, write: Callable[[Any], Any]) -> None:
  """write(f) into a temporary file beside `path`, then renames it to `path`: an
  interrupted write never leaves a partial file under the final name."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def save_npz_atomically(path: str | os.PathLike, arrays: dict[str, Any]) -> None:
  """np.savez of `arrays` to `path`, whole or not at all."""
  atomic_write(path, lambda f: np.savez(f, **arrays))
