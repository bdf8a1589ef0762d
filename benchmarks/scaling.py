"""Data-parallel scaling of a config's train step over N forced CPU devices.

Runs benchmarks/throughput.py once per N in --devices, each in its own process (the
device count, XLA_FLAGS=--xla_force_host_platform_device_count=N, is fixed when JAX
starts), with the per-device batch fixed (global batch N x --per_device_batch), and
prints one row per N:

  N | global batch | images/s | images/s/device | speedup | overhead | compile s

speedup = images/s at N / images/s at N=1. overhead = time per image at N / time per
image at N=1 - 1. Forced host devices share this machine's cores, all of which N=1
already uses (XLA's CPU thread pool), so on a machine with few cores the ideal is a
constant images/s (overhead 0%), not an N-fold speedup: the overhead is what
partitioning the step, the gradient all-reduce and per-device dispatch from the host
cost.

  python benchmarks/scaling.py            # configs/ddpm_cifar.py, N = 1, 2, 4, 8
  python benchmarks/scaling.py --devices=1,2 --per_device_batch=2 --steps=5 \\
      --config=configs/ddpm_cifar.py --config.model.ch=32 --config.model.ch_mult='(1,2)'

--config.* overrides go to throughput.py unchanged (the batch is set from
--per_device_batch).
"""

import argparse
import json
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THROUGHPUT = os.path.join(REPO, "benchmarks", "throughput.py")
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
# throughput.py's lines: "train: {steps/s:.4g} steps/s, {images/s:.4g} images/s" and
# "...; train step compile {seconds:.1f} s".
_NUMBER = r"([0-9.]+(?:e[+-]?[0-9]+)?)"
_TRAIN_LINE = re.compile(rf"^train: {_NUMBER} steps/s, {_NUMBER} images/s", re.M)
_COMPILE = re.compile(r"train step compile ([0-9.]+) s")


def parse_throughput(stdout: str) -> dict[str, float]:
  """images/s and compile seconds from throughput.py's output."""
  train = _TRAIN_LINE.search(stdout)
  compile_seconds = _COMPILE.search(stdout)
  if not train or not compile_seconds:
    raise ValueError(f"No train throughput in throughput.py's output:\n{stdout[-2000:]}")
  return dict(images_per_sec=float(train.group(2)),
              compile_seconds=float(compile_seconds.group(1)))


def device_env(num_devices: int) -> dict[str, str]:
  """The environment of a JAX process with `num_devices` CPU devices."""
  env = dict(os.environ)
  xla_flags = [f for f in env.get("XLA_FLAGS", "").split()
               if not f.startswith(DEVICE_COUNT_FLAG)]
  env["XLA_FLAGS"] = " ".join([*xla_flags, f"{DEVICE_COUNT_FLAG}={num_devices}"])
  env["JAX_PLATFORMS"] = "cpu"
  return env


def run_one(num_devices: int, per_device_batch: int, config: str, overrides: list[str],
            steps: int, timeout: float) -> dict[str, float]:
  """throughput.py's train figures on `num_devices` forced CPU devices."""
  global_batch = num_devices * per_device_batch
  cmd = [sys.executable, THROUGHPUT, f"--config={config}", *overrides,
         f"--config.training.batch_size={global_batch}", f"--steps={steps}",
         "--sample_batches=0", "--matmul_size=0"]
  out = subprocess.run(cmd, env=device_env(num_devices), capture_output=True, text=True,
                       timeout=timeout, cwd=REPO)
  if out.returncode:
    raise RuntimeError(f"throughput.py failed on {num_devices} device(s):\n"
                       f"{' '.join(cmd)}\n{out.stderr[-3000:]}")
  return dict(num_devices=num_devices, global_batch=global_batch,
              **parse_throughput(out.stdout))


def table_rows(results: list[dict[str, float]]) -> list[dict[str, float]]:
  """Adds per-device images/s, speedup and overhead relative to the first row."""
  reference = results[0]["images_per_sec"]
  return [dict(r, images_per_sec_per_device=r["images_per_sec"] / r["num_devices"],
               speedup=r["images_per_sec"] / reference,
               overhead=reference / r["images_per_sec"] - 1.0) for r in results]


def format_table(rows: list[dict[str, float]]) -> str:
  lines = [f"{'N':>3} {'global_batch':>12} {'images/s':>10} {'images/s/device':>16} "
           f"{'speedup':>8} {'overhead':>9} {'compile_s':>10}"]
  for r in rows:
    lines.append(f"{r['num_devices']:>3} {r['global_batch']:>12} "
                 f"{r['images_per_sec']:>10.2f} {r['images_per_sec_per_device']:>16.2f} "
                 f"{r['speedup']:>7.2f}x {r['overhead']:>+9.0%} "
                 f"{r['compile_seconds']:>10.1f}")
  return "\n".join(lines)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default=os.path.join(REPO, "configs", "ddpm_cifar.py"),
                      help="Config file (throughput.py's --config).")
  parser.add_argument("--devices", default="1,2,4,8",
                      help="Comma-separated device counts, the first is the reference.")
  parser.add_argument("--per_device_batch", type=int, default=2)
  parser.add_argument("--steps", type=int, default=5, help="Timed train steps per N.")
  parser.add_argument("--timeout", type=float, default=1800.0, help="Seconds per N.")
  parser.add_argument("--json_out", default=None, help="Also write the rows here.")
  args, rest = parser.parse_known_args(argv)
  unknown = [a for a in rest if not a.startswith("--config.")]
  if unknown:
    parser.error(f"unrecognised arguments {unknown} (only --config.* overrides pass "
                 "through to throughput.py)")
  try:
    args.devices = [int(n) for n in args.devices.split(",")]
  except ValueError:
    parser.error(f"--devices={args.devices!r}: give comma-separated integers, e.g. 1,2,4,8")
  if not args.devices or min(args.devices) < 1:
    parser.error(f"--devices={args.devices}: every device count must be >= 1")
  if args.per_device_batch < 1 or args.steps < 1:
    parser.error("--per_device_batch and --steps must be >= 1")
  return args, rest


def main(argv: list[str]) -> None:
  args, overrides = parse_args(argv)
  results = []
  for n in args.devices:
    results.append(run_one(n, args.per_device_batch, args.config, overrides, args.steps,
                           args.timeout))
    print(f"N={n}: {results[-1]['images_per_sec']:.2f} images/s", file=sys.stderr,
          flush=True)
  rows = table_rows(results)
  print(f"config {args.config} {' '.join(overrides)}; per-device batch "
        f"{args.per_device_batch}; {os.cpu_count()} CPU cores shared by all devices")
  print(format_table(rows))
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(dict(config=args.config, overrides=overrides,
                     per_device_batch=args.per_device_batch, cpu_cores=os.cpu_count(),
                     rows=rows), f, indent=2)


if __name__ == "__main__":
  main(sys.argv[1:])
