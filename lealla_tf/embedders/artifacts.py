"""Embedders for export folders, TFLite files and training runs.

The ``export:``, ``tflite:`` and ``run:`` specs; paths may be local, ``gs://`` or ``ram://``.

See docs/export.md, "Using an export".
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf

from lealla_tf import embedders, fileio, layout, runs
from lealla_tf.embedders import DEFAULT_BATCH_SIZE, Embedder
from lealla_tf.embedders.teachers import string_function
from lealla_tf.layout import ASSET_VOCAB, INPUT_KEY, LEALLA, OUTPUT_KEY, SIGNATURE
from lealla_tf.models import encoders

_STRINGS = tf.TensorSpec([None], tf.string, name=INPUT_KEY)


def _digest(path: str) -> str:
    import hashlib
    return hashlib.sha256(fileio.read_bytes(path)).hexdigest()



def tflite_interpreter(model_path: Optional[str] = None, model_content: Optional[bytes] = None,
                       num_threads: Optional[int] = None, xnnpack: bool = True):
    """A LiteRT interpreter with TF Text's custom ops registered.

    ``xnnpack=False`` runs LiteRT's built-in kernels (ruy; hybrid int8 kernels for
    dynamic-range files) without the default XNNPACK delegate.
    """
    import tensorflow_text as tf_text
    from ai_edge_litert.interpreter import InterpreterWithCustomOps, OpResolverType
    kwargs = {} if xnnpack else {
        "experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    return InterpreterWithCustomOps(
        custom_op_registerers=tf_text.tflite_registrar.SELECT_TFTEXT_OPS,
        model_path=model_path, model_content=model_content, num_threads=num_threads, **kwargs)


def _existing(*paths: Optional[str]) -> Optional[str]:
    return next((p for p in paths if p and fileio.exists(p) and not fileio.isdir(p)), None)


class SavedModelEmbedder(Embedder):
    """A string-in SavedModel from a folder or a TF Hub handle/URL (via ``hub.load``).

    Args:
      handle: a SavedModel folder, or a URL / TF Hub handle.
      batch_size: most sentences per call.
      batch_tokens: most padded tokens per call (default
        :data:`~lealla_tf.embedders.DEFAULT_BATCH_TOKENS`; 0: no limit).
    """

    def __init__(self, handle: str, batch_size: int = DEFAULT_BATCH_SIZE,
                 batch_tokens: Optional[int] = None):
        import tensorflow_hub as hub
        import tensorflow_text  # noqa: F401
        local = fileio.isdir(handle)
        folder = handle if local else hub.resolve(handle)
        if local:
            handle = fileio.normpath(handle)
            fp = fileio.join(handle, "fingerprint.pb")
            digest = _digest(fp)[:16] if fileio.exists(fp) else _digest(
                fileio.join(handle, "saved_model.pb"))[:16]
            name = f"savedmodel:{handle}@{digest}"
        else:
            name = f"hub:{handle}"
        super().__init__(name, batch_size,
                         length_model=_existing(fileio.join(folder, ASSET_VOCAB)),
                         batch_tokens=batch_tokens)
        self.handle = handle
        self._model = tf.saved_model.load(handle) if local else hub.load(handle)
        self._call = string_function(self._model)  # no re-optimisation per batch shape

    def encode_batch(self, batch):
        out = self._call(tf.constant(batch, tf.string))
        return embedders.pick_output(out, what=f"SavedModel {self.handle}").numpy()


class TFLiteEmbedder(Embedder):
    """A ``.tflite`` export run with LiteRT.

    The exports take any number of sentences and pad each batch to its longest sentence,
    so batches go in as they are (the interpreter resizes per call anyway, since the
    padded length changes). A model with a fixed batch dimension gets its batches cut
    to that size and padded with empty strings.

    Args:
      path: the ``.tflite`` file.
      batch_size: most sentences per call.
      num_threads: interpreter threads (default: LiteRT's).
      length_model: SentencePiece model to order sentences by token count (default:
        the one of the export folder holding ``path``, if any).
      batch_tokens: most padded tokens per call (default 1,024: XNNPACK's best on thin
        encoders; 0: no limit).
    """

    default_batch_tokens = 1024

    def __init__(self, path: str, batch_size: int = DEFAULT_BATCH_SIZE,
                 num_threads: Optional[int] = None, length_model: Optional[str] = None,
                 batch_tokens: Optional[int] = None):
        path = fileio.normpath(path)
        length_model = length_model or _existing(
            fileio.join(fileio.dirname(path), LEALLA, ASSET_VOCAB))
        content = fileio.read_bytes(path)
        import hashlib
        super().__init__(f"tflite:{path}@{hashlib.sha256(content).hexdigest()[:16]}",
                         batch_size, length_model=length_model, batch_tokens=batch_tokens)
        self.path = path
        self._interpreter = tflite_interpreter(model_content=content, num_threads=num_threads)
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

    def encode_batch(self, batch):
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

    def __init__(self, model_dir: str, checkpoint: Optional[str] = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, batch_tokens: Optional[int] = None):
        model_dir = fileio.normpath(model_dir)
        checkpoint = checkpoint or runs.latest_checkpoint(model_dir)
        _, preprocessor, encoder = runs.restore_encoder(model_dir, checkpoint)
        name = f"run:{model_dir}@{fileio.basename(checkpoint)}"
        index = checkpoint + ".index"
        super().__init__(name, batch_size, fingerprint=name + (
            f"@{_digest(index)[:16]}" if fileio.exists(index) else ""),
            length_model=_existing(fileio.join(model_dir, layout.VOCAB_FILE)),
            batch_tokens=batch_tokens)
        model = encoders.StringEncoder(preprocessor, encoder)
        self._fn = tf.function(lambda s: model(s, training=False), input_signature=[_STRINGS])

    def encode_batch(self, batch):
        return self._fn(tf.constant(batch, tf.string)).numpy()


def load_embedder(source: str, batch_size: int = DEFAULT_BATCH_SIZE,
                  num_threads: Optional[int] = None, batch_tokens: Optional[int] = None
                  ) -> Embedder:
    """An embedder for any model spec: :func:`lealla_tf.embedders.load` (an export folder,
    a ``.tflite`` file, a run's model dir, a SavedModel folder, a TF Hub handle/URL, a
    teacher name or a ``py:`` callable).

    Args:
      source: the spec (see :mod:`lealla_tf.embedders`).
      batch_size: default sentences per model call.
      num_threads: TFLite interpreter threads.
      batch_tokens: most padded tokens per model call (default: the embedder's own).

    Raises:
      FileNotFoundError: ``source`` looks like a path that does not exist.
      ValueError: ``source`` exists but is none of the known kinds.
    """
    return embedders.load(source, batch_size=batch_size, num_threads=num_threads,
                          batch_tokens=batch_tokens)


# Loaders of the export kinds of the spec registry (lealla_tf.embedders.spec):
# loader(value, **options).
def load_export(value: str, batch_size: int = DEFAULT_BATCH_SIZE, **_options) -> Embedder:
    """``export:<path>``: the :class:`SavedModelEmbedder` of an export's ``lealla/``."""
    folder = fileio.join(value, LEALLA)
    if not fileio.exists(fileio.join(folder, "saved_model.pb")):
        raise ValueError(f"{value} is not an export folder (no {LEALLA}/saved_model.pb)")
    return SavedModelEmbedder(folder, batch_size)


def load_tflite(value: str, batch_size: int = DEFAULT_BATCH_SIZE, num_threads: Optional[int] = None,
                **_options) -> Embedder:
    """``tflite:<path>``: :class:`TFLiteEmbedder`."""
    if not fileio.exists(value):
        raise FileNotFoundError(f".tflite file not found: {value}")
    return TFLiteEmbedder(value, batch_size, num_threads)


def load_run(value: str, batch_size: int = DEFAULT_BATCH_SIZE, **_options) -> Embedder:
    """``run:<path>``: :class:`CheckpointEmbedder` of the latest checkpoint."""
    return CheckpointEmbedder(value, batch_size=batch_size)
