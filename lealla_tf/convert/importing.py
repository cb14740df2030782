"""Importing the released LaBSE and LEALLA SavedModels as run directories, with parity checks.

The released models are Model Garden BERT encoders, so each source variable is placed by its
Model Garden name and checked by shape, and the shape is read off the variables;
:func:`import_model` checks parity with the source before it writes::

    lealla import --source https://tfhub.dev/google/LEALLA/LEALLA-small/1 --output runs/small

See docs/released_models.md, "Import".
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from lealla_tf import config as config_lib
from lealla_tf import embedders, runs
from lealla_tf.layout import IMPORT_INFO_FILE
from lealla_tf.models import encoders
from lealla_tf.text import wordpiece

# The part of a variable name that places it (a prefix before it is ignored).
_KNOWN = re.compile(
    r"(word_embeddings/embeddings|position_embedding/embeddings|type_embeddings/embeddings|"
    r"embeddings/layer_norm/(?:gamma|beta)|"
    r"transformer/layer_\d+/(?:self_attention/(?:query|key|value|attention_output)/"
    r"(?:kernel|bias)|self_attention_layer_norm/(?:gamma|beta)|intermediate/(?:kernel|bias)|"
    r"output/(?:kernel|bias)|output_layer_norm/(?:gamma|beta))|"
    r"pooler_transform/(?:kernel|bias))$")
PARITY_TOLERANCE = 1e-5
INFO_FILE = IMPORT_INFO_FILE
LAYOUTS = ("encoder", "string")


class UnrecognisedModel(ValueError):
    """The source is not a SavedModel lealla_tf can import (the message says why)."""


def canonical_name(name: str) -> Optional[str]:
    """The Model Garden part of a variable name (``transformer/layer_0/...``), or None."""
    match = _KNOWN.search(name.split(":")[0])
    return match.group(1) if match else None


# ----------------------------------------------------------------------------- reading


def resolve(source: str) -> str:
    """A local folder for ``source``: a folder as is, else ``hub.resolve`` (TF Hub handle,
    ``http(s)://``/``gs://`` URL, Kaggle handle; downloads into ``$TFHUB_CACHE_DIR``)."""
    if source.startswith("hub:"):
        source = source[len("hub:"):]
    if tf.io.gfile.isdir(source):
        return source
    if source.startswith(("/", "./", "../", "~")) or os.path.exists(source):
        raise FileNotFoundError(f"import source not found (or not a folder): {source}")
    import tensorflow_hub as hub
    return hub.resolve(source)


def _load(folder: str):
    import tensorflow_text  # noqa: F401  (ops of preprocessors inside the SavedModel)
    if not tf.io.gfile.exists(os.path.join(folder, "saved_model.pb")):
        raise UnrecognisedModel(f"{folder} is not a SavedModel (no saved_model.pb)")
    return tf.saved_model.load(folder)


def source_variables(loaded) -> List[tf.Variable]:
    """The variables of a loaded SavedModel (its ``variables``, else those its functions use)."""
    variables = list(getattr(loaded, "variables", None) or [])
    if not variables:
        seen = {}
        for fn in list(loaded.signatures.values()):
            for v in fn.variables:
                seen[id(v)] = v
        variables = list(seen.values())
    return variables


def _layout(loaded) -> str:
    """``string`` (strings in) or ``encoder`` (a dict of token ids in)."""
    call = getattr(loaded, "__call__", None)
    fns = list(getattr(call, "concrete_functions", []) or [])
    fns += list(loaded.signatures.values())
    for fn in fns:
        args, kwargs = fn.structured_input_signature
        specs = tf.nest.flatten((args, kwargs))
        specs = [s for s in specs if isinstance(s, tf.TensorSpec)]
        if specs and all(s.dtype == tf.string for s in specs):
            return "string"
        if any(getattr(s, "name", "") == "input_word_ids" for s in specs) or \
                isinstance(args[0] if args else None, dict):
            return "encoder"
    raise UnrecognisedModel("the source takes neither strings nor BERT token ids "
                       "(input_word_ids, input_mask, input_type_ids)")


def _asset_vocab(loaded, folder: str) -> Tuple[Optional[bytes], Optional[bool]]:
    """The ``vocab_file`` asset and ``do_lower_case`` flag of a SavedModel (None if absent)."""
    vocab = None
    asset = getattr(loaded, "vocab_file", None)
    if asset is not None:
        path = asset.asset_path.numpy().decode("utf-8") if hasattr(asset, "asset_path") \
            else str(asset)
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path, "rb") as f:
                vocab = f.read()
    if vocab is None:
        path = os.path.join(folder, "assets", wordpiece.VOCAB_FILE)
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path, "rb") as f:
                vocab = f.read()
    flag = getattr(loaded, "do_lower_case", None)
    lower = bool(flag.numpy()) if flag is not None else None
    return vocab, lower


