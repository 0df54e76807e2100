"""Stage 04 (synthetic long instruction data): the whole workflow against a stub OpenAI-compatible server on
loopback (malformed answers, a 500, a timeout), de-duplication of planted near-duplicates, a generation killed
mid-way resuming from the cache, and the cpu run's records (the real local model) and stage 05 training on them."""
import json, random, re, signal, subprocess, sys, textwrap, time
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, manifest
from longctx_nb.corpus import Doc
from longctx_nb.dedup import Decontaminator, normalize_text
from longctx_nb.llm import LoopbackJudge, OpenAIClient
from longctx_nb.retrieval import build_index
from longctx_nb.synth import (FUNNEL, agent_records, backtranslation_records, candidate, filter_candidates, funnel,
                              self_instruct, user)
from longctx_nb.tokenizer import train_bpe

TOPICS = ["river", "glacier", "volcano", "harbour", "orchard", "comet", "library", "railway"]
SCHEMA = {"id", "method", "messages", "source_ids", "generator", "tokens"}


def topic_doc(i: int, topic: str) -> Doc:
    "A long document about one topic, with sentences a stub generator can quote."
    rng = random.Random(i)
    sents = [f"The {topic} {w} in the year {1800 + rng.randrange(200)} near the town of T{i}{k}." for k, w in
             enumerate(rng.choices(["changed", "grew", "was mapped", "was studied", "shaped the land"], k=60))]
    paras = ["\n".join(sents[j:j + 6]).replace("\n", " ") for j in range(0, 60, 6)]
    return Doc("\n\n".join(paras), "RedPajamaWikipedia", {"id": f"doc-{topic}"})


def stub_reply(messages: list[dict]) -> str:
    "What a well-behaved generator would say to each of stage 04's prompts (malformed on purpose for one topic)."
    text = messages[-1]["content"]
    topic = next((t for t in TOPICS if t in text), "thing")
    if "write five" in text:
        if topic == "comet":
            return "I like this text a lot."  # malformed: no numbered questions, even when asked again
        return "\n".join(f"{k}. When did the {topic} change, according to part {k} of the text?" for k in range(1, 6))
    if "Write one question about the topic" in text:
        return f"Question: How did the {topic} shape the towns around it over two centuries?"
    if text.startswith("Question:") and "Summarise, in a few sentences" in text:
        q = text.split("\n", 1)[0]
        chunk = text.split("Text:\n", 1)[1]
        if topic in q and topic in chunk:
            return f"The {topic} changed often; this part names {chunk.count('.')} events."
        return "IRRELEVANT"
    if "Using these notes, answer" in text:
        return f"Over two centuries the {topic} shaped the towns: it grew, changed and was mapped again and again."
    if "What instruction would make" in text:
        return f"Write a long encyclopedia article about the history of the {topic} and the towns near it."
    return f"According to the document, the {topic} changed several times over the years it describes."


@pytest.fixture(scope="module")
def pool_and_tok(tmp_path_factory):
    docs = [topic_doc(i, t) for i, t in enumerate(TOPICS)]
    tok = train_bpe([d.text for d in docs] * 2, tmp_path_factory.mktemp("tok"), vocab_size=600)
    return docs, tok


def run_workflow(client, docs, tok, seed=0):
    "All three methods at small sizes, as the stage notebook calls them."
    rng = lambda m: random.Random(f"{seed}-{m}")
    p = {"temperature": 0.7, "max_tokens": 64}
    cands = self_instruct(client, tok, docs, 4, 300, rng("si"), 1, **p)
    index = build_index("bm25", [d.text for d in docs])
    cands += agent_records(client, tok, docs, index, 3, 2, 120, 64, 40, rng("agent"), 1, 48, **p)
    cands += backtranslation_records(client, tok, docs, 3, [100, 200], 300, rng("bt"), 1, **p)
    return cands


