"""The public data sets: pinned sources, a checksummed, resumable fetcher, and ``train/``.

Every file comes from a public GitHub repository at a pinned commit (:data:`REPOSITORIES`) and
is checked against ``resources/data_sources.tsv``; ``train/xxx-eng.tsv`` is derived
(:func:`derive_pairs`) and checked the same way::

    from lealla_tf.data import datasets
    root = datasets.fetch(["tatoeba", "train", "ntrex"], ["deu", "fra"])  # into the cache
    print(datasets.plan(["ntrex"], "all").download_bytes)                 # bytes to fetch

See docs/data.md, "Fetching the data".
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.client
import os
import urllib.error
import urllib.request
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

from lealla_tf import corpus, paths

#: key -> (GitHub ``owner/name``, pinned commit).
REPOSITORIES: Dict[str, Tuple[str, str]] = {
    "laser": ("facebookresearch/LASER", "fec5c7d63daa2bea9d127e8252b10e87278586c0"),
    "opus": ("Helsinki-NLP/OPUS-MT-testsets", "ac0f19c0be3cb4e0d9450fcb2d7a9847c4bdd180"),
}
MIRROR = "https://raw.githubusercontent.com"
MIRROR_ENV = "LEALLA_DATA_MIRROR"
SETS: Tuple[str, ...] = ("tatoeba", "train", "ntrex")

#: Tatoeba v1 test languages whose pairs are removed from a ``train/`` file, for the
#: macro-language codes of the Tatoeba Challenge; any other file uses the code before ``_``.
TRAIN_TEST_LANGUAGES: Dict[str, Tuple[str, ...]] = {
    "fas": ("pes",), "lav": ("lvs",), "msa": ("zsm", "ind"), "nor": ("nob", "nno"),
    "swa": ("swh",), "zho": ("cmn", "yue", "wuu"), "hbs": ("hrv", "bos", "srp"),
}
#: Tatoeba code -> the NTREX-128 file of the same language where NTREX spells it otherwise.
NTREX_CODES: Dict[str, str] = {
    "ara": "arb", "cmn": "zho_Hans", "pes": "fas", "zsm": "msa", "swh": "swa", "lvs": "lav",
    "aze": "aze-Latn", "tgl": "fil",
}
_BLOCK = 1 << 16


class ChecksumError(ValueError):
    """A file does not have the published size and SHA-256."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One row of the table: a file to download (``repo`` set) or to derive (``repo`` empty).

    ``target`` is the path under the data root (empty for the upstream inputs of
    ``train/``, which live in the cache).
    """

    set: str
    name: str
    repo: str
    path: str
    target: str
    sha256: str
    bytes: int

    def url(self, mirror: Optional[str] = None) -> str:
        owner_name, commit = REPOSITORIES[self.repo]
        base = (mirror or os.environ.get(MIRROR_ENV) or MIRROR).rstrip("/")
        return f"{base}/{owner_name}/{commit}/{self.path}"

    def cache_path(self, cache: str) -> str:
        owner_name, commit = REPOSITORIES[self.repo]
        return os.path.join(cache, "downloads", owner_name, commit, self.path)


@functools.lru_cache(maxsize=1)
def table() -> Tuple[Entry, ...]:
    """Every file of the data sets, from the package's ``resources/data_sources.tsv``."""
    from importlib import resources
    text = resources.files("lealla_tf").joinpath("resources/data_sources.tsv").read_text(
        encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines()[1:] if line]
    return tuple(Entry(s, n, r, p, t, h, int(b)) for s, n, r, p, t, h, b in rows)


def codes(set_name: str) -> List[str]:
    """The language codes of one set (``tatoeba``: 112, ``train``: file names such as
    ``cmn_Hans``, ``ntrex``: NTREX codes such as ``zho_Hans``)."""
    if set_name not in SETS:
        raise ValueError(f"unknown data set {set_name!r}; choose from {', '.join(SETS)}")
    return sorted({e.name for e in table() if e.set == set_name and e.name not in ("*", "eng")})


def _parse_list(spec: Union[str, Sequence[str]], what: str, choices: Sequence[str] = ()
                ) -> List[str]:
    items = ([p.strip() for p in spec.split(",")] if isinstance(spec, str) else list(spec))
    items = list(dict.fromkeys(i for i in items if i))
    if not items:
        raise ValueError(f"no {what} given")
    bad = [i for i in items if choices and i not in choices]
    if bad:
        raise ValueError(f"unknown {what} {', '.join(bad)}; choose from {', '.join(choices)}")
    return items


