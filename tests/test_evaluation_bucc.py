"""BUCC readers and evaluation, the NTREX benchmark builder, UN-style pools, CLI commands."""

import json
import zlib

import numpy as np
import pytest

from lealla_tf import cli
from lealla_tf.evaluation import bucc, runner, un


@pytest.fixture(autouse=True)
def _cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LEALLA_CACHE_DIR", str(tmp_path / "cache"))


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)


# ----------------------------------------------------------------------------- readers


def test_read_bucc_files_skips_malformed_lines(tmp_path):
    p = _write(tmp_path / "de-en.sample.de",
               "de-000000001\tDer Hund bellt.\n"
               "de-000000002\n"                     # no sentence
               "de-000000003\tEin Satz.\textra\n"   # three fields
               "de-000000004\tZweiter Satz.\n")
    ids, sents = bucc.read_sentences(p)
    assert ids == ["de-000000001", "de-000000004"]
    assert sents == ["Der Hund bellt.", "Zweiter Satz."]
    g = _write(tmp_path / "de-en.sample.gold", "de-000000001\ten-000000007\nbroken\n"
                                               "de-000000004\ten-000000002\n")
    assert bucc.read_gold(g) == {("de-000000001", "en-000000007"),
                                 ("de-000000004", "en-000000002")}


def test_read_bucc_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        bucc.read_sentences(str(tmp_path / "missing.de"))
    with pytest.raises(ValueError, match="repeated sentence ids"):
        bucc.read_sentences(_write(tmp_path / "dup.de", "de-1\ta\nde-1\tb\n"))
    with pytest.raises(ValueError, match="no 'id<TAB>sentence'"):
        bucc.read_sentences(_write(tmp_path / "empty.de", "\n\n"))
    with pytest.raises(ValueError, match="no 'src-id<TAB>tgt-id'"):
        bucc.read_gold(_write(tmp_path / "empty.gold", "nothing\n"))


def test_find_files_in_bucc_layout(tmp_path):
    for ext in ("de", "en", "gold"):
        _write(tmp_path / "bucc2018" / "de-en" / f"de-en.sample.{ext}", "x\ty\n")
    files = bucc.find_files(str(tmp_path), "de", "sample")
    assert files["src"].endswith("de-en/de-en.sample.de") and files["gold"].endswith(".gold")
    with pytest.raises(FileNotFoundError, match="fr-en.sample"):
        bucc.find_files(str(tmp_path), "fr", "sample")


# ----------------------------------------------------------------------------- BUCC eval


def _word_embedder(noise=0.0, dim=64, seed=0):
    """Sentences ``<lang> <word>`` embed to the word's vector (+ per-side noise)."""
    def enc(sents):
        out = []
        for s in sents:
            lang, word = s.split()[0], s.split()[-1]
            v = np.random.default_rng([seed, zlib.crc32(word.encode())]).normal(size=dim)
            side = np.random.default_rng(zlib.crc32(f"{lang} {word}".encode()))
            out.append(v + noise * side.normal(size=dim))
        return np.stack(out).astype(np.float32)
    return runner.CallableEmbedder(enc, name=f"words-{noise}-{seed}")


def _bucc_task(tmp_path, n_pairs=30, n_extra=40):
    """Hidden pairs ``de w<i>`` / ``en w<i>`` among unrelated sentences on both sides."""
    src = [(f"de-{i + 1:09d}", f"de w{i}") for i in range(n_pairs)]
    src += [(f"de-{n_pairs + i + 1:09d}", f"de s{i}") for i in range(n_extra)]
    tgt = [(f"en-{i + 1:09d}", f"en w{n_pairs - 1 - i}") for i in range(n_pairs)]
    tgt += [(f"en-{n_pairs + i + 1:09d}", f"en t{i}") for i in range(n_extra)]
    gold = [(f"de-{i + 1:09d}", f"en-{n_pairs - i:09d}") for i in range(n_pairs)]
    f = {"src": _write(tmp_path / "de-en.test.de", "".join(f"{a}\t{b}\n" for a, b in src)),
         "tgt": _write(tmp_path / "de-en.test.en", "".join(f"{a}\t{b}\n" for a, b in tgt)),
         "gold": _write(tmp_path / "de-en.test.gold", "".join(f"{a}\t{b}\n" for a, b in gold))}
    return f


def test_bucc_perfect_encoder_gets_f1_100(tmp_path):
    f = _bucc_task(tmp_path)
    res = bucc.evaluate_files(_word_embedder(), f["src"], f["tgt"], f["gold"], progress=False,
                              predictions=str(tmp_path / "pred.tsv"))
    assert (res["precision"], res["recall"], res["f1"]) == (100.0, 100.0, 100.0)
    assert res["gold"] == 30 and res["extracted"] == 30
    pred = {tuple(l.split("\t")) for l in (tmp_path / "pred.tsv").read_text().splitlines()}
    assert pred == bucc.read_gold(f["gold"])


