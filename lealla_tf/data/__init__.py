"""Data: the public data sets, the training pipeline and pre-training inputs.

See docs/data.md, and docs/training.md, "The job" (input).
"""
