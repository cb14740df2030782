"""The one path of errors the user can fix: one ``lealla: error: <message>`` line on
stderr and exit code 2. Any other exception is a bug and keeps its traceback."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator, Type

USER_ERROR_EXIT = 2


class UserError(Exception):
    """An error the user can fix (a bad flag value, a missing input, an existing output)."""


@contextlib.contextmanager
def user_errors(*types: Type[BaseException]) -> Iterator[None]:
    """Inside the block, exceptions of ``types`` are the user's: they become a
    :class:`UserError` with the same message (the original stays its ``__cause__``)."""
    try:
        yield
    except types as e:
        raise UserError(str(e)) from e


def run(command: Callable[..., object], args) -> int:
    """Runs a command handler and returns its exit code; a :class:`UserError`, a config
    error or a missing file is printed as one line and exits 2."""
    from lealla_tf.config import ConfigError
    try:
        return int(command(args) or 0)
    except (UserError, ConfigError, FileNotFoundError) as e:
        print(f"lealla: error: {e}", file=sys.stderr)
        return USER_ERROR_EXIT
