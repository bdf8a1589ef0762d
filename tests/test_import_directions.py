"""Import directions between the project's packages, read from the source (no import).

Layers, bottom to top; a package imports only what its row names:

  configs/      configs/   (experiment settings, chosen by the entry points)
  datasets/     datasets/
  models/       models/    (networks and their math know no data pipeline)
  sampling/, evaluation/   datasets/, models/, sampling/, evaluation/
  train/        the above and train/
  main.py       the above and configs/
  convert/      the above and convert/ (published checkpoints -> workdirs; not main)
  benchmarks/   the above, main and benchmarks/

So configs/ and datasets/ are the two bottom packages and do not import each
other; only main.py, convert/ and benchmarks/ import configs/ (library code receives a
ConfigDict; it never reads a config module). Further:
  - no family module (a value of train/families.py's FAMILIES, found by parsing
    that file) imports another family module: code two families share lives
    below train/ or in a train/ module that is not a family;
  - nothing imports a private name (`_name`) of another project module, neither
    `from x import _name` nor `module._name` through an imported module;
  - nothing here imports tests/.

Imports inside functions count, as do `importlib.import_module("constant")` and
`__import__("constant")`.
"""

from __future__ import annotations

import ast
import dataclasses
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("configs", "datasets", "models", "sampling", "evaluation", "train",
            "convert", "benchmarks")
_LIBRARY = ("datasets", "models", "sampling", "evaluation")
ALLOWED = {
    "configs": ("configs",),
    "datasets": ("datasets",),
    "models": ("models",),
    "sampling": _LIBRARY,
    "evaluation": _LIBRARY,
    "train": _LIBRARY + ("train",),
    "main": _LIBRARY + ("train", "configs"),
    "convert": _LIBRARY + ("train", "configs", "convert"),
    "benchmarks": _LIBRARY + ("train", "configs", "main", "benchmarks"),
}
# Top-level names that are project code outside these rows: never imported.
UNIMPORTABLE = ("tests",)
FAMILIES_FILE = os.path.join("train", "families.py")

# Violations in code that another change is restructuring (train/loop.py, the
# family classes and the shared math): (path, rule, imported name). Each must
# still occur (test_pending_violations_still_occur), so a fixed one is removed
# from here and the checker then holds it.
PENDING: set[tuple[str, str, str]] = set()


@dataclasses.dataclass(frozen=True)
class Violation:
  path: str
  line: int
  statement: str   # the import or attribute access, as written
  target: str      # the project module (or module.name) it reaches
  rule: str

  def __str__(self):
    return f"{self.path}:{self.line}: `{self.statement}` ({self.target}): {self.rule}"


def module_name(path: str) -> str:
  """'train/ddpm.py' -> 'train.ddpm'; 'models/__init__.py' -> 'models'."""
  parts = path[:-3].split("/")
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def project_files(repo: str = REPO) -> list[str]:
  """Paths (relative to repo, '/'-separated) of every checked .py file."""
  paths = ["main.py"]
  for package in PACKAGES:
    for root, dirs, files in os.walk(os.path.join(repo, package)):
      dirs[:] = sorted(d for d in dirs if d != "__pycache__")
      paths += [os.path.relpath(os.path.join(root, f), repo).replace(os.sep, "/")
                for f in sorted(files) if f.endswith(".py")]
  return paths


def _is_private(name: str) -> bool:
  return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _top(module: str) -> str:
  return module.split(".")[0]


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None):
  """The absolute module of `from <level dots><name> import ...` inside `module`."""
  parts = module.split(".")
  if not is_package:
    parts = parts[:-1]
  parts = parts[:len(parts) - (level - 1)] if level > 1 else parts
  return ".".join(parts + ([name] if name else []))


