"""Reproduces the README's `digits` table with one command, for checking refactors.

  python benchmarks/digits_table.py                         # every README row, full
  python benchmarks/digits_table.py --quick --families=ddpm,vae,pixelcnn,gan
  python benchmarks/digits_table.py --families=vae,pixelcnn --out=table.md \\
      --workdir_root=/tmp/digits_table --json_out=table.json

Every row of the README table "On the embedded `digits`" (section "Evaluation
protocol") is trained and evaluated by running `python main.py --config=... --workdir=W`
in a subprocess, one fresh workdir per row under --workdir_root, with the README
row's settings (steps, EMA or raw weights, sampler). A row's further numbers (the
other weights' bits/dim, a second sampler) come from `--mode=eval` runs on the same
checkpoint with `--config.*` overrides. Only the command line and the files a run
writes are used: the numbers and their protocol are read from `W/eval/step_N.json`,
which each run writes (the eval folder is renamed to `W/eval_<i>_<label>/` after each
run, so that the next evaluation draws its own samples instead of resuming the
previous one's chunks). Nothing of the library is imported.

Settings taken from the README text: ddpm_digits samples with EMA weights and adds
the raw-weights bound; iddpm_digits and :vlb train and sample with raw weights
(`--config.sampling.use_ema=False`, as the README advises for short runs; it does not
say which weights its FD used) and add the EMA bound; vdm_digits trains 2,500 steps
(its config says 3,000); score_digits:vp adds DPM-Solver++ with 20 steps; Gated
PixelCNN is pixelcnn_digits with --config.model.name=gated_pixelcnn.

--families selects rows, comma-separated: a family (`config.model.family`: ddpm, vdm,
score, autoregressive, gan, vae, hvae, vqvae) selects all its README rows; a row key
(e.g. `pixelcnn`, `gated_pixelcnn`, `score:vp`, `iddpm:vlb`, `pixelrnn:row_lstm`,
`vqvae:prior`), or the key with `_digits` (`pixelcnn_digits`, `score_digits:vp`),
selects one row. `ddpm` is a family: it selects ddpm_digits, iddpm_digits and
iddpm_digits:vlb (use `ddpm_digits` for the one row). `guided_ddpm_digits` (key `guided_ddpm`) has no
README row and runs only when named. `vqvae:prior` brings in its stage 1, `vqvae`.

--quick (a regression check, not the README's numbers) adds, to every command of
every row, these overrides on top of the row's own (QUICK_OVERRIDES):
  training.num_train_steps=200        (README rows: 1,500 to 4,000; vqvae: both stages)
  training.checkpoint_every_steps=200 (one checkpoint, the last)
  training.sample_every_steps=0       (no sample grids during training)
  optim.ema_decay=0.99                (a ~100-step window, so that EMA weights are
                                       mostly trained, not initial, after 200 steps)
  eval.num_eval_examples=100, eval.batch_size=100   (of the 355 test digits)
  eval.num_samples=128, sampling.batch_size=128     (README: 1,024; PixelRNN 256)
  and, for vae_digits and hvae_digits, eval.iwae_samples=100 (README: k=1000).
Everything else (seed 42 unless --seed, samplers and their NFE, weights, the
classifier and its reference split) is as in the full run. On the 2-core CPU machine,
shared (load average 4-10), a quick row took 45 s (vae_digits) to 6 minutes
(ddpm_digits with its raw-weights evaluation); `--quick --families=ddpm,vae,pixelcnn,gan`
(six rows) took 20 minutes.

Same config and seed, same numbers on this CPU: training and evaluation are
deterministic. Verified with --quick for ddpm_digits (both evaluations),
pixelcnn_digits, gan_digits and vae_digits: two or three runs each, under different
machine load, wrote bit-identical eval JSONs (every value and the protocol). Only the
wall times move with the load.

Output: a markdown table (stdout, and --out) with one line per row: steps, test
bits/dim with the bound and weights, sample quality (classifier Frechet distance,
classes covered, class-histogram KL to uniform) with its sampler, NFE and weights,
the row's wall time (all its subprocesses), and a footnote with each evaluation's
protocol as its eval JSON records it (split, test examples, samples, sampler, NFE,
seed, weights). Rows not run are left out; a failed command is reported in its row
(logs: `<workdir_root>/<row>.<i>_<label>.log`, one per command) and the script exits
with status 1. --json_out also writes the
eval JSONs, commands and wall times. Before the rows, the offline digits classifier is
trained or loaded once (`python -m evaluation.cli train_classifier --dataset=digits`,
cached in ~/.cache/genmodels/ or $EVAL_CLASSIFIER_DIR) so that no row's wall time
includes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import glob
import importlib.metadata
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

QUICK_STEPS = 200
QUICK_OVERRIDES = (
    ("training.num_train_steps", QUICK_STEPS),
    ("training.checkpoint_every_steps", QUICK_STEPS),
    ("training.sample_every_steps", 0),
    ("optim.ema_decay", 0.99),
    ("eval.num_eval_examples", 100),
    ("eval.batch_size", 100),
    ("eval.num_samples", 128),
    ("sampling.batch_size", 128),
)
# A sample-only evaluation still runs the test-set likelihood (--mode=eval always
# does where the family has one): on this many examples, and not shown.
_FEW_EXAMPLES = (("eval.num_eval_examples", 8), ("eval.batch_size", 8))
_NO_SAMPLES = (("eval.sample_metrics", "none"),)
# The test-set likelihoods of the eval JSON, in display order, and their bound.
LIKELIHOOD_KEYS = (("bpd_vlb", "VLB"), ("bpd_ode", "ODE"), ("bpd_elbo", "ELBO"),
                   ("bpd_iwae", "IWAE"), ("bpd", "exact"))
WEIGHTS = {"ema": "EMA", "raw": "raw"}
# Sampler settings the footnote leaves out (shown elsewhere or implied).
_SHOWN_SAMPLER_KEYS = {"sampler", "nfe", "nfe_measured", "seed", "params", "use_ema"}


@dataclasses.dataclass(frozen=True)
class Eval:
  """One evaluation of a row's checkpoint.

  The first of a row is the train run's own evaluation (`--mode=train` evaluates the
  last checkpoint); the others are `--mode=eval` runs of the same checkpoint.
  """
  label: str
  overrides: tuple[tuple[str, Any], ...] = ()   # (config field, value), on the row's
  likelihood: bool = True    # show its test-set bits/dim
  samples: bool = True       # compute and show sample metrics (else sample_metrics=none)


@dataclasses.dataclass(frozen=True)
class Row:
  """A row of the README digits table: one config, trained once, evaluated 1+ times."""
  key: str                   # short name for --families, also the workdir's name
  name: str                  # what the table shows
  family: str                # config.model.family
  config: str                # --config value, with its ':arg'
  evals: tuple[Eval, ...]
  overrides: tuple[tuple[str, Any], ...] = ()   # the README row's settings
  quick_overrides: tuple[tuple[str, Any], ...] = ()   # with --quick, besides QUICK_OVERRIDES
  bpd_label: str = "exact"   # what the eval JSON's plain `bpd` is
  needs: str | None = None   # key of the row whose workdir is vq.autoencoder_workdir
  readme: str = ""           # the README's numbers (full settings)
  extra: bool = False        # not in the README table: runs only when named

  @property
  def workdir_name(self) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", self.key)

  @property
  def long_key(self) -> str:
    """The key with '_digits', like a config name: 'score_digits:vp'."""
    base, _, arg = self.key.partition(":")
    return f"{base}_digits" + (f":{arg}" if arg else "")


_EMA = Eval("EMA")
_RAW = (("sampling.use_ema", False),)
_EMA_ONLY_BPD = Eval("EMA", (("sampling.use_ema", True),), samples=False)
_RAW_ONLY_BPD = Eval("raw", _RAW, samples=False)
_IWAE_QUICK = (("eval.iwae_samples", 100),)

ROWS = (
    Row("ddpm", "ddpm_digits", "ddpm", "configs/ddpm_digits.py",
        (_EMA, _RAW_ONLY_BPD),
        readme="4.80 (VLB, EMA); 4.73 (raw); ancestral 250 steps: FD 1.85, 10/10"),
    Row("iddpm", "iddpm_digits", "ddpm", "configs/iddpm_digits.py",
        (Eval("raw", _RAW), _EMA_ONLY_BPD),
        readme="5.52 (raw); 13.23 (EMA); 50 respaced steps: FD 1.23, 10/10"),
    Row("iddpm:vlb", "iddpm_digits:vlb", "ddpm", "configs/iddpm_digits.py:vlb",
        (Eval("raw", _RAW), _EMA_ONLY_BPD),
        readme="4.54 (raw); 12.19 (EMA); 50 respaced steps: FD 13.3, 10/10"),
    Row("guided_ddpm", "guided_ddpm_digits", "ddpm", "configs/guided_ddpm_digits.py", (_EMA,), extra=True),
    Row("vdm", "vdm_digits (2,500 steps)", "vdm", "configs/vdm_digits.py", (_EMA,),
        overrides=(("training.num_train_steps", 2500),),
        readme="4.78 (continuous-time VLB); 250 steps: FD 12.9, 10/10"),
    Row("score:vp", "score_digits:vp", "score", "configs/score_digits.py:vp",
        (_EMA, Eval("DPM-Solver++ 20", (("sampling.method", "dpm_solver"),
                                        ("sampling.num_steps", 20)),
                    likelihood=False)),
        readme="5.69 (ODE); PC 500 NFE: FD 1.20, 10/10; DPM-Solver++ 20 NFE: FD 28.2"),
    Row("score:edm", "score_digits:edm", "score", "configs/score_digits.py:edm", (_EMA,),
        readme="5.08 (ODE); Heun 35 NFE: FD 2.10, 10/10"),
    Row("score:ve", "score_digits:ve", "score", "configs/score_digits.py:ve", (_EMA,),
        readme="5.15 (ODE, 409 NFE); PC 1,000 NFE: FD 3.00, 10/10"),
    Row("pixelcnn", "pixelcnn_digits", "autoregressive", "configs/pixelcnn_digits.py",
        (_EMA,), readme="1.84"),
    Row("gated_pixelcnn", "pixelcnn_digits, model.name=gated_pixelcnn", "autoregressive",
        "configs/pixelcnn_digits.py", (_EMA,),
        overrides=(("model.name", "gated_pixelcnn"),), readme="1.782"),
    Row("pixelrnn", "pixelrnn_digits (Diagonal BiLSTM)", "autoregressive",
        "configs/pixelrnn_digits.py", (_EMA,), readme="1.815"),
    Row("pixelrnn:row_lstm", "pixelrnn_digits:row_lstm", "autoregressive",
        "configs/pixelrnn_digits.py:row_lstm", (_EMA,), readme="1.843"),
    Row("pixelcnnpp", "pixelcnnpp_digits", "autoregressive",
        "configs/pixelcnnpp_digits.py", (_EMA,), readme="3.53"),
    Row("gan", "gan_digits", "gan", "configs/gan_digits.py", (_EMA,),
        readme="FD 2.94, 10/10, class KL to uniform 0.011"),
    Row("vae", "vae_digits", "vae", "configs/vae_digits.py", (_EMA,),
        quick_overrides=_IWAE_QUICK, readme="3.675 (ELBO), 3.539 (IWAE k=1000)"),
    Row("hvae", "hvae_digits", "hvae", "configs/hvae_digits.py", (_EMA,),
        quick_overrides=_IWAE_QUICK,
        readme="3.544 (ELBO), 3.452 (IWAE k=1000); FD 2.57, 10/10"),
    Row("vqvae", "vqvae_digits (stage 1)", "vqvae", "configs/vqvae_digits.py",
        (Eval("raw"),), bpd_label="uniform prior", readme="4.370 (uniform prior)"),
    Row("vqvae:prior", "vqvae_digits:prior (stage 2)", "vqvae",
        "configs/vqvae_digits.py:prior", (Eval("raw"),), bpd_label="Gated PixelCNN prior",
        needs="vqvae", readme="4.289 (Gated PixelCNN prior); FD 3.25, 10/10"),
)
FAMILIES = tuple(dict.fromkeys(row.family for row in ROWS))


# ------------------------------------------------------------------ selection
def select_rows(spec: str, rows: Sequence[Row] = ROWS) -> list[Row]:
  """The rows `spec` names (comma-separated families or row keys), in table order.

  'all' (or '') selects every README row; families select their README rows; a key
  or name selects that row, README or not. A row's `needs` are added.
  """
  tokens = [t.strip() for t in spec.split(",") if t.strip()] or ["all"]
  chosen: set[str] = set()
  for token in tokens:
    matches = [row.key for row in rows
               if (token in ("all", row.family) and not row.extra)
               or token in (row.key, row.long_key)]
    if not matches:
      keys = ", ".join(row.key for row in rows)
      raise ValueError(f"--families: {token!r} names no row; choose from 'all', the "
                       f"families {', '.join(FAMILIES)} or the rows {keys}.")
    chosen.update(matches)
  by_key = {row.key: row for row in rows}
  pending = list(chosen)
  while pending:
    need = by_key[pending.pop()].needs
    if need and need not in chosen:
      chosen.add(need)
      pending.append(need)
  return [row for row in rows if row.key in chosen]


# ------------------------------------------------------------------ commands
def overrides_for(row: Row, index: int, *, quick: bool, seed: int,
                  workdirs: Mapping[str, str]) -> dict[str, Any]:
  """--config.* fields of the row's `index`-th evaluation (0: the train run)."""
  ev = row.evals[index]
  fields: dict[str, Any] = {"seed": seed}
  fields.update(row.overrides)
  if row.needs:
    fields["vq.autoencoder_workdir"] = workdirs[row.needs]
  if quick:
    fields.update(QUICK_OVERRIDES)
    fields.update(row.quick_overrides)
  if not ev.likelihood:
    fields.update(_FEW_EXAMPLES)
  if not ev.samples:
    fields.update(_NO_SAMPLES)
  fields.update(ev.overrides)
  return fields


