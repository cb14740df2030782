"""TFLite model metadata for MediaPipe Tasks, written with the ``flatbuffers`` package.

A MediaPipe text model carries a ``TFLITE_METADATA`` buffer (a ``ModelMetadata``
flatbuffer, schema ``metadata_schema.fbs``, file identifier ``M001``) naming its input
tensors and their tokenizer, and its associated files (the tokenizer model) packed as an
uncompressed zip archive appended after the flatbuffer, as the TFLite metadata populator
does. MediaPipe reads the files in place from that archive, so they are stored, not
deflated.

:func:`model_metadata` builds the buffer, :func:`attach` adds it and the files to a
converted model, :func:`read_metadata_buffer` reads it back. Field slots follow the
schema's field order (a union takes two: its type, then its value).

See docs/export.md, "MediaPipe".
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import flatbuffers

METADATA_BUFFER_NAME = "TFLITE_METADATA"
FILE_IDENTIFIER = b"M001"
# The oldest metadata parser that reads what :func:`model_metadata` writes: tokenizer
# options (BertTokenizerOptions, SentencePieceTokenizerOptions) and subgraph input process
# units came with 1.1.0; nothing newer (tensor groups 1.2.0, regex tokenizer 1.2.1, audio
# 1.3.0, file versions 1.4.1, custom metadata 1.5.0) is written.
MIN_PARSER_VERSION = "1.1.0"

# Enum values of metadata_schema.fbs.
FILE_UNKNOWN, FILE_VOCABULARY = 0, 5                 # AssociatedFileType
CONTENT_FEATURE = 1                                  # ContentProperties: FeatureProperties
UNIT_BERT_TOKENIZER, UNIT_SENTENCEPIECE_TOKENIZER = 4, 5  # ProcessUnitOptions

# Tables: field -> slot.
_ASSOCIATED_FILE = {"name": 0, "description": 1, "type": 2}
_CONTENT = {"content_properties_type": 0, "content_properties": 1}
_BERT_OPTIONS = {"vocab_file": 0}
_SENTENCEPIECE_OPTIONS = {"sentencePiece_model": 0, "vocab_file": 1}
_PROCESS_UNIT = {"options_type": 0, "options": 1}
_TENSOR = {"name": 0, "description": 1, "content": 3, "process_units": 4}
_SUBGRAPH = {"name": 0, "description": 1, "input_tensor_metadata": 2,
             "output_tensor_metadata": 3, "input_process_units": 5}
_MODEL = {"name": 0, "description": 1, "version": 2, "subgraph_metadata": 3, "author": 4,
          "license": 5, "min_parser_version": 7}
_NUM_FIELDS = {"AssociatedFile": 5, "Content": 3, "FeatureProperties": 0,
               "BertTokenizerOptions": 1, "SentencePieceTokenizerOptions": 2,
               "ProcessUnit": 2, "TensorMetadata": 7, "SubGraphMetadata": 10,
               "ModelMetadata": 8}


@dataclass
class Tokenizer:
    """A tokenizer process unit: ``sentencepiece`` (the model file) or ``bert`` (a WordPiece
    ``vocab.txt``), the file's name in the archive and its description."""

    kind: str
    file_name: str
    description: str = ""


@dataclass
class Tensor:
    """Metadata of one input or output tensor (``feature``: an embedding-like content)."""

    name: str
    description: str = ""
    feature: bool = False
    tokenizer: Optional[Tokenizer] = None


@dataclass
class Model:
    """What :func:`model_metadata` writes: the tensors in the subgraph's order, the
    tokenizer as a subgraph input process unit (the BERT layout reads it there) or on an
    input tensor (the one-tensor layout reads it there)."""

    name: str
    description: str
    inputs: List[Tensor]
    outputs: List[Tensor]
    subgraph_tokenizer: Optional[Tokenizer] = None
    version: str = ""
    author: str = ""
    license: str = ""
    files: Dict[str, bytes] = field(default_factory=dict)


