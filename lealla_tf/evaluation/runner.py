"""Embedding runner: any encoder in, float32 matrices out, never the same work twice.

The unit of work of every evaluation is an *embedder*: an object with a ``name``
(a string naming the model, used in cache keys) and ``encode(sentences) ->
np.ndarray`` returning float32 ``[N, D]``. Exported models, TFLite files and TF Hub
handles are turned into embedders elsewhere; any Python callable (a teacher, a
baseline) becomes one through :class:`CallableEmbedder`.

:func:`embed_sentences` sorts sentences by length so that each batch holds sentences
of similar length (less padding), shows a progress bar, and puts the rows back in
input order. :func:`embed_file` reads a line-aligned text file (every physical line
is a sentence, empty lines included, so line ``i`` is row ``i``) and caches the matrix
on disk under a key made of the model name and the SHA-256 of the file's bytes: the
same model never embeds the same file twice, wherever the file lives.

The cache root is ``$LEALLA_CACHE_DIR`` (default ``~/.cache/lealla_tf``); embeddings
live in its ``embeddings/`` folder.

Example::

    from lealla_tf.evaluation import runner

    emb = runner.CallableEmbedder(my_teacher_fn, name="labse-teacher")
    x = runner.embed_file(emb, "tatoeba.deu-eng.deu")          # embeds, caches
    x = runner.embed_file(emb, "tatoeba.deu-eng.deu")          # read from cache
    y = runner.embed_sentences(emb, ["Hund", "dog"], batch_size=2)
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Callable, List, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from lealla_tf import corpus

DEFAULT_BATCH_SIZE = 64
CACHE_ENV = "LEALLA_CACHE_DIR"


@runtime_checkable
class Embedder(Protocol):
    """What the evaluations need from a model."""

    name: str

    def encode(self, sentences: List[str]) -> np.ndarray:
        """Returns float32 ``[len(sentences), D]`` embeddings."""


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


def as_embedder(model, name: Optional[str] = None) -> Embedder:
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


# ----------------------------------------------------------------------------- reading


def read_lines(path: str) -> List[str]:
    """Every physical line of a UTF-8 text file, newline removed, in order.

    Unlike ``corpus.iter_text`` nothing is skipped: evaluation files are line-aligned,
    and line ``i`` of one file is the translation of line ``i`` of the other. Invalid
    bytes are replaced (U+FFFD) instead of dropping the line.

    Raises:
      FileNotFoundError: naming the file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"sentence file not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    text = data.decode("utf-8", errors="replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


file_digest = corpus.sha256_file  # SHA-256 hex digest of a file's bytes


# ----------------------------------------------------------------------------- embedding


