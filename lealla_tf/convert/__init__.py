"""Released models into run directories: LaBSE/LEALLA imports and WordPiece vocabulary pruning.

See docs/released_models.md.
"""
