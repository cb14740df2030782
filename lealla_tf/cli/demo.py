"""``lealla demo``: distil a teacher into small students, export and evaluate them
(:mod:`lealla_tf.recipes.demo`)."""

from __future__ import annotations

from lealla_tf.cli import common, errors


def add_commands(sub) -> None:
    p = sub.add_parser("demo", help="distil a teacher into a small student, export, evaluate")
    common.config_args(p)
    p.add_argument("--output", default="results/demo", help="results folder (resumable)")
    p.add_argument("--data-dir", default="", help="data root (default $LEALLA_DATA_DIR)")
    p.add_argument("--teacher", default=None, help="teacher spec (default: the recipe's)")
    p.add_argument("--pairs-per-language", type=int, default=3000,
                   help="training pairs sampled per language (0 = all)")
    p.add_argument("--languages", default=None,
                   help="Tatoeba languages to evaluate: all (112), xtreme36 or comma-separated "
                        "codes (default: the recipe's eval.tatoeba_languages, else all)")
    p.add_argument("--ntrex", default="teacher", choices=("teacher", "pairs", "none"),
                   help="NTREX-128 retrieval on the teacher's languages (default), on every "
                        "language with training pairs that NTREX-128 has (about 7 more "
                        "minutes on 2 cores), or none")
    p.add_argument("--int8-languages", default="teacher", choices=("teacher", "all"),
                   help="Tatoeba languages of the student's int8 TFLite file: the teacher's "
                        "(default) or every evaluated language (about 75 s more for 112)")
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    common.check_positive(args, "pairs_per_language", zero_ok=True)
    common.check_outputs(args.output, folder=True)
    from lealla_tf.recipes import demo
    with errors.user_errors(ConnectionError):  # (public data or a teacher not downloadable)
        return demo.run(args.output, data_dir=args.data_dir, config_path=args.config,
                        overrides=args.overrides, teacher_spec=args.teacher,
                        pairs_per_language=args.pairs_per_language,
                        eval_languages=args.languages or None, ntrex=args.ntrex,
                        int8_languages=args.int8_languages)
