"""Which config fields the code reads, found by parsing the source (no import).

Used by tests/test_config_fields.py. A read is an attribute chain on a config value:

  config.model.ch            self.config.sde.eps
  m = config.model; m.ch     d, s = config.diffusion, config.sampling; d.loss
  self.v = config.vdm; ...   self.v.gamma_min
  def f(optim_config): optim_config.learning_rate     (a `<section>_config` parameter)
  def f(optim: ml_collections.ConfigDict): optim.learning_rate

Config values are `config`, `self.config`, `<section>_config` parameters, parameters
named after a section and annotated ConfigDict, and names assigned from them. Reads that cannot be resolved statically are reported as
`unresolved` (a default through `.get`, a subscript, `getattr`, iteration), so that
the code stays readable by this parser: a field is read by name or not at all.
"""

from __future__ import annotations

import ast
import dataclasses
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_UNNAMED = "?"
# ConfigDict methods that read no field.
_NEUTRAL_METHODS = ("unlocked", "lock", "unlock", "ignore_type", "copy_and_resolve_references")


@dataclasses.dataclass
class Reads:
  fields: set[tuple[str, ...]] = dataclasses.field(default_factory=set)
  # (path, line, what): reads the parser cannot name.
  unresolved: list[tuple[str, int, str]] = dataclasses.field(default_factory=list)

  def update(self, other: "Reads") -> None:
    self.fields |= other.fields
    self.unresolved += other.unresolved

  def dotted(self) -> set[str]:
    return {".".join(f) for f in self.fields}


class _Scanner(ast.NodeVisitor):

  def __init__(self, path: str, sections: tuple[str, ...]):
    self.path = path
    self.sections = sections
    self.reads = Reads()
    self.self_aliases: dict[str, tuple[str, ...]] = {}   # self.<attr> -> path
    self.scopes: list[dict[str, tuple[str, ...]]] = [{}]

  # ---------------------------------------------------------------- resolution
  def config_path(self, node) -> tuple[str, ...] | None:
    """The config path a node evaluates to, or None if it is no config value."""
    if isinstance(node, ast.Name):
      for scope in reversed(self.scopes):
        if node.id in scope:
          return scope[node.id]
      return None
    if isinstance(node, ast.Attribute):
      if isinstance(node.value, ast.Name) and node.attr == "config":
        return ()                            # self.config, run.config
      if isinstance(node.value, ast.Name) and node.value.id == "self":
        return self.self_aliases.get(node.attr)
      base = self.config_path(node.value)
      # Sections hold fields, fields hold values: past two names it is the value's own
      # attribute (config.eval.sample_metrics.split).
      if base is None or node.attr in _NEUTRAL_METHODS or len(base) >= 2:
        return None
      return base + (node.attr,)
    return None

  def _bind(self, target, value) -> None:
    if isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List)):
      for t, v in zip(target.elts, value.elts):
        self._bind(t, v)
      return
    path = self.config_path(value)
    if isinstance(target, ast.Name):
      if path is not None:
        self.scopes[-1][target.id] = path
      else:
        self.scopes[-1].pop(target.id, None)
    elif (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
          and target.value.id == "self" and path is not None):
      self.self_aliases[target.attr] = path

  # ------------------------------------------------------------------ visitors
  def _function(self, node) -> None:
    scope = {}
    args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
    for arg in args:
      section = arg.arg[:-len("_config")] if arg.arg.endswith("_config") else arg.arg
      annotated_config = (arg.annotation is not None
                          and "ConfigDict" in ast.unparse(arg.annotation))
      if arg.arg == "config":
        scope["config"] = ()
      elif arg.arg.endswith("_config") and section in self.sections:
        scope[arg.arg] = (section,)
      elif annotated_config and section in self.sections:   # def f(optim: ConfigDict)
        scope[arg.arg] = (section,)
      elif annotated_config:
        scope[arg.arg] = (_UNNAMED + arg.arg,)   # a config of unknown section
    for default in node.args.defaults + node.args.kw_defaults:
      if default is not None:
        self.visit(default)
    self.scopes.append(scope)
    for statement in node.body:
      self.visit(statement)
    self.scopes.pop()

  visit_FunctionDef = visit_AsyncFunctionDef = _function

  def visit_Lambda(self, node) -> None:
    self.visit(node.body)

  def visit_Assign(self, node) -> None:
    self.visit(node.value)
    for target in node.targets:
      self._bind(target, node.value)
      if not isinstance(target, ast.Name):
        self.visit(target)

  def visit_Attribute(self, node) -> None:
    path = self.config_path(node)
    if path and path[0].startswith(_UNNAMED):
      self.reads.unresolved.append((self.path, node.lineno, f"a read through ConfigDict "
                                    f"parameter {path[0][len(_UNNAMED):]!r}: name it "
                                    "`config` or after its section"))
      return
    if path is not None and len(path) >= 2:
      self.reads.fields.add(path)
      return
    if path is not None and len(path) == 1 and path[0] not in self.sections:
      self.reads.fields.add(path)            # a top-level field: config.seed, config.name
      return
    self.generic_visit(node)

  def visit_Call(self, node) -> None:
    func = node.func
    if isinstance(func, ast.Attribute):
      owner = self.config_path(func.value)
      if owner is not None and func.attr in ("get", "items", "keys", "values", "to_dict",
                                              "to_json", "to_json_best_effort"):
        self.reads.unresolved.append((self.path, node.lineno, f"{'.'.join(owner)}.{func.attr}()"))
        for arg in node.args:
          self.visit(arg)
        return
    if isinstance(func, ast.Name) and func.id in ("getattr", "hasattr") and node.args:
      if self.config_path(node.args[0]) is not None:
        self.reads.unresolved.append((self.path, node.lineno, f"{func.id}(config ...)"))
    self.generic_visit(node)

  def visit_Subscript(self, node) -> None:
    owner = self.config_path(node.value)
    if owner is not None:
      key = node.slice
      if isinstance(key, ast.Constant) and isinstance(key.value, str):
        self.reads.fields.add(owner + (key.value,))
      else:
        self.reads.unresolved.append((self.path, node.lineno,
                                      f"{'.'.join(owner) or 'config'}[...]"))
      self.visit(node.slice)
      return
    self.generic_visit(node)

  def visit_Compare(self, node) -> None:
    # `name in config.section`: a membership test is a probe for an optional field.
    for op, right in zip(node.ops, node.comparators):
      if isinstance(op, (ast.In, ast.NotIn)) and self.config_path(right) is not None:
        self.reads.unresolved.append((self.path, node.lineno, "`in` on a config"))
    self.generic_visit(node)

  def visit_For(self, node) -> None:
    if self.config_path(node.iter) is not None:
      self.reads.unresolved.append((self.path, node.lineno, "iteration over a config"))
    self.generic_visit(node)


def scan(relative_path: str, sections: tuple[str, ...]) -> Reads:
  """The config fields `relative_path` (from the repository root) reads."""
  with open(os.path.join(REPO, relative_path)) as f:
    tree = ast.parse(f.read(), relative_path)
  scanner = _Scanner(relative_path, sections)
  # Two passes: `self.x = config.section` in __init__ may come after a method using it.
  scanner.visit(tree)
  scanner.reads = Reads()
  scanner.visit(tree)
  return scanner.reads


def scan_all(paths, sections: tuple[str, ...]) -> Reads:
  reads = Reads()
  for path in paths:
    reads.update(scan(path, sections))
  return reads
