"""``lealla vocab``, ``lealla vocab-extend``, ``lealla train`` and ``lealla pretrain``: a
vocabulary (or a WordPiece one extended to cover a corpus), then a run directory trained
from a config."""

from __future__ import annotations

import sys

from lealla_tf.cli import common, errors

INTERRUPTED = 130  # the shell's code for a command stopped by SIGINT


def add_commands(sub) -> None:
    _add_vocab(sub)
    _add_vocab_extend(sub)
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
    common.check_positive(args, "vocab_size", "sentences_per_language")
    files = common.corpus_files(args.input)
    common.check_outputs(args.output, folder=True)
    from lealla_tf.text import sentencepiece
    with errors.user_errors(ValueError):
        path = sentencepiece.train_vocab(
            files, args.output, vocab_size=args.vocab_size,
            sentences_per_language=args.sentences_per_language,
            sampling_alpha=args.sampling_alpha, seed=args.seed)
    print(f"vocabulary written to {path}")
    return 0


def _add_vocab_extend(sub) -> None:
    p = sub.add_parser("vocab-extend",
                       help="extend a WordPiece vocab.txt so that a corpus has no [UNK] "
                            "(original ids kept)")
    p.add_argument("--vocab", required=True, help="WordPiece vocab.txt (or a folder with one)")
    p.add_argument("--input", nargs="+", required=True,
                   help="text or TSV files whose words must be segmentable (globs ok; both "
                        "sides of a TSV)")
    p.add_argument("--output", required=True, help="output directory (gets vocab.txt)")
    p.add_argument("--max-new", type=int, default=1000, help="at most this many new tokens")
    p.add_argument("--do-lower-case", action="store_true",
                   help="BERT lower-casing and accent stripping (the model's flag)")
    p.add_argument("--no-pieces", action="store_true",
                   help="add only the missing characters (c and ##c), no learned pieces")
    p.add_argument("--min-count", type=int, default=2,
                   help="fewest occurrences of a learned piece")
    p.set_defaults(func=_vocab_extend)


def _vocab_extend(args) -> int:
    common.check_positive(args, "min_count")
    common.check_positive(args, "max_new", zero_ok=True)
    import os
    if not os.path.isdir(args.vocab):
        common.check_input_file(args.vocab, "vocabulary")
    files = common.corpus_files(args.input)
    common.check_outputs(args.output, folder=True)
    from lealla_tf import corpus
    from lealla_tf.text import coverage, wordpiece

    def sentences():
        for path in files:
            yield from corpus.iter_text(path)

    with errors.user_errors(ValueError):
        before = wordpiece.vocab_tokens(args.vocab)
        extended = wordpiece.extend_vocab(
            before, sentences(), max_new=args.max_new,
            output=os.path.join(args.output, wordpiece.VOCAB_FILE),
            do_lower_case=args.do_lower_case, learn_pieces=not args.no_pieces,
            min_count=args.min_count)
    new = extended[len(before):]
    singles = sum(1 for t in new if len(t.removeprefix(wordpiece.SUFFIX_INDICATOR)) == 1)
    print(f"{len(new)} tokens added ({singles} characters, {len(new) - singles} pieces): "
          f"{len(before)} -> {len(extended)}")
    for name, tokens in (("before", before), ("after", extended)):
        c = coverage.make_counter(tokens, "wordpiece", args.do_lower_case)(sentences())
        print(f"unknown {name}: {c['unknown']} of {c['tokens']} tokens ({c['rate']:.3f}%)")
    print(f"vocabulary written to {os.path.join(args.output, wordpiece.VOCAB_FILE)}")
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
    _job_args(p)
    p.set_defaults(func=_train)


def _job_args(p) -> None:
    """The flags ``train`` and ``pretrain`` share after ``--model-dir``."""
    p.add_argument("--recover", action="store_true",
                   help="when the newest checkpoint is damaged, resume from the newest one that "
                        "reads (damaged files are moved to checkpoints/damaged/, nothing is "
                        "deleted); without it a damaged run is refused")
    p.add_argument("--data-dir", default="",
                   help="data root that relative data.train_files patterns are read from "
                        "(sets data.data_dir; default $LEALLA_DATA_DIR, else the cache that "
                        "`lealla data fetch` fills)")


