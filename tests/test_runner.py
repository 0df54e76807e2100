"""The runner end to end on the cpu profile: outputs, manifest, skip/force, failures, resume, bad input."""
import json, re, shutil, subprocess, time
from pathlib import Path

import nbformat, psutil, pytest

from conftest import ROOT, LONGCTX, CPU_ARGS, longctx, manifest, stage_nb
from longctx_nb.core import SLIMPAJAMA_MIX, SHORT
from longctx_nb.runner import run, StageFailed, fingerprint, notebook_code_hash
from longctx_nb.sources import read_stdlib


def test_cpu_run_writes_notebook_figures_tables_metrics(cpu_run):
    st = cpu_run / "01_mixture"
    nb = nbformat.read(st / "01_mixture.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    assert {p.name for p in (st / "figures").glob("*.png")} == {"domain_mix.png", "length_cdf.png", "length_bands.png"}
    assert (st / "tables" / "mixture.csv").exists() and (st / "tables" / "length_hist.csv").exists()
    data = json.loads((cpu_run / "data.json").read_text())
    assert Path(data["train"]).is_dir() and (Path(data["tokenizer"]) / "tokenizer.json").exists()


def test_cpu_corpus_is_real_mixed_and_long_tailed(cpu_run):
    m = json.loads((cpu_run / "01_mixture" / "metrics.json").read_text())
    doms = m["domains"]
    assert set(SHORT.values()) <= set(doms), "all seven domains present"
    for d, share in SLIMPAJAMA_MIX.items():  # shaped on characters, measured in tokens: within 1.5 points
        assert abs(doms[SHORT[d]]["token_share"] - share) < 0.015, (d, doms[SHORT[d]]["token_share"])
    assert doms["book"]["longest_doc_tokens"] > 100_000 and doms["github"]["longest_doc_tokens"] > 50_000
    assert m["errors"]["skipped"] == 0 and m["skipped_sources"] == []
    assert doms["all"]["tokens"] > 5_000_000


def test_manifest_records_parameters_versions_commit_and_time(cpu_run):
    man = manifest(cpu_run)
    st = man["stages"]["01_mixture"]
    assert st["status"] == "completed" and st["wall_s"] > 0 and st["seed"] == 0
    assert st["parameters"]["corpus"] == "sample" and st["parameters"]["vocab_size"] == 8192
    last = man["runs"][-1]
    assert last["versions"]["torch"].startswith("2.") and "git_commit" in last and last["profile"].endswith("cpu.yaml")


def test_rerun_skips_and_force_redoes(cpu_run):
    t0 = time.time()
    r = longctx("run", *CPU_ARGS, "--run-dir", str(cpu_run))
    assert "skipped" in r.stderr + r.stdout and time.time() - t0 < 30
    assert manifest(cpu_run)["runs"][-1]["skipped"] == ["01_mixture", "02_upsample", "03_extend", "04_synth",
                                                     "05_packing", "06_distributed", "07_needle", "08_longbench_chat",
                                                     "09_benchmarks"]
    before = {k: v["started"] for k, v in manifest(cpu_run)["stages"].items()}
    time.sleep(1.1)
    longctx("run", *CPU_ARGS, "--run-dir", str(cpu_run), "--stages", "02", "--force")
    after = {k: v["started"] for k, v in manifest(cpu_run)["stages"].items()}
    assert after["02_upsample"] != before["02_upsample"] and after["01_mixture"] == before["01_mixture"]
    # changing an earlier stage's parameter redoes it and the stage that depends on it
    st = manifest(cpu_run)["stages"]
    own = {k: v for k, v in st["02_upsample"]["parameters"].items() if k != "run_dir"}
    code = notebook_code_hash(Path(__file__).parent.parent / "nbs" / "02_upsample.ipynb")
    assert st["02_upsample"]["fingerprint"] == fingerprint(own, code, [st["01_mixture"]["fingerprint"]])  # chained


def test_unknown_parameter_is_an_error(tmp_path):
    r = longctx("run", "--run-dir", str(tmp_path / "r"), "-p", "01.vocab_sise=10", check=False)
    assert r.returncode == 1 and "unknown parameter(s) ['vocab_sise']" in r.stderr
    bad = tmp_path / "p.yaml"
    bad.write_text("seeed: 1\n")
    r = longctx("run", "--profile", str(bad), "--run-dir", str(tmp_path / "r"), check=False)
    assert r.returncode == 1 and "unknown parameter 'seeed'" in r.stderr


def test_failing_stage_stops_the_run_and_names_the_cell(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    stage_nb(nbs / "01_ok.ipynb", "from pathlib import Path; Path(run_dir, 'ok').write_text(str(n))")
    stage_nb(nbs / "02_boom.ipynb", "x = 1\nraise ValueError(f'bad value n={n}')")
    stage_nb(nbs / "03_after.ipynb", "from pathlib import Path; Path(run_dir, 'after').write_text('ran')")
    with pytest.raises(StageFailed) as e:
        run({"n": 7}, run_dir=tmp_path / "run", nbs=nbs, progress=False)
    assert "02_boom" in str(e.value) and "ValueError: bad value n=7" in str(e.value)
    st = manifest(tmp_path / "run")["stages"]
    assert st["01_ok"]["status"] == "completed" and st["02_boom"]["status"] == "failed" and "03_after" not in st
    assert (tmp_path / "run" / "02_boom" / "02_boom.ipynb").exists() and not (tmp_path / "run" / "after").exists()
    # fixed, the rerun skips the completed stage and goes on
    stage_nb(nbs / "02_boom.ipynb", "x = 1")
    run({"n": 7}, run_dir=tmp_path / "run", nbs=nbs, progress=False)
    man = manifest(tmp_path / "run")
    assert man["runs"][-1]["skipped"] == ["01_ok"] and man["stages"]["03_after"]["status"] == "completed"


def test_crash_after_the_data_step_resumes_without_rebuilding(tmp_path):
    rd = tmp_path / "run"
    # killed (runner and kernel) once corpus and tokenizer are built: its lock is stale, stage 02 may not start
    p = subprocess.Popen([*LONGCTX, "run", "--run-dir", str(rd), "--stages", "01"], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    key, t0 = rd / "tokenizer" / "longctx_key.json", time.time()
    while not key.exists() and p.poll() is None and time.time() - t0 < 900: time.sleep(0.2)
    for q in [*psutil.Process(p.pid).children(recursive=True), psutil.Process(p.pid)]: q.kill()
    p.wait()
    assert key.exists() and (rd / ".longctx.lock").exists()
    r = longctx("run", "--run-dir", str(rd), "--stages", "02", check=False)  # the dead run's lock is taken over
    assert r.returncode == 1 and "taking over a stale lock" in r.stdout + r.stderr
    assert "reads the outputs of 01_mixture, which did not complete (status: running)" in r.stderr
    built = {p: p.stat().st_mtime_ns for p in [rd / "corpus" / "manifest.json", rd / "tokenizer" / "tokenizer.json"]}
    longctx("run", "--run-dir", str(rd), "--stages", "01")
    assert {p: p.stat().st_mtime_ns for p in built} == built, "corpus and tokenizer were rebuilt"
    assert manifest(rd)["stages"]["01_mixture"]["status"] == "completed"


@pytest.fixture
def bad_corpus(tmp_path):
    "A small SlimPajama-schema corpus with one malformed line (line 3 of b.jsonl)."
    docs = [t for _, t in zip(range(30), (t for _, t in read_stdlib() if t.strip()))]
    d = tmp_path / "corpus"
    d.mkdir()
    github = {"redpajama_set_name": "RedPajamaGithub"}
    (d / "a.jsonl").write_text("".join(json.dumps({"text": t, "meta": github}) + "\n" for t in docs))
    good = json.dumps({"text": "Some prose. " * 50, "meta": {"redpajama_set_name": "RedPajamaBook"}})
    (d / "b.jsonl").write_text(good + "\n" + good + "\n" + '{"text": "unterminated\n' + good + "\n")
    return d


def test_bad_input_fails_naming_file_and_line(bad_corpus, tmp_path):
    r = longctx("run", "--run-dir", str(tmp_path / "r"), "--stages", "01", "-p", f"01.corpus={bad_corpus}",
                "-p", "01.vocab_size=400", check=False)
    assert r.returncode == 1 and f"{bad_corpus / 'b.jsonl'}:3: bad-json" in r.stderr


def test_bad_validation_file_fails_stage_01_naming_file_line_and_key(bad_corpus, tmp_path):
    r = longctx("run", "--run-dir", str(tmp_path / "r"), "--stages", "01", "-p", f"01.corpus={bad_corpus / 'a.jsonl'}",
                "-p", f"01.validation={bad_corpus / 'b.jsonl'}", "-p", "01.vocab_size=400", check=False)
    assert r.returncode == 1 and f"{bad_corpus / 'b.jsonl'}:3: bad-json" in r.stderr and "-p on_error=skip" in r.stderr
    assert "01_mixture" in r.stderr and not (tmp_path / "r" / "data.json").exists()


def test_bad_input_skipped_and_counted(bad_corpus, tmp_path):
    rd = tmp_path / "r"
    r = longctx("run", "--run-dir", str(rd), "--stages", "01", "-p", f"01.corpus={bad_corpus}", "-p", "01.vocab_size=400",
                "-p", "01.on_error=skip")
    m = json.loads((rd / "01_mixture" / "metrics.json").read_text())
    assert m["errors"]["by_kind"] == {"bad-json": 1}
    assert "01_mixture: skipped 1 bad record(s) (on_error=skip): bad-json 1; examples in 01_mixture/metrics.json" in \
        r.stdout + r.stderr  # on the terminal, not only in metrics.json
    moved = tmp_path / "moved"  # a run folder moved elsewhere resumes without redoing its finished stages
    shutil.move(rd, moved)
    r = longctx("run", "--run-dir", str(moved), "--stages", "01", "-p", f"01.corpus={bad_corpus}",
                "-p", "01.vocab_size=400", "-p", "01.on_error=skip")
    assert "01_mixture: completed earlier with the same parameters, skipped" in r.stdout + r.stderr
    assert m["domains"]["github"]["docs"] == 30 and m["domains"]["book"]["docs"] == 3


def test_thresholds_without_4096_finish_stage_01(bad_corpus, tmp_path):
    rd = tmp_path / "r"
    longctx("run", "--run-dir", str(rd), "--stages", "01", "-p", f"01.corpus={bad_corpus}", "-p", "01.vocab_size=400",
            "-p", "01.on_error=skip", "-p", "01.thresholds=[8192, 65536]")
    m = json.loads((rd / "01_mixture" / "metrics.json").read_text())
    assert {k for k in m if k.startswith("share_tokens_over_")} == {"share_tokens_over_8K", "share_tokens_over_64K"}


def test_a_stage_kernel_shows_its_bars_on_the_runner_line(tmp_path, capsys):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    stage_nb(nbs / "01_count.ipynb", "import time\nfrom tqdm.auto import tqdm\n"
             "for _ in tqdm(range(5), desc='records'):\n    time.sleep(0.7)")
    run({}, run_dir=tmp_path / "run", nbs=nbs, progress=True)
    err = capsys.readouterr().err
    assert re.search(r"01_count: records [1-5]/5 \[", err), err[-2000:]  # the kernel's count, on the stages line
    assert not list((tmp_path / "run" / "01_count").glob(".progress*"))  # gone with the stage
