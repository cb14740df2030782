"""What ``lealla export --format`` writes: TF Hub (the export folder) or a folder that another
library loads unchanged (sentence-transformers, ONNX Runtime, MediaPipe Tasks).

Every writer of another library's format has one signature::

    export_run(model_dir, output_dir, *, checkpoint=None, overwrite=False, int8=True,
               progress=True, model_card_info=None) -> dict   # the export_info.json dict

and writes its folder atomically (docs/export.md, "sentence-transformers and ONNX Runtime",
"MediaPipe").
"""

from __future__ import annotations

import importlib
from typing import Any, Dict

from lealla_tf import layout

# Format -> "module:function" of the writers with the signature above (imported on first
# use: each needs its own libraries). The TF Hub folder (``hub``) has options of its own:
# :func:`lealla_tf.export.export_run`.
FORMATS: Dict[str, str] = {
    "sentence-transformers": "lealla_tf.export.to_sentence_transformers:export_run",
    "onnx": "lealla_tf.export.to_onnx:export_run",
    "mediapipe": "lealla_tf.export.to_mediapipe:export_run",
}
assert ("hub",) + tuple(FORMATS) == layout.EXPORT_FORMATS


def export_format(fmt: str, model_dir: str, output_dir: str, **options) -> Dict[str, Any]:
    """Exports a training model dir (or an imported LaBSE/LEALLA run) in format ``fmt``
    (one of :data:`FORMATS`).

    Raises:
      ValueError: an unknown format.
    """
    if fmt == "hub":
        raise ValueError("the hub format takes its own options: call export.export_run")
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: choose from {list(FORMATS)}")
    module, _, attr = FORMATS[fmt].partition(":")
    return getattr(importlib.import_module(module), attr)(model_dir, output_dir, **options)
