"""The callable that submitit runs in every task of a job: one main.py process.

train/cluster.py submits it (`python -m train.cluster submit`); it is pickled by
value, so a job process needs submitit and the standard library to load it, not this
repository on its path. Preemption and the time limit: SLURM sends USR2 (submitit's
signal) `signal_seconds` before the end; submitit calls `checkpoint` in task 0, which
sends SIGTERM to main.py (every process then saves the same step:
train/workdir_guard.py) and waits for it to exit; submitit then requeues the job, and
the requeued job resumes from the workdir. main.py runs in its own session, so SLURM's signals to the task
reach it only through this forwarding.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence

import submitit


def _ignore_usr2() -> None:
  """In main.py's process before it starts: USR2 is submitit's signal (SLURM may send
  it to every process of the job), and its default action would kill main.py before
  it saves. An ignored signal stays ignored across exec."""
  signal.signal(signal.SIGUSR2, signal.SIG_IGN)


class MainJob(submitit.helpers.Checkpointable):
  """`python main.py <argv>` in `repo`, until `final` exists."""

  def __init__(self, argv: Sequence[str], *, repo: str, python: str, final: str,
               required: str | None = None, grace_seconds: float = 100.0,
               environment: dict[str, str] | None = None):
    self.argv, self.repo, self.python = list(argv), repo, python
    self.final, self.required, self.grace_seconds = final, required, grace_seconds
    self.environment = dict(environment or {})
    self._process: subprocess.Popen | None = None

  def __call__(self) -> str:
    if self.required and not os.path.exists(self.required):
      raise FileNotFoundError(f"{' '.join(self.argv)} needs {self.required}: train "
                              "first.")
    self._process = subprocess.Popen(
        [self.python, "main.py", *self.argv], cwd=self.repo,
        env=dict(os.environ, PYTHONUNBUFFERED="1", **self.environment),
        start_new_session=True, preexec_fn=_ignore_usr2)
    status = self._process.wait()
    if status:
      raise RuntimeError(f"main.py {' '.join(self.argv)} exited with status {status} "
                         "(its output is in this job's log).")
    return self.final

  def checkpoint(self, *args, **kwargs):
    """Stops main.py with SIGTERM (it saves), then asks submitit to requeue."""
    del args, kwargs
    process = self._process
    if process is not None and process.poll() is None:
      process.send_signal(signal.SIGTERM)
      try:
        process.wait(timeout=self.grace_seconds)
      except subprocess.TimeoutExpired:
        pass   # the job ends it; the requeued job resumes from the last checkpoint
    if os.path.exists(self.final):
      return None   # finished: nothing to requeue
    return submitit.helpers.DelayedSubmission(MainJob(
        self.argv, repo=self.repo, python=self.python, final=self.final,
        required=self.required, grace_seconds=self.grace_seconds,
        environment=self.environment))

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_process"] = None   # a running process is not carried to the next job
    return state
