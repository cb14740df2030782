"""The sentence encoders, and the one module that reads Model Garden's internals.

:mod:`~lealla_tf.models.encoders` (LEALLA, static, strings in) and
:mod:`~lealla_tf.models.bert_internals`. See docs/training.md, "Vocabulary and encoder".
"""
