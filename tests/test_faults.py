"""Faults done on purpose: every way a command can fail because of its user or its
machine (bad flags, missing or malformed inputs, outputs that cannot be written, a full
or read-only disk, Ctrl-C, SIGKILL) ends in one ``lealla: error:`` line naming the
problem and where, with exit code 2 (130 for Ctrl-C), no traceback, and nothing the user
had before is lost. benchmarks/RESULTS.md ("Failures done on purpose") lists the cases and
what the user sees.

Models are ``py:test_faults:encode`` (a hash of each sentence, no TensorFlow), so the
command-line runs in subprocesses take a fraction of a second.
"""

import errno
import hashlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lealla_tf import cli, fileio, hardware
from lealla_tf.cli import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
MODEL = "py:test_faults:encode"
DIM = 32
DELAY_ENV = "LEALLA_FAULTS_DELAY"  # seconds encode() sleeps per call, in subprocesses


def _vector(sentence) -> np.ndarray:
    data = sentence if isinstance(sentence, bytes) else sentence.encode("utf-8")
    seed = int.from_bytes(hashlib.sha256(data).digest()[:8], "little")
    return np.random.default_rng(seed).normal(size=DIM).astype(np.float32) + 3.0


def encode(sentences):
    """The test model: a fixed random vector per sentence (never a zero row)."""
    time.sleep(float(os.environ.get(DELAY_ENV, "0")))
    return np.stack([_vector(s) for s in sentences])


# ------------------------------------------------------------------------------ helpers
def _one_error_line(err: str) -> str:
    """The one ``lealla: error:`` line of ``err``: there is exactly one, it is the last
    line (progress bars and notes may come before it) and no traceback is shown."""
    assert "Traceback" not in err, err
    lines = [line for line in re.split(r"[\r\n]+", err) if line.strip()]
    found = [line for line in lines if line.startswith("lealla: error: ")]
    assert len(found) == 1 and lines[-1] == found[0], err
    return found[0]


def _fails(argv, message, capsys, code=2) -> str:
    """Runs ``lealla argv`` here; asserts the exit code, one error line containing
    ``message`` and nothing on stdout."""
    assert cli.main(argv) == code
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert message in line, line
    assert captured.out == ""
    return line


def _env(**extra):
    return dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTS]), **extra)


def _python(script, *argv, env=None, timeout=120):
    """``python -c script argv`` in a subprocess with this checkout on its path."""
    return subprocess.run([sys.executable, "-c", script, *argv], env=env or _env(),
                          capture_output=True, text=True, timeout=timeout)


def _lealla(argv, prefix=(), timeout=120, **env):
    """``python -m lealla_tf.cli argv`` in a subprocess (``prefix``: e.g. setpriv)."""
    return subprocess.run([*prefix, sys.executable, "-m", "lealla_tf.cli", *argv],
                          env=_env(**env), capture_output=True, text=True, timeout=timeout)


def _sentences(folder, n, name="sentences.txt", tag="s"):
    path = os.path.join(str(folder), name)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{tag} sentence number {i}\n" for i in range(n))
    return path


def _expected(path) -> np.ndarray:
    with open(path, "rb") as f:
        return encode(f.read().split(b"\n")[:-1])


def _tsv(folder, name="deu-eng.tsv", n=20):
    path = os.path.join(str(folder), name)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"Satz {i}\tsentence {i}\n" for i in range(n))
    return path


def _good_output(tmp_path, n=40):
    """An earlier, complete ``lealla embed`` output: (its path, its bytes)."""
    out = str(tmp_path / "out.npy")
    old = _sentences(tmp_path, n, "old.txt", tag="old")
    assert cli.main(["embed", "--model", MODEL, "--input", old, "--output", out]) == 0
    np.testing.assert_array_equal(np.load(out), _expected(old))
    with open(out, "rb") as f:
        return out, f.read()


