"""Shared fixtures: the checkout, the `longctx` command of this environment, and a finished cpu run."""
import json, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LONGCTX = [sys.executable, "-m", "longctx_nb.runner"]  # as `longctx`, and it honours PYTHONPATH


def longctx(*args, check=True, **kw):
    "Run the `longctx` command; return the CompletedProcess (stdout and stderr captured as text)."
    r = subprocess.run([*LONGCTX, *args], capture_output=True, text=True, cwd=ROOT, **kw)
    if check and r.returncode:
        raise AssertionError(f"longctx {' '.join(args)} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return r


@pytest.fixture(scope="session")
def cpu_run(tmp_path_factory):
    "One run of the cpu profile (all stages), shared by the tests that read its outputs."
    run_dir = tmp_path_factory.mktemp("runs") / "cpu"
    longctx("run", "--profile", "cpu", "--run-dir", str(run_dir))
    return run_dir


def manifest(run_dir):
    return json.loads((Path(run_dir) / "manifest.json").read_text())
