"""The build / embed / export-parity steps that several test files share.

- :func:`build_encoder`: a ``LeallaEncoder`` of a model config, built (seeded on request);
- :func:`embed`: the in-memory embeddings of sentences (``StringEncoder``, inference);
- :func:`tflite_encoder`: a ``.tflite`` model (file or bytes) called through the published
  signature (``serving_default``: ``sentences`` in, ``default`` out);
- :func:`export_embeddings`: the embeddings of an export folder's ``lealla/`` SavedModel
  and of its ``lealla-<variant>.tflite`` files, loaded as ``lealla embed --model`` loads
  them;
- :func:`snapshot` and :func:`largest_change`: weights before and after training;
- :func:`first_step`: a trainer's global loss and gradients on its first batch.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras

from lealla_tf import export
from lealla_tf.models import encoders


def build_encoder(model_cfg, seed: Optional[int] = None, **kwargs) -> encoders.LeallaEncoder:
    """``LeallaEncoder.from_model_config(model_cfg, **kwargs)``, built on its dummy inputs;
    with ``seed``, Keras' random seed is set first (the same weights every time)."""
    if seed is not None:
        tf_keras.utils.set_random_seed(seed)
    encoder = encoders.LeallaEncoder.from_model_config(model_cfg, **kwargs)
    encoder(encoder.dummy_inputs())
    return encoder


def embed(preprocessor, encoder, sentences, **kwargs) -> np.ndarray:
    """Embeddings of ``sentences`` by ``StringEncoder(preprocessor, encoder, **kwargs)``
    in inference mode."""
    model = encoders.StringEncoder(preprocessor, encoder, **kwargs)
    return model(tf.constant(sentences), training=False).numpy()


def tflite_encoder(model_path: Optional[str] = None, model_content: Optional[bytes] = None
                   ) -> Callable[[Sequence], np.ndarray]:
    """A function ``sentences -> embeddings`` calling a ``.tflite`` model's
    ``serving_default`` signature on the sentences as one batch."""
    runner = export.tflite_interpreter(model_path=model_path, model_content=model_content
                                       ).get_signature_runner("serving_default")

    def encode(sentences):
        return runner(sentences=np.array(sentences, dtype=object))["default"]

    return encode


def export_embeddings(export_dir: str, sentences, tflite: Sequence[str] = ()
                      ) -> Dict[str, np.ndarray]:
    """``{"lealla": ..., <variant>: ...}``: the embeddings of ``sentences`` by the export
    folder (its ``lealla/`` SavedModel) and by its ``lealla-<variant>.tflite`` files."""
    out = {"lealla": export.load_embedder(export_dir).encode(sentences)}
    for variant in tflite:
        path = os.path.join(export_dir, f"lealla-{variant}.tflite")
        out[variant] = export.load_embedder(path).encode(sentences)
    return out


def snapshot(weights) -> List[np.ndarray]:
    """Copies of the values of ``weights`` (variables or arrays)."""
    return [np.array(w.numpy() if hasattr(w, "numpy") else w, copy=True) for w in weights]


def largest_change(before, after) -> float:
    """The largest absolute difference between two lists of weights, pair by pair."""
    return max(float(np.abs(a - b).max()) for a, b in zip(snapshot(before), snapshot(after)))


def first_step(trainer):
    """Global loss and gradients (summed over replicas) of a trainer's first batch."""
    batch = next(trainer.make_iterator())

    def replica(b):
        terms, grads = trainer.loss_and_gradients(b)
        return terms["loss"], [tf.convert_to_tensor(g) for g in grads]

    @tf.function
    def run(b):
        loss, grads = trainer.strategy.run(replica, args=(b,))
        total = lambda x: trainer.strategy.reduce(tf.distribute.ReduceOp.SUM, x, axis=None)
        return total(loss), [total(g) for g in grads]

    loss, grads = run(batch)
    return float(loss), [g.numpy() for g in grads]


def damage_checkpoint(folder: str, step: int, how: str, keep: float = 0.5) -> None:
    """Damages checkpoint ``ckpt-STEP`` of a checkpoint folder as users do: ``state``
    removes the ``checkpoint`` state file, ``index`` the ``.index`` file, ``data`` the data
    shard; ``truncate`` cuts the data shard to ``keep`` of its size."""
    data = os.path.join(folder, f"ckpt-{step}.data-00000-of-00001")
    if how == "state":
        os.remove(os.path.join(folder, "checkpoint"))
    elif how == "index":
        os.remove(os.path.join(folder, f"ckpt-{step}.index"))
    elif how == "data":
        os.remove(data)
    elif how == "truncate":
        with open(data, "r+b") as f:
            f.truncate(int(os.path.getsize(data) * keep))
    else:
        raise ValueError(f"unknown damage {how!r}")
