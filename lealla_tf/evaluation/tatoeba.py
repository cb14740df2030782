"""Tatoeba similarity search (112 languages), as LASER, XTREME and LaBSE run it.

Accuracy in percent, both directions and their mean, per language and averaged; the files are
read from a local copy or fetched at LASER's pinned commit and checked::

    from lealla_tf.evaluation import tatoeba
    res = tatoeba.evaluate(model, "xtreme36", data_dir="data/tatoeba/v1")
    print(tatoeba.format_table(res))

See docs/evaluation.md, "Tatoeba".
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from lealla_tf import paths
from lealla_tf.data import datasets
from lealla_tf.data.datasets import ChecksumError as ChecksumError  # what evaluate() raises
from lealla_tf.evaluation import retrieval, runner

#: File name -> SHA-256 of the published files (from the package's data table).
SHA256: Dict[str, str] = {os.path.basename(e.path): e.sha256 for e in datasets.table()
                          if e.set == "tatoeba"}
_SIZES: Dict[str, int] = {os.path.basename(e.path): e.bytes for e in datasets.table()
                          if e.set == "tatoeba"}
_LASER, _COMMIT = datasets.REPOSITORIES["laser"]
BASE_URL = f"{datasets.MIRROR}/{_LASER}/{_COMMIT}/data/tatoeba/v1"
URL_ENV = "LEALLA_TATOEBA_URL"

#: The 112 languages of the LASER Tatoeba test set (ISO 639-3 codes, as in the files).
LANGUAGES: Tuple[str, ...] = tuple(sorted({f.split(".")[1].split("-")[0] for f in SHA256}))

#: XTREME's 36 Tatoeba languages (Hu et al., 2020), as the ``lang3_dict`` of
#: ``tatoeba_preprocess`` in google-research/xtreme ``utils_preprocess.py`` (XTREME-R
#: later added aze, lit, pol, ukr and ron; those are not part of this set).
XTREME36: Tuple[str, ...] = (
    "afr", "ara", "bul", "ben", "deu", "ell", "spa", "est", "eus", "pes", "fin", "fra",
    "heb", "hin", "hun", "ind", "ita", "jpn", "jav", "kat", "kaz", "kor", "mal", "mar",
    "nld", "por", "rus", "swh", "tam", "tel", "tha", "tgl", "tur", "urd", "vie", "cmn",
)

LANGUAGE_SETS = {"all": LANGUAGES, "xtreme36": XTREME36}


def resolve_languages(spec: Union[str, Sequence[str]]) -> List[str]:
    """``all`` | ``xtreme36`` | comma-separated codes | list of codes -> list of codes.

    Raises:
      ValueError: naming the unknown language codes.
    """
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in LANGUAGE_SETS:
            return list(LANGUAGE_SETS[key])
        spec = [s for s in (p.strip() for p in spec.split(",")) if s]
    langs = list(dict.fromkeys(spec))
    if not langs:
        raise ValueError("no Tatoeba languages given")
    unknown = [l for l in langs if l not in LANGUAGES]
    if unknown:
        raise ValueError(f"unknown Tatoeba language(s) {', '.join(unknown)}; choose from "
                         f"'all', 'xtreme36' or codes like {', '.join(LANGUAGES[:8])}, ...")
    return langs


def file_names(lang: str) -> Tuple[str, str]:
    """``(tatoeba.xxx-eng.xxx, tatoeba.xxx-eng.eng)``."""
    return f"tatoeba.{lang}-eng.{lang}", f"tatoeba.{lang}-eng.eng"


def default_cache_dir() -> str:
    """``tatoeba/v1`` under the cache's data root (where ``lealla data fetch`` puts it)."""
    return os.path.join(paths.default_data_root(), "tatoeba", "v1")


