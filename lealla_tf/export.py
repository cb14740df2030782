"""Export to what users take home: TF Hub SavedModels, TFLite files and a model card.

:func:`export_model` (an in-memory preprocessor + encoder) and :func:`export_run` (a
training model dir) write one folder::

    OUT/lealla/                 end-to-end SavedModel: strings -> L2-normalised float32 [B, D]
    OUT/preprocessor/           TF Hub text API: __call__, tokenize, bert_pack_inputs
    OUT/encoder/                TF Hub text API: default, pooled_output, sequence_output,
                                encoder_outputs
    OUT/lealla-fp32.tflite      strings in, embeddings out (also -fp16, -int8 dynamic range)
    OUT/README.md               model card (from export/model_card.md)
    OUT/export_info.json        shape, file sizes, parity checks, what the card says

All three SavedModels are *reusable SavedModels* in the sense of TF Hub
(https://www.tensorflow.org/hub/reusable_saved_models): ``__call__`` traced for
``training=False`` and ``training=True``, ``variables``, ``trainable_variables``,
``regularization_losses``, plus a ``serving_default`` signature. They are built as plain
trackable objects whose functions close over the tf_keras models (as Model Garden's
``export_tfhub_lib`` does for ``bert_pack_inputs``), so they load with
``hub.KerasLayer`` (also ``trainable=True``), ``tf.saved_model.load`` and Keras 3
``keras.layers.TFSMLayer``. The TFLite files are converted from the exported ``lealla``
SavedModel's ``serving_default`` with TFLite builtins plus TF Text's custom SentencePiece
ops, and run with ``ai_edge_litert`` and ``tensorflow_text.tflite_registrar``.

Export is atomic: everything is written to a hidden temporary folder beside ``OUT`` and
renamed at the end; an existing ``OUT`` is replaced only with ``overwrite=True``.

:func:`publish` packs each SavedModel as a TF Hub compressed archive (``.tar.gz`` with the
SavedModel at its root, what ``hub.load`` fetches from an ``http(s)://``/``gs://`` URL) with
the model card beside it. :func:`load_embedder` turns an export folder, a ``.tflite`` file,
a run's model dir or a TF Hub handle into an embedder (``.name``, ``.encode``).

Example::

    lealla export --model-dir results/tiny --output exports/tiny --tflite fp32,fp16,int8
    lealla publish --export exports/tiny --output publish/tiny
    lealla embed --model exports/tiny/lealla-int8.tflite --input sentences.txt --output x.npy

or from Python::

    from lealla_tf import export
    info = export.export_run("results/tiny", "exports/tiny")
    embedder = export.load_embedder("exports/tiny")
    vectors = embedder.encode(["dog", "Hund"])  # float32 [2, D]
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import string
import tarfile
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from lealla_tf import modeling, preprocessing

LEALLA, PREPROCESSOR, ENCODER = "lealla", "preprocessor", "encoder"
SAVED_MODELS = (LEALLA, PREPROCESSOR, ENCODER)
TFLITE_VARIANTS = ("fp32", "fp16", "int8")
# Each TFLite file must reach this cosine to the SavedModel on PROBE_SENTENCES.
TFLITE_MIN_COSINE = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.99}
INFO_FILE = "export_info.json"
CARD_FILE = "README.md"
INPUT_KEY = "sentences"
OUTPUT_KEY = "default"
SIGNATURE = "serving_default"
ENCODER_OUTPUTS = ("default", "pooled_output", "sequence_output")
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CARD_TEMPLATE = os.path.join(_REPO_ROOT, "export", "model_card.md")
_STRINGS = tf.TensorSpec([None], tf.string, name=INPUT_KEY)

# A multilingual set with the awkward inputs; every export checks its files on it.
PROBE_SENTENCES: Tuple[bytes, ...] = tuple(s.encode("utf-8") if isinstance(s, str) else s for s in (
    "The weather is nice today.", "Das Wetter ist heute schön.", "Сегодня хорошая погода.",
    "今天天气很好。", "الطقس جميل اليوم.", "आज मौसम अच्छा है।", "今日は天気がいいです。",
    "วันนี้อากาศดี", "오늘 날씨가 좋네요.", "Ο καιρός είναι ωραίος σήμερα.", "היום מזג האוויר נעים.",
    "dog", "Hund 🐕", "", " ", "\t \n ", "Wort " * 20000,
    b"\xff\xfe\xfd invalid", b"abc\x80def", b"\xe4\xb8",
))


def tflite_file_name(variant: str) -> str:
    """``lealla-<variant>.tflite``."""
    return f"lealla-{variant}.tflite"


def parse_tflite_variants(value: Union[str, Sequence[str], None]) -> Tuple[str, ...]:
    """``"fp32,fp16,int8"`` (or a list; ``"none"``/empty for none) -> checked tuple.

    Raises:
      ValueError: naming an unknown variant.
    """
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [v.strip().lower() for v in items if v and v.strip()]
    if items == ["none"]:
        return ()
    bad = [v for v in items if v not in TFLITE_VARIANTS]
    if bad:
        raise ValueError(f"unknown TFLite variant(s) {bad}: choose from {list(TFLITE_VARIANTS)}")
    return tuple(dict.fromkeys(items))


# ----------------------------------------------------------------------------- SavedModels


def _reusable(model=None) -> tf.train.Checkpoint:
    """A trackable root carrying the reusable-SavedModel attributes of ``model``'s weights."""
    obj = tf.train.Checkpoint()
    obj.variables = list(model.variables) if model is not None else []
    obj.trainable_variables = list(model.trainable_variables) if model is not None else []
    # Keras keeps weight regularizers as zero-argument callables (not public API).
    callables = list(getattr(model, "_callable_losses", []) or []) if model is not None else []
    obj.regularization_losses = [tf.function(fn, input_signature=[]) for fn in callables]
    return obj


