"""Tatoeba: oracle = 100 %, random ~ chance, exact XTREME set, download with checksums."""

import functools
import hashlib
import http.server
import json
import os
import shutil
import threading

import numpy as np
import pytest

from lealla_tf import cli
from lealla_tf.evaluation import runner, tatoeba


@pytest.fixture(autouse=True)
def _cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LEALLA_CACHE_DIR", str(tmp_path / "cache"))


def oracle_for(lang, directory, dim=32):
    """Maps line i of both files to the same random unit vector (a perfect encoder)."""
    src, eng = tatoeba.load_pair(lang, directory)
    codebook = np.random.default_rng(0).normal(size=(len(src), dim)).astype(np.float32)
    table = {s: i for i, s in enumerate(src)}
    table.update({s: i for i, s in enumerate(eng)})
    return runner.CallableEmbedder(lambda sents: codebook[[table[s] for s in sents]],
                                   name=f"oracle-{lang}")


def random_embedder(dim=32, seed=0):
    rng = np.random.default_rng(seed)
    memo = {}

    def enc(sents):
        return np.stack([memo.setdefault(s, rng.normal(size=dim)) for s in sents]).astype(
            np.float32)
    return runner.CallableEmbedder(enc, name=f"random-{seed}")


def test_xtreme36_is_exact():
    # google-research/xtreme utils_preprocess.py, tatoeba_preprocess.lang3_dict
    assert len(tatoeba.XTREME36) == len(set(tatoeba.XTREME36)) == 36
    assert set(tatoeba.XTREME36) == set(
        "afr ara bul ben deu ell spa est eus pes fin fra heb hin hun ind ita jpn jav kat kaz "
        "kor mal mar nld por rus swh tam tel tha tgl tur urd vie cmn".split())
    assert len(tatoeba.LANGUAGES) == 112
    assert set(tatoeba.XTREME36) <= set(tatoeba.LANGUAGES)
    assert tatoeba.resolve_languages("xtreme36") == list(tatoeba.XTREME36)
    assert tatoeba.resolve_languages("deu, fra") == ["deu", "fra"]
    with pytest.raises(ValueError, match="xxx"):
        tatoeba.resolve_languages("deu,xxx")


def test_accuracy_counts_index_errors_in_both_directions():
    x = np.eye(50, dtype=np.float32)
    y = x.copy()
    y[[0, 1]] = y[[1, 0]]  # English lines 0 and 1 swapped
    y[2] = x[3]            # English line 2 duplicates line 3; x[2] matches nothing
    xx2en, en2xx = tatoeba.accuracy(x, y)
    assert xx2en == pytest.approx(100 * 46 / 50)  # 0, 1, 2 and 3 (tie -> lowest index 2)
    assert en2xx == pytest.approx(100 * 47 / 50)  # 0, 1 and 2


def test_oracle_scores_100_on_every_tatoeba_file(data_dir):
    directory = tatoeba.find_local_dir(data_dir)
    for lang in tatoeba.LANGUAGES:
        res = tatoeba.evaluate(oracle_for(lang, directory), [lang], data_dir=data_dir,
                               use_cache=False, progress=False)
        r = res["per_language"][lang]
        assert (r["xx2en"], r["en2xx"], r["mean"]) == (100.0, 100.0, 100.0), lang
        assert r["n"] == len(tatoeba.load_pair(lang, directory)[0])


def test_random_encoder_scores_near_chance(data_dir, tmp_path):
    res = tatoeba.evaluate(random_embedder(), "xtreme36", data_dir=data_dir, progress=False)
    assert res["n_languages"] == 36 and list(res["per_language"]) == list(tatoeba.XTREME36)
    chance = np.mean([100.0 / r["n"] for r in res["per_language"].values()])
    assert res["average"]["mean"] < 5 * chance + 0.5
    assert res["average"]["mean"] == pytest.approx(
        np.mean([r["mean"] for r in res["per_language"].values()]))
    tatoeba.save(res, str(tmp_path / "r.json"), plot=str(tmp_path / "r.png"))
    assert json.loads((tmp_path / "r.json").read_text())["n_languages"] == 36
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "average" in tatoeba.format_table(res)


# ----------------------------------------------------------------------------- download


class _Server:
    """A static HTTP server on 127.0.0.1 that counts the files it serves."""

    def __init__(self, directory):
        self.requests = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                return super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data/tatoeba/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _made_up_site(root):
    folder = root / "data" / "tatoeba" / "v1"
    folder.mkdir(parents=True)
    files = {"tatoeba.xyz-eng.xyz": "xyz eins\nxyz zwei\n",
             "tatoeba.xyz-eng.eng": "one\ntwo\n"}
    sums = {}
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
        sums[name] = hashlib.sha256(text.encode()).hexdigest()
    return folder, sums


