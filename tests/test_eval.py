"""Evaluation (stages 07 and 08): the judge path against a real HTTP server on loopback, the needle grid's
construction and resume, the scorers, batched generation, and LongBench-Chat end to end on an official-format
fixture."""
import json, os
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import ROOT, SMOLLM2_VARIANTS, manifest
from longctx_nb.llm import (EndpointError, EndpointGenerator, HFGenerator, LoopbackJudge, OpenAIClient, parse_score,
                            REF_TAG, ANS_TAG)
from longctx_nb.longbench_chat import load_cases, load_few_shots, predict, judge_all, judge_case, summarize
from longctx_nb.needle import (NEEDLE, build_context, context_lengths, depth_percents, grid_cells, load_haystack,
                               read_results, run_grid, rouge1_f, word_recall, contains, exact, keys_found)
from longctx_nb.infer import resolve_dtype
from longctx_nb.tokenizer import train_bpe
from longctx_nb.train import tiny_llama

FIXTURE = Path(__file__).parent / "fixtures" / "longbench_chat"
SECRET = "sk-longctx-test-4f1c9a"


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    "A tiny random Llama saved with a BPE tokenizer trained on Paul Graham's essays: a real local HF path."
    d = tmp_path_factory.mktemp("model")
    hay = load_haystack("paul_graham")
    tok = train_bpe([hay[i:i + 4000] for i in range(0, 400_000, 4000)], d, vocab_size=1024)
    tiny_llama(len(tok), hidden=32, layers=2, heads=2, max_pos=4096).save_pretrained(d)
    return d, hay


def test_judge_path_over_loopback_http(tmp_path, monkeypatch):
    "Key sent as a bearer token and never written; 429s retried with backoff; a rerun answers from the cache."
    monkeypatch.setenv("LONGCTX_JUDGE_KEY", SECRET)
    cases = load_cases(FIXTURE / "test_cases.json"); shots = load_few_shots(FIXTURE / "few_shots.json", cases)
    preds = [{"idx": c["idx"], "lang": c["lang"], "prediction": p} for c, p in zip(cases, [cases[0]["answer"], "no idea", "牛顿"])]
    with LoopbackJudge(api_key=SECRET, fail_first=2, fail_code=429) as srv:
        client = OpenAIClient(srv.url, "judge", api_key_env="LONGCTX_JUDGE_KEY", cache=tmp_path / "cache.jsonl")
        js = judge_all(client, cases, preds, tmp_path / "judgments.jsonl", shots)
        assert len(srv.requests) == 2 + len(cases) and client.calls == len(cases)  # the SDK retried the 429s
        assert all(r["authorization"] == f"Bearer {SECRET}" for r in srv.requests)
        sent = srv.requests[-1]["body"]["messages"][1]["content"]
        assert "[[10]]" in sent and cases[-1]["query"] in sent                     # few-shot examples and question sent
        # resume: the judgments file answers everything; a new file still costs no request (response cache)
        again = OpenAIClient(srv.url, "judge", api_key_env="LONGCTX_JUDGE_KEY", cache=tmp_path / "cache.jsonl")
        assert judge_all(again, cases, preds, tmp_path / "judgments.jsonl", shots) == js
        assert [j["score"] for j in judge_all(again, cases, preds, tmp_path / "other.jsonl", shots)] == [j["score"] for j in js]
        assert again.calls == 0 and len(srv.requests) == 2 + len(cases)
    assert js[0]["score"] == 10 and js[1]["score"] == 1                            # the stand-in's overlap rule
    s = summarize(js)
    assert s["by_lang"].keys() == {"en", "zh"} and s["n"] == 3 and s["unscored"] == 0
    for f in tmp_path.rglob("*"):
        if f.is_file(): assert SECRET not in f.read_text(encoding="utf-8"), f


def test_client_errors_are_clear_and_scrubbed(monkeypatch):
    monkeypatch.setenv("LONGCTX_JUDGE_KEY", SECRET)
    echo = lambda msgs: "unused"
    with LoopbackJudge(api_key="another-key", respond=echo) as srv:          # 401: a client error, not retried
        c = OpenAIClient(srv.url, "judge", api_key_env="LONGCTX_JUDGE_KEY")
        with pytest.raises(EndpointError, match="401"): c.chat([{"role": "user", "content": "hi"}])
        assert len(srv.requests) == 1
    with LoopbackJudge(fail_first=100, fail_code=503) as srv:                  # always failing: bounded retries
        c = OpenAIClient(srv.url, "judge", api_key_env="LONGCTX_JUDGE_KEY", max_retries=2)
        with pytest.raises(EndpointError, match="after 3 attempts") as e: c.chat([{"role": "user", "content": "hi"}])
        assert len(srv.requests) == 3 and SECRET not in str(e.value)
    assert SECRET not in repr(c)


