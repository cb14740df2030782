"""Exact nearest-neighbour search by cosine, within a memory bound.

:func:`topk` reads the candidates one chunk at a time (an ``.npy`` path is memory-mapped) and
merges each chunk's top-k into a running one, so the pool may be far larger than memory::

    from lealla_tf.evaluation import retrieval
    scores, idx = retrieval.topk(queries, "candidates.npy", k=1)

See docs/evaluation.md, "UN-style pools".
"""

from __future__ import annotations

import os
from typing import Optional, Tuple, Union

import numpy as np

DEFAULT_MEMORY_BYTES = 256 << 20
ArrayOrPath = Union[np.ndarray, str, os.PathLike]


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), as float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, eps)


def open_array(a: ArrayOrPath) -> np.ndarray:
    """An array, or an ``.npy`` path opened as a read-only memmap.

    Raises:
      FileNotFoundError: for a missing file; ValueError for a non-2-D array.
    """
    if isinstance(a, (str, os.PathLike)):
        if not os.path.isfile(a):
            raise FileNotFoundError(f"embedding file not found: {a}")
        a = np.load(a, mmap_mode="r")
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D embedding matrix, got shape {a.shape}")
    return a


def chunk_sizes(num_queries: int, dim: int, k: int,
                max_memory_bytes: int = DEFAULT_MEMORY_BYTES) -> Tuple[int, int]:
    """(query_chunk, candidate_chunk) whose temporaries fit ``max_memory_bytes``.

    Per step the search holds a float32 candidate chunk ``[c, dim]``, a float32 score
    block ``[q, c]`` and, for ``k > 1``, the int64 output of ``argpartition`` ``[q, c]``:
    at most ``4 * (c * dim + 3 * q * c)`` bytes (``4 * (c * dim + q * c)`` for k = 1),
    besides the queries and the ``[Q, k]`` results. Queries are taken in chunks of up to
    2048.
    """
    if max_memory_bytes <= 0:
        raise ValueError(f"max_memory_bytes must be positive, got {max_memory_bytes}")
    q = max(1, min(num_queries, 2048))
    per_candidate = 4 * (dim + (3 if k > 1 else 1) * q)
    c = max_memory_bytes // per_candidate
    while c < max(64, 2 * k) and q > 16:
        q //= 2
        per_candidate = 4 * (dim + (3 if k > 1 else 1) * q)
        c = max_memory_bytes // per_candidate
    return q, int(max(c, k, 1))


