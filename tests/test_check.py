"""`longctx check` on the shipped profiles and on broken overrides, stage 06's launch-only job (no training), and
the Slurm script for the whole suite: all fast, nothing trains."""
import json, subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, longctx

PROFILES = sorted((ROOT / "longctx_nb" / "profiles").glob("*.yaml"))
SUITE = ROOT / "slurm" / "longctx_suite.sbatch"


@pytest.mark.parametrize("profile", [p.stem for p in PROFILES])
def test_shipped_profiles_check(profile, tmp_path):
    r = longctx("check", "--profile", profile, "--run-dir", str(tmp_path / "r"))
    assert "06_distributed" in r.stdout and "GiB per GPU" in r.stdout and f"{profile}: ok" in r.stdout


def test_bad_sp_size_names_stage_and_key(tmp_path):
    r = longctx("check", "--profile", "gpu", "--run-dir", str(tmp_path / "r"),
                "-p", "06.phases=[{seq_len: 131072, sp_size: 3, steps: 1}]", check=False)
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors and all("stage 06_distributed" in e for e in errors)
    assert any("sp_size=3" in e and "32 attention heads" in e for e in errors)
    assert any("world size 32" in e for e in errors)


def test_model_names_and_reads_are_checked(tmp_path):
    r = longctx("check", "--profile", "cpu", "--run-dir", str(tmp_path / "r"), "-p", "05.model=smollm2-135m",
                "-p", "08.models={x: {path: models/nowhere/final}}", "-p", "06.strategy=global",
                "-p", "02.strategies=[per_source]", check=False)
    assert r.returncode == 1
    assert "stage 05_packing: model: 'smollm2-135m': not a folder" in r.stderr
    assert "stage 08_longbench_chat: models.x.path: reads models/nowhere/final" in r.stderr
    assert "stage 06_distributed: strategy: reads upsampled/global" in r.stderr


def test_run_checks_first_and_does_no_work(tmp_path):
    rd = tmp_path / "r"
    r = longctx("run", "--profile", "gpu", "--stages", "06", "--run-dir", str(rd),
                "-p", "06.phases=[{seq_len: 4096, sp_size: 3, steps: 1}]", check=False)
    assert r.returncode == 1 and "phases[0].sp_size" in r.stderr and not (rd / "manifest.json").exists()


def _launch_only(rd, *params):
    longctx("run", "--profile", "gpu", "--stages", "06", "--run-dir", str(rd), "-p", "06.launch_only=true", *params)
    return json.loads((rd / "06_distributed" / "launch" / "job.json").read_text())


def test_launch_only_job_carries_the_profile_settings(tmp_path):
    "The gpu profile as is, in a folder where nothing has run: the job's training settings are the profile's."
    rd = tmp_path / "new"
    job = _launch_only(rd)
    prof = yaml.safe_load((ROOT / "longctx_nb" / "profiles" / "gpu.yaml").read_text())["stages"]["06"]
    assert {k: job["train"][k] for k in prof["train"]} == prof["train"]
    assert job["phases"] == prof["phases"] and job["train"]["loss_chunk"] == prof["loss_chunk"]
    assert job["model"]["path"] == prof["model"] and job["data"]["path"] == str(rd / "upsampled" / "per_source")
    assert not (rd / "upsampled").exists() and not (rd / "models").exists()   # nothing trained, nothing read
    launch = rd / "06_distributed" / "launch"
    wanted = {"job.json", "ds_config.json", "accelerate.yaml", "commands.sh", "job.sbatch"}
    assert {p.name for p in launch.iterdir()} >= wanted
    assert f"--nodes={prof['nnodes']}" in (launch / "job.sbatch").read_text()


def test_launch_only_with_a_registry_model(tmp_path):
    """SmolLM2 has 9 attention heads (3 key/value): the gpu profile's SP sizes 4 and 16 cannot split them, and the run
    says so before any work; with phases it can run, the job loads the registry's local copy."""
    r = longctx("run", "--profile", "gpu", "--stages", "06", "--run-dir", str(tmp_path / "a"),
                "-p", "06.launch_only=true", "-p", "06.model=smollm2-135m-instruct", check=False)
    assert r.returncode == 1 and "sp_size=4: the model's 9 attention heads (3 key/value) are not divisible" in r.stderr
    prof = yaml.safe_load((ROOT / "longctx_nb" / "profiles" / "gpu.yaml").read_text())["stages"]["06"]
    job = _launch_only(tmp_path / "b", "-p", "06.model=smollm2-135m-instruct",
                       "-p", "06.phases=[{seq_len: 32768, sp_size: 1, steps: 500}]")
    assert (Path(job["model"]["path"]) / "config.json").exists()
    assert {k: job["train"][k] for k in prof["train"]} == prof["train"]


def test_suite_slurm_script_is_checked_against_the_allocation(tmp_path):
    assert subprocess.run(["bash", "-n", str(SUITE)]).returncode == 0
    assert "longctx check" in SUITE.read_text() and "-m longctx_nb.distributed" in SUITE.read_text()
    prof = yaml.safe_load((ROOT / "longctx_nb" / "profiles" / "gpu.yaml").read_text())["stages"]["06"]
    ok = longctx("check", "--profile", "gpu", "--run-dir", str(tmp_path / "r"), "--nodes", str(prof["nnodes"]),
                 "--gpus-per-node", str(prof["nproc"]))
    assert ok.returncode == 0
    bad = longctx("check", "--profile", "gpu", "--run-dir", str(tmp_path / "r"), "--nodes", "2", "--gpus-per-node",
                  str(prof["nproc"]), check=False)
    assert bad.returncode == 1 and "stage 06_distributed: nnodes, nproc" in bad.stderr
