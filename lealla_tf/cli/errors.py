"""The one path of errors the user can fix: one ``lealla: error: <message>`` line on
stderr and exit code 2. Any other exception is a bug and keeps its traceback."""

from __future__ import annotations

import contextlib
import errno
import sys
import traceback
from typing import Callable, Iterator, Optional, Tuple, Type

USER_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports a Ctrl-C

# OSErrors that are the machine's or the user's, never a bug: a full disk, a read-only
# file system, missing permissions.
_WRITE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                 errno.EROFS: "read-only file system", errno.EFBIG: "file too large"}
_ACCESS_ERRNOS = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted"}


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


@contextlib.contextmanager
def writing(path: str) -> Iterator[None]:
    """Inside the block, an ``OSError`` that names no file (a ``write`` on a full disk)
    names ``path``, so the one error line says where."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            e.filename = path
        raise


def _user_error_types() -> Tuple[Type[BaseException], ...]:
    """The exception types that are always the user's. Modules that import TensorFlow
    are only consulted once loaded (their errors cannot happen before)."""
    from lealla_tf import fileio
    from lealla_tf.config import ConfigError
    types = [UserError, ConfigError, FileNotFoundError, FileExistsError, IsADirectoryError,
             NotADirectoryError, fileio.LockedError]
    runs = sys.modules.get("lealla_tf.runs")
    if runs is not None:
        types += [runs.DamagedRunError, runs.RunLockedError]
    return tuple(types)


def _os_message(e: OSError) -> Optional[str]:
    """One line for an ``OSError`` with an error number (None: keep ``str(e)``)."""
    if e.errno is None or not e.strerror or len(e.args) < 2:
        return None
    where = e.filename if e.filename is not None else ""
    if e.errno in _WRITE_ERRNOS:
        reason = _WRITE_ERRNOS[e.errno]
        return f"{reason} writing {where}" if where else reason
    reason = _ACCESS_ERRNOS.get(e.errno) or (e.strerror[:1].lower() + e.strerror[1:])
    return f"{reason}: {where}" if where else reason


def message(e: BaseException) -> Optional[str]:
    """The one-line message of an error that is the user's, or None for a bug."""
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    if isinstance(e, _user_error_types()):
        text = (_os_message(e) if isinstance(e, OSError) else None) or str(e)
    elif isinstance(e, OSError) and e.errno in {**_WRITE_ERRNOS, **_ACCESS_ERRNOS}:
        text = _os_message(e) or str(e)
    else:
        return None
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(
        e).__name__


def run(command: Callable[..., object], args) -> int:
    """Runs a command handler and returns its exit code. An error the user can fix (a
    :class:`UserError`, a config error, a missing or existing file, a full or read-only
    disk, a locked or damaged run) is printed as one line and exits 2, Ctrl-C as
    ``interrupted`` with 130; ``args.debug`` (``lealla --debug``) adds the traceback."""
    try:
        return int(command(args) or 0)
    except (Exception, KeyboardInterrupt) as e:
        text = message(e)
        if text is None:
            raise
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"lealla: error: {text}", file=sys.stderr)
        return INTERRUPTED_EXIT if isinstance(e, KeyboardInterrupt) else USER_ERROR_EXIT
