"""One protocol for "something that embeds sentences" and one batching policy.

An embedder has a ``name``, a ``fingerprint`` (what caches key on), a ``dim`` and
``encode(sentences) -> float32 [N, dim]``. :func:`batch_order` sorts sentences longest first
by token count (by UTF-8 length without a vocabulary) and cuts batches of at most
``batch_size`` sentences and ``batch_tokens`` padded tokens, so short sentences go in large
batches and long ones in small; embeddings come back in input order.

See docs/evaluation.md, "Models".
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Union

import numpy as np

from lealla_tf import fileio, layout

# Most sentences per model call, and most padded tokens per call (sentences x the longest
# one's tokens). TensorFlow: 8,192 (the demo student 1.04x of 4,096 on a Xeon with 2 MB of
# L2 per core, equal on an EPYC; LEALLA-small equal on both; 2,048 slower everywhere:
# benchmarks/RESULTS.md, "Inference speed"). TFLite files run best near 1,024 (512 to
# 1,024 on LEALLA-small, 1,024 to 2,048 on a 4-layer student).
DEFAULT_BATCH_SIZE = 512
DEFAULT_BATCH_TOKENS = 8192
# Largest share of a row that batch_order lets be padding when it cuts by a token budget.
DEFAULT_MAX_PADDING = 0.25
# Tokens a sequence carries beside its pieces ([CLS] and [SEP]).
SPECIAL_TOKENS = 2
# What a model's dict of outputs gives as the embedding when no key is named, in order.
OUTPUT_PREFERENCE = (layout.OUTPUT_KEY, "pooled_output")


def as_bytes(s: Union[str, bytes]) -> bytes:
    """UTF-8 bytes of a sentence (bytes pass unchanged; lone surrogates kept as
    ``surrogateescape`` bytes)."""
    if isinstance(s, bytes):
        return s
    try:
        return s.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:
        return s.encode("utf-8", errors="replace")


def pick_output(out, key: Optional[str] = None, what: str = "the model"):
    """The embedding among a model's outputs.

    Args:
      out: what the model returned: a dict of outputs, or the embedding itself (returned
        as it is).
      key: the output to use; None picks ``default``, else ``pooled_output``, else the
        only output.
      what: names the model in error messages.

    Raises:
      ValueError: ``key`` is not an output, or no output is ``default`` or
        ``pooled_output`` and there are several (the messages list the outputs).
    """
    if not isinstance(out, dict):
        return out
    if key is not None:
        if key not in out:
            raise ValueError(f"{what} has no output {key!r}; outputs: {sorted(out)}")
        return out[key]
    for name in OUTPUT_PREFERENCE:
        if name in out:
            return out[name]
    if len(out) == 1:
        return next(iter(out.values()))
    raise ValueError(f"{what} returns several outputs {sorted(out)} and none is "
                     f"{' or '.join(map(repr, OUTPUT_PREFERENCE))}: name the embedding output "
                     "(output_key)")


# ------------------------------------------------------------------ the batching policy
def sort_keys(model, sentences: Sequence[Union[str, bytes]]) -> List[int]:
    """The batching sort keys of any embedder: its ``lengths`` (token counts when it knows
    its vocabulary), else UTF-8 lengths."""
    data = [as_bytes(s) for s in sentences]
    lengths = getattr(model, "lengths", None)
    return list(lengths(data)) if callable(lengths) else [len(s) for s in data]


def batch_order(keys: Sequence[int], batch_size: int,
                batch_tokens: Optional[int] = None,
                max_padding: float = DEFAULT_MAX_PADDING) -> List[np.ndarray]:
    """Index batches: longest first (stable among equals), each of at most
    ``batch_size`` sentences and, with ``batch_tokens``, at most that many padded tokens
    (sentences x (the first one's key + :data:`SPECIAL_TOKENS`); a sentence longer than
    the budget goes alone).

    With a budget, a batch also ends before a sentence that would be padded by more than
    ``max_padding`` of the batch's length (its key + :data:`SPECIAL_TOKENS` below
    ``(1 - max_padding)`` x the first one's): the long tail of a corpus, where a budget of
    few sentences spans very different lengths, then goes in smaller batches of similar
    lengths instead of computing padding.

    Args:
      keys: one sort key per sentence (see :func:`sort_keys`).
      batch_size: most sentences per batch (positive).
      batch_tokens: most padded tokens per batch (None or 0: no limit).
      max_padding: with ``batch_tokens``, the largest share of a sentence's row that may be
        padding, in [0, 1) (0: equal lengths only); 1 or more: no such limit.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if batch_tokens is not None and batch_tokens < 0:
        raise ValueError(f"batch_tokens must be positive (0: no limit), got {batch_tokens}")
    if max_padding < 0:
        raise ValueError(f"max_padding must be at least 0, got {max_padding}")
    order = np.argsort([-k for k in keys], kind="stable")
    if not batch_tokens:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    lengths = np.asarray(keys, dtype=np.int64)[order] + SPECIAL_TOKENS
    batches, start = [], 0
    while start < len(order):
        longest = int(lengths[start])
        size = max(1, min(batch_size, batch_tokens // longest))
        if max_padding < 1:
            # lengths[start:] descend: the first sentence below the floor ends the batch.
            floor = (1.0 - max_padding) * longest
            below = np.flatnonzero(lengths[start:start + size] < floor)
            if below.size:
                size = max(1, int(below[0]))
        batches.append(order[start:start + size])
        start += size
    return batches


class Embedder:
    """Base class: ``encode`` follows the batching policy and restores the input order.

    Subclasses implement ``encode_batch(list[bytes]) -> np.ndarray [n, D]``; those that
    know a SentencePiece vocabulary pass ``length_model`` or override ``_vocabulary``.

    Args:
      name: stable model name.
      batch_size: most sentences per model call (0: everything in one call).
      fingerprint: what caches key on (default ``name``).
      length_model: SentencePiece model (file path or serialized bytes) for token counts.
      batch_tokens: most padded tokens per model call (0: no limit; default
        :data:`DEFAULT_BATCH_TOKENS`, or the class's ``default_batch_tokens``).
    """

    default_batch_tokens = DEFAULT_BATCH_TOKENS

    def __init__(self, name: str, batch_size: int = DEFAULT_BATCH_SIZE,
                 fingerprint: Optional[str] = None,
                 length_model: Optional[Union[str, bytes]] = None,
                 batch_tokens: Optional[int] = None):
        self.name = name
        self.fingerprint = fingerprint or name
        self.batch_size = int(batch_size or 0)
        self.batch_tokens = int(self.default_batch_tokens if batch_tokens is None
                                else batch_tokens)
        self._dim: Optional[int] = None
        self._length_model = length_model
        self._sp = None
        self._sp_loaded = False

    def _vocabulary(self) -> Optional[Union[str, bytes]]:
        """The SentencePiece model giving token counts (None: UTF-8 lengths)."""
        return self._length_model

    def _processor(self):
        if not self._sp_loaded:
            self._sp_loaded = True
            model = self._vocabulary()
            if model:
                import sentencepiece as spm
                proto = model if isinstance(model, bytes) else fileio.read_bytes(model)
                self._sp = spm.SentencePieceProcessor(model_proto=proto)
        return self._sp

    def lengths(self, data: Sequence[bytes]) -> List[int]:
        """Sort keys of the batching policy: token counts, or UTF-8 lengths without a
        vocabulary."""
        sp = self._processor()
        if sp is None:
            return [len(s) for s in data]
        texts = [s.decode("utf-8", errors="replace") for s in data]
        return [len(ids) for ids in sp.encode(texts)]

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        if self._dim is None:
            self._dim = int(self.encode_batch([b""]).shape[1])
        return self._dim

    def encode_batch(self, batch: List[bytes]) -> np.ndarray:
        """One model call: float32 ``[len(batch), D]`` for UTF-8 sentences, in their order."""
        raise NotImplementedError

    def encode(self, sentences: Sequence[Union[str, bytes]],
               batch_size: Optional[int] = None,
               batch_tokens: Optional[int] = None) -> np.ndarray:
        """Float32 ``[len(sentences), D]`` embeddings (str or UTF-8 bytes in).

        Args:
          sentences: the sentences; bytes are passed on unchanged (invalid UTF-8 included).
          batch_size: most sentences per model call (default ``self.batch_size``; 0: one
            call).
          batch_tokens: most padded tokens per model call (default ``self.batch_tokens``;
            0: no limit).
        """
        data = [as_bytes(s) for s in sentences]
        n = len(data)
        if n == 0:
            return np.zeros((0, self._dim if self._dim is not None else self.dim), np.float32)
        size = int(batch_size if batch_size is not None else self.batch_size) or n
        if size < 0:
            raise ValueError(f"batch_size must be positive, got {size}")
        tokens = int(batch_tokens if batch_tokens is not None else self.batch_tokens)
        if size >= n and (not tokens or self._one_call_fits(data, tokens)):
            batches = [np.arange(n)]  # one call needs no order
        else:
            batches = batch_order(self.lengths(data), size, tokens)
        out = None
        for idx in batches:
            vecs = np.asarray(self.encode_batch([data[i] for i in idx]), np.float32)
            if out is None:
                out = np.empty((n, vecs.shape[1]), np.float32)
                self._dim = vecs.shape[1]
            out[idx] = vecs
        return out

    def _one_call_fits(self, data: Sequence[bytes], tokens: int) -> bool:
        """Whether ``data`` fits one call of ``tokens`` padded tokens, judged by UTF-8
        lengths first (an upper bound of token counts) so that small inputs are not
        tokenized just to find that they fit."""
        if len(data) * (max(len(s) for s in data) + SPECIAL_TOKENS) <= tokens:
            return True
        return len(data) * (max(self.lengths(data)) + SPECIAL_TOKENS) <= tokens

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class CallableEmbedder:
    """Adapts a Python callable ``fn(list[str]) -> array-like [N, D]`` to an embedder.

    Example::

        emb = CallableEmbedder(lambda s: teacher(s).numpy(), name="labse")

    Args:
      fn: the function embedding a list of sentences; its output is converted to a
        float32 NumPy array (TensorFlow tensors and lists are fine).
      name: stable model name; it keys the embedding cache, so two different models
        must not share a name.
    """

    def __init__(self, fn: Callable[[List[str]], object], name: str):
        if not callable(fn):
            raise ValueError(f"CallableEmbedder needs a callable, got {type(fn).__name__}")
        if not name:
            raise ValueError("CallableEmbedder needs a non-empty name (it keys the cache)")
        self._fn = fn
        self.name = name
        self._dim: Optional[int] = None

    def encode(self, sentences: List[str]) -> np.ndarray:
        out = self._fn(list(sentences))
        if hasattr(out, "numpy"):
            out = out.numpy()
        out = np.asarray(out, dtype=np.float32)
        if out.ndim == 2 and self._dim is None:
            self._dim = int(out.shape[1])
        return out

    @property
    def dim(self) -> int:
        """The embedding size (learned from the first call; a probe sentence if none yet)."""
        if self._dim is None:
            out = self.encode(["dimension probe"])
            if out.ndim != 2:
                raise ValueError(f"model {self.name!r} returned shape {tuple(out.shape)} for "
                                 "1 sentence; expected [N, D]")
        return self._dim

    def __repr__(self) -> str:
        return f"CallableEmbedder(name={self.name!r})"


def as_embedder(model, name: Optional[str] = None):
    """Returns ``model`` if it already has ``encode`` and ``name``, else wraps a callable.

    Args:
      model: an embedder, or a callable mapping a list of strings to ``[N, D]``.
      name: name for a wrapped callable (default: the callable's ``__name__``).
    """
    if hasattr(model, "encode") and getattr(model, "name", None):
        return model
    if callable(model):
        return CallableEmbedder(model, name or getattr(model, "__name__", "") or repr(model))
    raise ValueError(f"not an embedder or callable: {type(model).__name__}")