def _checked_config(args):
    """The config with the command's flags, after the inputs it names and the run
    directory are checked: all before TensorFlow loads."""
    cfg = common.load_config(args)
    if args.data_dir:
        cfg.data.data_dir = args.data_dir
    for name in ("init_from", "init_checkpoint"):
        if getattr(args, name, ""):
            setattr(cfg.train, name, getattr(args, name))
    common.check_outputs(args.model_dir, folder=True)
    _check_training_files(cfg)
    if not (cfg.train.init_from or cfg.train.init_checkpoint):
        _check_vocabulary(cfg, args.model_dir)
    return cfg


def _check_training_files(cfg) -> None:
    """Every training file (and pre-training text file) is a file with usable lines."""
    from lealla_tf import corpus, paths
    files = paths.data_files(cfg.data.train_files, cfg.data.data_dir, cfg.data.languages)
    if cfg.pretrain.text_files:
        files += paths.data_files(cfg.pretrain.text_files, cfg.data.data_dir)
    with errors.user_errors(corpus.CorpusError):
        for path in files:
            corpus.check_file(path)


def _check_vocabulary(cfg, model_dir: str) -> None:
    """The SentencePiece model a run will use (the run's own, else ``vocab.model_file``,
    tried against the cwd, then the model dir) exists and is one, before it is copied
    into the run."""
    from lealla_tf import fileio, layout, paths
    own = fileio.join(model_dir, layout.run_vocab_file(cfg.vocab.type))
    source = own if fileio.exists(own) else ""
    if not source and cfg.vocab.model_file:
        source = paths.vocab_model_file(cfg.vocab.model_file, model_dir)
    if not source or cfg.vocab.type != "sentencepiece":
        return
    import sentencepiece as spm
    data = fileio.read_bytes(source)
    try:
        if not data:
            raise RuntimeError("empty file")
        spm.SentencePieceProcessor(model_proto=data)
    except RuntimeError as e:
        if source == own:
            raise errors.UserError(
                f"{own} is not a SentencePiece model: remove it, and set vocab.model_file to "
                "an spm.model or leave it empty to train one") from e
        raise errors.UserError(
            f"vocab.model_file {source} is not a SentencePiece model (an spm.model, as "
            "`lealla vocab` writes)") from e


def _run_job(job, cfg, args):
    """Runs ``dual_encoder.train`` or ``pretraining.pretrain``; returns its result, or the
    exit code of a stop the user is told about in one line (divergence 1, Ctrl-C 130)."""
    from lealla_tf.training import loop
    try:
        with common.progress_logging():
            return job(cfg, args.model_dir, progress=not args.no_progress,
                       recover=args.recover)
    except loop.TrainingDiverged as e:
        print(f"lealla: {e}", file=sys.stderr)
        return 1
    except loop.TrainingInterrupted as e:
        print(f"lealla: {e}", file=sys.stderr)
        return INTERRUPTED


def _train(args) -> int:
    common.log_progress()
    cfg = _checked_config(args)  # config and input errors first, before the model code loads
    from lealla_tf.training import dual_encoder
    result = _run_job(dual_encoder.train, cfg, args)
    if isinstance(result, int):
        return result
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
    _job_args(p)
    p.set_defaults(func=_pretrain)


def _pretrain(args) -> int:
    common.log_progress()
    cfg = _checked_config(args)  # config and input errors first, before the model code loads
    from lealla_tf.training import pretraining
    result = _run_job(pretraining.pretrain, cfg, args)
    if isinstance(result, int):
        return result
    summary = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()
                        if k in ("loss", "accuracy") or k.startswith("eval/"))
    print(f"step {result.step}: {summary}; checkpoint {result.checkpoint}; "
          f"{result.sequences_per_second:.1f} sequences/s")
    return 0
