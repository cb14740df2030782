"""``make demo``: the main job of lealla_tf, end to end on this machine.

Trains a SentencePiece vocabulary on real parallel data, builds a LEALLA-small
encoder over it, embeds sentences in several languages and reports shapes, norms,
the exact parameter count and throughput. Everything goes to one results folder.
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional

from lealla_tf import config, corpus

# The languages of the demo: those the offline teacher (multilingual USE v3) covers,
# as Tatoeba codes.
DEMO_LANGUAGES = ("ara", "cmn", "deu", "fra", "ita", "jpn", "kor", "nld", "pol", "por",
                  "rus", "spa", "tha", "tur")

EXAMPLES = [
    "The dog is sleeping in the garden.",
    "Der Hund schläft im Garten.",
    "Le chien dort dans le jardin.",
    "Собака спит в саду.",
    "狗在花园里睡觉。",
    "犬が庭で寝ている。",
    "الكلب نائم في الحديقة.",
    "สุนัขกำลังนอนหลับอยู่ในสวน",
]


def run(output: str, data_dir: str = "", vocab_size: int = 16000,
        config_path: Optional[str] = None) -> int:
    """Runs the demo; returns a process exit code."""
    import numpy as np
    import tensorflow as tf

    from lealla_tf import modeling, preprocessing

    root = config.data_dir(data_dir)
    os.makedirs(output, exist_ok=True)
    cfg = config.load(config_path or _config_path("lealla_small.yaml"))

    vocab_dir = os.path.join(output, "vocab")
    vocab = os.path.join(vocab_dir, preprocessing.MODEL_FILE)
    if not os.path.exists(vocab):
        files = corpus.find_files(["train/*-eng.tsv"], root, DEMO_LANGUAGES)
        print(f"[1/3] vocabulary: {len(files)} training files in {len(DEMO_LANGUAGES)} languages")
        preprocessing.train_vocab(files, vocab_dir, vocab_size=vocab_size,
                                  sentences_per_language=5000)
    else:
        print(f"[1/3] vocabulary: reusing {vocab}")
    pre = preprocessing.Preprocessor(vocab, seq_length=cfg.preprocess.seq_length)

    cfg.model.vocab_size = pre.vocab_size
    print(f"[2/3] encoder ({cfg.model.name} shape over the {pre.vocab_size}-piece vocabulary)")
    print(modeling.summary_text(cfg.model))
    encoder = modeling.LeallaEncoder.from_model_config(cfg.model)
    model = modeling.StringEncoder(pre, encoder)
    embed = tf.function(lambda x: model(x, training=False),
                        input_signature=[tf.TensorSpec([None], tf.string)])

    print("[3/3] embedding sentences in several languages (random weights)")
    vectors = embed(tf.constant(EXAMPLES)).numpy()
    norms = np.linalg.norm(vectors, axis=1)
    print(f"  embeddings: shape {vectors.shape}, dtype {vectors.dtype}, "
          f"norms min {norms.min():.6f} max {norms.max():.6f}")
    batch = tf.constant((EXAMPLES * 32)[:256])
    embed(batch)
    start = time.perf_counter()
    for _ in range(3):
        embed(batch).numpy()
    rate = 3 * 256 / (time.perf_counter() - start)
    print(f"  throughput: {rate:.1f} sentences/s (batch 256, {os.cpu_count()} CPU cores)")
    summary = {
        "model": cfg.model.name, "vocab_size": pre.vocab_size,
        "parameters": int(sum(int(tf.size(w)) for w in encoder.weights)),
        "embedding_shape": list(vectors.shape), "norm_min": float(norms.min()),
        "norm_max": float(norms.max()), "sentences_per_second": rate,
    }
    with open(os.path.join(output, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"results in {output}/")
    return 0


def _config_path(name: str) -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(here, "..", "configs", name),
                      os.path.join(here, "configs", name)):
        if os.path.exists(candidate):
            return candidate
    raise FileNotFoundError(f"config {name} not found next to the package")
