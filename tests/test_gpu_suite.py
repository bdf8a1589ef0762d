"""benchmarks/gpu_suite.py: its parts run, write their figures, and a part that cannot
run says why (the suite itself runs here with --smoke: seconds-sized networks)."""
from __future__ import annotations

import importlib.util
import json
import os

import pytest

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "benchmarks", "gpu_suite.py")


@pytest.fixture(scope="module")
def suite():
  spec = importlib.util.spec_from_file_location("gpu_suite", _PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_part_is_planned_and_vs_diffusers_needs_cuda_torch(suite, tmp_path):
  names = [name for name, _ in suite.parts(False, 70.0)]
  assert names == ["train_fp32", "train_bf16", "memory", "memory_remat", "ddim",
                   "dpm_solver", "vs_diffusers"]
  commands = dict(suite.parts(False, 70.0))
  assert "--config.model.dtype=bfloat16" in commands["train_bf16"]
  assert "--config.model.remat=True" in commands["memory_remat"]
  assert "--memory_budget_gib=70" in commands["memory"]
  results = suite.main([f"--out={tmp_path}", "--only=vs_diffusers"])
  part = results["parts"]["vs_diffusers"]
  if results["environment"]["torch_cuda"]:
    pytest.skip("this machine has torch with CUDA")
  assert part == dict(status="skipped", reason="torch with CUDA is not installed on "
                      "this machine")
  assert json.load(open(tmp_path / "gpu_suite.json"))["parts"] == results["parts"]
  results = suite.main([f"--out={tmp_path}", "--only=ddim", "--budget_s=5"])
  assert results["parts"]["ddim"]["status"] == "skipped"   # past the budget
  assert "| ddim | skipped | the time budget ran out |" in suite.table(results)


@pytest.mark.integration
def test_smoke_run_writes_the_figures_of_each_part(suite, tmp_path):
  results = suite.main([f"--out={tmp_path}", "--smoke", "--only=train_fp32,dpm_solver",
                        "--budget_s=600"])
  train, solver = results["parts"]["train_fp32"], results["parts"]["dpm_solver"]
  assert train["status"] == "ok" and solver["status"] == "ok", results
  assert train["train_images_per_s"] > 0 and 0 < train["flops_ratio"]
  assert train["dtype"] == "float32" and train["jax_version"]
  assert solver["sampler"] == "dpm_solver" and solver["sampler_nfe"] == 3
  assert solver["sample_images_per_s"] > 0
  table = suite.table(results)
  assert "| train_fp32 | ok" in table and "| dpm_solver | ok" in table
