"""The names of the files in a run directory and in an export folder, declared once.

:mod:`lealla_tf.runs` reads and writes run directories, :mod:`lealla_tf.export` writes export
folders. See docs/architecture.md, "Run directory" and "Export folder".
"""

from __future__ import annotations

import posixpath

# ------------------------------------------------------------------ run directory
CONFIG_FILE = "config.yaml"            # the run's full ExperimentConfig
VOCAB_DIR = "vocab"
SPM_MODEL_FILE = "spm.model"           # a SentencePiece vocabulary
WORDPIECE_VOCAB_FILE = "vocab.txt"     # a WordPiece vocabulary (vocab.type: wordpiece)
VOCAB_FILE = posixpath.join(VOCAB_DIR, SPM_MODEL_FILE)
CHECKPOINT_DIR = "checkpoints"
TRAIN_LOG_DIR = posixpath.join("logs", "train")
PRETRAIN_LOG_DIR = posixpath.join("logs", "pretrain")
STAGES_DIR = "stages"                  # pre-training: one sub-run per progressive-stacking stage
DIVERGED_FILE = "DIVERGED"             # written when training stops on a NaN/Inf loss
IMPORT_INFO_FILE = "import_info.json"  # written by `lealla import`
VOCAB_TYPES = ("sentencepiece", "wordpiece")


def vocab_file_name(vocab_type: str) -> str:
    """The file name of a vocabulary of this type (``spm.model`` or ``vocab.txt``)."""
    return WORDPIECE_VOCAB_FILE if vocab_type == "wordpiece" else SPM_MODEL_FILE


def run_vocab_file(vocab_type: str) -> str:
    """Where a run keeps its vocabulary, relative to the run: ``vocab/spm.model`` or
    ``vocab/vocab.txt``."""
    return posixpath.join(VOCAB_DIR, vocab_file_name(vocab_type))


# ------------------------------------------------------------------ export folder
LEALLA, PREPROCESSOR, ENCODER = "lealla", "preprocessor", "encoder"  # the SavedModels
SAVED_MODELS = (LEALLA, PREPROCESSOR, ENCODER)
TFLITE_VARIANTS = ("fp32", "fp16", "int8")
INFO_FILE = "export_info.json"
CARD_FILE = "README.md"
INPUT_KEY = "sentences"                # the string-in signature's input
OUTPUT_KEY = "default"                 # ... and its output
SIGNATURE = "serving_default"
ENCODER_OUTPUTS = ("default", "pooled_output", "sequence_output")
ASSET_VOCAB = posixpath.join("assets", SPM_MODEL_FILE)  # a SavedModel's SentencePiece model


def tflite_file_name(variant: str) -> str:
    """``lealla-<variant>.tflite``."""
    return f"lealla-{variant}.tflite"


# ------------------------------------------------------------------ other libraries' formats
# `lealla export --format F` (hub, then lealla_tf.export.FORMATS); each folder's export_info.json names
# its format under "format" (the embedders' spec grammar reads it).
EXPORT_FORMATS = ("hub", "sentence-transformers", "onnx", "mediapipe")
ST_MODULES_FILE = "modules.json"       # what marks a sentence-transformers folder
ONNX_FILE = "model.onnx"               # ... an ONNX folder: float model,
ONNX_INT8_FILE = "model-int8.onnx"     # its dynamic int8 quantization,
ONNX_TOKENIZER_FILE = "tokenizer.json"  # and the Hugging Face tokenizer giving our ids


MEDIAPIPE_SUFFIXES = (".task", ".tflite")


def mediapipe_file_name(variant: str, bundle: bool = True) -> str:
    """A MediaPipe TextEmbedder model (fp32 or int8): ``embedder-<variant>.task`` for a model
    bundle (a zip of the model and its SentencePiece model), ``embedder-<variant>.tflite``
    for a plain TFLite file (WordPiece runs)."""
    return f"embedder-{variant}{MEDIAPIPE_SUFFIXES[0] if bundle else MEDIAPIPE_SUFFIXES[1]}"
