"""Recipe sweep: which settings make a student learn fast on CPU, chosen on development data.

Prepares the demo's data once (training pairs of the teacher's 14 languages, a disjoint
development split held out of ``train/``, the teacher's pruned vocabulary, the teacher's
embeddings of the training pairs), then trains one student per variant with the real
training job and scores each on the development pairs (retrieval within each language's
held-out pairs, mean of both directions, averaged over the languages). The Tatoeba test
sets are never read here.

Each variant is a recipe file plus ``--set``-style overrides; a variant whose name ends
in ``@0`` is the same student before any training step (its initialisation alone).
Every run is resumable: rerunning skips finished variants.

    LEALLA_DATA_DIR=/path/to/data python -m benchmarks.recipe_sweep \\
        --output results/recipe_sweep [--variants static,demo,random_pos] [--ntrex] [--list]
    # the same on the teacher vocabulary pruned to the training pairs:
    ... --output results/recipe_sweep_pruned --set vocab.keep_unused=false

``--ntrex`` also scores NTREX-128 retrieval (long news sentences; development data too).
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "..", "configs")
DEMO, STATIC = os.path.join(CONFIGS, "demo.yaml"), os.path.join(CONFIGS, "demo_static.yaml")
SMALL = os.path.join(CONFIGS, "distill_lealla_small_cpu.yaml")
OLD = ["vocab.source=train", "model.embedding_init=random", "model.pooling=cls"]

# name -> (recipe, overrides, what it tests)
BUCKETED = ["data.bucket_pool=16", "preprocess.dynamic_length=true"]
VARIANTS = {
    "static@0": (STATIC, [], "static, teacher init, no training"),
    "static": (STATIC, [], "static, teacher init, 2000 x 256"),
    "static_random": (STATIC, ["model.embedding_init=random"], "static, random init"),
    "transformer@0": (DEMO, [], "4x128 mean, teacher init, no training"),
    "demo": (DEMO, [], "4x128 mean, teacher init (demo.yaml)"),
    "cls": (DEMO, ["model.pooling=cls"], "demo with [CLS] pooling"),
    "random_init": (DEMO, ["model.embedding_init=random"], "demo with a random table"),
    "teacher_table": (DEMO, ["model.embedding_init=teacher_table"],
                      "demo, table from muse's own token embeddings"),
    "lr3e-3": (DEMO, ["train.learning_rate=0.003"], "demo, lr 3e-3"),
    "lr3e-4": (DEMO, ["train.learning_rate=0.0003"], "demo, lr 3e-4"),
    "batch256": (DEMO, ["train.global_batch_size=256", "train.steps=300"],
                 "demo, 300 x 256 (same pairs)"),
    "batch64": (DEMO, ["train.global_batch_size=64", "train.steps=1200"],
                "demo, 1200 x 64 (same pairs)"),
    "feature0": (DEMO, ["loss.feature_distill_weight=0"], "demo without feature distillation"),
    "feature300": (DEMO, ["loss.feature_distill_weight=300"], "demo, feature weight 300"),
    "logit10": (DEMO, ["loss.logit_distill_weight=10"], "demo + logit distillation 10"),
    "scale50": (DEMO, ["loss.scale=50"], "demo, AMS scale 50"),
    "layers2": (DEMO, ["model.num_layers=2"], "demo with 2 layers"),
    "seq48": (DEMO, ["preprocess.seq_length=48"], "demo, sequence length 48"),
    "steps800": (DEMO, ["train.steps=800"], "demo, 800 steps"),
    "steps1200": (DEMO, ["train.steps=1200"], "demo, 1200 steps"),
    "old_demo": (DEMO, OLD, "the previous recipe: own vocabulary, random, [CLS]"),
    "random_pos": (DEMO, ["model.position_init=random"],
                   "demo with random position/type init"),
    "lazy": (DEMO, ["train.optimizer=lazy_adamw"], "demo, lazy AdamW on the table"),
    "small24": (DEMO, ["model.num_layers=24"], "LEALLA-small shape 24 x 128, demo recipe"),
    "small24_lr5e-4": (DEMO, ["model.num_layers=24", "train.learning_rate=0.0005"],
                       "LEALLA-small shape, lr 5e-4"),
    "static_lazy": (STATIC, ["train.optimizer=lazy_adamw"],
                    "static, lazy AdamW on the table"),
    "bucketed": (DEMO, BUCKETED, "demo, length bucketing (pools of 16) + per-batch padding"),
    "small24_bucketed": (DEMO, ["model.num_layers=24", *BUCKETED],
                         "LEALLA-small shape, length bucketing"),
    # Every language (the defaults since all-language training): vocabulary, targets, weights.
    "static_noext": (STATIC, ["vocab.extend_pieces=0"],
                     "static, the teacher's vocabulary without added pieces"),
    "static_feat30": (STATIC, ["loss.feature_distill_weight=30"], "static, feature weight 30"),
    "static_feat300": (STATIC, ["loss.feature_distill_weight=300"],
                       "static, feature weight 300"),
    "static_4000": (STATIC, ["train.steps=4000"], "static, 4000 x 256"),
    "static_tw3": (STATIC, ["data.teacher_language_weight=3"],
                   "static, teacher's languages sampled 3x"),
    "demo_tw3": (DEMO, ["data.teacher_language_weight=3"],
                 "demo, teacher's languages sampled 3x"),
    # The Transformer grown from the trained `static` student (its table, identity blocks).
    "demo_from_static@0": (DEMO, ["train.init_from=@static", "train.grow_layers=4"],
                           "4x128 grown from the static student, no training"),
    "demo_from_static": (DEMO, ["train.init_from=@static", "train.grow_layers=4"],
                         "4x128 grown from the static student, demo recipe"),
    "demo_from_static_lr3e-4": (DEMO, ["train.init_from=@static", "train.grow_layers=4",
                                       "train.learning_rate=0.0003"],
                                "4x128 grown from the static student, lr 3e-4"),
    "demo_from_static_lr2e-3": (DEMO, ["train.init_from=@static", "train.grow_layers=4",
                                       "train.learning_rate=0.002"],
                                "4x128 grown from the static student, lr 2e-3"),
    "demo_from_static_bucketed": (DEMO, ["train.init_from=@static", "train.grow_layers=4",
                                         *BUCKETED, "train.steps=1600"],
                                  "4x128 grown from the static student, bucketed, 1600 steps"),
    "demo_from_static_tw3": (DEMO, ["train.init_from=@static", "train.grow_layers=4",
                                    "data.teacher_language_weight=3"],
                             "4x128 grown from the static student, teacher's languages 3x"),
    "demo_noext": (DEMO, ["vocab.extend_pieces=0"],
                   "demo, the teacher's vocabulary without added pieces"),
    "demo_1200": (DEMO, ["train.steps=1200"], "demo, 1200 x 128"),
    "demo_b256": (DEMO, ["train.global_batch_size=256"], "demo, 800 x 256"),
    "demo_feat30": (DEMO, ["loss.feature_distill_weight=30"], "demo, feature weight 30"),
    # Grown from the trained `demo` student (train.init_from=@demo runs it first): its 4
    # layers plus 20 identity blocks, then trained further.
    "grown24@0": (SMALL, ["train.init_from=@demo"],
                  "LEALLA-small grown from the demo student, no training"),
    "grown24": (SMALL, ["train.init_from=@demo"],
                "LEALLA-small grown from the demo student (new blocks on top)"),
    "grown24_bottom": (SMALL, ["train.init_from=@demo", "train.grow_position=bottom"],
                       "LEALLA-small grown from the demo student, new blocks at the bottom"),
    "grown24_lr3e-4": (SMALL, ["train.init_from=@demo", "train.learning_rate=0.0003"],
                       "LEALLA-small grown from the demo student, lr 3e-4"),
    "grown24_lr1e-3_400": (SMALL, ["train.init_from=@demo", "train.learning_rate=0.001",
                                   "train.steps=400"],
                           "LEALLA-small grown from the demo student, lr 1e-3, 400 steps"),
}


def prepare(output, root, pairs_per_language, dev_pairs, spec, progress=True, sets=(),
            languages=()):
    """Training slice, development split, teacher vocabulary and teacher embeddings."""
    from lealla_tf import config, corpus
    from lealla_tf.distill import store
    from lealla_tf.embedders import teachers
    from lealla_tf.recipes import demo

    teacher = teachers.load_teacher(spec)
    train_dir, dev_dir = os.path.join(output, "data"), os.path.join(output, "dev")
    if not os.path.isdir(train_dir):
        source = corpus.find_files(["train/*-eng.tsv"], root, list(languages))
        demo.slice_pairs(source, train_dir, pairs_per_language, dev_dir=dev_dir,
                         dev_pairs_per_language=dev_pairs)
    files = sorted(os.path.join(train_dir, f) for f in os.listdir(train_dir))
    dev = sorted(os.path.join(dev_dir, f) for f in os.listdir(dev_dir))
    cfg = config.load(DEMO, sets)  # the demo's vocabulary and teacher settings
    vocab = vocab_for(cfg, output, teacher, files, progress)
    emb = os.path.join(output, "teacher_embeddings")
    store.precompute(teacher, files, emb, progress=progress, languages=cfg.teacher.languages)
    return teacher, files, dev, vocab, emb, list(cfg.teacher.languages)


def vocab_for(cfg, output, teacher, files, progress=False):
    """The teacher vocabulary of a recipe's ``vocab`` settings (one folder per setting)."""
    from lealla_tf.distill import student_init
    v = cfg.vocab
    name = "vocab" + (f"_max{v.max_pieces}" if v.max_pieces else "") + (
        "" if v.keep_unused else "_used") + (f"_ext{v.extend_pieces}" if v.extend_pieces else "")
    return student_init.build_teacher_vocab(teacher, files, os.path.join(output, name),
                                            max_pieces=v.max_pieces, keep_unused=v.keep_unused,
                                            extend_pieces=v.extend_pieces, progress=progress)


