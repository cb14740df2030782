"""Margin-based bitext mining (LASER) and the F1-optimal threshold search (XTREME's BUCC).

:func:`mine` scores k-nearest-neighbour candidates both ways by the ratio (or distance,
absolute) margin and picks pairs by ``max``, ``fwd``, ``bwd`` or ``intersect`` retrieval;
:func:`best_f1_threshold` places the threshold::

    from lealla_tf.evaluation import mining
    pairs = mining.mine(x, y, k=4, retrieval_mode="max")   # MinedPairs: src, tgt, scores

See docs/evaluation.md, "BUCC-style mining".
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Optional, Set, Tuple

import numpy as np

from lealla_tf import fileio
from lealla_tf.evaluation import retrieval

MARGINS = ("ratio", "distance", "absolute")
RETRIEVALS = ("max", "fwd", "bwd", "intersect")


def _margin(cos: np.ndarray, mean: np.ndarray, margin: str) -> np.ndarray:
    if margin == "ratio":
        return cos / mean
    if margin == "distance":
        return cos - mean
    if margin == "absolute":
        return cos
    raise ValueError(f"margin must be one of {MARGINS}, got {margin!r}")


@dataclasses.dataclass
class Neighbourhoods:
    """k-NN in both directions and the mean neighbour similarities."""

    x2y_sim: np.ndarray  # [Nx, k] cosines, best first
    x2y_ind: np.ndarray  # [Nx, k]
    y2x_sim: np.ndarray  # [Ny, k]
    y2x_ind: np.ndarray  # [Ny, k]

    @property
    def x_mean(self) -> np.ndarray:
        return self.x2y_sim.mean(axis=1)

    @property
    def y_mean(self) -> np.ndarray:
        return self.y2x_sim.mean(axis=1)


def neighbourhoods(x: np.ndarray, y: np.ndarray, k: int = 4,
                   max_memory_bytes: int = retrieval.DEFAULT_MEMORY_BYTES,
                   progress: bool = False, index=None) -> Neighbourhoods:
    """Cosine k-NN of ``x`` in ``y`` and of ``y`` in ``x`` (k capped by the sizes).

    Args:
      x: ``[Nx, D]`` source embeddings (array, memmap or ``.npy`` path).
      y: ``[Ny, D]`` target embeddings.
      k: neighbourhood size (LASER's ``-k``, default 4).
      max_memory_bytes: memory bound of the chunked search.
      progress: show progress bars.
      index: :class:`lealla_tf.config.IndexConfig`: ``faiss``/``scann`` find the
        neighbours of each side in an approximate index over the other side (built once
        and saved, see :mod:`lealla_tf.evaluation.ann`); None or ``exact`` searches
        exactly.
    """
    from lealla_tf.evaluation import ann

    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    x = retrieval.open_array(x)
    y = retrieval.open_array(y)
    kx = min(k, y.shape[0])
    ky = min(k, x.shape[0])
    xs, xi = ann.knn(x, y, kx, index, max_memory_bytes=max_memory_bytes, progress=progress,
                     desc="knn x->y")
    ys, yi = ann.knn(y, x, ky, index, max_memory_bytes=max_memory_bytes, progress=progress,
                     desc="knn y->x")
    return Neighbourhoods(xs, xi, ys, yi)


def candidate_scores(nb: Neighbourhoods, margin: str = "ratio") -> Tuple[np.ndarray, np.ndarray]:
    """Margin scores of every k-NN candidate in both directions.

    Returns:
      ``(fwd [Nx, k], bwd [Ny, k])``: ``fwd[i, j]`` scores ``(x_i, y[x2y_ind[i, j]])``,
      ``bwd[j, i]`` scores ``(x[y2x_ind[j, i]], y_j)``. Both directions use the same
      symmetric score, so a pair found from both sides gets the same value.
    """
    x_mean, y_mean = nb.x_mean, nb.y_mean
    fwd = _margin(nb.x2y_sim, (x_mean[:, None] + y_mean[nb.x2y_ind]) / 2, margin)
    bwd = _margin(nb.y2x_sim, (y_mean[:, None] + x_mean[nb.y2x_ind]) / 2, margin)
    return fwd.astype(np.float32), bwd.astype(np.float32)


def score_pairs(x: np.ndarray, y: np.ndarray, src: np.ndarray, tgt: np.ndarray,
                nb: Neighbourhoods, margin: str = "ratio") -> np.ndarray:
    """Margin score of given pairs ``(x[src[n]], y[tgt[n]])`` (LASER's ``--mode score``)."""
    x = retrieval.l2_normalize(retrieval.open_array(x)[np.asarray(src)])
    y = retrieval.l2_normalize(retrieval.open_array(y)[np.asarray(tgt)])
    cos = np.einsum("nd,nd->n", x, y)
    return _margin(cos, (nb.x_mean[src] + nb.y_mean[tgt]) / 2, margin).astype(np.float32)


@dataclasses.dataclass
class MinedPairs:
    """Mined sentence pairs, best score first."""

    src: np.ndarray     # int64 [M] source row
    tgt: np.ndarray     # int64 [M] target row
    scores: np.ndarray  # float32 [M]

    def __len__(self) -> int:
        return int(self.src.shape[0])

    def above(self, threshold: float) -> "MinedPairs":
        """The pairs with ``score >= threshold``."""
        keep = self.scores >= threshold
        return MinedPairs(self.src[keep], self.tgt[keep], self.scores[keep])


def _sorted(src, tgt, scores) -> MinedPairs:
    src, tgt = np.asarray(src, dtype=np.int64), np.asarray(tgt, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32)
    order = np.lexsort((tgt, src, -scores))
    return MinedPairs(src[order], tgt[order], scores[order])


def mine(x: np.ndarray, y: np.ndarray, k: int = 4, margin: str = "ratio",
         retrieval_mode: str = "max", threshold: Optional[float] = None,
         max_memory_bytes: int = retrieval.DEFAULT_MEMORY_BYTES,
         progress: bool = False, index=None) -> MinedPairs:
    """Mines candidate translation pairs between two sets of embeddings (LASER ``mine``).

    Args:
      x: ``[Nx, D]`` source embeddings (array, memmap or ``.npy`` path).
      y: ``[Ny, D]`` target embeddings.
      k: neighbourhood size of the margin.
      margin: ``ratio`` (default), ``distance`` or ``absolute``.
      retrieval_mode: ``max`` (default), ``fwd``, ``bwd`` or ``intersect``.
      threshold: keep only pairs scoring above it (LASER keeps ``score > threshold``);
        None keeps all.
      max_memory_bytes: memory bound of the k-NN search.
      progress: show progress bars.
      index: nearest-neighbour index settings (see :func:`neighbourhoods`).

    Returns:
      :class:`MinedPairs`, best first.
    """
    if retrieval_mode not in RETRIEVALS:
        raise ValueError(f"retrieval must be one of {RETRIEVALS}, got {retrieval_mode!r}")
    if margin not in MARGINS:
        raise ValueError(f"margin must be one of {MARGINS}, got {margin!r}")
    nb = neighbourhoods(x, y, k, max_memory_bytes, progress, index=index)
    fwd, bwd = candidate_scores(nb, margin)
    nx, ny = fwd.shape[0], bwd.shape[0]
    # argmax picks the first of equal scores, i.e. the nearer neighbour (as LASER).
    fwd_arg = fwd.argmax(axis=1)
    bwd_arg = bwd.argmax(axis=1)
    fwd_best = nb.x2y_ind[np.arange(nx), fwd_arg]
    bwd_best = nb.y2x_ind[np.arange(ny), bwd_arg]
    fwd_score = fwd[np.arange(nx), fwd_arg]
    bwd_score = bwd[np.arange(ny), bwd_arg]
    if retrieval_mode == "fwd":
        out = _sorted(np.arange(nx), fwd_best, fwd_score)
    elif retrieval_mode == "bwd":
        out = _sorted(bwd_best, np.arange(ny), bwd_score)
    elif retrieval_mode == "intersect":
        mutual = bwd_best[fwd_best] == np.arange(nx)
        out = _sorted(np.arange(nx)[mutual], fwd_best[mutual], fwd_score[mutual])
    else:  # max: union of both directions, greedy by score, one-to-one
        src = np.concatenate([np.arange(nx), bwd_best])
        tgt = np.concatenate([fwd_best, np.arange(ny)])
        scores = np.concatenate([fwd_score, bwd_score])
        order = np.argsort(-scores, kind="stable")
        seen_src = np.zeros(nx, dtype=bool)
        seen_tgt = np.zeros(ny, dtype=bool)
        keep = []
        for n in order.tolist():
            s, t = src[n], tgt[n]
            if not seen_src[s] and not seen_tgt[t]:
                seen_src[s] = seen_tgt[t] = True
                keep.append(n)
        keep = np.asarray(keep, dtype=np.int64)
        out = MinedPairs(src[keep].astype(np.int64), tgt[keep].astype(np.int64),
                         scores[keep].astype(np.float32))
    if threshold is not None:
        keep = out.scores > threshold
        out = MinedPairs(out.src[keep], out.tgt[keep], out.scores[keep])
    return out


# ----------------------------------------------------------------------------- F1


@dataclasses.dataclass
class PRF:
    """Precision, recall and F1 of an extracted set (fractions in [0, 1])."""

    precision: float
    recall: float
    f1: float
    threshold: float = float("nan")
    extracted: int = 0
    correct: int = 0
    gold: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def prf(correct: int, extracted: int, gold: int, threshold: float = float("nan")) -> PRF:
    """Precision/recall/F1 from counts (all 0 when nothing is correct)."""
    if correct == 0:
        return PRF(0.0, 0.0, 0.0, threshold, extracted, 0, gold)
    p = correct / extracted
    r = correct / gold
    return PRF(p, r, 2 * p * r / (p + r), threshold, extracted, correct, gold)


def evaluate_pairs(predicted: Iterable[Tuple[object, object]],
                   gold: Set[Tuple[object, object]]) -> PRF:
    """Precision, recall and F1 of a set of predicted pairs against gold pairs."""
    predicted = set(predicted)
    return prf(len(predicted & gold), len(predicted), len(gold))


def best_f1_threshold(scores: np.ndarray, correct: np.ndarray, n_gold: int) -> PRF:
    """The threshold on ``scores`` that maximises F1 (XTREME's ``bucc_optimize``).

    Args:
      scores: ``[M]`` score of each candidate pair.
      correct: ``[M]`` bool, whether each candidate is a gold pair.
      n_gold: number of gold pairs (recall's denominator; gold pairs that are not
        among the candidates count as missed).

    Returns:
      :class:`PRF` at the best threshold; extracting ``scores >= threshold`` gives
      exactly that precision/recall/F1. When no candidate is correct the threshold is
      above every score (nothing extracted) and F1 is 0.
    """
    scores = np.asarray(scores, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if scores.shape != correct.shape:
        raise ValueError(f"scores {scores.shape} and correct {correct.shape} differ in shape")
    if n_gold <= 0:
        raise ValueError(f"n_gold must be positive, got {n_gold}")
    if correct.sum() > n_gold:
        raise ValueError(f"{int(correct.sum())} correct candidates but only {n_gold} gold pairs")
    if not correct.any():
        top = float(scores.max()) + 1.0 if scores.size else 0.0
        return PRF(0.0, 0.0, 0.0, top, 0, 0, n_gold)
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    tp = np.cumsum(correct[order])
    extracted = np.arange(1, s.size + 1)
    # A cut after position i is reachable only at the end of a run of equal scores.
    valid = np.ones(s.size, dtype=bool)
    valid[:-1] = s[:-1] != s[1:]
    precision = tp / extracted
    recall = tp / n_gold
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(tp > 0, 2 * precision * recall / (precision + recall), 0.0)
    f1 = np.where(valid, f1, -1.0)
    i = int(np.argmax(f1))
    threshold = float(s[i])
    if i + 1 < s.size:
        mid = (s[i] + s[i + 1]) / 2
        # The midpoint must still separate the two scores after rounding to float32.
        if np.float32(mid) > np.float32(s[i + 1]) and mid <= s[i]:
            threshold = float(mid)
    return PRF(float(precision[i]), float(recall[i]), float(f1[i]), threshold,
               int(extracted[i]), int(tp[i]), int(n_gold))


# ----------------------------------------------------------------------------- files


def mine_files(model, source: str, target: str, output: str, k: int = 4,
               margin: str = "ratio", retrieval_mode: str = "max",
               threshold: Optional[float] = None, batch_size: int = 64,
               cache: Optional[str] = None, use_cache: bool = True, progress: bool = True,
               max_memory_bytes: int = retrieval.DEFAULT_MEMORY_BYTES, index=None) -> int:
    """Mines bitext from two plain-text corpora (one sentence per line), like LASER
    ``mine_bitexts.py --unify --mode mine``.

    Duplicate lines are embedded once (LASER's ``--unify``); empty lines are ignored.
    Writes ``score<TAB>source line<TAB>target line<TAB>source sentence<TAB>target
    sentence`` (1-based line numbers of the first occurrence), best first.

    Args:
      model: embedder or callable.
      source, target: text files.
      output: TSV file to write.
      k, margin, retrieval_mode: see :func:`mine`.
      threshold: keep pairs scoring above it (None keeps all).
      batch_size, cache, use_cache, progress, max_memory_bytes: embedding and search
        settings.
      index: nearest-neighbour index settings (see :func:`neighbourhoods`).

    Returns:
      Number of pairs written.
    """

    from lealla_tf.evaluation import runner

    embedder = runner.as_embedder(model)
    sides = []
    for path in (source, target):
        first: dict = {}
        for n, line in enumerate(runner.read_lines(path)):
            line = line.strip()
            if line and line not in first:
                first[line] = n + 1
        if not first:
            raise ValueError(f"{path}: no non-empty lines to mine")
        sides.append((list(first), list(first.values())))
    (src_s, src_n), (tgt_s, tgt_n) = sides
    x = runner.embed_texts(embedder, src_s, batch_size, cache, use_cache, progress, "source")
    y = runner.embed_texts(embedder, tgt_s, batch_size, cache, use_cache, progress, "target")
    pairs = mine(x, y, k=k, margin=margin, retrieval_mode=retrieval_mode,
                 threshold=threshold, max_memory_bytes=max_memory_bytes, progress=progress,
                 index=index)
    lines = []
    for s, t, score in zip(pairs.src.tolist(), pairs.tgt.tolist(), pairs.scores.tolist()):
        a, b = src_s[s].replace("\t", " "), tgt_s[t].replace("\t", " ")
        lines.append(f"{score:.6f}\t{src_n[s]}\t{tgt_n[t]}\t{a}\t{b}\n")
    fileio.atomic_write(output, "".join(lines))  # any tf.io.gfile path
    return len(pairs)
