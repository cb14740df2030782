"""The training job: a dual encoder trained with AMS (+ distillation) under any strategy.

One shared encoder embeds both sides of each pair; :class:`lealla_tf.training.losses.DualEncoderLoss`
scores them against the global batch (cross-replica negatives). The recipe follows LaBSE's
reference config (Model Garden ``official/projects/labse``): AdamW (BERT's
``AdamWeightDecay``; LayerNorm and bias weights not decayed) with linear warm-up to
``train.learning_rate`` and linear decay to ``train.end_learning_rate``, built with
``official.modeling.optimization``.
Gradients are summed across replicas first and then clipped by their global norm, so the
update does not depend on how the global batch is split. Several steps run per call
(``train.steps_per_loop``, for TPUs); mixed precision is optional (``train.mixed_precision``:
``mixed`` picks bfloat16 on TPU and CPU, float16 with loss scaling on GPU).

Model dir layout (everything export needs)::

    config.yaml             the full config of the run (vocab.model_file: vocab/spm.model)
    vocab/spm.model         the SentencePiece model (copied from vocab.model_file, or
                            trained here from the training files when that is empty)
    checkpoints/ckpt-N.*    tf.train.Checkpoint(encoder=, loss=, optimizer=, data=,
                            dropout_rng=) (data: the sampler's position), the last
                            train.keep_checkpoints of them, every train.checkpoint_every steps
                            and at the end; ``encoder`` alone restores the exportable model:
                            tf.train.Checkpoint(encoder=encoder).restore(path).expect_partial()
    logs/train/             TensorBoard: each loss term, in-batch accuracy, learning rate,
                            gradient norm, examples/s
    data_stats.json         lines read, skipped (by reason) per training file
    DIVERGED                only after a stop on a NaN/inf loss: the message

Rerunning the same command resumes from the latest checkpoint (weights, optimizer, and the
data sampler's position: the resumed run sees the batches an uninterrupted run would).
A non-finite loss stops the run with :class:`TrainingDiverged`; the last good checkpoint is
kept. :func:`restore_encoder` gives ``(cfg, preprocessor, encoder)`` back from a model dir.

The input pipeline uses ``tf.data.Dataset.from_generator`` on each worker's host: it runs on
CPU/GPU hosts and TPU VMs (not on the legacy TPU-node setup, whose input runs remotely).

Example::

    lealla train --config configs/train_tiny.yaml --model-dir results/tiny \\
        --set train.steps=200

or from Python::

    from lealla_tf import config
    from lealla_tf.training import dual_encoder
    cfg = config.load("configs/train_tiny.yaml")
    result = training.train(cfg, "results/tiny")
    cfg, preprocessor, encoder = training.restore_encoder("results/tiny")
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
import time
from typing import Callable, Dict, Optional, Tuple

import tensorflow as tf
import tf_keras

from lealla_tf import runs
from lealla_tf import config as config_lib
from lealla_tf.data import pipeline as data_lib
from lealla_tf.training import distribute as distribute_lib
from lealla_tf.training import losses as losses_lib
from lealla_tf import fileio, layout
from lealla_tf.training import initialization, optimization
from lealla_tf.models import encoders
from lealla_tf.text import sentencepiece
from lealla_tf.distill import store, student_init
from lealla_tf.text import wordpiece

log = logging.getLogger(__name__)

class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the model dir keeps the last good checkpoint."""


@dataclasses.dataclass
class TrainResult:
    """What a finished (or stopped) run reports."""

    step: int
    metrics: Dict[str, float]
    checkpoint: Optional[str]
    examples_per_second: float


# ---------------------------------------------------------------------------- pieces
def precision_policy(name: str, strategy: tf.distribute.Strategy) -> str:
    """The Keras policy for ``train.mixed_precision`` on this strategy's devices."""
    device = distribute_lib.device_type(strategy)
    if name == "mixed":
        return "mixed_float16" if device == "gpu" else "mixed_bfloat16"
    if name == "mixed_float16" and device == "tpu":
        log.warning("float16 is not supported on TPU: using mixed_bfloat16")
        return "mixed_bfloat16"
    return name