class _Imports:
  """One walk over a module's AST: every import as (node, imported module, name
  or None), the local names bound by imports (for `alias._private`) and the
  private attribute accesses to check against them."""

  def __init__(self, tree, module, is_package, known_modules):
    self.module, self.is_package, self.known = module, is_package, known_modules
    self.imports = []         # (node, module, name-or-None)
    self.aliases = {}         # local name -> dotted module or module.attribute
    self.private_attributes = []
    calls = []
    for node in ast.walk(tree):   # one pass: the checked tree holds ~100k nodes
      if isinstance(node, ast.Import):
        self._import(node)
      elif isinstance(node, ast.ImportFrom):
        self._import_from(node)
      elif isinstance(node, ast.Call):
        calls.append(node)
      elif isinstance(node, ast.Attribute) and _is_private(node.attr):
        self.private_attributes.append(node)
    for node in calls:            # after the walk: every alias is known
      self._call(node)

  def _import(self, node):
    for alias in node.names:
      self.imports.append((node, alias.name, None))
      if alias.asname:
        self.aliases[alias.asname] = alias.name
      else:
        self.aliases[_top(alias.name)] = _top(alias.name)

  def _import_from(self, node):
    base = (_resolve_relative(self.module, self.is_package, node.level, node.module)
            if node.level else node.module)
    for alias in node.names:
      if alias.name == "*":
        self.imports.append((node, base, None))
        continue
      full = f"{base}.{alias.name}"
      self.aliases[alias.asname or alias.name] = full
      if full in self.known:   # a submodule
        self.imports.append((node, full, None))
      else:
        self.imports.append((node, base, alias.name))

  def _call(self, node):
    """importlib.import_module("constant") and __import__("constant")."""
    func = _dotted(node.func)
    if func:
      head, _, rest = func.partition(".")
      func = self.aliases.get(head, head) + ("." + rest if rest else "")
    if (func in ("importlib.import_module", "__import__") and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)):
      name = node.args[0].value
      if name.startswith("."):   # import_module(".x", package="p")
        package = next((k.value.value for k in node.keywords if k.arg == "package"
                        and isinstance(k.value, ast.Constant)), self.module)
        level = len(name) - len(name.lstrip("."))
        name = _resolve_relative(package, True, level, name.lstrip(".") or None)
      self.imports.append((node, name, None))


def _dotted(node) -> str | None:
  """'a.b.c' of Name/Attribute chains, else None."""
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  if isinstance(node, ast.Name):
    return ".".join([node.id] + parts[::-1])
  return None


def _owning_module(dotted: str, known: set[str]) -> tuple[str | None, list[str]]:
  """The longest prefix of `dotted` that is a project module, and the rest."""
  parts = dotted.split(".")
  for i in range(len(parts), 0, -1):
    prefix = ".".join(parts[:i])
    if prefix in known:
      return prefix, parts[i:]
  return None, parts


def _alias_map(tree: ast.AST, module: str, is_package: bool, known: set[str]):
  return _Imports(tree, module, is_package, known)


def family_modules(families_source: str, known: set[str]) -> set[str]:
  """The modules of train/families.py's FAMILIES values, from its AST."""
  tree = ast.parse(families_source)
  aliases = _alias_map(tree, "train.families", False, known).aliases
  families = None
  for node in ast.walk(tree):
    targets = (node.targets if isinstance(node, ast.Assign) else
               [node.target] if isinstance(node, ast.AnnAssign) else [])
    if any(isinstance(t, ast.Name) and t.id == "FAMILIES" for t in targets):
      families = node.value
  if not isinstance(families, ast.Dict) or not families.values:
    raise AssertionError(f"{FAMILIES_FILE} has no literal FAMILIES dict to read "
                         "the family modules from.")
  modules = set()
  for value in families.values:
    dotted = _dotted(value)
    head, _, rest = (dotted or "").partition(".")
    owner, _ = _owning_module(aliases.get(head, head) + ("." + rest if rest else ""),
                              known)
    if owner is None:
      raise AssertionError(f"{FAMILIES_FILE}:{value.lineno}: cannot tell which "
                           f"module `{ast.unparse(value)}` comes from.")
    modules.add(owner)
  return modules


def check_source(source: str, path: str, known: set[str],
                 families: set[str]) -> list[Violation]:
  """Every import-direction violation of one file's source."""
  module = module_name(path)
  tree = ast.parse(source, filename=path)
  visitor = _alias_map(tree, module, path.endswith("__init__.py"), known)
  top = _top(module)
  out = []

  def add(node, target, rule):
    out.append(Violation(path, node.lineno, ast.unparse(node), target, rule))

  for node, imported, name in visitor.imports:
    imported_top = _top(imported)
    if imported_top in UNIMPORTABLE:
      add(node, imported, f"tests: {top}/ imports {imported_top}/, which no "
                          "project code imports")
      continue
    if imported_top not in ALLOWED:
      continue   # outside the project
    if imported_top not in ALLOWED[top]:
      allowed = ", ".join(a if a == "main" else a + "/" for a in ALLOWED[top])
      add(node, imported, f"layer: {top if top == 'main' else top + '/'} may import "
                          f"only {allowed}, not {imported_top}")
    owner, _ = _owning_module(imported, known)
    if module in families and owner in families and owner != module:
      add(node, imported, f"family: family module {module} imports another family "
                          f"module, {owner}")
    if name is not None and _is_private(name):
      add(node, f"{imported}.{name}", "private: imports a private name of another "
                                      "project module")
  for node in visitor.private_attributes:
    dotted = _dotted(node)
    if dotted is None:
      continue
    head, _, rest = dotted.partition(".")
    if head not in visitor.aliases:
      continue
    owner, remainder = _owning_module(f"{visitor.aliases[head]}.{rest}", known)
    # Only the name right after the module: `mod._x`, not `mod.Class._x`.
    if owner and owner != module and remainder == [node.attr]:
      add(node, f"{owner}.{node.attr}", "private: uses a private name of another "
                                        "project module")
  out.sort(key=lambda v: v.line)   # the walk is breadth-first
  return list(dict.fromkeys(out))   # one per statement, target and rule


