"""xx <-> English retrieval over aligned sentences: NTREX-128 and held-out TSV pairs.

Languages are Tatoeba codes; :data:`NTREX_CODES` maps those whose NTREX file is named
differently::

    from lealla_tf.evaluation import pairs
    res = pairs.evaluate_ntrex_retrieval(model, "data", ["deu", "cmn"])

See docs/evaluation.md, "NTREX-128 retrieval".
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from lealla_tf import corpus
from lealla_tf.evaluation import bucc, runner, tatoeba

# Tatoeba (or training-file) code -> NTREX-128 file code, where they differ. Where NTREX
# has two scripts, the one most of the Tatoeba test set and of the training pairs use
# (Serbian: 70% and 80% Latin).
NTREX_CODES = {"ara": "arb", "aze": "aze-Latn", "cmn": "zho_Hans", "cmn_Hans": "zho_Hans",
               "cmn_Hant": "zho_Hant", "kur": "kmr", "lvs": "lav", "pes": "fas",
               "srp": "srp-Latn", "srp_Cyrl": "srp-Cyrl", "srp_Latn": "srp-Latn",
               "swh": "swa", "tgl": "fil", "zsm": "msa"}


def _ntrex_path(root: str, lang: str) -> str:
    return os.path.join(bucc.ntrex_dir(root),
                        f"newstest2019-ref.{NTREX_CODES.get(lang, lang)}.txt")


def ntrex_file(root: str, lang: str) -> str:
    """The NTREX-128 reference file of a Tatoeba language code (or an NTREX code)."""
    path = _ntrex_path(root, lang)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no NTREX-128 file for {lang!r} ({path})")
    return path


def languages_in_ntrex(root: str, languages: Sequence[str]) -> List[str]:
    """Those of ``languages`` (Tatoeba or training-file codes) that NTREX-128 has, in order."""
    return [lang for lang in languages if os.path.isfile(_ntrex_path(root, lang))]


def _score(x: np.ndarray, y: np.ndarray, n: int) -> dict:
    xx2en, en2xx = tatoeba.accuracy(np.asarray(x), np.asarray(y))
    return {"xx2en": xx2en, "en2xx": en2xx, "mean": (xx2en + en2xx) / 2, "n": n}


def _average(per_language: Dict[str, dict]) -> dict:
    return {k: float(np.mean([r[k] for r in per_language.values()]))
            for k in ("xx2en", "en2xx", "mean")}


def evaluate_ntrex_retrieval(model, root: str, languages: Sequence[str],
                             batch_size: int = runner.DEFAULT_BATCH_SIZE,
                             cache: Optional[str] = None, use_cache: bool = True,
                             progress: bool = True) -> dict:
    """NTREX-128 retrieval accuracy (percent) of ``model`` for each language against English
    (the BUCC-style mining benchmark on NTREX is :func:`lealla_tf.evaluation.bucc.evaluate_ntrex`).

    Args:
      model: an embedder (``encode`` + ``name``) or a callable ``list[str] -> [N, D]``.
      root: data root holding ``ntrex/NTREX-128`` (or that folder itself).
      languages: Tatoeba codes (or NTREX codes).
      batch_size, cache, use_cache: as in :func:`runner.embed_file`.
      progress: show a progress bar over the languages.

    Returns:
      ``{"task": "ntrex-retrieval", "per_language": {lang: {xx2en, en2xx, mean, n}},
      "average": {...}}``.
    """
    from tqdm.auto import tqdm

    embedder = runner.as_embedder(model)
    english = os.path.join(bucc.ntrex_dir(root), bucc.NTREX_ENGLISH)
    y = runner.embed_file(embedder, english, batch_size, cache=cache, use_cache=use_cache,
                          progress=False)
    per_language = {}
    for lang in tqdm(list(languages), desc="ntrex", disable=not progress):
        path = ntrex_file(root, lang)
        x = runner.embed_file(embedder, path, batch_size, cache=cache, use_cache=use_cache,
                              progress=False)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{path} has {x.shape[0]} lines, {english} {y.shape[0]}")
        per_language[lang] = _score(x, y, x.shape[0])
    return {"task": "ntrex-retrieval", "model": embedder.name, "languages": list(languages),
            "per_language": per_language, "average": _average(per_language),
            "unit": "accuracy (%)"}


def evaluate_pair_files(model, files: Sequence[str], batch_size: int = runner.DEFAULT_BATCH_SIZE,
                        cache: Optional[str] = None, use_cache: bool = True) -> dict:
    """Retrieval accuracy (percent) within each ``xxx-eng.tsv`` file of aligned pairs.

    Each file is one pool: every foreign sentence is looked up among the file's English
    sentences and back. Malformed lines are skipped as in training.

    Returns:
      ``{"per_language": {lang: {...}}, "average": {...}}`` (languages from file names).
    """
    embedder = runner.as_embedder(model)
    per_language = {}
    for path in files:
        rows = [(s, t) for _, s, t in corpus.iter_tsv(path)]
        if not rows:
            raise ValueError(f"no pairs in {path}")
        src, tgt = zip(*rows)
        x = runner.embed_texts(embedder, src, batch_size, cache=cache, use_cache=use_cache,
                               progress=False)
        y = runner.embed_texts(embedder, tgt, batch_size, cache=cache, use_cache=use_cache,
                               progress=False)
        per_language[corpus.language_of(path)] = _score(x, y, len(rows))
    return {"task": "pair-retrieval", "model": embedder.name, "per_language": per_language,
            "average": _average(per_language), "unit": "accuracy (%)"}
