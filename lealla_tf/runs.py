"""The one owner of a run directory: config, vocabulary, checkpoints, restore, resume checks.

Everything that writes a run (train, pretrain, import, prune) or reads one back (export,
embedders, ``train.init_from``, online teachers) goes through here; file names are in
:mod:`lealla_tf.layout`. Also the run's safety: one writer (:func:`writer`) and no resume
from a damaged checkpoint folder (:func:`resume_checkpoint`)::

    from lealla_tf import runs
    cfg, preprocessor, encoder = runs.restore_encoder("runs/tiny")   # latest checkpoint

See docs/architecture.md, "Run directory".
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from lealla_tf import config as config_lib
from lealla_tf import fileio, layout
from lealla_tf.layout import CHECKPOINT_DIR, CONFIG_FILE, STAGES_DIR, VOCAB_FILE
from lealla_tf.models import encoders
from lealla_tf.text import wordpiece

log = logging.getLogger(__name__)

# Sections that fix what a checkpoint contains: a resumed run must not change them.
_FROZEN_SECTIONS = ("model", "preprocess")
# Keys of those sections a resumed run may change: they act only at the start of training
# (initialisation) or after it (the exports' sequence length).
_FREE_KEYS = {("preprocess", "inference_seq_length"), ("model", "embedding_init"),
              ("model", "position_init"), ("preprocess", "dynamic_length"),
              ("preprocess", "length_multiple")}


def vocab_file(cfg: config_lib.ExperimentConfig) -> str:
    """Where a run keeps its vocabulary, relative to the run: ``vocab/spm.model`` or
    ``vocab/vocab.txt`` (``vocab.type: wordpiece``)."""
    return layout.run_vocab_file(cfg.vocab.type)


def config_path(run_dir: str) -> str:
    return fileio.join(run_dir, CONFIG_FILE)


def checkpoint_dir(run_dir: str) -> str:
    return fileio.join(run_dir, CHECKPOINT_DIR)


def latest_checkpoint(run_dir: str) -> Optional[str]:
    """The newest checkpoint of ``run_dir/checkpoints`` (None when it holds none).

    Raises:
      DamagedRunError: checkpoint files are there but the newest one cannot be used
        (see :func:`resume_checkpoint`).
    """
    return resume_checkpoint(checkpoint_dir(run_dir))


def is_run(path: str) -> bool:
    """Whether ``path`` holds a run's ``config.yaml``."""
    return fileio.exists(config_path(path))


def save_config(run_dir: str, cfg: config_lib.ExperimentConfig) -> None:
    """Writes the run's ``config.yaml``, its vocabulary named by its place in the run."""
    saved = dataclasses.replace(cfg, vocab=dataclasses.replace(cfg.vocab,
                                                               model_file=vocab_file(cfg)))
    config_lib.save(saved, config_path(run_dir))


def check_resume_config(cfg: config_lib.ExperimentConfig, model_dir: str) -> None:
    """Refuses to resume ``model_dir`` with a config that changes what its checkpoints hold.

    Raises:
      ConfigError: naming the section and the keys that differ.
    """
    path = config_path(model_dir)
    if not fileio.exists(path):
        return
    old = config_lib.load(path).to_dict()
    new = cfg.to_dict()
    for section in _FROZEN_SECTIONS:
        diff = {k: (old[section][k], new[section][k]) for k in old[section]
                if old[section][k] != new[section][k] and (section, k) not in _FREE_KEYS}
        if diff:
            raise config_lib.ConfigError(
                f"{model_dir} holds a run with another {section} config {diff} (old, new): "
                "use a new --model-dir")



def source_files(run_dir: str) -> Tuple[config_lib.ExperimentConfig, str]:
    """``(config, latest checkpoint)`` of a finished run (``train.init_from``).

    Raises:
      FileNotFoundError: not a run directory, or no checkpoint in it (a pre-training run
        that has not finished its last stage is named as such).
    """
    cfg_path = config_path(run_dir)
    if not fileio.exists(cfg_path) or fileio.isdir(cfg_path):
        raise FileNotFoundError(f"train.init_from: {cfg_path} not found: is {run_dir} a run "
                                "directory (lealla import / lealla train)?")
    checkpoint = latest_checkpoint(run_dir)
    if not checkpoint:
        if fileio.isdir(fileio.join(run_dir, STAGES_DIR)):
            raise FileNotFoundError(
                f"{run_dir} is a pre-training run that has not finished its last stage "
                f"({run_dir}/checkpoints is empty; earlier stages are in {run_dir}/stages): "
                "finish it with `lealla pretrain`, or name a stage's checkpoint with "
                "train.init_checkpoint")
        raise FileNotFoundError(f"train.init_from: no checkpoint in {run_dir}/checkpoints")
    return config_lib.load(cfg_path), checkpoint