def _wanted(set_name: str, name: str, langs: Optional[Set[str]]) -> bool:
    if langs is None or name == "*":
        return True
    if set_name == "train":  # as corpus.find_files: the name or its base language
        return name in langs or name.split("_")[0] in langs
    if set_name == "ntrex":
        return name == "eng" or name in langs or name in {NTREX_CODES.get(l) for l in langs}
    return name in langs


def test_languages(train_name: str) -> List[str]:
    """The Tatoeba v1 languages whose test pairs are removed from ``train/{train_name}-eng.tsv``.

    ``cmn_Hans`` -> ``[cmn]``; ``nor`` -> ``[nob, nno]``; a language without a Tatoeba v1
    test set -> ``[]``.
    """
    base = train_name.split("_")[0]
    known = set(codes("tatoeba"))
    return [l for l in TRAIN_TEST_LANGUAGES.get(base, (base,)) if l in known]


@dataclasses.dataclass
class Plan:
    """What :func:`fetch` will do: downloads (entry, destination) and derivations."""

    output: str
    cache: str
    downloads: List[Tuple[Entry, str]]
    derive: List[Entry]
    skipped: Dict[str, List[str]]  # set -> requested languages it has no file for

    @property
    def download_bytes(self) -> int:
        return sum(e.bytes for e, _ in self.downloads)


def _select(sets: Sequence[str], langs: Optional[Set[str]]) -> Tuple[List[Entry], Dict]:
    chosen = [e for e in table() if e.set in sets and _wanted(e.set, e.name, langs)]
    skipped: Dict[str, List[str]] = {}
    if langs is not None:
        unmatched = set(langs)
        for s in sets:
            hit = {l for l in langs if any(_wanted(s, e.name, {l}) and e.name not in ("*", "eng")
                                           for e in table() if e.set == s)}
            unmatched -= hit
            if langs - hit:
                skipped[s] = sorted(langs - hit)
        if unmatched:
            raise ValueError(
                f"unknown language(s) {', '.join(sorted(unmatched))} in {', '.join(sets)}; "
                f"e.g. {', '.join(codes(sets[0])[:10])}, ... (or 'all')")
    return chosen, skipped


def _valid(path: str, entry: Entry) -> bool:
    return (os.path.isfile(path) and os.path.getsize(path) == entry.bytes
            and corpus.sha256_file(path) == entry.sha256)


def plan(sets: Union[str, Sequence[str]] = SETS, languages: Union[str, Sequence[str]] = "all",
         output: Optional[str] = None, cache: Optional[str] = None) -> Plan:
    """Works out what :func:`fetch` would download and derive (verifying what is there).

    Args:
      sets: ``tatoeba``, ``train``, ``ntrex`` (comma-separated or a list).
      languages: ``all``, or codes (comma-separated or a list): Tatoeba codes for
        ``tatoeba``; for ``train`` also every file of that base language (``cmn`` ->
        ``cmn_Hans``, ``cmn_Hant``); for ``ntrex`` the NTREX file of that language (see
        :data:`NTREX_CODES`) plus the English source. Codes a set lacks are skipped for it.
      output: data root (default :func:`paths.default_data_root`).
      cache: cache folder for the upstream inputs of ``train/`` (default
        :func:`paths.cache_root`).

    Raises:
      ValueError: naming an unknown set or a language no requested set has.
    """
    sets = _parse_list(sets, "data set(s)", SETS)
    langs = (None if isinstance(languages, str) and languages.strip().lower() == "all"
             else set(_parse_list(languages, "languages")))
    output = output or paths.default_data_root()
    cache = cache or paths.cache_root()
    chosen, skipped = _select(sets, langs)
    by_target = {e.target: e for e in table() if e.target}
    downloads: Dict[str, Tuple[Entry, str]] = {}
    derive: List[Entry] = []
    for e in chosen:
        if e.repo and e.target:
            downloads[e.target] = (e, os.path.join(output, e.target))
    for e in chosen:
        if e.repo or _valid(os.path.join(output, e.target), e):
            continue
        derive.append(e)
        for inp in _train_inputs(e.name):
            downloads[inp.path] = (inp, inp.cache_path(cache))
        for lang in test_languages(e.name):
            for f in (f"tatoeba/v1/tatoeba.{lang}-eng.{lang}", f"tatoeba/v1/tatoeba.{lang}-eng.eng"):
                downloads[f] = (by_target[f], os.path.join(output, f))
    todo = [(e, dest) for e, dest in downloads.values() if not _valid(dest, e)]
    return Plan(output, cache, todo, derive, skipped)


