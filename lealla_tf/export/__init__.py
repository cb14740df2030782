"""Export to what users take home: TF Hub SavedModels, TFLite files and a model card.

:func:`export_model` (an in-memory preprocessor + encoder) and :func:`export_run` (a
training model dir) write one folder::

    OUT/lealla/                 end-to-end SavedModel: strings -> L2-normalised float32 [B, D]
    OUT/preprocessor/           TF Hub text API: __call__, tokenize, bert_pack_inputs
    OUT/encoder/                TF Hub text API: default, pooled_output, sequence_output,
                                encoder_outputs
    OUT/lealla-fp32.tflite      strings in, embeddings out (also -fp16, -int8 dynamic range)
    OUT/README.md               model card (from lealla_tf/resources/model_card.md)
    OUT/export_info.json        shape, file sizes, parity checks, what the card says

All three SavedModels are *reusable SavedModels* in the sense of TF Hub
(https://www.tensorflow.org/hub/reusable_saved_models): ``__call__`` traced for
``training=False`` and ``training=True``, ``variables``, ``trainable_variables``,
``regularization_losses``, plus a ``serving_default`` signature. They are built as plain
trackable objects whose functions close over the tf_keras models (as Model Garden's
``export_tfhub_lib`` does for ``bert_pack_inputs``), so they load with
``hub.KerasLayer`` (also ``trainable=True``), ``tf.saved_model.load`` and Keras 3
``keras.layers.TFSMLayer``. The TFLite files are converted from the exported ``lealla``
SavedModel's ``serving_default`` with TFLite builtins plus TF Text's custom SentencePiece
ops, and run with ``ai_edge_litert`` and ``tensorflow_text.tflite_registrar``.

Export is atomic: everything is written to a hidden temporary folder beside ``OUT`` and
renamed at the end; an existing ``OUT`` is replaced only with ``overwrite=True``.

:func:`publish` packs each SavedModel as a TF Hub compressed archive (``.tar.gz`` with the
SavedModel at its root, what ``hub.load`` fetches from an ``http(s)://``/``gs://`` URL) with
the model card beside it. :func:`load_embedder` turns an export folder, a ``.tflite`` file,
a run's model dir or a TF Hub handle into an embedder (``.name``, ``.encode``).

Example::

    lealla export --model-dir results/tiny --output exports/tiny --tflite fp32,fp16,int8
    lealla publish --export exports/tiny --output publish/tiny
    lealla embed --model exports/tiny/lealla-int8.tflite --input sentences.txt --output x.npy

or from Python::

    from lealla_tf import export
    info = export.export_run("results/tiny", "exports/tiny")
    embedder = export.load_embedder("exports/tiny")
    vectors = embedder.encode(["dog", "Hund"])  # float32 [2, D]

Modules: ``formats`` (SavedModel and TFLite builders, names), ``card`` (model card),
``exporter`` (writing export folders), ``publish`` (TF Hub archives), ``embedders``.
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

__all__ = [
    "CARD_FILE", "DEFAULT_CARD_TEMPLATE", "ENCODER", "ENCODER_OUTPUTS", "INFO_FILE",
    "INPUT_KEY", "INT8_EMBEDDINGS_MIN_COSINE", "LEALLA", "OUTPUT_KEY", "PREPROCESSOR", "PROBE_SENTENCES", "SAVED_MODELS",
    "SIGNATURE", "TFLITE_MIN_COSINE", "TFLITE_VARIANTS", "CheckpointEmbedder", "disk_bytes",
    "SavedModelEmbedder", "TFLiteEmbedder", "build_encoder_module", "build_lealla_module",
    "build_preprocessor_module", "convert_tflite", "cosine_rows", "export_model", "export_run",
    "format_sizes", "human_bytes", "load_embedder", "make_hub_archive", "parse_tflite_variants",
    "publish", "render_model_card", "run_card_info", "save_saved_model", "sha256_file",
    "summarise_metrics", "tflite_file_name", "tflite_interpreter",
]
