"""Teacher-embedding store: a teacher's embeddings of TSV corpora, precomputed once into shards.

Distillation needs the teacher's embedding of both sides of every training pair. Encoding
them once, before training, keeps the teacher (see :mod:`lealla_tf.teachers`) out of the
training job: :func:`precompute` runs it over some ``xxx-eng.tsv`` corpora and stores float16
shards; training reads them back with :func:`load_precomputed`, and :func:`verify` re-reads
the corpora to check every shard against them. Layout of ``DIR``::

    manifest.json                 teacher name, dim, dtype, shard size; per TSV: absolute
                                  path, size, sha256, physical lines, shards, completion
    <tsv name>-<hash>/
      000000000-000005000.npz     src [n, D] float16, tgt [n, D] float16, valid bool [n],
      000005000-000010000.npz     meta (JSON: line range, byte range, sha256 of the lines)
      ...

Rows are indexed by *physical* line (see :mod:`lealla_tf.corpus`): a malformed line gets
zero rows and ``valid=False``, so it never shifts what follows. Shards are written to a
temporary file and renamed, so a killed run leaves only complete shards, and rerunning
resumes at the first missing one. Each distinct sentence is encoded once: a repeat (in the
same shard, an earlier shard or another input file) is copied from where it was first
stored, also across resumed runs (only the shard a killed run was working on is redone).
One process at a time writes to a directory (an advisory lock; a second writer gets a
``ValueError``).

Example::

    from lealla_tf import teacher_embeddings, teachers
    teacher = teachers.load_teacher("muse")
    teacher_embeddings.precompute(teacher, ["train/deu-eng.tsv"], "results/teacher/muse")
    src, tgt, valid = teacher_embeddings.load_precomputed("results/teacher/muse",
                                                          "train/deu-eng.tsv")
    assert not teacher_embeddings.verify("results/teacher/muse")  # [] when all aligned

or from the shell::

    lealla teacher embed --teacher muse --input 'train/*.tsv' --output results/teacher/muse
    lealla teacher verify --output results/teacher/muse
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import os
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from lealla_tf import corpus, fileio
from lealla_tf.teachers import Teacher

# ====================================================================== precomputing
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
DTYPE = "float16"
DEFAULT_SHARD_SIZE = 5000


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


def _write_manifest(output_dir: str, manifest: dict) -> None:
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
                self._cache[path] = (z["src"], z["tgt"])
            if len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return self._cache[path]


def precompute(teacher: Teacher, inputs: Sequence[str], output_dir: str,
               shard_size: int = DEFAULT_SHARD_SIZE, batch_size: int = 64,
               overwrite: bool = False, progress: bool = True) -> dict:
    """Embeds both sides of every line of TSV corpora with ``teacher`` into float16 shards.

    Resumes where a previous (killed) run stopped. Each distinct sentence is encoded once.

    Args:
      teacher: a teacher (see :func:`lealla_tf.teachers.load_teacher`).
      inputs: TSV files (``foreign<TAB>English`` per line).
      output_dir: where the manifest and shards go (created if needed).
      shard_size: physical lines per shard (fixed for the life of ``output_dir``).
      batch_size: sentences per ``teacher.encode`` call.
      overwrite: recompute the given inputs from scratch instead of resuming; also the way
        to replace embeddings of a changed TSV or from another teacher.
      progress: show a tqdm bar over sentences.

    Returns:
      The manifest (also written to ``output_dir/manifest.json``).

    Raises:
      ValueError: if ``output_dir`` holds embeddings of another teacher/dim/shard size, or
        of a TSV whose content changed since (without ``overwrite``), or another process
        is writing to it.
      FileNotFoundError: for a missing input.
    """
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be >= 1, got {shard_size}, "
                         f"{batch_size}")
    files = list(dict.fromkeys(os.path.abspath(p) for p in inputs))
    if not files:
        raise ValueError("no input TSV files given")
    for path in files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"corpus file not found: {path}")
    fileio.makedirs(output_dir)
    with _exclusive(output_dir, force=overwrite):
        return _precompute(teacher, files, output_dir, shard_size, batch_size, overwrite,
                           progress)


@contextlib.contextmanager
def _exclusive(output_dir: str, force: bool = False):
    """Makes this process the only writer of ``output_dir`` (:func:`fileio.writer_lock`: an
    OS lock on local disks; a checked single-writer marker on ``gs://`` and other stores)."""
    try:
        with fileio.writer_lock(fileio.join(output_dir, ".lock"), force=force):
            yield
    except fileio.LockedError as e:
        raise ValueError(f"{output_dir} is being written by another process ({e})") from None


def plan(teacher_name: str, dim: int, files: Sequence[str], output_dir: str, shard_size: int,
         overwrite: bool) -> Tuple[dict, list]:
    """Checks and updates the manifest, and finds the finished shards of every input.

    The caller holds the writer lock. Returns ``(manifest, plans)``; each plan is
    ``(file_index, path, shard_dir, shard records, done flags)``. Shared by the local job
    and the Beam pipeline (:mod:`lealla_tf.teacher_embeddings_beam`).
    """
    for name in fileio.listdir(output_dir):  # leftovers of a killed manifest write
        if ".tmp-" in name:
            fileio.remove(fileio.join(output_dir, name))

    header = {"format_version": FORMAT_VERSION, "teacher": teacher_name,
              "dim": int(dim), "dtype": DTYPE, "shard_size": int(shard_size)}
    manifest = _read_manifest(output_dir)
    if manifest is not None and manifest.get("files"):
        old = {k: manifest.get(k) for k in header}
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
    _write_manifest(output_dir, manifest)

    # Hash and count every input; decide which shards are already done.
    plans = []
    for file_index, path in enumerate(files):
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
        for name in fileio.listdir(shard_dir):
            if ".tmp-" in name:
                fileio.remove(fileio.join(shard_dir, name))
        done = shards_done(shard_dir, scan["shards"], teacher_name)
        entry = {k: scan[k] for k in ("path", "size", "sha256", "num_lines", "stats")}
        entry.update(dir=folder, num_shards=len(scan["shards"]),
                     shards=[r for r, d in zip(scan["shards"], done) if d],
                     complete=all(done))
        manifest["files"][path] = entry
        plans.append((file_index, path, shard_dir, scan["shards"], done))
    _write_manifest(output_dir, manifest)
    return manifest, plans


def shards_done(shard_dir: str, records: Sequence[dict], teacher_name: str) -> List[bool]:
    """Whether each shard of ``records`` is written, by ``teacher_name``, for those lines."""
    done = []
    for rec in records:
        meta = _shard_meta(fileio.join(shard_dir, rec["file"]))
        done.append(meta is not None and meta.get("teacher") == teacher_name and all(
            meta.get(k) == rec[k] for k in ("start", "end", "lines_sha256")))
    return done


def encode_shard(teacher: Teacher, lines: Sequence[bytes], batch_size: int,
                 copy_rows: Optional[Callable[[List[bytes]], Dict[bytes, np.ndarray]]] = None,
                 bar=None) -> Tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The rows of one shard: both sides of every physical line, encoded by ``teacher``.

    Malformed lines get zero rows and ``valid=False``. Each distinct sentence of the shard
    is encoded once, in batches of ``batch_size`` in order of first appearance.

    Args:
      teacher: the teacher.
      lines: raw physical lines (bytes, newline included).
      batch_size: sentences per ``teacher.encode`` call.
      copy_rows: optional ``digests -> {digest: float16 row}`` of sentences stored before
        (the local job copies repeats from earlier shards; the Beam workers pass None).
      bar: optional tqdm bar counting sentences.

    Returns:
      ``(src float16 [n, D], tgt float16 [n, D], valid bool [n], sentences encoded)``.
    """
    n, dim = len(lines), int(teacher.dim)
    src = np.zeros((n, dim), np.float16)
    tgt = np.zeros((n, dim), np.float16)
    valid = np.zeros((n,), bool)
    new: Dict[bytes, Tuple[str, list]] = {}  # digest -> (sentence, [(row, side)])
    for i, raw in enumerate(lines):
        pair, _ = corpus.parse_tsv_line(raw)
        if pair is None:
            continue
        valid[i] = True
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
        emb = teacher.encode([s for s, _ in batch]).astype(np.float16)
        for vec, (_, refs) in zip(emb, batch):
            for i, side in refs:
                out[side][i] = vec
        if bar is not None:
            bar.update(sum(len(r) for _, r in batch))
    return src, tgt, valid, len(items)


def write_shard(shard_dir: str, rec: dict, teacher_name: str, dim: int, tsv_sha256: str,
                src: np.ndarray, tgt: np.ndarray, valid: np.ndarray) -> None:
    """Writes one shard (atomically: a temporary file renamed into place)."""
    meta = dict(rec, teacher=teacher_name, dim=int(dim), dtype=DTYPE, tsv_sha256=tsv_sha256)
    _write_atomic(fileio.join(shard_dir, rec["file"]), lambda f: np.savez(
        f, src=src, tgt=tgt, valid=valid, meta=np.array(json.dumps(meta))))


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


def _precompute(teacher, files, output_dir, shard_size, batch_size, overwrite, progress):
    manifest, plans = plan(teacher.name, teacher.dim, files, output_dir, shard_size, overwrite)

    # Pass 2: index the sentences of finished shards, so repeats are copied, not encoded.
    index: Dict[bytes, int] = {}  # digest -> (file_index << 41) | (line << 1) | side

    def register(file_index, start, lines):
        for i, raw in enumerate(lines):
            pair, _ = corpus.parse_tsv_line(raw)
            if pair is not None:
                for side, sentence in enumerate(pair):
                    index.setdefault(_digest(sentence), (file_index << 41) | ((start + i) << 1)
                                     | side)

    for file_index, path, _, records, done in plans:
        if any(done):
            for (start, _, lines), d in zip(_iter_shards(path, shard_size), done):
                if d:
                    register(file_index, start, lines)

    reader = _ShardCache()

    def copy_rows(keys: List[bytes]) -> Dict[bytes, np.ndarray]:
        by_shard = collections.defaultdict(list)  # shard path -> [(digest, row, side)]
        for key in keys:
            loc = index.get(key)
            if loc is not None:
                f_i, line, s = loc >> 41, (loc >> 1) & ((1 << 40) - 1), loc & 1
                p = plans[f_i]
                rec = p[3][line // shard_size]
                by_shard[fileio.join(p[2], rec["file"])].append((key, line - rec["start"], s))
        found = {}
        for shard_path, refs in by_shard.items():
            stored = reader.rows(shard_path)
            for key, row, s in refs:
                found[key] = stored[s][row]
        return found

    # Pass 3: encode the missing shards.
    todo = sum(2 * r["num_valid"] for *_, records, done in plans
               for r, d in zip(records, done) if not d)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=todo, unit="sent", desc=f"teacher {teacher.name}")
    dim, n_encoded = int(teacher.dim), 0
    try:
        for file_index, path, shard_dir, records, done in plans:
            entry = manifest["files"][path]
            if bar is not None:
                bar.set_postfix_str(os.path.basename(path))
            for (start, offset, lines), rec, d in zip(_iter_shards(path, shard_size), records,
                                                      done):
                if d:
                    continue
                src, tgt, valid, n = encode_shard(teacher, lines, batch_size, copy_rows, bar)
                n_encoded += n
                write_shard(shard_dir, rec, teacher.name, dim, entry["sha256"], src, tgt, valid)
                register(file_index, start, lines)
                entry["shards"].append(rec)
                entry["complete"] = len(entry["shards"]) == entry["num_shards"]
                _write_manifest(output_dir, manifest)
    finally:
        if bar is not None:
            bar.close()
    manifest["last_run"] = {"sentences_encoded": n_encoded}
    _write_manifest(output_dir, manifest)
    return manifest


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


def load_precomputed(embeddings_dir: str, tsv_path: str,
                     check_sha: bool = True) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Teacher embeddings of one TSV file, one row per physical line.

    Args:
      embeddings_dir: output directory of :func:`precompute`.
      tsv_path: the TSV file (matched by absolute path, else by content).
      check_sha: verify the file's sha256 against the manifest (size is always checked).

    Returns:
      ``(src, tgt, valid)``: float16 ``[num_lines, dim]`` twice and bool ``[num_lines]``;
      rows of malformed lines are zero with ``valid=False``.

    Raises:
      FileNotFoundError: no manifest or no TSV file.
      ValueError: incomplete, changed or misaligned embeddings.
    """
    path = os.path.abspath(tsv_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"corpus file not found: {path}")
    manifest = _read_manifest(embeddings_dir)
    if manifest is None:
        raise FileNotFoundError(f"no {MANIFEST} in {embeddings_dir}: run `lealla teacher "
                                "embed` first")
    entry = _find_entry(manifest, path, embeddings_dir)
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
        n = rec["end"] - rec["start"]
        if (meta.get("lines_sha256") != rec["lines_sha256"] or src.shape != tgt.shape
                or src.shape != (n, manifest["dim"]) or valid.shape != (n,)):
            raise ValueError(f"{shard_path} does not match the manifest (lines "
                             f"{rec['start']}-{rec['end']} of {path})")
        parts.append((src, tgt, valid))
        expected = rec["end"]
    if expected != entry["num_lines"]:
        raise ValueError(f"{embeddings_dir}: shards of {path} cover {expected} of "
                         f"{entry['num_lines']} lines")
    if not parts:
        dim = manifest["dim"]
        return np.zeros((0, dim), np.float16), np.zeros((0, dim), np.float16), np.zeros(0, bool)
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
            where = f"{path} lines {start}-{start + len(lines)}"
            h = hashlib.sha256(b"".join(lines)).hexdigest()
            if rec["end"] != start + len(lines) or h != rec["lines_sha256"]:
                problems.append(f"{where}: lines changed since the shard was written")
                continue
            shard_path = fileio.join(embeddings_dir, entry["dir"], rec["file"])
            try:
                with _load_npz(shard_path) as z:
                    meta = json.loads(str(z["meta"]))
                    src, tgt, valid = (z["src"].astype(np.float32), z["tgt"].astype(np.float32),
                                       z["valid"])
            except (OSError, ValueError, KeyError) as e:
                problems.append(f"{where}: unreadable shard {shard_path} ({e})")
                continue
            if meta.get("lines_sha256") != h or len(valid) != len(lines):
                problems.append(f"{where}: shard {shard_path} belongs to other lines")
                continue
            expect = np.array([corpus.parse_tsv_line(raw)[0] is not None for raw in lines])
            if not np.array_equal(valid, expect):
                problems.append(f"{where}: valid flags disagree with the corpus parser")
            for side, emb in (("src", src), ("tgt", tgt)):
                norms = np.linalg.norm(emb, axis=1)
                if np.any(norms[~expect] != 0) or np.any(np.abs(norms[expect] - 1) > 1e-2):
                    problems.append(f"{where}: {side} rows are not zero (malformed lines) "
                                    "and unit norm (others)")
        if n_lines != entry["num_lines"]:
            problems.append(f"{path}: has {n_lines} lines, manifest says {entry['num_lines']}")
        for start in recs:
            problems.append(f"{path}: shard at line {start} lies beyond the file")
    return problems