def command(row: Row, index: int, workdir: str, *, quick: bool, seed: int,
            workdirs: Mapping[str, str], python: str = sys.executable) -> list[str]:
  fields = overrides_for(row, index, quick=quick, seed=seed, workdirs=workdirs)
  return [python, "main.py", f"--config={row.config}", f"--workdir={workdir}",
          f"--mode={'train' if index == 0 else 'eval'}",
          *(f"--config.{k}={v}" for k, v in fields.items())]


# ------------------------------------------------------------------ eval JSON
def read_eval_json(workdir: str) -> dict[str, Any]:
  """The newest `workdir/eval/step_N.json`."""
  paths = glob.glob(os.path.join(workdir, "eval", "step_*.json"))
  if not paths:
    raise FileNotFoundError(f"No eval/step_*.json in {workdir}.")
  def step_of(path):
    return int(re.search(r"step_(\d+)\.json$", path).group(1))
  with open(max(paths, key=step_of)) as f:
    return json.load(f)


def _number(value: Any) -> float | None:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  return float(value)


def _nfe(sampler: Mapping[str, Any]) -> str:
  measured = _number(sampler.get("nfe_measured"))
  nfe = sampler.get("nfe")
  if _number(nfe) is not None:
    text = f"{nfe:g}"
    if measured is not None and measured != float(nfe):
      text += f" ({measured:g} measured)"
    return text
  return f"{measured:g} measured" if measured is not None else str(nfe or "?")


