"""Mining at scale: an approximate index (FAISS, ScaNN) against exact search, 10^5..10^7 candidates.

Real sentences are hidden in large pools of synthetic ones, and the approximate k-NN
(:mod:`lealla_tf.evaluation.ann`) is compared with the exact chunked search
(:func:`lealla_tf.evaluation.retrieval.topk`) on them:

- queries: the German side of NTREX-128 (1,997 news sentences); their English
  translations are hidden at random rows of the pool, with ``--tatoeba`` English
  Tatoeba sentences as real distractors;
- synthetic candidates: unit vectors drawn from a Gaussian fitted to the real
  embeddings (their mean and covariance), so they occupy the same region as real
  sentences instead of being trivially far away;
- embeddings: ``--model`` (default ``muse``; an export folder or run dir of a student
  works too), projected to ``--dim`` (default 128, LEALLA-small's width) with the top
  principal axes of the real embeddings when the model is wider; the pool is stored as
  float16 ``.npy`` and streamed as a memory map.

Per pool size and index (each in a fresh process, for honest peak memory):

- ``build_s``: index training + streaming the pool in + saving (0 for exact);
- ``search_s``: top-4 for all queries; ``ms/q``: per query;
- ``rss_MiB``: peak resident set of the process (``ru_maxrss``, includes touched
  page-cache pages of the memory map); ``index_MiB``: the saved index on disk;
- ``R@1``: share of queries whose top-1 equals the exact top-1; ``R@4``: overlap of
  the top-4 sets with exact; ``P@1``: share whose top-1 is the gold translation;
- ``mine_F1``: LASER margin mining (ratio margin, k=4, max retrieval) of the queries
  against the whole pool, F1 at the best threshold against the hidden gold pairs
  (queries -> pool through the index; pool -> queries exactly, the query side being
  small); pools above ``--mine-max`` skip it (the reverse direction holds the pool's
  float32 rows in memory).

Finally, the NTREX-built BUCC-style benchmark (:func:`lealla_tf.evaluation.bucc.evaluate_ntrex`,
400 hidden pairs per language) is mined with the exact pipeline and with each index, at
the model's full width, and the F1 difference is printed.

Usage::

    python -m benchmarks.mining_scale                                # 1e5 1e6 1e7, faiss + scann
    python -m benchmarks.mining_scale --sizes 100000 1000000 --indexes faiss
    python -m benchmarks.mining_scale --model results/demo/run --dim 0   # a student, own width
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

K = 4


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _prepare(args, workdir: str) -> dict:
    from lealla_tf import embedders, paths
    from lealla_tf.evaluation import bucc, retrieval, runner
    root = paths.data_dir(args.data_dir or None)
    folder = bucc.ntrex_dir(root)
    deu = [s.strip() for s in runner.read_lines(os.path.join(folder, "newstest2019-ref.deu.txt"))]
    eng = [s.strip() for s in runner.read_lines(os.path.join(folder, bucc.NTREX_ENGLISH))]
    extra, seen = [], set(eng)
    for path in sorted(glob.glob(os.path.join(root, "tatoeba", "v1", "tatoeba.*-eng.eng"))):
        for line in runner.read_lines(path):
            line = line.strip()
            if line and line not in seen and len(extra) < args.tatoeba:
                seen.add(line)
                extra.append(line)
    model = embedders.load(args.model)
    t0 = time.perf_counter()
    emb = {name: retrieval.l2_normalize(runner.embed_texts(
        model, sents, 64, cache=args.cache_dir or None, progress=False, desc=name))
        for name, sents in (("queries", deu), ("gold", eng), ("extra", extra))}
    _log(f"embedded {len(deu) + len(eng) + len(extra)} sentences with {model.name} "
         f"in {time.perf_counter() - t0:.0f} s")
    real = np.concatenate([emb["queries"], emb["gold"], emb["extra"]])
    dim = real.shape[1]
    proj = None
    if args.dim and args.dim < dim:  # top principal axes (uncentred: keeps the mean direction)
        _, _, vt = np.linalg.svd(real.astype(np.float64), full_matrices=False)
        proj = vt[:args.dim].T.astype(np.float32)
        emb = {k: retrieval.l2_normalize(v @ proj) for k, v in emb.items()}
        real = np.concatenate([emb["queries"], emb["gold"], emb["extra"]])
        dim = args.dim
    mean = real.mean(axis=0)
    chol = np.linalg.cholesky(np.cov(real, rowvar=False) + 1e-6 * np.eye(dim))
    np.save(os.path.join(workdir, "queries.npy"), emb["queries"].astype(np.float32))
    return {"emb": emb, "mean": mean, "chol": chol, "dim": dim, "model": model.name}


def _make_pool(path: str, n: int, data: dict, seed: int) -> np.ndarray:
    """Writes the float16 pool; returns the row of each query's gold translation."""
    from lealla_tf.evaluation import retrieval
    rng = np.random.default_rng(seed)
    gold, extra = data["emb"]["gold"], data["emb"]["extra"]
    n_real = len(gold) + len(extra)
    if n < n_real:
        raise ValueError(f"pool of {n} is smaller than its {n_real} real sentences")
    rows = rng.choice(n, size=n_real, replace=False)
    real_at = np.full(n, -1, dtype=np.int64)
    real_at[rows] = np.arange(n_real)
    real = np.concatenate([gold, extra]).astype(np.float16)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, data["dim"]))
    step = 200_000
    for c0 in range(0, n, step):
        c1 = min(c0 + step, n)
        z = rng.standard_normal((c1 - c0, data["dim"]), dtype=np.float32)
        block = retrieval.l2_normalize(data["mean"] + z @ data["chol"].T).astype(np.float16)
        here = real_at[c0:c1]
        block[here >= 0] = real[here[here >= 0]]
        out[c0:c1] = block
    out.flush()
    del out
    return rows[:len(gold)]


