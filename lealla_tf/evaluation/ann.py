"""Approximate nearest-neighbour indexes for large candidate pools (FAISS, ScaNN).

:func:`knn` is the one entry point (``index.kind``: ``exact``, ``faiss``, ``scann``); an index
is built once, saved under a digest of the matrix and the settings, and reused; the
neighbours it returns are rescored exactly::

    from lealla_tf.config import IndexConfig
    from lealla_tf.evaluation import ann
    scores, idx = ann.knn(queries, "pool.npy", k=4, index=IndexConfig(kind="faiss"))

See docs/evaluation.md, "Approximate search".
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from typing import Optional, Tuple

import numpy as np

from lealla_tf import config as config_lib
from lealla_tf import fileio, paths
from lealla_tf.evaluation import retrieval

EXTRAS = {"faiss": ("faiss", "faiss-cpu"), "scann": ("scann", "scann")}
FORMAT_VERSION = 1


def require(kind: str):
    """The module behind ``kind`` (``faiss`` or ``scann``).

    Raises:
      ImportError: naming the extra to install when the package is missing.
    """
    if kind not in EXTRAS:
        raise ValueError(f"no library behind index kind {kind!r}")
    module, package = EXTRAS[kind]
    try:
        if kind == "scann":
            from scann.scann_ops.py import scann_ops_pybind
            return scann_ops_pybind
        import faiss
        return faiss
    except ImportError as e:
        raise ImportError(
            f"--index {kind} needs the optional package {package!r}, which is not "
            f"installed: pip install 'lealla_tf[{kind}]' (or use --index exact)") from e


def auto_nlist(n: int) -> int:
    """Partitions for ``n`` candidates: ``4 sqrt(n)``, at most ``n / 39`` (FAISS wants
    39 training points per centroid), at least 1."""
    return int(max(1, min(round(4 * math.sqrt(n)), n // 39)))


def auto_nprobe(nlist: int) -> int:
    """Partitions searched per query: 1/8 of them, at least 16 (all when fewer).

    Cross-lingual queries sit in another region than their translations (a language
    offset), so they need more partitions than monolingual ones: on NTREX German
    queries against English pools (benchmarks/mining_scale.py) 1/16 gives 98.9% of the
    exact top-1, 1/8 99.7%."""
    return int(min(nlist, max(16, nlist // 8)))


def fingerprint(cand: np.ndarray, chunk_rows: int = 65536) -> str:
    """blake2b digest of a matrix's shape, dtype and rows (read in chunks: memmaps stream)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{cand.shape}|{np.dtype(cand.dtype).str}".encode())
    for c0 in range(0, cand.shape[0], chunk_rows):
        h.update(np.ascontiguousarray(cand[c0:c0 + chunk_rows]).tobytes())
    return h.hexdigest()


def _build_settings(cfg, n: int) -> dict:
    nlist = cfg.nlist or auto_nlist(n)
    settings = {"kind": cfg.kind, "nlist": int(min(nlist, n)), "seed": cfg.seed,
                "train_size": int(min(n, cfg.train_size or 50 * nlist))}
    if cfg.kind == "faiss":
        settings["factory"] = cfg.faiss_factory or f"IVF{settings['nlist']},Flat"
    return settings


def index_dir(cfg) -> str:
    return cfg.directory or fileio.join(paths.cache_root(), "indexes")


