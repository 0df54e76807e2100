"""Stage 06: the one trainer under 2 gloo processes (ZeRO-3, Ulysses SP=2) against one process, loss and gradients
(SGD: weight change = lr x gradient), and the traps pinned: DeepSpeed silently off, SP under ZeRO-1/2, packed
samples leaking under SP, a rank with no targets, uneven masks under accumulation, chunked loss and tiled MLP."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from longctx_nb.batching import collate
from longctx_nb.distributed import launch
from longctx_nb.parallel import ds_config, Layout, plan_memory, max_seq_len, SHAPES
from longctx_nb.train import TrainConfig, check_parallel, chunked_lm_loss, tile_mlp, tiny_llama, train_lm, weighted_lm_loss

V = 97


def job(tmp, name, train, phases, data, nproc):
    spec = {"model": {"tiny": {"vocab_size": V, "hidden": 32, "layers": 2, "heads": 4, "max_pos": 512, "seed": 0}},
            "data": data, "train": {"lr": 0.05, "warmup_steps": 0, "log_steps": 1, "save_steps": 1000, "optim": "sgd",
                                    "grad_clip": 0.0, "sampling": "sequential", "micro_batch": 1, **train},
            "phases": phases, "out": str(tmp / name)}
    p = tmp / f"{name}.json"; p.write_text(json.dumps(spec)); return p, spec


def weights(spec, k):
    return load_file(Path(spec["out"]) / f"phase-{k}" / "final" / "model.safetensors")


def max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def losses(log):
    return [h["loss"] for h in log["history"] if "loss" in h]


@pytest.fixture(scope="module")
def ds_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("ds") / "zero3.json"; p.write_text(json.dumps(ds_config(3, bf16=False))); return str(p)


def packed_samples(n=12, seed=0):
    "SFT-like samples: prompts unlabelled, answers labelled; every fourth is all prompt after position 8."
    g = torch.Generator().manual_seed(seed); out = []
    for i in range(n):
        L = int(torch.randint(20, 120, (1,), generator=g)); ids = torch.randint(1, V, (L,), generator=g).tolist()
        lab = [-100] * (L // 2) + ids[L // 2:]
        out.append({"input_ids": ids, "labels": lab})
    return out


def test_zero3_two_processes_equal_one(tmp_path, ds_file):
    data = {"kind": "random", "n": 16, "seed": 1}
    p2, s2 = job(tmp_path, "z3", {"deepspeed": ds_file, "grad_checkpointing": True}, [{"seq_len": 64, "steps": 4}], data, 2)
    p1, s1 = job(tmp_path, "one", {"micro_batch": 2}, [{"seq_len": 64, "steps": 4}], data, 1)
    (l2,), (l1,) = launch(p2, "torchrun", 2), launch(p1, "python", 1)
    assert l2["deepspeed"] and l2["world"] == 2, "DeepSpeed must really be on (use_cpu=True turns it off silently)"
    assert max(abs(a - b) for a, b in zip(losses(l2), losses(l1))) < 1e-5 and len(losses(l2)) == 4
    w0 = tiny_llama(V, hidden=32, layers=2, heads=4, max_pos=512, seed=0).state_dict()
    d = max_diff(weights(s2, 0), weights(s1, 0)); moved = max_diff(weights(s1, 0), {k: v for k, v in w0.items() if k in weights(s1, 0)})
    assert d < 1e-6 and moved > 1e-3, (d, moved)   # equal gradients (SGD), and training did move the weights


@pytest.mark.parametrize("launcher", ["deepspeed", "accelerate"])
def test_other_launchers_run_the_same_job(tmp_path, ds_file, launcher):
    "The generated deepspeed / accelerate commands run the same job with DeepSpeed on, to the same losses."
    data = {"kind": "random", "n": 8, "seed": 1}
    p2, s2 = job(tmp_path, launcher, {"deepspeed": ds_file}, [{"seq_len": 64, "steps": 2}], data, 2)
    p1, s1 = job(tmp_path, "one", {"micro_batch": 2}, [{"seq_len": 64, "steps": 2}], data, 1)
    (l2,), (l1,) = launch(p2, launcher, 2), launch(p1, "python", 1)
    assert l2["deepspeed"] and l2["world"] == 2
    assert max(abs(a - b) for a, b in zip(losses(l2), losses(l1))) < 1e-5 and max_diff(weights(s2, 0), weights(s1, 0)) < 1e-6


def test_ulysses_sp2_packed_equals_one_process(tmp_path, ds_file):
    """Packed SFT rows with LongAlign weights, a shard with no targets, checkpointing, and ALST's other savers (the loss
    in chunks of each shard, a tiled MLP): SP=2 equals one process computing the plain loss.
    Without `packed_sdpa_bound` this fails (loss off by ~3e-3): Ulysses calls SDPA causally over the whole row."""
    samples = packed_samples()
    ids = torch.randint(1, V, (240,), generator=torch.Generator().manual_seed(5)).tolist()
    samples[0] = {"input_ids": ids, "labels": ids[:60] + [-100] * 180}   # packed alone: SP rank 1's half has no targets
    sp = tmp_path / "samples.json"; sp.write_text(json.dumps({"samples": samples}))
    data = {"kind": "packed", "path": str(sp), "seed": 0}
    savers = {"grad_checkpointing": True, "loss_chunk": 37, "tiled_mlp": 2}
    p2, s2 = job(tmp_path, "sp", {"deepspeed": ds_file, "sp_size": 2, **savers}, [{"seq_len": 256, "steps": 6}], data, 2)
    p1, s1 = job(tmp_path, "one", {}, [{"seq_len": 256, "steps": 6}], data, 1)
    (l2,), (l1,) = launch(p2, "torchrun", 2), launch(p1, "python", 1)
    assert l2["deepspeed"] and l2["config"]["sp_size"] == 2 and l2["config"]["loss_chunk"] == 37
    assert max(abs(a - b) for a, b in zip(losses(l2), losses(l1))) < 1e-5, (losses(l2), losses(l1))
    assert max_diff(weights(s2, 0), weights(s1, 0)) < 1e-6


def test_one_process_reference_isolates_packed_samples():
    "The reference the SP test compares with is itself isolated: a pack's loss is the sum of its samples' alone."
    torch.manual_seed(0); m = tiny_llama(V, hidden=32, layers=2, heads=4, max_pos=512)
    s = packed_samples(4)
    packed = weighted_lm_loss(m, collate(s, [[0, 1, 2, 3]]))
    alone = sum(weighted_lm_loss(m, collate(s, [[i]])) for i in range(4)) / 4
    assert abs(packed.item() - alone.item()) < 1e-5


def test_refused_layouts(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    m = tiny_llama(V, hidden=32, layers=1, heads=4, max_pos=64)
    z2 = tmp_path / "z2.json"; z2.write_text(json.dumps(ds_config(2)))
    with pytest.raises(ValueError, match="sp_size times too large"): check_parallel(TrainConfig(sp_size=2, deepspeed=str(z2), micro_batch=1), m)
    z3 = tmp_path / "z3.json"; z3.write_text(json.dumps(ds_config(3)))
    with pytest.raises(ValueError, match="micro_batch=1"): check_parallel(TrainConfig(sp_size=2, deepspeed=str(z3), micro_batch=2), m)
    with pytest.raises(ValueError, match="not divisible"): check_parallel(TrainConfig(sp_size=3, deepspeed=str(z3), micro_batch=1), m)
    m.config._attn_implementation = "eager"
    with pytest.raises(ValueError, match="no Ulysses path"): check_parallel(TrainConfig(sp_size=2, deepspeed=str(z3), micro_batch=1), m)
    m.config._attn_implementation = "sdpa"
    with pytest.raises(ValueError, match="eval mode"): check_parallel(TrainConfig(sp_size=2, deepspeed=str(z3), micro_batch=1), m, evaluating=True)
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="not a multiple"): check_parallel(TrainConfig(sp_size=2, deepspeed=str(z3), micro_batch=1), m)


def test_accumulation_with_uneven_masks_weights_tokens(tmp_path):
    "Two micro-batches with 60 and 5 targets accumulate to the token mean of both, not the mean of their means."
    g = torch.Generator().manual_seed(0)
    rows = []
    for keep in (60, 5):
        x = torch.randint(1, V, (64,), generator=g); lab = x.clone(); lab[:64 - keep] = -100
        rows.append({"input_ids": x, "labels": lab, "position_ids": torch.arange(64)})
    out = {}
    for name, mb in (("accum", 1), ("one", 2)):
        cfg = TrainConfig(lr=0.05, optim="sgd", warmup_steps=0, micro_batch=mb, batch_tokens=128, max_tokens=128, grad_clip=0.0,
                          sampling="sequential", save_steps=1000, log_steps=1)
        train_lm(tiny_llama(V, hidden=32, layers=1, heads=4, max_pos=64), rows, tmp_path / name, cfg)
        out[name] = load_file(tmp_path / name / "final" / "model.safetensors")
    assert max_diff(out["accum"], out["one"]) < 1e-6


def test_chunked_loss_and_tiled_mlp_are_exact():
    torch.manual_seed(0); m = tiny_llama(V, hidden=32, layers=2, heads=4, max_pos=256)
    b = collate(packed_samples(5), [[0, 1, 2], [3, 4]])
    def lg(fn):
        m.zero_grad(); l = fn(); l.backward(); return l.item(), torch.cat([p.grad.flatten() for p in m.parameters()]).clone()
    ref = lg(lambda: weighted_lm_loss(m, b))
    ch = lg(lambda: chunked_lm_loss(m, b, 37))
    assert abs(ref[0] - ch[0]) < 1e-5 and torch.allclose(ref[1], ch[1], atol=1e-6)
    plain = {k: v for k, v in b.items() if k != "loss_weights"}
    hf = lg(lambda: m(**plain, use_cache=False).loss)
    assert abs(hf[0] - lg(lambda: chunked_lm_loss(m, plain, 50))[0]) < 1e-5   # the token mean, like the model's own loss
    tile_mlp(m, 4)
    ti = lg(lambda: weighted_lm_loss(m, b))
    assert abs(ref[0] - ti[0]) < 1e-5 and torch.allclose(ref[1], ti[1], atol=1e-6)


def test_planner_orders_layouts_sensibly():
    sh, GiB = SHAPES["llama-3-8b"], 2 ** 30
    one = plan_memory(sh, 32768, Layout(gpus=1, zero=3))
    assert one["optimizer"] == pytest.approx(12 * sh.params()) and one["total"] > 80 * GiB   # 8B needs >80 GiB on one GPU
    off = Layout(gpus=1, zero=3, offload_optimizer=True, offload_params=True, tiled_mlp=8, act_offload=True, loss_chunk=4096)
    L1 = max_seq_len(sh, off, 80 * GiB)
    assert 100_000 < L1 < 2_000_000
    assert max_seq_len(sh, Layout(gpus=8, sp_size=8, loss_chunk=4096, tiled_mlp=8), 80 * GiB) > L1
