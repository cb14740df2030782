"""``lealla export --format mediapipe``: a file MediaPipe's TextEmbedder loads.

MediaPipe Tasks tokenizes the text itself and feeds token ids to the model. Its BERT
preprocessing (three int32 inputs ``ids``, ``mask``, ``segment_ids`` and a tokenizer in the
metadata) lower-cases ASCII letters before tokenizing, whatever the vocabulary: with a
cased vocabulary ("Hello" is ``▁Hello``, "hello" is ``▁`` ``hello``) its ids differ from
the run's on every text with an ASCII capital. So the layout depends on the vocabulary:

* SentencePiece runs: a MediaPipe model bundle, a zip archive of ``embedder.tflite`` (one
  int32 input ``ids`` ``[1, INPUT_LENGTH]``) and ``sentencepiece.model``. For a one-input
  model MediaPipe encodes the text with that SentencePiece model as it is (no case
  folding) and packs ``bos ids eos pad...``; the bundled model names ``[CLS]``/``[SEP]``/
  ``[PAD]`` as its bos/eos/pad pieces (pieces, scores and normaliser are the run's), so
  the ids are the run's own. The model truncates to the run's ``seq_length`` inside, as
  the run's preprocessor does; MediaPipe refuses texts of more than ``INPUT_LENGTH - 2``
  pieces (an error, never a silent cut).
* WordPiece runs (imported LaBSE): a plain ``.tflite`` with the BERT layout (three
  ``[1, seq_length]`` inputs) and a BERT tokenizer: MediaPipe has no other WordPiece
  path, so ASCII capitals are lower-cased. The export measures how often ids differ on
  the probe sentences (export_info.json, ``checks.mediapipe``) and the model card says so.

Either way the ``.tflite`` carries TFLite metadata for MediaPipe (tensor names, the
tokenizer, its file packed in; :mod:`lealla_tf.export.mediapipe_metadata`). The model
holds the encoder, pooling and L2 normalisation and runs only the text's own tokens (the
inputs are cut to the text's length inside: MediaPipe always pads to the input length);
the output is float32 ``[1, D]``.
``embedder-fp32.task`` always, ``embedder-int8.task`` (dynamic-range int8 weights) when it
stays within the int8 cosine gate (``.tflite`` for WordPiece runs:
:func:`lealla_tf.layout.mediapipe_file_name`).

See docs/export.md, "MediaPipe".
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
import zipfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from lealla_tf import fileio, layout, runs
from lealla_tf.embedders.interop import valid_utf8
from lealla_tf.export import exporter
from lealla_tf.export import mediapipe_metadata as md
from lealla_tf.export.card import human_bytes
from lealla_tf.export.formats import PROBE_SENTENCES, TFLITE_MIN_COSINE, cosine_rows
from lealla_tf.models import encoders

FORMAT = "mediapipe"
VARIANTS = ("fp32", "int8")
# The one-tensor layout's input length: MediaPipe packs ``bos + pieces + eos`` into it and
# refuses longer texts; the model reads the first seq_length ids.
INPUT_LENGTH = 8192
TOKENIZER_FILES = {"sentencepiece": "spm.model", "wordpiece": "vocab.txt"}
SENTENCEPIECE_SPECIALS = {"bos_piece": "[CLS]", "eos_piece": "[SEP]", "pad_piece": "[PAD]",
                          "unk_piece": "[UNK]"}
OUTPUT_NAME = "embedding"
# The members of a model bundle (the names MediaPipe's TextEmbedder looks for).
BUNDLE_MODEL, BUNDLE_SENTENCEPIECE = "embedder.tflite", "sentencepiece.model"
# Lines of the run's training files whose MediaPipe ids are checked against ours.
SAMPLE_SENTENCES = 2000
# Cosine of MediaPipe's embeddings to the TF model's, where their ids agree.
MEDIAPIPE_MIN_COSINE = {"fp32": 0.99999, "int8": TFLITE_MIN_COSINE["int8"]}


def vocab_type(preprocessor) -> str:
    """``sentencepiece`` or ``wordpiece``."""
    return getattr(preprocessor, "vocab_type", "sentencepiece")


# ----------------------------------------------------------------------- tokenizer file
def mediapipe_sentencepiece(model_bytes: bytes) -> bytes:
    """The run's SentencePiece model with ``[CLS]``, ``[SEP]``, ``[PAD]`` as its bos, eos
    and pad pieces (what MediaPipe packs around the pieces); pieces, scores and the
    normaliser unchanged, so it encodes every text to the same ids.

    Raises:
      ValueError: a special piece is missing or not a control piece.
    """
    from sentencepiece import sentencepiece_model_pb2 as spm_pb

    proto = spm_pb.ModelProto()
    proto.ParseFromString(model_bytes)
    index = {p.piece: i for i, p in enumerate(proto.pieces)}
    spec = proto.trainer_spec
    for key, piece in SENTENCEPIECE_SPECIALS.items():
        if piece not in index:
            raise ValueError(f"the SentencePiece model has no {piece} piece")
        kind = proto.pieces[index[piece]].type
        wanted = spm_pb.ModelProto.SentencePiece.UNKNOWN if piece == "[UNK]" else \
            spm_pb.ModelProto.SentencePiece.CONTROL
        if kind != wanted:
            raise ValueError(f"{piece} is not a {'unknown' if piece == '[UNK]' else 'control'} "
                             "piece of the SentencePiece model")
        setattr(spec, key, piece)
        setattr(spec, key.replace("_piece", "_id"), index[piece])
    return proto.SerializeToString()


# ------------------------------------------------------------------------------- models
def _pack_in_graph(ids: tf.Tensor, seq_length: int, sep_id: int, pad_id: int):
    """MediaPipe's ``bos pieces eos pad...`` [1, INPUT_LENGTH] -> the run's packing:
    ``[CLS]`` + the first seq_length - 2 pieces + ``[SEP]``, cut to the text's own length
    (at most ``seq_length``): the encoder computes only the text's tokens, padding changes
    nothing (it is masked)."""
    n = tf.minimum(tf.reduce_sum(tf.cast(tf.not_equal(ids, pad_id), tf.int32)), seq_length)
    head = tf.slice(ids, [0, 0], tf.stack([1, n]))
    positions = tf.range(n, dtype=tf.int32)[None, :]
    word_ids = tf.where(tf.equal(positions, n - 1), tf.fill(tf.shape(head), sep_id), head)
    return {"input_word_ids": word_ids, "input_mask": tf.ones_like(word_ids),
            "input_type_ids": tf.zeros_like(word_ids)}


def _cut_to_text(inputs: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """BERT inputs [1, seq_length] cut to the text's tokens (the mask's ones)."""
    n = tf.reduce_sum(inputs["input_mask"])
    return {k: tf.slice(v, [0, 0], tf.stack([1, n])) for k, v in inputs.items()}


def model_function(encoder, preprocessor, ids_only: bool = False):
    """The concrete function converted to TFLite: token ids in MediaPipe's layout ->
    ``{"embedding": float32 [1, D]}``; ``ids_only`` gives the ids the encoder would read,
    as floats ``[1, seq_length]`` (a probe of MediaPipe's tokenization)."""
    seq_length = int(preprocessor.seq_length)
    special = preprocessor.special_ids

    def finish(inputs):
        if ids_only:  # padded back to seq_length, to compare with the run's packing
            ids = inputs["input_word_ids"]
            tail = seq_length - tf.shape(ids)[1]
            ids = tf.pad(ids, [[0, 0], [0, tail]], constant_values=special["padding_id"])
            # A static output shape, as MediaPipe's embedding postprocessing wants.
            inputs = {"input_word_ids": tf.reshape(ids, [1, seq_length])}
            return {OUTPUT_NAME: tf.cast(inputs["input_word_ids"], tf.float32)}
        return {OUTPUT_NAME: encoders.sentence_embedding(encoder, inputs, training=False)}

    if vocab_type(preprocessor) == "sentencepiece":
        @tf.function(input_signature=[tf.TensorSpec([1, INPUT_LENGTH], tf.int32, name="ids")])
        def one_tensor(ids):
            return finish(_pack_in_graph(ids, seq_length, special["end_of_segment_id"],
                                         special["padding_id"]))
        return one_tensor.get_concrete_function()

    spec = tf.TensorSpec([1, seq_length], tf.int32)

    @tf.function(input_signature=[spec, spec, spec])
    def bert(ids, mask, segment_ids):
        return finish(_cut_to_text({"input_word_ids": ids, "input_mask": mask,
                                    "input_type_ids": segment_ids}))
    return bert.get_concrete_function()


def convert(function, trackable, variant: str = "fp32") -> bytes:
    """A TFLite flatbuffer of ``function`` (``int8``: dynamic-range int8 weights)."""
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], trackable)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if variant == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant != "fp32":
        raise ValueError(f"unknown MediaPipe variant {variant!r}: choose from {VARIANTS}")
    return converter.convert()


