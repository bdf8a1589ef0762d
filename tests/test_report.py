"""evaluation.report on synthetic eval JSONs, and the published tables it draws on."""
import ast
import glob
import json
import os
import re

import pytest

from evaluation import paper_tables
from evaluation import report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(workdir, step, **fields):
  os.makedirs(workdir / "eval", exist_ok=True)
  with open(workdir / "eval" / f"step_{step:08d}.json", "w") as f:
    json.dump(dict(step=step, **fields), f)


_PROTOCOL = {
    "num_samples": 50000, "precision": "highest", "is_splits": 10,
    "feature_nets": {"inception": {
        "name": "inception-2015-12-05-pool3-tf1", "weights_sha256": "ab" * 32,
        "resize": "TF1 resize_bilinear(align_corners=False), no antialiasing to "
                  "299x299"}},
    "reference": {"inception": {"dataset": "cifar10", "split": "train",
                                "num_examples": 50000}},
}


@pytest.fixture
def workdirs(tmp_path):
  ddpm, pixelcnn, digits = tmp_path / "ddpm", tmp_path / "pcnn", tmp_path / "dig"
  _write(ddpm, 1000, config_name="ddpm_cifar", dataset="cifar10", split="test",
         num_examples=10000, params="ema", bpd_vlb=3.9, prior_bpd=0.00012,
         fid=30.5, is_std=0.1, protocol=_PROTOCOL, **{"is": 7.25})
  _write(ddpm, 2000, config_name="ddpm_cifar", dataset="cifar10", split="test",
         num_examples=10000, params="ema", bpd_vlb=3.71234, fid=3.2512,
         is_std=0.05, protocol=_PROTOCOL, **{"is": 9.3})
  _write(pixelcnn, 500, config_name="pixelcnn_cifar", dataset="cifar10",
         split="test", num_examples=10000, params="raw", bpd=3.2)
  _write(digits, 50, config_name="ddpm_digits", dataset="digits", split="test",
         num_examples=355, params="ema", bpd_vlb=2.5, classifier_fd=1.25,
         class_coverage=1.0, protocol={"num_samples": 355, "reference": {
             "classifier": {"dataset": "digits", "split": "train",
                            "num_examples": 1442}},
             "feature_nets": {"classifier": {"name": "classifier/digits/8px",
                                             "weights_sha256": "cd" * 32,
                                             "resize": "none"}}})
  return ddpm, pixelcnn, digits


def _table_rows(text):
  return [line for line in text.splitlines() if line.startswith("| ")]


def _cells(line):
  return [c.strip() for c in line.strip("|").split(" | ")]


def test_newest_step_beside_published_rows_with_protocol_footnotes(workdirs):
  ddpm, pixelcnn, digits = workdirs
  results = [r for w in workdirs for r in report.read_eval_results(str(w))]
  text = report.markdown_report(results)
  rows = _table_rows(text)
  header = _cells(rows[0])
  assert header[:3] == ["result", "config", "step / data"]
  assert header[-1] == "protocol"
  by_label = {_cells(r)[0]: dict(zip(header, _cells(r))) for r in rows[1:]}

  ours = by_label["this codebase: ddpm"]
  assert ours["step / data"] == "2000, cifar10/test"      # newest step only
  assert ours["FID"] == "3.251"
  assert ours["IS"] == "9.3 ± 0.05"
  assert ours["NLL (bits/dim)"] == "≤ 3.712 (vlb)"
  published = by_label["published: DDPM, L_simple (Ho et al. 2020)"]
  assert (published["FID"], published["IS"], published["NLL (bits/dim)"]) == (
      "3.17", "9.46", "≤ 3.75")
  assert by_label["published: DDIM, eta=0, 10 steps (Song et al. 2021)"]["FID"] == (
      "13.36")
  assert by_label["this codebase: pcnn"]["NLL (bits/dim)"] == "3.2 (exact)"
  assert by_label["published: PixelCNN (van den Oord et al. 2016a)"][
      "NLL (bits/dim)"] == "3.14"
  digits_row = by_label["this codebase: dig"]
  assert (digits_row["Classifier FD"], digits_row["Class coverage"]) == ("1.25", "1")

  # Rows are grouped by config: ours first, then its published rows.
  labels = [_cells(r)[0] for r in rows[1:]]
  assert labels.index("this codebase: ddpm") < labels.index(
      "published: DDPM, L_simple (Ho et al. 2020)") < labels.index("this codebase: pcnn")

  # Footnotes: each row's protocol reference resolves to its line.
  notes = dict(re.findall(r"^\[(\d+)\] (.*)$", text, re.M))
  ours_note = notes[ours["protocol"].strip("[]")]
  for expected in ("step 2000", "50000 samples", "cifar10/train (50000 images)",
                   "abababababab", "299x299", "precision=highest",
                   "10000 examples"):
    assert expected in ours_note, expected
  assert "arXiv:2006.11239" in notes[published["protocol"].strip("[]")]
  assert "Table 1" in notes[published["protocol"].strip("[]")]
  assert "classifier/digits/8px" in notes[digits_row["protocol"].strip("[]")]
  assert "No published numbers for config(s): ddpm_digits." in text
  # KID and the other columns nobody filled are left out.
  assert "KID" not in header and "Precision" not in header


