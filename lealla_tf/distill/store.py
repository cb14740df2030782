"""The teacher-embedding store: a teacher's embeddings of TSV corpora, precomputed once in shards.

Rows are stored by physical line (a malformed line gets a zero row marked invalid), in
resumable, deduplicated shards, optionally compact (PCA ``dim``, ``int8`` rows);
:func:`load_precomputed` returns any layout decoded::

    from lealla_tf.distill import store
    from lealla_tf.embedders import teachers
    store.precompute(teachers.load_teacher("muse"), ["train/deu-eng.tsv"], "teacher/muse")
    src, tgt, valid = store.load_precomputed("teacher/muse", "train/deu-eng.tsv")
    assert not store.verify("teacher/muse")   # [] when every shard matches its corpus

See docs/data.md, "Teacher embeddings" and "Compact shards".
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import io
import json
import os
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from lealla_tf import config as config_lib
from lealla_tf import corpus, fileio
from lealla_tf.embedders.teachers import Teacher

# ====================================================================== precomputing
MANIFEST = "manifest.json"
FORMAT_VERSION = 1  # float16 rows of the teacher's own dimension (the original layout)
COMPACT_FORMAT_VERSION = 2  # another dtype and/or a PCA projection (projection.npz)
DTYPE = "float16"
DTYPES = ("float32", "float16", "int8")
DEFAULT_SHARD_SIZE = 5000
PROJECTION = "projection.npz"
DEFAULT_PCA_SAMPLE = 20000
# What the rows of a file's shards are (manifest entry and shard meta ``sides``): both sides
# embedded, or, for a language the teacher does not cover (``languages=``), the English
# side's row stored as the row of both sides (the reader needs no change).
BOTH_SIDES = "both"
ENGLISH_SIDE = "english"


_sha256_file = corpus.sha256_file


def _iter_shards(path: str, shard_size: int) -> Iterator[Tuple[int, int, List[bytes]]]:
    """Yields ``(start_line, byte_start, raw_lines)`` for consecutive blocks of lines."""
    with open(path, "rb") as f:
        start, offset, block = 0, 0, []
        for raw in f:
            block.append(raw)
            if len(block) == shard_size:
                yield start, offset, block
                start += len(block)
                offset += sum(map(len, block))
                block = []
        if block:
            yield start, offset, block


def _encode_rows(rows: np.ndarray, dtype: str) -> Dict[str, np.ndarray]:
    """float32 rows -> the arrays stored for them (int8: per-row scale ``max|x| / 127``)."""
    if dtype == "int8":
        scale = np.abs(rows).max(axis=1) / 127.0 if rows.size else np.zeros(len(rows))
        scale = scale.astype(np.float32)
        q = np.rint(rows / np.maximum(scale, 1e-30)[:, None])
        return {"": np.clip(q, -127, 127).astype(np.int8), "_scale": scale}
    return {"": rows.astype(dtype)}


def decode_rows(z, side: str) -> np.ndarray:
    """Stored rows of one side of a shard -> float32 (int8 rows times their scale)."""
    rows = z[side]
    if rows.dtype == np.int8:
        return rows.astype(np.float32) * z[side + "_scale"][:, None]
    return rows.astype(np.float32)


def _fit_projection(teacher: Teacher, files: Sequence[str], dim: int, sample: int,
                    batch_size: int,
                    languages: Sequence[str] = (config_lib.ALL_LANGUAGES,)) -> dict:
    """PCA of the teacher's embeddings of ~``sample`` sentences spread over ``files``.

    Not centred (the truncated SVD of the sample): projecting onto the top ``dim`` right
    singular vectors keeps the dot products, hence the cosines that distillation uses, as
    well as ``dim`` dimensions can. Files of languages not in ``languages`` give their
    English sides only (what their shards hold). Returns the arrays of ``projection.npz``.
    """
    lines = [corpus.count_lines(p) for p in files]
    stride = max(1, (2 * sum(lines)) // max(1, sample))
    sentences: Dict[str, None] = {}
    k = 0
    for path in files:
        both = file_sides(languages, path) == BOTH_SIDES
        for _, s, t in corpus.iter_tsv(path):
            if k % stride == 0:
                if both:
                    sentences.setdefault(s)
                sentences.setdefault(t)
            k += 1
    picked = list(sentences)[:sample]
    if len(picked) < dim:
        raise ValueError(f"--dim {dim}: the PCA needs at least {dim} distinct sentences, the "
                         f"corpora give {len(picked)}; lower --dim or raise --pca-sample")
    x = np.concatenate([teacher.encode(picked[i:i + batch_size])
                        for i in range(0, len(picked), batch_size)]).astype(np.float64)
    _, sv, vt = np.linalg.svd(x, full_matrices=False)
    energy = float((sv[:dim] ** 2).sum() / max((sv ** 2).sum(), 1e-30))
    return {"components": vt[:dim].astype(np.float32),
            "singular_values": sv.astype(np.float32),
            "sample_size": np.array(len(picked)), "energy": np.array(energy),
            "teacher": np.array(teacher.name)}


def load_projection(embeddings_dir: str, manifest: Optional[dict] = None) -> Optional[dict]:
    """The PCA projection of a compact directory (None when its rows are not reduced).

    Returns a dict with ``components`` float32 ``[dim, teacher_dim]`` (stored rows are
    ``teacher_rows @ components.T``; ``rows @ components`` maps them back), ``energy`` (the
    share of the sample's squared norm kept) and ``sample_size``.

    Raises:
      ValueError: ``projection.npz`` is missing or is not the one the shards were made with.
    """
    manifest = manifest if manifest is not None else _read_manifest(embeddings_dir)
    if manifest is None:
        raise FileNotFoundError(f"no {MANIFEST} in {embeddings_dir}")
    expected = manifest.get("projection")
    if not expected:
        return None
    path = fileio.join(embeddings_dir, PROJECTION)
    if not fileio.exists(path):
        raise ValueError(f"{embeddings_dir}: the shards are PCA-reduced but {PROJECTION} is "
                         "missing; recompute them (lealla teacher embed --overwrite)")
    data = fileio.read_bytes(path)
    sha = hashlib.sha256(data).hexdigest()
    if sha != expected:
        raise ValueError(
            f"{path} does not match the shards of {embeddings_dir} (sha256 {sha[:12]}.., the "
            f"manifest records {expected[:12]}..): the shards were reduced with another "
            "projection; restore the right file or recompute (lealla teacher embed --overwrite)")
    with np.load(io.BytesIO(data)) as z:
        out = {k: z[k] for k in z.files}
    want = (manifest["dim"], manifest.get("teacher_dim", manifest["dim"]))
    if out["components"].shape != want:
        raise ValueError(f"{path} maps {out['components'].shape[1]} -> "
                         f"{out['components'].shape[0]} dimensions, the manifest "
                         f"{want[1]} -> {want[0]}")
    out["energy"] = float(out["energy"])
    out["sample_size"] = int(out["sample_size"])
    return out


def teacher_dim(embeddings_dir: str) -> int:
    """The teacher's own dimension (before any PCA) of an embeddings directory (0: none)."""
    manifest = _read_manifest(embeddings_dir)
    if manifest is None:
        return 0
    return int(manifest.get("teacher_dim", manifest.get("dim", 0)))


def reconstruct(embeddings_dir: str, rows: np.ndarray) -> np.ndarray:
    """Maps stored (possibly PCA-reduced) rows back to the teacher's space (float32)."""
    projection = load_projection(embeddings_dir)
    rows = np.asarray(rows, np.float32)
    return rows if projection is None else rows @ projection["components"]


def _shard_name(start: int, end: int) -> str:
    return f"{start:09d}-{end:09d}.npz"


def _scan(path: str, shard_size: int) -> dict:
    """Size, sha256, line count, malformed-line stats and shard records of a TSV file."""
    file_hash, stats, shards, n_lines = hashlib.sha256(), corpus.Stats(), [], 0
    for start, offset, lines in _iter_shards(path, shard_size):
        h, n_valid = hashlib.sha256(), 0
        for raw in lines:
            h.update(raw)
            file_hash.update(raw)
            pair, reason = corpus.parse_tsv_line(raw)
            stats[reason] += 1
            n_valid += pair is not None
        end = start + len(lines)
        shards.append({"file": _shard_name(start, end), "start": start, "end": end,
                       "byte_start": offset, "byte_end": offset + sum(map(len, lines)),
                       "lines_sha256": h.hexdigest(), "num_valid": n_valid})
        n_lines = end
    if n_lines != corpus.count_lines(path):  # both count physical lines the same way
        raise AssertionError(f"line count mismatch while scanning {path}")
    return {"path": path, "size": os.path.getsize(path), "sha256": file_hash.hexdigest(),
            "num_lines": n_lines, "stats": dict(stats), "shards": shards}


def _read_manifest(output_dir: str) -> Optional[dict]:
    path = fileio.join(output_dir, MANIFEST)
    if not fileio.exists(path):
        return None
    return json.loads(fileio.read_text(path))


def _write_atomic(path: str, write: Callable) -> None:
    buffer = io.BytesIO()
    write(buffer)
    fileio.atomic_write(path, buffer.getvalue())


def _load_npz(path: str):
    """``np.load`` of a shard on any file system."""
    return np.load(io.BytesIO(fileio.read_bytes(path)))


def write_manifest(output_dir: str, manifest: dict) -> None:
    """Writes ``manifest`` as ``output_dir/manifest.json`` (atomically)."""
    data = json.dumps(manifest, indent=1, sort_keys=True).encode()
    _write_atomic(fileio.join(output_dir, MANIFEST), lambda f: f.write(data))


def _shard_meta(npz_path: str) -> Optional[dict]:
    try:
        if not fileio.exists(npz_path):
            return None
        with _load_npz(npz_path) as z:
            return json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError):
        return None


