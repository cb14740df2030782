# The two commands: `make demo` runs the main job, `make test` runs the tests.
# Each creates the virtual environment it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
# Apache Beam pins protobuf < 7, which the main environment cannot take: its tests run in a
# venv of their own.
BEAM_VENV ?= .venv-beam
BEAM_PY := $(BEAM_VENV)/bin/python
# MediaPipe pins absl-py ~= 2.3, which the TensorFlow stack refuses: MediaPipe's TextEmbedder
# runs in a venv of its own (no TensorFlow); the `mediapipe:` embedder and its tests find it
# through LEALLA_MEDIAPIPE_PYTHON.
MEDIAPIPE_VENV ?= .venv-mediapipe
MEDIAPIPE_VERSION := 1.2.2
LEALLA_MEDIAPIPE_PYTHON ?= $(abspath $(MEDIAPIPE_VENV))/bin/python
export LEALLA_MEDIAPIPE_PYTHON
# Data root: LEALLA_DATA_DIR if set, else ../shared/data when it exists.
LEALLA_DATA_DIR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)
export LEALLA_DATA_DIR
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv beam-venv mediapipe-venv interop test test-hermetic demo bench distill-quality clean

venv: $(VENV)/.installed

beam-venv: $(BEAM_VENV)/.installed

mediapipe-venv: $(MEDIAPIPE_VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

$(BEAM_VENV)/.installed: pyproject.toml
	test -x $(BEAM_PY) || $(PYTHON) -m venv $(BEAM_VENV)
	$(BEAM_PY) -m pip install -q --upgrade pip
	$(BEAM_PY) -m pip install -q -e ".[beam-test]"
	touch $@

$(MEDIAPIPE_VENV)/.installed: Makefile
	test -x $(MEDIAPIPE_VENV)/bin/python || $(PYTHON) -m venv $(MEDIAPIPE_VENV)
	$(MEDIAPIPE_VENV)/bin/python -m pip install -q --upgrade pip
	$(MEDIAPIPE_VENV)/bin/python -m pip install -q mediapipe==$(MEDIAPIPE_VERSION)
	touch $@

test: venv beam-venv mediapipe-venv
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q --durations=15 -m "not beam" tests
	$(BEAM_PY) -m pytest -q -m beam tests/test_teacher_embeddings_beam.py

# The tests that need no data root (a synthetic corpus made in tests/): run anywhere.
test-hermetic: venv
	$(PY) -m pytest -q -m "not data" tests

demo: venv
	$(VENV)/bin/lealla demo --output results/demo

# The demo's student exported for sentence-transformers, ONNX Runtime and MediaPipe, each
# evaluated on Tatoeba through the library that loads it (after `make demo`; about 2 minutes).
interop: venv mediapipe-venv
	test -f results/demo/run/config.yaml || $(MAKE) demo
	$(PY) -m benchmarks.interop_parity --run results/demo/run --output results/interop

# The quick benchmarks (minutes each); every script prints its own table.
bench: venv
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) -m benchmarks.encoder_speed
	$(PY) -m benchmarks.inference_speed
	$(PY) -m benchmarks.train_speed
	$(PY) -m benchmarks.retrieval_scale
	$(PY) -m benchmarks.teacher_speed

# 1-1.5 hours on 2 CPU cores: the demo recipe for longer, the LEALLA-small shape grown from
# its student, all 112 Tatoeba languages.
distill-quality: venv
	$(PY) -m benchmarks.distill_quality --output results/distill_quality

clean:
	rm -rf $(VENV) $(BEAM_VENV) $(MEDIAPIPE_VENV) results build *.egg-info
