"""Embedders for the folders ``lealla export --format sentence-transformers|onnx`` writes,
run by those libraries: the ``st:`` and ``onnx:`` specs.

- ``st:DIR`` (or a folder holding ``modules.json``): ``SentenceTransformer(DIR)`` on the CPU;
- ``onnx:DIR`` (or a folder whose ``export_info.json`` says ``"format": "onnx"``): ONNX
  Runtime on ``DIR/model.onnx``; ``onnx:DIR/model-int8.onnx`` (or any ``.onnx`` file beside
  a ``tokenizer.json``) runs that file. Token ids come from ``tokenizer.json`` (the
  ``tokenizers`` library), as the folder's README shows.

Both take sentences as str or UTF-8 bytes. Bytes that are not UTF-8 are decoded by
:func:`decode_text`: each run of invalid bytes becomes one character the vocabulary lacks
(the folder's ``export_info.json`` names it), so the tokenizer gives ``[UNK]`` there, as the
TF preprocessor does for invalid bytes (SentencePiece and WordPiece alike).

Needs the ``interop`` extra (torch, transformers, sentence-transformers, onnxruntime,
tokenizers), imported when a model loads::

    from lealla_tf import embedders
    embedders.load("st:exports/tiny-st").encode(["dog", "Hund"])       # float32 [2, D]
    embedders.load("onnx:exports/tiny-onnx/model-int8.onnx").encode(["dog"])
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from lealla_tf import corpus, fileio, layout
from lealla_tf.embedders.base import DEFAULT_BATCH_SIZE, SPECIAL_TOKENS, Embedder
from lealla_tf.embedders.spec import read_export_info

# What a run of bytes that are not UTF-8 becomes before tokenization (by default): a
# private-use character vocabularies lack, so the tokenizer gives [UNK] there. An export
# names its own in export_info.json (tokenizer.invalid_utf8_char): the first stand-in its
# vocabulary lacks.
INVALID_UTF8_CHAR = "\ue000"
# The model inputs and output of `lealla export --format onnx`.
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
ONNX_OUTPUT = "sentence_embedding"
_INVALID_RUN = re.compile("[\udc80-\udcff]+")


def decode_text(sentence: Union[str, bytes], invalid_char: str = INVALID_UTF8_CHAR) -> str:
    """A sentence as the Hugging Face tokenizers take it: str unchanged; UTF-8 bytes
    decoded, each run of invalid bytes replaced by ``invalid_char``."""
    if isinstance(sentence, str):
        return sentence
    data = bytes(sentence)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="surrogateescape")
        return _INVALID_RUN.sub(invalid_char, text)


def valid_utf8(sentence: bytes) -> bool:
    """Whether ``sentence`` decodes as UTF-8."""
    try:
        sentence.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def invalid_utf8_char(folder: str) -> str:
    """The character an export folder's tokenizer takes for invalid UTF-8 (its
    ``export_info.json``; :data:`INVALID_UTF8_CHAR` when it names none)."""
    return read_export_info(folder).get("tokenizer", {}).get("invalid_utf8_char") \
        or INVALID_UTF8_CHAR


def padded_ids(rows: Sequence[Sequence[int]], pad_id: int) -> Tuple[np.ndarray, np.ndarray]:
    """Rows of token ids as int64 ``[N, longest]`` ids (padded with ``pad_id``) and their
    attention mask (1 on tokens)."""
    width = max((len(r) for r in rows), default=0)
    ids = np.full((len(rows), width), pad_id, np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return ids, mask


class SentenceTransformersEmbedder(Embedder):
    """A sentence-transformers folder run by ``SentenceTransformer`` (CPU).

    Args:
      path: the folder (``modules.json``).
      batch_size: most sentences per call.
      num_threads: torch intra-op threads (default: torch's).
      batch_tokens: most padded tokens per call.
    """

    def __init__(self, path: str, batch_size: int = DEFAULT_BATCH_SIZE,
                 num_threads: Optional[int] = None, batch_tokens: Optional[int] = None):
        from sentence_transformers import SentenceTransformer
        path = fileio.normpath(path)
        if not fileio.exists(fileio.join(path, layout.ST_MODULES_FILE)):
            raise ValueError(f"{path} is not a sentence-transformers folder (no "
                             f"{layout.ST_MODULES_FILE})")
        weights = sorted(fileio.glob(fileio.join(path, "*", "model.safetensors"))
                         + fileio.glob(fileio.join(path, "model.safetensors")))
        # (SentenceTransformer reads local folders only.)
        digest = corpus.sha256_file(weights[0])[:16] if weights else "nodigest"
        super().__init__(f"st:{path}@{digest}", batch_size, batch_tokens=batch_tokens)
        if num_threads:
            import torch
            torch.set_num_threads(int(num_threads))
        self.path = path
        self._model = SentenceTransformer(path, device="cpu", local_files_only=True)
        self._invalid = invalid_utf8_char(path)
        # A StaticEmbedding folder (a static student): its tokenizer.json inserts [CLS] and
        # [SEP] and truncates; sentence-transformers reports no length limit (inf).
        self._static = not callable(self._model.tokenizer)
        limit = self._model.max_seq_length
        self._max_tokens = int(limit) if limit and math.isfinite(limit) else 0

    def _text(self, sentence: Union[str, bytes]) -> str:
        return decode_text(sentence, self._invalid)

    def lengths(self, data: Sequence[bytes]) -> List[int]:
        """Token counts (without [CLS]/[SEP], capped at the packed length)."""
        tokenizer = self._model.tokenizer
        if self._static:
            encs = tokenizer.encode_batch([self._text(s) for s in data],
                                          add_special_tokens=False)
            return [max(len(e.ids) - SPECIAL_TOKENS, 0) for e in encs]
        cap = self._max_tokens - SPECIAL_TOKENS if self._max_tokens else None
        ids = tokenizer([self._text(s) for s in data], add_special_tokens=False,
                        truncation=bool(cap), max_length=cap)["input_ids"]
        return [len(i) for i in ids]

    def encode_batch(self, batch: List[bytes]) -> np.ndarray:
        out = self._model.encode([self._text(s) for s in batch], batch_size=max(len(batch), 1),
                                 convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(out, np.float32)


class OnnxEmbedder(Embedder):
    """An ONNX model of ``lealla export --format onnx`` (token ids in, unit embeddings
    out) run by ONNX Runtime, with the ``tokenizer.json`` beside it.

    Args:
      path: the ``.onnx`` file.
      batch_size: most sentences per call.
      num_threads: ONNX Runtime intra-op threads (default: ONNX Runtime's).
      batch_tokens: most padded tokens per call.
    """

    def __init__(self, path: str, batch_size: int = DEFAULT_BATCH_SIZE,
                 num_threads: Optional[int] = None, batch_tokens: Optional[int] = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer
        path = fileio.normpath(path)
        folder = fileio.dirname(path)
        tokenizer_path = fileio.join(folder, layout.ONNX_TOKENIZER_FILE)
        if not fileio.exists(tokenizer_path):
            raise ValueError(f"{path} has no {layout.ONNX_TOKENIZER_FILE} beside it (a "
                             "`lealla export --format onnx` folder has both)")
        content = fileio.read_bytes(path)
        super().__init__(f"onnx:{path}@{hashlib.sha256(content).hexdigest()[:16]}",
                         batch_size, batch_tokens=batch_tokens)
        self.path = path
        self._tokenizer = Tokenizer.from_str(fileio.read_text(tokenizer_path))
        self._tokenizer.no_padding()
        self._pad_id = int(read_export_info(folder).get("tokenizer", {}).get("pad_id", 0))
        self._invalid = invalid_utf8_char(folder)
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
            options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(content, options,
                                             providers=["CPUExecutionProvider"])
        names = [i.name for i in self._session.get_inputs()]
        if sorted(names) != sorted(ONNX_INPUTS):
            raise ValueError(f"{path} takes {names}, not {list(ONNX_INPUTS)}: not a "
                             "`lealla export --format onnx` model")
        self._output = self._session.get_outputs()[0].name

    def _text(self, sentence: Union[str, bytes]) -> str:
        return decode_text(sentence, self._invalid)

    def lengths(self, data: Sequence[bytes]) -> List[int]:
        """Token counts (without [CLS]/[SEP], after truncation)."""
        encs = self._tokenizer.encode_batch([self._text(s) for s in data])
        return [max(len(e.ids) - SPECIAL_TOKENS, 0) for e in encs]

    def token_ids(self, batch: Sequence[Union[str, bytes]]) -> List[List[int]]:
        """The token ids the model gets for each sentence ([CLS] ... [SEP])."""
        return [e.ids for e in self._tokenizer.encode_batch([self._text(s) for s in batch])]

    def encode_batch(self, batch: List[bytes]) -> np.ndarray:
        ids, mask = padded_ids(self.token_ids(batch), self._pad_id)
        # One segment: every token type is 0 (the tokenizer's template gives 0 too).
        out = self._session.run([self._output], {"input_ids": ids, "attention_mask": mask,
                                                 "token_type_ids": np.zeros_like(ids)})[0]
        return np.asarray(out, np.float32)


# Loaders of the spec registry (lealla_tf.embedders.spec): loader(value, **options).
def load_sentence_transformers(value: str, batch_size: int = DEFAULT_BATCH_SIZE,
                               num_threads: Optional[int] = None, **_options) -> Embedder:
    """``st:<folder>``: :class:`SentenceTransformersEmbedder`."""
    if not fileio.isdir(value):
        raise FileNotFoundError(f"sentence-transformers folder not found: {value}")
    return SentenceTransformersEmbedder(value, batch_size, num_threads)


def load_onnx(value: str, batch_size: int = DEFAULT_BATCH_SIZE,
              num_threads: Optional[int] = None, **_options) -> Embedder:
    """``onnx:<folder>`` (its ``model.onnx``) or ``onnx:<file.onnx>``: :class:`OnnxEmbedder`."""
    if not fileio.exists(value):
        raise FileNotFoundError(f"ONNX model not found: {value}")
    path = fileio.join(value, layout.ONNX_FILE) if fileio.isdir(value) else value
    if not fileio.exists(path):
        raise ValueError(f"{value} is a folder without {layout.ONNX_FILE}")
    return OnnxEmbedder(path, batch_size, num_threads)
