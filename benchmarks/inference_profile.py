"""Where the inference time of an export goes, stage by stage, in one run and three tables.

The model is an export folder (``lealla export``: ``lealla/``, ``preprocessor/``,
``encoder/``, ``lealla-fp32.tflite``, ``lealla-int8.tflite``), or, with ``--shape``, a
random-weight export of a config shape (e.g. ``lealla_small``) written to a temporary
folder. The sentences are real Tatoeba sentences (all languages), sorted by token count
and cut into batches by ``lealla_tf.embedders.batch_order`` (``--batch-size``, and the
``--batch-tokens`` budget where ``batch_order`` takes one), as the embedders batch them.

TensorFlow (the ``lealla/`` SavedModel), from TF step stats: the ``serving_default``
signature runs in a ``tf.compat.v1.Session`` with ``FULL_TRACE``; every executed node's
``op_end_rel_micros - op_start_rel_micros`` is summed per stage, by the node's name scope
(the forward pass runs under ``embeddings``, ``layer_<i>/attention``,
``layer_<i>/attention_norm``, ``layer_<i>/ffn``, ``layer_<i>/ffn_norm``, ``pooler``,
``pooling``, ``normalize``; the preprocessor's TF Text tokenizer op is *tokenize*, the rest
of the preprocessor *pack*). Grappler and oneDNN fuse ops (``MatMul + BiasAdd + Gelu`` is
one ``_MklNativeFusedMatMul`` named after the pattern's last op), so nodes are classified by
scope, then, within attention and FFN, matrix products (2-D ``MatMul`` /
``_MklNativeFusedMatMul``; ``BatchMatMul`` for attention scores and context) against the
rest. Nodes whose value does not depend on the input (variable reads, the QKV weight
concatenation recomputed per call) form their own row. *Outside the graph* is the wall time
of a plain TF2 call loop (``tf.saved_model.load``, one signature call per batch) minus the
summed op times: Python, dispatch, string conversion and the
executor's own overhead (negative where tracing lengthens the op times by more than that;
the untraced and traced session loops are printed to judge it).

TFLite (``lealla-fp32.tflite``, ``lealla-int8.tflite``; LiteRT with XNNPACK and TF Text's
ops, as ``lealla_tf.embedders.artifacts.tflite_interpreter`` builds it): LiteRT's Python
package has no op profiler (the ``Interpreter`` wrapper exposes none; ``CompiledModel``'s
options have no profiling switch and cannot run TF Text's custom ops; the
``profiling_info_pb2`` / ``model_runtime_info_pb2`` modules are only the message formats of
the C++ benchmark tool), and XNNPACK would fold the encoder into delegate nodes anyway.
So stages come from differences of ``Interpreter.invoke`` times of LiteRT models built
here from the export's own vocabulary and weights:

- the end-to-end file as exported (strings in);
- *tokenize*: a TFLite of the tokenizer alone (strings -> ragged ids);
- *pack*: a TFLite of the preprocessor (tokenize and pack, dynamic length) minus tokenize;
- the encoder alone on the packed ids (token ids in, as the file converts it: mean/variance
  LayerNorms; fp32, or dynamic-range int8 like the int8 file), and the same encoder cut to
  one layer: per layer = (L layers - 1 layer) / (L - 1); embeddings + pooling +
  normalization = 1 layer - per layer;
- matrix products: a TFLite holding one layer's products alone (QKV, output projection, the
  two FFN projections with their biases, attention scores and context), resized to every
  batch's shape, x L;
- the rest of the end-to-end time (the custom-op boundary, re-planning the dynamic shapes
  inside ``invoke``): end-to-end - preprocessor - encoder.

*Outside the graph* there is the Python loop (strings to a NumPy array, resize, allocate,
set and get tensors) minus the ``invoke`` times.

Every measurement is the best of ``--repeats`` passes over all batches, after a warm-up
pass, and the passes run round-robin (TF: untraced session, traced session, TF2 loop;
TFLite: every model above in turn), so that load from elsewhere on a shared machine falls
on all of them alike: stages are differences of these times.

FLOPs per sentence come from the shape and the real (padded) batch shapes: projections
``2 (4 h^2 + 2 h f)`` per token and layer, attention scores and context ``4 S h`` per token
and layer. The same run times a 2048^3 fp32 matrix product with TF and with LiteRT/XNNPACK
(``benchmarks.inference_speed``); each path's GFLOP/s are set against the faster (products
with int8 weights can pass this fp32 limit).

    LEALLA_DATA_DIR=/path/to/data python -m benchmarks.inference_profile \\
        --export results/demo/export
    python -m benchmarks.inference_profile --shape lealla_small --sentences 1000

The CPU/TF/LiteRT line of ``lealla_tf.hardware`` comes first and above the tables. The
machine may be shared: compare shares within one run.
"""

from __future__ import annotations

import argparse
import collections
import inspect
import json
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

import numpy as np  # noqa: E402

DEFAULT_EXPORT = os.path.join(_ROOT, "results", "demo", "export")
VARIANTS = ("fp32", "int8")

