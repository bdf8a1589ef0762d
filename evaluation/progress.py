"""The one format of every long phase's progress line: training steps, the test-set
bound, sampling (sample grids, the sample metric, --mode=sample).

  step 300/2500  loss 0.11 (mean of ...)  |  4.47 steps/s 286 img/s  |  8m12s left
  test-set bound: examples 64/128  |  3.10 examples/s  |  0m20s left

Here, below train/, so that sampling and evaluation code can print it too.
"""
from __future__ import annotations


def format_seconds(seconds: float) -> str:
  seconds = max(0, int(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def progress_line(what: str, done: int, total: int, rate: float, unit: str,
                  details: str = "", more_rates: str = "") -> str:
  """'<what> <done>/<total>  <details>  |  <rate> <unit>/s<more_rates>  |  <t> left'.

  rate: `unit`s per second so far; the time left assumes it holds for the rest.
  """
  head = f"{what} {done}/{total}" + (f"  {details}" if details else "")
  left = format_seconds((total - done) / max(rate, 1e-9))
  return f"{head}  |  {rate:.2f} {unit}/s{more_rates}  |  {left} left"
