"""WordPiece preprocessing: FastBertTokenizer = TF Text's regular BertTokenizer on text in ten
scripts (cased and lower-cased), the SentencePiece preprocessor's packing and bad-input
behaviour, the TF Hub preprocessor API, and the same ids from the TFLite file."""


import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text as tf_text

from lealla_tf.export import formats
from lealla_tf.text import wordpiece
from support import standins

AWKWARD = ["", " ", "\t \n ", "Ça va? Größe ÀÉÎ naïve", "今天天气很好。", "Hund 🐕",
           "Wort " * 20000, "x" * 100000, "[CLS] [SEP] ##ing"]
INVALID = [b"\xff\xfe\xfd invalid", b"abc\x80def", b"\xe4\xb8"]


@pytest.fixture(scope="module")
def lines(train_files):
    return standins.corpus_lines(train_files, per_file=60)


@pytest.fixture(scope="module", params=[False, True], ids=["cased", "lower"])
def vocab(request, tmp_path_factory, lines):
    path = str(tmp_path_factory.mktemp("wp") / "vocab.txt")
    return standins.make_vocab(lines, path, lower_case=request.param), request.param


def _regular(path, lower):
    table = tf.lookup.StaticVocabularyTable(
        tf.lookup.TextFileInitializer(path, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                                      tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER), 1)
    return tf_text.BertTokenizer(table, lower_case=lower, token_out_type=tf.int64)


def test_fast_tokenizer_matches_regular_bert_tokenizer(vocab, lines):
    path, lower = vocab
    pre = wordpiece.WordpiecePreprocessor(path, seq_length=32, do_lower_case=lower)
    texts = [s.encode("utf-8") for s in lines[::3] + AWKWARD] + INVALID
    fast = pre.tokenize(tf.constant(texts)).to_list()
    regular = _regular(path, lower).tokenize(tf.constant(texts)).merge_dims(1, 2).to_list()
    assert fast == regular
    # The text really is multilingual and mostly known to the vocabulary.
    unk = pre.special_ids["unknown_id"]
    known = sum(t != unk for row in fast for t in row) / sum(len(r) for r in fast)
    assert known > 0.9 and len(texts) > 200


def test_packing_and_awkward_input(vocab):
    path, lower = vocab
    pre = wordpiece.WordpiecePreprocessor(path, seq_length=16, do_lower_case=lower)
    ids = pre.special_ids
    assert (ids["padding_id"], ids["unknown_id"], ids["start_of_sequence_id"],
            ids["end_of_segment_id"], ids["mask_id"]) == (0, 3, 4, 5, 6)
    texts = [t.encode("utf-8") for t in AWKWARD] + INVALID
    out = {k: v.numpy() for k, v in pre(tf.constant(texts)).items()}
    cls, sep = ids["start_of_sequence_id"], ids["end_of_segment_id"]
    assert out["input_word_ids"].shape == (len(texts), 16)
    for row in range(3):  # empty and whitespace: [CLS] [SEP]
        assert list(out["input_word_ids"][row, :3]) == [cls, sep, 0]
        assert out["input_mask"][row].sum() == 2
    long_row = AWKWARD.index("Wort " * 20000)
    assert out["input_mask"][long_row].sum() == 16 and out["input_word_ids"][long_row, -1] == sep
    # A 100,000-byte word is one [UNK]; invalid UTF-8 words are [UNK], never an error.
    assert list(out["input_word_ids"][AWKWARD.index("x" * 100000), :3]) == [
        cls, ids["unknown_id"], sep]
    assert out["input_word_ids"][len(AWKWARD) + 1, 1] == ids["unknown_id"]
    assert not out["input_type_ids"].any()
    # Dense packing = the TF Hub API's bert_pack_inputs on one segment.
    packed = pre.bert_pack_inputs([pre.tokenize(tf.constant(texts))])
    for k in out:
        np.testing.assert_array_equal(out[k], packed[k].numpy())
    # Two segments: [CLS] a [SEP] b [SEP], type ids 0 then 1.
    two = pre.bert_pack_inputs([pre.tokenize(tf.constant(["a b"])),
                                pre.tokenize(tf.constant(["c"]))])
    assert list(two["input_type_ids"].numpy()[0, :6]) == [0, 0, 0, 0, 1, 1]
    # Dynamic length pads to the longest row only.
    short = pre(tf.constant(["a", "a b c"]), dynamic_length=True)
    assert short["input_word_ids"].shape[1] < 16


def test_config_round_trip_and_errors(vocab, tmp_path):
    path, lower = vocab
    pre = wordpiece.WordpiecePreprocessor(path, seq_length=24, do_lower_case=lower)
    again = wordpiece.WordpiecePreprocessor.from_config(pre.get_config())
    texts = tf.constant(["Das Wetter ist schön.", "Сегодня хорошая погода."])
    np.testing.assert_array_equal(pre(texts)["input_word_ids"], again(texts)["input_word_ids"])
    assert again.do_lower_case == lower and again.seq_length == 24
    with pytest.raises(FileNotFoundError, match="not found"):
        wordpiece.WordpiecePreprocessor(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match=r"lacks the special token\(s\) \['\[CLS\]'\]"):
        wordpiece.WordpiecePreprocessor(["[PAD]", "[UNK]", "[SEP]", "a"])
    with pytest.raises(ValueError, match="repeats 'a'"):
        wordpiece.WordpiecePreprocessor(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "a"])
    with pytest.raises(ValueError, match="seq_length"):
        wordpiece.WordpiecePreprocessor(path, seq_length=1)
    with pytest.raises(ValueError, match="vocab.type"):
        wordpiece.make_preprocessor("bpe", path, 8)


def test_tflite_gives_the_same_ids(vocab, lines, tmp_path):
    path, lower = vocab
    pre = wordpiece.WordpiecePreprocessor(path, seq_length=24, do_lower_case=lower)
    root = tf.train.Checkpoint()
    root.serve = tf.function(lambda sentences: dict(pre(sentences)),
                             input_signature=[tf.TensorSpec([None], tf.string,
                                                             name="sentences")])
    folder = str(tmp_path / "sm")
    tf.saved_model.save(root, folder, signatures={formats.SIGNATURE: root.serve})
    content = formats.convert_tflite(folder, "fp32")
    runner = formats.tflite_interpreter(model_content=content).get_signature_runner(
        formats.SIGNATURE)
    texts = [s.encode("utf-8") for s in lines[:40] + AWKWARD] + INVALID
    got = runner(sentences=np.array(texts, dtype=object))
    want = pre(tf.constant(texts))
    for k in want:
        np.testing.assert_array_equal(got[k], want[k].numpy())
