"""Where lealla_tf reads data and keeps caches: the data root and the cache root.

See docs/data.md, "The data root", and docs/architecture.md, "Caches".
"""

from __future__ import annotations

import os
from typing import List, Sequence

from lealla_tf import corpus, fileio
from lealla_tf.config import ConfigError

CACHE_ENV = "LEALLA_CACHE_DIR"
DATA_ENV = "LEALLA_DATA_DIR"


def cache_root() -> str:
    """The cache folder: ``$LEALLA_CACHE_DIR``, else the user's cache directory
    (``platformdirs.user_cache_dir("lealla_tf")``: ``~/.cache/lealla_tf`` on Linux)."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return root
    import platformdirs
    return platformdirs.user_cache_dir("lealla_tf", appauthor=False)


def default_data_root() -> str:
    """Where ``lealla data fetch`` puts the public data when no data root is set:
    ``<cache_root()>/datasets`` (``tatoeba/v1``, ``train``, ``ntrex`` inside)."""
    return os.path.join(cache_root(), "datasets")


def chosen_data_dir(cfg_dir: str = "") -> str:
    """The data root the user chose: an explicit directory (``--data-dir``,
    ``data.data_dir``), else ``$LEALLA_DATA_DIR``; ``""`` when neither is set (commands
    then use the cache: :func:`data_dir`, or download into it)."""
    return cfg_dir or os.environ.get(DATA_ENV, "")


def data_dir(cfg_dir: str = "") -> str:
    """The data root: an explicit directory, else ``$LEALLA_DATA_DIR``, else the cache
    (:func:`default_data_root`, filled by ``lealla data fetch``).

    Raises:
      ConfigError: if the directory chosen does not exist.
    """
    root = chosen_data_dir(cfg_dir)
    if not root:
        root = default_data_root()
        if not os.path.isdir(root):
            raise ConfigError(
                "no data directory: pass --data-dir / set data.data_dir, set LEALLA_DATA_DIR, "
                f"or run `lealla data fetch` to download the public data into {root}")
        return root
    if not os.path.isdir(root):
        raise ConfigError(f"data directory does not exist: {root}")
    return root


def data_files(patterns: Sequence[str], cfg_dir: str = "",
               languages: Sequence[str] = ()) -> List[str]:
    """:func:`lealla_tf.corpus.find_files` with relative ``patterns`` read under the data
    root (:func:`data_dir` of ``cfg_dir``)."""
    relative = any(not os.path.isabs(p) for p in patterns)
    root = data_dir(cfg_dir) if relative else ""
    return corpus.find_files(patterns, root, languages)


def vocab_model_file(name: str, model_dir: str) -> str:
    """The file ``vocab.model_file`` names: an absolute or remote path as is, a relative
    one against the working directory, then against the run directory ``model_dir``.

    Raises:
      FileNotFoundError: no such file.
    """
    absolute = os.path.isabs(name) or not fileio.is_local(name)
    candidates = [name] if absolute else [name, fileio.join(model_dir, name)]
    found = next((c for c in candidates if fileio.exists(c) and not fileio.isdir(c)), None)
    if found is None:
        raise FileNotFoundError(f"vocab.model_file not found: {name}")
    return found