def _sampler_name(sampler: Mapping[str, Any]) -> str:
  name = str(sampler.get("sampler", "?"))
  if name == "pc":
    name += f" {sampler.get('predictor')}+{sampler.get('corrector')}"
  return name


def _weights(result: Mapping[str, Any]) -> str:
  params = result.get("params") or \
      ((result.get("protocol") or {}).get("sampler") or {}).get("params")
  return WEIGHTS.get(params, str(params or "?"))


def likelihood_parts(result: Mapping[str, Any], bpd_label: str = "exact",
                     iwae_samples: int | None = None) -> list[str]:
  """'4.8012 (VLB, EMA)'-style entries of the eval JSON's test-set bits/dim."""
  parts = []
  for key, bound in LIKELIHOOD_KEYS:
    value = _number(result.get(key))
    if value is None:
      continue
    if key == "bpd":
      bound = bpd_label
    elif key == "bpd_iwae" and iwae_samples:
      bound = f"IWAE k={iwae_samples}"
    elif key == "bpd_ode" and _number(result.get("likelihood_nfe")) is not None:
      bound = f"ODE, {result['likelihood_nfe']:.0f} NFE"
    parts.append(f"{value:.4f} ({bound}, {_weights(result)})")
  return parts


def sample_part(result: Mapping[str, Any]) -> str:
  """'ancestral, 250 NFE, EMA: FD 1.850, 10/10 classes, KL to uniform 0.011'."""
  fd = _number(result.get("classifier_fd"))
  if fd is None:
    return ""
  protocol = result.get("protocol") or {}
  sampler = protocol.get("sampler") or {}
  text = f"{_sampler_name(sampler)}, {_nfe(sampler)} NFE, {_weights(result)}: FD {fd:.3f}"
  coverage = _number(result.get("class_coverage"))
  if coverage is not None:
    classes = ((protocol.get("feature_nets") or {}).get("classifier") or {}).get("classes")
    num_classes = len(classes) if classes else 10
    text += f", {round(coverage * num_classes)}/{num_classes} classes"
  kl = _number(result.get("class_kl_uniform"))
  if kl is not None:
    text += f", KL to uniform {kl:.3f}"
  return text


