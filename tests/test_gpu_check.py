"""bench/gpu_check.py --dry-run on CPU: every step in the report with figures or a stated reason, and the table."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("wheels", "profile", "distributed", "packing", "context_parallel")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    "The dry run's report folder (one run for the module: about 1-2 minutes on 2 cores)."
    out = tmp_path_factory.mktemp("gpu_check")
    r = subprocess.run([sys.executable, "bench/gpu_check.py", "--dry-run", "--profile", "cpu", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


def test_every_step_has_figures_or_a_reason(report):
    "Each step is ok with figures, or skipped with its reason; none failed."
    rep = json.loads((report / "report.json").read_text())
    assert rep["dry_run"] and set(rep["steps"]) == set(STEPS)
    for name, s in rep["steps"].items():
        assert s["status"] in ("ok", "skipped"), (name, s)
        assert s["figures"] if s["status"] == "ok" else s["reason"], (name, s)
        assert Path(s["raw"]).exists()
    assert "needs ≥2 GPUs" in rep["steps"]["context_parallel"]["reason"]
    assert "skipped" in rep["steps"]["profile"]["figures"]["run"]  # a dry run only checks the profile


def test_bench_distributed_figures(report):
    "The longest sequence and MFU rows come from bench_distributed's JSON, next to ALST's figures."
    rep = json.loads((report / "report.json").read_text())
    f = rep["steps"]["distributed"]["figures"]
    assert f["longest"]["seq_len"] > 0 and f["longest"]["tokens_per_s"] > 0
    assert f["mfu"] and all(m["mfu"] > 0 for m in f["mfu"])
    assert json.loads((report / "bench_distributed.json").read_text()) == f
    rows = [r for r in rep["rows"] if r["check"].startswith(("longest sequence", "MFU"))]
    assert len(rows) == 1 + len(f["mfu"]) and all(r["ratio"] > 0 for r in rows)


def test_packing_ratio_per_cpu_backend(report):
    "Every backend that trains on CPU has a packing / naive ratio above 0; the others say why they were skipped."
    backends = json.loads((report / "packing.json").read_text())["backends"]
    assert backends["sdpa"]["ratio"] > 0
    for name, b in backends.items():
        assert b.get("ratio", 0) > 0 or b.get("skipped"), (name, b)


def test_report_md_table(report):
    "report.md holds the table: check, measured, paper's figure, ratio, status, with the papers' figures."
    md = (report / "report.md").read_text()
    assert "| check | measured | paper's figure | ratio | status |" in md
    assert "500,000 tokens (ALST" in md and "45% (ALST)" in md and "2.9x (LongAlign)" in md
    assert "Dry run on CPU" in md