def trainer_embedder(trainer, cfg, name):
    """The trainer's encoder as a strings-in embedder, packing to the export length."""
    import tensorflow as tf

    from lealla_tf.evaluation import runner
    from lealla_tf.models import encoders
    from lealla_tf.text import sentencepiece

    pre = sentencepiece.Preprocessor(
        trainer.vocab_path, cfg.preprocess.inference_seq_length or cfg.preprocess.seq_length)
    model = encoders.StringEncoder(pre, trainer.encoder)
    fn = tf.function(lambda x: model(x, training=False),
                     input_signature=[tf.TensorSpec([None], tf.string)])
    return runner.as_embedder(lambda s: fn(tf.constant(s)).numpy(), name=name)


def run_variant(name, recipe, overrides, output, files, vocab, emb, teacher, dev, cache,
                ntrex_root="", ntrex_languages=()):
    """Trains (or initialises) one variant and scores it on the development pairs."""
    from lealla_tf import config
    from lealla_tf.evaluation import pairs
    from lealla_tf.text import sentencepiece
    from lealla_tf.training import dual_encoder

    untrained = name.endswith("@0")
    # "@variant" in an override names that variant's run directory (e.g. train.init_from).
    overrides = [o.replace("=@", "=" + os.path.join(output, "runs", "")) for o in overrides]
    cfg = config.load(recipe, overrides)
    if cfg.vocab.source == "teacher":
        vocab = vocab_for(cfg, output, teacher, files)
    n = sentencepiece.Preprocessor(vocab, 2).vocab_size
    if cfg.vocab.source == "teacher":
        cfg.vocab.model_file = vocab
        cfg.model.vocab_size = n
    else:
        cfg.model.vocab_size = max(cfg.vocab.vocab_size, 8)
    cfg.data.train_files, cfg.data.data_dir = files, ""
    cfg.data.teacher_embeddings = emb
    run_dir = os.path.join(output, "runs", name)
    start = time.perf_counter()
    trainer = dual_encoder.Trainer(cfg, run_dir, progress=False, teacher=teacher)
    if not untrained:
        trainer.run()
    seconds = time.perf_counter() - start
    embedder = trainer_embedder(trainer, cfg, f"sweep-{name}")
    res = pairs.evaluate_pair_files(embedder, dev, use_cache=False)
    out = {"name": name, "recipe": os.path.basename(recipe), "overrides": overrides,
           "steps": 0 if untrained else cfg.train.steps,
           "batch": cfg.train.global_batch_size, "seconds": seconds,
           "vocab_size": cfg.model.vocab_size, "dev": res}
    if ntrex_root:  # NTREX-128 is development data too: long news sentences
        out["ntrex"] = pairs.evaluate_ntrex_retrieval(embedder, ntrex_root, ntrex_languages,
                                                      use_cache=False, progress=False)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="results/recipe_sweep")
    p.add_argument("--data-dir", default=os.environ.get("LEALLA_DATA_DIR", ""))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--pairs-per-language", type=int, default=1500)
    p.add_argument("--dev-pairs-per-language", type=int, default=300)
    p.add_argument("--teacher", default="muse")
    p.add_argument("--languages", default="",
                   help="comma-separated training languages (default: every file of train/)")
    p.add_argument("--set", dest="sets", action="append", default=[],
                   help="an override applied to every variant and to the shared vocabulary, "
                        "e.g. vocab.keep_unused=false (use a separate --output)")
    p.add_argument("--ntrex", action="store_true",
                   help="also score NTREX-128 retrieval (long sentences; development data)")
    p.add_argument("--list", action="store_true", help="list the variants and exit")
    args = p.parse_args(argv)
    if args.list:
        for name, (recipe, overrides, what) in VARIANTS.items():
            print(f"{name:16s} {os.path.basename(recipe):18s} {' '.join(overrides):50s} {what}")
        return 0
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; --list shows them")

    from lealla_tf import paths
    from lealla_tf.evaluation import pairs
    root = paths.data_dir(args.data_dir)
    output = os.path.abspath(args.output)
    os.makedirs(output, exist_ok=True)
    cpu = cpu_line()
    print(f"# recipe sweep on {cpu}", flush=True)
    languages = [x for x in args.languages.split(",") if x]
    teacher, files, dev, vocab, emb, teacher_langs = prepare(
        output, root, args.pairs_per_language, args.dev_pairs_per_language, args.teacher,
        sets=args.sets, languages=languages)
    cache = os.path.join(output, "embedding_cache")
    results_path = os.path.join(output, "sweep.json")
    results = json.load(open(results_path)) if os.path.exists(results_path) else {}
    from lealla_tf.recipes import demo
    ntrex_root, ntrex_langs = (root, list(demo.DEMO_LANGUAGES)) if args.ntrex else ("", ())
    if "teacher" not in results:
        results["teacher"] = pairs.evaluate_pair_files(teacher, dev, cache=cache)
    if args.ntrex and "ntrex" not in results["teacher"]:
        results["teacher"]["ntrex"] = pairs.evaluate_ntrex_retrieval(
            teacher, root, ntrex_langs, cache=cache, progress=False)
    t_dev = results["teacher"]["average"]["mean"]
    print(f"teacher ({args.teacher}) dev: {t_dev:.1f}" + (
        f", NTREX {results['teacher']['ntrex']['average']['mean']:.1f}" if args.ntrex else ""),
        flush=True)
    for name in names:
        needs = [o.split("=@", 1)[1] for o in VARIANTS[name][1] if "=@" in o]
        missing = [v for v in needs if v not in results and v not in names[:names.index(name)]]
        if name not in results and missing:
            p.error(f"variant {name} starts from variant(s) {missing}: list them before it")
        if name not in results:
            recipe, overrides, _ = VARIANTS[name]
            results[name] = run_variant(name, recipe, overrides + args.sets, output, files,
                                        vocab, emb, teacher, dev, cache, ntrex_root,
                                        ntrex_langs)
            with open(results_path + ".tmp", "w") as f:
                json.dump(results, f, indent=1)
            os.replace(results_path + ".tmp", results_path)
        r = results[name]
        ntrex = f", NTREX {r['ntrex']['average']['mean']:.1f}" if "ntrex" in r else ""
        own, other = dev_groups(r["dev"], teacher_langs)
        print(f"  {name}: dev {r['dev']['average']['mean']:.1f} (teacher's languages {own:.1f}, "
              f"others {other:.1f}){ntrex} "
              f"({r['steps']} x {r['batch']}, {r['seconds']:.0f}s)", flush=True)
    print(format_table(results, names, args.teacher, cpu, teacher_langs))
    return 0


