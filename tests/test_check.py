"""`longctx check` on the shipped profiles and on broken overrides, stage 06's launch-only job (no training), and
the Slurm script for the whole suite: all fast, nothing trains."""
import json, os, subprocess, sys
from pathlib import Path

import pytest
import yaml
import zstandard

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


@pytest.mark.parametrize("value, says", [("{niah_single_2: 8448}", "niah_single_2=8448 is an integer; expected a list"),
                                         ("{niah_x: [8448]}", "unknown key(s) ['niah_x']")])
def test_task_lengths_are_checked(tmp_path, value, says):
    r = longctx("check", "--profile", "cpu", "--run-dir", str(tmp_path / "r"), "-p", f"09.task_lengths={value}",
                check=False)
    assert r.returncode == 1 and "stage 09_benchmarks: task_lengths: " in r.stderr and says in r.stderr


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


def test_values_inside_lists_and_mappings_are_checked_naming_the_full_key(tmp_path):
    bad = {"03.phases=[{seq_len: 8192, rope_theta: abc, max_tokens: 10}]": "03.phases[0].rope_theta='abc' is a string",
           "03.phases=[{seq_len: 8192, rope_theta: 5.0e+5, max_tokens: 10}]": "03.phases[0]: max_tokens=10 is less",
           "03.model_size={hidden: 130, layers: 0, heads: 4}": "03.model_size.layers=0: must be at least 1",
           "03.extend_train={lr: -1, max_tokens: 0}": "03.extend_train.lr=-1: must be above 0",
           "07.lengths=[0, 256]": "07.lengths=[0, 256]: must be at least 128",
           "07.depths=[150, -3]": "07.depths=[150, -3]: must be at least 0",
           "03.base_rope_theta=1e6": "write it with a dot and a signed exponent",
           "08.judge=nonsense": "08.judge='nonsense': unknown 'nonsense'; expected one of ['loopback']"}
    for override, says in bad.items():
        r = longctx("check", "--profile", "gpu", "-p", override, check=False)
        assert r.returncode == 1 and says in r.stdout + r.stderr, (override, r.stdout[-800:], r.stderr[-800:])
    r = longctx("check", "--profile", "gpu", "-p", "99.seed=1", check=False)
    assert r.returncode == 1 and "there is no stage 99" in r.stderr and "Traceback" not in r.stderr


def test_model_specs_plan_gpu_and_mixture_mappings_are_checked_key_by_key(tmp_path):
    bad = {"04.generator={base_url: http://x/v1, model: m}": "04.generator: an endpoint generator needs `tokenizer`",
           "07.models={a: {path: smollm2-135m-instruct, promt: chat}}": "07.models.a: unknown key(s) ['promt']",
           "08.models={b: {endpoint: {base_url: u}}}": "08.models.b.endpoint: missing key(s) ['model']",
           "08.judges={a: {base_url: u, model: m, timeout: -1}}": "08.judges.a.timeout=-1: must be above 0",
           "06.plan_gpu={name: A100, memory_gib: 0}": "06.plan_gpu.memory_gib=0: must be above 0",
           "01.mixture={book: 1, novels: 2}": "01.mixture: unknown domain(s) ['novels']"}
    r = longctx("check", "--profile", "cpu", "--run-dir", str(tmp_path / "r"),
                *[a for o in bad for a in ("-p", o)], check=False)  # one call: every error is listed
    assert r.returncode == 1 and r.stderr.strip().endswith(f"cpu: {len(bad)} error(s)"), r.stderr[-800:]
    for says in bad.values(): assert says in r.stderr, (says, r.stderr[-2000:])
    ok = longctx("check", "--profile", "cpu", "--run-dir", str(tmp_path / "r"), "-p", "01.mixture={book: 1, arxiv: 2}",
                 "-p", "07.models={a: {endpoint: {base_url: u, model: m}, tokenizer: t, prompt: chat}}")
    assert "cpu: ok" in ok.stdout