def _digest(sentence: str) -> bytes:
    return hashlib.blake2b(sentence.encode("utf-8"), digest_size=16).digest()


class _ShardCache:
    """Reads rows of already written shards (a few shards kept in memory)."""

    def __init__(self, capacity: int = 8):
        self._cache: "collections.OrderedDict[str, tuple]" = collections.OrderedDict()
        self._capacity = capacity

    def rows(self, path: str):
        if path in self._cache:
            self._cache.move_to_end(path)
        else:
            with _load_npz(path) as z:
                self._cache[path] = (decode_rows(z, "src"), decode_rows(z, "tgt"))
            if len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return self._cache[path]


def precompute(teacher: Teacher, inputs: Sequence[str], output_dir: str,
               shard_size: int = DEFAULT_SHARD_SIZE, batch_size: int = 64,
               overwrite: bool = False, progress: bool = True, dim: int = 0,
               dtype: str = DTYPE, pca_sample: int = DEFAULT_PCA_SAMPLE,
               languages: Sequence[str] = (config_lib.ALL_LANGUAGES,)) -> dict:
    """Embeds both sides of every line of TSV corpora with ``teacher`` into shards.

    Resumes where a previous (killed) run stopped. Each distinct sentence is encoded once.

    Compact shards: ``dim`` below the teacher's reduces every row with a PCA fitted once on
    the teacher's embeddings of ``pca_sample`` sentences spread over the inputs (saved as
    ``projection.npz``, its sha256 in the manifest and in every shard); ``dtype`` stores
    ``float32``, ``float16`` (default) or ``int8`` rows (per-row scale ``max|x| / 127``,
    kept as float32 beside them). Training reads any of them the same way.

    Args:
      teacher: a teacher (see :func:`lealla_tf.embedders.teachers.load_teacher`).
      inputs: TSV files (``foreign<TAB>English`` per line).
      output_dir: where the manifest and shards go (created if needed).
      shard_size: physical lines per shard (fixed for the life of ``output_dir``).
      batch_size: sentences per ``teacher.encode`` call.
      overwrite: recompute the given inputs from scratch instead of resuming; also the way
        to replace embeddings of a changed TSV or from another teacher.
      progress: show a tqdm bar over sentences.
      dim: stored dimension (0 or the teacher's: no PCA).
      dtype: one of :data:`DTYPES`.
      pca_sample: sentences the PCA is fitted on (when ``dim`` reduces).
      languages: the languages the teacher covers (``teacher.languages``; default all).
        For a file of another language only the English sides are embedded, and each
        line's English row is stored as its source row too (``sides: english`` in the
        manifest entry and the shard meta): the target of both sides in training.

    Returns:
      The manifest (also written to ``output_dir/manifest.json``).

    Raises:
      ValueError: if ``output_dir`` holds embeddings of another teacher/dim/shard size, or
        of a TSV whose content changed since (without ``overwrite``), or another process
        is writing to it.
      FileNotFoundError: for a missing input.
    """
    check_args(shard_size, batch_size, dim, dtype, pca_sample)
    languages = config_lib.check_teacher_languages(list(languages), "languages")
    files = input_files(inputs)
    fileio.makedirs(output_dir)
    with exclusive(output_dir, force=overwrite):
        return _precompute(teacher, files, output_dir, shard_size, batch_size, overwrite,
                           progress, dim, dtype, pca_sample, languages)