def _normalized(block: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(retrieval.l2_normalize(np.asarray(block, dtype=np.float32)))


def _train_sample(cand: np.ndarray, size: int, seed: int) -> np.ndarray:
    n = cand.shape[0]
    if size >= n:
        rows = np.arange(n)
    else:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    return _normalized(cand[rows])


class Index:
    """A built (or loaded) approximate index over one candidate matrix."""

    def __init__(self, kind: str, path: str, meta: dict, cand: np.ndarray, native):
        self.kind, self.path, self.meta, self.cand, self.native = kind, path, meta, cand, native

    @property
    def size(self) -> int:
        return int(self.meta["rows"])

    def _raw_search(self, q: np.ndarray, k: int, nprobe: int) -> np.ndarray:
        if self.kind == "faiss":
            faiss = require("faiss")
            try:
                faiss.extract_index_ivf(self.native).nprobe = nprobe
            except RuntimeError:  # not an IVF index (e.g. HNSW, Flat)
                if hasattr(self.native, "hnsw"):
                    self.native.hnsw.efSearch = max(nprobe, k)
            _, ids = self.native.search(q, k)
            return ids.astype(np.int64)
        ids, _ = self.native.search_batched(q, final_num_neighbors=k, leaves_to_search=nprobe,
                                            pre_reorder_num_neighbors=max(100, k))
        ids = np.asarray(ids, dtype=np.int64)
        if ids.shape[1] < k:  # fewer points than k in the searched leaves
            ids = np.pad(ids, ((0, 0), (0, k - ids.shape[1])), constant_values=-1)
        return ids

    def search(self, queries, k: int, nprobe: int = 0, overfetch: int = 2,
               query_chunk: int = 4096, max_memory_bytes: int = retrieval.DEFAULT_MEMORY_BYTES
               ) -> Tuple[np.ndarray, np.ndarray]:
        """Approximate top-``k`` by cosine, rescored exactly; like :func:`retrieval.topk`.

        Returns:
          ``(scores float32 [Q, k], indices int64 [Q, k])``, best first (ties by index).
        """
        q_all = retrieval.open_array(queries)
        if q_all.shape[1] != self.cand.shape[1]:
            raise ValueError(f"queries have dimension {q_all.shape[1]}, index "
                             f"{self.cand.shape[1]}")
        n = self.size
        if not 1 <= k <= n:
            raise ValueError(f"k must be in [1, {n}] (number of candidates), got {k}")
        nprobe = nprobe or auto_nprobe(self.meta["nlist"])
        kf = min(n, k * max(1, overfetch))
        out_s = np.empty((q_all.shape[0], k), dtype=np.float32)
        out_i = np.empty((q_all.shape[0], k), dtype=np.int64)
        for q0 in range(0, q_all.shape[0], query_chunk):
            q = _normalized(q_all[q0:q0 + query_chunk])
            ids = self._raw_search(q, kf, nprobe)
            valid = ids >= 0
            safe = np.where(valid, ids, 0)
            flat = np.unique(safe)  # sorted: sequential reads of the memmap
            rows = _normalized(self.cand[flat])
            pos = np.searchsorted(flat, safe)
            s = np.einsum("qd,qkd->qk", q, rows[pos])
            s = np.where(valid, s, -np.inf).astype(np.float32)
            ids = np.where(valid, ids, np.iinfo(np.int64).max)
            order = np.lexsort((ids, -s), axis=1)[:, :k]
            s = np.take_along_axis(s, order, axis=1)
            ids = np.take_along_axis(ids, order, axis=1)
            short = ~np.isfinite(s).all(axis=1)
            if short.any():  # fewer than k found: search those queries exactly
                es, ei = retrieval.topk(q[short], self.cand, k, max_memory_bytes=max_memory_bytes)
                s[short], ids[short] = es, ei
            out_s[q0:q0 + len(q)], out_i[q0:q0 + len(q)] = s, ids
        return out_s, out_i


def _build_faiss(cand: np.ndarray, settings: dict, cfg, folder: str, progress: bool) -> None:
    faiss = require("faiss")
    from tqdm.auto import tqdm
    n, dim = cand.shape
    index = faiss.index_factory(dim, settings["factory"], faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(_train_sample(cand, settings["train_size"], settings["seed"]))
    for c0 in tqdm(range(0, n, cfg.add_batch_rows), desc="index add", disable=not progress,
                   leave=False):
        index.add(_normalized(cand[c0:c0 + cfg.add_batch_rows]))
    faiss.write_index(index, os.path.join(folder, "index.faiss"))


def _build_scann(cand: np.ndarray, settings: dict, cfg, folder: str, progress: bool) -> None:
    scann = require("scann")
    n, dim = cand.shape
    db = np.empty((n, dim), dtype=np.float32)  # ScaNN builds from one in-memory matrix
    for c0 in range(0, n, cfg.add_batch_rows):
        db[c0:c0 + cfg.add_batch_rows] = _normalized(cand[c0:c0 + cfg.add_batch_rows])
    nlist = settings["nlist"]
    builder = scann.builder(db, 10, "dot_product")
    if nlist > 1:
        builder = builder.tree(num_leaves=nlist, num_leaves_to_search=auto_nprobe(nlist),
                               training_sample_size=settings["train_size"],
                               min_partition_size=1)
    searcher = (builder.score_ah(2, anisotropic_quantization_threshold=0.2)
                .reorder(100).build())
    searcher.serialize(folder, relative_path=True)  # the folder is renamed into place


def _load_native(kind: str, folder: str):
    if kind == "faiss":
        faiss = require("faiss")
        path = os.path.join(folder, "index.faiss")
        try:  # IVF lists stay on disk, paged in as probed
            return faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError:
            return faiss.read_index(path)
    return require("scann").load_searcher(folder)


def open_index(candidates, cfg, progress: bool = False) -> Index:
    """The index of ``candidates`` under ``cfg``: loaded when saved before, else built,
    saved (atomically: a temporary folder renamed into place) and returned.

    Args:
      candidates: ``[N, D]`` array, memmap or ``.npy`` path (opened as a memmap).
      cfg: :class:`lealla_tf.config.IndexConfig` with kind ``faiss`` or ``scann``.
      progress: show a progress bar while adding rows.
    """
    cfg.validate()
    if cfg.kind == "exact":
        raise ValueError("the exact search has no index (use retrieval.topk)")
    require(cfg.kind)  # fail before the fingerprint pass when the extra is missing
    cand = retrieval.open_array(candidates)
    n = cand.shape[0]
    if n == 0:
        raise ValueError("no candidates to index")
    settings = _build_settings(cfg, n)
    digest = fingerprint(cand)
    key = hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(),
                          digest_size=6).hexdigest()
    root = index_dir(cfg)
    if not fileio.is_local(root):
        raise ValueError(f"index directory {root} must be on a local file system "
                         "(FAISS and ScaNN read and write real files)")
    folder = os.path.join(root, f"{cfg.kind}-{digest}-{key}")
    meta_path = os.path.join(folder, "meta.json")
    if not os.path.isfile(meta_path):
        os.makedirs(root, exist_ok=True)
        tmp = f"{folder}.tmp-{uuid.uuid4().hex[:8]}"
        os.makedirs(tmp)
        try:
            (_build_faiss if cfg.kind == "faiss" else _build_scann)(cand, settings, cfg, tmp,
                                                                    progress)
            meta = dict(settings, rows=int(n), dim=int(cand.shape[1]), digest=digest,
                        format=FORMAT_VERSION)
            with open(os.path.join(tmp, "meta.json"), "w") as f:
                json.dump(meta, f, indent=1)
            try:
                os.rename(tmp, folder)
            except OSError:  # another process saved the same index first
                if not os.path.isfile(meta_path):
                    raise
        finally:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("rows") != n or meta.get("digest") != digest:
        raise ValueError(f"{folder} does not index this matrix (rows {meta.get('rows')} "
                         f"vs {n}); remove the folder")
    return Index(cfg.kind, folder, meta, cand, _load_native(cfg.kind, folder))


def knn(queries, candidates, k: int, index=None,
        max_memory_bytes: int = retrieval.DEFAULT_MEMORY_BYTES, progress: bool = False,
        desc: str = "search") -> Tuple[np.ndarray, np.ndarray]:
    """Top-``k`` candidates per query by cosine, exact or through an index.

    Args:
      queries: ``[Q, D]`` array or ``.npy`` path.
      candidates: ``[N, D]`` array, memmap or ``.npy`` path.
      k: neighbours per query.
      index: :class:`lealla_tf.config.IndexConfig`; None, kind ``exact`` or fewer
        candidates than ``index.exact_below`` search exactly.
      max_memory_bytes, progress, desc: as :func:`retrieval.topk`.

    Returns:
      ``(scores float32 [Q, k], indices int64 [Q, k])``, best first.
    """
    if (index is None or index.kind == "exact"
            or retrieval.open_array(candidates).shape[0] < index.exact_below):
        return retrieval.topk(queries, candidates, k, max_memory_bytes=max_memory_bytes,
                              progress=progress, desc=desc)
    idx = open_index(candidates, index, progress=progress)
    return idx.search(queries, k, nprobe=index.nprobe, overfetch=index.overfetch,
                      max_memory_bytes=max_memory_bytes)


def index_config(kind: str = "exact", **kwargs) -> Optional[object]:
    """An :class:`IndexConfig` (validated) from keyword settings."""
    return config_lib.IndexConfig(kind=kind, **kwargs).validate()
