"""Sentences/s of several models in interleaved rounds (A, B, C, A, B, C, ...), so that a
busy moment of a shared machine falls on all of them alike: for A/B comparisons of two
exports of the same weights (the same code before and after a change).

    python -m benchmarks.speed_ab --models OLD_EXPORT NEW_EXPORT OLD.tflite NEW.tflite

Each model gets the same 4,000 Tatoeba sentences (all 112 languages), its own default
batching (``embedders.batch_order`` with its batch size and token budget, made once) and
direct ``encode_batch`` calls, after one warm-up pass; the table gives the best and the
median round and each model's ratio to the first.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", required=True, help="embedder specs; the first is "
                   "the baseline of the ratios")
    p.add_argument("--data-dir", default=os.environ.get("LEALLA_DATA_DIR", ""))
    p.add_argument("--sentences", type=int, default=4000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="default: one per core")
    return p


def main(argv=None) -> int:
    import numpy as np

    from benchmarks.embed_speed import load
    from benchmarks.inference_speed import tatoeba_sentences
    from lealla_tf import embedders, hardware, paths
    args = _parser().parse_args(argv)
    threads = args.threads or hardware.cores()
    data = [s.encode("utf-8") for s in tatoeba_sentences(paths.data_dir(args.data_dir),
                                                          args.sentences)]
    print(hardware.isa_line(hardware.cpu_info()), flush=True)
    plans = {}
    for spec in args.models:
        model = load(spec, threads)
        order = embedders.batch_order(embedders.sort_keys(model, data), model.batch_size,
                                      getattr(model, "batch_tokens", None))
        plans[spec] = (model, [[data[i] for i in b] for b in order])
        for batch in plans[spec][1]:
            model.encode_batch(batch)
    rates = {spec: [] for spec in args.models}
    for _ in range(args.rounds):
        for spec, (model, batches) in plans.items():
            start = time.perf_counter()
            for batch in batches:
                model.encode_batch(batch)
            rates[spec].append(len(data) / (time.perf_counter() - start))
    base = max(rates[args.models[0]])
    print(f"\n{len(data)} sentences, {threads} threads, {args.rounds} interleaved rounds\n")
    print(f"| model | best sentences/s | median | best / {args.models[0]}'s best |")
    print("|---|---:|---:|---:|")
    for spec in args.models:
        print(f"| {spec} | {max(rates[spec]):,.0f} | {np.median(rates[spec]):,.0f} | "
              f"{max(rates[spec]) / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
