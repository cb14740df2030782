"""Vocabulary coverage: unknown pieces per Tatoeba language under the teacher's SentencePiece
model and under the demo's vocabulary (the teacher's extended with ``vocab.extend_pieces``).

Builds the demo's vocabulary on the demo's training slice (every language of ``train/``,
``--pairs-per-language`` each, the demo's seed and development split), then tokenizes the
foreign side of every Tatoeba test set with both and prints one table: languages with
training pairs first, worst first. A vocabulary folder already in ``--output`` is reused.

    LEALLA_DATA_DIR=/path/to/data python -m benchmarks.vocab_coverage \\
        --output results/vocab_coverage [--pairs-per-language 1500] [--extend-pieces 16000]
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="results/vocab_coverage")
    p.add_argument("--data-dir", default=os.environ.get("LEALLA_DATA_DIR", ""))
    p.add_argument("--pairs-per-language", type=int, default=1500)
    p.add_argument("--dev-pairs-per-language", type=int, default=300)
    p.add_argument("--extend-pieces", type=int, default=16000)
    args = p.parse_args(argv)

    from lealla_tf import corpus, paths
    from lealla_tf.distill import student_init
    from lealla_tf.embedders import teachers
    from lealla_tf.evaluation import vocab_coverage
    from lealla_tf.recipes import demo

    root = paths.data_dir(args.data_dir)
    output = os.path.abspath(args.output)
    train_dir = os.path.join(output, "data")
    if not os.path.isdir(train_dir):
        demo.slice_pairs(corpus.find_files(["train/*-eng.tsv"], root), train_dir,
                         args.pairs_per_language, dev_dir=os.path.join(output, "dev"),
                         dev_pairs_per_language=args.dev_pairs_per_language)
    files = sorted(os.path.join(train_dir, f) for f in os.listdir(train_dir))
    teacher = teachers.load_teacher("muse")
    teacher_model = os.path.join(output, "muse.model")
    if not os.path.exists(teacher_model):
        with open(teacher_model, "wb") as f:
            f.write(student_init.teacher_sentencepiece(teacher))
    extended = student_init.build_teacher_vocab(
        teacher, files, os.path.join(output, f"vocab_ext{args.extend_pieces}"),
        keep_unused=True, extend_pieces=args.extend_pieces)
    train = os.path.join(root, "train")
    before = vocab_coverage.tatoeba_unknown_rates(teacher_model, root, train_languages=train)
    after = vocab_coverage.tatoeba_unknown_rates(extended, root, train_languages=train)
    info = json.load(open(os.path.join(os.path.dirname(extended), student_init.INFO_FILE)))
    print(table(before, after, info))
    with open(os.path.join(output, "vocab_coverage.json"), "w", encoding="utf-8") as f:
        json.dump({"muse": before, "extended": after}, f, indent=1)
    return 0


def table(before, after, info):
    langs = sorted(after["languages"], key=lambda l: (
        not after["languages"][l]["has_pairs"], -after["languages"][l]["rate"],
        -before["languages"][l]["rate"], l))
    with_pairs = [l for l in langs if after["languages"][l]["has_pairs"]]
    worst = max(with_pairs, key=lambda l: after["languages"][l]["rate"])
    over = lambda res: sum(res["languages"][l]["rate"] > 1.0 for l in with_pairs)
    lines = [f"muse's SentencePiece model ({info['teacher_pieces']:,} pieces) against the demo's "
             f"vocabulary ({info['vocab_size']:,} pieces: {info['added_pieces']:,} added for "
             f"{info['uncovered_characters']:,} characters muse cannot read, "
             f"{info['neighbour_characters']:,} of them unseen letters of their scripts)",
             f"languages with training pairs above 1% unknown: {over(before)} -> {over(after)} "
             f"of {len(with_pairs)}; worst with pairs: {worst} "
             f"{after['languages'][worst]['rate']:.2f}%",
             "", "| language | training pairs | unknown pieces, muse (%) | unknown pieces, "
             "extended (%) |", "|---|---:|---:|---:|"]
    for lang in langs:
        a, b = after["languages"][lang], before["languages"][lang]
        pairs = f"{a['pairs']:,}" if a["has_pairs"] else "none"
        lines.append(f"| {lang} | {pairs} | {b['rate']:.2f} | {a['rate']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
