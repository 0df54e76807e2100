"""Stage-05 efficiency: naive, sorted and packed batches over the same SFT samples, in one run.

Usage: python bench/bench_packing.py [RUN_DIR]   (default runs/cpu; needs stage 05's sft/samples.json there)
Prints per method the real-token fraction, real tokens/s over one epoch (forward, backward, optimizer step)
and the ratio to naive batching; methods alternate over two rounds and the best epoch of each is kept.
"""
import json, sys
from pathlib import Path

from longctx_nb.batching import plan_batches, real_fraction
from longctx_nb.packing import time_epoch
from longctx_nb.train import load_model


def main():
    run_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/cpu")
    samples = json.loads((run_dir / "sft" / "samples.json").read_text())["samples"]
    params = json.loads((run_dir / "manifest.json").read_text())["stages"]["05_packing"]["parameters"]
    model_path = run_dir / params["model"]
    lengths = [len(s["input_ids"]) for s in samples]
    plans = {m: plan_batches(lengths, m, params["batch_size"], params["packs_per_batch"], params["max_len"]) for m in ("naive", "sorted", "packing")}
    best = {}
    for rnd in range(2):
        for m, plan in plans.items():
            r = time_epoch(load_model(model_path), samples, plan)
            best[m] = max(best.get(m, 0), r["tokens_per_s"])
    print(f"{len(samples)} samples, {sum(lengths):,} real tokens, max_len {params['max_len']}")
    for m in plans:
        print(f"{m:8s} real-token fraction {real_fraction(plans[m], lengths):6.1%}   {best[m]:9,.0f} real tokens/s   "
              f"ratio to naive {best[m] / best['naive']:4.2f}")


if __name__ == "__main__":
    main()
