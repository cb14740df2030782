"""Inference speed measured fairly: every model on the same sentences, with the same
threads and the same batching, against the machine's own matrix-product rate.

:func:`measure` times an embedder two ways on the same batches: through
:func:`lealla_tf.evaluation.runner.embed_sentences` (what ``lealla embed`` and ``lealla eval``
run: sort by token count, cut by the token budget, one model call per batch) and as direct
model calls on batches made beforehand (``encode_batch``). :func:`encoder_flops` counts the
FLOPs of a Transformer encoder on the sentences' real token counts, and
:func:`matmul_gflops` the fp32 GFLOP/s of a large matrix product on this machine, so a
model's achieved GFLOP/s reads as a fraction of what the CPU can do.

See docs/evaluation.md, "Speed".
"""

from __future__ import annotations

import json
import os
import time
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from lealla_tf import embedders, layout
from lealla_tf.evaluation import runner


def matmul_gflops(n: int = 1536, repeats: int = 5) -> float:
    """fp32 GFLOP/s of an ``n x n x n`` TensorFlow matrix product (oneDNN where it is on),
    median of ``repeats``: the practical fp32 limit an encoder's matrix products can reach
    on this machine with TensorFlow's default threads."""
    import tensorflow as tf
    rng = np.random.default_rng(0)
    a = tf.constant(rng.standard_normal((n, n), np.float32))
    b = tf.constant(rng.standard_normal((n, n), np.float32))
    product = tf.function(lambda x, y: tf.matmul(x, y))
    product(a, b).numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        product(a, b).numpy()
        times.append(time.perf_counter() - start)
    return 2.0 * n ** 3 / float(np.median(times)) / 1e9


def encoder_flops(shape: Mapping[str, int], lengths: Sequence[int]) -> float:
    """FLOPs of a post-norm Transformer encoder over sentences of ``lengths`` tokens
    (real tokens, [CLS]/[SEP] included; no padding): per layer and token
    ``2 (4 h^2 + 2 h f)`` for the projections plus ``4 n h`` for attention scores and
    context over the sentence's ``n`` tokens. Embedding lookups, norms and activations
    are left out (they are not matrix products).

    With ``shape["pooling"] == "cls"`` the last layer counts as the embedding models run
    it (``output_range=1``): keys and values ``2 n (2 h^2)`` for every token, the rest for
    [CLS] alone (``2 (2 h^2 + 2 h f) + 4 n h``).

    Args:
      shape: ``hidden_size``, ``num_layers``, ``intermediate_size``, optionally
        ``pooling`` (an export's ``export_info.json`` ``model`` entry has them).
      lengths: tokens per sentence.
    """
    h, layers, f = (int(shape["hidden_size"]), int(shape["num_layers"]),
                    int(shape["intermediate_size"]))
    n = np.asarray(lengths, np.float64)
    per_layer = n * 2.0 * (4 * h * h + 2 * h * f) + 4.0 * n * n * h
    total = float(layers * per_layer.sum())
    if layers and shape.get("pooling") == "cls":
        last_cls = n * 2.0 * (2 * h * h) + 2.0 * (2 * h * h + 2 * h * f) + 4.0 * n * h
        total -= float((per_layer - last_cls).sum())
    return total


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(embedder, sentences: Sequence[str], repeats: int = 3) -> Dict[str, float]:
    """Sentences/s of ``embedder`` on ``sentences``, best of ``repeats`` passes each way
    (the two ways interleaved) after one warm-up pass.

    Returns:
      ``{"embed": ..., "direct": ...}``: through :func:`runner.embed_sentences` (sorting,
      token counts and batching included), and as model calls on the same batches made
      beforehand. For an object that is not an :class:`~lealla_tf.embedders.Embedder`
      both are its ``encode`` on all sentences.
    """
    return measure_all({"model": embedder}, sentences, repeats)["model"]


