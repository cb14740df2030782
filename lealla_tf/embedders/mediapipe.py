"""The ``mediapipe:`` embedder: MediaPipe's own TextEmbedder runs the model.

MediaPipe cannot share an interpreter with TensorFlow (it pins another absl-py), so the
TextEmbedder runs in a long-lived subprocess of its own Python (``mediapipe_worker.py``,
run by path), named by ``LEALLA_MEDIAPIPE_PYTHON`` (default: ``.venv-mediapipe/bin/python``
at the repository root; ``make mediapipe-venv`` makes it). MediaPipe embeds one text per
call and tokenizes it itself, with the tokenizer the model file carries::

    from lealla_tf import embedders
    model = embedders.load("mediapipe:exports/mp")   # the folder, or a .task / .tflite file
    model.encode(["dog", "Hund"])                     # float32 [2, D]

See docs/export.md, "MediaPipe".
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import struct
import subprocess
import tempfile
import threading
import time
from typing import List, Optional

import numpy as np

from lealla_tf import fileio, layout
from lealla_tf.embedders.base import DEFAULT_BATCH_SIZE, Embedder

PYTHON_ENV = "LEALLA_MEDIAPIPE_PYTHON"
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mediapipe_worker.py")
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_PYTHON = os.path.join(_REPO, ".venv-mediapipe", "bin", "python")


class MediaPipeError(RuntimeError):
    """MediaPipe refused a model or a text (its message included)."""


def mediapipe_python() -> str:
    """The interpreter that runs MediaPipe: ``$LEALLA_MEDIAPIPE_PYTHON``, else the
    repository's ``.venv-mediapipe``.

    Raises:
      FileNotFoundError: neither exists; the message says how to make it.
    """
    named = os.environ.get(PYTHON_ENV, "")
    path = named or DEFAULT_PYTHON
    if os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    where = f"{PYTHON_ENV}={named}" if named else f"{PYTHON_ENV} is not set and {path}"
    raise FileNotFoundError(
        f"no Python with MediaPipe: {where} does not exist. MediaPipe runs in a venv of its "
        "own (it pins an absl-py that TensorFlow refuses): run `make mediapipe-venv` at the "
        f"repository root (it makes .venv-mediapipe with mediapipe) and set {PYTHON_ENV} to "
        "its bin/python if it lives elsewhere")


def model_file(path: str) -> str:
    """The model file of ``path``: the file itself, or an export folder's fp32 file (the
    ``.task`` bundle, or the plain ``.tflite`` of a WordPiece run)."""
    if fileio.isdir(path):
        names = [layout.mediapipe_file_name("fp32", bundle) for bundle in (True, False)]
        found = [n for n in names if fileio.exists(fileio.join(path, n))]
        path = fileio.join(path, found[0] if found else names[0])
    if not fileio.exists(path):
        raise FileNotFoundError(f"MediaPipe model not found: {path}")
    return path


class MediaPipeWorker:
    """A subprocess running MediaPipe's TextEmbedder on one model file.

    Args:
      model: a local ``.task`` bundle or ``.tflite`` file of ``lealla export --format
        mediapipe``.
      l2_normalize: the TextEmbedder's own L2 normalisation (the exports normalise
        inside the model already).
      python: the interpreter (default :func:`mediapipe_python`).

    A worker that does not answer in time (``timeout_s`` plus ``timeout_per_text_s`` per
    text) is killed and :class:`MediaPipeError` raised.

    Raises:
      FileNotFoundError: no MediaPipe interpreter.
      MediaPipeError: MediaPipe cannot load the model.
    """

    # Most seconds a reply may take: loading, plus this much per text.
    timeout_s = 300.0
    timeout_per_text_s = 2.0

    def __init__(self, model: str, l2_normalize: bool = False, python: Optional[str] = None):
        python = python or mediapipe_python()
        self._log = tempfile.TemporaryFile()
        self._lock = threading.Lock()
        self._proc = subprocess.Popen([python, WORKER], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._log, bufsize=0)
        try:
            self._send(json.dumps({"model": os.path.abspath(model),
                                   "l2_normalize": bool(l2_normalize)}).encode("utf-8"))
            self.info = json.loads(self._reply("loading " + model).decode("utf-8"))
        except BaseException:
            self.close()
            raise

    def _send(self, payload: bytes) -> None:
        data = memoryview(struct.pack(">I", len(payload)) + payload)
        while len(data):  # an unbuffered pipe may take part of it per call
            data = data[self._proc.stdin.write(data):]

    def _read(self, n: int, deadline: float) -> bytes:
        fd, parts, got = self._proc.stdout.fileno(), [], 0
        while got < n:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                self._proc.kill()
                raise MediaPipeError(f"the MediaPipe worker ({WORKER}) gave no answer in time "
                                     f"(stopped):\n{self.log()}")
            chunk = os.read(fd, n - got)
            if not chunk:
                raise MediaPipeError(f"the MediaPipe worker ({WORKER}) stopped:\n{self.log()}")
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def _reply(self, what: str, texts: int = 0) -> bytes:
        deadline = time.monotonic() + self.timeout_s + self.timeout_per_text_s * texts
        (size,) = struct.unpack(">I", self._read(4, deadline))
        payload = self._read(size, deadline)
        if payload[:1] == b"O":
            return payload[1:]
        error = json.loads(payload[1:].decode("utf-8"))
        raise MediaPipeError(f"MediaPipe failed {what}: {error['error']}", error["index"])

    def log(self, limit: int = 4000) -> str:
        """The end of what the worker printed (MediaPipe's log)."""
        self._log.seek(0)
        return self._log.read().decode("utf-8", errors="replace")[-limit:]

    def embed(self, texts: List[bytes]) -> np.ndarray:
        """Float32 ``[len(texts), D]``: one TextEmbedder call per text.

        Raises:
          MediaPipeError: MediaPipe refused a text (e.g. one longer than the model's input;
            ``args[1]`` is its index).
        """
        payload = struct.pack(">I", len(texts)) + b"".join(
            struct.pack(">I", len(t)) + t for t in texts)
        with self._lock:
            self._send(payload)
            try:
                body = self._reply("embedding a text", len(texts))
            except MediaPipeError as e:
                if len(e.args) > 1 and 0 <= e.args[1] < len(texts):
                    text = texts[e.args[1]]
                    raise MediaPipeError(f"{e.args[0]} (text {e.args[1]}: {len(text)} bytes, "
                                         f"{text[:60]!r}...)", e.args[1]) from None
                raise
        rows, cols = struct.unpack_from(">II", body, 0)
        return np.frombuffer(body, np.float32, offset=8).reshape(rows, cols).copy()

    def close(self) -> None:
        """Ends the worker (also at garbage collection)."""
        proc = getattr(self, "_proc", None)
        if proc is None:
            return
        self._proc = None
        try:
            if proc.poll() is None:
                proc.stdin.write(struct.pack(">I", 0))
                proc.stdin.close()
                proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            proc.kill()
            proc.wait()
        finally:
            if proc.stdout:
                proc.stdout.close()

    def __del__(self):
        self.close()


class MediaPipeEmbedder(Embedder):
    """A ``lealla export --format mediapipe`` model run by MediaPipe's TextEmbedder.

    MediaPipe embeds one text per call; batches go to the worker whole (one round trip
    each). ``num_threads`` has no MediaPipe equivalent in the TextEmbedder's options.

    Args:
      path: the export folder (its fp32 file), a ``.task`` bundle or a ``.tflite`` file.
      batch_size: most texts per round trip to the worker.
    """

    default_batch_tokens = 0  # MediaPipe pads every text to the model's length anyway

    def __init__(self, path: str, batch_size: int = DEFAULT_BATCH_SIZE):
        path = fileio.normpath(model_file(path))
        content = fileio.read_bytes(path)
        super().__init__(f"mediapipe:{path}@{hashlib.sha256(content).hexdigest()[:16]}",
                         batch_size)
        self.path = path
        self._tmp = None
        local = path
        if not fileio.is_local(path):
            self._tmp = tempfile.NamedTemporaryFile(suffix=os.path.splitext(path)[1])
            self._tmp.write(content)
            self._tmp.flush()
            local = self._tmp.name
        self.worker = MediaPipeWorker(local)

    def encode_batch(self, batch: List[bytes]) -> np.ndarray:
        return self.worker.embed(list(batch))

    def close(self) -> None:
        """Ends the MediaPipe worker."""
        self.worker.close()


def load_mediapipe(value: str, batch_size: int = DEFAULT_BATCH_SIZE,
                   num_threads: Optional[int] = None, **_options) -> Embedder:
    """``mediapipe:<path>``: :class:`MediaPipeEmbedder` (an export folder, a ``.task`` or a
    ``.tflite`` file)."""
    del num_threads  # the TextEmbedder's options have no thread count
    return MediaPipeEmbedder(value, batch_size)