class _Writer:
    def __init__(self):
        self.b = flatbuffers.Builder(1024)

    def string(self, text: str) -> Optional[int]:
        return self.b.CreateString(text) if text else None

    def vector(self, offsets: Sequence[int]) -> int:
        self.b.StartVector(4, len(offsets), 4)
        for off in reversed(offsets):
            self.b.PrependUOffsetTRelative(off)
        return self.b.EndVector()

    def table(self, kind: str, slots: Dict[str, int], offsets: Dict[str, Optional[int]],
              bytes_: Optional[Dict[str, int]] = None) -> int:
        self.b.StartObject(_NUM_FIELDS[kind])
        for name, value in offsets.items():
            if value is not None:
                self.b.PrependUOffsetTRelativeSlot(slots[name], value, 0)
        for name, value in (bytes_ or {}).items():
            self.b.PrependUint8Slot(slots[name], value, 0)
        return self.b.EndObject()

    def associated_file(self, name: str, description: str, type_: int) -> int:
        offsets = {"name": self.string(name), "description": self.string(description)}
        return self.table("AssociatedFile", _ASSOCIATED_FILE, offsets, {"type": type_})

    def process_unit(self, tokenizer: Tokenizer) -> int:
        if tokenizer.kind == "sentencepiece":
            model = self.vector([self.associated_file(tokenizer.file_name,
                                                      tokenizer.description, FILE_UNKNOWN)])
            options = self.table("SentencePieceTokenizerOptions", _SENTENCEPIECE_OPTIONS,
                                 {"sentencePiece_model": model})
            kind = UNIT_SENTENCEPIECE_TOKENIZER
        elif tokenizer.kind == "bert":
            vocab = self.vector([self.associated_file(tokenizer.file_name,
                                                      tokenizer.description, FILE_VOCABULARY)])
            options = self.table("BertTokenizerOptions", _BERT_OPTIONS, {"vocab_file": vocab})
            kind = UNIT_BERT_TOKENIZER
        else:
            raise ValueError(f"unknown tokenizer kind {tokenizer.kind!r}")
        return self.table("ProcessUnit", _PROCESS_UNIT, {"options": options},
                          {"options_type": kind})

    def tensor(self, tensor: Tensor) -> int:
        content = None
        if tensor.feature:
            props = self.table("FeatureProperties", {}, {})
            content = self.table("Content", _CONTENT, {"content_properties": props},
                                 {"content_properties_type": CONTENT_FEATURE})
        units = (self.vector([self.process_unit(tensor.tokenizer)])
                 if tensor.tokenizer else None)
        return self.table("TensorMetadata", _TENSOR, {
            "name": self.string(tensor.name), "description": self.string(tensor.description),
            "content": content, "process_units": units})


def model_metadata(model: Model) -> bytes:
    """The ``ModelMetadata`` flatbuffer (identifier ``M001``) of ``model``."""
    w = _Writer()
    inputs = w.vector([w.tensor(t) for t in model.inputs])
    outputs = w.vector([w.tensor(t) for t in model.outputs])
    units = (w.vector([w.process_unit(model.subgraph_tokenizer)])
             if model.subgraph_tokenizer else None)
    subgraph = w.table("SubGraphMetadata", _SUBGRAPH, {
        "name": w.string(model.name), "input_tensor_metadata": inputs,
        "output_tensor_metadata": outputs, "input_process_units": units})
    root = w.table("ModelMetadata", _MODEL, {
        "name": w.string(model.name), "description": w.string(model.description),
        "version": w.string(model.version), "subgraph_metadata": w.vector([subgraph]),
        "author": w.string(model.author), "license": w.string(model.license),
        "min_parser_version": w.string(MIN_PARSER_VERSION)})
    w.b.Finish(root, file_identifier=FILE_IDENTIFIER)
    return bytes(w.b.Output())


def attach(tflite_model: bytes, metadata: bytes, files: Dict[str, bytes]) -> bytes:
    """``tflite_model`` with ``metadata`` as its ``TFLITE_METADATA`` buffer and ``files``
    appended as an uncompressed zip archive (offsets from the start of the model file).

    Raises:
      ValueError: the model already has a ``TFLITE_METADATA`` buffer.
    """
    import numpy as np
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_model))
    model.metadata = list(model.metadata or [])
    if any(_name(m.name) == METADATA_BUFFER_NAME for m in model.metadata):
        raise ValueError(f"the model already has a {METADATA_BUFFER_NAME} buffer")
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(metadata, np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_BUFFER_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    out = io.BytesIO(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    out.seek(0, io.SEEK_END)
    if files:
        # Mode "a" on data that is not a zip archive appends one after it.
        with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
            for name, content in files.items():
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_STORED
                archive.writestr(info, content)
    return out.getvalue()


def _name(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value or "")


def read_metadata_buffer(tflite_model: bytes) -> bytes:
    """The ``TFLITE_METADATA`` buffer of a model file.

    Raises:
      ValueError: the model has none.
    """
    from tensorflow.lite.tools import flatbuffer_utils
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_model))
    for entry in model.metadata or []:
        if _name(entry.name) == METADATA_BUFFER_NAME:
            return bytes(bytearray(model.buffers[entry.buffer].data))
    raise ValueError(f"the model has no {METADATA_BUFFER_NAME} buffer")


def associated_files(tflite_model: bytes) -> Dict[str, bytes]:
    """The files of the zip archive appended to a model file ({} when it has none)."""
    try:
        with zipfile.ZipFile(io.BytesIO(tflite_model)) as archive:
            return {n: archive.read(n) for n in archive.namelist()}
    except zipfile.BadZipFile:
        return {}
