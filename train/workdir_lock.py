"""One writer per workdir: a lock file per kind of output, taken before writing.

Each lock guards the files one kind of writer makes, so that writers that belong
together run side by side and duplicates fail at once:

  train   checkpoints/, config.json, samples/train_* (--mode=train)
  eval    eval/ (--mode=eval, --mode=eval_watch, and training's final evaluation)
  sample  samples/step_* (--mode=sample)
  edit    edits/ (--mode=sample with --edit, --prompt or --label)

The lock is workdir/<kind>.lock, a JSON of the holder (host, pid, start time, command,
heartbeat), created with O_EXCL. A background thread rewrites the heartbeat every
HEARTBEAT_S seconds, also while the holder compiles or evaluates for hours. A lock is
stale, and taken over with a warning, when its process is gone (same host: the pid is
dead or now another process), when it comes from an earlier incarnation of the same
requeued SLURM job, or when its heartbeat is older than STALE_S (another host that
died): so a requeued job is never blocked for long. Only process 0 of a job locks.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any

import jax
from absl import logging
from etils import epath

from train import user_errors

HEARTBEAT_S = 30.0
# Ten heartbeats: a holder whose file system stalls for minutes keeps its lock.
STALE_S = 300.0
KINDS = ("train", "eval", "sample", "edit")


class WorkdirLockedError(user_errors.UserError):
  """Another live process writes this kind of output into the workdir."""


def lock_path(workdir: str, kind: str) -> epath.Path:
  return epath.Path(workdir) / f"{kind}.lock"


def _proc_start(pid: int) -> str | None:
  """The process's start time since boot (Linux), which tells a reused pid apart."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _pid_alive(pid: int, start: str | None) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass    # alive, another user's
  now = _proc_start(pid)
  return start is None or now is None or now == start


def _describe(holder: dict[str, Any]) -> str:
  age = time.time() - float(holder.get("heartbeat", 0))
  started = time.strftime("%Y-%m-%d %H:%M:%S",
                          time.localtime(float(holder.get("start_time", 0))))
  return (f"pid {holder.get('pid')} on {holder.get('host')} since {started} "
          f"(heartbeat {age:.0f} s ago): {holder.get('command')}")


def stale_reason(holder: dict[str, Any], now: float | None = None) -> str | None:
  """Why `holder`'s lock may be taken over, or None while it is held."""
  now = time.time() if now is None else now
  job = os.environ.get("SLURM_JOB_ID")
  restart = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
  if (job and holder.get("slurm_job_id") == job
      and int(holder.get("slurm_restart", 0)) < restart):
    return "an earlier run of this requeued SLURM job"
  if holder.get("host") == socket.gethostname() and not _pid_alive(
      int(holder.get("pid", -1)), holder.get("pid_start")):
    return "its process is gone"
  age = now - float(holder.get("heartbeat", 0))
  if age > STALE_S:
    return f"its heartbeat is {age:.0f} s old (stale after {STALE_S:.0f} s)"
  return None


def _read(path: epath.Path) -> tuple[str, dict[str, Any]] | None:
  """(raw text, holder) of a lock file; None if absent. Unparsable: an empty holder."""
  try:
    text = path.read_text()
  except FileNotFoundError:
    return None
  return text, _parse(text)


def _parse(text: str) -> dict[str, Any]:
  """A lock's holder; garbage gives {} (heartbeat 0: stale)."""
  try:
    holder = json.loads(text)
  except ValueError:
    return {}
  return holder if isinstance(holder, dict) else {}


def _create(path: epath.Path, text: str) -> bool:
  """Creates `path` holding `text` unless it exists: written beside it, then hard-linked
  (atomic on a local or NFS file system; a reader never sees half a lock)."""
  if "://" in str(path):   # object stores have no O_EXCL: check, write, read back
    if path.exists():
      return False
    path.write_text(text)
    return path.read_text() == text
  tmp = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
  try:
    os.link(tmp, str(path))
  except FileExistsError:
    return False
  finally:
    os.unlink(tmp)
  return True


def _write_over(path: epath.Path, text: str) -> None:
  tmp = path.parent / f"{path.name}.{os.getpid()}.tmp"
  tmp.write_text(text)
  tmp.replace(path)


