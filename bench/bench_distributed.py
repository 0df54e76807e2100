"""Long-sequence training on one GPU, measured, next to the stage-06 planner's prediction.

1. Longest sequence: a Llama-3-8B-shaped model (random init, bf16, checkpointing, tiled MLP, chunked loss) runs one
   forward+backward at growing lengths until it runs out of memory; reports the longest that fit, its tokens/s and
   peak memory, and what the planner predicted (ALST reports ~500K tokens on one H100 with ZeRO-3 offload).
2. MFU: a Llama-3.2-1B-shaped model trains (AdamW, bf16) at 16K/32K/64K with flash-attn (when importable) and
   with SDPA; step time, tokens/s and model-FLOPs utilisation.

    python bench/bench_distributed.py               # on a GPU
    python bench/bench_distributed.py --dry-run     # on CPU: tiny shapes, short lengths, same code path

All ratios and numbers come from one run of this script; nothing is hard-coded.
"""
import argparse, gc, json, time

import torch

from longctx_nb.parallel import SHAPES, Layout, Shape, max_seq_len, mfu, plan_memory, train_flops
from longctx_nb.train import FLASH, chunked_lm_loss, flash_available, tile_mlp


def build(shape: Shape, attn: str, device, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                      num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
                      max_position_embeddings=1 << 21, tie_word_embeddings=shape.tied, attn_implementation=attn,
                      rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    with torch.device(device): m = LlamaForCausalLM(cfg).to(dtype)
    m.gradient_checkpointing_enable({"use_reentrant": False}); m.config.use_cache = False
    return m


def sync(dev):
    if dev == "cuda": torch.cuda.synchronize()


def step(m, T, dev, chunk, opt=None):
    "One forward+backward (and optimizer step) on random tokens; returns seconds."
    x = torch.randint(0, m.config.vocab_size, (1, T), device=dev)
    b = {"input_ids": x, "labels": x, "position_ids": torch.arange(T, device=dev)[None]}
    sync(dev); t = time.perf_counter()
    loss = chunked_lm_loss(m, b, chunk); loss.backward()
    if opt: opt.step(); opt.zero_grad(set_to_none=True)
    else: m.zero_grad(set_to_none=True)
    sync(dev); return time.perf_counter() - t


def longest(shape, dev, dtype, lengths, chunk, tiles):
    m = tile_mlp(build(shape, "sdpa", dev, dtype), tiles); best = None
    for T in lengths:
        try:
            if dev == "cuda": torch.cuda.reset_peak_memory_stats()
            step(m, T, dev, chunk); s = step(m, T, dev, chunk)   # warm-up, then timed
            peak = torch.cuda.max_memory_allocated() / 2 ** 30 if dev == "cuda" else None
            best = {"seq_len": T, "step_s": round(s, 3), "tokens_per_s": round(T / s, 1), "peak_gib": peak}
            print(f"  {T:>8} tokens: {s:.2f} s/step, {T / s:,.0f} tokens/s" + (f", peak {peak:.1f} GiB" if peak else ""), flush=True)
        except torch.OutOfMemoryError:
            print(f"  {T:>8} tokens: out of memory"); break
        finally: gc.collect(); torch.cuda.empty_cache() if dev == "cuda" else None
    return best


def mfu_table(shape, dev, dtype, lengths, chunk, peak_flops, attns):
    rows = []
    for attn in attns:
        m = build(shape, attn, dev, dtype); opt = torch.optim.AdamW(m.parameters(), lr=1e-5, fused=dev == "cuda")
        for T in lengths:
            try:
                step(m, T, dev, chunk, opt); s = min(step(m, T, dev, chunk, opt) for _ in range(2))
                rows.append({"attn": attn, "seq_len": T, "step_s": round(s, 3), "tokens_per_s": round(T / s, 1),
                             "mfu": round(mfu(shape, T, T, s, 1, peak_flops), 4)})
            except torch.OutOfMemoryError: rows.append({"attn": attn, "seq_len": T, "step_s": None, "tokens_per_s": None, "mfu": None})
            print(" ", rows[-1], flush=True)
        del m, opt; gc.collect()
        if dev == "cuda": torch.cuda.empty_cache()
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU: tiny shapes and short lengths through the same code")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of one GPU (H100 SXM: 989)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--max-len", type=int, default=1 << 20,
                    help="longest length the sweep tries (each doubling about doubles its time; 1M: minutes on an H100)")
    a = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() and not a.dry_run else "cpu"
    if a.dry_run:
        big, small = Shape(128, 2, 4, 2, 344, 4096), Shape(64, 2, 4, 2, 172, 4096)
        lengths, mfu_lens, dtype, chunk, peak = [512, 1024, 2048], [256, 512], torch.float32, 256, 1e11  # nominal 0.1 TFLOP/s CPU
        mem = 24 * 2 ** 30
    else:
        big, small = SHAPES["llama-3-8b"], SHAPES["llama-3.2-1b"]
        lengths, mfu_lens, dtype, chunk, peak = [2 ** k for k in range(14, 21)], [16384, 32768, 65536], torch.bfloat16, 8192, a.peak_tflops * 1e12
        lengths = [T for T in lengths if T <= a.max_len] or lengths[:1]
        mem = torch.cuda.get_device_properties(0).total_memory
    attns = [name for name in FLASH if flash_available(name)] + ["sdpa"]   # transformers' own checks, CUDA only
    if attns == ["sdpa"]: print("no flash-attn kernel transformers can run here: SDPA only")
    lay = Layout(gpus=1, zero=3, offload_optimizer=True, offload_params=False, tiled_mlp=8, loss_chunk=chunk,
                 dtype_bytes=2 if dtype == torch.bfloat16 else 4)
    print(f"device {dev}; planner: longest trainable sequence for {big} on {mem / 2 ** 30:.0f} GiB = {max_seq_len(big, lay, mem):,} tokens")
    print("1. longest sequence, one forward+backward (weights and grads on the device, optimizer not stepped):")
    res = {"device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu", "longest": longest(big, dev, dtype, lengths, chunk, 8)}
    if res["longest"]:
        res["longest"]["planned_gib"] = round(plan_memory(big, res["longest"]["seq_len"], lay)["total"] / 2 ** 30, 1)
    print("2. MFU (model FLOPs / step time / peak):")
    res["mfu"] = mfu_table(small, dev, dtype, mfu_lens, chunk, peak, attns)
    print(json.dumps(res, indent=1))
    if a.out: open(a.out, "w").write(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