def test_bucc_noisy_encoder_and_fixed_threshold(tmp_path):
    f = _bucc_task(tmp_path)
    res = bucc.evaluate_files(_word_embedder(noise=0.9), f["src"], f["tgt"], f["gold"],
                              progress=False)
    assert 0 < res["f1"] < 100
    fixed = bucc.evaluate_files(_word_embedder(noise=0.9), f["src"], f["tgt"], f["gold"],
                                threshold=res["threshold"], progress=False)
    assert fixed["f1"] == pytest.approx(res["f1"]) and not fixed["threshold_searched"]
    none = bucc.evaluate_files(_word_embedder(noise=0.9), f["src"], f["tgt"], f["gold"],
                               threshold=1e9, progress=False)
    assert none["extracted"] == 0 and none["f1"] == 0


def test_bucc_repeated_sentences_are_ambiguous_and_dropped(tmp_path):
    f = _bucc_task(tmp_path, n_pairs=5, n_extra=5)
    with open(f["tgt"], "a", encoding="utf-8") as out:
        out.write("en-000000099\ten w0\n")  # "en w0" now has two ids
    res = bucc.evaluate_files(_word_embedder(), f["src"], f["tgt"], f["gold"], progress=False)
    assert res["correct"] == 4 and res["recall"] == pytest.approx(80.0)


# ----------------------------------------------------------------------------- NTREX


def _fake_ntrex(root, n=60):
    folder = root / "ntrex" / "NTREX-128"
    eng = [f"en sentence{i}" for i in range(n)]
    deu = [f"de sentence{i}" for i in range(n)]
    deu[5] = deu[6]  # a repeated sentence: lines 5 and 6 must be left out
    eng[9] = ""      # an empty line: left out
    _write(folder / "newstest2019-src.eng.txt", "\n".join(eng) + "\n")
    _write(folder / "newstest2019-ref.deu.txt", "\n".join(deu) + "\n")
    _write(folder / "newstest2019-ref.zho_Hans.txt", "\n".join(f"zh x{i}" for i in range(n)) + "\n")
    _write(root / "ntrex" / "LANGUAGES.tsv", "deu German\nzho-CN Chinese (Simplified)\n")
    return folder


def test_build_ntrex_hides_true_pairs_among_unrelated_sentences(tmp_path):
    _fake_ntrex(tmp_path)
    assert bucc.ntrex_languages(str(tmp_path)) == {"deu": "German",
                                                    "zho_Hans": "Chinese (Simplified)"}
    files = bucc.build_ntrex(str(tmp_path), "deu", str(tmp_path / "out"), n_pairs=20, seed=1)
    src_ids, src = bucc.read_sentences(files["src"])
    tgt_ids, tgt = bucc.read_sentences(files["tgt"])
    gold = bucc.read_gold(files["gold"])
    usable = 60 - 3
    assert len(gold) == 20 and len(src) + len(tgt) == 20 + usable
    assert len(src) == 20 + (usable - 20) // 2
    assert src_ids[0] == "deu-000000001" and tgt_ids[0] == "en-000000001"
    line = lambda s: int(s.split("sentence")[1])  # noqa: E731
    s_by_id, t_by_id = dict(zip(src_ids, src)), dict(zip(tgt_ids, tgt))
    for a, b in gold:  # gold pairs are translations (same NTREX line)
        assert line(s_by_id[a]) == line(t_by_id[b])
    # Apart from the gold pairs no line appears on both sides; excluded lines nowhere.
    src_lines, tgt_lines = {line(s) for s in src}, {line(t) for t in tgt}
    assert len(src_lines & tgt_lines) == 20
    assert not ({5, 6, 9} & (src_lines | tgt_lines))
    # Same seed, same task; another seed, another task.
    again = bucc.build_ntrex(str(tmp_path), "deu", str(tmp_path / "again"), n_pairs=20, seed=1)
    assert open(again["gold"]).read() == open(files["gold"]).read()
    other = bucc.build_ntrex(str(tmp_path), "deu", str(tmp_path / "other"), n_pairs=20, seed=2)
    assert open(other["src"]).read() != open(files["src"]).read()
    with pytest.raises(ValueError, match="n_pairs"):
        bucc.build_ntrex(str(tmp_path), "deu", str(tmp_path / "x"), n_pairs=58)
    with pytest.raises(FileNotFoundError, match="klingon"):
        bucc.build_ntrex(str(tmp_path), "klingon", str(tmp_path / "x"))


def test_ntrex_benchmark_perfect_and_noisy(tmp_path):
    _fake_ntrex(tmp_path)

    def enc(sents):  # the NTREX line number decides the vector
        code = np.random.default_rng(0).normal(size=(100, 64))
        return code[[int(s.split("sentence")[1]) for s in sents]].astype(np.float32)

    res = bucc.evaluate_ntrex(runner.CallableEmbedder(enc, "ntrex-oracle"), str(tmp_path),
                              ["deu"], str(tmp_path / "work"), n_pairs=20, progress=False)
    assert res["average"]["f1"] == 100.0
    assert "average" in bucc.format_table(res)


