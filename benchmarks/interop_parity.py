"""Every way a run ships to another library, against its TF SavedModel, on Tatoeba.

Exports one run in each format of ``lealla export --format`` (``hub``, ``sentence-transformers``,
``onnx``, ``mediapipe``) and evaluates every artefact through the library that loads it
(TensorFlow, LiteRT, sentence-transformers, ONNX Runtime, MediaPipe's ``TextEmbedder``) on the
same Tatoeba languages:

    python -m benchmarks.interop_parity --run results/demo/run --output results/interop

Prints a Markdown table (size, export time, Tatoeba accuracy, its change from the SavedModel
and the gate it must stay within: 0.1 points for float files, 0.5 for int8) and writes
``interop_parity.json``. Needs the ``interop`` extra and, for MediaPipe, ``make mediapipe-venv``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Largest change of the Tatoeba mean (points) from the SavedModel each kind of file may show.
FLOAT_GATE, INT8_GATE = 0.1, 0.5


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="results/demo/run", help="the training run to export")
    p.add_argument("--output", default="results/interop")
    p.add_argument("--data-dir", default=os.environ.get("LEALLA_DATA_DIR", ""))
    p.add_argument("--languages", default="teacher",
                   help="Tatoeba languages: 'teacher' (the run's teacher covers them), 'all', "
                        "or comma-separated codes")
    return p


def artefacts(output: str):
    """``name -> (spec, file or folder, precision)`` of every artefact of the four exports
    (the SavedModel through the export folder's embedder, as ``lealla eval`` loads it)."""
    from lealla_tf import layout
    hub, st, onnx, mp = (os.path.join(output, f) for f in layout.EXPORT_FORMATS)
    files = {
        "savedmodel": ("savedmodel", os.path.join(hub, layout.LEALLA), "float"),
        "tflite-int8": ("tflite", os.path.join(hub, layout.tflite_file_name("int8")), "int8"),
        "sentence-transformers": ("st", st, "float"),
        "onnx": ("onnx", os.path.join(onnx, layout.ONNX_FILE), "float"),
        "onnx-int8": ("onnx", os.path.join(onnx, layout.ONNX_INT8_FILE), "int8"),
        "mediapipe": ("mediapipe", os.path.join(mp, layout.mediapipe_file_name("fp32")),
                      "float"),
        "mediapipe-int8": ("mediapipe", os.path.join(mp, layout.mediapipe_file_name("int8")),
                           "int8"),  # (.task bundles: the run has a SentencePiece vocabulary)
    }
    out = {name: (f"{kind}:{path}", path, precision)
           for name, (kind, path, precision) in files.items()}
    out["savedmodel"] = (f"export:{hub}",) + out["savedmodel"][1:]
    return out


def _export_all(run: str, output: str):
    """Exports ``run`` in every format (an existing folder is kept); seconds per format."""
    from lealla_tf import export, fileio, layout
    seconds = {}
    for fmt in layout.EXPORT_FORMATS:
        target = os.path.join(output, fmt)
        if fileio.exists(os.path.join(target, layout.INFO_FILE)):
            continue
        start = time.perf_counter()
        if fmt == "hub":
            export.export_run(run, target, tflite=("int8",), overwrite=True)
        else:
            export.export_format(fmt, run, target, overwrite=True)
        seconds[fmt] = time.perf_counter() - start
        print(f"  exported {fmt} in {seconds[fmt]:.0f} s", flush=True)
    return seconds


def _languages(spec: str, run: str):
    from lealla_tf import config as config_lib
    from lealla_tf.evaluation import groups
    from lealla_tf.recipes import demo
    from lealla_tf.runs import config_path
    if spec != "teacher":
        return demo.eval_language_list(spec)
    cfg = config_lib.load(config_path(run))
    everything = demo.eval_language_list("all")
    return list(dict(groups.language_groups(everything, cfg.teacher.languages,
                                            cfg.data.train_files))["teacher"])


def _row_line(name, row, base):
    change = row["tatoeba"] - base
    gate = INT8_GATE if row["precision"] == "int8" else FLOAT_GATE
    return (f"| {name} | {row['bytes'] / 1e6:.1f} MB | {row['tatoeba']:.2f} | {change:+.2f} | "
            f"±{gate} | {'yes' if abs(change) <= gate else '**no**'} | "
            f"{row['sentences_per_second']:,.0f} |")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from lealla_tf import embedders, export, hardware, paths
    from lealla_tf.evaluation import tatoeba
    os.makedirs(args.output, exist_ok=True)
    seconds = _export_all(args.run, args.output)
    data_dir = paths.data_dir(args.data_dir)
    languages = _languages(args.languages, args.run)
    rows = {}
    for name, (spec, path, precision) in artefacts(args.output).items():
        if not os.path.exists(path):
            print(f"  {name}: not written ({path})", flush=True)
            continue
        model = embedders.load(spec)
        model.encode(["warm-up", "Aufwärmen"])  # first-call costs (tracing, the worker's start)
        start = time.perf_counter()
        res = tatoeba.evaluate(model, languages, data_dir=data_dir, use_cache=False,
                               progress=False)
        took = time.perf_counter() - start
        n = 2 * sum(r["n"] for r in res["per_language"].values())
        rows[name] = {"bytes": export.disk_bytes(path), "precision": precision,
                      "tatoeba": res["average"]["mean"], "sentences_per_second": n / took,
                      "per_language": {k: v["mean"] for k, v in res["per_language"].items()}}
        print(f"  {name}: {rows[name]['tatoeba']:.2f} ({n / took:,.0f} sentences/s)",
              flush=True)
        close = getattr(model, "close", None)
        if close:
            close()
    base = rows["savedmodel"]["tatoeba"]
    lines = [f"Tatoeba accuracy (mean of both directions, %) over {len(languages)} languages "
             "of each artefact, through the library that loads it; sentences/s: the whole "
             "evaluation's embedding, tokenization included, batches as each embedder makes "
             "them (MediaPipe: one text per call).", "", "```", hardware.describe(), "```", "",
             "| artefact | size | Tatoeba | change | gate | within | sentences/s |",
             "|---|---:|---:|---:|---:|---|---:|"]
    lines += [_row_line(name, row, base) for name, row in rows.items()]
    table = "\n".join(lines)
    print("\n" + table)
    infos = {}
    for fmt in ("sentence-transformers", "onnx", "mediapipe"):
        info_path = os.path.join(args.output, fmt, export.INFO_FILE)
        if os.path.exists(info_path):
            with open(info_path, encoding="utf-8") as f:
                infos[fmt] = json.load(f)
    with open(os.path.join(args.output, "interop_parity.json"), "w", encoding="utf-8") as f:
        json.dump({"languages": languages, "rows": rows, "export_seconds": seconds,
                   "export_info": infos, "table": table}, f, indent=1)
    return 0 if all(abs(r["tatoeba"] - base) <= (INT8_GATE if r["precision"] == "int8"
                                                 else FLOAT_GATE)
                    for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
