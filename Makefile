# The README's two commands: `make run` (install + the cpu run of every stage) and `make test`
# (install + the whole test suite). Both install into .venv; torch comes first, with a range
# that the CPU wheel torch==2.13.0 satisfies, so pip never pulls a multi-GB CUDA build.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  := torch>=2.4,<2.14
# pip repeats a "Location '...' is ignored: it is neither a file nor a directory" warning for every package when
# the machine's pip configuration names index folders that do not exist; only those lines are dropped.
QUIET_PIP := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; test $${PIPESTATUS[0]} -eq 0

.PHONY: install run test check docs-check docs docs-serve lab browser
install: $(VENV)/.installed
$(VENV)/.installed: settings.ini setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q '$(TORCH)' $(QUIET_PIP)
	$(BIN)/pip install -q -e '.[dev]' $(QUIET_PIP)
	touch $@

run: install
	$(BIN)/longctx run --profile cpu --run-dir runs/cpu

# `longctx check` for every shipped profile: each stage's parameters resolved as a run would, validated, nothing run.
check: install
	@for p in longctx_nb/profiles/*.yaml; do $(BIN)/longctx check --profile $$p || exit 1; done

test: install browser
	$(BIN)/nbdev_test --n_workers 2
	$(BIN)/python -m pytest -q tests

# The docs site (tools/docs.py): Quarto (nbdev's flow) where it is installed, else Sphinx + MyST-NB offline.
# Stage pages are the notebooks as executed in a run (runs/gpu, runs/smol or runs/cpu: `make run` first).
docs: install
	$(BIN)/python tools/docs.py --out _docs

docs-serve: docs
	@if command -v quarto >/dev/null; then quarto preview _proc --port 3000 --no-browser; \
	else echo "serving _docs on http://127.0.0.1:3000"; $(BIN)/python -m http.server 3000 --bind 127.0.0.1 -d _docs; fi

# JupyterLab on the project's kernel (the .venv's python3, which imports this checkout's longctx_nb).
lab: install
	$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 --notebook-dir=nbs $(if $(filter 0,$(shell id -u)),--allow-root)

# The browser test drives Debian's chromium through playwright's Python package (no browser download).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "chromium could not be installed: tests/test_docs.py will fail"
