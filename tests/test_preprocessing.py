import json
import os

import numpy as np
import pytest
import sentencepiece as spm
import tensorflow as tf
import tensorflow_text as tf_text
import tf_keras

from lealla_tf.text import packing, sentencepiece
from lealla_tf.text.sentencepiece import CLS_ID, MASK_ID, PAD_ID, SEP_ID, UNK_ID

MULTILINGUAL = [
    "The quick brown fox jumps over the lazy dog.",       # Latin
    "Der schnelle braune Fuchs springt über den Hund.",   # Latin + diacritics
    "Быстрая коричневая лиса прыгает через собаку.",     # Cyrillic
    "الثعلب البني السريع يقفز فوق الكلب الكسول.",          # Arabic
    "敏捷的棕色狐狸跳过了懒狗。",                             # CJK
    "素早い茶色の狐がのろまな犬を飛び越える。",                 # Japanese
    "สุนัขจิ้งจอกสีน้ำตาลกระโดดข้ามสุนัข",                    # Thai
    "तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है।",           # Devanagari
    "빠른 갈색 여우가 게으른 개를 뛰어넘는다.",                  # Hangul
    "Η γρήγορη καφέ αλεπού πηδά πάνω από τον σκύλο.",     # Greek
    "I love 🐶 and 🦊! 👍🏽",                               # emoji
    "Mixed: Hund собака 狗 كلب",                           # mixed scripts
]


def test_vocab_is_unigram_without_byte_fallback_with_reserved_ids(tiny_vocab):
    from sentencepiece import sentencepiece_model_pb2 as pb
    proto = pb.ModelProto()
    proto.ParseFromString(open(tiny_vocab, "rb").read())
    assert proto.trainer_spec.model_type == pb.TrainerSpec.UNIGRAM
    assert not proto.trainer_spec.byte_fallback
    sp = spm.SentencePieceProcessor(model_file=tiny_vocab)
    assert [sp.id_to_piece(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    info = json.load(open(os.path.join(os.path.dirname(tiny_vocab), "vocab_info.json")))
    assert info["vocab_size"] == sp.get_piece_size() <= 4000
    # Every language was sampled, English included.
    assert set(info["sentences_per_language"]) >= {"deu", "rus", "tha", "eng"}


def test_special_ids_are_the_reserved_pieces(tiny_vocab):
    """One dict of special ids, keyed as the TF Hub text API: the SentencePiece
    preprocessor's are the trained model's reserved pieces; a vocabulary without one of
    the tokens gets -1 for it."""
    sp = spm.SentencePieceProcessor(model_file=tiny_vocab)
    ids = dict(sentencepiece.Preprocessor(tiny_vocab, seq_length=8).special_ids)
    assert ids == {k: sp.piece_to_id(t) for k, t in packing.SPECIAL_TOKENS.items()}
    assert ids == {"padding_id": PAD_ID, "unknown_id": UNK_ID, "start_of_sequence_id": CLS_ID,
                   "end_of_segment_id": SEP_ID, "mask_id": MASK_ID}
    assert packing.special_ids(["[PAD]", "a", "[CLS]", "[UNK]", "[SEP]"]) == {
        "padding_id": 0, "unknown_id": 3, "start_of_sequence_id": 2, "end_of_segment_id": 4,
        "mask_id": -1}


def test_language_balanced_sampling():
    counts = {"big": 100000, "mid": 1000, "small": 10}
    flat = sentencepiece.sample_sizes(counts, 1500, alpha=0.0)
    assert flat["small"] == 10  # capped at what exists; its unused budget goes elsewhere
    assert abs(flat["mid"] - flat["big"]) <= 2 and 1495 <= sum(flat.values()) <= 1500
    prop = sentencepiece.sample_sizes(counts, 1500, alpha=1.0)
    assert prop["big"] > 25 * prop["mid"]
    mixed = sentencepiece.sample_sizes(counts, 1500, alpha=0.3)
    assert prop["mid"] < mixed["mid"] < flat["mid"]


def test_vocab_trainer_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        sentencepiece.train_vocab([str(tmp_path / "nope.tsv")], str(tmp_path), 100)
    empty = tmp_path / "x-eng.tsv"
    empty.write_text("only one field\n")
    with pytest.raises(ValueError, match="no usable sentences"):
        sentencepiece.train_vocab([str(empty)], str(tmp_path), 100, progress=False)
    with pytest.raises(ValueError, match="vocab_size"):
        sentencepiece.train_vocab([str(empty)], str(tmp_path), 3)
    cjk = tmp_path / "cmn-eng.tsv"
    cjk.write_text("".join(f"{chr(0x4E00 + i)}{chr(0x4E00 + i + 1)}\tx\n" for i in range(300)))
    with pytest.raises(ValueError, match="distinct characters"):
        sentencepiece.train_vocab([str(cjk)], str(tmp_path), 50, progress=False)


def test_vocab_is_replaced_only_when_complete(tmp_path, hermetic_files, monkeypatch):
    """A vocabulary run that fails half way (here the trainer itself) leaves the earlier
    vocabulary in place and no staging folder behind."""
    out = str(tmp_path / "vocab")
    first = sentencepiece.train_vocab(hermetic_files, out, vocab_size=120,
                                      sentences_per_language=100, progress=False)
    before = {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)}
    assert sorted(before) == ["spm.model", "spm.vocab", "vocab_info.json"]

    def boom(**kwargs):
        with open(kwargs["model_prefix"] + ".model", "wb") as f:
            f.write(b"half a model")
        raise RuntimeError("killed half way")

    monkeypatch.setattr(spm.SentencePieceTrainer, "train", boom)
    with pytest.raises(RuntimeError, match="killed half way"):
        sentencepiece.train_vocab(hermetic_files, out, vocab_size=130,
                                  sentences_per_language=100, progress=False)
    assert {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)} == before
    assert spm.SentencePieceProcessor(model_file=first).get_piece_size() <= 120


