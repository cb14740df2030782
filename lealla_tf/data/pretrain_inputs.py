"""Pre-training inputs: MLM and TLM rows, masking, and their ``tf.data`` pipeline.

Rows are drawn with the training pipeline's sampler; masking is TF Text's
``mask_language_model`` with stateless draws seeded by ``(data.seed, batch index)``, applied
to the global batch in every input pipeline, so resumed and multi-replica runs mask what one
uninterrupted device does.

See docs/pretraining.md, "What it does".
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text

from lealla_tf import config as config_lib
from lealla_tf import corpus as corpus_lib
from lealla_tf import paths
from lealla_tf.data import pipeline as data_lib

FEATURES = ("input_word_ids", "input_mask", "input_type_ids", "masked_lm_positions",
            "masked_lm_ids", "masked_lm_weights", "is_tlm")


# ---------------------------------------------------------------------------- masking
class StatelessRandomItemSelector(tf_text.RandomItemSelector):
    """TF Text's ``RandomItemSelector`` rule (``ceil(selection_rate * n)`` of a row's ``n``
    selectable items, at most ``max_selections_per_batch`` per row, uniformly at random)
    with stateless randomness from ``seed`` (int ``[2]``): the same seed, the same choice."""

    def __init__(self, max_selections_per_batch: int, selection_rate: float,
                 unselectable_ids: Sequence[int], seed):
        super().__init__(max_selections_per_batch, selection_rate,
                         unselectable_ids=list(unselectable_ids))
        self._seed = seed

    def get_selection_mask(self, input_ids, axis=1):
        if axis != 1 or input_ids.ragged_rank != 1:
            raise ValueError("StatelessRandomItemSelector selects pieces of [batch, (pieces)]")
        selectable = self.get_selectable(input_ids, axis)
        n = tf.reduce_sum(tf.cast(selectable, tf.int64), axis=1)
        k = tf.minimum(tf.cast(tf.math.ceil(tf.cast(n, tf.float32) * self.selection_rate),
                               tf.int64), self.max_selections_per_batch)
        scores = tf.random.stateless_uniform(tf.shape(input_ids.flat_values), self._seed)
        scores = input_ids.with_flat_values(
            tf.where(selectable.flat_values, scores, -1.0 * tf.ones_like(scores)))
        dense = scores.to_tensor(default_value=-2.0)  # [B, T]
        order = tf.argsort(dense, axis=1, direction="DESCENDING", stable=True)
        rank = tf.argsort(order, axis=1, stable=True)  # each item's place in its row
        chosen = tf.cast(rank, tf.int64) < k[:, None]
        chosen = input_ids.with_flat_values(
            tf.gather_nd(chosen, _ragged_indices(input_ids)))
        return tf.logical_and(chosen, selectable)


class StatelessMaskValuesChooser(tf_text.MaskValuesChooser):
    """TF Text's ``MaskValuesChooser`` (``[MASK]`` / random piece / unchanged with the
    configured rates) with stateless randomness from ``seed`` (int ``[2]``)."""

    def __init__(self, vocab_size: int, mask_token: int, mask_token_rate: float,
                 random_token_rate: float, seed):
        super().__init__(vocab_size, mask_token, mask_token_rate, random_token_rate)
        self._seed = seed

    def get_mask_values(self, masked_lm_ids):
        flat = masked_lm_ids.flat_values
        seeds = tf.random.experimental.stateless_split(self._seed, 2)
        u = tf.random.stateless_uniform(tf.shape(flat), seeds[0])
        random_ids = tf.random.stateless_uniform(tf.shape(flat), seeds[1], 0, self.vocab_size,
                                                 dtype=tf.int64)
        rate_mask, rate_random = self._mask_token_rate, self._random_token_rate
        out = tf.where(u < rate_mask, tf.cast(self.mask_token, flat.dtype), flat)
        inject = tf.logical_and(u >= rate_mask, u < rate_mask + rate_random)
        out = tf.where(inject, tf.cast(random_ids, flat.dtype), out)
        return masked_lm_ids.with_flat_values(out)


def _ragged_indices(rt: tf.RaggedTensor) -> tf.Tensor:
    """``[row, column]`` of every value of a ``[batch, (n)]`` RaggedTensor."""
    rows = tf.cast(rt.value_rowids(), tf.int64)
    cols = tf.cast(tf.range(tf.size(rt.flat_values, out_type=tf.int64)), tf.int64) - tf.gather(
        tf.cast(rt.row_splits, tf.int64), rows)
    return tf.stack([rows, cols], axis=1)


def _keep_rows(rt: tf.RaggedTensor, keep: tf.Tensor) -> tf.RaggedTensor:
    """``rt`` with the rows where ``keep`` is False emptied."""
    mask = tf.logical_and(tf.ones_like(rt, dtype=tf.bool), keep[:, None])
    return tf.ragged.boolean_mask(rt, mask)


def pack_pretraining_inputs(a: tf.RaggedTensor, b: tf.RaggedTensor, is_tlm: tf.Tensor,
                            seq_length: int, cls_id: int, sep_id: int
                            ) -> Tuple[tf.RaggedTensor, tf.RaggedTensor]:
    """Packs rows as ``[CLS] a [SEP] b [SEP]`` (where ``is_tlm``; type ids 0 ... 0 1 ... 1,
    the two trimmed round-robin to ``seq_length``) or ``[CLS] a [SEP]`` (type ids 0).

    Returns:
      ``(ids, type_ids)`` int64 RaggedTensors ``[batch, (<= seq_length)]``.
    """
    a, b = tf.cast(a, tf.int64), tf.cast(b, tf.int64)
    pair = tf_text.RoundRobinTrimmer(max_seq_length=seq_length - 3).trim([a, b])
    tlm_ids, tlm_types = tf_text.combine_segments(pair, cls_id, sep_id)
    single = tf_text.RoundRobinTrimmer(max_seq_length=seq_length - 2).trim([a])
    mlm_ids, mlm_types = tf_text.combine_segments(single, cls_id, sep_id)
    ids = tf.concat([_keep_rows(tlm_ids, is_tlm), _keep_rows(mlm_ids, ~is_tlm)], axis=1)
    types = tf.concat([_keep_rows(tlm_types, is_tlm), _keep_rows(mlm_types, ~is_tlm)], axis=1)
    return ids, types


def mask_and_pad(ids: tf.RaggedTensor, types: tf.RaggedTensor, seed, pcfg,
                 vocab_size: int, seq_length: int, special: Dict[str, int]
                 ) -> Dict[str, tf.Tensor]:
    """Masks packed rows (TF Text ``mask_language_model``) and pads them to dense features.

    Args:
      ids, types: from :func:`pack_pretraining_inputs`.
      seed: int ``[2]``: the stateless seed of this batch.
      pcfg: a :class:`lealla_tf.config.PretrainConfig`.
      vocab_size: the range random replacement pieces are drawn from.
      seq_length: the padded length.
      special: the vocabulary's :func:`lealla_tf.text.packing.special_ids`.

    Returns:
      int32 ``input_word_ids``/``input_mask``/``input_type_ids`` ``[B, seq_length]``,
      ``masked_lm_positions``/``masked_lm_ids`` ``[B, max_predictions]`` and float32
      ``masked_lm_weights`` (1 for a real prediction, 0 for padding).
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
    selector = StatelessRandomItemSelector(
        pcfg.max_predictions, pcfg.mask_rate,
        [special["start_of_sequence_id"], special["end_of_segment_id"], special["padding_id"]],
        seeds[0])
    chooser = StatelessMaskValuesChooser(vocab_size, special["mask_id"],
                                         pcfg.mask_token_rate, pcfg.random_token_rate,
                                         seeds[1])
    masked, positions, originals = tf_text.mask_language_model(ids, selector, chooser)
    word_ids, mask = tf_text.pad_model_inputs(masked, seq_length, pad_value=special["padding_id"])
    type_ids, _ = tf_text.pad_model_inputs(types, seq_length, pad_value=0)
    lm_pos, weights = tf_text.pad_model_inputs(positions, pcfg.max_predictions, pad_value=0)
    lm_ids, _ = tf_text.pad_model_inputs(originals, pcfg.max_predictions, pad_value=0)
    return {"input_word_ids": tf.cast(word_ids, tf.int32), "input_mask": tf.cast(mask, tf.int32),
            "input_type_ids": tf.cast(type_ids, tf.int32),
            "masked_lm_positions": tf.cast(lm_pos, tf.int32),
            "masked_lm_ids": tf.cast(lm_ids, tf.int32),
            "masked_lm_weights": tf.cast(weights, tf.float32)}


