"""Helpers shared by the tests: the synthetic corpus (:mod:`.hermetic`), stand-ins for the
released SavedModels (:mod:`.standins`), the Beam tests' teacher (:mod:`.beam_teacher`), the
scripts that run a training or pre-training job in a fresh process, and the build / save /
restore / export-parity checks (:mod:`.harness`)."""
