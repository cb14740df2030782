"""``lealla eval`` (tatoeba, bucc, ntrex, un, vocab-coverage) and ``lealla mine``: a model's
retrieval and mining accuracy, a vocabulary's unknown-token rates, and bitext mined from two
corpora."""

from __future__ import annotations

import os

from lealla_tf import paths
from lealla_tf.cli import common, errors


def add_commands(sub) -> None:
    model_help = ("model: export folder, .tflite, run dir or TF Hub handle (as `lealla embed`), "
                  "a teacher spec (muse, labse, hub:..., savedmodel:...), or a Python "
                  "callable py:package.module:function")

    def common(s, memory=True, output_help="results JSON file", output_required=False,
               model_required=True):
        s.add_argument("--model", required=model_required, default="",
                       help=model_help + ("" if model_required else
                                          " (not needed when every input is a .npy file)"))
        s.add_argument("--batch-size", type=int, default=512,
                       help="most sentences per model call")
        s.add_argument("--batch-tokens", type=int, default=None,
                       help="most padded tokens per model call (default: the model's own, "
                            "8192, or 1024 for a .tflite file; 0: no limit)")
        s.add_argument("--cache-dir", default="",
                       help="embedding cache (default $LEALLA_CACHE_DIR/embeddings)")
        s.add_argument("--no-cache", action="store_true", help="do not read/write the cache")
        if memory:
            s.add_argument("--memory-mb", type=int, default=256,
                           help="memory bound of the nearest-neighbour search (MiB)")
        s.add_argument("--output", default="", required=output_required,
                       help=output_help)

    def mining_args(s):
        s.add_argument("-k", "--neighbourhood", dest="k", type=int, default=4,
                       help="margin neighbourhood size (LASER -k)")
        s.add_argument("--margin", choices=("ratio", "distance", "absolute"), default="ratio")
        s.add_argument("--retrieval", choices=("max", "fwd", "bwd", "intersect"),
                       default="max")

    def index_args(s):
        s.add_argument("--index", choices=("exact", "faiss", "scann"), default="exact",
                       help="nearest-neighbour search: exact (chunked), or an approximate "
                            "index built once per embedding matrix and saved (extras "
                            "[faiss], [scann])")
        s.add_argument("--index-dir", default="",
                       help="where indexes are saved and reused (default <cache>/indexes)")
        s.add_argument("--index-factory", default="",
                       help="FAISS index_factory string (default IVF<4 sqrt(N)>,Flat; e.g. "
                            "IVF65536,SQ8 or OPQ32,IVF65536,PQ32 for large pools)")
        s.add_argument("--nlist", type=int, default=0,
                       help="index partitions (0: 4 sqrt(N))")
        s.add_argument("--nprobe", type=int, default=0,
                       help="partitions searched per query (0: nlist/8, at least 16)")

    p = sub.add_parser("eval", help="evaluate a model: tatoeba, bucc, ntrex, un")
    esub = p.add_subparsers(dest="eval_cmd", required=True)

    t = esub.add_parser("tatoeba", help="Tatoeba accuracy (both directions), 112 languages")
    common(t, memory=False)
    t.add_argument("--languages", default="all", help="all | xtreme36 | comma-separated codes")
    t.add_argument("--data-dir", default="",
                   help="local copy (folder of tatoeba.* files or a data root with "
                        "tatoeba/v1); without it the files are downloaded and cached")
    t.add_argument("--plot", default="", help="bar chart PNG (default: next to --output)")
    t.set_defaults(func=_eval_tatoeba)

    b = esub.add_parser("bucc", help="BUCC bitext mining F1 (margin scoring, best threshold)")
    common(b)
    mining_args(b)
    index_args(b)
    b.add_argument("--src", default="", help="xx-en.split.xx file (id<TAB>sentence)")
    b.add_argument("--tgt", default="", help="xx-en.split.en file")
    b.add_argument("--gold", default="", help="xx-en.split.gold file (src-id<TAB>tgt-id)")
    b.add_argument("--data-dir", default="", help="BUCC folder (instead of --src/--tgt/--gold)")
    b.add_argument("--language", default="de", help="with --data-dir: de | fr | ru | zh")
    b.add_argument("--split", default="training", help="with --data-dir: sample | training")
    b.add_argument("--threshold", type=float, default=None,
                   help="fixed margin threshold (default: the F1-optimal one)")
    b.add_argument("--predictions", default="", help="write extracted id pairs here")
    b.set_defaults(func=_eval_bucc)

    n = esub.add_parser("ntrex", help="BUCC-style mining benchmark built from NTREX-128")
    common(n)
    mining_args(n)
    index_args(n)
    n.add_argument("--data-dir", default="",
                   help="data root with ntrex/NTREX-128 (default $LEALLA_DATA_DIR)")
    n.add_argument("--languages", default="deu,fra,rus,zho_Hans",
                   help="comma-separated NTREX codes, or 'all'")
    n.add_argument("--pairs", type=int, default=400, help="hidden pairs per language")
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--work-dir", default="", help="where the built task files go "
                                                  "(default: a temporary folder)")
    n.set_defaults(func=_eval_ntrex)

    u = esub.add_parser("un", help="P@1 of line-aligned queries in a large candidate pool")
    common(u, model_required=False)
    index_args(u)
    u.add_argument("--source", required=True, help="query sentences (text or .npy)")
    u.add_argument("--target", required=True, help="their translations, line-aligned")
    u.add_argument("--extra", nargs="*", default=[],
                   help="more target-side candidates (text or .npy files)")
    u.add_argument("--max-queries", type=int, default=None)
    u.set_defaults(func=_eval_un)

    v = esub.add_parser("vocab-coverage",
                        help="unknown-token rate of a vocabulary (spm.model or vocab.txt) "
                             "per Tatoeba language, marking the languages with training pairs")
    v.add_argument("--vocab", required=True,
                   help="SentencePiece .model or WordPiece vocab.txt (or a folder with one)")
    v.add_argument("--vocab-type", choices=("sentencepiece", "wordpiece"), default=None,
                   help="default: from the file name (.model: sentencepiece, .txt: wordpiece)")
    v.add_argument("--do-lower-case", action="store_true",
                   help="WordPiece: BERT lower-casing and accent stripping (the model's flag)")
    v.add_argument("--languages", default="all", help="all | xtreme36 | comma-separated codes")
    v.add_argument("--data-dir", default="",
                   help="folder of tatoeba.* files or a data root with tatoeba/v1 "
                        "(default $LEALLA_DATA_DIR, else the cache `lealla data fetch` fills)")
    v.add_argument("--train-dir", default="",
                   help="folder (or glob) of xxx-eng.tsv training files: the languages that "
                        "have pairs (default: the data root's train/, if it has one)")
    v.add_argument("--max-rate", type=float, default=1.0,
                   help="unknown %% no language with training pairs should exceed")
    v.add_argument("--check", action="store_true",
                   help="exit 1 when a language with training pairs exceeds --max-rate")
    v.add_argument("--output", default="", help="results JSON file")
    v.add_argument("--markdown", default="", help="also write the table to this file")
    v.set_defaults(func=_eval_vocab_coverage)

    m = sub.add_parser("mine", help="mine bitext from two corpora (LASER margin scoring)")
    common(m, output_help="output TSV: score, source line, target line, source, target",
           output_required=True)
    mining_args(m)
    index_args(m)
    m.add_argument("--source", required=True, help="source text file, one sentence a line")
    m.add_argument("--target", required=True, help="target text file")
    m.add_argument("--threshold", type=float, default=None,
                   help="keep pairs scoring above it (e.g. 1.06 with the ratio margin)")
    m.set_defaults(func=_mine)


