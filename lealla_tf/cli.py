"""The ``lealla`` command.

Each command group has its own ``_add_*`` function that declares its arguments and
a handler that imports the library lazily (so ``lealla --help`` stays fast).
Errors the user can fix (bad config, missing file) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional


def _config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--config", required=required, help="YAML config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a config value, e.g. train.steps=100")


def _load_config(args):
    from lealla_tf import config
    return config.load(args.config, args.overrides)


# ---------------------------------------------------------------- model
def _add_model(sub) -> None:
    p = sub.add_parser("model", help="inspect model shapes")
    msub = p.add_subparsers(dest="model_cmd", required=True)
    s = msub.add_parser("summary", help="print the encoder shape and exact parameter count")
    _config_args(s)
    s.set_defaults(func=_model_summary)


def _model_summary(args) -> int:
    from lealla_tf import modeling
    cfg = _load_config(args)
    print(modeling.summary_text(cfg.model))
    return 0


# ---------------------------------------------------------------- vocab
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
    from lealla_tf import corpus, preprocessing
    files = corpus.find_files(args.input)
    path = preprocessing.train_vocab(
        files, args.output, vocab_size=args.vocab_size,
        sentences_per_language=args.sentences_per_language,
        sampling_alpha=args.sampling_alpha, seed=args.seed)
    print(f"vocabulary written to {path}")
    return 0


# ---------------------------------------------------------------- train
def _add_train(sub) -> None:
    pass  # filled in by the training job


# ---------------------------------------------------------------- export / publish / embed
def _add_export(sub) -> None:
    pass  # filled in by the export stage


# ---------------------------------------------------------------- eval / mine
def _add_eval(sub) -> None:
    pass  # filled in by the evaluation package


# ---------------------------------------------------------------- teacher
def _add_teacher(sub) -> None:
    pass  # filled in by the teachers module


# ---------------------------------------------------------------- demo
def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="run the main job end to end")
    p.add_argument("--output", default="results/demo")
    p.add_argument("--data-dir", default="", help="data root (default $LEALLA_DATA_DIR)")
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from lealla_tf import demo
    return demo.run(args.output, data_dir=args.data_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lealla", description="LEALLA sentence encoders: train, distil, export, evaluate.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_model, _add_vocab, _add_train, _add_export, _add_eval, _add_teacher,
                _add_demo):
        add(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    from lealla_tf.config import ConfigError
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError) as e:
        print(f"lealla: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
