"""BUCC-style bitext mining evaluation, on BUCC 2018 files or a benchmark built from NTREX-128.

:func:`evaluate_files` scores as XTREME does (mine, map sentences back to ids, F1 at the best
threshold); :func:`build_ntrex` hides one language's true pairs among other lines::

    from lealla_tf.evaluation import bucc
    files = bucc.build_ntrex("data", "deu", "ntrex-bucc", n_pairs=400)
    res = bucc.evaluate_files(model, files["src"], files["tgt"], files["gold"])

See docs/evaluation.md, "BUCC-style mining".
"""

from __future__ import annotations

import collections
import os
import random
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from lealla_tf import corpus, fileio
from lealla_tf.evaluation import mining, retrieval, runner

BUCC_LANGUAGES = ("de", "fr", "ru", "zh")
NTREX_ENGLISH = "newstest2019-src.eng.txt"
# LANGUAGES.tsv spells these codes differently from the file names.
_NTREX_ALIASES = {"zho-CN": "zho_Hans", "zho-TW": "zho_Hant"}


# ----------------------------------------------------------------------------- readers


def read_sentences(path: str) -> Tuple[List[str], List[str]]:
    """Reads a BUCC sentence file (``id<TAB>sentence``).

    Malformed lines (no tab, empty field, invalid UTF-8) are skipped, as
    ``corpus.iter_tsv`` does everywhere in the project.

    Returns:
      ``(ids, sentences)``.

    Raises:
      FileNotFoundError: naming the file; ValueError if no line is well formed or an
      id repeats.
    """
    stats = corpus.Stats()
    ids, sents = [], []
    for _, i, s in corpus.iter_tsv(path, stats):
        ids.append(i)
        sents.append(s)
    if not ids:
        raise ValueError(f"{path}: no 'id<TAB>sentence' lines found ({dict(stats)})")
    if len(set(ids)) != len(ids):
        dup = [i for i, c in collections.Counter(ids).items() if c > 1][:3]
        raise ValueError(f"{path}: repeated sentence ids, e.g. {', '.join(dup)}")
    return ids, sents


def read_gold(path: str) -> Set[Tuple[str, str]]:
    """Reads a BUCC gold file (``xx-id<TAB>en-id``) into a set of id pairs.

    Raises:
      FileNotFoundError: naming the file; ValueError if it holds no pairs.
    """
    stats = corpus.Stats()
    gold = {(a, b) for _, a, b in corpus.iter_tsv(path, stats)}
    if not gold:
        raise ValueError(f"{path}: no 'src-id<TAB>tgt-id' lines found ({dict(stats)})")
    return gold


def write_sentences(path: str, ids: Sequence[str], sentences: Sequence[str]) -> None:
    """Writes ``id<TAB>sentence`` lines (any tf.io.gfile path, atomically)."""
    fileio.atomic_write(path, "".join(f"{i}\t{s}\n" for i, s in zip(ids, sentences)))


def write_pairs(path: str, pairs: Sequence[Tuple[str, str]]) -> None:
    """Writes ``src-id<TAB>tgt-id`` lines (gold or predictions; any tf.io.gfile path)."""
    fileio.atomic_write(path, "".join(f"{a}\t{b}\n" for a, b in pairs))


def find_files(data_dir: str, lang: str, split: str = "training") -> Dict[str, str]:
    """Locates ``{lang}-en.{split}.{lang|en|gold}`` in ``data_dir`` or ``data_dir/{lang}-en``.

    Raises:
      FileNotFoundError: naming what was looked for.
    """
    stem = f"{lang}-en.{split}"
    for folder in (data_dir, os.path.join(data_dir, f"{lang}-en"),
                   os.path.join(data_dir, "bucc2018", f"{lang}-en"),
                   os.path.join(data_dir, "bucc2018")):
        src = os.path.join(folder, f"{stem}.{lang}")
        if os.path.isfile(src):
            files = {"src": src, "tgt": os.path.join(folder, f"{stem}.en"),
                     "gold": os.path.join(folder, f"{stem}.gold")}
            if not os.path.isfile(files["tgt"]):
                raise FileNotFoundError(f"BUCC file not found: {files['tgt']}")
            if not os.path.isfile(files["gold"]):
                files["gold"] = ""
            return files
    raise FileNotFoundError(f"BUCC files {stem}.{{{lang},en,gold}} not found under {data_dir}")


