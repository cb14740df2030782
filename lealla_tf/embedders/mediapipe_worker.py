"""Runs MediaPipe's TextEmbedder for :mod:`lealla_tf.embedders.mediapipe`.

A standalone script, run by path with an interpreter that has ``mediapipe`` (it imports
nothing else of the package). It speaks frames over stdin/stdout: a frame is a 4-byte
big-endian length, then that many bytes.

* The first request frame is JSON: ``{"model": PATH, "l2_normalize": bool}``; the reply
  is ``O`` + JSON ``{"mediapipe": VERSION}``.
* Each later request frame is a batch: a 4-byte count, then per sentence a 4-byte
  length and its UTF-8 bytes (invalid bytes are decoded as U+FFFD, as a Kotlin or
  JavaScript string holds them). The reply is ``O`` + rows and columns (4 bytes each) +
  float32 embeddings, row-major; or ``E`` + JSON ``{"index": i, "error": message}`` for
  the first sentence MediaPipe refuses (the TextEmbedder is then made again: a failed
  call leaves its graph failing every later call).
* An empty frame (or the end of stdin) ends the worker.
"""

import json
import os
import struct
import sys


def _read_exact(stream, n):
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_frame(stream):
    head = _read_exact(stream, 4)
    if head is None:
        return None
    (size,) = struct.unpack(">I", head)
    return _read_exact(stream, size) if size else b""


def write_frame(stream, payload):
    stream.write(struct.pack(">I", len(payload)) + payload)
    stream.flush()


def split_batch(payload):
    (count,) = struct.unpack_from(">I", payload, 0)
    pos, out = 4, []
    for _ in range(count):
        (size,) = struct.unpack_from(">I", payload, pos)
        pos += 4
        out.append(payload[pos:pos + size])
        pos += size
    return out


def _embedder(config):
    from mediapipe.tasks.python.core import base_options
    from mediapipe.tasks.python.text import text_embedder

    options = text_embedder.TextEmbedderOptions(
        base_options=base_options.BaseOptions(model_asset_path=config["model"]),
        l2_normalize=bool(config.get("l2_normalize", False)), quantize=False)
    return text_embedder.TextEmbedder.create_from_options(options)


def _version():
    try:
        from importlib.metadata import version
        return version("mediapipe")
    except Exception:  # noqa: BLE001 - reported as unknown
        return "unknown"


def serve(stdin, stdout):
    import numpy as np

    config = json.loads(read_frame(stdin).decode("utf-8"))
    try:
        embedder = _embedder(config)
    except Exception as e:  # noqa: BLE001 - sent to the parent, which raises it
        write_frame(stdout, b"E" + json.dumps({"index": -1, "error": str(e)}).encode())
        return
    write_frame(stdout, b"O" + json.dumps({"mediapipe": _version()}).encode())
    while True:
        payload = read_frame(stdin)
        if not payload:
            break
        rows = []
        failed = None
        for i, sentence in enumerate(split_batch(payload)):
            try:
                result = embedder.embed(sentence.decode("utf-8", errors="replace"))
            except Exception as e:  # noqa: BLE001 - sent to the parent, which raises it
                failed = {"index": i, "error": f"{type(e).__name__}: {e}"}
                # A failed call leaves MediaPipe's graph in error: every later call fails.
                try:
                    embedder.close()  # reports the graph's error again
                except Exception:  # noqa: BLE001, S110 - the graph is dropped anyway
                    pass
                embedder = _embedder(config)
                break
            rows.append(np.asarray(result.embeddings[0].embedding, np.float32))
        if failed is not None:
            write_frame(stdout, b"E" + json.dumps(failed).encode("utf-8"))
            continue
        out = np.stack(rows) if rows else np.zeros((0, 0), np.float32)
        write_frame(stdout, b"O" + struct.pack(">II", *out.shape) + out.tobytes())
    embedder.close()


def main():
    # Run by path, the script's folder comes first on sys.path, and there the package's
    # own mediapipe.py would hide the real mediapipe.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    # Frames go over a copy of the real stdout; anything MediaPipe prints (Python or C++)
    # goes to stderr.
    frames = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    serve(sys.stdin.buffer, frames)


if __name__ == "__main__":
    main()
