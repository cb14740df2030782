"""What each way of shipping a student costs in size and buys in Tatoeba accuracy.

Exports one run twice (float, and ``--int8-embeddings``) and evaluates every artefact a user
can ship on the same Tatoeba languages, beside the teacher's size:

- ``savedmodel``: the end-to-end ``lealla/`` SavedModel with the float table;
- ``savedmodel-int8rows``: the same with int8 word-embedding rows (serving only);
- ``tflite-fp32``, ``tflite-fp32-int8rows``: the fp32 TFLite file without and with them;
- ``tflite-int8``: the dynamic-range int8 file.

    python -m benchmarks.size_options --run results/demo/run --output results/size_options

Prints a Markdown table (size, Tatoeba on the teacher's languages and on all languages, and
the change from the float SavedModel) and writes ``size_options.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="results/demo/run", help="the training run to export")
    p.add_argument("--output", default="results/size_options")
    p.add_argument("--data-dir", default=os.environ.get("LEALLA_DATA_DIR", ""))
    p.add_argument("--languages", default="all", help="Tatoeba languages (default all 112)")
    p.add_argument("--teacher", default="muse", help="the teacher whose size is the bar")
    return p


def artefacts(output: str):
    """``name -> path`` of every shippable artefact of the two exports."""
    from lealla_tf import export
    plain, rows8 = os.path.join(output, "export"), os.path.join(output, "export_int8rows")
    return {
        "savedmodel": os.path.join(plain, export.LEALLA),
        "savedmodel-int8rows": os.path.join(rows8, export.LEALLA),
        "tflite-fp32": os.path.join(plain, export.tflite_file_name("fp32")),
        "tflite-fp32-int8rows": os.path.join(rows8, export.tflite_file_name("fp32")),
        "tflite-int8": os.path.join(plain, export.tflite_file_name("int8")),
    }


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from lealla_tf import config as config_lib
    from lealla_tf import embedders, export, fileio, paths
    from lealla_tf.evaluation import groups, tatoeba
    from lealla_tf.recipes import demo
    from lealla_tf.runs import config_path
    os.makedirs(args.output, exist_ok=True)
    for folder, int8_rows in (("export", False), ("export_int8rows", True)):
        target = os.path.join(args.output, folder)
        if not fileio.exists(os.path.join(target, export.INFO_FILE)):
            export.export_run(args.run, target, tflite=("fp32", "int8"),
                              int8_embeddings=int8_rows, overwrite=True)
    data_dir = paths.data_dir(args.data_dir)
    languages = demo.eval_language_list(args.languages)
    cfg = config_lib.load(config_path(args.run))
    lang_groups = dict(groups.language_groups(languages, cfg.teacher.languages,
                                              cfg.data.train_files))
    rows = {}
    for name, path in artefacts(args.output).items():
        model = embedders.load(path)
        res = tatoeba.evaluate(model, languages, data_dir=data_dir,
                               cache=os.path.join(args.output, "embedding_cache"))
        averages = dict(groups.group_averages(
            {lang: r["mean"] for lang, r in res["per_language"].items()}, lang_groups))
        rows[name] = {"bytes": export.disk_bytes(path), "tatoeba_groups": averages}
        print(f"  {name}: {rows[name]['bytes'] / 1e6:.1f} MB, " + ", ".join(
            f"{g} {v:.1f}" for g, v in averages.items() if v is not None), flush=True)
    teacher_size = demo.teacher_size(args.teacher)
    base = rows["savedmodel"]["tatoeba_groups"]
    lines = [f"Size and Tatoeba accuracy (mean of both directions, %) of each artefact; the "
             f"teacher ({args.teacher}) is {teacher_size}.", "",
             f"| artefact | size | teacher's {len(lang_groups.get('teacher', []))} | "
             f"all {len(languages)} | change on the teacher's | change on all |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        g = row["tatoeba_groups"]
        lines.append(f"| {name} | {row['bytes'] / 1e6:.1f} MB | {g['teacher']:.1f} | "
                     f"{g['all']:.1f} | {g['teacher'] - base['teacher']:+.2f} | "
                     f"{g['all'] - base['all']:+.2f} |")
    table = "\n".join(lines)
    print("\n" + table)
    with open(os.path.join(args.output, "size_options.json"), "w", encoding="utf-8") as f:
        json.dump({"rows": rows, "teacher_size": teacher_size, "table": table}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
