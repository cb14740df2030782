"""Parallel corpora -> ``tf.data`` global batches for dual-encoder training.

:func:`load_corpus` groups pairs by language (teacher rows attached by physical line);
:class:`GlobalBatchSampler` draws duplicate-free *global* batches (a language with
p ∝ n^α, then its next pair), resumably; :func:`make_dataset` builds the global batch in every
input pipeline and keeps its replicas' rows, so R replicas see what one device fed the global
batch sees::

    from lealla_tf import corpus
    from lealla_tf.data import pipeline
    pairs = pipeline.load_corpus(corpus.find_files(["train/*-eng.tsv"], data_root))
    sampler = pipeline.GlobalBatchSampler(pairs, global_batch_size=64, alpha=0.3, seed=0)
    dataset = strategy.distribute_datasets_from_function(
        lambda ctx: pipeline.make_dataset(pairs, sampler, preprocessor, ctx))

See docs/training.md, "The job" (input, length bucketing) and "Resume and divergence".
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import threading
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from lealla_tf import config as config_lib
from lealla_tf import corpus as corpus_lib
from lealla_tf import paths

log = logging.getLogger(__name__)

TeacherLoader = Callable[[str], Tuple[np.ndarray, np.ndarray, np.ndarray]]


# ---------------------------------------------------------------------------- corpus
@dataclasses.dataclass
class LanguageData:
    """The usable pairs of one language (all its files)."""

    language: str
    src: np.ndarray  # object [n] str
    tgt: np.ndarray  # object [n] str
    teacher_src: Optional[np.ndarray] = None  # [n, D] float16, aligned to src
    teacher_tgt: Optional[np.ndarray] = None
    # Per pair: whether the teacher covers its language (None: every pair). Stored teacher
    # rows of the others already hold the English side's embedding on both sides.
    covered: Optional[np.ndarray] = None  # bool [n]

    def __len__(self) -> int:
        return len(self.src)


@dataclasses.dataclass
class ParallelCorpus:
    """Parallel pairs grouped by language, with the reading statistics."""

    languages: List[LanguageData]
    stats: Dict[str, corpus_lib.Stats]  # per file: ok, malformed reasons, teacher_invalid
    teacher_dim: int = 0
    # dtype of the teacher rows kept in memory: float16, or float32 when the store holds
    # float32 rows (``lealla teacher embed --dtype float32``).
    teacher_dtype: str = "float16"

    @property
    def num_pairs(self) -> int:
        return sum(len(lang) for lang in self.languages)

    @property
    def all_covered(self) -> bool:
        """Whether the teacher covers the language of every pair (``teacher.languages``)."""
        return all(lang.covered is None for lang in self.languages)

    def total_stats(self) -> corpus_lib.Stats:
        total = corpus_lib.Stats()
        for s in self.stats.values():
            total.update(s)
        return total


def load_corpus(files: Sequence[str], max_pairs_per_language: int = 0,
                teacher_loader: Optional[TeacherLoader] = None,
                teacher_languages: Sequence[str] = (config_lib.ALL_LANGUAGES,)
                ) -> ParallelCorpus:
    """Reads TSV pair files into a :class:`ParallelCorpus` (grouped by base language).

    Args:
      files: ``xxx-eng.tsv`` paths (see :func:`lealla_tf.corpus.find_files`).
      max_pairs_per_language: keep at most this many pairs per language (first ones in
        file order); 0 keeps all.
      teacher_loader: ``tsv_path -> (src, tgt, valid)`` with one row per physical line
        (e.g. :func:`lealla_tf.distill.store.loader` of a precomputed store); None for
        no teacher rows.
      teacher_languages: the languages the teacher covers (``teacher.languages``; see
        :func:`lealla_tf.config.teacher_covers`). The pairs of a file of another language
        take the teacher's row of their English side as the target of both sides (the
        source rows of the store are not read), and are marked in ``LanguageData.covered``
        (for an online teacher's step).

    Raises:
      FileNotFoundError: a file is missing.
      ValueError: no usable pair, or teacher rows that do not cover the file's lines.
    """
    if not files:
        raise ValueError("load_corpus: no training files given")
    stats: Dict[str, corpus_lib.Stats] = {}
    languages: List[LanguageData] = []
    teacher = _TeacherFormat()
    for lang, lang_files in corpus_lib.group_by_language(files).items():
        data = _read_language(lang, lang_files, max_pairs_per_language, teacher_loader,
                              stats, teacher, teacher_languages)
        if data is not None:
            languages.append(data)
    out = ParallelCorpus(languages, stats, teacher.dim, teacher.dtype)
    if not out.num_pairs:
        raise ValueError(f"no usable pairs in {len(files)} file(s): {out.total_stats()}")
    total = out.total_stats()
    log.info("corpus: %d pairs in %d languages from %d files; skipped %d malformed lines",
             out.num_pairs, len(languages), len(files), total.malformed)
    return out


@dataclasses.dataclass
class _TeacherFormat:
    """Dimension and dtype of the teacher rows, as far as the files read so far tell."""

    dim: int = 0
    dtype: str = "float16"

    def check(self, path: str, rows: np.ndarray) -> None:
        """Takes in the teacher rows of ``path``; a dimension unlike the others' is an error."""
        self.dim = self.dim or int(rows.shape[1])
        if np.asarray(rows).dtype == np.float32:
            self.dtype = "float32"
        if int(rows.shape[1]) != self.dim:
            raise ValueError(f"teacher embeddings of {path} have dim {rows.shape[1]}, "
                             f"others {self.dim}")


def _read_language(lang: str, files: Sequence[str], max_pairs: int,
                   teacher_loader: Optional[TeacherLoader], stats: Dict[str, corpus_lib.Stats],
                   teacher: _TeacherFormat,
                   teacher_languages: Sequence[str]) -> Optional[LanguageData]:
    """The usable pairs of one language's files (None: none), their stats into ``stats``."""
    src: List[str] = []
    tgt: List[str] = []
    t_src: List[np.ndarray] = []
    t_tgt: List[np.ndarray] = []
    covered: List[np.ndarray] = []
    for path in files:
        st = stats[path] = corpus_lib.Stats()
        rows = teacher_loader(path) if teacher_loader is not None else None
        if rows is not None:
            teacher.check(path, rows[0])
        before = len(src)
        keep = _read_pairs(path, rows, st, max_pairs, src, tgt)
        known = config_lib.teacher_covers(teacher_languages, path)
        covered.append(np.full(len(src) - before, known))
        if rows is not None and keep:
            # A language the teacher does not cover: both sides learn its English row.
            t_src.append(np.asarray(rows[0 if known else 1][keep]))
            t_tgt.append(np.asarray(rows[1][keep]))
        if st.malformed or st["teacher_invalid"]:
            log.warning("%s: skipped %d malformed line(s) %s, %d without teacher rows",
                        path, st.malformed,
                        {r: st[r] for r in corpus_lib.MALFORMED_REASONS if st[r]},
                        st["teacher_invalid"])
    if not src:
        return None
    data = LanguageData(lang, np.array(src, dtype=object), np.array(tgt, dtype=object))
    mask = np.concatenate(covered)
    data.covered = None if mask.all() else mask
    if teacher_loader is not None:
        data.teacher_src = np.concatenate(t_src).astype(teacher.dtype) if t_src else None
        data.teacher_tgt = np.concatenate(t_tgt).astype(teacher.dtype) if t_tgt else None
    return data


def _read_pairs(path: str, rows, st: corpus_lib.Stats, max_pairs: int, src: List[str],
                tgt: List[str]) -> List[int]:
    """Appends the pairs of ``path`` to ``src``/``tgt`` (until they hold ``max_pairs``; 0:
    all), skipping lines without valid teacher ``rows``; returns the line indices kept
    (with ``rows``)."""
    keep: List[int] = []
    for index, s, t in corpus_lib.iter_tsv(path, st):
        if max_pairs and len(src) >= max_pairs:
            break
        if rows is not None:
            valid = rows[2]
            if index >= len(valid):
                raise ValueError(
                    f"teacher embeddings of {path} have {len(valid)} rows but the "
                    f"file has a line {index}: recompute them")
            if not valid[index]:
                st["teacher_invalid"] += 1
                continue
            keep.append(index)
        src.append(s)
        tgt.append(t)
    return keep


def training_files(data_cfg) -> List[str]:
    """The training files of a :class:`lealla_tf.config.DataConfig`: ``train_files``
    (relative ones under the data root) of the languages in ``languages``.

    Raises:
      FileNotFoundError: a pattern matches nothing, or no file is of those languages.
    """
    files = paths.data_files(data_cfg.train_files, data_cfg.data_dir, data_cfg.languages)
    if not files:
        raise FileNotFoundError(
            f"no training files for languages {data_cfg.languages} in {data_cfg.train_files}")
    return files


def load_corpus_from_config(data_cfg, teacher_loader: Optional[TeacherLoader] = None,
                            teacher_languages: Sequence[str] = (config_lib.ALL_LANGUAGES,)
                            ) -> ParallelCorpus:
    """:func:`load_corpus` for a :class:`lealla_tf.config.DataConfig` (its
    ``teacher_embeddings`` are read by the caller's ``teacher_loader``; the teacher covers
    ``teacher_languages``, ``teacher.languages``)."""
    return load_corpus(training_files(data_cfg), data_cfg.max_pairs_per_language,
                       teacher_loader, teacher_languages)


# ---------------------------------------------------------------------------- sampler
def language_probabilities(sizes: Sequence[int], alpha: float,
                           weights: Optional[Sequence[float]] = None) -> np.ndarray:
    """``p_l ∝ w_l n_l^alpha`` (alpha 1: proportional; 0: uniform over languages; the
    weights ``w_l`` default to 1)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    if np.any(sizes <= 0):
        raise ValueError(f"every language needs at least one pair, got sizes {sizes}")
    w = sizes ** alpha
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != sizes.shape or not np.all(weights > 0):
            raise ValueError(f"need one positive weight per language, got {weights}")
        w = w * weights
    return w / w.sum()


def teacher_weights(corpus: "ParallelCorpus", weight: float) -> Optional[List[float]]:
    """Per language: ``weight`` where the teacher covers every pair, else 1 (None when the
    teacher covers every language, or ``weight`` is 1)."""
    if weight == 1.0 or corpus.all_covered:
        return None
    return [weight if lang.covered is None or bool(np.all(lang.covered)) else 1.0
            for lang in corpus.languages]


def byte_lengths(data: LanguageData) -> np.ndarray:
    """UTF-8 length of the longer side of each pair (a stand-in for token counts)."""
    return np.array([max(len(s.encode("utf-8")), len(t.encode("utf-8")))
                     for s, t in zip(data.src, data.tgt)], dtype=np.int64)


def token_lengths(corpus: ParallelCorpus, tokenize: Callable[[tf.Tensor], tf.RaggedTensor],
                  batch_size: int = 8192) -> List[np.ndarray]:
    """Pieces in the longer side of each pair, per language (for length bucketing).

    Args:
      corpus: the pairs.
      tokenize: strings [b] -> ragged [b, (pieces)], e.g. a preprocessor's ``tokenize``.
      batch_size: strings per call.
    """
    count = tf.function(lambda x: tokenize(x).row_lengths(),
                        input_signature=[tf.TensorSpec([None], tf.string)])
    out = []
    for data in corpus.languages:
        sides = []
        for side in (data.src, data.tgt):
            parts = [count(tf.constant([t.encode("utf-8") for t in side[i:i + batch_size]],
                                       tf.string)).numpy()
                     for i in range(0, len(side), batch_size)]
            sides.append(np.concatenate(parts) if parts else np.zeros([0], np.int64))
        out.append(np.maximum(sides[0], sides[1]).astype(np.int64))
    return out


class GlobalBatchSampler:
    """Deterministic, resumable stream of duplicate-free global batches.

    Batch ``g`` draws languages from a generator seeded with ``(seed, g)``; the pairs of a
    language come in the order of per-epoch permutations seeded with
    ``(seed, language, epoch)``. The state between batches is the batch index and how many
    pairs of each language have been drawn: :meth:`state_before` gives it for any recently
    produced batch, :meth:`restore` restarts from one.

    Args:
      corpus: the pairs.
      global_batch_size: pairs per global batch.
      alpha: language sampling exponent.
      seed: seed of the whole stream.
      weights: per language, a factor on its sampling probability (see
        :func:`language_probabilities`; e.g. :func:`teacher_weights`).
      history: how many recent states to remember (must exceed how far the input
        pipeline runs ahead of training).
      bucket_pool: 0 or 1: every global batch is drawn on its own. ``K > 1``: length
        bucketing, ``K`` global batches drawn together and regrouped by length (see
        :meth:`_pooled_batches`), so that padding to each batch's longest pair wastes
        little. The languages and pairs drawn are the same kind of stream; only which
        pairs share a batch changes. A pool holds at most half the corpus: ``K`` is lowered
        (with a warning) for small corpora.
      lengths: per language, a length per pair for bucketing (e.g. :func:`token_lengths`);
        default: :func:`byte_lengths`.
    """

    def __init__(self, corpus: ParallelCorpus, global_batch_size: int, alpha: float = 0.3,
                 seed: int = 0, history: int = 4096, bucket_pool: int = 0,
                 lengths: Optional[Sequence[np.ndarray]] = None,
                 weights: Optional[Sequence[float]] = None):
        if global_batch_size <= 0:
            raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
        if bucket_pool < 0:
            raise ValueError(f"bucket_pool must be >= 0, got {bucket_pool}")
        self.corpus = corpus
        self.batch_size = int(global_batch_size)
        self.seed = int(seed)
        self.sizes = np.array([len(lang) for lang in corpus.languages], dtype=np.int64)
        self.probs = language_probabilities(self.sizes, alpha, weights)
        if bucket_pool > 1:
            # A pool holds at most half the corpus, so that it can be filled without
            # repeating a sentence; a smaller corpus gets smaller pools (none at all below
            # four global batches).
            cap = max(1, int(self.sizes.sum()) // (2 * self.batch_size))
            if cap < bucket_pool:
                log.warning("data.bucket_pool %d lowered to %d: the corpus has %d pairs",
                            bucket_pool, cap, int(self.sizes.sum()))
                bucket_pool = cap
        self.pool = int(bucket_pool) if bucket_pool > 1 else 0
        if self.pool:
            if lengths is None:
                lengths = [byte_lengths(lang) for lang in corpus.languages]
            if [len(x) for x in lengths] != self.sizes.tolist():
                raise ValueError("lengths must give one length per pair of every language")
            self.lengths = [np.asarray(x, dtype=np.int64) for x in lengths]
        self._start = self._state(0, [0] * len(self.sizes))
        self._history: "collections.OrderedDict[int, dict]" = collections.OrderedDict()
        self._history_size = int(history)
        self._lock = threading.Lock()
        self.duplicates_skipped = 0

    # -- state
    def _state(self, batch: int, drawn) -> dict:
        state = {"batch": int(batch), "drawn": [int(x) for x in drawn]}
        if self.pool:  # "drawn" is then the count before the batch's pool
            state["pool"] = self.pool
        return state

    @property
    def start_batch(self) -> int:
        """The index of the first batch :meth:`batches` yields (0, or the restored state's)."""
        return self._start["batch"]

    def restore(self, state: dict) -> None:
        """Makes the next :meth:`batches` iteration start at ``state``."""
        if len(state["drawn"]) != len(self.sizes):
            raise ValueError(f"sampler state has {len(state['drawn'])} languages, the corpus "
                             f"{len(self.sizes)}: the data changed since the checkpoint")
        if int(state.get("pool", 0)) != self.pool:
            raise ValueError(
                f"the checkpoint's batches were drawn with data.bucket_pool "
                f"{state.get('pool', 0)}, this run has {self.pool}: resume with the same value")
        self._start = self._state(state["batch"], state["drawn"])

    def state_before(self, batch: int) -> dict:
        """The state from which batch ``batch`` is drawn (a recently produced one)."""
        with self._lock:
            if batch in self._history:
                return dict(self._history[batch])
        if batch == self._start["batch"]:
            return dict(self._start)
        raise KeyError(f"sampler state before batch {batch} is no longer (or not yet) known")

    def _remember(self, batch: int, drawn) -> None:
        with self._lock:
            self._history[batch] = self._state(batch, drawn)
            while len(self._history) > self._history_size:
                self._history.popitem(last=False)

    # -- drawing
    def _permutation(self, lang: int, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1, lang, epoch])
        return rng.permutation(int(self.sizes[lang]))

    def _draw(self, rng: np.random.Generator, count: int, drawn: np.ndarray,
              perms: Dict[int, Tuple[int, np.ndarray]]) -> Tuple[np.ndarray, np.ndarray]:
        """``count`` pairs with no sentence twice; advances ``drawn`` and ``perms`` (per
        language: the epoch and its permutation)."""
        max_tries = 50 * count + 1000
        langs, idx = [], []
        seen_src, seen_tgt = set(), set()
        tries = 0
        while len(langs) < count:
            for lang in rng.choice(len(self.sizes), size=count, p=self.probs):
                if len(langs) == count:
                    break
                tries += 1
                if tries > max_tries:
                    raise ValueError(
                        f"could not fill a batch of {count} pairs without "
                        f"repeated sentences after {max_tries} draws: the corpus has too "
                        "few distinct sentences for this global batch size"
                        + (" and data.bucket_pool" if self.pool else ""))
                n = int(self.sizes[lang])
                epoch, pos = divmod(int(drawn[lang]), n)
                drawn[lang] += 1
                cached = perms.get(int(lang))
                if cached is None or cached[0] != epoch:  # this epoch's order of the language
                    cached = perms[int(lang)] = (epoch, self._permutation(int(lang), epoch))
                i = int(cached[1][pos])
                data = self.corpus.languages[lang]
                s, t = data.src[i], data.tgt[i]
                if s in seen_src or t in seen_tgt:
                    self.duplicates_skipped += 1
                    continue
                seen_src.add(s)
                seen_tgt.add(t)
                langs.append(lang)
                idx.append(i)
        return np.array(langs, dtype=np.int64), np.array(idx, dtype=np.int64)

    def batches(self) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """Yields ``(language_ids, pair_indices)`` int64 [global_batch] forever."""
        if self.pool:
            yield from self._pooled_batches()
            return
        g = self._start["batch"]
        drawn = np.array(self._start["drawn"], dtype=np.int64)
        perms: Dict[int, Tuple[int, np.ndarray]] = {}
        while True:
            self._remember(g, drawn)
            yield self._draw(np.random.default_rng([self.seed, 2, g]), self.batch_size,
                             drawn, perms)
            g += 1

    def _pooled_batches(self) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """Length bucketing: ``pool`` global batches are drawn at once (no sentence twice in
        the pool), ordered by pair length (the longer side; random among equal lengths),
        cut into ``pool`` batches of neighbouring lengths, and yielded in a random order.
        The state of each batch is the pool's start, so resuming mid-pool redraws the
        pool and skips what was consumed."""
        k, b = self.pool, self.batch_size
        g = self._start["batch"]
        first = g - g % k
        drawn = np.array(self._start["drawn"], dtype=np.int64)
        perms: Dict[int, Tuple[int, np.ndarray]] = {}
        while True:
            at_start = drawn.copy()
            rng = np.random.default_rng([self.seed, 3, first // k])
            langs, idx = self._draw(rng, k * b, drawn, perms)
            lengths = np.array([self.lengths[l][i] for l, i in zip(langs, idx)])
            order = np.lexsort((rng.random(len(lengths)), lengths)).reshape(k, b)
            for j, chunk in enumerate(rng.permutation(k)):
                self._remember(first + j, at_start)
                if first + j >= g:
                    rows = order[chunk]
                    yield langs[rows], idx[rows]
            first += k
            g = first

    def text_batches(self, covered: bool = False) -> Iterator[Tuple[np.ndarray, ...]]:
        """Yields ``(src, tgt[, teacher_src, teacher_tgt][, covered])`` global batches as
        arrays; ``covered`` (bool, with ``covered=True``) tells which pairs' language the
        teacher covers (see :func:`load_corpus`)."""
        teacher = self.corpus.teacher_dim > 0
        for langs, idx in self.batches():
            rows = [(self.corpus.languages[l], i) for l, i in zip(langs, idx)]
            src = np.array([d.src[i].encode("utf-8") for d, i in rows], dtype=object)
            tgt = np.array([d.tgt[i].encode("utf-8") for d, i in rows], dtype=object)
            out = (src, tgt)
            if teacher:
                out += (np.stack([d.teacher_src[i] for d, i in rows]),
                        np.stack([d.teacher_tgt[i] for d, i in rows]))
            if covered:
                out += (np.array([d.covered is None or bool(d.covered[i]) for d, i in rows]),)
            yield out


class DataState(tf.train.experimental.PythonState):
    """The sampler's position, saved in training checkpoints.

    Args:
      sampler: the sampler feeding training.
      step_fn: returns how many global batches training has consumed (the step).
    """

    def __init__(self, sampler: GlobalBatchSampler, step_fn: Callable[[], int]):
        self.sampler = sampler
        self.step_fn = step_fn

    def serialize(self) -> str:
        return json.dumps(self.sampler.state_before(int(self.step_fn())))

    def deserialize(self, string_value) -> None:
        if isinstance(string_value, bytes):
            string_value = string_value.decode("utf-8")
        self.sampler.restore(json.loads(string_value))


# ---------------------------------------------------------------------------- tf.data
def replica_layout(global_batch_size: int,
                   input_context: Optional[tf.distribute.InputContext] = None
                   ) -> Tuple[int, int, int, int]:
    """How a global batch splits over the replicas that this input pipeline feeds.

    Returns:
      ``(replicas, rows per replica, first replica of this pipeline, its replica count)``.

    Raises:
      ValueError: if the global batch does not split evenly over replicas or pipelines.
    """
    replicas = input_context.num_replicas_in_sync if input_context else 1
    pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline = input_context.input_pipeline_id if input_context else 0
    if global_batch_size % replicas or replicas % pipelines:
        raise ValueError(f"global batch size {global_batch_size} must split evenly over "
                         f"{replicas} replicas in {pipelines} input pipelines")
    mine = replicas // pipelines
    return replicas, global_batch_size // replicas, pipeline * mine, mine


def pipeline_rows(values: tf.Tensor, layout: Tuple[int, int, int, int]) -> tf.Tensor:
    """``[global_batch, ...]`` -> ``[this pipeline's replicas, rows per replica, ...]``
    (``layout`` from :func:`replica_layout`)."""
    replicas, local, first, count = layout
    values = tf.reshape(values, tf.concat([[replicas, local], tf.shape(values)[1:]], 0))
    return values[first:first + count]


def make_dataset(corpus: ParallelCorpus, sampler: GlobalBatchSampler, preprocessor=None,
                 input_context: Optional[tf.distribute.InputContext] = None,
                 use_teacher: Optional[bool] = None,
                 teacher_inputs: Optional[Callable] = None,
                 dynamic_length: bool = False, length_multiple: int = 1) -> tf.data.Dataset:
    """Per-replica batches of this input pipeline.

    Each element is ``{"src": inputs, "tgt": inputs}`` (``inputs`` the preprocessor's int32
    dict, or the strings), plus ``teacher_src``/``teacher_tgt`` ``[b, D]`` rows with stored
    teacher embeddings. Every pipeline builds the same global batch and keeps the rows of its
    replicas (replica ``r`` gets rows ``[r * b, (r + 1) * b)``, where the loss looks for
    positives), tokenizing only those.

    Args:
      corpus: the pairs (also gives the teacher dimension).
      sampler: the global-batch stream (its ``batch_size`` is the global batch size).
      preprocessor: strings [b] -> dict of int32 [b, L]; None keeps the strings.
      input_context: from ``distribute_datasets_from_function``; None: one replica.
      use_teacher: include teacher embeddings (default: when the corpus has them).
      teacher_inputs: an online teacher's host part (strings [b] -> its encoder's inputs,
        see :mod:`lealla_tf.distill.online_teacher`): adds ``teacher_inputs_src`` and
        ``teacher_inputs_tgt``, made from the same per-replica rows as ``src``/``tgt``,
        and, when the teacher does not cover every language of the corpus,
        ``teacher_covered`` bool ``[b]`` (see :func:`load_corpus`).
      dynamic_length: pad to the global batch's longest sentence (either side, rounded up
        to ``length_multiple``, at most the preprocessor's ``seq_length``) instead of to
        ``seq_length``. One length for the whole global batch, so every replica's
        tensors (and the sparse gradients of the embedding table that collectives gather)
        have the same shape. Needs a packing preprocessor (``tokenize``, ``seq_length``).

    Raises:
      ValueError: if the global batch does not split evenly over replicas or pipelines.
    """
    use_teacher = corpus.teacher_dim > 0 if use_teacher is None else use_teacher
    if use_teacher and not corpus.teacher_dim:
        raise ValueError("distillation needs teacher embeddings (data.teacher_embeddings)")
    gbs = sampler.batch_size
    layout = replica_layout(gbs, input_context)
    dim = corpus.teacher_dim
    signature = [tf.TensorSpec([gbs], tf.string), tf.TensorSpec([gbs], tf.string)]
    if corpus.teacher_dim:
        signature += [tf.TensorSpec([gbs, dim], corpus.teacher_dtype)] * 2
    with_covered = teacher_inputs is not None and not corpus.all_covered
    if with_covered:
        signature.append(tf.TensorSpec([gbs], tf.bool))

    ds = tf.data.Dataset.from_generator(lambda: sampler.text_batches(covered=with_covered),
                                        output_signature=tuple(signature))

    dynamic = bool(dynamic_length) and preprocessor is not None
    if dynamic and length_multiple < 1:
        raise ValueError(f"length_multiple must be positive, got {length_multiple}")

    def split(*parts):
        kept = parts[:4 if use_teacher else 2] + (parts[-1:] if with_covered else ())
        rows = tuple(pipeline_rows(p, layout) for p in kept)
        if not dynamic:
            return rows
        longest = tf.reduce_max(preprocessor.tokenize(tf.concat(parts[:2], 0)).row_lengths())
        length = (tf.cast(longest, tf.int32) + 2 + length_multiple - 1) // length_multiple
        length = tf.minimum(length * length_multiple, preprocessor.seq_length)
        return rows + (tf.fill([layout[3]], length),)

    ds = ds.map(split).unbatch()  # one element per replica of this pipeline, in order

    def pack(strings, length):
        inputs = preprocessor(strings, dynamic_length=True, length_multiple=1)
        pad_id = preprocessor.special_ids["padding_id"]
        extra = [[0, 0], [0, length - tf.shape(inputs["input_word_ids"])[1]]]
        return {k: tf.pad(v, extra, constant_values=pad_id if k == "input_word_ids" else 0)
                for k, v in inputs.items()}

    def to_features(src, tgt, *rest):
        feats = {}
        if dynamic:
            *teacher, length = rest
        else:
            teacher = list(rest)
        if with_covered:
            feats["teacher_covered"] = teacher.pop()
        if teacher_inputs is not None:
            feats["teacher_inputs_src"] = teacher_inputs(src)
            feats["teacher_inputs_tgt"] = teacher_inputs(tgt)
        if dynamic:
            src, tgt = pack(src, length), pack(tgt, length)
        elif preprocessor is not None:
            src, tgt = preprocessor(src), preprocessor(tgt)
        feats.update(src=src, tgt=tgt)
        if teacher:
            feats["teacher_src"] = tf.cast(teacher[0], tf.float32)
            feats["teacher_tgt"] = tf.cast(teacher[1], tf.float32)
        return feats

    ds = ds.map(to_features, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    options.deterministic = True
    return ds.with_options(options).prefetch(2)