def _child(args) -> None:
    """One method on one pool, in this fresh process; prints one JSON line."""
    from lealla_tf.config import IndexConfig
    from lealla_tf.evaluation import ann, mining
    queries = np.load(args.queries_file)
    gold = np.load(args.gold_file)
    res = {"build_s": 0.0, "index_MiB": 0.0}
    cfg = None
    if args.child != "exact":
        cfg = IndexConfig(kind=args.child, directory=args.index_dir,
                          exact_below=100_000).validate()
        t0 = time.perf_counter()
        index = ann.open_index(args.pool, cfg)
        res["build_s"] = time.perf_counter() - t0
        res["index_MiB"] = sum(os.path.getsize(os.path.join(index.path, f))
                               for f in os.listdir(index.path)) / 2**20
        res["nlist"], res["nprobe"] = index.meta["nlist"], ann.auto_nprobe(index.meta["nlist"])
    t0 = time.perf_counter()
    _, idx = ann.knn(queries, args.pool, K, cfg)
    res["search_s"] = time.perf_counter() - t0
    np.save(args.out_ids, idx)
    res["p_at_1"] = float(np.mean(idx[:, 0] == gold))
    if args.mine:
        t0 = time.perf_counter()
        pairs = mining.mine(queries, args.pool, k=K, index=cfg)
        res["mine_s"] = time.perf_counter() - t0
        gold_set = set(zip(range(len(gold)), gold.tolist()))
        correct = np.asarray([(s, t) in gold_set for s, t in zip(pairs.src.tolist(),
                                                                 pairs.tgt.tolist())])
        res["mine_f1"] = 100 * mining.best_f1_threshold(pairs.scores, correct, len(gold)).f1
    res["rss_MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(res))


def _ntrex_f1(args, indexes) -> None:
    from lealla_tf import embedders, paths
    from lealla_tf.config import IndexConfig
    from lealla_tf.evaluation import bucc
    root = paths.data_dir(args.data_dir or None)
    model = embedders.load(args.model)
    langs = args.ntrex_languages.split(",")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ["exact"] + list(indexes):
            index = None if kind == "exact" else IndexConfig(
                kind=kind, directory=os.path.join(tmp, "indexes"))
            t0 = time.perf_counter()
            res = bucc.evaluate_ntrex(model, root, langs, os.path.join(tmp, "work"),
                                      cache=args.cache_dir or None, progress=False,
                                      index=index)
            rows[kind] = (res, time.perf_counter() - t0)
    print(f"\nNTREX BUCC-style mining F1 (%), {model.name}, 400 hidden pairs per language, "
          "ratio margin k=4, best threshold")
    print(f"{'index':>7} " + " ".join(f"{l:>9}" for l in langs) + f" {'average':>8} "
          f"{'diff':>6} {'time_s':>7}")
    base = rows["exact"][0]["average"]["f1"]
    for kind, (res, secs) in rows.items():
        f1s = [res["per_language"][l]["f1"] for l in langs]
        print(f"{kind:>7} " + " ".join(f"{f:>9.2f}" for f in f1s)
              + f" {res['average']['f1']:>8.2f} {res['average']['f1'] - base:>+6.2f} "
              f"{secs:>7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10**5, 10**6, 10**7])
    parser.add_argument("--indexes", nargs="+", default=["faiss", "scann"],
                        choices=("faiss", "scann"))
    parser.add_argument("--model", default="muse")
    parser.add_argument("--dim", type=int, default=128,
                        help="project wider embeddings to this width (0: keep)")
    parser.add_argument("--tatoeba", type=int, default=3000,
                        help="real English distractors from Tatoeba")
    parser.add_argument("--mine-max", type=int, default=2_000_000,
                        help="largest pool that is also mined (margin F1)")
    parser.add_argument("--ntrex-languages", default="deu,fra,rus,zho_Hans")
    parser.add_argument("--no-ntrex", action="store_true", help="skip the NTREX F1 table")
    parser.add_argument("--data-dir", default="", help="data root (default $LEALLA_DATA_DIR)")
    parser.add_argument("--cache-dir", default="", help="embedding cache")
    parser.add_argument("--workdir", default="", help="pools and indexes (default: tmp)")
    parser.add_argument("--json", default="", help="also write the results here")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    for hidden in ("--pool", "--queries-file", "--gold-file", "--index-dir", "--out-ids"):
        parser.add_argument(hidden, default="", help=argparse.SUPPRESS)
    parser.add_argument("--mine", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return

    results = []
    with tempfile.TemporaryDirectory(dir=args.workdir or None) as tmp:
        data = _prepare(args, tmp)
        nq = len(data["emb"]["queries"])
        print(f"{nq} NTREX German queries, gold English hidden among {args.tatoeba} Tatoeba "
              f"sentences and synthetic unit vectors; {data['model']} projected to "
              f"{data['dim']}-d, pool float16 memmap; k={K}; {os.cpu_count()} CPUs")
        header = (f"{'candidates':>11} {'index':>6} {'build_s':>8} {'search_s':>9} "
                  f"{'ms/q':>7} {'rss_MiB':>8} {'index_MiB':>9} {'R@1':>6} {'R@4':>6} "
                  f"{'P@1':>6} {'mine_F1':>8} {'mine_s':>7}")
        print(header)
        print("-" * len(header), flush=True)
        for n in args.sizes:
            pool = os.path.join(tmp, f"pool_{n}.npy")
            t0 = time.perf_counter()
            gold = _make_pool(pool, n, data, seed=n)
            _log(f"pool of {n:,d} written in {time.perf_counter() - t0:.0f} s")
            np.save(os.path.join(tmp, "gold.npy"), gold)
            exact_ids = None
            for method in ["exact"] + list(args.indexes):
                ids = os.path.join(tmp, f"ids_{method}.npy")
                cmd = [sys.executable, "-m", "benchmarks.mining_scale", "--child", method,
                       "--pool", pool, "--queries-file", os.path.join(tmp, "queries.npy"),
                       "--gold-file", os.path.join(tmp, "gold.npy"), "--out-ids", ids,
                       "--index-dir", os.path.join(tmp, "indexes")]
                if n <= args.mine_max:
                    cmd.append("--mine")
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    _log(proc.stderr[-3000:])
                    raise SystemExit(f"{method} on {n} failed")
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                got = np.load(ids)
                if method == "exact":
                    exact_ids = got
                r1 = float(np.mean(got[:, 0] == exact_ids[:, 0]))
                r4 = float(np.mean([len(set(a) & set(b)) / K for a, b in
                                    zip(got.tolist(), exact_ids.tolist())]))
                r.update(candidates=n, index=method, recall_at_1=r1, recall_at_4=r4)
                results.append(r)
                mine = (f"{r['mine_f1']:>8.2f} {r['mine_s']:>7.1f}" if "mine_f1" in r
                        else f"{'-':>8} {'-':>7}")
                print(f"{n:>11,d} {method:>6} {r['build_s']:>8.1f} {r['search_s']:>9.2f} "
                      f"{1000 * r['search_s'] / nq:>7.2f} {r['rss_MiB']:>8.0f} "
                      f"{r['index_MiB']:>9.1f} {r1:>6.3f} {r4:>6.3f} {r['p_at_1']:>6.3f} "
                      f"{mine}", flush=True)
            os.remove(pool)
            shutil.rmtree(os.path.join(tmp, "indexes"), ignore_errors=True)
    if not args.no_ntrex:
        _ntrex_f1(args, args.indexes)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
