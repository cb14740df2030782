"""Large-pool retrieval: time and peak memory of exact top-1 over 10^4..10^6 candidates.

UN-style evaluation (LaBSE, Feng et al. 2022) searches pools of hundreds of thousands of
sentences. This benchmark writes random float32 candidates (dim 128, LEALLA-small's
width) to an ``.npy`` file, then runs :func:`lealla_tf.evaluation.retrieval.topk`
(k=1) with the file opened as a memory map, so the pool streams from disk in chunks.
Each pool size runs in a fresh process and reports:

- ``time_s``: wall time of the search (cosine top-1 for every query);
- ``Gsim/s``: query-candidate similarities per second (10^9);
- ``heap_peak_MiB``: peak of Python/NumPy allocations during the search (tracemalloc):
  its working memory, i.e. the chunks bounded by ``--memory-mb`` plus the normalised
  queries and the results;
- ``rss_peak_MiB``: the process's peak resident set (``ru_maxrss``), which also counts
  the page-cache pages of the memory-mapped file that were touched;
- ``dense_MiB``: what the full ``[queries, candidates]`` score matrix alone would take.

A first row checks the chunked result against the dense brute force (10^4 candidates).

Usage::

    python -m benchmarks.retrieval_scale                      # 2,000 queries, 1e4 1e5 1e6
    python -m benchmarks.retrieval_scale --queries 4000 --sizes 10000 1000000 --memory-mb 128
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np

DIM = 128


def _make_pool(path: str, n: int, dim: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    for start in range(0, n, 100_000):
        stop = min(start + 100_000, n)
        out[start:stop] = rng.standard_normal((stop - start, dim), dtype=np.float32)
    out.flush()
    del out


def _child(args) -> None:
    """Runs one search in this (fresh) process and prints a JSON line."""
    import tqdm.auto  # noqa: F401  (imported here so its import is not counted below)

    from lealla_tf.evaluation import retrieval

    rng = np.random.default_rng(1)
    queries = rng.standard_normal((args.queries, DIM), dtype=np.float32)
    tracemalloc.start()
    t0 = time.perf_counter()
    scores, idx = retrieval.topk(queries, args.pool, k=1,
                                 max_memory_bytes=args.memory_mb << 20)
    elapsed = time.perf_counter() - t0
    _, heap_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    check = ""
    if args.check:
        pool = np.load(args.pool)
        _, ref = retrieval.brute_force_topk(queries, pool, k=1)
        check = "equal" if np.array_equal(ref, idx) else "DIFFERENT"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"time_s": elapsed, "heap_peak_MiB": heap_peak / 2**20,
                      "rss_peak_MiB": rss, "check": check}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--memory-mb", type=int, default=256,
                        help="memory bound of the search (max_memory_bytes)")
    parser.add_argument("--workdir", default="", help="where the pool files go (default: tmp)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pool", default="", help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return

    from lealla_tf.evaluation import retrieval

    threads = (os.environ.get("OMP_NUM_THREADS") or os.environ.get("OPENBLAS_NUM_THREADS")
               or "default")
    print(f"exact top-1 by cosine, dim {DIM}, {args.queries} queries, memory bound "
          f"{args.memory_mb} MiB, {os.cpu_count()} CPUs, BLAS threads: {threads}")
    header = (f"{'candidates':>11} {'chunk(q,c)':>14} {'time_s':>8} {'Gsim/s':>7} "
              f"{'heap_peak_MiB':>14} {'rss_peak_MiB':>13} {'pool_MiB':>9} {'dense_MiB':>10} "
              f"{'check':>6}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(dir=args.workdir or None) as tmp:
        for n in args.sizes:
            pool = os.path.join(tmp, f"pool_{n}.npy")
            _make_pool(pool, n, DIM, seed=n)
            cmd = [sys.executable, "-m", "benchmarks.retrieval_scale", "--child", "--pool", pool,
                   "--queries", str(args.queries), "--memory-mb", str(args.memory_mb)]
            if n <= 10_000:
                cmd.append("--check")
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            qc, cc = retrieval.chunk_sizes(args.queries, DIM, 1, args.memory_mb << 20)
            gsim = args.queries * n / r["time_s"] / 1e9
            print(f"{n:>11,d} {f'{qc},{min(cc, n)}':>14} {r['time_s']:>8.2f} {gsim:>7.2f} "
                  f"{r['heap_peak_MiB']:>14.1f} {r['rss_peak_MiB']:>13.1f} "
                  f"{n * DIM * 4 / 2**20:>9.1f} {args.queries * n * 4 / 2**20:>10.1f} "
                  f"{r['check'] or '-':>6}", flush=True)
            os.remove(pool)


if __name__ == "__main__":
    main()