# ----------------------------------------------------------------------------- mining


def _unique(ids: Sequence[str], sents: Sequence[str]) -> Tuple[List[str], List[Optional[str]]]:
    """Unique sentences (first-occurrence order) and the id of each, None if ambiguous."""
    by_sent: Dict[str, List[str]] = collections.OrderedDict()
    for i, s in zip(ids, sents):
        by_sent.setdefault(s, []).append(i)
    uniq = list(by_sent)
    return uniq, [v[0] if len(v) == 1 else None for v in by_sent.values()]


def mine_ids(model, src_ids: Sequence[str], src_sents: Sequence[str],
             tgt_ids: Sequence[str], tgt_sents: Sequence[str], k: int = 4,
             margin: str = "ratio", retrieval_mode: str = "max",
             batch_size: int = runner.DEFAULT_BATCH_SIZE, cache: Optional[str] = None,
             use_cache: bool = True, progress: bool = True,
             max_memory_bytes: int = retrieval.DEFAULT_MEMORY_BYTES, index=None
             ) -> List[Tuple[str, str, float]]:
    """Mines candidate id pairs, best first (no threshold applied).

    Returns:
      ``[(src_id, tgt_id, score)]`` for every mined pair whose sentences map to one id.
    """
    embedder = runner.as_embedder(model)
    su, sid = _unique(src_ids, src_sents)
    tu, tid = _unique(tgt_ids, tgt_sents)
    x = runner.embed_texts(embedder, su, batch_size, cache, use_cache, progress, "source")
    y = runner.embed_texts(embedder, tu, batch_size, cache, use_cache, progress, "target")
    pairs = mining.mine(x, y, k=k, margin=margin, retrieval_mode=retrieval_mode,
                        max_memory_bytes=max_memory_bytes, progress=progress, index=index)
    out = []
    for s, t, score in zip(pairs.src.tolist(), pairs.tgt.tolist(), pairs.scores.tolist()):
        if sid[s] is not None and tid[t] is not None:
            out.append((sid[s], tid[t], float(score)))
    return out


def score_candidates(candidates: Sequence[Tuple[str, str, float]], gold: Set[Tuple[str, str]],
                     threshold: Optional[float] = None) -> mining.PRF:
    """Precision/recall/F1 of candidates against gold: at ``threshold`` (extract
    ``score >= threshold``), or at the F1-optimal threshold when None."""
    scores = np.asarray([c[2] for c in candidates], dtype=np.float64)
    correct = np.asarray([(c[0], c[1]) in gold for c in candidates], dtype=bool)
    if threshold is None:
        return mining.best_f1_threshold(scores, correct, len(gold))
    keep = scores >= threshold
    return mining.prf(int(correct[keep].sum()), int(keep.sum()), len(gold), threshold)


def evaluate_files(model, src_file: str, tgt_file: str, gold_file: str,
                   threshold: Optional[float] = None, k: int = 4, margin: str = "ratio",
                   retrieval_mode: str = "max", predictions: Optional[str] = None,
                   **kwargs) -> dict:
    """BUCC evaluation of a model on one language pair.

    Args:
      model: embedder or callable.
      src_file, tgt_file: ``id<TAB>sentence`` files.
      gold_file: ``src-id<TAB>tgt-id`` file.
      threshold: fixed margin threshold; None searches the F1-optimal one.
      k, margin, retrieval_mode: mining settings (see :func:`mining.mine`).
      predictions: optional file to write the extracted id pairs to.
      **kwargs: ``batch_size``, ``cache``, ``use_cache``, ``progress``,
        ``max_memory_bytes``, ``index`` (see :func:`mining.neighbourhoods`).

    Returns:
      JSON-able dict with ``precision``, ``recall``, ``f1`` (percent), ``threshold``
      and counts.
    """
    embedder = runner.as_embedder(model)
    src_ids, src_sents = read_sentences(src_file)
    tgt_ids, tgt_sents = read_sentences(tgt_file)
    gold = read_gold(gold_file)
    cands = mine_ids(embedder, src_ids, src_sents, tgt_ids, tgt_sents, k, margin,
                     retrieval_mode, **kwargs)
    res = score_candidates(cands, gold, threshold)
    if predictions:
        write_pairs(predictions, [(a, b) for a, b, s in cands if s >= res.threshold])
    return {"task": "bucc", "model": embedder.name, "src": os.path.abspath(src_file),
            "tgt": os.path.abspath(tgt_file), "threshold": res.threshold,
            "threshold_searched": threshold is None,
            "precision": 100 * res.precision, "recall": 100 * res.recall, "f1": 100 * res.f1,
            "extracted": res.extracted, "correct": res.correct, "gold": res.gold,
            "candidates": len(cands), "src_sentences": len(src_ids),
            "tgt_sentences": len(tgt_ids), "k": k, "margin": margin,
            "retrieval": retrieval_mode,
            "index": getattr(kwargs.get("index"), "kind", None) or "exact"}


