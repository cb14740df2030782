"""End-to-end recipes built on the whole library: the demo.

See docs/training.md, "The demo".
"""
