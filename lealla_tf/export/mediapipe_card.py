"""README.md of a ``lealla export --format mediapipe`` folder, from its export_info.json.

See docs/export.md, "MediaPipe".
"""

from __future__ import annotations

from typing import Any, Dict, List

from lealla_tf.export.card import human_bytes

_KOTLIN = """```kotlin
import com.google.mediapipe.tasks.core.BaseOptions
import com.google.mediapipe.tasks.text.textembedder.TextEmbedder
import com.google.mediapipe.tasks.text.textembedder.TextEmbedder.TextEmbedderOptions

val options = TextEmbedderOptions.builder()
    .setBaseOptions(BaseOptions.builder().setModelAssetPath("{file}").build())
    .build()
val embedder = TextEmbedder.createFromOptions(context, options)
val a = embedder.embed("The weather is nice today.").embeddingResult().embeddings()[0]
val b = embedder.embed("Das Wetter ist heute schön.").embeddingResult().embeddings()[0]
val similarity = TextEmbedder.cosineSimilarity(a, b)
```"""

_JAVASCRIPT = """```js
import {{ FilesetResolver, TextEmbedder }} from "@mediapipe/tasks-text";

// The wasm folder of the @mediapipe/tasks-text package, served with the page.
const text = await FilesetResolver.forTextTasks("/mediapipe/tasks-text/wasm");
const embedder = await TextEmbedder.createFromOptions(text, {{
  baseOptions: {{ modelAssetPath: "{file}" }},
}});
const a = embedder.embed("The weather is nice today.").embeddings[0];
const b = embedder.embed("Das Wetter ist heute schön.").embeddings[0];
const similarity = TextEmbedder.cosineSimilarity(a, b);
```"""

_PYTHON = """```python
from mediapipe.tasks.python import text
from mediapipe.tasks.python.core.base_options import BaseOptions

embedder = text.TextEmbedder.create_from_options(text.TextEmbedderOptions(
    base_options=BaseOptions(model_asset_path="{file}")))
a = embedder.embed("The weather is nice today.").embeddings[0]
b = embedder.embed("Das Wetter ist heute schön.").embeddings[0]
print(text.TextEmbedder.cosine_similarity(a, b))
```

From this project (MediaPipe runs in its own venv, `make mediapipe-venv`):

```python
from lealla_tf import embedders
model = embedders.load("mediapipe:{folder}")   # the fp32 file; or mediapipe:{folder}/{file}
model.encode(["dog", "Hund"])                  # float32 [2, {dim}]
```"""


def _tokenization(info: Dict[str, Any]) -> List[str]:
    lay, model = info["layout"], info["model"]
    checks = info["checks"].get("mediapipe", {})
    if lay["tokenizer"] == "sentencepiece":
        lines = [
            f"Each file is a MediaPipe model bundle (a zip archive of `embedder.tflite` and "
            f"`sentencepiece.model`): the model takes one int32 input `ids` "
            f"{lay['inputs']['ids']} and MediaPipe encodes the text with the bundled "
            "SentencePiece model as it is (no case folding), `[CLS]` pieces `[SEP]`, then "
            "`[PAD]`. These are the encoder's own ids. The model reads the first "
            f"{lay['read_pieces']} pieces, as the encoder's own preprocessing does; MediaPipe "
            f"refuses a text of more than {lay['longest_text_pieces']:,} pieces with an "
            "error (\"Input text is too long\"), after which that TextEmbedder fails every "
            "call: create it again (or cut such texts before embedding them).",
        ]
    else:
        lines = [
            "The file takes MediaPipe's BERT inputs (`ids`, `mask`, `segment_ids`, "
            f"[1, {model['seq_length']}]) and carries the WordPiece vocabulary. MediaPipe's "
            "BERT preprocessing lower-cases ASCII letters before tokenizing, and this "
            "vocabulary is cased: **on texts with ASCII capital letters MediaPipe's ids "
            "differ from the encoder's** (so do the embeddings).",
        ]
    if checks:
        n = checks["probe_sentences"]
        lines.append("")
        lines.append(f"On the {n} probe sentences MediaPipe {checks.get('mediapipe', '')} gave "
                     f"the encoder's ids on {checks['ids_equal']}; ids differ on "
                     f"{len(checks['ids_differ'])} ({checks['ids_differ_valid_utf8']} of them "
                     "valid UTF-8; MediaPipe gets invalid bytes as U+FFFD), refused: "
                     f"{len(checks['refused'])}.")
    sample = checks.get("training_sample")
    if sample:
        lines.append("")
        lines.append(f"On {sample['sentences']:,} lines of the training files its ids equal the "
                     f"encoder's on {sample['ids_equal']:,}, differ on {sample['ids_differ']:,} "
                     f"({sample['ids_differ_without_ascii_capitals']:,} of them without ASCII "
                     f"capitals), refused: {sample['refused']:,}.")
    return lines


def _checks(info: Dict[str, Any]) -> List[str]:
    checks = info["checks"]
    mp = checks.get("mediapipe", {})
    rows = ["| check | value |", "|---|---|"]
    for variant in ("fp32", "int8"):
        key = f"litert_{variant}_min_cosine"
        if key in checks:
            rows.append(f"| {variant}: min cosine to the TF model, LiteRT on the encoder's "
                        f"ids | {checks[key]:.6f} |")
        if f"{variant}_min_cosine" in mp:
            rows.append(f"| {variant}: min cosine to the TF model, MediaPipe TextEmbedder "
                        f"(where ids agree) | {mp[f'{variant}_min_cosine']:.6f} |")
    if "int8_left_out" in checks:
        rows.append(f"| int8 file left out | {checks['int8_left_out']} |")
    return rows


def render(info: Dict[str, Any]) -> str:
    """The model card."""
    model = info["model"]
    files = info["files"]
    main = files.get("int8", files.get("fp32"))["path"]
    title = info.get("card", {}).get("title", "LEALLA")
    lines = [
        f"# {title} for MediaPipe Tasks",
        "",
        f"A sentence encoder for MediaPipe's TextEmbedder: {model['embedding_dim']}-dimensional "
        "L2-normalised embeddings (cosine similarity is their dot product), "
        f"{model['parameters']:,} parameters, {model['vocab_type']} vocabulary of "
        f"{model['vocab_pieces']:,} pieces, up to {model['seq_length'] - 2} pieces read per "
        "text.",
        "",
    ]
    if info.get("card", {}).get("description"):
        lines += [info["card"]["description"], ""]
    lines += [
        "| file | size |",
        "|---|---|",
    ]
    lines += [f"| `{e['path']}` ({v}) | {human_bytes(e['bytes'])} |" for v, e in files.items()]
    lines += ["", "## Android (Kotlin)", "", _KOTLIN.format(file=main), "",
              "## Web (JavaScript, `@mediapipe/tasks-text`)", "",
              _JAVASCRIPT.format(file=main), "", "## Python", "",
              _PYTHON.format(file=main, folder="<this folder>", dim=model["embedding_dim"]),
              "", "## Tokenization", ""]
    lines += _tokenization(info)
    lines += ["", "## Checks", "",
              "Every export runs the files with LiteRT on the encoder's own ids and with "
              "MediaPipe's TextEmbedder itself on the probe sentences (export_info.json, "
              "`checks`). int8 is kept only at min cosine >= 0.99.", ""]
    lines += _checks(info)
    lines.append("")
    return "\n".join(lines)
