"""Prefill and decoding speed of the real model in float32 against the faster precision paths, in one run.

Usage: python bench/bench_infer.py [--dtypes auto int8] [--lengths 2048 8192] [--batches 1 16] [--new 32] [--repeats 3]

SmolLM2-135M-Instruct (the offline registry model) loaded once per precision (`infer.resolve_dtype`): prefill
tokens/s of one prompt of each length (real text, logits of the last position only, as generation prefills) and
decoding tokens/s at each batch size (greedy, `--new` steps after a 256-token prompt, no early stop, the growing cache
that generation uses), each line ending with its ratio to
float32. For a reduced-precision path, the causal attention of the longest prefill alone, in float32 and in that
precision: the CPU's flash kernel runs no faster in bf16, which is why long prefills gain less than short ones. Then the
greedy answers of every path to a fixed set of prompts (chat questions, passkeys and a needle at
2K) are compared with float32's, and the differences counted. bfloat16 on a CPU without native bf16 instructions is
emulated and several times slower than float32: it is measured only when asked for by name.

Every path is loaded first; each measurement then runs `--repeats` times, the paths taking turns within a round, and
the median is reported: on a shared 2-core machine one slow second would otherwise decide a ratio. The longest prefill
is then split into attention and the rest, each with its own ratio.
"""
import argparse, statistics, time

import torch

from longctx_nb.infer import CACHE_ARG, growing_cache, model_cache, native_bf16, resolve_dtype
from longctx_nb.llm import HFGenerator
from longctx_nb.models import resolve_model
from longctx_nb.needle import build_context, load_haystack, render_prompt, variant_spec

QUESTIONS = ["What is the capital of France?", "Name three primary colors.", "What is 12 times 12?",
             "Write one sentence about the sea."]


def answer_prompts(gen, hay) -> list:
    "Chat questions, two passkeys and a needle at 2K tokens: the prompts whose greedy answers are compared."
    out = [[{"role": "user", "content": q}] for q in QUESTIONS]
    for key, depth in ((71342, 50), (40517, 20)):
        sp = variant_spec("passkey", key)
        out.append(render_prompt("chat", build_context(gen.tok, sp["filler"], 2000, depth, sp["needles"])["context"],
                                 sp["question"]))
    sp = variant_spec("single", 0)
    out.append(render_prompt("chat", build_context(gen.tok, hay, 2000, 60, sp["needles"])["context"], sp["question"]))
    return out


@torch.no_grad()
def prefill_tps(gen, ids: list[int]) -> float:
    "Tokens per second of one prefill of `ids` (last position's logits only)."
    x = torch.tensor([ids])
    gen.model(input_ids=x[:, :32], logits_to_keep=1)  # warm the kernels
    t = time.perf_counter()
    gen.model(input_ids=x, logits_to_keep=1, use_cache=True)
    return len(ids) / (time.perf_counter() - t)


@torch.no_grad()
def decode_tps(gen, ids: list[int], batch: int, steps: int) -> float:
    "Tokens per second of `steps` greedy decoding steps for `batch` copies of a prompt, after its prefill."
    x = torch.tensor([ids] * batch)  # the cache generation uses (appends without copying)
    out = gen.model(input_ids=x, use_cache=True, logits_to_keep=1, **{CACHE_ARG: growing_cache(gen.model.config)})
    past, nxt = model_cache(out), out.logits[:, -1].argmax(-1)
    t = time.perf_counter()
    for _ in range(steps):
        out = gen.model(input_ids=nxt[:, None], use_cache=True, **{CACHE_ARG: past})
        past, nxt = model_cache(out), out.logits[:, -1].argmax(-1)
    return batch * steps / (time.perf_counter() - t)


@torch.no_grad()
def attention_s(config, n: int, dtype) -> float:
    "Seconds of the causal SDPA of one prefill of `n` tokens over all layers, at the model's head shape, in `dtype`."
    d = config.hidden_size // config.num_attention_heads
    q = torch.randn(1, config.num_attention_heads, n, d, dtype=dtype)
    k, v = (torch.randn(1, config.num_key_value_heads, n, d, dtype=dtype) for _ in range(2))
    attn = torch.nn.functional.scaled_dot_product_attention
    attn(q[:, :, :64], k[:, :, :64], v[:, :, :64], is_causal=True, enable_gqa=True)
    t = time.perf_counter()
    attn(q, k, v, is_causal=True, enable_gqa=True)
    return (time.perf_counter() - t) * config.num_hidden_layers