@contextlib.contextmanager
def exclusive(output_dir: str, force: bool = False):
    """Makes this process the only writer of ``output_dir`` (:func:`fileio.writer_lock`: an
    OS lock on local disks; a checked single-writer marker on ``gs://`` and other stores)."""
    try:
        with fileio.writer_lock(fileio.join(output_dir, ".lock"), force=force):
            yield
    except fileio.LockedError as e:
        raise ValueError(f"{output_dir} is being written by another process ({e})") from None


def _header(manifest: dict) -> dict:
    """The keys that fix what a directory holds (older manifests: no PCA, teacher's dim)."""
    return {"format_version": manifest.get("format_version"), "teacher": manifest.get("teacher"),
            "dim": manifest.get("dim"), "dtype": manifest.get("dtype"),
            "shard_size": manifest.get("shard_size"),
            "teacher_dim": manifest.get("teacher_dim", manifest.get("dim")),
            "projection": manifest.get("projection")}


def input_files(inputs: Sequence[str]) -> List[str]:
    """The input TSVs as absolute paths, each once, in order.

    Raises:
      ValueError: for no inputs. FileNotFoundError: for a missing one.
    """
    files = list(dict.fromkeys(os.path.abspath(p) for p in inputs))
    if not files:
        raise ValueError("no input TSV files given")
    for path in files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"corpus file not found: {path}")
    return files


def check_args(shard_size: int, batch_size: int, dim: int = 0, dtype: str = DTYPE,
               pca_sample: int = DEFAULT_PCA_SAMPLE) -> None:
    """The argument checks of :func:`precompute` (also run by the Beam pipeline's driver)."""
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be >= 1, got {shard_size}, "
                         f"{batch_size}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dim < 0 or pca_sample < 1:
        raise ValueError(f"dim must be >= 0 and pca_sample >= 1, got {dim}, {pca_sample}")