# TensorFlow stages, in table order.
TF_STAGES = (
    ("tokenize", "tokenize (TF Text op)"),
    ("pack", "pack (rest of the preprocessor)"),
    ("embeddings", "embeddings (gathers, sums)"),
    ("attn_proj", "attention: projections (QKV, output)"),
    ("attn_core", "attention: scores/softmax/context"),
    ("attn_residual", "attention: residual add"),
    ("norms", "LayerNorms (all)"),
    ("ffn_mm", "FFN: matmuls (+ fused bias/GELU/add)"),
    ("ffn_other", "FFN: other"),
    ("pooling", "pooling (+ pooler)"),
    ("normalize", "normalize"),
    ("weights", "weight reads/prep (input-independent)"),
    ("unclassified", "other (in the graph, no stage scope)"),
    ("outside", "outside the graph (wall - ops)"),
)
TFLITE_STAGES = (
    ("tokenize", "tokenize", "tokenizer-only TFLite"),
    ("pack", "pack", "preprocessor TFLite - tokenizer"),
    ("emb_pool", "embeddings + pooling + normalize", "1-layer encoder - per layer"),
    ("layer_mm", "layers: matrix products", "matmul-only TFLite x L"),
    ("layer_other", "layers: everything else", "L x per layer - matmuls"),
    ("boundary", "custom-op boundary, dynamic re-planning",
     "end-to-end - preprocessor - encoder"),
    ("outside", "outside the graph (Python loop - invoke)", "loop - invoke"),
)
MATMUL_OPS = ("MatMul", "_MklMatMul", "_MklNativeMatMul", "_FusedMatMul", "_MklFusedMatMul",
              "_MklNativeFusedMatMul")
_LAYER_SCOPE = re.compile(r"(?:^|/)layer_(\d+)/(attention_norm|attention|ffn_norm|ffn)(?:/|$)")
_SCOPE = re.compile(r"(?:^|/)(embeddings|pooler|pooling|normalize)(?:/|$)")
_PREPROCESSOR = re.compile(r"(?:^|/)preprocessor(?:_\d+)?(?:/|$)")
_OP = re.compile(r"= ([^(\s]+)\(")


# ----------------------------------------------------------------------------- inputs


def batch_order(keys: Sequence[int], batch_size: int, batch_tokens: int = 0):
    """``lealla_tf.embedders.batch_order``, passing ``batch_tokens`` where it takes one."""
    from lealla_tf import embedders
    if takes_batch_tokens():
        return embedders.batch_order(keys, batch_size, batch_tokens=batch_tokens or None)
    return embedders.batch_order(keys, batch_size)


def takes_batch_tokens() -> bool:
    """Whether ``embedders.batch_order`` takes a ``batch_tokens`` budget."""
    from lealla_tf import embedders
    return "batch_tokens" in inspect.signature(embedders.batch_order).parameters


def sentence_batches(sentences: Sequence[str], vocab: str, batch_size: int,
                     batch_tokens: int = 0) -> List[List[bytes]]:
    """UTF-8 sentence batches, longest first, as the embedders cut them."""
    from benchmarks import inference_speed
    keys = inference_speed.token_counts(sentences, vocab)
    data = [s.encode("utf-8") for s in sentences]
    return [[data[i] for i in idx] for idx in batch_order(keys, batch_size, batch_tokens)]


# ----------------------------------------------------------------------------- the export


def export_vocab(export_dir: str) -> str:
    """The SentencePiece model of an export (its ``lealla/`` SavedModel's asset)."""
    from lealla_tf import layout
    path = os.path.join(export_dir, layout.LEALLA, layout.ASSET_VOCAB)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: the profile needs a SentencePiece export")
    return path


def rebuild(export_dir: str):
    """``(info, preprocessor, encoder)``: the export's ``export_info.json`` dict, its
    preprocessor (the vocabulary asset) and its encoder rebuilt in memory with the
    ``encoder/`` SavedModel's weights (what the TFLite pieces are converted from)."""
    import tensorflow as tf

    from lealla_tf import layout
    from lealla_tf.models import encoders
    from lealla_tf.text import sentencepiece
    with open(os.path.join(export_dir, layout.INFO_FILE), encoding="utf-8") as f:
        info = json.load(f)
    model = info["model"]
    if "num_layers" not in model:
        raise ValueError(f"{export_dir}: not a Transformer export (no num_layers)")
    params = inspect.signature(encoders.LeallaEncoder.__init__).parameters
    kwargs = {k: v for k, v in model.items() if k in params and k not in ("self", "initializer")}
    encoder = encoders.LeallaEncoder(name=model.get("name", "encoder"), **kwargs)
    encoder(encoder.dummy_inputs())
    source = tf.saved_model.load(os.path.join(export_dir, layout.ENCODER)).variables
    if [tuple(v.shape) for v in source] != [tuple(v.shape) for v in encoder.variables]:
        raise ValueError(f"{export_dir}: the encoder's variables do not match the shape in "
                         f"{layout.INFO_FILE}")
    for dst, src in zip(encoder.variables, source):
        dst.assign(src)
    if model.get("int8_word_embeddings"):
        encoder.set_int8_word_embeddings(True)
    pre = sentencepiece.Preprocessor(export_vocab(export_dir), seq_length=model["seq_length"])
    return info, pre, encoder


def write_shape_export(shape: str, vocab: str, out: str, seed: int = 0) -> str:
    """A random-weight export of config ``shape`` (the vocabulary decides token lengths)."""
    import tf_keras

    from benchmarks import inference_speed
    from lealla_tf import export
    from lealla_tf.models import encoders
    from lealla_tf.text import sentencepiece
    tf_keras.utils.set_random_seed(seed)
    encoder = encoders.LeallaEncoder.from_model_config(inference_speed.model_cfg(shape))
    encoder(encoder.dummy_inputs())
    pre = sentencepiece.Preprocessor(vocab, seq_length=inference_speed.SEQ_LENGTH)
    export.export_model(pre, encoder, out, tflite=VARIANTS, progress=False)
    return out


