"""Compact teacher shards on the demo data: shard size against student quality.

Trains the static student of the recipe sweep (``configs/demo_static.yaml``, lazy AdamW,
2000 steps x 256 pairs) once per teacher-shard layout and scores it on the development
pairs exactly as ``benchmarks.recipe_sweep`` does (retrieval within each language's
held-out pairs, mean of both directions, averaged over the 14 languages):

- ``512 float16``: the teacher's own rows (the default layout);
- ``128 float16``, ``128 int8``: PCA to 128 dimensions fitted on 20,000 sampled sentences
  (``lealla teacher embed --dim 128 --dtype ...``), int8 with a per-row scale.

It reads a prepared sweep folder (``recipe_sweep.py --output DIR``: ``data/``, ``dev/``,
``vocab/`` and the muse embeddings in ``teacher_embeddings/``), read-only. So as not to run
muse again, the shards are made from those stored muse rows (a lookup teacher named
``muse``: each sentence's stored row), which is what ``lealla teacher embed --teacher muse``
would compute, rounded to float16 once.

    LEALLA_DATA_DIR=/path/to/data python -m benchmarks.compact_shards \\
        --sweep results/recipe_sweep --output results/compact_shards
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
STATIC = os.path.join(HERE, "..", "configs", "demo_static.yaml")
LAYOUTS = {"512 float16": (0, "float16"), "128 float16": (128, "float16"),
           "128 int8": (128, "int8")}


def lookup_teacher(files, store_dir):
    """A teacher returning the stored muse row of each training sentence."""
    import numpy as np

    from lealla_tf import corpus
    from lealla_tf.distill import store
    from lealla_tf.embedders import teachers
    table = {}
    for path in files:
        src, tgt, _ = store.load_precomputed(store_dir, path)
        for i, s, t in corpus.iter_tsv(path):
            table[s] = src[i]
            table[t] = tgt[i]

    def fn(sentences):
        return np.stack([table[s] for s in sentences]).astype(np.float32)
    return teachers.CallableTeacher(fn, name="muse", dim=int(src.shape[1]))


def shard_bytes(folder, files):
    from lealla_tf.distill import store
    manifest = json.load(open(os.path.join(folder, store.MANIFEST)))
    total = 0
    for path in files:
        entry = manifest["files"][os.path.abspath(path)]
        for rec in entry["shards"]:
            total += os.path.getsize(os.path.join(folder, entry["dir"], rec["file"]))
    projection = os.path.join(folder, store.PROJECTION)
    return total, os.path.getsize(projection) if os.path.exists(projection) else 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", required=True, help="a prepared recipe_sweep.py output folder")
    p.add_argument("--output", default="results/compact_shards")
    p.add_argument("--layouts", default=",".join(LAYOUTS))
    p.add_argument("--set", dest="sets", action="append",
                   default=["train.optimizer=lazy_adamw"])
    args = p.parse_args(argv)

    from benchmarks.recipe_sweep import trainer_embedder
    from lealla_tf import config
    from lealla_tf.distill import store
    from lealla_tf.evaluation import pairs
    from lealla_tf.text import sentencepiece
    from lealla_tf.training import dual_encoder

    sweep = os.path.abspath(args.sweep)
    files = sorted(os.path.join(sweep, "data", f) for f in os.listdir(os.path.join(sweep, "data")))
    dev = sorted(os.path.join(sweep, "dev", f) for f in os.listdir(os.path.join(sweep, "dev")))
    vocab = os.path.join(sweep, "vocab", sentencepiece.MODEL_FILE)
    output = os.path.abspath(args.output)
    os.makedirs(output, exist_ok=True)
    teacher = lookup_teacher(files, os.path.join(sweep, "teacher_embeddings"))
    results_path = os.path.join(output, "results.json")
    results = json.load(open(results_path)) if os.path.exists(results_path) else {}
    for name in [n.strip() for n in args.layouts.split(",") if n.strip()]:
        if name in results:
            continue
        dim, dtype = LAYOUTS[name]
        folder = os.path.join(output, "shards", name.replace(" ", "_"))
        start = time.perf_counter()
        manifest = store.precompute(teacher, files, folder, dim=dim, dtype=dtype,
                                                 progress=False)
        embed_s = time.perf_counter() - start
        size, projection_size = shard_bytes(folder, files)
        projection = store.load_projection(folder)

        cfg = config.load(STATIC, args.sets)
        cfg.vocab.model_file = vocab
        cfg.model.vocab_size = sentencepiece.Preprocessor(vocab, 2).vocab_size
        cfg.data.train_files, cfg.data.data_dir = files, ""
        cfg.data.teacher_embeddings = folder
        start = time.perf_counter()
        trainer = dual_encoder.Trainer(cfg, os.path.join(output, "runs", name.replace(" ", "_")),
                                   progress=False, teacher=teacher)
        trainer.run()
        train_s = time.perf_counter() - start
        embedder = trainer_embedder(trainer, cfg, f"compact-{name}")
        res = pairs.evaluate_pair_files(embedder, dev, use_cache=False)
        rows = sum(manifest["files"][os.path.abspath(f)]["num_lines"] for f in files) * 2
        results[name] = {"dim": manifest["dim"], "dtype": dtype, "shard_bytes": size,
                         "projection_bytes": projection_size, "rows": rows,
                         "bytes_per_row": size / rows,
                         "pca_energy": projection["energy"] if projection else 1.0,
                         "embed_seconds": embed_s, "train_seconds": train_s,
                         "steps": cfg.train.steps, "batch": cfg.train.global_batch_size,
                         "dev": res["average"]}
        with open(results_path + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(results_path + ".tmp", results_path)
        r = results[name]
        print(f"{name}: {r['shard_bytes'] / 1e6:.1f} MB ({r['bytes_per_row']:.0f} B/row), "
              f"PCA energy {r['pca_energy']:.3f}, dev {r['dev']['mean']:.1f} "
              f"({train_s:.0f}s training)", flush=True)
    print("\n| shards | size (MB) | bytes/row | PCA energy kept | dev retrieval (mean) |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['shard_bytes'] / 1e6:.1f} | {r['bytes_per_row']:.0f} | "
              f"{r['pca_energy']:.3f} | {r['dev']['mean']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
