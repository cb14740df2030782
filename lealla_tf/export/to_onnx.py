"""``lealla export --format onnx``: ``model.onnx`` (token ids in, unit embeddings out),
``model-int8.onnx`` (ONNX Runtime's dynamic int8 quantization) and ``tokenizer.json`` for
ONNX Runtime and the ``tokenizers`` library.

The model is a ``transformers.BertModel`` with the run's weights, its pooling (mean over the
real tokens, [CLS] and [SEP] included, or the dense + tanh pooler on [CLS]) and L2
normalisation, exported by ``torch.onnx.export``: inputs ``input_ids``, ``attention_mask``,
``token_type_ids`` (int64 ``[batch, length]``, both dynamic), output ``sentence_embedding``
(float32 ``[batch, hidden]``). Checked before the folder is committed: from the TF
preprocessor's ids, min cosine to the TF model on the probe sentences at least
:data:`FLOAT_MIN_COSINE` (float) and :data:`INT8_MIN_COSINE` (int8: the file is left out
below it); the tokenizer's ids are compared with the TF preprocessor's on the probe
sentences and on up to 2,000 lines of the run's training files.

See docs/export.md, "sentence-transformers and ONNX Runtime".
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import numpy as np

from lealla_tf import fileio, layout
from lealla_tf.embedders.interop import ONNX_INPUTS, ONNX_OUTPUT, decode_text, padded_ids
from lealla_tf.export import hf_tokenizer
from lealla_tf.export.card import human_bytes
from lealla_tf.export.formats import PROBE_SENTENCES, cosine_rows
from lealla_tf.export.to_sentence_transformers import Prepared, same_ids_min_cosine, write_folder

FORMAT = "onnx"
# The int8 file is kept only if every probe sentence reaches this cosine to the TF model
# (the TFLite int8 file's gate).
INT8_MIN_COSINE = 0.99
OPSET = 17


def _module(model, pooling: str):
    """``BertModel`` + pooling + L2 normalisation as one ``torch.nn.Module``."""
    import torch

    class Embed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                            token_type_ids=token_type_ids)
            if pooling == "cls":
                pooled = out.pooler_output
            else:
                mask = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
                total = (out.last_hidden_state * mask).sum(dim=1)
                pooled = total / mask.sum(dim=1).clamp(min=1.0)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1, eps=1e-12)

    return Embed().eval()


def _export_onnx(prep: Prepared, path: str) -> None:
    import torch
    module = _module(prep.model, prep.pooling)
    ids, mask = (torch.from_numpy(a) for a in padded_ids(prep.probe_ids[:4], 0))
    example = (ids, mask, torch.zeros_like(ids))
    axes = {n: {0: "batch", 1: "length"} for n in ONNX_INPUTS}
    axes[ONNX_OUTPUT] = {0: "batch"}
    torch.onnx.export(module, example, path, input_names=list(ONNX_INPUTS),
                      output_names=[ONNX_OUTPUT], opset_version=OPSET, dynamo=False,
                      dynamic_axes=axes)


def run_onnx(path: str, ids: List[List[int]], pad_id: int) -> np.ndarray:
    """Embeddings of given token ids by an ONNX file (ONNX Runtime, CPU)."""
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    batch, mask = padded_ids(ids, pad_id)
    return session.run([ONNX_OUTPUT], {"input_ids": batch, "attention_mask": mask,
                                       "token_type_ids": np.zeros_like(batch)})[0]


def _readme(info: Dict[str, Any]) -> str:
    m, checks = info["model"], info["checks"]
    title = info["card"].get("title") or f"LEALLA {m['name']}"
    files = "\n".join(f"| `{e['path']}` | {human_bytes(e['bytes'])} |"
                      + (f" min cosine {e['min_cosine']:.6f} |" if "min_cosine" in e else " |")
                      for e in info["files"].values())
    ids = "; ".join(f"{k}: {v['equal']:,}/{v['sentences']:,} sentences"
                    for k, v in checks["token_ids"].items())
    int8 = checks.get("int8")
    int8_text = "" if not int8 else (
        f"\n`model-int8.onnx` (ONNX Runtime's dynamic quantization: int8 weights, the word "
        f"embeddings included; activations quantized per batch) reached a min "
        f"cosine of {int8['min_cosine']:.6f} (gate {INT8_MIN_COSINE})"
        + (" and is included." if int8["kept"] else ", so it was left out.") + "\n")
    invalid = info["tokenizer"]["invalid_utf8_char"]
    return f"""# {title} (ONNX)

