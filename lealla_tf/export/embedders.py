"""Embedders (``.name``, ``.encode``) for export folders, TFLite files, runs and TF Hub handles."""

from __future__ import annotations

import os
import re
from typing import List, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from lealla_tf import modeling, preprocessing
from lealla_tf.export.formats import (_STRINGS, LEALLA, OUTPUT_KEY, SIGNATURE, sha256_file,
                                      tflite_interpreter)

def _as_bytes(s: Union[str, bytes]) -> bytes:
    if isinstance(s, bytes):
        return s
    try:
        return s.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:
        return s.encode("utf-8", errors="replace")


# Where exported SavedModels keep their vocabulary (``formats.save_saved_model``).
ASSET_VOCAB = os.path.join("assets", preprocessing.MODEL_FILE)


def _existing(*paths: Optional[str]) -> Optional[str]:
    return next((p for p in paths if p and os.path.isfile(p)), None)


class Embedder:
    """Base class: ``encode`` sorts by length, batches, and restores the input order.

    The exported models pad each batch to its longest sentence, so batches of sentences
    of equal *token* count waste the least work. With a SentencePiece model
    (``length_model``; the embedders below find the one an export carries) sentences are
    ordered by their token count; without one, by their UTF-8 length, a weaker proxy
    across scripts. The order changes which sentences share a batch, never their
    embeddings, which come back in input order.

    Subclasses implement ``_encode_batch(list[bytes]) -> np.ndarray [n, D]``.

    Args:
      name: stable model name (keys the evaluation cache).
      batch_size: default number of sentences per model call.
      fingerprint: what the evaluation cache keys on (default ``name``).
      length_model: SentencePiece model file used to order sentences by token count.
    """

    def __init__(self, name: str, batch_size: int = 64, fingerprint: Optional[str] = None,
                 length_model: Optional[str] = None):
        self.name = name
        # What the evaluation cache keys on: changes whenever the weights do.
        self.fingerprint = fingerprint or name
        self.batch_size = int(batch_size)
        self._dim: Optional[int] = None
        self._sp = None
        if length_model:
            import sentencepiece as spm
            self._sp = spm.SentencePieceProcessor(model_file=length_model)

    def lengths(self, data: Sequence[bytes]) -> List[int]:
        """The sort keys of ``encode``: token counts, or UTF-8 lengths without a vocabulary."""
        if self._sp is None:
            return [len(s) for s in data]
        texts = [s.decode("utf-8", errors="replace") for s in data]
        return [len(ids) for ids in self._sp.encode(texts)]

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        if self._dim is None:
            self._dim = int(self._encode_batch([b""]).shape[1])
        return self._dim

    def _encode_batch(self, batch: List[bytes]) -> np.ndarray:
        raise NotImplementedError

    def encode(self, sentences: Sequence[Union[str, bytes]],
               batch_size: Optional[int] = None) -> np.ndarray:
        """Float32 ``[len(sentences), D]`` embeddings (str or UTF-8 bytes in).

        Args:
          sentences: the sentences; bytes are passed on unchanged (invalid UTF-8 included).
          batch_size: sentences per model call (default ``self.batch_size``).
        """
        batch_size = int(batch_size or self.batch_size)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        data = [_as_bytes(s) for s in sentences]
        n = len(data)
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        order = np.argsort([-k for k in self.lengths(data)], kind="stable")
        out = None
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            vecs = np.asarray(self._encode_batch([data[i] for i in idx]), np.float32)
            if out is None:
                out = np.empty((n, vecs.shape[1]), np.float32)
                self._dim = vecs.shape[1]
            out[idx] = vecs
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _pick_output(out) -> tf.Tensor:
    if isinstance(out, dict):
        if OUTPUT_KEY in out:
            return out[OUTPUT_KEY]
        if len(out) == 1:
            return next(iter(out.values()))
        raise ValueError(f"the model returns several outputs {sorted(out)} and no "
                         f"{OUTPUT_KEY!r}: not a string-in embedding model")
    return out


class SavedModelEmbedder(Embedder):
    """A string-in SavedModel from a folder or a TF Hub handle/URL (via ``hub.load``).

    Args:
      handle: a SavedModel folder, or a URL / TF Hub handle.
      batch_size: default sentences per call.
    """

    def __init__(self, handle: str, batch_size: int = 64):
        import tensorflow_hub as hub
        import tensorflow_text  # noqa: F401
        local = os.path.isdir(handle)
        folder = handle if local else hub.resolve(handle)
        if local:
            handle = os.path.abspath(handle)
            fp = os.path.join(handle, "fingerprint.pb")
            digest = sha256_file(fp)[:16] if os.path.exists(fp) else sha256_file(
                os.path.join(handle, "saved_model.pb"))[:16]
            name = f"savedmodel:{handle}@{digest}"
        else:
            name = f"hub:{handle}"
        super().__init__(name, batch_size,
                         length_model=_existing(os.path.join(folder, ASSET_VOCAB)))
        self.handle = handle
        self._model = hub.load(handle)

    def _encode_batch(self, batch):
        return _pick_output(self._model(tf.constant(batch, tf.string))).numpy()


