"""Stage 02 on the cpu run: strategy invariants on real data, lossless chunking, determinism, atomicity, resume."""
import json, os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import CPU_ARGS, copy_stages_01_02, longctx
from longctx_nb.core import stable_hash
from longctx_nb.upsample import (TokenStore, SequenceDataset, build_token_store, domain_profile, plan_sample,
                                 realised, strategy_targets, write_sequences)


@pytest.fixture(scope="module")
def mix(cpu_run):
    return pd.read_csv(cpu_run / "02_upsample" / "tables" / "realised_vs_target.csv")


def test_original_and_per_source_keep_every_domain_share(mix):
    for s in ("original", "per_source"):
        m = mix[mix.strategy == s]
        assert ((m.share - m.source_share).abs() < 0.005).all(), m[["domain", "share", "source_share"]]


def test_per_source_meets_long_share_where_data_allows(mix):
    m = mix[mix.strategy == "per_source"]
    has_long = m.source_long_share > 0
    assert ((m[has_long].long_share - 0.7).abs() < 0.02).all(), m[["domain", "long_share"]]
    assert (m[~has_long].note == "no documents over the threshold").all() and (m[~has_long].long_share == 0).all()


def test_global_and_upsample_domain_change_the_mix(mix):
    for s in ("global", "upsample_domain"):
        m = mix[mix.strategy == s]
        assert (m.share - m.source_share).abs().max() > 0.01, s
    up = mix[mix.strategy == "upsample_domain"].set_index("domain")
    assert (up.loc[["book", "github", "arxiv"], "share"] > 2 * up.loc[["book", "github", "arxiv"], "source_share"]).all()
    g = mix[mix.strategy == "global"]
    overall = (g.share * g.long_share).sum()
    assert abs(overall - 0.7) < 0.01


def test_sequences_are_the_planned_documents_joined_by_eos(cpu_run, tmp_path):
    store = TokenStore(cpu_run / "tokens" / "train")
    for s in ("per_source", "global"):
        ds = SequenceDataset(cpu_run / "upsampled" / s)
        assert len(ds) == ds.index["n_seqs"] and all(len(ds[i]) == 2048 for i in (0, len(ds) - 1))
    # rebuild one plan here: the same seed gives the bytes the notebook wrote, and nothing is lost
    prof = domain_profile(store, 16384)
    plan = plan_sample(store, strategy_targets("per_source", prof, 4_000_000, 0.7), 16384, seed=0)
    ix = write_sequences(store, plan, tmp_path / "ps", 2048, 256, seed=0, progress=False)
    metrics = json.loads((cpu_run / "02_upsample" / "metrics.json").read_text())
    assert [s["sha256"] for s in ix["shards"]] == metrics["strategies"]["per_source"]["shard_sha256"]
    order = sorted(range(len(plan)), key=lambda k: stable_hash(0, "order", k))
    eos = store.meta["eos_id"]
    expect = np.concatenate([np.append(store.ids(plan[k][0])[:plan[k][1]], eos) for k in order])
    got = np.concatenate([SequenceDataset(tmp_path / "ps")[i] for i in range(ix["n_seqs"])])
    assert len(expect) == len(got) + ix["dropped_tail_tokens"] and np.array_equal(expect[:len(got)], got)
    assert sum(n for _, n in plan) == 4_000_000


def test_killed_chunking_leaves_nothing_readable(cpu_run, tmp_path):
    store = TokenStore(cpu_run / "tokens" / "train")
    plan = [(i, int(store.docs["length"][i])) for i in range(200)]
    calls = {"n": 0}; ids = store.ids
    def dying(i):
        calls["n"] += 1
        if calls["n"] > 100: raise KeyboardInterrupt("killed")
        return ids(i)
    store.ids = dying
    with pytest.raises(KeyboardInterrupt): write_sequences(store, plan, tmp_path / "out", 256, 8, progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError): SequenceDataset(tmp_path / "out.partial")


def test_token_store_resumes_unfinished_parts_only(cpu_run, tmp_path):
    data = json.loads((cpu_run / "data.json").read_text())
    files = sorted(Path(data["validation"]).glob("*.jsonl"))[:3]
    st = build_token_store(files, tmp_path / "st", data["tokenizer"], progress=False)
    parts = sorted((tmp_path / "st").glob("*.docs.npy"))
    kept = {p: p.stat().st_mtime_ns for p in parts[:2]}
    (tmp_path / "st" / "meta.json").unlink(); parts[2].unlink()           # a run killed before the last part
    st2 = build_token_store(files, tmp_path / "st", data["tokenizer"], progress=False)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept and parts[2].exists()
    assert st2.meta["n_tokens"] == st.meta["n_tokens"] and np.array_equal(st2.docs, st.docs)


def test_a_partial_rerun_of_stage_02_marks_the_sequences_it_no_longer_writes(cpu_run, tmp_path):
    rd = copy_stages_01_02(cpu_run, tmp_path / "r")  # rerun with one strategy at another length
    others = [s for s in ("per_source", "global", "upsample_domain") if (rd / "upsampled" / s / "index.json").exists()]
    assert others
    args = ("-p", "02.strategies=[original]", "-p", "02.seq_len=1024")
    r = longctx("run", *CPU_ARGS, "--run-dir", str(rd), "--stages", "02", *args)
    for s in others: assert f"02_upsample: marked upsampled/{s} stale: this run did not write it" in r.stdout + r.stderr
    assert SequenceDataset(rd / "upsampled" / "original").index["seq_len"] == 1024
    for s in others:
        with pytest.raises(ValueError, match=f"2048-token '{s}' sequences are from an earlier run"):
            SequenceDataset(rd / "upsampled" / s)  # what stage 03 or 06 reads, even run by hand without a check
    r = longctx("run", *CPU_ARGS, "--run-dir", str(rd), "--stages", "03", "-p", f"03.strategies=[{others[0]}]", *args,
                check=False)
    assert r.returncode == 1 and "stage 02 last ran with strategies ['original'] at seq_len 1024" in r.stderr
    assert not (rd / "03_extend").exists()
