"""``lealla teacher embed --runner beam``: on the DirectRunner with 2 worker processes the
shards equal the local job's (rows, order, checksums, malformed lines included; compact
shards too, projected with the PCA the driver fitted); a run killed mid-way and restarted
redoes only the missing shards; without Beam the flag names the extra."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lealla_tf import cli, embedders
from lealla_tf.distill import store

TESTS = os.path.dirname(os.path.abspath(__file__))
SPEC = "py:support.beam_teacher:TEACHER"
SHARD = 5
BEAM_ARGS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
# The kill test runs its workers as threads of the (killed) driver: the same pipeline
# without spawning worker processes, to keep the test short; the test above covers the
# worker processes.
THREAD_ARGS = ["--direct_num_workers=2", "--direct_running_mode=multi_threading"]

LINES = [
    b"Hallo.\tHello.\n",
    b"\tNo source side.\n",                                # empty side
    b"Guten Morgen!\tGood morning.\n",
    b"Der Hund schl\xc3\xa4ft.\tThe dog sleeps.\n",
    b"Kaputt \xff\xfe.\tBroken bytes.\n",                   # invalid UTF-8
    b"Drei\tFelder\tzu viel\n",                            # wrong field count
    b"Danke.\t   \n",                                      # whitespace-only side
    b"\n",                                                 # empty line
    b"Hallo.\tHello.\n",                                   # repeated pair
]


def _corpus(path, n=45):
    lines = LINES + [f"Satz {i}.\tSentence number {i}.\n".encode() for i in range(n)]
    lines[-1] = lines[-1].rstrip(b"\n")  # last line without newline
    path.write_bytes(b"".join(lines))
    return str(path)


@pytest.fixture
def worker_env(monkeypatch, tmp_path):
    """Beam's worker processes import the test teacher from tests/."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [TESTS] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    monkeypatch.syspath_prepend(TESTS)
    monkeypatch.setenv("LEALLA_TEST_TEACHER_LOG", str(tmp_path / "log"))
    monkeypatch.delenv("LEALLA_TEST_TEACHER_SLEEP", raising=False)
    return tmp_path


def _shards(out):
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    (entry,) = manifest["files"].values()
    folder = os.path.join(out, entry["dir"])
    return manifest, entry, folder


def _assert_same_store(a, b):
    ma, ea, fa = _shards(a)
    mb, eb, fb = _shards(b)
    for key in ("format_version", "teacher", "dim", "dtype", "shard_size"):
        assert ma[key] == mb[key]
    for key in ("path", "size", "sha256", "num_lines", "stats", "dir", "num_shards",
                "complete"):
        assert ea[key] == eb[key], key
    assert (sorted(ea["shards"], key=lambda r: r["start"])
            == sorted(eb["shards"], key=lambda r: r["start"]))
    assert sorted(os.listdir(fa)) == sorted(os.listdir(fb))
    for name in sorted(os.listdir(fa)):
        with np.load(os.path.join(fa, name)) as za, np.load(os.path.join(fb, name)) as zb:
            assert set(za.files) == set(zb.files) == {"src", "tgt", "valid", "meta"}
            for key in ("src", "tgt", "valid"):
                assert za[key].dtype == zb[key].dtype
                assert za[key].tobytes() == zb[key].tobytes(), (name, key)
            assert json.loads(str(za["meta"])) == json.loads(str(zb["meta"]))