def cpu_line():
    import platform
    model = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def dev_groups(result, teacher_langs):
    """Dev accuracy averaged over the teacher's languages and over the others."""
    per = result["per_language"]
    every = "all" in teacher_langs
    mean = lambda ls: sum(per[x]["mean"] for x in ls) / len(ls) if ls else float("nan")
    return (mean([x for x in per if every or x in teacher_langs]),
            mean([x for x in per if not every and x not in teacher_langs]))


def format_table(results, names, teacher, cpu, teacher_langs=("all",)):
    t_dev = results["teacher"]["average"]["mean"]
    t_own, t_other = dev_groups(results["teacher"], teacher_langs)
    t_ntrex = results["teacher"].get("ntrex", {}).get("average", {}).get("mean")
    lines = [f"\nDevelopment pairs held out of train/ ({cpu}); teacher {teacher}: {t_dev:.1f} "
             f"(its languages {t_own:.1f}, the others {t_other:.1f})"
             + (f", NTREX-128 {t_ntrex:.1f}" if t_ntrex else ""),
             "", "| variant | what | steps x batch | train s | dev, all | dev, teacher's "
             "languages | retention | dev, other languages | NTREX | NTREX retention |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in names:
        r = results[name]
        acc = r["dev"]["average"]["mean"]
        own, other = dev_groups(r["dev"], teacher_langs)
        ntrex = r.get("ntrex", {}).get("average", {}).get("mean")
        cells = (f"{ntrex:.1f} | {100 * ntrex / t_ntrex:.1f}%" if ntrex is not None and t_ntrex
                 else " | ")
        lines.append(f"| {name} | {VARIANTS[name][2]} | {r['steps']} x {r['batch']} | "
                     f"{r['seconds']:.0f} | {acc:.1f} | {own:.1f} | {100 * own / t_own:.1f}% | "
                     f"{other:.1f} | {cells} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
