"""Unknown-token rates of a vocabulary on the Tatoeba test sets (``lealla eval
vocab-coverage``).

For each Tatoeba language, the foreign side is tokenized by the vocabulary (a
SentencePiece ``spm.model`` or a WordPiece ``vocab.txt``, counted by
:mod:`lealla_tf.text.coverage`), and the language is marked by whether the training data
has pairs for it: a language with pairs should have at most 1% unknown pieces::

    from lealla_tf.evaluation import vocab_coverage
    res = vocab_coverage.tatoeba_unknown_rates("runs/x/vocab/spm.model", "/data")
    print(vocab_coverage.format_table(res))

See docs/evaluation.md, "Vocabulary coverage".
"""

from __future__ import annotations

import os
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

from lealla_tf import corpus
from lealla_tf.evaluation import groups, tatoeba
from lealla_tf.text import coverage
from lealla_tf.text.coverage import format_table as format_table  # what callers print

TRAIN_PATTERN = "*-eng.tsv"


def training_languages(train: Union[str, Sequence[str]]) -> Dict[str, int]:
    """Language -> lines of the ``xxx-eng.tsv`` files that hold its pairs: a folder of
    them, a glob pattern, or a list of files.

    A file counts for the Tatoeba languages it gives pairs for, by the rule of the language
    groups (:func:`lealla_tf.evaluation.groups.tatoeba_codes`: ``cmn_Hans`` -> ``cmn``,
    ``swa`` -> ``swh``, ``lav`` -> ``lvs``, ``zho`` -> ``cmn`` only: its pairs are Mandarin),
    any other for its base code (``chv``).

    Raises:
      FileNotFoundError: no such folder, or no file matches.
    """
    if isinstance(train, str):
        if os.path.isdir(train):
            patterns = [os.path.join(train, TRAIN_PATTERN)]
        elif os.path.exists(train) or any(c in train for c in "*?["):
            patterns = [train]
        else:
            raise FileNotFoundError(f"training data not found: {train}")
    else:
        patterns = list(train)
    out: Dict[str, int] = {}
    for path in corpus.find_files(patterns):
        name = corpus.language_of(path)
        lines = corpus.count_lines(path)
        for lang in groups.tatoeba_codes(name):
            out[lang] = out.get(lang, 0) + lines
    return out


def default_train_dir(data_dir: str) -> Optional[str]:
    """``<data root>/train`` when ``data_dir`` is a data root that has one (else None)."""
    path = os.path.join(data_dir, "train")
    return path if os.path.isdir(path) else None


def tatoeba_sentences(data_dir: str, languages: Union[str, Sequence[str]] = "all"
                      ) -> Dict[str, List[str]]:
    """Language -> the foreign side of its Tatoeba test set.

    Args:
      data_dir: a folder of ``tatoeba.*`` files, or a data root with ``tatoeba/v1``.
      languages: see :func:`lealla_tf.evaluation.tatoeba.resolve_languages`.

    Raises:
      FileNotFoundError: no Tatoeba files, or a language's file is missing.
      ValueError: an unknown language code.
    """
    folder = tatoeba.find_local_dir(data_dir)
    return {lang: tatoeba.load_pair(lang, folder)[0]
            for lang in tatoeba.resolve_languages(languages)}


def tatoeba_unknown_rates(vocab_path: str, data_dir: str,
                          languages: Union[str, Sequence[str]] = "all",
                          vocab_type: Optional[str] = None, do_lower_case: bool = False,
                          train_languages: Optional[Union[str, Iterable[str],
                                                          Mapping[str, int]]] = None,
                          max_rate: float = coverage.DEFAULT_MAX_RATE) -> dict:
    """Tokens and unknown tokens of a vocabulary on each Tatoeba language's foreign side.

    Args:
      vocab_path: an ``spm.model`` or a ``vocab.txt`` (or a folder holding one).
      data_dir: a folder of ``tatoeba.*`` files, or a data root with ``tatoeba/v1``.
      languages: ``all`` (112), ``xtreme36``, comma-separated codes or a list.
      vocab_type: ``sentencepiece`` | ``wordpiece``; None: ``.model`` is SentencePiece,
        ``.txt`` WordPiece.
      do_lower_case: WordPiece only: the model's BERT lower-casing flag.
      train_languages: which languages have training pairs: a folder (or glob, or list of
        files) of ``xxx-eng.tsv`` files (pairs counted per base language), codes, or code
        -> pairs. None: ``<data_dir>/train`` when ``data_dir`` is a data root that has
        one, else not known.
      max_rate: the rate (percent) no language with pairs should exceed.

    Returns:
      :func:`lealla_tf.text.coverage.unknown_rates`' result, plus ``"data_dir"`` (the
      Tatoeba folder read) and ``"train"`` (where the training languages came from).

    Raises:
      FileNotFoundError, ValueError: missing files, unknown languages, a bad vocabulary.
    """
    source: Optional[str] = None
    if train_languages is None:
        source = default_train_dir(data_dir)
        train_languages = training_languages(source) if source else None
    elif isinstance(train_languages, str):
        source = train_languages
        train_languages = training_languages(train_languages)
    elif not isinstance(train_languages, Mapping):
        train_languages = list(train_languages)
    sentences = tatoeba_sentences(data_dir, languages)
    result = coverage.unknown_rates(vocab_path, sentences, vocab_type=vocab_type,
                                    do_lower_case=do_lower_case,
                                    train_languages=train_languages, max_rate=max_rate)
    result["data_dir"] = tatoeba.find_local_dir(data_dir)
    result["train"] = source
    return result