def merge_topk(best_s: np.ndarray, best_i: np.ndarray, s: np.ndarray, i: np.ndarray,
               k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Top-k of the union of two (scores, indices) sets per row, sorted."""
    all_s = np.concatenate([best_s, s], axis=1)
    all_i = np.concatenate([best_i, i], axis=1)
    # Sort by score desc, then index asc.
    order = np.lexsort((all_i, -all_s), axis=1)[:, :k]
    return (np.take_along_axis(all_s, order, axis=1),
            np.take_along_axis(all_i, order, axis=1))


def topk(queries: ArrayOrPath, candidates: ArrayOrPath, k: int = 1,
         normalize: bool = True, max_memory_bytes: int = DEFAULT_MEMORY_BYTES,
         progress: bool = False, desc: str = "search") -> Tuple[np.ndarray, np.ndarray]:
    """Exact top-k candidates per query by inner product (cosine if ``normalize``).

    Args:
      queries: ``[Q, D]`` array or ``.npy`` path.
      candidates: ``[N, D]`` array, memmap or ``.npy`` path (opened as a memmap).
      k: neighbours per query (at most N).
      normalize: L2-normalise queries and each candidate chunk (cosine similarity).
      max_memory_bytes: bound on the temporaries of one step (see :func:`chunk_sizes`).
      progress: show a tqdm bar over candidate chunks.
      desc: label of the bar.

    Returns:
      ``(scores float32 [Q, k], indices int64 [Q, k])``, best first.
    """
    q_all = open_array(queries)
    cand = open_array(candidates)
    n, dim = cand.shape
    if q_all.shape[1] != dim:
        raise ValueError(f"queries have dimension {q_all.shape[1]}, candidates {dim}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (number of candidates), got {k}")
    nq = q_all.shape[0]
    q_all = np.ascontiguousarray(q_all, dtype=np.float32)
    if normalize:
        q_all = l2_normalize(q_all)
    q_chunk, c_chunk = chunk_sizes(nq, dim, k, max_memory_bytes)
    best_s = np.full((nq, k), -np.inf, dtype=np.float32)
    best_i = np.full((nq, k), -1, dtype=np.int64)
    from tqdm.auto import tqdm
    starts = range(0, n, c_chunk)
    for c0 in tqdm(starts, desc=desc, disable=not progress, leave=False):
        c1 = min(c0 + c_chunk, n)
        block = np.array(cand[c0:c1], dtype=np.float32)  # a copy: memmaps stay untouched
        if normalize:
            norms = np.sqrt(np.einsum("ij,ij->i", block, block))  # no [c, dim] temporary
            block /= np.maximum(norms, 1e-12)[:, None]
        width = c1 - c0
        kk = min(k, width)
        for q0 in range(0, nq, q_chunk):
            q1 = min(q0 + q_chunk, nq)
            scores = q_all[q0:q1] @ block.T
            if k == 1:
                j = scores.argmax(axis=1)
                s = scores[np.arange(q1 - q0), j]
                better = s > best_s[q0:q1, 0]  # strict: earlier (lower) index wins ties
                best_s[q0:q1, 0] = np.where(better, s, best_s[q0:q1, 0])
                best_i[q0:q1, 0] = np.where(better, j + c0, best_i[q0:q1, 0])
                del scores  # free the block before the next one is allocated
                continue
            np.negative(scores, out=scores)  # in place: no second [q, c] float block
            if kk < width:
                j = np.argpartition(scores, kk - 1, axis=1)[:, :kk].copy()  # frees [q, c]
            else:
                j = np.broadcast_to(np.arange(width), (q1 - q0, width))
            s = -np.take_along_axis(scores, j, axis=1)
            best_s[q0:q1], best_i[q0:q1] = merge_topk(
                best_s[q0:q1], best_i[q0:q1], s, j.astype(np.int64) + c0, k)
            del scores, j
        del block  # free the chunk before the next one is read
    return best_s, best_i


def brute_force_topk(queries: np.ndarray, candidates: np.ndarray, k: int = 1,
                     normalize: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """The whole similarity matrix at once; the reference :func:`topk` must equal."""
    q = np.asarray(queries, dtype=np.float32)
    c = np.asarray(candidates, dtype=np.float32)
    if normalize:
        q, c = l2_normalize(q), l2_normalize(c)
    sims = q @ c.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), order.astype(np.int64)


def precision_at_1(queries: ArrayOrPath, candidates: ArrayOrPath,
                   gold: Optional[np.ndarray] = None, **kwargs) -> float:
    """Share of queries whose nearest candidate is the gold one.

    Args:
      queries: ``[Q, D]`` array or ``.npy`` path.
      candidates: ``[N, D]`` array, memmap or ``.npy`` path.
      gold: int ``[Q]`` index of each query's translation among the candidates
        (default: ``arange(Q)``, i.e. line-aligned files).
      **kwargs: passed to :func:`topk` (``max_memory_bytes``, ``progress`` ...).
    """
    _, idx = topk(queries, candidates, k=1, **kwargs)
    gold = np.arange(idx.shape[0]) if gold is None else np.asarray(gold)
    if gold.shape[0] != idx.shape[0]:
        raise ValueError(f"{gold.shape[0]} gold indices for {idx.shape[0]} queries")
    return float(np.mean(idx[:, 0] == gold)) if idx.shape[0] else 0.0
