"""Configs hold exactly the fields the code reads, and the code reads no field without one.

The reads are found by parsing the source (tests/config_reads.py): the spine (run
set-up, loop, modes, optimizer, edit driver, data pipeline) and each family module.
  - configs/default.py holds exactly the fields the spine reads;
  - each family's base (configs/bases.py) holds default.py's fields plus exactly the
    fields its family module reads: no defaults inside train/, no dead fields;
  - every experiment config (and its runlocal variant) holds only fields of its
    family's base, so no config carries a field its family never reads;
  - every read in these modules is by name (no `.get(name, default)`, computed keys,
    `getattr` or `in` probes), so that this parse sees all of them.
"""

from __future__ import annotations

import ast
import functools
import importlib
import os

import ml_collections
import pytest

from configs import bases, default
from tests import config_reads

REPO = config_reads.REPO
SPINE_MODULES = ("train/run.py", "train/loop.py", "train/modes.py", "train/optim.py",
                 "train/families.py", "train/edit_mode.py", "train/workdir_guard.py")
# Modules that copy the whole config (config.json, TensorBoard hparams) and so iterate
# over it: their other reads still count.
WHOLE_CONFIG_READERS = ("train/workdir_guard.py",)
NOT_EXPERIMENTS = ("__init__.py", "default.py", "bases.py", "config_args.py")


def flat_fields(config: ml_collections.ConfigDict, prefix: str = "") -> set[str]:
  fields = set()
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      fields |= flat_fields(value, f"{prefix}{key}.")
    else:
      fields.add(prefix + key)
  return fields


@functools.cache
def sections() -> tuple[str, ...]:
  names = set()
  for family in bases.BASES:
    config = bases.base_config(family)
    names |= {k for k, v in config.items() if isinstance(v, ml_collections.ConfigDict)}
  return tuple(sorted(names))


def pipeline_fields() -> set[str]:
  """config.data is read by datasets/pipeline.py into the fields of _DataOptions."""
  with open(os.path.join(REPO, "datasets", "pipeline.py")) as f:
    tree = ast.parse(f.read())
  for node in tree.body:
    if isinstance(node, ast.ClassDef) and node.name == "_DataOptions":
      return {f"data.{s.target.id}" for s in node.body if isinstance(s, ast.AnnAssign)}
  raise AssertionError("datasets/pipeline.py has no _DataOptions")


def family_modules() -> dict[str, str]:
  """family name -> its module, parsed from train/families.py's FAMILIES."""
  with open(os.path.join(REPO, "train", "families.py")) as f:
    tree = ast.parse(f.read())
  for node in tree.body:
    if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id == "FAMILIES"):
      return {k.value: f"train/{v.value.id}.py" for k, v in zip(node.value.keys,
                                                                 node.value.values)}
  raise AssertionError("train/families.py has no FAMILIES")


def spine_reads() -> config_reads.Reads:
  reads = config_reads.scan_all(SPINE_MODULES, sections())
  reads.unresolved = [u for u in reads.unresolved if u[0] not in WHOLE_CONFIG_READERS]
  reads.fields |= {tuple(f.split(".")) for f in pipeline_fields()}
  return reads


def experiment_configs() -> list[str]:
  return sorted(name[:-3] for name in os.listdir(os.path.join(REPO, "configs"))
                if name.endswith(".py") and name not in NOT_EXPERIMENTS)


def test_families_have_bases():
  assert sorted(bases.BASES) == sorted(family_modules())


def test_spine_reads_resolve():
  assert not spine_reads().unresolved


def test_default_holds_exactly_the_spine_reads():
  defined = flat_fields(default.get_config())
  read = spine_reads().dotted()
  assert not read - defined, f"the spine reads fields configs/default.py lacks: {read - defined}"
  assert not defined - read, f"configs/default.py holds fields nothing reads: {defined - read}"


@pytest.mark.parametrize("family", sorted(family_modules()))
def test_family_reads_resolve(family):
  reads = config_reads.scan(family_modules()[family], sections())
  assert not reads.unresolved, "\n".join(f"{p}:{line}: {what}"
                                         for p, line, what in reads.unresolved)


@pytest.mark.parametrize("family", sorted(family_modules()))
def test_base_holds_exactly_the_family_reads(family):
  base = bases.base_config(family)
  defined = flat_fields(base)
  spine_defined = flat_fields(default.get_config())
  assert spine_defined <= defined, (
      f"configs/{family}_base.py drops fields of configs/default.py: "
      f"{spine_defined - defined}")
  assert base.model.family == family
  read = config_reads.scan(family_modules()[family], sections()).dotted()
  missing = read - defined
  assert not missing, f"{family_modules()[family]} reads fields its base lacks: {missing}"
  unread = defined - read - spine_reads().dotted()
  assert not unread, f"configs/{family}_base.py holds fields nothing reads: {unread}"


@pytest.mark.parametrize("name", experiment_configs())
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_experiment_config_fields_are_its_base_fields(name, arg):
  module = importlib.import_module(f"configs.{name}")
  config = module.get_config(arg) if arg else module.get_config()
  family = config.model.family
  assert family in bases.BASES, f"configs/{name}.py: model.family={family!r}"
  extra = flat_fields(config) - flat_fields(bases.base_config(family))
  assert not extra, (f"configs/{name}.py holds fields that configs/{family}_base.py "
                     f"lacks (so {family} never reads them): {sorted(extra)}")


def test_scanner_finds_reads_and_probes(tmp_path, monkeypatch):
  """The parser itself: aliases, self attributes, section parameters, and probes."""
  source = '''
class F:
  def __init__(self, config):
    self.config = config
    self.v = config.vdm
    m, s = config.model, config.sampling
    self.width = m.ch * s.num_steps
    self.seed = config.seed
  def later(self):
    return self.v.gamma_min, self.config.eval.iwae_chunk
  def probes(self):
    return self.config.model.get("dropout", 0.0), self.config.model["k"], \\
        getattr(self.config.model, "x")
def make(optim_config, unrelated, model):
  return optim_config.learning_rate, unrelated.ch, model.dropout
def unnamed(cfg: ml_collections.ConfigDict):
  return cfg.model
'''
  path = tmp_path / "module.py"
  path.write_text(source)
  monkeypatch.setattr(config_reads, "REPO", str(tmp_path))
  reads = config_reads.scan("module.py", ("model", "sampling", "vdm", "eval", "optim"))
  assert reads.dotted() == {"vdm.gamma_min", "model.ch", "sampling.num_steps", "seed",
                            "eval.iwae_chunk", "optim.learning_rate", "model.k"}
  assert [what.split(":")[0] for _, _, what in reads.unresolved] == [
      "model.get()", "getattr(config ...)", "a read through ConfigDict parameter 'cfg'"]