def measure_all(models: Mapping[str, object], sentences: Sequence[str],
                repeats: int = 3) -> Dict[str, Dict[str, float]]:
    """:func:`measure` of several embedders in interleaved rounds: every model warms up,
    then each round times every model once each way, in turn, and the best of
    ``repeats`` rounds counts. A busy moment of a shared machine then falls on all of
    them alike, so their ratios hold even where the absolute rates drift.

    Returns:
      ``{name: {"embed": ..., "direct": ...}}`` sentences/s.
    """
    sentences = list(sentences)
    if not sentences:
        raise ValueError("no sentences to time")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    n = len(sentences)
    paths = {name: _paths(embedder, sentences) for name, embedder in models.items()}
    for embed, _ in paths.values():
        embed()  # warm-up: traces, delegates, caches (the direct calls use the same batches)
    best = {name: {"embed": float("inf"), "direct": float("inf")} for name in models}
    for _ in range(repeats):
        for name, (embed, direct) in paths.items():
            for way, fn in (("embed", embed), ("direct", direct)):
                best[name][way] = min(best[name][way], _best(fn, 1))
    return {name: {way: n / seconds for way, seconds in ways.items()}
            for name, ways in best.items()}


def _paths(embedder, sentences: List[str]):
    """``(embed, direct)``: the two ways :func:`measure` times ``embedder``."""
    size = getattr(embedder, "batch_size", 0) or runner.DEFAULT_BATCH_SIZE

    def embed():
        runner.embed_sentences(embedder, sentences, batch_size=size, progress=False)

    if isinstance(embedder, embedders.Embedder):
        batches = [[embedders.as_bytes(sentences[i]) for i in idx]
                   for idx in runner.batches(embedder, sentences, size)]

        def direct():
            for batch in batches:
                embedder.encode_batch(batch)
    else:
        def direct():
            embedder.encode(sentences)
    return embed, direct


def export_shape(path: str) -> Optional[Dict[str, int]]:
    """The ``model`` entry (the encoder's shape) of the ``export_info.json`` of an export
    folder, or of the folder holding ``path`` (its ``lealla/`` or a TFLite file); None
    where there is none (a teacher, a plain SavedModel)."""
    for folder in (path, os.path.dirname(path.rstrip("/"))):
        info = os.path.join(folder, layout.INFO_FILE)
        if os.path.isfile(info):
            with open(info, encoding="utf-8") as f:
                return json.load(f)["model"]
    return None


def sample_sentences(directory: str, languages: Sequence[str],
                     per_language: int = 200) -> List[str]:
    """The first ``per_language`` non-English sentences of each language's Tatoeba test
    set in ``directory`` (languages without a local file are skipped)."""
    from lealla_tf.evaluation import tatoeba
    out: List[str] = []
    for lang in languages:
        try:
            out.extend(tatoeba.load_pair(lang, directory)[0][:per_language])
        except FileNotFoundError:
            continue
    return out


def speed_row(embedder, sentences: Sequence[str], shape: Optional[Mapping[str, int]],
              limit_gflops: float, teacher_rate: Optional[float] = None,
              repeats: int = 3, rates: Optional[Mapping[str, float]] = None
              ) -> Dict[str, Optional[float]]:
    """:func:`measure` plus the ratio to a teacher's rate and, for a Transformer
    ``shape``, achieved GFLOP/s and its share of ``limit_gflops`` (on the direct calls).
    ``rates``: the :func:`measure` result when already timed (e.g. by
    :func:`measure_all`)."""
    if rates is None:
        rates = measure(embedder, sentences, repeats)
    row: Dict[str, Optional[float]] = dict(rates)
    row["vs_teacher"] = rates["embed"] / teacher_rate if teacher_rate else None
    row["gflops"] = row["limit_share"] = None
    if shape and int(shape.get("num_layers", 0)) > 0:
        lengths = [k + embedders.base.SPECIAL_TOKENS
                   for k in embedders.sort_keys(embedder, sentences)]
        cap = int(shape.get("seq_length") or 0)
        if cap:
            lengths = [min(n, cap) for n in lengths]
        seconds = len(sentences) / rates["direct"]
        row["gflops"] = encoder_flops(shape, lengths) / seconds / 1e9
        row["limit_share"] = row["gflops"] / limit_gflops if limit_gflops else None
    return row
