"""A markdown table of this codebase's eval results beside the published numbers.

  python -m evaluation.report /tmp/ddpm_cifar /tmp/pixelcnn_cifar [--all_steps]
      [--out=report.md]

Reads `workdir/eval/step_*.json` (written by `--mode=eval`: config_name, step,
dataset, split, num_examples, params, the likelihood keys such as bpd_vlb, and the
sample metrics fid, is, kid, classifier_fd, class_coverage, ... with their
`protocol`), by default only the newest step of each workdir. Each config's rows
are followed by the published rows for it (evaluation/paper_tables.py). How each
number was computed goes to numbered footnotes, referenced from the last column:
FID and its relatives move with the sample count, the reference split and the
feature network, so a number without them cannot be compared.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from evaluation import paper_tables

# (column key, header). `nll_bpd` gathers the bpd* keys, `nll_nats` the nll_nats*.
COLUMNS = (
    ("fid", "FID"),
    ("is", "IS"),
    ("nll_bpd", "NLL (bits/dim)"),
    ("nll_nats", "NLL (nats)"),
    ("kid", "KID"),
    ("precision", "Precision"),
    ("recall", "Recall"),
    ("classifier_fd", "Classifier FD"),
    ("class_coverage", "Class coverage"),
    ("class_kl_reference", "Class KL to ref."),
    ("classifier_confidence", "Classifier conf."),
)
# Keys of the eval JSON that describe the run rather than measure it.
_DESCRIPTIVE = {"config_name", "step", "dataset", "split", "num_examples", "params",
                "protocol"}
# Likelihood keys that are bounds on the NLL (variational / importance-weighted).
_BOUND_SUFFIXES = ("vlb", "elbo", "iwae")


class ReportError(ValueError):
  pass


def read_eval_results(workdir: str, all_steps: bool = False) -> list[dict[str, Any]]:
  """The eval JSONs of a workdir (newest step only unless all_steps), step order."""
  paths = glob.glob(os.path.join(workdir, "eval", "step_*.json"))
  if not paths:
    raise ReportError(f"No eval results in {os.path.join(workdir, 'eval')}: run "
                      f"`python main.py --config=... --workdir={workdir} --mode=eval` "
                      "first.")
  results = []
  for path in paths:
    try:
      with open(path) as f:
        result = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
      raise ReportError(f"Cannot read {path}: {error}") from None
    if not isinstance(result, dict) or "step" not in result:
      raise ReportError(f"{path} is not an eval result (no 'step').")
    result["_workdir"], result["_path"] = workdir, path
    results.append(result)
  results.sort(key=lambda r: int(r["step"]))
  return results if all_steps else results[-1:]


def _format_number(value: float) -> str:
  if not math.isfinite(value):
    return str(value)
  return f"{value:.4g}"


def _likelihood_cell(result: Mapping[str, Any], prefix: str) -> str:
  """'≤ 3.70 (vlb)'-style entries of every key `prefix` or `prefix_*`."""
  parts = []
  for key in sorted(result):
    if key != prefix and not key.startswith(prefix + "_"):
      continue
    if not isinstance(result[key], (int, float)) or isinstance(result[key], bool):
      continue
    kind = key[len(prefix) + 1:] or "exact"
    bound = "≤ " if kind in _BOUND_SUFFIXES else ""
    parts.append(f"{bound}{_format_number(result[key])} ({kind})")
  return "; ".join(parts)


def our_cell(result: Mapping[str, Any], column: str) -> str:
  if column == "nll_bpd":
    return _likelihood_cell(result, "bpd")
  if column == "nll_nats":
    return _likelihood_cell(result, "nll_nats")
  value = result.get(column)
  if not isinstance(value, (int, float)) or isinstance(value, bool):
    return ""
  std = result.get(f"{column}_std")
  if isinstance(std, (int, float)):
    return f"{_format_number(value)} ± {_format_number(std)}"
  return _format_number(value)


def _other_metrics(result: Mapping[str, Any]) -> dict[str, Any]:
  """Numeric keys that no column shows (e.g. prior_bpd), for the footnote."""
  shown = {c for c, _ in COLUMNS} | {f"{c}_std" for c, _ in COLUMNS}
  return {k: v for k, v in result.items()
          if not k.startswith("_") and k not in _DESCRIPTIVE and k not in shown
          and not k.startswith("bpd") and not k.startswith("nll_nats")
          and isinstance(v, (int, float)) and not isinstance(v, bool)}


def protocol_note(result: Mapping[str, Any]) -> str:
  """One line on how a result of this codebase was computed."""
  parts = [f"`{result['_workdir']}` step {result['step']}"]
  if "num_examples" in result:
    parts.append(f"likelihood on {result.get('dataset')}/{result.get('split')} "
                 f"({result['num_examples']} examples, {result.get('params')} params)")
  protocol = result.get("protocol") or {}
  if protocol:
    parts.append(f"{protocol.get('num_samples')} samples")
    for kind, ref in sorted((protocol.get("reference") or {}).items()):
      net = (protocol.get("feature_nets") or {}).get(kind, {})
      sha = str(net.get("weights_sha256") or ref.get("weights_sha256") or "")[:12]
      where = "/".join(str(ref[k]) for k in ("dataset", "split") if ref.get(k))
      parts.append(
          f"{kind}: {net.get('name', ref.get('feature_net'))} (weights sha256 {sha}), "
          f"resize {net.get('resize', '?')}, reference {where or 'file'} "
          f"({ref.get('num_examples', '?')} images)")
    extras = {k: protocol[k] for k in ("precision", "is_splits", "kid_subset_size",
                                       "pr_neighbours", "class_coverage_min_fraction")
              if k in protocol}
    if extras:
      parts.append(", ".join(f"{k}={v}" for k, v in extras.items()))
  other = _other_metrics(result)
  if other:
    parts.append("also " + ", ".join(f"{k}={_format_number(v)}"
                                     for k, v in sorted(other.items())))
  return "; ".join(parts)


def _escape(text: str) -> str:
  return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_report(results: Sequence[Mapping[str, Any]],
                    published: Mapping[str, Sequence[paper_tables.PublishedResult]]
                    = paper_tables.PUBLISHED) -> str:
  """The table (rows grouped by config: ours, then published) and its footnotes."""
  groups: dict[str, list[Mapping[str, Any]]] = {}
  for result in results:
    groups.setdefault(str(result.get("config_name", "?")), []).append(result)
  rows: list[tuple[str, str, str, Mapping[str, str], str]] = []
  notes: list[str] = []
  papers: dict[str, paper_tables.PublishedResult] = {}
  for config_name, ours in groups.items():
    for result in ours:
      notes.append(protocol_note(result))
      where = f"{result.get('dataset', '?')}/{result.get('split', '?')}"
      cells = {c: our_cell(result, c) for c, _ in COLUMNS}
      name = os.path.basename(os.path.normpath(result["_workdir"]))
      rows.append((f"this codebase: {name}",
                   config_name, f"{result['step']}, {where}", cells, f"[{len(notes)}]"))
    for row in published.get(config_name, ()):
      sample_metric = any(m in row.values or m in row.display for m in ("fid", "is"))
      protocol = row.protocol or paper_tables.PROTOCOL
      notes.append(f"{row.model}: {row.citation()}."
                   f"{' ' + row.notes + '.' if row.notes else ''}"
                   f"{' ' + protocol if sample_metric else ''}")
      papers[row.paper.cite()] = row
      rows.append((f"published: {row.model} ({row.paper.authors})", config_name,
                   row.dataset, {c: row.cell(c) for c, _ in COLUMNS},
                   f"[{len(notes)}]"))
  used = [(c, h) for c, h in COLUMNS if any(r[3][c] for r in rows)]
  header = ["result", "config", "step / data", *(h for _, h in used), "protocol"]
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  for label, config_name, where, cells, note in rows:
    line = [label, config_name, where, *(cells[c] for c, _ in used), note]
    lines.append("| " + " | ".join(_escape(x) for x in line) + " |")
  lines.append("")
  lines.extend(f"[{i}] {_escape(note)}" for i, note in enumerate(notes, 1))
  missing = [c for c in groups if not published.get(c)]
  if missing:
    lines.append("")
    lines.append("No published numbers for config(s): " + ", ".join(missing) + ".")
  return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m evaluation.report",
      description="Markdown table of workdirs' eval results beside published numbers.")
  parser.add_argument("workdirs", nargs="+", help="workdirs with eval/step_*.json")
  parser.add_argument("--all_steps", action="store_true",
                      help="every evaluated step, not only the newest")
  parser.add_argument("--out", default=None, help="also write the markdown here")
  args = parser.parse_args(argv)
  try:
    results = [r for w in args.workdirs for r in read_eval_results(w, args.all_steps)]
  except ReportError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  text = markdown_report(results)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
  print(text, end="")
  return 0


if __name__ == "__main__":
  sys.exit(main())
