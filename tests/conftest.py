"""Shared fixtures: the checkout, the `longctx` command of this environment, and a finished cpu run."""
import contextlib, ctypes, json, os, shutil, signal, subprocess, sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
LONGCTX = [sys.executable, "-m", "longctx_nb.runner"]  # as `longctx`, and it honours PYTHONPATH
LOWPRIO = ROOT / "tests" / "lowprio"  # its sitecustomize.py puts a process's scheduling group at nice 19


def longctx(*args, check=True, **kw):
    "Run the `longctx` command; return the CompletedProcess (stdout and stderr captured as text)."
    r = subprocess.run([*LONGCTX, *args], capture_output=True, text=True, cwd=ROOT, **kw)
    if check and r.returncode:
        raise AssertionError(f"longctx {' '.join(args)} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return r


# The cpu run as the tests run it: the cpu profile's code paths at smaller sizes. SmolLM2's needle grid is 3 depths x
# 3 lengths inside its 8K window; the profile's own grid (`make run`: 5 depths x 4 lengths, the last past 8K, as is
# and with YaRN x2) is most of stage 07's time, and tests/test_eval.py checks that grid. Code paths past the window
# (dynamic NTK's prefix reuse) are tested on SmolLM2 directly in tests/test_infer.py. Stage 03 scores
# 3 validation documents per cell and stage 08 asks 4 cases. Stage 03 keeps the profile's training tokens: with half
# of them one extension's last logged loss was 7.09, above tests/test_extend.py's bound of 7. Stage 09's one needle
# task past the grid (the profile: 8,448 tokens, past SmolLM2's window; four 8K prefills on this run's one thread)
# stands at 3,072 tokens: the same task_lengths path, a fraction of the time; `make smoke` runs RULER past the window.
SMOLLM2_VARIANTS = ("smollm2", "smollm2-yarn2")
RULER_TASK_LENGTHS = {"niah_single_2": [1024, 2048, 3072]}
CPU_TEST = [*[f"07.models.{m}.{k}" for m in SMOLLM2_VARIANTS
              for k in ("lengths=[512, 1024, 2048]", "depths=[0, 50, 100]")],
            "03.eval_docs=3", "08.n_fixture=4", f"09.task_lengths={json.dumps(RULER_TASK_LENGTHS)}"]
CPU_ARGS = ["--profile", "cpu", *[a for o in CPU_TEST for a in ("-p", o)]]


def _stop_with_parent():
    "In the child, before exec: SIGTERM when the tests' process dies (a killed pytest leaves no run going)."
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG; the runner stops its stage on SIGTERM


class Background:
    "A `longctx run` started now in its own process group, output to `<run_dir>.log`; `result()` waits for it."
    def __init__(self, run_dir: Path, *args, low_priority: bool = False, env: dict | None = None):
        self.run_dir, self.log = Path(run_dir), Path(run_dir).with_suffix(".log")
        self.run_dir.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ if env is None else env)
        if low_priority:  # nice 19; stage kernels and workers start sessions of their own: LOWPRIO lowers each one's
            env["PYTHONPATH"] = os.pathsep.join([str(LOWPRIO), *filter(None, [env.get("PYTHONPATH")])])
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen(["nice", "-n", str(19 if low_priority else 0), *LONGCTX, "run", "--run-dir",
                                          str(run_dir), *args],
                                         stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                         start_new_session=True,  # stop() ends its process group
                                         preexec_fn=_stop_with_parent)

    def result(self, timeout: float = 3600) -> Path:
        "The run folder once the run has exited 0 (else its log's tail)."
        assert self.proc.wait(timeout=timeout) == 0, self.log.read_text()[-5000:]
        return self.run_dir

    def stop(self):
        "Stop the run if it is still going: SIGTERM (the runner stops its stage's kernel), then SIGKILL its group."
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired): self.proc.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError): os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


# The cpu run is about a third of `make test` and keeps both cores busy, while the other tests leave about one of the
# two idle (a single process tokenizing, kernels starting, Slurm's scheduling waits). So it starts in the background as
# soon as the tests are collected, on one thread and at the lowest priority (nice 19, its sessions' groups too): it
# takes the core the others leave without slowing them (on two threads, one would wait for the other at every parallel
# region, and a nice-19 thread on a busy core hardly runs). The tests that read it go last, so they rarely wait for it.
READS_CPU_RUN = ("cpu_run", "built_site")  # fixtures that need the cpu run (built_site: test_docs.py)
CPU_RUN = pytest.StashKey[Background]()  # the run started at collection


@pytest.hookimpl(trylast=True)  # after pytest has ordered them by fixture
def pytest_collection_modifyitems(session, config, items):
    "Tests that read the cpu run go last, and the run starts now, in the background, if any of them was collected."
    reads = [i for i in items if set(READS_CPU_RUN) & set(getattr(i, "fixturenames", ()))]
    if not reads or config.option.collectonly: return
    later = set(map(id, reads))
    items[:] = [i for i in items if id(i) not in later] + reads
    config.stash[CPU_RUN] = Background(config._tmp_path_factory.mktemp("runs") / "cpu", *CPU_ARGS, low_priority=True,
                                       env={**os.environ, "OMP_NUM_THREADS": "1"})


def pytest_unconfigure(config):
    if CPU_RUN in config.stash: config.stash[CPU_RUN].stop()


@pytest.fixture(scope="session")
def cpu_run(request, tmp_path_factory):
    "One run of the cpu profile at test sizes (all stages), shared by the tests that read its outputs."
    bg = request.config.stash.get(CPU_RUN, None)
    if bg is None:  # collected through another fixture only: run it here
        bg = request.config.stash[CPU_RUN] = Background(tmp_path_factory.mktemp("runs") / "cpu", *CPU_ARGS)
    return bg.result()


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