def packed_batches(pre, batches) -> List[Dict[str, np.ndarray]]:
    """The encoder inputs of every batch (dynamic length, as the end-to-end model packs)."""
    import tensorflow as tf

    from lealla_tf.models import encoders
    out = []
    for b in batches:
        d = pre(tf.constant(b), dynamic_length=True)
        out.append({k: d[k].numpy().astype(np.int32) for k in encoders.INPUT_KEYS})
    return out


# ----------------------------------------------------------------------------- TensorFlow


def _graph_facts(partition_graphs):
    """``{node: (op, input_dependent, residual)}`` of the executed graph: whether the node's
    value depends on a fed input (``_Arg``), and whether it is an add reading a 2-D matrix
    product (a residual add, as opposed to the attention mask's add)."""
    ops, consumers, inputs = {}, collections.defaultdict(list), {}
    for g in partition_graphs:
        for node in g.node:
            ops[node.name] = node.op
            inputs[node.name] = [i.split(":")[0] for i in node.input if not i.startswith("^")]
            for i in inputs[node.name]:
                consumers[i].append(node.name)
    seen = {n for n, op in ops.items() if op in ("_Arg", "Placeholder")}
    stack = list(seen)
    while stack:
        for c in consumers[stack.pop()]:
            if c not in seen:
                seen.add(c)
                stack.append(c)
    return {n: (op, n in seen, op in ("Add", "AddV2") and
                any(ops.get(i) in MATMUL_OPS for i in inputs[n]))
            for n, op in ops.items()}


def _layer_stage(part: str, op: str, residual: bool) -> str:
    if part in ("attention_norm", "ffn_norm"):
        return "norms"
    matmul = op in MATMUL_OPS
    if part == "ffn":
        return "ffn_mm" if matmul else "ffn_other"
    if matmul:
        return "attn_proj"
    return "attn_residual" if residual else "attn_core"


def classify_node(name: str, op: str, input_dependent: bool = True,
                  residual: bool = False) -> str:
    """The stage of one executed node (see ``TF_STAGES``), from its name scope and op."""
    if not input_dependent:
        return "weights"
    m = _LAYER_SCOPE.search(name)
    if m:
        return _layer_stage(m.group(2), op, residual)
    m = _SCOPE.search(name)
    if m:
        scope = m.group(1)
        if scope == "embeddings" and any(f"/{part}/" in name for part in
                                         ("moments", "batchnorm", "layer_norm")):
            return "norms"
        return "pooling" if scope == "pooler" else scope
    if _PREPROCESSOR.search(name):
        return "tokenize" if "Tokenize" in op or op.startswith("TFText>") else "pack"
    return "unclassified"


def _traced_pass(sess, fetch, feed, batches, facts):
    """Summed op microseconds of one traced pass: ``(per stage, matmul split, layers,
    per (stage, op type))``."""
    import tensorflow as tf
    stages, split, layers = collections.Counter(), collections.Counter(), set()
    cells = collections.Counter()
    for b in batches:
        opts = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE,
                                       output_partition_graphs=not facts)
        md = tf.compat.v1.RunMetadata()
        sess.run(fetch, {feed: b}, options=opts, run_metadata=md)
        if not facts:
            facts.update(_graph_facts(md.partition_graphs))
        for dev in md.step_stats.dev_stats:
            for ns in dev.node_stats:
                us = ns.op_end_rel_micros - ns.op_start_rel_micros
                m = _OP.search(ns.timeline_label or "")
                op, dep, residual = facts.get(ns.node_name, (m.group(1) if m else "", True,
                                                             False))
                stage = classify_node(ns.node_name, op, dep, residual)
                stages[stage] += us
                cells[stage, op] += us
                if stage.startswith(("attn", "ffn")):
                    kind = ("matmul" if op in MATMUL_OPS else
                            "batch_matmul" if "BatchMatMul" in op else "other")
                    split[kind] += us
                lm = _LAYER_SCOPE.search(ns.node_name)
                if lm and dep:
                    layers.add(int(lm.group(1)))
    return stages, split, layers, cells


