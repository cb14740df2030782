"""Margin scoring and mining against a NumPy port of LASER's loops; the F1 threshold search."""

import itertools

import numpy as np
import pytest

from lealla_tf.evaluation import mining


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _pairs(nx=60, ny=75, dim=12, seed=0, noise=0.6):
    """x and y share 40 translation pairs (noisy copies); the rest is unrelated."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(40, dim))
    x = np.concatenate([base + noise * rng.normal(size=base.shape),
                        rng.normal(size=(nx - 40, dim))])
    y = np.concatenate([base + noise * rng.normal(size=base.shape),
                        rng.normal(size=(ny - 40, dim))])
    return x.astype(np.float32), y.astype(np.float32)


def laser_reference(x, y, k, margin, retrieval):
    """Dense NumPy port of LASER ``mine_bitexts.py`` (knn, score_candidates, mine)."""
    x, y = _unit(x.astype(np.float64)), _unit(y.astype(np.float64))
    sim = x @ y.T
    kx, ky = min(k, y.shape[0]), min(k, x.shape[0])
    x2y_ind = np.argsort(-sim, axis=1, kind="stable")[:, :kx]
    y2x_ind = np.argsort(-sim.T, axis=1, kind="stable")[:, :ky]
    x2y_mean = np.take_along_axis(sim, x2y_ind, 1).mean(1)
    y2x_mean = np.take_along_axis(sim.T, y2x_ind, 1).mean(1)
    f = {"ratio": lambda a, b: a / b, "distance": lambda a, b: a - b,
         "absolute": lambda a, b: a}[margin]

    def score_candidates(a, b, inds, fwd_mean, bwd_mean):
        scores = np.zeros(inds.shape)
        for i in range(scores.shape[0]):
            for j in range(scores.shape[1]):
                kk = inds[i, j]
                scores[i, j] = f(a[i].dot(b[kk]), (fwd_mean[i] + bwd_mean[kk]) / 2)
        return scores

    fwd = score_candidates(x, y, x2y_ind, x2y_mean, y2x_mean)
    bwd = score_candidates(y, x, y2x_ind, y2x_mean, x2y_mean)
    fwd_best = x2y_ind[np.arange(x.shape[0]), fwd.argmax(1)]
    bwd_best = y2x_ind[np.arange(y.shape[0]), bwd.argmax(1)]
    out = []
    if retrieval == "fwd":
        out = [(i, j, fwd[i].max()) for i, j in enumerate(fwd_best)]
    elif retrieval == "bwd":
        out = [(i, j, bwd[j].max()) for j, i in enumerate(bwd_best)]
    elif retrieval == "intersect":
        out = [(i, j, fwd[i].max()) for i, j in enumerate(fwd_best) if bwd_best[j] == i]
    else:
        idx = np.stack((np.concatenate((np.arange(x.shape[0]), bwd_best)),
                        np.concatenate((fwd_best, np.arange(y.shape[0])))), axis=1)
        scores = np.concatenate((fwd.max(1), bwd.max(1)))
        seen_s, seen_t = set(), set()
        for i in np.argsort(-scores, kind="stable"):
            s, t = idx[i]
            if s not in seen_s and t not in seen_t:
                seen_s.add(s)
                seen_t.add(t)
                out.append((s, t, scores[i]))
    return (fwd, bwd, x2y_ind, y2x_ind), sorted((int(a), int(b), float(c)) for a, b, c in out)


@pytest.mark.parametrize("margin", ["ratio", "distance", "absolute"])
def test_margin_scores_equal_numpy_reference(margin):
    x, y = _pairs()
    (fwd_ref, bwd_ref, xi, yi), _ = laser_reference(x, y, 4, margin, "max")
    nb = mining.neighbourhoods(x, y, k=4, max_memory_bytes=4_000)  # several chunks
    np.testing.assert_array_equal(nb.x2y_ind, xi)
    np.testing.assert_array_equal(nb.y2x_ind, yi)
    fwd, bwd = mining.candidate_scores(nb, margin)
    np.testing.assert_allclose(fwd, fwd_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bwd, bwd_ref, rtol=1e-5, atol=1e-6)


def test_ratio_margin_formula_by_hand():
    """score = cos(x,y) / (sum_k cos(x,NN_k(x))/2k + sum_k cos(y,NN_k(y))/2k)."""
    x, y = _pairs(nx=45, ny=50)
    k = 3
    xu, yu = _unit(x.astype(np.float64)), _unit(y.astype(np.float64))
    sim = xu @ yu.T
    nnx = -np.sort(-sim, axis=1)[:, :k]
    nny = -np.sort(-sim.T, axis=1)[:, :k]
    i, j = 5, 7
    expected = sim[i, j] / (nnx[i].sum() / (2 * k) + nny[j].sum() / (2 * k))
    nb = mining.neighbourhoods(x, y, k=k)
    got = mining.score_pairs(x, y, np.array([i]), np.array([j]), nb, "ratio")
    assert got[0] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("retrieval", ["max", "fwd", "bwd", "intersect"])
def test_mining_equals_laser_reference(retrieval):
    x, y = _pairs(seed=3)
    _, ref = laser_reference(x, y, 4, "ratio", retrieval)
    got = mining.mine(x, y, k=4, retrieval_mode=retrieval, max_memory_bytes=4_000)
    got = sorted(zip(got.src.tolist(), got.tgt.tolist(), got.scores.tolist()))
    assert [(a, b) for a, b, _ in got] == [(a, b) for a, b, _ in ref]
    np.testing.assert_allclose([c for *_, c in got], [c for *_, c in ref], rtol=1e-5)


def test_mining_recovers_hidden_pairs_and_threshold_filters():
    x, y = _pairs(noise=0.2)
    pairs = mining.mine(x, y, k=4)
    assert np.all(np.diff(pairs.scores) <= 0)  # best first
    top = {(a, b) for a, b in zip(pairs.src[:40].tolist(), pairs.tgt[:40].tolist())}
    assert len(top & {(i, i) for i in range(40)}) >= 38
    th = float(pairs.scores[20])
    kept = mining.mine(x, y, k=4, threshold=th)
    assert np.all(kept.scores > th) and len(kept) == int((pairs.scores > th).sum())


def test_threshold_search_constructed_case():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    correct = np.array([1, 1, 0, 1, 0, 0], bool)
    r = mining.best_f1_threshold(scores, correct, n_gold=4)
    assert r.f1 == pytest.approx(0.75) and r.precision == pytest.approx(0.75)
    assert r.recall == pytest.approx(0.75)
    assert r.threshold == pytest.approx(0.55)
    assert (r.extracted, r.correct, r.gold) == (4, 3, 4)


def test_threshold_search_skips_cuts_inside_ties():
    # Cutting after the second item would give F1 = 1, but 0.8 is shared with wrong pairs.
    scores = np.array([0.9, 0.8, 0.8, 0.8, 0.1])
    correct = np.array([1, 1, 0, 0, 0], bool)
    r = mining.best_f1_threshold(scores, correct, n_gold=2)
    assert r.f1 == pytest.approx(2 / 3)
    assert r.threshold == pytest.approx(0.85)
    extracted = scores >= r.threshold
    assert extracted.sum() == r.extracted == 1


def test_threshold_search_is_optimal_against_brute_force():
    rng = np.random.default_rng(7)
    for trial in range(20):
        n = int(rng.integers(5, 60))
        scores = np.round(rng.random(n), 1 if trial % 2 else 6)  # with and without ties
        correct = rng.random(n) < 0.4
        n_gold = int(correct.sum()) + int(rng.integers(0, 5))
        if n_gold == 0:
            continue
        r = mining.best_f1_threshold(scores, correct, n_gold)
        best = 0.0
        for t in itertools.chain(np.unique(scores), [np.inf]):
            sel = scores >= t
            best = max(best, mining.prf(int(correct[sel].sum()), int(sel.sum()), n_gold).f1)
        assert r.f1 == pytest.approx(best)
        sel = scores >= r.threshold
        got = mining.prf(int(correct[sel].sum()), int(sel.sum()), n_gold)
        assert got.f1 == pytest.approx(r.f1)


def test_threshold_search_no_correct_and_bad_input():
    r = mining.best_f1_threshold(np.array([0.3, 0.2]), np.array([False, False]), 3)
    assert r.f1 == 0 and r.threshold > 0.3
    with pytest.raises(ValueError):
        mining.best_f1_threshold(np.array([0.3]), np.array([True, False]), 1)
    with pytest.raises(ValueError):
        mining.best_f1_threshold(np.array([0.3]), np.array([True]), 0)


def test_evaluate_pairs():
    r = mining.evaluate_pairs([(1, 1), (2, 3), (3, 3)], {(1, 1), (3, 3), (4, 4), (5, 5)})
    assert (r.precision, r.recall) == pytest.approx((2 / 3, 0.5))
    assert r.f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))


def test_mine_files(tmp_path):
    words = [f"w{i}" for i in range(30)]
    rng = np.random.default_rng(0)
    vecs = {w: rng.normal(size=16) for w in words}

    def enc(sents):  # "src w3" and "tgt w3" are translations
        return np.stack([vecs[s.split()[1]] for s in sents]).astype(np.float32)

    src = tmp_path / "a.txt"
    tgt = tmp_path / "b.txt"
    src.write_text("\n".join(f"src {w}" for w in words[:20]) + "\n\nsrc w0\n")
    tgt.write_text("\n".join(f"tgt {w}" for w in reversed(words[10:30])) + "\n")
    out = tmp_path / "mined.tsv"
    from lealla_tf.evaluation import runner
    n = mining.mine_files(runner.CallableEmbedder(enc, "words"), str(src), str(tgt), str(out),
                          progress=False, cache=str(tmp_path / "cache"))
    rows = [l.split("\t") for l in out.read_text().splitlines()]
    assert n == len(rows)
    found = {(r[3], r[4]) for r in rows[:10]}
    assert found == {(f"src w{i}", f"tgt w{i}") for i in range(10, 20)}
    first = [r for r in rows if r[3] == "src w15"][0]
    assert first[1] == "16" and first[2] == str(30 - 15)  # 1-based line numbers