class WorkdirLock:
  """The lock of one kind of output in one workdir, held by this process."""

  def __init__(self, workdir: str, kind: str, command: str | None = None):
    if kind not in KINDS:
      raise ValueError(f"Unknown workdir lock {kind!r}; known: {KINDS}.")
    self.path = lock_path(workdir, kind)
    self.kind = kind
    self.holder = dict(
        kind=kind, host=socket.gethostname(), pid=os.getpid(),
        pid_start=_proc_start(os.getpid()), start_time=time.time(),
        command=command if command is not None else " ".join(sys.argv),
        token=uuid.uuid4().hex, slurm_job_id=os.environ.get("SLURM_JOB_ID"),
        slurm_restart=int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0))
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def _text(self) -> str:
    return json.dumps(dict(self.holder, heartbeat=time.time()), indent=1)

  def try_acquire(self) -> str | None:
    """Takes the lock (over a stale one) and returns None, or describes the holder."""
    self.path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
      if _create(self.path, self._text()):
        self._start_heartbeat()
        return None
      found = _read(self.path)
      if found is None:
        continue       # released meanwhile
      text, holder = found
      reason = stale_reason(holder)
      if reason is None:
        return _describe(holder)
      # Move the stale lock aside; only one taker can move this exact file.
      aside = self.path.parent / f"{self.path.name}.stale-{self.holder['token']}"
      try:
        self.path.rename(aside)
      except FileNotFoundError:
        continue
      moved = aside.read_text()
      aside.unlink()
      if moved != text:     # another taker's fresh lock: put it back, report it
        if not _create(self.path, moved):
          continue
        return _describe(_parse(moved))
      logging.warning("Taking over the %s lock of %s: %s (%s).", self.kind,
                      self.path.parent, reason, _describe(holder))
    return "a lock that changes hands too fast to take"

  def acquire(self) -> "WorkdirLock":
    busy = self.try_acquire()
    if busy is not None:
      raise WorkdirLockedError(
          f"{self.path.parent} is in use: its {self.kind} lock ({self.path}) is held "
          f"by {busy}. Stop that run or wait for it; a lock whose process is gone, or "
          f"whose heartbeat is older than {STALE_S:.0f} s, is taken over.")
    return self

  def wait(self, poll_s: float = 10.0) -> "WorkdirLock":
    """Takes the lock, waiting while a live process holds it (logged once)."""
    busy = self.try_acquire()
    if busy is not None:
      logging.warning("Waiting for the %s lock of %s, held by %s.", self.kind,
                      self.path.parent, busy)
      while busy is not None:
        time.sleep(poll_s)
        busy = self.try_acquire()
    return self

  def _start_heartbeat(self) -> None:
    self._stop.clear()
    self._thread = threading.Thread(target=self._beat, daemon=True,
                                    name=f"{self.kind}-lock-heartbeat")
    self._thread.start()

  def _owned(self) -> bool:
    found = _read(self.path)
    return found is not None and found[1].get("token") == self.holder["token"]

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        if not self._owned():
          logging.error("The %s lock %s was taken over by another process; this run "
                        "no longer holds it.", self.kind, self.path)
          return
        _write_over(self.path, self._text())
      except OSError as error:   # a file system hiccup: try again at the next beat
        logging.warning("Could not refresh %s: %s", self.path, error)

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    try:
      if self._owned():
        self.path.unlink()
    except OSError as error:
      logging.warning("Could not remove %s: %s", self.path, error)

  def __enter__(self) -> "WorkdirLock":
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def acquire(workdir: str, kind: str, *, wait: bool = False
            ) -> contextlib.AbstractContextManager:
  """Takes `kind`'s lock of `workdir` in process 0; returns what a with-block releases.

  Other processes of a multi-process job take nothing (process 0 writes the files).
  wait=False raises WorkdirLockedError at once if a live process holds the lock.
  """
  if jax.process_index() != 0:
    return contextlib.nullcontext()
  lock = WorkdirLock(workdir, kind)
  return lock.wait() if wait else lock.acquire()
