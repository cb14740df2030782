"""``lealla vocab``, ``lealla train`` and ``lealla pretrain``: a vocabulary, then a run
directory trained from a config."""

from __future__ import annotations

import sys

from lealla_tf.cli import common, errors

INTERRUPTED = 130  # the shell's code for a command stopped by SIGINT


def add_commands(sub) -> None:
    _add_vocab(sub)
    _add_train(sub)
    _add_pretrain(sub)


def _add_vocab(sub) -> None:
    p = sub.add_parser("vocab", help="train a unigram SentencePiece vocabulary")
    p.add_argument("--input", nargs="+", required=True, help="text or TSV files (globs ok)")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--sentences-per-language", type=int, default=100000)
    p.add_argument("--sampling-alpha", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_vocab)


def _vocab(args) -> int:
    from lealla_tf import corpus
    from lealla_tf.text import sentencepiece
    files = corpus.find_files(args.input)
    path = sentencepiece.train_vocab(
        files, args.output, vocab_size=args.vocab_size,
        sentences_per_language=args.sentences_per_language,
        sampling_alpha=args.sampling_alpha, seed=args.seed)
    print(f"vocabulary written to {path}")
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train (or resume) a dual encoder: AMS with cross-replica negatives "
        "plus optional distillation")
    common.config_args(p, required=True)
    p.add_argument("--model-dir", required=True,
                   help="run directory: config, vocabulary, checkpoints, TensorBoard logs; "
                   "rerunning resumes from its latest checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--init-from", default="", metavar="RUN_DIR",
                   help="start from the encoder, model shape and vocabulary of another run "
                        "(`lealla import` of LaBSE/LEALLA, or `lealla pretrain`): "
                        "fine-tuning")
    p.add_argument("--init-checkpoint", default="", metavar="RUN_DIR_OR_CKPT",
                   help="start from the encoder weights and vocabulary of a run or "
                        "checkpoint, keeping this config's model shape (every tensor must "
                        "match)")
    p.add_argument("--recover", action="store_true",
                   help="when the newest checkpoint is damaged, resume from the newest one that "
                        "reads (damaged files are moved to checkpoints/damaged/, nothing is "
                        "deleted); without it a damaged run is refused")
    p.set_defaults(func=_train)


def _train(args) -> int:
    common.log_progress()
    cfg = common.load_config(args)  # config errors first, before the model code loads
    from lealla_tf.training import dual_encoder, loop
    if args.init_from:
        cfg.train.init_from = args.init_from
    if args.init_checkpoint:
        cfg.train.init_checkpoint = args.init_checkpoint
    from lealla_tf import runs
    try:
        with errors.user_errors(runs.DamagedRunError, runs.RunLockedError):
            result = dual_encoder.train(cfg, args.model_dir, progress=not args.no_progress,
                                        recover=args.recover)
    except loop.TrainingDiverged as e:
        print(f"lealla: {e}", file=sys.stderr)
        return 1
    except loop.TrainingInterrupted as e:
        print(f"lealla: {e}", file=sys.stderr)
        return INTERRUPTED
    summary = ", ".join(f"{k} {result.metrics[k]:.4f}" for k in ("loss", "accuracy")
                        if k in result.metrics)
    print(f"step {result.step}: {summary}; checkpoint {result.checkpoint}; "
          f"{result.examples_per_second:.1f} pairs/s")
    return 0


def _add_pretrain(sub) -> None:
    p = sub.add_parser(
        "pretrain", help="pre-train an encoder as LaBSE does: MLM on sentences + TLM on "
        "translation pairs, with progressive stacking (pretrain.stages)")
    common.config_args(p, required=True)
    p.add_argument("--model-dir", required=True,
                   help="run directory (config, vocabulary, checkpoints, logs); rerunning "
                        "resumes, also across stage boundaries; `lealla train --init-from` "
                        "starts from it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--recover", action="store_true",
                   help="when the newest checkpoint is damaged, resume from the newest one that "
                        "reads (damaged files are moved to checkpoints/damaged/, nothing is "
                        "deleted); without it a damaged run is refused")
    p.set_defaults(func=_pretrain)


def _pretrain(args) -> int:
    common.log_progress()
    cfg = common.load_config(args)  # config errors first, before the model code loads
    from lealla_tf import runs
    from lealla_tf.training import loop, pretraining
    try:
        with errors.user_errors(runs.DamagedRunError, runs.RunLockedError):
            result = pretraining.pretrain(cfg, args.model_dir, progress=not args.no_progress,
                                          recover=args.recover)
    except loop.TrainingDiverged as e:
        print(f"lealla: {e}", file=sys.stderr)
        return 1
    except loop.TrainingInterrupted as e:
        print(f"lealla: {e}", file=sys.stderr)
        return INTERRUPTED
    summary = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()
                        if k in ("loss", "accuracy") or k.startswith("eval/"))
    print(f"step {result.step}: {summary}; checkpoint {result.checkpoint}; "
          f"{result.sequences_per_second:.1f} sequences/s")
    return 0
