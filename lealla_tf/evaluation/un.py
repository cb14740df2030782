"""UN-style large-pool retrieval: precision at 1 over very large candidate pools.

Line ``i`` of ``source`` is the query whose translation is line ``i`` of ``target``; ``extra``
files enlarge the pool, which is embedded once and searched as memory maps::

    from lealla_tf.evaluation import un
    res = un.evaluate(model, "un.es", "un.en", extra=["news.en"], max_queries=5000)

See docs/evaluation.md, "UN-style pools".
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from lealla_tf.evaluation import ann, retrieval, runner


def load_side(model, path: str, batch_size: int = runner.DEFAULT_BATCH_SIZE,
              cache: Optional[str] = None, progress: bool = True) -> np.ndarray:
    """Embeddings of a text file (cached, returned as a memmap) or a ``.npy`` file."""
    if path.endswith(".npy"):
        return retrieval.open_array(path)
    if model is None:
        raise ValueError(f"{path} is a text file: a model is needed to embed it")
    return runner.embed_file(model, path, batch_size, cache=cache, progress=progress,
                             mmap=True)


def topk_pools(queries: np.ndarray, pools: Sequence[np.ndarray], k: int = 1,
               max_memory_bytes: int = retrieval.DEFAULT_MEMORY_BYTES,
               progress: bool = False, index=None) -> Tuple[np.ndarray, np.ndarray]:
    """Top-k over the concatenation of several candidate matrices (memmaps), without
    concatenating them: exact, or with ``index`` (an :class:`IndexConfig`) one
    approximate index per matrix (a shard), merged. Indices count through the pools in
    order."""
    best_s = best_i = None
    offset = 0
    for pool in pools:
        kk = min(k, pool.shape[0])
        s, i = ann.knn(queries, pool, kk, index, max_memory_bytes=max_memory_bytes,
                       progress=progress)
        i = i + offset
        offset += pool.shape[0]
        if best_s is None:
            best_s, best_i = s, i
        else:
            best_s, best_i = retrieval.merge_topk(best_s, best_i, s, i,
                                                  min(k, best_s.shape[1] + kk))
    if best_s is None:
        raise ValueError("no candidate pools given")
    return best_s, best_i


def evaluate(model, source: str, target: str, extra: Sequence[str] = (),
             max_queries: Optional[int] = None, both_directions: bool = True,
             batch_size: int = runner.DEFAULT_BATCH_SIZE, cache: Optional[str] = None,
             max_memory_bytes: int = retrieval.DEFAULT_MEMORY_BYTES,
             progress: bool = True, index=None) -> dict:
    """P@1 of line-aligned ``source`` queries against ``target`` (+ ``extra``) candidates.

    Args:
      model: embedder or callable (may be None when every input is an ``.npy`` file).
      source, target: line-aligned text files (or ``.npy`` embeddings).
      extra: more candidate files on the target side (no translations among them).
      max_queries: use only the first N lines of ``source`` as queries.
      both_directions: also score target -> source (only without ``extra``).
      batch_size, cache: embedding settings.
      max_memory_bytes: memory bound of the search.
      progress: show progress bars.
      index: :class:`lealla_tf.config.IndexConfig` (``faiss``/``scann``: approximate
        search through an index per pool file, built once and saved); None = exact.

    Returns:
      JSON-able dict with ``p_at_1`` (percent) per direction, ``queries`` and
      ``pool_size``.
    """
    embedder = runner.as_embedder(model) if model is not None else None
    x = load_side(embedder, source, batch_size, cache, progress)
    y = load_side(embedder, target, batch_size, cache, progress)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{source} has {x.shape[0]} lines but {target} has {y.shape[0]}")
    pools: List[np.ndarray] = [y] + [load_side(embedder, p, batch_size, cache, progress)
                                     for p in extra]
    n = x.shape[0] if max_queries is None else min(max_queries, x.shape[0])
    queries = np.asarray(x[:n], dtype=np.float32)
    gold = np.arange(n)
    _, idx = topk_pools(queries, pools, 1, max_memory_bytes, progress, index=index)
    p = {"src2tgt": 100.0 * float(np.mean(idx[:, 0] == gold)) if n else 0.0}
    if both_directions and not extra:
        _, idx = topk_pools(np.asarray(y[:n], dtype=np.float32), [x], 1, max_memory_bytes,
                            progress, index=index)
        p["tgt2src"] = 100.0 * float(np.mean(idx[:, 0] == gold)) if n else 0.0
    return {"task": "un-pool", "model": embedder.name if embedder else "precomputed",
            "source": os.path.abspath(source), "target": os.path.abspath(target),
            "extra": [os.path.abspath(p) for p in extra], "queries": n,
            "pool_size": int(sum(pl.shape[0] for pl in pools)), "p_at_1": p,
            "index": index.kind if index is not None else "exact",
            "unit": "percent"}


def format_table(result: dict) -> str:
    """Plain-text summary of :func:`evaluate`."""
    lines = [f"Large-pool retrieval P@1 (%) of {result['model']}: {result['queries']} "
             f"queries, pool of {result['pool_size']}"]
    for d, v in result["p_at_1"].items():
        lines.append(f"  {d:<8}{v:>8.2f}")
    return "\n".join(lines)
