"""The export stage: a training run -> TF Hub SavedModels, TFLite files, model card,
and (optionally) the archives to publish.

Runs ``lealla export`` and then, with ``--publish``, ``lealla publish`` on the result; the
library code is the package ``lealla_tf/export/`` and the model card is filled from
``lealla_tf/resources/model_card.md``.

Example::

    python export/run_export.py --model-dir results/tiny --output exports/tiny \\
        --metrics results/tiny/tatoeba.json --publish publish/tiny \\
        --base-url https://example.org/models/tiny

Args (command line):
  --model-dir: the training run's model dir (config.yaml, vocab/spm.model, checkpoints/).
  --output: the export folder.
  --tflite: TFLite variants, comma-separated (fp32, fp16, int8; "none" for none).
  --metrics: ``lealla eval`` result JSON files quoted in the model card.
  --publish: also pack the export for TF Hub / Kaggle Models into this folder.
  --base-url: where the publish folder will be served (the cards' handles use it).
  --overwrite: replace existing output folders.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--tflite", default="fp32,fp16,int8")
    parser.add_argument("--checkpoint", default="")
    parser.add_argument("--metrics", nargs="*", default=[])
    parser.add_argument("--publish", default="")
    parser.add_argument("--base-url", default="")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    from lealla_tf import cli
    export_argv = ["export", "--model-dir", args.model_dir, "--output", args.output,
                   "--tflite", args.tflite]
    if args.checkpoint:
        export_argv += ["--checkpoint", args.checkpoint]
    if args.metrics:
        export_argv += ["--metrics", *args.metrics]
    if args.overwrite:
        export_argv.append("--overwrite")
    rc = cli.main(export_argv)
    if rc or not args.publish:
        return rc
    publish_argv = ["publish", "--export", args.output, "--output", args.publish]
    if args.base_url:
        publish_argv += ["--base-url", args.base_url]
    if args.overwrite:
        publish_argv.append("--overwrite")
    return cli.main(publish_argv)


if __name__ == "__main__":
    # Run as a script: the lealla_tf of this checkout, also where another copy is installed.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
