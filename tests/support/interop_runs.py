"""Tiny run directories for the sentence-transformers and ONNX export tests: SentencePiece
runs with mean and cls pooling and a lower-casing WordPiece run, random weights (a large
initializer, so that sentences get clearly different vectors)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, List

import numpy as np
import tf_keras

from lealla_tf import config, runs
from lealla_tf.models import encoders
from support import hermetic

RESERVED = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _write(run_dir: str, cfg, vocab_bytes: bytes, files: List[str], seed: int) -> str:
    cfg = dataclasses.replace(
        cfg, vocab=dataclasses.replace(cfg.vocab, model_file=runs.vocab_file(cfg)),
        data=dataclasses.replace(cfg.data, train_files=list(files)))
    tf_keras.utils.set_random_seed(seed)
    encoder = encoders.build_encoder(cfg.model)
    encoder(encoder.dummy_inputs())
    if getattr(encoder, "projection", None) is not None:  # not the identity it starts as
        kernel = encoder.projection.kernel
        noise = np.random.default_rng(seed).normal(0.0, 0.3, kernel.shape)
        kernel.assign(kernel + noise.astype(np.float32))
    runs.write_run(run_dir, cfg, vocab_bytes, encoder, "data_stats.json", {"pairs": 1200})
    return run_dir


def sentencepiece_run(run_dir: str, vocab: str, files: List[str], pooling: str) -> str:
    """A run with the hermetic SentencePiece vocabulary and ``pooling``."""
    import sentencepiece as spm
    n = spm.SentencePieceProcessor(model_file=vocab).get_piece_size()
    cfg = config.load("tiny", [f"model.vocab_size={n}", f"model.pooling={pooling}",
                               "model.initializer_range=0.2"])
    with open(vocab, "rb") as f:
        return _write(run_dir, cfg, f.read(), files, seed=5)


def static_run(run_dir: str, vocab: str, files: List[str], projection: bool) -> str:
    """A static student (``model.architecture=static``) with the hermetic SentencePiece
    vocabulary, with or without the bias-free projection (random, not the identity)."""
    import sentencepiece as spm
    n = spm.SentencePieceProcessor(model_file=vocab).get_piece_size()
    cfg = config.load("tiny", [f"model.vocab_size={n}", "model.architecture=static",
                               "model.pooling=mean", f"model.static_projection={projection}",
                               "model.initializer_range=0.2"])
    with open(vocab, "rb") as f:
        return _write(run_dir, cfg, f.read(), files, seed=11)


def wordpiece_tokens(files: List[str]) -> List[str]:
    """A lower-cased WordPiece vocabulary of the hermetic corpus: its 150 most frequent
    words, every character alone and as a ``##`` suffix, some punctuation."""
    import collections
    words: Dict[str, int] = collections.Counter()
    chars = set()
    for path in files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                for w in line.lower().replace(".", " ").split():
                    words[w] += 1
                    chars.update(w)
    tokens = list(RESERVED) + list(".,!?-'") + sorted(chars) + [f"##{c}" for c in sorted(chars)]
    tokens += [w for w, _ in words.most_common(150) if w not in tokens]
    return tokens


def wordpiece_run(run_dir: str, files: List[str]) -> str:
    """A lower-casing WordPiece run (as `lealla import` writes for LEALLA), cls pooling."""
    tokens = wordpiece_tokens(files)
    cfg = config.load("tiny", [f"model.vocab_size={len(tokens)}", "model.pooling=cls",
                               "model.initializer_range=0.2", "vocab.type=wordpiece",
                               "vocab.do_lower_case=true", "vocab.model_file=vocab/vocab.txt"])
    return _write(run_dir, cfg, ("\n".join(tokens) + "\n").encode("utf-8"), files, seed=7)


def corpus(directory: str) -> List[str]:
    return hermetic.write_corpus(os.path.join(directory, "corpus"))


def read_info(folder: str) -> Dict:
    """An export folder's ``export_info.json``."""
    from lealla_tf import layout
    with open(os.path.join(folder, layout.INFO_FILE), encoding="utf-8") as f:
        return json.load(f)


def probe_reference(run_dirs: Dict[str, str]) -> Dict[str, np.ndarray]:
    """The TF model's embeddings of the probe sentences, per run (its latest checkpoint)."""
    from lealla_tf import embedders
    from lealla_tf.export import PROBE_SENTENCES
    return {name: embedders.load(f"run:{path}").encode(list(PROBE_SENTENCES))
            for name, path in run_dirs.items()}
