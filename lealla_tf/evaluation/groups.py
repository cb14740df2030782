"""Evaluation languages in three groups, and the tables that report them (no TensorFlow).

A distilled student is judged against its teacher on three kinds of language: those the
teacher covers (``teacher.languages``), the other languages that have training pairs (the
student saw them, the teacher's targets for them are weaker), and those without any
training pairs (zero-shot)::

    from lealla_tf.evaluation import groups
    g = groups.language_groups(["deu", "afr", "amh"], ["deu", "fra"],
                               ["train/deu-eng.tsv", "train/afr-eng.tsv"])
    # {"teacher": ["deu"], "other_pairs": ["afr"], "no_pairs": ["amh"]}
    groups.group_averages({"deu": 90.0, "afr": 60.0, "amh": 10.0}, g)
    # {"teacher": 90.0, "other_pairs": 60.0, "no_pairs": 10.0, "all": 53.3...}

Training files are named like ``cmn_Hans-eng.tsv`` (:func:`lealla_tf.corpus.language_of`);
:func:`tatoeba_codes` maps such a code to the Tatoeba codes it gives pairs for.
See docs/evaluation.md, "Language groups".
"""

from __future__ import annotations

import collections
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from lealla_tf import config, corpus

#: The groups, in report order.
GROUPS: Tuple[str, ...] = ("teacher", "other_pairs", "no_pairs")
#: The key of the average over every language of every group.
ALL = "all"
TITLES = {"teacher": "the teacher's languages", "other_pairs": "other languages with pairs",
          "no_pairs": "languages without pairs", ALL: "all languages"}

#: Training-file base codes (before any ``_``) that Tatoeba v1 names otherwise: the
#: macro-languages of ``train/`` and the individual languages of their Tatoeba test sets
#: (the rule that derived ``train/``, data/README.md), except ``zho``, whose pairs are
#: Mandarin: it gives ``cmn`` only, not ``yue`` or ``wuu``.
TATOEBA_CODES: Dict[str, Tuple[str, ...]] = {
    "fas": ("pes",), "lav": ("lvs",), "swa": ("swh",), "msa": ("zsm", "ind"),
    "nor": ("nob", "nno"), "hbs": ("hrv", "bos", "srp"), "zho": ("cmn",)}


def tatoeba_codes(code: str) -> Tuple[str, ...]:
    """The Tatoeba codes a training-file language gives pairs for (``cmn_Hant`` -> ``cmn``,
    ``fas`` -> ``pes``, ``nor`` -> ``nob, nno``); a code Tatoeba lacks maps to itself."""
    base = code.split("_")[0]
    return TATOEBA_CODES.get(base, (base,))


def trained_languages(train_files: Sequence[str]) -> List[str]:
    """The languages of ``train_files`` as Tatoeba codes (:func:`tatoeba_codes`), each once,
    in file order; languages Tatoeba lacks keep their training-file code (``mya``)."""
    out: Dict[str, None] = {}
    for path in train_files:
        for code in tatoeba_codes(corpus.language_of(path)):
            out.setdefault(code)
    return list(out)


def language_groups(eval_languages: Sequence[str], teacher_languages: Sequence[str],
                    train_files: Sequence[str]) -> "collections.OrderedDict[str, List[str]]":
    """Splits ``eval_languages`` (Tatoeba codes) into :data:`GROUPS`, keeping their order.

    Args:
      eval_languages: the evaluated languages.
      teacher_languages: the languages the teacher covers, named like the training files
        (``teacher.languages``: ``cmn``, ``cmn_Hans``, ``fas``); ``["all"]``: every language.
      train_files: the training files (``xxx-eng.tsv``; only their names are read).

    Returns:
      ``{"teacher": [...], "other_pairs": [...], "no_pairs": [...]}``: the languages the
      teacher covers; the other languages with training pairs; the rest. Every group is
      present, possibly empty.
    """
    covers_all = config.ALL_LANGUAGES in teacher_languages
    covered = {t for code in teacher_languages for t in tatoeba_codes(code)}
    trained = set(trained_languages(train_files))
    out: "collections.OrderedDict[str, List[str]]" = collections.OrderedDict(
        (g, []) for g in GROUPS)
    for lang in dict.fromkeys(eval_languages):
        if covers_all or lang in covered:
            out["teacher"].append(lang)
        elif lang in trained:
            out["other_pairs"].append(lang)
        else:
            out["no_pairs"].append(lang)
    return out