def _load_eval_model(spec: str, batch_tokens=None):
    from lealla_tf import embedders
    return embedders.load(spec, batch_tokens=batch_tokens)


def _run_eval(args, body, inputs=(), outputs=()) -> int:
    """Checks the flags, the ``inputs`` (files read) and the ``outputs`` (files written),
    then loads the model and runs ``body(model)``."""
    common.check_positive(args, "batch_size", *[n for n in ("memory_mb",) if hasattr(args, n)])
    common.check_positive(args, "batch_tokens", zero_ok=True)
    if getattr(args, "k", 1) < 1:
        raise errors.UserError(f"-k/--neighbourhood must be at least 1, got {args.k}")
    for path in inputs:
        if path:
            common.check_input_file(path)
    common.check_outputs(*outputs)
    from lealla_tf.data.datasets import ChecksumError
    with errors.user_errors(ValueError, ChecksumError, ConnectionError, ImportError):
        return body(_load_eval_model(args.model, args.batch_tokens) if args.model else None)


def _write_json(path: str, result: dict) -> None:
    import json

    from lealla_tf import fileio
    if path:
        with errors.writing(path):
            fileio.atomic_write(path, json.dumps(result, indent=1))
        print(f"results written to {path}")


def _index_config(args):
    """The ``index_args`` flags as a validated IndexConfig (None for exact search); a
    missing extra is reported here, before any embedding is computed."""
    from lealla_tf.config import IndexConfig
    if getattr(args, "index", "exact") == "exact":
        return None
    from lealla_tf.evaluation import ann
    ann.require(args.index)
    return IndexConfig(kind=args.index, directory=args.index_dir,
                       faiss_factory=args.index_factory if args.index == "faiss" else "",
                       nlist=args.nlist, nprobe=args.nprobe).validate()


def _mining_kwargs(args) -> dict:
    """The flags ``mining_args`` adds (plus --memory-mb and the index flags), as mining
    keyword arguments."""
    return {"k": args.k, "margin": args.margin, "retrieval_mode": args.retrieval,
            "max_memory_bytes": args.memory_mb << 20, "index": _index_config(args)}


