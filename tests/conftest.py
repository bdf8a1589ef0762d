"""Shared pytest set-up: CPU only, float32 defaults, quiet TensorFlow."""
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Embedded datasets are prepared into a fresh directory, never into the user's own.
os.environ.setdefault("TFDS_DATA_DIR", tempfile.mkdtemp(prefix="tfds_test_"))
# Offline classifiers and reference statistics are cached per test session.
os.environ.setdefault("EVAL_CLASSIFIER_DIR", tempfile.mkdtemp(prefix="classifiers_"))
os.environ.setdefault("EVAL_STATS_DIR", tempfile.mkdtemp(prefix="ref_stats_"))

import jax  # noqa: E402
import pytest  # noqa: E402

# Many tests build the same small networks: a persistent compilation cache shared by
# the session turns their repeated XLA compilations into cache hits.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="jax_cache_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture
def fast_compile():
  """Turns off most XLA optimisations: tests whose cost is compile time run faster."""
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", False)
