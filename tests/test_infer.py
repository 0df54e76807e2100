"""Faster local inference on the real model: the `dtype` setting refused before work when unknown, bfloat16 and int8
answering as float32 does on the offline questions, and the suffix after a cached prefix (the split attention path)
giving a full prefill's last logits."""
import copy
from pathlib import Path

import pytest
import torch

from conftest import longctx
from longctx_nb import models as M
from longctx_nb import infer as I
from longctx_nb.infer import ATTN, CACHE_ARG, Int8Linear, model_cache
from longctx_nb.llm import HFGenerator
from longctx_nb.needle import build_context, load_haystack, render_prompt, variant_spec

SMOL = "smollm2-135m-instruct"
SPLIT = I.split_attention
PARIS = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smol_dir():
    return Path(M.resolve_model(SMOL).path)


def passkey_prompt(tok, key=71342, tokens=2000, depth=50):
    sp = variant_spec("passkey", key)
    return render_prompt("chat", build_context(tok, sp["filler"], tokens, depth, sp["needles"])["context"],
                         sp["question"])


def test_unknown_dtype_is_refused_before_work_naming_its_key(tmp_path):
    r = longctx("check", "--profile", "cpu", "--stages", "07", "-p", "07.models.smollm2.dtype=fp8", check=False)
    assert r.returncode != 0 and "07" in r.stderr and "models.smollm2.dtype='fp8'" in r.stderr, r.stderr[-2000:]
    r = longctx("run", "--profile", "cpu", "--run-dir", str(tmp_path / "run"), "--stages", "04",
                "-p", "04.generator.dtype=float16", check=False)
    assert r.returncode != 0 and "generator.dtype='float16'" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "run" / "04_synth").exists()  # nothing ran
    with pytest.raises(ValueError, match="dtype 'fp8'"):
        HFGenerator("/nonexistent", dtype="fp8")  # before the model loads


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_fast_dtypes_answer_paris_and_find_the_2k_passkey(smol_dir, dtype):
    gen = HFGenerator(smol_dir, batch_size=1, max_new_tokens=16, dtype=dtype)
    assert gen.dtype == "bfloat16" if dtype == "bfloat16" else gen.dtype.startswith("int8+")
    if dtype == "int8":
        assert sum(isinstance(m, Int8Linear) for m in gen.model.modules()) == 30 * 7 + 1  # every linear, lm_head too
    assert "Paris" in gen.generate([PARIS])[0]
    assert "71342" in gen.generate([passkey_prompt(gen.tok)])[0]


# tolerance relative to the largest logit: float32 rounding, and four bfloat16 steps (8 bits of mantissa)
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("bfloat16", 2 ** -5)])
def test_suffix_after_cached_prefix_gives_a_full_prefills_last_logits(smol_dir, dtype, tol, monkeypatch):
    split = []
    monkeypatch.setattr(I, "split_attention", lambda *a, **k: split.append(1) or SPLIT(*a, **k))
    gen = HFGenerator(smol_dir, batch_size=1, dtype=dtype)
    assert gen.model.config._attn_implementation == ATTN
    ids = gen.encode(passkey_prompt(gen.tok, tokens=600))
    full, *_ = gen.prefill_batch([ids])
    cut = len(ids) * 3 // 5
    with torch.no_grad():
        past = model_cache(gen.model(input_ids=torch.tensor([ids[:cut]]), use_cache=True))
        out = gen.model(input_ids=torch.tensor([ids[cut:]]), use_cache=True, **{CACHE_ARG: copy.deepcopy(past)},
                        position_ids=torch.arange(cut, len(ids))[None], logits_to_keep=1)
    assert len(split) == gen.model.config.num_hidden_layers  # every layer took the split path
    suffix = out.logits[:, -1].float()
    assert (suffix - full.float()).abs().max().item() <= tol * full.float().abs().max().item()
    assert suffix.argmax().item() == full.argmax().item()


def test_dynamic_ntk_reuses_a_prefix_only_where_it_holds(smol_dir, tmp_path):
    "A tiny random model with the real tokenizer and a 512-token window, dynamic NTK x2: reused = full prefill."
    from transformers import AutoTokenizer
    from longctx_nb.train import tiny_llama
    tok = AutoTokenizer.from_pretrained(smol_dir)
    tok.save_pretrained(tmp_path / "m")
    tiny_llama(len(tok), hidden=32, layers=1, heads=2, max_pos=512).save_pretrained(tmp_path / "m")
    rope, hay = {"method": "dynamic", "factor": 2}, load_haystack("paul_graham")
    reuse = HFGenerator(tmp_path / "m", max_new_tokens=4, reuse_prefix=True, rope=rope, dtype="float32")
    full = HFGenerator(tmp_path / "m", max_new_tokens=4, rope=rope, dtype="float32")  # 1e-4: float32's tolerance
    sp = variant_spec("single", 0)
    # beyond the window, then inside it: each pair shares its haystack up to the second needle
    ids = [reuse.encode(render_prompt("chat", build_context(reuse.tok, hay, n, d, sp["needles"])["context"],
                                      sp["question"])) for n, d in [(900, 80), (900, 40), (300, 80), (300, 40)]]
    for x in ids:
        a, *_ = reuse.prefill_reusing(x, 4)
        b, *_ = full.prefill_batch([x])
        assert (a - b).abs().max().item() < 1e-4
    assert reuse.stats["reused_tokens"] >= 0.3 * len(ids[3])  # the pair inside the window shares its prefix