def test_fast_tokenizer_agrees_with_regular_on_many_scripts(tiny_vocab):
    model = open(tiny_vocab, "rb").read()
    fast = tf_text.FastSentencepieceTokenizer(model)
    regular = tf_text.SentencepieceTokenizer(model)
    texts = tf.constant(MULTILINGUAL + ["", "   ", "x" * 5000])
    assert fast.tokenize(texts).to_list() == regular.tokenize(texts).to_list()


@pytest.fixture(scope="module")
def pre(tiny_vocab):
    return sentencepiece.Preprocessor(tiny_vocab, seq_length=16)


def test_packing_layout(pre):
    out = pre(tf.constant(MULTILINGUAL))
    ids, mask, types = (out[k].numpy() for k in ("input_word_ids", "input_mask", "input_type_ids"))
    assert ids.shape == mask.shape == types.shape == (len(MULTILINGUAL), 16)
    assert ids.dtype == np.int32 and not types.any()
    tokens = pre.tokenize(tf.constant(MULTILINGUAL)).to_list()
    for row, toks, m in zip(ids, tokens, mask):
        n = min(len(toks), 14)
        assert row[0] == CLS_ID and row[n + 1] == SEP_ID
        assert list(row[1:n + 1]) == toks[:n]
        assert (row[n + 2:] == PAD_ID).all()
        assert m.sum() == n + 2 and m[:n + 2].all()


def test_dense_packing_equals_tf_text_packing(pre):
    texts = tf.constant(MULTILINGUAL + ["", " ", "a"])
    dense = pre(texts)
    ragged = pre.bert_pack_inputs([pre.tokenize(texts)])
    for key in dense:
        np.testing.assert_array_equal(dense[key].numpy(), ragged[key].numpy())


def test_bert_pack_inputs_pairs_and_seq_length(pre):
    a = pre.tokenize(tf.constant(["Hallo Welt, wie geht es dir heute?"]))
    b = pre.tokenize(tf.constant(["Hello world, how are you today?"]))
    out = pre.bert_pack_inputs([a, b], seq_length=12)
    ids, types = out["input_word_ids"].numpy()[0], out["input_type_ids"].numpy()[0]
    assert ids.shape == (12,) and ids[0] == CLS_ID
    assert list(ids).count(SEP_ID) == 2 and types.max() == 1
    assert pre.bert_pack_inputs([a], seq_length=40)["input_word_ids"].shape == (1, 40)


def test_empty_and_whitespace_become_cls_sep(pre):
    out = pre(tf.constant(["", "   ", "\t\n"]))
    expected = np.zeros((3, 16), np.int32)
    expected[:, 0], expected[:, 1] = CLS_ID, SEP_ID
    np.testing.assert_array_equal(out["input_word_ids"].numpy(), expected)
    assert (out["input_mask"].numpy().sum(axis=1) == 2).all()


def test_huge_string_is_truncated(pre):
    huge = "Le renard brun saute par-dessus le chien. " * 2500  # 105,000 characters
    assert len(huge) >= 100000
    out = pre(tf.constant([huge, "short"]))
    first = pre.tokenize(tf.constant([huge])).to_list()[0]
    np.testing.assert_array_equal(out["input_word_ids"].numpy()[0],
                                  [CLS_ID] + first[:14] + [SEP_ID])
    assert out["input_mask"].numpy()[0].all()


def test_invalid_utf8_maps_to_unk_not_an_error(pre):
    out = pre(tf.constant([b"abc \xff\xfe def", b"\xc3", "abc  def".encode()]))
    ids = out["input_word_ids"].numpy()
    assert UNK_ID in ids[0] and UNK_ID in ids[1]
    assert ids[1][0] == CLS_ID and SEP_ID in ids[1]


def test_scalar_and_rank2_inputs_are_flattened(pre):
    assert pre(tf.constant("one"))["input_word_ids"].shape == (1, 16)
    assert pre(tf.constant([["a"], ["b"]]))["input_word_ids"].shape == (2, 16)


def test_get_config_roundtrip(pre):
    clone = sentencepiece.Preprocessor.from_config(pre.get_config())
    texts = tf.constant(MULTILINGUAL)
    np.testing.assert_array_equal(clone(texts)["input_word_ids"].numpy(),
                                  pre(texts)["input_word_ids"].numpy())
    layer = tf_keras.layers.deserialize(tf_keras.layers.serialize(pre))
    assert layer.seq_length == 16


def test_bad_arguments(tiny_vocab, tmp_path):
    with pytest.raises(FileNotFoundError):
        sentencepiece.Preprocessor(str(tmp_path / "none.model"))
    with pytest.raises(ValueError, match="seq_length"):
        sentencepiece.Preprocessor(tiny_vocab, seq_length=1)
    # A directory holding spm.model works too.
    assert sentencepiece.Preprocessor(os.path.dirname(tiny_vocab)).vocab_size == \
        spm.SentencePieceProcessor(model_file=tiny_vocab).get_piece_size()