def _input_names(tflite_model: bytes) -> List[str]:
    """Metadata names of the model's inputs, in the subgraph's order."""
    from ai_edge_litert.interpreter import Interpreter
    details = Interpreter(model_content=tflite_model).get_input_details()
    names = []
    for d in details:
        found = [k for k in ("segment_ids", "mask", "ids") if k in d["name"]]
        if not found:
            raise ValueError(f"unexpected input tensor {d['name']!r}")
        names.append(found[0])
    return names


def tokenizer_file(preprocessor) -> bytes:
    """The tokenizer file MediaPipe reads: :func:`mediapipe_sentencepiece` of the run's
    SentencePiece model, or the WordPiece vocabulary as it is."""
    if vocab_type(preprocessor) == "sentencepiece":
        return mediapipe_sentencepiece(preprocessor.model_bytes)
    return preprocessor.model_bytes


def with_metadata(tflite_model: bytes, preprocessor, content: bytes, title: str,
                  description: str) -> bytes:
    """The converted model with MediaPipe's metadata and its tokenizer file (``content``,
    :func:`tokenizer_file`) packed in."""
    kind = vocab_type(preprocessor)
    fname = TOKENIZER_FILES[kind]
    if kind == "sentencepiece":
        tokenizer = md.Tokenizer("sentencepiece", fname, "SentencePiece model of the encoder "
                                 "([CLS]/[SEP]/[PAD] as bos/eos/pad).")
        inputs = [md.Tensor("ids", f"Token ids: [CLS] pieces [SEP] then [PAD] (0), at most "
                            f"{INPUT_LENGTH - 2} pieces; the model reads the first "
                            f"{int(preprocessor.seq_length)}.", tokenizer=tokenizer)]
        subgraph_tokenizer = None
    else:
        tokenizer = md.Tokenizer("bert", fname, "WordPiece vocabulary of the encoder.")
        descriptions = {"ids": "Token ids: [CLS] pieces [SEP] then [PAD].",
                        "mask": "1 on tokens, 0 on padding.",
                        "segment_ids": "Segment ids (all 0)."}
        inputs = [md.Tensor(n, descriptions[n]) for n in _input_names(tflite_model)]
        subgraph_tokenizer = tokenizer
    outputs = [md.Tensor(OUTPUT_NAME, "L2-normalised sentence embedding.", feature=True)]
    meta = md.model_metadata(md.Model(name=title, description=description, inputs=inputs,
                                      outputs=outputs, subgraph_tokenizer=subgraph_tokenizer))
    return md.attach(tflite_model, meta, {fname: content})