def _eval_kwargs(args) -> dict:
    return {"batch_size": args.batch_size, "cache": args.cache_dir or None,
            "use_cache": not args.no_cache}


def _eval_tatoeba(args) -> int:
    # --data-dir, else $LEALLA_DATA_DIR; neither: the files are downloaded into the cache.
    chosen = paths.chosen_data_dir(args.data_dir)
    data_dir = paths.data_dir(chosen) if chosen else None
    plot = args.plot or (os.path.splitext(args.output)[0] + ".png" if args.output else "")
    from lealla_tf.evaluation import tatoeba

    def body(model):
        res = tatoeba.evaluate(model, args.languages, data_dir=data_dir, **_eval_kwargs(args))
        print(tatoeba.format_table(res))
        with errors.writing(args.output or plot):
            tatoeba.save(res, args.output or None, plot=plot or None)
        if args.output:
            print(f"results written to {args.output}")
        if plot:
            print(f"chart written to {plot}")
        return 0
    return _run_eval(args, body, outputs=(args.output, plot))


def _eval_bucc(args) -> int:
    from lealla_tf.evaluation import bucc
    files = {"src": args.src, "tgt": args.tgt, "gold": args.gold}
    if args.data_dir:
        files = bucc.find_files(args.data_dir, args.language, args.split)
    if not (files["src"] and files["tgt"] and files["gold"]):
        raise errors.UserError("give --src, --tgt and --gold, or --data-dir with gold files")

    def body(model):
        res = bucc.evaluate_files(
            model, files["src"], files["tgt"], files["gold"], threshold=args.threshold,
            predictions=args.predictions or None, **_mining_kwargs(args),
            **_eval_kwargs(args))
        print(bucc.format_table(res))
        _write_json(args.output, res)
        return 0
    return _run_eval(args, body, inputs=files.values(),
                     outputs=(args.output, args.predictions))


def _eval_ntrex(args) -> int:
    import tempfile

    root = paths.data_dir(args.data_dir)
    from lealla_tf.evaluation import bucc

    def body(model):
        langs = (list(bucc.ntrex_languages(root)) if args.languages == "all"
                 else [l.strip() for l in args.languages.split(",") if l.strip()])
        with tempfile.TemporaryDirectory() as tmp:
            res = bucc.evaluate_ntrex(
                model, root, langs, args.work_dir or tmp, n_pairs=args.pairs, seed=args.seed,
                **_mining_kwargs(args), **_eval_kwargs(args))
        print(bucc.format_table(res))
        _write_json(args.output, res)
        return 0
    return _run_eval(args, body, outputs=(args.output,))


def _eval_un(args) -> int:
    from lealla_tf.evaluation import un

    def body(model):
        kw = _eval_kwargs(args)
        if not kw.pop("use_cache"):
            print("note: eval un always caches pool embeddings (they are searched from disk)")
        res = un.evaluate(model, args.source, args.target, extra=args.extra,
                          max_queries=args.max_queries, max_memory_bytes=args.memory_mb << 20,
                          index=_index_config(args), **kw)
        print(un.format_table(res))
        _write_json(args.output, res)
        return 0
    return _run_eval(args, body, inputs=(args.source, args.target, *args.extra),
                     outputs=(args.output,))


def _mine(args) -> int:
    from lealla_tf.evaluation import mining

    def body(model):
        with errors.writing(args.output):
            n = mining.mine_files(model, args.source, args.target, args.output,
                                  threshold=args.threshold, **_mining_kwargs(args),
                                  **_eval_kwargs(args))
        print(f"{n} pairs written to {args.output}")
        return 0
    return _run_eval(args, body, inputs=(args.source, args.target), outputs=(args.output,))


def _eval_vocab_coverage(args) -> int:
    if not os.path.isdir(args.vocab):  # (a folder holding spm.model or vocab.txt is fine)
        common.check_input_file(args.vocab, "vocabulary")
    if args.max_rate < 0:
        raise errors.UserError(f"--max-rate must be at least 0, got {args.max_rate}")
    data_dir = paths.data_dir(args.data_dir)
    if args.train_dir and not any(c in args.train_dir for c in "*?["):
        common.check_input_dir(args.train_dir, "training folder")
    common.check_outputs(args.output, args.markdown)
    from lealla_tf.evaluation import vocab_coverage
    with errors.user_errors(ValueError):
        res = vocab_coverage.tatoeba_unknown_rates(
            args.vocab, data_dir, args.languages, vocab_type=args.vocab_type,
            do_lower_case=args.do_lower_case, train_languages=args.train_dir or None,
            max_rate=args.max_rate)
    table = vocab_coverage.format_table(res)
    print(table)
    _write_json(args.output, res)
    if args.markdown:
        from lealla_tf import fileio
        with errors.writing(args.markdown):
            fileio.atomic_write(args.markdown, table + "\n")
        print(f"table written to {args.markdown}")
    if args.check and res["summary"]["above_max_rate_with_pairs"]:
        return 1
    return 0