@pytest.mark.beam
def test_beam_direct_runner_two_workers_writes_the_local_shards(worker_env):
    from lealla_tf.distill import store_beam
    tsv = _corpus(worker_env / "deu-eng.tsv")
    teacher = embedders.load(SPEC)
    local = str(worker_env / "local")
    store.precompute(teacher, [tsv], local, shard_size=SHARD, batch_size=3,
                                  progress=False)
    beam_out = str(worker_env / "beam")
    manifest = store_beam.precompute(
        SPEC, [tsv], beam_out, shard_size=SHARD, batch_size=3, pipeline_args=BEAM_ARGS)
    _assert_same_store(local, beam_out)
    _, entry, _ = _shards(beam_out)
    assert entry["num_shards"] == 11 and entry["complete"]
    assert entry["stats"]["ok"] < entry["num_lines"]  # malformed lines are in there
    assert manifest["last_run"]["shards_submitted"] == 11
    assert manifest["last_run"]["sentences_encoded"] > 0
    assert store.verify(beam_out) == []
    for a, b in zip(store.load_precomputed(local, tsv),
                    store.load_precomputed(beam_out, tsv)):
        assert np.array_equal(a, b)
    # The work was spread: the teacher ran in more than one worker process.
    pids = {name.split("-")[0] for name in os.listdir(worker_env / "log")}
    assert len(pids) >= 2
    # Done means done: a rerun submits nothing, on either executor.
    again = store_beam.precompute(SPEC, [tsv], beam_out, shard_size=SHARD,
                                               pipeline_args=BEAM_ARGS)
    assert again["last_run"]["shards_submitted"] == 0
    assert store.precompute(teacher, [tsv], beam_out, shard_size=SHARD,
                                         progress=False)["last_run"]["sentences_encoded"] == 0


@pytest.mark.beam
def test_beam_run_killed_midway_resumes_without_redoing_finished_shards(worker_env):
    tsv = _corpus(worker_env / "deu-eng.tsv", n=71)  # 80 lines: 16 shards
    out = str(worker_env / "killed")
    env = dict(os.environ, LEALLA_TEST_TEACHER_SLEEP="0.5",
               LEALLA_TEST_TEACHER_LOG=str(worker_env / "log1"))
    cmd = [sys.executable, "-m", "lealla_tf.cli", "teacher", "embed", "--teacher", SPEC,
           "--input", tsv, "--output", out, "--shard-size", str(SHARD), "--batch-size", "2",
           "--runner", "beam"] + THREAD_ARGS
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    folder = None
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if os.path.exists(os.path.join(out, "manifest.json")):
                folder = folder or _shards(out)[2]
                if len([n for n in os.listdir(folder) if n.endswith(".npz")]) >= 3:
                    break
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and its worker processes
        log = proc.communicate()[0].decode(errors="replace")
    assert proc.returncode == -signal.SIGKILL, log[-3000:]
    finished = {n: os.stat(os.path.join(folder, n)) for n in os.listdir(folder)
                if n.endswith(".npz")}
    assert 3 <= len(finished) < 16

    assert cli.main(["teacher", "embed", "--teacher", SPEC, "--input", tsv, "--output", out,
                     "--shard-size", str(SHARD), "--batch-size", "2", "--runner", "beam"]
                    + THREAD_ARGS) == 0
    manifest, entry, folder = _shards(out)
    assert entry["complete"] and manifest["last_run"]["runner"] == "beam:DirectRunner"
    assert manifest["last_run"]["shards_submitted"] == 16 - len(finished)
    for name, st in finished.items():  # untouched: not rewritten, not replaced
        now = os.stat(os.path.join(folder, name))
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), name
    # No sentence of a finished shard went through the teacher again.
    from support import beam_teacher
    redone = set(beam_teacher.logged_sentences(str(worker_env / "log")))
    done_lines = set()
    for name in finished:
        start, end = (int(x) for x in name[:-4].split("-"))
        done_lines |= set(range(start, end))
    raw = open(tsv, "rb").read().splitlines()
    for i in sorted(done_lines):
        if i >= len(LINES):  # the numbered lines: sentences found nowhere else
            assert raw[i].decode().split("\t")[0] not in redone
    assert store.verify(out) == []
    full = str(worker_env / "full")
    store.precompute(embedders.load(SPEC), [tsv], full, shard_size=SHARD,
                                  batch_size=2, progress=False)
    _assert_same_store(full, out)


