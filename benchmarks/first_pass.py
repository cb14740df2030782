"""The first pass over new text through a loaded SavedModel, against the second.

A function restored from a SavedModel and called eagerly is optimised again for every batch
shape it has not seen; called from one ``tf.function`` with a fixed string signature
(``embedders.teachers.string_function``, what the SavedModel embedder and teachers do) it is
not. This times both callers, and ``lealla_tf``'s ``export:`` embedder, on the same batches
(as the embedders cut them), two passes each, in the order given:

    python -m benchmarks.first_pass --export results/interop/hub --order wrapped saved

Run it twice with the callers in both orders (each caller has caches of its own, so the
order matters little, but the machine's state between processes does). Prints sentences/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

LANGUAGES = "ara,cmn,deu,fra,ita,jpn,kor"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--export", required=True, help="a `lealla export` folder")
    p.add_argument("--data-dir", default=os.environ.get("LEALLA_DATA_DIR", ""))
    p.add_argument("--languages", default=LANGUAGES, help="Tatoeba languages (both sides)")
    p.add_argument("--order", nargs="+", default=["wrapped", "saved", "embedder"],
                   choices=["saved", "wrapped", "embedder"])
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    import tensorflow as tf

    from lealla_tf import embedders, hardware, layout, paths
    from lealla_tf.embedders.teachers import string_function
    from lealla_tf.evaluation import tatoeba
    directory = tatoeba.find_local_dir(paths.data_dir(args.data_dir))
    sentences = []
    for lang in tatoeba.resolve_languages(args.languages):
        src, eng = tatoeba.load_pair(lang, directory)
        sentences += src + eng
    embedder = embedders.load(f"export:{args.export}")
    data = [embedders.as_bytes(s) for s in sentences]
    order = embedders.batch_order(embedders.sort_keys(embedder, data), embedder.batch_size,
                                  embedder.batch_tokens)
    batches = [[data[i] for i in idx] for idx in order]
    saved = os.path.join(args.export, layout.LEALLA)
    print(hardware.describe())
    print(f"{len(sentences):,} sentences in {len(batches)} batches "
          f"({len({(len(b), max(len(s) for s in b)) for b in batches})} distinct sizes)")
    for name in args.order:
        if name == "embedder":
            def call(batch, e=embedders.load(f"export:{args.export}")):
                return e.encode_batch(batch)
        else:
            model = tf.saved_model.load(saved)
            fn = string_function(model) if name == "wrapped" else model

            def call(batch, fn=fn):
                return fn(tf.constant(batch, tf.string)).numpy()
        call([b"warm-up"])
        speeds = []
        for _ in range(2):
            start = time.perf_counter()
            for batch in batches:
                call(batch)
            speeds.append(len(sentences) / (time.perf_counter() - start))
        print(f"{name}: first pass {speeds[0]:,.0f} sentences/s, second {speeds[1]:,.0f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
