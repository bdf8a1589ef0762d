"""Every figure the performance work needs from an accelerator, in one bounded run.

  bash benchmarks/gpu_suite.sh                      # = python benchmarks/gpu_suite.py
  python benchmarks/gpu_suite.py --out=/tmp/gpu --budget_s=480
  python benchmarks/gpu_suite.py --smoke            # seconds-sized shapes, any CPU

Runs, each as its own process (benchmarks/throughput.py, benchmarks/vs_diffusers.py)
under one time budget (default 8 minutes; a part that would start past it is skipped
and says so):

  train_fp32 / train_bf16   ddpm_cifar's train step: images/s, compile time, FLOP/s
                            against a bf16 matmul's on the same device
  memory / memory_remat     peak memory per training image and the largest batch that
                            fits the device, without and with rematerialisation
  ddim / dpm_solver         sampling images/s: DDIM 50 steps (ddpm_cifar), DPM-Solver++
                            20 steps (ddpmpp_cifar)
  vs_diffusers              the same U-Net's train step in diffusers on the same GPU,
                            when torch with CUDA is installed there (else: why not)

It writes <out>/gpu_suite.json (the environment and every part's figures, or its
error) and prints one table. Keep the results in benchmarks/README.md with the device,
the JAX version and the date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_THROUGHPUT = os.path.join(_ROOT, "benchmarks", "throughput.py")
_VS_DIFFUSERS = os.path.join(_ROOT, "benchmarks", "vs_diffusers.py")
_DDPM = os.path.join(_ROOT, "configs", "ddpm_cifar.py")
_DDPMPP = os.path.join(_ROOT, "configs", "ddpmpp_cifar.py")
# --smoke: the digits networks at their smallest (the DDPM U-Net and NCSN++ share these
# field names), so that every part runs in seconds on a CPU.
_SMOKE_CONFIG = os.path.join(_ROOT, "configs", "ddpm_digits.py")
_SMOKE_SCORE_CONFIG = os.path.join(_ROOT, "configs", "score_digits.py")
_SMOKE_MODEL = ["--config.model.ch=8", "--config.model.ch_mult=(1,)",
                "--config.model.num_res_blocks=1", "--config.model.attn_resolutions=()"]


def parts(smoke: bool, memory_budget_gib: float) -> list[tuple[str, list[str]]]:
  """(name, command) of every part, in the order they run."""
  py = sys.executable
  ddpm, ddpmpp = (_SMOKE_CONFIG, _SMOKE_SCORE_CONFIG) if smoke else (_DDPM, _DDPMPP)
  model = _SMOKE_MODEL if smoke else []
  train = (["--steps=2", "--matmul_size=256", "--config.training.batch_size=4"] if smoke
           else ["--steps=30", "--matmul_size=8192"])
  memory_batches = "4,8" if smoke else "128,512"
  sample = (["--config.sampling.batch_size=4"] if smoke
            else ["--config.sampling.batch_size=256"])
  ddim_steps = 3 if smoke else 50
  solver_steps = 3 if smoke else 20
  no_train = ["--steps=0", "--matmul_size=0"]
  return [
      ("train_fp32", [py, _THROUGHPUT, f"--config={ddpm}", *model, *train,
                      "--sample_batches=0"]),
      ("train_bf16", [py, _THROUGHPUT, f"--config={ddpm}", *model, *train,
                      "--sample_batches=0", "--config.model.dtype=bfloat16"]),
      ("memory", [py, _THROUGHPUT, f"--config={ddpm}", *model, *no_train,
                  "--sample_batches=0", f"--memory_batches={memory_batches}",
                  f"--memory_budget_gib={memory_budget_gib:g}"]),
      ("memory_remat", [py, _THROUGHPUT, f"--config={ddpm}", *model, *no_train,
                        "--sample_batches=0", f"--memory_batches={memory_batches}",
                        f"--memory_budget_gib={memory_budget_gib:g}",
                        "--config.model.remat=True"]),
      ("ddim", [py, _THROUGHPUT, f"--config={ddpm}", *model, *no_train, *sample,
                "--sample_batches=2", "--config.sampling.method=ddim",
                f"--config.sampling.ddim_steps={ddim_steps}"]),
      ("dpm_solver", [py, _THROUGHPUT, f"--config={ddpmpp}", *no_train, *sample,
                      *model,
                      "--sample_batches=2", "--config.sampling.method=dpm_solver",
                      f"--config.sampling.num_steps={solver_steps}"]),
      ("vs_diffusers", [py, _VS_DIFFUSERS, f"--config={ddpm}", *model,
                        *(["--batch=2", "--rounds=1", "--ddim_steps=2"] if smoke
                          else ["--batch=128", "--rounds=3", "--ddim_rounds=1"])]),
  ]


def environment() -> dict[str, Any]:
  """JAX, its devices and their memory; whether torch sees a CUDA device."""
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  env = dict(date=datetime.date.today().isoformat(), jax=jax.__version__,
             backend=jax.default_backend(), device=device.device_kind,
             device_count=jax.device_count(),
             device_memory_gib=(stats or {}).get("bytes_limit", 0) / 2**30)
  try:
    import torch  # pylint: disable=g-import-not-at-top
    env["torch"] = torch.__version__
    env["torch_cuda"] = bool(torch.cuda.is_available())
  except ImportError:
    env["torch"], env["torch_cuda"] = None, False
  return env


def run_part(name: str, command: list[str], out_dir: str, timeout_s: float,
             env: dict[str, str]) -> dict[str, Any]:
  """Runs one part; its figures from its --json_out, or why there are none."""
  json_path = os.path.join(out_dir, f"{name}.json")
  log_path = os.path.join(out_dir, f"{name}.log")
  start = time.perf_counter()
  with open(log_path, "w") as log:
    try:
      rc = subprocess.run([*command, f"--json_out={json_path}"], stdout=log,
                          stderr=subprocess.STDOUT, timeout=timeout_s, env=env,
                          cwd=_ROOT).returncode
    except subprocess.TimeoutExpired:
      rc = "timeout"
  seconds = time.perf_counter() - start
  if rc != 0 or not os.path.exists(json_path):
    with open(log_path) as f:
      tail = f.read().strip().splitlines()[-1:] or [""]
    return dict(status="failed", returncode=rc, seconds=seconds, last_line=tail[0])
  with open(json_path) as f:
    return dict(status="ok", seconds=seconds, **json.load(f))


def table(results: dict[str, Any]) -> str:
  """One line per part: what was measured and the figure."""
  rows = []
  for name, r in results["parts"].items():
    if r["status"] != "ok":
      rows.append(f"| {name} | {r['status']} | {r.get('reason') or r.get('last_line')} |")
      continue
    if name.startswith("train"):
      what = (f"{r['train_images_per_s']:.1f} images/s (batch {r['train_batch']}), "
              f"compile {r['compile_seconds']:.1f} s")
      if "flops_ratio" in r:
        what += (f", {r['train_flops_per_s'] / 1e12:.1f} TFLOP/s = "
                 f"{r['flops_ratio']:.1%} of a matmul's")
    elif name.startswith("memory"):
      m = r["memory"]
      what = (f"{m['mib_per_image']:.2f} MiB per image + {m['fixed_mib']:.0f} MiB; "
              f"largest batch in {m['budget_gib']:.0f} GiB: {m['largest_batch']}")
    elif name == "vs_diffusers":
      what = "; ".join(f"{k}: {v['ratio']:.2f}x" for k, v in r.items()
                       if isinstance(v, dict) and "ratio" in v)
    else:
      what = (f"{r['sample_images_per_s']:.1f} images/s ({r['sampler']}, "
              f"{r['sampler_nfe']} NFE, batch {r['sample_batch']}), first call "
              f"{r['sample_first_call_seconds']:.1f} s")
    rows.append(f"| {name} | ok ({r['seconds']:.0f} s) | {what} |")
  e = results["environment"]
  head = (f"{e['device']} x{e['device_count']} ({e['backend']}), JAX {e['jax']}, "
          f"torch {e['torch']} (CUDA: {e['torch_cuda']}), {e['date']}\n\n"
          "| part | status | figures |\n|---|---|---|")
  return "\n".join([head, *rows])


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=os.path.join(_ROOT, "benchmarks", "gpu_out"))
  parser.add_argument("--budget_s", type=float, default=480.0,
                      help="wall-clock budget of the whole suite (seconds)")
  parser.add_argument("--smoke", action="store_true",
                      help="seconds-sized networks: checks the suite itself on a CPU")
  parser.add_argument("--only", default="", help="comma-separated part names")
  args = parser.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  start = time.perf_counter()
  env_info = environment()
  # The memory parts' budget: the device's memory, less a margin for the runtime.
  budget_gib = max(env_info["device_memory_gib"] * 0.9, 1.0) if not args.smoke else 1.0
  child_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  results: dict[str, Any] = dict(environment=env_info, parts={})
  only = {p for p in args.only.split(",") if p}
  for name, command in parts(args.smoke, budget_gib):
    if only and name not in only:
      continue
    left = args.budget_s - (time.perf_counter() - start)
    if name == "vs_diffusers" and not (env_info["torch_cuda"] or args.smoke):
      results["parts"][name] = dict(status="skipped", reason="torch with CUDA is not "
                                    "installed on this machine")
    elif left < 20:
      results["parts"][name] = dict(status="skipped", reason="the time budget ran out")
    else:
      results["parts"][name] = run_part(name, command, args.out, left, child_env)
    print(f"{name}: {results['parts'][name]['status']}", flush=True)
  results["seconds"] = time.perf_counter() - start
  path = os.path.join(args.out, "gpu_suite.json")
  with open(path, "w") as f:
    json.dump(results, f, indent=1)
  print(table(results))
  print(f"wrote {path} ({results['seconds']:.0f} s)")
  return results


if __name__ == "__main__":
  main()
