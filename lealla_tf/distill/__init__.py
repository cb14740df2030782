"""Distillation's teacher side: stored teacher embeddings, the online teacher, student init.

The teacher-embedding store (:mod:`~lealla_tf.distill.store`) and its Beam job, the teacher
inside the training step, and a student's start from its teacher's vocabulary and table.

See docs/data.md, "Teacher embeddings", and docs/training.md, "Teachers: precomputed or
online".
"""
