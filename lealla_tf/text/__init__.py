"""Vocabularies and preprocessors: strings -> ``input_word_ids``/``input_mask``/``input_type_ids``.

SentencePiece (:mod:`~lealla_tf.text.sentencepiece`) and WordPiece
(:mod:`~lealla_tf.text.wordpiece`) share one packing (:mod:`~lealla_tf.text.packing`);
:mod:`~lealla_tf.text.coverage` counts the unknown tokens a vocabulary gives a text. See
docs/training.md, "Vocabulary and encoder".
"""
