"""Export to what users take home: TF Hub SavedModels, TFLite files, a model card, archives.

:func:`export_run` (a run directory) and :func:`export_model` (in-memory models) write one
export folder atomically; :func:`publish` packs it for TF Hub / Kaggle Models::

    from lealla_tf import embedders, export
    info = export.export_run("runs/tiny", "exports/tiny")    # the export_info.json dict
    embedders.load("export:exports/tiny").encode(["dog", "Hund"])   # float32 [2, D]

See docs/export.md, and docs/architecture.md, "Export folder".
"""

from lealla_tf.embedders.artifacts import (
    CheckpointEmbedder,
    SavedModelEmbedder,
    TFLiteEmbedder,
    load_embedder,
)
from lealla_tf.export.card import human_bytes, render_model_card, summarise_metrics
from lealla_tf.export.exporter import (
    disk_bytes,
    export_model,
    export_run,
    format_sizes,
    run_card_info,
)
from lealla_tf.export.formats import (
    CARD_FILE,
    DEFAULT_CARD_TEMPLATE,
    ENCODER,
    ENCODER_OUTPUTS,
    INFO_FILE,
    INPUT_KEY,
    INT8_EMBEDDINGS_MIN_COSINE,
    LEALLA,
    OUTPUT_KEY,
    PREPROCESSOR,
    PROBE_SENTENCES,
    SAVED_MODELS,
    SIGNATURE,
    TFLITE_MIN_COSINE,
    TFLITE_VARIANTS,
    build_encoder_module,
    build_lealla_module,
    build_preprocessor_module,
    convert_tflite,
    cosine_rows,
    parse_tflite_variants,
    save_saved_model,
    sha256_file,
    tflite_file_name,
    tflite_interpreter,
)
from lealla_tf.export.publish import make_hub_archive, publish
from lealla_tf.export.targets import FORMATS, export_format

__all__ = [
    "FORMATS", "export_format", "CARD_FILE", "DEFAULT_CARD_TEMPLATE", "ENCODER", "ENCODER_OUTPUTS", "INFO_FILE",
    "INPUT_KEY", "INT8_EMBEDDINGS_MIN_COSINE", "LEALLA", "OUTPUT_KEY", "PREPROCESSOR", "PROBE_SENTENCES", "SAVED_MODELS",
    "SIGNATURE", "TFLITE_MIN_COSINE", "TFLITE_VARIANTS", "CheckpointEmbedder", "disk_bytes",
    "SavedModelEmbedder", "TFLiteEmbedder", "build_encoder_module", "build_lealla_module",
    "build_preprocessor_module", "convert_tflite", "cosine_rows", "export_model", "export_run",
    "format_sizes", "human_bytes", "load_embedder", "make_hub_archive", "parse_tflite_variants",
    "publish", "render_model_card", "run_card_info", "save_saved_model", "sha256_file",
    "summarise_metrics", "tflite_file_name", "tflite_interpreter",
]