{info["card"].get("description", "")}

A LEALLA-style multilingual sentence encoder: {m['num_layers']} layers, hidden size
{m['hidden_size']}, {m['vocab_pieces']:,}-token {m['vocab_type']} vocabulary, {m['pooling']}
pooling. `model.onnx` takes token ids (`input_ids`, `attention_mask`, `token_type_ids`: int64
`[batch, length]`) and returns `{ONNX_OUTPUT}`: L2-normalised float32 `[batch,
{m['embedding_dim']}]` (dot product = cosine). `tokenizer.json` gives the ids: `[CLS] tokens
[SEP]`, truncated to {m['seq_length']} tokens.

```python
import numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
tok = Tokenizer.from_file("tokenizer.json")
tok.enable_padding(pad_id={info['tokenizer']['pad_id']}, pad_token="[PAD]")
enc = tok.encode_batch(["dog", "Hund"])
feed = {{"input_ids": np.array([e.ids for e in enc], np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], np.int64)}}
session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
embeddings = session.run(None, feed)[0]   # float32 [2, {m['embedding_dim']}], unit rows
```

Bytes that are not UTF-8: replace each run of them by `{invalid!a}` before tokenizing (it
becomes `[UNK]`, as in the TensorFlow model).

| file | size | |
|---|---|---|
{files}

