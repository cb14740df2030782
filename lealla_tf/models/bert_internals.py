"""The one module that reaches inside Model Garden's ``BertEncoderV2``.

Its private attributes (position, type and embedding-LayerNorm layers, each block's attention
and FFN weights) are read here and nowhere else (``tests/test_architecture.py`` checks it),
so a Model Garden upgrade that renames them breaks this module alone, and its parity tests
say so: the fast forward pass, depth pairs for stacking and growth, zeroed position tables.

Also the tf_keras internals a checkpoint needs: dropout generators and optimizer slots.

See docs/architecture.md, "Layers", and docs/export.md, "Fast inference".
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import tensorflow as tf
import tf_keras
from official.nlp.modeling import networks

# What the fast forward pass is written for: TensorFlow (oneDNN's fused kernels on large
# batches, its plain kernels on few tokens, switched per call), TFLite converters
# (LiteRT/XNNPACK run the plain form of LayerNorm faster), or TensorFlow's few-token form
# alone.
TARGETS = ("tensorflow", "tflite", "tensorflow-small")
# Padded tokens per call (batch x seq) up to which "tensorflow" runs the few-token form:
# the measured crossover on LEALLA-small (benchmarks/RESULTS.md, "Inference speed").
SMALL_INPUT_TOKENS = 256


def fast_bert_forward(bert: networks.BertEncoderV2, inputs: Dict[str, tf.Tensor],
                      int8_rows: Optional[Tuple[tf.Tensor, tf.Tensor]] = None,
                      target: str = "tensorflow",
                      output_range: Optional[int] = None) -> Dict[str, Any]:
    """Inference forward pass of a ``BertEncoderV2`` with plain ``tf.nn`` ops.

    Reads the weights of ``bert`` (so checkpoints and parameter counts are those of
    ``BertEncoderV2``) and computes the same function without Keras layer calls:
    tokens are kept as one ``[batch * seq, hidden]`` matrix, so every projection is a
    single 2-D ``MatMul`` + ``BiasAdd`` (which oneDNN and XNNPACK fuse), Q, K and V come
    from one fused ``[hidden, 3 * hidden]`` matrix (see :func:`_attention` for the
    split into heads). Thin layers (hidden 128-256) spend most of their time outside the matrix
    products, which is what this removes. Dropout is not applied: use it with
    ``training=False`` only.

    Every stage runs under a name scope that profiles group by: ``embeddings``,
    ``layer_<i>/attention`` (QKV, scores, softmax, context, output projection and the
    residual add), ``layer_<i>/attention_norm``, ``layer_<i>/ffn`` (both projections,
    activation, residual add), ``layer_<i>/ffn_norm``.

    Args:
      bert: a built ``BertEncoderV2`` (post-norm, no embedding projection).
      inputs: dict of int32 ``[batch, seq]`` ``input_word_ids``, ``input_mask``,
        ``input_type_ids``.
      int8_rows: optional ``(values, scales)`` of
        :func:`lealla_tf.models.encoders.quantize_rows_int8` used
        instead of the word-embedding table (gathered rows are dequantised).
      target: ``"tensorflow"``: for more than :data:`SMALL_INPUT_TOKENS` padded tokens
        (``batch x seq``), LayerNorms and attention scores in the forms
        TensorFlow fuses into single oneDNN kernels (:func:`fusable_layer_norm`), else
        the ``"tensorflow-small"`` form (ops that stay off oneDNN, whose kernels cost
        40-110 us a call whatever their size: see :func:`_gather_transpose`); one
        ``tf.cond`` per call picks the form. ``"tflite"``: the plain forms, for graphs
        that TFLite converters read (LiteRT runs them about 3% faster end to end, and
        XNNPACK delegates every op of a layer in one partition). All compute the same
        function.
      output_range: as ``BertEncoderV2``'s: the last layer computes only the first
        ``output_range`` positions (at most the inputs' length) as queries, over every
        position's keys and values, so ``sequence_output`` and the last of
        ``encoder_outputs`` are ``[batch, output_range, hidden]``. With 1, what [CLS]
        pooling needs: the last layer's projections, FFN and norms run on one row per
        sentence instead of all of them.

    Returns:
      dict with ``sequence_output``, ``pooled_output`` and ``encoder_outputs`` as
      ``BertEncoderV2`` returns them.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if output_range is not None and int(output_range) < 1:
        raise ValueError(f"output_range must be at least 1, got {output_range}")
    if target != "tensorflow":
        return _forward(bert, inputs, int8_rows, target, output_range)
    tokens = tf.reduce_prod(tf.shape(inputs["input_word_ids"]))
    return tf.cond(tokens <= SMALL_INPUT_TOKENS,
                   lambda: _forward(bert, inputs, int8_rows, "tensorflow-small", output_range),
                   lambda: _forward(bert, inputs, int8_rows, "tensorflow", output_range))


def _forward(bert, inputs, int8_rows, target, output_range):
    """:func:`fast_bert_forward` in one form (``"tensorflow"``: the oneDNN one)."""
    ids = inputs["input_word_ids"]
    shape = tf.shape(ids)
    batch, seq = shape[0], shape[1]
    table = bert.get_embedding_table()
    hidden = int(table.shape[-1])
    with tf.name_scope("embeddings"):
        positions = bert._position_embedding_layer._position_embeddings
        if int8_rows is not None:
            words = (tf.cast(tf.gather(int8_rows[0], ids), tf.float32)
                     * tf.gather(int8_rows[1], ids))
        else:
            words = tf.gather(table, ids)
        x = words + tf.expand_dims(tf.slice(positions, [0, 0], [seq, hidden]), 0)
        x += tf.gather(bert._type_embedding_layer.embeddings, inputs["input_type_ids"])
        x = _normed(tf.reshape(x, [-1, hidden]), bert._embedding_norm_layer, target)
        # Additive mask as in Keras' masked softmax: 0 for tokens, -1e9 for padding.
        mask_bias = (1.0 - tf.cast(inputs["input_mask"], tf.float32)) * -1e9
        mask_bias = tf.reshape(mask_bias, [batch, 1, 1, seq])  # (no new-axis slices: TFLite)
    outputs = []
    last = len(bert.transformer_layers) - 1
    for i, layer in enumerate(bert.transformer_layers):
        with tf.name_scope(f"layer_{i}/attention"):
            queries = None  # every position
            if i == last and output_range is not None:
                queries = int(output_range)  # (static: TFLite delegates static slices)
            x = _attention(x, layer._attention_layer, mask_bias, batch, seq, hidden, target,
                           queries)
        with tf.name_scope(f"layer_{i}/attention_norm"):
            x = _normed(x, layer._attention_layer_norm, target)
        with tf.name_scope(f"layer_{i}/ffn"):
            inner = _project(x, layer._intermediate_dense.kernel, layer._intermediate_dense.bias)
            inner = layer._intermediate_activation_layer(inner)
            x = _residual(x, inner, layer._output_dense.kernel, layer._output_dense.bias)
        with tf.name_scope(f"layer_{i}/ffn_norm"):
            x = _normed(x, layer._output_layer_norm, target)
        outputs.append(x)
    outputs = [tf.reshape(o.value(), [batch, seq, hidden]) for o in outputs[:-1]] + [
        tf.reshape(outputs[-1].value(),
                   [batch, seq if output_range is None else output_range, hidden])]
    with tf.name_scope("pooler"):
        pooled = bert.pooler_layer(outputs[-1][:, 0, :])
    return {"sequence_output": outputs[-1], "pooled_output": pooled,
            "encoder_outputs": outputs}


class _Normed(NamedTuple):
    """A LayerNorm's output ``rows * scale + shift`` (``[tokens, hidden]``), its affine
    step not yet applied (``scale`` ``None``: ``rows`` is the output itself).

    The ``"tflite"`` forward pass keeps every LayerNorm in this form: ``gamma`` and
    ``beta`` are folded into what reads the output, the next projection's weights and
    bias (:func:`_project`) and the residual add (:func:`_residual`), which the TFLite
    converter computes once, into constants. Per LayerNorm that is two passes over the
    tokens fewer (the ``[tokens, hidden]`` scale and shift), for one multiply in the
    residual add. The ``"tensorflow"`` pass applies them (its weights are variables,
    and folding them there costs weight-sized ops in every call: a one-sentence call
    of a 4-layer model took 15% longer)."""
    rows: tf.Tensor
    scale: Optional[tf.Tensor] = None
    shift: Optional[tf.Tensor] = None

    def value(self) -> tf.Tensor:
        if self.scale is None:
            return self.rows
        return self.rows * self.scale + self.shift

    def take(self, fn) -> "_Normed":
        """The same affine over ``fn(rows)`` (row selections)."""
        return _Normed(fn(self.rows), self.scale, self.shift)


def _normed(x: tf.Tensor, norm: tf_keras.layers.LayerNormalization, target: str) -> _Normed:
    """LayerNorm ``norm`` of ``x`` as a :class:`_Normed`: for ``"tflite"`` the normalised
    rows, ``gamma`` and ``beta`` left to the readers; for the TensorFlow forms applied."""
    if target != "tflite":
        return _Normed(layer_norm(x, norm, target))
    with tf.name_scope("layer_norm"):  # (profiles find the embeddings' LayerNorm by it)
        # (batch_normalization's x * inv - mean * inv: written as (x - mean) * inv, int8
        # activations of a full-integer file lost 4% of cosine to the subtraction)
        mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)
        rows = tf.nn.batch_normalization(x, mean, var, None, None, norm.epsilon)
        return _Normed(rows, norm.gamma, norm.beta)


