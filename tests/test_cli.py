"""The ``lealla`` command's one error path: errors the user can fix print one
``lealla: error:`` line and exit 2; anything else is a bug and keeps its traceback."""

import os
import subprocess
import sys

import pytest

from lealla_tf import cli
from lealla_tf.cli import errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_TYPO = ["model", "summary", "--config", "tiny", "--set", "model.hiden_size=3"]


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lealla: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("argv, message", [
    (CONFIG_TYPO, "unknown config key(s) model.hiden_size"),
    (["train", "--config", "/no/such/recipe.yaml", "--model-dir", "/no/such/run"],
     "config file not found: /no/such/recipe.yaml"),
    (["embed", "--model", "/no/such/export", "--input", "/no/such/sentences.txt"],
     "input file not found: /no/such/sentences.txt"),
])
def test_user_errors_exit_2_with_one_line(argv, message, capsys):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert message in _one_error_line(captured.err)
    assert captured.out == ""


@pytest.mark.parametrize("argv, message", [
    (CONFIG_TYPO, "unknown config key(s) model.hiden_size"),
    (["embed", "--model", "/no/such/export", "--input", "/no/such/sentences.txt"],
     "input file not found: /no/such/sentences.txt"),
])
def test_the_command_exits_2_without_traceback(argv, message, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.run([sys.executable, "-m", "lealla_tf.cli", *argv], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert message in _one_error_line(proc.stderr)


def test_every_command_runs_through_the_error_path(monkeypatch):
    seen = []
    monkeypatch.setattr(errors, "run", lambda command, args: seen.append(args.command) or 5)
    assert cli.main(["model", "summary"]) == 5
    assert cli.main(["teacher", "verify", "--output", "/no/such/dir"]) == 5
    assert seen == ["model", "teacher"]


def _raising(exc):
    def command(args):
        raise exc
    return command


def test_bugs_keep_their_traceback():
    with pytest.raises(RuntimeError, match="a bug"):
        errors.run(_raising(RuntimeError("a bug")), None)
    # A ValueError is the user's only where a command says so.
    with pytest.raises(ValueError, match="bad value"):
        errors.run(_raising(ValueError("bad value")), None)


def test_user_errors_block_turns_its_types_into_exit_2(capsys):
    def command(args):
        with errors.user_errors(ValueError, FileExistsError):
            raise FileExistsError("out exists: pass --overwrite")

    assert errors.run(command, None) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        "lealla: error: out exists: pass --overwrite")

    def other(args):
        with errors.user_errors(ValueError):
            raise KeyError("not listed")

    with pytest.raises(KeyError):
        errors.run(other, None)
    assert errors.run(lambda args: None, None) == 0