def _mean(values: Sequence[float]) -> Optional[float]:
    return float(sum(values) / len(values)) if values else None


def group_averages(scores: Mapping[str, float], groups: Mapping[str, Sequence[str]]
                   ) -> "collections.OrderedDict[str, Optional[float]]":
    """The mean of ``scores`` (language -> value) over each group, then over all of the
    groups' languages (key :data:`ALL`); None for an empty group, and for a group some of
    whose languages ``scores`` lacks (a model evaluated on fewer languages)."""
    def mean(langs):
        return None if any(lang not in scores for lang in langs) else _mean(
            [scores[lang] for lang in langs])

    out: "collections.OrderedDict[str, Optional[float]]" = collections.OrderedDict(
        (g, mean(langs)) for g, langs in groups.items())
    out[ALL] = mean([lang for langs in groups.values() for lang in langs])
    return out


def retention(model: Mapping[str, Optional[float]], teacher: Mapping[str, Optional[float]]
              ) -> "collections.OrderedDict[str, Optional[float]]":
    """``model / teacher`` per key of two :func:`group_averages` (None where either is None
    or the teacher scores 0)."""
    return collections.OrderedDict(
        (g, model[g] / teacher[g] if model.get(g) is not None and teacher.get(g) else None)
        for g in teacher)


def _cell(value: Optional[float], percent: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}%" if percent else f"{value:.1f}"


def summary_table(scores: Mapping[str, Mapping[str, float]],
                  groups: Mapping[str, Sequence[str]], teacher: str = "teacher",
                  all_title: Optional[str] = None) -> str:
    """A Markdown table: one row per non-empty group and one for all languages; a column
    per model (``scores``: model -> language -> value), then each other model's retention
    of ``teacher``'s score (when ``teacher`` is one of the models).

    Args:
      scores: model -> language -> score (a model without some languages of a group gets
        "–" there).
      groups: group -> languages (:func:`language_groups`).
      teacher: the model others are compared with.
      all_title: the last row's title (default: ``all N languages``).
    """
    names = list(scores)
    others = [n for n in names if n != teacher] if teacher in scores else []
    averages = {n: group_averages(scores[n], groups) for n in names}
    head = (["languages", "n"] + names + [f"{n}/{teacher}" for n in others])
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    n_all = sum(len(v) for v in groups.values())
    rows = [(g, TITLES.get(g, g), len(langs)) for g, langs in groups.items() if langs]
    rows.append((ALL, all_title or f"all {n_all} languages", n_all))
    for key, title, n in rows:
        bold = key == ALL
        cells = [_cell(averages[m][key]) for m in names]
        cells += [_cell(retention(averages[m], averages[teacher])[key], percent=True)
                  for m in others]
        if bold:
            cells = [f"**{c}**" for c in cells]
            title = f"**{title}**"
        lines.append(f"| {title} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def language_table(scores: Mapping[str, Mapping[str, float]],
                   groups: Mapping[str, Sequence[str]], teacher: str = "teacher",
                   student: str = "student") -> str:
    """A Markdown table with a row per language, group by group: the group, each model's
    score (``scores``: model -> language -> value) and ``student``/``teacher``."""
    names = list(scores)
    ratio = teacher in scores and student in scores
    head = ["language", "group"] + names + ([f"{student}/{teacher}"] if ratio else [])
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for g, langs in groups.items():
        for lang in langs:
            cells = [_cell(scores[m].get(lang)) for m in names]
            if ratio:
                t, v = scores[teacher].get(lang), scores[student].get(lang)
                cells.append(_cell(v / t if t and v is not None else None, percent=True))
            lines.append(f"| {lang} | {g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