def make_features_fn(preprocessor, pcfg, seq_length: int, seed: int, vocab_size: int):
    """``(batch_index, is_tlm [B], a [B], b [B]) -> dense features of the batch``."""
    special = dict(preprocessor.special_ids)
    if special["mask_id"] < 0:
        raise config_lib.ConfigError("the vocabulary has no [MASK] token: it cannot pre-train")

    def features(g, is_tlm, a, b):
        ta, tb = preprocessor.tokenize(a), preprocessor.tokenize(b)
        ta = ta.merge_dims(1, -1) if ta.ragged_rank > 1 else ta
        tb = tb.merge_dims(1, -1) if tb.ragged_rank > 1 else tb
        ids, types = pack_pretraining_inputs(ta, tb, is_tlm, seq_length,
                                             special["start_of_sequence_id"],
                                             special["end_of_segment_id"])
        out = mask_and_pad(ids, types, tf.stack([tf.constant(seed, tf.int64), g]), pcfg,
                           vocab_size, seq_length, special)
        out["is_tlm"] = tf.cast(is_tlm, tf.float32)
        return out

    return features


# ---------------------------------------------------------------------------- data
@dataclasses.dataclass
class PretrainCorpus:
    """Training pairs (and one-sentence "pairs" of text files), and the held-out pairs."""

    train: data_lib.ParallelCorpus
    monolingual: List[bool]  # per language of ``train``: a text file (MLM only)
    held_out: List[Tuple[str, str]]


