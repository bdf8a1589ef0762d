"""notebooks/quickstart.ipynb runs, top to bottom, on a freshly trained tiny digits DDPM.

Its code cells are executed in order in one namespace (what Jupyter's "Run all"
does), without Jupyter: the workdir and the tiny model's overrides reach the notebook
through the environment variables it reads.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from configs import ddpm_digits
from train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "quickstart.ipynb")
# A seconds-long model: what the notebook is told it was trained with.
OVERRIDES = {
    "model.ch": 8, "model.ch_mult": [1, 2], "model.num_res_blocks": 1,
    "model.attn_resolutions": [4], "model.num_groups": 4,
    "diffusion.num_timesteps": 10, "optim.warmup_steps": 2,
    "training.batch_size": 8, "training.num_train_steps": 4,
    "training.log_every_steps": 2, "training.checkpoint_every_steps": 2,
    "training.sample_every_steps": 0, "training.async_checkpointing": False,
    "eval.num_eval_examples": 16, "eval.batch_size": 8, "eval.vlb_timestep_chunk": 5,
    "eval.sample_metrics": "none",
    "eval.quick_sampling": "",   # ddpm_digits' quick DDIM-50 needs T >= 50
}


def code_cells(path: str) -> list[str]:
  with open(path) as f:
    notebook = json.load(f)
  assert notebook["nbformat"] == 4
  return ["".join(cell["source"]) for cell in notebook["cells"]
          if cell["cell_type"] == "code"]


def test_notebook_cells_are_valid_python_and_read_their_settings_from_the_environment():
  cells = code_cells(NOTEBOOK)
  for i, source in enumerate(cells):
    compile(source, f"{NOTEBOOK} cell {i}", "exec")
  setup = cells[0]
  for name in ("QUICKSTART_WORKDIR", "QUICKSTART_OVERRIDES", "QUICKSTART_NUM_SAMPLES"):
    assert name in setup


@pytest.mark.integration
def test_quickstart_notebook_runs_on_a_trained_digits_model(tmp_path, monkeypatch,
                                                            fast_compile):
  workdir = str(tmp_path / "ddpm_digits")
  config = ddpm_digits.get_config()
  config.update_from_flattened_dict(
      {k: tuple(v) if isinstance(v, list) else v for k, v in OVERRIDES.items()})
  loop.train_and_evaluate(config, workdir)

  monkeypatch.setenv("QUICKSTART_WORKDIR", workdir)
  monkeypatch.setenv("QUICKSTART_OVERRIDES", json.dumps(OVERRIDES))
  monkeypatch.setenv("QUICKSTART_NUM_SAMPLES", "32")
  monkeypatch.chdir(os.path.join(REPO, "notebooks"))   # where Jupyter starts it
  namespace: dict = {"__name__": "__quickstart__"}
  for i, source in enumerate(code_cells(NOTEBOOK)):
    exec(compile(source, f"quickstart.ipynb cell {i}", "exec"), namespace)  # pylint: disable=exec-used

  out = os.path.join(workdir, "quickstart")
  with open(os.path.join(out, "results.json")) as f:
    results = json.load(f)
  assert results["step"] == 4 and results["num_samples"] == 32
  assert math.isfinite(results["classifier_fd"]) and results["classifier_fd"] > 0
  assert 0 < results["class_coverage"] <= 1
  samples = np.load(os.path.join(out, "samples.npz"))["arr_0"]
  assert samples.shape == (32, 8, 8, 1) and samples.dtype == np.uint8
  assert os.path.getsize(results["samples"]) > 0
  # Interpolation: 4 pairs x 8 points; the picture of the rows beside them.
  interpolations = np.load(os.path.join(results["interpolations"], "samples.npz"))
  assert interpolations["arr_0"].shape == (32, 8, 8, 1)
  assert os.path.exists(os.path.join(results["interpolations"], "interpolations.png"))
  # Inpainting the left half keeps the right half of each input exactly.
  inputs = np.load(os.path.join(out, "ends_a.npz"))["arr_0"]
  inpainted = np.load(os.path.join(results["inpainting"], "samples.npz"))["arr_0"]
  assert inpainted.shape == inputs.shape == (4, 8, 8, 1)
  np.testing.assert_array_equal(inpainted[:, :, 4:], inputs[:, :, 4:])
  assert not np.array_equal(inpainted[:, :, :4], inputs[:, :, :4])