def bundle(tflite_model: bytes, sentencepiece_model: bytes) -> bytes:
    """A MediaPipe model bundle: an uncompressed zip of the model and the SentencePiece
    model its preprocessing encodes with."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, content in ((BUNDLE_MODEL, tflite_model),
                              (BUNDLE_SENTENCEPIECE, sentencepiece_model)):
            archive.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), content)
    return out.getvalue()


def tflite_of(file_content: bytes) -> bytes:
    """The TFLite model of an exported file (a bundle's ``embedder.tflite``, else the file)."""
    if file_content[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(file_content)) as archive:
            return archive.read(BUNDLE_MODEL)
    return file_content


def build_file(encoder, preprocessor, variant: str = "fp32", title: str = "LEALLA",
               description: str = "", ids_only: bool = False) -> bytes:
    """The content of a MediaPipe file: the converted model with its metadata, bundled
    with its SentencePiece model for SentencePiece runs; ``ids_only``: the ids probe."""
    content = tokenizer_file(preprocessor)
    # Traced with the forward pass written for TFLite converters.
    with getattr(encoder, "tflite_forward", contextlib.nullcontext)():
        function = model_function(encoder, preprocessor, ids_only)
    model = with_metadata(convert(function, encoder, variant), preprocessor, content, title,
                          description)
    if vocab_type(preprocessor) == "sentencepiece":
        return bundle(model, content)
    return model


# ------------------------------------------------------------------------------- checks
def our_ids(preprocessor, sentences: Sequence[bytes]) -> np.ndarray:
    """The ids the run's own preprocessor packs, int32 ``[N, seq_length]``."""
    out = preprocessor(tf.constant(list(sentences), tf.string), dynamic_length=False)
    return out["input_word_ids"].numpy()


def litert_inputs(preprocessor, sentence: bytes) -> Dict[str, np.ndarray]:
    """One sentence's ids in the file's layout, as MediaPipe would give them for our ids
    (the SentencePiece layout: bos + all pieces + eos, padded to INPUT_LENGTH)."""
    special = preprocessor.special_ids
    if vocab_type(preprocessor) == "sentencepiece":
        pieces = preprocessor.tokenize(tf.constant([sentence])).flat_values.numpy()
        ids = np.full([1, INPUT_LENGTH], special["padding_id"], np.int32)
        row = [special["start_of_sequence_id"]] + list(pieces[:INPUT_LENGTH - 2]) + [
            special["end_of_segment_id"]]
        ids[0, :len(row)] = row
        return {"ids": ids}
    packed = preprocessor(tf.constant([sentence]), dynamic_length=False)
    return {"ids": packed["input_word_ids"].numpy(), "mask": packed["input_mask"].numpy(),
            "segment_ids": packed["input_type_ids"].numpy()}


def run_litert(tflite_model: bytes, preprocessor, sentences: Sequence[bytes]) -> np.ndarray:
    """The file run with LiteRT on our own ids, one sentence per call: ``[N, D]``."""
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_content=tflite_model)
    runner = interpreter.get_signature_runner()
    (signature,) = interpreter.get_signature_list().values()
    names = signature["inputs"]
    rows = []
    for s in sentences:
        inputs = litert_inputs(preprocessor, s)
        rows.append(runner(**{k: inputs[k] for k in names})[OUTPUT_NAME][0])
    return np.stack(rows)


