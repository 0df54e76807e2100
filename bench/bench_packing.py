"""Stage-05 efficiency: naive, sorted and packed batches over the same SFT samples, in one run.

Usage:
    python bench/bench_packing.py [RUN_DIR]    # stage 05's samples (default runs/cpu; needs sft/samples.json there)
    python bench/bench_packing.py --synthetic [--dry-run] [--out JSON]
        # a synthetic long-tailed sample set, each attention backend that can train here (sdpa, flex_attention,
        # flash_attention_2/4); a SmolLM2-135M-shaped model (random init, bf16) on a GPU, a tiny one with --dry-run

Prints per method the real-token fraction, real tokens/s over one epoch (forward, backward, optimizer step)
and the ratio to naive batching; methods alternate over two rounds and the best epoch of each is kept.
LongAlign (Bai et al., 2024) reports packing with loss weighting ~2.9x faster than naive batching.
"""
import argparse
import copy
import json
import math
import random
import time
from pathlib import Path

import torch

from longctx_nb.batching import collate, plan_batches, real_fraction
from longctx_nb.train import FLASH, load_model, resolve_attention, tiny_llama, weighted_lm_loss

METHODS = ("naive", "sorted", "packing")
BACKENDS = ("sdpa", "flex_attention", *FLASH)


def run_samples(run_dir: Path) -> None:
    "The original benchmark: stage 05's samples and model in a run folder, the model's own attention."
    samples = json.loads((run_dir / "sft" / "samples.json").read_text())["samples"]
    params = json.loads((run_dir / "manifest.json").read_text())["stages"]["05_packing"]["parameters"]
    model_path = run_dir / params["model"]
    lengths = [len(s["input_ids"]) for s in samples]
    plans = {m: plan_batches(lengths, m, params["batch_size"], params["packs_per_batch"], params["max_len"])
             for m in METHODS}
    best = {}
    for _ in range(2):
        for m, plan in plans.items():
            r = epoch(load_model(model_path), samples, plan, "cpu")
            best[m] = max(best.get(m, 0), r["tokens_per_s"])
    print(f"{len(samples)} samples, {sum(lengths):,} real tokens, max_len {params['max_len']}")
    for m in plans:
        print(f"{m:8s} real-token fraction {real_fraction(plans[m], lengths):6.1%}   {best[m]:9,.0f} real tokens/s   "
              f"ratio to naive {best[m] / best['naive']:4.2f}")