def resolve_vocab(cfg: config_lib.ExperimentConfig, model_dir: str,
                  strategy: Optional[tf.distribute.Strategy] = None,
                  progress: bool = True, teacher_fn: Optional[Callable[[], object]] = None
                  ) -> str:
    """Makes sure ``model_dir/vocab/spm.model`` exists; returns its path.

    Copies ``vocab.model_file`` there; when that is empty, builds the teacher's pruned
    vocabulary (``vocab.source: teacher``; ``teacher_fn`` gives the teacher) or trains one
    from the training files. Non-chief workers wait for the chief's copy.

    Raises:
      FileNotFoundError: ``vocab.model_file`` names a missing file.
    """
    target = fileio.join(model_dir, runs.vocab_file(cfg))
    chief = strategy is None or distribute_lib.is_chief(strategy)
    if fileio.exists(target):
        return target
    if not chief:
        for _ in range(1200):
            if fileio.exists(target):
                return target
            time.sleep(0.5)
        raise FileNotFoundError(f"the chief did not write {target} within 10 minutes")
    fileio.makedirs(fileio.dirname(target))
    source = cfg.vocab.model_file
    if source:
        absolute = os.path.isabs(source) or not fileio.is_local(source)
        candidates = [source] if absolute else [source, fileio.join(model_dir, source)]
        found = next((c for c in candidates
                      if fileio.exists(c) and not fileio.isdir(c)), None)
        if found is None:
            raise FileNotFoundError(f"vocab.model_file not found: {source}")
        fileio.atomic_write(target, fileio.read_bytes(found))
        info = fileio.join(fileio.dirname(found), student_init.INFO_FILE)
        if fileio.exists(info):  # teacher ids, for model.embedding_init: teacher_table
            fileio.atomic_write(fileio.join(fileio.dirname(target), student_init.INFO_FILE),
                                fileio.read_bytes(info))
        return target
    files = data_lib.training_files(cfg.data)
    if cfg.vocab.source == "teacher":
        if teacher_fn is None:
            raise config_lib.ConfigError("vocab.source: teacher needs a teacher (teacher.spec)")
        return student_init.build_teacher_vocab(teacher_fn(), files, fileio.dirname(target),
                                                max_pieces=cfg.vocab.max_pieces,
                                                keep_unused=cfg.vocab.keep_unused,
                                                progress=progress)
    with tempfile.TemporaryDirectory(prefix="lealla-vocab-") as tmp:  # SentencePiece: local
        path = sentencepiece.train_vocab(
            files, tmp, vocab_size=cfg.vocab.vocab_size,
            sentences_per_language=cfg.vocab.sentences_per_language,
            sampling_alpha=cfg.vocab.sampling_alpha,
            character_coverage=cfg.vocab.character_coverage,
            max_sentence_length=cfg.vocab.max_sentence_length, seed=cfg.vocab.seed,
            progress=progress)
        with open(path, "rb") as f:
            fileio.atomic_write(target, f.read())
    return target


def _stored_teacher_dim(embeddings_dir: str) -> int:
    """The teacher's own dimension recorded by a (possibly PCA-reduced) shard directory."""
    if not embeddings_dir:
        return 0
    return store.teacher_dim(embeddings_dir)


def fixed_size_slices(grad: tf.IndexedSlices, rows: int) -> tf.IndexedSlices:
    """``grad`` padded to ``rows`` rows: zero values at an index it already has, so the
    dense sum (and which rows a lazy optimizer touches) is unchanged."""
    n = tf.shape(grad.indices)[0]
    with tf.control_dependencies([tf.debugging.assert_less_equal(
            n, rows, message="more gradient rows than tokens in the batch")]):
        pad = rows - n
    indices = tf.concat([grad.indices, tf.fill([pad], grad.indices[0])], 0)
    zeros = tf.zeros(tf.concat([[pad], tf.shape(grad.values)[1:]], 0), grad.values.dtype)
    values = tf.concat([grad.values, zeros], 0)
    indices.set_shape([rows])
    values.set_shape([rows] + grad.values.shape[1:].as_list())
    return tf.IndexedSlices(values, indices, grad.dense_shape)