def mediapipe_checks(files: Dict[str, str], probe_file: str, preprocessor,
                     expected: np.ndarray, sentences: Sequence[bytes],
                     sample: Sequence[bytes] = ()) -> Dict[str, Any]:
    """Runs MediaPipe's TextEmbedder on the files: its ids against ours (read through the
    ids probe model) on the probe ``sentences`` and on a ``sample`` of real text, and where
    they agree the min cosine of its embeddings to the TF model's (``expected``).

    Raises:
      FileNotFoundError: no Python with MediaPipe (``make mediapipe-venv``).
      RuntimeError: MediaPipe cannot run a file.
    """
    from lealla_tf.embedders.mediapipe import MediaPipeError, MediaPipeWorker

    worker = MediaPipeWorker(probe_file)
    try:
        same, differ, refused = _compare_ids(worker, preprocessor, sentences)
        real = _compare_ids(worker, preprocessor, sample) if sample else None
    finally:
        worker.close()
    out: Dict[str, Any] = {
        "probe_sentences": len(sentences),
        "ids_equal": len(same),
        "ids_differ": [_show(sentences[i]) for i in differ],
        "ids_differ_valid_utf8": sum(1 for i in differ if valid_utf8(sentences[i])),
        # MediaPipe's BERT preprocessing lower-cases ASCII letters: the differences it causes.
        "ids_differ_without_ascii_capitals": _without_capitals(sentences, differ),
        "refused": [_show(sentences[i]) + f": {refused[i]}" for i in sorted(refused)],
    }
    if real is not None:
        out["training_sample"] = {
            "sentences": len(sample), "ids_equal": len(real[0]), "ids_differ": len(real[1]),
            "ids_differ_without_ascii_capitals": _without_capitals(sample, real[1]),
            "refused": len(real[2]), "examples": [_show(sample[i], 80) for i in real[1][:10]]}
    for variant, path in files.items():
        worker = MediaPipeWorker(path)
        try:
            got = worker.embed([sentences[i] for i in same])
            out["mediapipe"] = worker.info.get("mediapipe", "unknown")
        except MediaPipeError as e:
            raise RuntimeError(f"MediaPipe cannot run {path}: {e}") from e
        finally:
            worker.close()
        cos = float(cosine_rows(got, expected[same]).min()) if same else float("nan")
        out[f"{variant}_min_cosine"] = cos
    return out