def _text_language(path: str, lines: List[str]) -> data_lib.LanguageData:
    arr = np.array(lines, dtype=object)
    return data_lib.LanguageData(corpus_lib.language_of(path), arr, arr)


def load_corpus(cfg: config_lib.ExperimentConfig) -> PretrainCorpus:
    """The pairs of ``data.*`` and the sentences of ``pretrain.text_files``, with the last
    ``pretrain.eval_pairs_per_language`` pairs of each language held out.

    Raises:
      FileNotFoundError: no files match.
      ValueError: a language has no pair left for training after holding out.
    """
    pairs = data_lib.load_corpus_from_config(cfg.data)
    held_out: List[Tuple[str, str]] = []
    n_eval = cfg.pretrain.eval_pairs_per_language
    languages = []
    for lang in pairs.languages:
        if n_eval:
            if len(lang) <= n_eval:
                raise ValueError(f"language {lang.language} has {len(lang)} pairs: too few to "
                                 f"hold out pretrain.eval_pairs_per_language={n_eval}")
            held_out += list(zip(lang.src[-n_eval:], lang.tgt[-n_eval:]))
            lang = data_lib.LanguageData(lang.language, lang.src[:-n_eval], lang.tgt[:-n_eval])
        languages.append(data_lib.LanguageData(lang.language, lang.src, lang.tgt))
    mono = [False] * len(languages)
    stats = dict(pairs.stats)
    if cfg.pretrain.text_files:
        for path in paths.data_files(cfg.pretrain.text_files, cfg.data.data_dir):
            st = stats[path] = corpus_lib.Stats()
            lines = list(dict.fromkeys(corpus_lib.iter_text(path, st)))
            if lines:
                languages.append(_text_language(path, lines))
                mono.append(True)
    return PretrainCorpus(data_lib.ParallelCorpus(languages, stats, 0), mono, held_out)


def _row_plan(rng: np.random.Generator, mono: bool, src: str, tgt: str,
              tlm_fraction: float) -> Tuple[bool, str, str]:
    swap = rng.random() < 0.5
    tlm = rng.random() < tlm_fraction
    if mono:
        return False, src, ""
    a, b = (tgt, src) if swap else (src, tgt)
    return (True, a, b) if tlm else (False, a, "")


def text_batches(corpus: PretrainCorpus, sampler: data_lib.GlobalBatchSampler,
                 tlm_fraction: float, seed: int) -> Iterator[Tuple]:
    """Yields ``(batch_index, is_tlm [B], a [B], b [B])`` global batches, from the
    sampler's (restored) position; each row's kind and side order drawn from
    ``(seed, batch_index)``."""
    g = int(sampler.start_batch)
    for langs, idx in sampler.batches():
        rng = np.random.default_rng([seed, 3, g])
        rows = [_row_plan(rng, corpus.monolingual[l], corpus.train.languages[l].src[i],
                          corpus.train.languages[l].tgt[i], tlm_fraction)
                for l, i in zip(langs, idx)]
        yield (np.int64(g), np.array([r[0] for r in rows]),
               np.array([r[1].encode("utf-8") for r in rows], dtype=object),
               np.array([r[2].encode("utf-8") for r in rows], dtype=object))
        g += 1


def make_dataset(corpus: PretrainCorpus, sampler: data_lib.GlobalBatchSampler, features_fn,
                 tlm_fraction: float, seed: int,
                 input_context: Optional[tf.distribute.InputContext] = None) -> tf.data.Dataset:
    """Per-replica feature batches of this input pipeline: every pipeline builds and masks
    the same global batch and keeps its replicas' rows (as :func:`lealla_tf.data.pipeline.make_dataset`).
    """
    gbs = sampler.batch_size
    layout = data_lib.replica_layout(gbs, input_context)
    signature = (tf.TensorSpec([], tf.int64), tf.TensorSpec([gbs], tf.bool),
                 tf.TensorSpec([gbs], tf.string), tf.TensorSpec([gbs], tf.string))
    ds = tf.data.Dataset.from_generator(
        lambda: text_batches(corpus, sampler, tlm_fraction, seed), output_signature=signature)
    ds = ds.map(features_fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def split(feats):
        return {k: data_lib.pipeline_rows(v, layout) for k, v in feats.items()}

    ds = ds.map(split).unbatch()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    options.deterministic = True
    return ds.with_options(options).prefetch(2)


def eval_batches(pairs: Sequence[Tuple[str, str]], features_fn, batch_size: int,
                 seed_offset: int = 1 << 40) -> List[Dict[str, tf.Tensor]]:
    """Fixed masked batches of held-out pairs: MLM on every source and every target
    sentence, and TLM on every pair (the same masks every time)."""
    rows = ([(False, s, "") for s, _ in pairs] + [(False, t, "") for _, t in pairs]
            + [(True, s, t) for s, t in pairs])
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        out.append(features_fn(tf.constant(seed_offset + start, tf.int64),
                               tf.constant([r[0] for r in chunk]),
                               tf.constant([r[1].encode("utf-8") for r in chunk]),
                               tf.constant([r[2].encode("utf-8") for r in chunk])))
    return out
