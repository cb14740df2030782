"""The training job: a dual encoder trained with AMS (+ distillation) under any strategy.

:class:`Trainer` (a :class:`lealla_tf.training.loop.Job`) embeds both sides of each pair with
one shared encoder and scores them with
:class:`lealla_tf.training.losses.DualEncoderLoss`; :func:`train` runs or resumes a run::

    from lealla_tf import config, runs
    from lealla_tf.training import dual_encoder
    cfg = config.load("train_tiny", overrides=["train.steps=200"])
    result = dual_encoder.train(cfg, "runs/tiny")          # rerun: resumes
    cfg, preprocessor, encoder = runs.restore_encoder("runs/tiny")

See docs/training.md, "The job".
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Dict, Optional

import tensorflow as tf
import tf_keras

from lealla_tf import config as config_lib
from lealla_tf import fileio, layout, runs
from lealla_tf.data import pipeline as data_lib
from lealla_tf.distill import online_teacher, store
from lealla_tf.models import bert_internals, encoders
from lealla_tf.training import distribute as distribute_lib
from lealla_tf.training import initialization, loop, optimization
from lealla_tf.training import losses as losses_lib

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    """What a finished (or stopped) run reports."""

    step: int
    metrics: Dict[str, float]
    checkpoint: Optional[str]
    examples_per_second: float


# ---------------------------------------------------------------------------- pieces
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


# ---------------------------------------------------------------------------- the trainer
class Trainer(loop.Job):
    """Builds model, loss, optimizer, checkpoint and data for one run, and runs it
    (:class:`lealla_tf.training.loop.Job`).

    Args:
      cfg: the experiment config.
      model_dir: where config, vocabulary, checkpoints and logs live.
      strategy: a strategy (default: from ``cfg.distribute``).
      progress: show a tqdm progress bar (chief only).
      corpus: an already loaded corpus (default: read ``cfg.data``).
      teacher: an already loaded teacher (default: loaded from ``teacher.spec`` when the
        vocabulary or the embedding init needs it).
    """

    METRICS = losses_lib.LOSS_TERMS + ("grad_norm",)
    RESULT = TrainResult

    def _prepare_config(self, cfg: config_lib.ExperimentConfig) -> config_lib.ExperimentConfig:
        cfg = initialization.apply_init_checkpoint(initialization.apply_init_from(cfg.validate()))
        initialization.check_wordpiece_flags(cfg)
        return cfg

    def _load_data(self, corpus: Optional[data_lib.ParallelCorpus]) -> None:
        cfg = self.cfg
        self.online = cfg.teacher.mode == "online"
        if self.online and cfg.data.teacher_embeddings:
            log.warning("teacher.mode: online: data.teacher_embeddings (%s) is not read",
                        cfg.data.teacher_embeddings)
        stored = "" if self.online else cfg.data.teacher_embeddings
        self.corpus = corpus or data_lib.load_corpus_from_config(
            cfg.data, store.loader(stored, cfg.teacher.languages) if stored else None,
            cfg.teacher.languages)
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
            bucket_pool=cfg.data.bucket_pool, lengths=lengths,
            weights=data_lib.teacher_weights(self.corpus, cfg.data.teacher_language_weight))

    def _load_online_teacher(self):
        """The frozen teacher of ``teacher.mode: online``, loaded under the strategy."""
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
        with self._precision():
            self._build_model()

    def _build_model(self) -> None:
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
            with bert_internals.tracked_dropout():
                self.encoder = encoders.build_encoder(cfg.model)
                self.encoder(self.encoder.dummy_inputs())
            self.dropout_rng = bert_internals.dropout_rng(self.encoder)
            self.loss_layer = losses_lib.DualEncoderLoss(
                cfg.loss, teacher_dim=teacher_dim if uses_teacher else 0,
                student_dim=self.encoder.embedding_dim)
            self.optimizer, self.schedule = optimization.build_optimizer(cfg.train)
            self.optimizer = self._loss_scaling(self.optimizer)
            self.variables = (self.encoder.trainable_variables
                              + self.loss_layer.trainable_variables)
        self.data_state = data_lib.DataState(self.sampler, lambda: int(self.step.numpy()))
        checkpoint = tf.train.Checkpoint(encoder=self.encoder, loss=self.loss_layer,
                                         optimizer=self.optimizer, data=self.data_state,
                                         dropout_rng=self.dropout_rng)
        latest = self._latest_checkpoint(layout.CHECKPOINT_DIR)
        if not latest:
            with self.strategy.scope():
                self._initialise_embeddings(self.encoder)
        if not latest and cfg.train.embedding_table_from:
            with self.strategy.scope():
                n = initialization.init_table_from_run(
                    self.encoder, cfg.vocab.type, self.vocab_bytes,
                    cfg.train.embedding_table_from, cfg.model.initializer_range)
            log.info("%d word-embedding rows initialised from %s", n,
                     cfg.train.embedding_table_from)
        initialised = cfg.train.init_from or cfg.train.init_checkpoint
        if (not latest and not initialised and cfg.model.position_init == "zero"
                and hasattr(self.encoder, "bert")):
            bert_internals.zero_position_and_type_tables(self.encoder.bert)
        if not latest and cfg.train.init_from:
            log.info("encoder initialised from %s",
                     initialization.restore_init(self.encoder, cfg.train.init_from,
                                                 cfg.train.grow_position))
        if not latest and cfg.train.init_checkpoint:
            _, checkpoint_path = runs.resolve_checkpoint(cfg.train.init_checkpoint)
            runs.restore_encoder_checkpoint(self.encoder, checkpoint_path,
                                            "train.init_checkpoint")
            log.info("encoder initialised from %s", checkpoint_path)
        self._attach_checkpoint(checkpoint, layout.CHECKPOINT_DIR, latest)
        if latest:
            log.info("resumed from %s at step %d", latest, self.steps_done)

    @property
    def step(self) -> tf.Variable:
        return self.optimizer.iterations

    @property
    def steps_done(self) -> int:
        return int(self.step.numpy())

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
    def loss_and_gradients(self, batch):
        """This replica's loss terms and (unreduced) gradients for one batch."""
        teacher_src, teacher_tgt = batch.get("teacher_src"), batch.get("teacher_tgt")
        if self.online_teacher is not None:  # frozen: outside the tape, no gradient
            teacher_src = self.online_teacher.encode(batch["teacher_inputs_src"])
            teacher_tgt = self.online_teacher.encode(batch["teacher_inputs_tgt"])
            # Pairs of languages the teacher does not cover learn the English side's row.
            teacher_src = online_teacher.english_targets(teacher_src, teacher_tgt,
                                                         batch.get("teacher_covered"))

        def terms():
            src = self.encoder(batch["src"], training=True)["default"]
            tgt = self.encoder(batch["tgt"], training=True)["default"]
            return self.loss_layer(src, tgt, teacher_src, teacher_tgt)

        return self._tape_gradients(terms)

    def _gradients_to_reduce(self, grads, ctx):
        if self.cfg.preprocess.dynamic_length and ctx.num_replicas_in_sync > 1:
            # The embedding tables' sparse gradients have a row per token, so their size
            # changes with the batch's length; collectives inside the step loop need one
            # size on every step: pad to the longest batch's (zero rows, repeated index).
            rows = (2 * self.cfg.train.global_batch_size // ctx.num_replicas_in_sync
                    * self.cfg.preprocess.seq_length)
            grads = [fixed_size_slices(g, rows) if isinstance(g, tf.IndexedSlices) else g
                     for g in grads]
        return grads

    # -- the loop
    def _summary_name(self, key: str) -> Optional[str]:
        if key in ("learning_rate", "examples_per_second", "grad_norm"):
            return key
        return f"loss/{key}" if "accuracy" not in key else f"accuracy/{key}"

    def _divergence_message(self, step, metrics, good) -> str:
        return (f"training stopped: the loss became {metrics['loss']} (grad norm "
                f"{metrics['grad_norm']}) in the steps up to {step}; the last good checkpoint "
                f"is {good or 'none (no checkpoint was written yet)'}. Lower "
                "train.learning_rate or loss.scale, or check the data.")


def train(cfg: config_lib.ExperimentConfig, model_dir: str,
          strategy: Optional[tf.distribute.Strategy] = None, progress: bool = True,
          on_loop_end: Optional[loop.OnLoopEnd] = None,
          corpus: Optional[data_lib.ParallelCorpus] = None, teacher=None,
          recover: bool = False) -> TrainResult:
    """Runs (or resumes) a training job; see :class:`Trainer` and docs/training.md.

    Args:
      cfg: the experiment config.
      model_dir: the run's directory (created; resumed from when it holds checkpoints).
      strategy: a strategy (default: from ``cfg.distribute``).
      progress: show a progress bar.
      on_loop_end: called with ``(step, metrics)`` after every train-loop call.
      corpus: an already loaded corpus (default: read ``cfg.data``).
      teacher: an already loaded teacher (default: loaded from ``teacher.spec`` when the
        vocabulary or the embedding init needs it).
      recover: resume from the newest checkpoint that reads when the newest is damaged.
    """
    return Trainer(cfg, model_dir, strategy, progress, corpus, teacher,
                   recover=recover).run(on_loop_end)
