"""Notebooks are the source of truth: exporting them must reproduce longctx_nb/ byte for byte."""
import filecmp, shutil, subprocess, sys
from pathlib import Path

from conftest import ROOT


def test_export_has_not_drifted(tmp_path):
    for p in ("nbs", "longctx_nb"): shutil.copytree(ROOT / p, tmp_path / p, ignore=shutil.ignore_patterns("__pycache__", "runs"))
    for p in ("settings.ini", "setup.py", "pyproject.toml"): shutil.copy(ROOT / p, tmp_path / p)
    exe = Path(sys.executable).parent / "nbdev_export"
    subprocess.run([str(exe)], cwd=tmp_path, check=True, capture_output=True)
    before = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "longctx_nb").rglob("*.py"))
    after = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "longctx_nb").rglob("*.py"))
    assert before == after, f"nbdev_export would add or remove modules: {set(before) ^ set(after)}"
    drift = [p for p in before if not filecmp.cmp(ROOT / p, tmp_path / p, shallow=False)]
    assert not drift, f"{drift} differ from what nbdev_export writes: edit the notebooks, then run nbdev_export"