def build_lealla_module(preprocessor, encoder) -> Tuple[tf.train.Checkpoint, Dict[str, Any]]:
    """The end-to-end reusable SavedModel root and its signatures.

    Args:
      preprocessor: a ``preprocessing.Preprocessor`` (or any layer strings -> token dict).
      encoder: a built ``modeling.LeallaEncoder`` (same call contract).

    Returns:
      ``(root, signatures)`` for ``tf.saved_model.save``.
    """
    model = modeling.StringEncoder(preprocessor, encoder)
    model(tf.constant([""]))
    obj = _reusable(model)

    @tf.function
    def call(sentences, training=False):
        return model(sentences, training=training)

    for training in (False, True):
        call.get_concrete_function(_STRINGS, training=training)
    obj.__call__ = call

    @tf.function(input_signature=[_STRINGS])
    def serve(sentences):
        return {OUTPUT_KEY: model(sentences, training=False)}

    return obj, {SIGNATURE: serve}


def build_encoder_module(encoder) -> Tuple[tf.train.Checkpoint, Dict[str, Any]]:
    """The encoder of the TF Hub text API (token dict -> default, pooled/sequence outputs)."""
    specs = {k: tf.TensorSpec([None, None], tf.int32, name=k) for k in modeling.INPUT_KEYS}
    obj = _reusable(encoder)

    @tf.function
    def call(inputs, training=False):
        out = encoder(inputs, training=training)
        result = {k: out[k] for k in ENCODER_OUTPUTS}
        result["encoder_outputs"] = list(out["encoder_outputs"])
        return result

    for training in (False, True):
        call.get_concrete_function(specs, training=training)
    obj.__call__ = call

    @tf.function(input_signature=[specs[k] for k in modeling.INPUT_KEYS])
    def serve(input_word_ids, input_mask, input_type_ids):
        out = encoder({"input_word_ids": input_word_ids, "input_mask": input_mask,
                       "input_type_ids": input_type_ids}, training=False)
        return {k: out[k] for k in ENCODER_OUTPUTS}

    return obj, {SIGNATURE: serve}


def build_preprocessor_module(preprocessor) -> Tuple[tf.train.Checkpoint, Dict[str, Any]]:
    """The preprocessor of the TF Hub text API.

    ``__call__(sentences)`` packs one segment to ``seq_length``; ``tokenize(sentences)``
    gives int32 RaggedTensors ``[batch, (pieces)]``; ``bert_pack_inputs(segments,
    seq_length=...)`` packs 1 or 2 segments like Model Garden's ``BertPackInputs``, with
    the default length or any other given as an int32 tensor (``tf.constant(128)``);
    ``tokenize.get_special_tokens_dict()`` gives the special ids.
    """
    from official.nlp.modeling import layers as nlp_layers

    obj = _reusable(None)
    default_seq_length = int(preprocessor.seq_length)

    @tf.function(input_signature=[_STRINGS])
    def call(sentences):
        return dict(preprocessor(sentences))

    obj.__call__ = call

    obj.tokenize = tf.train.Checkpoint()
    # int64 row splits, like TF Text's tokenizers (and what bert_pack_inputs is traced for).
    obj.tokenize.__call__ = tf.function(
        lambda sentences: preprocessor.tokenize(sentences).with_row_splits_dtype(tf.int64),
        input_signature=[_STRINGS])
    special = {"vocab_size": int(preprocessor.vocab_size),
               "start_of_sequence_id": preprocessing.CLS_ID,
               "end_of_segment_id": preprocessing.SEP_ID,
               "padding_id": preprocessing.PAD_ID, "mask_id": preprocessing.MASK_ID}
    obj.tokenize.get_special_tokens_dict = tf.train.Checkpoint()
    obj.tokenize.get_special_tokens_dict.__call__ = tf.function(
        lambda: {k: tf.constant(v, tf.int32) for k, v in special.items()}, input_signature=[])

    @tf.function(autograph=False)
    def pack(inputs, seq_length=default_seq_length):
        out = nlp_layers.BertPackInputs.bert_pack_inputs(
            inputs, seq_length=seq_length, start_of_sequence_id=preprocessing.CLS_ID,
            end_of_segment_id=preprocessing.SEP_ID, padding_id=preprocessing.PAD_ID)
        return {k: tf.cast(v, tf.int32) for k, v in out.items()}

    obj.bert_pack_inputs = tf.train.Checkpoint()
    obj.bert_pack_inputs.__call__ = pack
    # Restored functions match traced argument types exactly: trace the default length
    # (a Python int) and any length given as an int32 tensor, for 1 and 2 segments.
    for num_segments in (1, 2):
        segments = [tf.RaggedTensorSpec([None, None], tf.int32) for _ in range(num_segments)]
        pack.get_concrete_function(segments)
        pack.get_concrete_function(segments, seq_length=tf.TensorSpec([], tf.int32))
    return obj, {SIGNATURE: call}


