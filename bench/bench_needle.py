"""Needle grid with and without prefix reuse, on the real model, in one run.

Usage: python bench/bench_needle.py [LENGTH] [DEPTHS] [DTYPE]   (defaults 2048 tokens, 10 linear depths, auto)
Runs the same grid (one length, DEPTHS depths, the passkey variant, chat prompt) on SmolLM2-135M-Instruct twice:
prompts prefilled in full (one at a time, each decoded alone), then deepest first with the KV cache of each prompt's
shared prefix reused (one at a time, then decoded together). Prints the prefilled tokens, wall time, prefill and
decoding time of each and their ratios, and counts the answers that are identical (printing the others). DTYPE is the generators' `dtype` (auto: bfloat16 where the CPU has native bf16, else float32).
"""
import sys, tempfile, time
from pathlib import Path

import numpy as np

from longctx_nb.llm import HFGenerator
from longctx_nb.models import resolve_model
from longctx_nb.needle import grid_cells, load_haystack, read_results, run_grid


def main():
    length = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    dtype = sys.argv[3] if len(sys.argv) > 3 else "auto"
    path, hay = resolve_model("smollm2-135m-instruct").path, load_haystack("paul_graham")
    cells = grid_cells([length], [float(d) for d in np.linspace(0, 100, n)], ["passkey"])
    res = {}
    with tempfile.TemporaryDirectory() as d:
        for reuse in (False, True):
            gen = HFGenerator(path, batch_size=1, max_new_tokens=16, reuse_prefix=reuse, dtype=dtype)
            t = time.perf_counter()
            run_grid(gen, cells, hay, "chat", Path(d) / f"{reuse}.jsonl", "smol", progress=False)
            rows = sorted(read_results(Path(d) / f"{reuse}.jsonl"), key=lambda r: r["depth"])
            res[reuse] = {"s": time.perf_counter() - t, "tokens": gen.stats["prefill_tokens"],
                          "outputs": [r["output"] for r in rows], "found": sum(r["contains"] for r in rows),
                          "dtype": gen.dtype, "depths": [r["depth"] for r in rows],
                          "prefill_s": gen.stats["prefill_s"], "decode_s": gen.stats["decode_s"]}
    full, reused = res[False], res[True]
    print(f"grid: 1 length x {n} depths at {length} tokens, passkey, SmolLM2-135M-Instruct in {full['dtype']}")
    for name, r in (("full prefill", full), ("prefix reuse", reused)):
        print(f"{name:13s} prefilled {r['tokens']:7,d} tokens  {r['s']:6.1f} s (prefill {r['prefill_s']:5.1f} s, "
              f"decoding {r['decode_s']:5.1f} s)  passkeys found {r['found']:.0f}/{n}")
    print(f"ratio reuse/full: tokens {reused['tokens'] / full['tokens']:.3f}   time {reused['s'] / full['s']:.3f}   "
          f"prefill time {reused['prefill_s'] / full['prefill_s']:.3f}")
    differ = [(d, a, b) for d, a, b in zip(full["depths"], full["outputs"], reused["outputs"]) if a != b]
    print(f"answers identical: {n - len(differ)}/{n}")
    for d, a, b in differ:
        print(f"  depth {d:5.1f}  full {a!r}\n              reuse {b!r}")


if __name__ == "__main__":
    main()
