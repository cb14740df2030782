"""Vocabulary coverage (lealla_tf/text/coverage.py, lealla_tf/evaluation/vocab_coverage.py,
``lealla eval vocab-coverage``) and the WordPiece extension (``wordpiece.extend_vocab``,
``lealla vocab-extend``): counts checked by hand on tiny vocabularies."""

import io
import json
import os

import pytest
import tensorflow as tf

from lealla_tf import cli
from lealla_tf.evaluation import vocab_coverage
from lealla_tf.text import coverage, wordpiece

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# hello world ! | h ##i | wor ##ld | h ##e ##l ##o (no "hello" pieces beyond the word itself)
WP_TOKENS = SPECIALS + ["hello", "world", "wor", "##ld", "!", "h", "##i", "##e", "##l", "##o"]


def _train_spm(sentences, vocab_size=7):
    """A character SentencePiece model: <unk> <s> </s> ▁ and the characters seen."""
    import sentencepiece as spm
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, model_type="char",
        vocab_size=vocab_size, character_coverage=1.0, minloglevel=2)
    return model.getvalue()


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("spm") / "spm.model")
    with open(path, "wb") as f:
        f.write(_train_spm(["abc abc", "cab ba", "aa bb cc"]))
    return path


@pytest.fixture()
def wp_vocab(tmp_path):
    path = str(tmp_path / "vocab.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(WP_TOKENS) + "\n")
    return path


# ----------------------------------------------------------------------------
# Counting.


def test_sentencepiece_counts_by_hand(spm_model):
    processor = coverage.load_sentencepiece(spm_model)
    assert [processor.id_to_piece(i) for i in range(processor.get_piece_size())] == [
        "<unk>", "<s>", "</s>", "▁", "a", "b", "c"]
    # "abc": ▁ a b c; "abc xyz": ▁ a b c ▁ <unk> (a run of unknown characters is one
    # piece); "axyb": ▁ a <unk> b; "": nothing
    counts = coverage.count_sentencepiece(processor, ["abc", "abc xyz", "axyb", ""])
    assert counts == {"sentences": 4, "tokens": 14, "unknown": 2, "rate": 100 * 2 / 14}
    assert coverage.count_sentencepiece(processor, [], batch_size=2)["tokens"] == 0
    # batching does not change the figures
    assert coverage.count_sentencepiece(processor, ["abc", "abc xyz", "axyb", ""],
                                        batch_size=3) == counts


def test_wordpiece_counts_by_hand(wp_vocab):
    count = coverage.make_counter(wp_vocab)  # .txt: WordPiece
    # hello world ! -> 3 pieces
    assert count(["hello world!"])["tokens"] == 3
    # hi -> h ##i; wor -> wor; ld -> [UNK] (no word starts with l): 4 pieces, 1 unknown
    assert count(["hi wor ld"]) == {"sentences": 1, "tokens": 4, "unknown": 1, "rate": 25.0}
    # BERT's WordPiece: a word with one unmatched character is one [UNK], not h ##i [UNK]
    assert count(["hix"]) == {"sentences": 1, "tokens": 1, "unknown": 1, "rate": 100.0}
    # cased: HELLO and Wörld are unknown words; lower-cased (accents stripped) both match
    assert count(["HELLO Wörld"])["unknown"] == 2
    lower = coverage.make_counter(wp_vocab, do_lower_case=True)
    assert lower(["HELLO Wörld"]) == {"sentences": 1, "tokens": 2, "unknown": 0, "rate": 0.0}
    total = count(["hello world!", "hi wor ld", "hix", ""])
    assert (total["sentences"], total["tokens"], total["unknown"]) == (4, 8, 2)


def test_wordpiece_counts_are_the_preprocessors_unknowns(wp_vocab):
    """The counter tokenizes as WordpiecePreprocessor does: same number of [UNK] ids."""
    sentences = ["hello world!", "hi wor ld", "hix ωμέγα", "hel\u200blo", "ｈｅｌｌｏ！",
                 "HELLO Wörld"]
    for lower in (False, True):
        pre = wordpiece.WordpiecePreprocessor(wp_vocab, seq_length=32, do_lower_case=lower)
        ids = pre(tf.constant(sentences))["input_word_ids"].numpy()
        mask = pre(tf.constant(sentences))["input_mask"].numpy()
        expected_unknown = int((ids == WP_TOKENS.index("[UNK]")).sum())
        expected_tokens = int(mask.sum()) - 2 * len(sentences)  # less [CLS] and [SEP]
        got = coverage.make_counter(wp_vocab, do_lower_case=lower)(sentences)
        assert (got["tokens"], got["unknown"]) == (expected_tokens, expected_unknown)
    assert expected_unknown > 0


def test_tokenizer_stages_chain_like_the_preprocessor_tokenizer(wp_vocab):
    """unknown_words reads words off the two stages; together they must give the ids of
    make_tokenizer (FastBertTokenizer) on awkward text: format characters, full-width
    forms, accents."""
    text = tf.constant(["hel\u200blo wor\u00adld", "ｈｅｌｌｏ！ Hello", "héllo\tWÖRLD", "a ωμέγα hix"])
    for lower in (False, True):
        normalizer, pieces = wordpiece.tokenizer_stages(WP_TOKENS, lower)
        chained = pieces.tokenize(normalizer.normalize(text)).to_list()
        assert chained == wordpiece.make_tokenizer(WP_TOKENS, lower).tokenize(text).to_list()


def test_unknown_words_are_spelled_as_wordpiece_sees_them():
    words = wordpiece.unknown_words(WP_TOKENS, ["hix ωμέγα hix", "HELLO"], do_lower_case=False)
    assert words == {"hix": 2, "ωμέγα": 1, "HELLO": 1}
    words = wordpiece.unknown_words(WP_TOKENS, ["hix ΩΜΈΓΑ", "HELLO"], do_lower_case=True)
    assert words == {"hix": 1, "ωμεγα": 1}


def test_guess_vocab_type(tmp_path, spm_model, wp_vocab):
    assert coverage.guess_vocab_type(spm_model) == "sentencepiece"
    assert coverage.guess_vocab_type(wp_vocab) == "wordpiece"
    assert coverage.guess_vocab_type(os.path.dirname(spm_model)) == "sentencepiece"
    assert coverage.guess_vocab_type(os.path.dirname(wp_vocab)) == "wordpiece"
    with pytest.raises(ValueError, match="cannot tell"):
        coverage.guess_vocab_type(str(tmp_path / "vocab.bin"))
    with pytest.raises(ValueError, match="must be one of"):
        coverage.make_counter(wp_vocab, "bpe")


def test_unknown_rates_summary_and_table(spm_model):
    res = coverage.unknown_rates(
        spm_model, {"aaa": ["abc"], "xyz": ["x y"], "mix": ["abc xyz", "axyb"]},
        train_languages={"aaa": 5, "mix": 2})
    langs = res["languages"]
    assert langs["aaa"] == {"sentences": 1, "tokens": 4, "unknown": 0, "rate": 0.0,
                            "has_pairs": True, "pairs": 5}
    # "x y": ▁ <unk> ▁ <unk>
    assert langs["xyz"] == {"sentences": 1, "tokens": 4, "unknown": 2, "rate": 50.0,
                            "has_pairs": False, "pairs": 0}
    assert (langs["mix"]["tokens"], langs["mix"]["unknown"]) == (10, 2)
    s = res["summary"]
    assert (s["tokens"], s["unknown"], s["languages"], s["languages_with_pairs"]) == (
        18, 4, 3, 2)
    assert s["worst_with_pairs"] == {"language": "mix", "rate": 20.0}
    assert s["above_max_rate_with_pairs"] == ["mix"]
    table = coverage.format_table(res)
    rows = [l for l in table.splitlines() if l.startswith("| ") and "---" not in l][1:]
    assert [r.split("|")[1].strip() for r in rows] == ["xyz", "mix", "aaa"]  # worst first
    assert rows[0].split("|")[-2].strip() == "no" and rows[1].split("|")[-2].strip() == "yes (2)"
    assert ("Worst rate among the 2 languages with training pairs: 20.00% (mix); "
            "1 above 1%: mix.") in table
    # codes only; and none given: the table says it does not know
    res = coverage.unknown_rates(spm_model, {"aaa": ["abc"], "xyz": ["x"]},
                                 train_languages=["aaa"], max_rate=0.0)
    assert res["languages"]["aaa"]["has_pairs"] and res["languages"]["aaa"]["pairs"] is None
    assert "none above 0%" in coverage.format_table(res)
    res = coverage.unknown_rates(spm_model, {"aaa": ["abc"]})
    assert "not known" in coverage.format_table(res) and "| ? |" in coverage.format_table(res)
    assert len(coverage.format_table(
        coverage.unknown_rates(spm_model, {c: ["abc"] for c in "abcd"}), limit=2
    ).split("\n")) == len(coverage.format_table(
        coverage.unknown_rates(spm_model, {c: ["abc"] for c in "abcd"})).split("\n")) - 1


# ----------------------------------------------------------------------------
# Extending a WordPiece vocabulary.


def _ids(tokens, sentences, lower=False):
    return wordpiece.make_tokenizer(tokens, lower).tokenize(tf.constant(sentences)).to_list()


def test_extend_vocab_covers_new_characters_and_keeps_old_ids(wp_vocab, tmp_path):
    new_text = ["ωλο ωλο ωλο ωλο ωλο", "hello ωμέγα!", "hix"]
    covered = ["hello world!", "hi wor", "world hi!"]
    before = coverage.make_counter(wp_vocab)(new_text)
    assert before["unknown"] == 7  # 5 x ωλο, ωμέγα, hix
    out = str(tmp_path / "out")
    os.makedirs(out)
    extended = wordpiece.extend_vocab(wp_vocab, new_text + covered, output=out)
    assert extended[:len(WP_TOKENS)] == WP_TOKENS
    added = extended[len(WP_TOKENS):]
    assert len(set(extended)) == len(extended)
    # every missing character in both forms: ω λ ο μ έ γ x (and ##x), ...
    for ch in "ωλομέγx":
        assert ch in added and "##" + ch in added
    assert "ωλο" in added  # a learned piece (5 occurrences)
    assert wordpiece.vocab_tokens(os.path.join(out, "vocab.txt")) == extended
    after = coverage.make_counter(extended)(new_text)
    assert after["unknown"] == 0
    pre = wordpiece.WordpiecePreprocessor(extended, seq_length=32)
    assert not (pre(tf.constant(new_text))["input_word_ids"].numpy() == 1).any()
    # text the vocabulary already segmented keeps its pieces
    assert _ids(extended, covered) == _ids(WP_TOKENS, covered)


def test_learned_pieces_never_change_covered_words(wp_vocab):
    """For new words ωlo ψlo φlo χlo the learner proposes ##lo, which would change how the
    covered word "hello" is split (h ##e ##l ##l ##o -> h ##e ##l ##lo): only pieces with a
    character the vocabulary lacks are taken."""
    from tensorflow_text.tools.wordpiece_vocab import wordpiece_tokenizer_learner_lib as learner
    tokens = [t for t in WP_TOKENS if t != "hello"]  # hello -> h ##e ##l ##l ##o
    new_words = [ch + "lo" for ch in "ωψφχ"] + ["ωω"] * 2
    params = learner.Params(None, 2, 4, -1, 50, 0, 0, 0.0, True, "##", [])
    assert "##lo" in learner.learn_with_thresh([(w, 1) for w in new_words[:4]], 2, params)
    covered = ["hello", "hello hello world"]
    extended = wordpiece.extend_vocab(tokens, [" ".join(new_words)] + covered)
    assert "##lo" not in extended and "ωω" in extended  # (a piece with a new character)
    assert _ids(extended, covered) == _ids(tokens, covered)
    assert coverage.make_counter(extended)([" ".join(new_words)])["unknown"] == 0


def test_extend_vocab_options(wp_vocab, tmp_path):
    text = ["ωλο ωλο ωλο", "ψ"]
    only_chars = wordpiece.extend_vocab(wp_vocab, text, learn_pieces=False)
    assert sorted(only_chars[len(WP_TOKENS):]) == sorted(
        [c for ch in "ωλοψ" for c in (ch, "##" + ch)])
    # characters first, most frequent first; then pieces, capped by max_new
    capped = wordpiece.extend_vocab(wp_vocab, text, max_new=9)
    assert capped[len(WP_TOKENS):len(WP_TOKENS) + 8] == ["λ", "##λ", "ο", "##ο", "ω", "##ω",
                                                          "ψ", "##ψ"]
    assert len(capped) == len(WP_TOKENS) + 9
    with pytest.raises(ValueError, match="needs 8 new character tokens"):
        wordpiece.extend_vocab(wp_vocab, text, max_new=7)
    # a piece seen fewer than min_count times is not learned
    assert "ωλο" not in wordpiece.extend_vocab(wp_vocab, text, min_count=4)
    # lower-cased: the characters as the normalizer leaves them
    lower = wordpiece.extend_vocab(wp_vocab, ["ΩΜΈΓΑ"], do_lower_case=True, learn_pieces=False)
    assert set(lower[len(WP_TOKENS):]) == {c for ch in "ωμεγα" for c in (ch, "##" + ch)}
    assert coverage.make_counter(lower, do_lower_case=True)(["ΩΜΈΓΑ"])["unknown"] == 0
    # a word longer than max_bytes_per_word stays [UNK] (BERT's rule), its characters added
    long_word = "ж" * 60  # 120 bytes
    ext = wordpiece.extend_vocab(wp_vocab, [long_word])
    assert "ж" in ext and coverage.make_counter(ext)([long_word])["unknown"] == 1
    # the output: a file path is written as it is
    path = str(tmp_path / "ext.txt")
    assert wordpiece.extend_vocab(wp_vocab, text, output=path) == wordpiece.vocab_tokens(path)
    # nothing to add: the same list
    assert wordpiece.extend_vocab(wp_vocab, ["hello world"]) == WP_TOKENS


# ----------------------------------------------------------------------------
# Tatoeba and the CLI.


def _tatoeba_root(root, with_train=True):
    """A data root: tatoeba/v1 with deu, kat and cmn; train/ with deu and zho (whose pairs
    count for cmn: a macro-language file)."""
    tdir = os.path.join(root, "tatoeba", "v1")
    os.makedirs(tdir)
    sides = {"deu": ["abc", "cab ba"], "kat": ["აბგ", "abc x"], "cmn": ["ab c"]}
    for lang, lines in sides.items():
        for ext, text in ((lang, lines), ("eng", ["a"] * len(lines))):
            with open(os.path.join(tdir, f"tatoeba.{lang}-eng.{ext}"), "w",
                      encoding="utf-8") as f:
                f.write("\n".join(text) + "\n")
    if with_train:
        os.makedirs(os.path.join(root, "train"))
        for name, n in (("deu", 3), ("zho", 2)):
            with open(os.path.join(root, "train", f"{name}-eng.tsv"), "w",
                      encoding="utf-8") as f:
                f.write("".join(f"abc {i}\tabc\n" for i in range(n)))
    return root


def test_tatoeba_unknown_rates_reads_the_foreign_side_and_marks_pairs(tmp_path, spm_model):
    root = _tatoeba_root(str(tmp_path / "data"))
    res = vocab_coverage.tatoeba_unknown_rates(spm_model, root, "deu,kat,cmn")
    langs = res["languages"]
    assert list(langs) == ["deu", "kat", "cmn"]
    # deu: ▁abc + ▁cab▁ba = 4 + 7; kat: ▁<unk> + ▁abc▁<unk> = 2 + 6; cmn: ▁ab▁c = 5
    assert [(langs[l]["tokens"], langs[l]["unknown"]) for l in langs] == [
        (11, 0), (8, 2), (5, 0)]
    assert [(langs[l]["has_pairs"], langs[l]["pairs"]) for l in langs] == [
        (True, 3), (False, 0), (True, 2)]
    assert res["train"] == os.path.join(root, "train")
    assert res["summary"]["worst_with_pairs"] == {"language": "deu", "rate": 0.0}  # (ties: by code)
    # the Tatoeba folder itself, and training languages given as codes
    res = vocab_coverage.tatoeba_unknown_rates(
        spm_model, os.path.join(root, "tatoeba", "v1"), ["kat"], train_languages=["kat"])
    assert res["languages"]["kat"]["has_pairs"] and res["train"] is None
    assert res["summary"]["above_max_rate_with_pairs"] == ["kat"]
    with pytest.raises(ValueError, match="unknown Tatoeba language"):
        vocab_coverage.tatoeba_unknown_rates(spm_model, root, "deu,xxx")


def test_cli_vocab_coverage(tmp_path, spm_model, capsys):
    root = _tatoeba_root(str(tmp_path / "data"))
    out, md = str(tmp_path / "r" / "cov.json"), str(tmp_path / "r" / "cov.md")
    argv = ["eval", "vocab-coverage", "--vocab", spm_model, "--data-dir", root,
            "--languages", "deu,kat,cmn", "--output", out, "--markdown", md]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| kat | 2 | 8 | 2 | 25.00 | no |" in printed
    assert "| deu | 2 | 11 | 0 | 0.00 | yes (3) |" in printed
    assert "Worst rate among the 2 languages with training pairs: 0.00%" in printed
    res = json.load(open(out, encoding="utf-8"))
    assert res["languages"]["kat"]["unknown"] == 2 and res["vocab_type"] == "sentencepiece"
    assert open(md, encoding="utf-8").read().startswith("| language |")
    # --check fails when a language with pairs is above --max-rate
    train = str(tmp_path / "train2")
    os.makedirs(train)
    with open(os.path.join(train, "kat-eng.tsv"), "w", encoding="utf-8") as f:
        f.write("აბგ\tabc\n")
    check = ["eval", "vocab-coverage", "--vocab", spm_model, "--data-dir", root,
             "--languages", "deu,kat", "--train-dir", train, "--check"]
    assert cli.main(check) == 1
    assert "1 above 1%: kat." in capsys.readouterr().out
    assert cli.main(check + ["--max-rate", "40"]) == 0
    capsys.readouterr()
    # user errors: one line, exit 2
    assert cli.main(["eval", "vocab-coverage", "--vocab", str(tmp_path / "no.model"),
                     "--data-dir", root]) == 2
    assert "vocabulary not found" in capsys.readouterr().err
    assert cli.main(["eval", "vocab-coverage", "--vocab", spm_model, "--data-dir", root,
                     "--languages", "xxx"]) == 2
    assert "unknown Tatoeba language" in capsys.readouterr().err


def test_cli_vocab_coverage_wordpiece(tmp_path, wp_vocab, capsys):
    root = _tatoeba_root(str(tmp_path / "data"), with_train=False)
    assert cli.main(["eval", "vocab-coverage", "--vocab", wp_vocab, "--data-dir", root,
                     "--languages", "deu,kat"]) == 0
    printed = capsys.readouterr().out
    # deu: abc, cab, ba -> 3 [UNK]; kat: აბგ, abc, x -> 3 [UNK]
    assert "| deu | 2 | 3 | 3 | 100.00 | ? |" in printed
    assert "not known" in printed


def test_cli_vocab_extend(tmp_path, wp_vocab, capsys):
    tsv = str(tmp_path / "ell-eng.tsv")
    with open(tsv, "w", encoding="utf-8") as f:
        f.write("ωλο ωλο\thello world\nωμέγα\thi\n")
    out = str(tmp_path / "ext")
    assert cli.main(["vocab-extend", "--vocab", wp_vocab, "--input", tsv,
                     "--output", out]) == 0
    printed = capsys.readouterr().out
    assert "unknown before: 3 of 7 tokens" in printed
    assert "unknown after: 0 of" in printed
    tokens = wordpiece.vocab_tokens(os.path.join(out, "vocab.txt"))
    assert tokens[:len(WP_TOKENS)] == WP_TOKENS and "ω" in tokens
    assert cli.main(["vocab-extend", "--vocab", wp_vocab, "--input", tsv, "--output", out,
                     "--max-new", "2"]) == 2
    assert "needs" in capsys.readouterr().err


def test_training_languages_of_the_real_train_folder(data_dir):
    langs = vocab_coverage.training_languages(os.path.join(data_dir, "train"))
    # direct codes, script variants folded, macro-language files counted for members
    assert {"deu", "cmn", "swh", "lvs", "nob"} <= set(langs)
    assert all(n > 0 for n in langs.values())
