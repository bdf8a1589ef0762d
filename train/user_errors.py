"""Errors a user can cause reach the user as one line, `error: ...`, exit status 2.

main.py and `python -m convert` start through `run_main`. Which failures are the
user's, decided by where and what they are:

  - anything wrong while the flags are parsed: a missing or broken config file (a
    SyntaxError names its line), an unknown --config.<field> (with ml_collections'
    "Did you mean" hint), a value of the wrong type, a missing flag;
  - a `UserError` (a full disk during a checkpoint save, a workdir that is a file, an
    unreadable input image), wherever it is raised;
  - an `app.UsageError`, and a ValueError or a missing/unusable path (FileNotFoundError,
    NotADirectoryError, IsADirectoryError, PermissionError) raised by this
    repository's own code outside any JAX transformation: the validation that runs
    before anything is compiled (train/run.py validate_config, the families' checks,
    the edit options). The same types raised inside a library (JAX, Orbax, NumPy) or
    while JAX traces a function are internal failures and keep their traceback.

Every other exception keeps its traceback. `-v 1` (absl's --verbosity) also logs the
traceback of a one-line error.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

USAGE_ERROR = 2
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LIBRARY_DIRS = ("site-packages", "dist-packages")
_JAX_FILTERED = "JAX has removed its internal frames"
_PROJECT_TYPES = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                  PermissionError)
_DISK_FULL_TEXT = ("No space left on device", "os_error_code='28'", "Disk quota exceeded")


class UserError(ValueError):
  """A problem the user can fix (input files, workdir, disk); its message says all."""


# --------------------------------------------------------------------- disk full
def is_disk_full(error: BaseException | None) -> bool:
  """An OSError(ENOSPC/EDQUOT) or a library error that wraps one (TensorStore writes
  raise ValueError('RESOURCE_EXHAUSTED ... [os_error_code='28']')), at any depth."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if any(text in str(error) for text in _DISK_FULL_TEXT):
      return True
    error = error.__cause__ or error.__context__
  return False


def format_bytes(n: float) -> str:
  for unit in ("B", "KB", "MB", "GB", "TB"):
    if abs(n) < 1000 or unit == "TB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1000
  raise AssertionError


def _directory_size(path: str) -> int:
  total = 0
  for root, _, files in os.walk(path):
    for name in files:
      try:
        total += os.path.getsize(os.path.join(root, name))
      except OSError:
        pass
  return total


def disk_full_error(directory: str, step: int | None, error: BaseException) -> UserError:
  """The one-line report of a checkpoint save that ran out of space: the free space,
  the space a checkpoint takes (the size of the newest kept one) and the step kept."""
  match = re.search(r"[/\\](\d+)\.orbax-checkpoint-tmp", str(error))
  if match:
    step = int(match.group(1))
  local = "://" not in directory and os.path.isdir(directory)
  kept = sorted(int(name) for name in (os.listdir(directory) if local else [])
                if name.isdigit() and int(name) != step)
  what = f"the checkpoint of step {step}" if step is not None else "a checkpoint"
  space = ""
  if local:
    free = shutil.disk_usage(directory).free
    space = f" ({format_bytes(free)} free"
    if kept:
      size = _directory_size(os.path.join(directory, str(kept[-1])))
      space += f"; a checkpoint takes about {format_bytes(size)}"
    space += ")"
  keeps = (f"the checkpoint of step {kept[-1]} is kept" if kept
           else "no earlier checkpoint exists")
  return UserError(f"disk full while saving {what} to {directory}{space}; {keeps}. "
                   "Free some space and run the same command again to resume.")


class _QuietDiskFull:
  """Drops Orbax's per-thread ERROR records (with tracebacks) of a full disk: the
  save re-raises the error, which then becomes the one line."""

  def filter(self, record) -> bool:
    if "orbax" not in record.pathname:
      return True
    error = record.exc_info[1] if record.exc_info else None
    return not (is_disk_full(error) or is_disk_full(Exception(record.getMessage())))


class StderrWithoutClosedLoopNoise:
  """sys.stderr without one known kind of noise: after a save fails (a full disk),
  TensorStore completes the writes still in flight and calls back into Orbax's event
  loop, which is closed by then; each callback prints a traceback that ends in
  `RuntimeError: Event loop is closed`, with only asyncio's frames in it. Every other
  traceback and line passes through unchanged."""

  _END = "RuntimeError: Event loop is closed"

  def __init__(self, stream):
    self._stream = stream
    self._pending = ""
    self._held: list[str] = []

  def write(self, text: str) -> int:
    self._pending += text
    while "\n" in self._pending:
      line, self._pending = self._pending.split("\n", 1)
      self._line(line + "\n")
    return len(text)

  def _line(self, line: str) -> None:
    if not self._held and line.startswith("Traceback (most recent call last):"):
      self._held = [line]
      return
    if not self._held:
      self._stream.write(line)
      return
    self._held.append(line)
    if line.startswith((" ", "\t")):
      return
    noise = line.strip() == self._END and all(
        "asyncio" in held for held in self._held[1:-1] if held.lstrip().startswith("File"))
    if not noise:
      self._stream.write("".join(self._held))
    self._held = []

  def flush(self) -> None:
    if self._held:
      self._stream.write("".join(self._held))
      self._held = []
    self._stream.write(self._pending)
    self._pending = ""
    self._stream.flush()

  def __getattr__(self, name: str) -> Any:
    return getattr(self._stream, name)


