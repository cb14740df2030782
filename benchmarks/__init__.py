"""Speed and quality benchmarks; each module prints its own table.

Run them from the repository root as modules, e.g. ``python -m benchmarks.encoder_speed``.
"""
