"""benchmarks/digits_table.py: row selection, commands, eval JSON -> table (no training)."""
import json
import os

import pytest

from benchmarks import digits_table as dt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CLASSES = [str(i) for i in range(10)]
_PROTOCOL = {
    "num_samples": 128,
    "feature_nets": {"classifier": {"name": "classifier/digits/8px", "classes": _CLASSES}},
    "reference": {"classifier": {"dataset": "digits", "split": "train",
                                 "num_examples": 1442}},
    "sampler": {"sampler": "ancestral", "clip_denoised": True, "num_timesteps": 250,
                "use_ema": True, "var_type": "fixedlarge", "nfe": 250, "seed": 42,
                "params": "ema"},
}
_DDPM_EMA = dict(config_name="ddpm_digits", step=200, dataset="digits", split="test",
                 params="ema", num_examples=100, protocol=_PROTOCOL, bpd_vlb=13.907409,
                 decoder_bpd=2.3, prior_bpd=1e-5, classifier_fd=133.91537,
                 class_coverage=0.6, class_kl_uniform=0.3767)
_DDPM_RAW = dict(config_name="ddpm_digits", step=200, dataset="digits", split="test",
                 params="raw", num_examples=100, bpd_vlb=5.12345)


def _keys(spec):
  return [row.key for row in dt.select_rows(spec)]


def test_rows_are_well_formed():
  keys = [row.key for row in dt.ROWS]
  assert len(set(keys)) == len(keys)
  assert len({row.long_key for row in dt.ROWS}) == len(keys)
  for row in dt.ROWS:
    assert row.evals
    # A key that is also a family name is a row of that family (the family selects it).
    assert row.key not in dt.FAMILIES or row.family == row.key
    assert os.path.isfile(os.path.join(REPO, row.config.split(":")[0])), row.config
    assert row.needs is None or row.needs in keys
    assert row.extra or row.readme, row.key


def test_families_select_readme_rows_in_table_order():
  assert _keys("ddpm,vae,pixelcnn,gan") == ["ddpm", "iddpm", "iddpm:vlb", "pixelcnn",
                                            "gan", "vae"]
  assert _keys("gan,ddpm_digits") == ["ddpm", "gan"]
  assert _keys("autoregressive") == ["pixelcnn", "gated_pixelcnn", "pixelrnn",
                                     "pixelrnn:row_lstm", "pixelcnnpp"]
  assert _keys("score_digits:vp, score:ve") == ["score:vp", "score:ve"]
  everything = _keys("all")
  assert everything == _keys("") and "guided_ddpm" not in everything
  assert len(everything) == len(dt.ROWS) - 1
  assert _keys("guided_ddpm") == ["guided_ddpm"]
  assert _keys("guided_ddpm_digits") == ["guided_ddpm"]
  assert _keys("vqvae:prior") == ["vqvae", "vqvae:prior"]   # stage 1 comes along
  with pytest.raises(ValueError, match="'pixelcnnx' names no row"):
    dt.select_rows("pixelcnnx")


def _flags(cmd):
  return dict(arg[2:].split("=", 1) for arg in cmd[2:])


