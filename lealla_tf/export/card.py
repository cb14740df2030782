"""The model card: ``lealla_tf/resources/model_card.md`` filled from ``export_info.json``.

See docs/export.md, "The folder".
"""

from __future__ import annotations

import json
import string
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from lealla_tf import fileio
from lealla_tf.export.formats import (
    DEFAULT_CARD_TEMPLATE,
    ENCODER,
    LEALLA,
    PREPROCESSOR,
    SAVED_MODELS,
    TFLITE_VARIANTS,
    tflite_file_name,
)


def human_bytes(n: int) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def summarise_metrics(results: Sequence[Union[str, dict]]) -> Dict[str, str]:
    """Headline numbers of ``lealla eval`` result JSONs (paths or dicts) for the card."""
    out = {}
    for r in results:
        if isinstance(r, str):
            r = json.loads(fileio.read_text(r))
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
      template: template file (default ``lealla_tf/resources/model_card.md``).
    """
    template = template or DEFAULT_CARD_TEMPLATE
    if not fileio.exists(template):
        raise FileNotFoundError(f"model card template not found: {template}")
    text = fileio.read_text(template)
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
    handles = {name: fileio.join(output_dir, name) for name in SAVED_MODELS}
    tflites = [v for v in TFLITE_VARIANTS if f"tflite-{v}" in info["files"]]
    if tflites:
        handles["tflite"] = fileio.join(output_dir, tflite_file_name(tflites[0]))
    return handles