Checks at export (`export_info.json`, `checks`): from the same token ids, `model.onnx`
reproduces the TensorFlow model it was exported from with min cosine
{checks['model_min_cosine']:.7f} on the probe sentences ({checks['min_cosine']:.7f} with
`tokenizer.json`'s own ids). The tokenizer gives the TensorFlow preprocessor's token ids on
{ids}.
{int8_text}"""


def export_run(model_dir: str, output_dir: str, *, checkpoint: Optional[str] = None,
               overwrite: bool = False, int8: bool = True, progress: bool = True,
               model_card_info: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Exports a run (or a ``lealla import`` run) as an ONNX folder.

    Args:
      model_dir: the run's model dir.
      output_dir: the folder (written atomically).
      checkpoint: a checkpoint path (default: the latest).
      overwrite: replace an existing ``output_dir``.
      int8: also write ``model-int8.onnx`` (kept only if it passes :data:`INT8_MIN_COSINE`).
      progress: print progress and the checks.
      model_card_info: ``title`` / ``description`` for the README.

    Returns:
      the ``export_info.json`` dict.

    Raises:
      FileExistsError: ``output_dir`` exists and ``overwrite`` is False.
      ValueError: a static encoder, or a vocabulary the tokenizers library cannot
        reproduce.
      RuntimeError: ``model.onnx`` differs from the TF model (min cosine below
        :data:`FLOAT_MIN_COSINE`).
    """
    from tqdm.auto import tqdm
    output_dir = fileio.normpath(output_dir)
    fileio.check_target(output_dir, overwrite)
    bar = tqdm(total=3 + bool(int8), desc="export", unit="step", disable=not progress)
    bar.set_postfix_str("restore")
    prep = Prepared(model_dir, checkpoint, FORMAT, model_card_info)
    bar.update()
    pad_id = hf_tokenizer.special_tokens(prep.preprocessor)["pad_id"]
    with fileio.atomic_dir(output_dir, overwrite, bar, last=layout.INFO_FILE) as tmp:
        info = prep.info(FORMAT)
        import onnxruntime
        info["onnxruntime"] = onnxruntime.__version__
        bar.set_postfix_str("onnx")
        float_path = os.path.join(tmp, layout.ONNX_FILE)
        _export_onnx(prep, float_path)
        prep.tokenizer.save(os.path.join(tmp, layout.ONNX_TOKENIZER_FILE))
        bar.update()
        bar.set_postfix_str("check")
        info["checks"].update(_check_float(float_path, tmp, prep, pad_id))
        info["files"]["model"] = {"path": layout.ONNX_FILE, "bytes": os.path.getsize(float_path),
                                  "min_cosine": info["checks"]["model_min_cosine"]}
        info["files"]["tokenizer"] = {
            "path": layout.ONNX_TOKENIZER_FILE,
            "bytes": os.path.getsize(os.path.join(tmp, layout.ONNX_TOKENIZER_FILE))}
        bar.update()
        if int8:
            bar.set_postfix_str("int8")
            entry = _int8(float_path, os.path.join(tmp, layout.ONNX_INT8_FILE), prep, pad_id,
                          info["checks"], progress)
            if entry:
                info["files"]["model-int8"] = entry
            bar.update()
        prep.note_ids(info["checks"], progress)
        write_folder(tmp, info, _readme)
    if progress:
        lines = [f"exported to {output_dir}"] + [
            f"  {e['path']:<18} {human_bytes(e['bytes']):>10}"
            + (f"  min cosine vs TF {e['min_cosine']:.6f}" if "min_cosine" in e else "")
            for e in info["files"].values()]
        print("\n".join(lines), flush=True)
    return info


def _check_float(path: str, folder: str, prep: Prepared, pad_id: int) -> Dict[str, Any]:
    """``model.onnx`` against the TF model on the probe sentences: from the TF ids (the
    gate) and, through the folder's embedder, from ``tokenizer.json``'s.

    Raises:
      RuntimeError: a min cosine below :data:`FLOAT_MIN_COSINE` from the TF ids.
    """
    same_ids = run_onnx(path, prep.probe_ids, pad_id)
    model_min = same_ids_min_cosine(layout.ONNX_FILE, same_ids, prep)
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(folder, layout.ONNX_TOKENIZER_FILE))
    ids = [e.ids for e in tok.encode_batch([decode_text(s, prep.invalid)
                                            for s in PROBE_SENTENCES])]
    own = run_onnx(path, ids, pad_id)
    return {"model_min_cosine": model_min,
            "model_max_abs_diff": float(np.abs(same_ids - prep.reference).max()),
            "min_cosine": float(cosine_rows(own, prep.reference).min())}


def _int8(float_path: str, path: str, prep: Prepared, pad_id: int, checks: Dict[str, Any],
          progress: bool) -> Optional[Dict[str, Any]]:
    """Writes ``model-int8.onnx``; keeps it (returns its files entry) only if it passes
    :data:`INT8_MIN_COSINE` on the probe sentences."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    quantize_dynamic(float_path, path, weight_type=QuantType.QInt8)
    got = run_onnx(path, prep.probe_ids, pad_id)
    min_cos = float(cosine_rows(got, prep.reference).min())
    kept = min_cos >= INT8_MIN_COSINE
    checks["int8"] = {"min_cosine": min_cos, "mean_cosine": float(
        cosine_rows(got, prep.reference).mean()), "gate": INT8_MIN_COSINE, "kept": kept}
    if not kept:
        os.remove(path)
        if progress:
            print(f"note: {layout.ONNX_INT8_FILE} left out: min cosine {min_cos:.6f} < "
                  f"{INT8_MIN_COSINE} to the TF model on the probe sentences", flush=True)
        return None
    return {"path": layout.ONNX_INT8_FILE, "bytes": os.path.getsize(path), "min_cosine": min_cos}