def plan(teacher: Teacher, files: Sequence[str], output_dir: str, shard_size: int,
         overwrite: bool, dim: int = 0, dtype: str = DTYPE,
         pca_sample: int = DEFAULT_PCA_SAMPLE,
         batch_size: int = 64, languages: Sequence[str] = (config_lib.ALL_LANGUAGES,)
         ) -> Tuple[dict, list, Optional[dict]]:
    """Checks and updates the manifest, and finds the finished shards of every input.

    For compact shards that reduce the teacher's dimension (``0 < dim < teacher.dim``) it
    also provides the PCA projection: the one of ``output_dir`` when resuming the same
    layout, else one fitted on ``pca_sample`` sentences of ``files`` and written to
    ``projection.npz`` (its sha256 goes in the manifest).

    The caller holds the writer lock. Returns ``(manifest, plans, projection)``; each plan
    is ``(file_index, path, shard_dir, shard records, done flags)``; ``projection`` is the
    dict of :func:`load_projection` (None when rows are not reduced). Shared by the local
    job and the Beam pipeline (:mod:`lealla_tf.distill.store_beam`). A shard of a file
    whose language is not in ``languages`` is done only when it holds English rows (see
    :func:`precompute`), and the other way round.
    """
    _remove_partial_writes(output_dir)  # leftovers of a killed manifest write
    teacher_dim = int(teacher.dim)
    if dim > teacher_dim:
        raise ValueError(f"--dim {dim} exceeds the teacher's dimension {teacher_dim}")
    reduce = 0 < dim < teacher_dim
    stored_dim = dim if reduce else teacher_dim
    manifest = _read_manifest(output_dir)
    header = {"format_version": (FORMAT_VERSION if dtype == DTYPE and not reduce
                                 else COMPACT_FORMAT_VERSION),
              "teacher": teacher.name, "dim": stored_dim, "dtype": dtype,
              "shard_size": int(shard_size), "teacher_dim": teacher_dim, "projection": None}
    projection, projection_bytes = None, None
    if reduce:
        projection, projection_bytes, header["projection"] = _plan_projection(
            teacher, files, output_dir, manifest, header, overwrite, dim, pca_sample,
            batch_size, languages)
    manifest = _manifest_for(output_dir, manifest, header, overwrite)
    if projection_bytes is not None:  # only now: the old one is no longer referenced
        fileio.atomic_write(fileio.join(output_dir, PROJECTION), projection_bytes)
    write_manifest(output_dir, manifest)

    # Hash and count every input; decide which shards are already done.
    plans = [_plan_file(teacher.name, output_dir, manifest, header["projection"], file_index,
                        path, shard_size, overwrite, dtype, file_sides(languages, path))
             for file_index, path in enumerate(files)]
    write_manifest(output_dir, manifest)
    return manifest, plans, projection


def _remove_partial_writes(folder: str) -> None:
    """Deletes the temporary files of writes a killed run left in ``folder``."""
    for name in fileio.listdir(folder):
        if ".tmp-" in name:
            fileio.remove(fileio.join(folder, name))


def _plan_projection(teacher: Teacher, files: Sequence[str], output_dir: str,
                     manifest: Optional[dict], header: dict, overwrite: bool, dim: int,
                     pca_sample: int, batch_size: int,
                     languages: Sequence[str] = (config_lib.ALL_LANGUAGES,)
                     ) -> Tuple[Optional[dict], Optional[bytes], str]:
    """The PCA of a layout that reduces rows: ``(projection, projection.npz to write,
    its sha256 for the header)``. Resuming the same layout keeps the directory's (nothing
    to write); another layout without ``overwrite`` gets none (:func:`_manifest_for`
    refuses it); else one is fitted."""
    old = _header(manifest) if manifest is not None and manifest.get("files") else None
    same = old is not None and ({k: v for k, v in old.items() if k != "projection"}
                                == {k: v for k, v in header.items() if k != "projection"})
    if same and old["projection"] and not overwrite:
        return load_projection(output_dir, manifest), None, old["projection"]  # the same PCA
    if old is not None and not same and not overwrite:
        return None, None, "a new PCA"  # another layout: refused by _manifest_for
    projection = _fit_projection(teacher, files, dim, pca_sample, batch_size, languages)
    buffer = io.BytesIO()
    np.savez(buffer, **projection)
    data = buffer.getvalue()
    return projection, data, hashlib.sha256(data).hexdigest()


def _manifest_for(output_dir: str, manifest: Optional[dict], header: dict,
                  overwrite: bool) -> dict:
    """The manifest to go on with: ``manifest`` when it holds the layout of ``header`` (or
    nothing), else a new one after deleting its shards (``overwrite``) or a refusal."""
    if manifest is not None and manifest.get("files"):
        old = _header(manifest)
        if old != header:
            if not overwrite:
                diff = ", ".join(f"{k}: {old[k]!r} here, {header[k]!r} now"
                                 for k in header if old[k] != header[k])
                raise ValueError(
                    f"{output_dir} holds other teacher embeddings ({diff}); use another "
                    "output directory, or --overwrite / overwrite=True to replace them")
            for entry in manifest["files"].values():
                fileio.rmtree(fileio.join(output_dir, entry["dir"]))
            manifest = None
    if manifest is None or not manifest.get("files"):
        manifest = dict(header, files={})
    return manifest


def file_sides(languages: Sequence[str], path: str) -> str:
    """:data:`BOTH_SIDES` for a file whose language the teacher covers (``languages``),
    else :data:`ENGLISH_SIDE`."""
    return BOTH_SIDES if config_lib.teacher_covers(languages, path) else ENGLISH_SIDE