def test_commands_quick_settings_and_eval_overrides():
  rows = {row.key: row for row in dt.ROWS}
  workdirs = {"vqvae": "/w/vqvae"}
  full = dt.command(rows["ddpm"], 0, "/w/ddpm", quick=False, seed=42, workdirs={},
                    python="py")
  assert full == ["py", "main.py", "--config=configs/ddpm_digits.py", "--workdir=/w/ddpm",
                  "--mode=train", "--config.seed=42"]
  quick = _flags(dt.command(rows["ddpm"], 0, "/w/ddpm", quick=True, seed=7, workdirs={}))
  assert quick["config.seed"] == "7"
  for field, value in dt.QUICK_OVERRIDES:
    assert quick[f"config.{field}"] == str(value)
  # The raw-weights bound of ddpm: --mode=eval, no sample metrics.
  raw = dt.command(rows["ddpm"], 1, "/w/ddpm", quick=True, seed=42, workdirs={})
  assert "--mode=eval" in raw
  assert _flags(raw)["config.sampling.use_ema"] == "False"
  assert _flags(raw)["config.eval.sample_metrics"] == "none"
  # Row overrides under the quick ones: vdm's 2,500 steps become 200.
  assert _flags(dt.command(rows["vdm"], 0, "/w", quick=False, seed=42, workdirs={}))[
      "config.training.num_train_steps"] == "2500"
  assert _flags(dt.command(rows["vdm"], 0, "/w", quick=True, seed=42, workdirs={}))[
      "config.training.num_train_steps"] == "200"
  # A sample-only evaluation overrides the quick test-set size; each flag once.
  dpm = dt.command(rows["score:vp"], 1, "/w", quick=True, seed=42, workdirs={})
  names = [arg.split("=")[0] for arg in dpm]
  assert len(names) == len(set(names))
  assert _flags(dpm)["config.eval.num_eval_examples"] == "8"
  assert _flags(dpm)["config.sampling.method"] == "dpm_solver"
  assert _flags(dt.command(rows["vae"], 0, "/w", quick=True, seed=42, workdirs={}))[
      "config.eval.iwae_samples"] == "100"
  prior = dt.command(rows["vqvae:prior"], 0, "/w/p", quick=False, seed=42,
                     workdirs=workdirs)
  assert _flags(prior)["config.vq.autoencoder_workdir"] == "/w/vqvae"
  assert prior[2] == "--config=configs/vqvae_digits.py:prior"


def test_read_eval_json_takes_the_newest_step(tmp_path):
  (tmp_path / "eval").mkdir()
  for step in (200, 1000, 30):
    (tmp_path / "eval" / f"step_{step:08d}.json").write_text(json.dumps({"step": step}))
  assert dt.read_eval_json(str(tmp_path))["step"] == 1000
  with pytest.raises(FileNotFoundError):
    dt.read_eval_json(str(tmp_path / "none"))


def test_eval_json_cells():
  assert dt.likelihood_parts(_DDPM_EMA) == ["13.9074 (VLB, EMA)"]
  assert dt.sample_part(_DDPM_EMA) == ("ancestral, 250 NFE, EMA: FD 133.915, 6/10 "
                                       "classes, KL to uniform 0.377")
  assert dt.sample_part(_DDPM_RAW) == ""
  vae = dict(params="ema", bpd_elbo=3.675, bpd_iwae=3.5391)
  assert dt.likelihood_parts(vae, iwae_samples=1000) == [
      "3.6750 (ELBO, EMA)", "3.5391 (IWAE k=1000, EMA)"]
  ode = dict(params="ema", bpd_ode=5.15, likelihood_nfe=409.2)
  assert dt.likelihood_parts(ode) == ["5.1500 (ODE, 409 NFE, EMA)"]
  assert dt.likelihood_parts(dict(params="raw", bpd=4.37), "uniform prior") == [
      "4.3700 (uniform prior, raw)"]
  pc = dict(_DDPM_EMA, protocol=dict(_PROTOCOL, sampler=dict(
      sampler="pc", predictor="reverse_diffusion", corrector="langevin", nfe=1000,
      nfe_measured=1000.0, seed=42, params="ema")))
  assert dt.sample_part(pc).startswith("pc reverse_diffusion+langevin, 1000 NFE, EMA:")
  note = dt.protocol_note(_DDPM_EMA, dt.Eval("EMA"))
  assert note == ("bits/dim on digits/test, 100 examples, EMA weights; 128 samples, "
                  "sampler ancestral, NFE 250, seed 42, EMA weights (clip_denoised=True, "
                  "num_timesteps=250, var_type=fixedlarge), FD reference digits/train "
                  "(1442 images)")


def _ddpm_result():
  row = next(row for row in dt.ROWS if row.key == "ddpm")
  return dt.RowResult(row, "/w/ddpm", [
      dt.EvalResult(row.evals[0], ["cmd"], 95.4, _DDPM_EMA),
      dt.EvalResult(row.evals[1], ["cmd"], 30.0, _DDPM_RAW)])


