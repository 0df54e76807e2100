"""A run folder that never lies: keyed intermediates, replace-never-delete, torn logs, locks, typed parameters."""
import contextlib, json, os, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

import longctx_nb.longbench_chat as lb
import longctx_nb.upsample as up
from conftest import ROOT, LONGCTX, CPU_ARGS, copy_stages_01_02, longctx, manifest, stage_nb
from longctx_nb.core import RUN_KEY, TRAIN_LOG, read_jsonl, append_jsonl
from longctx_nb.corpus import doc_record, write_shards
from longctx_nb.llm import EndpointGenerator, LoopbackJudge, OpenAIClient
from longctx_nb.needle import grid_cells, read_results, run_grid
from longctx_nb.runner import run, StageFailed, UpstreamIncomplete
from longctx_nb.tokenizer import train_bpe, load_tokenizer
from longctx_nb.train import TrainConfig, tiny_llama, train_lm
from longctx_nb.upsample import build_token_store, write_sequences, SequenceDataset, TokenStore

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches".split()


def texts(n, seed=0, words=60):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=words + 7 * i)) for i in range(n)]


@pytest.fixture
def corpus(tmp_path):
    "Two small shards and a tokenizer trained on them."
    for k in range(2): write_shards((doc_record(t, "RedPajamaBook") for t in texts(6, k)), tmp_path / "c", f"s{k}")
    train_bpe(texts(20), tmp_path / "tok", vocab_size=300)
    return tmp_path


def store(corpus):
    return build_token_store(corpus / "c", corpus / "st", corpus / "tok", progress=False)


def test_token_store_is_rebuilt_when_its_tokenizer_changes(corpus, capsys):
    st = store(corpus)
    assert store(corpus).meta["key"] == st.meta["key"] and "rebuilding" not in capsys.readouterr().out
    train_bpe(texts(20, seed=5), corpus / "tok", vocab_size=280)          # same path, another tokenizer
    st2 = store(corpus)
    assert st2.meta["key"] != st.meta["key"] and st2.meta["vocab_size"] == 280
    assert "st: token store built from other data or another tokenizer; rebuilding it" in capsys.readouterr().out
    assert sorted(p.name for p in corpus.iterdir() if p.name.startswith(".")) == []


def test_token_store_edited_corpus_is_rebuilt_and_failed_rebuild_keeps_the_old(corpus, monkeypatch):
    st = store(corpus)
    f = corpus / "c" / "s1-00000.jsonl"
    f.write_text(f.read_text() + json.dumps(doc_record("a new document about the fox", "RedPajamaBook")) + "\n")
    real = up._tokenize_file
    def dying(path, *a, **k):
        if Path(path).name.startswith("s1"): raise KeyboardInterrupt("killed")
        return real(path, *a, **k)
    monkeypatch.setattr(up, "_tokenize_file", dying)
    with pytest.raises(KeyboardInterrupt): store(corpus)
    assert TokenStore(corpus / "st").meta["key"] == st.meta["key"] and len(TokenStore(corpus / "st")) == 12
    part = corpus / ".st.partial"
    done = {p: p.stat().st_mtime_ns for p in part.glob("*.docs.npy")}
    assert [p.name for p in done] == ["s0-00000_jsonl.docs.npy"]
    monkeypatch.setattr(up, "_tokenize_file", real)                     # resumed: the finished part is kept
    st2 = store(corpus)
    assert len(st2) == 13 and st2.meta["key"] != st.meta["key"] and not part.exists()
    assert all((corpus / "st" / p.name).stat().st_mtime_ns == t for p, t in done.items())


def test_failed_sequence_rewrite_keeps_the_previous_sequences(corpus):
    st = store(corpus)
    plan = [(i, int(st.docs["length"][i])) for i in range(len(st))]
    out = corpus / "up" / "original"
    ix = write_sequences(st, plan, out, 16, 4, progress=False)
    with pytest.raises(TypeError): write_sequences(st, plan, out, "abc", 4, progress=False)
    with pytest.raises(IndexError): write_sequences(st, plan + [(999, 3)], out, 16, 4, progress=False)
    assert SequenceDataset(out).index == ix and os.listdir(corpus / "up") == ["original"]