# ----------------------------------------------------------------------------- NTREX


def ntrex_dir(root: str) -> str:
    """The folder with ``newstest2019-*.txt``: ``root``, ``root/NTREX-128`` or
    ``root/ntrex/NTREX-128``."""
    for cand in (root, os.path.join(root, "NTREX-128"), os.path.join(root, "ntrex", "NTREX-128")):
        if os.path.isfile(os.path.join(cand, NTREX_ENGLISH)):
            return cand
    raise FileNotFoundError(f"NTREX-128 files ({NTREX_ENGLISH}) not found in {root}, "
                            f"{root}/NTREX-128 or {root}/ntrex/NTREX-128")


def ntrex_languages(root: str) -> Dict[str, str]:
    """Code -> language name of every NTREX reference file (names from LANGUAGES.tsv)."""
    folder = ntrex_dir(root)
    names: Dict[str, str] = {}
    tsv = os.path.join(os.path.dirname(folder), "LANGUAGES.tsv")
    if not os.path.isfile(tsv):
        tsv = os.path.join(folder, "LANGUAGES.tsv")
    if os.path.isfile(tsv):
        with open(tsv, encoding="utf-8") as f:
            for line in f:
                parts = line.strip().split(None, 1)
                if len(parts) == 2:
                    names[_NTREX_ALIASES.get(parts[0], parts[0])] = parts[1]
    out = {}
    for fname in sorted(os.listdir(folder)):
        if fname.startswith("newstest2019-ref.") and fname.endswith(".txt"):
            code = fname[len("newstest2019-ref."):-len(".txt")]
            out[code] = names.get(code, code)
    return out


