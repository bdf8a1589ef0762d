"""CI's rule that a skip is a failure (tests/conftest.py, TESTS_FORBID_SKIPS=1)."""

import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _run(tmp_path, forbid: bool) -> subprocess.CompletedProcess:
  shutil.copy(os.path.join(HERE, "conftest.py"), tmp_path / "conftest.py")
  (tmp_path / "pytest.ini").write_text("[pytest]\n")
  (tmp_path / "test_skips.py").write_text(
      "import pytest\n"
      "def test_missing_reference():\n"
      "  pytest.importorskip('a_reference_that_is_not_installed')\n"
      "def test_runs():\n"
      "  pass\n")
  env = dict(os.environ, TESTS_FORBID_SKIPS="1" if forbid else "0")
  return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                         "-p", "no:xdist", str(tmp_path)], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.integration
def test_a_skip_is_a_failure_only_when_forbidden(tmp_path):
  allowed = _run(tmp_path, forbid=False)
  assert allowed.returncode == 0 and "1 passed, 1 skipped" in allowed.stdout, allowed.stdout
  forbidden = _run(tmp_path, forbid=True)
  assert forbidden.returncode == 1, forbidden.stdout
  assert "1 failed, 1 passed" in forbidden.stdout, forbidden.stdout
  assert "a_reference_that_is_not_installed" in forbidden.stdout