def _train_inputs(name: str) -> Tuple[Entry, Entry]:
    """The upstream ``(foreign, English)`` files of one ``train/`` file."""
    rows = [e for e in table() if e.set == "train" and e.repo and e.name == name]
    src = [e for e in rows if not e.path.endswith(".eng")]
    eng = [e for e in rows if e.path.endswith(".eng")]
    if len(src) != 1 or len(eng) != 1:
        raise ValueError(f"the data table has no upstream pair for train/{name}-eng.tsv")
    return src[0], eng[0]


# ----------------------------------------------------------------------------- download


def fetch_file(url: str, dest: str, sha256: str, size: Optional[int] = None,
               bar=None, retries: int = 2, hint: str = "") -> None:
    """Downloads ``url`` to ``dest`` through ``dest + ".part"``, resuming a partial file.

    The ``.part`` file is extended with an HTTP ``Range`` request when the server supports
    it (else rewritten), verified (size, SHA-256) and only then renamed to ``dest``. A broken
    connection is retried ``retries`` times, resuming; if it still fails the ``.part`` stays
    for the next run.

    Args:
      url: ``http(s)://`` or ``file://`` URL.
      dest: destination file (its folder is created).
      sha256: expected hex SHA-256.
      size: expected size in bytes (None: not checked before hashing).
      bar: a tqdm bar updated with the bytes received.
      retries: extra attempts after a broken connection.
      hint: appended to the error message of a failed download.

    Raises:
      ChecksumError: wrong size or SHA-256 (the partial file is deleted).
      ConnectionError: the file could not be downloaded.
    """
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    part = dest + ".part"
    name = os.path.basename(dest)
    for attempt in range(retries + 1):
        have = os.path.getsize(part) if os.path.isfile(part) else 0
        if size is not None and have >= size:
            break
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=60) as resp:
                resumed = bool(have) and getattr(resp, "status", None) == 206
                if have and not resumed and bar is not None:
                    bar.update(-have)  # the server sends the whole file again
                with open(part, "ab" if resumed else "wb") as out:
                    for block in iter(lambda: resp.read(_BLOCK), b""):
                        out.write(block)
                        if bar is not None:
                            bar.update(len(block))
            break
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # a range past the end: start again
                os.remove(part)
                continue
            raise ConnectionError(f"could not download {name} from {url}: {e}{hint}") from e
        except (OSError, http.client.HTTPException) as e:  # refused, reset, cut short
            if attempt < retries:
                continue
            kept = (f"; the {os.path.getsize(part)} bytes received are kept in {part} and "
                    "the next run resumes from there") if os.path.isfile(part) else ""
            raise ConnectionError(
                f"could not download {name} from {url}: {e!r}{kept}{hint}") from e
    got_size = os.path.getsize(part) if os.path.isfile(part) else 0
    got = corpus.sha256_file(part) if os.path.isfile(part) else ""
    if (size is not None and got_size != size) or got != sha256:
        if os.path.isfile(part):
            os.remove(part)
        raise ChecksumError(
            f"checksum mismatch for {name} downloaded from {url}: expected sha256 {sha256}"
            + (f" ({size} bytes)" if size is not None else "")
            + f", got {got or 'nothing'} ({got_size} bytes). Nothing was kept; run again to "
            "fetch it anew, or check the mirror")
    os.replace(part, dest)


# ----------------------------------------------------------------------------- train/


def _lines(data: bytes) -> List[bytes]:
    lines = data.split(b"\n")
    return lines[:-1] if lines and lines[-1] == b"" else lines


def derive_pairs(foreign: bytes, english: bytes, test_foreign: Iterable[bytes],
                 test_english: Iterable[bytes]) -> bytes:
    """The ``train/`` rule: ``foreign<TAB>English`` per line, in order, without test pairs.

    A line pair is dropped when its foreign sentence is a foreign sentence of the test set,
    or its English sentence is one of the test set's English sentences.

    Args:
      foreign, english: the line-aligned upstream files' bytes.
      test_foreign, test_english: the Tatoeba v1 test sentences (bytes, no newline).

    Returns:
      The TSV file's bytes.

    Raises:
      ValueError: when the two sides have different line counts.
    """
    src, eng = _lines(foreign), _lines(english)
    if len(src) != len(eng):
        raise ValueError(f"{len(src)} foreign lines but {len(eng)} English lines")
    drop_f = set(test_foreign) - {b""}
    drop_e = set(test_english) - {b""}
    return b"".join(s + b"\t" + e + b"\n" for s, e in zip(src, eng)
                    if s not in drop_f and e not in drop_e)