def test_torn_result_line_is_quarantined_not_glued(tmp_path):
    p = tmp_path / "results.jsonl"
    append_jsonl(p, [{"key": k} for k in range(71)])
    with open(p, "ab") as f: f.write(b'{"key": 71, "outp')                  # killed while writing cell 72
    assert len(read_jsonl(p)) == 71 and read_jsonl(p).torn
    append_jsonl(p, [{"key": 71}])                                         # the rerun redoes cell 72
    r = read_jsonl(p, strict=True)
    assert [x["key"] for x in r] == list(range(72)) and not r.unreadable and not r.torn
    assert (tmp_path / "results.jsonl.torn").read_text() == '{"key": 71, "outp\n'


@pytest.fixture
def endpoint_gen(corpus):
    "A served model on loopback (answers at once) with the small BPE tokenizer: the needle grid without a model."
    with LoopbackJudge(respond=lambda msgs: "The best thing is to eat a sandwich.") as srv:
        client = OpenAIClient(srv.url, "served", api_key_env=None)
        yield EndpointGenerator(client, tokenizer=load_tokenizer(corpus / "tok"))


def test_needle_grid_after_a_torn_line_has_every_cell(endpoint_gen, tmp_path):
    hay = ". ".join(texts(40, words=30)) + "."
    cells = grid_cells([900, 1200], [0, 50, 100], ["single"])
    out = tmp_path / "r.jsonl"
    run_grid(endpoint_gen, cells[:3], hay, "chat", out, "m", progress=False)
    out.write_bytes(out.read_bytes()[:-40])                                # killed while writing the third result
    r = run_grid(endpoint_gen, cells, hay, "chat", out, "m", progress=False)
    rows = read_results(out)
    assert r["cells_run"] == 4 and len(rows) == 6 and len({x["key"] for x in rows}) == 6
    out.write_bytes(out.read_bytes() + b'{"key": "tor')  # torn again, then a rerun (--force) with every cell done
    r = run_grid(endpoint_gen, cells, hay, "chat", out, "m", progress=False)
    assert r["cells_run"] == 0 and out.read_bytes().endswith(b"}\n") and len(read_jsonl(out, strict=True)) == 6
    assert (tmp_path / "r.jsonl.torn").read_bytes().endswith(b'{"key": "tor\n')
    out.write_text(out.read_text().replace('"model": "m"', '"model: "m"', 1))  # a damaged line in the middle
    with pytest.raises(ValueError, match="r.jsonl: 1 unreadable line"): read_results(out)


def test_longbench_predictions_survive_a_torn_line(tmp_path, monkeypatch):
    class Gen:
        tok = None
        def generate(self, prompts): return [f"answer {i}" for i in range(len(prompts))]
    monkeypatch.setattr(lb, "case_prompt", lambda tok, c, n: [{"role": "user", "content": str(c["idx"])}])
    cases = [{"idx": i, "lang": "en"} for i in range(5)]
    out = tmp_path / "p.jsonl"
    lb.predict(Gen(), cases[:3], out, 100, batch_size=2)
    out.write_bytes(out.read_bytes()[:-10])
    got = lb.predict(Gen(), cases, out, 100, batch_size=2)
    assert [g["idx"] for g in got] == list(range(5)) and len(read_jsonl(out, strict=True)) == 5
    out.write_bytes(out.read_bytes() + b'{"idx": 9')  # torn again; nothing left to predict still cleans it
    lb.predict(Gen(), cases, out, 100, batch_size=2)
    assert out.read_bytes().endswith(b"}\n") and len(read_jsonl(out, strict=True)) == 5


