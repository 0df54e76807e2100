# The README's two commands: `make run` (install + the cpu run of every stage) and `make test`
# (install + the whole test suite). Both install into .venv; torch comes first, with a range
# that the CPU wheel torch==2.13.0 satisfies, so pip never pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  := torch>=2.4,<2.14

.PHONY: install run test docs-check
install: $(VENV)/.installed
$(VENV)/.installed: settings.ini setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q '$(TORCH)'
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

run: install
	$(BIN)/longctx run --profile cpu --run-dir runs/cpu

test: install
	$(BIN)/nbdev_test --n_workers 2
	$(BIN)/python -m pytest -q tests
