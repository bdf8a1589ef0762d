"""Times a config's default run phase by phase: the figures of README's quick start.

The run is `python main.py --config=configs/<name>.py --workdir=W`.

  python benchmarks/quickstart.py                           # ddpm_digits
  python benchmarks/quickstart.py guided_ddpm_digits --repeats=3
  python benchmarks/quickstart.py sr3_digits --workdir_root=/tmp/qs -- \\
      --config.training.num_train_steps=100                 # extra main.py flags

Each repeat runs main.py in a subprocess on a fresh workdir and timestamps its log
lines as they arrive. The phases come from the lines the run prints (train/loop.py,
train/modes.py): start-up + compile (process start to the first training step done,
less that step's share of the steady rate), training (the steps at the steady
rate), the sample grids (their own "Wrote ... (x s)" lines), the test-set bound, the
sample metric, and the total wall time. Steps/s is the steady rate: from the first
progress line to the last, sample grids excluded. With --repeats, each figure is
given as min-max over the repeats: the range README quotes. The eval JSON's numbers
(bound with its standard error, classifier FD, class coverage, protocol) are printed
too. Nothing of the library is imported.

Timings move with the machine's load: run it on an idle machine, and say so.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STEP = re.compile(r"\] step (\d+)/(\d+)\s")
_TRAINING = re.compile(r"\] Training \S+ from step (\d+) to (\d+)")
_GRID = re.compile(r"\] Wrote \d+ samples to \S*train_step_\d+\.png \(([\d.]+) s\)")
_BOUND = re.compile(r"\] test-set metrics: examples (\d+)/(\d+)\s")
_SAMPLES = re.compile(r"\] sample metric: images")
_EVAL = re.compile(r"\] Eval at step \d+")
PHASES = ("start-up + compile", "training", "sample grids", "test-set bound",
          "sample metric", "total")


@dataclasses.dataclass
class Timing:
  phases: dict[str, float | None]   # seconds; None: the run has no such phase
  steps_per_sec: float | None
  num_steps: int


def phases_from_log(lines: list[tuple[float, str]], total: float) -> Timing:
  """Phase seconds from (seconds since process start, log line) pairs."""
  t_train = first = last = None
  first_step = num_steps = 0
  grids: list[tuple[float, float]] = []   # (line time, grid seconds)
  t_bound_end = t_eval = None
  sampled = False
  for t, line in lines:
    if m := _TRAINING.search(line):
      t_train, num_steps = t, int(m.group(2)) - int(m.group(1))
    elif m := _STEP.search(line):
      if first is None:
        first, first_step = t, int(m.group(1))
      last, last_step = t, int(m.group(1))
    elif m := _GRID.search(line):
      grids.append((t, float(m.group(1))))
    elif _BOUND.search(line):
      t_bound_end = t
    elif _SAMPLES.search(line):
      sampled = True
    elif _EVAL.search(line):
      t_eval = t
  if t_train is None or first is None:
    raise ValueError("The log holds no training progress line: did the run fail?")
  grid_seconds = sum(s for _, s in grids)
  during = sum(s for g, s in grids if first < g <= last)   # between progress lines
  steady = (last_step - first_step) / (last - first - during) if last > first else None
  compile_and_first = (first - t_train) - (first_step / steady if steady else 0.0)
  after_training = max([last] + [g for g, _ in grids])
  bound = None if t_bound_end is None else t_bound_end - after_training
  metric_start = t_bound_end if t_bound_end is not None else after_training
  metric = t_eval - metric_start if sampled and t_eval is not None else None
  training = (last - t_train) - compile_and_first - during
  return Timing({"start-up + compile": t_train + compile_and_first,
                 "training": training,
                 "sample grids": grid_seconds if grids else None,
                 "test-set bound": bound, "sample metric": metric, "total": total},
                steady, num_steps)


def run_once(config: str, workdir: str, extra: list[str], log_path: str
             ) -> tuple[Timing, dict]:
  """main.py on a fresh workdir; its timing and eval JSON."""
  cmd = [sys.executable, "-u", "main.py", f"--config={config}", f"--workdir={workdir}",
         *extra]
  print("$", " ".join(cmd), file=sys.stderr, flush=True)
  start = time.monotonic()
  lines = []
  with open(log_path, "w", buffering=1) as log, subprocess.Popen(
      cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")) as proc:
    for line in proc.stdout:
      lines.append((time.monotonic() - start, line))
      log.write(line)
      if _STEP.search(line) or "left" in line:
        print("  " + line.rstrip()[line.find("]") + 2:], file=sys.stderr, flush=True)
  total = time.monotonic() - start
  if proc.returncode:
    raise SystemExit(f"main.py failed (exit {proc.returncode}); log: {log_path}")
  evals = sorted(glob.glob(os.path.join(workdir, "eval", "step_*.json")))
  report = json.load(open(evals[-1])) if evals else {}
  return phases_from_log(lines, total), report


def _seconds_range(values: list[float | None]) -> str:
  values = [v for v in values if v is not None]
  if not values:
    return "-"
  lo, hi = min(values), max(values)
  return f"{lo:.0f} s" if round(lo) == round(hi) else f"{lo:.0f}-{hi:.0f} s"


def table(config: str, timings: list[Timing], reports: list[dict],
          load: tuple[float, ...]) -> str:
  rows = [f"{config}: {len(timings)} run(s), {timings[0].num_steps} steps, "
          f"{os.cpu_count()} CPU(s), load average before: "
          f"{', '.join(f'{x:.1f}' for x in load)}, after: "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}", "",
          "| phase | time |", "|---|---|"]
  for phase in PHASES:
    rows.append(f"| {phase} | {_seconds_range([t.phases[phase] for t in timings])} |")
  rates = [t.steps_per_sec for t in timings if t.steps_per_sec]
  if rates:
    rows.append(f"| steps/s (steady) | {min(rates):.2f}-{max(rates):.2f} |")
  for report in reports:
    keys = [k for k in ("bpd_vlb", "bpd_vlb_stderr", "classifier_fd", "class_coverage")
            if k in report]
    rows.append("")
    rows.append(", ".join(f"{k} {report[k]:.4g}" for k in keys) +
                f" ({report.get('evaluation_protocol', '?')})")
  return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("config", nargs="?", default="ddpm_digits",
                      help="a config name (ddpm_digits) or path, with an optional :arg")
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--workdir_root", default=None,
                      help="where the workdirs and logs go (default: a new temp dir)")
  parser.add_argument("extra", nargs="*", help="main.py flags, after --")
  args = parser.parse_args(argv)
  name, _, arg = args.config.partition(":")
  path = name if name.endswith(".py") else os.path.join("configs", f"{name}.py")
  if not os.path.isfile(os.path.join(REPO, path)):
    parser.error(f"no config {path}")
  config = path + (f":{arg}" if arg else "")
  root = args.workdir_root or tempfile.mkdtemp(prefix="quickstart_")
  os.makedirs(root, exist_ok=True)
  load = os.getloadavg()
  timings, reports = [], []
  for i in range(args.repeats):
    label = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{os.path.basename(path)[:-3]}{arg}_{i}")
    workdir = os.path.join(root, label)
    if os.path.exists(workdir):
      raise SystemExit(f"{workdir} exists: pass an empty --workdir_root")
    timing, report = run_once(config, workdir, args.extra, workdir + ".log")
    timings.append(timing)
    reports.append(report)
  print(table(config, timings, reports, load))


if __name__ == "__main__":
  main()