def protocol_note(result: Mapping[str, Any], ev: Eval) -> str:
  """How one evaluation was made, as its eval JSON records it."""
  parts = []
  if ev.likelihood and "num_examples" in result:
    parts.append(f"bits/dim on {result.get('dataset')}/{result.get('split')}, "
                 f"{result['num_examples']} examples, {_weights(result)} weights")
  protocol = result.get("protocol") or {}
  if ev.samples and protocol:
    sampler = dict(protocol.get("sampler") or {})
    refs = protocol.get("reference") or {}
    ref = refs.get("classifier") or next(iter(refs.values()), {})
    text = (f"{protocol.get('num_samples')} samples, sampler {_sampler_name(sampler)}, "
            f"NFE {_nfe(sampler)}, seed {sampler.get('seed')}, {_weights(result)} weights")
    settings = {k: v for k, v in sampler.items() if k not in _SHOWN_SAMPLER_KEYS}
    if settings:
      text += " (" + ", ".join(f"{k}={v}" for k, v in settings.items()) + ")"
    if ref:
      text += (f", FD reference {ref.get('dataset')}/{ref.get('split')} "
               f"({ref.get('num_examples')} images)")
    parts.append(text)
  return "; ".join(parts) or "no likelihood or sample metrics"


# ------------------------------------------------------------------ the table
@dataclasses.dataclass
class EvalResult:
  eval: Eval
  command: list[str]
  wall_seconds: float
  result: dict[str, Any] | None = None   # the eval JSON; None if the command failed
  error: str = ""
  iwae_samples: int | None = None


