"""Shared pytest set-up: CPU only, float32 defaults, quiet TensorFlow."""
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Embedded datasets are prepared into a fresh directory, never into the user's own;
# each pytest-xdist worker prepares its own copy, so no two processes write one folder.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
_TFDS_ROOT = os.environ.get("TFDS_DATA_DIR") or tempfile.mkdtemp(prefix="tfds_test_")
os.environ["TFDS_DATA_DIR"] = os.path.join(_TFDS_ROOT, _WORKER) if _WORKER else _TFDS_ROOT
# Offline classifiers and reference statistics are cached per test session.
os.environ.setdefault("EVAL_CLASSIFIER_DIR", tempfile.mkdtemp(prefix="classifiers_"))
os.environ.setdefault("EVAL_STATS_DIR", tempfile.mkdtemp(prefix="ref_stats_"))

import jax  # noqa: E402
import pytest  # noqa: E402

# Many tests build the same small networks: a persistent compilation cache shared by
# the session (the xdist workers inherit the controller's folder) turns their repeated
# XLA compilations into cache hits.
os.environ.setdefault("TEST_JAX_CACHE_DIR", tempfile.mkdtemp(prefix="jax_cache_"))
jax.config.update("jax_compilation_cache_dir", os.environ["TEST_JAX_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# CI sets TESTS_FORBID_SKIPS=1 after installing the test extras (requirements-test.txt):
# there, a skipped test (a missing reference such as torch or diffusers) is a failure,
# so that the parity tests against outside code cannot silently stop running.
FORBID_SKIPS = os.environ.get("TESTS_FORBID_SKIPS") == "1"


def _forbid(report) -> None:
  if FORBID_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
    reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = "failed"
    report.longrepr = f"skipped, and TESTS_FORBID_SKIPS=1 forbids skips: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  del item, call
  outcome = yield
  _forbid(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
  del collector
  outcome = yield
  _forbid(outcome.get_result())   # a module-level importorskip


@pytest.fixture
def fast_compile():
  """Turns off most XLA optimisations: tests whose cost is compile time run faster.
  (Not for the whole session: tests that run long sampling loops get slower.)"""
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)


# The embedded digits test split and the session's digits classifier, shared by the
# classifier, sample-metric and CLI tests (imported lazily: most tests need neither).
@pytest.fixture(scope="module")
def digits_test():
  from evaluation import classifier as classifier_lib  # pylint: disable=g-import-not-at-top
  return classifier_lib.read_split("digits", "test")


@pytest.fixture(scope="module")
def digits():
  from evaluation import classifier as classifier_lib  # pylint: disable=g-import-not-at-top
  from tests.test_classifier import digits_classifier_dir  # pylint: disable=g-import-not-at-top
  return classifier_lib.load_or_train("digits", digits_classifier_dir())
