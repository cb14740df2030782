"""A vocabulary for every language: the teacher's SentencePiece model extended with pieces for
the scripts it cannot read (``vocab.extend_pieces``), checked against the teacher's own
segmentation and on the pairs of languages muse does not cover."""

import json
import os
import unicodedata

import numpy as np
import pytest
import sentencepiece as spm
import tensorflow_text as tf_text

from lealla_tf import corpus
from lealla_tf.distill import student_init

# Scripts muse has (almost) no pieces for, and two it reads.
UNCOVERED = ("khm", "mal", "kat", "hye")
COVERED = ("deu", "rus")

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def muse():
    from lealla_tf.embedders import teachers
    return teachers.load_teacher("muse")


@pytest.fixture(scope="module")
def sentences(data_dir):
    """Both sides of up to 120 pairs of each language, by language."""
    out = {}
    for lang in UNCOVERED + COVERED:
        (path,) = corpus.find_files([f"train/{lang}-eng.tsv"], data_dir)
        pairs = [(s, t) for _, s, t in corpus.iter_tsv(path)][:120]
        out[lang] = [s for p in pairs for s in p]
    return out


@pytest.fixture(scope="module")
def models(muse, sentences):
    """The teacher's model pruned to the pieces the sentences use, and that model extended."""
    every = [s for lang in sentences for s in sentences[lang]]
    pruned, ids, _ = student_init.prune_sentencepiece(muse.sentencepiece_model(), every)
    extended, stats = student_init.extend_sentencepiece(pruned, every, max_pieces=2000)
    return pruned, extended, stats


def unknown_rate(model: bytes, texts) -> float:
    sp = spm.SentencePieceProcessor(model_proto=model)
    ids = [i for t in texts for i in sp.encode(t)]
    return ids.count(sp.unk_id()) / len(ids)


def test_extension_reads_what_the_teacher_cannot(models, sentences):
    pruned, extended, stats = models
    assert stats["added_pieces"] > 0 and stats["uncovered_characters"] > 0
    for lang in UNCOVERED:
        assert unknown_rate(pruned, sentences[lang]) > 0.1, lang  # English sides too
        assert unknown_rate(extended, sentences[lang]) == 0.0, lang


def test_teacher_pieces_and_their_segmentation_are_kept(models, sentences):
    pruned, extended, stats = models
    old = student_init.model_proto(pruned).pieces
    new = student_init.model_proto(extended).pieces
    assert len(new) == len(old) + stats["added_pieces"]
    assert [(p.piece, p.score, p.type) for p in new[:len(old)]] == [
        (p.piece, p.score, p.type) for p in old]
    before = spm.SentencePieceProcessor(model_proto=pruned)
    after = spm.SentencePieceProcessor(model_proto=extended)
    # Every added piece holds a character the teacher's model cannot read ...
    unreadable = lambda c: c != student_init.WORD_BOUNDARY and before.unk_id() in before.encode(c)
    assert all(any(map(unreadable, p.piece)) for p in new[len(old):])
    # ... so text it could segment is segmented exactly as before, id for id.
    checked = 0
    for lang in sentences:
        for s in sentences[lang]:
            if before.unk_id() not in before.encode(s):
                assert after.encode(s) == before.encode(s), s
                checked += 1
    assert checked > 400


def test_letters_of_a_seen_script_are_pieces_even_if_unseen(models, sentences):
    """A language with a few pairs gets the letters of its script its pairs lack."""
    _, extended, stats = models
    sp = spm.SentencePieceProcessor(model_proto=extended)
    seen = set("".join(sentences["khm"]))
    unseen = [c for c in map(chr, range(0x1780, 0x17DD))
              if unicodedata.name(c, "").startswith("KHMER") and c not in seen
              and unicodedata.normalize("NFKC", c) == c]
    assert unseen and stats["neighbour_characters"] >= len(unseen)
    for c in unseen:
        assert sp.unk_id() not in sp.encode(c), unicodedata.name(c)


def test_tflite_safe_tokenizer_agrees_on_the_extended_model(models, sentences):
    _, extended, _ = models
    probe = [s.encode("utf-8") for lang in sentences for s in sentences[lang][:30]]
    probe += [b"", b"  ", b"\xff\xfe bad"]
    fast = tf_text.FastSentencepieceTokenizer(extended).tokenize(probe)
    regular = tf_text.SentencepieceTokenizer(extended).tokenize(probe)
    assert fast.to_list() == regular.to_list()


def test_teacher_vocab_with_extension_and_its_initial_rows(muse, data_dir, tmp_path):
    files = corpus.find_files([f"train/{lang}-eng.tsv" for lang in ("khm", "bre")], data_dir)
    plain = student_init.build_teacher_vocab(muse, files, str(tmp_path / "plain"),
                                             progress=False)
    path = student_init.build_teacher_vocab(muse, files, str(tmp_path / "ext"),
                                            extend_pieces=500, progress=False)
    info = json.load(open(os.path.join(os.path.dirname(path), student_init.INFO_FILE)))
    start, n = info["added_from"], info["added_pieces"]
    size = spm.SentencePieceProcessor(model_file=path).get_piece_size()
    assert n > 0 and start + n == size == len(info["teacher_ids"])
    assert info["teacher_ids"][start:] == [-1] * n
    assert spm.SentencePieceProcessor(model_file=plain).get_piece_size() == start
    # Rows of the teacher's pieces are those of the vocabulary without the extension.
    base = student_init.initial_table("teacher", muse, plain, dim=16, stddev=0.02,
                                      progress=False)
    table = student_init.initial_table("teacher", muse, path, dim=16, stddev=0.02,
                                       progress=False)
    np.testing.assert_allclose(table[:start], base, atol=1e-6)
    # An added piece starts at the mean of its characters' rows, at a normal row's norm.
    texts = student_init.piece_texts(open(path, "rb").read())
    single = {texts[i]: i for i in range(start, size) if len(texts[i]) == 1}
    multi = next(i for i in range(start, size)
                 if len(texts[i].strip()) > 2 and all(c in single for c in texts[i].strip()))
    mean = np.mean([table[single[c]] for c in texts[multi].strip()], axis=0)
    cos = mean @ table[multi] / np.linalg.norm(mean) / np.linalg.norm(table[multi])
    assert cos > 0.9999
    assert np.allclose(np.linalg.norm(table[start:], axis=1), 0.02 * 4, rtol=1e-4)
    # A folder built without the extension is not silently reused with it.
    with pytest.raises(ValueError, match="built with"):
        student_init.build_teacher_vocab(muse, files, str(tmp_path / "plain"),
                                         extend_pieces=500, progress=False)
