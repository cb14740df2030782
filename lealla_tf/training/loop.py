"""What a training job and a pre-training job share: :class:`Job`.

The job sets up the run directory, vocabulary, teacher, precision and checkpoints, runs the
replica step (reduce, clip, apply) under a strategy and drives the loop (timing, NaN stop,
summaries, saving); a subclass gives the model, the data and the loss of one step.
A non-finite loss raises :class:`TrainingDiverged`.

See docs/training.md, "The job" and "Resume and divergence".
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

import tensorflow as tf
import tf_keras

from lealla_tf import config as config_lib
from lealla_tf import fileio, layout, paths, runs
from lealla_tf.data import pipeline as data_lib
from lealla_tf.distill import student_init
from lealla_tf.text import sentencepiece, wordpiece
from lealla_tf.training import distribute as distribute_lib

log = logging.getLogger(__name__)

OnLoopEnd = Callable[[int, Dict[str, float]], None]


class TrainingInterrupted(Exception):
    """Training stopped on Ctrl-C (SIGINT) after saving a checkpoint at the current step."""

    def __init__(self, step: int, checkpoint: Optional[str]):
        self.step, self.checkpoint = step, checkpoint
        super().__init__(f"interrupted at step {step}; saved {checkpoint}: rerun the same "
                         "command to resume from it" if checkpoint else
                         f"interrupted at step {step} before any checkpoint")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the model dir keeps the last good checkpoint."""


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
        found = paths.vocab_model_file(source, model_dir)
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
                                                extend_pieces=cfg.vocab.extend_pieces,
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


def make_train_loop(strategy: tf.distribute.Strategy, replica_step: Callable,
                    metrics: Tuple[str, ...]):
    """A ``tf.function(iterator, num_steps)`` that runs ``replica_step`` on ``num_steps``
    batches under ``strategy`` and returns the mean over those steps of each of ``metrics``
    (each summed over replicas)."""

    @tf.function
    def train_loop(iterator, num_steps):
        sums = {k: tf.constant(0.0) for k in metrics}
        for _ in tf.range(num_steps):
            terms = strategy.run(replica_step, args=(next(iterator),))
            sums = {k: sums[k] + strategy.reduce(tf.distribute.ReduceOp.SUM, terms[k],
                                                 axis=None) for k in sums}
        return {k: v / tf.cast(num_steps, v.dtype) for k, v in sums.items()}

    return train_loop