def _plan_file(teacher_name: str, output_dir: str, manifest: dict, projection: Optional[str],
               file_index: int, path: str, shard_size: int, overwrite: bool,
               dtype: str, sides: str = BOTH_SIDES) -> tuple:
    """Scans one input, checks it against its manifest entry (which it replaces) and finds
    its finished shards: the plan of :func:`plan`."""
    scan = _scan(path, shard_size)
    entry = manifest["files"].get(path)
    if entry is not None and (entry["size"], entry["sha256"]) != (scan["size"],
                                                                  scan["sha256"]):
        if not overwrite:
            raise ValueError(
                f"{path} changed since its teacher embeddings were computed in "
                f"{output_dir} (size {entry['size']} -> {scan['size']}, sha256 "
                f"{entry['sha256'][:12]}.. -> {scan['sha256'][:12]}..); rerun with "
                "--overwrite to recompute it, or use another output directory")
    if entry is not None and overwrite:
        fileio.rmtree(fileio.join(output_dir, entry["dir"]))
        entry = None
    folder = (entry["dir"] if entry is not None else
              f"{os.path.basename(path)}-{hashlib.sha256(path.encode()).hexdigest()[:8]}")
    shard_dir = fileio.join(output_dir, folder)
    fileio.makedirs(shard_dir)
    _remove_partial_writes(shard_dir)
    done = shards_done(shard_dir, scan["shards"], teacher_name, projection, dtype, sides)
    entry = {k: scan[k] for k in ("path", "size", "sha256", "num_lines", "stats")}
    entry.update(dir=folder, num_shards=len(scan["shards"]),
                 shards=[r for r, d in zip(scan["shards"], done) if d],
                 complete=all(done))
    if sides != BOTH_SIDES:  # (entries of both sides keep their original keys)
        entry["sides"] = sides
    manifest["files"][path] = entry
    return (file_index, path, shard_dir, scan["shards"], done)


def shards_done(shard_dir: str, records: Sequence[dict], teacher_name: str,
                projection: Optional[str] = None, dtype: str = DTYPE,
                sides: str = BOTH_SIDES) -> List[bool]:
    """Whether each shard of ``records`` is written, by ``teacher_name``, for those lines,
    with the projection of sha256 ``projection`` (None: not reduced), ``dtype`` rows and
    the rows of ``sides`` (:data:`BOTH_SIDES` or :data:`ENGLISH_SIDE`)."""
    done = []
    for rec in records:
        meta = _shard_meta(fileio.join(shard_dir, rec["file"]))
        done.append(meta is not None and meta.get("teacher") == teacher_name and all(
            meta.get(k) == rec[k] for k in ("start", "end", "lines_sha256"))
            and meta.get("projection") == projection
            and meta.get("dtype", DTYPE) == dtype
            and meta.get("sides", BOTH_SIDES) == sides)
    return done


