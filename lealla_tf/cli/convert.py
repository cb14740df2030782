"""``lealla import`` and ``lealla prune``: released LaBSE/LEALLA models as run directories,
and WordPiece runs shrunk to the tokens a corpus uses."""

from __future__ import annotations

from lealla_tf.cli import common, errors


def add_commands(sub) -> None:
    _add_import(sub)
    _add_prune(sub)


def _add_import(sub) -> None:
    p = sub.add_parser("import", help="import a released LaBSE or LEALLA SavedModel (TF Hub "
                                      "handle, URL or folder) as a run directory")
    p.add_argument("--source", required=True,
                   help="TF Hub handle/URL or SavedModel folder: LaBSE's encoder or a "
                        "LEALLA (strings in)")
    p.add_argument("--output", required=True, help="run directory to write")
    p.add_argument("--preprocessor", default="",
                   help="LaBSE's preprocessor SavedModel: its vocabulary when the source has "
                        "none, and its token ids are checked against ours")
    p.add_argument("--seq-length", type=int, default=128, help="packed length (release: 128)")
    p.add_argument("--do-lower-case", choices=("true", "false"), default=None,
                   help="override the source's do_lower_case")
    p.add_argument("--num-attention-heads", type=int, default=0,
                   help="only for sources with 2-D attention kernels")
    p.add_argument("--name", default="", help="model name (default: from the source)")
    p.add_argument("--no-check", action="store_true",
                   help="skip the parity check against the source")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.set_defaults(func=_import)


def _import(args) -> int:
    common.check_positive(args, "seq_length")
    common.check_outputs(args.output, folder=True)
    from lealla_tf.convert import importing
    lower = None if args.do_lower_case is None else args.do_lower_case == "true"
    with errors.user_errors(ValueError, FileExistsError):
        result = importing.import_model(
            args.source, args.output, preprocessor=args.preprocessor,
            seq_length=args.seq_length, do_lower_case=lower,
            num_attention_heads=args.num_attention_heads, name=args.name,
            check=not args.no_check, overwrite=args.overwrite)
    m = result.config.model
    print(f"imported {args.source} ({result.layout}): {m.num_layers} layers x {m.hidden_size}, "
          f"vocab {m.vocab_size:,} (WordPiece, do_lower_case "
          f"{result.config.vocab.do_lower_case}) -> {result.run_dir}")
    if result.parity:
        print("parity with the source: " + ", ".join(
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in result.parity.items()))
    return 0


def _add_prune(sub) -> None:
    p = sub.add_parser("prune", help="shrink a WordPiece run (e.g. imported LaBSE) to the "
                                     "tokens a corpus in the wanted languages uses")
    p.add_argument("--model-dir", required=True, help="run directory with a WordPiece vocab")
    p.add_argument("--input", nargs="+", required=True, help="TSV or text files (globs ok)")
    p.add_argument("--output", required=True, help="the pruned run directory")
    p.add_argument("--max-tokens", type=int, default=0,
                   help="keep at most this many tokens (default: every token the corpus uses)")
    p.set_defaults(func=_prune)


def _prune(args) -> int:
    common.check_positive(args, "max_tokens", zero_ok=True)
    files = common.corpus_files(args.input)
    common.check_outputs(args.output, folder=True)
    from lealla_tf.convert import pruning
    with errors.user_errors(ValueError):
        pruning.prune_run(args.model_dir, files, args.output, max_tokens=args.max_tokens)
    return 0