def resolve_checkpoint(path: str) -> "tuple[str, str]":
    """``train.init_checkpoint`` -> ``(run_dir, checkpoint)``: a run directory (its latest
    checkpoint in ``checkpoints/``) or a checkpoint prefix inside one (``RUN/checkpoints/
    ckpt-N``, ``RUN/stages/layers-6/ckpt-N``).

    Raises:
      FileNotFoundError: neither, or no run directory above the checkpoint.
    """
    if tf.io.gfile.exists(path + ".index"):
        run_dir = fileio.dirname(os.path.abspath(path) if fileio.is_local(path) else path)
        for _ in range(3):
            run_dir = fileio.dirname(run_dir)
            if is_run(run_dir):
                return run_dir, path
        raise FileNotFoundError(f"train.init_checkpoint: no run directory (config.yaml) "
                                f"above {path}")
    if fileio.isdir(path):
        _, checkpoint = source_files(path)
        return path, checkpoint
    raise FileNotFoundError(f"train.init_checkpoint: {path} is neither a run directory nor "
                            "a checkpoint (no .index file)")



def checkpoint_mismatches(encoder, checkpoint: str):
    """The encoder tensors whose shape differs from, or that are missing in, ``checkpoint``
    (saved as ``tf.train.Checkpoint(encoder=...)``): lines ``path: model (..) vs checkpoint
    (..)``."""
    from tensorflow.python.checkpoint import graph_view
    from tensorflow.python.checkpoint import util as checkpoint_util
    root = tf.train.Checkpoint(encoder=encoder)
    trackables, *_, paths = checkpoint_util.objects_ids_and_slot_variables_and_paths(
        graph_view.ObjectGraphView(root))
    from tensorflow.core.protobuf import trackable_object_graph_pb2
    reader = tf.train.load_checkpoint(checkpoint)
    shapes = reader.get_variable_to_shape_map()
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))

    def saved_key(path: str):
        # A variable is saved once, under whichever path reached it first (e.g. a tied
        # embedding table under the MLM head): follow the object graph, not the key.
        node = 0
        for name in path.split("/"):
            node = next((c.node_id for c in graph.nodes[node].children
                         if c.local_name == name), None)
            if node is None:
                return None
        return next((a.checkpoint_key for a in graph.nodes[node].attributes
                     if a.name == "VARIABLE_VALUE"), None)

    out = []
    for obj in trackables:
        if not isinstance(obj, tf.Variable):
            continue
        path = paths[obj]
        path = path if isinstance(path, str) else "/".join(getattr(p, "name", str(p))
                                                          for p in path)
        key = saved_key(path)
        if key is None or key not in shapes:
            out.append(f"{path}: model {tuple(obj.shape)}, not in the checkpoint")
        elif tuple(shapes[key]) != tuple(obj.shape):
            out.append(f"{path}: model {tuple(obj.shape)} vs checkpoint {tuple(shapes[key])}")
    return out


def restore_encoder_checkpoint(encoder, checkpoint: str, purpose: str) -> None:
    """Restores ``encoder`` from ``checkpoint`` after checking every tensor's shape.

    Raises:
      ConfigError: naming every tensor that differs or is missing.
    """
    bad = checkpoint_mismatches(encoder, checkpoint)
    if bad:
        raise config_lib.ConfigError(
            f"{purpose}: {checkpoint} does not fit the model ({len(bad)} tensor(s) differ; "
            "the model shape must be the checkpoint's):\n  " + "\n  ".join(bad))
    tf.train.Checkpoint(encoder=encoder).restore(checkpoint).expect_partial() \
        .assert_existing_objects_matched()



