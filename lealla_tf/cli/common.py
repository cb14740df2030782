"""Arguments and set-up shared by several commands: the config flags, loading the config,
logging for the training commands."""

from __future__ import annotations

import argparse


def config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    """Adds ``--config`` and ``--set KEY=VALUE`` (repeatable)."""
    p.add_argument("--config", required=required, help="YAML config file, or the name of a shipped one "
                        "(lealla_small, demo, ...; see lealla_tf/configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a config value, e.g. train.steps=100")


def load_config(args):
    """The config of ``--config`` with the ``--set`` overrides (a ConfigError when bad)."""
    from lealla_tf import config
    return config.load(args.config, args.overrides)


def log_progress() -> None:
    """INFO logging, as the training commands report their steps."""
    import logging
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