def load(dtype: str, path) -> dict:
    "One precision path: its generator and the dtype its layers compute in."
    gen = HFGenerator(path, batch_size=1, max_new_tokens=24, dtype=dtype)
    return {"gen": gen, "name": gen.dtype, "compute": next(gen.model.parameters()).dtype, "prefill": {}, "decode": {}}


def interleaved(paths: list[dict], fn, repeats: int) -> list[float]:
    "The median of `repeats` calls of `fn(path)` for each path, the paths taking turns within each round."
    runs = [[] for _ in paths]
    for _ in range(repeats):
        for got, p in zip(runs, paths):
            got.append(fn(p))
    return [statistics.median(r) for r in runs]


def measure(paths: list[dict], hay: str, args) -> None:
    "Prefill and decoding speeds of every path (medians of interleaved repeats), then each path's answers."
    text_ids = paths[0]["gen"].encode(hay)
    for n in args.lengths:
        for p, v in zip(paths, interleaved(paths, lambda p: prefill_tps(p["gen"], text_ids[:n]), args.repeats)):
            p["prefill"][n] = v
    for b in args.batches:
        speeds = interleaved(paths, lambda p: decode_tps(p["gen"], text_ids[:256], b, args.new), args.repeats)
        for p, v in zip(paths, speeds):
            p["decode"][b] = v
    for p in paths:
        p["answers"] = p["gen"].generate(answer_prompts(p["gen"], hay))


def split_line(r: dict, base: dict, n: int, repeats: int) -> str:
    "The longest prefill of path `r` split into attention (median of `repeats`) and the rest, each against float32's."
    config = r["gen"].model.config
    a32, a = (statistics.median(attention_s(config, n, d) for _ in range(repeats))
              for d in (torch.float32, r["compute"]))
    rest32, rest = n / base["prefill"][n] - a32, n / r["prefill"][n] - a
    name = str(r["compute"]).removeprefix("torch.")
    return (f"one {n:,d}-token prefill: attention float32 {a32:.1f} s, {name} {a:.1f} s ({a32 / a:.2f}×); the rest "
            f"float32 {rest32:.1f} s, {r['name']} {rest:.1f} s ({rest32 / rest:.2f}×); attention is "
            f"{a32 / (a32 + rest32):.0%} of float32's prefill, so the prefill ratio stays below the rest's")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtypes", nargs="+", default=["auto", "int8"], help="paths compared with float32")
    ap.add_argument("--lengths", nargs="+", type=int, default=[2048, 8192], help="prefill lengths in tokens")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16], help="decoding batch sizes")
    ap.add_argument("--new", type=int, default=32, help="decoding steps measured")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each measurement; the median is reported")
    args = ap.parse_args()
    path, hay = resolve_model("smollm2-135m-instruct").path, load_haystack("paul_graham")
    print(f"SmolLM2-135M-Instruct on {torch.get_num_threads()} threads; native bf16: {native_bf16()}; "
          f"auto = {resolve_dtype('auto')[0]}; medians of {args.repeats} interleaved runs")
    paths = [load("float32", path)]
    for d in args.dtypes:
        p = load(d, path)
        if p["name"] in {q["name"] for q in paths}:
            print(f"{d}: resolves to {p['name']} here, measured once")
            continue
        paths.append(p)
    measure(paths, hay, args)
    base = paths[0]
    for r in paths[1:]:
        for n, v in r["prefill"].items():
            print(f"prefill {n:6,d} tokens  {r['name']:>14s} {v:8.1f} tok/s  float32 {base['prefill'][n]:8.1f} tok/s"
                  f"  {v / base['prefill'][n]:.2f}×")
        for b, v in r["decode"].items():
            print(f"decode  batch {b:3d}     {r['name']:>14s} {v:8.1f} tok/s  float32 {base['decode'][b]:8.1f} tok/s"
                  f"  {v / base['decode'][b]:.2f}×")
        if r["compute"] != torch.float32:
            print(split_line(r, base, max(args.lengths), args.repeats))
        diff = [i for i, (a, f) in enumerate(zip(r["answers"], base["answers"])) if a != f]
        print(f"answers {r['name']}: {len(r['answers']) - len(diff)}/{len(r['answers'])} identical to float32's"
              + "".join(f"\n  [{i}] float32 {base['answers'][i]!r}\n      {r['name']} {r['answers'][i]!r}"
                        for i in diff))


if __name__ == "__main__":
    main()
