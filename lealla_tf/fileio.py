"""File access for every path the package reads or writes: local, ``gs://`` or ``ram://``.

A thin layer over ``tf.io.gfile``, plus what it lacks: atomic writes and folders, local copies
for libraries that need real files (:func:`local_copy`, :func:`staged_dir`) and one writer
per directory (:func:`writer_lock`).

See docs/architecture.md, "Files and locks".
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import posixpath
import re
import shutil
import socket
import tempfile
import uuid
from typing import Iterator, List, Optional, Tuple, Union


def _gfile():
    import tensorflow as tf  # imported lazily: `lealla --help` stays fast
    return tf.io.gfile


def is_local(path: str) -> bool:
    """True for plain file-system paths (no ``scheme://``, or ``file://``)."""
    return "://" not in str(path) or str(path).startswith("file://")


def _local(path: str) -> str:
    """A local path without its ``file://``."""
    path = str(path)
    return path[len("file://"):] if path.startswith("file://") else path


_MAGIC = re.compile(r"[*?[]")


def _local_glob(pattern: str) -> List[str]:
    """``glob.glob`` as ``tf.io.gfile.glob`` matches: one component at a time, hidden
    names included."""
    if not _MAGIC.search(pattern):
        return [pattern] if os.path.lexists(pattern) else []
    head, tail = os.path.split(pattern)
    folders = _local_glob(head) if _MAGIC.search(head) else [head]
    out = []
    for folder in folders:
        if not os.path.isdir(folder or "."):
            continue
        if _MAGIC.search(tail):
            out += [os.path.join(folder, n) for n in os.listdir(folder or ".")
                    if fnmatch.fnmatchcase(n, tail)]
        elif os.path.lexists(os.path.join(folder, tail)):
            out.append(os.path.join(folder, tail))
    return out


def _split_scheme(path: str):
    scheme, rest = path.split("://", 1)
    return scheme + "://", rest


def join(path: str, *parts: str) -> str:
    """``os.path.join`` for local paths, ``/``-joins for ``scheme://`` paths (an absolute
    part or a part with a scheme replaces what comes before, as in ``os.path.join``)."""
    path = str(path)
    for part in parts:
        part = str(part)
        if "://" in part:
            path = part
        elif is_local(path):
            path = os.path.join(path, part)
        else:
            path = posixpath.join(path, part) if not part.startswith("/") else (
                _split_scheme(path)[0] + part.lstrip("/"))
    return path


def dirname(path: str) -> str:
    """The folder holding ``path`` (keeps the scheme)."""
    return os.path.dirname(path) if is_local(path) else posixpath.dirname(str(path).rstrip("/"))


def basename(path: str) -> str:
    """The last component of ``path``."""
    return os.path.basename(path) if is_local(path) else posixpath.basename(
        str(path).rstrip("/"))


def normpath(path: str) -> str:
    """Absolute local paths; ``scheme://`` paths with ``.``/``..`` folded."""
    if is_local(path):
        return os.path.abspath(path)
    scheme, rest = _split_scheme(str(path))
    return scheme + posixpath.normpath(rest)


def exists(path: str) -> bool:
    """Whether ``path`` exists (file or folder); False on a scheme TensorFlow has no file
    system for (e.g. ``https://``)."""
    if is_local(path):
        return os.path.exists(_local(path))
    import tensorflow as tf
    try:
        return _gfile().exists(path)
    except tf.errors.UnimplementedError:
        return False


def isdir(path: str) -> bool:
    """Whether ``path`` is a folder (False where :func:`exists` is)."""
    if is_local(path):
        return os.path.isdir(_local(path))
    import tensorflow as tf
    try:
        return _gfile().isdir(path)
    except tf.errors.UnimplementedError:
        return False


def glob(pattern: str) -> List[str]:
    """Paths matching ``pattern``, sorted (``*`` also matches names starting with ``.``)."""
    if is_local(pattern):
        return sorted(_local_glob(_local(pattern)))
    return sorted(_gfile().glob(pattern))


def listdir(path: str) -> List[str]:
    """Names in the folder ``path``, sorted (no trailing ``/``)."""
    if is_local(path):
        return sorted(os.listdir(_local(path)))
    return sorted(n.rstrip("/") for n in _gfile().listdir(path))


def makedirs(path: str) -> None:
    """Creates ``path`` and its parents (no error if it exists)."""
    if is_local(path):
        os.makedirs(_local(path), exist_ok=True)
    else:
        _gfile().makedirs(path)


def remove(path: str) -> None:
    """Deletes the file ``path``."""
    if is_local(path):
        os.remove(_local(path))
    else:
        _gfile().remove(path)


def rmtree(path: str) -> None:
    """Deletes the folder ``path`` with everything in it (nothing if it does not exist)."""
    if is_local(path):
        if os.path.isdir(_local(path)):
            shutil.rmtree(_local(path))
    elif exists(path):
        _gfile().rmtree(path)


def rename(src: str, dst: str, overwrite: bool = False) -> None:
    """Moves a file (atomic on local file systems; copy + delete on object stores).

    Raises:
      FileExistsError: ``dst`` exists and not ``overwrite`` (local paths).
    """
    if is_local(src) and is_local(dst):
        if not overwrite and os.path.exists(_local(dst)):
            raise FileExistsError(f"{dst} already exists")
        os.replace(_local(src), _local(dst))
    else:
        _gfile().rename(src, dst, overwrite=overwrite)


def size(path: str) -> int:
    """Size of the file ``path`` in bytes."""
    if is_local(path):
        return os.path.getsize(_local(path))
    return int(_gfile().stat(path).length)


def open(path: str, mode: str = "r"):  # noqa: A001 - mirrors the builtin on purpose
    """A file object: the builtin ``open`` for local paths, a ``tf.io.gfile.GFile``
    otherwise (text modes read/write UTF-8 ``str``, newlines as they are)."""
    if is_local(path):
        if "b" in mode:
            return builtins_open(_local(path), mode)
        return builtins_open(_local(path), mode, encoding="utf-8", newline="")
    return _gfile().GFile(path, mode)


def read_bytes(path: str) -> bytes:
    """The whole file as bytes.

    Raises:
      FileNotFoundError: ``path`` does not exist (on every file system).
    """
    if is_local(path):
        if not os.path.exists(_local(path)):
            raise FileNotFoundError(f"no such file: {path}")
        with open(path, "rb") as f:
            return f.read()
    import tensorflow as tf
    try:
        with open(path, "rb") as f:
            return f.read()
    except tf.errors.NotFoundError:
        raise FileNotFoundError(f"no such file: {path}") from None


def read_text(path: str) -> str:
    """The whole file as UTF-8 text."""
    return read_bytes(path).decode("utf-8")


def atomic_write(path: str, data: Union[str, bytes]) -> None:
    """Writes ``data`` to a temporary name beside ``path``, then renames it over ``path``:
    readers see the old file or the new one, never half of one.

    Args:
      path: destination file; its folder is created.
      data: text (written as UTF-8) or bytes.
    """
    folder = dirname(path)
    if folder:
        makedirs(folder)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        rename(tmp, path, overwrite=True)
    except BaseException:  # a full disk or Ctrl-C: no half-written temporary stays
        if exists(tmp):
            remove(tmp)
        raise


def copy(src: str, dst: str, overwrite: bool = False) -> None:
    """Copies one file (between any two file systems).

    Raises:
      FileExistsError: ``dst`` exists and not ``overwrite`` (local paths).
    """
    if is_local(src) and is_local(dst):
        if not overwrite and os.path.exists(_local(dst)):
            raise FileExistsError(f"{dst} already exists")
        shutil.copyfile(_local(src), _local(dst))
    else:
        _gfile().copy(src, dst, overwrite=overwrite)


def copytree(src: str, dst: str, overwrite: bool = False) -> None:
    """Copies the folder ``src`` (recursively) to ``dst``, between any two file systems.

    Args:
      src: folder to copy.
      dst: destination folder (created).
      overwrite: replace files that exist in ``dst``.
    """
    if not isdir(src):
        raise FileNotFoundError(f"not a folder: {src}")
    makedirs(dst)
    for name in listdir(src):
        s, d = join(src, name), join(dst, name)
        if isdir(s):
            copytree(s, d, overwrite=overwrite)
        else:
            copy(s, d, overwrite=overwrite)


def walk_files(root: str) -> Iterator[str]:
    """Every file under ``root`` (recursively), as paths, in sorted order."""
    for name in listdir(root):
        p = join(root, name)
        if isdir(p):
            yield from walk_files(p)
        else:
            yield p


def tree_bytes(root: str) -> int:
    """Total size of the files under ``root`` (a file: its size)."""
    if not isdir(root):
        return size(root)
    return sum(size(p) for p in walk_files(root))


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local path holding ``path`` (file or folder), for libraries that need real files.

    Args:
      path: any tf.io.gfile path; local paths are yielded as they are.
    """
    if is_local(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="lealla-") as tmp:
        local = os.path.join(tmp, basename(path) or "file")
        if isdir(path):
            copytree(path, local)
        else:
            copy(path, local)
        yield local


@contextlib.contextmanager
def staged_dir(path: str) -> Iterator[str]:
    """A local folder whose files are copied to ``path`` when the block ends without error,
    for libraries that can only write real files; local paths are used directly.

    Args:
      path: destination folder (any tf.io.gfile path); created.
    """
    if is_local(path):
        os.makedirs(path, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="lealla-") as tmp:
        yield tmp
        copytree(tmp, path, overwrite=True)


class LockedError(RuntimeError):
    """Another writer holds the folder."""


@contextlib.contextmanager
def writer_lock(path: str, force: bool = False) -> Iterator[None]:
    """Makes the caller the only writer of the lock file ``path`` for the block.

    Local file systems: an exclusive, non-blocking ``fcntl`` lock (freed if the process
    dies). Other file systems (``gs://``, ``ram://``): a marker file naming the owner; it
    is checked (a second writer raises) and removed when the block ends. Object stores
    have no atomic create, so this documents and checks the single-writer rule rather
    than arbitrating a race.

    Args:
      path: the lock file.
      force: remote only: take over a marker left by a writer that crashed.

    Raises:
      LockedError: another writer holds the lock.
    """
    makedirs(dirname(path))
    if is_local(path):
        import fcntl
        with builtins_open(path, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                holder = lock.read().strip() or "unknown process"
                raise LockedError(f"held by {holder}; lock {path}") from None
            try:
                lock.seek(0)
                lock.truncate()
                lock.write(_owner() + "\n")
                lock.flush()
                yield
            finally:
                lock.seek(0)
                lock.truncate()
                fcntl.flock(lock, fcntl.LOCK_UN)
        return
    owner = f"{_owner()} {uuid.uuid4().hex}"
    if exists(path) and not force:
        raise LockedError(
            f"{path} says another writer ({read_text(path).strip()}) is writing here; this "
            "file system has no locks, so one folder takes one writer. If that writer "
            "crashed, remove the file or rerun with --overwrite")
    atomic_write(path, owner + "\n")
    if read_text(path).strip() != owner:
        raise LockedError(f"another writer took {path} at the same time")
    try:
        yield
    finally:
        if exists(path) and read_text(path).strip() == owner:
            remove(path)


def _owner() -> str:
    """``host pid N (command)``: who holds a lock, for the message of the next writer."""
    import sys
    command = " ".join(os.path.basename(a) if i == 0 else a
                       for i, a in enumerate(sys.argv[:4]))
    return f"{socket.gethostname()} pid {os.getpid()} ({command})"


def builtins_open(path: str, mode: str = "r"):
    """The builtin ``open`` (this module's ``open`` is gfile's), for local lock files."""
    import builtins
    return builtins.open(path, mode)



# ------------------------------------------------------------------ atomic folders
def check_target(output_dir: str, overwrite: bool) -> None:
    """Refuses an existing ``output_dir`` unless ``overwrite``.

    Raises:
      FileExistsError: naming the folder and the flag that replaces it.
    """
    if exists(output_dir) and not overwrite:
        raise FileExistsError(f"{output_dir} already exists: pass --overwrite "
                              "(overwrite=True) to replace it")


def commit_dir(tmp: str, output_dir: str, overwrite: bool) -> None:
    """Renames the local folder ``tmp`` to ``output_dir`` (replacing it only when
    ``overwrite``; the old folder is moved aside first, then removed)."""
    old = None
    if os.path.exists(output_dir):
        check_target(output_dir, overwrite)
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.old-",
                               dir=os.path.dirname(output_dir))
        os.rmdir(old)
        os.rename(output_dir, old)
    os.rename(tmp, output_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _tmp_dir_beside(output_dir: str) -> str:
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.tmp-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result is a normal folder
    return tmp


def _copy_out(tmp: str, output_dir: str, overwrite: bool, last: Optional[str]) -> None:
    """Copies a finished local folder to a non-local ``output_dir``, ``last`` at the end."""
    check_target(output_dir, overwrite)
    rmtree(output_dir)
    makedirs(output_dir)
    for name in sorted(os.listdir(tmp)):
        if name == last:
            continue
        src = os.path.join(tmp, name)
        if os.path.isdir(src):
            copytree(src, join(output_dir, name))
        else:
            copy(src, join(output_dir, name))
    if last and os.path.exists(os.path.join(tmp, last)):
        copy(os.path.join(tmp, last), join(output_dir, last))


@contextlib.contextmanager
def atomic_dir(output_dir: str, overwrite: bool, bar=None, last: Optional[str] = None
               ) -> Iterator[str]:
    """Yields a temporary local folder that replaces ``output_dir`` when the block
    succeeds (an existing ``output_dir`` only with ``overwrite``) and is removed when the
    block fails; ``bar`` (a tqdm bar) is closed either way.

    Local ``output_dir``: the folder sits beside it and is renamed into place. Other file
    systems: it is copied there, the file named ``last`` (the folder's marker) last.
    One writer at a time (a lock beside the folder: a second one raises
    :class:`LockedError` naming the first); staging folders of an earlier writer that was
    killed are removed first.
    """
    local = is_local(output_dir)
    with _output_lock(output_dir):
        if local:
            _remove_stale_staging(output_dir)
        tmp = (_tmp_dir_beside(output_dir) if local
               else tempfile.mkdtemp(prefix="lealla-staging-"))
        try:
            yield tmp
            if bar is not None:
                bar.close()
            if local:
                commit_dir(tmp, output_dir, overwrite)
            else:
                _copy_out(tmp, output_dir, overwrite, last)
        except BaseException:
            if bar is not None:
                bar.close()
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _lock_path(output_dir: str) -> str:
    """The lock of a folder output: a hidden file beside it (the folder itself is replaced
    as a whole)."""
    return join(dirname(output_dir), f".{basename(output_dir.rstrip('/'))}.lock")


@contextlib.contextmanager
def _output_lock(output_dir: str) -> Iterator[None]:
    """One writer per folder output (:func:`writer_lock` on :func:`_lock_path`); the lock
    file is removed afterwards."""
    path = _lock_path(output_dir)
    try:
        with writer_lock(path):
            yield
    finally:
        try:
            if is_local(path):
                os.remove(path)
        except OSError:
            pass


def _remove_stale_staging(output_dir: str) -> None:
    """Removes the staging folders (``.NAME.tmp-*``, ``.NAME.old-*``) that an earlier writer
    of ``output_dir`` left when it was killed: the caller holds the output's lock, so no
    live writer owns them."""
    import glob as glob_lib
    import logging
    name = os.path.basename(output_dir.rstrip("/"))
    pattern = os.path.join(os.path.dirname(output_dir) or ".", f".{glob_lib.escape(name)}.")
    for stale in glob_lib.glob(pattern + "tmp-*") + glob_lib.glob(pattern + "old-*"):
        logging.getLogger(__name__).warning(
            "removing %s, left by an earlier interrupted write of %s", stale, output_dir)
        shutil.rmtree(stale, ignore_errors=True)


# ------------------------------------------------------------------ output files
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<host>[^/]*)-(?P<pid>\d+)-[0-9a-f]+(?P<ext>\.[^./]*)?$")


def temporary_name(path: str) -> str:
    """Where :func:`atomic_file` writes ``path`` before renaming it into place:
    ``DIR/.NAME.tmp-HOST-PID-XXXXXX.EXT`` (hidden, same folder, same extension, and
    naming the writer, so a temporary left by a killed writer can be recognised)."""
    name = basename(path)
    host = socket.gethostname().replace("-", "_").replace("/", "_")
    return join(dirname(path), f".{name}.tmp-{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
                               f"{os.path.splitext(name)[1]}")


def stale_temporaries(path: str) -> Tuple[List[str], List[str]]:
    """The temporaries of ``path`` that earlier writers left (see :func:`temporary_name`).

    Returns:
      ``(dead, unknown)``: temporaries whose writer is a process of this machine that no
      longer runs (safe to remove), and those of writers that may still run (another
      machine, or a live process).
    """
    folder = dirname(path) or "."
    if not isdir(folder):
        return [], []
    host = socket.gethostname().replace("-", "_").replace("/", "_")
    dead, unknown = [], []
    for name in listdir(folder):
        m = _TMP_RE.match(name)
        if not m or m.group("name") != basename(path):
            continue
        full = join(dirname(path), name)
        alive = True
        if is_local(path) and m.group("host") == host:
            try:
                os.kill(int(m.group("pid")), 0)
            except ProcessLookupError:
                alive = False
            except PermissionError:  # a live process of another user
                pass
        (unknown if alive else dead).append(full)
    return dead, unknown


@contextlib.contextmanager
def atomic_file(path: str) -> Iterator[str]:
    """Yields a local path to write the file ``path`` into; when the block ends without
    error that file replaces ``path`` by a rename (readers, and a later run, see the old
    file or the new one, never part of one); when it fails, or is interrupted, the
    temporary is removed and ``path`` is left as it was.

    Local ``path``: the temporary sits beside it (:func:`temporary_name`; same file
    system, so the rename is atomic, and a process killed outright leaves only that
    hidden file). Other file systems: it is written in a local temporary folder, then
    copied beside ``path`` and renamed over it.
    """
    if is_local(path):
        makedirs(dirname(path) or ".")
        tmp = _local(temporary_name(path))
        try:
            yield tmp
            os.replace(tmp, _local(path))
        finally:
            if os.path.lexists(tmp):
                os.remove(tmp)
        return
    staging = tempfile.mkdtemp(prefix="lealla-")
    try:
        tmp = os.path.join(staging, basename(path))
        yield tmp
        remote = temporary_name(path)
        copy(tmp, remote, overwrite=True)
        try:
            rename(remote, path, overwrite=True)
        except BaseException:
            if exists(remote):
                remove(remote)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


_NOT_A_FILE = "the output is a folder, not a file"
_NOT_A_FOLDER = "the output is a file, not a folder"


def check_writable(path: str, folder: bool = False) -> None:
    """Checks, before any long work, that the output ``path`` can be written.

    Local paths: ``path`` is not a folder (a file, when ``folder``), and a file can be
    created where it goes: in ``path`` itself (an existing output folder) or in its
    nearest existing parent (a probe file is created and removed). Other file systems:
    only the kind of an existing ``path`` is checked.

    Args:
      path: the output file (or folder, with ``folder``).
      folder: the output is a folder.

    Raises:
      IsADirectoryError: a file output names a folder.
      NotADirectoryError: a folder output names a file, or a parent is a file.
      OSError: the folder cannot be written (``PermissionError``, a read-only or full
        file system), with ``path`` as its file name.
    """
    if not is_local(path):
        if exists(path) and isdir(path) != folder:
            raise (NotADirectoryError(errno.ENOTDIR, _NOT_A_FOLDER, path) if folder else
                   IsADirectoryError(errno.EISDIR, _NOT_A_FILE, path))
        return
    local = os.path.abspath(_local(path))
    if not folder and os.path.isdir(local):
        raise IsADirectoryError(errno.EISDIR, _NOT_A_FILE, path)
    if folder and os.path.exists(local) and not os.path.isdir(local):
        raise NotADirectoryError(errno.ENOTDIR, _NOT_A_FOLDER, path)
    where = local if folder and os.path.isdir(local) else os.path.dirname(local)
    while not os.path.exists(where):
        where = os.path.dirname(where)
    if not os.path.isdir(where):
        raise NotADirectoryError(errno.ENOTDIR, f"the output's folder {where} is a file",
                                 path)
    try:
        fd, probe = tempfile.mkstemp(prefix=".lealla-probe-", dir=where)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise type(e)(e.errno, e.strerror, path) from None
