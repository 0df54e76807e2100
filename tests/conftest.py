"""Shared fixtures: the checkout, the `longctx` command of this environment, and a finished cpu run."""
import json, shutil, subprocess, sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
LONGCTX = [sys.executable, "-m", "longctx_nb.runner"]  # as `longctx`, and it honours PYTHONPATH


def longctx(*args, check=True, **kw):
    "Run the `longctx` command; return the CompletedProcess (stdout and stderr captured as text)."
    r = subprocess.run([*LONGCTX, *args], capture_output=True, text=True, cwd=ROOT, **kw)
    if check and r.returncode:
        raise AssertionError(f"longctx {' '.join(args)} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return r


# The cpu run as the tests run it: the cpu profile's code paths at smaller sizes. SmolLM2's needle grid is 3 depths x
# 3 lengths inside its 8K window; the profile's own grid (`make run`: 5 depths x 4 lengths, the last past 8K, for three
# RoPE variants) took stage 07 to 1,647 s on a 2-core AVX2 machine, and tests/test_eval.py checks that grid. Code paths
# past the window (dynamic NTK's prefix reuse) are tested on SmolLM2 directly in tests/test_infer.py. Stage 03 scores
# 3 validation documents per cell and stage 08 asks 4 cases. Stage 03 keeps the profile's training tokens: with half
# of them one extension's last logged loss was 7.09, above tests/test_extend.py's bound of 7.
SMOLLM2_VARIANTS = ("smollm2", "smollm2-yarn2", "smollm2-dynamic2")
CPU_TEST = [*[f"07.models.{m}.{k}" for m in SMOLLM2_VARIANTS
              for k in ("lengths=[512, 1024, 2048]", "depths=[0, 50, 100]")],
            "03.eval_docs=3", "08.n_fixture=4"]
CPU_ARGS = ["--profile", "cpu", *[a for o in CPU_TEST for a in ("-p", o)]]


@pytest.fixture(scope="session")
def cpu_run(tmp_path_factory):
    "One run of the cpu profile at test sizes (all stages), shared by the tests that read its outputs."
    run_dir = tmp_path_factory.mktemp("runs") / "cpu"
    longctx("run", *CPU_ARGS, "--run-dir", str(run_dir))
    return run_dir


STAGES_01_02 = {"data.json", "manifest.json", "corpus", "corpus_split", "tokenizer", "tokens", "upsampled",
                "01_mixture", "02_upsample"}  # what stages 01-02 leave in a run folder


def copy_stages_01_02(run_dir, dest):
    "A copy of a run folder's stages 01-02 (outputs and manifest), for a test that reruns or interrupts later ones."
    run_dir = Path(run_dir)
    shutil.copytree(run_dir, dest, ignore=lambda d, names: [n for n in names
                                                           if Path(d) == run_dir and n not in STAGES_01_02])
    return Path(dest)


def stage_nb(path, body, params="run_dir = 'x'\nn = 1"):
    "A tiny stage notebook for tests that point the runner at their own stages (LONGCTX_NBS): parameters, then `body`."
    kernel = {"name": "python3", "display_name": "python3", "language": "python"}
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": kernel})
    nb.cells = [nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}), nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


def manifest(run_dir):
    return json.loads((Path(run_dir) / "manifest.json").read_text())
