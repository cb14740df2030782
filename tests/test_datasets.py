"""`lealla data fetch` against a local server laid out like raw.githubusercontent.com.

The server holds the published upstream files (``upstream-sample/``, ``ntrex/`` and
``tatoeba/v1`` of the data root) at the pinned repository paths; it answers HTTP ``Range``
requests, can send a file slowly (to kill a download half way) and can send damaged bytes.
"""

import filecmp
import http.server
import os
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

from lealla_tf import cli, paths
from lealla_tf.data import datasets
from lealla_tf.recipes import demo

SAMPLE_TRAIN = ("afr", "deu", "nor", "cmn_Hans")


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        srv = self.server
        rel = urllib.parse.unquote(self.path.split("?")[0]).lstrip("/")
        path = os.path.join(srv.root, rel)
        srv.log.append((rel, self.headers.get("Range")))
        if not os.path.isfile(path):
            self.send_error(404)
            return
        with open(path, "rb") as f:
            data = f.read()
        if any(rel.endswith(c) for c in srv.corrupt):
            data = data[:-8] + b"XXXXXXXX"
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        for i in range(start, len(data), srv.chunk):
            try:
                self.wfile.write(data[i:i + srv.chunk])
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return
            if srv.delay:
                time.sleep(srv.delay)

    def log_message(self, *args):
        pass


class _Mirror:
    """A local raw.githubusercontent.com: ``<owner>/<repo>/<commit>/<path>``."""

    def __init__(self, site, delay=0.0, chunk=1 << 16):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.root, self.httpd.log, self.httpd.corrupt = str(site), [], set()
        self.httpd.delay, self.httpd.chunk = delay, chunk
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    log = property(lambda self: self.httpd.log)
    corrupt = property(lambda self: self.httpd.corrupt)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def site(data_dir, tmp_path_factory):
    """The upstream repositories at their pinned commits, as symlinks into the data root."""
    root = tmp_path_factory.mktemp("site")
    laser, laser_commit = datasets.REPOSITORIES["laser"]
    opus, opus_commit = datasets.REPOSITORIES["opus"]
    links = {
        root / laser / laser_commit / "data" / "tatoeba" / "v1":
            os.path.join(data_dir, "tatoeba", "v1"),
        root / opus / opus_commit / "datasets" / "helsinki_nlp":
            os.path.join(data_dir, "upstream-sample", "datasets", "helsinki_nlp"),
        root / opus / opus_commit / "datasets" / "microsoft" / "ntrex" / "NTREX":
            os.path.join(data_dir, "ntrex"),
    }
    for link, target in links.items():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
    return root


def _fetch(server, tmp_path, sets, langs, **kw):
    return datasets.fetch(sets, langs, output=str(tmp_path / "out"), cache=str(tmp_path / "cache"),
                          mirror=server.url, progress=False, **kw)


def _no_part_files(folder):
    return not [f for _, _, fs in os.walk(folder) for f in fs if f.endswith(".part")]


def test_table_covers_every_file_and_the_train_rule(data_dir):
    """The package table names every file of the data root with its size and SHA-256."""
    rows = datasets.table()
    assert {e.set for e in rows} == set(datasets.SETS)
    targets = {e.target for e in rows if e.target}
    for sub in ("tatoeba/v1", "train", "ntrex/NTREX-128"):
        on_disk = {f"{sub}/{f}" for f in os.listdir(os.path.join(data_dir, sub))
                   if not f.endswith(".md")}
        assert on_disk <= targets, sorted(on_disk - targets)[:5]
    assert len(datasets.codes("tatoeba")) == 112
    assert len([e for e in rows if e.set == "train" and not e.repo]) == 151
    assert datasets.test_languages("cmn_Hans") == ["cmn"]
    assert datasets.test_languages("nor") == ["nob", "nno"]
    assert datasets.test_languages("zho") == ["cmn", "yue", "wuu"]
    assert datasets.test_languages("toki") == []
    # Everything in the data root is already verified: nothing to fetch or derive.
    p = datasets.plan(datasets.SETS, "all", output=data_dir, cache="/nonexistent")
    assert p.downloads == [] and p.derive == []


