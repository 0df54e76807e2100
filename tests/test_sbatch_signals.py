"""The sbatch script's signal path, run by bash as Slurm runs it but with no scheduler: a stop signal (TERM, as a
preemption sends; USR1, the time-limit warning) while a stage runs stops that stage cleanly, asks Slurm to requeue the
job, and the next attempt skips the finished stage and finishes the stopped one. `scontrol` is a stand-in that records
its arguments; tests/test_slurm.py runs the same script under a real Slurm (`make test-slurm`)."""
import contextlib, os, signal, subprocess, sys, time
from pathlib import Path

import pytest

from conftest import ROOT, manifest, stage_nb

SUITE = ROOT / "slurm" / "longctx_suite.sbatch"


def _kill_naming(text: str):
    "SIGKILL every process whose command line names `text` (what a failed test leaves: the step and its kernel)."
    for d in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if text in d.joinpath("cmdline").read_bytes().decode(errors="replace"): os.kill(int(d.name), signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["TERM", "USR1"])
def test_a_stop_signal_stops_the_stage_requeues_and_the_next_attempt_resumes(tmp_path, sig):
    nbs, go, rd, prof, bin_ = (tmp_path / n for n in ("nbs", "go", "run", "p.yaml", "bin"))
    nbs.mkdir()
    bin_.mkdir()
    prof.write_text("{}\n")
    stage_nb(nbs / "01_done.ipynb", "from pathlib import Path\nPath(run_dir, 'done').write_text('1')")
    stage_nb(nbs / "02_wait.ipynb", f"import time, pathlib\npathlib.Path(run_dir, 'started').write_text('1')\n"
                                     f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.1)")
    calls = tmp_path / "scontrol.calls"
    (bin_ / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    (bin_ / "scontrol").chmod(0o755)
    env = {**os.environ, "LONGCTX_NBS": str(nbs), "PATH": f"{bin_}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
           "SLURM_RESTART_COUNT": "0", "LONGCTX": str(Path(sys.executable).parent / "longctx")}
    cmd = ["bash", str(SUITE), str(prof), str(rd)]
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while not (rd / "started").exists() and time.time() - t0 < 120 and p.poll() is None: time.sleep(0.1)
        p.send_signal(sig)  # to the batch script alone, as `scancel --signal=... --batch` and a preemption's TERM do
        out, err = p.communicate(timeout=120)
    finally:  # a script that ignored the signal leaves its step waiting: end it, not the test run
        _kill_naming(str(rd))
    assert p.returncode == 0, out + err  # the script ends the attempt itself: Slurm requeues, nothing failed
    assert f"longctx_suite: {sig.name[3:]} at" in out and "requeueing job 4242" in out, out + err
    assert calls.read_text().split("\n")[-2] == "requeue 4242"
    assert "longctx run: interrupted (SIGTERM)" in err, err[-2000:]  # the script stops its step with TERM
    st = manifest(rd)["stages"]
    assert (st["01_done"]["status"], st["02_wait"]["status"]) == ("completed", "interrupted")
    assert "done at" not in out
    go.write_text("go")  # attempt 2 (Slurm's requeue): the finished stage is skipped, the stopped one finishes
    r = subprocess.run(cmd, cwd=ROOT, env={**env, "SLURM_RESTART_COUNT": "1"}, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "attempt 2 on" in r.stdout, r.stdout + r.stderr
    assert "longctx_suite: done at" in r.stdout, r.stdout + r.stderr
    assert "01_done: completed earlier with the same parameters, skipped" in r.stdout + r.stderr
    assert manifest(rd)["stages"]["02_wait"]["status"] == "completed"
    assert calls.read_text().count("requeue") == 1  # a finished attempt asks for nothing
