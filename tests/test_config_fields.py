"""Every config field is read by the package (a field nobody reads is a lie to the user)."""

import dataclasses
import os
import re

from lealla_tf import config

PACKAGE = os.path.join(os.path.dirname(__file__), "..", "lealla_tf")


def _sources():
    text = []
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py") and name != "config.py":
                with open(os.path.join(root, name), encoding="utf-8") as f:
                    text.append(f.read())
    return "\n".join(text)


def test_every_field_is_read_outside_config():
    import inspect

    from lealla_tf.models import encoders
    code = _sources()
    # model.* reaches the encoder as keyword arguments (LeallaEncoder.from_model_config).
    encoder_args = set(inspect.signature(encoders.LeallaEncoder.__init__).parameters)
    unread = []
    for section in dataclasses.fields(config.ExperimentConfig):
        for field in dataclasses.fields(section.type if isinstance(section.type, type)
                                        else getattr(config, section.type)):
            # Read as cfg.<section>.<field>, <section>_cfg.<field>, or through a section
            # object (e.g. data_cfg.sampling_alpha, train_cfg.learning_rate).
            if section.name == "model" and field.name in encoder_args:
                continue
            if not re.search(rf"\.{field.name}\b", code):
                unread.append(f"{section.name}.{field.name}")
    assert not unread, f"config fields never read: {unread}"


def test_removed_fields_are_rejected():
    for key in ("data.shuffle_buffer=1", "teacher.batch_size=8"):
        try:
            config.from_dict({}, [key])
        except config.ConfigError as e:
            assert "unknown config key" in str(e)
        else:
            raise AssertionError(f"{key} accepted")


def test_tpu_recipes_share_one_base():
    small, base, large = (config.load(f"distill_lealla_{s}_labse_tpu")
                          for s in ("small", "base", "large"))
    shared = config.load("distill_labse_tpu_base")
    for cfg, hidden in ((small, 128), (base, 192), (large, 256)):
        assert cfg.model.hidden_size == hidden and cfg.model.num_layers == 24
        for section in ("vocab", "preprocess", "data", "teacher", "loss", "train",
                        "distribute"):
            assert getattr(cfg, section) == getattr(shared, section), section
    assert shared.teacher.dim == 768 and shared.distribute.strategy == "tpu"
