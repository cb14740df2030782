"""Starting a run from another run: fine-tuning an imported LaBSE/LEALLA (or any run).

``train.init_from: RUN_DIR`` (``lealla train --init-from RUN_DIR``) makes a new run start
from the encoder of ``RUN_DIR`` (a ``lealla import`` or ``lealla train`` directory): the
new run takes that run's model shape and vocabulary, and, before its first step, its
latest checkpoint's encoder weights. Everything else (data, loss, distillation, optimiser,
schedule, ``preprocess.seq_length``, dropout rates) comes from the new config. A resumed
run continues from its own checkpoints.

Example::

    lealla import --source https://tfhub.dev/google/LEALLA/LEALLA-small/1 --output runs/small
    lealla train --config configs/finetune.yaml --init-from runs/small --model-dir runs/ft
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf

from lealla_tf import config as config_lib

# Model fields the new run keeps from its own config (they do not change the weights).
_KEEP = ("dropout_rate", "attention_dropout_rate", "implementation", "jit_compile")


def _source_files(run_dir: str):
    from lealla_tf import training
    cfg_path = os.path.join(run_dir, training.CONFIG_FILE)
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"train.init_from: {cfg_path} not found: is {run_dir} a run "
                                "directory (lealla import / lealla train)?")
    checkpoint = tf.train.latest_checkpoint(os.path.join(run_dir, training.CHECKPOINT_DIR))
    if not checkpoint:
        raise FileNotFoundError(f"train.init_from: no checkpoint in {run_dir}/checkpoints")
    return config_lib.load(cfg_path), checkpoint


def apply_init_from(cfg: config_lib.ExperimentConfig) -> config_lib.ExperimentConfig:
    """``cfg`` with the model shape and vocabulary of ``cfg.train.init_from`` (idempotent).

    Args:
      cfg: the new run's config; unchanged when ``train.init_from`` is empty.

    Raises:
      FileNotFoundError: ``train.init_from`` is not a run directory with a checkpoint.
    """
    run_dir = cfg.train.init_from
    if not run_dir:
        return cfg
    source, _ = _source_files(run_dir)
    model = dataclasses.replace(source.model, embedding_init="random",
                                **{k: getattr(cfg.model, k) for k in _KEEP})
    vocab_file = source.vocab.model_file
    if not os.path.isabs(vocab_file):
        vocab_file = os.path.abspath(os.path.join(run_dir, vocab_file))
    vocab = dataclasses.replace(source.vocab, model_file=vocab_file)
    return dataclasses.replace(cfg, model=model, vocab=vocab).validate()


def restore_init(encoder, run_dir: str) -> str:
    """Loads the encoder weights of ``run_dir``'s latest checkpoint into ``encoder``.

    Returns:
      The checkpoint path.
    """
    _, checkpoint = _source_files(run_dir)
    tf.train.Checkpoint(encoder=encoder).restore(checkpoint).expect_partial() \
        .assert_existing_objects_matched()
    return checkpoint