# ----------------------------------------------------------------------------- mapping


def infer_model_config(variables: Dict[str, tf.Variable], name: str = "imported",
                       num_attention_heads: int = 0) -> config_lib.ModelConfig:
    """The encoder shape from Model Garden variables (keyed by :func:`canonical_name`).

    Raises:
      UnrecognisedModel: a variable the shape needs is missing, or the number of heads cannot
        be read (2-D attention kernels) and ``num_attention_heads`` is not given.
    """
    need = ["word_embeddings/embeddings", "position_embedding/embeddings",
            "type_embeddings/embeddings", "transformer/layer_0/self_attention/query/kernel",
            "transformer/layer_0/intermediate/kernel"]
    missing = [k for k in need if k not in variables]
    if missing:
        raise UnrecognisedModel(f"not a BERT encoder: no variable(s) {missing}")
    vocab, hidden = variables["word_embeddings/embeddings"].shape.as_list()
    layers = {int(m.group(1)) for k in variables
              for m in [re.match(r"transformer/layer_(\d+)/", k)] if m}
    query = variables["transformer/layer_0/self_attention/query/kernel"].shape.as_list()
    heads = query[1] if len(query) == 3 else num_attention_heads
    if not heads:
        raise UnrecognisedModel("the attention kernels are 2-D, so the number of heads cannot be "
                           "read from them: pass --num-attention-heads")
    return config_lib.ModelConfig(
        name=name, vocab_size=vocab, hidden_size=hidden, num_layers=max(layers) + 1,
        num_attention_heads=heads,
        intermediate_size=variables["transformer/layer_0/intermediate/kernel"].shape[-1],
        max_position_embeddings=variables["position_embedding/embeddings"].shape[0],
        type_vocab_size=variables["type_embeddings/embeddings"].shape[0], hidden_act="gelu",
        dropout_rate=0.1, attention_dropout_rate=0.1)


def assign_weights(encoder: encoders.LeallaEncoder, variables: Sequence[tf.Variable]
                   ) -> Dict[str, int]:
    """Copies Model Garden BERT variables into ``encoder`` by name, checking every tensor.

    Args:
      encoder: a built :class:`LeallaEncoder` of the source's shape.
      variables: the source's variables.

    Returns:
      ``{"assigned": n, "ignored": m}`` (ignored: source variables that are not weights of
      the encoder, such as ``do_lower_case`` or an optimizer's slots are not; those raise).

    Raises:
      UnrecognisedModel: listing the source variables that could not be placed and the
        encoder weights nothing was found for.
    """
    targets = {}
    for v in encoder.bert.weights:
        key = canonical_name(v.name)
        if key is None:
            raise UnrecognisedModel(f"internal: encoder weight {v.name} has no known name")
        targets[key] = v
    unplaced, done, ignored = [], set(), 0
    for v in variables:
        if v.dtype not in (tf.float32, tf.float16, tf.bfloat16):
            ignored += 1  # e.g. do_lower_case, asset paths
            continue
        key = canonical_name(v.name)
        target = targets.get(key) if key else None
        if target is None:
            unplaced.append(f"{v.name} {v.shape.as_list()}")
            continue
        value = tf.cast(v, target.dtype)
        if value.shape != target.shape:
            if int(np.prod(value.shape)) != int(np.prod(target.shape)):
                unplaced.append(f"{v.name} {v.shape.as_list()} (the encoder's {key} is "
                                f"{target.shape.as_list()})")
                continue
            value = tf.reshape(value, target.shape)
        target.assign(value)
        done.add(key)
    unfilled = sorted(set(targets) - done)
    if unplaced or unfilled:
        raise UnrecognisedModel(
            "the source is not a LaBSE/LEALLA (Model Garden BERT) encoder lealla_tf can "
            f"import: {len(unplaced)} source variable(s) could not be placed: {unplaced}; "
            f"{len(unfilled)} encoder weight(s) found no source variable: {unfilled}")
    return {"assigned": len(done), "ignored": ignored}


