"""Inference speed and peak memory of every export, with peers, in one run and one table.

Rows: the LEALLA-small/base/large and LaBSE shapes (random weights; the vocabulary only
decides token lengths, the embedding table keeps the released 501,153 rows). Columns, for
each runtime, sentences/s strings -> embeddings on

- real Tatoeba sentences (their real length distribution, all 112 languages; the same
  sentences for every shape), sorted by token count and cut into batches of at most
  ``--batch-size`` sentences and ``--batch-tokens`` padded tokens, as
  ``lealla_tf.embedders`` batches them (by default each runtime's own budget: 8,192
  tokens, 1,024 for TFLite files);
- the first ``--single`` of them one per call (the latency setting of an app);
- a fixed batch of 256 sentences of exactly 32 tokens;

then achieved GFLOP/s on the real sentences (matrix products on their real tokens, no
padding) and on the fixed batch, the peak resident memory of the process that ran
it, the artefact's size and the smallest cosine to the reference embeddings.

Runtimes (each in its own process, so that peak memory is its own):

- ``tf-keras``: ``BertEncoderV2``'s Keras layers, inputs padded to a fixed 64 tokens
  (the encoder as it comes, before the speed-ups; in memory, not exported);
- ``tf``: the end-to-end SavedModel as ``lealla_tf.export`` writes it (fused forward
  pass, padding to the batch's longest sentence);
- ``tf-xla``: the same with the encoder compiled by XLA (lengths rounded up to 8);
- ``tf-bf16``: the same SavedModel with Grappler's oneDNN bfloat16 rewrite
  (``auto_mixed_precision_onednn_bfloat16``; pays on CPUs with AVX-512 BF16 or AMX);
- ``tflite-fp32/fp16/int8``: the TFLite exports run by LiteRT (XNNPACK); int8 is
  dynamic-range (int8 weights, activations quantised per batch at run time);
- ``tflite-int8-ruy``: the int8 file on LiteRT's built-in hybrid kernels (ruy), without
  the XNNPACK delegate;
- ``tflite-int8-full``: the encoder alone as a full-integer file (int8 activations
  too, calibrated on the probe sentences; token ids in, like the peers);
- ``tflite-fp32-emb8``, ``tflite-fp16-emb8``: fp32/fp16 files whose word embeddings are
  int8 rows with per-row scales (``lealla export --int8-embeddings``);
- peers, on the same encoder weights and the same token ids (tokenization excluded for
  them, included for ours): ``ort-fp32`` (ONNX Runtime, graph exported from
  ``transformers.BertModel``), ``ort-int8`` (its dynamic quantization), ``torch`` (eager).

Before the table, the same run times a 2048^3 fp32 matrix product with TF and with
LiteRT/XNNPACK (the faster is the machine's practical GFLOP/s), and LEALLA-small's own
matrix shapes with fp32 and int8 weights (what int8 can gain on this CPU at best). Every runtime is measured ``--repeats`` times in round-robin order
(all runtimes of a shape, then again), and the table shows medians: the machine may be
shared, so compare ratios within one run.

    LEALLA_DATA_DIR=/path/to/data python -m benchmarks.inference_speed
    python -m benchmarks.inference_speed --shapes lealla_small --runtimes tf,tflite-fp32,ort-fp32

The CPU model, its instruction sets (AVX2, AVX-512, VNNI, BF16, AMX) and the paths
TensorFlow (oneDNN version, ISA, matmul kernel) and LiteRT (XNNPACK delegate) take are
printed first and above the table (``lealla_tf.hardware``). Every row shows its cosine
gate (``COSINE_GATES``). ``--vocab-rows 128000`` gives every shape a 128k-row table
(teacher vocabularies): compare sizes and peak memory per export variant.

Needs the ``bench`` extra (onnxruntime, onnx, torch, transformers) for the peers;
runtimes whose packages are missing are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

import numpy as np  # noqa: E402

CONFIGS = os.path.join(_ROOT, "configs")
SHAPES = ("lealla_small", "lealla_base", "lealla_large", "labse")
LABELS = {"lealla_small": "LEALLA-small", "lealla_base": "LEALLA-base",
          "lealla_large": "LEALLA-large", "labse": "LaBSE shape"}
RUNTIMES = ("tf-keras", "tf", "tf-xla", "tf-bf16", "tflite-fp32", "tflite-fp16",
            "tflite-int8", "tflite-int8-ruy", "tflite-int8-full", "tflite-fp32-emb8",
            "tflite-fp16-emb8", "ort-fp32", "ort-int8", "torch")
# Each runtime's min cosine to the fp32 reference (the export's gates; bf16 as int8).
COSINE_GATES = {"tf": 0.9999, "tf-xla": 0.9999, "tf-bf16": 0.99, "tflite-fp32": 0.9999,
                "tflite-fp16": 0.999, "tflite-int8": 0.99, "tflite-int8-ruy": 0.99,
                "tflite-int8-full": 0.99,
                "tflite-fp32-emb8": 0.999, "tflite-fp16-emb8": 0.999, "ort-fp32": 0.9999,
                "ort-int8": 0.99, "torch": 0.9999}
# --vocab-rows reaches the preparing and measuring processes through this variable.
VOCAB_ROWS_ENV = "LEALLA_BENCH_VOCAB_ROWS"


def tflite_file(runtime: str) -> str:
    """``tflite-int8-ruy`` -> ``lealla-int8.tflite``; ``tflite-fp32-emb8`` ->
    ``lealla-fp32-emb8.tflite`` (fp32 with int8 word-embedding rows)."""
    variant = runtime[len("tflite-"):]
    return f"lealla-{variant[:-len('-ruy')] if variant.endswith('-ruy') else variant}.tflite"
FIXED_BATCH, FIXED_TOKENS = 256, 32
SEQ_LENGTH = 64


# ----------------------------------------------------------------------------- inputs


def tatoeba_sentences(data_dir: str, n: int, seed: int = 0):
    """``n`` sentences drawn uniformly from both sides of all Tatoeba test sets."""
    from lealla_tf.evaluation import tatoeba
    directory = tatoeba.find_local_dir(data_dir)
    pool = []
    for lang in tatoeba.LANGUAGES:
        try:
            xx, en = tatoeba.load_pair(lang, directory)
        except FileNotFoundError:
            continue
        pool.extend(xx)
        pool.extend(en)
    rng = np.random.default_rng(seed)
    return [pool[i] for i in rng.choice(len(pool), size=min(n, len(pool)), replace=False)]


def exact_length_sentences(sentences, vocab: str, pieces: int, n: int):
    """Sentences cut to exactly ``pieces`` SentencePiece pieces (re-tokenized to check)."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=vocab)
    out = []
    pool = sorted(sentences, key=len, reverse=True)
    i = 0
    while len(out) < n:
        text = pool[i % len(pool)]
        if i >= len(pool):  # reuse long sentences, joined, when the sample runs short
            text = text + " " + pool[(i * 7 + 1) % len(pool)]
        i += 1
        ids = sp.encode(text)
        if len(ids) < pieces:
            continue
        cut = sp.decode(ids[:pieces])
        if len(sp.encode(cut)) == pieces:
            out.append(cut)
        if i > 50 * n:
            raise RuntimeError("could not build fixed-length sentences")
    return out


