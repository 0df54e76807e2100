"""The suite's own sbatch scripts under a real one-host Slurm (slurm/local_cluster.sh): stage 06's job through srun
and torchrun, a stop signal mid-training that requeues the job, and a final run folder equal to an uninterrupted local
run's; stages 01-02 as a two-task array (slurm/longctx_data.sbatch) whose merge equals one local run; a served model
for stage 08. The cluster is started for this module (apt installs Debian's packages as root when they are missing)
and stopped after it, leaving no daemon running. It is part of `make test` (8 min 44 s on a 2-core AMD EPYC without
bf16 while another test run shared the machine; 5 min 52 s before the array test, on one with bf16, alone);
`make test-slurm` runs it alone, and LONGCTX_SLURM=0 skips it. Without root and without Slurm installed it is
skipped, saying why."""
import hashlib, json, os, re, shutil, socket, subprocess, sys, time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import LONGCTX, ROOT, Background, manifest
from longctx_nb.core import TRAIN_LOG

CLUSTER = ROOT / "slurm" / "local_cluster.sh"
SUITE = ROOT / "slurm" / "longctx_suite.sbatch"
DATA = ROOT / "slurm" / "longctx_data.sbatch"  # stages 01-02's per-file work as an array
DAEMONS = ("munged", "slurmctld", "slurmd")
STAGES = "01,02,03,06"  # data, extension (papermill on the node), stage 06's job (srun + torchrun, 2 gloo processes)
# the cpu profile shrunk by sizes only; stage 03's base model checkpoints every 4 of its 20 steps so that a stop
# signal lands between two checkpoints
SHRINK = ["01.tokenizer_train_chars=1000000", "01.vocab_size=4096", "02.token_budget=150000",
          "02.strategies=[original, per_source]", "02.seq_len=1024", "03.strategies=[per_source]", "03.eval_docs=1",
          "03.eval_len=512",
          "03.base_train={lr: 0.003, max_tokens: 40960, batch_tokens: 2048, micro_batch: 8, warmup_steps: 2, "
          "save_steps: 4}",
          "03.phases=[{seq_len: 1024, rope_theta: 160000.0, max_tokens: 8192}]",
          "06.phases=[{seq_len: 256, sp_size: 1, steps: 2}, {seq_len: 1024, sp_size: 2, steps: 2}]",
          "06.parity={optim: sgd, grad_clip: 0.0, sampling: sequential, n: 4}"]