def test_unparsable_scores_are_asked_again():
    replies = iter(["I think [[85]]", "no score at all", "fine. [[6]]"])
    with LoopbackJudge(respond=lambda m: next(replies)) as srv:
        c = OpenAIClient(srv.url, "judge", api_key_env=None)
        j = judge_case(c, {"query": "q", "answer": "a"}, "a", retries=3)
    assert j["score"] == 6 and j["attempts"] == 3 and parse_score("[[0]]") is None


def test_fixture_loader_names_the_bad_entry(tmp_path):
    bad = tmp_path / "cases.jsonl"
    bad.write_text(json.dumps({"idx": 1, "prompt": "p", "query": "q", "answer": "a"}) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"cases.jsonl:2"): load_cases(bad)
    bad.write_text(json.dumps([{"idx": 1, "prompt": "p", "answer": "a"}]))
    with pytest.raises(ValueError, match=r"lacks \['query'\]"): load_cases(bad)
    with pytest.raises(ValueError, match="no few-shot entry"):
        load_few_shots(FIXTURE / "few_shots.json", [{"idx": 9, "prompt": "", "query": "", "answer": ""}])


def test_scorers_on_known_strings():
    out = "Eat a sandwich and sit in Dolores Park on a sunny day."
    assert contains(out, "sit in Dolores Park") == 1 and contains("Dolores", "Dolores Park") == 0
    assert exact("dolores park.", "The Dolores Park") == 1
    assert word_recall(out, NEEDLE) == 10 / 17 and word_recall(NEEDLE, NEEDLE) == 1
    assert rouge1_f(NEEDLE, NEEDLE) == 1 and 0 < rouge1_f(out, NEEDLE) < 1
    assert keys_found("The pass key is 52394.", ["52394"]) == 1 and keys_found("5239", ["52394"]) == 0


def test_needle_sits_at_the_requested_depth_in_real_essays(small_model):
    d, hay = small_model
    from longctx_nb.tokenizer import load_tokenizer
    tok = load_tokenizer(d)
    for L in (500, 3000):
        for depth in depth_percents({"n": 5, "spacing": "sigmoid"}):
            c = build_context(tok, hay, L, depth, [NEEDLE])
            at = c["char_starts"][0]; ctx = c["context"]
            assert ctx.count(NEEDLE) == 1 and abs(c["tokens"] - L) <= 8
            before = ctx[:at].rstrip()
            assert at == 0 or before.endswith((".", "!", "?", '"', ")")) or "\n\n" in ctx[at - 40:at] or at == len(ctx) - len(NEEDLE)
            # no more than one sentence early: the text between the target and the needle holds no sentence end
            assert c["depths"][0] <= depth + 1e-9
            gap_chars = int(len(ctx) * (depth - c["depths"][0]) / 100)
            assert gap_chars < 1200, (L, depth, c["depths"])


def test_batched_generation_matches_one_by_one(small_model):
    d, hay = small_model
    g = HFGenerator(d, batch_size=3, max_new_tokens=8)
    prompts = [hay[:300], hay[1000:1100], [{"role": "user", "content": hay[2000:2600]}], hay[5000:5040]]
    batched = g.generate(prompts)
    g.batch_size = 1
    assert batched == g.generate(prompts)                               # left padding changes nothing
    assert g.stats["prefill_tokens"] > 0 and g.stats["prefill_s"] > 0


def test_grid_resumes_after_a_crash(small_model, tmp_path):
    d, hay = small_model
    g = HFGenerator(d, batch_size=8, max_new_tokens=4)
    cells = grid_cells(context_lengths([300, 600, 900]), depth_percents({"n": 4}), ["single", "passkey"])
    real, seen = g.generate, []
    def crashing(prompts, **kw):
        if len(seen) == 3: raise RuntimeError("node lost")
        seen.append(len(prompts)); return real(prompts, **kw)
    g.generate = crashing
    out = tmp_path / "r.jsonl"
    with pytest.raises(RuntimeError): run_grid(g, cells, hay, "story", out, "m", progress=False)
    first = read_results(out); assert len(first) == 12                   # three groups of 4 depths survived
    g.generate = lambda prompts, **kw: (seen.append(len(prompts)), real(prompts, **kw))[1]
    r = run_grid(g, cells, hay, "story", out, "m", progress=False)
    rows = read_results(out)
    assert r["cells_run"] == 12 and r["cells_skipped"] == 12 and len(rows) == 24
    assert len({x["key"] for x in rows}) == 24 and rows[:12] == first    # nothing redone, nothing lost
    assert run_grid(g, cells, hay, "story", out, "m", progress=False)["cells_run"] == 0


