"""One protocol for "something that embeds sentences", one spec grammar, one batching policy.

An *embedder* has a ``name`` (str), a ``fingerprint`` (what caches key on; changes when
the weights do), a ``dim`` and ``encode(sentences) -> float32 [N, dim]``. Teachers
(:mod:`lealla_tf.embedders.teachers`), exports, ``.tflite`` files, training runs, TF Hub handles
and Python callables are all embedders, and all load through :func:`load`:

=================================  ======================================================
``muse`` / ``labse``               the named teachers (multilingual USE v3; LaBSE on TF Hub)
``hub:<handle>``                   a string-input TF Hub model (handle, URL or folder)
``hub:<preprocessor>|<encoder>``   a TF Hub text-API pair (``default`` output)
``savedmodel:<path>``              a string-input SavedModel folder
``export:<path>``                  a ``lealla export`` folder (its ``lealla/`` SavedModel)
``tflite:<path>``                  a ``.tflite`` export
``run:<path>``                     a training run's model dir (latest checkpoint)
``py:<module>:<attr>``             a Python embedder, or a callable ``list[str] -> [N, D]``
``<path>``                         recognised: ``*.tflite`` file, export folder, SavedModel
                                   folder, run dir (local or ``ram://``)
``<URL>``                          ``http(s)://`` and ``gs://``: a TF Hub handle (an export
                                   or run on ``gs://`` takes its prefix: ``export:gs://..``)
=================================  ======================================================

Paths may be local, ``gs://`` or ``ram://`` (read through :mod:`lealla_tf.fileio`).

The batching policy (:func:`batch_order`): sentences are ordered longest first by their
*token count* when the embedder knows its vocabulary (exports carry one; teachers with
a SentencePiece model expose it), else by UTF-8 length, and cut into batches in that
order, so each batch pads the least. Embeddings come back in input order; the order never
changes an embedding, only which sentences share a model call.

Example::

    from lealla_tf import embedders
    model = embedders.load("exports/tiny")        # or "muse", "hub:...", "run:results/x"
    model.encode(["dog", "Hund"])                 # float32 [2, D]
"""

from __future__ import annotations

import importlib
import re
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Union

import numpy as np

from lealla_tf import fileio, layout

DEFAULT_BATCH_SIZE = 64

# Kind -> "module:function" building it from (value, **options); imported on first use so
# this module stays at the bottom of the import order.
_LOADERS: Dict[str, Union[str, Callable]] = {
    "muse": "lealla_tf.embedders.teachers:_load_muse",
    "labse": "lealla_tf.embedders.teachers:_load_labse",
    "hub": "lealla_tf.embedders.teachers:_load_hub",
    "hub_pair": "lealla_tf.embedders.teachers:_load_hub_pair",
    "savedmodel": "lealla_tf.embedders.teachers:_load_savedmodel",
    "export": "lealla_tf.embedders.artifacts:_load_export",
    "tflite": "lealla_tf.embedders.artifacts:_load_tflite",
    "run": "lealla_tf.embedders.artifacts:_load_run",
    "py": "lealla_tf.embedders:load_callable",
}
_PREFIXES = ("hub", "savedmodel", "export", "tflite", "run", "py")
SPEC_HELP = ("muse | labse | hub:<handle> | 'hub:<preprocessor>|<encoder>' | savedmodel:<path> "
             "| export:<path> | tflite:<path> | run:<path> | py:<module>:<function> | an "
             "export folder, .tflite file, run dir, SavedModel folder or TF Hub URL")


class Spec(NamedTuple):
    """A parsed model spec: its kind (a key of the registry) and its value."""

    kind: str
    value: str


def _as_bytes(s: Union[str, bytes]) -> bytes:
    if isinstance(s, bytes):
        return s
    try:
        return s.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:
        return s.encode("utf-8", errors="replace")


RUN_CONFIG_FILE = layout.CONFIG_FILE  # what marks a training run's dir


def _detect_path(path: str) -> Optional[Spec]:
    """The kind of an existing file or folder, or None when it does not exist."""
    if not fileio.exists(path):
        return None
    if not fileio.isdir(path):
        if path.endswith(".tflite"):
            return Spec("tflite", path)
        raise ValueError(f"{path} is a file but not a .tflite model")
    if fileio.exists(fileio.join(path, "lealla", "saved_model.pb")):
        return Spec("export", path)
    if fileio.exists(fileio.join(path, "saved_model.pb")):
        return Spec("savedmodel", path)
    if fileio.exists(fileio.join(path, RUN_CONFIG_FILE)):
        return Spec("run", path)
    raise ValueError(
        f"{path} is a folder but not an export folder (lealla/saved_model.pb), a "
        f"SavedModel (saved_model.pb) or a training model dir ({RUN_CONFIG_FILE})")


