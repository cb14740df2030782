"""Sentences/second of the strings -> embeddings model for the LEALLA and LaBSE shapes.

Embeds real Tatoeba sentences (their real length distribution) with randomly
initialised encoders of each shape, tokenization included, on this machine's CPU,
and prints one table with the ratio to the LaBSE shape (all measured in the same run).

    LEALLA_DATA_DIR=/path/to/data python -m benchmarks.encoder_speed
    python -m benchmarks.encoder_speed --data-dir DATA --sentences 1000 --batch-size 128

The vocabulary only decides token lengths: a small unigram vocabulary is trained on
the training pairs once (or pass --vocab spm.model); the models keep the released
501,153-entry embedding table.
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from lealla_tf import config, corpus, paths  # noqa: E402
from lealla_tf.evaluation import tatoeba  # noqa: E402
from lealla_tf.models import encoders
from lealla_tf.text import sentencepiece

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")
SHAPES = ("lealla_small", "lealla_base", "lealla_large", "labse")
LANGS = ("deu", "fra", "rus", "cmn", "jpn", "ara", "hin", "tha", "tur", "spa")


def tatoeba_sentences(data_dir: str, n: int, seed: int = 0):
    directory = tatoeba.find_local_dir(data_dir)
    pool = []
    for lang in LANGS:
        xx, en = tatoeba.load_pair(lang, directory)
        pool.extend(xx)
        pool.extend(en)
    rng = np.random.default_rng(seed)
    return [pool[i] for i in rng.choice(len(pool), size=min(n, len(pool)), replace=False)]


def time_model(fn, sentences, batch_size, repeats):
    batches = [tf.constant(sentences[i:i + batch_size])
               for i in range(0, len(sentences), batch_size)]
    fn(batches[0])  # trace and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for b in batches:
            fn(b).numpy()
        times.append(time.perf_counter() - start)
    return len(sentences) / statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("LEALLA_DATA_DIR", ""))
    p.add_argument("--vocab", default="", help="existing spm.model (default: train one)")
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--sentences", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seq-length", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    data_dir = paths.data_dir(args.data_dir)

    vocab = args.vocab
    if not vocab:
        files = corpus.find_files(["train/*-eng.tsv"], data_dir, LANGS)
        vocab = sentencepiece.train_vocab(files, tempfile.mkdtemp(prefix="lealla_vocab_"),
                                          vocab_size=16000, sentences_per_language=2000)
    pre = sentencepiece.Preprocessor(vocab, seq_length=args.seq_length)
    sentences = tatoeba_sentences(data_dir, args.sentences)
    lengths = np.array(pre(tf.constant(sentences))["input_mask"].numpy().sum(1))
    print(f"{len(sentences)} Tatoeba sentences, tokens incl. [CLS]/[SEP]: median "
          f"{np.median(lengths):.0f}, p95 {np.percentile(lengths, 95):.0f}; padded to "
          f"{args.seq_length}; batch {args.batch_size}; {tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()} threads\n")

    rows = []
    for name in args.shapes.split(","):
        cfg = config.load(os.path.join(CONFIGS, f"{name}.yaml")).model
        encoder = encoders.LeallaEncoder.from_model_config(cfg)
        model = encoders.StringEncoder(pre, encoder)
        fn = tf.function(lambda x, m=model: m(x, training=False),
                         input_signature=[tf.TensorSpec([None], tf.string)])
        rate = time_model(fn, sentences, args.batch_size, args.repeats)
        rows.append((name, encoders.bert_param_count(cfg), rate))
        print(f"  measured {name}: {rate:.1f} sentences/s", flush=True)
        del model, encoder, fn

    ref = dict((r[0], r[2]) for r in rows).get("labse")
    print("\n| shape | parameters | sentences/s | × LaBSE shape |")
    print("|---|---:|---:|---:|")
    for name, params, rate in rows:
        ratio = f"{rate / ref:.2f}" if ref else "n/a"
        print(f"| {name} | {params / 1e6:.2f}M | {rate:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
