"""A run folder that never lies: keyed intermediates, replace-never-delete, torn logs, archives, locks, typed parameters."""
import json, os, shutil
from pathlib import Path

import numpy as np
import pytest

from longctx_nb.core import read_jsonl, append_jsonl
from longctx_nb.corpus import doc_record, write_shards
from longctx_nb.tokenizer import train_bpe
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


def test_token_store_is_rebuilt_when_its_tokenizer_changes(corpus, capsys):
    st = build_token_store(corpus / "c", corpus / "st", corpus / "tok", progress=False)
    assert build_token_store(corpus / "c", corpus / "st", corpus / "tok", progress=False).meta["key"] == st.meta["key"]
    assert "rebuilding" not in capsys.readouterr().out
    train_bpe(texts(20, seed=5), corpus / "tok", vocab_size=280)          # same path, other tokenizer
    st2 = build_token_store(corpus / "c", corpus / "st", corpus / "tok", progress=False)
    assert st2.meta["key"] != st.meta["key"] and st2.meta["vocab_size"] == 280
    assert "st: token store built from other data or another tokenizer; rebuilding it" in capsys.readouterr().out
    assert sorted(p.name for p in corpus.iterdir() if p.name.startswith(".")) == []


def test_token_store_edited_corpus_is_rebuilt_and_failed_rebuild_keeps_the_old(corpus, monkeypatch):
    st = build_token_store(corpus / "c", corpus / "st", corpus / "tok", progress=False)
    f = corpus / "c" / "s1-00000.jsonl"
    f.write_text(f.read_text() + json.dumps(doc_record("a new document about the fox", "RedPajamaBook")) + "\n")
    import longctx_nb.upsample as up
    real = up._tokenize_file
    def dying(path, *a, **k):
        if Path(path).name.startswith("s1"): raise KeyboardInterrupt("killed")
        return real(path, *a, **k)
    monkeypatch.setattr(up, "_tokenize_file", dying)
    with pytest.raises(KeyboardInterrupt): build_token_store(corpus / "c", corpus / "st", corpus / "tok", progress=False)
    assert TokenStore(corpus / "st").meta["key"] == st.meta["key"] and len(TokenStore(corpus / "st")) == 12
    part = corpus / ".st.partial"; done = {p: p.stat().st_mtime_ns for p in part.glob("*.docs.npy")}
    assert [p.name for p in done] == ["s0-00000_jsonl.docs.npy"]
    monkeypatch.setattr(up, "_tokenize_file", real)                     # resumed: the finished part is kept
    st2 = build_token_store(corpus / "c", corpus / "st", corpus / "tok", progress=False)
    assert len(st2) == 13 and st2.meta["key"] != st.meta["key"] and not part.exists()
    assert all((corpus / "st" / p.name).stat().st_mtime_ns == t for p, t in done.items())


def test_failed_sequence_rewrite_keeps_the_previous_sequences(corpus):
    st = build_token_store(corpus / "c", corpus / "st", corpus / "tok", progress=False)
    plan = [(i, int(st.docs["length"][i])) for i in range(len(st))]
    ix = write_sequences(st, plan, corpus / "up" / "original", 16, 4, progress=False)
    with pytest.raises(TypeError): write_sequences(st, plan, corpus / "up" / "original", "abc", 4, progress=False)
    with pytest.raises(IndexError): write_sequences(st, plan + [(999, 3)], corpus / "up" / "original", 16, 4, progress=False)
    assert SequenceDataset(corpus / "up" / "original").index == ix and os.listdir(corpus / "up") == ["original"]


def test_torn_result_line_is_quarantined_not_glued(tmp_path):
    p = tmp_path / "results.jsonl"
    append_jsonl(p, [{"key": k} for k in range(71)])
    with open(p, "ab") as f: f.write(b'{"key": 71, "outp')                  # killed while writing cell 72
    assert len(read_jsonl(p)) == 71 and read_jsonl(p).torn
    append_jsonl(p, [{"key": 71}])                                         # the rerun redoes cell 72
    r = read_jsonl(p, strict=True)
    assert [x["key"] for x in r] == list(range(72)) and not r.unreadable and not r.torn
    assert (tmp_path / "results.jsonl.torn").read_text() == '{"key": 71, "outp\n'