def synthetic_samples(n: int, max_len: int, vocab: int, seed: int = 0) -> list[dict]:
    "Long-tailed SFT-like samples: lengths log-uniform in [max_len/256, max_len], prompt unlabelled, answer labelled."
    rng = random.Random(seed)
    lo = max(8, max_len // 256)
    out = []
    for _ in range(n):
        L = int(lo * math.exp(rng.random() * math.log(max_len / lo)))
        ids = [rng.randrange(1, vocab) for _ in range(L)]
        answer = max(1, L // 8)  # the last eighth is the answer (labelled), the rest prompt
        out.append({"input_ids": ids, "labels": [-100] * (L - answer) + ids[L - answer:]})
    return out


def backend_skip(name: str, device: str) -> str | None:
    "Why attention backend `name` cannot train here (None when it can)."
    try:  # the trainer's own check: flash kernels by transformers' package checks and CUDA, flex's CPU limit
        resolve_attention(name, training=True)
    except ValueError as e:
        return str(e)
    return None


def sync(device: str) -> None:
    "Wait for the GPU's queued work (timing)."
    if device == "cuda":
        torch.cuda.synchronize()


def epoch(model, samples, plan, device: str, lr: float = 1e-5) -> dict:
    "One epoch over `plan` on `device` (forward, weighted loss, backward, AdamW step); time and real tokens/s."
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    real = sum(len(samples[i]["input_ids"]) for b in plan for r in b for i in r)
    sync(device)
    t = time.perf_counter()
    for b in plan:
        batch = {k: v.to(device) for k, v in collate(samples, b).items()}
        weighted_lm_loss(model, batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    dt = time.perf_counter() - t
    return {"epoch_s": round(dt, 3), "real_tokens": real, "tokens_per_s": round(real / dt, 1), "batches": len(plan)}


def bench_backend(base, name: str, samples, plans, device: str, rounds: int = 2) -> dict:
    "Best-of-`rounds` epoch per method with attention `name`, each epoch from the same initial weights."
    attn = resolve_attention(name, training=True)  # sdpa: the packed one
    best = {}
    for _ in range(rounds):
        for m, plan in plans.items():
            model = copy.deepcopy(base)
            model.set_attn_implementation(attn)
            r = epoch(model, samples, plan, device)
            if r["tokens_per_s"] > best.get(m, {}).get("tokens_per_s", 0):
                best[m] = r
            del model
            if device == "cuda":
                torch.cuda.empty_cache()
    best["ratio"] = round(best["packing"]["tokens_per_s"] / best["naive"]["tokens_per_s"], 3)
    return best


def synthetic(dry_run: bool, out: str | None, backends: list[str], n: int | None, max_len: int | None) -> dict:
    "Packing against naive (and sorted) batching per attention backend on synthetic samples; returns the figures."
    device = "cuda" if torch.cuda.is_available() and not dry_run else "cpu"
    if dry_run:
        vocab, n, max_len, batch, packs = 512, n or 32, max_len or 512, 8, 1
        base = tiny_llama(vocab, hidden=64, layers=2, heads=4, max_pos=max_len)
        shape = "tiny Llama (hidden 64, 2 layers), fp32"
    else:
        vocab, n, max_len, batch, packs = 49152, n or 512, max_len or 16384, 4, 1
        base = tiny_llama(vocab, hidden=576, layers=30, heads=9, kv_heads=3, max_pos=max_len, rope_theta=100000.0)
        base = base.to(device=device, dtype=torch.bfloat16)
        base.gradient_checkpointing_enable({"use_reentrant": False})
        shape = "SmolLM2-135M shape (random init), bf16, activation checkpointing"
    samples = synthetic_samples(n, max_len, vocab)
    lengths = [len(s["input_ids"]) for s in samples]
    plans = {m: plan_batches(lengths, m, batch, packs, max_len) for m in METHODS}
    res = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "model": shape,
           "samples": n, "real_tokens": sum(lengths), "max_len": max_len, "batch_size": batch,
           "packs_per_batch": packs,
           "real_fraction": {m: round(real_fraction(p, lengths), 4) for m, p in plans.items()},
           "backends": {}}
    print(f"{device}: {n} samples, {sum(lengths):,} real tokens, max_len {max_len}, {shape}", flush=True)
    for name in backends:
        why = backend_skip(name, device)
        if why:
            res["backends"][name] = {"skipped": why}
        else:
            try:
                res["backends"][name] = bench_backend(base, name, samples, plans, device)
            except Exception as e:  # one backend failing (kernel, memory) leaves the others measured
                res["backends"][name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
        print(f"  {name}: {json.dumps(res['backends'][name])}", flush=True)
    if out:
        Path(out).write_text(json.dumps(res, indent=1))
    return res


def main():
    "Command line: stage 05's samples from a run folder, or `--synthetic` per attention backend."
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", nargs="?", default="runs/cpu", help="run folder with stage 05's samples")
    ap.add_argument("--synthetic", action="store_true", help="synthetic long-tailed samples, per attention backend")
    ap.add_argument("--dry-run", action="store_true", help="with --synthetic: CPU, tiny model, short samples")
    ap.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated attention backends to try")
    ap.add_argument("--n", type=int, default=None, help="number of synthetic samples (512 on GPU, 32 dry run)")
    ap.add_argument("--max-len", type=int, default=None, help="longest sample and pack (16384 on GPU, 512 dry run)")
    ap.add_argument("--out", default=None, help="with --synthetic: write the figures as JSON here")
    a = ap.parse_args()
    if a.synthetic:
        synthetic(a.dry_run, a.out, a.backends.split(","), a.n, a.max_len)
    else:
        run_samples(Path(a.run_dir))


if __name__ == "__main__":
    main()