def token_counts(sentences, vocab: str):
    """SentencePiece pieces per sentence (the sort key of ``lealla_tf.export`` embedders)."""
    import sentencepiece as spm
    return [len(ids) for ids in spm.SentencePieceProcessor(model_file=vocab).encode(
        list(sentences))]


def batches_of(sentences, batch_size: int, keys=None):
    """Sentence batches; sorted by ``keys`` (e.g. token counts) first when given."""
    order = sorted(range(len(sentences)), key=lambda i: keys[i]) if keys is not None else \
        list(range(len(sentences)))
    return [[sentences[i] for i in order[j:j + batch_size]]
            for j in range(0, len(order), batch_size)]


def encoder_flops(cfg, lengths) -> float:
    """Multiply-adds x 2 of the encoder (+ pooler) for sentences padded to ``lengths``
    (``lealla_tf.evaluation.speed.encoder_flops``: a [CLS]-pooled shape's last layer as
    the exports run it, for [CLS] alone)."""
    from lealla_tf.evaluation import speed
    h = cfg["hidden_size"]
    return speed.encoder_flops(cfg, lengths) + len(lengths) * 2.0 * h * h


# ----------------------------------------------------------------------------- artefacts


def model_cfg(shape: str):
    """The model config of ``shape`` (``--vocab-rows`` applied through its variable)."""
    from lealla_tf import config
    overrides = []
    if os.environ.get(VOCAB_ROWS_ENV):
        overrides.append(f"model.vocab_size={int(os.environ[VOCAB_ROWS_ENV])}")
    return config.load(os.path.join(CONFIGS, f"{shape}.yaml"), overrides).model


def prepare(shape: str, work: str, vocab: str, runtimes, seed: int = 0) -> None:
    """Builds the encoder with random weights and writes every artefact ``runtimes`` need."""
    import tensorflow as tf
    import tf_keras

    from lealla_tf import export
    from lealla_tf.models import encoders
    from lealla_tf.text import sentencepiece

    os.makedirs(work, exist_ok=True)
    cfg = model_cfg(shape)
    tf_keras.utils.set_random_seed(seed)
    encoder = encoders.LeallaEncoder.from_model_config(cfg)
    encoder(encoder.dummy_inputs())
    weights = os.path.join(work, "weights.h5")
    if not os.path.exists(weights):
        encoder.save_weights(weights)
    pre = sentencepiece.Preprocessor(vocab, seq_length=SEQ_LENGTH)

    def save(name, enc, length_multiple=1):
        path = os.path.join(work, name)
        if os.path.exists(path):
            return path
        obj, signatures = export.build_lealla_module(pre, enc)
        if length_multiple > 1:  # the exported model with rounded lengths
            model = encoders.StringEncoder(pre, enc, length_multiple=length_multiple)

            @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
            def serve(sentences):
                return {export.OUTPUT_KEY: model(sentences, training=False)}
            signatures = {export.SIGNATURE: serve}
        tf.saved_model.save(obj, path + ".tmp", signatures=signatures)
        os.rename(path + ".tmp", path)
        return path

    if any(r in ("tf", "tf-bf16") for r in runtimes):
        save("lealla", encoder)
    if any(r.startswith("tflite") for r in runtimes):
        _write_tflite_files(encoder, pre, runtimes, work, save)
    if "tf-xla" in runtimes:
        xla = encoders.LeallaEncoder.from_model_config(cfg, jit_compile=True)
        xla(xla.dummy_inputs())
        xla.set_weights(encoder.get_weights())
        save("lealla-xla", xla, length_multiple=8)
    if any(r.startswith("ort") or r == "torch" for r in runtimes):
        _prepare_peers(encoder, cfg, work, runtimes)