# ----------------------------------------------------------------------------- parity


def _output(out) -> tf.Tensor:
    """The source's embedding output (:func:`lealla_tf.embedders.pick_output`)."""
    try:
        return embedders.pick_output(out, what="the source")
    except ValueError as e:
        raise UnrecognisedModel(str(e)) from e


def _call(loaded, inputs):
    try:
        return loaded(inputs, training=False)
    except (TypeError, ValueError):
        return loaded(inputs)


def source_embeddings(loaded, layout: str, sentences, preprocessor) -> np.ndarray:
    """The source's L2-normalised ``default`` output for ``sentences`` (token ids from
    ``preprocessor`` for the encoder layout)."""
    strings = tf.constant(list(sentences), tf.string)
    if layout == "string":
        out = _call(loaded, strings)
    else:
        out = _call(loaded, dict(preprocessor(strings)))
    return tf.math.l2_normalize(tf.cast(_output(out), tf.float32), axis=-1).numpy()


def check_parity(loaded, layout: str, preprocessor, encoder, sentences,
                 source_preprocessor=None) -> Dict[str, Any]:
    """Compares the imported encoder with its source on ``sentences``.

    Returns:
      ``max_abs_diff`` (of the L2-normalised ``default`` outputs), ``min_cosine`` and, with a
      ``source_preprocessor``, ``token_id_mismatches`` (rows whose packed ids differ) and
      ``max_abs_diff_source_ids`` (the source encoder on the source preprocessor's ids).
    """
    strings = tf.constant(list(sentences), tf.string)
    ours = encoders.StringEncoder(preprocessor, encoder, dynamic_length=False)(
        strings, training=False).numpy()
    theirs = source_embeddings(loaded, layout, sentences, preprocessor)
    result = {"sentences": len(sentences),
              "max_abs_diff": float(np.abs(ours - theirs).max()),
              "min_cosine": float(np.min(np.sum(ours * theirs, axis=1)))}
    if source_preprocessor is not None:
        src_inputs = _call(source_preprocessor, strings)
        our_inputs = preprocessor(strings)
        ids_a = src_inputs["input_word_ids"].numpy()
        ids_b = our_inputs["input_word_ids"].numpy()
        if ids_a.shape != ids_b.shape:
            raise UnrecognisedModel(f"the source preprocessor packs to {ids_a.shape[1]} tokens: "
                               f"import with --seq-length {ids_a.shape[1]}")
        result["token_id_mismatches"] = int(np.any(ids_a != ids_b, axis=1).sum())
        if layout == "encoder":
            via = tf.math.l2_normalize(tf.cast(_output(_call(loaded, {
                k: tf.cast(src_inputs[k], tf.int32) for k in encoders.INPUT_KEYS})),
                tf.float32), axis=-1).numpy()
            result["max_abs_diff_source_ids"] = float(np.abs(ours - via).max())
    return result


# ----------------------------------------------------------------------------- the command


@dataclasses.dataclass
class ImportResult:
    """What :func:`import_model` wrote and measured."""

    run_dir: str
    layout: str
    config: config_lib.ExperimentConfig
    parity: Dict[str, Any]
    checkpoint: str