class TFLiteEmbedder(Embedder):
    """A ``.tflite`` export run with LiteRT.

    The exports take any number of sentences and pad each batch to its longest sentence,
    so batches go in as they are (the interpreter resizes per call anyway, since the
    padded length changes). A model with a fixed batch dimension gets its batches cut
    to that size and padded with empty strings.

    Args:
      path: the ``.tflite`` file.
      batch_size: default sentences per call.
      num_threads: interpreter threads (default: LiteRT's).
      length_model: SentencePiece model to order sentences by token count (default:
        the one of the export folder holding ``path``, if any).
    """

    def __init__(self, path: str, batch_size: int = 64, num_threads: Optional[int] = None,
                 length_model: Optional[str] = None):
        path = os.path.abspath(path)
        length_model = length_model or _existing(
            os.path.join(os.path.dirname(path), LEALLA, ASSET_VOCAB))
        super().__init__(f"tflite:{path}@{sha256_file(path)[:16]}", batch_size,
                         length_model=length_model)
        self.path = path
        self._interpreter = tflite_interpreter(model_path=path, num_threads=num_threads)
        signatures = self._interpreter.get_signature_list()
        key = SIGNATURE if SIGNATURE in signatures else next(iter(signatures), None)
        if key is None:
            raise ValueError(f"{path} has no signature: not a lealla TFLite export")
        self._runner = self._interpreter.get_signature_runner(key)
        self._input = signatures[key]["inputs"][0]
        outputs = signatures[key]["outputs"]
        self._output = OUTPUT_KEY if OUTPUT_KEY in outputs else outputs[0]
        shape = self._runner.get_input_details()[self._input]["shape_signature"]
        self.static_batch = int(shape[0]) if len(shape) and shape[0] > 0 else None

    def _encode_batch(self, batch):
        if self.static_batch is None:
            return self._runner(**{self._input: np.array(list(batch), dtype=object)})[
                self._output]
        size, parts = self.static_batch, []
        for start in range(0, len(batch), size):
            chunk = list(batch[start:start + size])
            padded = np.array(chunk + [b""] * (size - len(chunk)), dtype=object)
            parts.append(self._runner(**{self._input: padded})[self._output][:len(chunk)])
        return np.concatenate(parts, axis=0)


class CheckpointEmbedder(Embedder):
    """The latest (or given) checkpoint of a training model dir.

    Args:
      model_dir: the run's model dir.
      checkpoint: a checkpoint path (default: the latest).
      batch_size: default sentences per call.
    """

    def __init__(self, model_dir: str, checkpoint: Optional[str] = None, batch_size: int = 64):
        from lealla_tf import training
        model_dir = os.path.abspath(model_dir)
        checkpoint = checkpoint or tf.train.latest_checkpoint(
            os.path.join(model_dir, training.CHECKPOINT_DIR))
        _, preprocessor, encoder = training.restore_encoder(model_dir, checkpoint)
        name = f"run:{model_dir}@{os.path.basename(checkpoint)}"
        index = checkpoint + ".index"
        super().__init__(name, batch_size, fingerprint=name + (
            f"@{sha256_file(index)[:16]}" if os.path.exists(index) else ""),
            length_model=_existing(os.path.join(model_dir, training.VOCAB_FILE)))
        model = modeling.StringEncoder(preprocessor, encoder)
        self._fn = tf.function(lambda s: model(s, training=False), input_signature=[_STRINGS])

    def _encode_batch(self, batch):
        return self._fn(tf.constant(batch, tf.string)).numpy()


def load_embedder(source: str, batch_size: int = 64, num_threads: Optional[int] = None
                  ) -> Embedder:
    """An embedder for an export folder, a ``.tflite`` file, a run's model dir, a
    SavedModel folder, or a TF Hub handle/URL (``http(s)://``, ``gs://``, or ``hub:HANDLE``).

    Args:
      source: where the model is.
      batch_size: default sentences per model call.
      num_threads: TFLite interpreter threads.

    Raises:
      FileNotFoundError: ``source`` looks like a path that does not exist.
      ValueError: ``source`` exists but is none of the above.
    """
    from lealla_tf import training
    if source.startswith("hub:"):
        return SavedModelEmbedder(source[len("hub:"):], batch_size)
    if re.match(r"^(https?|gs)://", source):
        return SavedModelEmbedder(source, batch_size)
    if os.path.isfile(source):
        if source.endswith(".tflite"):
            return TFLiteEmbedder(source, batch_size, num_threads)
        raise ValueError(f"{source} is a file but not a .tflite model")
    if os.path.isdir(source):
        if os.path.isfile(os.path.join(source, LEALLA, "saved_model.pb")):
            return SavedModelEmbedder(os.path.join(source, LEALLA), batch_size)
        if os.path.isfile(os.path.join(source, "saved_model.pb")):
            return SavedModelEmbedder(source, batch_size)
        if os.path.isfile(os.path.join(source, training.CONFIG_FILE)):
            return CheckpointEmbedder(source, batch_size=batch_size)
        raise ValueError(
            f"{source} is a folder but not an export folder (lealla/saved_model.pb), a "
            f"SavedModel (saved_model.pb) or a training model dir ({training.CONFIG_FILE})")
    raise FileNotFoundError(
        f"model source not found: {source!r} (expected an export folder, a .tflite file, a "
        "run's model dir, or a TF Hub handle/URL: http(s)://..., gs://..., hub:HANDLE)")
