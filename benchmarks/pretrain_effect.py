"""Does LaBSE-style pre-training (MLM + TLM, progressive stacking) help a distilled student,
at equal CPU time?

The demo's setting (``configs/demo.yaml``: a 4 x 128 student over muse's vocabulary, word
table from the teacher, distilled from ``muse`` on 14 languages). Each variant gets the same
budget of process CPU time (``--budget`` seconds, all threads), split between pre-training
and distillation:

- ``distill``: the whole budget distils (the demo recipe);
- ``pretrain+distill``: ``--pretrain-share`` of it pre-trains the 4-layer student (MLM on
  both sides of the pairs + TLM, ``configs/pretrain_lealla_small_cpu.yaml``), the rest
  distils starting from it (``train.init_from``);
- ``stacked+distill``: the same with progressive stacking 1 -> 2 -> 4 layers (stage steps in
  LaBSE's proportions 2 : 4 : 9 of the pre-training time).

Pre-training reads the 14 distillation languages *and* ``--zero-shot`` languages the teacher
does not cover (their ``train/`` pairs; distillation never sees them): the case where a
student is weakest. Step counts come from a calibration of seconds per step (CPU time) for
each kind of step; the table reports the CPU and wall seconds each variant really used.

Scores: Tatoeba (test sets; mean of both directions) over the teacher's 14 languages and
over the zero-shot ones, the held-out MLM accuracy curve of each pre-training run, and the
teacher for reference. Everything is resumable (rerun to continue; finished variants are
kept in ``results.json``).

    LEALLA_DATA_DIR=/path/to/data nice python -m benchmarks.pretrain_effect \\
        --output results/pretrain_effect --budget 1800
    # a short check (minutes): 3 + 3 Tatoeba languages, small budget
    ... --output /tmp/pe --budget 60 --languages ara,deu,rus --zero-shot afr,ukr,ces \\
        --pairs-per-language 500
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEMO_LANGUAGES = ("ara", "cmn", "deu", "fra", "ita", "jpn", "kor", "nld", "pol", "por", "rus",
                  "spa", "tha", "tur")
# Tatoeba languages with training pairs that muse does not cover (Latin, Cyrillic, Greek,
# Hebrew scripts).
ZERO_SHOT = ("afr", "bul", "cat", "ces", "dan", "ell", "fin", "heb", "hun", "ind", "ron",
             "swe", "ukr", "vie")
VARIANTS = ("distill", "pretrain+distill", "stacked+distill")
STAGE_SHARES = (2, 4, 9)  # LaBSE: 400k, 800k, 1.8M steps


def _now():
    return time.process_time(), time.perf_counter()


class _Budget(Exception):
    pass


def prepare(args, root):
    """Training pairs (14 languages), zero-shot pairs, vocabulary, teacher embeddings."""
    from benchmarks.recipe_sweep import prepare as sweep_prepare
    from lealla_tf import corpus
    from lealla_tf.embedders import teachers
    from lealla_tf.recipes import demo
    output = os.path.abspath(args.output)
    if args.prepared:  # a `lealla demo` / recipe_sweep.py output: read, never written
        d = os.path.abspath(args.prepared)
        files = sorted(os.path.join(d, "data", f) for f in os.listdir(os.path.join(d, "data"))
                       if f.endswith(".tsv"))
        vocab, emb = os.path.join(d, "vocab", "spm.model"), os.path.join(d, "teacher_embeddings")
        teacher = teachers.load_teacher(args.teacher)
    else:
        teacher, files, _, vocab, emb = sweep_prepare(output, root, args.pairs_per_language, 50,
                                                      args.teacher, progress=False)
    zs_dir = os.path.join(output, "zero_shot_data")
    langs = [l for l in args.zero_shot.split(",") if l]
    if not os.path.isdir(zs_dir) and langs:
        source = corpus.find_files(["train/*-eng.tsv"], root, langs)
        demo.slice_pairs(source, zs_dir, args.pairs_per_language)
    zs = sorted(os.path.join(zs_dir, f) for f in os.listdir(zs_dir)) if langs else []
    return teacher, files, zs, vocab, emb


def _pretrain_cfg(args, files, vocab, stages, stage_steps, steps, eval_every):
    from lealla_tf import config
    from lealla_tf.text import sentencepiece
    n = sentencepiece.Preprocessor(vocab, 2).vocab_size
    sets = [f"model.vocab_size={n}", f"vocab.model_file={vocab}", "data.max_pairs_per_language=0",
            f"train.steps={steps}", f"pretrain.stages={stages}",
            f"pretrain.stage_steps={stage_steps}", f"pretrain.eval_every={eval_every}",
            f"train.steps_per_loop={min(10, max(1, eval_every))}",
            f"train.checkpoint_every={max(1, steps)}", f"teacher.spec={args.teacher}"]
    cfg = config.load("pretrain_lealla_small_cpu", sets + args.sets)
    cfg.data.train_files, cfg.data.data_dir = list(files), ""
    return cfg


def _distill_cfg(args, files, vocab, emb, steps, init_from=""):
    from lealla_tf import config
    from lealla_tf.text import sentencepiece
    cfg = config.load("demo", [f"train.steps={steps}", f"train.checkpoint_every={steps}",
                               f"train.steps_per_loop={min(50, steps)}",
                               f"train.warmup_steps={min(50, max(1, steps // 10))}"]
                      + args.sets)
    cfg.model.vocab_size = sentencepiece.Preprocessor(vocab, 2).vocab_size
    cfg.vocab.model_file = vocab
    cfg.data.train_files, cfg.data.data_dir = list(files), ""
    cfg.data.max_pairs_per_language = 0
    cfg.data.teacher_embeddings = emb
    cfg.teacher.spec = args.teacher
    cfg.train.init_from = init_from
    return cfg


def calibrate(args, teacher, files, zs, vocab, emb, output):
    """CPU seconds per step: distillation, pre-training at 1 and at 4 layers."""
    from lealla_tf.training import dual_encoder, pretraining
    path = os.path.join(output, "calibration.json")
    if os.path.exists(path):
        return json.load(open(path))
    out = {}

    def timed(make_job, key, steps):
        marks = []
        job = make_job(steps)
        job.run(lambda step, metrics: marks.append((step, _now()[0])))
        (s0, c0), (s1, c1) = marks[0], marks[-1]
        out[key] = (c1 - c0) / max(1, s1 - s0)
        print(f"  calibration {key}: {out[key]:.3f} CPU s/step", flush=True)

    n = args.calibration_steps
    timed(lambda s: dual_encoder.Trainer(_calib_distill(args, files, vocab, emb, s),
                                     os.path.join(output, "calib", "distill"),
                                     progress=False, teacher=teacher), "distill", n)
    for layers in (1, 4):
        timed(lambda s, layers=layers: pretraining.Pretrainer(
            _calib_pretrain(args, files + zs, vocab, layers, s),
            os.path.join(output, "calib", f"pretrain{layers}"), progress=False,
            teacher=teacher), f"pretrain{layers}", n)
    json.dump(out, open(path, "w"), indent=1)
    return out


def _calib_distill(args, files, vocab, emb, steps):
    cfg = _distill_cfg(args, files, vocab, emb, steps)
    cfg.train.steps_per_loop = max(1, steps // 4)
    return cfg


def _calib_pretrain(args, files, vocab, layers, steps):
    cfg = _pretrain_cfg(args, files, vocab, [], [], steps, 0)
    cfg.model.num_layers = layers
    cfg.pretrain.eval_pairs_per_language = 0
    cfg.train.steps_per_loop = max(1, steps // 4)
    return cfg.validate()


def tatoeba_scores(encoder, cfg, vocab, root, langs, name):
    import tensorflow as tf

    from lealla_tf.evaluation import runner, tatoeba
    from lealla_tf.models import encoders
    from lealla_tf.text import sentencepiece
    pre = sentencepiece.Preprocessor(vocab, cfg.preprocess.inference_seq_length
                                     or cfg.preprocess.seq_length)
    model = encoders.StringEncoder(pre, encoder)
    fn = tf.function(lambda x: model(x, training=False),
                     input_signature=[tf.TensorSpec([None], tf.string)])
    embedder = runner.as_embedder(lambda s: fn(tf.constant(s)).numpy(), name=name)
    res = tatoeba.evaluate(embedder, langs, data_dir=root, use_cache=False, progress=False)
    return {"average": res["average"]["mean"],
            "per_language": {k: v["mean"] for k, v in res["per_language"].items()}}


def run_variant(name, args, plan, teacher, files, zs, vocab, emb, root, output, langs, zero):
    from lealla_tf.training import dual_encoder, pretraining
    run_root = os.path.join(output, "runs", name)
    cpu0, wall0 = _now()
    curve = []
    init_from = ""
    if name != "distill":
        stacked = name.startswith("stacked")
        steps = plan["stacked_steps"] if stacked else [plan["pretrain_steps"]]
        stages = [1, 2, 4] if stacked else []
        total = sum(steps)
        every = max(1, -(-total // 6))  # about 6 points on the curve
        cfg = _pretrain_cfg(args, files + zs, vocab, stages, steps if stacked else [], total,
                            every)
        job = pretraining.Pretrainer(cfg, os.path.join(run_root, "pretrain"), progress=False,
                                     teacher=teacher)
        curve.append({"step": job.step, "layers": job.stage.layers, **job.evaluate()})

        def record(step, metrics):
            if "eval/accuracy" in metrics:
                curve.append({"step": step, "layers": int(metrics["layers"]),
                              **{k[5:]: v for k, v in metrics.items() if k.startswith("eval/")}})
        job.run(record)
        init_from = os.path.join(run_root, "pretrain")
    distill_cfg = _distill_cfg(args, files, vocab, emb, plan["distill_steps"][name], init_from)
    trainer = dual_encoder.Trainer(distill_cfg, os.path.join(run_root, "distill"), progress=False,
                               teacher=teacher)
    trainer.run()
    cpu, wall = _now()
    out = {"cpu_seconds": cpu - cpu0, "wall_seconds": wall - wall0,
           "distill_steps": plan["distill_steps"][name], "mlm_curve": curve}
    if name != "distill":
        out["pretrain_steps"] = steps
    out["tatoeba_teacher_langs"] = tatoeba_scores(trainer.encoder, distill_cfg, vocab, root,
                                                  langs, f"pe-{name}")
    if zero:
        out["tatoeba_zero_shot"] = tatoeba_scores(trainer.encoder, distill_cfg, vocab, root,
                                                  zero, f"pe-{name}-zs")
    return out


def make_plan(args, speed):
    budget, share = args.budget, args.pretrain_share
    distill_full = max(1, int(budget / speed["distill"]))
    distill_rest = max(1, int(budget * (1 - share) / speed["distill"]))
    pre = max(3, int(budget * share / speed["pretrain4"]))

    def per_step(layers):  # linear in depth between the two calibrations
        a, b = speed["pretrain1"], speed["pretrain4"]
        return a + (b - a) * (layers - 1) / 3

    shares = [s / sum(STAGE_SHARES) for s in STAGE_SHARES]
    stacked = [max(1, int(budget * share * f / per_step(l))) for f, l in zip(shares, (1, 2, 4))]
    return {"distill_steps": {"distill": distill_full, "pretrain+distill": distill_rest,
                              "stacked+distill": distill_rest},
            "pretrain_steps": pre, "stacked_steps": stacked}


def format_table(results, names, args, cpu):
    t = results["teacher"]
    zero = bool(args.zero_shot)
    lines = [f"\nEqual CPU budget {args.budget:.0f} s per variant ({cpu}); pre-training share "
             f"{args.pretrain_share:.0%}; teacher {args.teacher}",
             "", "| variant | pre-train steps | distill steps | CPU s | wall s | Tatoeba "
             f"({len(t['tatoeba_teacher_langs']['per_language'])} teacher languages) |"
             + (f" Tatoeba ({len(t['tatoeba_zero_shot']['per_language'])} zero-shot) |"
                if zero else ""),
             "|---|---:|---:|---:|---:|---:|" + ("---:|" if zero else "")]
    lines.append(f"| teacher ({args.teacher}) | | | | | "
                 f"{t['tatoeba_teacher_langs']['average']:.1f} |"
                 + (f" {t['tatoeba_zero_shot']['average']:.1f} |" if zero else ""))
    for name in names:
        r = results[name]
        pre = "+".join(str(s) for s in r.get("pretrain_steps", [])) or "0"
        lines.append(f"| {name} | {pre} | {r['distill_steps']} | {r['cpu_seconds']:.0f} | "
                     f"{r['wall_seconds']:.0f} | {r['tatoeba_teacher_langs']['average']:.1f} |"
                     + (f" {r['tatoeba_zero_shot']['average']:.1f} |" if zero else ""))
    for name in names:
        curve = results[name].get("mlm_curve")
        if curve:
            lines += ["", f"Held-out MLM+TLM accuracy of `{name}` (masked pieces):", "",
                      "| step | layers | accuracy | loss |", "|---:|---:|---:|---:|"]
            lines += [f"| {c['step']} | {c['layers']} | {100 * c['accuracy']:.1f}% | "
                      f"{c['loss']:.3f} |" for c in curve]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="results/pretrain_effect")
    p.add_argument("--data-dir", default=os.environ.get("LEALLA_DATA_DIR", ""))
    p.add_argument("--budget", type=float, default=1800.0,
                   help="CPU seconds (process time, all threads) per variant")
    p.add_argument("--pretrain-share", type=float, default=0.5,
                   help="share of the budget spent pre-training (pre-training variants)")
    p.add_argument("--pairs-per-language", type=int, default=3000)
    p.add_argument("--languages", default=",".join(DEMO_LANGUAGES),
                   help="Tatoeba languages the teacher covers (evaluation)")
    p.add_argument("--zero-shot", default=",".join(ZERO_SHOT),
                   help="languages the teacher does not cover: pre-trained on, evaluated on")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--teacher", default="muse")
    p.add_argument("--calibration-steps", type=int, default=8)
    p.add_argument("--prepared", default="",
                   help="reuse the training pairs, vocabulary (with its piece-vector cache) "
                        "and teacher embeddings of a `lealla demo` output folder (read only)")
    p.add_argument("--set", dest="sets", action="append", default=[],
                   help="an override for every pre-training and distillation config")
    args = p.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        p.error(f"unknown variant(s) {bad}; have {VARIANTS}")

    from benchmarks.recipe_sweep import cpu_line
    from lealla_tf import paths
    root = paths.data_dir(args.data_dir)
    output = os.path.abspath(args.output)
    os.makedirs(output, exist_ok=True)
    cpu = cpu_line()
    print(f"# pre-training effect on {cpu}, budget {args.budget:.0f} CPU s", flush=True)
    teacher, files, zs, vocab, emb = prepare(args, root)
    langs = [l for l in args.languages.split(",") if l]
    zero = [l for l in args.zero_shot.split(",") if l]
    results_path = os.path.join(output, "results.json")
    results = json.load(open(results_path)) if os.path.exists(results_path) else {}

    def save():
        with open(results_path + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(results_path + ".tmp", results_path)

    if "teacher" not in results:
        from lealla_tf.evaluation import tatoeba
        cache = os.path.join(output, "embedding_cache")
        results["teacher"] = {}
        for key, group in (("tatoeba_teacher_langs", langs), ("tatoeba_zero_shot", zero)):
            if group:
                res = tatoeba.evaluate(teacher, group, data_dir=root, cache=cache,
                                       progress=False)
                results["teacher"][key] = {
                    "average": res["average"]["mean"],
                    "per_language": {k: v["mean"] for k, v in res["per_language"].items()}}
        save()
    speed = calibrate(args, teacher, files, zs, vocab, emb, output)
    plan = make_plan(args, speed)
    print(f"  plan: {plan}", flush=True)
    for name in names:
        if name not in results:
            results[name] = run_variant(name, args, plan, teacher, files, zs, vocab, emb, root,
                                        output, langs, zero)
            save()
        r = results[name]
        print(f"  {name}: Tatoeba {r['tatoeba_teacher_langs']['average']:.1f}"
              + (f", zero-shot {r['tatoeba_zero_shot']['average']:.1f}" if zero else "")
              + f" ({r['cpu_seconds']:.0f} CPU s, {r['wall_seconds']:.0f} s)", flush=True)
    print(format_table(results, names, args, cpu))
    return 0


if __name__ == "__main__":
    sys.exit(main())