def _tf2_loop(saved_model_dir: str, batches):
    """A function timing one TF2 call loop over ``batches``: ``tf.saved_model.load``, one
    signature call per batch, the strings converted per call (as an embedder does)."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401

    from lealla_tf import export
    sig = tf.saved_model.load(saved_model_dir).signatures[export.SIGNATURE]

    def loop() -> float:
        t = time.perf_counter()
        for b in batches:
            sig(**{export.INPUT_KEY: tf.constant(b)})[export.OUTPUT_KEY].numpy()
        return time.perf_counter() - t
    return loop


def _session_loop(sess, fetch, feed, batches) -> float:
    t = time.perf_counter()
    for b in batches:
        sess.run(fetch, {feed: b})
    return time.perf_counter() - t


def tf_op_profile(saved_model_dir: str, batches, threads: int = 2, repeats: int = 3) -> dict:
    """Op time per stage of the SavedModel's ``serving_default`` from TF step stats, and
    the wall times it is set against, over all ``batches``.

    After a warm-up, each of ``repeats`` rounds runs, in turn, an untraced pass through a
    ``tf.compat.v1.Session``, a traced pass (``FULL_TRACE``) and a TF2 call loop (the
    rounds interleave them, so that load from elsewhere on a shared machine falls on all
    three alike); the best of each is kept (the traced pass with the least op time).

    Returns ``{"stages_us", "matmul_split_us", "layers", "ops_us", "op_types_us",
    "session_s", "session_traced_s", "wall_s"}``.
    """
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the tokenizer's ops)

    from lealla_tf import export
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads,
                                      inter_op_parallelism_threads=1)
    graph = tf.Graph()
    with graph.as_default():
        sess = tf.compat.v1.Session(graph=graph, config=config)
        meta = tf.compat.v1.saved_model.load(sess, ["serve"], saved_model_dir)
    try:
        sig = meta.signature_def[export.SIGNATURE]
        feed = sig.inputs[export.INPUT_KEY].name
        fetch = sig.outputs[export.OUTPUT_KEY].name
        tf2 = _tf2_loop(saved_model_dir, batches)
        _session_loop(sess, fetch, feed, batches)
        tf2()
        facts, best, untraced, traced, wall = {}, None, [], [], []
        for _ in range(repeats):
            untraced.append(_session_loop(sess, fetch, feed, batches))
            t = time.perf_counter()
            one = _traced_pass(sess, fetch, feed, batches, facts)
            traced.append(time.perf_counter() - t)
            if best is None or sum(one[0].values()) < sum(best[0].values()):
                best = one
            wall.append(tf2())
    finally:
        sess.close()
    stages, split, layers, cells = best
    return {"stages_us": dict(stages), "matmul_split_us": dict(split),
            "layers": sorted(layers), "ops_us": float(sum(stages.values())),
            "op_types_us": [[k[0], k[1], us] for k, us in cells.most_common()],
            "session_s": min(untraced), "session_traced_s": min(traced), "wall_s": min(wall)}


def tf_profile(saved_model_dir: str, batches, threads: int = 2, repeats: int = 3) -> dict:
    """Stages of the TensorFlow path: op times (step stats) and the TF2 wall time.

    Returns ``{"stages_ms": {stage: ms}, "total_ms", "ops_ms", "wall_ms", "session_ms"
    (the same batches through the v1 session, untraced), "session_traced_ms",
    "matmul_split_ms", "layers", "unclassified_share", "op_types_ms"}``: ``outside`` is
    wall - ops, so the stages sum to ``total_ms`` = the wall time (``outside`` is negative
    where tracing lengthens the op times by more than the overhead outside the graph).
    """
    ops = tf_op_profile(saved_model_dir, batches, threads, repeats)
    wall_ms = 1e3 * ops["wall_s"]
    stages = {k: ops["stages_us"].get(k, 0) / 1e3 for k, _ in TF_STAGES if k != "outside"}
    ops_ms = ops["ops_us"] / 1e3
    stages["outside"] = wall_ms - ops_ms
    total = sum(stages.values())
    return {"stages_ms": stages, "total_ms": total, "ops_ms": ops_ms, "wall_ms": wall_ms,
            "session_ms": 1e3 * ops["session_s"], "session_traced_ms": 1e3 * ops["session_traced_s"],
            "matmul_split_ms": {k: v / 1e3 for k, v in ops["matmul_split_us"].items()},
            "layers": ops["layers"], "unclassified_share": stages["unclassified"] / total,
            "op_types_ms": [[st, op, us / 1e3] for st, op, us in ops["op_types_us"]]}


# ----------------------------------------------------------------------------- TFLite


def _convert(fn, trackable=None, int8: bool = False, custom_ops: bool = False) -> bytes:
    import tensorflow as tf
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()],
                                                           trackable)
    if custom_ops:  # TF Text's tokenizer ops stay custom ops (no Flex delegate)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        conv.allow_custom_ops = True
    if int8:  # dynamic range, as the int8 export
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    return conv.convert()


def preprocessor_tflite(pre, tokenize_only: bool = False) -> bytes:
    """The preprocessor as the end-to-end model runs it (strings -> packed ids, dynamic
    length), or its tokenizer alone (strings -> ragged ids' values and row splits)."""
    import tensorflow as tf

    from lealla_tf import export

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=export.INPUT_KEY)])
    def serve(sentences):
        if tokenize_only:
            tokens = pre.tokenize(sentences)
            return {"values": tokens.flat_values, "row_splits": tokens.row_splits}
        return dict(pre(sentences, dynamic_length=True))
    return _convert(serve, pre, custom_ops=True)


def encoder_tflite(encoder, int8: bool = False) -> bytes:
    """The encoder alone (token ids in, normalised embedding out), traced as the TFLite
    export traces it."""
    from benchmarks.inference_speed import token_id_serving
    with encoder.tflite_forward():
        serve = token_id_serving(encoder)
        serve.get_concrete_function()
        return _convert(serve, encoder, int8=int8)


def cut_encoder(encoder, num_layers: int = 1):
    """An encoder of the same shape with ``num_layers`` layers (random weights: the
    speed of a layer does not depend on its values)."""
    from lealla_tf.models import encoders
    config = dict(encoder.get_config(), num_layers=num_layers)
    config.pop("name", None)
    cut = encoders.LeallaEncoder(**config)
    cut(cut.dummy_inputs())
    return cut


