"""Reading parallel ``xxx-eng.tsv`` corpora and text files line by line, keeping alignment.

Every consumer reads a corpus through :func:`iter_tsv`, so all agree on which lines are usable
and on each pair's *physical line index* (what teacher embeddings are stored by); malformed
lines are skipped and counted in a :class:`Stats` under their reason::

    from lealla_tf import corpus
    stats = corpus.Stats()
    for index, src, tgt in corpus.iter_tsv("train/deu-eng.tsv", stats):
        ...

See docs/data.md, "The data root".
"""

from __future__ import annotations

import collections
import glob
import hashlib
import os
import re
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

MALFORMED_REASONS = ("invalid_utf8", "wrong_fields", "empty_side")


class CorpusError(ValueError):
    """A corpus file that cannot be used at all: empty, or without one usable line."""


class Stats(collections.Counter):
    """Counts of ``ok`` lines and of each malformed reason."""

    @property
    def malformed(self) -> int:
        return sum(self[r] for r in MALFORMED_REASONS)


def parse_tsv_line(raw: bytes) -> Tuple[Optional[Tuple[str, str]], str]:
    """Parses one raw TSV line (without or with its newline).

    Returns:
      ``((src, tgt), "ok")`` or ``(None, reason)`` with a reason from MALFORMED_REASONS.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "invalid_utf8"
    text = text.rstrip("\r\n")
    fields = text.split("\t")
    if len(fields) != 2:
        return None, "wrong_fields"
    src, tgt = fields[0].strip(), fields[1].strip()
    if not src or not tgt:
        return None, "empty_side"
    return (src, tgt), "ok"


def iter_tsv(path: str, stats: Optional[Stats] = None) -> Iterator[Tuple[int, str, str]]:
    """Yields ``(physical_line_index, src, tgt)`` for every well-formed line of ``path``."""
    _check_is_file(path, "corpus file")
    with open(path, "rb") as f:
        for index, raw in enumerate(f):
            pair, reason = parse_tsv_line(raw)
            if stats is not None:
                stats[reason] += 1
            if pair is not None:
                yield index, pair[0], pair[1]


def _check_is_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} is a folder, not a file: {path}")


def check_file(path: str) -> None:
    """Checks, before long work, that a corpus file can be read at all: a TSV file
    (``.tsv``) has at least one well-formed ``foreign<TAB>English`` line, any other file
    at least one non-empty line. Malformed lines among usable ones are not an error (they
    are skipped and counted, see :func:`iter_tsv`).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      IsADirectoryError: ``path`` is a folder.
      CorpusError: ``path`` is empty or has no usable line; the message says what its
        lines hold.
    """
    tsv = path.endswith(".tsv")
    _check_is_file(path, "corpus file" if tsv else "text file")
    if os.path.getsize(path) == 0:
        raise CorpusError(f"{path} is empty")
    stats = Stats()
    for _ in (iter_tsv(path, stats) if tsv else iter_text(path, stats)):
        return
    lines = sum(stats.values())
    found = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(stats.items()))
    if tsv:
        with open(path, "rb") as f:
            fields = len(f.readline().rstrip(b"\r\n").split(b"\t"))
        raise CorpusError(
            f"{path} has no foreign<TAB>English line ({lines} lines: {found}; line 1 has "
            f"{fields} tab-separated field(s))")
    raise CorpusError(f"{path} has no usable line ({lines} lines: {found})")


def sha256_file(path: str) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def count_lines(path: str) -> int:
    """Number of physical lines (a last line without newline counts)."""
    n = 0
    last = b"\n"
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 20)
            if not block:
                break
            n += block.count(b"\n")
            last = block[-1:]
    return n + (0 if last == b"\n" else 1)


def iter_text(path: str, stats: Optional[Stats] = None) -> Iterator[str]:
    """Yields sentences of a text file (one per line) or of both sides of a TSV file.

    Invalid UTF-8 and empty lines are skipped and counted, as for :func:`iter_tsv`.
    """
    if path.endswith(".tsv"):
        for _, src, tgt in iter_tsv(path, stats):
            yield src
            yield tgt
        return
    _check_is_file(path, "text file")
    with open(path, "rb") as f:
        for raw in f:
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                if stats is not None:
                    stats["invalid_utf8"] += 1
                continue
            if not line:
                if stats is not None:
                    stats["empty_side"] += 1
                continue
            if stats is not None:
                stats["ok"] += 1
            yield line


_LANG_RE = re.compile(r"^(?P<lang>[^.]+?)-eng(\.[^/]*)?$")


def language_of(path: str) -> str:
    """``.../deu-eng.tsv`` -> ``deu``; ``cmn_Hans-eng.tsv`` -> ``cmn_Hans``; else the stem."""
    base = os.path.basename(path)
    stem = base[:-4] if base.endswith(".tsv") else base
    m = _LANG_RE.match(stem)
    return m.group("lang") if m else os.path.splitext(base)[0]


def find_files(patterns: Sequence[str], root: str = "",
               languages: Sequence[str] = ()) -> List[str]:
    """Expands glob patterns (relative ones against ``root``), sorted and de-duplicated.

    Args:
      patterns: glob patterns or file paths.
      root: directory for relative patterns.
      languages: keep only files whose language (see :func:`language_of`) or whose
        base language (before ``_``, e.g. ``cmn`` for ``cmn_Hans``) is listed.

    Raises:
      FileNotFoundError: if a pattern matches nothing, naming the pattern.
    """
    files: List[str] = []
    for pattern in patterns:
        full = pattern if os.path.isabs(pattern) or not root else os.path.join(root, pattern)
        matches = sorted(glob.glob(full))
        if not matches:
            raise FileNotFoundError(f"no files match {full!r}")
        files.extend(matches)
    files = sorted(dict.fromkeys(os.path.abspath(f) for f in files))
    if languages:
        wanted = set(languages)
        files = [f for f in files
                 if language_of(f) in wanted or language_of(f).split("_")[0] in wanted]
    return files


def batched(items: Iterable[str], size: int) -> Iterator[List[str]]:
    """``items`` in lists of ``size`` (the last one shorter), read lazily."""
    batch: List[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def group_by_language(files: Sequence[str]) -> Dict[str, List[str]]:
    """Maps base language code (``cmn_Hans`` -> ``cmn``) to its files."""
    out: Dict[str, List[str]] = collections.OrderedDict()
    for f in files:
        out.setdefault(language_of(f).split("_")[0], []).append(f)
    return out