def _without_capitals(sentences: Sequence[bytes], indices: Sequence[int]) -> int:
    return sum(1 for i in indices if valid_utf8(sentences[i]) and
               not _ascii_capitals(sentences[i]))


def _compare_ids(worker, preprocessor, sentences: Sequence[bytes]
                 ) -> Tuple[List[int], List[int], Dict[int, str]]:
    """Indices whose MediaPipe ids equal ours, those that differ, and refusals."""
    rows, refused = _mediapipe_rows(worker, sentences)
    ours = np.concatenate([our_ids(preprocessor, sentences[i:i + 1024])
                           for i in range(0, len(sentences), 1024)])
    same = [i for i in sorted(rows) if np.array_equal(rows[i].astype(np.int64), ours[i])]
    agree = set(same)
    differ = [i for i in sorted(rows) if i not in agree]
    return same, differ, refused


def _mediapipe_rows(worker, sentences: Sequence[bytes], batch: int = 256
                    ) -> Tuple[Dict[int, np.ndarray], Dict[int, str]]:
    """Embeds sentences (MediaPipe may refuse some): rows and refusals by index."""
    from lealla_tf.embedders.mediapipe import MediaPipeError
    rows, refused, start = {}, {}, 0
    while start < len(sentences):
        chunk = list(sentences[start:start + batch])
        try:
            got = worker.embed(chunk)
        except MediaPipeError as e:
            if len(e.args) < 2:
                raise
            j = int(e.args[1])  # the first refused text; the ones before it went through
            refused[start + j] = _refusal(str(e.args[0]))
            got = worker.embed(chunk[:j]) if j else []
            chunk = chunk[:j + 1]
        for k, row in enumerate(got):
            rows[start + k] = row
        start += len(chunk)
    return rows, refused


def _refusal(message: str) -> str:
    message = " ".join(message.split())
    too_long = message.find("Input text is too long")
    end = message.find("required", too_long)
    return message[too_long:end + len("required")] if too_long >= 0 <= end else message[-200:]


def _ascii_capitals(s: bytes) -> bool:
    return any(65 <= c <= 90 for c in s)


def _show(s: bytes, limit: int = 40) -> str:
    text = s.decode("utf-8", errors="backslashreplace")
    return text if len(text) <= limit else text[:limit] + f"... ({len(s)} bytes)"


