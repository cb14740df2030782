"""Sentences/s of any models through ``lealla embed``'s path and as direct model calls, on the
same Tatoeba sentences and threads, under several batchings; the first model is the baseline.

    python -m benchmarks.embed_speed --models muse results/demo/export \\
        results/demo/export/lealla-int8.tflite --batching 64:0 128:0 default

A batching is ``SIZE:TOKENS`` (most sentences and most padded tokens per call; 0 tokens: no
limit) or ``default`` (each embedder's own: 512 sentences, 8,192 tokens, 1,024 for TFLite).
The muse teacher and TFLite interpreters get ``--threads`` threads (default: one per core),
like TensorFlow. Export folders with ``export_info.json`` also get GFLOP/s on the real tokens
against the fp32 matrix-product rate measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

LANGUAGES = ("ara", "cmn", "deu", "fra", "ita", "jpn", "kor", "nld", "pol", "por", "rus",
             "spa", "tha", "tur", "heb", "hin", "ben", "vie", "swe", "fin")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", required=True, help="model specs; the first is "
                   "the baseline of the ratios")
    p.add_argument("--batching", nargs="+", default=["default"])
    p.add_argument("--data-dir", default=os.environ.get("LEALLA_DATA_DIR", ""))
    p.add_argument("--per-language", type=int, default=200,
                   help="sentences of each of the 20 languages")
    p.add_argument("--threads", type=int, default=0, help="default: one per core")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default="")
    return p


def load(spec: str, threads: int):
    from lealla_tf import embedders
    from lealla_tf.embedders import teachers
    if spec == "muse":
        return teachers.load_teacher("muse", threads=threads)
    return embedders.load(spec, num_threads=threads)


def shape_of(spec: str):
    """The encoder shape of an export spec (``export:``/``tflite:`` prefixes allowed)."""
    from lealla_tf.evaluation import speed
    kind, _, rest = spec.partition(":")
    return speed.export_shape(rest if kind in ("export", "tflite") and rest else spec)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from lealla_tf import hardware, paths
    from lealla_tf.evaluation import speed, tatoeba
    threads = args.threads or hardware.cores()
    sentences = speed.sample_sentences(tatoeba.find_local_dir(paths.data_dir(args.data_dir)),
                                       LANGUAGES, args.per_language)
    print(hardware.isa_line(hardware.cpu_info()), flush=True)
    limit = speed.matmul_gflops()
    print(f"{len(sentences)} sentences, {threads} threads, fp32 matmul {limit:.0f} GFLOP/s",
          flush=True)
    rows, baseline = [], None
    for spec in args.models:
        model = load(spec, threads)
        own = (model.batch_size, model.batch_tokens) if hasattr(model, "batch_tokens") else None
        for batching in args.batching:
            if batching != "default" and own is None:
                continue
            if batching == "default":
                if own is not None:
                    model.batch_size, model.batch_tokens = own
            else:
                size, tokens = (int(x) for x in batching.split(":"))
                model.batch_size, model.batch_tokens = size, tokens
            row = speed.speed_row(model, sentences, shape_of(spec), limit, baseline,
                                  args.repeats)
            if baseline is None:
                baseline = row["embed"]
                row["vs_teacher"] = 1.0
            row.update(model=spec, batching=batching)
            rows.append(row)
            print(f"  {spec} [{batching}]: embed {row['embed']:,.0f}/s, direct "
                  f"{row['direct']:,.0f}/s", flush=True)
    lines = [f"| model | batching | sentences/s, `lealla embed` path | direct calls | "
             f"× {args.models[0]} | GFLOP/s | share of {limit:.0f} GFLOP/s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        g = f"{r['gflops']:.0f} | {100 * r['limit_share']:.0f}%" if r["gflops"] else " | "
        lines.append(f"| {r['model']} | {r['batching']} | {r['embed']:,.0f} | "
                     f"{r['direct']:,.0f} | {r['vs_teacher']:.2f}× | {g} |")
    print("\n" + "\n".join(lines))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"rows": rows, "limit_gflops": limit, "threads": threads,
                       "sentences": len(sentences)}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