def test_markdown_table_rows_and_footnotes():
  gan_row = next(row for row in dt.ROWS if row.key == "gan")
  failed = dt.RowResult(gan_row, "/w/gan", [
      dt.EvalResult(gan_row.evals[0], ["cmd"], 12.0, None, error="exit status 1")])
  prior = next(row for row in dt.ROWS if row.key == "vqvae:prior")
  skipped = dt.RowResult(prior, "/w/p", skipped="vqvae_digits (stage 1) failed")
  text = dt.markdown_table([_ddpm_result(), failed, skipped])
  lines = text.splitlines()
  assert lines[0] == ("| row | steps | bits/dim (test; bound, weights) | sample quality "
                      "(digits classifier) | wall time | protocol |")
  assert lines[2] == ("| `ddpm_digits` | 200 | 13.9074 (VLB, EMA); 5.1235 (VLB, raw) | "
                      "ancestral, 250 NFE, EMA: FD 133.915, 6/10 classes, KL to uniform "
                      "0.377 | 2m05s | [1] |")
  assert lines[3] == ("| `gan_digits` | ? |  | FAILED: EMA: exit status 1 | 12s | [2] |")
  assert "not run: vqvae_digits (stage 1) failed" in lines[4]
  assert lines[6].startswith("[1] `ddpm_digits`: `configs/ddpm_digits.py`, workdir "
                             "`/w/ddpm`. EMA (train + eval, 1m35s): bits/dim on "
                             "digits/test, 100 examples, EMA weights; 128 samples")
  assert ("raw (--mode=eval, 30s) [sampling.use_ema=False, eval.sample_metrics=none]: "
          "bits/dim on digits/test, 100 examples, raw weights.") in lines[6]
  assert lines[7].startswith("[2] `gan_digits`") and "failed, exit status 1" in lines[7]
  assert all(line.count("|") == 7 for line in lines[:5])   # six columns
  with_readme = dt.markdown_table([_ddpm_result()], show_readme=True).splitlines()
  assert "| README |" in with_readme[0]
  assert with_readme[2].endswith("| 4.80 (VLB, EMA); 4.73 (raw); ancestral 250 steps: "
                                 "FD 1.85, 10/10 | [1] |")


def test_format_seconds():
  assert [dt.format_seconds(s) for s in (0.4, 59.6, 60, 3725)] == [
      "0s", "1m00s", "1m00s", "62m05s"]


def test_main_runs_rows_and_moves_each_eval_aside(tmp_path, monkeypatch, capsys):
  """main() with main.py faked: each command 'writes' an eval JSON; vae's fails."""
  calls = []

  def fake_run(cmd, log_path):
    calls.append(cmd)
    flags = dict(a[2:].split("=", 1) for a in cmd if a.startswith("--") and "=" in a)
    workdir = flags.get("workdir")
    if workdir is None:                     # the classifier preparation
      return 0, 1.0
    if "vae" in flags["config"]:
      return 1, 2.0
    assert not os.path.exists(os.path.join(workdir, "eval"))   # fresh samples
    os.makedirs(os.path.join(workdir, "eval"))
    raw = flags.get("config.sampling.use_ema") == "False"
    with open(os.path.join(workdir, "eval", "step_00000200.json"), "w") as f:
      json.dump(_DDPM_RAW if raw else _DDPM_EMA, f)
    return 0, 3.0

  monkeypatch.setattr(dt, "_run", fake_run)
  out = tmp_path / "table.md"
  code = dt.main(["--quick", "--families=ddpm_digits,vae", f"--workdir_root={tmp_path}/w",
                  f"--out={out}", f"--json_out={tmp_path}/t.json"])
  assert code == 1                           # vae failed
  assert len(calls) == 4                     # prepare, ddpm train, ddpm eval, vae train
  assert sorted(os.listdir(tmp_path / "w" / "ddpm")) == ["eval_0_ema", "eval_1_raw"]
  text = out.read_text()
  assert text == capsys.readouterr().out
  assert "| `ddpm_digits` | 200 | 13.9074 (VLB, EMA); 5.1235 (VLB, raw) |" in text
  assert "| `vae_digits` | ? |  | FAILED: EMA: exit status 1" in text
  saved = json.loads((tmp_path / "t.json").read_text())
  assert [r["key"] for r in saved["rows"]] == ["ddpm", "vae"]
  # The same workdir root again would resume the runs: refused.
  with pytest.raises(SystemExit):
    dt.main(["--families=ddpm_digits", f"--workdir_root={tmp_path}/w"])
