"""One spec grammar and one registry for every model that embeds sentences.

:func:`load` turns a spec (``muse``, ``hub:...``, ``export:DIR``, ``run:DIR``, a ``.tflite``
file, ``py:module:function``, a bare path, ...) into an :class:`~lealla_tf.embedders.Embedder`;
:func:`register` adds a kind::

    from lealla_tf import embedders
    model = embedders.load("export:exports/tiny")   # or "muse", "hub:...", "run:runs/tiny"
    model.encode(["dog", "Hund"])                   # float32 [2, D]

See docs/evaluation.md, "Models" (the grammar).
"""

from __future__ import annotations

import importlib
import json
import re
from typing import Callable, Dict, NamedTuple, Optional, Union

from lealla_tf import fileio, layout
from lealla_tf.embedders.base import Embedder, as_embedder

# Kind -> "module:function" building it from (value, **options); imported on first use so
# this module stays below the loaders' modules.
LOADERS: Dict[str, Union[str, Callable]] = {
    "muse": "lealla_tf.embedders.teachers:load_muse",
    "labse": "lealla_tf.embedders.teachers:load_labse",
    "hub": "lealla_tf.embedders.teachers:load_hub",
    "hub_pair": "lealla_tf.embedders.teachers:load_hub_pair",
    "savedmodel": "lealla_tf.embedders.teachers:load_savedmodel",
    "export": "lealla_tf.embedders.artifacts:load_export",
    "tflite": "lealla_tf.embedders.artifacts:load_tflite",
    "run": "lealla_tf.embedders.artifacts:load_run",
    "py": "lealla_tf.embedders.spec:load_callable",
    # Other libraries' formats (`lealla export --format ...`), run by those libraries.
    "st": "lealla_tf.embedders.interop:load_sentence_transformers",
    "onnx": "lealla_tf.embedders.interop:load_onnx",
    "mediapipe": "lealla_tf.embedders.mediapipe:load_mediapipe",
}
_PREFIXES = ("hub", "savedmodel", "export", "tflite", "run", "py", "st", "onnx", "mediapipe")
SPEC_HELP = ("muse | labse | hub:<handle> | 'hub:<preprocessor>|<encoder>' | savedmodel:<path> "
             "| export:<path> | tflite:<path> | run:<path> | py:<module>:<function> | "
             "st:<path> | onnx:<path> | mediapipe:<path> | an export folder (any format), "
             ".tflite or .onnx file, run dir, SavedModel folder or TF Hub URL")
# export_info.json "format" -> spec kind, for the folders of `lealla export --format F`.
_FORMAT_KINDS = {"sentence-transformers": "st", "onnx": "onnx", "mediapipe": "mediapipe"}


class Spec(NamedTuple):
    """A parsed model spec: its kind (a key of the registry) and its value."""

    kind: str
    value: str


RUN_CONFIG_FILE = layout.CONFIG_FILE  # what marks a training run's dir


def _detect_path(path: str) -> Optional[Spec]:
    """The kind of an existing file or folder, or None when it does not exist."""
    if not fileio.exists(path):
        return None
    if not fileio.isdir(path):
        if path.endswith(".tflite"):
            return Spec("tflite", path)
        if path.endswith(".onnx"):
            return Spec("onnx", path)
        if path.endswith(layout.MEDIAPIPE_SUFFIXES[0]):
            return Spec("mediapipe", path)
        raise ValueError(f"{path} is a file but not a .tflite, .onnx or MediaPipe .task model")
    if fileio.exists(fileio.join(path, "lealla", "saved_model.pb")):
        return Spec("export", path)
    if fileio.exists(fileio.join(path, layout.ST_MODULES_FILE)):
        return Spec("st", path)
    kind = _FORMAT_KINDS.get(read_export_info(path).get("format"))
    if kind:
        return Spec(kind, path)
    if fileio.exists(fileio.join(path, "saved_model.pb")):
        return Spec("savedmodel", path)
    if fileio.exists(fileio.join(path, RUN_CONFIG_FILE)):
        return Spec("run", path)
    raise ValueError(
        f"{path} is a folder but not an export folder (lealla/saved_model.pb, or an "
        f"{layout.INFO_FILE} naming its format), a sentence-transformers folder "
        f"({layout.ST_MODULES_FILE}), a SavedModel (saved_model.pb) or a training model dir ({RUN_CONFIG_FILE})")


