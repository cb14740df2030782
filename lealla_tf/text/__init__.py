"""Vocabularies and preprocessors: strings -> ``input_word_ids``/``input_mask``/``input_type_ids``.

SentencePiece (:mod:`~lealla_tf.text.sentencepiece`) and WordPiece
(:mod:`~lealla_tf.text.wordpiece`) share one packing (:mod:`~lealla_tf.text.packing`). See
docs/training.md, "Vocabulary and encoder".
"""