def restore_encoder(model_dir: str, checkpoint: Optional[str] = None
                    ) -> Tuple[config_lib.ExperimentConfig, Any, "encoders.LeallaEncoder"]:
    """The trained encoder of a model dir, with its config and preprocessor.

    Args:
      model_dir: a directory written by :func:`train`.
      checkpoint: a checkpoint path (default: the latest in ``model_dir/checkpoints``).

    Raises:
      FileNotFoundError: no config, vocabulary or checkpoint in ``model_dir``.
    """
    cfg_path = config_path(model_dir)
    cfg = config_lib.load(cfg_path) if fileio.exists(cfg_path) else None
    vocab_path = fileio.join(model_dir, vocab_file(cfg) if cfg else VOCAB_FILE)
    for path in (cfg_path, vocab_path):
        if not fileio.exists(path):
            raise FileNotFoundError(f"{path} not found: is {model_dir} a training model dir?")
    checkpoint = checkpoint or latest_checkpoint(model_dir)
    if not checkpoint:
        raise FileNotFoundError(f"no checkpoint in {checkpoint_dir(model_dir)}")
    # Exports and evaluation pack to inference_seq_length (0: the training length).
    seq_length = cfg.preprocess.inference_seq_length or cfg.preprocess.seq_length
    preprocessor = wordpiece.make_preprocessor(cfg.vocab.type, vocab_path, seq_length,
                                               cfg.vocab.do_lower_case)
    encoder = encoders.build_encoder(cfg.model)
    encoder(encoder.dummy_inputs())
    try:
        tf.train.Checkpoint(encoder=encoder).restore(checkpoint).expect_partial() \
            .assert_existing_objects_matched()
    except (tf.errors.OpError, IndexError) as e:
        raise DamagedRunError(f"{checkpoint} cannot be read ({type(e).__name__}: "
                              f"{str(e).strip()[:200]}): the checkpoint is damaged") from e
    return cfg, preprocessor, encoder


def restore_wordpiece_run(run_dir: str, purpose: str):
    """:func:`restore_encoder` of a run that must have a WordPiece vocabulary.

    Raises:
      ValueError: naming ``purpose``, when the run's vocabulary is not WordPiece.
    """
    cfg, pre, encoder = restore_encoder(run_dir)
    if cfg.vocab.type != "wordpiece":
        raise ValueError(f"{purpose}: {run_dir} has a {cfg.vocab.type} vocabulary; a "
                         "WordPiece run (lealla import of LaBSE or LEALLA) is expected")
    return cfg, pre, encoder


def write_run(output_dir: str, cfg: config_lib.ExperimentConfig, vocab_bytes: bytes,
              encoder, info_file: str, info: Dict[str, Any]) -> str:
    """Writes a whole run directory (config, vocabulary, ``checkpoints/ckpt-0``, an info
    JSON) atomically: staged beside ``output_dir`` (or locally, for other file systems) and
    moved into place at the end; an existing ``output_dir`` is replaced.

    Returns:
      The checkpoint path.
    """
    with fileio.atomic_dir(output_dir, overwrite=True) as tmp:
        vocab_path = fileio.join(tmp, vocab_file(cfg))
        fileio.makedirs(fileio.dirname(vocab_path))
        fileio.atomic_write(vocab_path, vocab_bytes)
        config_lib.save(cfg, config_path(tmp))
        manager = tf.train.CheckpointManager(tf.train.Checkpoint(encoder=encoder),
                                             checkpoint_dir(tmp), 1)
        manager.save(checkpoint_number=0)
        info = dict(info, parameters=int(sum(int(np.prod(v.shape)) for v in encoder.weights)))
        fileio.atomic_write(fileio.join(tmp, info_file),
                            json.dumps(info, indent=1, ensure_ascii=False))
    return fileio.join(checkpoint_dir(output_dir), "ckpt-0")


# ------------------------------------------------------------------ safety of a run directory
LOCK_FILE = ".lock"
DAMAGED_DIR = "damaged"  # inside a checkpoint folder: checkpoints moved aside by a recovery
_CKPT = re.compile(r"^(?P<prefix>.+-(?P<n>\d+))\.(?:index|data-\d+-of-(?P<of>\d+))$")


class DamagedRunError(ValueError):
    """A run directory whose checkpoints cannot be resumed or read as they are."""


class RunLockedError(RuntimeError):
    """Another process writes the run directory."""


@contextlib.contextmanager
def writer(run_dir: str, force: bool = False) -> Iterator[None]:
    """Makes this process the one writer of ``run_dir`` for the block (train, pretrain,
    import, prune, export into it).

    Args:
      run_dir: the run directory (created).
      force: on file systems without locks (``gs://``), take over the marker of a writer
        that crashed.

    Raises:
      RunLockedError: another process holds the run, named in the message.
    """
    try:
        with fileio.writer_lock(fileio.join(run_dir, LOCK_FILE), force=force):
            yield
    except fileio.LockedError as e:
        raise RunLockedError(f"{run_dir} is being written by another process ({e}); wait for "
                             "it to finish or use another --model-dir") from None


def checkpoint_files(directory: str) -> Dict[int, List[str]]:
    """``{step: [file names]}`` of the ``ckpt-N.*`` files in a checkpoint folder."""
    out: Dict[int, List[str]] = {}
    if not fileio.isdir(directory):
        return out
    for name in fileio.listdir(directory):
        m = _CKPT.match(name.rstrip("/"))
        if m:
            out.setdefault(int(m.group("n")), []).append(name.rstrip("/"))
    return out


