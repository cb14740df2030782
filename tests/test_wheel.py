"""The built wheel works outside the development checkout.

Builds the wheel from a copy of the source tree, installs it (not editable, no
dependencies) into a fresh virtual environment that reuses the installed dependencies
through a ``.pth`` file, and runs the ``lealla`` command of that environment from an
empty directory: ``model summary`` with a shipped config name, a tiny ``train`` on a
synthetic corpus, ``export`` (model card from the packaged template) and ``embed``.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import venv

import numpy as np
import pytest

from support import hermetic

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def _build_wheel(dist: str, src: str) -> str:
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "*.egg-info", "results", "runs", "__pycache__",
        ".pytest_cache"))
    import setuptools
    offline = int(setuptools.__version__.split(".")[0]) >= 77  # pyproject's build requirement
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, src]
    if offline:
        cmd.insert(4, "--no-build-isolation")
    subprocess.run(cmd, check=True, cwd=src)
    (wheel,) = [f for f in os.listdir(dist) if f.endswith(".whl")]
    return os.path.join(dist, wheel)


def _fresh_env(path: str) -> str:
    venv.EnvBuilder(with_pip=False).create(path)
    python = os.path.join(path, "bin", "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True,
                          text=True).stdout.strip()
    # Reuse this interpreter's dependencies; the appended path comes after the venv's own
    # site-packages, so the installed wheel wins over any editable lealla_tf there.
    with open(os.path.join(site, "deps.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.mark.slow
def test_wheel_installs_and_runs_from_an_empty_directory(tmp_path):
    wheel = _build_wheel(str(tmp_path / "dist"), str(tmp_path / "src"))
    python = _fresh_env(str(tmp_path / "env"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "LEALLA_DATA_DIR", "VIRTUAL_ENV")}
    # --ignore-installed: the reused dependencies may hold an (editable) lealla_tf; it is
    # neither uninstalled nor taken as satisfying the wheel.
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q",
                    "--no-deps", "--no-build-isolation", "--ignore-installed", wheel],
                   check=True, env=env)
    lealla = os.path.join(os.path.dirname(python), "lealla")
    work = tmp_path / "empty"
    work.mkdir()
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["LEALLA_CACHE_DIR"] = str(tmp_path / "cache")

    def run(*args):
        r = subprocess.run(list(args), cwd=work, env=env, capture_output=True, text=True)
        assert r.returncode == 0, f"{args}\n{r.stdout}\n{r.stderr}"
        return r.stdout

    where = run(python, "-c", "import lealla_tf; print(lealla_tf.__file__)")
    assert where.strip().startswith(str(tmp_path / "env")), where

    out = run(lealla, "model", "summary", "--config", "lealla_small")
    assert "68,990,464" in out

    corpus = hermetic.write_corpus(str(tmp_path / "corpus"), ("deu", "rus"), pairs=200)
    files = "[" + ",".join(corpus) + "]"
    run(lealla, "train", "--config", "tiny", "--model-dir", "run", "--no-progress",
        "--set", f"data.train_files={files}", "--set", "vocab.vocab_size=200",
        "--set", "vocab.sentences_per_language=200", "--set", "model.vocab_size=200",
        "--set", "train.steps=3", "--set", "train.global_batch_size=8",
        "--set", "train.warmup_steps=1", "--set", "train.checkpoint_every=3")
    run(lealla, "export", "--model-dir", "run", "--output", "export", "--tflite", "fp32")
    card = (work / "export" / "README.md").read_text(encoding="utf-8")
    assert "tiny" in card and "{" not in card.split("```")[0]

    (work / "sentences.txt").write_text("dog\nHund\nсобака\n", encoding="utf-8")
    run(lealla, "embed", "--model", "export", "--input", "sentences.txt",
        "--output", "vectors.npy")
    vectors = np.load(work / "vectors.npy")
    assert vectors.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    tflite = run(lealla, "embed", "--model", "export/lealla-fp32.tflite", "--input",
                 "sentences.txt")
    np.testing.assert_allclose(np.loadtxt(tflite.splitlines()), vectors, atol=1e-4)
