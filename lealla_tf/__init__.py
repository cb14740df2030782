"""Build, train, distil, export and evaluate LEALLA-style sentence encoders with TensorFlow.

Subpackages by concept, each importing only from its own layer or those below: see
docs/architecture.md, "Layers".
"""
