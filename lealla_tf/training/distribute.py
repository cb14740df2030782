"""The ``tf.distribute`` strategy of a run: ``one_device``, ``mirrored``, ``multi_worker``, ``tpu``.

Call :func:`get_strategy` before anything initialises TensorFlow: ``mirrored`` without GPUs
splits the CPU into logical devices, which TensorFlow accepts only before it starts::

    from lealla_tf.training import distribute
    strategy = distribute.get_strategy(cfg.distribute)

See docs/training.md, "Strategies".
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Optional

import tensorflow as tf

from lealla_tf.config import ConfigError, DistributeConfig


def configure_logical_cpus(n: int) -> None:
    """Splits the first physical CPU into ``n`` logical devices (before TF initialises).

    Raises:
      RuntimeError: if TensorFlow was initialised already with a different split.
    """
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError as e:
        have = len(tf.config.list_logical_devices("CPU"))
        if have < n:
            raise RuntimeError(
                f"cannot split the CPU into {n} logical devices: TensorFlow is already "
                f"initialised with {have}; create the strategy before any other TF work") from e


def _communication(name: str):
    impl = tf.distribute.experimental.CommunicationImplementation
    table = {"auto": impl.AUTO, "ring": impl.RING, "nccl": impl.NCCL}
    if name not in table:
        raise ConfigError(f"distribute.communication must be auto, ring or nccl, got {name!r}")
    return tf.distribute.experimental.CommunicationOptions(implementation=table[name])


def get_strategy(cfg: DistributeConfig) -> tf.distribute.Strategy:
    """Builds the strategy named by ``cfg.strategy``.

    Args:
      cfg: the ``distribute`` section of the config.

    Raises:
      ConfigError: unknown strategy or communication; ``multi_worker`` without TF_CONFIG.
      ValueError: ``tpu`` when no TPU can be found.
    """
    cfg.validate()
    gpus = tf.config.list_physical_devices("GPU")
    if cfg.strategy == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if cfg.strategy == "mirrored":
        if not gpus and cfg.num_logical_cpus > 0:
            configure_logical_cpus(cfg.num_logical_cpus)
            cpus = tf.config.list_logical_devices("CPU")[:cfg.num_logical_cpus]
            return tf.distribute.MirroredStrategy([d.name for d in cpus])
        return tf.distribute.MirroredStrategy()
    if cfg.strategy == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ConfigError("distribute.strategy=multi_worker needs the TF_CONFIG environment "
                              "variable (cluster and task of this worker)")
        return tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=_communication(cfg.communication))
    if cfg.strategy == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=cfg.tpu)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as e:
            raise ValueError(f"no TPU found for distribute.tpu={cfg.tpu!r}: {e}") from e
        return tf.distribute.TPUStrategy(resolver)
    raise ConfigError(f"unknown distribute.strategy {cfg.strategy!r}")  # validate() catches it


def task_info(strategy: tf.distribute.Strategy):
    """``(task_type, task_id)`` of this process (``(None, 0)`` outside multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None, 0
    return resolver.task_type, resolver.task_id or 0


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the process that owns the model dir (the chief, or worker 0 without one)."""
    task_type, task_id = task_info(strategy)
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    has_chief = "chief" in json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return task_type == "worker" and task_id == 0 and not has_chief


def writable_dir(model_dir: str, strategy: tf.distribute.Strategy, sub: str) -> str:
    """Where this worker writes ``sub``: ``model_dir/sub`` for the chief, else a temp dir.

    Under MultiWorkerMirroredStrategy every worker must save checkpoints (saving is a
    collective); only the chief's copy is kept.
    """
    if is_chief(strategy):
        return os.path.join(model_dir, sub)
    task_type, task_id = task_info(strategy)
    return os.path.join(tempfile.gettempdir(), f"lealla_worker_{task_type}_{task_id}_{os.getpid()}",
                        sub)


def describe(strategy: tf.distribute.Strategy) -> str:
    """One line: strategy class and replica count."""
    return f"{type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s)"


def device_type(strategy: Optional[tf.distribute.Strategy] = None) -> str:
    """``"tpu"``, ``"gpu"`` or ``"cpu"``: where the replicas run."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "tpu"
    return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