# ----------------------------------------------------------------------- workdir
def check_workdir(path: str, flag: str = "--workdir") -> None:
  """A local workdir must be a writable directory, or creatable (URLs: not checked)."""
  if "://" in path:
    return
  full = os.path.abspath(path)
  if os.path.exists(full):
    if not os.path.isdir(full):
      raise UserError(f"{flag}={path} is a file, not a directory: give a directory "
                      "(it is created if missing).")
    if not os.access(full, os.W_OK | os.X_OK):
      raise UserError(f"{flag}={path} is not writable by this user.")
    return
  parent = os.path.dirname(full)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise UserError(f"{flag}={path} cannot be created: {parent} is a file.")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise UserError(f"{flag}={path} cannot be created: {parent} is not writable by "
                    "this user.")


# ------------------------------------------------------------------ the messages
def _one_line(text: str) -> str:
  return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _raised_by_project(error: BaseException) -> bool:
  """Raised by this repository's code itself, not inside a library or a JAX trace."""
  frames = traceback.extract_tb(error.__traceback__)
  if not frames or any(_JAX_FILTERED in note for note in getattr(error, "__notes__", ())):
    return False
  if any(os.sep + "jax" + os.sep in frame.filename for frame in frames):
    return False
  last = os.path.abspath(frames[-1].filename)
  return (last.startswith(_REPO + os.sep)
          and not any(d in last for d in _LIBRARY_DIRS))


def user_message(error: BaseException) -> str | None:
  """The one-line message of an error the user caused while running; None: internal."""
  from absl import app  # pylint: disable=g-import-not-at-top
  if isinstance(error, UserError) or is_disk_full(error):
    return _one_line(error)
  if isinstance(error, app.UsageError):
    return _one_line(error)
  if isinstance(error, _PROJECT_TYPES) and _raised_by_project(error):
    return _one_line(error)
  return None


def _unknown_field_message(error: BaseException, argv: Sequence[str]) -> str:
  """ml_collections' AttributeError(KeyError("'name'\\nDid you mean ...")), unescaped."""
  inner = error.args[0] if error.args else error
  text = inner.args[0] if isinstance(inner, KeyError) and inner.args else str(inner)
  lines = [line.strip() for line in str(text).splitlines() if line.strip()]
  name = lines[0].strip("'\"") if lines else ""
  flag = next((a.split("=")[0] for a in argv if a.startswith("--config.")
               and name in a.split("=")[0].split(".")), None)
  where = f"{flag}: " if flag else ""
  return f"{where}the config has no field {name!r}. " + " ".join(lines[1:])


def config_message(error: BaseException, argv: Sequence[str],
                   config_path: str | None) -> str | None:
  """The one-line message of an error raised while the flags and config are read."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  where = f"--config={config_path}: " if config_path else ""
  if isinstance(error, SyntaxError):
    line = f", line {error.lineno}" if error.lineno else ""
    text = f": {error.text.strip()}" if error.text else ""
    return f"{where}{error.filename}{line}: {error.msg}{text}"
  if isinstance(error, KeyError) or (isinstance(error, AttributeError) and error.args
                                     and isinstance(error.args[0], KeyError)):
    return _unknown_field_message(error, argv)
  if isinstance(error, OSError):
    cause = error.__cause__ or error
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return f"{where}cannot load the config file: {lines[-1] if lines else cause}"
  if isinstance(error, flags.Error):
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1:   # a traceback inside the message: its head and its last line
      return f"{lines[0]} {lines[-1]}"
    return _one_line(error)
  if isinstance(error, (ValueError, TypeError)):
    return where + _one_line(error)
  return None


# ---------------------------------------------------------------------- the runner
def fail(message: str) -> NoReturn:
  """Prints `error: message` on stderr and exits with status 2."""
  sys.stdout.flush()
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(USAGE_ERROR)


def _log_traceback(error: BaseException) -> None:
  from absl import logging  # pylint: disable=g-import-not-at-top
  if logging.vlog_is_on(1):
    logging.debug("".join(traceback.format_exception(error)))


def run_main(main: Callable[[list[str]], Any], *, config_flags: Sequence[str] = ("config",),
             flag_values: Any = None) -> NoReturn:
  """absl's app.run(main) with the user's errors as one line each (see module doc)."""
  from absl import app, flags, logging  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags as ml_config_flags  # pylint: disable=g-import-not-at-top
  flag_values = flag_values or flags.FLAGS
  logging.get_absl_logger().addFilter(_QuietDiskFull())
  sys.stderr = StderrWithoutClosedLoopNoise(sys.stderr)

  def config_path(name: str) -> str | None:
    try:
      return ml_config_flags.get_config_filename(flag_values[name])
    except Exception:  # pylint: disable=broad-except
      return None

  def parse(argv: list[str]) -> list[str]:
    try:
      args = flag_values(argv)
      for name in config_flags:   # ml_collections defers a file it cannot load
        getattr(flag_values[name].value, "keys", None)
    except Exception as error:  # pylint: disable=broad-except
      path = next(filter(None, map(config_path, config_flags)), None)
      message = config_message(error, argv, path)
      if message is None:
        raise
      fail(message)
    return args

  def guarded_main(argv: list[str]) -> Any:
    try:
      return main(argv)
    except Exception as error:  # pylint: disable=broad-except
      message = user_message(error)
      if message is None:
        raise
      _log_traceback(error)
      fail(message)

  app.run(guarded_main, flags_parser=parse)
  raise AssertionError("app.run returned")
