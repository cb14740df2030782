"""Starting a run from another: ``init_from``, ``init_checkpoint``, growth, a WordPiece table.

``train.init_from`` takes another run's shape, vocabulary and encoder weights (fine-tuning an
imported LaBSE/LEALLA); ``train.grow_layers`` adds identity blocks so the grown encoder starts
with exactly the source's outputs (a static source grows into a Transformer of the recipe's
shape that starts near it)::

    lealla train --config train_tiny --init-from runs/lealla-small --model-dir runs/ft

See docs/training.md, "Starting from another run".
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf

from lealla_tf import config as config_lib
from lealla_tf import layout, runs
from lealla_tf.models import bert_internals, encoders

# Model fields the new run keeps from its own config (they do not change the weights).
_KEEP = ("dropout_rate", "attention_dropout_rate", "implementation", "jit_compile")


def apply_init_from(cfg: config_lib.ExperimentConfig) -> config_lib.ExperimentConfig:
    """``cfg`` with the model shape and vocabulary of ``cfg.train.init_from`` (idempotent).

    Args:
      cfg: the new run's config; unchanged when ``train.init_from`` is empty.

    Raises:
      FileNotFoundError: ``train.init_from`` is not a run directory with a checkpoint.
    """
    run_dir = cfg.train.init_from
    if cfg.train.grow_layers and not run_dir:
        raise config_lib.ConfigError(
            "train.grow_layers grows the encoder of train.init_from: set train.init_from "
            "(lealla train --init-from RUN_DIR) to the run to grow")
    if not run_dir:
        return cfg
    source, _ = runs.source_files(run_dir)
    model = dataclasses.replace(source.model, embedding_init="random",
                                **{k: getattr(cfg.model, k) for k in _KEEP})
    grow = cfg.train.grow_layers
    if grow and source.model.architecture == "static":
        model = _from_static(cfg, source, run_dir)
    elif grow and grow != source.model.num_layers:
        if source.model.architecture != "transformer":
            raise config_lib.ConfigError(
                f"train.grow_layers: {run_dir} holds a {source.model.architecture} model; "
                "only Transformer encoders grow")
        if grow < source.model.num_layers:
            raise config_lib.ConfigError(
                f"train.grow_layers ({grow}) is below the depth of {run_dir} "
                f"({source.model.num_layers} layers): growing only adds layers")
        model = dataclasses.replace(model, num_layers=grow, name=cfg.model.name)
    vocab_file = source.vocab.model_file
    if not os.path.isabs(vocab_file):
        vocab_file = os.path.abspath(os.path.join(run_dir, vocab_file))
    vocab = dataclasses.replace(source.vocab, model_file=vocab_file)
    return dataclasses.replace(cfg, model=model, vocab=vocab).validate()


def _from_static(cfg: config_lib.ExperimentConfig, source: config_lib.ExperimentConfig,
                 run_dir: str) -> config_lib.ModelConfig:
    """The model of a Transformer grown from a static run: ``cfg.model``'s shape with
    ``train.grow_layers`` layers, mean pooling, the source's vocabulary size."""
    if cfg.model.architecture != "transformer":
        raise config_lib.ConfigError(
            f"train.grow_layers: {run_dir} holds a static model, which grows into a "
            "Transformer: set model.architecture: transformer")
    if cfg.model.hidden_size != source.model.hidden_size:
        raise config_lib.ConfigError(
            f"train.grow_layers: the static model of {run_dir} is {source.model.hidden_size} "
            f"wide, model.hidden_size is {cfg.model.hidden_size}: they must be equal")
    if cfg.model.pooling != "mean":
        raise config_lib.ConfigError("a Transformer grown from a static model needs "
                                     "model.pooling: mean (the static model's pooling)")
    return dataclasses.replace(cfg.model, vocab_size=source.model.vocab_size,
                               num_layers=cfg.train.grow_layers, embedding_init="random")


def restore_init(encoder, run_dir: str, grow_position: str = "top") -> str:
    """Loads the encoder weights of ``run_dir``'s latest checkpoint into ``encoder``; an
    encoder deeper than the source is grown from it
    (:func:`lealla_tf.models.bert_internals.grow_encoder`).

    Returns:
      The checkpoint path.

    Raises:
      ConfigError: tensors of the checkpoint and the encoder differ (named).
    """
    source_cfg, checkpoint = runs.source_files(run_dir)
    bert = getattr(encoder, "bert", None)
    if bert is not None and source_cfg.model.architecture == "static":
        source = encoders.StaticEncoder.from_model_config(source_cfg.model)
        source(source.dummy_inputs())
        runs.restore_encoder_checkpoint(source, checkpoint, "train.init_from")
        table = source.word_embeddings
        if source.projection is not None:  # mean(rows) P = mean(rows P)
            table = tf.matmul(table, source.projection.kernel)
        bert_internals.grow_from_static(encoder, table)
        return checkpoint
    if bert is not None and len(bert.transformer_layers) != source_cfg.model.num_layers:
        source = encoders.LeallaEncoder.from_model_config(source_cfg.model)
        source(source.dummy_inputs())
        runs.restore_encoder_checkpoint(source, checkpoint, "train.init_from")
        bert_internals.grow_encoder(encoder, source, grow_position)
        return checkpoint
    runs.restore_encoder_checkpoint(encoder, checkpoint, "train.init_from")
    return checkpoint