def test_endpoint_model_through_the_same_grid(small_model, tmp_path):
    "A served model (OpenAI-compatible) runs the same grid; its outputs are scored like local ones."
    d, hay = small_model
    from longctx_nb.tokenizer import load_tokenizer
    answer = lambda msgs: "Eat a sandwich and sit in Dolores Park on a sunny day."
    with LoopbackJudge(respond=answer) as srv:
        gen = EndpointGenerator(OpenAIClient(srv.url, "served", api_key_env=None), tokenizer=load_tokenizer(d))
        run_grid(gen, grid_cells([400], [0, 50, 100], ["single"]), hay, "chat", tmp_path / "e.jsonl", "served", progress=False)
        sent = srv.requests[0]["body"]["messages"]
    rows = read_results(tmp_path / "e.jsonl")
    assert [r["word_recall"] for r in rows] == [10 / 17] * 3 and sent[0]["role"] == "system" and NEEDLE in sent[1]["content"]


def resolve_dtype_name() -> str:
    "What `dtype: auto` gives on this machine, as the manifest writes it."
    return str(resolve_dtype("auto")[0]).removeprefix("torch.")


def test_cpu_profile_puts_smollm2_on_5_depths_by_4_lengths_past_its_window():
    "`make run`'s grid for SmolLM2 (the tests run it at 3 lengths inside the window): every RoPE variant crosses 8K."
    models = yaml.safe_load((ROOT / "longctx_nb" / "profiles" / "cpu.yaml").read_text())["stages"]["07"]["models"]
    for name in SMOLLM2_VARIANTS:
        spec = models[name]
        assert len(spec["depths"]) >= 5 and len(spec["lengths"]) >= 4 and max(spec["lengths"]) > 8192, name
        assert spec["reuse_prefix"] and spec["path"] == "smollm2-135m-instruct"
    assert models["smollm2-yarn2"]["rope"] == {"method": "yarn", "factor": 2}
    smol = yaml.safe_load((ROOT / "longctx_nb" / "profiles" / "smol.yaml").read_text())["stages"]["07"]["models"]
    assert {m.get("rope", {}).get("method") for m in smol.values()} >= {"yarn", "dynamic"}  # dynamic NTK: smol's grid


def test_eval_stages_in_the_cpu_run(cpu_run):
    m7 = json.loads((cpu_run / "07_needle" / "metrics.json").read_text())
    for name, n in m7["grid"].items():
        assert len(read_results(cpu_run / "07_needle" / "results" / f"{name}.jsonl")) == n
        assert m7["speed"][name]["cells_per_s"] > 0
    figs = {p.name for p in (cpu_run / "07_needle" / "figures").glob("*.png")}
    assert {"needle_per_source_single.png", "needle_sft-packing_single.png", "needle_smollm2_single.png"} <= figs
    cells = pd.read_csv(cpu_run / "07_needle" / "tables" / "cells.csv")
    smol = cells[cells.model == "smollm2"]
    mid = smol[(smol.length == 2048) & (smol.depth == 50)]
    assert mid.answer_recall.iloc[0] >= 0.8, "the real model finds the needle inside its window"
    assert sorted(smol.depth.unique()) == [0, 50, 100] and sorted(smol.length.unique()) == [512, 1024, 2048]
    # the same prompts in the same order: YaRN reuses prefixes exactly as the as-is model does
    share = {k: m7["speed"][k]["reused_token_share"] for k in SMOLLM2_VARIANTS}
    assert share["smollm2"] > 0.2 and share["smollm2-yarn2"] == share["smollm2"], share
    src = manifest(cpu_run)["stages"]["07_needle"]["models"]
    assert src["smollm2"]["source"] == "registry" and src["smollm2"]["dtype"] == resolve_dtype_name()
    assert src["per_source"] == {"source": "run", "path": "models/per_source/phase-0/final", "dtype": resolve_dtype_name()}
    assert src["smollm2-yarn2"]["rope"] == {"method": "yarn", "factor": 2}
    m8 = json.loads((cpu_run / "08_longbench_chat" / "metrics.json").read_text())
    for name in ("sft-packing", "smollm2"):
        s = m8["models"][name]
        assert s["n"] == m8["cases"] and s["unscored"] == 0 and 1 <= s["mean"] <= 10
    assert m8["judge_calls"]["judge"] >= m8["cases"]
    assert (cpu_run / "08_longbench_chat" / "figures" / "scores.png").exists()