ARGS = [a for o in SHRINK for a in ("-p", o)]
pytestmark = pytest.mark.skipif(os.environ.get("LONGCTX_SLURM") == "0", reason="LONGCTX_SLURM=0 skips these tests")
BASE = "models/base"  # stage 03's base model: its checkpoints while it trains, then final/
JOB = "models/distributed"  # stage 06's job: one folder per phase


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    "A one-host Slurm for this module's tests: the environment that reaches it; stopped (and checked gone) after."
    if os.geteuid() != 0 and not shutil.which("slurmctld"):
        pytest.skip("Slurm is not installed and apt needs root")
    d = tmp_path_factory.mktemp("slurm")
    r = subprocess.run(["bash", str(CLUSTER), "start", str(d)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    pids = {n: int((d / f"{n}.pid").read_text()) for n in DAEMONS}
    yield {**os.environ, "SLURM_CONF": str(d / "slurm.conf")}
    subprocess.run(["bash", str(CLUSTER), "stop", str(d)], check=True, timeout=300)
    assert not [n for n, pid in pids.items() if _alive(pid)], "a Slurm daemon started by the tests is still running"


def _slurm(env, *cmd) -> str:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=60).stdout.strip()


def _submit(env, run_dir: Path, log: Path, stages: str = STAGES, args=ARGS, script=SUITE, opts=("--cpus-per-task=2",),
            **more) -> str:
    "Submit an sbatch script of the suite for the shrunk cpu profile (`more`: the job's environment); its job id."
    jenv = {**env, "LONGCTX_STAGES": stages, "LONGCTX_NPROC": "2", "OMP_NUM_THREADS": "1",
            "LONGCTX": str(Path(sys.executable).parent / "longctx"), **more}
    return _slurm(jenv, "sbatch", "--parsable", *opts, "--time=60", f"--output={log}", f"--chdir={ROOT}", str(script),
                  "cpu", str(run_dir), *args)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _job(env, jid: str) -> dict:
    "The job's fields as `scontrol show job` prints them."
    return dict(re.findall(r"(\w+)=(\S*)", _slurm(env, "scontrol", "show", "job", jid)))


def _wait(env, jid: str, until, timeout: float, log: Path):
    "Poll every half second until `until()` is true; fail with the job's log after `timeout` seconds."
    t0 = time.time()
    while not until():
        assert time.time() - t0 < timeout, f"job {jid}: {_job(env, jid).get('JobState')}\n{log.read_text()[-4000:]}"
        time.sleep(0.5)


def _ended(env, jid: str) -> bool:
    return _job(env, jid).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")


def _digest(p: Path, run_dir: Path) -> str:
    "A file's sha256; a JSON file's with its run folder's path written as <run> and its cache keys left out."
    if p.suffix != ".json": return hashlib.sha256(p.read_bytes()).hexdigest()
    drop = lambda o: ({k: drop(v) for k, v in o.items() if k != "key"} if isinstance(o, dict)
                      else [drop(v) for v in o] if isinstance(o, list) else o)
    text = json.dumps(drop(json.loads(p.read_text())), sort_keys=True).replace(str(run_dir), "<run>")
    return hashlib.sha256(text.encode()).hexdigest()


def _data_files(run_dir: Path) -> dict:
    "The data a seed fixes byte for byte: the corpus, tokenizer, token store and sequences (cache keys hash the path)."
    keep = ("corpus/", "tokenizer/", "tokens/", "upsampled/")
    files = [p for p in sorted(run_dir.rglob("*")) if p.is_file() and not p.name.endswith("key.json")]
    return {p.relative_to(run_dir).as_posix(): _digest(p, run_dir) for p in files
            if p.relative_to(run_dir).as_posix().startswith(keep)}


@pytest.fixture(scope="module")
def stopped_job(slurm, tmp_path_factory):
    "The sbatch run of STAGES, sent the time-limit signal while stage 03's base model trains: (run folder, job, log)."
    tmp = tmp_path_factory.mktemp("sbatch")
    run_dir, log = tmp / "slurm_run", tmp / "job.log"
    jid = _submit(slurm, run_dir, log)
    ckpt = lambda: any((run_dir / BASE).glob("checkpoint-*")) or any((run_dir / BASE).glob(".*/checkpoint-*"))
    _wait(slurm, jid, ckpt, 900, log)
    # the time-limit warning the script asks for (--signal=B:USR1@600), sent now
    _slurm(slurm, "scancel", "--signal=USR1", "--batch", jid)
    _wait(slurm, jid, lambda: _ended(slurm, jid), 1200, log)
    return run_dir, jid, log


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    "STAGES run locally, never stopped, stage 06 training on this node (train_here): what the jobs must equal."
    # it runs beside the first Slurm job (each keeps one of two cores busy most of the time): ask for it before that job
    bg = Background(tmp_path_factory.mktemp("local") / "local_run", "--profile", "cpu", "--stages", STAGES, *ARGS,
                    "-p", "06.train_here=true", env={**os.environ, "OMP_NUM_THREADS": "1"})
    yield bg
    bg.stop()  # a test failed before waiting for it


def _tables(run_dir: Path) -> dict:
    "Stages 01-02's tables, byte for byte but for the run folder's path (stage 01 names where the longest doc lies)."
    return {p.relative_to(run_dir).as_posix(): p.read_text().replace(str(run_dir), "<run>")
            for s in ("01_mixture", "02_upsample") for p in sorted((run_dir / s / "tables").glob("*.csv"))}


def test_sbatch_stopped_mid_training_requeues_skips_finished_stages_resumes_and_equals_a_local_run(slurm, local_run,
                                                                                                   stopped_job):
    run_dir, jid, log = stopped_job
    job, text = _job(slurm, jid), log.read_text()
    assert (job["JobState"], job["Restarts"], job["ExitCode"]) == ("COMPLETED", "1", "0:0"), text[-4000:]
    first, second = text.split("attempt 2 on", 1)
    assert "USR1" in first and "requeueing job" in first
    # attempt 2: the data stages are not redone, stage 03 resumes its base model from the last checkpoint
    assert "01_mixture: completed earlier with the same parameters, skipped" in second
    assert "02_upsample: completed earlier with the same parameters, skipped" in second
    runs = manifest(run_dir)["runs"]
    assert runs[0]["stages"] == ["01", "02", "03"] and "03_extend" not in runs[1].get("skipped", [])
    base = json.loads((run_dir / BASE / TRAIN_LOG).read_text())
    assert base["resumed_from_step"] >= 4 and base["resumed_from_step"] % 4 == 0 and base["steps"] == 20
    st = manifest(run_dir)["stages"]
    assert all(st[s]["status"] == "completed" for s in ("01_mixture", "02_upsample", "03_extend", "06_distributed"))
    # stage 06's job ran under srun + torchrun on 2 processes, both phases
    for k in (0, 1):
        jl = json.loads((run_dir / JOB / f"phase-{k}" / TRAIN_LOG).read_text())
        assert jl["world"] == 2 and jl["finished"]

    # the same stages run locally (local_run): the same bytes for the data and the same weights, the resumed base
    # model included
    local = local_run.result()
    ours, theirs = _data_files(run_dir), _data_files(local)
    assert ours == theirs and len(ours) > 10
    for rel in (f"{BASE}/final", "models/per_source/phase-0/final", f"{JOB}/phase-0/final", f"{JOB}/phase-1/final"):
        a, b = load_file(run_dir / rel / "model.safetensors"), load_file(local / rel / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a), rel


def test_an_array_of_two_data_tasks_then_the_suite_equals_one_local_run(slurm, local_run, tmp_path):
    # slurm/longctx_data.sbatch as a 2-task array (one CPU each, side by side), then the suite's stages 01-02 once
    # the array succeeded: the tasks did the per-file work between them, and the merge gives one local run's bytes
    run_dir = tmp_path / "array_run"
    aid = _submit(slurm, run_dir, tmp_path / "data-%a.log", "01,02", script=DATA,
                  opts=("--array=0-1", "--cpus-per-task=1"))
    log = tmp_path / "merge.log"
    jid = _submit(slurm, run_dir, log, "01,02", opts=("--cpus-per-task=2", f"--dependency=afterok:{aid}"))
    failed = lambda: _job(slurm, jid).get("Reason") == "DependencyNeverSatisfied"  # a task failed
    _wait(slurm, jid, lambda: _ended(slurm, jid) or failed(), 600, log)
    tasks = "".join((tmp_path / f"data-{k}.log").read_text() for k in (0, 1))
    assert _job(slurm, jid)["JobState"] == "COMPLETED", tasks[-3000:] + log.read_text()[-3000:]
    for stage, folder, done in (("01_mixture", "01_mixture/parts", "counted"), ("02_upsample", "tokens/train", None)):
        recs = [json.loads((run_dir / stage / "array" / f"task-{k}-of-2.json").read_text()) for k in (0, 1)]
        parts = [r["parts"] if done else r["train"]["parts"] for r in recs]
        now = [r[done] if done else r["train"]["tokenized"] for r in recs]
        files = {p.name.split(".")[0] for p in (run_dir / folder).iterdir()
                 if not p.name.startswith(".") and p.name not in ("key.json", "meta.json")}
        # each file's part made by exactly one task, and kept by the merge (written before the task's record)
        assert parts == now and all(parts) and not set(parts[0]) & set(parts[1]), (stage, parts, now)
        assert set(parts[0]) | set(parts[1]) == files, (stage, files)
        for k, names in enumerate(parts):
            rec = (run_dir / stage / "array" / f"task-{k}-of-2.json").stat().st_mtime_ns
            assert all((run_dir / folder / n).with_suffix(".json" if done else ".docs.npy").stat().st_mtime_ns
                       <= rec for n in names), (stage, k)
    local = local_run.result()
    assert _data_files(run_dir) == _data_files(local)
    assert _tables(run_dir) == _tables(local) and len(_tables(run_dir)) >= 3


def test_sbatch_serves_a_model_for_the_evaluation_stages_and_stops_it(slurm, stopped_job, tmp_path):
    # the script starts the server LONGCTX_SERVE names (the suite's stand-in in place of vLLM), waits until it
    # answers, runs stage 08 against it as the model and the judge, and stops it
    run_dir = stopped_job[0]
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    served = f"{{base_url: '{url}', model: loopback-judge, api_key_env: null}}"
    args = [*ARGS, "-p", f"08.models={{served: {{endpoint: {served}, tokenizer: {run_dir / 'tokenizer'}}}}}",
            "-p", f"08.judge={served}", "-p", "08.n_fixture=2"]
    log2 = tmp_path / "serve.log"
    jid = _submit(slurm, run_dir, log2, "08", args, LONGCTX_SERVE=f"{sys.executable} -m longctx_nb.llm --port {port}",
                  LONGCTX_SERVE_URL=url)
    _wait(slurm, jid, lambda: _ended(slurm, jid), 600, log2)
    text = log2.read_text()
    assert _job(slurm, jid)["JobState"] == "COMPLETED" and f"{url} answers after" in text, text[-3000:]
    preds = [json.loads(l) for l in (run_dir / "08_longbench_chat" / "predictions" / "served.jsonl").open()]
    assert len(preds) == 2 and all("stand-in" in p["prediction"] or "judge" in p["prediction"] for p in preds)
    assert manifest(run_dir)["stages"]["08_longbench_chat"]["status"] == "completed"
    with socket.socket() as s:  # stopped with the stage: nothing listens there any more
        assert s.connect_ex(("127.0.0.1", port)) != 0
