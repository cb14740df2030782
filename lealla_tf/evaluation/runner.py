"""Embedding runner: any embedder in, float32 matrices out, never the same work twice.

:func:`embed_sentences` batches by the embedders' one policy; :func:`embed_file` embeds a
line-aligned file (line ``i`` is row ``i``) through an on-disk cache keyed by the model and
the SHA-256 of the file's bytes::

    from lealla_tf.evaluation import runner
    emb = runner.CallableEmbedder(my_fn, name="my-model")
    x = runner.embed_file(emb, "tatoeba.deu-eng.deu")   # embeds and caches; then reads

See docs/evaluation.md, "Models".
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from typing import List, Optional, Sequence

import numpy as np

from lealla_tf import embedders, fileio, paths
from lealla_tf.embedders import CallableEmbedder, as_embedder, load_callable  # noqa: F401

DEFAULT_BATCH_SIZE = embedders.DEFAULT_BATCH_SIZE
CACHE_ENV = paths.CACHE_ENV


# ----------------------------------------------------------------------------- reading


def read_lines(path: str) -> List[str]:
    """Every physical line of a UTF-8 text file, newline removed, in order.

    Unlike ``corpus.iter_text`` nothing is skipped: evaluation files are line-aligned,
    and line ``i`` of one file is the translation of line ``i`` of the other. Invalid
    bytes are replaced (U+FFFD) instead of dropping the line.

    Raises:
      FileNotFoundError: naming the file.
    """
    if not fileio.exists(path) or fileio.isdir(path):
        raise FileNotFoundError(f"sentence file not found: {path}")
    text = fileio.read_bytes(path).decode("utf-8", errors="replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def file_digest(path: str) -> str:
    """SHA-256 hex digest of a file's bytes (any tf.io.gfile path)."""
    h = hashlib.sha256()
    with fileio.open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- embedding


def _check_output(out, n: int, name: str) -> np.ndarray:
    out = np.asarray(out.numpy() if hasattr(out, "numpy") else out, dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != n:
        raise ValueError(
            f"model {name!r} returned shape {tuple(out.shape)} for {n} sentences; "
            "expected [N, D]")
    return out


def batches(embedder, sentences: Sequence[str], batch_size: int) -> List[np.ndarray]:
    """The index batches :func:`embed_sentences` gives ``embedder``: longest first (the
    slowest batch runs first and a progress bar's estimate is honest), at most
    ``batch_size`` sentences and the embedder's ``batch_tokens`` padded tokens each."""
    return embedders.batch_order(embedders.sort_keys(embedder, sentences), batch_size,
                                 getattr(embedder, "batch_tokens", None))


def embed_sentences(embedder: embedders.Embedder, sentences: Sequence[str],
                    batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = True,
                    desc: str = "embedding", out: Optional[np.ndarray] = None) -> np.ndarray:
    """Embeds sentences in batches of the batching policy (:func:`lealla_tf.embedders.
    batch_order` over :func:`lealla_tf.embedders.sort_keys`, with the embedder's
    ``batch_tokens`` budget); rows come back in input order. An
    :class:`~lealla_tf.embedders.Embedder` gets one ``encode_batch`` call per batch (the
    model call alone: sentences are ordered and tokenized for their lengths once).

    Args:
      embedder: object with ``encode(list[str]) -> [N, D]`` and ``name``.
      sentences: the sentences.
      batch_size: most sentences per ``encode`` call.
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
    if isinstance(embedder, embedders.Embedder):
        def encode(batch):
            return embedder.encode_batch([embedders.as_bytes(s) for s in batch])
    else:
        encode = embedder.encode
    from tqdm.auto import tqdm
    bar = tqdm(total=n, desc=desc, unit="sent", disable=not progress, leave=False)
    try:
        for idx in batches(embedder, sentences, batch_size):
            idx = idx.tolist()
            vecs = _check_output(encode([sentences[i] for i in idx]), len(idx), name)
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
    (:func:`lealla_tf.paths.cache_root`: ``$LEALLA_CACHE_DIR``, else the user's cache
    directory, ``~/.cache/lealla_tf`` on Linux)."""
    if path:
        return path
    return fileio.join(paths.cache_root(), "embeddings")


def model_identity(embedder: embedders.Embedder) -> str:
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
    buffer = io.BytesIO()
    np.save(buffer, array)
    fileio.atomic_write(path, buffer.getvalue())
    fileio.atomic_write(path[:-4] + ".json", json.dumps(meta, indent=1))


def _load_cached(path: str, mmap: bool = False) -> np.ndarray:
    """A cached ``.npy`` (memory-mapped when asked and the cache is local)."""
    if fileio.is_local(path):
        return np.load(path, mmap_mode="r" if mmap else None)
    return np.load(io.BytesIO(fileio.read_bytes(path)))


def cached_path(embedder: embedders.Embedder, path: str, cache: Optional[str] = None) -> str:
    """Where :func:`embed_file` keeps (or would keep) the embeddings of ``path``."""
    key = cache_key(model_identity(embedder), file_digest(path))
    return fileio.join(cache_dir(cache), key[:2], key + ".npy")


def embed_file(embedder: embedders.Embedder, path: str, batch_size: int = DEFAULT_BATCH_SIZE,
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
    if not fileio.exists(path) or fileio.isdir(path):
        raise FileNotFoundError(f"sentence file not found: {path}")
    if not use_cache:
        return embed_sentences(embedder, read_lines(path), batch_size, progress,
                               desc=fileio.basename(path))
    target = cached_path(embedder, path, cache)
    if fileio.exists(target):
        try:
            return _load_cached(target, mmap)
        except (ValueError, OSError):
            fileio.remove(target)  # a damaged entry is recomputed
    sentences = read_lines(path)
    emb = embed_sentences(embedder, sentences, batch_size, progress,
                          desc=fileio.basename(path))
    _atomic_save(target, emb, {"model": embedder.name, "file": fileio.normpath(path),
                               "lines": len(sentences),
                               "dim": int(emb.shape[1]) if emb.size else 0})
    return _load_cached(target, mmap) if mmap else emb


def embed_texts(embedder: embedders.Embedder, sentences: Sequence[str],
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
    target = fileio.join(cache_dir(cache), key[:2], key + ".npy")
    if fileio.exists(target):
        try:
            return _load_cached(target)
        except (ValueError, OSError):
            fileio.remove(target)
    emb = embed_sentences(embedder, sentences, batch_size, progress, desc)
    _atomic_save(target, emb, {"model": embedder.name, "texts": len(sentences),
                               "dim": int(emb.shape[1]) if emb.size else 0})
    return emb
