"""Resumable sample generation: chunks on disk, resumed to the same samples."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evaluation import sample_chunks


def _sample_fn(calls):
  def sample_fn(rng, n):
    calls.append(n)
    return np.asarray(jax.random.randint(rng, (n, 4, 4, 3), 0, 256, jnp.int32),
                      np.uint8)
  return sample_fn


def test_interrupted_generation_resumes_to_the_same_samples(tmp_path):
  rng = jax.random.PRNGKey(7)
  full_calls = []
  full = sample_chunks.generate_samples_resumable(
      _sample_fn(full_calls), rng, 23, 5, tmp_path / "full", log_progress=False)
  assert full.shape == (23, 4, 4, 3) and full.dtype == np.uint8
  assert full_calls == [5] * 5                    # ceil(23 / 5) chunks, last trimmed
  # Independent of the helper: chunk i is sample_fn(fold_in(rng, i), 5).
  np.testing.assert_array_equal(
      full[5:10], _sample_fn([])(jax.random.fold_in(rng, 1), 5))

  class Interrupted(Exception):
    pass

  calls = []

  def dies_after_two(rng_i, n):
    if len(calls) == 2:
      raise Interrupted
    return _sample_fn(calls)(rng_i, n)

  with pytest.raises(Interrupted):
    sample_chunks.generate_samples_resumable(dies_after_two, rng, 23, 5,
                                             tmp_path / "split", log_progress=False)
  assert sorted(os.listdir(tmp_path / "split")) == ["chunk_000000.npz",
                                                    "chunk_000001.npz"]
  resumed_calls = []
  resumed = sample_chunks.generate_samples_resumable(
      _sample_fn(resumed_calls), rng, 23, 5, tmp_path / "split", log_progress=False)
  assert resumed_calls == [5] * 3                 # only the 3 missing chunks
  np.testing.assert_array_equal(resumed, full)


def test_chunks_of_another_run_are_refused(tmp_path):
  sample_chunks.generate_samples_resumable(
      _sample_fn([]), jax.random.PRNGKey(0), 10, 5, tmp_path, log_progress=False)
  with pytest.raises(ValueError, match="another sampling run"):
    sample_chunks.generate_samples_resumable(
        _sample_fn([]), jax.random.PRNGKey(1), 10, 5, tmp_path, log_progress=False)
  with pytest.raises(ValueError, match="another sampling run"):
    sample_chunks.generate_samples_resumable(
        _sample_fn([]), jax.random.PRNGKey(0), 10, 2, tmp_path, log_progress=False)
  with pytest.raises(ValueError, match="uint8 NHWC"):
    sample_chunks.generate_samples_resumable(
        lambda rng, n: np.zeros((n, 4, 4, 3), np.float32), jax.random.PRNGKey(0), 4,
        2, tmp_path / "bad", log_progress=False)
