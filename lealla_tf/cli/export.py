"""``lealla export``, ``lealla publish`` and ``lealla embed``: a run as TF Hub SavedModels
and TFLite files, an export packed for TF Hub, sentences embedded with any model."""

from __future__ import annotations

import errno
import os
import sys
from typing import List

from lealla_tf.cli import common, errors
from lealla_tf.layout import EXPORT_FORMATS as FORMATS


def add_commands(sub) -> None:
    p = sub.add_parser("export", help="export a run as TF Hub SavedModels, TFLite files and "
                                      "a model card, or for sentence-transformers, ONNX "
                                      "Runtime or MediaPipe")
    p.add_argument("--model-dir", required=True,
                   help="the training run's model dir (or a `lealla import` run)")
    p.add_argument("--output", required=True, help="export folder (written atomically)")
    p.add_argument("--format", default="hub", choices=list(FORMATS),
                   help="hub: TF Hub SavedModels + TFLite files (default); "
                        "sentence-transformers: a folder SentenceTransformer(path) loads; "
                        "onnx: model.onnx (+ model-int8.onnx) and tokenizer.json for ONNX "
                        "Runtime; mediapipe: .tflite files with token-id inputs and "
                        "tokenizer metadata for MediaPipe's TextEmbedder")
    p.add_argument("--no-int8", action="store_true",
                   help="onnx, mediapipe: write the float file only")
    p.add_argument("--tflite", default="fp32,fp16,int8",
                   help="hub: comma-separated TFLite variants: fp32, fp16, int8 (dynamic "
                        "range); 'none' for none")
    p.add_argument("--int8-embeddings", action="store_true",
                   help="hub: the end-to-end model and the fp32/fp16 TFLite files hold int8 "
                        "word-embedding rows with per-row scales instead of the float table "
                        "(a 128k x 128 table: 16 MiB instead of 64); the end-to-end model "
                        "then serves only (fine-tune through encoder/)")
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
    e.add_argument("--batch-size", type=int, default=512, help="most sentences per model call")
    e.add_argument("--batch-tokens", type=int, default=None,
                   help="most padded tokens per model call (sentences are sorted by length "
                        "and cut into batches under this budget; default: the model's own, "
                        "8192, or 1024 for a .tflite file; 0: no limit)")
    e.add_argument("--threads", type=int, default=0, help="TFLite interpreter threads")
    e.set_defaults(func=_embed)


def _export(args) -> int:
    from lealla_tf import fileio
    common.check_input_dir(args.model_dir, "run directory")
    if args.checkpoint and not (fileio.exists(args.checkpoint + ".index")
                                or fileio.exists(args.checkpoint)):
        raise FileNotFoundError(f"checkpoint not found: {args.checkpoint} (no "
                                f"{fileio.basename(args.checkpoint)}.index)")
    for path in args.metrics:
        common.check_input_file(path, "metrics file")
    common.check_outputs(args.output, folder=True)
    fileio.check_target(fileio.normpath(args.output), args.overwrite)
    from lealla_tf import export
    card = {k: v for k, v in (("title", args.title), ("description", args.description)) if v}
    if args.format != "hub":
        if args.int8_embeddings or args.tflite != "fp32,fp16,int8":
            raise errors.UserError(f"--tflite and --int8-embeddings are for --format hub, "
                                    f"not {args.format}")
        with errors.user_errors(FileExistsError, ValueError):
            export.export_format(args.format, args.model_dir, args.output,
                                 checkpoint=args.checkpoint or None, overwrite=args.overwrite,
                                 int8=not args.no_int8, model_card_info=card)
        return 0
    if args.no_int8:
        raise errors.UserError("--no-int8 is for --format onnx or mediapipe (hub: --tflite)")
    with errors.user_errors(FileExistsError, ValueError):
        export.export_run(args.model_dir, args.output, checkpoint=args.checkpoint or None,
                          tflite=args.tflite, metrics=args.metrics, overwrite=args.overwrite,
                          model_card_info=card, int8_embeddings=args.int8_embeddings)
    return 0


def _publish(args) -> int:
    from lealla_tf import fileio
    common.check_input_dir(args.export, "export folder")
    common.check_outputs(args.output, folder=True)
    fileio.check_target(args.output, args.overwrite)
    from lealla_tf import export
    with errors.user_errors(FileExistsError):
        export.publish(args.export, args.output, base_url=args.base_url or None,
                       overwrite=args.overwrite)
    return 0


def _read_sentences(path: str) -> List[bytes]:
    """One sentence per line (bytes kept as they are; empty lines are sentences)."""
    if path == "-":
        data = sys.stdin.buffer.read()
    else:
        with open(path, "rb") as f:
            data = f.read()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def _clear_stale_temporaries(output: str) -> None:
    """Removes the temporaries of ``output`` that killed runs left; names those that may
    belong to a run still going."""
    from lealla_tf import fileio
    dead, unknown = fileio.stale_temporaries(output)
    for path in dead:
        fileio.remove(path)
        print(f"note: removed {path}, left by an interrupted run", file=sys.stderr)
    for path in unknown:
        print(f"note: {path} is another run writing {output} (or one that was killed on "
              "another machine: then remove it)", file=sys.stderr)


def _embedding_dim(embedder, sentences: List[bytes]) -> int:
    """The embedder's dimension (one sentence is embedded when it does not say)."""
    dim = getattr(embedder, "dim", None)
    if dim is None:
        dim = embedder.encode(sentences[:1] or [b""]).shape[1]
    return int(dim)


def _reserve(path: str) -> None:
    """Allocates the whole file now, so a full disk is an error here (ENOSPC), not a
    SIGBUS when a page of the memory map is written later."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
            raise  # a full disk; a file system that cannot reserve space is written as is
    finally:
        os.close(fd)


def _embed(args) -> int:
    # Everything the user gives is checked before a model loads or a file is created.
    common.check_positive(args, "batch_size")
    common.check_positive(args, "threads", zero_ok=True)
    common.check_positive(args, "batch_tokens", zero_ok=True)
    if args.input != "-":
        common.check_input_file(args.input)
    if args.output:
        common.check_outputs(args.output)
        _clear_stale_temporaries(args.output)
    import numpy as np

    from lealla_tf import embedders, fileio
    from lealla_tf.evaluation import runner
    with errors.user_errors(ValueError):
        embedder = embedders.load(args.model, batch_size=args.batch_size,
                                  num_threads=args.threads or None,
                                  batch_tokens=args.batch_tokens)
    sentences = _read_sentences(args.input)
    if not args.output:
        if sentences:
            vectors = runner.embed_sentences(embedder, sentences, batch_size=args.batch_size)
            np.savetxt(sys.stdout, vectors, fmt="%.7g", delimiter="\t")
        return 0
    # Written under a temporary name beside --output and renamed into place when complete:
    # an interrupted or failed run leaves an earlier output as it was.
    dim = _embedding_dim(embedder, sentences)
    with errors.writing(args.output), fileio.atomic_file(args.output) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                        shape=(len(sentences), dim))
        _reserve(tmp)
        if sentences:
            runner.embed_sentences(embedder, sentences, batch_size=args.batch_size, out=out)
        out.flush()
        del out
    print(f"{len(sentences)} embeddings ({dim}-d) written to {args.output}", file=sys.stderr)
    return 0