def test_retraining_with_other_settings_keeps_the_finished_model_until_done(tmp_path):
    class Rand(torch.utils.data.Dataset):
        def __init__(self): self.x = torch.randint(0, 64, (16, 16), generator=torch.Generator().manual_seed(0))
        def __len__(self): return len(self.x)
        def __getitem__(self, i): return {"input_ids": self.x[i], "labels": self.x[i], "position_ids": torch.arange(16)}
    def cfg(lr):
        return TrainConfig(lr=lr, batch_tokens=32, micro_batch=2, max_tokens=32 * 6, save_steps=2, log_steps=2,
                           warmup_steps=0)
    def model(): return tiny_llama(64, hidden=16, layers=1, heads=2, max_pos=16)
    first = train_lm(model(), Rand(), tmp_path / "phase", cfg(3e-3))
    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3: raise KeyboardInterrupt("killed")
    with pytest.raises(KeyboardInterrupt): train_lm(model(), Rand(), tmp_path / "phase", cfg(1e-3), callbacks=[Kill()])
    assert json.loads((tmp_path / "phase" / TRAIN_LOG).read_text())["key"] == first["key"]
    assert (tmp_path / "phase" / "final" / "config.json").exists()          # the finished model is still there
    assert (tmp_path / ".phase.partial" / "checkpoint-2").exists()           # the new run's progress, beside it
    second = train_lm(model(), Rand(), tmp_path / "phase", cfg(1e-3))          # resumes from that checkpoint
    assert second["key"] != first["key"] and second["steps"] == 6
    assert json.loads((tmp_path / "phase" / TRAIN_LOG).read_text())["key"] == second["key"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["phase"]


# ---- the runner: typed parameters, one run per folder, upstream first, clear errors, user corpora ----

@pytest.mark.parametrize("override, says", [
    ("02.seq_len=abc", "stage 02_upsample: seq_len: 02.seq_len='abc' is a string; expected an integer"),
    ("02.seq_len=-5", "stage 02_upsample: seq_len: 02.seq_len=-5: must be at least 2"),
    ("seed=1.5", "stage 02_upsample: seed: 02.seed=1.5 is a number; expected an integer"),
    ("01.seed=__import__('os').system('touch x')",
     "stage 01_mixture: seed: 01.seed=\"__import__('os').system('touch x')\" is a string"),
    ("02.strategies=[original, gloabl]",
     "stage 02_upsample: strategies: 02.strategies=['original', 'gloabl']: unknown 'gloabl'; expected"),
    ("99.seed=1", "override 99.seed: there is no stage 99; the stages are ['01', '02', '03'"),
    ("02.seq_len=1e6", "02.seq_len='1e6' is a string; expected an integer"),
])
def test_bad_parameter_fails_before_any_work(tmp_path, override, says):
    rd = tmp_path / "r"
    (rd / "upsampled" / "original").mkdir(parents=True)
    (rd / "upsampled" / "original" / "index.json").write_text("{}")
    (rd / "manifest.json").write_text('{"stages": {}, "runs": []}')
    before = {p: p.read_bytes() for p in rd.rglob("*") if p.is_file()}
    r = longctx("run", "--run-dir", str(rd), "--stages", "01,02", "-p", override, check=False)
    assert r.returncode == 1 and says in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in rd.rglob("*") if p.is_file() and p.name != "runner.log"} == before