def _project(x: _Normed, kernel: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
    """``x.value() @ kernel + bias`` as one 2-D ``MatMul`` + ``BiasAdd`` on ``x.rows``."""
    if x.scale is not None:
        bias = bias + tf.linalg.matvec(kernel, x.shift, transpose_a=True)
        kernel = kernel * tf.expand_dims(x.scale, 1)
    return tf.nn.bias_add(tf.matmul(x.rows, kernel), bias)


def _residual(x: _Normed, rows: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
    """The residual sum ``x.value() + rows @ kernel + bias``, ``x``'s shift folded into
    the bias: one multiply and one add over the tokens."""
    product = tf.matmul(rows, kernel)
    if x.scale is None:
        return x.rows + tf.nn.bias_add(product, bias)
    return x.rows * x.scale + tf.nn.bias_add(product, bias + x.shift)


def _attention(x: _Normed, att, mask_bias: tf.Tensor, batch, seq, hidden: int,
               target: str = "tensorflow", queries=None) -> tf.Tensor:
    """Multi-head self-attention of ``x`` (``[batch * seq, hidden]`` rows), output
    projection and residual included (:func:`_residual`): ``[batch * seq, hidden]``.

    ``"tensorflow"``: Q/K/V split into heads by one transpose and an unstack, scores as
    ``matmul(q, k^T) * scale + mask`` (one oneDNN kernel); ``"tensorflow-small"``: the
    same off oneDNN (:func:`_gather_transpose`). ``"tflite"``: the scale folded
    into Q's weights, a split and one transpose each, as XNNPACK delegates them all
    (it does not take ``UNPACK``, which would cut its partition in every layer).

    ``queries``: only the first ``queries`` positions of each sentence attend (Model
    Garden's ``output_range``: Q and the residual from those rows, K and V from every
    row); the result is then ``[batch * queries, hidden]``."""
    heads, head_dim = att._num_heads, att._key_dim
    width = heads * head_dim
    scale = 1.0 / math.sqrt(float(head_dim))
    q_scale = scale if target == "tflite" else 1.0
    kernels = [tf.reshape(att._query_dense.kernel, [hidden, width]) * q_scale,
               tf.reshape(att._key_dense.kernel, [hidden, width]),
               tf.reshape(att._value_dense.kernel, [hidden, width])]
    biases = [tf.reshape(att._query_dense.bias, [-1]) * q_scale,
              tf.reshape(att._key_dense.bias, [-1]),
              tf.reshape(att._value_dense.bias, [-1])]

    def heads_of(rows: _Normed, parts, length):
        """``rows @ [W_part ...] + b`` (one 2-D MatMul + BiasAdd) split into heads."""
        kernel = tf.concat([kernels[i] for i in parts], axis=1)
        bias = tf.concat([biases[i] for i in parts], axis=0)
        return _split_heads(_project(rows, kernel, bias), parts, batch, length, heads,
                            head_dim, target)

    if queries is None:
        q, k, v = heads_of(x, (0, 1, 2), seq)  # [B*S, 3*N*d] from one product
    else:
        k, v = heads_of(x, (1, 2), seq)
        x = x.take(lambda r: tf.reshape(tf.reshape(r, [batch, seq, hidden])[:, :queries],
                                        [-1, hidden]))
        (q,) = heads_of(x, (0,), queries)
    length = seq if queries is None else queries
    if target == "tensorflow-small":  # (see _gather_transpose)
        probs = _softmax(_batch_matmul(q, k, adjoint_b=True) * scale + mask_bias)
        context = _gather_transpose(_batch_matmul(probs, v), [0, 2, 1, 3],
                                    [batch, heads, length])
    else:
        if target == "tflite":
            probs = tf.nn.softmax(tf.matmul(q, k) + mask_bias, axis=-1)
        else:
            probs = tf.nn.softmax(tf.matmul(q, k, transpose_b=True) * scale + mask_bias,
                                  axis=-1)
        context = tf.transpose(tf.matmul(probs, v), [0, 2, 1, 3])  # [B, length, N, d]
    context = tf.reshape(context, [-1, width])
    return _residual(x, context, tf.reshape(att._output_dense.kernel, [width, hidden]),
                     att._output_dense.bias)


def _split_heads(t: tf.Tensor, parts, batch, length, heads: int, head_dim: int,
                 target: str) -> List[tf.Tensor]:
    """The ``len(parts)`` projections side by side in ``t`` ``[batch * length, parts * N *
    d]`` as ``[batch, N, length, d]`` each (``parts``: 0 Q, 1 K, 2 V). ``"tensorflow"``:
    one transpose and an unstack (``"tensorflow-small"``: the transpose as a row gather);
    ``"tflite"``: a split and one transpose each, K transposed to ``[batch, N, d, length]``
    for the scores' product."""
    n = len(parts)
    if target == "tflite":
        pieces = tf.split(t, n, axis=1) if n > 1 else [t]
        return [tf.transpose(tf.reshape(piece, [batch, length, heads, head_dim]),
                             [0, 2, 3, 1] if part == 1 else [0, 2, 1, 3])
                for part, piece in zip(parts, pieces)]
    t = tf.reshape(t, [batch, length, n, heads, head_dim])
    if target == "tensorflow-small":
        t = _gather_transpose(t, [2, 0, 3, 1, 4], [batch, length, n, heads])
    else:
        t = tf.transpose(t, [2, 0, 3, 1, 4])
    return tf.unstack(t, n)


# ---------------------------------------------------------------- the few-token form
# TensorFlow runs float32 LayerNorm (fused), Transpose, BatchMatMul(V2) and Softmax on
# oneDNN kernels, which cost 40-110 us a call whatever their size: most of a one-sentence
# call (LEALLA-small, 24 layers: 12 of its 19 ms). The "tensorflow-small" form computes the
# same function with ops that stay on TensorFlow's own kernels (a few us each there):
# LayerNorm from moments, transposes as row gathers, BatchMatMulV3 (which the oneDNN
# rewrite leaves alone), softmax from exp. From about 300 tokens a call (20 sentences of 16
# tokens) the oneDNN kernels win: fast_bert_forward switches per call (SMALL_INPUT_TOKENS).
def _gather_transpose(x: tf.Tensor, perm, dims) -> tf.Tensor:
    """``tf.transpose(x, perm)`` for a ``perm`` that keeps the last axis last, as one
    ``tf.gather`` of ``x``'s rows (TensorFlow's Transpose runs on oneDNN for float32, at
    about 60 us a call; gathering the rows costs a few).

    ``dims``: the sizes of ``x``'s axes but the last (ints or scalar tensors); the row
    indices depend on them alone, the same in every layer."""
    strides = [1] * len(dims)
    for i in range(len(dims) - 2, -1, -1):
        strides[i] = strides[i + 1] * dims[i + 1]
    out = [dims[p] for p in perm[:-1]]
    rows = 0
    for axis, p in enumerate(perm[:-1]):
        shape = [1] * len(out)
        shape[axis] = -1
        rows += tf.reshape(tf.range(out[axis]) * strides[p], shape)
    width = x.shape[-1]
    picked = tf.gather(tf.reshape(x, [-1, width]), tf.reshape(rows, [-1]))
    return tf.reshape(picked, out + [width])


def _batch_matmul(a: tf.Tensor, b: tf.Tensor, adjoint_b: bool = False) -> tf.Tensor:
    """``tf.matmul`` of two float32 batches of matrices as ``BatchMatMulV3``."""
    return tf.raw_ops.BatchMatMulV3(x=a, y=b, Tout=a.dtype, adj_y=adjoint_b)


def _softmax(scores: tf.Tensor) -> tf.Tensor:
    """Softmax over the last axis from ``exp`` (equal to ``tf.nn.softmax``)."""
    e = tf.exp(scores - tf.reduce_max(scores, axis=-1, keepdims=True))
    return e / tf.reduce_sum(e, axis=-1, keepdims=True)


def layer_norm(x: tf.Tensor, norm: tf_keras.layers.LayerNormalization,
               target: str = "tensorflow") -> tf.Tensor:
    """``norm`` (its ``gamma``, ``beta``, ``epsilon``) over the last axis of ``x``, in the
    form for ``target`` (see :func:`fast_bert_forward`)."""
    with tf.name_scope("layer_norm"):  # (profiles find the embeddings' LayerNorm by it)
        if target == "tensorflow" and norm.epsilon > 0:
            return fusable_layer_norm(x, norm)
        mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)
        return tf.nn.batch_normalization(x, mean, var, norm.beta, norm.gamma, norm.epsilon)


# The epsilon TensorFlow's fused oneDNN LayerNorm kernel computes with (see below).
ONEDNN_LAYER_NORM_EPSILON = 1e-3


def fusable_layer_norm(x: tf.Tensor, norm: tf_keras.layers.LayerNormalization) -> tf.Tensor:
    """LayerNorm in the exact subgraph TensorFlow's oneDNN remapper fuses into one
    ``_MklLayerNorm`` kernel (about 4x faster than the ops it replaces at ``[4096, 128]``;
    the graph stays correct, a few ops longer, wherever it is not fused).

    The remapper matches ``x * inv + (beta - inv * mean)`` with ``inv = rsqrt(var + eps)
    * gamma``, ``mean``/``var`` reduced over the last axis written as a non-negative index,
    and constant ``gamma``/``beta``. Two catches:

    - it fuses constant scale and offset only, so the kernel runs with scale 1 and offset
      1 (an offset of 0 is folded into a ``Neg`` first, which breaks the pattern) and the
      layer's own scale and offset, variables, follow: ``y * gamma + (beta - gamma)``;
    - the fused kernel computes with epsilon 1e-3 whatever the graph's epsilon (TF 2.20;
      with LaBSE's 1e-12 and rows of standard deviation 0.002, as a demo student's
      embedding LayerNorm sees, its output was off by up to 3.8). So the input is scaled
      by ``c = sqrt(1e-3 / epsilon)`` and the graph says 1e-3:
      ``LN(c x; 1e-3) = LN(x; epsilon)`` whichever epsilon the kernel uses.
    """
    axis = len(x.shape) - 1
    one = tf.ones([x.shape[-1]], x.dtype)
    x = x * math.sqrt(ONEDNN_LAYER_NORM_EPSILON / norm.epsilon)
    mean = tf.reduce_mean(x, axis, keepdims=True)
    var = tf.reduce_mean(tf.math.squared_difference(x, mean), axis, keepdims=True)
    inv = tf.math.rsqrt(var + ONEDNN_LAYER_NORM_EPSILON) * one
    normalized_plus_one = x * inv + (one - inv * mean)
    return normalized_plus_one * norm.gamma + (norm.beta - norm.gamma)


def depth_pairs(source, target, source_layer, what: str):
    """``(target_variable, source_variable)`` pairs between two ``LeallaEncoder``s that
    differ only in depth: target layer ``j`` from source layer ``source_layer(j)`` (``None``:
    no source, left out), every other encoder variable (embeddings, their LayerNorm, pooler)
    from the same variable of the source. Used by progressive stacking and by growth.

    Raises:
      ValueError: prefixed with ``what``, when the encoders differ beyond their depth or a
        pair's shapes differ.
    """
    s_layers, t_layers = source.bert.transformer_layers, target.bert.transformer_layers
    pairs = []
    for j, layer in enumerate(t_layers):
        i = source_layer(j)
        if i is not None:
            pairs += list(zip(layer.weights, s_layers[i].weights))
    in_t = {id(w) for layer in t_layers for w in layer.weights}
    in_s = {id(w) for layer in s_layers for w in layer.weights}
    rest_t = [w for w in target.weights if id(w) not in in_t]
    rest_s = [w for w in source.weights if id(w) not in in_s]
    if len(rest_t) != len(rest_s):
        raise ValueError(f"{what}: the encoders differ beyond their depth")
    pairs += list(zip(rest_t, rest_s))
    check_pair_shapes(pairs, what)
    return pairs


def check_pair_shapes(pairs, what: str) -> None:
    """Raises ``ValueError`` (prefixed with ``what``) for the first ``(target, source)``
    pair of variables whose shapes differ."""
    for t, s in pairs:
        if t.shape != s.shape:
            raise ValueError(f"{what}: {t.name} {t.shape} cannot start from {s.name} "
                             f"{s.shape}")


def stack_pairs(source, target) -> List[Tuple[tf.Variable, tf.Variable]]:
    """``(target_variable, source_variable)`` for progressive stacking: target layer ``j``
    from source layer ``j mod n``; every other encoder variable (embeddings, their
    LayerNorm, pooler) and the MLM head from the same variable of the source.

    Args:
      source, target: ``(encoder, pretrainer)`` of the smaller and the larger stage.
    """
    (s_enc, s_pre), (t_enc, t_pre) = source, target
    n = len(s_enc.bert.transformer_layers)
    pairs = depth_pairs(s_enc, t_enc, lambda j: j % n, "stacking")
    # The MLM head, less what it shares with the encoder (the tied embedding table).
    in_t, in_s = {id(w) for w in t_enc.weights}, {id(w) for w in s_enc.weights}
    head_t = [w for w in t_pre.masked_lm.weights if id(w) not in in_t]
    head_s = [w for w in s_pre.masked_lm.weights if id(w) not in in_s]
    if len(head_t) != len(head_s):
        raise ValueError("stacking: the stages' MLM heads differ")
    head = list(zip(head_t, head_s))
    check_pair_shapes(head, "stacking")
    pairs += head
    return pairs


def grow_encoder(target, source, position: str = "top") -> None:
    """Fills the deeper encoder ``target`` from ``source`` so that both compute the same
    function (function-preserving depth growth, as Net2DeeperNet, Chen et al., ICLR 2016;
    LaBSE grows its encoder by progressive stacking instead, which does not preserve it).

    Both are post-norm ``LeallaEncoder``s of the same width. The source's layers are copied
    in order, after (``"top"``) or before (``"bottom"``) the new ones; every other weight
    (embeddings, their LayerNorm, pooler) is copied as it is. A new block is an identity:
    its attention and FFN output projections (kernels and biases) are zero, so it returns
    ``LayerNorm(x)``, which is ``x`` when ``x`` is already normalised with scale 1 and shift
    0. So the LayerNorm just below the new blocks (the embeddings' for ``"bottom"``, the
    last source layer's for ``"top"``) keeps scale 1 and shift 0, and its learned scale and
    shift move to the last new block's output LayerNorm. The new blocks' other weights
    (Q, K, V, FFN input) keep their random initial values: their gradients flow as soon as
    the output projections leave zero.

    Raises:
      ValueError: the encoders differ beyond their depth, or ``target`` is shallower.
    """
    if position not in ("top", "bottom"):
        raise ValueError(f"position must be top or bottom, got {position!r}")
    t_layers = target.bert.transformer_layers
    n, total = len(source.bert.transformer_layers), len(t_layers)
    if total < n:
        raise ValueError(f"cannot grow a {n}-layer encoder into {total} layers")
    offset = total - n if position == "bottom" else 0
    pairs = depth_pairs(source, target,
                        lambda j: j - offset if offset <= j < offset + n else None,
                        "grow")
    for t, s in pairs:
        t.assign(s)
    new = [t_layers[i] for i in range(total) if not offset <= i < offset + n]
    if not new:
        return
    for layer in new:
        att = layer._attention_layer
        for v in (att._output_dense.kernel, att._output_dense.bias,
                  layer._output_dense.kernel, layer._output_dense.bias):
            v.assign(tf.zeros_like(v))
        for norm in (layer._attention_layer_norm, layer._output_layer_norm):
            norm.gamma.assign(tf.ones_like(norm.gamma))
            norm.beta.assign(tf.zeros_like(norm.beta))
    below = (target.bert._embedding_norm_layer if position == "bottom"
             else t_layers[n - 1]._output_layer_norm)
    last = new[-1]._output_layer_norm
    last.gamma.assign(below.gamma)
    last.beta.assign(below.beta)
    below.gamma.assign(tf.ones_like(below.gamma))
    below.beta.assign(tf.zeros_like(below.beta))


def grow_from_static(target, table: tf.Tensor) -> None:
    """Makes the post-norm ``LeallaEncoder`` ``target`` (mean pooling) start as a static
    student with word-embedding ``table``: the table copied, position and token-type tables
    zero, every block an identity (as in :func:`grow_encoder`: output projections zero,
    LayerNorms scale 1 and shift 0), and the embeddings' LayerNorm scale 1 and shift 0.

    The encoder then returns the mean of ``LayerNorm(row)`` over the tokens, where the static
    student returns the mean of the rows: the same up to each row's centring and scale, so
    training starts near the static student instead of from noise.

    Raises:
      ValueError: the table's shape is not the target's.
    """
    bert = target.bert
    words = bert.get_embedding_table()
    if tuple(words.shape) != tuple(table.shape):
        raise ValueError(f"the static table is {tuple(table.shape)}, the encoder's "
                         f"{tuple(words.shape)}")
    words.assign(tf.cast(table, words.dtype))
    zero_position_and_type_tables(bert)
    norms = [bert._embedding_norm_layer]
    for layer in bert.transformer_layers:
        att = layer._attention_layer
        for v in (att._output_dense.kernel, att._output_dense.bias,
                  layer._output_dense.kernel, layer._output_dense.bias):
            v.assign(tf.zeros_like(v))
        norms += [layer._attention_layer_norm, layer._output_layer_norm]
    for norm in norms:
        norm.gamma.assign(tf.ones_like(norm.gamma))
        norm.beta.assign(tf.zeros_like(norm.beta))


def embedding_variables(bert: networks.BertEncoderV2) -> Dict[str, tf.Variable]:
    """The variables of ``bert`` outside its Transformer blocks, by role:
    ``word_embeddings``, ``position_embeddings``, ``type_embeddings``,
    ``embedding_norm/gamma``, ``embedding_norm/beta``, ``pooler/kernel``, ``pooler/bias``."""
    norm, pooler = bert._embedding_norm_layer, bert.pooler_layer
    return {"word_embeddings": bert.get_embedding_table(),
            "position_embeddings": bert._position_embedding_layer._position_embeddings,
            "type_embeddings": bert._type_embedding_layer.embeddings,
            "embedding_norm/gamma": norm.gamma, "embedding_norm/beta": norm.beta,
            "pooler/kernel": pooler.kernel, "pooler/bias": pooler.bias}


def block_variables(layer) -> Dict[str, tf.Variable]:
    """The variables of one ``TransformerEncoderBlock`` by role: ``<part>/kernel`` and
    ``<part>/bias`` of ``query``, ``key``, ``value``, ``attention_output``,
    ``intermediate`` and ``output``; ``<norm>/gamma`` and ``<norm>/beta`` of
    ``attention_norm`` and ``output_norm``. Shapes are Keras' (the attention's per head)."""
    att = layer._attention_layer
    dense = {"query": att._query_dense, "key": att._key_dense, "value": att._value_dense,
             "attention_output": att._output_dense, "intermediate": layer._intermediate_dense,
             "output": layer._output_dense}
    norms = {"attention_norm": layer._attention_layer_norm,
             "output_norm": layer._output_layer_norm}
    out = {f"{part}/{w}": getattr(d, w) for part, d in dense.items() for w in ("kernel", "bias")}
    out.update({f"{part}/{w}": getattr(n, w) for part, n in norms.items()
                for w in ("gamma", "beta")})
    return out


def zero_position_and_type_tables(bert: networks.BertEncoderV2) -> None:
    """Sets the position and the token-type embedding tables of ``bert`` to zero."""
    for table in (bert._position_embedding_layer._position_embeddings,
                  bert._type_embedding_layer.embeddings):
        table.assign(tf.zeros_like(table))


# ---------------------------------------------------------------- dropout state
@contextlib.contextmanager
def tracked_dropout():
    """Dropout layers built inside draw from ``tf.random.Generator`` variables, whose state
    a checkpoint can hold (:func:`dropout_rng`): a resumed run then draws the masks an
    uninterrupted run would (Keras' default stateful ops restart their streams)."""
    was_enabled = tf_keras.backend.experimental.is_tf_random_generator_enabled()
    tf_keras.backend.experimental.enable_tf_random_generator()
    try:
        yield
    finally:
        if not was_enabled:
            tf_keras.backend.experimental.disable_tf_random_generator()


def dropout_rng(model: tf.Module) -> tf.Module:
    """The dropout generators of ``model``'s layers, for the checkpoint (Keras does not
    track them itself)."""
    rng = tf.Module(name="dropout_rng")
    rng.generators = [
        layer._random_generator._generator for layer in model.submodules
        if getattr(getattr(layer, "_random_generator", None), "_generator", None)
        is not None]
    return rng


# ---------------------------------------------------------------- optimizer state
def create_slots(optimizer, variables) -> None:
    """Creates the optimizer's slot variables for ``variables`` now (tf_keras builds them
    lazily at the first update), so a checkpoint can be restored into them or copied to
    them before any step (a loss-scale wrapper is looked through)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    inner._create_all_weights(variables)
