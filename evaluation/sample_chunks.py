"""Sample generation that survives interruption, chunk by chunk on disk.

`generate_samples_resumable` writes each chunk of samples to its own `.npz`
(`chunk_{i:06d}.npz`, with the chunk index, batch size and a fingerprint of the rng
in a JSON `meta`); a rerun loads the chunks already written and generates only the
rest, with the same keys, hence the same images. Chunks of another run (another
rng or batch size) are refused rather than mixed in. A `stop` callback (SIGTERM)
ends the generation between two chunks, with every finished chunk on disk.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from evaluation import files
from evaluation.progress import progress_line

# Progress lines at most this often (and after the last chunk).
_LOG_EVERY_SECONDS = 10.0


class Stopped(Exception):
  """`stop` asked to end the generation; the chunks written so far are kept."""


def _key_fingerprint(rng: jax.Array) -> str:
  data = rng
  if jax.dtypes.issubdtype(getattr(rng, "dtype", None), jax.dtypes.prng_key):
    data = jax.random.key_data(rng)
  return hashlib.sha256(np.asarray(data).tobytes()).hexdigest()[:16]


def chunk_path(out_dir: str | os.PathLike, index: int) -> pathlib.Path:
  return pathlib.Path(out_dir) / f"chunk_{index:06d}.npz"


def _read_chunk(path: pathlib.Path, index: int, batch_size: int,
                fingerprint: str) -> np.ndarray | None:
  """A finished chunk's images; None if absent or unreadable; raises if foreign."""
  if not path.is_file():
    return None
  try:
    with np.load(path) as data:
      images, meta = data["arr_0"], json.loads(str(data["meta"]))
  except (OSError, ValueError, KeyError) as error:
    logging.warning("Regenerating unreadable sample chunk %s: %s", path, error)
    return None
  if (meta.get("chunk_index"), meta.get("batch_size"), meta.get("rng")) != (
      index, batch_size, fingerprint) or images.shape[0] != batch_size:
    raise ValueError(
        f"{path} was written by another sampling run (chunk {meta.get('chunk_index')}, "
        f"batch size {meta.get('batch_size')}, rng {meta.get('rng')}; this run: chunk "
        f"{index}, batch size {batch_size}, rng {fingerprint}): use another out_dir "
        "or delete it.")
  return images


def generate_samples_resumable(sample_fn: Callable[[jax.Array, int], Any],
                               rng: jax.Array, num_samples: int, batch_size: int,
                               out_dir: str | os.PathLike, *,
                               is_writer: bool | None = None,
                               log_progress: bool = True,
                               stop: Callable[[], bool] | None = None,
                               progress_label: str = "samples") -> np.ndarray:
  """`num_samples` images from `sample_fn`, saved chunk by chunk so a rerun resumes.

  Chunk i holds `sample_fn(fold_in(rng, i), batch_size)` (uint8 NHWC, or float
  [N, D] points; the whole batch on every process) in `out_dir/chunk_{i:06d}.npz`,
  written atomically by the writer process (process 0 by default). Chunks already
  there (same rng, same batch size) are read, not regenerated, so an interrupted run
  continues where it stopped and returns the same images as an uninterrupted one. The
  result is the first `num_samples` images of the concatenated chunks.

  `stop` (e.g. "SIGTERM came"; every process must answer alike) is asked before each
  chunk that is still to be generated; True raises Stopped, so a preempted job
  exits within one chunk's time and loses no finished chunk. Progress lines name the
  phase `progress_label`.
  """
  if num_samples < 1 or batch_size < 1:
    raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples} "
                     f"and {batch_size}.")
  out_dir = pathlib.Path(out_dir)
  is_writer = jax.process_index() == 0 if is_writer is None else is_writer
  if is_writer:
    out_dir.mkdir(parents=True, exist_ok=True)
  fingerprint = _key_fingerprint(rng)
  num_chunks = math.ceil(num_samples / batch_size)
  done = np.asarray([chunk_path(out_dir, i).is_file() for i in range(num_chunks)])
  if jax.process_count() > 1:  # all processes must generate the same chunks
    done = np.asarray(multihost_utils.broadcast_one_to_all(done), bool)
  if log_progress and done.any():
    logging.info("Resuming sampling in %s: %d of %d chunks already written.",
                 out_dir, int(done.sum()), num_chunks)
  chunks: list[np.ndarray] = []
  start = last_log = time.time()
  generated, to_generate = 0, int((~done).sum()) * batch_size
  for i in range(num_chunks):
    images = (_read_chunk(chunk_path(out_dir, i), i, batch_size, fingerprint)
              if done[i] else None)
    if images is None:
      if stop is not None and stop():
        raise Stopped(f"{i} of {num_chunks} chunks of samples are saved in {out_dir}.")
      images = np.asarray(sample_fn(jax.random.fold_in(rng, i), batch_size))
      is_images = images.dtype == np.uint8 and images.ndim == 4
      is_points = np.issubdtype(images.dtype, np.floating) and images.ndim == 2
      if not (is_images or is_points) or len(images) != batch_size:
        raise ValueError(f"sample_fn must return {batch_size} uint8 NHWC images or "
                         f"float [N, D] points, got {images.dtype} {images.shape}.")
      if is_writer:
        _write_chunk(chunk_path(out_dir, i), images,
                     dict(chunk_index=i, batch_size=batch_size, rng=fingerprint))
      generated += len(images)
      if log_progress and (time.time() - last_log > _LOG_EVERY_SECONDS
                           or i == num_chunks - 1):
        last_log = time.time()
        rate = generated / max(time.time() - start, 1e-9)
        total = min(to_generate, num_samples)   # the last chunk may run past it
        logging.info(progress_line(
            f"{progress_label}: images", min(generated, total), total, rate, "images",
            f"(chunk {i + 1}/{num_chunks})"))
    chunks.append(images)
  return np.concatenate(chunks)[:num_samples]


def _write_chunk(path: pathlib.Path, images: np.ndarray, meta: dict[str, Any]) -> None:
  files.save_npz_atomically(
      path, dict(arr_0=images, meta=np.asarray(json.dumps(meta, sort_keys=True))))
