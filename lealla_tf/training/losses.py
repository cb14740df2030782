"""Translation-ranking and distillation losses with cross-replica negatives.

:class:`DualEncoderLoss`: bidirectional additive-margin softmax, each replica scoring its local
rows against the global batch's columns and returning its share of the global-batch mean (so
gradients summed across replicas equal one device's), plus feature and logit distillation::

    from lealla_tf.training import losses
    loss_fn = losses.DualEncoderLoss(cfg.loss, teacher_dim=768)
    terms = loss_fn(src_emb, tgt_emb, teacher_src, teacher_tgt)   # terms["loss"], ...

See docs/training.md, "Losses".
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import tensorflow as tf
import tf_keras

from lealla_tf.config import LossConfig

LOSS_TERMS = ("loss", "ams", "ams_src_to_tgt", "ams_tgt_to_src", "feature_distill",
              "logit_distill", "accuracy", "accuracy_src_to_tgt", "accuracy_tgt_to_src")


# ---------------------------------------------------------------------------- replicas
def _replica_context() -> tf.distribute.ReplicaContext:
    ctx = tf.distribute.get_replica_context()
    if ctx is None:
        raise ValueError(
            "losses must be computed in replica context (inside strategy.run or without a "
            "strategy), not in cross-replica context")
    return ctx


def gather_global(*tensors: tf.Tensor) -> Tuple[List[tf.Tensor], tf.Tensor]:
    """Concatenates each tensor [b, d_k] from all replicas (replica order) along axis 0.

    All tensors travel in one ``all_gather`` (concatenated along the feature axis and
    split again): collectives issued independently may be ordered differently on
    different replicas, one collective per step cannot be.

    Returns:
      ``(gathered, offset)``: the gathered tensors [b * replicas, d_k] (float32) and the row
      at which this replica's rows start (``replica_id * b``, int32). The gather has a
      gradient, so rows from other replicas act as negatives that also train them.
    """
    ctx = _replica_context()
    tensors = [tf.cast(t, tf.float32) for t in tensors]
    if ctx.num_replicas_in_sync == 1:
        return list(tensors), tf.constant(0, tf.int32)
    widths = [t.shape[-1] for t in tensors]
    if any(w is None for w in widths):
        raise ValueError(f"gather_global needs static feature dimensions, got {widths}")
    gathered = ctx.all_gather(tf.concat(tensors, axis=-1), axis=0)
    replica_id = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
    return tf.split(gathered, widths, axis=-1), replica_id * tf.shape(tensors[0])[0]


def _normalize(x: tf.Tensor) -> tf.Tensor:
    return tf.math.l2_normalize(tf.cast(x, tf.float32), axis=-1)


# ---------------------------------------------------------------------------- AMS
def _ranking_direction(queries: tf.Tensor, candidates: tf.Tensor, labels: tf.Tensor,
                       margin: float, scale: float,
                       global_batch: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """Local query rows against global candidates: (loss share, accuracy share)."""
    cos = tf.matmul(queries, candidates, transpose_b=True)  # [b, G]
    positives = tf.one_hot(labels, tf.shape(candidates)[0], dtype=cos.dtype)
    logits = scale * (cos - margin * positives)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    correct = tf.cast(tf.equal(tf.argmax(cos, axis=-1, output_type=tf.int32), labels),
                      tf.float32)
    return tf.reduce_sum(ce) / global_batch, tf.reduce_sum(correct) / global_batch


def additive_margin_softmax_loss(src: tf.Tensor, tgt: tf.Tensor, margin: float = 0.3,
                                 scale: float = 100.0,
                                 bidirectional: bool = True) -> Dict[str, tf.Tensor]:
    """Bidirectional AMS translation-ranking loss over the global (cross-replica) batch.

    Args:
      src: [b, d] this replica's source embeddings (normalised here).
      tgt: [b, d] this replica's target embeddings; ``tgt[i]`` translates ``src[i]``.
      margin: subtracted from the cosine of the positive pairs only.
      scale: multiplies the cosines before the softmax.
      bidirectional: add the target-to-source direction (LaBSE does).

    Returns:
      dict with ``ams`` (sum of the directions), ``ams_src_to_tgt``, ``ams_tgt_to_src``
      (zero when not bidirectional) and in-batch retrieval ``accuracy`` (mean of the
      directions that are computed) with ``accuracy_src_to_tgt`` / ``accuracy_tgt_to_src``;
      each is this replica's share of the global-batch mean.
    """
    src, tgt = _normalize(src), _normalize(tgt)
    (src_all, tgt_all), offset = gather_global(src, tgt)
    return _ams_terms(src, tgt, src_all, tgt_all, offset, margin, scale, bidirectional)


def _ams_terms(src, tgt, src_all, tgt_all, offset, margin, scale, bidirectional,
               global_batch=None):
    if global_batch is None:
        global_batch = tf.cast(tf.shape(src_all)[0], tf.float32)
    labels = tf.range(tf.shape(src)[0], dtype=tf.int32) + offset
    s2t, acc_s2t = _ranking_direction(src, tgt_all, labels, margin, scale, global_batch)
    if bidirectional:
        t2s, acc_t2s = _ranking_direction(tgt, src_all, labels, margin, scale, global_batch)
        accuracy = (acc_s2t + acc_t2s) / 2.0
    else:
        t2s, acc_t2s = tf.zeros_like(s2t), tf.zeros_like(acc_s2t)
        accuracy = acc_s2t
    return {"ams": s2t + t2s, "ams_src_to_tgt": s2t, "ams_tgt_to_src": t2s,
            "accuracy": accuracy, "accuracy_src_to_tgt": acc_s2t,
            "accuracy_tgt_to_src": acc_t2s}


# ---------------------------------------------------------------------------- distillation
def feature_distillation_loss(projected: tf.Tensor, teacher: tf.Tensor) -> tf.Tensor:
    """This replica's share of the global-batch mean of per-example MSE.

    Args:
      projected: [b, D] student embeddings mapped to the teacher's dimension.
      teacher: [b, D] teacher embeddings (normalised here, as sentence encoders emit).
    """
    ctx = _replica_context()
    per_example = tf.reduce_mean(
        tf.math.squared_difference(tf.cast(projected, tf.float32), _normalize(teacher)), axis=-1)
    global_batch = tf.cast(tf.shape(projected)[0] * ctx.num_replicas_in_sync, tf.float32)
    return tf.reduce_sum(per_example) / global_batch


def _logit_direction(s_q, s_c, t_q, t_c, kind, temperature, scale, global_batch):
    s_cos = tf.matmul(s_q, s_c, transpose_b=True)
    t_cos = tf.matmul(t_q, t_c, transpose_b=True)
    if kind == "mse":
        per_row = tf.reduce_mean(tf.math.squared_difference(s_cos, t_cos), axis=-1)
    else:
        t_log_p = tf.nn.log_softmax(scale * t_cos / temperature, axis=-1)
        s_log_p = tf.nn.log_softmax(scale * s_cos / temperature, axis=-1)
        per_row = tf.reduce_sum(tf.exp(t_log_p) * (t_log_p - s_log_p), axis=-1)
        per_row *= temperature ** 2
    return tf.reduce_sum(per_row) / global_batch


def logit_distillation_loss(src: tf.Tensor, tgt: tf.Tensor, teacher_src: tf.Tensor,
                            teacher_tgt: tf.Tensor, kind: str = "mse",
                            temperature: float = 1.0, scale: float = 100.0,
                            bidirectional: bool = True) -> tf.Tensor:
    """Pulls the student's global-batch similarity matrix towards the teacher's.

    Args:
      src, tgt: [b, d] this replica's student embeddings.
      teacher_src, teacher_tgt: [b, D] the matching teacher embeddings.
      kind: ``"mse"`` on cosine matrices, or ``"kl"`` between row softmaxes of
        ``scale * cos / temperature`` (teacher as target), times ``temperature ** 2``.
      temperature: softmax temperature for ``"kl"``.
      scale: logit scale for ``"kl"`` (the AMS scale).
      bidirectional: also score target rows against source columns, and sum.

    Returns:
      this replica's share of the global-batch mean, summed over directions.
    """
    if kind not in ("mse", "kl"):
        raise ValueError(f"logit distillation kind must be 'mse' or 'kl', got {kind!r}")
    src, tgt = _normalize(src), _normalize(tgt)
    t_src, t_tgt = _normalize(teacher_src), _normalize(teacher_tgt)
    gathered, _ = gather_global(src, tgt, t_src, t_tgt)
    return _logit_terms(src, tgt, t_src, t_tgt, *gathered, kind=kind,
                        temperature=temperature, scale=scale, bidirectional=bidirectional)


def _logit_terms(src, tgt, t_src, t_tgt, src_all, tgt_all, t_src_all, t_tgt_all, kind,
                 temperature, scale, bidirectional, global_batch=None):
    if global_batch is None:
        global_batch = tf.cast(tf.shape(src_all)[0], tf.float32)
    loss = _logit_direction(src, tgt_all, t_src, t_tgt_all, kind, temperature, scale,
                            global_batch)
    if bidirectional:
        loss += _logit_direction(tgt, src_all, t_tgt, t_src_all, kind, temperature, scale,
                                 global_batch)
    return loss


# ---------------------------------------------------------------------------- the total
class DualEncoderLoss(tf_keras.layers.Layer):
    """AMS plus optional feature and logit distillation, weighted by a :class:`LossConfig`.

    Owns the feature-distillation projection (``feature_projection``, a bias-free Dense from
    the student's to the teacher's dimension) when ``feature_distill_weight > 0``. The layer
    always computes in float32, also under a mixed-precision policy.

    Args:
      loss_config: margin, scale, direction and term weights.
      teacher_dim: the teacher's embedding dimension (needed by the distillation terms).
      student_dim: the student's embedding dimension; when given, the projection's
        variables are created now (do this inside ``strategy.scope()``).

    Call args:
      src, tgt: [b, d] student embeddings of the pair's two sides.
      teacher_src, teacher_tgt: [b, D] teacher embeddings, or None without distillation.

    Returns:
      dict with ``loss`` (the weighted total) and every term of :data:`LOSS_TERMS`, each
      this replica's share of the global-batch mean (unweighted, except ``loss``).
    """

    def __init__(self, loss_config: LossConfig, teacher_dim: int = 0, student_dim: int = 0,
                 **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.loss_config = loss_config
        self.teacher_dim = int(teacher_dim)
        if self.uses_teacher and self.teacher_dim <= 0:
            raise ValueError(
                "loss.feature_distill_weight / loss.logit_distill_weight > 0 need teacher "
                f"embeddings with a known dimension, got teacher_dim={teacher_dim}")
        self.feature_projection = None
        if loss_config.feature_distill_weight > 0:
            self.feature_projection = tf_keras.layers.Dense(
                self.teacher_dim, use_bias=False, dtype="float32", name="feature_projection")
            if student_dim:
                self.feature_projection.build((None, int(student_dim)))

    @property
    def uses_teacher(self) -> bool:
        return (self.loss_config.feature_distill_weight > 0
                or self.loss_config.logit_distill_weight > 0)

    def call(self, src, tgt, teacher_src=None, teacher_tgt=None):
        c = self.loss_config
        if self.uses_teacher and (teacher_src is None or teacher_tgt is None):
            raise ValueError("this loss has distillation terms: pass teacher_src and teacher_tgt")
        src, tgt = _normalize(src), _normalize(tgt)
        parts = [src, tgt]
        if c.logit_distill_weight > 0:
            t_src, t_tgt = _normalize(teacher_src), _normalize(teacher_tgt)
            parts += [tf.stop_gradient(t_src), tf.stop_gradient(t_tgt)]
        replicas = _replica_context().num_replicas_in_sync
        global_batch = tf.cast(tf.shape(src)[0] * replicas, tf.float32)
        if c.cross_replica_negatives:
            gathered, offset = gather_global(*parts)
        else:  # each replica ranks within its own batch; still a share of the global mean
            gathered, offset = parts, tf.constant(0, tf.int32)
        terms = _ams_terms(src, tgt, gathered[0], gathered[1], offset, c.margin, c.scale,
                           c.bidirectional, global_batch)
        zero = tf.zeros_like(terms["ams"])
        terms["feature_distill"] = zero
        terms["logit_distill"] = zero
        if self.feature_projection is not None:
            terms["feature_distill"] = (
                feature_distillation_loss(self.feature_projection(src), teacher_src)
                + feature_distillation_loss(self.feature_projection(tgt), teacher_tgt))
        if c.logit_distill_weight > 0:
            terms["logit_distill"] = _logit_terms(
                src, tgt, t_src, t_tgt, *gathered, kind=c.logit_distill_type,
                temperature=c.logit_distill_temperature, scale=c.scale,
                bidirectional=c.bidirectional, global_batch=global_batch)
        terms["loss"] = (c.ams_weight * terms["ams"]
                         + c.feature_distill_weight * terms["feature_distill"]
                         + c.logit_distill_weight * terms["logit_distill"])
        return terms