def _write_tflite_files(encoder, pre, runtimes, work: str, save) -> None:
    """The TFLite files of ``runtimes``, converted as the export converts them: from
    end-to-end models traced with the forward pass written for TFLite converters."""
    from lealla_tf import export
    with encoder.tflite_forward():
        sources = {False: save("lealla-tflite", encoder)}
        if any(r.endswith("-emb8") for r in runtimes):
            encoder.set_int8_word_embeddings(True)
            sources[True] = save("lealla-tflite-emb8", encoder)
            encoder.set_int8_word_embeddings(False)
        for r in runtimes:
            path = os.path.join(work, tflite_file(r))
            if not r.startswith("tflite") or os.path.exists(path):
                continue
            if r == "tflite-int8-full":
                content = full_integer_encoder(encoder, pre)
            else:
                content = export.convert_tflite(sources[r.endswith("-emb8")], r.split("-")[1])
            with open(path + ".tmp", "wb") as f:
                f.write(content)
            os.rename(path + ".tmp", path)


def token_id_serving(encoder):
    """``tf.function`` token ids -> ``{default: embedding}`` of ``encoder`` (inference)."""
    import tensorflow as tf

    from lealla_tf import export
    from lealla_tf.models import encoders
    specs = [tf.TensorSpec([None, None], tf.int32, name=k) for k in encoders.INPUT_KEYS]

    @tf.function(input_signature=specs)
    def serve(input_word_ids, input_mask, input_type_ids):
        out = encoder({"input_word_ids": input_word_ids, "input_mask": input_mask,
                       "input_type_ids": input_type_ids}, training=False)
        return {export.OUTPUT_KEY: out["default"]}
    return serve


def full_integer_encoder(encoder, pre) -> bytes:
    """The encoder alone (token ids in, normalised embeddings out) as a full-integer
    TFLite file: int8 weights and int8 activations, calibrated on the export's
    multilingual probe sentences. The end-to-end string model cannot be calibrated (the
    converter's calibration interpreter lacks TF Text's SentencePiece ops), so this
    variant gets token ids like the peers (tokenization excluded)."""
    import tensorflow as tf

    from lealla_tf import export
    from lealla_tf.models import encoders
    def representative():
        for s in export.PROBE_SENTENCES:
            d = pre(tf.constant([s]))
            yield {k: d[k] for k in encoders.INPUT_KEYS}

    # The forward pass written for TFLite (the TensorFlow one scales LayerNorm inputs by
    # up to 3e4, which int8 activations cannot hold).
    with encoder.tflite_forward():
        conv = tf.lite.TFLiteConverter.from_concrete_functions(
            [token_id_serving(encoder).get_concrete_function()], encoder)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        return conv.convert()


