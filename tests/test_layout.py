"""The package's layout rules, read from the source with `ast` (nothing is imported).

- No import cycle between the package's modules (imports run when a module loads).
- The library layers import downwards only, deferred imports included: `data` imports no
  other part of the package (but `config_lib`), `models` only `data`, `decoding` only
  `data` and `models`; no module imports the command line (`cli`, `main`).
- No module uses another module's private name (`from moe_asr.x import _y`, `x._y`).
- No function is longer than `MAX_FUNCTION_LINES`, but those of `LONG_FUNCTIONS`.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib

PACKAGE = "moe_asr"
ROOT = pathlib.Path(__file__).resolve().parent.parent / PACKAGE

MAX_FUNCTION_LINES = 120

# (module, qualified function name): why it may be longer than MAX_FUNCTION_LINES.
LONG_FUNCTIONS = {
  # Search scan bodies: one jitted beam search each, its per-frame step a closure over the
  # search's constants; split, the pieces would pass a dozen arrays back and forth.
  ("moe_asr.decoding.ctc_beam", "_search"): "CTC prefix beam search (scan body and set-up)",
  ("moe_asr.decoding.ctc_beam", "_search.step"): "CTC prefix beam search: one frame",
  ("moe_asr.decoding.joint_beam", "label_synchronous_search"): "joint CTC/attention search",
}

# Layers: the parts of the package each may import (deferred imports included). Any may
# load configs (`config_lib`: the dataset builders read the corpus presets).
LAYERS = {
  "data": {"config_lib", "data"},
  "models": {"config_lib", "data", "models"},
  "decoding": {"config_lib", "data", "models", "decoding"},
}
COMMAND_LINE = {f"{PACKAGE}.cli", f"{PACKAGE}.main"}


@dataclasses.dataclass
class Import:
  target: str  # The module imported (a package's `__init__` counts as the package).
  names: tuple[str, ...]  # The names taken from it (`from target import names`).
  line: int
  deferred: bool  # Inside a function: runs when the function does.


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in sorted(ROOT.rglob("*.py")):
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts.pop()
    out[".".join(parts)] = path
  return out


MODULES = _modules()


def _is_private(name: str) -> bool:
  return name.startswith("_") and not name.startswith("__")


def _base(module: str, path: pathlib.Path, node: ast.ImportFrom) -> str:
  if not node.level:
    return node.module or ""
  parts = module.split(".")
  if path.name != "__init__.py":
    parts.pop()
  parts = parts[: len(parts) - (node.level - 1)]
  return ".".join(parts + ([node.module] if node.module else []))


def _imports(module: str) -> list[Import]:
  """Every import of the package by `module`, with whether it is deferred."""
  path = MODULES[module]
  out: list[Import] = []

  def visit(node: ast.AST, deferred: bool) -> None:
    for child in ast.iter_child_nodes(node):
      inner = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
      if isinstance(child, ast.Import):
        for alias in child.names:
          if alias.name.split(".")[0] == PACKAGE:
            out.append(Import(alias.name, (), child.lineno, deferred))
      elif isinstance(child, ast.ImportFrom):
        base = _base(module, path, child)
        if base.split(".")[0] != PACKAGE:
          continue
        for alias in child.names:
          sub = f"{base}.{alias.name}"
          if sub in MODULES:
            out.append(Import(sub, (), child.lineno, deferred))
          else:
            out.append(Import(base, (alias.name,), child.lineno, deferred))
      visit(child, inner)

  visit(ast.parse(path.read_text(), str(path)), False)
  return out


def _graph(deferred: bool) -> dict[str, set[str]]:
  graph = {}
  for module in MODULES:
    targets = set()
    for imp in _imports(module):
      if imp.deferred and not deferred:
        continue
      # Importing a.b.c runs the `__init__` of a and a.b first.
      parts = imp.target.split(".")
      targets |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    graph[module] = {t for t in targets if t in MODULES and t != module}
    graph[module] -= {t for t in graph[module] if module.startswith(t + ".")}
  return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state: dict[str, int] = {}  # 1: on the current path, 2: done.
  path: list[str] = []

  def dfs(node: str) -> list[str] | None:
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 1:
        return path[path.index(nxt) :] + [nxt]
      if nxt not in state:
        found = dfs(nxt)
        if found:
          return found
    path.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      found = dfs(node)
      if found:
        return found
  return None


def _part(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else ""


def test_the_module_import_graph_has_no_cycle():
  cycle = _find_cycle(_graph(deferred=False))
  assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def test_find_cycle_names_the_cycle():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert _find_cycle(graph) == ["a", "b", "c", "a"]
  assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_library_layers_import_downwards_only():
  bad = []
  for module in MODULES:
    allowed = LAYERS.get(_part(module))
    for imp in _imports(module):
      if imp.target in COMMAND_LINE and module not in COMMAND_LINE:
        bad.append(f"{module}:{imp.line} imports the command line {imp.target}")
      if allowed is not None and imp.target != PACKAGE and _part(imp.target) not in allowed:
        bad.append(f"{module}:{imp.line} imports {imp.target} (a layer above)")
  assert not bad, "\n".join(bad)


def _module_aliases(module: str, tree: ast.Module) -> dict[str, str]:
  """Names bound to a module of the package anywhere in `module` (any scope)."""
  aliases = {}
  path = MODULES[module]
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.asname and alias.name in MODULES:
          aliases[alias.asname] = alias.name
    elif isinstance(node, ast.ImportFrom):
      base = _base(module, path, node)
      for alias in node.names:
        if f"{base}.{alias.name}" in MODULES:
          aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
  return aliases


def _dotted(node: ast.AST) -> str | None:
  if isinstance(node, ast.Name):
    return node.id
  if isinstance(node, ast.Attribute):
    inner = _dotted(node.value)
    return inner and f"{inner}.{node.attr}"
  return None


def test_no_module_uses_another_modules_private_names():
  bad = []
  for module in MODULES:
    for imp in _imports(module):
      for name in imp.names:
        if _is_private(name) and imp.target != module:
          bad.append(f"{module}:{imp.line} imports {imp.target}.{name}")
    tree = ast.parse(MODULES[module].read_text())
    aliases = _module_aliases(module, tree)
    for node in ast.walk(tree):
      if not isinstance(node, ast.Attribute) or not _is_private(node.attr):
        continue
      owner = _dotted(node.value) or ""
      owner = aliases.get(owner, owner)
      if owner in MODULES and owner != module:
        bad.append(f"{module}:{node.lineno} uses {owner}.{node.attr}")
  assert not bad, "\n".join(bad)


def _functions(tree: ast.AST, prefix: str = ""):
  for node in ast.iter_child_nodes(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      name = prefix + node.name
      yield name, node.end_lineno - node.lineno + 1
      yield from _functions(node, name + ".")
    elif isinstance(node, ast.ClassDef):
      yield from _functions(node, prefix + node.name + ".")
    else:
      yield from _functions(node, prefix)


def test_functions_are_at_most_max_lines():
  long, seen = [], set()
  for module, path in MODULES.items():
    for name, lines in _functions(ast.parse(path.read_text())):
      if lines <= MAX_FUNCTION_LINES:
        continue
      seen.add((module, name))
      if (module, name) not in LONG_FUNCTIONS:
        long.append(f"{module}.{name}: {lines} lines")
  assert not long, f"longer than {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)
  # An allowance whose function got short (or went) is removed with it.
  assert set(LONG_FUNCTIONS) <= seen, sorted(set(LONG_FUNCTIONS) - seen)
