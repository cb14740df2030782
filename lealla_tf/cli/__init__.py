"""The ``lealla`` command.

One module per command group declares its arguments (``add_commands``) and handlers that
import the library lazily, so ``lealla --help`` and config errors stay fast:
:mod:`~lealla_tf.cli.model` (model), :mod:`~lealla_tf.cli.train` (vocab, vocab-extend, train,
pretrain), :mod:`~lealla_tf.cli.convert` (import, prune), :mod:`~lealla_tf.cli.export` (export,
publish, embed), :mod:`~lealla_tf.cli.evaluate` (eval, mine), :mod:`~lealla_tf.cli.teacher`,
:mod:`~lealla_tf.cli.demo` and :mod:`~lealla_tf.cli.data`. Every command runs through
:func:`lealla_tf.cli.errors.run`: errors the user can fix (bad config, missing file) print
one line and exit 2.
"""

from __future__ import annotations

import argparse
import os
from typing import List, Optional

from lealla_tf import hardware
from lealla_tf.cli import convert, data, demo, errors, evaluate, export, model, teacher, train

# In the order of ``lealla --help``.
COMMAND_GROUPS = (model, train, convert, export, evaluate, teacher, demo, data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lealla", description="LEALLA sentence encoders: train, distil, export, evaluate.")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error the user can fix, too")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.add_commands(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    hardware.quiet_cpu_start()
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # only `teacher embed --runner beam` passes options on (to Beam)
        if getattr(args, "runner", None) != "beam":
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.pipeline_args = unknown
    return errors.run(args.func, args)