def parse_spec(spec: str) -> Spec:
    """The one grammar of model specs (see the module docstring).

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
    _LOADERS[kind] = loader


def load(spec: str, **options) -> "Embedder":
    """Loads the embedder a spec names (the one entry point for teachers, evaluation,
    ``lealla embed``, mining and the demo).

    Args:
      spec: see the module docstring.
      **options: passed to the loader; ``batch_size`` and ``num_threads`` are understood
        by every kind that can use them (others ignore them), ``threads`` by ``muse``.

    Raises:
      ValueError: a malformed or unknown spec.
      FileNotFoundError: a path that does not exist.
    """
    kind, value = parse_spec(spec)
    loader = _LOADERS[kind]
    if isinstance(loader, str):
        module, _, attr = loader.partition(":")
        loader = getattr(importlib.import_module(module), attr)
    return loader(value, **options)


# ------------------------------------------------------------------ the batching policy
def sort_keys(model, sentences: Sequence[Union[str, bytes]]) -> List[int]:
    """The batching sort keys of any embedder: its ``lengths`` (token counts when it knows
    its vocabulary), else UTF-8 lengths."""
    data = [_as_bytes(s) for s in sentences]
    lengths = getattr(model, "lengths", None)
    return list(lengths(data)) if callable(lengths) else [len(s) for s in data]


def batch_order(keys: Sequence[int], batch_size: int) -> List[np.ndarray]:
    """Index batches: longest first (stable among equals), ``batch_size`` at a time.

    Args:
      keys: one sort key per sentence (see :func:`sort_keys`).
      batch_size: sentences per batch (positive).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = np.argsort([-k for k in keys], kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


class Embedder:
    """Base class: ``encode`` follows the batching policy and restores the input order.

    Subclasses implement ``_encode_batch(list[bytes]) -> np.ndarray [n, D]``; those that
    know a SentencePiece vocabulary pass ``length_model`` or override ``_vocabulary``.

    Args:
      name: stable model name.
      batch_size: default sentences per model call (0: everything in one call).
      fingerprint: what caches key on (default ``name``).
      length_model: SentencePiece model (file path or serialized bytes) for token counts.
    """

    def __init__(self, name: str, batch_size: int = DEFAULT_BATCH_SIZE,
                 fingerprint: Optional[str] = None,
                 length_model: Optional[Union[str, bytes]] = None):
        self.name = name
        self.fingerprint = fingerprint or name
        self.batch_size = int(batch_size or 0)
        self._dim: Optional[int] = None
        self._length_model = length_model
        self._sp = None
        self._sp_loaded = False

    def _vocabulary(self) -> Optional[Union[str, bytes]]:
        """The SentencePiece model giving token counts (None: UTF-8 lengths)."""
        return self._length_model

    def _processor(self):
        if not self._sp_loaded:
            self._sp_loaded = True
            model = self._vocabulary()
            if model:
                import sentencepiece as spm
                proto = model if isinstance(model, bytes) else fileio.read_bytes(model)
                self._sp = spm.SentencePieceProcessor(model_proto=proto)
        return self._sp

    def lengths(self, data: Sequence[bytes]) -> List[int]:
        """Sort keys of the batching policy: token counts, or UTF-8 lengths without a
        vocabulary."""
        sp = self._processor()
        if sp is None:
            return [len(s) for s in data]
        texts = [s.decode("utf-8", errors="replace") for s in data]
        return [len(ids) for ids in sp.encode(texts)]

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        if self._dim is None:
            self._dim = int(self._encode_batch([b""]).shape[1])
        return self._dim

    def _encode_batch(self, batch: List[bytes]) -> np.ndarray:
        raise NotImplementedError

    def encode(self, sentences: Sequence[Union[str, bytes]],
               batch_size: Optional[int] = None) -> np.ndarray:
        """Float32 ``[len(sentences), D]`` embeddings (str or UTF-8 bytes in).

        Args:
          sentences: the sentences; bytes are passed on unchanged (invalid UTF-8 included).
          batch_size: sentences per model call (default ``self.batch_size``; 0: one call).
        """
        data = [_as_bytes(s) for s in sentences]
        n = len(data)
        if n == 0:
            return np.zeros((0, self._dim if self._dim is not None else self.dim), np.float32)
        size = int(batch_size if batch_size is not None else self.batch_size) or n
        if size < 0:
            raise ValueError(f"batch_size must be positive, got {size}")
        # One call needs no order; several follow the batching policy.
        batches = [np.arange(n)] if size >= n else batch_order(self.lengths(data), size)
        out = None
        for idx in batches:
            vecs = np.asarray(self._encode_batch([data[i] for i in idx]), np.float32)
            if out is None:
                out = np.empty((n, vecs.shape[1]), np.float32)
                self._dim = vecs.shape[1]
            out[idx] = vecs
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class CallableEmbedder:
    """Adapts a Python callable ``fn(list[str]) -> array-like [N, D]`` to an embedder.

    Example::

        emb = CallableEmbedder(lambda s: teacher(s).numpy(), name="labse")

    Args:
      fn: the function embedding a list of sentences; its output is converted to a
        float32 NumPy array (TensorFlow tensors and lists are fine).
      name: stable model name; it keys the embedding cache, so two different models
        must not share a name.
    """

    def __init__(self, fn: Callable[[List[str]], object], name: str):
        if not callable(fn):
            raise ValueError(f"CallableEmbedder needs a callable, got {type(fn).__name__}")
        if not name:
            raise ValueError("CallableEmbedder needs a non-empty name (it keys the cache)")
        self._fn = fn
        self.name = name

    def encode(self, sentences: List[str]) -> np.ndarray:
        out = self._fn(list(sentences))
        if hasattr(out, "numpy"):
            out = out.numpy()
        return np.asarray(out, dtype=np.float32)

    def __repr__(self) -> str:
        return f"CallableEmbedder(name={self.name!r})"


def as_embedder(model, name: Optional[str] = None):
    """Returns ``model`` if it already has ``encode`` and ``name``, else wraps a callable.

    Args:
      model: an embedder, or a callable mapping a list of strings to ``[N, D]``.
      name: name for a wrapped callable (default: the callable's ``__name__``).
    """
    if hasattr(model, "encode") and getattr(model, "name", None):
        return model
    if callable(model):
        return CallableEmbedder(model, name or getattr(model, "__name__", "") or repr(model))
    raise ValueError(f"not an embedder or callable: {type(model).__name__}")


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
