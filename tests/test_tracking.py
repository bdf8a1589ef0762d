"""Experiment tracking and profiling: the W&B writer (offline), the profiler window.

The W&B tests run wandb in offline mode and read back the run file it writes
(`run-<id>.wandb`: W&B's header, then LevelDB-log framed protobuf records), parsed
here, so a scalar is checked where wandb stored it, not where we handed it over.
"""

from __future__ import annotations

import glob
import json
import os
import struct
import subprocess
import sys

import pytest

from train import loop, run as run_lib, user_errors, wandb_writer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ W&B run files
def wandb_records(path: str):
  """The protobuf Records of one offline run file, in order."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top
  with open(path, "rb") as f:
    data = f.read()
  assert data[:4] == b":W&B", path
  block, pos, partial = 32768, 7, b""   # 7: ident, magic, version
  while pos + 7 <= len(data):
    left = block - pos % block
    if left < 7:   # a block's tail too short for a header is zero padding
      pos += left
      continue
    length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
    partial += data[pos + 7:pos + 7 + length]
    pos += 7 + length
    if kind in (1, 4):   # FULL, or the LAST piece of a record split over blocks
      record = wandb_internal_pb2.Record()
      record.ParseFromString(partial)
      partial = b""
      yield record


def offline_runs(wandb_dir: str) -> list[dict]:
  """Each offline run under wandb_dir: its id, history rows and config."""
  runs = []
  for path in sorted(glob.glob(os.path.join(wandb_dir, "wandb", "offline-run-*",
                                            "run-*.wandb"))):
    found = dict(ids=set(), history=[], config={})
    for record in wandb_records(path):
      kind = record.WhichOneof("record_type")
      if kind == "run":
        found["ids"].add(record.run.run_id)
      elif kind == "history":
        found["history"].append({item.key or "/".join(item.nested_key):
                                 json.loads(item.value_json)
                                 for item in record.history.item})
      elif kind == "config":
        found["config"].update({u.key: json.loads(u.value_json)
                                for u in record.config.update})
    runs.append(found)
  return runs


def scalar_rows(run: dict, name: str) -> dict[int, float]:
  return {row["step"]: row[name] for row in run["history"] if name in row}


# --------------------------------------------------------------------- unit tests
def test_run_id_is_made_once_and_kept_in_the_workdir(tmp_path):
  first = wandb_writer.run_id(str(tmp_path / "w"))
  assert first == wandb_writer.run_id(str(tmp_path / "w"))
  assert (tmp_path / "w" / wandb_writer.RUN_ID_FILE).read_text().strip() == first
  assert len(first) == 12 and first.isalnum() and first == first.lower()
  assert wandb_writer.run_id(str(tmp_path / "other")) != first


def test_a_damaged_run_id_file_is_a_user_error(tmp_path):
  (tmp_path / wandb_writer.RUN_ID_FILE).write_text("../etc/passwd")
  with pytest.raises(user_errors.UserError, match="not a W&B run id"):
    wandb_writer.run_id(str(tmp_path))


def test_wandb_pin_matches_requirements_test():
  with open(os.path.join(REPO, "requirements-test.txt")) as f:
    pins = [line.strip() for line in f if line.startswith("wandb==")]
  assert pins == [wandb_writer.WANDB_PIN]


def _config(**logging):
  from tests.test_train_loop import tiny_config  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  for key, value in logging.items():
    config.logging[key] = value
  return config


@pytest.mark.parametrize("field", ["profile_start_step", "profile_num_steps"])
def test_negative_profile_steps_are_refused(field):
  with pytest.raises(ValueError, match=f"config.logging.{field} must be >= 0"):
    run_lib.validate_config(_config(**{field: -1}))


def test_wandb_without_the_package_is_a_one_line_error(monkeypatch):
  real = run_lib.importlib.util.find_spec
  monkeypatch.setattr(run_lib.importlib.util, "find_spec",
                      lambda name, *a: None if name == "wandb" else real(name, *a))
  with pytest.raises(user_errors.UserError, match=r"pip install wandb==\d"):
    run_lib.validate_config(_config(wandb=True))
  run_lib.validate_config(_config(wandb=False))   # off: never looked for


@pytest.mark.parametrize("start, num, k, expected", [
    (3, 4, 1, [("start", 3), ("stop", 7)]),    # steps 4..7
    (3, 4, 2, [("start", 4), ("stop", 8)]),    # boundaries of 2-step calls
    (0, 2, 1, [("start", 0), ("stop", 2)]),    # from the first step (compilation)
    (8, 4, 1, []),                             # after the run's last step
    (3, 0, 1, []),                             # off
])
def test_profile_window_starts_and_stops_at_step_boundaries(monkeypatch, start, num,
                                                            k, expected):
  events, step = [], 0
  monkeypatch.setattr(loop.jax.profiler, "start_trace",
                      lambda directory: events.append(("start", step)))
  monkeypatch.setattr(loop.jax.profiler, "stop_trace",
                      lambda: events.append(("stop", step)))
  window = loop._ProfileWindow(_config(profile_start_step=start,
                                       profile_num_steps=num), "/tmp/w")
  while step < 8:
    window.before_call(step)
    step += k
    window.after_call(step, state=None)
  window.end(step)
  assert events == expected


# ------------------------------------------------------------ through the loop
@pytest.mark.integration
def test_training_logs_to_wandb_offline_and_resumes_the_same_run(tmp_path,
                                                                 monkeypatch,
                                                                 fast_compile):
  pytest.importorskip("wandb")
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
  monkeypatch.setenv("WANDB_SILENT", "true")
  (tmp_path / "wandb_dir").mkdir()
  workdir = str(tmp_path / "w")
  config = _config(wandb=True, wandb_project="tests")
  config.training.sample_every_steps = 4
  loop.train_and_evaluate(config, workdir)
  config.training.num_train_steps = 6
  loop.train_and_evaluate(config, workdir)

  run_id = (tmp_path / "w" / wandb_writer.RUN_ID_FILE).read_text().strip()
  runs = offline_runs(str(tmp_path / "wandb_dir"))
  # Training, its final eval, the resumed training and its eval: one W&B run id.
  assert len(runs) == 4 and all(r["ids"] == {run_id} for r in runs)
  with open(os.path.join(workdir, "eval", "step_00000004.json")) as f:
    bpd_4 = json.load(f)["bpd_vlb"]
  with open(os.path.join(workdir, "eval", "step_00000006.json")) as f:
    bpd_6 = json.load(f)["bpd_vlb"]
  first, eval_4, resumed, eval_6 = runs
  assert sorted(scalar_rows(first, "loss")) == [2, 4]
  assert sorted(scalar_rows(resumed, "loss")) == [6]
  assert scalar_rows(eval_4, "eval/bpd_vlb") == {4: pytest.approx(bpd_4)}
  assert scalar_rows(eval_6, "eval/bpd_vlb") == {6: pytest.approx(bpd_6)}
  # The same losses as TensorBoard gets: the steps/s row is there too.
  assert all(r["steps_in_mean"] == 2 for r in first["history"] if "loss" in r)
  # The sample grid is an image file of the run; hyperparameters are its config.
  grid = [r for r in first["history"] if "samples/path" in r]
  assert [r["step"] for r in grid] == [4] and grid[0]["samples/_type"] == "image-file"
  assert first["config"]["training.batch_size"] == 8
  assert first["config"]["name"] == "ddpm_digits"


_TRAIN_AND_REPORT = """
import json, sys
from tests.test_tracking import _config
from train import loop
config = _config(profile_start_step=2, profile_num_steps=2)
loop.train_and_evaluate(config, sys.argv[1])
print("IMPORTED", json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in
                                    ("wandb", "submitit"))))
"""


@pytest.mark.integration
def test_profile_window_writes_a_trace_and_wandb_is_never_imported(tmp_path):
  from tests.test_train_loop import cli_env  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "w")
  result = subprocess.run([sys.executable, "-c", _TRAIN_AND_REPORT, workdir],
                          cwd=REPO, env=cli_env(), capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  imported = [line for line in result.stdout.splitlines()
              if line.startswith("IMPORTED")]
  assert imported == ["IMPORTED []"], result.stdout[-2000:]
  traces = glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*",
                                  "*.xplane.pb"))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 1000