@dataclasses.dataclass
class RowResult:
  row: Row
  workdir: str
  evals: list[EvalResult] = dataclasses.field(default_factory=list)
  skipped: str = ""                        # why the row was not run (a failed need)

  @property
  def wall_seconds(self) -> float:
    return sum(e.wall_seconds for e in self.evals)

  @property
  def failed(self) -> bool:
    return bool(self.skipped) or any(e.result is None for e in self.evals)


def format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _escape(text: str) -> str:
  return str(text).replace("|", "\\|").replace("\n", " ")


def row_cells(result: RowResult) -> tuple[list[str], str]:
  """(cells of the table line, footnote) of one row."""
  row = result.row
  good = [e for e in result.evals if e.result is not None]
  steps = good[0].result.get("step", "?") if good else "?"
  bpd = [p for e in good if e.eval.likelihood
         for p in likelihood_parts(e.result, row.bpd_label, e.iwae_samples)]
  samples = [s for e in good if e.eval.samples for s in [sample_part(e.result)] if s]
  failures = [f"FAILED: {e.eval.label}: {e.error}" for e in result.evals
              if e.result is None]
  if result.skipped:
    failures.append(f"not run: {result.skipped}")
  cells = [f"`{row.name}`", f"{steps:,}" if isinstance(steps, int) else str(steps),
           "; ".join(bpd), "; ".join(samples + failures),
           format_seconds(result.wall_seconds)]
  notes = []
  for i, e in enumerate(result.evals):
    how = "train + eval" if i == 0 else "--mode=eval"
    note = f"{e.eval.label} ({how}, {format_seconds(e.wall_seconds)})"
    extra = dict(e.eval.overrides)
    if not e.eval.samples:
      extra["eval.sample_metrics"] = "none"
    if i == 0:
      extra = {**dict(row.overrides), **extra}
    if extra:
      note += " [" + ", ".join(f"{k}={v}" for k, v in extra.items()) + "]"
    note += ": " + (protocol_note(e.result, e.eval) if e.result is not None
                    else f"failed, {e.error}")
    notes.append(note)
  footnote = f"`{row.name}`: `{row.config}`, workdir `{result.workdir}`. " + \
      ". ".join(notes) + "."
  return cells, footnote