def test_all_steps_and_leftover_metrics(workdirs):
  ddpm = workdirs[0]
  results = report.read_eval_results(str(ddpm), all_steps=True)
  assert [r["step"] for r in results] == [1000, 2000]
  text = report.markdown_report(results)
  assert "1000, cifar10/test" in text and "2000, cifar10/test" in text
  assert "also prior_bpd=0.00012" in text        # a number no column shows


def test_command_line_prints_and_writes_the_table(workdirs, tmp_path, capsys):
  out = tmp_path / "report.md"
  assert report.main([str(w) for w in workdirs] + [f"--out={out}"]) == 0
  printed = capsys.readouterr().out
  assert printed == out.read_text()
  assert "| this codebase: ddpm |" in printed
  assert report.main([str(tmp_path / "empty")]) == 2
  assert "No eval results" in capsys.readouterr().err


def test_pipes_in_values_do_not_break_the_table(tmp_path):
  _write(tmp_path / "w", 1, config_name="odd|name", dataset="x", split="y", fid=1.0)
  text = report.markdown_report(report.read_eval_results(str(tmp_path / "w")))
  rows = _table_rows(text)
  assert all(len(_cells(r)) == len(_cells(rows[0])) for r in rows)


def test_published_tables_are_transcribed_as_printed():
  # evaluation/paper_tables.py is the project's one copy of the published numbers:
  # each is a string literal there, written as its paper prints it, and the rows a
  # config quotes appear in that config's docstring.
  with open(os.path.join(REPO, "evaluation", "paper_tables.py")) as f:
    literals = {node.value for node in ast.walk(ast.parse(f.read()))
                if isinstance(node, ast.Constant) and isinstance(node.value, str)}
  with open(os.path.join(REPO, "configs", "vae_binarized_mnist.py")) as f:
    config_doc = f.read()
  for row in paper_tables.ALL_RESULTS:
    assert row.paper.arxiv and re.fullmatch(r"\d{4}\.\d{5}", row.paper.arxiv)
    assert re.fullmatch(r"(Table \d+( \(quoted in configs/\w+\.py\))?)?", row.source), \
        (row.model, row.source)
    for metric, value in row.values.items():
      assert metric in paper_tables.PUBLISHED_METRICS
      float(value)
      assert value in literals, (row.model, value)
      if "configs/vae_binarized_mnist.py" in row.source:
        assert value in config_doc, (row.model, value)


def test_configs_citing_the_published_tables_quote_their_numbers():
  values = {v for row in paper_tables.ALL_RESULTS for v in row.values.values()}
  citing = []
  for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))):
    with open(path) as f:
      doc = ast.get_docstring(ast.parse(f.read())) or ""
    if "evaluation/paper_tables.py" in doc:
      citing.append(os.path.basename(path))
      assert any(re.search(rf"(?<![\d.]){re.escape(v)}(?!\d)", doc)
                 for v in values), path
  assert len(citing) >= 5, citing   # the paper configs point there


def test_published_numbers_lookup():
  ddpm = paper_tables.published_for("ddpm_cifar")[0]
  assert ddpm.number("fid") == 3.17 and ddpm.cell("nll_bpd") == "≤ 3.75"
  assert paper_tables.published_for("no_such_config") == ()
