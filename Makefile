# The two commands: `make demo` runs the main job, `make test` runs the tests.
# Each creates the virtual environment it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
# Data root: LEALLA_DATA_DIR if set, else ../shared/data when it exists.
LEALLA_DATA_DIR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)
export LEALLA_DATA_DIR
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv test test-hermetic demo bench distill-quality clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

test: venv
	$(PY) -m pytest -q tests

# The tests that need no data root (a synthetic corpus made in tests/): run anywhere.
test-hermetic: venv
	$(PY) -m pytest -q -m "not data" tests

demo: venv
	$(VENV)/bin/lealla demo --output results/demo

# The quick benchmarks (minutes each); every script prints its own table.
bench: venv
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/encoder_speed.py
	$(PY) benchmarks/inference_speed.py
	$(PY) benchmarks/train_speed.py
	$(PY) benchmarks/retrieval_scale.py
	$(PY) benchmarks/teacher_speed.py

# About an hour on 2 CPU cores: the demo recipe for longer, on all 112 Tatoeba languages.
distill-quality: venv
	$(PY) benchmarks/distill_quality.py --output results/distill_quality

clean:
	rm -rf $(VENV) results build *.egg-info