def test_plan_sizes_and_bad_input(tmp_path):
    p = datasets.plan(datasets.SETS, list(demo.DEMO_LANGUAGES), output=str(tmp_path / "o"),
                      cache=str(tmp_path / "c"))
    names = {os.path.basename(e.path) for e, _ in p.downloads}
    assert {"newstest2019-src.eng.txt", "newstest2019-ref.arb.txt",
            "newstest2019-ref.zho_Hans.txt", "tatoeba.cmn-eng.cmn", "LICENSE.md"} <= names
    assert {e.target for e in p.derive} >= {"train/cmn_Hans-eng.tsv", "train/cmn_Hant-eng.tsv",
                                            "train/jpn_Hira-eng.tsv", "train/deu-eng.tsv"}
    assert 15e6 < p.download_bytes < 30e6
    with pytest.raises(ValueError, match="unknown language.*xyz"):
        datasets.plan(["tatoeba"], "deu,xyz", output=str(tmp_path / "o"))
    with pytest.raises(ValueError, match="unknown data set.*bucc"):
        datasets.plan("tatoeba,bucc", "deu", output=str(tmp_path / "o"))


def test_fetch_derives_train_byte_for_byte_and_caches(site, data_dir, tmp_path):
    with _Mirror(site) as server:
        root = _fetch(server, tmp_path, ["tatoeba", "train", "ntrex"], list(SAMPLE_TRAIN))
        for name in SAMPLE_TRAIN:
            assert filecmp.cmp(os.path.join(root, "train", f"{name}-eng.tsv"),
                               os.path.join(data_dir, "train", f"{name}-eng.tsv"),
                               shallow=False), name
        # The test sets the rule needed came along (nor -> nob + nno, cmn_Hans -> cmn).
        for lang in ("afr", "deu", "nob", "nno", "cmn"):
            f = f"tatoeba/v1/tatoeba.{lang}-eng.{lang}"
            assert filecmp.cmp(os.path.join(root, f), os.path.join(data_dir, f), shallow=False)
        for f in ("newstest2019-src.eng.txt", "newstest2019-ref.deu.txt",
                  "newstest2019-ref.afr.txt"):
            assert filecmp.cmp(os.path.join(root, "ntrex", "NTREX-128", f),
                               os.path.join(data_dir, "ntrex", "NTREX-128", f), shallow=False)
        assert os.path.isfile(os.path.join(root, "ntrex", "LANGUAGES.tsv"))
        assert _no_part_files(tmp_path)
        n = len(server.log)
        _fetch(server, tmp_path, ["tatoeba", "train", "ntrex"], list(SAMPLE_TRAIN))
        assert len(server.log) == n  # everything verified in place, nothing fetched again
        # A damaged file in the data root is fetched again on the next run.
        damaged = os.path.join(root, "ntrex", "NTREX-128", "newstest2019-ref.deu.txt")
        with open(damaged, "r+b") as f:
            f.write(b"garbage")
        _fetch(server, tmp_path, ["ntrex"], ["deu"])
        assert len(server.log) == n + 1
        assert filecmp.cmp(damaged, os.path.join(data_dir, "ntrex", "NTREX-128",
                                                 "newstest2019-ref.deu.txt"), shallow=False)


def test_fetch_all_of_ntrex_matches(site, data_dir, tmp_path):
    with _Mirror(site) as server:
        root = _fetch(server, tmp_path, ["ntrex"], "all")
    ours = os.path.join(root, "ntrex")
    for sub in ("", "NTREX-128"):
        names = [f for f in os.listdir(os.path.join(data_dir, "ntrex", sub))
                 if os.path.isfile(os.path.join(data_dir, "ntrex", sub, f)) and f != "README.md"]
        match, mismatch, errors = filecmp.cmpfiles(os.path.join(data_dir, "ntrex", sub),
                                                   os.path.join(ours, sub), names, shallow=False)
        assert not mismatch and not errors and len(match) == len(names)
    assert len(os.listdir(os.path.join(ours, "NTREX-128"))) == 129