def apply_init_checkpoint(cfg: config_lib.ExperimentConfig) -> config_lib.ExperimentConfig:
    """``cfg`` with the vocabulary (and vocabulary size) of ``train.init_checkpoint``'s run;
    the rest of the model shape stays ``cfg``'s (idempotent)."""
    path = cfg.train.init_checkpoint
    if not path:
        return cfg
    run_dir, _ = runs.resolve_checkpoint(path)
    source = config_lib.load(os.path.join(run_dir, layout.CONFIG_FILE))
    vocab_file = source.vocab.model_file
    if not os.path.isabs(vocab_file):
        vocab_file = os.path.abspath(os.path.join(run_dir, vocab_file))
    vocab = dataclasses.replace(source.vocab, model_file=vocab_file)
    model = dataclasses.replace(cfg.model, vocab_size=source.model.vocab_size,
                                embedding_init="random")
    return dataclasses.replace(cfg, model=model, vocab=vocab).validate()


def _wordpiece_form(piece_id: int, text: str) -> str:
    """A SentencePiece piece's text in WordPiece spelling (`` dog`` -> ``dog``, ``og`` ->
    ``##og``; our reserved pieces 0-4 -> ``[PAD]`` ... ``[MASK]``)."""
    from lealla_tf.text import sentencepiece, wordpiece
    if not text:
        return sentencepiece.SPECIAL_PIECES[piece_id] if piece_id < len(
            sentencepiece.SPECIAL_PIECES) else ""
    if text.startswith(" "):
        return text[1:]
    return wordpiece.SUFFIX_INDICATOR + text


def student_tokens(vocab_type: str, vocab_bytes: bytes):
    """The student's vocabulary in WordPiece spelling, in id order."""
    from lealla_tf.distill import student_init
    from lealla_tf.text import wordpiece
    if vocab_type == "wordpiece":
        return wordpiece.vocab_tokens(vocab_bytes)
    return [_wordpiece_form(i, t) for i, t in enumerate(student_init.piece_texts(vocab_bytes))]


def table_from_run(run_dir: str, tokens, dim: int, stddev: float):
    """The word-embedding rows of ``run_dir`` (e.g. imported LaBSE) for ``tokens``, reduced
    to ``dim`` by PCA (``student_init.pca_table``: centred, top components, entries rescaled
    to ``stddev``).

    Args:
      run_dir: a run with a WordPiece vocabulary.
      tokens: the student's tokens in WordPiece spelling (see :func:`student_tokens`).
      dim: the student's hidden size.
      stddev: the initializer's standard deviation.

    Returns:
      ``(table [len(tokens), dim] float32, found [len(tokens)] bool)``; rows of tokens the
      run does not have are zero and ``found`` is False there.

    Raises:
      ValueError: the run's vocabulary is not WordPiece, or no token is shared.
    """
    import numpy as np

    from lealla_tf.distill import student_init
    cfg, pre, encoder = runs.restore_wordpiece_run(run_dir, "train.embedding_table_from")
    index = {t: i for i, t in enumerate(pre.tokens)}
    rows = np.array([index.get(t, -1) for t in tokens])
    found = rows >= 0
    if not found.any():
        raise ValueError(f"train.embedding_table_from: no token of the student's vocabulary "
                         f"is in {run_dir}'s")
    source = encoder.word_embeddings.numpy()
    vectors = np.zeros((len(tokens), source.shape[1]), np.float32)
    vectors[found] = source[rows[found]]
    table = student_init.pca_table(vectors, dim, stddev)
    return table, found & np.any(vectors != 0, axis=1)


def init_table_from_run(encoder, vocab_type: str, vocab_bytes: bytes, run_dir: str,
                        stddev: float) -> int:
    """Fills ``encoder``'s word-embedding rows from ``run_dir``'s table (see
    :func:`table_from_run`); rows of tokens ``run_dir`` lacks keep their initial values.

    Returns:
      The number of rows filled.
    """
    import numpy as np
    variable = encoder.word_embeddings
    tokens = student_tokens(vocab_type, vocab_bytes)
    if len(tokens) > variable.shape[0]:
        raise config_lib.ConfigError(f"the vocabulary has {len(tokens)} tokens but the word "
                                     f"embeddings {variable.shape[0]} rows")
    table, found = table_from_run(run_dir, tokens, int(variable.shape[1]), stddev)
    current = variable.numpy()
    current[:len(tokens)][found] = table[found]
    variable.assign(tf.cast(current, variable.dtype))
    return int(np.sum(found))


def check_wordpiece_flags(cfg: config_lib.ExperimentConfig) -> None:
    """A WordPiece ``vocab.model_file`` inside a run directory (``RUN/vocab/vocab.txt``)
    must be used with that run's ``do_lower_case``.

    Raises:
      ConfigError: the flags differ.
    """
    path = cfg.vocab.model_file
    if cfg.vocab.type != "wordpiece" or not path or not os.path.isfile(path):
        return
    run_cfg = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))),
                           layout.CONFIG_FILE)
    if not os.path.isfile(run_cfg):
        return
    source = config_lib.load(run_cfg).vocab
    if source.type == "wordpiece" and source.do_lower_case != cfg.vocab.do_lower_case:
        raise config_lib.ConfigError(
            f"vocab.do_lower_case is {cfg.vocab.do_lower_case} but the vocabulary {path} "
            f"belongs to a run with do_lower_case {source.do_lower_case}: set "
            f"vocab.do_lower_case={str(source.do_lower_case).lower()}")
