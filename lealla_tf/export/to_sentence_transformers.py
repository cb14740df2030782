"""``lealla export --format sentence-transformers``: a folder ``SentenceTransformer(path)``
loads offline with no custom code.

Modules: ``0_Transformer`` (a ``transformers.BertModel`` with the run's weights as
``model.safetensors``, and a Hugging Face tokenizer giving the run's ids: ``[CLS] pieces
[SEP]``, ``max_seq_length`` the run's packed length), ``1_Pooling`` (mean over the real
tokens, [CLS] and [SEP] included, or the [CLS] token), for ``cls`` pooling ``2_Dense`` (the
pooler: dense + tanh), then ``Normalize``. Checked before the folder is committed: the
loaded model's embeddings of the probe sentences, from the TF preprocessor's ids, reach
cosine :data:`FLOAT_MIN_COSINE` to the TF model's; the tokenizer's ids are compared with
the TF preprocessor's on the probe sentences and on up to 2,000 lines of the run's training
files (``export_info.json``, ``checks.token_ids``).

A static student (:class:`lealla_tf.models.encoders.StaticEncoder`) exports as
``StaticEmbedding`` (the word embeddings, and the tokenizer of
:func:`hf_tokenizer.static_tokenizer`, which inserts [CLS] and [SEP] itself), a bias-free
``Dense`` with no activation for the projection if the run has one, then ``Normalize``;
checked by :func:`check_static_folder`. ONNX refuses static students.

See docs/export.md, "sentence-transformers and ONNX Runtime".
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf

from lealla_tf import fileio, layout, runs
from lealla_tf.embedders.interop import decode_text, padded_ids
from lealla_tf.export import exporter, hf_tokenizer, torch_weights
from lealla_tf.export.card import human_bytes
from lealla_tf.export.formats import PROBE_SENTENCES, cosine_rows
from lealla_tf.models import encoders

FORMAT = "sentence-transformers"
# Cosine the exported float model must reach to the TF model on every probe sentence.
FLOAT_MIN_COSINE = 0.99999
SAMPLE_SENTENCES = 2000


class Prepared:
    """What both the sentence-transformers and the ONNX export start from: the restored
    run, its ``transformers.BertModel``, the Hugging Face tokenizer, the TF model's probe
    embeddings and the token-id checks."""

    def __init__(self, model_dir: str, checkpoint: Optional[str], fmt: str,
                 model_card_info: Optional[Dict[str, Any]] = None, allow_static: bool = False):
        self.checkpoint = checkpoint or runs.latest_checkpoint(model_dir)
        self.cfg, self.preprocessor, self.encoder = runs.restore_encoder(model_dir,
                                                                         self.checkpoint)
        # A static student (StaticEncoder): a StaticEmbedding folder (sentence-transformers).
        self.static = not hasattr(self.encoder, "bert")
        if self.static and not allow_static:
            raise ValueError(f"--format {fmt} exports Transformer encoders; {model_dir} is a "
                             f"static student ({type(self.encoder).__name__}): export it with "
                             "--format sentence-transformers (a StaticEmbedding folder) or "
                             "--format hub")
        self.model = None if self.static else torch_weights.bert_model(self.encoder,
                                                                        self.cfg.model)
        self.pooling = "mean" if self.static else self.encoder.pooling
        self.seq_length = int(self.preprocessor.seq_length)
        self.tokenizer = hf_tokenizer.build_tokenizer(self.preprocessor)
        self.invalid = hf_tokenizer.invalid_char(self.tokenizer, self.preprocessor)
        self.markers = None
        if self.static:
            self.tokenizer, self.markers = hf_tokenizer.static_tokenizer(self.preprocessor,
                                                                         self.invalid)
        string_model = encoders.StringEncoder(self.preprocessor, self.encoder)
        self.reference = string_model(tf.constant(list(PROBE_SENTENCES)), training=False).numpy()
        self.probe_ids = hf_tokenizer.tf_ids(self.preprocessor, PROBE_SENTENCES)
        sample = hf_tokenizer.sample_sentences(self.cfg.data.train_files, SAMPLE_SENTENCES)
        self.id_checks = {"probe": hf_tokenizer.compare_ids(
            self.preprocessor, self.tokenizer, PROBE_SENTENCES, self.invalid, self.static)}
        if sample:
            self.id_checks["training_sample"] = hf_tokenizer.compare_ids(
                self.preprocessor, self.tokenizer, sample, self.invalid, self.static)
        self.card = exporter.run_card_info(model_dir, self.cfg, self.checkpoint)
        self.card.update(model_card_info or {})

    def info(self, fmt: str) -> Dict[str, Any]:
        """The ``export_info.json`` dict's common part."""
        import torch
        import transformers
        m = self.cfg.model
        if self.static:
            model = {"name": m.name, "architecture": "static", "hidden_size": m.hidden_size,
                     "projection": self.encoder.projection is not None, "pooling": "mean",
                     "embedding_dim": m.hidden_size}
            parameters = int(sum(int(np.prod(v.shape)) for v in self.encoder.weights))
        else:
            model = {"name": m.name, "hidden_size": m.hidden_size, "num_layers": m.num_layers,
                     "num_attention_heads": m.num_attention_heads,
                     "intermediate_size": m.intermediate_size, "pooling": self.pooling,
                     "embedding_dim": m.hidden_size}
            parameters = int(sum(p.numel() for p in self.model.parameters()))
        model.update({"seq_length": self.seq_length,
                      "vocab_pieces": int(self.preprocessor.vocab_size),
                      "vocab_type": getattr(self.preprocessor, "vocab_type", "sentencepiece"),
                      "parameters": parameters, "checkpoint": self.checkpoint})
        tokenizer = dict(hf_tokenizer.special_tokens(self.preprocessor),
                         type=("wordpiece" if self.cfg.vocab.type == "wordpiece"
                               else "unigram"),
                         invalid_utf8_char=self.invalid)
        if self.markers:
            tokenizer["static_markers"] = {"cls": f"U+{ord(self.markers[0]):04X}",
                                           "sep": f"U+{ord(self.markers[1]):04X}"}
        return {
            "format": fmt, "format_version": 1, **exporter.provenance(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "model": model, "tokenizer": tokenizer,
            "files": {}, "checks": {"token_ids": self.id_checks},
            "card": {k: v for k, v in self.card.items() if isinstance(v, (str, dict))},
        }

    def note_ids(self, checks: Dict[str, Any], progress: bool) -> None:
        """Records (``checks["token_ids_note"]``) and prints the token-id disagreement, if
        any."""
        note = hf_tokenizer.check_summary(self.id_checks)
        if note:
            checks["token_ids_note"] = note
            if progress:
                print(f"warning: {note}", file=sys.stderr, flush=True)


def same_ids_min_cosine(what: str, same_ids: np.ndarray, prep: Prepared) -> float:
    """Min cosine to the TF model of an exported model's embeddings of the probe sentences
    from the TF preprocessor's own ids.

    Raises:
      RuntimeError: below :data:`FLOAT_MIN_COSINE` (``what`` names the model).
    """
    model_min = float(cosine_rows(same_ids, prep.reference).min())
    if model_min < FLOAT_MIN_COSINE:
        raise RuntimeError(f"{what} differs from the TF model: min cosine {model_min:.7f} < "
                           f"{FLOAT_MIN_COSINE} on the probe sentences (same token ids)")
    return model_min


def write_folder(folder: str, info: Dict[str, Any], readme: Callable[[Dict], str]) -> None:
    """The last step of a sentence-transformers or ONNX folder: file modes, the total
    size, README.md (``readme(info)``) and export_info.json."""
    readable(folder)
    info["files_total_bytes"] = sum(e["bytes"] for e in info["files"].values())
    with open(os.path.join(folder, layout.CARD_FILE), "w", encoding="utf-8") as f:
        f.write(readme(info))
    with open(os.path.join(folder, layout.INFO_FILE), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1, ensure_ascii=False)


def readable(folder: str) -> None:
    """Gives every file below ``folder`` the modes the umask allows (some writers create
    files readable by their owner only)."""
    mask = os.umask(0)
    os.umask(mask)
    for root, _, files in os.walk(folder):
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def _save_hf(prep: Prepared, folder: str) -> None:
    """``config.json``, ``model.safetensors`` and the tokenizer files of ``0_Transformer``."""
    prep.model.save_pretrained(folder, safe_serialization=True)
    fast = hf_tokenizer.transformers_tokenizer(prep.tokenizer, prep.preprocessor)
    fast.save_pretrained(folder)


def _st_model(prep: Prepared, folder: str):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models
    h = prep.cfg.model.hidden_size
    modules: List[Any] = [
        models.Transformer(folder, max_seq_length=prep.seq_length,
                           do_lower_case=False),
        models.Pooling(h, pooling_mode="cls" if prep.pooling == "cls" else "mean")]
    if prep.pooling == "cls":
        import torch
        state = prep.model.pooler.dense.state_dict()
        modules.append(models.Dense(h, h, bias=True, activation_function=torch.nn.Tanh(),
                                    init_weight=state["weight"].clone(),
                                    init_bias=state["bias"].clone()))
    modules.append(models.Normalize())
    return SentenceTransformer(modules=modules, device="cpu")


def _static_st_model(prep: Prepared):
    """``StaticEmbedding`` (the word embeddings, :func:`hf_tokenizer.static_tokenizer`),
    the bias-free projection as a ``Dense`` with no activation if the run has one, then
    ``Normalize``."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models
    table = np.asarray(prep.encoder.word_embeddings.numpy(), np.float32)
    modules: List[Any] = [models.StaticEmbedding(prep.tokenizer,
                                                 embedding_weights=torch.from_numpy(table))]
    if prep.encoder.projection is not None:
        kernel = np.asarray(prep.encoder.projection.kernel.numpy(), np.float32)  # [in, out]
        modules.append(models.Dense(kernel.shape[0], kernel.shape[1], bias=False,
                                    activation_function=torch.nn.Identity(),
                                    init_weight=torch.from_numpy(kernel.T.copy())))
    modules.append(models.Normalize())
    return SentenceTransformer(modules=modules, device="cpu")


def static_embeddings_from_ids(model, ids: List[List[int]]) -> np.ndarray:
    """A loaded ``StaticEmbedding`` model's embeddings of given token ids (a bag each)."""
    import torch
    offsets = torch.from_numpy(np.cumsum([0] + [len(r) for r in ids[:-1]]).astype(np.int64))
    flat = torch.tensor([i for r in ids for i in r], dtype=torch.long)
    with torch.inference_mode():
        out = model({"input_ids": flat, "offsets": offsets})
    return out["sentence_embedding"].numpy().astype(np.float32)


def st_embeddings_from_ids(model, ids: List[List[int]], pad_id: int) -> np.ndarray:
    """A loaded ``SentenceTransformer``'s embeddings of given token ids (the tokenizer left
    out)."""
    import torch
    batch, mask = (torch.from_numpy(a) for a in padded_ids(ids, pad_id))
    with torch.inference_mode():
        out = model({"input_ids": batch, "attention_mask": mask,
                     "token_type_ids": torch.zeros_like(batch)})
    return out["sentence_embedding"].numpy().astype(np.float32)


def _card_facts(info: Dict[str, Any], output_dir: str):
    """What both READMEs quote: the model, the checks, the title, the folder's name, the
    token-id agreement and the file table."""
    m, checks = info["model"], info["checks"]
    title = info["card"].get("title") or f"LEALLA {m['name']}"
    name = os.path.basename(output_dir.rstrip("/"))
    ids = "; ".join(f"{k}: {v['equal']:,}/{v['sentences']:,} sentences"
                    for k, v in checks["token_ids"].items())
    files = "\n".join(f"| `{e['path']}` | {human_bytes(e['bytes'])} |"
                      for e in info["files"].values())
    return m, checks, title, name, ids, files


def _static_readme(info: Dict[str, Any], output_dir: str) -> str:
    m, checks, title, name, ids, files = _card_facts(info, output_dir)
    tok = info["tokenizer"]
    projection = ", a bias-free linear projection" if m["projection"] else ""
    differing = "".join(f"\n- `{d['sentence']!r}`: cosine {d['cosine']:.4f} ({d['why']})"
                        for d in checks["differing"])
    return f"""---
library_name: sentence-transformers
pipeline_tag: sentence-similarity
tags: [sentence-transformers, feature-extraction, sentence-similarity, static-embeddings, lealla]
---

# {title} (sentence-transformers, static)

{info["card"].get("description", "")}

A static (bag-of-tokens) multilingual sentence encoder: the mean of the token embeddings
(size {m['hidden_size']}) over `[CLS] tokens [SEP]` ({m['vocab_pieces']:,}-token
{m['vocab_type']} vocabulary){projection}, L2-normalised {m['embedding_dim']}-dimensional
embeddings (dot product = cosine). Sentences are truncated to {m['seq_length']} tokens,
`[CLS]` and `[SEP]` included.

```python
from sentence_transformers import SentenceTransformer
model = SentenceTransformer("{name}")   # this folder
embeddings = model.encode(["dog", "Hund"])   # float32 [2, {m['embedding_dim']}], unit rows
```

`StaticEmbedding` tokenizes without special tokens, so `tokenizer.json` inserts `[CLS]` and
`[SEP]` itself: its normalizer puts two private-use characters ({tok['static_markers']['cls']},
{tok['static_markers']['sep']}; added tokens with the `[CLS]`/`[SEP]` ids) in front of the
text, and its truncation keeps the first {m['seq_length']} ids. Text holding those two
characters itself gets those ids there.

| file | size |
|---|---|
{files}

Checks at export (`export_info.json`, `checks`): the model reproduces the TensorFlow model
it was exported from (min cosine {checks['model_min_cosine']:.7f} on the probe sentences, from
the same token ids; {checks['min_cosine']:.7f} with this folder's own tokenizer on the
sentences whose ids agree). The tokenizer gives the TensorFlow preprocessor's token ids
(as a bag: `[CLS] [SEP] tokens`) on {ids}. Sentences that differ:{differing or " none."}
"""


def _readme(info: Dict[str, Any], output_dir: str) -> str:
    m, checks, title, name, ids, files = _card_facts(info, output_dir)
    return f"""---
library_name: sentence-transformers
pipeline_tag: sentence-similarity
tags: [sentence-transformers, feature-extraction, sentence-similarity, lealla]
---

# {title} (sentence-transformers)

{info["card"].get("description", "")}

A LEALLA-style multilingual sentence encoder: {m['num_layers']} layers, hidden size
{m['hidden_size']}, {m['vocab_pieces']:,}-token {m['vocab_type']} vocabulary, {m['pooling']}
pooling, L2-normalised {m['embedding_dim']}-dimensional embeddings (dot product = cosine).
Sentences are packed as `[CLS] tokens [SEP]` and truncated to {m['seq_length']} tokens.

```python
from sentence_transformers import SentenceTransformer
model = SentenceTransformer("{name}")   # this folder
embeddings = model.encode(["dog", "Hund"])   # float32 [2, {m['embedding_dim']}], unit rows
```

| file | size |
|---|---|
{files}

Checks at export (`export_info.json`, `checks`): the model reproduces the TensorFlow model
it was exported from (min cosine {checks['model_min_cosine']:.7f} on the probe sentences, from
the same token ids; {checks['min_cosine']:.7f} with this folder's own tokenizer). The
tokenizer gives the TensorFlow preprocessor's token ids on {ids}.
"""


def export_run(model_dir: str, output_dir: str, *, checkpoint: Optional[str] = None,
               overwrite: bool = False, int8: bool = True, progress: bool = True,
               model_card_info: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Exports a run (or a ``lealla import`` run) as a sentence-transformers folder.

    Args:
      model_dir: the run's model dir.
      output_dir: the folder (written atomically).
      checkpoint: a checkpoint path (default: the latest).
      overwrite: replace an existing ``output_dir``.
      int8: not used (sentence-transformers folders hold float weights).
      progress: print progress and the checks.
      model_card_info: ``title`` / ``description`` for the README.

    Returns:
      the ``export_info.json`` dict.

    Raises:
      FileExistsError: ``output_dir`` exists and ``overwrite`` is False.
      ValueError: a vocabulary the tokenizers library cannot reproduce.
      RuntimeError: the exported model differs from the TF model (min cosine below
        :data:`FLOAT_MIN_COSINE`).
    """
    from tqdm.auto import tqdm
    del int8
    output_dir = fileio.normpath(output_dir)
    fileio.check_target(output_dir, overwrite)
    bar = tqdm(total=3, desc="export", unit="step", disable=not progress)
    bar.set_postfix_str("restore")
    prep = Prepared(model_dir, checkpoint, FORMAT, model_card_info, allow_static=True)
    bar.update()
    with fileio.atomic_dir(output_dir, overwrite, bar, last=layout.INFO_FILE) as tmp:
        bar.set_postfix_str("save")
        info = prep.info(FORMAT)
        import sentence_transformers
        info["sentence_transformers"] = sentence_transformers.__version__
        if prep.static:
            _static_st_model(prep).save(tmp)
        else:
            staging = os.path.join(tmp, ".hf")
            _save_hf(prep, staging)
            _st_model(prep, staging).save(tmp)
            shutil.rmtree(staging)
        bar.update()
        bar.set_postfix_str("check")
        info["checks"].update(check_static_folder(tmp, prep) if prep.static
                              else check_folder(tmp, prep))
        bar.update()
        prep.note_ids(info["checks"], progress)
        for name in sorted(os.listdir(tmp)):
            if name == layout.CARD_FILE:  # sentence-transformers' card, replaced below
                continue
            path = os.path.join(tmp, name)
            info["files"][name] = {"path": name + ("/" if os.path.isdir(path) else ""),
                                   "bytes": fileio.tree_bytes(path)}
        write_folder(tmp, info, lambda i: (_static_readme if prep.static else _readme)(
            i, output_dir))
    if progress:
        print(f"exported to {output_dir} ({human_bytes(info['files_total_bytes'])}): min cosine "
              f"{info['checks']['min_cosine']:.7f} to the TF model on the probe sentences",
              flush=True)
    return info


def check_folder(folder: str, prep: Prepared) -> Dict[str, Any]:
    """Loads the written folder with ``SentenceTransformer`` and compares it with the TF
    model on the probe sentences.

    Raises:
      RuntimeError: from the TF model's own ids, a min cosine below
        :data:`FLOAT_MIN_COSINE`; or a tokenizer that does not give the ids of
        :func:`hf_tokenizer.build_tokenizer`.
    """
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(folder, device="cpu", local_files_only=True)
    pad_id = hf_tokenizer.special_tokens(prep.preprocessor)["pad_id"]
    same_ids = st_embeddings_from_ids(model, prep.probe_ids, pad_id)
    model_min = same_ids_min_cosine("the sentence-transformers model", same_ids, prep)
    texts = [decode_text(s, prep.invalid) for s in PROBE_SENTENCES]
    loaded_ids = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)[
        "input_ids"]
    built_ids = hf_tokenizer.hf_ids(prep.tokenizer, PROBE_SENTENCES, prep.invalid)
    if [list(x) for x in loaded_ids] != built_ids:
        raise RuntimeError("the saved tokenizer does not give the ids of the tokenizer built "
                           "for it (tokenizer_config.json / special tokens)")
    got = model.encode(texts, convert_to_numpy=True, show_progress_bar=False)
    cos = cosine_rows(got, prep.reference)
    return {"model_min_cosine": model_min, "min_cosine": float(cos.min()),
            "max_abs_diff": float(np.abs(got - prep.reference).max())}


# Why a probe sentence's ids from the static tokenizer differ from the TF preprocessor's.
_EMPTY_WHY = ("empty text: the tokenizer gives no ids (its normalizer, which inserts the "
              "[CLS]/[SEP] markers, does not run on empty input), so StaticEmbedding's mean "
              "over no rows is a zero vector; the TF model embeds [CLS] [SEP]")


def check_static_folder(folder: str, prep: Prepared) -> Dict[str, Any]:
    """:func:`check_folder` for a static student's ``StaticEmbedding`` folder. The cosine
    with the folder's own tokenizer is gated on the probe sentences whose ids agree with
    the TF preprocessor's; the others are listed in ``differing`` (with their cosine, the
    norm of the exported embedding and why).

    Raises:
      RuntimeError: from the TF model's own ids, or with the folder's tokenizer on the
        sentences whose ids agree, a min cosine below :data:`FLOAT_MIN_COSINE`; or a saved
        tokenizer that does not give the ids of :func:`hf_tokenizer.static_tokenizer`.
    """
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(folder, device="cpu", local_files_only=True)
    same_ids = static_embeddings_from_ids(model, [hf_tokenizer.as_bag(r)
                                                  for r in prep.probe_ids])
    model_min = same_ids_min_cosine("the sentence-transformers model", same_ids, prep)
    texts = [decode_text(s, prep.invalid) for s in PROBE_SENTENCES]
    loaded_ids = [e.ids for e in model[0].tokenizer.encode_batch(texts,
                                                                 add_special_tokens=False)]
    built_ids = hf_tokenizer.hf_ids(prep.tokenizer, PROBE_SENTENCES, prep.invalid,
                                    add_special_tokens=False)
    if loaded_ids != built_ids:
        raise RuntimeError("the saved tokenizer does not give the ids of the static tokenizer "
                           "built for it")
    got = model.encode(texts, convert_to_numpy=True, show_progress_bar=False)
    cos = cosine_rows(got, prep.reference)
    agree = np.array([hf_tokenizer.as_bag(a) == b for a, b in zip(prep.probe_ids, built_ids)])
    differing = [{"sentence": t[:80], "cosine": float(c),
                  "norm": float(np.linalg.norm(g)),
                  "why": _EMPTY_WHY if not ids else "token ids differ (checks.token_ids.probe)"}
                 for t, ids, c, g, ok in zip(texts, built_ids, cos, got, agree) if not ok]
    agreeing_min = float(cos[agree].min()) if agree.any() else float("nan")
    if agreeing_min < FLOAT_MIN_COSINE:
        raise RuntimeError(f"the sentence-transformers model differs from the TF model: min "
                           f"cosine {agreeing_min:.7f} < {FLOAT_MIN_COSINE} on the probe "
                           "sentences whose token ids agree")
    return {"model_min_cosine": model_min, "min_cosine": agreeing_min,
            "min_cosine_all": float(cos.min()), "differing": differing,
            "max_abs_diff": float(np.abs(got[agree] - prep.reference[agree]).max())}