def read_export_info(folder: str) -> dict:
    """An export folder's export_info.json ({} when it has none or it is not a JSON
    object)."""
    path = fileio.join(folder, layout.INFO_FILE)
    if not fileio.exists(path):
        return {}
    try:
        info = json.loads(fileio.read_text(path))
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def parse_spec(spec: str) -> Spec:
    """The one grammar of model specs (docs/evaluation.md, "Models").

    Args:
      spec: the spec string.

    Raises:
      ValueError: a malformed spec, an unknown name, or a path of none of the known kinds.
      FileNotFoundError: a path (no known prefix, not a URL) that does not exist.
    """
    spec = (spec or "").strip()
    if not spec:
        raise ValueError(f"empty model spec; expected {SPEC_HELP}")
    if spec in ("muse", "labse"):
        return Spec(spec, "")
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in _PREFIXES and not rest.startswith("//"):
        rest = rest.strip()
        if not rest:
            raise ValueError(f"model spec {spec!r} names no {prefix}")
        if prefix == "hub" and "|" in rest:
            parts = rest.split("|")
            if len(parts) != 2 or not all(p.strip() for p in parts):
                raise ValueError(f"model spec {spec!r}: expected hub:<preprocessor>|<encoder>")
            return Spec("hub_pair", "|".join(p.strip() for p in parts))
        return Spec(prefix, rest)
    if re.match(r"^(https?|gs)://", spec):  # as TF Hub resolves them (prefix other kinds)
        return Spec("hub", spec)
    found = _detect_path(spec)
    if found is not None:
        return found
    if "/" not in spec and "\\" not in spec and "." not in spec:
        raise ValueError(f"unknown model spec {spec!r}: expected {SPEC_HELP}")
    raise FileNotFoundError(
        f"model source not found: {spec!r} (expected an export folder, a .tflite file, a "
        "run's model dir, or a TF Hub handle/URL: http(s)://..., gs://..., hub:HANDLE; "
        f"specs: {SPEC_HELP})")


def register(kind: str, loader: Callable) -> None:
    """Adds (or replaces) the loader of a spec kind: ``loader(value, **options)``."""
    LOADERS[kind] = loader


def load(spec: str, **options) -> Embedder:
    """Loads the embedder a spec names (the one entry point for teachers, evaluation,
    ``lealla embed``, mining and the demo).

    Args:
      spec: a model spec (docs/evaluation.md, "Models"; :data:`SPEC_HELP`).
      **options: passed to the loader; ``batch_size`` and ``num_threads`` are understood
        by every kind that can use them (others ignore them), ``threads`` by ``muse``.
        ``batch_tokens`` (not None) sets the loaded embedder's token budget, whatever its
        kind (:func:`lealla_tf.embedders.batch_order`).

    Raises:
      ValueError: a malformed or unknown spec.
      FileNotFoundError: a path that does not exist.
    """
    kind, value = parse_spec(spec)
    loader = LOADERS[kind]
    if isinstance(loader, str):
        module, _, attr = loader.partition(":")
        loader = getattr(importlib.import_module(module), attr)
    batch_tokens = options.pop("batch_tokens", None)
    embedder = loader(value, **options)
    if batch_tokens is not None and hasattr(embedder, "batch_tokens"):
        embedder.batch_tokens = int(batch_tokens)
    return embedder


def load_callable(spec: str, **_options):
    """``[py:]package.module:attr`` -> embedder: the attribute is an embedder (``encode`` +
    ``name``) or a callable ``list[str] -> [N, D]`` (wrapped, named after the spec).

    Raises:
      ValueError: for a malformed spec or an attribute that is neither.
    """
    body = spec[3:] if spec.startswith("py:") else spec
    spec = "py:" + body
    module, _, attr = body.partition(":")
    if not module or not attr:
        raise ValueError(f"python model spec {spec!r} must look like py:package.module:function")
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"python model spec {spec!r}: cannot import {module}: {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"python model spec {spec!r}: {module} has no attribute {attr}")
        obj = getattr(obj, part)
    return as_embedder(obj, name=spec)