def matmul_tflite(hidden: int, ffn: int, heads: int, int8: bool = False) -> bytes:
    """One layer's matrix products alone, with their shapes: ``qkv``, ``out``, ``ffn_in``,
    ``ffn_out`` (2-D, constant weights and biases: FULLY_CONNECTED) and ``scores``,
    ``context`` (BATCH_MATMUL of activations); every dimension but the weights' dynamic."""
    import tensorflow as tf
    rng = np.random.default_rng(0)
    head = hidden // heads

    def const(*shape):
        return tf.constant(rng.standard_normal(shape).astype(np.float32) * 0.05)
    w = {"qkv": (const(hidden, 3 * hidden), const(3 * hidden)),
         "out": (const(hidden, hidden), const(hidden)),
         "ffn_in": (const(hidden, ffn), const(ffn)), "ffn_out": (const(ffn, hidden), const(hidden))}
    specs = [tf.TensorSpec([None, hidden], tf.float32, name="x"),
             tf.TensorSpec([None, ffn], tf.float32, name="inner"),
             tf.TensorSpec([None, heads, None, head], tf.float32, name="q"),
             tf.TensorSpec([None, heads, head, None], tf.float32, name="kt"),
             tf.TensorSpec([None, heads, None, None], tf.float32, name="probs"),
             tf.TensorSpec([None, heads, None, head], tf.float32, name="v")]

    @tf.function(input_signature=specs)
    def serve(x, inner, q, kt, probs, v):
        out = {k: tf.nn.bias_add(tf.matmul(inner if k == "ffn_out" else x, kw), b)
               for k, (kw, b) in w.items()}
        out.update(scores=tf.matmul(q, kt), context=tf.matmul(probs, v))
        return out
    return _convert(serve, tf.Module(), int8=int8)


def matmul_feeds(shapes, hidden: int, ffn: int, heads: int):
    """Inputs of :func:`matmul_tflite` for ``(batch, seq)`` shapes."""
    rng = np.random.default_rng(1)
    head = hidden // heads

    def arr(*shape):
        return rng.standard_normal(shape).astype(np.float32)
    return [{"x": arr(b * s, hidden), "inner": arr(b * s, ffn), "q": arr(b, heads, s, head),
             "kt": arr(b, heads, head, s), "probs": arr(b, heads, s, s),
             "v": arr(b, heads, s, head)} for b, s in shapes]


class TFLiteTimer:
    """``Interpreter.invoke`` times of one LiteRT model over a list of feeds
    (XNNPACK, TF Text's ops registered: ``lealla_tf.export.tflite_interpreter``)."""

    def __init__(self, content: Optional[bytes] = None, path: Optional[str] = None,
                 threads: int = 2):
        from lealla_tf import export
        self.interp = export.tflite_interpreter(model_path=path, model_content=content,
                                                num_threads=threads)
        runner = self.interp.get_signature_runner()
        self.inputs = {k: d["index"] for k, d in runner.get_input_details().items()}
        self.outputs = [d["index"] for d in runner.get_output_details().values()]

    def _one(self, feed) -> float:
        """Invoke seconds of one feed (a dict of input name -> array, or a list of
        strings for a single string input)."""
        if not isinstance(feed, dict):
            (name,) = self.inputs
            feed = {name: np.array(feed, dtype=object)}
        for k, a in feed.items():
            self.interp.resize_tensor_input(self.inputs[k], a.shape, strict=False)
        self.interp.allocate_tensors()
        for k, a in feed.items():
            self.interp.set_tensor(self.inputs[k], a)
        t = time.perf_counter()
        self.interp.invoke()
        dt = time.perf_counter() - t
        for i in self.outputs:
            self.interp.get_tensor(i)
        return dt

    def run(self, feeds):
        """One pass: ``(loop seconds, invoke seconds per feed)``; the loop includes
        building the inputs, resizing, allocating and reading the outputs."""
        t = time.perf_counter()
        invoke = [self._one(f) for f in feeds]
        return time.perf_counter() - t, np.array(invoke)


def time_round_robin(jobs: Dict[str, tuple], repeats: int = 3) -> Dict[str, tuple]:
    """``{name: (loop seconds, invoke seconds)}`` of ``{name: (TFLiteTimer, feeds)}``.

    After a warm-up pass of each, ``repeats`` rounds run one pass of every model in turn
    (so that load from elsewhere on a shared machine falls on all models alike). Kept:
    the pass with the shortest loop; for names starting with ``matmul``, each feed's
    fastest invoke (the products are timed shape by shape)."""
    for timer, feeds in jobs.values():
        timer.run(feeds)
    best: Dict[str, tuple] = {}
    for _ in range(repeats):
        for name, (timer, feeds) in jobs.items():
            loop, invoke = timer.run(feeds)
            if name.startswith("matmul") and name in best:
                best[name] = (min(loop, best[name][0]), np.minimum(invoke, best[name][1]))
            elif name not in best or loop < best[name][0]:
                best[name] = (loop, invoke)
    return {k: (loop, float(invoke.sum())) for k, (loop, invoke) in best.items()}


def tflite_models(pre, encoder, variants=VARIANTS,
                  int8_rows: bool = False) -> Dict[str, bytes]:
    """The LiteRT models the stages are measured with (see the module docstring).
    ``int8_rows``: the export's float TFLite files read int8 word-embedding rows (its
    int8 file quantizes the float table itself, as ``lealla export`` does)."""
    shape = encoder.get_config()
    models = {"tokenizer": preprocessor_tflite(pre, tokenize_only=True),
              "preprocessor": preprocessor_tflite(pre)}
    cut = cut_encoder(encoder, 1) if shape["num_layers"] > 1 else None
    for v in variants:
        int8 = v == "int8"
        for name, enc in (("encoder", encoder), ("encoder1", cut)):
            if enc is not None:
                enc.set_int8_word_embeddings(int8_rows and not int8)
                models[f"{name}-{v}"] = encoder_tflite(enc, int8)
        models[f"matmul-{v}"] = matmul_tflite(shape["hidden_size"], shape["intermediate_size"],
                                              shape["num_attention_heads"], int8)
    return models