# ---------------------------------------------------------------------------- the job
class Job:
    """One run in a model dir: config, vocabulary, teacher, precision, checkpoints, the
    replica step's reduce/clip/apply and the loop that calls it.

    A subclass provides the model and data (:meth:`_load_data`, :meth:`_build`, which calls
    :meth:`_attach_checkpoint`), :meth:`make_iterator`, the loss of one step
    (:meth:`loss_and_gradients`), and ``encoder``, ``optimizer``, ``schedule``,
    ``variables``, ``sampler`` and :attr:`steps_done`. The loop trains in segments
    (:meth:`_segment_end`: one model and one iterator each) until ``train.steps``.

    Args:
      cfg: the experiment config.
      model_dir: the run directory (created; resumed from when it holds checkpoints).
      strategy: a strategy (default: from ``cfg.distribute``).
      progress: show a tqdm progress bar (chief only).
      corpus: already loaded data (default: read from ``cfg``).
      teacher: an already loaded teacher (default: loaded from ``teacher.spec`` when needed).
      recover: resume from the newest checkpoint that reads when the newest one is
        damaged (damaged files are moved aside; :func:`lealla_tf.runs.resume_checkpoint`);
        without it a damaged run is refused.

    The chief holds the run directory's writer lock (:func:`lealla_tf.runs.writer`) from
    construction to the end of :meth:`run` (or :meth:`close`): a second job on the same
    directory is refused before it writes anything.
    """

    LOG_DIR = layout.TRAIN_LOG_DIR  # TensorBoard summaries, under the model dir
    METRICS: Tuple[str, ...] = ()  # what the replica step returns, summed over replicas
    RATE = "examples_per_second"  # the throughput metric's name
    PROGRESS = "train"  # the progress bar's name
    RESULT: type  # built as RESULT(step, metrics, checkpoint, rate)

    def __init__(self, cfg: config_lib.ExperimentConfig, model_dir: str,
                 strategy: Optional[tf.distribute.Strategy] = None, progress: bool = True,
                 corpus=None, teacher=None, recover: bool = False):
        cfg = self._prepare_config(cfg)
        self.cfg = cfg
        self.model_dir = fileio.normpath(model_dir)
        self.strategy = strategy or distribute_lib.get_strategy(cfg.distribute)
        self.chief = distribute_lib.is_chief(self.strategy)
        self.progress = progress and self.chief
        self.recover = recover
        self._teacher = teacher
        self._lock = contextlib.ExitStack()
        if self.chief:
            self._lock.enter_context(runs.writer(self.model_dir))
        try:
            self._setup(cfg, corpus, progress)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Releases the run directory's writer lock (done by :meth:`run` at its end)."""
        self._lock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _setup(self, cfg: config_lib.ExperimentConfig, corpus, progress: bool) -> None:
        fileio.makedirs(self.model_dir)

        self.vocab_path = resolve_vocab(cfg, self.model_dir, self.strategy, progress=progress,
                                        teacher_fn=self.teacher)
        self.vocab_bytes = wordpiece.read_vocab(cfg.vocab.type, self.vocab_path)
        self.vocab_size = self.make_preprocessor(2).vocab_size
        if cfg.vocab.source == "teacher" and not cfg.vocab.model_file:
            cfg.model.vocab_size = self.vocab_size  # known only once the corpus is tokenized
        self._check_resume()
        if self.vocab_size > cfg.model.vocab_size:
            raise config_lib.ConfigError(
                f"the vocabulary has {self.vocab_size} pieces but model.vocab_size is "
                f"{cfg.model.vocab_size}")

        self._load_data(corpus)
        self._previous_policy = tf_keras.mixed_precision.global_policy()
        self.policy = precision_policy(cfg.train.mixed_precision, self.strategy)
        self.restored_from: Optional[str] = None
        self._restore_status = None
        self._build()  # restores the checkpoint: a damaged run stops here, unchanged
        if self.chief:
            runs.save_config(self.model_dir, cfg)
        if self.chief:
            self.writer = tf.summary.create_file_writer(fileio.join(self.model_dir,
                                                                    self.LOG_DIR))
        else:
            self.writer = tf.summary.create_noop_writer()

    # -- what a subclass provides
    def _prepare_config(self, cfg: config_lib.ExperimentConfig) -> config_lib.ExperimentConfig:
        """The config this job runs (validated)."""
        return cfg.validate()

    def _load_data(self, corpus) -> None:
        """Sets ``corpus`` (``corpus``, or read from the config) and ``sampler``."""
        raise NotImplementedError

    def _build(self) -> None:
        """Builds model and optimizer, initialises or restores them (ends with
        :meth:`_attach_checkpoint`)."""
        raise NotImplementedError

    def make_iterator(self):
        """A distributed iterator starting at the sampler's (restored) position."""
        raise NotImplementedError

    def loss_and_gradients(self, batch) -> Tuple[Dict[str, tf.Tensor], List[tf.Tensor]]:
        """This replica's loss terms and (unreduced) gradients for one batch
        (:meth:`_tape_gradients`)."""
        raise NotImplementedError

    @property
    def steps_done(self) -> int:
        """The global step the run is at."""
        raise NotImplementedError

    def _segment_end(self) -> int:
        """The step at which the current segment ends (one model, one iterator)."""
        return self.cfg.train.steps

    def _segment_started(self, step: int) -> None:
        """Called when a segment's iterator is made, before its first step."""

    def _loop_done(self, step: int, metrics: Dict[str, float]) -> None:
        """Called after each train-loop call (finite loss), before summaries: may add
        ``metrics``."""

    def _summary_name(self, key: str) -> Optional[str]:
        """The TensorBoard name of ``metrics[key]``; None: not written."""
        return key

    def _postfix(self, metrics: Dict[str, float]) -> Dict[str, str]:
        """What the progress bar shows after a train-loop call."""
        return {"loss": f"{metrics['loss']:.4f}", "acc": f"{metrics['accuracy']:.3f}"}

    def _divergence_message(self, step: int, metrics: Dict[str, float],
                            good: Optional[str]) -> str:
        """The message of :class:`TrainingDiverged` (``good``: the last good checkpoint)."""
        raise NotImplementedError

    # -- shared pieces
    def make_preprocessor(self, seq_length: Optional[int] = None):
        """The run's preprocessor (SentencePiece or WordPiece, ``vocab.type``; default
        length ``preprocess.seq_length``)."""
        return wordpiece.make_preprocessor(self.cfg.vocab.type, self.vocab_bytes,
                                           seq_length or self.cfg.preprocess.seq_length,
                                           self.cfg.vocab.do_lower_case)

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

    def _check_resume(self) -> None:
        """Refuses a config that changes what the model dir's checkpoints hold."""
        runs.check_resume_config(self.cfg, self.model_dir)

    @contextlib.contextmanager
    def _precision(self):
        """Layers built inside take ``train.mixed_precision``'s policy."""
        tf_keras.mixed_precision.set_global_policy(self.policy)
        try:
            yield
        finally:
            tf_keras.mixed_precision.set_global_policy(self._previous_policy)

    def _loss_scaling(self, optimizer):
        """``optimizer``, with dynamic loss scaling under ``mixed_float16``."""
        if self.policy == "mixed_float16":
            return tf_keras.mixed_precision.LossScaleOptimizer(optimizer)
        return optimizer

    @property
    def _loss_scaled(self) -> bool:
        return isinstance(self.optimizer, tf_keras.mixed_precision.LossScaleOptimizer)

    def _initialise_embeddings(self, encoder) -> None:
        """Fills the word-embedding table from the teacher (``model.embedding_init``;
        nothing when ``random``)."""
        kind = self.cfg.model.embedding_init
        if kind == "random":
            return
        source = self.cfg.vocab.model_file  # its folder may hold the piece-vector cache
        cache = (fileio.dirname(fileio.normpath(source))
                 if source and fileio.exists(source) and not fileio.isdir(source)
                 else fileio.dirname(self.vocab_path))
        table = student_init.initial_table(kind, self.teacher(), self.vocab_path,
                                           self.cfg.model.hidden_size,
                                           self.cfg.model.initializer_range, cache_dir=cache,
                                           progress=self.progress)
        variable = encoder.word_embeddings
        if tuple(variable.shape) != table.shape:
            raise config_lib.ConfigError(
                f"embedding init gives a {table.shape} table but the encoder's is "
                f"{tuple(variable.shape)}: model.vocab_size must equal the vocabulary's size")
        variable.assign(tf.cast(table, variable.dtype))
        log.info("word embeddings initialised from the teacher (%s)", kind)

    # -- checkpoints
    def _latest_checkpoint(self, directory: str) -> Optional[str]:
        """The checkpoint to resume from in ``directory`` (relative to the model dir); a
        damaged one is refused, or recovered from with ``recover`` (chief only)."""
        return runs.resume_checkpoint(fileio.join(self.model_dir, directory),
                                      recover=self.recover and self.chief)

    def _attach_checkpoint(self, checkpoint: tf.train.Checkpoint, directory: str,
                           latest: Optional[str]) -> None:
        """Makes ``checkpoint`` the one saved into ``directory`` (the last
        ``train.keep_checkpoints``), restores ``latest`` into it when given, and makes the
        train loop for the current model."""
        self.checkpoint = checkpoint
        self.manager = tf.train.CheckpointManager(
            checkpoint, distribute_lib.writable_dir(self.model_dir, self.strategy, directory),
            max_to_keep=self.cfg.train.keep_checkpoints)
        self._restore_status = None
        if latest:
            self._restore_status = checkpoint.restore(latest)
            self._restore_status.assert_existing_objects_matched()
            self.restored_from = latest
        self._train_loop = make_train_loop(self.strategy, self._replica_step, self.METRICS)

    def _save(self, step: int) -> None:
        self.manager.save(checkpoint_number=step)
        if not self.chief:  # saving is collective; only the chief's copy is kept
            fileio.rmtree(self.manager.directory)

    # -- the step
    def _tape_gradients(self, terms_fn: Callable[[], Dict[str, tf.Tensor]]):
        """``(terms, gradients)``: ``terms_fn()`` run under a tape, the gradients of its
        ``loss`` for ``variables`` (loss scaling applied and undone)."""
        scaled = self._loss_scaled
        with tf.GradientTape() as tape:
            terms = terms_fn()
            loss = terms["loss"]
            if scaled:
                loss = self.optimizer.get_scaled_loss(loss)
        grads = tape.gradient(loss, self.variables)
        if scaled:
            grads = self.optimizer.get_unscaled_gradients(grads)
        return terms, grads

    def _gradients_to_reduce(self, grads, ctx: tf.distribute.ReplicaContext):
        """``grads`` as the cross-replica sum needs them (the same on every step)."""
        return grads

    def _replica_step(self, batch):
        """One step on this replica: the gradients summed over replicas, clipped by their
        global norm (``train.clip_norm``) and applied; returns the loss terms and
        ``grad_norm``."""
        ctx = tf.distribute.get_replica_context()
        terms, grads = self.loss_and_gradients(batch)
        grads = self._gradients_to_reduce(grads, ctx)
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        clip = self.cfg.train.clip_norm
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

    # -- the loop
    def run(self, on_loop_end: Optional[OnLoopEnd] = None):
        """Trains until ``train.steps`` (resuming where the checkpoint left off).

        Args:
          on_loop_end: called with ``(step, metrics)`` after every call of the train loop.

        Returns:
          ``RESULT(step, metrics, checkpoint, rate)``.

        Raises:
          TrainingDiverged: on a NaN/inf loss (after writing ``DIVERGED``).
          TrainingInterrupted: on Ctrl-C (SIGINT), after saving a checkpoint at the step
            the loop had reached (a second Ctrl-C stops at once, saving nothing).
        """
        try:
            with self._interrupts() as interrupted:
                return self._run(on_loop_end, interrupted)
        finally:
            self.close()

    @contextlib.contextmanager
    def _interrupts(self):
        """Turns the first SIGINT during the loop into a flag the loop checks between calls
        of the train loop (so a step is never cut in half); the second one raises."""
        flag = {"set": False}
        if threading.current_thread() is not threading.main_thread():
            yield flag
            return

        def handler(signum, frame):
            flag["set"] = True
            signal.signal(signal.SIGINT, previous)
            log.warning("interrupted: saving a checkpoint at the end of this step "
                        "(Ctrl-C again to stop at once)")

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield flag
        finally:
            if signal.getsignal(signal.SIGINT) is handler:
                signal.signal(signal.SIGINT, previous)

    def _run(self, on_loop_end: Optional[OnLoopEnd], interrupted: Dict[str, bool]):
        cfg = self.cfg.train
        total = cfg.steps
        step = self.steps_done
        metrics: Dict[str, float] = {}
        if step >= total:
            log.info("nothing to do: step %d >= train.steps %d", step, total)
            if self._restore_status is not None:  # optimizer slots were never created
                self._restore_status.expect_partial()
            return self.RESULT(step, metrics, self.manager.latest_checkpoint
                               or self.restored_from, 0.0)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=total, initial=step, desc=self.PROGRESS, unit="step",
                       dynamic_ncols=True)
        seen, seconds = 0, 0.0
        last_summary = saved = step
        try:
            while True:
                end = self._segment_end()
                step = self.steps_done
                if step >= end:
                    break
                iterator = self.make_iterator()
                self._segment_started(step)
                while step < end:
                    n = min(cfg.steps_per_loop, end - step,
                            cfg.checkpoint_every - step % cfg.checkpoint_every)
                    start = time.perf_counter()
                    out = self._train_loop(iterator, tf.constant(n, tf.int32))
                    metrics = {k: float(v) for k, v in out.items()}
                    elapsed = time.perf_counter() - start
                    step += n
                    seen += n * cfg.global_batch_size
                    seconds += elapsed
                    metrics[self.RATE] = n * cfg.global_batch_size / max(elapsed, 1e-9)
                    metrics["learning_rate"] = float(self.schedule(step - 1))
                    # With float16 loss scaling an overflowing gradient is expected now and
                    # then: the optimizer skips that update and lowers the scale.
                    watched = ("loss",) if self._loss_scaled else ("loss", "grad_norm")
                    if not all(math.isfinite(metrics[k]) for k in watched):
                        self._diverged(step, metrics)
                    self._loop_done(step, metrics)
                    if step - last_summary >= cfg.summary_every or step == total:
                        self._summaries(step, metrics)
                        last_summary = step
                    if step % cfg.checkpoint_every == 0 or step == end:
                        self._save(step)
                        saved = step
                    if bar is not None:
                        bar.update(n)
                        bar.set_postfix(self._postfix(metrics), refresh=False)
                    if on_loop_end is not None:
                        on_loop_end(step, metrics)
                    if interrupted["set"]:
                        if saved != step:
                            self._save(step)
                        raise TrainingInterrupted(step, self.manager.latest_checkpoint)
                del iterator
        finally:
            if bar is not None:
                bar.close()
            self.writer.flush()
            log.info("skipped %d sampled pairs that repeated a sentence of their batch",
                     self.sampler.duplicates_skipped)
        return self.RESULT(step, metrics, self.manager.latest_checkpoint or self.restored_from,
                           seen / max(seconds, 1e-9))

    def _summaries(self, step: int, metrics: Dict[str, float]) -> None:
        with self.writer.as_default(step=step):
            for key, value in metrics.items():
                name = self._summary_name(key)
                if name is not None:
                    tf.summary.scalar(name, value)

    def _diverged(self, step: int, metrics: Dict[str, float]) -> None:
        good = self.manager.latest_checkpoint or self.restored_from
        message = self._divergence_message(step, metrics, good)
        if self.chief:
            fileio.atomic_write(fileio.join(self.model_dir, layout.DIVERGED_FILE), message + "\n")
        raise TrainingDiverged(message)