def markdown_table(results: Sequence[RowResult], *, show_readme: bool = False) -> str:
  header = ["row", "steps", "bits/dim (test; bound, weights)",
            "sample quality (digits classifier)", "wall time", "protocol"]
  if show_readme:
    header.insert(5, "README")
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  notes = []
  for result in results:
    cells, note = row_cells(result)
    notes.append(note)
    if show_readme:
      cells.append(result.row.readme)
    cells.append(f"[{len(notes)}]")
    lines.append("| " + " | ".join(_escape(c) for c in cells) + " |")
  lines.append("")
  lines.extend(f"[{i}] {_escape(note)}" for i, note in enumerate(notes, 1))
  return "\n".join(lines) + "\n"


def _describe_run(args: argparse.Namespace, argv: Sequence[str]) -> str:
  try:
    jax_version = importlib.metadata.version("jax")
  except importlib.metadata.PackageNotFoundError:
    jax_version = "?"
  lines = ["`" + shlex.join(["python", "benchmarks/digits_table.py", *argv]) + "`", "",
           f"{'Quick' if args.quick else 'Full'} settings, seed {args.seed}; "
           f"started {args.started}; "
           f"{platform.machine()} {os.cpu_count()} cores, Python "
           f"{platform.python_version()}, jax {jax_version}; workdirs under "
           f"`{args.workdir_root}`."]
  if args.quick:
    quick = ", ".join(f"{k}={v}" for k, v in QUICK_OVERRIDES)
    lines.append(f"Quick overrides on every command: {quick}; vae/hvae also "
                 f"{', '.join(f'{k}={v}' for k, v in _IWAE_QUICK)}.")
  return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ running
def _run(cmd: list[str], log_path: str) -> tuple[int, float]:
  env = dict(os.environ)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  start = time.monotonic()
  with open(log_path, "w") as log:
    log.write("$ " + shlex.join(cmd) + "\n")
    log.flush()
    code = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
  return code, time.monotonic() - start


def _tail(path: str, lines: int = 3) -> str:
  try:
    with open(path) as f:
      return " / ".join(line.strip() for line in f.readlines()[-lines:])
  except OSError:
    return ""


def _iwae_samples(workdir: str) -> int | None:
  """eval.iwae_samples of the run's config.json (written by the train run), if any."""
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      value = json.load(f).get("eval.iwae_samples")
  except (OSError, ValueError):
    return None
  return value if isinstance(value, int) else None


def run_row(row: Row, workdir: str, *, quick: bool, seed: int,
            workdirs: Mapping[str, str], log=sys.stderr) -> RowResult:
  result = RowResult(row, workdir)
  for i, ev in enumerate(row.evals):
    cmd = command(row, i, workdir, quick=quick, seed=seed, workdirs=workdirs)
    slug = re.sub(r"[^A-Za-z0-9]+", "_", ev.label).strip("_").lower()
    log_path = os.path.join(os.path.dirname(workdir),
                            f"{os.path.basename(workdir)}.{i}_{slug}.log")
    print(f"[{row.name}] {'train' if i == 0 else 'eval'} ({ev.label}): "
          f"{shlex.join(cmd[1:])}", file=log, flush=True)
    code, seconds = _run(cmd, log_path)
    out = EvalResult(ev, cmd, seconds)
    if code == 0:
      try:
        out.result = read_eval_json(workdir)
      except (OSError, ValueError) as error:
        out.error = f"{error} (log {log_path})"
    else:
      out.error = f"exit status {code} (log {log_path}: {_tail(log_path)})"
    if out.result is not None:
      if "bpd_iwae" in out.result:
        out.iwae_samples = _iwae_samples(workdir)
      # The next evaluation must draw its own samples, not resume these chunks.
      os.rename(os.path.join(workdir, "eval"),
                os.path.join(workdir, f"eval_{i}_{slug}"))
    result.evals.append(out)
    print(f"[{row.name}] {ev.label}: {format_seconds(seconds)}"
          f"{', ' + out.error if out.error else ''}", file=log, flush=True)
    if out.result is None:
      break
  return result


