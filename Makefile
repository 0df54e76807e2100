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

.PHONY: install run test test-slurm check smoke docs-check docs docs-serve lab browser gpu-check gpu-wheels
install: $(VENV)/.installed
# uv installs what pip would, in a fraction of the time: pip spends most of its minute on index look-ups, one package
# at a time (a 2-core machine here: uv 14 s against pip 63 s for the same requirements). uv reads none of pip's
# configuration, so tools/pip_to_uv.py passes pip's indexes, wheel folders and constraints on, with pip's choice of
# the best version across indexes. Where uv can't be had or fails (or LONGCTX_PIP=1), pip installs as before.
# Neither byte-compiles: compileall then compiles the environment on every core (pip does it on one). The .pyc files
# are needed: where PYTHONDONTWRITEBYTECODE=1 is set, each process would otherwise compile every import anew. Like
# pip, it ignores files that do not compile (torch ships one for Python 3.12's syntax).
UV := $(BIN)/uv pip install -q --python $(BIN)/python $$($(BIN)/python tools/pip_to_uv.py $(BIN)/pip)
$(VENV)/.installed: settings.ini setup.py
	$(PYTHON) -m venv $(VENV)
	if [ -z "$$LONGCTX_PIP" ] && { $(BIN)/pip install -q uv $(QUIET_PIP); } && $(UV) '$(TORCH)' && $(UV) -e '.[dev]'; \
	then echo "installed with uv"; \
	else { $(BIN)/pip install -q --no-compile '$(TORCH)' $(QUIET_PIP); } && \
	     { $(BIN)/pip install -q --no-compile -e '.[dev]' $(QUIET_PIP); }; fi
	$(BIN)/python -m compileall -qq -j 0 $(VENV)/lib > /dev/null || true
	touch $@

run: install
	$(BIN)/longctx run --profile cpu --run-dir runs/cpu

# `longctx check` for every shipped profile: each stage's parameters resolved as a run would, validated, nothing run.
check: install
	@for p in longctx_nb/profiles/*.yaml; do $(BIN)/longctx check --profile $$p || exit 1; done

# The smol profile (SmolLM2, the GPU profile's code paths) at CPU sizes, stages 01-09 (about 13 minutes on 2 cores
# with native bf16, three times that without); `make test` skips it.
smoke: install
	LONGCTX_SMOKE=1 $(BIN)/python -m pytest -q tests/test_smol_smoke.py

# The suite's sbatch scripts under a real one-host Slurm (apt installs Debian's slurmctld/slurmd/munge as root): a job
# stopped mid-training, requeued and equal to a local run, stages 01-02 as a two-task array and its merge, and a
# served model (6 to 9 minutes on 2 cores); `make test` runs it too (LONGCTX_SLURM=0 skips it).
test-slurm: install
	$(BIN)/python -m pytest -q tests/test_slurm.py

test: install browser
	$(BIN)/nbdev_test --n_workers 2
	$(BIN)/python -m pytest -q --durations=15 tests

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

# On a GPU machine: the smol profile, bench_distributed (longest sequence, MFU), packing per attention backend and
# the context-parallel step, in one report (runs/gpu_check/report.md). `make gpu-check GPU_CHECK="--dry-run
# --profile cpu"` runs it on CPU. It uses the machine's python (torch with CUDA already there), not .venv's CPU torch.
GPU_PYTHON ?= python3
GPU_CHECK  ?=
gpu-check:
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PYTHON) bench/gpu_check.py $(GPU_CHECK)

# Wheels for a GPU machine without network, into wheels/ (gitignored) so the folder travels with the tree;
# gpu_check installs them there with `pip install --no-index --find-links wheels`. DeepSpeed is an sdist on PyPI:
# built here into a pure-Python wheel (no CUDA op compiled; ZeRO needs none, the rest JIT-compile). Only the
# dependencies a CUDA torch + transformers machine lacks are fetched (no torch, triton, numpy). They are wheels for
# this python: GPU_PIP="--python-version 3.12 --platform manylinux_2_28_x86_64" fetches another's; GPU_CUDA picks
# the CuTe DSL libraries flash-attn-4 runs on (12 or 13).
GPU_CUDA ?= 12
GPU_PIP  ?=
GPU_FA4  ?= 1
GPU_WHEELS := liger-kernel hjson msgpack ninja py-cpuinfo einops nvidia-ml-py
# flash-attn-4 and its CuTe DSL: about 100 MB, most of it nvidia-cutlass-dsl-libs; GPU_FA4=0 leaves them out
# (wheels/ is then about 10 MB)
GPU_WHEELS_FA4 := 'flash-attn-4>=4.0.0b1' quack-kernels 'apache-tvm-ffi<0.2' torch-c-dlpack-ext nvidia-cutlass-dsl \
	nvidia-cutlass-dsl-libs-base nvidia-cutlass-dsl-libs-cu$(GPU_CUDA)
gpu-wheels: install
	mkdir -p wheels
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w wheels deepspeed $(QUIET_PIP)
	$(BIN)/pip download -q --no-deps --only-binary=:all: $(GPU_PIP) -d wheels $(GPU_WHEELS) \
		$(if $(filter 1,$(GPU_FA4)),$(GPU_WHEELS_FA4)) $(QUIET_PIP)
	$(BIN)/pip download -q --only-binary=:all: $(GPU_PIP) -d wheels pydantic $(QUIET_PIP)
	@du -sh wheels