def checkpoint_problem(prefix: str) -> Optional[str]:
    """What keeps the checkpoint ``prefix`` from restoring (None when every tensor reads).

    Checks that the ``.index`` file and every ``.data-K-of-N`` shard are there and reads
    every tensor once, so a truncated or corrupt file is found before training starts.
    """
    directory, base = fileio.dirname(prefix), fileio.basename(prefix)
    names = ({n.rstrip("/") for n in fileio.listdir(directory)
              if n.startswith(base + ".")} if fileio.isdir(directory) else set())
    if base + ".index" not in names:
        return f"{prefix}.index is missing"
    shards = max((int(m.group("of")) for m in map(_CKPT.match, names)
                  if m and m.group("of")), default=1)
    missing = sorted({f"{base}.data-{k:05d}-of-{shards:05d}" for k in range(shards)} - names)
    if missing:
        return f"{fileio.join(directory, missing[0])} is missing"
    try:
        reader = tf.compat.v1.train.NewCheckpointReader(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, IndexError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"{prefix} cannot be read ({type(e).__name__}: {first[:200]})"
    return None


def _describe(files: Dict[int, List[str]]) -> str:
    return ", ".join(f"ckpt-{n}" for n in sorted(files))


def resume_checkpoint(directory: str, recover: bool = False) -> Optional[str]:
    """The checkpoint to resume from in a checkpoint folder, refusing damaged ones.

    Returns None when the folder holds no checkpoint file (a new run). When it holds some,
    the newest one named by the ``checkpoint`` state file must be present and readable
    (:func:`checkpoint_problem`); a missing state file, a missing ``.index`` or data file,
    or a truncated file is never taken for "no checkpoint" (training would start over and
    its checkpoint manager would delete the older, good checkpoints).

    Args:
      directory: a ``checkpoints/`` folder (or a pre-training stage's folder).
      recover: instead of refusing, resume from the newest checkpoint that reads: the
        newer, damaged files are moved to ``DIRECTORY/damaged/`` (nothing is deleted) and
        the state file is rewritten to list the good checkpoints; a warning says so.

    Raises:
      DamagedRunError: the folder cannot be resumed as it is (and ``recover`` is off, or
        no checkpoint in it reads), naming the files.
    """
    files = checkpoint_files(directory)
    state = tf.train.get_checkpoint_state(directory) if fileio.isdir(directory) else None
    if not files and (state is None or not state.model_checkpoint_path):
        return None
    problem = None
    latest = None
    if state is None or not state.model_checkpoint_path:
        problem = (f"{fileio.join(directory, 'checkpoint')} (the state file naming the latest "
                   "checkpoint) is missing")
    else:
        latest = state.model_checkpoint_path
        if not fileio.is_local(latest) or not os.path.isabs(latest):
            latest = fileio.join(directory, fileio.basename(latest))
        newest_file = max(files) if files else -1
        step = int(latest.rsplit("-", 1)[1]) if re.search(r"-\d+$", latest) else -1
        if newest_file > step:
            problem = (f"the state file names {fileio.basename(latest)} but ckpt-{newest_file} "
                       "is newer")
        else:
            problem = checkpoint_problem(latest)
    if problem is None:
        return latest
    if not recover:
        raise DamagedRunError(
            f"cannot resume {directory}: {problem}. Checkpoint files there: "
            f"{_describe(files) or 'none'}. Nothing was changed or deleted. To resume from "
            "the newest checkpoint that reads, rerun with --recover (damaged files are moved "
            "aside, not deleted); to start over, use another --model-dir.")
    return _recover(directory, files, problem)


def _recover(directory: str, files: Dict[int, List[str]], problem: str) -> str:
    good = None
    for step in sorted(files, reverse=True):
        prefix = fileio.join(directory, f"ckpt-{step}")
        if checkpoint_problem(prefix) is None:
            good = step
            break
    if good is None:
        raise DamagedRunError(f"cannot resume {directory}: {problem}, and none of its "
                              f"checkpoints ({_describe(files)}) reads; nothing was changed")
    aside = fileio.join(directory, DAMAGED_DIR, time.strftime("%Y%m%d-%H%M%S"))
    moved = [n for step in sorted(files) if step > good for n in files[step]]
    if moved:
        fileio.makedirs(aside)
        for name in moved:
            fileio.rename(fileio.join(directory, name), fileio.join(aside, name))
    kept = [fileio.join(directory, f"ckpt-{s}") for s in sorted(files) if s <= good]
    tf.compat.v1.train.update_checkpoint_state(directory, kept[-1], all_model_checkpoint_paths=kept)
    log.warning("%s: %s; resuming from ckpt-%d%s", directory, problem, good,
                f" (moved {', '.join(moved)} to {aside})" if moved else "")
    return kept[-1]
