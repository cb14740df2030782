"""A tiny synthetic parallel corpus made on the spot, for tests that need no data root.

English sentences are drawn from a small word list; each "language" is a deterministic
word-by-word rewriting of English in its own script (Latin, Cyrillic, Greek), so the pairs
are real translations of each other at the word level and a model can learn them.

Example::

    from support import hermetic
    files = hermetic.write_corpus(tmp_dir)   # [".../deu-eng.tsv", ".../ell-eng.tsv", ...]
"""

from __future__ import annotations

import os
import random
from typing import Dict, List, Sequence

WORDS = (
    "the a dog cat house tree water fire city river mountain book school teacher child "
    "friend mother father road car train bread apple green red blue small big old new "
    "happy quick slow cold warm sees reads eats likes finds takes gives walks runs sleeps "
    "today tomorrow yesterday here there always never often with without under over near "
    "music song letter window door table chair garden flower bird fish morning evening"
).split()

_CYRILLIC = dict(zip("abcdefghijklmnopqrstuvwxyz", "абцдефгхийклмнопкрстуввкыз"))
_GREEK = dict(zip("abcdefghijklmnopqrstuvwxyz", "αβψδεφγηιξκλμνοπκρστθωςχυζ"))

LANGUAGES = ("deu", "fra", "rus", "ell")


def _rewrite(word: str, lang: str) -> str:
    if lang == "deu":
        return word[::-1] + "en"
    if lang == "fra":
        return "le" + word + "e"
    table = _CYRILLIC if lang == "rus" else _GREEK
    return "".join(table.get(c, c) for c in word) + ("ов" if lang == "rus" else "ος")


def translate(sentence: str, lang: str) -> str:
    """The synthetic translation of an English sentence into ``lang``."""
    return " ".join(_rewrite(w, lang) for w in sentence.split())


def english_sentences(n: int, seed: int = 0) -> List[str]:
    """``n`` distinct English sentences of 3 to 9 words."""
    rng = random.Random(seed)
    out: Dict[str, None] = {}
    while len(out) < n:
        out[" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))).capitalize() + "."] = None
    return list(out)


def write_corpus(directory: str, languages: Sequence[str] = LANGUAGES, pairs: int = 300,
                 seed: int = 0) -> List[str]:
    """Writes ``xxx-eng.tsv`` files (``foreign<TAB>English``) into ``directory``.

    Args:
      directory: output folder (created).
      languages: codes from :data:`LANGUAGES`.
      pairs: pairs per language.
      seed: sampling seed (each language gets its own sentences).

    Returns:
      the file paths, sorted.
    """
    os.makedirs(directory, exist_ok=True)
    paths = []
    for i, lang in enumerate(languages):
        if lang not in LANGUAGES:
            raise ValueError(f"unknown synthetic language {lang!r}; have {LANGUAGES}")
        path = os.path.join(directory, f"{lang}-eng.tsv")
        with open(path, "w", encoding="utf-8") as f:
            for en in english_sentences(pairs, seed + 1000 * i):
                f.write(f"{translate(en, lang)}\t{en}\n")
        paths.append(path)
    return sorted(paths)


def byte_count_teacher(dim: int = 16, name: str = "bytes"):
    """A deterministic string-in teacher: UTF-8 byte counts times a fixed random map."""
    import numpy as np

    from lealla_tf.embedders import teachers
    proj = np.random.default_rng(0).normal(size=(256, dim))

    def fn(sentences):
        counts = np.zeros((len(sentences), 256))
        for i, s in enumerate(sentences):
            for b in s.encode("utf-8"):
                counts[i, b] += 1
        return counts @ proj
    return teachers.CallableTeacher(fn, name=name, dim=dim)


def serve_directory(directory: str):
    """A context manager serving ``directory`` over HTTP on 127.0.0.1; yields the base URL."""
    import contextlib
    import functools
    import http.server
    import threading

    class _Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    @contextlib.contextmanager
    def serve():
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(_Quiet, directory=directory))
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)
    return serve()


def byte_counts(sentences):
    """:func:`byte_count_teacher`'s embeddings from a plain function (``py:`` specs)."""
    return byte_count_teacher().encode(list(sentences))
