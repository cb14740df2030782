"""Training speed: pairs/s of the full training step, one device vs 2 replicas, and the cost
of the cross-replica gather of LaBSE-style negatives.

Each row runs the real job (``lealla_tf.training.dual_encoder.Trainer``: data pipeline with
tokenization, encoder on both sides, AMS loss, all-reduce, clipping, AdamW) on the
training data under ``$LEALLA_DATA_DIR/train``, and reports the median pairs/s over the
timed loops (the first loop, which traces the graph, is not timed). The 2-replica rows split
the CPU into 2 logical devices, so on a CPU host they show the overhead of replication and
the gather rather than a speed-up; on GPUs/TPUs the same code scales over real devices.

The gather's cost is measured twice: end to end (the same 2-replica job with
``loss.cross_replica_negatives`` on and off) and in isolation (an ``all_gather`` of the two
sides' [local batch, hidden] embeddings, forward and backward).

Usage::

    python -m benchmarks.train_speed [--shapes tiny small] [--batch 32] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SHAPES = {"tiny": "tiny.yaml", "small": "lealla_small.yaml"}
VOCAB_SIZE = 2000


def _split_cpu() -> None:
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)


def _vocab(work: str, data_root: str) -> str:
    from lealla_tf import corpus
    from lealla_tf.text import sentencepiece
    files = corpus.find_files(["train/*-eng.tsv"], data_root, ["deu", "fra", "rus", "ell"])
    return sentencepiece.train_vocab(files, os.path.join(work, "vocab"), vocab_size=VOCAB_SIZE,
                                     sentences_per_language=2000, progress=False)


def _run(shape: str, strategy, cross_replica: bool, vocab: str, args, work: str) -> float:
    from lealla_tf import config
    from lealla_tf.training import dual_encoder
    overrides = [
        f"vocab.model_file={vocab}", "data.languages=[deu, fra, rus, ell]",
        "data.max_pairs_per_language=3000", f"train.global_batch_size={args.batch}",
        f"train.steps={args.steps_per_loop * (args.loops + 1)}",
        f"train.steps_per_loop={args.steps_per_loop}", "train.checkpoint_every=1000000",
        "train.warmup_steps=1", f"preprocess.seq_length={args.seq_length}",
        f"loss.cross_replica_negatives={str(cross_replica).lower()}",
    ]
    path = os.path.join(ROOT, "configs", SHAPES[shape])
    # The benchmark vocabulary (2,000 pieces) must fit; larger model vocabularies stay.
    vocab_size = max(config.load(path).model.vocab_size, VOCAB_SIZE)
    cfg = config.load(path, overrides + [f"model.vocab_size={vocab_size}"])
    model_dir = os.path.join(work, f"{shape}-{strategy.num_replicas_in_sync}-{cross_replica}")
    shutil.rmtree(model_dir, ignore_errors=True)
    trainer = dual_encoder.Trainer(cfg, model_dir, strategy=strategy, progress=False)
    rates = []
    trainer.run(lambda step, m: rates.append(m["examples_per_second"]))
    return statistics.median(rates[1:])


def _gather_cost(strategy, local_batch: int, dim: int, repeats: int = 50) -> float:
    """Milliseconds per all_gather of both sides' embeddings (forward + backward)."""
    from lealla_tf.training import losses

    @tf.function
    def step(x, y):
        def replica_fn(a, b):
            with tf.GradientTape() as tape:
                tape.watch([a, b])
                (ga, gb), _ = losses.gather_global(a, b)
                total = tf.reduce_sum(ga * 1.5) + tf.reduce_sum(gb)
            return tape.gradient(total, [a, b])
        return strategy.run(replica_fn, args=(x, y))

    def values(ctx):
        return tf.ones([local_batch, dim]), tf.ones([local_batch, dim])

    x, y = strategy.experimental_distribute_values_from_function(values)
    step(x, y)
    start = time.perf_counter()
    for _ in range(repeats):
        out = step(x, y)
    tf.nest.map_structure(lambda t: t, strategy.experimental_local_results(out[0]))
    return 1000 * (time.perf_counter() - start) / repeats


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["tiny", "small"], choices=SHAPES)
    parser.add_argument("--batch", type=int, default=32, help="global batch (pairs)")
    parser.add_argument("--seq-length", type=int, default=32)
    parser.add_argument("--steps-per-loop", type=int, default=5)
    parser.add_argument("--loops", type=int, default=4, help="timed loops (after 1 warm-up)")
    parser.add_argument("--data-dir", default=os.environ.get("LEALLA_DATA_DIR", ""))
    args = parser.parse_args(argv)
    if not args.data_dir:
        parser.error("set LEALLA_DATA_DIR or pass --data-dir")
    os.environ["LEALLA_DATA_DIR"] = args.data_dir
    _split_cpu()
    from lealla_tf import config

    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    one = tf.distribute.OneDeviceStrategy(cpus[0])
    two = tf.distribute.MirroredStrategy(cpus[:2])
    work = tempfile.mkdtemp(prefix="train_speed_")
    try:
        vocab = _vocab(work, args.data_dir)
        rows = []
        for shape in args.shapes:
            hidden = config.load(os.path.join(ROOT, "configs", SHAPES[shape])).model.hidden_size
            r1 = _run(shape, one, True, vocab, args, work)
            r2 = _run(shape, two, True, vocab, args, work)
            r2_local = _run(shape, two, False, vocab, args, work)
            gather_ms = _gather_cost(two, args.batch // 2, hidden)
            rows.append((shape, hidden, r1, r2, r2_local, gather_ms))
            print(f"  {shape}: done", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nTraining speed on CPU ({os.cpu_count()} cores), global batch {args.batch} pairs, "
          f"seq_length {args.seq_length}, median of {args.loops} loops x "
          f"{args.steps_per_loop} steps\n")
    print("| shape | hidden | 1 device pairs/s | 2 logical devices pairs/s (global negatives) "
          "| 2 logical devices pairs/s (local negatives) | gather cost end to end (local / global pairs/s - 1) "
          "| all_gather fwd+bwd ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for shape, hidden, r1, r2, r2l, ms in rows:
        cost = 100.0 * (r2l / r2 - 1.0)
        print(f"| {shape} | {hidden} | {r1:.1f} | {r2:.1f} | {r2l:.1f} | {cost:+.1f}% "
              f"| {ms:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