def tflite_profile(export_dir: str, models: Dict[str, bytes], batches, packed, shape: dict,
                   variants=VARIANTS, threads: int = 2, repeats: int = 3) -> Dict[str, dict]:
    """Stages of the TFLite files of ``variants`` by differences of ``invoke`` times
    (milliseconds; every model timed round-robin, see :func:`time_round_robin`).

    Returns ``{variant: {"stages_ms", "total_ms", "invoke_ms", "encoder_ms",
    "preprocessor_ms", "encoder_1_layer_ms", "matmul_ms"}}``.
    """
    from lealla_tf import export
    layers = shape["num_layers"]
    shapes = [tuple(p["input_word_ids"].shape) for p in packed]
    mm_feeds = matmul_feeds(shapes, shape["hidden_size"], shape["intermediate_size"],
                            shape["num_attention_heads"])
    jobs = {"tokenizer": (TFLiteTimer(models["tokenizer"], threads=threads), batches),
            "preprocessor": (TFLiteTimer(models["preprocessor"], threads=threads), batches)}
    for v in variants:
        jobs[f"e2e-{v}"] = (TFLiteTimer(path=os.path.join(export_dir,
                                                          export.tflite_file_name(v)),
                                        threads=threads), batches)
        for name in (f"encoder-{v}", f"encoder1-{v}"):
            if name in models:
                jobs[name] = (TFLiteTimer(models[name], threads=threads), packed)
        jobs[f"matmul-{v}"] = (TFLiteTimer(models[f"matmul-{v}"], threads=threads), mm_feeds)
    t = time_round_robin(jobs, repeats)
    tok, pre = t["tokenizer"][1], t["preprocessor"][1]
    out = {}
    for v in variants:
        loop, e2e = t[f"e2e-{v}"]
        enc = t[f"encoder-{v}"][1]
        if f"encoder1-{v}" in t:
            enc1 = t[f"encoder1-{v}"][1]
            per_layer = (enc - enc1) / (layers - 1)
        else:  # one layer: no cut, everything is "the layer"
            enc1, per_layer = enc, enc
        mm = layers * t[f"matmul-{v}"][1]
        stages = {"tokenize": tok, "pack": pre - tok, "emb_pool": enc1 - per_layer,
                  "layer_mm": mm, "layer_other": layers * per_layer - mm,
                  "boundary": e2e - pre - enc, "outside": loop - e2e}
        out[v] = {"stages_ms": {k: 1e3 * x for k, x in stages.items()}, "total_ms": 1e3 * loop,
                  "invoke_ms": 1e3 * e2e, "encoder_ms": 1e3 * enc, "preprocessor_ms": 1e3 * pre,
                  "encoder_1_layer_ms": 1e3 * enc1, "matmul_ms": 1e3 * mm}
    return out


# ----------------------------------------------------------------------------- FLOPs


def flops(shape: dict, packed) -> dict:
    """Encoder FLOPs of the batches: ``executed`` (every sentence padded to its batch's
    length, what runs) and ``useful`` (each sentence at its own length), as
    ``lealla_tf.evaluation.speed.encoder_flops`` counts them."""
    from lealla_tf.evaluation import speed
    executed = useful = 0.0
    for p in packed:
        b, s = p["input_word_ids"].shape
        executed += speed.encoder_flops(shape, [s] * b)
        useful += speed.encoder_flops(shape, p["input_mask"].sum(axis=1))
    return {"executed": executed, "useful": float(useful)}


# ----------------------------------------------------------------------------- output


def _table(header, rows) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]

    def line(r):
        return "| " + " | ".join(str(c).rjust(w) if i else str(c).ljust(w)
                                 for i, (c, w) in enumerate(zip(r, widths))) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def stage_rows(stages_ms: Dict[str, float], labels, n: int, methods=None):
    """Rows ``(label, ms per 1,000 sentences, share)`` (+ method) of one path."""
    total = sum(stages_ms.values())
    rows = []
    for i, entry in enumerate(labels):
        key, label = entry[0], entry[1]
        ms = stages_ms.get(key, 0.0)
        row = [label, f"{1e3 * ms / n:,.1f}", f"{100 * ms / total:.1f}%"]
        if methods is not None:
            row.append(entry[2])
        rows.append(row)
    rows.append(["total", f"{1e3 * total / n:,.1f}", "100.0%"] + ([""] if methods else []))
    return rows


def shares(stages_ms: Dict[str, float]) -> Dict[str, float]:
    """Each stage's share of the total, in percent (they sum to 100)."""
    total = sum(stages_ms.values())
    return {k: 100 * v / total for k, v in stages_ms.items()}