def test_download_caches_and_verifies(tmp_path):
    folder, sums = _made_up_site(tmp_path / "site")
    with _Server(tmp_path / "site") as server:
        out = tatoeba.download(["xyz"], cache_dir=str(tmp_path / "dl"), base_url=server.url,
                               checksums=sums, progress=False)
        assert len(server.requests) == 2
        for name in sums:
            assert (tmp_path / "dl" / name).read_bytes() == (folder / name).read_bytes()
        tatoeba.download(["xyz"], cache_dir=out, base_url=server.url, checksums=sums,
                         progress=False)
        assert len(server.requests) == 2  # cached, verified, not fetched again
        (tmp_path / "dl" / "tatoeba.xyz-eng.eng").write_text("damaged\n")
        tatoeba.download(["xyz"], cache_dir=out, base_url=server.url, checksums=sums,
                         progress=False)
        assert len(server.requests) == 3  # the damaged file was fetched again
        assert (tmp_path / "dl" / "tatoeba.xyz-eng.eng").read_text() == "one\ntwo\n"


def test_download_checksum_mismatch_is_a_clear_error(tmp_path):
    folder, sums = _made_up_site(tmp_path / "site")
    (folder / "tatoeba.xyz-eng.eng").write_text("tampered\n")
    with _Server(tmp_path / "site") as server:
        with pytest.raises(tatoeba.ChecksumError, match=r"tatoeba\.xyz-eng\.eng.*expected sha256"):
            tatoeba.download(["xyz"], cache_dir=str(tmp_path / "dl"), base_url=server.url,
                             checksums=sums, progress=False)
    assert not (tmp_path / "dl" / "tatoeba.xyz-eng.eng").exists()
    assert not [f for f in os.listdir(tmp_path / "dl") if f.endswith(".part")]


def test_download_from_file_url_and_unreachable_url(tmp_path):
    folder, sums = _made_up_site(tmp_path / "site")
    out = tatoeba.download(["xyz"], cache_dir=str(tmp_path / "dl"),
                           base_url=folder.as_uri(), checksums=sums, progress=False)
    assert sorted(os.listdir(out)) == sorted(sums)
    with pytest.raises(ConnectionError, match="--data-dir"):
        tatoeba.download(["xyz"], cache_dir=str(tmp_path / "dl2"),
                         base_url=(tmp_path / "nowhere").as_uri(), checksums=sums,
                         progress=False)


def test_published_checksums_and_evaluate_without_data_dir(data_dir, tmp_path):
    """Serve two real languages like GitHub does; evaluate() downloads and verifies them."""
    site = tmp_path / "site" / "data" / "tatoeba" / "v1"
    site.mkdir(parents=True)
    src_dir = tatoeba.find_local_dir(data_dir)
    for lang in ("afr", "deu"):
        for name in tatoeba.file_names(lang):
            shutil.copy(os.path.join(src_dir, name), site / name)
    with _Server(tmp_path / "site") as server:
        res = tatoeba.evaluate(oracle_for("afr", src_dir), ["afr"], base_url=server.url,
                               progress=False)
        assert res["per_language"]["afr"]["mean"] == 100.0
        # Default cache location under $LEALLA_CACHE_DIR.
        assert os.path.isfile(tmp_path / "cache" / "datasets" / "tatoeba" / "v1" /
                              "tatoeba.afr-eng.afr")
        # A real file with the wrong content is refused.
        (site / "tatoeba.deu-eng.eng").write_bytes((site / "tatoeba.afr-eng.eng").read_bytes())
        with pytest.raises(tatoeba.ChecksumError):
            tatoeba.download(["deu"], base_url=server.url, progress=False)


# ----------------------------------------------------------------------------- CLI


def test_cli_eval_tatoeba_with_python_callable(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "tato"
    folder.mkdir()
    n = 30
    (folder / "tatoeba.deu-eng.deu").write_text("".join(f"Satz {i}\n" for i in range(n)))
    (folder / "tatoeba.deu-eng.eng").write_text("".join(f"sentence {i}\n" for i in range(n)))
    (folder / "tatoeba.fra-eng.fra").write_text("".join(f"phrase {i}\n" for i in range(n)))
    (folder / "tatoeba.fra-eng.eng").write_text("".join(f"sentence {(i + 1) % n}\n"
                                                        for i in range(n)))
    (tmp_path / "line_oracle.py").write_text(
        "import numpy as np\n"
        "CODE = np.random.default_rng(0).normal(size=(100, 8))\n"
        "def encode(sentences):\n"
        "    return CODE[[int(s.split()[-1]) for s in sentences]]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "res" / "results.json"
    rc = cli.main(["eval", "tatoeba", "--model", "py:line_oracle:encode", "--languages",
                   "deu,fra", "--data-dir", str(folder), "--output", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["per_language"]["deu"]["mean"] == 100.0
    assert res["per_language"]["fra"]["mean"] == 0.0  # English shifted by one line
    assert res["average"]["mean"] == 50.0
    assert (tmp_path / "res" / "results.png").exists()
    assert "deu" in capsys.readouterr().out
    rc = cli.main(["eval", "tatoeba", "--model", "py:line_oracle:encode", "--languages",
                   "klingon", "--data-dir", str(folder)])
    assert rc == 2
    assert "unknown Tatoeba language" in capsys.readouterr().err