def import_model(source: str, output_dir: str, preprocessor: str = "", seq_length: int = 128,
                 do_lower_case: Optional[bool] = None, num_attention_heads: int = 0,
                 name: str = "", check: bool = True, tolerance: float = PARITY_TOLERANCE,
                 overwrite: bool = False, probe: Optional[Sequence[bytes]] = None
                 ) -> ImportResult:
    """Imports a LaBSE/LEALLA SavedModel as a run directory (``lealla import``).

    Args:
      source: TF Hub handle, URL, or local SavedModel folder of the encoder (LaBSE) or the
        string-in model (LEALLA).
      output_dir: the run directory to write (must not exist unless ``overwrite``).
      preprocessor: optional preprocessor SavedModel (LaBSE's two-part layout): its
        vocabulary is used when the source has none, and its token ids are compared.
      seq_length: packed length of the run's preprocessor (the release's is 128).
      do_lower_case: overrides the source's flag (required when the source has none).
      num_attention_heads: needed only when attention kernels are 2-D.
      name: the model's name (default: from the source).
      check: compare the imported encoder with the source on the probe sentences and
        fail above ``tolerance``.
      tolerance: the largest allowed difference of the L2-normalised outputs.
      overwrite: replace an existing ``output_dir``.
      probe: sentences of the check (default: the export's multilingual probe set).

    Raises:
      UnrecognisedModel: an unrecognised source (listing the variables it could not place), no
        vocabulary, or a parity failure.
      FileExistsError: ``output_dir`` exists and ``overwrite`` is False.
    """
    from lealla_tf.export import formats

    if tf.io.gfile.exists(output_dir) and not overwrite:
        raise FileExistsError(f"{output_dir} already exists: pass --overwrite to replace it")
    folder = resolve(source)
    loaded = _load(folder)
    layout = _layout(loaded)
    pre_loaded = _load(resolve(preprocessor)) if preprocessor else None
    vocab, lower = _asset_vocab(loaded, folder)
    if pre_loaded is not None:
        p_vocab, p_lower = _asset_vocab(pre_loaded, resolve(preprocessor))
        vocab = vocab or p_vocab
        lower = lower if lower is not None else p_lower
    if vocab is None:
        raise UnrecognisedModel(f"{source} has no vocab_file asset (assets/vocab.txt): pass the "
                           "preprocessor SavedModel that has it with --preprocessor")
    if do_lower_case is not None:
        lower = do_lower_case
    if lower is None:
        raise UnrecognisedModel(f"{source} has no do_lower_case variable: pass --do-lower-case "
                           "true|false")

    variables = source_variables(loaded)
    by_name = {}
    for v in variables:
        key = canonical_name(v.name)
        if key:
            by_name[key] = v
    model_name = name or re.sub(r"[^A-Za-z0-9_.-]+", "_", source.rstrip("/").split("/")[-1]
                                if not source.rstrip("/").split("/")[-1].isdigit()
                                else source.rstrip("/").split("/")[-2])
    if not by_name:
        raise UnrecognisedModel(
            f"{source} has none of the Model Garden BERT variables (word_embeddings/"
            f"embeddings, transformer/layer_N/..., pooler_transform/...); could not place: "
            f"{sorted(v.name for v in variables)[:50]}")
    model_cfg = infer_model_config(by_name, model_name, num_attention_heads)
    pre = wordpiece.WordpiecePreprocessor(vocab, seq_length=seq_length, do_lower_case=lower)
    if pre.vocab_size != model_cfg.vocab_size:
        raise UnrecognisedModel(f"the vocabulary has {pre.vocab_size} tokens but the word "
                           f"embeddings {model_cfg.vocab_size} rows")
    encoder = encoders.build_encoder(model_cfg)
    encoder(encoder.dummy_inputs())
    counts = assign_weights(encoder, variables)

    parity: Dict[str, Any] = {}
    if check:
        sentences = list(probe or formats.PROBE_SENTENCES)
        parity = check_parity(loaded, layout, pre, encoder, sentences, pre_loaded)
        worst = max(parity["max_abs_diff"], parity.get("max_abs_diff_source_ids", 0.0))
        if worst > tolerance or parity.get("token_id_mismatches", 0):
            raise UnrecognisedModel(
                f"the imported encoder does not reproduce {source}: {parity} (tolerance "
                f"{tolerance}); check --do-lower-case, --seq-length and the activation")
    cfg = config_lib.ExperimentConfig(model=model_cfg)
    cfg.vocab = dataclasses.replace(cfg.vocab, type="wordpiece", do_lower_case=bool(lower),
                                    vocab_size=pre.vocab_size,
                                    model_file=os.path.join("vocab", wordpiece.VOCAB_FILE))
    cfg.preprocess.seq_length = int(seq_length)
    cfg.validate()

    info = {"source": source, "resolved": folder, "preprocessor": preprocessor,
            "layout": layout, "do_lower_case": bool(lower), "seq_length": int(seq_length),
            "model": dataclasses.asdict(model_cfg), "variables": counts, "parity": parity}
    checkpoint = runs.write_run(output_dir, cfg, pre.model_bytes, encoder, INFO_FILE, info)
    return ImportResult(output_dir, layout, cfg, parity, checkpoint)
