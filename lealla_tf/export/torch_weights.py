"""A ``transformers.BertModel`` holding a :class:`~lealla_tf.models.encoders.LeallaEncoder`'s
weights: what the sentence-transformers and ONNX exports and the inference benchmark's
PyTorch / ONNX Runtime peers run.

Model Garden's ``BertEncoderV2`` is BERT: the same embeddings (word + position + type,
LayerNorm), post-LayerNorm blocks and a dense + tanh pooler; its ``gelu`` is the tanh
approximation (``gelu_pytorch_tanh`` in transformers). Needs torch and transformers
(imported on use)::

    from lealla_tf import runs
    from lealla_tf.export import torch_weights
    cfg, pre, encoder = runs.restore_encoder("runs/tiny")
    model = torch_weights.bert_model(encoder, cfg.model)   # eval mode, pooler included

See docs/export.md, "sentence-transformers and ONNX Runtime".
"""

from __future__ import annotations

from typing import Dict

import numpy as np

from lealla_tf.models import bert_internals

# Our activation names -> transformers' (Model Garden's "gelu" is the tanh approximation).
HF_ACTIVATIONS = {"gelu": "gelu_pytorch_tanh", "relu": "relu"}
# What a float32 BertModel may differ from the TF encoder by on the check batch.
MAX_ABS_DIFF = 1e-4


def hf_config(cfg):
    """The ``transformers.BertConfig`` of a model config's shape (no dropout).

    Raises:
      ValueError: an activation transformers' BERT has no exact twin of.
    """
    from transformers import BertConfig
    if cfg.hidden_act not in HF_ACTIVATIONS:
        raise ValueError(f"hidden_act {cfg.hidden_act!r} has no transformers twin; "
                         f"have {sorted(HF_ACTIVATIONS)}")
    return BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                      num_hidden_layers=cfg.num_layers,
                      num_attention_heads=cfg.num_attention_heads,
                      intermediate_size=cfg.intermediate_size,
                      max_position_embeddings=cfg.max_position_embeddings,
                      type_vocab_size=cfg.type_vocab_size,
                      hidden_act=HF_ACTIVATIONS[cfg.hidden_act],
                      layer_norm_eps=1e-12, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, pad_token_id=0)


def torch_state(encoder, cfg) -> Dict[str, "object"]:
    """``transformers.BertModel`` state dict (torch tensors) holding the weights of our
    ``BertEncoderV2`` (pooler included)."""
    import torch
    bert = encoder.bert
    h = cfg.hidden_size

    def t(x, transpose=False, shape=None):
        a = np.asarray(x.numpy() if hasattr(x, "numpy") else x, np.float32)
        a = a if shape is None else np.reshape(a, shape)
        return torch.from_numpy(np.ascontiguousarray(a.T if transpose else a))

    emb = bert_internals.embedding_variables(bert)
    sd = {
        "embeddings.word_embeddings.weight": t(emb["word_embeddings"]),
        "embeddings.position_embeddings.weight": t(emb["position_embeddings"]),
        "embeddings.token_type_embeddings.weight": t(emb["type_embeddings"]),
        "embeddings.LayerNorm.weight": t(emb["embedding_norm/gamma"]),
        "embeddings.LayerNorm.bias": t(emb["embedding_norm/beta"]),
        "pooler.dense.weight": t(emb["pooler/kernel"], True),
        "pooler.dense.bias": t(emb["pooler/bias"]),
    }
    for i, layer in enumerate(bert.transformer_layers):
        w = bert_internals.block_variables(layer)
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            sd[p + f"attention.self.{name}.weight"] = t(w[name + "/kernel"], True, [h, h])
            sd[p + f"attention.self.{name}.bias"] = t(w[name + "/bias"], shape=[h])
        sd[p + "attention.output.dense.weight"] = t(w["attention_output/kernel"], True, [h, h])
        sd[p + "attention.output.dense.bias"] = t(w["attention_output/bias"])
        sd[p + "attention.output.LayerNorm.weight"] = t(w["attention_norm/gamma"])
        sd[p + "attention.output.LayerNorm.bias"] = t(w["attention_norm/beta"])
        sd[p + "intermediate.dense.weight"] = t(w["intermediate/kernel"], True)
        sd[p + "intermediate.dense.bias"] = t(w["intermediate/bias"])
        sd[p + "output.dense.weight"] = t(w["output/kernel"], True)
        sd[p + "output.dense.bias"] = t(w["output/bias"])
        sd[p + "output.LayerNorm.weight"] = t(w["output_norm/gamma"])
        sd[p + "output.LayerNorm.bias"] = t(w["output_norm/beta"])
    return sd


def bert_model(encoder, cfg, check: bool = True):
    """A ``transformers.BertModel`` (eval mode, with pooler) holding ``encoder``'s weights.

    Args:
      encoder: a built :class:`~lealla_tf.models.encoders.LeallaEncoder`.
      cfg: its model config.
      check: compare both models' sequence and pooled outputs on a random padded batch.

    Raises:
      ValueError: a static encoder (no Transformer to hold).
      RuntimeError: a weight the transfer did not fill, or outputs that differ by more
        than :data:`MAX_ABS_DIFF`.
    """
    from transformers import BertModel
    if not hasattr(encoder, "bert"):
        raise ValueError(f"{type(encoder).__name__} is not a Transformer encoder "
                         "(LeallaEncoder): transformers.BertModel cannot hold it")
    model = BertModel(hf_config(cfg), add_pooling_layer=True).eval()
    missing, unexpected = model.load_state_dict(torch_state(encoder, cfg), strict=False)
    missing = [m for m in missing if "position_ids" not in m and "token_type_ids" not in m]
    if missing or unexpected:
        raise RuntimeError(f"weight transfer incomplete: missing {missing}, extra {unexpected}")
    if check:
        diff = check_bert_model(model, encoder, cfg)
        if diff > MAX_ABS_DIFF:
            raise RuntimeError(f"the transformers BertModel differs from the TF encoder by "
                               f"{diff:.3g} (> {MAX_ABS_DIFF})")
    return model


def check_bert_model(model, encoder, cfg, seed: int = 0) -> float:
    """Largest absolute difference of the sequence (real tokens) and pooled outputs of
    ``model`` and ``encoder`` on a random batch with padding."""
    import torch
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, cfg.vocab_size, (4, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    ids[1, 7:] = 0
    out = encoder({"input_word_ids": ids, "input_mask": mask,
                   "input_type_ids": np.zeros_like(ids)}, training=False)
    with torch.inference_mode():
        ref = model(torch.from_numpy(ids).long(), torch.from_numpy(mask).long(),
                    torch.zeros(ids.shape, dtype=torch.long))
    seq = np.abs(out["sequence_output"].numpy() - ref.last_hidden_state.numpy())
    pooled = np.abs(out["pooled_output"].numpy() - ref.pooler_output.numpy()) \
        if encoder.pooling == "cls" else np.zeros(1)
    return float(max((seq * mask[:, :, None]).max(), pooled.max()))