def known_modules(paths: list[str]) -> set[str]:
  return {module_name(p) for p in paths}


def check_repo(repo: str = REPO) -> list[Violation]:
  paths = project_files(repo)
  known = known_modules(paths)
  with open(os.path.join(repo, FAMILIES_FILE)) as f:
    families = family_modules(f.read(), known)
  violations = []
  for path in paths:
    with open(os.path.join(repo, path)) as f:
      violations += check_source(f.read(), path, known, families)
  return violations


def _key(v: Violation):
  return (v.path, v.rule.split(":")[0], v.target)


@pytest.fixture(scope="module")
def violations():
  return check_repo()


def test_imports_follow_the_layers(violations):
  new = [v for v in violations if _key(v) not in PENDING]
  assert not new, ("Imports against the direction rules (tests/test_import_directions"
                   ".py documents them):\n" + "\n".join(map(str, new)))


def test_pending_violations_still_occur(violations):
  found = {_key(v) for v in violations}
  fixed = sorted(k for k in PENDING if k not in found)
  assert not fixed, ("Fixed, so remove from PENDING in "
                     f"tests/test_import_directions.py: {fixed}")


def test_family_modules_are_read_from_families_py():
  paths = project_files()
  with open(os.path.join(REPO, FAMILIES_FILE)) as f:
    families = family_modules(f.read(), known_modules(paths))
  assert "train.ddpm" in families and len(families) >= 2
  assert all(m.startswith("train.") for m in families)


# ------------------------------------------------------------------ self-test
_KNOWN = {"configs", "configs.default", "datasets", "datasets.shapes", "models",
          "models.unet", "models.text_encoder", "sampling", "sampling.ddpm",
          "evaluation", "evaluation.metrics", "train", "train.loop", "train.ddpm",
          "train.gan", "train.state", "main", "benchmarks"}
_FAMILIES = {"train.ddpm", "train.gan"}


def _rules(source, path):
  return [(v.line, v.rule.split(":")[0], v.target)
          for v in check_source(source, path, _KNOWN, _FAMILIES)]


def test_checker_catches_each_kind_of_violation():
  source = '''
import importlib
import numpy as np
from models import unet
from datasets import shapes

def lazy():
  from train import loop
  import sampling.ddpm as sd
  return importlib.import_module("evaluation.metrics")
'''
  assert _rules(source, "models/text_encoder.py") == [
      (5, "layer", "datasets.shapes"), (8, "layer", "train.loop"),
      (9, "layer", "sampling.ddpm"), (10, "layer", "evaluation.metrics")]
  assert _rules("from datasets import shapes\n", "configs/x.py") == [
      (1, "layer", "datasets.shapes")]
  assert _rules("import models.unet\n", "configs/x.py") == [(1, "layer", "models.unet")]
  assert _rules("from . import ddpm\n", "train/gan.py") == [
      (1, "family", "train.ddpm")]
  assert _rules("from train import state, ddpm\nfrom importlib import import_module"
                "\nimport_module('train.gan')\n", "train/loop.py") == []
  assert _rules("from importlib import import_module as im\nim('train.gan')\n",
                "train/ddpm.py") == [(2, "family", "train.gan")]
  assert _rules("from train.loop import _Run, Loop\n", "train/ddpm.py") == [
      (1, "private", "train.loop._Run")]
  assert _rules("from train import loop as L\nimport train.state\n"
                "L._write(train.state._x, L.Run._ok)\n", "main.py") == [
      (3, "private", "train.loop._write"), (3, "private", "train.state._x")]
  assert _rules("from tests import helpers\n", "benchmarks/b.py") == [
      (1, "tests", "tests")]
  assert _rules("from train import loop\nimport sampling.ddpm\n"
                "from configs import default\n",
                "benchmarks/b.py") == []
  assert _rules("from configs import bases\nfrom train import run\n", "convert/c.py") == []
  assert _rules("import main\n", "convert/c.py") == [(1, "layer", "main")]


def test_checker_reads_families_from_the_dict():
  source = ("from train import ddpm, gan as g\nfrom train.state import TrainState\n"
            "FAMILIES = {'ddpm': ddpm.DDPM, 'gan': g.GAN}\n")
  assert family_modules(source, _KNOWN) == {"train.ddpm", "train.gan"}
  with pytest.raises(AssertionError, match="no literal FAMILIES"):
    family_modules("FAMILIES = dict()\n", _KNOWN)