def test_workflow_against_a_stub_server(pool_and_tok, tmp_path):
    docs, tok = pool_and_tok
    calls = {"n": 0}
    def reply(messages):
        calls["n"] += 1
        if calls["n"] == 3:
            time.sleep(1.5)  # one request outlives the client's timeout: the SDK sends it again
        return stub_reply(messages)
    with LoopbackJudge(fail_first=1, fail_code=500, respond=reply) as srv:  # the first request gets a 500
        client = OpenAIClient(srv.url, "stub", api_key_env=None, cache=tmp_path / "cache.jsonl", timeout=1.0,
                              max_retries=3, concurrency=4)
        cands = run_workflow(client, docs, tok)
        sent = len(srv.requests)
    assert all(r["body"]["temperature"] == 0.7 and r["body"]["max_tokens"] in (48, 64) for r in srv.requests)
    assert sent >= client.calls + 2                      # the 500 and the timed-out request were sent again
    by = pd.DataFrame([{"method": c["method"], "status": c["status"], "reason": c["reason"]} for c in cands])
    assert set(by[by.status == "valid"].method) == {"self_instruct", "agent", "backtranslation"}
    bad = by[by.status == "invalid"]
    assert not bad.empty and set(bad.reason) <= {"no numbered questions"}   # the comet document, recorded, not guessed
    for c in cands:
        if c["status"] == "valid":
            assert c["messages"][-1]["role"] == "assistant" and c["messages"][-1]["content"] and c["source_ids"]
    agent = [c for c in cands if c["method"] == "agent" and c["status"] == "valid"]
    assert all(len(c["source_ids"]) == 2 and c["audit"]["summaries"] and c["audit"]["retrieval"] for c in agent)
    assert any(s["level"] > 0 for c in agent for s in c["audit"]["summaries"])   # summaries condensed again
    assert any(not s["relevant"] for c in agent for s in c["audit"]["summaries"])  # irrelevant chunks dropped
    f = funnel(filter_candidates(cands, Decontaminator({"needle": "The best thing to do in San Francisco"})))
    assert f.loc["total", "generated"] == len(cands) and (f[FUNNEL].diff(axis=1).fillna(0) <= 0).all().all()
    assert client.usage["prompt_tokens"] > 0 and client.usage["completion_tokens"] > 0
    # a rerun is answered by the cache alone
    with LoopbackJudge(respond=stub_reply) as srv:
        again = OpenAIClient(srv.url, "stub", api_key_env=None, cache=tmp_path / "cache.jsonl")
        assert [c["id"] for c in run_workflow(again, docs, tok)] == [c["id"] for c in cands]
        assert srv.requests == [] and again.calls == 0


def test_planted_near_duplicates_are_removed():
    base = " ".join(f"The harbour grew in year {1800 + k} as ships came from port {k}." for k in range(40))
    q = "What does the document say about how the harbour grew over the years?"
    mk = lambda q, a, src="d1", m="self_instruct": candidate(m, [*user(f"{base}\n\n{q}"), {"role": "assistant",
                                                             "content": a}], [src], "g", question=q)
    cands = [mk(q, "It grew every year as ships came."),
             mk(q, "It grew every year, as ships came!"),                        # exact after normalisation
             mk(q + " Explain briefly.", "It grew every year as ships came."),   # near: same document, same question
             mk("Which port sent ships first to the harbour of the town?", "Port 0 did."),  # same document, new ask
             mk(q, "It grew every year as ships came.", src="d2", m="agent")]  # another method: the same text
    filter_candidates(cands, Decontaminator({}))
    assert [c["status"] for c in cands] == ["kept", "exact_duplicate", "near_duplicate", "kept", "exact_duplicate"]
    assert funnel(cands).loc["total"].tolist() == [5, 5, 3, 2, 2]


KILLED = textwrap.dedent("""
    import sys
    from longctx_nb.llm import OpenAIClient
    c = OpenAIClient(sys.argv[1], "stub", api_key_env=None, cache=sys.argv[2], concurrency=1)
    out = c.chat_many([[{"role": "user", "content": f"request {i}"}] for i in range(12)], max_tokens=8)
    print(len(out), c.calls)
""")