def _check_output(out, n: int, name: str) -> np.ndarray:
    out = np.asarray(out.numpy() if hasattr(out, "numpy") else out, dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != n:
        raise ValueError(
            f"model {name!r} returned shape {tuple(out.shape)} for {n} sentences; "
            "expected [N, D]")
    return out


def embed_sentences(embedder: Embedder, sentences: Sequence[str],
                    batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = True,
                    desc: str = "embedding", out: Optional[np.ndarray] = None) -> np.ndarray:
    """Embeds sentences in length-sorted batches; rows come back in input order.

    Args:
      embedder: object with ``encode(list[str]) -> [N, D]`` and ``name``.
      sentences: the sentences.
      batch_size: sentences per ``encode`` call.
      progress: show a tqdm progress bar.
      desc: label of the progress bar.
      out: optional preallocated float32 ``[N, D]`` array (e.g. an ``.npy`` memmap from
        ``np.lib.format.open_memmap``) to write into, so a large corpus never needs a
        second copy in memory.

    Returns:
      float32 ``[N, D]`` (``out`` when given).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    sentences = list(sentences)
    n = len(sentences)
    name = getattr(embedder, "name", "model")
    if n == 0:
        if out is not None:
            return out
        return np.zeros((0, 0), dtype=np.float32)
    # Longest first: the slowest batch runs first and the bar's estimate is honest.
    order = sorted(range(n), key=lambda i: -len(sentences[i]))
    from tqdm.auto import tqdm
    bar = tqdm(total=n, desc=desc, unit="sent", disable=not progress, leave=False)
    try:
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            vecs = _check_output(embedder.encode([sentences[i] for i in idx]), len(idx), name)
            if out is None:
                out = np.empty((n, vecs.shape[1]), dtype=np.float32)
            elif out.shape[0] != n or out.shape[1] != vecs.shape[1]:
                raise ValueError(
                    f"out has shape {tuple(out.shape)}, model {name!r} gives "
                    f"[{n}, {vecs.shape[1]}]")
            out[np.asarray(idx)] = vecs
            bar.update(len(idx))
    finally:
        bar.close()
    return out


def cache_dir(path: Optional[str] = None) -> str:
    """The embedding cache folder: ``path``, else ``embeddings`` under the cache
    (:func:`lealla_tf.config.cache_root`: ``$LEALLA_CACHE_DIR``, else the user's cache
    directory, ``~/.cache/lealla_tf`` on Linux)."""
    if path:
        return path
    from lealla_tf import config
    return os.path.join(config.cache_root(), "embeddings")


def model_identity(embedder: Embedder) -> str:
    """What identifies a model in cache keys.

    An embedder's ``fingerprint`` attribute when it has one; else its ``name``, plus,
    when the name (or a ``path`` attribute) is a file or folder on disk, the size and
    modification time of its files, so that re-exporting a model to the same path
    does not serve stale embeddings.
    """
    fingerprint = getattr(embedder, "fingerprint", None)
    if fingerprint:
        return str(fingerprint)
    name = str(embedder.name)
    parts = [name]
    for path in (name, getattr(embedder, "path", None)):
        if not isinstance(path, str) or not path or not os.path.exists(path):
            continue
        if os.path.isfile(path):
            st = os.stat(path)
            parts.append(f"{st.st_size}:{st.st_mtime_ns}")
        else:
            entries = []
            for folder, _, files in os.walk(path):
                for f in files:
                    st = os.stat(os.path.join(folder, f))
                    entries.append(f"{os.path.relpath(os.path.join(folder, f), path)}:"
                                   f"{st.st_size}:{st.st_mtime_ns}")
                if len(entries) > 2000:  # a model folder is small; never walk a whole disk
                    break
            parts.extend(sorted(entries))
        break
    return "\0".join(parts)


def cache_key(model_name: str, content_digest: str) -> str:
    """Key of one (model identity, sentence content) pair."""
    return hashlib.sha256(f"{model_name}\0{content_digest}".encode("utf-8")).hexdigest()


def _atomic_save(path: str, array: np.ndarray, meta: dict) -> None:
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp.npy")
    os.close(fd)
    try:
        np.save(tmp, array)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    with open(path[:-4] + ".json", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)


def cached_path(embedder: Embedder, path: str, cache: Optional[str] = None) -> str:
    """Where :func:`embed_file` keeps (or would keep) the embeddings of ``path``."""
    key = cache_key(model_identity(embedder), file_digest(path))
    return os.path.join(cache_dir(cache), key[:2], key + ".npy")


def embed_file(embedder: Embedder, path: str, batch_size: int = DEFAULT_BATCH_SIZE,
               cache: Optional[str] = None, use_cache: bool = True, progress: bool = True,
               mmap: bool = False) -> np.ndarray:
    """Embeds every line of a text file, through the on-disk cache.

    The key is ``sha256(model name, sha256(file bytes))``: moving or copying the file
    keeps the hit, editing it misses.

    Args:
      embedder: object with ``encode`` and ``name``.
      path: UTF-8 text file, one sentence per line.
      batch_size: sentences per ``encode`` call.
      cache: cache folder (default :func:`cache_dir`).
      use_cache: False embeds without reading or writing the cache.
      progress: show a progress bar.
      mmap: return a read-only memmap of the cached ``.npy`` instead of loading it
        (for candidate pools larger than memory).

    Returns:
      float32 ``[lines, D]``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"sentence file not found: {path}")
    if not use_cache:
        return embed_sentences(embedder, read_lines(path), batch_size, progress,
                               desc=os.path.basename(path))
    target = cached_path(embedder, path, cache)
    if os.path.exists(target):
        try:
            return np.load(target, mmap_mode="r" if mmap else None)
        except (ValueError, OSError):
            os.remove(target)  # a damaged entry is recomputed
    sentences = read_lines(path)
    emb = embed_sentences(embedder, sentences, batch_size, progress,
                          desc=os.path.basename(path))
    _atomic_save(target, emb, {"model": embedder.name, "file": os.path.abspath(path),
                               "lines": len(sentences),
                               "dim": int(emb.shape[1]) if emb.size else 0})
    return np.load(target, mmap_mode="r") if mmap else emb


def embed_texts(embedder: Embedder, sentences: Sequence[str],
                batch_size: int = DEFAULT_BATCH_SIZE, cache: Optional[str] = None,
                use_cache: bool = True, progress: bool = True,
                desc: str = "embedding") -> np.ndarray:
    """:func:`embed_sentences` through the cache, for sentences that are not a plain file
    (e.g. the text column of a BUCC ``id<TAB>sentence`` file).

    The key is the model name and the SHA-256 of the sentences joined by newlines.
    """
    sentences = list(sentences)
    if not use_cache:
        return embed_sentences(embedder, sentences, batch_size, progress, desc)
    h = hashlib.sha256()
    for s in sentences:
        h.update(s.encode("utf-8", errors="surrogatepass"))
        h.update(b"\n")
    key = cache_key(model_identity(embedder), "texts:" + h.hexdigest())
    target = os.path.join(cache_dir(cache), key[:2], key + ".npy")
    if os.path.exists(target):
        try:
            return np.load(target)
        except (ValueError, OSError):
            os.remove(target)
    emb = embed_sentences(embedder, sentences, batch_size, progress, desc)
    _atomic_save(target, emb, {"model": embedder.name, "texts": len(sentences),
                               "dim": int(emb.shape[1]) if emb.size else 0})
    return emb


def load_callable(spec: str) -> Embedder:
    """``py:package.module:attr`` -> embedder: the attribute is an embedder (``encode`` +
    ``name``) or a callable ``list[str] -> [N, D]`` (wrapped, named after the spec).

    Raises:
      ValueError: for a malformed spec or an attribute that is neither.
    """
    import importlib

    body = spec[3:] if spec.startswith("py:") else spec
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
