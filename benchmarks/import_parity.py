"""Parity of `lealla import` and of the TFLite files of an imported model (prints a table).

No TF Hub access is needed: stand-ins are built like the releases (Model Garden's BERT
encoder; a preprocessor of Model Garden's TF Hub layers around TF Text's regular
``BertTokenizer``; the ``vocab_file`` asset and ``do_lower_case``), with a WordPiece
vocabulary learnt from the training data, at the LEALLA-small shape (24 x 128, 8 heads) by
default. Each is imported (LaBSE's two-part layout and LEALLA's string-in layout), then
exported to the TF Hub SavedModels and fp32/fp16/int8 TFLite, and every step is compared
with its source on the export's multilingual probe set and on held-out training sentences.

    python -m benchmarks.import_parity [--layers 24 --hidden 128 --heads 8]
"""

import argparse
import json
import os
import sys
import tempfile


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("LEALLA_DATA_DIR", ""))
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--stddev", type=float, default=0.05,
                        help="standard deviation of the stand-ins' random weights")
    args = parser.parse_args()

    from lealla_tf import corpus, export
    from lealla_tf.convert import importing
    from lealla_tf.export import formats
    from tests.support import standins

    files = corpus.find_files(["train/*-eng.tsv"], args.data_dir,
                              ("deu", "rus", "ara", "cmn", "jpn", "tha", "hin", "ell", "heb",
                               "kor"))
    lines = standins.corpus_lines(files, per_file=100)
    held_out = [s.encode("utf-8") for s in standins.corpus_lines(files, per_file=130)
                if s not in set(lines)][:200]
    probe = list(export.PROBE_SENTENCES) + held_out
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, lower in (("LaBSE layout (encoder + preprocessor)", False),
                            ("LEALLA layout (strings in)", True)):
            vocab = standins.make_vocab(lines, os.path.join(tmp, f"vocab{lower}.txt"), lower)
            n = len(open(vocab, encoding="utf-8").read().splitlines())
            enc = standins.bert_encoder(n, hidden=args.hidden, layers=args.layers,
                                        heads=args.heads, ffn=4 * args.hidden,
                                        positions=args.seq_length, seed=int(lower),
                                        stddev=args.stddev)
            folder = os.path.join(tmp, f"src{lower}")
            if lower:
                source = standins.save_string_model(enc, vocab, lower, args.seq_length, folder)
                pre = ""
            else:
                source = standins.save_encoder(enc, vocab, lower, folder)
                pre = standins.save_preprocessor(vocab, lower, args.seq_length,
                                                 folder + "-pre")
            run = os.path.join(tmp, f"run{lower}")
            result = importing.import_model(source, run, preprocessor=pre,
                                            seq_length=args.seq_length, probe=probe)
            out = os.path.join(tmp, f"export{lower}")
            # int8 is converted and measured here rather than gated by the exporter: on
            # random weights it says little about a trained model.
            info = export.export_run(run, out, tflite="fp32,fp16", progress=False)
            content = formats.convert_tflite(os.path.join(out, export.LEALLA), "int8")
            with open(os.path.join(out, export.tflite_file_name("int8")), "wb") as f:
                f.write(content)
            info["files"]["tflite-int8"] = {"bytes": len(content)}
            saved = export.load_embedder(out).encode(probe)
            row = {"layout": kind, "vocab": n, "sentences": len(probe),
                   "import max |diff|": result.parity["max_abs_diff"]}
            if "token_id_mismatches" in result.parity:
                row["token id rows differing"] = result.parity["token_id_mismatches"]
            for variant in export.TFLITE_VARIANTS:
                lite = export.load_embedder(os.path.join(
                    out, export.tflite_file_name(variant))).encode(probe)
                row[f"{variant} min cos"] = float(export.cosine_rows(lite, saved).min())
                row[f"{variant} MB"] = info["files"][f"tflite-{variant}"]["bytes"] / 1e6
            rows.append(row)
    print(f"shape: {args.layers} layers x {args.hidden}, {args.heads} heads, "
          f"seq_length {args.seq_length}, random weights with stddev {args.stddev}")
    for row in rows:
        print(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
