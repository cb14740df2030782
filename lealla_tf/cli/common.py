"""Arguments and set-up shared by several commands: the config flags, loading the config,
logging for the training commands."""

from __future__ import annotations

import argparse


def config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    """Adds ``--config`` and ``--set KEY=VALUE`` (repeatable)."""
    p.add_argument("--config", required=required, help="YAML config file, or the name of a shipped one "
                        "(lealla_small, demo, ...; see lealla_tf/configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a config value, e.g. train.steps=100")


def load_config(args):
    """The config of ``--config`` with the ``--set`` overrides (a ConfigError when bad)."""
    from lealla_tf import config
    return config.load(args.config, args.overrides)


def log_progress() -> None:
    """INFO logging, as the training commands report their steps. The libraries' own
    INFO lines (absl: Model Garden's optimizer settings, TensorFlow's checkpoint sharding
    times) are left out; their warnings stay."""
    import logging
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)


def check_positive(args, *names: str, zero_ok: bool = False) -> None:
    """Refuses a flag value below 1 (below 0 with ``zero_ok``), before anything is loaded
    or created.

    Raises:
      UserError: naming the flag and its value.
    """
    from lealla_tf.cli.errors import UserError
    low = 0 if zero_ok else 1
    for name in names:
        value = getattr(args, name)
        if value is not None and value < low:
            raise UserError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")


def check_input_file(path: str, what: str = "input file") -> None:
    """Refuses a missing input, or a folder where a file is read.

    Raises:
      FileNotFoundError, IsADirectoryError: naming ``path``.
    """
    from lealla_tf import fileio
    if not fileio.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    if fileio.isdir(path):
        raise IsADirectoryError(f"{what} is a folder, not a file: {path}")


def check_input_dir(path: str, what: str) -> None:
    """Refuses a missing input folder, or a file where a folder is read.

    Raises:
      FileNotFoundError: naming ``path``.
    """
    from lealla_tf import fileio
    if not fileio.isdir(path):
        raise FileNotFoundError(f"{what} not found: {path}" if not fileio.exists(path) else
                                f"{what} is a file, not a folder: {path}")


def corpus_files(patterns) -> list:
    """The files the patterns name, each checked to be a readable corpus file (a user
    error names the first bad one)."""
    from lealla_tf import corpus
    from lealla_tf.cli import errors
    files = corpus.find_files(patterns)
    with errors.user_errors(corpus.CorpusError):
        for path in files:
            corpus.check_file(path)
    return files


def check_outputs(*paths: str, folder: bool = False) -> None:
    """Checks that each non-empty output path can be written, before the long work
    (see :func:`lealla_tf.fileio.check_writable`)."""
    from lealla_tf import fileio
    for path in paths:
        if path:
            fileio.check_writable(path, folder=folder)


def progress_logging():
    """A context in which log lines are written above tqdm bars instead of into them."""
    from tqdm.contrib.logging import logging_redirect_tqdm
    return logging_redirect_tqdm()