def test_corrupted_download_is_refused_then_fetched_again(site, data_dir, tmp_path):
    with _Mirror(site) as server:
        server.corrupt.add("newstest2019-ref.deu.txt")
        with pytest.raises(datasets.ChecksumError,
                           match=r"newstest2019-ref\.deu\.txt downloaded from http://127\.0\.0\.1"
                                 r".*expected sha256 [0-9a-f]{64}"):
            _fetch(server, tmp_path, ["ntrex"], ["deu"])
        deu = tmp_path / "out" / "ntrex" / "NTREX-128" / "newstest2019-ref.deu.txt"
        assert not deu.exists() and _no_part_files(tmp_path)
        # The CLI says the same in one line and exits 2.
        rc = cli.main(["data", "fetch", "--sets", "ntrex", "--languages", "deu", "--output",
                       str(tmp_path / "out"), "--cache", str(tmp_path / "cache"),
                       "--mirror", server.url, "--no-progress"])
        assert rc == 2 and not deu.exists()
        server.corrupt.clear()
        _fetch(server, tmp_path, ["ntrex"], ["deu"])
        assert filecmp.cmp(deu, os.path.join(data_dir, "ntrex", "NTREX-128", deu.name),
                           shallow=False)


def test_killed_download_resumes(site, data_dir, tmp_path):
    """Kill a fetch half way through a file; the next run asks for the rest only."""
    name = "tatoeba-test-v2021-08-07.deu"  # 1.3 MB, sent in 16 KiB pieces every 20 ms
    code = ("import sys; from lealla_tf.data import datasets; datasets.fetch(['train'], ['deu'], "
            "output=sys.argv[1], cache=sys.argv[2], mirror=sys.argv[3], progress=False)")
    part = None
    with _Mirror(site, delay=0.02, chunk=1 << 14) as server:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [os.path.dirname(os.path.dirname(os.path.abspath(datasets.__file__)))]
            + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "out"),
                                 str(tmp_path / "cache"), server.url], env=env)
        try:
            deadline = time.time() + 60
            while time.time() < deadline and proc.poll() is None:
                found = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "cache")
                         for f in fs if f == name + ".part"]
                if found and os.path.getsize(found[0]) > 200_000:
                    part = found[0]
                    break
                time.sleep(0.05)
        finally:
            proc.kill()
            proc.wait()
        assert part, "the download never got half way"
        have = os.path.getsize(part)
        assert have < os.path.getsize(os.path.join(
            data_dir, "upstream-sample", "datasets", "helsinki_nlp", "tatoeba", "testsets",
            "deu-eng", name))
        assert not os.path.exists(part[:-len(".part")])
        server.httpd.delay = 0.0
        root = _fetch(server, tmp_path, ["train"], ["deu"])
        resumed = [r for p, r in server.log if p.endswith(name) and r]
        assert resumed and int(resumed[-1].split("=")[1].split("-")[0]) >= have
    assert filecmp.cmp(os.path.join(root, "train", "deu-eng.tsv"),
                       os.path.join(data_dir, "train", "deu-eng.tsv"), shallow=False)
    assert _no_part_files(tmp_path)


def test_demo_without_data_root_fetches_into_the_cache(site, data_dir, tmp_path, monkeypatch,
                                                        capsys):
    """`lealla demo` with neither --data-dir nor LEALLA_DATA_DIR fetches what it needs.

    The local server holds the upstream train files of four languages only, so the demo's
    languages are narrowed to German; its later stages are cut short by an unknown teacher.
    """
    monkeypatch.delenv("LEALLA_DATA_DIR", raising=False)
    monkeypatch.setenv("LEALLA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(demo, "DEMO_LANGUAGES", ("deu",))
    with _Mirror(site) as server:
        monkeypatch.setenv(datasets.MIRROR_ENV, server.url)
        with pytest.raises(ValueError, match="teacher spec"):
            cli.main(["demo", "--output", str(tmp_path / "demo"), "--teacher", "no-such-teacher",
                      "--pairs-per-language", "50", "--set", "data.languages=[deu]",
                      "--set", "vocab.vocab_size=200", "--set", "vocab.sentences_per_language=50"])
    printed = capsys.readouterr().out
    root = paths.default_data_root()
    assert root == str(tmp_path / "cache" / "datasets") and "fetching" in printed
    assert filecmp.cmp(os.path.join(root, "train", "deu-eng.tsv"),
                       os.path.join(data_dir, "train", "deu-eng.tsv"), shallow=False)
    for f in ("tatoeba/v1/tatoeba.deu-eng.deu", "ntrex/NTREX-128/newstest2019-ref.deu.txt",
              "ntrex/NTREX-128/newstest2019-src.eng.txt"):
        assert filecmp.cmp(os.path.join(root, f), os.path.join(data_dir, f), shallow=False), f
    assert paths.data_dir() == root  # later commands find the fetched data by themselves
