"""Pre-training as LaBSE does it: MLM + TLM, grown by progressive stacking.

:class:`Pretrainer` (a :class:`lealla_tf.training.loop.Job`) trains Model Garden's
``BertPretrainerV2`` over the same ``BertEncoderV2`` as ``lealla train``, on inputs from
:mod:`lealla_tf.data.pretrain_inputs`; at a stage boundary the new encoder's layer ``j``
starts from trained layer ``j mod n``. Its run directory is one ``train.init_from`` or
``train.init_checkpoint`` starts from.

See docs/pretraining.md.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Dict, List, Optional, Sequence

import tensorflow as tf
import tf_keras

from lealla_tf import config as config_lib
from lealla_tf import fileio, layout
from lealla_tf.data import pipeline as data_lib
from lealla_tf.models import bert_internals, encoders
from lealla_tf.training import loop, optimization

log = logging.getLogger(__name__)

LOG_DIR = layout.PRETRAIN_LOG_DIR
STAGES_DIR = layout.STAGES_DIR
METRICS = ("loss", "accuracy", "mlm_loss", "tlm_loss", "grad_norm")

from lealla_tf.data.pretrain_inputs import (  # noqa: E402,F401  (the inputs, re-exported)
    FEATURES,
    PretrainCorpus,
    StatelessMaskValuesChooser,
    StatelessRandomItemSelector,
    eval_batches,
    load_corpus,
    make_dataset,
    make_features_fn,
    mask_and_pad,
    pack_pretraining_inputs,
    text_batches,
)


# ---------------------------------------------------------------------------- model
def build_pretrainer(encoder: encoders.LeallaEncoder, model_cfg: config_lib.ModelConfig):
    """Model Garden's ``BertPretrainerV2`` (MLM head tied to the word embeddings) over the
    encoder's ``BertEncoderV2``."""
    from official.modeling import tf_utils
    from official.nlp.modeling import models
    return models.BertPretrainerV2(
        encoder_network=encoder.bert,
        mlm_activation=tf_utils.get_activation(model_cfg.hidden_act),
        mlm_initializer=tf_keras.initializers.TruncatedNormal(
            stddev=model_cfg.initializer_range), name="pretrainer")


