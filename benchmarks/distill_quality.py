"""Distillation quality: the demo recipe, longer, evaluated on all 112 Tatoeba languages.

Runs the demo job (``lealla_tf.recipes.demo``: slice pairs, vocabulary, teacher embeddings,
distillation, export, evaluation of teacher and students on all 112 Tatoeba languages) with a
longer recipe, then:

- the Tatoeba learning curve: every kept checkpoint evaluated on the teacher's languages;
- LEALLA-small (SavedModel and int8 TFLite) on the same languages;
- averages by language group (the teacher's languages, other languages with training pairs,
  languages without pairs, all), each model's retention of the teacher's average, and the
  student's speed-up over the teacher.

Prints one table, writes ``distill_quality.json``, ``learning_curve.png`` and the demo's
results into ``--output``. Resumable: rerun the same command after an interruption.

    LEALLA_DATA_DIR=/path/to/data python -m benchmarks.distill_quality \\
        --output results/distill_quality --pairs-per-language 6000
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from lealla_tf import config, export, layout, paths  # noqa: E402
from lealla_tf.embedders import teachers
from lealla_tf.evaluation import groups, tatoeba  # noqa: E402
from lealla_tf.recipes import demo

HERE = os.path.dirname(os.path.abspath(__file__))


def learning_curve(run_dir, languages, data_dir, cache):
    """Tatoeba average (teacher's languages) of every checkpoint kept in ``run_dir``."""
    state = tf.train.get_checkpoint_state(os.path.join(run_dir, layout.CHECKPOINT_DIR))
    points = []
    for path in (state.all_model_checkpoint_paths if state else []):
        embedder = export.CheckpointEmbedder(run_dir, checkpoint=path)
        res = tatoeba.evaluate(embedder, languages, data_dir=data_dir, cache=cache,
                               progress=False)
        step = int(path.rsplit("-", 1)[-1])  # checkpoints are numbered by training step
        points.append({"checkpoint": os.path.basename(path), "step": step,
                       "tatoeba": res["average"]["mean"]})
        print(f"  {os.path.basename(path)} (step {step}): {res['average']['mean']:.1f}",
              flush=True)
    return sorted(points, key=lambda p: p["step"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="results/distill_quality")
    p.add_argument("--data-dir", default=os.environ.get("LEALLA_DATA_DIR", ""))
    p.add_argument("--config", default=os.path.join(HERE, "..", "configs",
                                                    "distill_quality.yaml"))
    p.add_argument("--static-config", default=os.path.join(HERE, "..", "configs",
                                                           "distill_quality_static.yaml"),
                   help="the static student's recipe (the Transformer grows from it)")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--pairs-per-language", type=int, default=6000)
    p.add_argument("--lealla-small-config",
                   default=os.path.join(HERE, "..", "configs", "distill_lealla_small_cpu.yaml"),
                   help="also distil the LEALLA-small shape with this recipe ('' to skip)")
    p.add_argument("--all-languages", default="all",
                   help="the wide Tatoeba set: all (112), xtreme36 or a list")
    args = p.parse_args(argv)
    root = paths.data_dir(args.data_dir)
    output = os.path.abspath(args.output)
    start = time.perf_counter()

    demo.run(output, data_dir=root, config_path=args.config, overrides=args.overrides,
             pairs_per_language=args.pairs_per_language, ntrex="pairs", int8_languages="all",
             static_config_path=args.static_config,
             eval_languages=args.all_languages)
    results = json.load(open(os.path.join(output, "results.json"), encoding="utf-8"))
    cfg = config.load(args.config, args.overrides)
    own = results["groups"]["teacher"]
    cache = os.path.join(output, "embedding_cache")

    print("\nlearning curve (Tatoeba average over the teacher's languages):")
    curve = learning_curve(os.path.join(output, "run"), own, root, cache)

    teacher = teachers.load_teacher(results["teacher"])
    small = small_int8 = None
    if args.lealla_small_config:
        print("\nLEALLA-small shape (24 x 128) with the same recipe and data")
        scfg = config.load(args.lealla_small_config, args.overrides)
        if scfg.train.grow_layers and not scfg.train.init_from:
            # A grown recipe starts from this run's trained Transformer student.
            scfg.train.init_from = os.path.join(output, "run")
            print(f"grown to {scfg.train.grow_layers} layers from the student in "
                  f"{scfg.train.init_from}")
        vocab = os.path.join(output, "vocab", "spm.model")
        files = sorted(os.path.join(output, "data", f) for f in os.listdir(
            os.path.join(output, "data")) if f.endswith(".tsv"))
        small_run, small_export = os.path.join(output, "lealla_small_run"), os.path.join(
            output, "lealla_small_export")
        _, small_seconds = demo.train_student(scfg, small_run, vocab, files,
                                              os.path.join(output, "teacher_embeddings"),
                                              results["teacher"], teacher, True)
        if not os.path.exists(os.path.join(small_export, export.LEALLA, "saved_model.pb")):
            export.export_run(small_run, small_export, tflite=("int8",), overwrite=True)
        small = export.load_embedder(small_export)
        small_int8 = export.load_embedder(
            os.path.join(small_export, export.tflite_file_name("int8")))
        print("learning curve of LEALLA-small:")
        small_curve = learning_curve(small_run, own, root, cache)

    # The demo evaluated teacher, student (SavedModel, int8 TFLite) and static student on
    # every language; LEALLA-small (SavedModel, int8 TFLite) on the same ones here.
    models = results["models"]
    languages = results["languages"]
    wide = {name: models[name]["tatoeba"] for name in ("teacher", "student", "student_int8",
                                                       "static")}
    if small is not None:
        print(f"\nTatoeba, {len(languages)} languages: LEALLA-small (SavedModel, int8 TFLite)")
        for name, m in (("lealla_small", small), ("lealla_small_int8", small_int8)):
            wide[name] = tatoeba.evaluate(m, languages, data_dir=root, cache=cache)
    for name, res in wide.items():
        tatoeba.save(res, os.path.join(output, f"tatoeba_all_{name}.json"),
                     plot=os.path.join(output, f"tatoeba_all_{name}.png"))
    language_groups = results["groups"]
    scores = {name: {lang: r["mean"] for lang, r in res["per_language"].items()}
              for name, res in wide.items()}
    averages = {name: dict(groups.group_averages(per, language_groups))
                for name, per in scores.items()}
    speedup = (models["student"]["sentences_per_second"]
               / models["teacher"]["sentences_per_second"])
    speedup_int8 = (models["student_int8"]["sentences_per_second"]
                    / models["teacher"]["sentences_per_second"])

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([c["step"] for c in curve], [c["tatoeba"] for c in curve], marker="o",
            label="student")
    ax.axhline(averages["teacher"]["teacher"], ls="--", c="gray", label="teacher")
    ax.set_xlabel("training step")
    ax.set_ylabel("Tatoeba accuracy (%)")
    ax.set_title(f"Tatoeba on the teacher's {len(own)} languages")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(output, "learning_curve.png"), dpi=120)

    lines = [f"Tatoeba (mean of both directions, %), {len(languages)} languages by group",
             "", groups.summary_table(scores, language_groups)]
    if "ntrex_groups" in results:
        ntrex = {n: {lang: r["mean"] for lang, r in m["ntrex"]["per_language"].items()}
                 for n, m in models.items() if "ntrex" in m}
        lines += ["", "NTREX-128 (xx <-> eng retrieval, %), every language with training pairs "
                  "that NTREX-128 has", "",
                  groups.summary_table(ntrex, results["ntrex_groups"],
                                       all_title=f"all {len(results['ntrex_languages'])} "
                                                 "with pairs")]
    lines += ["", "| step | Tatoeba (teacher's languages) |", "|---:|---:|"]
    lines += [f"| {c['step']} | {c['tatoeba']:.1f} |" for c in curve]
    if small is not None:
        lines += ["", "| step | LEALLA-small, Tatoeba (teacher's languages) |", "|---:|---:|"]
        lines += [f"| {c['step']} | {c['tatoeba']:.1f} |" for c in small_curve]
        lines += ["", f"LEALLA-small: {small_seconds / 60:.0f} min of training"]
    lines += ["", f"student speed-up over the teacher: {speedup:.1f}× (SavedModel fp32), "
                  f"{speedup_int8:.1f}× (TFLite int8); "
                  f"student shape: {cfg.model.num_layers} layers, hidden {cfg.model.hidden_size}, "
                  f"{results['pairs']} training pairs, {results['train_steps']} steps, "
                  f"{results['train_seconds'] / 60:.0f} min of training"]
    lines += ["", "Tatoeba per language (mean of both directions, %)", "",
              groups.language_table(scores, language_groups)]
    table = "\n".join(lines)
    print("\n" + table)
    with open(os.path.join(output, "distill_quality.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    with open(os.path.join(output, "distill_quality.json"), "w", encoding="utf-8") as f:
        json.dump({"groups": language_groups, "averages": averages,
                   "retention": {n: dict(groups.retention(a, averages["teacher"]))
                                 for n, a in averages.items() if n != "teacher"},
                   "learning_curve": curve, "speedup": speedup,
                   "speedup_int8": speedup_int8, "config": cfg.to_dict(),
                   "seconds": time.perf_counter() - start}, f, indent=2)


if __name__ == "__main__":
    main()
