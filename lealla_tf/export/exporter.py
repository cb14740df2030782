"""Writing an export folder atomically, from in-memory models or a run directory.

Built on the local disk (the SavedModel writer, the TFLite converter and the checks need real
files), then committed: a rename, or on other file systems a copy with ``export_info.json``
last.

See docs/export.md, "The folder".
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import tempfile
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from lealla_tf import fileio, runs
from lealla_tf.export import formats
from lealla_tf.export.card import human_bytes, local_handles, render_model_card, summarise_metrics
from lealla_tf.export.formats import (
    CARD_FILE,
    DEFAULT_CARD_TEMPLATE,
    ENCODER,
    INFO_FILE,
    INPUT_KEY,
    INT8_EMBEDDINGS_MIN_COSINE,
    LEALLA,
    OUTPUT_KEY,
    PREPROCESSOR,
    PROBE_SENTENCES,
    SAVED_MODELS,
    SIGNATURE,
    TFLITE_MIN_COSINE,
    TFLITE_VARIANTS,
    tflite_file_name,
)
from lealla_tf.models import encoders
from lealla_tf.text import sentencepiece


def disk_bytes(path: str) -> int:
    """Bytes of a file, or of every file below a folder (any tf.io.gfile path)."""
    return fileio.tree_bytes(path)


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




def _version() -> str:
    try:
        from importlib.metadata import version
        return version("lealla_tf")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "unknown"


def provenance() -> Dict[str, str]:
    """What every export_info.json starts with: when it was made, and by which lealla_tf."""
    return {"created": datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC"), "lealla_tf_version": _version()}


def export_model(preprocessor, encoder, output_dir: str,
                 tflite: Union[str, Sequence[str], None] = TFLITE_VARIANTS,
                 model_card_info: Optional[Dict[str, Any]] = None, overwrite: bool = False,
                 card_template: Optional[str] = None, progress: bool = True,
                 int8_embeddings: bool = False) -> Dict[str, Any]:
    """Exports an in-memory preprocessor + encoder (docs/architecture.md, "Export folder").

    Args:
      preprocessor: a :class:`lealla_tf.text.sentencepiece.Preprocessor`.
      encoder: a built :class:`lealla_tf.models.encoders.LeallaEncoder`.
      output_dir: the export folder (must not exist unless ``overwrite``).
      tflite: TFLite variants to write (``fp32``, ``fp16``, ``int8``; comma-separated
        string or list; empty/``"none"`` for none).
      model_card_info: optional ``title``, ``description``, ``training`` and ``metrics``
        (strings or dicts of label -> value) for the model card.
      overwrite: replace an existing ``output_dir``.
      card_template: model-card template (default ``lealla_tf/resources/model_card.md``).
      progress: print progress and the file sizes.
      int8_embeddings: the end-to-end ``lealla`` SavedModel and every TFLite file read
        an int8 copy of the word-embedding table with one scale per row
        (``LeallaEncoder.set_int8_word_embeddings``): a 128k x 128 table takes 16 MiB
        instead of 64 in the end-to-end model and the fp32/fp16 files. The end-to-end
        model then holds no float table and serves only (its ``__call__`` has no
        training trace); the ``encoder`` SavedModel (for fine-tuning) keeps the float
        table. The int8 TFLite file quantizes the float table itself. Checked: min
        cosine to the float model on the probe sentences >= ``INT8_EMBEDDINGS_MIN_COSINE``.

    Returns:
      The ``export_info.json`` dict (file sizes, parity checks, ...).

    Raises:
      FileExistsError: ``output_dir`` exists and ``overwrite`` is False.
      ValueError: ``int8_embeddings`` with an encoder that has no int8 inference path
        (the static student).
      RuntimeError: a check fails (TFLite or int8-embedding cosine).
    """
    import tensorflow_text  # noqa: F401  (ops of the tokenizer)
    from tqdm.auto import tqdm

    if int8_embeddings and not hasattr(encoder, "set_int8_word_embeddings"):
        raise ValueError(f"int8_embeddings needs a Transformer encoder (LeallaEncoder), got "
                         f"{type(encoder).__name__}: export it without int8 embeddings")

    output_dir = fileio.normpath(output_dir)
    variants = formats.parse_tflite_variants(tflite)
    fileio.check_target(output_dir, overwrite)
    template = card_template or DEFAULT_CARD_TEMPLATE
    if not fileio.exists(template):
        raise FileNotFoundError(f"model card template not found: {template}")
    steps = ["savedmodel " + n for n in SAVED_MODELS] + ["check"] + [
        "tflite " + v for v in variants] + ["model card"]
    bar = tqdm(total=len(steps), desc="export", unit="step", disable=not progress)
    with fileio.atomic_dir(output_dir, overwrite, bar, last=INFO_FILE) as tmp:
        info: Dict[str, Any] = {
            "format_version": 1, **provenance(), "tensorflow": tf.__version__,
            "model": _shape_info(encoder, preprocessor), "files": {}, "checks": {},
            "card": dict(model_card_info or {}),
        }
        with tempfile.TemporaryDirectory() as vocab_tmp:
            sp_path = os.path.join(vocab_tmp, getattr(preprocessor, "asset_name",
                                                      sentencepiece.MODEL_FILE))
            wordpiece_vocab = sp_path.endswith("vocab.txt")  # the encoder carries it too
            with open(sp_path, "wb") as f:
                f.write(preprocessor.model_bytes)
            builders = {LEALLA: lambda: formats.build_lealla_module(preprocessor, encoder),
                        PREPROCESSOR: lambda: formats.build_preprocessor_module(preprocessor),
                        ENCODER: lambda: formats.build_encoder_module(encoder)}
            try:
                for name in SAVED_MODELS:
                    bar.set_postfix_str(name)
                    if int8_embeddings:  # the end-to-end model only
                        encoder.set_int8_word_embeddings(name == LEALLA)
                    obj, signatures = builders[name]()
                    formats.save_saved_model(obj, signatures, os.path.join(tmp, name),
                          sp_path if name != ENCODER or wordpiece_vocab else None,
                          do_lower_case=getattr(preprocessor, "do_lower_case", None))
                    info["files"][name] = {"path": name + "/",
                                           "bytes": disk_bytes(os.path.join(tmp, name))}
                    bar.update()
            finally:
                if int8_embeddings:
                    encoder.set_int8_word_embeddings(False)

        probe = tf.constant(list(PROBE_SENTENCES))
        float_model = encoders.StringEncoder(preprocessor, encoder)(probe, training=False).numpy()
        info["model"]["int8_word_embeddings"] = bool(int8_embeddings)
        if int8_embeddings:
            encoder.set_int8_word_embeddings(True)
            try:
                expected = encoders.StringEncoder(preprocessor, encoder)(
                    probe, training=False).numpy()
            finally:
                encoder.set_int8_word_embeddings(False)
            min_cos = float(formats.cosine_rows(expected, float_model).min())
            info["checks"]["int8_embeddings_min_cosine"] = min_cos
            if min_cos < INT8_EMBEDDINGS_MIN_COSINE:
                raise RuntimeError(
                    f"int8 word embeddings change the embeddings too much: min cosine "
                    f"{min_cos:.6f} < {INT8_EMBEDDINGS_MIN_COSINE} to the float table on the "
                    "probe sentences; export without int8_embeddings")
        else:
            expected = float_model
        loaded = tf.saved_model.load(os.path.join(tmp, LEALLA))
        exported = loaded.signatures[SIGNATURE](sentences=probe)[OUTPUT_KEY].numpy()
        info["checks"]["savedmodel_max_abs_diff"] = float(np.abs(exported - expected).max())
        del loaded
        bar.update()

        _write_tflite_files(preprocessor, encoder, tmp, variants, bool(int8_embeddings),
                            exported, info, bar)
        info["files_total_bytes"] = sum(e["bytes"] for e in info["files"].values())
        with open(os.path.join(tmp, INFO_FILE), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=1, ensure_ascii=False)
        card = render_model_card(info, local_handles(output_dir, info), template)
        with open(os.path.join(tmp, CARD_FILE), "w", encoding="utf-8") as f:
            f.write(card)
        bar.update()
    if progress:
        print(format_sizes(info, output_dir), flush=True)
    return info


def _write_tflite_files(preprocessor, encoder, tmp: str, variants, int8_embeddings: bool,
                        exported: np.ndarray, info: Dict[str, Any], bar) -> None:
    """Converts, writes and checks each TFLite variant (min cosine to the SavedModel's
    ``exported`` probe embeddings), recording it in ``info["files"]``.

    TFLite files are converted from end-to-end models saved beside ``lealla/`` with the
    forward pass written for TFLite converters (``LeallaEncoder.tflite_forward``). The
    int8 file quantizes the float table itself: int8 rows there would have their per-row
    scales quantized a second time, per tensor, which breaks them. So with int8
    embeddings it is converted from a model with the float table.
    """
    sources: Dict[bool, str] = {}

    def tflite_source(int8_rows: bool) -> str:
        if not int8_rows and not hasattr(encoder, "tflite_forward"):
            return os.path.join(tmp, LEALLA)  # (one forward pass for every runtime)
        if int8_rows not in sources:
            sources[int8_rows] = os.path.join(
                tmp, "tflite_source_" + ("int8_rows" if int8_rows else "float"))
            _save_tflite_source(preprocessor, encoder, sources[int8_rows], int8_rows)
        return sources[int8_rows]

    try:
        for variant in variants:
            bar.set_postfix_str("tflite " + variant)
            content = formats.convert_tflite(
                tflite_source(int8_embeddings and variant != "int8"), variant)
            fname = tflite_file_name(variant)
            with open(os.path.join(tmp, fname), "wb") as f:
                f.write(content)
            try:
                runner = formats.tflite_interpreter(model_content=content).get_signature_runner(
                    SIGNATURE)
                got = runner(**{INPUT_KEY: np.array(list(PROBE_SENTENCES), dtype=object)})[
                    OUTPUT_KEY]
            except (RuntimeError, ValueError) as e:
                raise RuntimeError(
                    f"the {variant} TFLite model does not run with TFLite builtins plus TF "
                    f"Text's ops: {e}. The converter keeps ops TFLite lacks as custom ops; "
                    "e.g. new-axis slicing (x[:, None]) becomes a StridedSlice TFLite cannot "
                    "run: use tf.expand_dims or tf.reshape in the model") from e
            min_cos = float(formats.cosine_rows(got, exported).min())
            if min_cos < TFLITE_MIN_COSINE[variant]:
                raise RuntimeError(
                    f"the {variant} TFLite model differs from the SavedModel: min cosine "
                    f"{min_cos:.6f} < {TFLITE_MIN_COSINE[variant]} on the probe sentences; "
                    f"leave it out (e.g. --tflite fp32,fp16) or check the conversion")
            info["files"][f"tflite-{variant}"] = {
                "path": fname, "bytes": len(content), "min_cosine": min_cos}
            bar.update()
    finally:
        for source in sources.values():
            shutil.rmtree(source, ignore_errors=True)


def _save_tflite_source(preprocessor, encoder, path: str, int8_rows: bool) -> None:
    """The end-to-end model that TFLite files are converted from: the forward pass written
    for TFLite converters (a ``LeallaEncoder``'s), with int8 word-embedding rows or the
    float table."""
    try:
        if int8_rows:
            encoder.set_int8_word_embeddings(True)
        with encoder.tflite_forward():
            obj, signatures = formats.build_lealla_module(preprocessor, encoder)
            tf.saved_model.save(obj, path, signatures=signatures)
    finally:
        if int8_rows:
            # A fresh inference function: the caller's encoder computes as before.
            encoder.set_int8_word_embeddings(False)


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
    stats_path = fileio.join(model_dir, "data_stats.json")
    if fileio.exists(stats_path):
        stats = json.loads(fileio.read_text(stats_path))
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
               progress: bool = True, int8_embeddings: bool = False) -> Dict[str, Any]:
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
      int8_embeddings: int8 word-embedding rows (see :func:`export_model`).
    """
    fileio.check_target(fileio.normpath(output_dir), overwrite)
    checkpoint = checkpoint or runs.latest_checkpoint(model_dir)
    cfg, preprocessor, encoder = runs.restore_encoder(model_dir, checkpoint)
    card = run_card_info(model_dir, cfg, checkpoint, metrics)
    card.update(model_card_info or {})
    return export_model(preprocessor, encoder, output_dir, tflite=tflite, model_card_info=card,
                        overwrite=overwrite, progress=progress,
                        int8_embeddings=int8_embeddings)