def encode_shard(teacher: Teacher, lines: Sequence[bytes], batch_size: int,
                 copy_rows: Optional[Callable[[List[bytes]], Dict[bytes, np.ndarray]]] = None,
                 bar=None, components: Optional[np.ndarray] = None,
                 sides: str = BOTH_SIDES) -> Tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The rows of one shard: both sides of every physical line, encoded by ``teacher``.

    Malformed lines get zero rows and ``valid=False``. Each distinct sentence of the shard
    is encoded once, in batches of ``batch_size`` in order of first appearance.

    Args:
      teacher: the teacher.
      lines: raw physical lines (bytes, newline included).
      batch_size: sentences per ``teacher.encode`` call.
      copy_rows: optional ``digests -> {digest: stored row}`` of sentences stored before
        (the local job copies repeats from earlier shards; the Beam workers pass None).
        The rows are already projected.
      bar: optional tqdm bar counting sentences.
      components: optional PCA components ``[D, teacher dim]`` (see
        :func:`load_projection`); encoded rows become ``rows @ components.T``.
      sides: :data:`ENGLISH_SIDE`: only the English sides are encoded, each line's row
        stored as both its rows.

    Returns:
      ``(src float32 [n, D], tgt float32 [n, D], valid bool [n], sentences encoded)``;
      :func:`write_shard` stores the rows in the directory's dtype.
    """
    n = len(lines)
    dim = int(teacher.dim) if components is None else int(components.shape[0])
    src = np.zeros((n, dim), np.float32)
    tgt = np.zeros((n, dim), np.float32)
    valid = np.zeros((n,), bool)
    new: Dict[bytes, Tuple[str, list]] = {}  # digest -> (sentence, [(row, side)])
    for i, raw in enumerate(lines):
        pair, _ = corpus.parse_tsv_line(raw)
        if pair is None:
            continue
        valid[i] = True
        if sides == ENGLISH_SIDE:
            new.setdefault(_digest(pair[1]), (pair[1], []))[1].extend([(i, 1), (i, 0)])
            continue
        for side, sentence in enumerate(pair):
            new.setdefault(_digest(sentence), (sentence, []))[1].append((i, side))
    out = (src, tgt)
    if copy_rows is not None and new:
        for key, vec in copy_rows(list(new)).items():
            for i, side in new.pop(key)[1]:
                out[side][i] = vec
    if bar is not None:
        bar.update(2 * int(valid.sum()) - sum(len(v[1]) for v in new.values()))
    items = list(new.values())
    for b in range(0, len(items), batch_size):
        batch = items[b:b + batch_size]
        emb = teacher.encode([s for s, _ in batch]).astype(np.float32)
        if components is not None:  # in float64: rows independent of the batch's shape
            emb = (emb.astype(np.float64) @ components.T.astype(np.float64)).astype(np.float32)
        for vec, (_, refs) in zip(emb, batch):
            for i, side in refs:
                out[side][i] = vec
        if bar is not None:
            bar.update(sum(len(r) for _, r in batch))
    return src, tgt, valid, len(items)


def write_shard(shard_dir: str, rec: dict, teacher_name: str, dim: int, tsv_sha256: str,
                src: np.ndarray, tgt: np.ndarray, valid: np.ndarray, dtype: str = DTYPE,
                projection: Optional[str] = None, sides: str = BOTH_SIDES) -> None:
    """Writes one shard (atomically: a temporary file renamed into place): the rows in
    ``dtype`` (int8: with their scales) and the meta naming the projection's sha256 (and
    ``sides: english`` for a shard of English rows only)."""
    meta = dict(rec, teacher=teacher_name, dim=int(dim), dtype=dtype, tsv_sha256=tsv_sha256,
                projection=projection)
    if sides != BOTH_SIDES:
        meta["sides"] = sides
    arrays = {"valid": valid, "meta": np.array(json.dumps(meta))}
    for side, rows in (("src", src), ("tgt", tgt)):
        arrays.update({side + k: v for k, v in _encode_rows(rows, dtype).items()})
    _write_atomic(fileio.join(shard_dir, rec["file"]), lambda f: np.savez(f, **arrays))


def read_shard_lines(path: str, rec: dict) -> List[bytes]:
    """The raw lines of shard ``rec`` of ``path`` (by byte range), checked against the
    shard's sha256.

    Raises:
      ValueError: the file changed since it was scanned.
    """
    with open(path, "rb") as f:
        f.seek(rec["byte_start"])
        data = f.read(rec["byte_end"] - rec["byte_start"])
    if hashlib.sha256(data).hexdigest() != rec["lines_sha256"]:
        raise ValueError(f"{path} changed while its teacher embeddings were computed "
                         f"(lines {rec['start']}-{rec['end']})")
    lines = data.splitlines(keepends=True)
    if len(lines) != rec["end"] - rec["start"]:
        raise ValueError(f"{path}: lines {rec['start']}-{rec['end']} do not split into "
                         f"{rec['end'] - rec['start']} physical lines")
    return lines


def _precompute(teacher, files, output_dir, shard_size, batch_size, overwrite, progress,
                dim=0, dtype=DTYPE, pca_sample=DEFAULT_PCA_SAMPLE,
                languages=(config_lib.ALL_LANGUAGES,)):
    manifest, plans, projection = plan(teacher, files, output_dir, shard_size, overwrite,
                                       dim=dim, dtype=dtype, pca_sample=pca_sample,
                                       batch_size=batch_size, languages=languages)
    components = projection["components"] if projection is not None else None
    stored_dim = int(manifest["dim"])
    sides = [file_sides(languages, path) for path in files]
    # Pass 2: index the sentences of finished shards, so repeats are copied, not encoded.
    repeats = _Repeats(plans, shard_size, sides)

    # Pass 3: encode the missing shards.
    todo = sum(2 * r["num_valid"] for *_, records, done in plans
               for r, d in zip(records, done) if not d)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=todo, unit="sent", desc=f"teacher {teacher.name}")
    n_encoded = 0
    try:
        for file_index, path, shard_dir, records, done in plans:
            entry = manifest["files"][path]
            if bar is not None:
                bar.set_postfix_str(os.path.basename(path))
            for (start, offset, lines), rec, d in zip(_iter_shards(path, shard_size), records,
                                                      done):
                if d:
                    continue
                src, tgt, valid, n = encode_shard(teacher, lines, batch_size,
                                                  repeats.copy_rows, bar, components,
                                                  sides[file_index])
                n_encoded += n
                write_shard(shard_dir, rec, teacher.name, stored_dim, entry["sha256"], src,
                            tgt, valid, dtype, manifest.get("projection"), sides[file_index])
                repeats.register(file_index, start, lines)
                entry["shards"].append(rec)
                entry["complete"] = len(entry["shards"]) == entry["num_shards"]
                write_manifest(output_dir, manifest)
    finally:
        if bar is not None:
            bar.close()
    manifest["last_run"] = {"sentences_encoded": n_encoded}
    write_manifest(output_dir, manifest)
    return manifest


class _Repeats:
    """Where each sentence stored so far is (the finished shards of ``plans``, then each
    shard as it is written), so that a repeat is copied from there, not encoded again.
    ``sides`` gives each input's :func:`file_sides` (English-only files: only their English
    sentences are stored)."""

    def __init__(self, plans: list, shard_size: int, sides: Sequence[str]):
        self._plans, self._shard_size, self._sides = plans, shard_size, list(sides)
        self._index: Dict[bytes, int] = {}  # digest -> (file_index << 41) | (line << 1) | side
        self._reader = _ShardCache()
        for file_index, path, _, records, done in plans:
            if any(done):
                for (start, _, lines), d in zip(_iter_shards(path, shard_size), done):
                    if d:
                        self.register(file_index, start, lines)

    def register(self, file_index: int, start: int, lines: Sequence[bytes]) -> None:
        """Records the sentences of a stored shard (lines from ``start`` of input
        ``file_index``), keeping the first place of each."""
        for i, raw in enumerate(lines):
            pair, _ = corpus.parse_tsv_line(raw)
            if pair is not None:
                for side, sentence in enumerate(pair):
                    if side == 0 and self._sides[file_index] == ENGLISH_SIDE:
                        continue  # its row holds the English side's embedding
                    self._index.setdefault(_digest(sentence),
                                           (file_index << 41) | ((start + i) << 1) | side)

    def copy_rows(self, keys: List[bytes]) -> Dict[bytes, np.ndarray]:
        """The stored rows of the sentences (digests) ``keys`` seen before (the
        ``copy_rows`` of :func:`encode_shard`)."""
        by_shard = collections.defaultdict(list)  # shard path -> [(digest, row, side)]
        for key in keys:
            loc = self._index.get(key)
            if loc is not None:
                f_i, line, s = loc >> 41, (loc >> 1) & ((1 << 40) - 1), loc & 1
                p = self._plans[f_i]
                rec = p[3][line // self._shard_size]
                by_shard[fileio.join(p[2], rec["file"])].append((key, line - rec["start"], s))
        found = {}
        for shard_path, refs in by_shard.items():
            stored = self._reader.rows(shard_path)
            for key, row, s in refs:
                found[key] = stored[s][row]
        return found


# ====================================================================== reading
def _find_entry(manifest: dict, path: str, embeddings_dir: str) -> dict:
    entry = manifest["files"].get(path)
    if entry is None:  # same content under another path (a moved data directory)
        size, sha = os.path.getsize(path), None
        for candidate in manifest["files"].values():
            if candidate["size"] == size:
                sha = sha or _sha256_file(path)
                if candidate["sha256"] == sha:
                    return candidate
        raise ValueError(f"{embeddings_dir} has no teacher embeddings for {path}; run "
                         f"`lealla teacher embed --input {path} --output {embeddings_dir}`")
    return entry


def loader(embeddings_dir: str,
           teacher_languages: Optional[Sequence[str]] = None) -> Callable:
    """``tsv_path -> (src, tgt, valid)`` over a precomputed store (what
    :func:`lealla_tf.data.pipeline.load_corpus` takes as ``teacher_loader``).

    With ``teacher_languages`` (the training config's ``teacher.languages``), a file whose
    store entry holds only English rows (``sides: english``, embedded for other teacher
    languages) but whose language those cover is refused: its pairs would silently learn
    the English row on both sides."""
    return functools.partial(load_precomputed, embeddings_dir,
                             teacher_languages=teacher_languages)


def load_precomputed(embeddings_dir: str, tsv_path: str, check_sha: bool = True,
                     teacher_languages: Optional[Sequence[str]] = None
                     ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Teacher embeddings of one TSV file, one row per physical line.

    Args:
      embeddings_dir: output directory of :func:`precompute`.
      tsv_path: the TSV file (matched by absolute path, else by content).
      check_sha: verify the file's sha256 against the manifest (size is always checked).
      teacher_languages: see :func:`loader`.

    Returns:
      ``(src, tgt, valid)``: ``[num_lines, dim]`` twice (float32 for a float32 directory,
      else float16; int8 rows come back scaled) and bool ``[num_lines]``; rows of
      malformed lines are zero with ``valid=False``. ``dim`` is the stored one (the PCA's
      in a compact directory).

    Raises:
      FileNotFoundError: no manifest or no TSV file.
      ValueError: incomplete, changed or misaligned embeddings, or a projection file that
        is not the one the shards were made with.
    """
    path = os.path.abspath(tsv_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"corpus file not found: {path}")
    manifest = _read_manifest(embeddings_dir)
    if manifest is None:
        raise FileNotFoundError(f"no {MANIFEST} in {embeddings_dir}: run `lealla teacher "
                                "embed` first")
    load_projection(embeddings_dir, manifest)  # a mismatched projection is refused
    out_dtype = np.float32 if manifest.get("dtype") == "float32" else np.float16
    entry = _find_entry(manifest, path, embeddings_dir)
    if (teacher_languages is not None and entry.get("sides") == ENGLISH_SIDE
            and config_lib.teacher_covers(teacher_languages, path)):
        raise ValueError(
            f"the teacher embeddings of {path} in {embeddings_dir} hold only its English "
            "sides (embedded with teacher languages that exclude it), but teacher.languages "
            "says the teacher covers it: embed it again with its language among "
            "--teacher-languages, or leave it out of teacher.languages")
    if not entry["complete"]:
        raise ValueError(f"teacher embeddings of {path} in {embeddings_dir} are incomplete "
                         f"({len(entry['shards'])} of {entry['num_shards']} shards); rerun "
                         "`lealla teacher embed` with the same arguments to resume")
    if os.path.getsize(path) != entry["size"] or (check_sha and
                                                  _sha256_file(path) != entry["sha256"]):
        raise ValueError(f"{path} changed since its teacher embeddings were computed in "
                         f"{embeddings_dir}; recompute them (lealla teacher embed --overwrite)")
    shards = sorted(entry["shards"], key=lambda r: r["start"])
    expected = 0
    parts = []
    for rec in shards:
        if rec["start"] != expected:
            raise ValueError(f"{embeddings_dir}: shards of {path} are not contiguous at line "
                             f"{expected}")
        shard_path = fileio.join(embeddings_dir, entry["dir"], rec["file"])
        with _load_npz(shard_path) as z:
            meta = json.loads(str(z["meta"]))
            src, tgt, valid = z["src"], z["tgt"], z["valid"]
            if src.dtype == np.int8:
                src, tgt = decode_rows(z, "src"), decode_rows(z, "tgt")
        n = rec["end"] - rec["start"]
        if (meta.get("lines_sha256") != rec["lines_sha256"] or src.shape != tgt.shape
                or src.shape != (n, manifest["dim"]) or valid.shape != (n,)):
            raise ValueError(f"{shard_path} does not match the manifest (lines "
                             f"{rec['start']}-{rec['end']} of {path})")
        if meta.get("projection") != manifest.get("projection"):
            raise ValueError(f"{shard_path} was reduced with another projection than "
                             f"{embeddings_dir}/{PROJECTION}; recompute (--overwrite)")
        parts.append((src.astype(out_dtype, copy=False), tgt.astype(out_dtype, copy=False),
                      valid))
        expected = rec["end"]
    if expected != entry["num_lines"]:
        raise ValueError(f"{embeddings_dir}: shards of {path} cover {expected} of "
                         f"{entry['num_lines']} lines")
    if not parts:
        dim = manifest["dim"]
        return np.zeros((0, dim), out_dtype), np.zeros((0, dim), out_dtype), np.zeros(0, bool)
    return tuple(np.concatenate(a) for a in zip(*parts))


def verify(embeddings_dir: str) -> List[str]:
    """Re-reads every TSV of a precomputed directory and checks each shard against it.

    Checks, per shard: the sha256 of its raw lines, ``valid`` against
    :func:`lealla_tf.corpus.parse_tsv_line`, zero rows for malformed lines and unit-norm
    rows for the others; per file: completeness and contiguity.

    Args:
      embeddings_dir: output directory of :func:`precompute`.

    Returns:
      A list of problems (empty when everything is complete and aligned).
    """
    manifest = _read_manifest(embeddings_dir)
    if manifest is None:
        raise FileNotFoundError(f"no {MANIFEST} in {embeddings_dir}")
    problems = []
    shard_size = manifest["shard_size"]
    try:
        load_projection(embeddings_dir, manifest)
    except ValueError as e:
        problems.append(str(e))
    for path, entry in manifest["files"].items():
        if not os.path.isfile(path):
            problems.append(f"{path}: corpus file is missing")
            continue
        if not entry["complete"]:
            problems.append(f"{path}: incomplete ({len(entry['shards'])} of "
                            f"{entry['num_shards']} shards)")
        recs = {r["start"]: r for r in entry["shards"]}
        n_lines = 0
        for start, _, lines in _iter_shards(path, shard_size):
            n_lines = start + len(lines)
            rec = recs.pop(start, None)
            if rec is None:
                continue
            problems += _verify_shard(fileio.join(embeddings_dir, entry["dir"], rec["file"]),
                                      rec, f"{path} lines {start}-{start + len(lines)}",
                                      start, lines, manifest.get("projection"))
        if n_lines != entry["num_lines"]:
            problems.append(f"{path}: has {n_lines} lines, manifest says {entry['num_lines']}")
        for start in recs:
            problems.append(f"{path}: shard at line {start} lies beyond the file")
    return problems


def _verify_shard(shard_path: str, rec: dict, where: str, start: int, lines: List[bytes],
                  projection: Optional[str]) -> List[str]:
    """The problems of one shard (record ``rec``) against the ``lines`` it was made of, in
    a directory whose rows were reduced with the projection of sha256 ``projection``."""
    h = hashlib.sha256(b"".join(lines)).hexdigest()
    if rec["end"] != start + len(lines) or h != rec["lines_sha256"]:
        return [f"{where}: lines changed since the shard was written"]
    try:
        with _load_npz(shard_path) as z:
            meta = json.loads(str(z["meta"]))
            src, tgt, valid = (decode_rows(z, "src"), decode_rows(z, "tgt"), z["valid"])
    except (OSError, ValueError, KeyError) as e:
        return [f"{where}: unreadable shard {shard_path} ({e})"]
    if meta.get("lines_sha256") != h or len(valid) != len(lines):
        return [f"{where}: shard {shard_path} belongs to other lines"]
    problems = []
    expect = np.array([corpus.parse_tsv_line(raw)[0] is not None for raw in lines])
    if not np.array_equal(valid, expect):
        problems.append(f"{where}: valid flags disagree with the corpus parser")
    if meta.get("projection") != projection:
        problems.append(f"{where}: shard {shard_path} was made with another projection")
    for side, emb in (("src", src), ("tgt", tgt)):
        norms = np.linalg.norm(emb, axis=1)
        # PCA-reduced rows keep at most their unit norm (they are not renormalised).
        bad = (np.any(norms[expect] > 1 + 1e-2) or np.any(norms[expect] <= 0)
               if projection else np.any(np.abs(norms[expect] - 1) > 1e-2))
        if np.any(norms[~expect] != 0) or bad:
            problems.append(f"{where}: {side} rows are not zero (malformed lines) "
                            "and unit norm (others)")
    return problems
