"""Approximate nearest-neighbour indexes (FAISS, ScaNN) for mining and large pools:
top-1 agreement with exact search, margin-mining F1 against the exact pipeline, index
reuse, NTREX mining with the muse teacher, and the error without the extras."""

import os
import sys
import tempfile

import numpy as np
import pytest

from lealla_tf import cli
from lealla_tf.config import ConfigError, IndexConfig
from lealla_tf.evaluation import ann, bucc, mining, retrieval, un

KINDS = ("faiss", "scann")


def embed_bytes(sentences):
    """A deterministic callable model for the CLI tests (byte counts, random map)."""
    from support import hermetic
    return hermetic.byte_count_teacher(16).encode(sentences)


def _pool(n, d=64, queries=1000, seed=0):
    """Clustered unit vectors and queries that are noisy copies of pool rows."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(8, n // 100), d))
    pool = retrieval.l2_normalize(centers[rng.integers(0, len(centers), n)]
                                  + 0.6 * rng.normal(size=(n, d)))
    rows = rng.choice(n, queries, replace=False)
    q = retrieval.l2_normalize(pool[rows] + 0.25 * rng.normal(size=(queries, d)))
    return pool, q


@pytest.fixture(scope="module")
def pool20k():
    return _pool(20000)


@pytest.mark.parametrize("kind", KINDS)
def test_index_top1_equals_exact_for_99_percent_and_scores_are_exact(kind, pool20k, tmp_path):
    pool, q = pool20k
    es, ei = retrieval.topk(q, pool, 4)
    cfg = IndexConfig(kind=kind, directory=str(tmp_path))
    s, i = ann.knn(q, pool, 4, cfg)
    assert s.shape == (len(q), 4) and i.dtype == np.int64
    agree = float(np.mean(i[:, 0] == ei[:, 0]))
    assert agree >= 0.99, agree
    recall4 = np.mean([len(set(a) & set(b)) / 4 for a, b in zip(i.tolist(), ei.tolist())])
    assert recall4 >= 0.97, recall4
    same = i == ei  # every neighbour found carries its exact cosine
    np.testing.assert_allclose(s[same], es[same], atol=1e-5)
    assert (np.diff(s, axis=1) <= 0).all()


def test_faiss_index_is_built_once_streamed_from_npy_and_reused(pool20k, tmp_path):
    pool, q = pool20k
    path = str(tmp_path / "pool.npy")
    np.save(path, pool.astype(np.float16))  # a half-precision memmap streams in
    cfg = IndexConfig(kind="faiss", directory=str(tmp_path / "idx"), add_batch_rows=3000)
    first = ann.open_index(path, cfg)
    assert isinstance(first.cand, np.memmap) and first.size == len(pool)
    folders = os.listdir(tmp_path / "idx")
    assert len(folders) == 1 and not folders[0].endswith(".tmp")
    saved = os.path.join(tmp_path / "idx", folders[0], "index.faiss")
    mtime = os.stat(saved).st_mtime_ns
    s1, i1 = first.search(q, 4)
    s2, i2 = ann.knn(q, path, 4, cfg)  # loads the saved index (memory-mapped lists)
    assert os.stat(saved).st_mtime_ns == mtime and os.listdir(tmp_path / "idx") == folders
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)
    # A different matrix (one row changed) or other build settings get their own index.
    changed = pool.copy()
    changed[7] = -changed[7]
    ann.open_index(changed, cfg)
    ann.open_index(pool, IndexConfig(kind="faiss", directory=str(tmp_path / "idx"), nlist=64))
    assert len(os.listdir(tmp_path / "idx")) == 3
    # A compressed index (scalar quantised codes) still ranks by exact rescored cosines.
    sq = IndexConfig(kind="faiss", directory=str(tmp_path / "idx"), faiss_factory="IVF128,SQ8",
                     nprobe=64, overfetch=4)
    s3, i3 = ann.knn(q, path, 4, sq)
    es, ei = retrieval.topk(q, path, 4)
    assert np.mean(i3[:, 0] == ei[:, 0]) >= 0.99


def test_index_falls_back_to_exact_when_fewer_than_k_are_found(tmp_path):
    pool, q = _pool(2000, queries=50)
    # One probed list of a 40-list index holds about 50 rows: k = 200 cannot be met.
    cfg = IndexConfig(kind="faiss", directory=str(tmp_path), nlist=40, nprobe=1)
    s, i = ann.knn(q, pool, 200, cfg)
    es, ei = retrieval.topk(q, pool, 200)
    assert (i >= 0).all() and np.isfinite(s).all()
    np.testing.assert_array_equal(i[:, 0], ei[:, 0])


def _bucc_like(n_gold=300, n_extra=1700, d=48, seed=0):
    """Two sides with ``n_gold`` hidden translation pairs among unrelated sentences."""
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(60, d))

    def unrelated(n):
        return topics[rng.integers(0, 60, n)] + 0.9 * rng.normal(size=(n, d))

    meaning = unrelated(n_gold)
    x = np.concatenate([meaning + 0.7 * rng.normal(size=meaning.shape), unrelated(n_extra)])
    y = np.concatenate([meaning + 0.7 * rng.normal(size=meaning.shape), unrelated(n_extra)])
    px, py = rng.permutation(len(x)), rng.permutation(len(y))
    ix, iy = np.argsort(px), np.argsort(py)  # where original row i went
    gold = {(int(ix[i]), int(iy[i])) for i in range(n_gold)}
    return x[px].astype(np.float32), y[py].astype(np.float32), gold


def _f1(pairs, gold):
    correct = np.asarray([(s, t) in gold for s, t in zip(pairs.src.tolist(), pairs.tgt.tolist())])
    return 100 * mining.best_f1_threshold(pairs.scores, correct, len(gold)).f1


@pytest.mark.parametrize("kind", KINDS)
def test_margin_mining_on_approximate_knn_matches_exact_f1(kind, tmp_path):
    x, y, gold = _bucc_like()
    exact = mining.mine(x, y, k=4)
    cfg = IndexConfig(kind=kind, directory=str(tmp_path))  # 51 partitions, 16 searched
    approx = mining.mine(x, y, k=4, index=cfg)
    f_exact, f_approx = _f1(exact, gold), _f1(approx, gold)
    assert 80 < f_exact < 97  # a task with errors to make
    assert abs(f_exact - f_approx) <= 0.5, (f_exact, f_approx)
    # The margin (LASER ratio) of the pairs both runs extract is the same number.
    both = {(s, t): v for s, t, v in zip(exact.src.tolist(), exact.tgt.tolist(),
                                         exact.scores.tolist())}
    common = [(v, both[(s, t)]) for s, t, v in zip(approx.src.tolist(), approx.tgt.tolist(),
                                                   approx.scores.tolist()) if (s, t) in both]
    assert len(common) > 0.95 * len(exact)
    a, b = np.asarray(common).T
    # Equal up to float rounding, except where the index missed one of the k neighbours
    # that enter the margin's denominator.
    assert np.mean(np.abs(a - b) < 1e-4) > 0.97


def test_un_pool_with_index_shards_equals_exact(tmp_path):
    pool, q = _pool(6000, queries=300, seed=3)
    np.save(tmp_path / "src.npy", q)
    np.save(tmp_path / "tgt.npy", pool[:300])
    np.save(tmp_path / "extra1.npy", pool[300:3000])
    np.save(tmp_path / "extra2.npy", pool[3000:])
    files = [str(tmp_path / f) for f in ("src.npy", "tgt.npy", "extra1.npy", "extra2.npy")]
    exact = un.evaluate(None, files[0], files[1], extra=files[2:], progress=False)
    cfg = IndexConfig(kind="faiss", directory=str(tmp_path / "idx"))
    approx = un.evaluate(None, files[0], files[1], extra=files[2:], progress=False, index=cfg)
    assert approx["index"] == "faiss" and len(os.listdir(tmp_path / "idx")) == 3  # one per pool
    assert abs(exact["p_at_1"]["src2tgt"] - approx["p_at_1"]["src2tgt"]) <= 1.0


def test_index_config_validation():
    with pytest.raises(ConfigError, match="kind"):
        IndexConfig(kind="annoy").validate()
    with pytest.raises(ConfigError, match="nprobe"):
        IndexConfig(kind="faiss", nprobe=-1).validate()
    with pytest.raises(ConfigError, match="faiss_factory"):
        IndexConfig(kind="scann", faiss_factory="IVF8,Flat").validate()
    assert ann.auto_nlist(10 ** 6) == 4000 and ann.auto_nlist(100) == 2
    assert ann.auto_nprobe(4000) == 500 and ann.auto_nprobe(8) == 8
    # Small candidate matrices can be searched exactly (no index is built).
    pool, q = _pool(500, queries=20)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = IndexConfig(kind="faiss", directory=tmp, exact_below=1000)
        s, i = ann.knn(q, pool, 2, cfg)
        assert os.listdir(tmp) == []
    es, ei = retrieval.topk(q, pool, 2)
    np.testing.assert_array_equal(i, ei)


@pytest.mark.parametrize("kind,package", [("faiss", "faiss"), ("scann", "scann")])
def test_missing_extra_names_it_and_exact_still_works(kind, package, tmp_path, monkeypatch,
                                                      capsys):
    # Only the optional module is made unimportable: the error path, not the feature.
    monkeypatch.setitem(sys.modules, package, None)
    if kind == "scann":
        for name in [m for m in sys.modules if m.startswith("scann.")]:
            monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=rf"lealla_tf\[{kind}\]"):
        ann.knn(np.eye(3), np.eye(3), 1, IndexConfig(kind=kind))
    src = tmp_path / "a.txt"
    tgt = tmp_path / "b.txt"
    src.write_text("one\ntwo\nthree\n")
    tgt.write_text("eins\nzwei\ndrei\n")
    argv = ["mine", "--model", "py:test_ann:embed_bytes", "--source", str(src),
            "--target", str(tgt), "--output", str(tmp_path / "out.tsv"), "--no-cache"]
    assert cli.main(argv + ["--index", kind]) == 2
    err = capsys.readouterr().err
    assert f"lealla_tf[{kind}]" in err and "--index exact" in err
    assert not (tmp_path / "out.tsv").exists()
    assert cli.main(argv) == 0 and len((tmp_path / "out.tsv").read_text().splitlines()) == 3


def test_cli_mine_and_eval_un_with_faiss_index(tmp_path, capsys):
    src = tmp_path / "a.txt"
    tgt = tmp_path / "b.txt"
    src.write_text("".join(f"sentence {i} " + "x" * i + "\n" for i in range(40)))
    tgt.write_text("".join(f"Satz {i} " + "x" * i + "\n" for i in range(40)))
    common = ["--model", "py:test_ann:embed_bytes", "--no-cache",
              "--index-dir", str(tmp_path / "idx")]
    out = {}
    for kind in ("exact", "faiss"):
        out[kind] = tmp_path / f"{kind}.tsv"
        assert cli.main(["mine", "--source", str(src), "--target", str(tgt),
                         "--output", str(out[kind]), "--index", kind, "--nlist", "2",
                         "--nprobe", "2"] + common) == 0
    assert out["exact"].read_text().splitlines() and len(os.listdir(tmp_path / "idx")) == 2
    rows = {k: [line.split("\t")[1:3] for line in v.read_text().splitlines()]
            for k, v in out.items()}
    assert rows["faiss"] == rows["exact"]  # two partitions, both searched: the same pairs
    assert cli.main(["eval", "un", "--source", str(src), "--target", str(tgt), "--index",
                     "faiss", "--output", str(tmp_path / "un.json")] + common) == 0
    assert '"index": "faiss"' in (tmp_path / "un.json").read_text()


def test_ntrex_mining_with_the_muse_teacher_faiss_within_half_point(data_dir, tmp_path):
    from lealla_tf import embedders
    teacher = embedders.load("muse", threads=2)
    files = bucc.build_ntrex(data_dir, "deu", str(tmp_path / "ntrex"), n_pairs=400)
    kw = dict(progress=False, cache=str(tmp_path / "cache"))
    exact = bucc.evaluate_files(teacher, files["src"], files["tgt"], files["gold"], **kw)
    approx = bucc.evaluate_files(teacher, files["src"], files["tgt"], files["gold"],
                                 index=IndexConfig(kind="faiss", directory=str(tmp_path / "i")),
                                 **kw)
    assert exact["f1"] > 50 and approx["index"] == "faiss"
    assert abs(exact["f1"] - approx["f1"]) <= 0.5, (exact["f1"], approx["f1"])