def _load_average() -> str:
  try:
    return f"{os.getloadavg()[0]:.1f}"
  except OSError:
    return "?"


def prepare_classifier(root: str, log=sys.stderr) -> tuple[int, float]:
  cmd = [sys.executable, "-m", "evaluation.cli", "train_classifier", "--dataset=digits"]
  print(f"[prepare] {shlex.join(cmd[1:])}", file=log, flush=True)
  return _run(cmd, os.path.join(root, "prepare_classifier.log"))


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(
      prog="python benchmarks/digits_table.py",
      description="Train and evaluate the README's digits rows; print the table.")
  parser.add_argument("--families", default="all",
                      help="comma-separated families, row keys or row names "
                           f"(families: {', '.join(FAMILIES)}; rows: "
                           f"{', '.join(r.key for r in ROWS)}); default all README rows")
  parser.add_argument("--quick", action="store_true",
                      help=f"{QUICK_STEPS} train steps and fewer eval examples and "
                           "samples (see the module docstring)")
  parser.add_argument("--workdir_root", default=None,
                      help="where the row workdirs go (default: a new temp dir); "
                           "they must not exist yet")
  parser.add_argument("--out", default=None, help="also write the markdown table here")
  parser.add_argument("--json_out", default=None,
                      help="also write the eval JSONs, commands and wall times here")
  parser.add_argument("--seed", type=int, default=42, help="--config.seed of every run")
  parser.add_argument("--list", action="store_true",
                      help="print the selected rows' commands and exit")
  args = parser.parse_args(argv)
  try:
    rows = select_rows(args.families)
  except ValueError as error:
    parser.error(str(error))
  if args.workdir_root is None:
    args.workdir_root = "<temp dir>" if args.list else tempfile.mkdtemp(
        prefix="digits_table_")
  root = os.path.abspath(args.workdir_root) if not args.list else args.workdir_root
  workdirs = {row.key: os.path.join(root, row.workdir_name) for row in rows}
  if args.list:
    for row in rows:
      for i in range(len(row.evals)):
        print(shlex.join(command(row, i, workdirs[row.key], quick=args.quick,
                                 seed=args.seed, workdirs=workdirs)[1:]))
    return 0
  existing = [w for w in workdirs.values() if os.path.exists(w)]
  if existing:
    parser.error(f"workdirs already exist (a run would resume them): {existing}; "
                 "choose a new --workdir_root.")
  os.makedirs(root, exist_ok=True)
  args.workdir_root = root
  start, load_start = time.monotonic(), _load_average()
  args.started = datetime.datetime.now().isoformat(timespec="seconds")
  code, prepare_seconds = prepare_classifier(root)
  if code:
    print(f"warning: preparing the classifier failed (exit {code}); rows train it "
          "themselves", file=sys.stderr)
  results: list[RowResult] = []
  for row in rows:
    need = next((r for r in results if row.needs and r.row.key == row.needs), None)
    if need is not None and need.failed:
      results.append(RowResult(row, workdirs[row.key], skipped=f"{need.row.name} failed"))
      continue
    results.append(run_row(row, workdirs[row.key], quick=args.quick, seed=args.seed,
                           workdirs=workdirs))
  total = time.monotonic() - start
  text = (_describe_run(args, argv) + "\n" +
          markdown_table(results, show_readme=not args.quick) +
          f"\nTotal wall time {format_seconds(total)} (classifier preparation "
          f"{format_seconds(prepare_seconds)}); 1-minute load average "
          f"{load_start} at the start, {_load_average()} at the end.\n")
  print(text, end="")
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(dict(argv=argv, quick=args.quick, seed=args.seed,
                     total_seconds=total, rows=[
                         dict(name=r.row.name, key=r.row.key, workdir=r.workdir,
                              skipped=r.skipped, evals=[
                                  dict(label=e.eval.label, command=e.command,
                                       wall_seconds=e.wall_seconds, error=e.error,
                                       result=e.result) for e in r.evals])
                         for r in results]), f, indent=2)
  return 1 if any(r.failed for r in results) else 0


if __name__ == "__main__":
  sys.exit(main())
