"""Chunked exact top-k equals brute force, on arrays and .npy memmaps, within its bound."""

import numpy as np
import pytest

from lealla_tf.evaluation import retrieval, un


def _data(nq=137, nc=1031, dim=24, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(nq, dim)).astype(np.float32),
            rng.normal(size=(nc, dim)).astype(np.float32))


@pytest.mark.parametrize("k", [1, 3, 10])
@pytest.mark.parametrize("memory", [20_000, 200_000, 64 << 20])
def test_chunked_topk_equals_brute_force(k, memory):
    q, c = _data()
    s, i = retrieval.topk(q, c, k=k, max_memory_bytes=memory)
    bs, bi = retrieval.brute_force_topk(q, c, k=k)
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_allclose(s, bs, atol=1e-5)
    assert s.dtype == np.float32 and i.dtype == np.int64 and s.shape == (q.shape[0], k)


def test_chunks_really_are_smaller_than_the_pool():
    q, c = _data()
    qc, cc = retrieval.chunk_sizes(q.shape[0], q.shape[1], 3, 20_000)
    assert cc < c.shape[0] and qc < q.shape[0]
    assert 4 * (cc * q.shape[1] + 3 * qc * cc) <= 20_000


def test_topk_streams_from_npy_memmap(tmp_path):
    q, c = _data(nq=50, nc=777)
    path = tmp_path / "pool.npy"
    np.save(path, c)
    s, i = retrieval.topk(q, str(path), k=5, max_memory_bytes=30_000)
    bs, bi = retrieval.brute_force_topk(q, c, k=5)
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_allclose(s, bs, atol=1e-5)
    # The memmap was not modified by the in-place normalisation of chunks.
    np.testing.assert_array_equal(np.load(path), c)


def test_inner_product_without_normalisation():
    q, c = _data(nq=20, nc=300)
    c[7] *= 100  # a long vector wins by inner product, not by cosine
    s, i = retrieval.topk(q, c, k=2, normalize=False, max_memory_bytes=10_000)
    bs, bi = retrieval.brute_force_topk(q, c, k=2, normalize=False)
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_allclose(s, bs, rtol=1e-5, atol=1e-4)


def test_top1_ties_go_to_the_lowest_index_across_chunks():
    rng = np.random.default_rng(1)
    c = rng.normal(size=(500, 8)).astype(np.float32)
    c[400] = c[3]  # exact duplicate in a later chunk
    q = c[[3, 10]] + 0.0
    _, i = retrieval.topk(q, c, k=1, max_memory_bytes=5_000)
    assert i[:, 0].tolist() == [3, 10]


def test_precision_at_1_and_errors():
    q, c = _data(nq=40, nc=40)
    assert retrieval.precision_at_1(c, c) == 1.0
    perm = np.arange(40)
    perm[[0, 1]] = [1, 0]
    assert retrieval.precision_at_1(c[perm], c) == pytest.approx(38 / 40)
    with pytest.raises(ValueError, match="k must be"):
        retrieval.topk(q, c, k=41)
    with pytest.raises(ValueError, match="dimension"):
        retrieval.topk(q[:, :5], c)
    with pytest.raises(FileNotFoundError):
        retrieval.topk(q, "/nonexistent/pool.npy")


def test_topk_over_several_pools_equals_concatenated(tmp_path):
    q, c = _data(nq=30, nc=900)
    parts = [c[:100], c[100:650], c[650:]]
    for n, part in enumerate(parts):
        np.save(tmp_path / f"p{n}.npy", part)
    pools = [np.load(tmp_path / f"p{n}.npy", mmap_mode="r") for n in range(3)]
    s, i = un.topk_pools(q, pools, k=4, max_memory_bytes=20_000)
    bs, bi = retrieval.brute_force_topk(q, c, k=4)
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_allclose(s, bs, atol=1e-5)
