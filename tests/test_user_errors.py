"""Errors a user can cause reach the user as one line, `error: ...`, with exit status 2.

main.py runs in subprocesses on the cases a user meets (broken or missing config
file, a mistyped field, an invalid value, a workdir that is a file, a bad edit input,
a disk that fills during a checkpoint save); stderr may hold the C++ start-up lines
of XLA/TensorFlow, but its last line is the one `error:` line and nothing prints a
traceback. The disk-full run keeps the previous checkpoint, and it restores.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from configs import ddpm_digits
from sampling import image_io
from tests.test_faults import RUN
from tests.test_multihost import (REPO, as_flags, compile_cache, restore_on_one_device,
                                  subprocess_env, with_overrides)
from train import loop, user_errors

assert compile_cache   # a fixture, used by name below

DIGITS = os.path.join(REPO, "configs", "ddpm_digits.py")


def run_main(args: list[str], env=None, prefix: list[str] | None = None):
  return subprocess.run([sys.executable, *(prefix or [os.path.join(REPO, "main.py")]),
                         *args], cwd=REPO, env=env or subprocess_env(1, ""),
                         capture_output=True, text=True, timeout=300)


def assert_one_error_line(proc, *expected: str) -> str:
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert [line for line in lines if "error:" in line] == lines[-1:], proc.stderr[-3000:]
  assert lines[-1].startswith("error: "), lines[-1]
  for text in expected:
    assert text in lines[-1], lines[-1]
  return lines[-1]


@pytest.mark.parametrize("case", ["missing_config", "broken_config", "mistyped_field",
                                  "invalid_value", "workdir_is_a_file"])
@pytest.mark.integration
def test_user_errors_of_main_are_one_line(tmp_path, case):
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config():\n  return dict(a=1\n\nx = 2\n")
  a_file = tmp_path / "a_file"
  a_file.write_text("")
  workdir = f"--workdir={tmp_path / 'w'}"
  args, expected = {
      "missing_config": ([f"--config={tmp_path / 'nope.py'}", workdir],
                         ("nope.py", "No such file")),
      "broken_config": ([f"--config={broken}", workdir], ("broken.py", "line 2")),
      "mistyped_field": ([f"--config={DIGITS}", workdir,
                          "--config.training.num_train_step=3"],
                         ('--config.training.num_train_step', 'Did you mean '
                          '"num_train_steps" instead of "num_train_step"?')),
      "invalid_value": ([f"--config={DIGITS}", workdir,
                         "--config.training.steps_per_call=0"],
                        ("config.training.steps_per_call must be >= 1, got 0",)),
      "workdir_is_a_file": ([f"--config={DIGITS}", f"--workdir={a_file}"],
                            ("is a file, not a directory",)),
  }[case]
  line = assert_one_error_line(run_main(args), *expected)
  assert "\\n" not in line and "\\'" not in line     # the hint unescaped


@pytest.mark.integration
def test_a_bad_edit_input_is_one_line_naming_the_file(tmp_path):
  bad = tmp_path / "digit.npz"
  np.savez(bad, images=np.zeros((1, 8, 8, 1), np.uint8))
  proc = run_main([f"--config={DIGITS}", f"--workdir={tmp_path / 'w'}", "--mode=sample",
                   "--edit=inpaint", f"--input={bad}"])
  assert_one_error_line(proc, f"--input={bad}", "no 'arr_0'", "['images']")


def _write(path, data: bytes):
  path.write_bytes(data)
  return str(path)


def test_bad_input_files_name_the_file_and_what_was_expected(tmp_path):
  def npz(name, **arrays):
    np.savez(tmp_path / name, **arrays)
    return str(tmp_path / name)

  cases = {
      npz("no_arr0.npz", x=np.zeros((1, 8, 8, 1), np.uint8)): "no 'arr_0'",
      _write(tmp_path / "not_a_zip.npz", b"hello"): "is not a readable .npz file",
      _write(tmp_path / "empty.npz", b""): "is not a readable .npz file",
      npz("floats.npz", arr_0=np.zeros((1, 8, 8, 1), np.float32)): "float32 values",
      npz("five_d.npz", arr_0=np.zeros((1, 1, 8, 8, 1), np.uint8)): "has shape",
      _write(tmp_path / "garbage.png", b"\x89PNG not really"): "not an image PIL can read",
      str(tmp_path / "missing.png"): "no such file",
  }
  for path, expected in cases.items():
    with pytest.raises((ValueError, FileNotFoundError)) as info:
      image_io.read_images(path, "--input")
    message = user_errors.user_message(info.value)   # one line, not a traceback
    assert message is not None and "\n" not in message, (path, info.value)
    assert f"--input={path}" in message and expected in message, message
  with zipfile.ZipFile(tmp_path / "zip.npz", "w") as z:   # a zip, not of arrays
    z.writestr("arr_0.txt", "x")
  with pytest.raises(ValueError, match="no 'arr_0'"):
    image_io.read_images(str(tmp_path / "zip.npz"))


def test_internal_errors_keep_their_traceback():
  """A ValueError raised inside a library or a JAX trace is not the user's."""
  import jax  # pylint: disable=g-import-not-at-top

  def traced(x):
    raise ValueError("inside a trace")

  for fn in (lambda: np.reshape(np.zeros(3), (2, 2)), lambda: jax.jit(traced)(1.0),
             lambda: {}["key"]):
    with pytest.raises(Exception) as info:
      fn()
    assert user_errors.user_message(info.value) is None, info.value
  with pytest.raises(ValueError) as info:
    raise ValueError("raised by the project")
  assert user_errors.user_message(info.value) == "raised by the project"