# ------------------------------------------------------------------------------- export
def export_run(model_dir: str, output_dir: str, *, checkpoint: Optional[str] = None,
               overwrite: bool = False, int8: bool = True, progress: bool = True,
               model_card_info: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Writes a MediaPipe TextEmbedder folder for a run's encoder (docs/export.md,
    "MediaPipe"): ``embedder-fp32.task``, ``embedder-int8.task`` (with ``int8``,
    kept when it passes the int8 cosine gate), README.md and export_info.json.

    The files are checked with LiteRT on the run's own ids (fp32 and int8 gates of the
    TFLite export) and, with a MediaPipe interpreter (``LEALLA_MEDIAPIPE_PYTHON``,
    :func:`lealla_tf.embedders.mediapipe.mediapipe_python`), with MediaPipe's TextEmbedder
    itself: its ids against ours, its embeddings against the TF model's.

    Raises:
      FileExistsError: ``output_dir`` exists and not ``overwrite``.
      RuntimeError: the fp32 file fails its check, or MediaPipe cannot run a file.
      FileNotFoundError: no MediaPipe interpreter.
    """
    import tempfile

    from tqdm.auto import tqdm

    from lealla_tf.embedders.mediapipe import mediapipe_python

    started = time.time()
    output_dir = fileio.normpath(output_dir)
    fileio.check_target(output_dir, overwrite)
    mediapipe_python()  # fail early, before the conversion, when it is missing
    checkpoint = checkpoint or runs.latest_checkpoint(model_dir)
    cfg, preprocessor, encoder = runs.restore_encoder(model_dir, checkpoint)
    card = {"title": f"LEALLA {cfg.model.name}", **(model_card_info or {})}
    kind = vocab_type(preprocessor)
    variants = VARIANTS if int8 else VARIANTS[:1]
    steps = ["convert " + v for v in variants] + ["mediapipe check", "model card"]
    bar = tqdm(total=len(steps), desc="export mediapipe", unit="step", disable=not progress)
    sentences = list(PROBE_SENTENCES)
    expected = encoders.StringEncoder(preprocessor, encoder)(
        tf.constant(sentences), training=False).numpy()
    info: Dict[str, Any] = {
        "format": FORMAT, "format_version": 1, **exporter.provenance(),
        "tensorflow": tf.__version__, "checkpoint": checkpoint,
        "model": {"embedding_dim": int(expected.shape[1]),
                  "seq_length": int(preprocessor.seq_length), "vocab_type": kind,
                  "vocab_pieces": int(preprocessor.vocab_size),
                  "parameters": int(sum(int(np.prod(v.shape)) for v in encoder.weights))},
        "layout": _layout_info(preprocessor), "files": {}, "checks": {}, "card": card,
    }
    with fileio.atomic_dir(output_dir, overwrite, bar, last=layout.INFO_FILE) as tmp, \
            tempfile.TemporaryDirectory(prefix="lealla-mediapipe-") as scratch:
        files = {}
        for variant in variants:
            bar.set_postfix_str(variant)
            content = build_file(encoder, preprocessor, variant, card["title"],
                                 card.get("description") or _description(cfg, preprocessor))
            got = run_litert(tflite_of(content), preprocessor, sentences)
            cos = float(cosine_rows(got, expected).min())
            info["checks"][f"litert_{variant}_min_cosine"] = cos
            if cos < TFLITE_MIN_COSINE[variant]:
                if variant == "fp32":
                    raise RuntimeError(f"the MediaPipe fp32 model differs from the TF model: "
                                       f"min cosine {cos:.6f} < {TFLITE_MIN_COSINE['fp32']}")
                info["checks"]["int8_left_out"] = (
                    f"min cosine {cos:.6f} < {TFLITE_MIN_COSINE['int8']} on the probe sentences")
                bar.update()
                continue
            fname = layout.mediapipe_file_name(
                variant, bundle=info["layout"]["tokenizer"] == "sentencepiece")
            with open(os.path.join(tmp, fname), "wb") as f:
                f.write(content)
            files[variant] = os.path.join(tmp, fname)
            info["files"][variant] = {"path": fname, "bytes": len(content)}
            bar.update()
        bar.set_postfix_str("mediapipe")
        probe_file = os.path.join(scratch, "ids.tflite")
        with open(probe_file, "wb") as f:
            f.write(build_file(encoder, preprocessor, title=card["title"],
                               description="ids probe", ids_only=True))
        from lealla_tf.export.hf_tokenizer import sample_sentences
        checks = mediapipe_checks(files, probe_file, preprocessor, expected, sentences,
                                  sample_sentences(cfg.data.train_files, SAMPLE_SENTENCES))
        info["checks"]["mediapipe"] = checks
        _gate(checks, files, info)
        bar.update()
        info["export_seconds"] = round(time.time() - started, 1)
        with open(os.path.join(tmp, layout.INFO_FILE), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=1, ensure_ascii=False)
        with open(os.path.join(tmp, layout.CARD_FILE), "w", encoding="utf-8") as f:
            f.write(render_card(info))
        bar.update()
    if progress:
        print(f"exported to {output_dir}", flush=True)
        for entry in info["files"].values():
            print(f"  {entry['path']:<22} {human_bytes(entry['bytes']):>10}", flush=True)
    return info


def _gate(checks: Dict[str, Any], files: Dict[str, str], info: Dict[str, Any]) -> None:
    """MediaPipe's cosines against the gates: fp32 fails the export, int8 is left out."""
    cos = checks.get("fp32_min_cosine", float("nan"))
    if not cos >= MEDIAPIPE_MIN_COSINE["fp32"]:
        raise RuntimeError(f"MediaPipe's embeddings differ from the TF model's where the ids "
                           f"agree: min cosine {cos:.6f} < {MEDIAPIPE_MIN_COSINE['fp32']}")
    cos = checks.get("int8_min_cosine")
    if cos is not None and not cos >= MEDIAPIPE_MIN_COSINE["int8"]:
        os.remove(files.pop("int8"))
        del info["files"]["int8"]
        info["checks"]["int8_left_out"] = (
            f"MediaPipe min cosine {cos:.6f} < {MEDIAPIPE_MIN_COSINE['int8']}")