def test_killed_generation_resumes_from_the_cache(tmp_path):
    "A generation killed mid-way (SIGKILL) resumes: no request answered before the kill is sent again."
    script, cache = tmp_path / "gen.py", tmp_path / "cache.jsonl"
    script.write_text(KILLED)
    def slow(messages):
        time.sleep(0.2)
        return "ok " + messages[-1]["content"]
    with LoopbackJudge(respond=slow) as srv:
        p = subprocess.Popen([sys.executable, str(script), srv.url, str(cache)], cwd=ROOT)
        deadline = time.time() + 60
        while len(srv.requests) < 5 and time.time() < deadline:
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL)
        p.wait()
        first = [r["body"]["messages"][0]["content"] for r in srv.requests]
        answered = [json.loads(l)["key"] for l in cache.read_text().splitlines() if l.strip()]
        assert 3 <= len(answered) < 12
        srv.requests.clear()
        out = subprocess.run([sys.executable, str(script), srv.url, str(cache)], cwd=ROOT, capture_output=True,
                             text=True, check=True)
        second = [r["body"]["messages"][0]["content"] for r in srv.requests]
    assert out.stdout.split() == ["12", str(len(second))] and len(second) == 12 - len(answered)
    assert not set(second) & set(first[:len(answered)])     # what was answered before the kill was not asked again


def test_cpu_run_writes_long_records_of_every_method(cpu_run):
    lines = (cpu_run / "sft" / "long.jsonl").read_text().splitlines()
    recs = [json.loads(l) for l in lines]
    assert recs and all(set(r) == SCHEMA for r in recs)
    assert {r["method"] for r in recs} == {"self_instruct", "agent", "backtranslation"}
    assert all(r["messages"][-1]["role"] == "assistant" and r["tokens"] > 0 and r["source_ids"] for r in recs)
    texts = [normalize_text("\n".join(m["content"] for m in r["messages"])) for r in recs]
    assert len(set(texts)) == len(texts)
    f = pd.read_csv(cpu_run / "04_synth" / "tables" / "funnel.csv", index_col=0)
    assert f.loc["total", "after_decontamination"] == len(recs)
    assert (f.drop(index="total")[FUNNEL].sum() == f.loc["total", FUNNEL]).all()
    mix = [json.loads(l) for l in (cpu_run / "sft" / "mix.jsonl").read_text().splitlines()]
    assert {r["id"] for r in recs} <= {r["id"] for r in mix} and any(r["method"] == "short" for r in mix)
    gen = manifest(cpu_run)["stages"]["04_synth"]["models"]["generator"]
    assert gen["source"] == "registry" and len(gen["sha256"]) == 64


def test_stage_05_trains_on_stage_04(cpu_run):
    m = json.loads((cpu_run / "05_packing" / "metrics.json").read_text())
    mix = [json.loads(l) for l in (cpu_run / "sft" / "mix.jsonl").read_text().splitlines()]
    assert m["data_source"].startswith("stage 04") and sum(m["from_stage_04"].values()) == len(mix)
    assert m["samples"] + m["dropped_over_max_len"] == len(mix)


def test_dense_and_hybrid_retrieval_on_the_registry_model(pool_and_tok):
    "Dense retrieval (sentence-transformers on all-minilm-l6-v2, offline) and the hybrid find the topic's document."
    docs, _ = pool_and_tok
    texts = [d.text for d in docs]
    for kind in ("dense", "hybrid", "bm25"):
        hits = build_index(kind, texts).search("When was the glacier mapped near the towns?", 3)
        assert hits[0][0] == TOPICS.index("glacier"), (kind, hits)
    with pytest.raises(ValueError, match="bm25, dense or hybrid"):
        build_index("tfidf", texts)


def test_short_chats_from_a_local_jsonl(tmp_path):
    from longctx_nb.synth import load_short
    p = tmp_path / "chats.jsonl"
    chat = lambda i: [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
    p.write_text("".join(json.dumps({"messages": chat(i)}) + "\n" for i in range(5)))
    got = load_short(str(p), [], 3, seed=1)
    assert len(got) == 3 and all(g["source_ids"][0].startswith(str(p)) for g in got)
    p.write_text(p.read_text() + json.dumps({"text": "no messages"}) + "\n")
    with pytest.raises(ValueError, match="record 6 has no `messages`"):
        load_short(str(p), [], 3)
