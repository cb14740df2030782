"""``lealla model``: inspect model shapes."""

from __future__ import annotations

from lealla_tf.cli import common


def add_commands(sub) -> None:
    p = sub.add_parser("model", help="inspect model shapes")
    msub = p.add_subparsers(dest="model_cmd", required=True)
    s = msub.add_parser("summary", help="print the encoder shape and exact parameter count")
    common.config_args(s)
    s.set_defaults(func=_model_summary)


def _model_summary(args) -> int:
    cfg = common.load_config(args)  # config errors first, before the model code loads
    from lealla_tf.models import encoders
    print(encoders.summary_text(cfg.model))
    return 0