def test_bad_yaml_and_unusable_run_folder_are_one_clear_line(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("seed: !!python/object/apply:os.system ['touch x']\n")
    r = longctx("run", "--profile", str(bad), "--run-dir", str(tmp_path / "r"), check=False)
    assert r.returncode == 1 and "p.yaml: not a valid profile:" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    (tmp_path / "f").write_text("a file, not a folder")
    r = longctx("run", "--run-dir", str(tmp_path / "f" / "run"), "--stages", "01", check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr and str(tmp_path / "f") in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_second_run_into_the_same_folder_refuses(tmp_path):
    nbs, go, rd, prof = tmp_path / "nbs", tmp_path / "go", tmp_path / "run", tmp_path / "p.yaml"
    nbs.mkdir()
    prof.write_text("{}\n")
    wait = f"import time, pathlib\nwhile not pathlib.Path({str(go)!r}).exists(): time.sleep(0.1)"
    stage_nb(nbs / "01_wait.ipynb", wait)
    env = {**os.environ, "LONGCTX_NBS": str(nbs)}
    cmd = ["run", "--profile", str(prof), "--run-dir", str(rd)]
    first = subprocess.Popen([*LONGCTX, *cmd], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while not (rd / ".longctx.lock").exists() and time.time() - t0 < 60: time.sleep(0.1)
        second = longctx(*cmd, check=False, env=env)
        assert second.returncode == 1 and f"is in use by another longctx run (pid {first.pid}" in second.stderr
    finally:
        go.write_text("go")
        first.wait(120)
    assert first.returncode == 0 and not (rd / ".longctx.lock").exists()
    assert len(manifest(rd)["runs"]) == 1 and manifest(rd)["stages"]["01_wait"]["status"] == "completed"


def test_stage_refuses_to_read_an_unfinished_upstream(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    stage_nb(nbs / "01_up.ipynb", "raise KeyboardInterrupt('killed')")
    stage_nb(nbs / "02_down.ipynb", "from pathlib import Path\nPath(run_dir, 'down').write_text('ran')")
    with pytest.raises(UpstreamIncomplete, match="02_down reads the outputs of 01_up, which never ran here"):
        run({}, stages="02", run_dir=tmp_path / "run", nbs=nbs, progress=False)
    with pytest.raises(StageFailed): run({}, stages="01", run_dir=tmp_path / "run", nbs=nbs, progress=False)
    with pytest.raises(UpstreamIncomplete, match=r"which did not complete \(status: failed\); run stage 01 first"):
        run({}, stages="02", run_dir=tmp_path / "run", nbs=nbs, progress=False)
    assert not (tmp_path / "run" / "down").exists() and "02_down" not in manifest(tmp_path / "run")["stages"]


def _user_corpus(path, n_per_domain):
    recs = [doc_record(t, dom) for dom, n in n_per_domain.items() for t in texts(n, seed=len(dom), words=150)]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_user_corpus_without_validation_runs_01_02_and_an_edit_redoes_both(tmp_path):
    corpus, rd = tmp_path / "c.jsonl", tmp_path / "r"
    _user_corpus(corpus, {"RedPajamaBook": 12, "RedPajamaC4": 8})
    args = ["run", "--run-dir", str(rd), "--stages", "01,02", "-p", f"01.corpus={corpus}", "-p", "01.vocab_size=300",
            "-p", "02.token_budget=20000", "-p", "02.threshold=100", "-p", "02.seq_len=64"]
    longctx(*args)
    m = json.loads((rd / "01_mixture" / "metrics.json").read_text())
    split = m["validation_split"]["docs"]
    assert split == {"RedPajamaBook": {"train": 11, "validation": 1}, "RedPajamaC4": {"train": 7, "validation": 1}}
    assert m["domains"]["book"]["docs"] == 12                                # the statistics describe all of it
    assert json.loads((rd / "tokens" / "validation" / "meta.json").read_text())["n_docs"] == 2
    def keys():
        return (json.loads((rd / "tokenizer" / "longctx_key.json").read_text())["key"],
                json.loads((rd / "tokens" / "train" / "meta.json").read_text())["key"])
    k0, seqs = keys(), (rd / "upsampled" / "original" / "index.json").read_bytes()
    r = longctx(*args, "-p", "02.seq_len=abc", check=False)                  # a failing rerun keeps the good output
    assert r.returncode == 1 and (rd / "upsampled" / "original" / "index.json").read_bytes() == seqs
    _user_corpus(corpus, {"RedPajamaBook": 12, "RedPajamaC4": 30})           # the user corpus is edited
    r = longctx(*args)
    assert "skipped" not in r.stdout + r.stderr and keys()[0] != k0[0] and keys()[1] != k0[1]
    m = json.loads((rd / "01_mixture" / "metrics.json").read_text())
    assert m["domains"]["c4"]["docs"] == 30
    assert m["validation_split"]["docs"]["RedPajamaC4"] == {"train": 28, "validation": 2}
    r = longctx(*args)                                                       # unchanged: both skipped
    assert (r.stdout + r.stderr).count("completed earlier with the same parameters, skipped") == 2
    k1 = keys()
    longctx(*args, "-p", "seed=1")                                           # another seed: another split, all redone
    assert keys()[0] != k1[0] and keys()[1] != k1[1]


def test_a_pool_of_shards_is_what_stages_01_02_read_and_say_they_read(tmp_path):
    "SlimPajama's layout (chunk folders repeating file names): stage 01 picks half the shards, 02 tokenizes those alone."
    sp, val = tmp_path / "SlimPajama" / "train", tmp_path / "val.jsonl"
    for c in ("chunk1", "chunk2"):
        for k in range(4):  # equal shards: the same bytes of text, other words
            (sp / c).mkdir(parents=True, exist_ok=True)
            _user_corpus(sp / c / f"example_train_{k}.jsonl", {"RedPajamaBook": 3 + k % 2, "RedPajamaC4": 4 - k % 2})
    _user_corpus(val, {"RedPajamaBook": 2, "RedPajamaC4": 2})
    half = sum(f.stat().st_size for f in sp.rglob("*.jsonl")) / 4 / 2  # the estimated tokens of 4 of the 8 shards
    rd = tmp_path / "r"
    longctx("run", "--run-dir", str(rd), "--stages", "01,02", "-p", f"01.corpus={sp}", "-p", f"01.validation={val}",
            "-p", "01.vocab_size=300", "-p", f"01.pool_tokens={half * 0.99}", "-p", "02.token_budget=20000",
            "-p", "02.threshold=100", "-p", "02.seq_len=64", "-p", "02.strategies=[original]")
    train = json.loads((rd / "data.json").read_text())["train"]
    assert len(train) == 4 and sorted(Path(f).parent.name for f in train) == ["chunk1", "chunk1", "chunk2", "chunk2"]
    pool = json.loads((rd / "01_mixture" / "metrics.json").read_text())["pool"]
    assert (pool["files"], pool["of_files"], pool["fraction"]) == (4, 8, 0.5)
    docs = sum(sum(1 for _ in open(f)) for f in train)
    meta = json.loads((rd / "tokens" / "train" / "meta.json").read_text())
    assert meta["n_docs"] == docs == pool["docs_read"] and len(set(meta["parts"])) == 4  # same names, four parts
    assert meta["n_tokens"] == pool["tokens_read"]


def test_one_huge_document_through_01_02_in_bounded_memory(tmp_path):
    "Counting and storing the tokens of one long document streams it in slices (before: ~100 bytes of RAM per char)."
    rng = np.random.default_rng(0)
    text = " ".join(np.array(WORDS)[rng.integers(0, len(WORDS), size=4_600_000)].tolist())  # ~25 MB, one document
    big, val = tmp_path / "big.jsonl", tmp_path / "val.jsonl"
    big.write_text(json.dumps(doc_record(text, "RedPajamaBook")) + "\n")
    val.write_text("".join(json.dumps(doc_record(text[i:i + 5000], "RedPajamaBook")) + "\n" for i in (0, 5000, 10000)))
    del text
    measure = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")  # the kernels included
    params = {"01.corpus": big, "01.validation": val, "01.vocab_size": 300, "01.tokenizer_train_chars": 1000000,
              "02.token_budget": 100000, "02.seq_len": 256, "02.threshold": 1000}
    cmd = [*LONGCTX, "run", "--run-dir", str(tmp_path / "r"), "--stages", "01,02"]
    cmd += [x for k, v in params.items() for x in ("-p", f"{k}={v}")]
    r = subprocess.run([sys.executable, "-c", measure, *cmd], cwd=ROOT, capture_output=True, text=True)
    rc, peak_kib = map(int, r.stdout.split()[-2:])
    assert rc == 0, r.stderr[-3000:]
    assert peak_kib < 2 << 20, f"peak RSS {peak_kib >> 10} MiB"
    assert json.loads((tmp_path / "r" / "tokens" / "train" / "meta.json").read_text())["n_docs"] == 1


def _processes_naming(text: str) -> dict[int, str]:
    "The live processes (not zombies) whose command line contains `text`: pid -> command line."
    out = {}
    for p in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError: continue
        if text in cmd and state != "Z" and int(p.name) != os.getpid(): out[int(p.name)] = cmd
    return out


def test_ctrl_c_in_stage_06_stops_torchrun_and_its_workers(cpu_run, tmp_path):
    rd = copy_stages_01_02(cpu_run, tmp_path / "r")  # the job alone, 10^5 steps: it trains until stopped
    p = subprocess.Popen([*LONGCTX, "run", *CPU_ARGS, "--run-dir", str(rd), "--stages", "06", "--force",
                          "-p", "06.parity=null", "-p", "06.train_here=true",
                          "-p", "06.phases=[{seq_len: 256, sp_size: 1, steps: 100000}]"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    workers = lambda: [c for c in _processes_naming(str(rd)).values() if "longctx_nb.distributed" in c]
    t0 = time.time()  # torchrun and its two workers (each in a session of its own), training
    while len(workers()) < 3 or not (rd / "models" / "distributed" / "phase-0" / RUN_KEY).exists():
        assert p.poll() is None and time.time() - t0 < 300, p.communicate()[1][-3000:]
        time.sleep(0.2)
    time.sleep(2)
    os.killpg(p.pid, signal.SIGINT)  # a terminal's Ctrl-C: the runner's process group
    out, err = p.communicate(timeout=120)
    try:
        assert p.returncode == 130 and "interrupted (SIGINT)" in err, err[-2000:]
        t0 = time.time()
        while (left := _processes_naming(str(rd))) and time.time() - t0 < 30: time.sleep(0.5)
        assert not left, left  # no kernel, torchrun or worker left training into the run folder
        assert manifest(rd)["stages"]["06_distributed"]["status"] == "interrupted"
    finally:
        for pid in _processes_naming(str(rd)):
            with contextlib.suppress(ProcessLookupError): os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_ends_the_run_in_one_line_marks_the_stage_and_the_next_run_resumes(tmp_path, sig):
    nbs, go, rd, prof = tmp_path / "nbs", tmp_path / "go", tmp_path / "run", tmp_path / "p.yaml"
    nbs.mkdir()
    prof.write_text("{}\n")
    stage_nb(nbs / "01_done.ipynb", "from pathlib import Path\nPath(run_dir, 'done').write_text('1')")
    stage_nb(nbs / "02_wait.ipynb", f"import time, pathlib\npathlib.Path(run_dir, 'started').write_text('1')\n"
                                     f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.1)")
    env = {**os.environ, "LONGCTX_NBS": str(nbs)}
    cmd = ["run", "--profile", str(prof), "--run-dir", str(rd)]
    p = subprocess.Popen([*LONGCTX, *cmd], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    t0 = time.time()
    while not (rd / "started").exists() and time.time() - t0 < 120: time.sleep(0.1)
    if sig == signal.SIGINT: os.killpg(p.pid, sig)  # as a terminal's Ctrl-C: the runner and its kernel both get it
    else: p.send_signal(sig)  # as a scheduler's stop (the Slurm script's, on its time-limit warning): the runner only
    out, err = p.communicate(timeout=120)
    said = [l for l in err.splitlines() if l.startswith("longctx run:")]
    assert p.returncode == 128 + sig and len(said) == 1 and f"interrupted ({sig.name})" in said[0], err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "IPKernelApp" not in err, err[-2000:]
    st = manifest(rd)["stages"]
    assert (st["01_done"]["status"], st["02_wait"]["status"]) == ("completed", "interrupted")
    # what a killed build leaves: a half-built folder and a kernel's files; the next run removes them
    (rd / ".corpus.x1y2.new" / "part").mkdir(parents=True)
    for name in ("kernel-ipc-7", ".kernel-ipc-7", ".kernel.json"): (rd / "02_wait" / name).write_text("")
    go.write_text("go")
    r = longctx(*cmd, env=env)
    assert "01_done: completed earlier with the same parameters, skipped" in r.stdout + r.stderr
    assert "removed 4 leftover(s) of killed runs" in r.stdout + r.stderr
    assert manifest(rd)["stages"]["02_wait"]["status"] == "completed"
    assert not list(rd.rglob(".*.new")) and not [p for p in rd.glob("*/*") if "kernel" in p.name], list(rd.rglob("*"))