@pytest.mark.beam
def test_beam_writes_compact_shards_with_the_drivers_projection(worker_env, capsys):
    """--dim/--dtype on Beam: the driver fits the PCA once, the workers project with it and
    write the local job's shards; the local job then finds them done; a resume with
    another dtype is refused."""
    from lealla_tf.distill import store_beam
    tsv = _corpus(worker_env / "deu-eng.tsv")
    teacher = embedders.load(SPEC)
    local = str(worker_env / "local")
    store.precompute(teacher, [tsv], local, shard_size=SHARD, batch_size=3,
                                  progress=False, dim=6, dtype="float16")
    beam_out = str(worker_env / "beam")
    manifest = store_beam.precompute(
        SPEC, [tsv], beam_out, shard_size=SHARD, batch_size=3, pipeline_args=THREAD_ARGS,
        dim=6, dtype="float16")
    assert manifest["dim"] == 6 and manifest["teacher_dim"] == 16
    assert manifest["format_version"] == store.COMPACT_FORMAT_VERSION
    sha = manifest["projection"]
    data = open(os.path.join(beam_out, store.PROJECTION), "rb").read()
    assert hashlib.sha256(data).hexdigest() == sha
    _, entry, folder = _shards(beam_out)
    assert entry["complete"] and entry["num_shards"] == 11
    for name in os.listdir(folder):
        with np.load(os.path.join(folder, name)) as z:
            meta = json.loads(str(z["meta"]))
            assert meta["projection"] == sha and meta["dtype"] == "float16"
            assert z["src"].shape[1] == 6
    assert store.verify(beam_out) == []
    assert _shards(local)[0]["projection"] == sha  # the same PCA (a deterministic SVD)
    for a, b in zip(store.load_precomputed(local, tsv),
                    store.load_precomputed(beam_out, tsv)):
        assert np.array_equal(a, b)
    # The local job recognises the Beam shards as done (same projection and dtype).
    assert store.precompute(
        teacher, [tsv], beam_out, shard_size=SHARD, progress=False, dim=6,
        dtype="float16")["last_run"]["sentences_encoded"] == 0
    # Another dtype on the same directory is refused without --overwrite.
    argv = ["teacher", "embed", "--teacher", SPEC, "--input", tsv, "--output", beam_out,
            "--shard-size", str(SHARD), "--runner", "beam", "--dim", "6"]
    assert cli.main(argv + ["--dtype", "int8"] + THREAD_ARGS) == 2
    assert "int8" in capsys.readouterr().err
    # From the command line: int8 rows with their scales, fitted once on the driver.
    out = str(worker_env / "int8")
    argv[argv.index(beam_out)] = out
    assert cli.main(argv + ["--dtype", "int8", "--pca-sample", "40"] + THREAD_ARGS) == 0
    manifest, entry, folder = _shards(out)
    assert entry["complete"] and manifest["dtype"] == "int8" and manifest["dim"] == 6
    with np.load(os.path.join(folder, sorted(os.listdir(folder))[0])) as z:
        assert z["src"].dtype == np.int8 and "src_scale" in z.files
    proj = store.load_projection(out)
    assert proj["components"].shape == (6, 16) and proj["sample_size"] <= 40
    assert store.verify(out) == []


def test_without_beam_the_flag_names_the_extra(tmp_path, monkeypatch, capsys, worker_env):
    monkeypatch.setitem(sys.modules, "apache_beam", None)  # only the optional package
    tsv = _corpus(tmp_path / "deu-eng.tsv", n=5)
    argv = ["teacher", "embed", "--teacher", SPEC, "--input", tsv, "--output",
            str(tmp_path / "out"), "--shard-size", str(SHARD)]
    assert cli.main(argv + ["--runner", "beam"]) == 2
    err = capsys.readouterr().err
    assert "lealla_tf[beam]" in err
    assert not os.path.exists(tmp_path / "out" / "manifest.json")
    assert cli.main(argv) == 0  # the local job needs no Beam
    assert store.verify(str(tmp_path / "out")) == []
    with pytest.raises(SystemExit):  # Beam options only go with --runner beam
        cli.main(argv + ["--direct_num_workers=2"])