def print_tf(r, n, top_ops: int = 10) -> None:
    print("\nTensorFlow SavedModel (lealla/): ops from step stats, wall from a TF2 loop; "
          "ms per 1,000 sentences")
    print(_table(["stage", "ms / 1k", "share"], stage_rows(r["stages_ms"], TF_STAGES, n)))
    split = r["matmul_split_ms"]
    inside = sum(split.values()) or 1.0  # (0 without layer scopes: see below)
    print(f"Within attention + FFN: 2-D matrix products {1e3 * split.get('matmul', 0) / n:,.1f}"
          f" ms/1k ({100 * split.get('matmul', 0) / inside:.0f}%), batched (scores, context) "
          f"{1e3 * split.get('batch_matmul', 0) / n:,.1f} "
          f"({100 * split.get('batch_matmul', 0) / inside:.0f}%), the rest "
          f"{1e3 * split.get('other', 0) / n:,.1f} ({100 * split.get('other', 0) / inside:.0f}%)."
          f" Op sum {r['ops_ms']:,.0f} ms (traced); v1 session loop {r['session_ms']:,.0f} ms "
          f"untraced, {r['session_traced_ms']:,.0f} traced; TF2 loop {r['wall_ms']:,.0f} ms. "
          f"Unclassified "
          f"{100 * r['unclassified_share']:.1f}%; layer scopes seen: {len(r['layers'])}.")
    if not r["layers"]:
        print("No layer_<i> scopes in this export: it was written before the forward pass "
              "ran under stage name scopes; re-export it (lealla export) to split the layers.")
    top = ", ".join(f"{op} in {stage} {1e3 * ms / n:,.1f}" for stage, op, ms in
                    r["op_types_ms"][:top_ops])
    print(f"Largest (stage, op type) cells, ms / 1k: {top}.")
    if r["stages_ms"]["outside"] < 0:
        print(f"Outside the graph < 0: tracing lengthens the session loop by "
              f"{100 * (r['session_traced_ms'] / r['session_ms'] - 1):.0f}%, part of it inside"
              f" the op times; the overhead outside the graph is below that resolution (the "
              f"TF2 loop's wall time is {100 * (r['wall_ms'] / r['session_ms'] - 1):+.1f}% off "
              f"the untraced session loop's).")


def print_tflite(variant, r, n) -> None:
    print(f"\nTFLite {variant} (lealla-{variant}.tflite, XNNPACK): stages by difference of "
          f"invoke times; ms per 1,000 sentences")
    print(_table(["stage", "ms / 1k", "share", "measured as"],
                 stage_rows(r["stages_ms"], TFLITE_STAGES, n, methods=True)))


def print_flops(results, fl, n, limit) -> None:
    rows = []
    for path, r in results.items():
        mm = r.get("matmul_ms")
        e2e = fl["executed"] / (r["total_ms"] / 1e3) / 1e9
        row = [path, f"{1e3 * r['total_ms'] / n:,.1f}", f"{e2e:.1f}", f"{100 * e2e / limit:.0f}%"]
        if mm:
            g = fl["executed"] / (mm / 1e3) / 1e9
            row += [f"{1e3 * mm / n:,.1f}", f"{g:.1f}", f"{100 * g / limit:.0f}%"]
        else:
            row += ["-", "-", "-"]
        rows.append(row)
    print(f"\nEncoder FLOPs per sentence: {fl['executed'] / n / 1e6:,.1f} M executed (padded to "
          f"the batch), {fl['useful'] / n / 1e6:,.1f} M at the sentences' own lengths; "
          f"the machine's fp32 matmul limit {limit:.1f} GFLOP/s")
    print(_table(["path", "ms / 1k", "GFLOP/s", "% fp32 limit", "matmul ms / 1k",
                  "GFLOP/s in matmuls", "% fp32 limit"], rows))


# ----------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("LEALLA_DATA_DIR", ""))
    p.add_argument("--export", default=DEFAULT_EXPORT, help="an export folder")
    p.add_argument("--shape", default="",
                   help="instead of --export: a random-weight export of this config shape "
                        "(e.g. lealla_small), written to a temporary folder")
    p.add_argument("--vocab", default="",
                   help="with --shape: SentencePiece model (default: --export's vocabulary)")
    p.add_argument("--work", default="", help="with --shape: keep the export here")
    p.add_argument("--sentences", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=512, help="most sentences per batch")
    p.add_argument("--batch-tokens", type=int, default=None,
                   help="padded tokens per batch, where embedders.batch_order takes a budget "
                        "(default: the SavedModel embedders' own, DEFAULT_BATCH_TOKENS)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed passes (best is kept)")
    p.add_argument("--tflite", default=",".join(VARIANTS), help="TFLite files to profile")
    p.add_argument("--json", default="", help="also write all measurements here")
    return p


def _set_tf_threads(threads: int) -> None:
    import tensorflow as tf
    tf.get_logger().setLevel("ERROR")
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already started (tests)
        pass


def _matmul_limit(threads: int) -> dict:
    from benchmarks import inference_speed
    tf_gf = max(inference_speed.matmul_gflops(threads) for _ in range(3))  # shared machines
    gemm = inference_speed.tflite_gemm_gflops(threads)
    return {"tf": tf_gf, "litert": gemm["square"], "limit": max(tf_gf, gemm["square"]),
            "litert_thin": gemm}


def _check_rebuilt(export_dir, pre, encoder, batch) -> float:
    """Min cosine of the rebuilt encoder to the export's SavedModel on one batch."""
    import tensorflow as tf

    from lealla_tf import export
    from lealla_tf.models import encoders
    sig = tf.saved_model.load(os.path.join(export_dir, export.LEALLA)).signatures[
        export.SIGNATURE]
    ref = sig(**{export.INPUT_KEY: tf.constant(batch)})[export.OUTPUT_KEY].numpy()
    got = encoders.StringEncoder(pre, encoder)(tf.constant(batch), training=False).numpy()
    return float(export.cosine_rows(got, ref).min())