def download(languages: Union[str, Sequence[str]] = "all", cache_dir: Optional[str] = None,
             base_url: Optional[str] = None, checksums: Optional[Dict[str, str]] = None,
             progress: bool = True) -> str:
    """Downloads (once) and verifies the Tatoeba files of ``languages``.

    A cached file with the right checksum is kept; a missing or damaged one is fetched
    again into a ``.part`` file (resumed when a run was interrupted), verified, then moved
    into place (:func:`lealla_tf.data.datasets.fetch_file`).

    Args:
      languages: see :func:`resolve_languages`.
      cache_dir: destination (default ``$LEALLA_CACHE_DIR/datasets/tatoeba/v1``).
      base_url: folder URL holding the files (default LASER's GitHub at the pinned commit, or
        ``$LEALLA_TATOEBA_URL``); ``file://`` and ``http://`` URLs work too.
      checksums: file name -> SHA-256 (default: the published files' sums).
      progress: show a progress bar.

    Returns:
      The folder holding the files.

    Raises:
      ChecksumError: a downloaded file has the wrong SHA-256 (nothing is kept).
      ConnectionError: a file could not be fetched.
    """
    checksums = SHA256 if checksums is None else checksums
    base_url = (base_url or os.environ.get(URL_ENV) or BASE_URL).rstrip("/")
    cache_dir = cache_dir or default_cache_dir()
    langs = (resolve_languages(languages) if checksums is SHA256 else
             ([languages] if isinstance(languages, str) else list(languages)))
    names = [n for l in langs for n in file_names(l)]
    from tqdm.auto import tqdm
    for name in tqdm(names, desc="tatoeba download", disable=not progress, leave=False):
        if name not in checksums:
            raise ValueError(f"no checksum known for {name}")
        dest = os.path.join(cache_dir, name)
        if os.path.isfile(dest) and runner.file_digest(dest) == checksums[name]:
            continue
        datasets.fetch_file(f"{base_url}/{name}", dest, checksums[name],
                            _SIZES.get(name) if checksums is SHA256 else None,
                            hint=". Pass a local copy of LASER's data/tatoeba/v1 with "
                                 "--data-dir")
    return cache_dir


def find_local_dir(data_dir: str) -> str:
    """The folder with the ``tatoeba.*`` files: ``data_dir`` itself or its ``tatoeba/v1``.

    Raises:
      FileNotFoundError: when neither holds Tatoeba files.
    """
    for cand in (data_dir, os.path.join(data_dir, "tatoeba", "v1"),
                 os.path.join(data_dir, "v1")):
        if os.path.isdir(cand) and any(f.startswith("tatoeba.") for f in os.listdir(cand)):
            return cand
    raise FileNotFoundError(
        f"no Tatoeba files (tatoeba.xxx-eng.xxx) in {data_dir} or {data_dir}/tatoeba/v1")


def load_pair(lang: str, directory: str) -> Tuple[List[str], List[str]]:
    """The line-aligned (foreign, English) sentences of one language.

    Raises:
      FileNotFoundError: naming a missing file; ValueError: if line counts differ.
    """
    src_name, eng_name = file_names(lang)
    src = runner.read_lines(os.path.join(directory, src_name))
    eng = runner.read_lines(os.path.join(directory, eng_name))
    if len(src) != len(eng):
        raise ValueError(f"{src_name} has {len(src)} lines but {eng_name} has {len(eng)}")
    return src, eng