def _layout_info(preprocessor) -> Dict[str, Any]:
    seq_length = int(preprocessor.seq_length)
    if vocab_type(preprocessor) == "sentencepiece":
        return {"file": f"MediaPipe model bundle (zip: {BUNDLE_MODEL}, {BUNDLE_SENTENCEPIECE})",
                "inputs": {"ids": [1, INPUT_LENGTH]}, "tokenizer": "sentencepiece",
                "case_folding": False, "ids": "the run's own",
                "longest_text_pieces": INPUT_LENGTH - 2,
                "read_pieces": seq_length - 2}
    return {"file": "TFLite model with metadata",
            "inputs": {n: [1, seq_length] for n in ("ids", "mask", "segment_ids")},
            "tokenizer": "bert", "case_folding": "ASCII letters lower-cased by MediaPipe",
            "ids": "differ from the run's on texts with ASCII capitals (cased vocabulary)",
            "read_pieces": seq_length - 2}


def _description(cfg, preprocessor) -> str:
    return (f"LEALLA sentence encoder {cfg.model.name}: {cfg.model.num_layers} layers x "
            f"{cfg.model.hidden_size}, {vocab_type(preprocessor)} vocabulary, L2-normalised "
            "embeddings (cosine = dot product).")


def render_card(info: Dict[str, Any]) -> str:
    """README.md of a MediaPipe folder: usage in Kotlin, JavaScript and Python, checks."""
    from lealla_tf.export import mediapipe_card
    return mediapipe_card.render(info)