def _same_file(path, data: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read() == data


def _temporaries(folder):
    return [n for n in os.listdir(folder) if ".tmp-" in n]


# ------------------------------------------------------------- lealla embed --output
def test_embed_writes_the_output_in_one_piece(tmp_path, capsys):
    out, _ = _good_output(tmp_path)
    new = _sentences(tmp_path, 25)
    assert cli.main(["embed", "--model", MODEL, "--input", new, "--output", out,
                     "--batch-size", "4"]) == 0
    assert "25 embeddings (32-d) written to" in capsys.readouterr().err
    np.testing.assert_array_equal(np.load(out), _expected(new))
    assert _temporaries(tmp_path) == []
    # An empty input gives an empty matrix of the model's width.
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert cli.main(["embed", "--model", MODEL, "--input", str(empty), "--output", out]) == 0
    assert np.load(out).shape == (0, DIM)


@pytest.mark.parametrize("case", ["batch-size 0", "threads -1", "missing input",
                                  "input is a folder", "model cannot load",
                                  "output is a folder", "output under a file"])
def test_a_failed_embed_keeps_the_earlier_output(case, tmp_path, capsys):
    out, before = _good_output(tmp_path)
    capsys.readouterr()
    sentences = _sentences(tmp_path, 10)
    argv = ["embed", "--model", MODEL, "--input", sentences, "--output", out]
    folder = tmp_path / "a_folder"
    folder.mkdir()
    argv, message = {
        "batch-size 0": (argv + ["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        "threads -1": (argv + ["--threads", "-1"], "--threads must be at least 0, got -1"),
        "missing input": (argv[:4] + [str(tmp_path / "nope.txt")] + argv[5:],
                          f"input file not found: {tmp_path / 'nope.txt'}"),
        "input is a folder": (argv[:4] + [str(folder)] + argv[5:],
                              f"input file is a folder, not a file: {folder}"),
        "model cannot load": (["embed", "--model", "py:test_faults:no_such_model", "--input",
                               sentences, "--output", out], "has no attribute no_such_model"),
        "output is a folder": (argv[:6] + [str(folder)],
                               f"the output is a folder, not a file: {folder}"),
        "output under a file": (argv[:6] + [os.path.join(sentences, "x.npy")],
                                f"the output's folder {sentences} is a file"),
    }[case]
    _fails(argv, message, capsys)
    assert _same_file(out, before)
    assert _temporaries(tmp_path) == []


def _start_embed(tmp_path, out, n=150, delay=0.02):
    sentences = _sentences(tmp_path, n, "new.txt", tag="new")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lealla_tf.cli", "embed", "--model", MODEL, "--input",
         sentences, "--output", out, "--batch-size", "2"],
        env=_env(**{DELAY_ENV: str(delay)}), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    return proc, sentences


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_embed_stopped_at_random_points_leaves_old_or_new_output(sig, tmp_path):
    out, before = _good_output(tmp_path)
    rng = random.Random(sig)
    for attempt in range(3):
        proc, sentences = _start_embed(tmp_path, out)
        if sig == signal.SIGINT:
            # Ctrl-C once the command runs (Python itself starts with the default handler).
            deadline = time.time() + 60
            while not _temporaries(tmp_path) and proc.poll() is None:
                assert time.time() < deadline
                time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.8))
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        # Never a zero-filled or partial file: the earlier output byte for byte, or the new
        # one complete (the signal came after the rename, or after the run).
        if not _same_file(out, before):
            np.testing.assert_array_equal(np.load(out), _expected(sentences))
        if proc.returncode == 0:
            return
        if sig == signal.SIGINT:
            assert proc.returncode == 130, err
            assert _one_error_line(err) == "lealla: error: interrupted"
            assert _temporaries(tmp_path) == []
        else:
            assert proc.returncode == -signal.SIGKILL
    # A run killed outright leaves its hidden temporary; the next run removes it.
    stale = _temporaries(tmp_path)
    proc = _lealla(["embed", "--model", MODEL, "--input", sentences, "--output", out])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("left by an interrupted run") == len(stale)
    assert _temporaries(tmp_path) == []
    np.testing.assert_array_equal(np.load(out), _expected(sentences))


def test_embed_to_a_file_system_without_local_files(tmp_path):
    import io
    out = "ram://faults_embed/out.npy"
    with fileio.atomic_file(out) as tmp:  # an earlier output
        np.save(tmp, np.zeros((1, 2), np.float32))
    sentences = _sentences(tmp_path, 7)
    assert cli.main(["embed", "--model", MODEL, "--input", sentences, "--output", out]) == 0
    vectors = np.load(io.BytesIO(fileio.read_bytes(out)))
    np.testing.assert_array_equal(vectors, _expected(sentences))
    assert fileio.listdir("ram://faults_embed") == ["out.npy"]


