"""Evaluation of sentence encoders: Tatoeba, BUCC-style mining, NTREX, UN-style pools, ANN.

NumPy only; models come in as embedders (:mod:`lealla_tf.embedders`)::

    from lealla_tf import embedders
    from lealla_tf.evaluation import tatoeba
    res = tatoeba.evaluate(embedders.load("muse"), "deu,fra", data_dir="data/tatoeba/v1")
    print(tatoeba.format_table(res))

See docs/evaluation.md.
"""

from lealla_tf.evaluation.runner import CallableEmbedder, embed_file, embed_sentences

__all__ = ["CallableEmbedder", "embed_file", "embed_sentences"]
