"""Embedders: anything that turns sentences into vectors, loaded from one spec grammar.

:func:`load` (:mod:`~lealla_tf.embedders.spec`) is the entry point; the :class:`Embedder` base
class and the batching policy are in :mod:`~lealla_tf.embedders.base`, teachers in
:mod:`~lealla_tf.embedders.teachers`, exports, TFLite files and runs in
:mod:`~lealla_tf.embedders.artifacts`. See docs/evaluation.md, "Models".
"""

from lealla_tf.embedders.base import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_BATCH_TOKENS,
    CallableEmbedder,
    Embedder,
    as_bytes,
    as_embedder,
    batch_order,
    pick_output,
    sort_keys,
)
from lealla_tf.embedders.spec import (
    RUN_CONFIG_FILE,
    SPEC_HELP,
    Spec,
    load,
    load_callable,
    parse_spec,
    register,
)

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_BATCH_TOKENS", "RUN_CONFIG_FILE", "SPEC_HELP", "CallableEmbedder", "Embedder",
           "Spec", "as_bytes", "as_embedder", "batch_order", "load", "load_callable", "parse_spec",
           "pick_output", "register", "sort_keys"]