def derive_train(entry: Entry, output: str, cache: str) -> str:
    """Writes ``output/train/{name}-eng.tsv`` from the cached upstream files (atomically).

    Raises:
      ChecksumError: if the result is not the published file (nothing is written).
    """
    src_e, eng_e = _train_inputs(entry.name)
    with open(src_e.cache_path(cache), "rb") as f:
        foreign = f.read()
    with open(eng_e.cache_path(cache), "rb") as f:
        english = f.read()
    tf_, te = [], []
    for lang in test_languages(entry.name):
        with open(os.path.join(output, "tatoeba", "v1", f"tatoeba.{lang}-eng.{lang}"), "rb") as f:
            tf_.extend(_lines(f.read()))
        with open(os.path.join(output, "tatoeba", "v1", f"tatoeba.{lang}-eng.eng"), "rb") as f:
            te.extend(_lines(f.read()))
    data = derive_pairs(foreign, english, tf_, te)
    got = hashlib.sha256(data).hexdigest()
    if got != entry.sha256 or len(data) != entry.bytes:
        raise ChecksumError(f"derived {entry.target} has sha256 {got} ({len(data)} bytes), "
                            f"expected {entry.sha256} ({entry.bytes} bytes)")
    dest = os.path.join(output, entry.target)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = dest + ".part"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, dest)
    return dest


# ----------------------------------------------------------------------------- fetch


def fetch(sets: Union[str, Sequence[str]] = SETS, languages: Union[str, Sequence[str]] = "all",
          output: Optional[str] = None, cache: Optional[str] = None,
          mirror: Optional[str] = None, progress: bool = True) -> str:
    """Downloads, verifies and derives the data sets into a data root.

    Args:
      sets, languages, output, cache: see :func:`plan`.
      mirror: base URL laid out like ``raw.githubusercontent.com`` (default GitHub, or
        ``$LEALLA_DATA_MIRROR``).
      progress: show a progress bar (bytes).

    Returns:
      The data root (``output``), holding ``tatoeba/v1``, ``train`` and ``ntrex`` as asked.

    Raises:
      ChecksumError: a file (named) has the wrong SHA-256; nothing of it is kept.
      ConnectionError: a file could not be downloaded (a partial one is kept to resume).
      ValueError: an unknown set or language.
    """
    p = plan(sets, languages, output, cache)
    from tqdm.auto import tqdm
    if p.downloads:
        with tqdm(total=p.download_bytes, unit="B", unit_scale=True,
                  desc=f"downloading {len(p.downloads)} files", disable=not progress) as bar:
            for entry, dest in p.downloads:
                part = dest + ".part"
                if os.path.isfile(part):
                    bar.update(min(os.path.getsize(part), entry.bytes))
                fetch_file(entry.url(mirror), dest, entry.sha256, entry.bytes, bar=bar)
    for entry in tqdm(p.derive, desc="deriving train/", disable=not progress or not p.derive):
        derive_train(entry, p.output, p.cache)
    return p.output


def ensure_data(sets: Union[str, Sequence[str]], languages: Union[str, Sequence[str]],
                data_dir: Optional[str] = None, progress: bool = True) -> str:
    """The data root a command should read: ``data_dir``, else ``$LEALLA_DATA_DIR``, else the
    cache, filled first with what ``sets`` and ``languages`` need (see :func:`fetch`).

    An explicit root or ``$LEALLA_DATA_DIR`` is used as is (nothing is downloaded).

    Args:
      sets: data sets needed (``tatoeba``, ``train``, ``ntrex``).
      languages: languages needed (see :func:`plan`).
      data_dir: an explicit data root.
      progress: show progress bars.

    Example::

        root = datasets.ensure_data(["train", "tatoeba", "ntrex"], ["deu", "fra"])
    """
    if data_dir or os.environ.get(paths.DATA_ENV):
        return paths.data_dir(data_dir or "")
    p = plan(sets, languages)
    if p.downloads or p.derive:
        print(f"no data directory set (--data-dir, LEALLA_DATA_DIR): fetching "
              f"{p.download_bytes / 1e6:.1f} MB of public data into {p.output}", flush=True)
        fetch(sets, languages, progress=progress)
    return p.output
