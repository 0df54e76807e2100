"""Stage 09 on the cpu run: lm-eval's RULER and LongBench on every model, offline, one table, the figures; clear
lines for what cannot run; a rerun evaluates only the model x task cells not done, and gives the same bytes."""
import json, os, subprocess, sys

import pandas as pd
import pytest
import yaml

from conftest import RULER_TASK_LENGTHS, longctx
from longctx_nb.core import PROFILES_DIR

STAGE = "09_benchmarks"


def check_stage(run, p: dict):
    "Every model x task x length of stage 09's parameters `p` is scored in `run`, with its files and figures."
    t = pd.read_csv(run / STAGE / "tables" / "results.csv")
    scored = t[t.metric == "score"]
    ruler = [x for x in p["tasks"] if not x.startswith("longbench_")]
    longbench = [x for x in p["tasks"] if x.startswith("longbench_")]
    for name, spec in p["models"].items():
        got = scored[(scored.model == name) & (scored.group == "ruler")]
        want = {(task, L) for task in ruler for L in spec.get("lengths") or p.get("task_lengths", {}).get(task)
                or p["lengths"]}
        assert set(zip(got.task, got.length)) == want, name
        assert got.value.between(0, 1).all() and (got.samples == p["samples_per_cell"]).all()
        assert got.stderr.notna().all() == (p["samples_per_cell"] > 1)  # two samples or more: a standard error
        lb = scored[(scored.model == name) & scored.task.str.startswith("longbench_")]
        assert sorted(lb.task) == sorted(longbench) and lb.length.isna().all() and lb.value.between(0, 1).all()
        assert (lb.samples == p["longbench_samples"]).all()
        r = json.loads((run / STAGE / "results" / f"{name}.json").read_text())
        assert r["lm_eval_version"] == "0.4.13" and set(r["configs"]) == ({f"{a}_{b}" for a, b in want} | set(longbench)
                                                    | set(p["short_tasks"]))
        assert set(r["keys"]) == set(p["tasks"]) | set(p["short_tasks"])
        assert set(r["keys"]) == {f.stem for f in (run / STAGE / "results" / name).iterdir()}
        lines = (run / STAGE / "samples" / f"{name}.jsonl").read_text().splitlines()
        assert len(lines) == (len(want) * p["samples_per_cell"] + len(longbench) * p["longbench_samples"]
                              + len(p["short_tasks"]) * p["short_samples"])
        short = t[(t.model == name) & (t.group == "short") & (t.metric == "acc")]
        assert sorted(short.task) == sorted(p["short_tasks"]) and (short.samples == p["short_samples"]).all()
        assert short.stderr.gt(0).all()  # 20 questions: a standard error
        assert (run / STAGE / "figures" / f"ruler_{name}.png").exists()
    m = json.loads((run / STAGE / "metrics.json").read_text())
    assert set(m["effective_length"]) == set(p["models"]) and m["lm_eval"] == "0.4.13"
    assert set(m["longbench"]) == set(p["models"])
    assert (run / STAGE / "figures" / "ruler_average.png").exists() and (run / STAGE / "figures" / "longbench.png").exists()
    # retention: each model's short-task score minus the base model's
    kept = pd.read_csv(run / STAGE / "tables" / "retention.csv", index_col=0)
    assert set(kept.index) == set(p["models"]) - {p["retention_base"]} and set(kept.columns) == set(p["short_tasks"])
    base = t[(t.model == p["retention_base"]) & (t.group == "short") & (t.metric == "acc")].set_index("task").value
    for name in kept.index:
        mine = t[(t.model == name) & (t.group == "short") & (t.metric == "acc")].set_index("task").value
        assert (kept.loc[name] - (mine - base)).abs().max() < 1e-9
    assert set(m["retention"]) == set(kept.index) and (run / STAGE / "figures" / "retention.png").exists()
    return scored