def _save(obj, signatures, path: str, sp_model_file: Optional[str] = None) -> None:
    if sp_model_file:
        obj.sp_model_file = tf.saved_model.Asset(sp_model_file)
    tf.saved_model.save(obj, path, signatures=signatures)


# ----------------------------------------------------------------------------- TFLite


def convert_tflite(saved_model_dir: str, variant: str = "fp32") -> bytes:
    """Converts the ``serving_default`` of an end-to-end SavedModel to a TFLite flatbuffer.

    Args:
      saved_model_dir: an exported ``lealla`` folder.
      variant: ``fp32``; ``fp16`` (float16 weights); ``int8`` (dynamic-range: int8
        weights, float activations).
    """
    (variant,) = parse_tflite_variants([variant])
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir,
                                                         signature_keys=[SIGNATURE])
    # TF Text's FastSentencepieceTokenizer ops are custom ops (no Flex delegate needed).
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = True
    if variant in ("fp16", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def tflite_interpreter(model_path: Optional[str] = None, model_content: Optional[bytes] = None,
                       num_threads: Optional[int] = None):
    """A LiteRT interpreter with TF Text's custom ops registered."""
    import tensorflow_text as tf_text
    from ai_edge_litert.interpreter import InterpreterWithCustomOps
    return InterpreterWithCustomOps(
        custom_op_registerers=tf_text.tflite_registrar.SELECT_TFTEXT_OPS,
        model_path=model_path, model_content=model_content, num_threads=num_threads)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``[N, D]`` arrays."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(den, 1e-30)


# ----------------------------------------------------------------------------- model card


def _dir_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def human_bytes(n: int) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _shape_info(encoder, preprocessor) -> Dict[str, Any]:
    shape = {}
    if hasattr(encoder, "get_config"):
        try:
            shape = {k: v for k, v in encoder.get_config().items()
                     if isinstance(v, (int, float, str))}
        except NotImplementedError:
            shape = {}
    shape["parameters"] = int(sum(int(np.prod(v.shape)) for v in encoder.weights))
    shape["embedding_dim"] = int(getattr(encoder, "embedding_dim", 0) or
                                 encoder(encoder.dummy_inputs())["default"].shape[-1])
    shape["seq_length"] = int(preprocessor.seq_length)
    shape["vocab_pieces"] = int(preprocessor.vocab_size)
    return shape


def summarise_metrics(results: Sequence[Union[str, dict]]) -> Dict[str, str]:
    """Headline numbers of ``lealla eval`` result JSONs (paths or dicts) for the card."""
    out = {}
    for r in results:
        if isinstance(r, str):
            with open(r, encoding="utf-8") as f:
                r = json.load(f)
        task = r.get("task", "metric")
        unit = r.get("unit", "")
        if "average" in r:
            n = r.get("n_languages") or len(r.get("languages", []) or [])
            out[f"{task} average ({n} languages)" if n else f"{task} average"] = \
                f"{r['average']:.2f} {unit}".strip()
        elif "f1" in r:
            out[f"{task} F1"] = f"{r['f1']:.2f}"
        elif "p_at_1" in r:
            out[f"{task} P@1 ({r.get('queries', '?')} queries, pool "
                f"{r.get('pool_size', '?')})"] = f"{r['p_at_1']:.2f} {unit}".strip()
    return out


def _table(rows: Sequence[Tuple[str, str]], header: Optional[Tuple[str, str]] = None) -> str:
    lines = []
    if header:
        lines += [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def _text_or_dict(value, empty: str) -> str:
    if not value:
        return empty
    if isinstance(value, dict):
        return "\n".join(f"- {k}: {v}" for k, v in value.items())
    return str(value)


def render_model_card(info: Dict[str, Any], handles: Dict[str, str],
                      template: Optional[str] = None) -> str:
    """Fills the model-card template from an ``export_info.json`` dict.

    Args:
      info: what :func:`export_model` wrote to ``export_info.json``.
      handles: ``lealla``, ``preprocessor``, ``encoder`` handles (paths or URLs) and,
        when TFLite files exist, ``tflite`` (a path).
      template: template file (default ``export/model_card.md``).
    """
    template = template or DEFAULT_CARD_TEMPLATE
    if not os.path.isfile(template):
        raise FileNotFoundError(f"model card template not found: {template}")
    with open(template, encoding="utf-8") as f:
        text = f.read()
    shape, card = info["model"], info.get("card", {})
    rows = [("embedding dimension", str(shape["embedding_dim"])),
            ("sequence length", f"{shape['seq_length']} tokens")]
    for key, label in (("num_layers", "layers"), ("hidden_size", "hidden size"),
                       ("num_attention_heads", "attention heads"),
                       ("intermediate_size", "FFN size"), ("vocab_size", "vocabulary size"),
                       ("hidden_act", "activation")):
        if key in shape:
            rows.append((label, f"{shape[key]:,}" if isinstance(shape[key], int)
                         else str(shape[key])))
    rows.append(("parameters", f"{shape['parameters']:,} ({shape['parameters'] / 1e6:.2f}M)"))
    files = [(f"`{entry.get('path', name)}`", human_bytes(entry["bytes"]) + (
        f" (min cosine to the SavedModel {entry['min_cosine']:.6f})"
        if "min_cosine" in entry else "")) for name, entry in info["files"].items()]
    tflite_section = ""
    if handles.get("tflite"):
        tflite_section = _TFLITE_SECTION.replace("${tflite_path}", handles["tflite"])
    fields = {
        "title": card.get("title") or f"LEALLA {shape.get('name', '')}".strip(),
        "description": card.get("description") or (
            f"Language-agnostic sentence embeddings ({shape['embedding_dim']}-d), exported by "
            "lealla_tf as TF Hub SavedModels and TFLite files."),
        "dim": shape["embedding_dim"], "seq_length": shape["seq_length"],
        "shape_table": _table(rows),
        "vocab_text": (f"SentencePiece unigram model, {shape['vocab_pieces']:,} pieces, no byte "
                       "fallback (shipped in the SavedModels' `assets/spm.model` and inside the "
                       "TFLite files). Special pieces: `[PAD]` 0, `[UNK]` 1, `[CLS]` 2, "
                       "`[SEP]` 3, `[MASK]` 4."),
        "training_text": _text_or_dict(card.get("training"), "Not recorded for this export."),
        "metrics_text": _text_or_dict(card.get("metrics"),
                                      "Not measured for this export (see `lealla eval`)."),
        "files_table": _table(files, ("file", "size")),
        "tflite_section": tflite_section,
        "lealla_handle": handles[LEALLA], "preprocessor_handle": handles[PREPROCESSOR],
        "encoder_handle": handles[ENCODER],
        "version": info.get("lealla_tf_version", ""), "tf_version": info.get("tensorflow", ""),
        "created": info.get("created", ""),
    }
    return string.Template(text).substitute(fields)


_TFLITE_SECTION = """## TFLite

One file, strings in, embeddings out: `lealla-fp32.tflite` (float32), `lealla-fp16.tflite`
(float16 weights) and `lealla-int8.tflite` (dynamic-range int8 weights), where exported. The
tokenizer runs inside the model as TF Text custom ops: in Python run it with LiteRT and TF
Text's op registerer (`pip install ai-edge-litert tensorflow-text`); on Android/iOS link TF
Text's TFLite ops. The input tensor may hold any number of sentences.

```python
import numpy as np
import tensorflow_text
from ai_edge_litert.interpreter import InterpreterWithCustomOps

interpreter = InterpreterWithCustomOps(
    custom_op_registerers=tensorflow_text.tflite_registrar.SELECT_TFTEXT_OPS,
    model_path="${tflite_path}")
embed = interpreter.get_signature_runner("serving_default")
vectors = embed(sentences=np.array([b"dog", "Hund".encode("utf-8")], dtype=object))["default"]
print(vectors.shape)
```"""


def local_handles(output_dir: str, info: Dict[str, Any]) -> Dict[str, str]:
    """Handles of an export folder's artefacts as absolute paths."""
    handles = {name: os.path.join(output_dir, name) for name in SAVED_MODELS}
    tflites = [v for v in TFLITE_VARIANTS if f"tflite-{v}" in info["files"]]
    if tflites:
        handles["tflite"] = os.path.join(output_dir, tflite_file_name(tflites[0]))
    return handles


# ----------------------------------------------------------------------------- export


def _check_target(output_dir: str, overwrite: bool) -> None:
    if os.path.exists(output_dir) and not overwrite:
        raise FileExistsError(f"{output_dir} already exists: pass --overwrite "
                              "(overwrite=True) to replace it")


def _commit_dir(tmp: str, output_dir: str, overwrite: bool) -> None:
    """Renames ``tmp`` to ``output_dir`` (replacing it only when ``overwrite``)."""
    old = None
    if os.path.exists(output_dir):
        _check_target(output_dir, overwrite)
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


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("lealla_tf")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "unknown"


def export_model(preprocessor, encoder, output_dir: str,
                 tflite: Union[str, Sequence[str], None] = TFLITE_VARIANTS,
                 model_card_info: Optional[Dict[str, Any]] = None, overwrite: bool = False,
                 card_template: Optional[str] = None, progress: bool = True) -> Dict[str, Any]:
    """Exports an in-memory preprocessor + encoder (see the module docstring for the layout).

    Args:
      preprocessor: a ``preprocessing.Preprocessor``.
      encoder: a built ``modeling.LeallaEncoder``.
      output_dir: the export folder (must not exist unless ``overwrite``).
      tflite: TFLite variants to write (``fp32``, ``fp16``, ``int8``; comma-separated
        string or list; empty/``"none"`` for none).
      model_card_info: optional ``title``, ``description``, ``training`` and ``metrics``
        (strings or dicts of label -> value) for the model card.
      overwrite: replace an existing ``output_dir``.
      card_template: model-card template (default ``export/model_card.md``).
      progress: print progress and the file sizes.

    Returns:
      The ``export_info.json`` dict (file sizes, parity checks, ...).

    Raises:
      FileExistsError: ``output_dir`` exists and ``overwrite`` is False.
    """
    import tensorflow_text  # noqa: F401  (ops of the tokenizer)
    from tqdm.auto import tqdm

    output_dir = os.path.abspath(output_dir)
    variants = parse_tflite_variants(tflite)
    _check_target(output_dir, overwrite)
    template = card_template or DEFAULT_CARD_TEMPLATE
    if not os.path.isfile(template):
        raise FileNotFoundError(f"model card template not found: {template}")
    steps = ["savedmodel " + n for n in SAVED_MODELS] + ["check"] + [
        "tflite " + v for v in variants] + ["model card"]
    bar = tqdm(total=len(steps), desc="export", unit="step", disable=not progress)
    tmp = _tmp_dir_beside(output_dir)
    try:
        info: Dict[str, Any] = {
            "format_version": 1,
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "lealla_tf_version": _version(), "tensorflow": tf.__version__,
            "model": _shape_info(encoder, preprocessor), "files": {}, "checks": {},
            "card": dict(model_card_info or {}),
        }
        with tempfile.TemporaryDirectory() as vocab_tmp:
            sp_path = os.path.join(vocab_tmp, preprocessing.MODEL_FILE)
            with open(sp_path, "wb") as f:
                f.write(preprocessor.model_bytes)
            builders = {LEALLA: lambda: build_lealla_module(preprocessor, encoder),
                        PREPROCESSOR: lambda: build_preprocessor_module(preprocessor),
                        ENCODER: lambda: build_encoder_module(encoder)}
            for name in SAVED_MODELS:
                bar.set_postfix_str(name)
                obj, signatures = builders[name]()
                _save(obj, signatures, os.path.join(tmp, name),
                      sp_path if name != ENCODER else None)
                info["files"][name] = {"path": name + "/",
                                       "bytes": _dir_bytes(os.path.join(tmp, name))}
                bar.update()

        probe = tf.constant(list(PROBE_SENTENCES))
        expected = modeling.StringEncoder(preprocessor, encoder)(probe, training=False).numpy()
        loaded = tf.saved_model.load(os.path.join(tmp, LEALLA))
        exported = loaded.signatures[SIGNATURE](sentences=probe)[OUTPUT_KEY].numpy()
        info["checks"]["savedmodel_max_abs_diff"] = float(np.abs(exported - expected).max())
        del loaded
        bar.update()

        for variant in variants:
            bar.set_postfix_str("tflite " + variant)
            content = convert_tflite(os.path.join(tmp, LEALLA), variant)
            fname = tflite_file_name(variant)
            with open(os.path.join(tmp, fname), "wb") as f:
                f.write(content)
            try:
                runner = tflite_interpreter(model_content=content).get_signature_runner(
                    SIGNATURE)
                got = runner(**{INPUT_KEY: np.array(list(PROBE_SENTENCES), dtype=object)})[
                    OUTPUT_KEY]
            except (RuntimeError, ValueError) as e:
                raise RuntimeError(
                    f"the {variant} TFLite model does not run with TFLite builtins plus TF "
                    f"Text's ops: {e}. The converter keeps ops TFLite lacks as custom ops; "
                    "e.g. new-axis slicing (x[:, None]) becomes a StridedSlice TFLite cannot "
                    "run: use tf.expand_dims or tf.reshape in the model") from e
            min_cos = float(cosine_rows(got, exported).min())
            if min_cos < TFLITE_MIN_COSINE[variant]:
                raise RuntimeError(
                    f"the {variant} TFLite model differs from the SavedModel: min cosine "
                    f"{min_cos:.6f} < {TFLITE_MIN_COSINE[variant]} on the probe sentences")
            info["files"][f"tflite-{variant}"] = {
                "path": fname, "bytes": len(content), "min_cosine": min_cos}
            bar.update()

        info["files_total_bytes"] = sum(e["bytes"] for e in info["files"].values())
        with open(os.path.join(tmp, INFO_FILE), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=1, ensure_ascii=False)
        card = render_model_card(info, local_handles(output_dir, info), template)
        with open(os.path.join(tmp, CARD_FILE), "w", encoding="utf-8") as f:
            f.write(card)
        bar.update()
        bar.close()
        _commit_dir(tmp, output_dir, overwrite)
    except BaseException:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if progress:
        print(format_sizes(info, output_dir), flush=True)
    return info


def format_sizes(info: Dict[str, Any], output_dir: str = "") -> str:
    """A small table of the exported files and their sizes."""
    lines = [f"exported to {output_dir}" if output_dir else "exported files:"]
    for name, entry in info["files"].items():
        extra = f"  min cosine vs SavedModel {entry['min_cosine']:.6f}" if "min_cosine" in entry \
            else ""
        path = entry.get("path", name + "/")
        lines.append(f"  {path:<22} {human_bytes(entry['bytes']):>10}{extra}")
    return "\n".join(lines)


def run_card_info(model_dir: str, cfg, checkpoint: str,
                  metrics: Sequence[Union[str, dict]] = ()) -> Dict[str, Any]:
    """Model-card facts about a training run: data, loss, steps, metrics."""
    from lealla_tf import corpus
    training: Dict[str, Any] = {}
    stats_path = os.path.join(model_dir, "data_stats.json")
    if os.path.exists(stats_path):
        with open(stats_path, encoding="utf-8") as f:
            stats = json.load(f)
        langs = sorted({corpus.language_of(p).split("-")[0] for p in stats.get("files", {})})
        training["parallel pairs"] = f"{stats.get('pairs', 0):,} (each paired with English)"
        training["languages"] = f"{len(langs)}: {', '.join(langs)}"
    else:
        training["training files"] = ", ".join(cfg.data.train_files)
    loss = cfg.loss
    terms = [f"bidirectional additive-margin softmax (margin {loss.margin}, scale {loss.scale})"]
    if loss.feature_distill_weight:
        terms.append(f"feature distillation (weight {loss.feature_distill_weight})")
    if loss.logit_distill_weight:
        terms.append(f"logit distillation ({loss.logit_distill_type}, weight "
                     f"{loss.logit_distill_weight})")
    training["objective"] = " + ".join(terms)
    if cfg.teacher.spec:
        training["teacher"] = cfg.teacher.spec
    match = re.search(r"ckpt-(\d+)$", checkpoint or "")
    training["steps"] = (f"{int(match.group(1)):,}" if match else "?") + \
        f" of {cfg.train.steps:,}, global batch {cfg.train.global_batch_size}"
    return {"title": f"LEALLA {cfg.model.name}", "training": training,
            "metrics": summarise_metrics(metrics), "checkpoint": checkpoint}


def export_run(model_dir: str, output_dir: str, checkpoint: Optional[str] = None,
               tflite: Union[str, Sequence[str], None] = TFLITE_VARIANTS,
               metrics: Sequence[Union[str, dict]] = (), overwrite: bool = False,
               model_card_info: Optional[Dict[str, Any]] = None,
               progress: bool = True) -> Dict[str, Any]:
    """Exports the encoder of a training model dir (``lealla export``).

    Args:
      model_dir: a directory written by ``lealla train`` (config.yaml, vocab/spm.model,
        checkpoints/).
      output_dir: the export folder.
      checkpoint: a checkpoint path (default: the latest).
      tflite: TFLite variants (see :func:`export_model`).
      metrics: ``lealla eval`` result JSONs (paths or dicts) to quote in the model card.
      overwrite: replace an existing ``output_dir``.
      model_card_info: overrides of the card facts derived from the run.
      progress: print progress and file sizes.
    """
    from lealla_tf import training
    _check_target(os.path.abspath(output_dir), overwrite)
    checkpoint = checkpoint or tf.train.latest_checkpoint(
        os.path.join(model_dir, training.CHECKPOINT_DIR))
    cfg, preprocessor, encoder = training.restore_encoder(model_dir, checkpoint)
    card = run_card_info(model_dir, cfg, checkpoint, metrics)
    card.update(model_card_info or {})
    return export_model(preprocessor, encoder, output_dir, tflite=tflite, model_card_info=card,
                        overwrite=overwrite, progress=progress)


# ----------------------------------------------------------------------------- publish


def make_hub_archive(saved_model_dir: str, archive_path: str) -> str:
    """Packs a SavedModel folder as TF Hub's compressed format (SavedModel at the root).

    Entries are sorted with fixed owner and time, so the same folder gives the same bytes.
    """
    if not os.path.isfile(os.path.join(saved_model_dir, "saved_model.pb")):
        raise FileNotFoundError(f"no saved_model.pb in {saved_model_dir}")

    def reset(ti: tarfile.TarInfo) -> tarfile.TarInfo:
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        ti.mtime = 0
        return ti

    paths = []
    for root, dirs, files in os.walk(saved_model_dir):
        dirs.sort()
        rel = os.path.relpath(root, saved_model_dir)
        if rel != ".":
            paths.append(rel)
        paths += [os.path.normpath(os.path.join(rel, f)) for f in sorted(files)]
    import gzip
    with open(archive_path, "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:
        for rel in paths:
            tar.add(os.path.join(saved_model_dir, rel), arcname=rel, recursive=False,
                    filter=reset)
    return archive_path


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_PLACEHOLDER = "https://www.kaggle.com/models/OWNER/MODEL/tensorFlow2/{name}/1"


def publish(export_dir: str, output_dir: str, base_url: Optional[str] = None,
            overwrite: bool = False, progress: bool = True) -> Dict[str, Any]:
    """Packs an export folder for TF Hub / Kaggle Models (``lealla publish``).

    Writes ``output_dir/<name>/<name>.tar.gz`` with the model card (``README.md``) beside
    it for each SavedModel, ``output_dir/tflite/`` with the TFLite files and card,
    ``output_dir/README.md`` (what to upload, how) and ``publish_info.json``.

    Args:
      export_dir: a folder written by :func:`export_model`.
      output_dir: the publish folder (atomic, like export).
      base_url: where the folder will be served (e.g. ``https://host/lealla``); the cards'
        handles become ``<base_url>/<name>/<name>.tar.gz``. Default: Kaggle Models
        placeholders to fill in after upload.
      overwrite: replace an existing ``output_dir``.
      progress: print what was written.
    """
    export_dir = os.path.abspath(export_dir)
    output_dir = os.path.abspath(output_dir)
    info_path = os.path.join(export_dir, INFO_FILE)
    if not os.path.isfile(info_path):
        raise FileNotFoundError(f"{info_path} not found: is {export_dir} a `lealla export` "
                                "folder?")
    with open(info_path, encoding="utf-8") as f:
        info = json.load(f)
    _check_target(output_dir, overwrite)
    if base_url:
        handles = {n: f"{base_url.rstrip('/')}/{n}/{n}.tar.gz" for n in SAVED_MODELS}
    else:
        handles = {n: _PLACEHOLDER.format(name=n) for n in SAVED_MODELS}
    tflites = [tflite_file_name(v) for v in TFLITE_VARIANTS
               if os.path.isfile(os.path.join(export_dir, tflite_file_name(v)))]
    if tflites:
        handles["tflite"] = tflites[0]
    card = render_model_card(info, handles)
    tmp = _tmp_dir_beside(output_dir)
    manifest: Dict[str, Any] = {"export": export_dir, "base_url": base_url or "", "files": {}}
    try:
        for name in SAVED_MODELS:
            os.makedirs(os.path.join(tmp, name))
            archive = make_hub_archive(os.path.join(export_dir, name),
                                       os.path.join(tmp, name, f"{name}.tar.gz"))
            with open(os.path.join(tmp, name, CARD_FILE), "w", encoding="utf-8") as f:
                f.write(card)
            manifest["files"][f"{name}/{name}.tar.gz"] = {
                "bytes": os.path.getsize(archive), "sha256": _sha256(archive)}
        if tflites:
            os.makedirs(os.path.join(tmp, "tflite"))
            for fname in tflites:
                target = os.path.join(tmp, "tflite", fname)
                shutil.copyfile(os.path.join(export_dir, fname), target)
                manifest["files"][f"tflite/{fname}"] = {
                    "bytes": os.path.getsize(target), "sha256": _sha256(target)}
            with open(os.path.join(tmp, "tflite", CARD_FILE), "w", encoding="utf-8") as f:
                f.write(card)
        with open(os.path.join(tmp, "publish_info.json"), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
        with open(os.path.join(tmp, CARD_FILE), "w", encoding="utf-8") as f:
            f.write(_publish_readme(manifest, info))
        _commit_dir(tmp, output_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if progress:
        print(f"published to {output_dir}")
        for rel, entry in manifest["files"].items():
            print(f"  {rel:<32} {human_bytes(entry['bytes']):>10}")
    return manifest


def _publish_readme(manifest: Dict[str, Any], info: Dict[str, Any]) -> str:
    rows = "\n".join(f"| `{rel}` | {human_bytes(e['bytes'])} | `{e['sha256'][:16]}…` |"
                     for rel, e in manifest["files"].items())
    title = info.get("card", {}).get("title") or "LEALLA"
    return f"""# {title}: files to publish

| file | size | sha256 |
|---|---|---|
{rows}

Each `<name>/<name>.tar.gz` is a SavedModel in TF Hub's compressed format (the SavedModel at
the archive's root) with its model card (`README.md`) beside it:

- `lealla/`: strings -> L2-normalised embeddings (what most users want);
- `preprocessor/` + `encoder/`: the TF Hub text-API pair, for fine-tuning on TPUs;
- `tflite/`: single-file TFLite models for mobile.

## Where to upload

**Any static HTTP(S) server or GCS bucket.** `hub.load`/`hub.KerasLayer` download an
archive URL into the TF Hub cache (`$TFHUB_CACHE_DIR`) and load it from there:

    gsutil cp lealla/lealla.tar.gz gs://BUCKET/lealla/
    hub.KerasLayer("https://HOST/PATH/lealla/lealla.tar.gz")   # or gs://BUCKET/lealla/lealla.tar.gz

Rerun `lealla publish --base-url https://HOST/PATH` so the cards show the final handles.

**Kaggle Models** (the home of the models formerly on tfhub.dev). Create the model once
(web UI: kaggle.com/models -> New Model, or `kaggle models init -p DIR` then
`kaggle models create -p DIR`), then add one variation per artefact, framework
*TensorFlow 2*: extract the archive into a folder (`mkdir v && tar -xzf lealla/lealla.tar.gz
-C v`), put the model card beside it, then `kaggle models instances init -p v` (fill in
`model-instance-metadata.json`: owner, model, instance slug, framework `tensorFlow2`, licence)
and `kaggle models instances create -p v`. New versions:
`kaggle models instances versions create OWNER/MODEL/tensorFlow2/VARIATION -p v`.
Users then load `https://www.kaggle.com/models/OWNER/MODEL/tensorFlow2/VARIATION/VERSION`
with `hub.KerasLayer`.

Always `import tensorflow_text` before loading: the tokenizer ops live there.
"""


# ----------------------------------------------------------------------------- embedders


def _as_bytes(s: Union[str, bytes]) -> bytes:
    if isinstance(s, bytes):
        return s
    try:
        return s.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:
        return s.encode("utf-8", errors="replace")


class Embedder:
    """Base class: ``encode`` sorts by length, batches, and restores the input order.

    Subclasses implement ``_encode_batch(list[bytes]) -> np.ndarray [n, D]``.

    Args:
      name: stable model name (keys the evaluation cache).
      batch_size: default number of sentences per model call.
    """

    def __init__(self, name: str, batch_size: int = 64, fingerprint: Optional[str] = None):
        self.name = name
        # What the evaluation cache keys on: changes whenever the weights do.
        self.fingerprint = fingerprint or name
        self.batch_size = int(batch_size)
        self._dim: Optional[int] = None

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
        order = np.argsort([-len(s) for s in data], kind="stable")
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
        if local:
            handle = os.path.abspath(handle)
            fp = os.path.join(handle, "fingerprint.pb")
            digest = _sha256(fp)[:16] if os.path.exists(fp) else _sha256(
                os.path.join(handle, "saved_model.pb"))[:16]
            name = f"savedmodel:{handle}@{digest}"
        else:
            name = f"hub:{handle}"
        super().__init__(name, batch_size)
        self.handle = handle
        self._model = hub.load(handle)

    def _encode_batch(self, batch):
        return _pick_output(self._model(tf.constant(batch, tf.string))).numpy()


class TFLiteEmbedder(Embedder):
    """A ``.tflite`` export run with LiteRT; batches are padded to ``batch_size`` so the
    interpreter never reallocates.

    Args:
      path: the ``.tflite`` file.
      batch_size: default sentences per call (and the padded batch shape).
      num_threads: interpreter threads (default: LiteRT's).
    """

    def __init__(self, path: str, batch_size: int = 64, num_threads: Optional[int] = None):
        path = os.path.abspath(path)
        super().__init__(f"tflite:{path}@{_sha256(path)[:16]}", batch_size)
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
        self._shape = self.batch_size

    def encode(self, sentences, batch_size=None):
        self._shape = int(batch_size or self.batch_size)
        return super().encode(sentences, batch_size)

    def _encode_batch(self, batch):
        n = len(batch)
        size = max(n, self._shape)
        padded = np.array(list(batch) + [b""] * (size - n), dtype=object)
        return self._runner(**{self._input: padded})[self._output][:n]


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
            f"@{_sha256(index)[:16]}" if os.path.exists(index) else ""))
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