def profile(export_dir: str, batches, threads: int = 2, repeats: int = 3,
            variants=VARIANTS) -> dict:
    """Every path of one export: ``{"tf": ..., "tflite-fp32": ..., ..., "flops",
    "shape", "rebuilt_min_cosine"}`` (see :func:`tf_profile`, :func:`tflite_profile`)."""
    from lealla_tf import export
    info, pre, encoder = rebuild(export_dir)
    shape = encoder.get_config()
    packed = packed_batches(pre, batches)
    out = {"shape": {k: shape[k] for k in ("hidden_size", "num_layers", "num_attention_heads",
                                           "intermediate_size", "vocab_size", "pooling")},
           "rebuilt_min_cosine": _check_rebuilt(export_dir, pre, encoder, batches[-1]),
           "flops": flops(shape, packed), "batches": len(batches),
           "sentences": sum(len(b) for b in batches)}
    t = time.time()
    out["tf"] = tf_profile(os.path.join(export_dir, export.LEALLA), batches, threads, repeats)
    print(f"TensorFlow profiled ({time.time() - t:.0f}s)", flush=True)
    variants = [v for v in variants
                if os.path.exists(os.path.join(export_dir, export.tflite_file_name(v)))]
    if variants:
        t = time.time()
        models = tflite_models(pre, encoder, variants,
                               bool(info["model"].get("int8_word_embeddings")))
        print(f"TFLite pieces converted ({time.time() - t:.0f}s)", flush=True)
        t = time.time()
        for v, r in tflite_profile(export_dir, models, batches, packed, shape, variants,
                                   threads, repeats).items():
            out[f"tflite-{v}"] = r
        print(f"TFLite profiled ({time.time() - t:.0f}s)", flush=True)
    return out


def _export_dir(p, args):
    """``(export folder, temporary folder to remove or None)``."""
    if not args.shape:
        if not os.path.isdir(args.export):
            p.error(f"--export {args.export}: no such folder")
        return os.path.abspath(args.export), None
    tmp = None if args.work else tempfile.mkdtemp(prefix=f"profile-{args.shape}-")
    out = os.path.join(args.work or tmp, "export")
    if not os.path.exists(out):
        if not args.vocab and not os.path.isdir(args.export):
            p.error(f"--shape needs a vocabulary: --vocab, or --export {args.export} (no "
                    "such folder) to take its vocabulary")
        t = time.time()
        write_shape_export(args.shape, args.vocab or export_vocab(args.export), out)
        print(f"{args.shape}: random-weight export written ({time.time() - t:.0f}s)",
              flush=True)
    return out, tmp


def main(argv=None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if not args.data_dir:
        p.error("--data-dir or LEALLA_DATA_DIR is required (Tatoeba sentences)")
    _set_tf_threads(args.threads)
    from benchmarks import inference_speed
    from lealla_tf import embedders, hardware
    if args.batch_tokens is None:
        args.batch_tokens = embedders.DEFAULT_BATCH_TOKENS
    export_dir, tmp = _export_dir(p, args)
    try:
        vocab = export_vocab(export_dir)
        sentences = inference_speed.tatoeba_sentences(args.data_dir, args.sentences)
        batches = sentence_batches(sentences, vocab, args.batch_size, args.batch_tokens)
        takes = takes_batch_tokens()
        print(f"{len(sentences)} Tatoeba sentences in {len(batches)} batches (at most "
              f"{args.batch_size} sentences" + (f", {args.batch_tokens} padded tokens"
                                                if takes else "") + "), longest first",
              flush=True)
        machine = hardware.describe(hardware.runtime_paths(), hardware.cpu_info())
        print(machine, flush=True)
        limit = _matmul_limit(args.threads)
        print(f"fp32 matmul 2048^3, {args.threads} threads: TF {limit['tf']:.1f} GFLOP/s (best "
              f"of 3), "
              f"LiteRT/XNNPACK {limit['litert']:.1f} GFLOP/s; LEALLA-small's thin products "
              "in LiteRT (8192 rows): " + ", ".join(
                  f"{k} fp32 {limit['litert_thin'][k + '_fp32']:.1f} / int8 weights "
                  f"{limit['litert_thin'][k + '_int8']:.1f}" for k in ("thin_qkv", "thin_ffn")),
              flush=True)
        result = profile(export_dir, batches, args.threads, args.repeats,
                         [v for v in args.tflite.split(",") if v])
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    n = result["sentences"]
    s = result["shape"]
    print()
    print(machine)
    print(f"Inference profile of {args.shape + ' (random weights)' if args.shape else export_dir}"
          f": {s['num_layers']} layers x {s['hidden_size']} hidden, FFN "
          f"{s['intermediate_size']}, {s['vocab_size']:,} rows; {n} Tatoeba sentences in "
          f"{result['batches']} batches; {args.threads} threads; best of {args.repeats}. "
          f"Rebuilt encoder vs the export: min cosine {result['rebuilt_min_cosine']:.6f}.")
    print_tf(result["tf"], n)
    paths = {"tf": result["tf"]}
    for v in VARIANTS:
        if f"tflite-{v}" in result:
            print_tflite(v, result[f"tflite-{v}"], n)
            paths[f"tflite-{v}"] = result[f"tflite-{v}"]
    tf_mm = sum(v for k, v in result["tf"]["matmul_split_ms"].items() if k != "other")
    paths["tf"] = dict(result["tf"], matmul_ms=tf_mm)
    print_flops(paths, result["flops"], n, limit["limit"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "matmul": limit, "args": vars(args), **result}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