def test_every_model_task_and_length_is_scored(cpu_run):
    p = {**yaml.safe_load((PROFILES_DIR / "cpu.yaml").read_text())["stages"]["09"], "task_lengths": RULER_TASK_LENGTHS}
    scored = check_stage(cpu_run, p)
    # the real model finds a single needle at 1K; the suite's tiny SFT model is evaluated by the same code path
    assert scored.set_index(["model", "task", "length"]).loc[("smollm2", "niah_single_2", 1024), "value"] == 1.0
    groups = pd.read_csv(cpu_run / STAGE / "tables" / "longbench_groups.csv", index_col=0)
    assert list(groups.columns) == ["S-Doc QA", "M-Doc QA", "Summ"] and set(groups.index) == set(p["models"])
    # one needle task past the other tasks' lengths (the profile: past SmolLM2's 8K window), as is and with YaRN: its
    # prompts are longer than the grid's, and the RULER average stays at the lengths every task ran
    past = max(p["task_lengths"]["niah_single_2"])
    m = json.loads((cpu_run / STAGE / "metrics.json").read_text())
    for name in ("smollm2", "smollm2-yarn2"):
        text = (cpu_run / STAGE / "samples" / name / "niah_single_2.jsonl").read_text()
        rows = [json.loads(x) for x in text.splitlines()]
        assert min(r["tokens"] for r in rows if r["length"] == past) > max(p["lengths"])
        assert set(m["ruler_average"][name]) == {str(L) for L in p["lengths"]}
    profile = yaml.safe_load((PROFILES_DIR / "cpu.yaml").read_text())["stages"]["09"]
    assert max(profile["task_lengths"]["niah_single_2"]) > 8192  # make run: past SmolLM2's window


def test_qa_tasks_without_their_files_are_listed_as_skipped_and_a_rerun_resumes(cpu_run, tmp_path):
    sft = cpu_run / "models" / "sft-packing" / "final"
    tok = json.loads((cpu_run / "data.json").read_text())["tokenizer"]
    run = tmp_path / "r"
    args = ["run", "--stages", "09", "--run-dir", str(run), "-p", f"09.tokenizer={tok}",
            "-p", f"09.models={{a: {{path: {sft}, prompt: chat}}, b: {{path: {sft}, prompt: story}}}}",
            "-p", "09.lengths=[1024]", "-p", "09.task_lengths={}", "-p", "09.tasks=[niah_single_2, ruler_qa_hotpot, longbench_qasper]",
            "-p", "09.retention_base=a", "-p", "09.short_samples=4"]
    longctx(*args)
    t = pd.read_csv(run / STAGE / "tables" / "results.csv")
    skip = t[t.task == "ruler_qa_hotpot"]
    assert len(skip) == 2 and skip.value.isna().all() and skip.note.str.contains("ruler_qa.hotpotqa").all()
    # a run folder without a corpus builds the fixtures from the essays; b's retention is measured against a
    assert (run / STAGE / "longbench_fixture" / "qasper.jsonl").exists()
    assert list(pd.read_csv(run / STAGE / "tables" / "retention.csv", index_col=0).index) == ["b"]
    # a rerun evaluates only the model x task whose result is gone, and writes the same bytes again
    files = lambda: {str(p.relative_to(run)): p.read_bytes() for p in (run / STAGE).rglob("*")
                     if p.is_file() and p.parent.name in ("results", "samples", "a", "b", "longbench_fixture", "short_fixture")}
    first = files()
    (run / STAGE / "results" / "b" / "niah_single_2.json").unlink()
    longctx(*args, "--force")
    nb = json.loads((run / STAGE / f"{STAGE}.ipynb").read_text())
    printed = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert "a: niah_single_2 evaluated earlier" in printed and "b: niah_single_2 evaluated earlier" not in printed
    assert "b: longbench_qasper evaluated earlier" in printed and "b: niah_single_2 at 1024 tokens: evaluated" in printed
    assert files() == first and len(first) == 18


@pytest.mark.parametrize("override, says", [
    ("09.tasks=[niah_single_2, mmlu_nope]", "09.tasks"),
    ("09.longbench_data=hub", "09.longbench_data=hub: the hub is off"),
    ("09.longbench_data=/nowhere", "longbench_qasper: no /nowhere/qasper.jsonl")])