def build_ntrex(root: str, lang: str, output_dir: str, n_pairs: int = 400, seed: int = 0,
                n_src_distractors: Optional[int] = None,
                n_tgt_distractors: Optional[int] = None) -> Dict[str, str]:
    """Writes a BUCC-style task for one NTREX language (``lang`` against English).

    Lines whose sentence is empty or repeated on either side are left out (a repeated
    sentence would make the gold ambiguous). From the rest, ``n_pairs`` lines are the
    hidden pairs; the remaining lines are split into source-only and target-only
    distractors (by default half and half), so the only translations across the two
    files are the gold pairs. Each side is shuffled and numbered BUCC-style
    (``deu-000000001``, ``en-000000001``).

    Args:
      root: NTREX folder (data root, ``ntrex/`` or ``ntrex/NTREX-128``).
      lang: NTREX code (e.g. ``deu``, ``fra``, ``zho_Hans``); see :func:`ntrex_languages`.
      output_dir: where ``{lang}-en.ntrex.{lang,en,gold}`` are written.
      n_pairs: number of hidden pairs.
      seed: sampling seed.
      n_src_distractors, n_tgt_distractors: distractor counts (default: split the rest).

    Returns:
      ``{"src", "tgt", "gold"}`` file paths.
    """
    folder = ntrex_dir(root)
    path = os.path.join(folder, f"newstest2019-ref.{_NTREX_ALIASES.get(lang, lang)}.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no NTREX file for language {lang!r} ({path}); available: "
            f"{', '.join(list(ntrex_languages(root))[:12])}, ...")
    foreign = runner.read_lines(path)
    english = runner.read_lines(os.path.join(folder, NTREX_ENGLISH))
    if len(foreign) != len(english):
        raise ValueError(f"{path} has {len(foreign)} lines, English has {len(english)}")
    fcount = collections.Counter(s.strip() for s in foreign)
    ecount = collections.Counter(s.strip() for s in english)
    usable = [i for i, (f, e) in enumerate(zip(foreign, english))
              if f.strip() and e.strip() and fcount[f.strip()] == 1 and ecount[e.strip()] == 1]
    rest = len(usable) - n_pairs
    if n_pairs <= 0 or rest < 0:
        raise ValueError(f"n_pairs must be in [1, {len(usable)}] for {lang}, got {n_pairs}")
    n_src = rest // 2 if n_src_distractors is None else n_src_distractors
    n_tgt = rest - n_src if n_tgt_distractors is None else n_tgt_distractors
    if n_src < 0 or n_tgt < 0 or n_src + n_tgt > rest:
        raise ValueError(f"{n_src} + {n_tgt} distractors exceed the {rest} lines left "
                         f"after {n_pairs} pairs in {lang}")
    rng = random.Random(seed)
    rng.shuffle(usable)
    pairs = usable[:n_pairs]
    src_only = usable[n_pairs:n_pairs + n_src]
    tgt_only = usable[n_pairs + n_src:n_pairs + n_src + n_tgt]
    src_lines = pairs + src_only
    tgt_lines = pairs + tgt_only
    rng.shuffle(src_lines)
    rng.shuffle(tgt_lines)
    src_id = {line: f"{lang}-{n + 1:09d}" for n, line in enumerate(src_lines)}
    tgt_id = {line: f"en-{n + 1:09d}" for n, line in enumerate(tgt_lines)}
    stem = os.path.join(output_dir, f"{lang}-en.ntrex")
    files = {"src": f"{stem}.{lang}", "tgt": f"{stem}.en", "gold": f"{stem}.gold"}
    write_sentences(files["src"], [src_id[l] for l in src_lines],
                    [foreign[l].strip().replace("\t", " ") for l in src_lines])
    write_sentences(files["tgt"], [tgt_id[l] for l in tgt_lines],
                    [english[l].strip().replace("\t", " ") for l in tgt_lines])
    write_pairs(files["gold"], sorted((src_id[l], tgt_id[l]) for l in pairs))
    return files


def evaluate_ntrex(model, root: str, languages: Sequence[str], output_dir: str,
                   n_pairs: int = 400, seed: int = 0, **kwargs) -> dict:
    """NTREX BUCC-style benchmark over several languages.

    Args:
      model: embedder or callable.
      root: NTREX folder (see :func:`build_ntrex`).
      languages: NTREX codes.
      output_dir: where the built task files go.
      n_pairs, seed: see :func:`build_ntrex`.
      **kwargs: passed to :func:`evaluate_files`.

    Returns:
      ``{"per_language": {lang: result}, "average": {precision, recall, f1}}`` (percent).
    """
    embedder = runner.as_embedder(model)
    per_language = {}
    for lang in languages:
        files = build_ntrex(root, lang, output_dir, n_pairs=n_pairs, seed=seed)
        per_language[lang] = evaluate_files(embedder, files["src"], files["tgt"],
                                            files["gold"], **kwargs)
    average = {key: float(np.mean([r[key] for r in per_language.values()]))
               for key in ("precision", "recall", "f1")}
    return {"task": "ntrex-bucc", "model": embedder.name, "n_pairs": n_pairs, "seed": seed,
            "languages": list(languages), "per_language": per_language, "average": average,
            "unit": "percent"}


def format_table(result: dict) -> str:
    """Plain-text table of a BUCC or NTREX result."""
    rows = result["per_language"] if "per_language" in result else {"": result}
    lines = [f"Bitext mining ({result['task']}) of {result['model']}",
             f"{'lang':<10}{'P':>8}{'R':>8}{'F1':>8}{'thresh':>9}{'gold':>7}{'extr':>7}"]
    for lang, r in rows.items():
        lines.append(f"{lang:<10}{r['precision']:>8.2f}{r['recall']:>8.2f}{r['f1']:>8.2f}"
                     f"{r['threshold']:>9.4f}{r['gold']:>7d}{r['extracted']:>7d}")
    if "average" in result:
        a = result["average"]
        lines.append(f"{'average':<10}{a['precision']:>8.2f}{a['recall']:>8.2f}{a['f1']:>8.2f}")
    return "\n".join(lines)