def test_ntrex_real_data_builds(data_dir, tmp_path):
    langs = bucc.ntrex_languages(data_dir)
    assert len(langs) >= 127 and "deu" in langs  # 127 references + the English source
    files = bucc.build_ntrex(data_dir, "deu", str(tmp_path), n_pairs=400)
    assert len(bucc.read_gold(files["gold"])) == 400
    src_ids, _ = bucc.read_sentences(files["src"])
    tgt_ids, _ = bucc.read_sentences(files["tgt"])
    assert len(src_ids) > 1150 and len(tgt_ids) > 1150


# ----------------------------------------------------------------------------- UN pools


def test_un_pool_p_at_1_with_extra_candidates(tmp_path):
    n = 50
    src = _write(tmp_path / "un.es", "".join(f"es w{i}\n" for i in range(n)))
    tgt = _write(tmp_path / "un.en", "".join(f"en w{i}\n" for i in range(n)))
    extra = _write(tmp_path / "more.en", "".join(f"en x{i}\n" for i in range(300)))
    res = un.evaluate(_word_embedder(), src, tgt, extra=[extra], progress=False,
                      max_memory_bytes=10_000)
    assert res["p_at_1"]["src2tgt"] == 100.0 and res["pool_size"] == n + 300
    res = un.evaluate(_word_embedder(), src, tgt, max_queries=10, progress=False)
    assert res["queries"] == 10 and res["p_at_1"] == {"src2tgt": 100.0, "tgt2src": 100.0}
    # A shifted target file: nothing is found.
    shifted = _write(tmp_path / "shift.en", "".join(f"en w{(i + 1) % n}\n" for i in range(n)))
    assert un.evaluate(_word_embedder(), src, shifted, progress=False)["p_at_1"]["src2tgt"] == 0
    # Precomputed .npy inputs need no model.
    x = runner.embed_file(_word_embedder(), src, progress=False)
    y = runner.embed_file(_word_embedder(), tgt, progress=False)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    res = un.evaluate(None, str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), progress=False)
    assert res["p_at_1"]["src2tgt"] == 100.0


# ----------------------------------------------------------------------------- CLI


@pytest.fixture
def word_model(tmp_path, monkeypatch):
    (tmp_path / "word_model.py").write_text(
        "import zlib\n"
        "import numpy as np\n"
        "def encode(sentences):\n"
        "    return np.stack([np.random.default_rng(zlib.crc32(s.split()[-1].encode()))\n"
        "                     .normal(size=64) for s in sentences])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "py:word_model:encode"


def test_cli_eval_bucc_ntrex_un_and_mine(tmp_path, word_model, capsys):
    f = _bucc_task(tmp_path / "bucc")
    out = tmp_path / "bucc.json"
    assert cli.main(["eval", "bucc", "--model", word_model, "--src", f["src"], "--tgt", f["tgt"],
                     "--gold", f["gold"], "--output", str(out)]) == 0
    assert json.loads(out.read_text())["f1"] == 100.0

    _fake_ntrex(tmp_path / "root")
    out = tmp_path / "ntrex.json"
    assert cli.main(["eval", "ntrex", "--model", word_model, "--data-dir",
                     str(tmp_path / "root"), "--languages", "deu", "--pairs", "20",
                     "--output", str(out)]) == 0
    # Words "sentence<i>" are shared by both sides: the oracle finds every pair.
    assert json.loads(out.read_text())["average"]["f1"] == 100.0

    src = _write(tmp_path / "a.txt", "".join(f"es w{i}\n" for i in range(20)))
    tgt = _write(tmp_path / "b.txt", "".join(f"en w{i}\n" for i in range(20)))
    out = tmp_path / "un.json"
    assert cli.main(["eval", "un", "--model", word_model, "--source", src, "--target", tgt,
                     "--output", str(out)]) == 0
    assert json.loads(out.read_text())["p_at_1"]["src2tgt"] == 100.0
    # Precomputed embeddings need no model; a text input without one is a clear error.
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((20, 8)).astype(np.float32)
    np.save(tmp_path / "a.npy", emb)
    np.save(tmp_path / "b.npy", emb + 0.01 * rng.standard_normal((20, 8)).astype(np.float32))
    assert cli.main(["eval", "un", "--source", str(tmp_path / "a.npy"), "--target",
                     str(tmp_path / "b.npy"), "--output", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["model"] == "precomputed" and res["p_at_1"]["src2tgt"] == 100.0
    capsys.readouterr()
    assert cli.main(["eval", "un", "--source", src, "--target", str(tmp_path / "b.npy")]) == 2
    assert "a model is needed" in capsys.readouterr().err

    mined = tmp_path / "mined.tsv"
    assert cli.main(["mine", "--model", word_model, "--source", src, "--target", tgt,
                     "--output", str(mined)]) == 0
    rows = [l.split("\t") for l in mined.read_text().splitlines()]
    assert len(rows) == 20 and all(r[1] == r[2] for r in rows)
    assert "20 pairs written" in capsys.readouterr().out

    assert cli.main(["eval", "bucc", "--model", word_model, "--src", f["src"]]) == 2
    assert "--gold" in capsys.readouterr().err