def test_what_cannot_run_gets_one_clear_line(tmp_path, override, says):
    run = tmp_path / "r"
    args = ["run", "--stages", "09", "--run-dir", str(run), "-p", "09.models={s: {path: smollm2-135m-instruct}}",
            "-p", "09.lengths=[1024]", "-p", "09.task_lengths={}", "-p", "09.tasks=[niah_single_2, longbench_qasper]", "-p", override]
    r = longctx(*args, check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode != 0 and says in r.stdout + r.stderr, r.stdout[-2000:] + r.stderr[-2000:]


def test_a_failing_endpoint_gets_one_line_keeps_what_finished_and_never_writes_its_key(tmp_path):
    from longctx_nb.llm import LoopbackJudge
    from longctx_nb.models import registry_path
    tok = registry_path("smollm2-135m-instruct", progress=False)
    run, key = tmp_path / "r", "sk-test-0123456789abcdef"
    with LoopbackJudge(api_key=key, respond=lambda m: "no idea") as good, \
         LoopbackJudge(api_key=key, fail_first=10**6, fail_code=503) as bad:
        ep = lambda srv: f"{{endpoint: {{base_url: '{srv.url}', model: m, api_key_env: LB_KEY, max_retries: 1, tokenizer: '{tok}'}}}}"
        args = ["run", "--stages", "09", "--run-dir", str(run), "-p", f"09.models={{good: {ep(good)}, bad: {ep(bad)}}}",
                "-p", "09.lengths=[1024]", "-p", "09.task_lengths={}", "-p", "09.tasks=[niah_single_2, longbench_qasper]"]
        r = longctx(*args, check=False, env={**os.environ, "LB_KEY": key, "HF_HUB_OFFLINE": "1"})
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "bad on niah_single_2: ClientResponseError: 503" in out, out[-3000:]
    assert (run / STAGE / "results" / "good.json").exists() and not (run / STAGE / "results" / "bad").exists()
    assert all(json.loads(x)["score"] == 0 for x in (run / STAGE / "samples" / "good.jsonl").read_text().splitlines())
    assert key not in out and not [p for p in run.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert good.requests[0]["authorization"] == f"Bearer {key}"


def test_ruler_generators_load_without_any_download(tmp_path):
    code = ("import nltk, urllib.request\n"
            "def no(*a, **kw): raise AssertionError('a download at run time')\n"
            "nltk.download = urllib.request.urlopen = no\n"
            "from transformers import AutoTokenizer\n"
            "from longctx_nb.benchmarks import ruler_samples\n"
            "from longctx_nb.models import registry_path\n"
            "tok = AutoTokenizer.from_pretrained(registry_path('smollm2-135m-instruct', progress=False))\n"
            "print(len(ruler_samples('niah_single_2', tok, 1024, 1)))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "NLTK_DATA": str(tmp_path)})
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stdout + r.stderr[-2000:]
    assert "punkt" not in r.stdout + r.stderr


def test_ruler_keys_and_samples_equal_those_of_lm_evals_own_import(tmp_path):
    # lm-eval's RULER module imported as lm-eval imports it (its key list built at import) and through ruler_modules
    # (the list made by ruler_words): the same 6M keys in the same order, so the same seeded samples
    code = ("import hashlib, json, sys, nltk\n"
            "nltk.download = lambda *a, **kw: False\n"
            "if sys.argv[1] == 'plain':\n"
            "    from lm_eval.tasks.ruler import prepare_niah\n"
            "from transformers import AutoTokenizer\n"
            "from longctx_nb.benchmarks import ruler_modules, ruler_samples\n"
            "from longctx_nb.models import registry_path\n"
            "tok = AutoTokenizer.from_pretrained(registry_path('smollm2-135m-instruct', progress=False))\n"
            "words = ruler_modules()['niah'].WORDS\n"
            "digest = hashlib.sha256('\\n'.join(words).encode()).hexdigest()\n"
            "print(json.dumps([len(words), digest, ruler_samples('niah_single_2', tok, 1024, 2, seed=3)]))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NLTK_DATA": str(tmp_path)}
    outs = [subprocess.run([sys.executable, "-c", code, how], capture_output=True, text=True, cwd=tmp_path, env=env)
            for how in ("plain", "ruler_modules")]
    assert all(r.returncode == 0 for r in outs), [r.stderr[-2000:] for r in outs]
    plain, ours = [json.loads(r.stdout.strip().splitlines()[-1]) for r in outs]
    assert plain[0] > 10 ** 6 and len(plain[2]) == 2 and plain == ours