def make_train_loop(strategy: tf.distribute.Strategy, replica_step: Callable,
                    metrics: Tuple[str, ...]):
    """A ``tf.function(iterator, num_steps)`` that runs ``replica_step`` on ``num_steps``
    batches under ``strategy`` and returns the mean over those steps of each of ``metrics``
    (each summed over replicas). Shared by training and pre-training."""

    @tf.function
    def train_loop(iterator, num_steps):
        sums = {k: tf.constant(0.0) for k in metrics}
        for _ in tf.range(num_steps):
            terms = strategy.run(replica_step, args=(next(iterator),))
            sums = {k: sums[k] + strategy.reduce(tf.distribute.ReduceOp.SUM, terms[k],
                                                 axis=None) for k in sums}
        return {k: v / tf.cast(num_steps, v.dtype) for k, v in sums.items()}

    return train_loop


# ---------------------------------------------------------------------------- the trainer
class Trainer:
    """Builds model, loss, optimizer, checkpoint and data for one run, and runs it.

    Args:
      cfg: the experiment config.
      model_dir: where config, vocabulary, checkpoints and logs live.
      strategy: a strategy (default: from ``cfg.distribute``).
      progress: show a tqdm progress bar (chief only).
      corpus: an already loaded corpus (default: read ``cfg.data``).
    """

    def __init__(self, cfg: config_lib.ExperimentConfig, model_dir: str,
                 strategy: Optional[tf.distribute.Strategy] = None, progress: bool = True,
                 corpus: Optional[data_lib.ParallelCorpus] = None, teacher=None):
        cfg = initialization.apply_init_checkpoint(initialization.apply_init_from(cfg.validate()))
        initialization.check_wordpiece_flags(cfg)
        self.cfg = cfg
        self.model_dir = fileio.normpath(model_dir)
        self.strategy = strategy or distribute_lib.get_strategy(cfg.distribute)
        self.chief = distribute_lib.is_chief(self.strategy)
        self.progress = progress and self.chief
        self._teacher = teacher
        fileio.makedirs(self.model_dir)

        self.vocab_path = resolve_vocab(cfg, self.model_dir, self.strategy, progress=progress,
                                        teacher_fn=self.teacher)
        self.preprocessor_bytes = wordpiece.read_vocab(cfg.vocab.type, self.vocab_path)
        vocab_size = self.make_preprocessor(2).vocab_size
        if cfg.vocab.source == "teacher" and not cfg.vocab.model_file:
            cfg.model.vocab_size = vocab_size  # known only once the corpus is tokenized
        runs.check_resume_config(cfg, self.model_dir)
        if vocab_size > cfg.model.vocab_size:
            raise config_lib.ConfigError(
                f"the vocabulary has {vocab_size} pieces but model.vocab_size is "
                f"{cfg.model.vocab_size}")
        if self.chief:
            saved = dataclasses.replace(cfg, vocab=dataclasses.replace(
                cfg.vocab, model_file=runs.vocab_file(cfg)))
            config_lib.save(saved, fileio.join(self.model_dir, layout.CONFIG_FILE))

        self.online = cfg.teacher.mode == "online"
        if self.online and cfg.data.teacher_embeddings:
            log.warning("teacher.mode: online: data.teacher_embeddings (%s) is not read",
                        cfg.data.teacher_embeddings)
        stored = "" if self.online else cfg.data.teacher_embeddings
        self.corpus = corpus or data_lib.load_corpus_from_config(
            cfg.data, store.loader(stored) if stored else None)
        if cfg.teacher.dim and self.corpus.teacher_dim not in (0, cfg.teacher.dim) and (
                _stored_teacher_dim(cfg.data.teacher_embeddings) != cfg.teacher.dim):
            raise config_lib.ConfigError(
                f"teacher.dim is {cfg.teacher.dim} but the teacher embeddings "
                f"({cfg.data.teacher_embeddings}) are {self.corpus.teacher_dim}-d")
        if self.chief:
            stats = {path: dict(s) for path, s in self.corpus.stats.items()}
            fileio.atomic_write(fileio.join(self.model_dir, "data_stats.json"), json.dumps(
                {"pairs": self.corpus.num_pairs, "files": stats}, indent=1))
        lengths = None
        if cfg.data.bucket_pool > 1:
            start = time.perf_counter()
            lengths = data_lib.token_lengths(self.corpus,
                                             self.make_preprocessor(2).tokenize)
            log.info("length bucketing: counted the pieces of %d pairs in %.1f s",
                     self.corpus.num_pairs, time.perf_counter() - start)
        self.sampler = data_lib.GlobalBatchSampler(
            self.corpus, cfg.train.global_batch_size, alpha=cfg.data.sampling_alpha,
            seed=cfg.data.seed, history=max(4096, 4 * cfg.train.steps_per_loop),
            bucket_pool=cfg.data.bucket_pool, lengths=lengths)

        self._previous_policy = tf_keras.mixed_precision.global_policy()
        self.policy = precision_policy(cfg.train.mixed_precision, self.strategy)
        tf_keras.mixed_precision.set_global_policy(self.policy)
        try:
            self._build()
        finally:
            tf_keras.mixed_precision.set_global_policy(self._previous_policy)

    def make_preprocessor(self, seq_length: int):
        """The run's preprocessor (SentencePiece or WordPiece, ``vocab.type``)."""
        return wordpiece.make_preprocessor(self.cfg.vocab.type, self.preprocessor_bytes,
                                           seq_length, self.cfg.vocab.do_lower_case)

    def teacher(self):
        """The teacher of ``teacher.spec`` (loaded once, on first use)."""
        if self._teacher is None:
            if not self.cfg.teacher.spec:
                raise config_lib.ConfigError(
                    "vocab.source: teacher and model.embedding_init: teacher/teacher_table need "
                    "a teacher: set teacher.spec")
            from lealla_tf.embedders import teachers
            self._teacher = teachers.load_teacher(self.cfg.teacher.spec)
        return self._teacher

    def _initialise_embeddings(self) -> None:
        """Fills the word-embedding table from the teacher (``model.embedding_init``)."""
        kind = self.cfg.model.embedding_init
        source = self.cfg.vocab.model_file
        cache = (fileio.dirname(fileio.normpath(source))
                 if source and fileio.exists(source) and not fileio.isdir(source)
                 else fileio.dirname(self.vocab_path))
        table = student_init.initial_table(kind, self.teacher(), self.vocab_path,
                                           self.cfg.model.hidden_size,
                                           self.cfg.model.initializer_range, cache_dir=cache,
                                           progress=self.progress)
        variable = self.encoder.word_embeddings
        if tuple(variable.shape) != table.shape:
            raise config_lib.ConfigError(
                f"embedding init gives a {table.shape} table but the encoder's is "
                f"{tuple(variable.shape)}: model.vocab_size must equal the vocabulary's size")
        variable.assign(tf.cast(table, variable.dtype))
        log.info("word embeddings initialised from the teacher (%s)", kind)

    def _load_online_teacher(self):
        """The frozen teacher of ``teacher.mode: online``, loaded under the strategy."""
        from lealla_tf.distill import online_teacher
        if isinstance(self._teacher, online_teacher.OnlineTeacher):
            teacher = self._teacher
        elif self.cfg.teacher.spec:  # (a teacher object given too serves vocab/init only)
            teacher = online_teacher.load(self.cfg.teacher.spec, self.strategy)
        else:  # a clear error for Python teachers
            teacher = online_teacher.check_teacher(self._teacher)
        if teacher.string_inputs and distribute_lib.device_type(self.strategy) == "tpu":
            raise config_lib.ConfigError(
                f"teacher {teacher.name} takes strings, which a TPU step cannot: use a "
                "preprocessor|encoder pair (hub:<pre>|<enc>, labse) or a run: dir, or "
                "teacher.mode: precomputed")
        if self.cfg.teacher.dim and teacher.dim != self.cfg.teacher.dim:
            raise config_lib.ConfigError(f"teacher.dim is {self.cfg.teacher.dim} but teacher "
                                         f"{teacher.name} is {teacher.dim}-d")
        log.info("online teacher %s (%d-d) runs inside the training step", teacher.name,
                 teacher.dim)
        return teacher

    # -- construction
    def _build(self) -> None:
        cfg = self.cfg
        uses_teacher = cfg.loss.feature_distill_weight > 0 or cfg.loss.logit_distill_weight > 0
        self.online_teacher = None
        teacher_dim = self.corpus.teacher_dim
        if self.online and uses_teacher:
            self.online_teacher = self._load_online_teacher()
            teacher_dim = self.online_teacher.dim
        elif uses_teacher and not self.corpus.teacher_dim:
            raise config_lib.ConfigError(
                "loss.feature_distill_weight / logit_distill_weight > 0 need precomputed "
                "teacher embeddings: set data.teacher_embeddings (lealla teacher embed)")
        self.uses_teacher = uses_teacher
        tf_keras.utils.set_random_seed(cfg.train.seed)
        with self.strategy.scope():
            # Dropout draws from tf.random.Generator variables (created when the layers are
            # built): their state is saved in checkpoints, so a resumed run draws the masks
            # an uninterrupted run would (Keras' default stateful ops restart their streams).
            was_enabled = tf_keras.backend.experimental.is_tf_random_generator_enabled()
            tf_keras.backend.experimental.enable_tf_random_generator()
            try:
                self.encoder = encoders.build_encoder(cfg.model)
                self.encoder(self.encoder.dummy_inputs())
            finally:
                if not was_enabled:
                    tf_keras.backend.experimental.disable_tf_random_generator()
            # Keras does not track these generators itself: collect them for the checkpoint.
            self.dropout_rng = tf.Module(name="dropout_rng")
            self.dropout_rng.generators = [
                layer._random_generator._generator for layer in self.encoder.submodules
                if getattr(getattr(layer, "_random_generator", None), "_generator", None)
                is not None]
            self.loss_layer = losses_lib.DualEncoderLoss(
                cfg.loss, teacher_dim=teacher_dim if uses_teacher else 0,
                student_dim=self.encoder.embedding_dim)
            self.optimizer, self.schedule = optimization.build_optimizer(cfg.train)
            if self.policy == "mixed_float16":
                self.optimizer = tf_keras.mixed_precision.LossScaleOptimizer(self.optimizer)
            self.variables = (self.encoder.trainable_variables
                              + self.loss_layer.trainable_variables)
        self.data_state = data_lib.DataState(self.sampler, lambda: int(self.step.numpy()))
        self.checkpoint = tf.train.Checkpoint(encoder=self.encoder, loss=self.loss_layer,
                                              optimizer=self.optimizer, data=self.data_state,
                                              dropout_rng=self.dropout_rng)
        self.checkpoint_dir = fileio.join(self.model_dir, layout.CHECKPOINT_DIR)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint,
            distribute_lib.writable_dir(self.model_dir, self.strategy, layout.CHECKPOINT_DIR),
            max_to_keep=cfg.train.keep_checkpoints)
        latest = tf.train.latest_checkpoint(self.checkpoint_dir)
        self._restore_status = None
        if not latest and cfg.model.embedding_init != "random":
            with self.strategy.scope():
                self._initialise_embeddings()
        if not latest and cfg.train.embedding_table_from:
            with self.strategy.scope():
                n = initialization.init_table_from_run(
                    self.encoder, cfg.vocab.type, self.preprocessor_bytes,
                    cfg.train.embedding_table_from, cfg.model.initializer_range)
            log.info("%d word-embedding rows initialised from %s", n,
                     cfg.train.embedding_table_from)
        initialised = cfg.train.init_from or cfg.train.init_checkpoint
        if (not latest and not initialised and cfg.model.position_init == "zero"
                and hasattr(self.encoder, "bert")):
            bert = self.encoder.bert
            for table in (bert._position_embedding_layer._position_embeddings,
                          bert._type_embedding_layer.embeddings):
                table.assign(tf.zeros_like(table))
        if not latest and cfg.train.init_from:
            log.info("encoder initialised from %s",
                     initialization.restore_init(self.encoder, cfg.train.init_from,
                                           cfg.train.grow_position))
        if not latest and cfg.train.init_checkpoint:
            _, checkpoint = runs.resolve_checkpoint(cfg.train.init_checkpoint)
            runs.restore_encoder_checkpoint(self.encoder, checkpoint,
                                                "train.init_checkpoint")
            log.info("encoder initialised from %s", checkpoint)
        if latest:
            self._restore_status = self.checkpoint.restore(latest)
            self._restore_status.assert_existing_objects_matched()
            log.info("resumed from %s at step %d", latest, int(self.step.numpy()))
        self.restored_from = latest

        self._train_loop = self._make_train_loop()
        if self.chief:
            self.writer = tf.summary.create_file_writer(fileio.join(self.model_dir, layout.TRAIN_LOG_DIR))
        else:
            self.writer = tf.summary.create_noop_writer()

    @property
    def _loss_scaled(self) -> bool:
        return isinstance(self.optimizer, tf_keras.mixed_precision.LossScaleOptimizer)

    @property
    def step(self) -> tf.Variable:
        return self.optimizer.iterations

    def make_iterator(self):
        """A distributed iterator starting at the sampler's (restored) position."""
        seq_length = self.cfg.preprocess.seq_length

        def dataset_fn(ctx):
            pre = self.make_preprocessor(seq_length)
            online = self.online_teacher
            return data_lib.make_dataset(
                self.corpus, self.sampler, pre, ctx,
                use_teacher=self.uses_teacher and online is None,
                teacher_inputs=online.preprocess if online is not None else None,
                dynamic_length=self.cfg.preprocess.dynamic_length,
                length_multiple=self.cfg.preprocess.length_multiple)

        dist = self.strategy.distribute_datasets_from_function(dataset_fn)
        return iter(dist)

    # -- the step
    def _loss_and_gradients(self, batch):
        """This replica's loss terms and (unreduced) gradients for one batch."""
        scaled = self._loss_scaled
        teacher_src, teacher_tgt = batch.get("teacher_src"), batch.get("teacher_tgt")
        if self.online_teacher is not None:  # frozen: outside the tape, no gradient
            teacher_src = self.online_teacher.encode(batch["teacher_inputs_src"])
            teacher_tgt = self.online_teacher.encode(batch["teacher_inputs_tgt"])
        with tf.GradientTape() as tape:
            src = self.encoder(batch["src"], training=True)["default"]
            tgt = self.encoder(batch["tgt"], training=True)["default"]
            terms = self.loss_layer(src, tgt, teacher_src, teacher_tgt)
            loss = terms["loss"]
            if scaled:
                loss = self.optimizer.get_scaled_loss(loss)
        grads = tape.gradient(loss, self.variables)
        if scaled:
            grads = self.optimizer.get_unscaled_gradients(grads)
        return terms, grads

    def _replica_step(self, batch):
        clip = self.cfg.train.clip_norm
        terms, grads = self._loss_and_gradients(batch)
        ctx = tf.distribute.get_replica_context()
        if self.cfg.preprocess.dynamic_length and ctx.num_replicas_in_sync > 1:
            # The embedding tables' sparse gradients have a row per token, so their size
            # changes with the batch's length; collectives inside the step loop need one
            # size on every step: pad to the longest batch's (zero rows, repeated index).
            rows = (2 * self.cfg.train.global_batch_size // ctx.num_replicas_in_sync
                    * self.cfg.preprocess.seq_length)
            grads = [fixed_size_slices(g, rows) if isinstance(g, tf.IndexedSlices) else g
                     for g in grads]
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        if clip > 0:
            grads, norm = tf.clip_by_global_norm(grads, clip)
        else:
            norm = tf.linalg.global_norm(grads)
        self.optimizer.apply_gradients(zip(grads, self.variables),
                                       experimental_aggregate_gradients=False)
        terms = dict(terms)
        # The norm is already global; divide so that the SUM over replicas gives it back.
        terms["grad_norm"] = norm / tf.cast(ctx.num_replicas_in_sync, norm.dtype)
        return terms

    def _make_train_loop(self):
        return make_train_loop(self.strategy, self._replica_step,
                               losses_lib.LOSS_TERMS + ("grad_norm",))

    # -- the loop
    def run(self, on_loop_end: Optional[Callable[[int, Dict[str, float]], None]] = None
            ) -> TrainResult:
        """Trains until ``train.steps`` (resuming where the checkpoint left off).

        Args:
          on_loop_end: called with ``(step, metrics)`` after every call of the train loop.

        Raises:
          TrainingDiverged: on a NaN/inf loss (after writing ``DIVERGED``).
        """
        cfg = self.cfg.train
        total = cfg.steps
        step = int(self.step.numpy())
        metrics: Dict[str, float] = {}
        if step >= total:
            log.info("nothing to do: step %d >= train.steps %d", step, total)
            if self._restore_status is not None:  # optimizer slots were never created
                self._restore_status.expect_partial()
            return TrainResult(step, metrics, self.manager.latest_checkpoint or self.restored_from,
                               0.0)
        iterator = self.make_iterator()
        bar = None
        if self.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=total, initial=step, desc="train", unit="step", dynamic_ncols=True)
        seen_examples, seen_time = 0, 0.0
        eps = 0.0
        last_summary = step
        try:
            while step < total:
                n = min(cfg.steps_per_loop, total - step,
                        cfg.checkpoint_every - step % cfg.checkpoint_every)
                start = time.perf_counter()
                out = self._train_loop(iterator, tf.constant(n, tf.int32))
                metrics = {k: float(v) for k, v in out.items()}
                elapsed = time.perf_counter() - start
                step += n
                eps = n * cfg.global_batch_size / max(elapsed, 1e-9)
                seen_examples += n * cfg.global_batch_size
                seen_time += elapsed
                metrics["examples_per_second"] = eps
                metrics["learning_rate"] = float(self.schedule(step - 1))
                # With float16 loss scaling an overflowing gradient is expected now and then:
                # the optimizer skips that update and lowers the scale.
                watched = ("loss",) if self._loss_scaled else ("loss", "grad_norm")
                if not all(math.isfinite(metrics[k]) for k in watched):
                    self._diverged(step, metrics)
                if step - last_summary >= cfg.summary_every or step == total:
                    self._summaries(step, metrics)
                    last_summary = step
                if step % cfg.checkpoint_every == 0 or step == total:
                    self._save(step)
                if bar is not None:
                    bar.update(n)
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}",
                                    acc=f"{metrics['accuracy']:.3f}", refresh=False)
                if on_loop_end is not None:
                    on_loop_end(step, metrics)
        finally:
            if bar is not None:
                bar.close()
            self.writer.flush()
            log.info("skipped %d sampled pairs that repeated a sentence of their batch",
                     self.sampler.duplicates_skipped)
        return TrainResult(step, metrics, self.manager.latest_checkpoint,
                           seen_examples / max(seen_time, 1e-9))

    def _save(self, step: int) -> None:
        self.manager.save(checkpoint_number=step)
        if not self.chief:  # saving is collective; only the chief's copy is kept
            fileio.rmtree(self.manager.directory)

    def _summaries(self, step: int, metrics: Dict[str, float]) -> None:
        with self.writer.as_default(step=step):
            for key, value in metrics.items():
                if key in ("learning_rate", "examples_per_second", "grad_norm"):
                    tf.summary.scalar(key, value)
                else:
                    tf.summary.scalar(f"loss/{key}" if "accuracy" not in key
                                      else f"accuracy/{key}", value)

    def _diverged(self, step: int, metrics: Dict[str, float]) -> None:
        good = self.manager.latest_checkpoint or self.restored_from
        message = (f"training stopped: the loss became {metrics['loss']} (grad norm "
                   f"{metrics['grad_norm']}) in the steps up to {step}; the last good checkpoint "
                   f"is {good or 'none (no checkpoint was written yet)'}. Lower "
                   "train.learning_rate or loss.scale, or check the data.")
        if self.chief:
            fileio.atomic_write(fileio.join(self.model_dir, layout.DIVERGED_FILE), message + "\n")
        raise TrainingDiverged(message)


def train(cfg: config_lib.ExperimentConfig, model_dir: str,
          strategy: Optional[tf.distribute.Strategy] = None, progress: bool = True,
          on_loop_end: Optional[Callable[[int, Dict[str, float]], None]] = None,
          corpus: Optional[data_lib.ParallelCorpus] = None, teacher=None) -> TrainResult:
    """Runs (or resumes) a training job; see :class:`Trainer` and the module docstring.

    Args:
      cfg: the experiment config.
      model_dir: the run's directory (created; resumed from when it holds checkpoints).
      strategy: a strategy (default: from ``cfg.distribute``).
      progress: show a progress bar.
      on_loop_end: called with ``(step, metrics)`` after every train-loop call.
      corpus: an already loaded corpus (default: read ``cfg.data``).
      teacher: an already loaded teacher (default: loaded from ``teacher.spec`` when the
        vocabulary or the embedding init needs it).
    """
    return Trainer(cfg, model_dir, strategy, progress, corpus, teacher).run(on_loop_end)
