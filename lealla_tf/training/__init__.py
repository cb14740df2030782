"""Training jobs: the dual encoder, pre-training, and what they share.

:mod:`~lealla_tf.training.dual_encoder` (``lealla train``), :mod:`~lealla_tf.training.pretraining`
(``lealla pretrain``), their loop (:mod:`~lealla_tf.training.loop`), losses, optimisers,
strategies and starting from another run.

See docs/training.md and docs/pretraining.md.
"""