def _prepare_peers(encoder, cfg, work, runtimes):
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError:
        print("peers skipped: torch/transformers not installed", flush=True)
        return
    from lealla_tf.export import torch_weights
    state = os.path.join(work, "torch_state.pt")
    onnx_path = os.path.join(work, "bert.onnx")
    if os.path.exists(state) and (os.path.exists(onnx_path) or
                                  not any(r.startswith("ort") for r in runtimes)):
        return
    model = torch_weights.bert_model(encoder, cfg, check=False)
    # Same function: compare pooled outputs on one batch.
    rng = np.random.default_rng(0)
    ids = rng.integers(5, cfg.vocab_size, (4, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    ids[1, 7:] = 0
    out = encoder({"input_word_ids": ids, "input_mask": mask,
                   "input_type_ids": np.zeros_like(ids)})["pooled_output"].numpy()
    with torch.inference_mode():
        ref = model(torch.from_numpy(ids).long(), torch.from_numpy(mask).long(),
                    torch.zeros(ids.shape, dtype=torch.long)).pooler_output.numpy()
    diff = float(np.abs(out - ref).max())
    print(f"  peer weights check: max |TF - torch| pooled = {diff:.2e}", flush=True)
    if diff > 1e-3:
        raise RuntimeError(f"peer model differs from ours ({diff})")
    torch.save(model.state_dict(), state + ".tmp")
    os.rename(state + ".tmp", state)
    if any(r.startswith("ort") for r in runtimes) and not os.path.exists(onnx_path):
        class Pooled(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.m(input_ids, attention_mask, token_type_ids).pooler_output

        example = tuple(torch.from_numpy(a).long() for a in (ids, mask, np.zeros_like(ids)))
        axes = {"batch": 0, "seq": 1}
        torch.onnx.export(
            Pooled(model), example, onnx_path + ".tmp.onnx",
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["pooled"], opset_version=17, dynamo=False,
            dynamic_axes={n: {v: k for k, v in axes.items()}
                          for n in ("input_ids", "attention_mask", "token_type_ids")})
        os.rename(onnx_path + ".tmp.onnx", onnx_path)
    if "ort-int8" in runtimes:
        q = os.path.join(work, "bert-int8.onnx")
        if not os.path.exists(q):
            from onnxruntime.quantization import QuantType, quantize_dynamic
            quantize_dynamic(onnx_path, q + ".tmp.onnx", weight_type=QuantType.QInt8)
            os.rename(q + ".tmp.onnx", q)


# ----------------------------------------------------------------------------- workers


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _packed(vocab, batches, fixed_length=None):
    """Token ids exactly as our preprocessor packs each batch (the peers' inputs)."""
    import tensorflow as tf

    from lealla_tf.text import sentencepiece
    pre = sentencepiece.Preprocessor(vocab, seq_length=fixed_length or SEQ_LENGTH,
                                     dynamic_length=fixed_length is None)
    out = []
    for b in batches:
        d = pre(tf.constant(b))
        out.append(tuple(d[k].numpy() for k in ("input_word_ids", "input_mask",
                                                 "input_type_ids")))
    return out


def make_runner(runtime: str, work: str, shape: str, vocab: str, threads: int, real, fixed):
    """Returns ``(fn, real_inputs, fixed_inputs)``: ``fn(batch)`` embeds one batch."""
    if runtime.startswith("tf"):
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    if runtime == "tf-keras":
        from lealla_tf.models import encoders
        from lealla_tf.text import sentencepiece
        cfg = model_cfg(shape)
        enc = encoders.LeallaEncoder.from_model_config(cfg, implementation="keras")
        enc(enc.dummy_inputs())
        enc.load_weights(os.path.join(work, "weights.h5"))
        pre = sentencepiece.Preprocessor(vocab, seq_length=SEQ_LENGTH)
        model = encoders.StringEncoder(pre, enc, dynamic_length=False)
        fn = tf.function(lambda s: model(s, training=False),
                         input_signature=[tf.TensorSpec([None], tf.string)])
        conv = lambda b: tf.constant(b)  # noqa: E731
        return (lambda x: fn(x).numpy()), [conv(b) for b in real], [conv(b) for b in fixed]
    if runtime in ("tf", "tf-xla", "tf-bf16"):
        import tensorflow_text  # noqa: F401

        from lealla_tf import export
        if runtime == "tf-bf16":  # oneDNN's bf16 kernels through Grappler's rewrite
            tf.config.optimizer.set_experimental_options(
                {"auto_mixed_precision_onednn_bfloat16": True})
        loaded = tf.saved_model.load(os.path.join(work, "lealla-xla" if runtime == "tf-xla"
                                                  else "lealla"))
        sig = loaded.signatures[export.SIGNATURE]
        conv = lambda b: tf.constant(b)  # noqa: E731
        return ((lambda x: sig(sentences=x)[export.OUTPUT_KEY].numpy()),
                [conv(b) for b in real], [conv(b) for b in fixed])
    if runtime == "tflite-int8-full":  # token ids in (see full_integer_encoder)
        from lealla_tf import export
        from lealla_tf.models import encoders
        interp = export.tflite_interpreter(model_path=os.path.join(work, tflite_file(runtime)),
                                           num_threads=threads)
        runner = interp.get_signature_runner()

        def fn(x):
            return runner(**dict(zip(encoders.INPUT_KEYS, (a.astype(np.int32) for a in x))))[
                export.OUTPUT_KEY]
        return fn, _packed(vocab, real), _packed(vocab, fixed)
    if runtime.startswith("tflite"):
        from lealla_tf import export
        interp = export.tflite_interpreter(
            model_path=os.path.join(work, tflite_file(runtime)), num_threads=threads,
            xnnpack=not runtime.endswith("-ruy"))
        runner = interp.get_signature_runner(export.SIGNATURE)
        conv = lambda b: np.array([s.encode("utf-8") for s in b], dtype=object)  # noqa: E731
        return ((lambda x: runner(**{export.INPUT_KEY: x})[export.OUTPUT_KEY]),
                [conv(b) for b in real], [conv(b) for b in fixed])
    real_ids, fixed_ids = _packed(vocab, real), _packed(vocab, fixed)
    if runtime.startswith("ort"):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = os.path.join(work, "bert.onnx" if runtime == "ort-fp32" else "bert-int8.onnx")
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

        def fn(x):
            return sess.run(None, {"input_ids": x[0].astype(np.int64),
                                   "attention_mask": x[1].astype(np.int64),
                                   "token_type_ids": x[2].astype(np.int64)})[0]
        return fn, real_ids, fixed_ids
    if runtime == "torch":
        import torch
        from transformers import BertModel

        from lealla_tf.export import torch_weights
        torch.set_num_threads(threads)
        model = BertModel(torch_weights.hf_config(model_cfg(shape))).eval()
        model.load_state_dict(torch.load(os.path.join(work, "torch_state.pt")))
        conv = lambda x: tuple(torch.from_numpy(a.astype(np.int64)) for a in x)  # noqa: E731

        def fn(x):
            with torch.inference_mode():
                return model(*x).pooler_output.numpy()
        return fn, [conv(x) for x in real_ids], [conv(x) for x in fixed_ids]
    raise ValueError(f"unknown runtime {runtime!r}")


def _head(batch, n):
    """The first ``n`` rows of a batch (array or tuple of arrays/tensors)."""
    if isinstance(batch, tuple):
        return tuple(b[:n] for b in batch)
    return batch[:n]


def batch_tokens(runtime: str, value: int) -> int:
    """The token budget of a runtime's real batches: ``value``, or (-1) the one
    ``lealla_tf.embedders`` gives its embedder."""
    if value >= 0:
        return value
    from lealla_tf.embedders import DEFAULT_BATCH_TOKENS, artifacts
    return (artifacts.TFLiteEmbedder.default_batch_tokens if runtime.startswith("tflite")
            else DEFAULT_BATCH_TOKENS)


def real_batches(sentences, keys, batch_size: int, tokens: int):
    """The real sentences in the batches of ``lealla_tf.embedders.batch_order``."""
    from lealla_tf import embedders
    return [[sentences[i] for i in idx]
            for idx in embedders.batch_order(keys, batch_size, tokens)]


def worker(args) -> None:
    """Runs one runtime on one shape; prints one JSON line."""
    with open(args.inputs, encoding="utf-8") as f:
        data = json.load(f)
    real = real_batches(data["real"], token_counts(data["real"], args.vocab), args.batch_size,
                        batch_tokens(args.runtime, args.batch_tokens))
    single = [[s] for s in data["single"]]  # one at a time, in sample order
    fixed = batches_of(data["fixed"], FIXED_BATCH)
    rss_before = _peak_rss_mib()
    t0 = time.perf_counter()
    fn, real_in, fixed_in = make_runner(args.runtime, args.work, args.shape, args.vocab,
                                        args.threads, real + single, fixed)
    real_in, single_in = real_in[:len(real)], real_in[len(real):]
    # Warm-up: traces, allocations and (XLA) one compilation per batch shape.
    warm = real_in + single_in + fixed_in[:1] if args.runtime == "tf-xla" else \
        real_in[:1] + single_in[:8] + [_head(fixed_in[0], 8)]
    for x in warm:
        fn(x)
    # The single sentences' embeddings, kept to compare runtimes (the same inputs for all).
    out = np.concatenate([np.asarray(fn(x), np.float64) for x in single_in[:8]])
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    np.save(os.path.join(args.work, f"out-{args.runtime}.npy"), out)
    load_s = time.perf_counter() - t0
    result = {"real_s": [], "fixed_s": [], "real_cpu_s": [], "single_s": []}
    for _ in range(args.inner_repeats):
        t, c = time.perf_counter(), time.process_time()
        for x in real_in:
            fn(x)
        result["real_s"].append(time.perf_counter() - t)
        result["real_cpu_s"].append(time.process_time() - c)
        t = time.perf_counter()
        for x in single_in:
            fn(x)
        result["single_s"].append(time.perf_counter() - t)
        t = time.perf_counter()
        for x in fixed_in:
            fn(x)
        result["fixed_s"].append(time.perf_counter() - t)
    result.update(runtime=args.runtime, shape=args.shape, load_s=load_s,
                  peak_rss_mib=_peak_rss_mib(), rss_after_imports_mib=rss_before,
                  n_real=len(data["real"]), n_fixed=len(data["fixed"]),
                  n_single=len(data["single"]))
    print("RESULT " + json.dumps(result), flush=True)


def matmul_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an n x n x n fp32 matrix product (TF, ``threads`` intra-op threads)."""
    code = (
        "import time, numpy as np, tensorflow as tf\n"
        f"tf.config.threading.set_intra_op_parallelism_threads({threads})\n"
        f"a = tf.random.normal([{n}, {n}]); b = tf.random.normal([{n}, {n}])\n"
        "f = tf.function(lambda a, b: tf.matmul(a, b)); f(a, b).numpy(); ts = []\n"
        f"for _ in range({repeats}):\n"
        "    t = time.perf_counter(); f(a, b).numpy(); ts.append(time.perf_counter() - t)\n"
        f"print('RESULT', 2 * {n} ** 3 / float(np.median(ts)) / 1e9)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    return float(out.split("RESULT")[-1])


_GEMM_CODE = """
import json, sys, time, numpy as np, tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
threads, repeats = int(sys.argv[1]), int(sys.argv[2])

def gflops(m, k, n, int8):
    w = tf.constant(np.random.default_rng(0).standard_normal([k, n]).astype(np.float32) * 0.05)
    f = tf.function(lambda x: tf.matmul(x, w),
                    input_signature=[tf.TensorSpec([m, k], tf.float32)])
    conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()])
    if int8:  # int8 weights, activations quantized on the fly (as the int8 export)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    it = Interpreter(model_content=conv.convert(), num_threads=threads)
    it.allocate_tensors()
    i = it.get_input_details()[0]["index"]
    x = np.random.default_rng(1).standard_normal([m, k]).astype(np.float32)
    it.set_tensor(i, x)
    it.invoke()
    ts = []
    for _ in range(repeats):
        it.set_tensor(i, x)
        t = time.perf_counter()
        it.invoke()
        ts.append(time.perf_counter() - t)
    return 2 * m * k * n / float(np.median(ts)) / 1e9

out = {"square": gflops(2048, 2048, 2048, False)}
for name, (m, k, n) in json.loads(sys.argv[3]).items():
    out[name + "_fp32"] = gflops(m, k, n, False)
    out[name + "_int8"] = gflops(m, k, n, True)
print("RESULT " + json.dumps(out))
"""


# LEALLA-small's FFN-in and QKV products at 256 x 32 tokens: (rows, hidden, outputs).
THIN_GEMMS = {"thin_ffn": (8192, 128, 512), "thin_qkv": (8192, 128, 384)}


def tflite_gemm_gflops(threads: int, repeats: int = 7) -> dict:
    """LiteRT/XNNPACK ``FULLY_CONNECTED`` GFLOP/s: 2048^3 fp32 (``square``), and
    the ``THIN_GEMMS`` products in fp32 and with int8 weights (``thin_*_fp32`` /
    ``thin_*_int8``): what int8 can gain at best."""
    out = subprocess.run([sys.executable, "-c", _GEMM_CODE, str(threads), str(repeats),
                          json.dumps(THIN_GEMMS)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.split("RESULT ")[-1])


# ----------------------------------------------------------------------------- main


def _run_worker(args, shape, runtime, work, inputs):
    cmd = [sys.executable, "-m", "benchmarks.inference_speed", "--worker", "--runtime", runtime,
           "--shape", shape, "--work", work, "--vocab", args.vocab, "--inputs", inputs,
           "--threads", str(args.threads), "--batch-size", str(args.batch_size),
           "--batch-tokens", str(args.batch_tokens),
           "--inner-repeats", str(args.inner_repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    print(f"  {shape} {runtime} failed:\n{proc.stderr[-3000:]}", flush=True)
    return None


def _fmt(x, digits=0):
    return "-" if x is None else f"{x:,.{digits}f}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("LEALLA_DATA_DIR", ""))
    p.add_argument("--vocab", default="", help="SentencePiece model (default: train 32k)")
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--runtimes", default=",".join(RUNTIMES))
    p.add_argument("--sentences", type=int, default=512,
                   help="real sentences (the same for every shape)")
    p.add_argument("--single", type=int, default=64,
                   help="real sentences also embedded one at a time (latency setting)")
    p.add_argument("--labse-sentences", type=int, default=0,
                   help="fewer real sentences for the (slow) LaBSE shape (default 0: the "
                        "same sentences; with fewer, its real-sentence ratio is not like for "
                        "like)")
    p.add_argument("--labse-runtimes", default="",
                   help="runtimes for the LaBSE shape (default: --runtimes)")
    p.add_argument("--fixed-batches", type=int, default=2,
                   help="batches of 256 x 32 tokens (LaBSE: 1)")
    p.add_argument("--batch-size", type=int, default=512,
                   help="most real sentences per call, after sorting by token count (as "
                        "lealla_tf.embedders does)")
    p.add_argument("--batch-tokens", type=int, default=-1,
                   help="most padded tokens per real batch (default -1: each runtime's "
                        "embedder default, 8192 or 1024 for TFLite; 0: no limit)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--vocab-rows", type=int, default=0,
                   help="word-embedding rows of every shape (default: the configs' 501,153; "
                        "e.g. 128000 for a 128k teacher vocabulary); artefacts go to "
                        "WORK/<shape>-<rows>")
    p.add_argument("--repeats", type=int, default=2, help="round-robin rounds")
    p.add_argument("--inner-repeats", type=int, default=2, help="timed passes per process")
    p.add_argument("--work", default=os.path.join(_ROOT, "results", "bench", "inference"))
    p.add_argument("--json", default="", help="also write all measurements here")
    # Internal: one measurement process.
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--runtime", default="", help=argparse.SUPPRESS)
    p.add_argument("--shape", default="", help=argparse.SUPPRESS)
    p.add_argument("--inputs", default="", help=argparse.SUPPRESS)
    return p


def _check_args(p: argparse.ArgumentParser, args):
    """``(shapes, runtimes)`` of the command line, after its checks; ``--vocab-rows`` set
    for the child processes."""
    if not args.data_dir:
        p.error("--data-dir or LEALLA_DATA_DIR is required (Tatoeba sentences)")
    if args.vocab_rows < 0:
        p.error("--vocab-rows must be positive")
    if args.vocab_rows:
        os.environ[VOCAB_ROWS_ENV] = str(args.vocab_rows)  # for the child processes
    else:
        os.environ.pop(VOCAB_ROWS_ENV, None)
    shapes = [s for s in args.shapes.split(",") if s]
    runtimes = [r for r in args.runtimes.split(",") if r]
    for r in runtimes:
        if r not in RUNTIMES:
            p.error(f"unknown runtime {r!r}: choose from {RUNTIMES}")
    return shapes, runtimes


def _vocab_pieces(p: argparse.ArgumentParser, args) -> int:
    """Pieces of ``--vocab`` (default: a 32k vocabulary trained on the data once, into the
    work folder), checked against ``--vocab-rows``."""
    if not args.vocab:
        args.vocab = os.path.join(args.work, "vocab32k", "spm.model")
        if not os.path.exists(args.vocab):
            from lealla_tf import corpus
            from lealla_tf.text import sentencepiece
            files = corpus.find_files(["train/*-eng.tsv"], args.data_dir, [])
            sentencepiece.train_vocab(files, os.path.dirname(args.vocab), 32000,
                                      sentences_per_language=3000, progress=False)
    import sentencepiece as spm
    if not os.path.exists(args.vocab):
        p.error(f"--vocab {args.vocab}: no such file")
    pieces = spm.SentencePieceProcessor(model_file=args.vocab).get_piece_size()
    if args.vocab_rows and pieces > args.vocab_rows:
        p.error(f"the vocabulary has {pieces:,} pieces, more than --vocab-rows "
                f"{args.vocab_rows:,}: its ids would fall outside the table")
    return pieces


def _matmul_limits(threads: int):
    """``(TF GFLOP/s, LiteRT GEMM GFLOP/s, the practical peak)`` of this machine, printed."""
    gflops_tf = statistics.median(matmul_gflops(threads) for _ in range(3))
    gemm = tflite_gemm_gflops(threads)
    gflops_peak = max(gflops_tf, gemm["square"])
    print(f"fp32 matmul 2048^3, {threads} threads: TF {gflops_tf:.1f} GFLOP/s, "
          f"LiteRT/XNNPACK {gemm['square']:.1f} GFLOP/s; the machine's practical limit: "
          f"{gflops_peak:.1f}", flush=True)
    for name, dims in THIN_GEMMS.items():
        print(f"LiteRT {name} ({'x'.join(map(str, dims))}): fp32 "
              f"{gemm[name + '_fp32']:.1f}, int8 weights {gemm[name + '_int8']:.1f} GFLOP/s "
              f"(int8/fp32 {gemm[name + '_int8'] / gemm[name + '_fp32']:.2f}x)", flush=True)
    return gflops_tf, gemm, gflops_peak


def _shape_work(args, shape: str) -> str:
    """The artefact folder of ``shape`` (``WORK/<shape>[-<vocab rows>]``)."""
    return os.path.join(args.work, shape + (f"-{args.vocab_rows}" if args.vocab_rows else ""))


def _measure_shape(args, shape, runtimes, sentences, fixed, lengths, raw_lengths,
                   results) -> None:
    """Prepares the artefacts of one shape, then runs every runtime ``--repeats`` times
    (round-robin), adding the measurements to ``results[(shape, runtime)]``."""
    work = _shape_work(args, shape)
    shape_runtimes = runtimes
    if shape == "labse" and args.labse_runtimes:
        shape_runtimes = [r for r in args.labse_runtimes.split(",") if r]
    t = time.time()
    cmd = [sys.executable, "-c",
           "from benchmarks import inference_speed; "
           "inference_speed.prepare(%r, %r, %r, %r)"
           % (shape, work, args.vocab, shape_runtimes)]
    subprocess.run(cmd, check=True)
    print(f"{shape}: artefacts ready ({time.time() - t:.0f}s)", flush=True)
    n = len(sentences)
    if shape == "labse" and args.labse_sentences:
        n = min(n, args.labse_sentences)
    nf = FIXED_BATCH if shape == "labse" else len(fixed)
    ns = min(args.single, n)
    inputs = os.path.join(work, "inputs.json")
    with open(inputs, "w", encoding="utf-8") as f:
        json.dump({"real": sentences[:n], "fixed": fixed[:nf], "single": sentences[:ns]},
                  f, ensure_ascii=False)
    for name in os.listdir(work):  # embeddings of an earlier run are no reference
        if name.startswith("out-") and name.endswith(".npy"):
            os.remove(os.path.join(work, name))
    cfg = vars(model_cfg(shape))
    # The real sentences' own lengths (no padding): the useful work of every runtime.
    flops_real = encoder_flops(cfg, list(lengths[:n]))
    flops_fixed = encoder_flops(cfg, [FIXED_TOKENS] * nf)
    for rep in range(args.repeats):
        for runtime in shape_runtimes:
            r = _run_worker(args, shape, runtime, work, inputs)
            if r is None:
                continue
            entry = results.setdefault((shape, runtime), {
                "real": [], "fixed": [], "rss": [], "cpu": [], "single": [], "n": n,
                "nf": nf, "flops_real": flops_real, "flops_fixed": flops_fixed})
            entry["real"] += [n / s for s in r["real_s"]]
            entry["single"] += [ns / s for s in r["single_s"]]
            entry["fixed"] += [nf / s for s in r["fixed_s"]]
            entry["cpu"] += [n / s for s in r["real_cpu_s"]]
            entry["rss"].append(r["peak_rss_mib"])
            print(f"  {shape:13s} {runtime:12s} round {rep + 1}: real "
                  f"{statistics.median(entry['real']):8.1f}/s  1-by-1 "
                  f"{statistics.median(entry['single']):7.1f}/s  fixed "
                  f"{statistics.median(entry['fixed']):8.1f}/s  peak "
                  f"{r['peak_rss_mib']:7.0f} MiB", flush=True)


def _print_table(args, shapes, runtimes, results, gflops_peak) -> dict:
    """Prints the table of medians; returns them per ``(shape, runtime)``."""
    header = ["shape", "runtime", "real sent/s", "real sent/CPU-s", "1-by-1 sent/s",
              "256x32 sent/s", "real GFLOP/s", "real % matmul",
              "GFLOP/s", "% matmul",
              "peak MiB", "size MiB", "min cos", "gate"]
    rows = []
    summary = {}
    for shape in shapes:
        for runtime in runtimes:
            e = results.get((shape, runtime))
            if not e:
                continue
            real = statistics.median(e["real"])
            fixedv = statistics.median(e["fixed"])
            gf = e["flops_fixed"] / (e["nf"] / fixedv) / 1e9
            gf_real = e["flops_real"] / (e["n"] / real) / 1e9
            size = _artefact_mib(_shape_work(args, shape), runtime)
            cos = _min_cosine(_shape_work(args, shape), runtime)
            summary[(shape, runtime)] = dict(real=real, fixed=fixedv, gflops=gf,
                                             gflops_real=gf_real,
                                             rss=max(e["rss"]), size=size, cos=cos)
            cpu = statistics.median(e["cpu"])
            single = statistics.median(e["single"]) if e["single"] else None
            summary[(shape, runtime)].update(cpu=cpu, single=single)
            label = LABELS.get(shape, shape) + (f" {args.vocab_rows // 1000}k rows"
                                                if args.vocab_rows else "")
            rows.append([label, runtime, _fmt(real, 1), _fmt(cpu, 1),
                         _fmt(single, 1), _fmt(fixedv, 1),
                         _fmt(gf_real, 1), _fmt(100 * gf_real / gflops_peak, 0),
                         _fmt(gf, 1), _fmt(100 * gf / gflops_peak, 0), _fmt(max(e["rss"])),
                         _fmt(size), _fmt(cos, 5), gate_text(runtime, cos)])
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).rjust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))
    return summary


def main(argv=None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    shapes, runtimes = _check_args(p, args)
    os.makedirs(args.work, exist_ok=True)
    pieces = _vocab_pieces(p, args)
    sentences = tatoeba_sentences(args.data_dir, args.sentences)
    fixed = exact_length_sentences(sentences, args.vocab, FIXED_TOKENS - 2,
                                   FIXED_BATCH * args.fixed_batches)
    raw_lengths = token_counts(sentences, args.vocab)
    lengths = np.array([min(k, SEQ_LENGTH - 2) + 2 for k in raw_lengths])
    print(f"{len(sentences)} Tatoeba sentences, tokens incl. [CLS]/[SEP] ({pieces:,}-piece vocab): "
          f"median {np.median(lengths):.0f}, mean {lengths.mean():.1f}, "
          f"p90 {np.percentile(lengths, 90):.0f}, max {lengths.max()}", flush=True)

    from lealla_tf import hardware
    cpu_desc, paths = hardware.cpu_info(), hardware.runtime_paths()
    machine = hardware.describe(paths, cpu_desc)
    print(machine, flush=True)
    gflops_tf, gemm, gflops_peak = _matmul_limits(args.threads)

    results = {}
    for shape in shapes:
        _measure_shape(args, shape, runtimes, sentences, fixed, lengths, raw_lengths, results)
    print()
    print(machine)
    print(f"Inference speed, {args.threads} CPU threads, median of "
          f"{args.repeats}x{args.inner_repeats} passes (sentences/s: real = {len(sentences)} Tatoeba "
          f"sentences sorted by token count in batches of at most {args.batch_size} sentences "
          f"and {args.batch_tokens if args.batch_tokens >= 0 else '8192 (TFLite 1024)'} "
          f"tokens, 1-by-1 = {args.single} "
          f"of them one per call; GFLOP/s on the 256x32 batch; peak RSS of the process; size "
          f"of the artefact; min cosine to the reference on 8 single sentences). "
          f"Matmul: {gflops_peak:.1f} GFLOP/s.")
    summary = _print_table(args, shapes, runtimes, results, gflops_peak)
    _print_targets(summary, gflops_peak, gemm)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": {k: v for k, v in cpu_desc.items() if k != "flags"},
                       "runtime_paths": paths, "matmul_gflops": gflops_peak, "matmul_gflops_tf": gflops_tf,
                       "tflite_gemm": gemm,
                       "results": {f"{k[0]}/{k[1]}": v for k, v in summary.items()}}, f,
                      indent=1)
    return 0


def gate_text(runtime: str, cos) -> str:
    """``ok >= 0.99`` / ``FAIL < 0.99`` against ``COSINE_GATES`` (``-`` without either)."""
    gate = COSINE_GATES.get(runtime)
    if gate is None or cos is None:
        return "-"
    return f"ok >= {gate:g}" if cos >= gate else f"FAIL < {gate:g}"


def _min_cosine(work, runtime, references=("tf-keras", "tf")):
    """Smallest cosine between this runtime's embeddings and those of the first of
    ``references`` measured in this run (the Keras layers, else the SavedModel)."""
    a = os.path.join(work, f"out-{runtime}.npy")
    b = next((p for p in (os.path.join(work, f"out-{r}.npy") for r in references)
              if os.path.exists(p)), None)
    if b is None or not os.path.exists(a):
        return None
    x, y = np.load(a), np.load(b)
    return float(np.min(np.sum(x * y, axis=1)))


def _artefact_mib(work, runtime):
    names = {"tf": "lealla", "tf-xla": "lealla-xla", "tf-bf16": "lealla",
             "ort-fp32": "bert.onnx", "ort-int8": "bert-int8.onnx",
             "torch": "torch_state.pt", "tf-keras": "weights.h5"}
    path = os.path.join(work, tflite_file(runtime) if runtime.startswith("tflite")
                        else names[runtime])
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path)
                   for f in fs) / 2 ** 20
    return os.path.getsize(path) / 2 ** 20 if os.path.exists(path) else None


def _print_targets(s, peak, gemm):
    """The issue's ratios, from the table's medians."""
    small = {k[1]: v for k, v in s.items() if k[0] == "lealla_small"}
    labse = {k[1]: v for k, v in s.items() if k[0] == "labse"}
    ours = [r for r in small if r.startswith("tf")]
    if not ours:
        return
    cols = (("real", "real sentences"), ("single", "1-by-1"), ("fixed", "256x32"))

    def best(rows, col):
        # End-to-end exports only (the full-integer encoder skips tokenization).
        cands = [r for r in rows if r.startswith("tf") and r != "tflite-int8-full"
                 and rows[r].get(col)]
        return max(cands, key=lambda r: rows[r][col], default=None)

    print("\nLEALLA-small, best export per column:")
    for col, label in cols:
        b = best(small, col)
        if b is None:
            continue
        parts = [f"{label:14s}: {b} {small[b][col]:.1f}/s"]
        for peer in ("ort-fp32", "torch"):
            if small.get(peer, {}).get(col):
                parts.append(f"{small[b][col] / small[peer][col]:.2f}x {peer}")
        lb = best(labse, col)
        if lb:
            parts.append(f"{small[b][col] / labse[lb][col]:.1f}x best LaBSE shape ({lb})")
            if labse.get(b, {}).get(col):
                parts.append(f"{small[b][col] / labse[b][col]:.1f}x LaBSE shape {b}")
        print("  " + ", ".join(parts))
    shares = ", ".join(f"{r} {100 * small[r]['gflops_real'] / peak:.0f}%"
                       for r in ("tf", "tflite-fp32", "tflite-int8") if r in small)
    print(f"  real sentences, share of the fp32 matmul limit ({peak:.1f} GFLOP/s): {shares}")
    if "tflite-int8" in small and "tflite-int8" in labse:
        print(f"  real sentences, int8 against int8: LEALLA-small "
              f"{small['tflite-int8']['real'] / labse['tflite-int8']['real']:.1f}x the "
              "LaBSE shape")
    bf = best(small, "fixed")
    print(f"  GFLOP/s of {bf} on 256x32: {small[bf]['gflops']:.1f} = "
          f"{100 * small[bf]['gflops'] / peak:.0f}% of the practical matmul's {peak:.1f}")
    if "tflite-fp32" in small and "tflite-int8" in small:
        f32, i8 = small["tflite-fp32"], small["tflite-int8"]
        ratios = ", ".join(f"{label} {i8[c] / f32[c]:.2f}x" for c, label in cols
                           if i8.get(c) and f32.get(c))
        print(f"  TFLite int8 / fp32 speed: {ratios}; size {f32['size'] / i8['size']:.1f}x "
              f"smaller; min cosine to the reference {i8['cos']:.5f}")
        for other in ("tflite-int8-ruy", "tflite-int8-full", "tf-bf16"):
            o = small.get(other)
            base = small.get("tf") if other == "tf-bf16" else f32
            if o and base:
                ratios = ", ".join(f"{label} {o[c] / base[c]:.2f}x" for c, label in cols
                                   if o.get(c) and base.get(c))
                print(f"  {other} / {'tf' if other == 'tf-bf16' else 'tflite-fp32'}: "
                      f"{ratios}; min cosine {_fmt(o['cos'], 5)}")
        print(f"  (int8-weight GEMM / fp32 GEMM on this CPU, same shapes: "
              f"{gemm['thin_ffn_int8'] / gemm['thin_ffn_fp32']:.2f}x FFN, "
              f"{gemm['thin_qkv_int8'] / gemm['thin_qkv_fp32']:.2f}x QKV)")


if __name__ == "__main__":
    sys.exit(main())
