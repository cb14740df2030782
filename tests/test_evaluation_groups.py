"""Language groups (the teacher's languages, other languages with training pairs, no pairs),
their averages and tables; the NTREX-128 file of each training language; the scatter chart."""

import os
import re

import pytest

from lealla_tf.evaluation import groups, pairs, plots, tatoeba

TRAIN = ["train/deu-eng.tsv", "train/cmn_Hans-eng.tsv", "train/cmn_Hant-eng.tsv",
         "train/afr-eng.tsv", "train/fas-eng.tsv", "train/nor-eng.tsv", "train/mya-eng.tsv"]


def test_training_file_codes_become_tatoeba_codes():
    assert groups.tatoeba_codes("cmn_Hans") == ("cmn",)
    assert groups.tatoeba_codes("ber_Latn") == ("ber",)
    assert groups.tatoeba_codes("fas") == ("pes",)
    assert groups.tatoeba_codes("nor") == ("nob", "nno")
    assert groups.tatoeba_codes("zho") == ("cmn",)  # Mandarin pairs: not yue or wuu
    # Each language once, in file order; languages Tatoeba lacks keep their own code.
    assert groups.trained_languages(TRAIN) == ["deu", "cmn", "afr", "pes", "nob", "nno", "mya"]


def test_language_groups_split_the_evaluation_languages_in_order():
    g = groups.language_groups(["amh", "afr", "deu", "cmn", "nno", "xho", "pes"],
                               ["deu", "cmn_Hans"], TRAIN)
    assert list(g) == list(groups.GROUPS)
    assert g == {"teacher": ["deu", "cmn"], "other_pairs": ["afr", "nno", "pes"],
                 "no_pairs": ["amh", "xho"]}
    # A teacher of every language: all in its group, the other two groups empty.
    assert groups.language_groups(["amh", "deu"], ["all"], TRAIN) == {
        "teacher": ["amh", "deu"], "other_pairs": [], "no_pairs": []}
    # Teacher languages named by a macro-language code; no training files at all.
    assert groups.language_groups(["pes", "deu"], ["fas"], []) == {
        "teacher": ["pes"], "other_pairs": [], "no_pairs": ["deu"]}


def test_group_averages_and_retention():
    g = {"teacher": ["deu", "cmn"], "other_pairs": ["afr"], "no_pairs": []}
    teacher = groups.group_averages({"deu": 90.0, "cmn": 80.0, "afr": 40.0, "xho": 1.0}, g)
    assert teacher == {"teacher": 85.0, "other_pairs": 40.0, "no_pairs": None,
                       "all": pytest.approx(70.0)}
    student = groups.group_averages({"deu": 81.0, "cmn": 72.0, "afr": 20.0}, g)
    ret = groups.retention(student, teacher)
    assert ret["teacher"] == pytest.approx(0.9) and ret["other_pairs"] == pytest.approx(0.5)
    assert ret["no_pairs"] is None and ret["all"] == pytest.approx((173 / 3) / 70)


def _rows(table):
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]


def test_summary_and_language_tables():
    g = {"teacher": ["deu", "cmn"], "other_pairs": ["afr"], "no_pairs": []}
    scores = {"teacher": {"deu": 90.0, "cmn": 80.0, "afr": 40.0},
              "student": {"deu": 81.0, "cmn": 72.0, "afr": 20.0}}
    summary = groups.summary_table(scores, g)
    assert summary.splitlines()[0] == "| languages | n | teacher | student | student/teacher |"
    assert _rows(summary) == [  # the empty group has no row
        ["the teacher's languages", "2", "85.0", "76.5", "90.0%"],
        ["other languages with pairs", "1", "40.0", "20.0", "50.0%"],
        ["**all 3 languages**", "3", "**70.0**", "**57.7**", "**82.4%**"]]
    per_language = groups.language_table(scores, g)
    assert _rows(per_language) == [["deu", "teacher", "90.0", "81.0", "90.0%"],
                                   ["cmn", "teacher", "80.0", "72.0", "90.0%"],
                                   ["afr", "other_pairs", "40.0", "20.0", "50.0%"]]


def test_languages_in_ntrex(tmp_path):
    folder = tmp_path / "ntrex" / "NTREX-128"
    folder.mkdir(parents=True)
    for code in ("eng-US", "deu", "fas", "zho_Hans", "srp-Latn", "msa", "mya"):
        (folder / f"newstest2019-ref.{code}.txt").write_text("x\n")
    (folder / "newstest2019-src.eng.txt").write_text("x\n")
    assert pairs.languages_in_ntrex(str(tmp_path), ["deu", "pes", "cmn", "srp", "zsm", "afr",
                                                   "mya"]) == ["deu", "pes", "cmn", "srp",
                                                               "zsm", "mya"]
    assert pairs.ntrex_file(str(tmp_path), "pes").endswith("newstest2019-ref.fas.txt")


def test_real_data_groups_and_ntrex_files(data_dir):
    """On the shipped data: 99 of the 112 Tatoeba languages have training pairs (as
    data/README.md says), and every mapped NTREX-128 code names a file."""
    files = sorted(os.listdir(os.path.join(data_dir, "train")))
    files = [f for f in files if f.endswith("-eng.tsv")]
    teacher = ["ara", "cmn", "deu", "fra", "ita", "jpn", "kor", "nld", "pol", "por", "rus",
               "spa", "tha", "tur"]
    g = groups.language_groups(tatoeba.resolve_languages("all"), teacher, files)
    assert [len(v) for v in g.values()] == [14, 85, 13]
    assert {"lvs", "swh", "pes", "zsm", "cmn", "yue"} <= set(g["other_pairs"] + g["teacher"])
    assert {"amh", "slk", "wuu", "xho"} <= set(g["no_pairs"])
    folder = os.path.join(data_dir, "ntrex", "NTREX-128")
    for lang, code in pairs.NTREX_CODES.items():
        assert os.path.isfile(os.path.join(folder, f"newstest2019-ref.{code}.txt")), lang
    ntrex = pairs.languages_in_ntrex(data_dir, groups.trained_languages(files))
    assert set(teacher) <= set(ntrex) and {"pes", "zsm", "lvs", "srp", "mya"} <= set(ntrex)
    assert len(ntrex) == 73


def test_scatter_chart(tmp_path):
    path = plots.scatter_chart({"deu": 97.8, "afr": 60.0, "amh": 5.0, "x": 1.0},
                               {"deu": 94.7, "afr": 41.0, "amh": 2.0},
                               str(tmp_path / "charts" / "scatter.png"),
                               groups={"teacher": ["deu"], "no_pairs": ["amh"]},
                               group_titles=groups.TITLES, title="student against teacher")
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not re.search(r"\.tmp", " ".join(os.listdir(tmp_path / "charts")))
