"""Evaluation of sentence encoders: Tatoeba, BUCC-style mining, UN-style pool retrieval.

Modules (NumPy only; models come in as *embedders*, objects with ``encode(list[str])
-> float32 [N, D]`` and a ``name``):

- :mod:`runner`: length-sorted batched embedding with a progress bar and an on-disk
  cache; :class:`runner.CallableEmbedder` adapts any Python callable.
- :mod:`retrieval`: exact chunked top-k by cosine over arrays or ``.npy`` memmaps.
- :mod:`mining`: LASER margin scoring, mining, F1-optimal threshold search.
- :mod:`tatoeba`: the 112-language Tatoeba accuracy (download with checksums).
- :mod:`bucc`: BUCC readers and evaluation; the NTREX-128 BUCC-style benchmark.
- :mod:`un`: P@1 over large candidate pools.
- :mod:`plots`: bar charts.

Example::

    from lealla_tf.evaluation import runner, tatoeba
    emb = runner.CallableEmbedder(my_fn, name="my-model")
    res = tatoeba.evaluate(emb, "xtreme36", data_dir="data/tatoeba/v1")
    print(tatoeba.format_table(res))
"""

from lealla_tf.evaluation.runner import CallableEmbedder, embed_file, embed_sentences

__all__ = ["CallableEmbedder", "embed_file", "embed_sentences"]