def mlm_sums(logits: tf.Tensor, feats: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Sums over this batch's predictions: cross-entropy, correct, count; by kind too."""
    logits = tf.cast(logits, tf.float32)
    labels = feats["masked_lm_ids"]
    weights = feats["masked_lm_weights"]
    ce = tf_keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
    tlm = weights * feats["is_tlm"][:, None]
    mlm = weights - tlm
    return {"ce": tf.reduce_sum(ce * weights), "correct": tf.reduce_sum(correct * weights),
            "count": tf.reduce_sum(weights), "ce_tlm": tf.reduce_sum(ce * tlm),
            "count_tlm": tf.reduce_sum(tlm), "ce_mlm": tf.reduce_sum(ce * mlm),
            "count_mlm": tf.reduce_sum(mlm)}


def model_inputs(feats: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    return {k: feats[k] for k in encoders.INPUT_KEYS + ("masked_lm_positions",)}


def evaluate(pretrainer, batches: Sequence[Dict[str, tf.Tensor]]) -> Dict[str, float]:
    """MLM/TLM loss and accuracy of ``pretrainer`` on fixed masked ``batches`` (no dropout).

    Returns:
      ``loss``, ``accuracy`` (all predictions), ``mlm_loss``, ``tlm_loss``.
    """
    totals: Dict[str, float] = {}
    for feats in batches:
        logits = pretrainer(model_inputs(feats), training=False)["mlm_logits"]
        for k, v in mlm_sums(logits, feats).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    return {"loss": totals["ce"] / max(totals["count"], 1.0),
            "accuracy": totals["correct"] / max(totals["count"], 1.0),
            "mlm_loss": totals["ce_mlm"] / max(totals["count_mlm"], 1.0),
            "tlm_loss": totals["ce_tlm"] / max(totals["count_tlm"], 1.0)}


# ---------------------------------------------------------------------------- the job
@dataclasses.dataclass
class Stage:
    index: int
    layers: int
    start: int  # global step at which it starts
    end: int  # global step at which it ends
    directory: str  # relative to the model dir


def stage_plan(cfg: config_lib.ExperimentConfig) -> List[Stage]:
    """The stages of ``pretrain.stages`` (one stage of ``model.num_layers`` when empty);
    the last one checkpoints into ``checkpoints/``, earlier ones into
    ``stages/layers-N/``."""
    layers = cfg.pretrain.stages or [cfg.model.num_layers]
    steps = cfg.pretrain.stage_steps or [cfg.train.steps]
    plan, start = [], 0
    for i, (n, s) in enumerate(zip(layers, steps)):
        last = i == len(layers) - 1
        plan.append(Stage(i, n, start, start + s, layout.CHECKPOINT_DIR if last
                          else os.path.join(STAGES_DIR, f"layers-{n}")))
        start += s
    return plan


@dataclasses.dataclass
class PretrainResult:
    step: int
    metrics: Dict[str, float]
    checkpoint: Optional[str]
    sequences_per_second: float


class _OffsetSchedule(tf_keras.optimizers.schedules.LearningRateSchedule):
    """``schedule(step + offset)``: the run's schedule for an optimizer that counts its
    steps from a stage's start."""

    def __init__(self, schedule, offset: int):
        self.schedule, self.offset = schedule, int(offset)

    def __call__(self, step):
        return self.schedule(tf.cast(step, tf.int64) + self.offset)

    def get_config(self):
        return {"offset": self.offset}


class Pretrainer(loop.Job):
    """Builds data, stages, models, optimizers and checkpoints of a pre-training run
    (:class:`lealla_tf.training.loop.Job`).

    Args:
      cfg: the experiment config (``model``: the final shape; ``pretrain``; ``train``).
      model_dir: the run directory (resumed from when it holds checkpoints).
      strategy: default from ``cfg.distribute``.
      progress: tqdm progress bar (chief only).
      corpus: an already loaded :class:`PretrainCorpus`.
      teacher: an already loaded teacher (``vocab.source: teacher``, ``model.embedding_init``).

    :meth:`run` goes through every remaining stage; the ``metrics`` it gives ``on_loop_end``
    have ``eval/*`` entries at ``pretrain.eval_every`` steps.
    """

    LOG_DIR = LOG_DIR
    METRICS = METRICS
    RATE = "sequences_per_second"
    PROGRESS = "pretrain"
    RESULT = PretrainResult

    def _prepare_config(self, cfg: config_lib.ExperimentConfig) -> config_lib.ExperimentConfig:
        cfg = cfg.validate()
        if cfg.model.architecture != "transformer":
            raise config_lib.ConfigError("lealla pretrain needs model.architecture: transformer")
        return cfg

    def _check_resume(self) -> None:
        super()._check_resume()
        path = fileio.join(self.model_dir, layout.CONFIG_FILE)
        if not fileio.exists(path):
            return
        old = config_lib.load(path).pretrain
        new = self.cfg.pretrain
        if (old.stages, old.stage_steps) != (new.stages, new.stage_steps):
            raise config_lib.ConfigError(
                f"{self.model_dir} holds a run with pretrain.stages {old.stages} and "
                f"stage_steps {old.stage_steps}; this config has {new.stages}, "
                f"{new.stage_steps}: use a new --model-dir")

    def _load_data(self, corpus: Optional[PretrainCorpus]) -> None:
        cfg = self.cfg
        self.corpus = corpus or load_corpus(cfg)
        self.sampler = data_lib.GlobalBatchSampler(
            self.corpus.train, cfg.train.global_batch_size, alpha=cfg.data.sampling_alpha,
            seed=cfg.data.seed, history=max(4096, 4 * cfg.train.steps_per_loop))
        self.features_fn = make_features_fn(self.make_preprocessor(), cfg.pretrain,
                                            cfg.preprocess.seq_length, cfg.data.seed,
                                            self.vocab_size)
        self.eval_batches = (eval_batches(self.corpus.held_out, self.features_fn,
                                          cfg.eval.batch_size) if self.corpus.held_out else [])

    def _build(self) -> None:
        self.plan = stage_plan(self.cfg)
        self.stage: Optional[Stage] = None
        self._enter(self._latest_stage())
        # A finished stage hands over at once: the object holds the stacked model before
        # its first step.
        self._leave_finished_stages()

    # -- stages
    def _stage_checkpoint(self, stage: Stage) -> Optional[str]:
        return self._latest_checkpoint(stage.directory)

    def _latest_stage(self) -> Stage:
        for stage in reversed(self.plan):
            if self._stage_checkpoint(stage):
                return stage
        return self.plan[0]

    def _model_cfg(self, stage: Stage) -> config_lib.ModelConfig:
        return dataclasses.replace(self.cfg.model, num_layers=stage.layers)

    def _build_stage(self, stage: Stage):
        """Encoder, pretrainer, optimizer and checkpoint of ``stage`` (fresh weights, seeded
        by ``train.seed`` and the stage)."""
        with self._precision():
            tf_keras.utils.set_random_seed(self.cfg.train.seed + 1000 * stage.index)
            with self.strategy.scope():
                with bert_internals.tracked_dropout():
                    encoder = encoders.build_encoder(self._model_cfg(stage))
                    encoder(encoder.dummy_inputs())
                    pretrainer = build_pretrainer(encoder, self._model_cfg(stage))
                    dummy = dict(encoder.dummy_inputs(),
                                 masked_lm_positions=tf.zeros([1, 1], tf.int32))
                    pretrainer(dummy)
                rng = bert_internals.dropout_rng(encoder)
                optimizer, schedule = optimization.build_optimizer(self.cfg.train)
                offset = stage.start if self.cfg.pretrain.stage_optimizer == "reset" else 0
                if offset:
                    optimizer.learning_rate = _OffsetSchedule(schedule, offset)
                optimizer = self._loss_scaling(optimizer)
        parts = {"encoder": encoder, "pretrainer": pretrainer, "optimizer": optimizer,
                 "schedule": schedule, "offset": offset, "rng": rng}
        # The pooler gets no gradient from MLM (LaBSE has no next-sentence task): it is
        # carried over to the dual-encoder stage as initialised.
        pooler = {id(w) for w in encoder.bert.pooler_layer.weights}
        parts["variables"] = [v for v in pretrainer.trainable_variables if id(v) not in pooler]
        return parts

    def _checkpoint(self, parts) -> tf.train.Checkpoint:
        step_fn = lambda: parts["offset"] + int(parts["optimizer"].iterations.numpy())  # noqa
        return tf.train.Checkpoint(encoder=parts["encoder"], mlm=parts["pretrainer"].masked_lm,
                                   optimizer=parts["optimizer"],
                                   data=data_lib.DataState(self.sampler, step_fn),
                                   dropout_rng=parts["rng"])

    def _enter(self, stage: Stage) -> None:
        """Makes ``stage`` current: from its own latest checkpoint, else stacked from the
        previous stage's last checkpoint, else (the first stage) from scratch."""
        latest = self._stage_checkpoint(stage)
        source = None
        if not latest and stage.index > 0:
            previous = self.plan[stage.index - 1]
            source_ckpt = self._stage_checkpoint(previous)
            if not source_ckpt:
                raise FileNotFoundError(f"stage {stage.index} ({stage.layers} layers) needs "
                                        f"the checkpoint of stage {previous.index}")
            source = self._build_stage(previous)
            status = self._checkpoint(source).restore(source_ckpt)
            status.assert_existing_objects_matched()
            if self.cfg.pretrain.stage_optimizer == "carry":
                with self.strategy.scope():  # slots: restored as they are created
                    bert_internals.create_slots(source["optimizer"], source["variables"])
            status.expect_partial()
            done = source["offset"] + int(source["optimizer"].iterations.numpy())
            if done != previous.end:
                raise ValueError(f"{source_ckpt} is at step {done}, not at the end of its "
                                 f"stage ({previous.end})")
        parts = self._build_stage(stage)
        if source is not None:
            with self.strategy.scope():
                pairs = bert_internals.stack_pairs((source["encoder"], source["pretrainer"]),
                                                   (parts["encoder"], parts["pretrainer"]))
                for t, s in pairs:
                    t.assign(s.read_value())
                if self.cfg.pretrain.stage_optimizer == "carry":
                    self._carry_optimizer(source, parts, pairs)
            log.info("stage %d: %d layers stacked from %d", stage.index, stage.layers,
                     len(source["encoder"].bert.transformer_layers))
        if not latest and source is None:
            with self.strategy.scope():
                self._initialise_embeddings(parts["encoder"])
                if self.cfg.model.position_init == "zero":
                    bert_internals.zero_position_and_type_tables(parts["encoder"].bert)
        self.parts = parts
        self.stage = stage
        self._attach_checkpoint(self._checkpoint(parts), stage.directory, latest)
        if latest:
            log.info("resumed stage %d from %s at step %d", stage.index, latest, self.step)

    def _leave_finished_stages(self) -> None:
        """Enters the next stage while the current one is done (not past the last)."""
        while self.step >= self.stage.end and self.stage.index < len(self.plan) - 1:
            if self._restore_status is not None:
                self._restore_status.expect_partial()
            self._enter(self.plan[self.stage.index + 1])

    def _segment_end(self) -> int:
        """A segment is a stage."""
        self._leave_finished_stages()
        return self.stage.end

    def _carry_optimizer(self, source, parts, pairs) -> None:
        old, new = source["optimizer"], parts["optimizer"]
        bert_internals.create_slots(new, parts["variables"])
        old = getattr(old, "inner_optimizer", old)
        new = getattr(new, "inner_optimizer", new)
        trainable = {id(v) for v in parts["variables"]}
        for t, s in pairs:
            if id(t) not in trainable:
                continue
            for name in new.get_slot_names():
                try:
                    slot = old.get_slot(s, name)
                except KeyError:  # never updated (e.g. a frozen pooler): zero moments
                    continue
                new.get_slot(t, name).assign(slot.read_value())
        new.iterations.assign(old.iterations)

    # -- properties
    @property
    def encoder(self) -> encoders.LeallaEncoder:
        return self.parts["encoder"]

    @property
    def pretrainer(self):
        return self.parts["pretrainer"]

    @property
    def optimizer(self):
        return self.parts["optimizer"]

    @property
    def schedule(self):
        return self.parts["schedule"]

    @property
    def variables(self):
        return self.parts["variables"]

    @property
    def step(self) -> int:
        return self.parts["offset"] + int(self.optimizer.iterations.numpy())

    @property
    def steps_done(self) -> int:
        return self.step

    def evaluate(self) -> Dict[str, float]:
        """Held-out MLM/TLM loss and accuracy (:func:`evaluate`); empty without held-out
        pairs."""
        return evaluate(self.pretrainer, self.eval_batches) if self.eval_batches else {}

    # -- the step
    def loss_and_gradients(self, feats):
        ctx = tf.distribute.get_replica_context()
        counts = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.stack([
            tf.reduce_sum(feats["masked_lm_weights"]),
            tf.reduce_sum(feats["masked_lm_weights"] * feats["is_tlm"][:, None])]))
        total = tf.maximum(counts[0], 1.0)

        def terms():
            logits = self.pretrainer(model_inputs(feats), training=True)["mlm_logits"]
            sums = mlm_sums(logits, feats)
            return {"loss": sums["ce"] / total, "accuracy": sums["correct"] / total,
                    "tlm_loss": sums["ce_tlm"] / tf.maximum(counts[1], 1.0),
                    "mlm_loss": sums["ce_mlm"] / tf.maximum(counts[0] - counts[1], 1.0)}

        return self._tape_gradients(terms)

    def make_iterator(self):
        """A distributed iterator from the sampler's (restored) position."""
        cfg = self.cfg

        def dataset_fn(ctx):
            return make_dataset(self.corpus, self.sampler, self.features_fn,
                                cfg.pretrain.tlm_fraction, cfg.data.seed, ctx)

        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    # -- the loop
    def _segment_started(self, step: int) -> None:
        if self.cfg.pretrain.eval_every and step == 0 and self.eval_batches:
            self._log_eval(0, {})

    def _loop_done(self, step: int, metrics: Dict[str, float]) -> None:
        metrics["layers"] = float(self.stage.layers)
        every = self.cfg.pretrain.eval_every
        if every and self.eval_batches and (step % every == 0 or step == self.cfg.train.steps):
            self._log_eval(step, metrics)

    def _summary_name(self, key: str) -> Optional[str]:
        return None if key.startswith("eval/") else key  # (eval/*: written by _log_eval)

    def _postfix(self, metrics: Dict[str, float]) -> Dict[str, object]:
        return {"loss": f"{metrics['loss']:.3f}", "acc": f"{metrics['accuracy']:.3f}",
                "layers": self.stage.layers}

    def _log_eval(self, step: int, metrics: Dict[str, float]) -> None:
        result = self.evaluate()
        with self.writer.as_default(step=step):
            for key, value in result.items():
                tf.summary.scalar(f"eval/{key}", value)
                metrics[f"eval/{key}"] = value
        log.info("step %d held-out: %s", step,
                 ", ".join(f"{k} {v:.4f}" for k, v in result.items()))

    def _divergence_message(self, step, metrics, good) -> str:
        return (f"pre-training stopped: the loss became {metrics['loss']} (grad norm "
                f"{metrics['grad_norm']}) in the steps up to {step}; the last good "
                f"checkpoint is {good or 'none'}. Lower train.learning_rate.")


def pretrain(cfg: config_lib.ExperimentConfig, model_dir: str,
             strategy: Optional[tf.distribute.Strategy] = None, progress: bool = True,
             on_loop_end: Optional[loop.OnLoopEnd] = None,
             recover: bool = False) -> PretrainResult:
    """Runs (or resumes) a pre-training job; see :class:`Pretrainer` (``recover``: see
    :class:`lealla_tf.training.loop.Job`)."""
    return Pretrainer(cfg, model_dir, strategy, progress, recover=recover).run(on_loop_end)