def test_entry_points_answer_help_and_refuse_bad_arguments_in_one_line(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", *a], capture_output=True, text=True, cwd=ROOT)
    r = run("longctx_nb.distributed", "--help")
    assert r.returncode == 0 and "usage: python -m longctx_nb.distributed [-h] job [phase]" in r.stdout
    for args in ((), (str(tmp_path / "missing.json"),)):
        r = run("longctx_nb.distributed", *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.splitlines()[-1].startswith("python -m")
    (tmp_path / "job.json").write_text(json.dumps({"phases": [{"seq_len": 8}]}))
    r = run("longctx_nb.distributed", str(tmp_path / "job.json"), "3")
    assert r.returncode == 2 and "phase 3: the job has phases 0-0" in r.stderr
    r = run("longctx_nb.check", "--help")
    assert r.returncode == 1 and r.stderr.strip() == "python -m longctx_nb.check is not a command: run `longctx check --help`"


def test_stale_sequences_are_refused_before_stage_03_trains_on_them(tmp_path):
    rd = tmp_path / "r"  # stage 02 ran at 2048 with every strategy, then again with original alone at 1024
    for s, L in (("original", 1024), ("per_source", 2048)):
        (rd / "upsampled" / s).mkdir(parents=True)
        (rd / "upsampled" / s / "index.json").write_text(json.dumps({"seq_len": L, "shards": []}))
    last = {"status": "completed", "parameters": {"strategies": ["original"], "seq_len": 1024}}
    (rd / "manifest.json").write_text(json.dumps({"runs": [], "stages": {"02_upsample": last}}))
    check = lambda *p: longctx("check", "--run-dir", str(rd), "--stages", "03", *[a for x in p for a in ("-p", x)],
                               check=False)
    r = check("03.strategies=[per_source]", "02.seq_len=1024", "02.strategies=[original]")
    assert r.returncode == 1 and "upsampled/per_source is stale: the last stage 02 run wrote ['original'] only" in r.stderr
    r = check("03.strategies=[original]")  # the profile's 02.seq_len (2048) is not what stage 02 wrote last
    assert r.returncode == 1 and "upsampled/original holds 1024-token sequences but 02.seq_len is 2048" in r.stderr
    r = longctx("run", "--run-dir", str(rd), "--stages", "03", "-p", "03.strategies=[per_source]", check=False)
    assert r.returncode == 1 and "is stale" in r.stderr and not (rd / "03_extend").exists()
    ok = check("03.strategies=[original]", "02.seq_len=1024")
    assert "stale" not in ok.stderr and "token sequences but" not in ok.stderr, ok.stderr
    r = longctx("check", "--run-dir", str(rd), "--stages", "02,03", "-p", "03.strategies=[per_source]", check=False)
    assert "stale" not in r.stderr  # stage 02 runs first in that run and writes them anew


def test_check_prints_the_hours_and_disk_of_stages_01_02_from_the_corpus_files(tmp_path):
    sp = tmp_path / "SlimPajama"
    for split in ("train", "validation"):
        (sp / split).mkdir(parents=True)
        rec = json.dumps({"text": "Long documents. " * 2000, "meta": {"redpajama_set_name": "RedPajamaBook"}}) + "\n"
        (sp / split / "chunk-0.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(rec.encode() * 50))
    env = {**os.environ, "SLIMPAJAMA": str(sp)}
    r = longctx("check", "--profile", "gpu", "--run-dir", str(tmp_path / "r"), env=env)
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
    assert "reads about" in rows["01_mixture"] and "on 16 process(es)" in rows["01_mixture"], r.stdout
    # the gpu profile's 5B tokens for each of its four strategies at 2 bytes per token, plus the (small) token store
    assert "disk about 40.0 GB (token store + sequences)" in rows["02_upsample"], r.stdout
    big = longctx("check", "--profile", "gpu", "--run-dir", str(tmp_path / "r"), "-p",
                  "02.token_budget=1000000000000000", env=env)
    assert "warning: stage 02_upsample: token_budget: needs about" in big.stderr and "free where the run folder is" \
        in big.stderr
    gone = longctx("check", "--profile", "gpu", "--run-dir", str(tmp_path / "r"),
                   env={k: v for k, v in os.environ.items() if k != "SLIMPAJAMA"})
    # without the files (a login node): SlimPajama's published size, 627B tokens, of which the profile's pool reads 20B
    rows = {line.split()[0]: line for line in gone.stdout.splitlines()[1:]}
    assert "reads about 20.0 G tokens (stage 01's pool_tokens, 3.2% of the corpus's 627.0 G: files not on this " \
        "machine: SlimPajama-627B's published size)" in rows["01_mixture"], gone.stdout
    assert "disk about 80.0 GB (token store + sequences)" in rows["02_upsample"], gone.stdout
    whole = longctx("check", "--profile", "gpu", "--run-dir", str(tmp_path / "r"), "-p", "01.pool_tokens=null",
                    env={k: v for k, v in os.environ.items() if k != "SLIMPAJAMA"})
    assert "disk about 1.3 TB (token store + sequences)" in whole.stdout, whole.stdout  # the whole corpus tokenized
    small = longctx("check", "--profile", "gpu", "--run-dir", str(tmp_path / "r"), "-p", "01.pool_tokens=1000000000",
                    env={k: v for k, v in os.environ.items() if k != "SLIMPAJAMA"})
    assert "from stage 01's pool of 1.0 G (pool_tokens): documents repeat; raise pool_tokens" in small.stderr, \
        small.stderr
