"""A smaller LaBSE/LEALLA for the languages a user needs: WordPiece vocabulary pruning.

:func:`prune_run` keeps the tokens a corpus uses (plus the specials and the corpus's
single-character tokens) and the matching word-embedding rows; with no cap the pruned model
embeds that corpus exactly as the full one::

    lealla prune --model-dir runs/labse --input train/deu-eng.tsv --output runs/labse-de

See docs/released_models.md, "Pruning".
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterable, Sequence

import numpy as np
import tensorflow as tf

from lealla_tf import corpus, runs
from lealla_tf.models import encoders
from lealla_tf.text import packing, wordpiece

INFO_FILE = "prune_info.json"


def _sentences(files: Sequence[str]) -> Iterable[str]:
    for path in files:
        if path.endswith(".tsv"):
            for _, src, tgt in corpus.iter_tsv(path, corpus.Stats()):
                yield src
                yield tgt
        else:
            yield from corpus.iter_text(path, corpus.Stats())


def token_counts(preprocessor: wordpiece.WordpiecePreprocessor, sentences: Iterable[str],
                 batch_size: int = 1024) -> np.ndarray:
    """How often each vocabulary id occurs when ``sentences`` are tokenized (int64 [V])."""
    counts = np.zeros([preprocessor.vocab_size], np.int64)
    tokenize = tf.function(lambda s: preprocessor.tokenize(s).flat_values,
                           input_signature=[tf.TensorSpec([None], tf.string)])
    batch = []
    for sentence in sentences:
        batch.append(sentence)
        if len(batch) == batch_size:
            counts += np.bincount(tokenize(tf.constant(batch)).numpy(),
                                  minlength=len(counts))
            batch = []
    if batch:
        counts += np.bincount(tokenize(tf.constant(batch)).numpy(), minlength=len(counts))
    return counts


def kept_ids(tokens: Sequence[str], counts: np.ndarray, characters: Iterable[str],
             max_tokens: int = 0) -> np.ndarray:
    """Sorted ids to keep: special tokens, used tokens (the ``max_tokens`` most frequent
    when > 0) and the single-character tokens of ``characters`` (bare and ``##``)."""
    index = {t: i for i, t in enumerate(tokens)}
    keep = {i for i in packing.special_ids(tokens).values() if i >= 0}
    for ch in characters:
        for t in (ch, wordpiece.SUFFIX_INDICATOR + ch):
            if t in index:
                keep.add(index[t])
    used = np.nonzero(counts)[0]
    if max_tokens:
        if max_tokens < len(keep):
            raise ValueError(f"max_tokens {max_tokens} is below the {len(keep)} special and "
                             "single-character tokens that must stay")
        order = used[np.argsort(-counts[used], kind="stable")]
        for i in order:
            if len(keep) >= max_tokens:
                break
            keep.add(int(i))
    else:
        keep.update(int(i) for i in used)
    return np.array(sorted(keep), np.int64)


def prune_run(model_dir: str, files: Sequence[str], output_dir: str, max_tokens: int = 0,
              progress: bool = True) -> Dict[str, Any]:
    """Writes a run whose WordPiece vocabulary is pruned to what ``files`` use.

    Args:
      model_dir: a run with a WordPiece vocabulary (``lealla import``, or trained on one).
      files: ``.tsv`` pairs (both sides) or text files in the wanted languages.
      output_dir: the new run directory (replaced if it exists).
      max_tokens: keep at most this many tokens (0: every used token).
      progress: print a summary.

    Returns:
      The ``prune_info.json`` dict (sizes before and after).

    Raises:
      ValueError: the run's vocabulary is not WordPiece, or no sentences were read.
    """
    cfg, pre, encoder = runs.restore_wordpiece_run(model_dir, "lealla prune")
    sentences = list(_sentences(files))
    if not sentences:
        raise ValueError(f"no sentences in {list(files)}")
    counts = token_counts(pre, sentences)
    characters = set()
    for s in sentences:
        characters.update(s.lower() if pre.do_lower_case else s)
    keep = kept_ids(pre.tokens, counts, sorted(characters), max_tokens)
    tokens = [pre.tokens[i] for i in keep]

    model_cfg = dataclasses.replace(cfg.model, vocab_size=len(tokens),
                                    name=f"{cfg.model.name}-pruned")
    new_cfg = dataclasses.replace(cfg, model=model_cfg, vocab=dataclasses.replace(
        cfg.vocab, vocab_size=len(tokens)))
    new_cfg.train = dataclasses.replace(new_cfg.train, init_from="")
    pruned = encoders.build_encoder(model_cfg)
    pruned(pruned.dummy_inputs())
    table = encoder.word_embeddings
    for src, dst in zip(encoder.weights, pruned.weights):
        if src is table:
            dst.assign(tf.gather(src, keep))
        else:
            dst.assign(src)
    info = {"source": model_dir, "files": list(files), "sentences": len(sentences),
            "vocab_before": pre.vocab_size, "vocab_after": len(tokens),
            "max_tokens": max_tokens, "parameters_before": int(sum(
                int(np.prod(v.shape)) for v in encoder.weights))}
    vocab_bytes = ("\n".join(tokens) + "\n").encode("utf-8")
    runs.write_run(output_dir, new_cfg, vocab_bytes, pruned, INFO_FILE, info)
    info["parameters"] = int(sum(int(np.prod(v.shape)) for v in pruned.weights))
    if progress:
        print(f"pruned {model_dir}: {pre.vocab_size:,} -> {len(tokens):,} tokens, "
              f"{info['parameters_before']:,} -> {info['parameters']:,} parameters "
              f"({len(sentences):,} sentences) -> {output_dir}")
    return info