# A stand-in for a full disk where this test cannot mount a small tmpfs: every save
# from step 4 on fails as a write would (ENOSPC), in the save path of Orbax.
INJECT_FULL_DISK = """
import errno, runpy, sys
import orbax.checkpoint as ocp
save = ocp.CheckpointManager.save
def full_disk(self, step, *args, **kwargs):
  if step >= 4:
    raise OSError(errno.ENOSPC, "No space left on device")
  return save(self, step, *args, **kwargs)
ocp.CheckpointManager.save = full_disk
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.integration
def test_disk_full_during_a_save_is_one_line_and_keeps_the_checkpoint(
    tmp_path, compile_cache):
  overrides = {**RUN, "training.num_train_steps": 6, "training.async_checkpointing": False,
               "eval.num_eval_examples": 8}
  workdir = tmp_path / "w"
  proc = run_main([os.path.join(REPO, "main.py"), f"--config={DIGITS}",
                   f"--workdir={workdir}", *as_flags(overrides)],
                  env=subprocess_env(1, compile_cache), prefix=["-c", INJECT_FULL_DISK])
  line = assert_one_error_line(proc, "disk full while saving the checkpoint of step 4",
                               "the checkpoint of step 2 is kept", "free",
                               "a checkpoint takes about")
  assert "step 4/6" in proc.stderr, line      # it trained on to the failed save
  config = with_overrides(ddpm_digits.get_config(), overrides)
  tree = restore_on_one_device(str(workdir), config)   # the newest readable: step 2
  assert int(np.asarray(tree["step"])) == 2


def test_each_logged_mean_says_which_steps_it_covers():
  scalars = dict(loss=0.5, steps_per_sec=2.0, images_per_sec=16.0, steps_in_mean=3)
  assert "loss 0.5 (mean of steps 8-10, 3)" in loop._progress_line(10, 20, scalars)
  scalars["steps_in_mean"] = 1                 # the first log after a resume at step 9
  assert "loss 0.5 (step 10)" in loop._progress_line(10, 20, scalars)


def test_closed_event_loop_noise_is_dropped_and_every_other_traceback_kept():
  import io  # pylint: disable=g-import-not-at-top
  out = io.StringIO()
  stream = user_errors.StderrWithoutClosedLoopNoise(out)
  noise = ("Traceback (most recent call last):\n"
           '  File "/py/asyncio/base_events.py", line 806, in call_soon_threadsafe\n'
           "    self._check_closed()\n"
           "RuntimeError: Event loop is closed\n")
  ours = noise.replace("/py/asyncio/base_events.py", "/repo/train/loop.py")
  other = 'Traceback (most recent call last):\n  File "/a.py", line 1\nValueError: bad\n'
  for text in ("start\n", noise, ours[:30], ours[30:], other, noise, "error: x"):
    stream.write(text)
  stream.flush()
  assert out.getvalue() == "start\n" + ours + other + "error: x"