def accuracy(x: np.ndarray, y: np.ndarray, **kwargs) -> Tuple[float, float]:
    """Index-based nearest-neighbour accuracy in both directions, in percent.

    Args:
      x: ``[N, D]`` foreign embeddings; ``y``: ``[N, D]`` English, line-aligned.
      **kwargs: passed to :func:`retrieval.topk`.

    Returns:
      ``(xx2en, en2xx)``.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} foreign but {y.shape[0]} English embeddings")
    return (100.0 * retrieval.precision_at_1(x, y, **kwargs),
            100.0 * retrieval.precision_at_1(y, x, **kwargs))


def evaluate(model, languages: Union[str, Sequence[str]] = "all",
             data_dir: Optional[str] = None, batch_size: int = runner.DEFAULT_BATCH_SIZE,
             cache: Optional[str] = None, use_cache: bool = True,
             base_url: Optional[str] = None, progress: bool = True) -> dict:
    """Tatoeba accuracy of a model over a set of languages.

    Args:
      model: an embedder (``encode`` + ``name``) or a callable ``list[str] -> [N, D]``.
      languages: ``all`` (112), ``xtreme36``, comma-separated codes or a list.
      data_dir: local copy (the folder with the files, or a data root holding
        ``tatoeba/v1``); None downloads (cached, checksummed).
      batch_size: sentences per encode call.
      cache: embedding cache folder (default :func:`runner.cache_dir`).
      use_cache: read/write the embedding cache.
      base_url: download location override (see :func:`download`).
      progress: show progress bars.

    Returns:
      A JSON-able dict: ``model``, ``languages``, ``per_language`` (``lang -> {xx2en,
      en2xx, mean, n}``, percent) and ``average`` (``{xx2en, en2xx, mean}`` over the
      languages).
    """
    embedder = runner.as_embedder(model)
    langs = resolve_languages(languages)
    if data_dir:
        directory = find_local_dir(data_dir)
    else:
        directory = download(langs, base_url=base_url, progress=progress)
    per_language: Dict[str, dict] = {}
    from tqdm.auto import tqdm
    for lang in tqdm(langs, desc="tatoeba", disable=not progress or len(langs) < 2):
        src_name, eng_name = file_names(lang)
        src, eng = load_pair(lang, directory)  # validates alignment
        x = runner.embed_file(embedder, os.path.join(directory, src_name), batch_size,
                              cache=cache, use_cache=use_cache, progress=False)
        y = runner.embed_file(embedder, os.path.join(directory, eng_name), batch_size,
                              cache=cache, use_cache=use_cache, progress=False)
        xx2en, en2xx = accuracy(x, y)
        per_language[lang] = {"xx2en": xx2en, "en2xx": en2xx, "mean": (xx2en + en2xx) / 2,
                              "n": len(src)}
    average = {key: float(np.mean([r[key] for r in per_language.values()]))
               for key in ("xx2en", "en2xx", "mean")}
    return {"task": "tatoeba", "model": embedder.name, "languages": langs,
            "n_languages": len(langs), "per_language": per_language, "average": average,
            "unit": "accuracy (%)"}


def format_table(result: dict) -> str:
    """A plain-text table: one row per language and the average."""
    lines = [f"Tatoeba accuracy (%) of {result['model']}",
             f"{'lang':<8}{'xx->en':>8}{'en->xx':>8}{'mean':>8}{'n':>7}"]
    for lang, r in result["per_language"].items():
        lines.append(f"{lang:<8}{r['xx2en']:>8.2f}{r['en2xx']:>8.2f}{r['mean']:>8.2f}"
                     f"{r['n']:>7d}")
    a = result["average"]
    lines.append(f"{'average':<8}{a['xx2en']:>8.2f}{a['en2xx']:>8.2f}{a['mean']:>8.2f}"
                 f"{result['n_languages']:>7d}")
    return "\n".join(lines)


def save(result: dict, path: Optional[str] = None, plot: Optional[str] = None) -> None:
    """Writes the result as JSON and/or a per-language bar chart (PNG), on any
    tf.io.gfile path."""
    if path:
        from lealla_tf import fileio
        fileio.atomic_write(path, json.dumps(result, indent=1))
    if plot:
        from lealla_tf.evaluation import plots
        plots.bar_chart({l: r["mean"] for l, r in result["per_language"].items()}, plot,
                        title=f"Tatoeba accuracy, mean of both directions ({result['model']})",
                        average=result["average"]["mean"])