# ------------------------------------------------------------------ a full disk
def test_disk_full_is_one_line_and_keeps_the_old_output(tmp_path):
    """ENOSPC, simulated: the space for the whole output is reserved before any row is
    written, so a full disk is an error there (not a SIGBUS of the memory map)."""
    out, before = _good_output(tmp_path)
    sentences = _sentences(tmp_path, 30)
    script = ("import errno, os, sys\n"
              "def full(fd, offset, length):\n"
              "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
              "os.posix_fallocate = full\n"
              "from lealla_tf import cli\n"
              "sys.exit(cli.main(sys.argv[1:]))\n")
    proc = _python(script, "embed", "--model", MODEL, "--input", sentences, "--output", out)
    assert proc.returncode == 2, proc.stderr
    assert _one_error_line(proc.stderr) == f"lealla: error: no space left on device writing {out}"
    assert _same_file(out, before) and _temporaries(tmp_path) == []


def _private_mount_prefix(tmp_path):
    """``unshare`` arguments giving a command a mount namespace of its own, where it may
    mount a tmpfs that disappears with it; None when this machine does not allow it."""
    if not shutil.which("unshare"):
        return None
    point = tmp_path / "probe_mount"
    point.mkdir()
    for prefix in (["unshare", "-m"], ["unshare", "-rm"]):
        try:
            probe = subprocess.run(
                [*prefix, "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs '{point}' && "
                                      f"touch '{point}/x'"],
                capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0 and not os.listdir(point):
            return prefix
    return None


def _in_small_tmpfs(tmp_path, options, argv, old_bytes=None):
    """Runs ``lealla argv`` with ``{mnt}`` in it replaced by a fresh tmpfs (``options``),
    holding ``out.npy`` with ``old_bytes`` first. Returns (exit code, stderr, whether
    out.npy still holds ``old_bytes``, the tmpfs' file names); skips the test when no
    tmpfs can be mounted here."""
    prefix = _private_mount_prefix(tmp_path)
    if prefix is None:
        pytest.skip("cannot mount a tmpfs here (no unshare/mount permission); "
                    "test_disk_full_is_one_line_and_keeps_the_old_output simulates ENOSPC")
    mnt, old, err = tmp_path / "mnt", tmp_path / "old.bin", tmp_path / "stderr.txt"
    mnt.mkdir()
    old.write_bytes(old_bytes or b"")
    argv = [a.replace("{mnt}", str(mnt)) for a in argv]
    q = {k: shlex.quote(str(v)) for k, v in (("mnt", mnt), ("old", old), ("err", err),
                                              ("out", mnt / "out.npy"))}
    script = "\n".join([
        f"mount -t tmpfs -o size=256k tmpfs {q['mnt']} || exit 99",
        f"cp {q['old']} {q['out']}" if old_bytes else ":",
        f"mount -o remount,ro {q['mnt']}" if options == "ro" else ":",
        f"{shlex.quote(sys.executable)} -m lealla_tf.cli {shlex.join(argv)} 2> {q['err']}",
        "echo rc=$?",
        f"cmp -s {q['old']} {q['out']} && echo same",
        f"ls -A {q['mnt']}", ""])
    proc = subprocess.run([*prefix, "sh", "-c", script], env=_env(), capture_output=True,
                          text=True, timeout=120)
    if proc.returncode == 99:
        pytest.skip("cannot mount a tmpfs here")
    lines = proc.stdout.split()
    rc = int(next(line for line in lines if line.startswith("rc="))[3:])
    names = [n for n in lines if not n.startswith("rc=") and n != "same"]
    return rc, err.read_text(), "same" in lines, names


def test_disk_full_on_a_real_small_file_system(tmp_path):
    _, before = _good_output(tmp_path)
    big = _sentences(tmp_path, 4000)  # 4000 x 32 float32: 512 KiB, the tmpfs has 256 KiB
    rc, err, same, names = _in_small_tmpfs(
        tmp_path, "", ["embed", "--model", MODEL, "--input", big, "--output", "{mnt}/out.npy"],
        old_bytes=before)
    assert rc == 2, err
    assert _one_error_line(err) == (
        f"lealla: error: no space left on device writing {tmp_path / 'mnt' / 'out.npy'}")
    assert same and names == ["out.npy"]


def test_read_only_file_system(tmp_path):
    _, before = _good_output(tmp_path)
    sentences = _sentences(tmp_path, 10)
    rc, err, same, names = _in_small_tmpfs(
        tmp_path, "ro", ["embed", "--model", "/no/such/model", "--input", sentences,
                         "--output", "{mnt}/out.npy"], old_bytes=before)
    assert rc == 2, err
    # Found before the model loads (the model does not exist).
    assert _one_error_line(err) == (
        f"lealla: error: read-only file system writing {tmp_path / 'mnt' / 'out.npy'}")
    assert same and names == ["out.npy"]


def test_unwritable_output_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    prefix = []
    if os.geteuid() == 0:  # root writes anywhere: drop the capability that lets it
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    sentences = _sentences(tmp_path, 5)
    out = str(locked / "out.npy")
    for argv in (["embed", "--model", "/no/such/model", "--input", sentences, "--output", out],
                 ["mine", "--model", "/no/such/model", "--source", sentences, "--target",
                  sentences, "--output", str(locked / "mined.tsv")]):
        proc = _lealla(argv, prefix=prefix)
        assert proc.returncode == 2, proc.stderr
        assert _one_error_line(proc.stderr) == (
            f"lealla: error: permission denied: {argv[-1]}")
    assert os.listdir(locked) == []


# ------------------------------------------------------- outputs checked up front
def _bucc_files(folder):
    names = []
    for name, text in (("de", "1\tHund\n"), ("en", "1\tdog\n"), ("gold", "1\t1\n")):
        path = folder / f"x.{name}"
        path.write_text(text)
        names.append(str(path))
    return names


@pytest.mark.parametrize("command", ["embed", "eval tatoeba", "eval bucc", "eval un", "mine",
                                     "export", "teacher embed", "vocab", "train", "import"])
def test_outputs_are_checked_before_anything_loads(command, tmp_path, capsys):
    """Each output that cannot be what the command writes fails at once, before the
    model (which does not even exist here) is loaded."""
    folder, a_file = tmp_path / "folder", tmp_path / "file.txt"
    folder.mkdir()
    a_file.write_text("x\n")
    tato = tmp_path / "tato"
    tato.mkdir()
    sentences, tsv = _sentences(tmp_path, 3), _tsv(tmp_path)
    src, tgt, gold = _bucc_files(tmp_path)
    no_model = "/no/such/model"
    file_out = ["--output", str(folder)]
    argv = {
        "embed": ["embed", "--model", no_model, "--input", sentences] + file_out,
        "eval tatoeba": ["eval", "tatoeba", "--model", no_model, "--data-dir", str(tato)]
        + file_out,
        "eval bucc": ["eval", "bucc", "--model", no_model, "--src", src, "--tgt", tgt,
                      "--gold", gold] + file_out,
        "eval un": ["eval", "un", "--model", no_model, "--source", sentences, "--target",
                    sentences] + file_out,
        "mine": ["mine", "--model", no_model, "--source", sentences, "--target",
                 sentences] + file_out,
        "export": ["export", "--model-dir", str(tmp_path), "--output", str(a_file)],
        "teacher embed": ["teacher", "embed", "--teacher", no_model, "--input", tsv,
                          "--output", str(a_file)],
        "vocab": ["vocab", "--input", tsv, "--vocab-size", "50", "--output", str(a_file)],
        "train": ["train", "--config", "tiny", "--model-dir", str(a_file)],
        "import": ["import", "--source", no_model, "--output", str(a_file)],
    }[command]
    wants_folder = argv[-1] == str(a_file)
    _fails(argv, (f"the output is a file, not a folder: {a_file}" if wants_folder else
                  f"the output is a folder, not a file: {folder}"), capsys)
    assert a_file.read_text() == "x\n" and os.listdir(folder) == []


def test_missing_inputs_and_checkpoint(tmp_path, capsys):
    sentences = _sentences(tmp_path, 3)
    _fails(["export", "--model-dir", str(tmp_path / "nope"), "--output", str(tmp_path / "e")],
           f"run directory not found: {tmp_path / 'nope'}", capsys)
    ckpt = str(tmp_path / "checkpoints" / "ckpt-7")
    _fails(["export", "--model-dir", str(tmp_path), "--checkpoint", ckpt, "--output",
            str(tmp_path / "e")], f"checkpoint not found: {ckpt} (no ckpt-7.index)", capsys)
    _fails(["mine", "--model", MODEL, "--source", sentences, "--target",
            str(tmp_path / "t.txt"), "--output", str(tmp_path / "m.tsv")],
           f"input file not found: {tmp_path / 't.txt'}", capsys)
    _fails(["eval", "un", "--source", str(tmp_path), "--target", sentences],
           f"input file is a folder, not a file: {tmp_path}", capsys)
    _fails(["mine", "--model", MODEL, "--source", sentences, "--target", sentences, "-k", "0",
            "--output", str(tmp_path / "m.tsv")], "-k/--neighbourhood must be at least 1, got 0",
           capsys)
    _fails(["eval", "un", "--source", sentences, "--target", sentences, "--memory-mb", "0"],
           "--memory-mb must be at least 1, got 0", capsys)
    _fails(["teacher", "embed", "--teacher", "muse", "--input", str(tmp_path / "*.tsv"),
            "--output", str(tmp_path / "t")], "no files match", capsys)
    (tmp_path / "exists").mkdir()
    _fails(["export", "--model-dir", str(tmp_path), "--output", str(tmp_path / "exists")],
           "exists: pass --overwrite", capsys)
    assert not (tmp_path / "e").exists() and not (tmp_path / "m.tsv").exists()


# --------------------------------------------------------------------- bad inputs
def _train_argv(tmp_path, *sets):
    return (["train", "--config", "tiny", "--model-dir", str(tmp_path / "run")]
            + [a for s in sets for a in ("--set", s)])


@pytest.mark.parametrize("kind", ["empty", "one column", "three columns", "folder"])
def test_unusable_training_files(kind, tmp_path, capsys):
    path = tmp_path / "xxx-eng.tsv"
    if kind == "folder":
        path.mkdir()
    else:
        path.write_text({"empty": "", "one column": "a\nb\n",
                         "three columns": "a\tb\tc\nd\te\tf\n"}[kind])
    message = {"empty": f"{path} is empty",
               "one column": f"{path} has no foreign<TAB>English line (2 lines: 2 wrong "
                             "fields; line 1 has 1 tab-separated field(s))",
               "three columns": f"{path} has no foreign<TAB>English line (2 lines: 2 wrong "
                                "fields; line 1 has 3 tab-separated field(s))",
               "folder": f"corpus file is a folder, not a file: {path}"}[kind]
    for command in ("train", "pretrain"):
        argv = _train_argv(tmp_path, f"data.train_files=[{path}]")
        argv[0] = command
        _fails(argv, message, capsys)
    _fails(["vocab", "--input", str(path), "--vocab-size", "50", "--output",
            str(tmp_path / "v")], message, capsys)
    _fails(["teacher", "embed", "--teacher", "muse", "--input", str(path), "--output",
            str(tmp_path / "t")], message, capsys)
    assert not (tmp_path / "run").exists() and not (tmp_path / "v").exists()


def test_a_tsv_is_no_vocabulary(tmp_path, capsys):
    tsv = _tsv(tmp_path)
    run = tmp_path / "run"
    _fails(_train_argv(tmp_path, f"data.train_files=[{tsv}]", f"vocab.model_file={tsv}"),
           f"vocab.model_file {tsv} is not a SentencePiece model", capsys)
    assert not (run / "vocab").exists()  # nothing was copied into the run
    _fails(_train_argv(tmp_path, f"data.train_files=[{tsv}]", "vocab.model_file=nope.model"),
           "vocab.model_file not found: nope.model", capsys)
    # A run that an older version let copy a TSV in is named, with what to do.
    (run / "vocab").mkdir(parents=True)
    (run / "vocab" / "spm.model").write_bytes(open(tsv, "rb").read())
    _fails(_train_argv(tmp_path, f"data.train_files=[{tsv}]"),
           f"{run / 'vocab' / 'spm.model'} is not a SentencePiece model: remove it", capsys)


def test_bad_vocab_arguments(tmp_path, capsys):
    tsv = _tsv(tmp_path)
    out = str(tmp_path / "v")
    _fails(["vocab", "--input", str(tmp_path / "nope.tsv"), "--vocab-size", "50", "--output",
            out], "no files match", capsys)
    _fails(["vocab", "--input", tsv, "--vocab-size", "0", "--output", out],
           "--vocab-size must be at least 1, got 0", capsys)
    _fails(["vocab", "--input", tsv, "--vocab-size", "50", "--sentences-per-language", "0",
            "--output", out], "--sentences-per-language must be at least 1, got 0", capsys)
    _fails(["vocab", "--input", tsv, "--vocab-size", "3", "--output", out],
           "vocab_size must exceed", capsys)


def test_config_errors_come_before_tensorflow_loads(tmp_path):
    """A config typo or a bad flag is reported without importing TensorFlow (seconds)."""
    for argv, message in (
            (["train", "--config", "tiny", "--set", "train.stepz=1", "--model-dir",
              str(tmp_path / "run")], "unknown config key(s) train.stepz"),
            (["embed", "--model", "x", "--batch-size", "0"], "--batch-size must be at least 1"),
            (["train", "--config", "tiny", "--data-dir", str(tmp_path / "nope"),
              "--model-dir", str(tmp_path / "run")], "data directory does not exist")):
        script = ("import sys\nfrom lealla_tf import cli\nrc = cli.main(sys.argv[1:])\n"
                  "print('tensorflow' in sys.modules)\nsys.exit(rc)\n")
        proc = _python(script, *argv)
        assert proc.returncode == 2, proc.stderr
        assert message in _one_error_line(proc.stderr)
        assert proc.stdout.strip() == "False"


# ---------------------------------------------------------------------- data roots
def _tatoeba_root(root, n=5):
    folder = root / "tatoeba" / "v1"
    folder.mkdir(parents=True)
    (folder / "tatoeba.deu-eng.deu").write_text("".join(f"Satz {i}\n" for i in range(n)))
    (folder / "tatoeba.deu-eng.eng").write_text("".join(f"sentence {i}\n" for i in range(n)))
    return root


def test_every_command_reads_the_data_root_the_same_way(tmp_path, monkeypatch, capsys):
    root = _tatoeba_root(tmp_path / "data")
    monkeypatch.setenv("LEALLA_CACHE_DIR", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("LEALLA_DATA_DIR", str(root))
    # eval tatoeba reads $LEALLA_DATA_DIR (it used to download into the cache instead).
    out = tmp_path / "tatoeba.json"
    assert cli.main(["eval", "tatoeba", "--model", MODEL, "--languages", "deu", "--no-cache",
                     "--output", str(out)]) == 0
    assert json.loads(out.read_text())["per_language"]["deu"]["n"] == 5
    assert not (tmp_path / "empty_cache" / "datasets").exists()
    assert cli.main(["data", "fetch", "--dry-run", "--sets", "tatoeba", "--languages",
                     "deu"]) == 0
    assert f"into {root}" in capsys.readouterr().out
    monkeypatch.setenv("LEALLA_DATA_DIR", str(tmp_path / "gone"))
    for argv in (["eval", "tatoeba", "--model", MODEL, "--languages", "deu"],
                 ["eval", "ntrex", "--model", MODEL],
                 ["train", "--config", "tiny", "--model-dir", str(tmp_path / "run")],
                 ["pretrain", "--config", "tiny", "--model-dir", str(tmp_path / "run")]):
        _fails(argv, f"data directory does not exist: {tmp_path / 'gone'}", capsys)
    # --data-dir wins over the variable, on train and pretrain too (data.data_dir).
    for command in ("train", "pretrain"):
        _fails([command, "--config", "tiny", "--data-dir", str(tmp_path / "also_gone"),
                "--model-dir", str(tmp_path / "run")],
               f"data directory does not exist: {tmp_path / 'also_gone'}", capsys)
    # Neither: the cache, and the hint names flags the command has.
    monkeypatch.delenv("LEALLA_DATA_DIR")
    line = _fails(["train", "--config", "tiny", "--model-dir", str(tmp_path / "run")],
                  "no data directory: pass --data-dir", capsys)
    assert "lealla data fetch" in line
    assert cli.build_parser().parse_args(
        ["train", "--config", "tiny", "--model-dir", "r", "--data-dir", "d"]).data_dir == "d"


# ------------------------------------------------------------ the error path itself
def test_locked_and_damaged_runs_and_ctrl_c_are_one_line(capsys):
    from lealla_tf import runs
    from lealla_tf.cli import errors

    def raising(exc):
        def command(args):
            raise exc
        return command

    for exc, line in (
            (runs.RunLockedError("/r is being written by another process"),
             "/r is being written by another process"),
            (runs.DamagedRunError("/r/checkpoints/ckpt-3 cannot be read\n(details): damaged"),
             "/r/checkpoints/ckpt-3 cannot be read (details): damaged"),
            (fileio.LockedError("held by host pid 7; lock /r/.lock"),
             "held by host pid 7; lock /r/.lock"),
            (FileExistsError("/out already exists: pass --overwrite"),
             "/out already exists: pass --overwrite"),
            (OSError(errno.ENOSPC, "No space left on device", "/out/x.npy"),
             "no space left on device writing /out/x.npy"),
            (PermissionError(errno.EACCES, "Permission denied", "/out/x.npy"),
             "permission denied: /out/x.npy"),
            (OSError(errno.EROFS, "Read-only file system", "/out"),
             "read-only file system writing /out")):
        assert errors.run(raising(exc), None) == 2
        assert _one_error_line(capsys.readouterr().err) == f"lealla: error: {line}"
    assert errors.run(raising(KeyboardInterrupt()), None) == 130
    assert _one_error_line(capsys.readouterr().err) == "lealla: error: interrupted"

    def write_on_full_disk(args):
        with errors.writing("/out/results.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert errors.run(write_on_full_disk, None) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        "lealla: error: no space left on device writing /out/results.json")
    with pytest.raises(ConnectionResetError):  # not the user's: a traceback
        errors.run(raising(ConnectionResetError(errno.ECONNRESET, "reset")), None)


def test_debug_shows_the_traceback(tmp_path, capsys):
    argv = ["embed", "--model", MODEL, "--input", str(tmp_path / "nope.txt")]
    assert cli.main(["--debug", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1] == (
        f"lealla: error: input file not found: {tmp_path / 'nope.txt'}")


# ------------------------------------------------------------------- start-up noise
def test_log_lines_go_above_progress_bars():
    script = (
        "import logging, sys\n"
        "from tqdm import tqdm\n"
        "from lealla_tf.cli import common\n"
        "common.log_progress()\n"
        "with common.progress_logging():\n"
        "    bar = tqdm(total=3, desc='train', file=sys.stderr)\n"
        "    bar.update(1)\n"
        "    logging.getLogger('lealla_tf.x').info('step report')\n"
        "    logging.getLogger('absl').info('AdamWeightDecay gradient_clip_norm=0.000000')\n"
        "    logging.getLogger('absl').warning('a real warning')\n"
        "    bar.update(2)\n"
        "    bar.close()\n")
    proc = _python(script)
    assert proc.returncode == 0, proc.stderr
    pieces = re.split(r"[\r\n]+", proc.stderr)
    assert "INFO lealla_tf.x: step report" in pieces  # a line of its own, not inside a bar
    assert "WARNING absl: a real warning" in pieces
    assert "gradient_clip_norm" not in proc.stderr


def test_cpu_only_start_drops_only_the_cuinit_line(capfd):
    class FakeConfig:
        @staticmethod
        def list_physical_devices():
            os.write(2, b"2026-01-01 E external/local_xla/xla/stream_executor/cuda/"
                        b"cuda_platform.cc:51] failed call to cuInit: INTERNAL: CUDA error\n")
            os.write(2, b"a real error line\n")

    class FakeTF:
        config = FakeConfig

    hardware.list_devices_quietly(FakeTF)
    err = capfd.readouterr().err
    assert "cuInit" not in err and "a real error line\n" in err


@pytest.mark.skipif(hardware.has_nvidia_driver(), reason="this machine has an NVIDIA driver")
def test_tensorflow_starts_quietly_on_a_cpu_only_machine():
    script = ("import importlib.util\n"
              "from lealla_tf import hardware\n"
              "assert hardware.quiet_cpu_start()\n"
              "assert importlib.util.find_spec('tensorflow')  # a look that does not import\n"
              "import tensorflow as tf\n"
              "print(int(tf.reduce_sum(tf.ones([2]))))\n")
    env = _env(TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = _python(script, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "2", proc.stderr
    assert "cuInit" not in proc.stderr, proc.stderr


# ------------------------------------------------------------------------- fileio
def test_local_file_access_does_not_import_tensorflow(tmp_path):
    script = (
        "import sys\n"
        "from lealla_tf import config, fileio\n"
        f"root = {str(tmp_path)!r}\n"
        "p = fileio.join(root, 'a', 'b.txt')\n"
        "fileio.atomic_write(p, 'x')\n"
        "assert fileio.exists(p) and not fileio.isdir(p) and fileio.isdir(root)\n"
        "assert fileio.read_text(p) == 'x' and fileio.size(p) == 1\n"
        "assert fileio.glob(fileio.join(root, '*', '*.txt')) == [p]\n"
        "fileio.rmtree(fileio.join(root, 'a'))\n"
        "config.load('tiny')\n"
        "print('tensorflow' in sys.modules)\n")
    proc = _python(script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_local_glob_matches_as_tensorflow_does(tmp_path):
    import tensorflow as tf
    for name in ("a.txt", ".hidden", "sub/b.txt", "sub/.c.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("")
    for pattern in ("*", "*/*", "sub/*.txt", "[as]*", "a.txt", "missing*", "*/b.txt"):
        full = str(tmp_path / pattern)
        assert fileio.glob(full) == sorted(tf.io.gfile.glob(full)), pattern


@pytest.mark.parametrize("root", ["LOCAL", "ram://faults_atomic_file"])
def test_atomic_file_replaces_or_keeps(root, tmp_path):
    root = str(tmp_path) if root == "LOCAL" else root
    path = fileio.join(root, "x.bin")
    with fileio.atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"old")
    with pytest.raises(KeyboardInterrupt):
        with fileio.atomic_file(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise KeyboardInterrupt
    assert fileio.read_bytes(path) == b"old" and fileio.listdir(root) == ["x.bin"]
    with fileio.atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"new")
    assert fileio.read_bytes(path) == b"new" and fileio.listdir(root) == ["x.bin"]


def test_stale_temporaries_are_told_apart(tmp_path):
    out = str(tmp_path / "out.npy")
    mine = fileio.temporary_name(out)
    open(mine, "wb").close()
    dead_pid = _python("import os; print(os.getpid())").stdout.strip()
    dead = mine.replace(f"-{os.getpid()}-", f"-{dead_pid}-")
    other_host = os.path.join(str(tmp_path), ".out.npy.tmp-elsewhere-1-abcdef.npy")
    for path in (dead, other_host, str(tmp_path / ".other.npy.tmp-x-1-abcdef.npy")):
        open(path, "wb").close()
    assert fileio.stale_temporaries(out) == ([dead], sorted([mine, other_host]))


def test_check_writable(tmp_path):
    (tmp_path / "f").write_text("")
    fileio.check_writable(str(tmp_path / "new" / "deeper" / "x.npy"))
    fileio.check_writable(str(tmp_path), folder=True)
    with pytest.raises(IsADirectoryError):
        fileio.check_writable(str(tmp_path))
    with pytest.raises(NotADirectoryError):
        fileio.check_writable(str(tmp_path / "f"), folder=True)
    with pytest.raises(NotADirectoryError):
        fileio.check_writable(str(tmp_path / "f" / "x.npy"))
    assert sorted(os.listdir(tmp_path)) == ["f"]  # probes leave nothing behind


def test_check_positive_names_the_flag():
    import argparse

    from lealla_tf.cli import errors
    args = argparse.Namespace(batch_size=0, threads=0)
    common.check_positive(args, "threads", zero_ok=True)
    with pytest.raises(errors.UserError, match="--batch-size must be at least 1, got 0"):
        common.check_positive(args, "batch_size")


def test_demo_without_data_or_network_is_one_error_line(tmp_path, monkeypatch, capsys):
    """No data folder and a mirror that cannot be read (as on a machine without network):
    the demo says which file it could not download, in one line, and writes no output."""
    from lealla_tf.data import datasets
    monkeypatch.delenv("LEALLA_DATA_DIR", raising=False)
    monkeypatch.setenv("LEALLA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(datasets.MIRROR_ENV, (tmp_path / "no-mirror").as_uri())
    assert cli.main(["demo", "--output", str(tmp_path / "out")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("lealla: error: could not download ") and "no-mirror" in line
    assert not (tmp_path / "out").exists()
