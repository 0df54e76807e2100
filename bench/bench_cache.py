"""Decoding speed after a long prompt: transformers' DynamicCache against the suite's GrowingLayer cache, in one run.

Usage: python bench/bench_cache.py [--contexts 2048 8448] [--batches 1 5] [--new 24] [--dtype auto]

SmolLM2-135M-Instruct (the offline registry model): for each context length, one prefill of real text per cache
kind, then `--new` greedy decoding steps for each batch size (the prompt's cache repeated), timed. Transformers'
DynamicLayer appends each step with `torch.cat`, copying the whole cache; `infer.GrowingLayer` writes into spare
room. Each line ends with the ratio of the two speeds, and the greedy tokens of the two caches are compared.
"""
import argparse, copy, time

import torch
from transformers import DynamicCache

from longctx_nb.infer import CACHE_ARG, growing_cache, model_cache
from longctx_nb.llm import HFGenerator
from longctx_nb.models import resolve_model
from longctx_nb.needle import load_haystack


@torch.no_grad()
def decode(gen, past, logits, batch: int, steps: int):
    "Greedy tokens and seconds of `steps` decoding steps for `batch` copies of a prefilled prompt."
    past = copy.deepcopy(past)
    if batch > 1:
        past.batch_repeat_interleave(batch)
    n = past.get_seq_length()
    nxt, out = logits.argmax(-1).repeat(batch), []
    t = time.perf_counter()
    for i in range(steps):
        o = gen.model(input_ids=nxt[:, None], position_ids=torch.full((batch, 1), n + i), use_cache=True,
                      **{CACHE_ARG: past})
        past, nxt = model_cache(o), o.logits[:, -1].argmax(-1)
        out.append(nxt)
    return torch.stack(out, 1), time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contexts", nargs="+", type=int, default=[2048, 8448], help="prompt lengths in tokens")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 5], help="decoding batch sizes")
    ap.add_argument("--new", type=int, default=24, help="decoding steps")
    ap.add_argument("--dtype", default="auto", help="the generator's dtype setting")
    args = ap.parse_args()
    gen = HFGenerator(resolve_model("smollm2-135m-instruct").path, dtype=args.dtype)
    ids = gen.encode(load_haystack("paul_graham"))
    print(f"SmolLM2-135M-Instruct in {gen.dtype} on {torch.get_num_threads()} threads; {args.new} greedy steps")
    for n in args.contexts:
        x = torch.tensor([ids[:n]])
        with torch.no_grad():
            prefilled = {kind: gen.model(input_ids=x, use_cache=True, logits_to_keep=1, **{CACHE_ARG: cache})
                         for kind, cache in (("dynamic", DynamicCache(config=gen.model.config)),
                                             ("growing", growing_cache(gen.model.config)))}
        for b in args.batches:
            res = {k: decode(gen, model_cache(o), o.logits[:, -1], b, args.new) for k, o in prefilled.items()}
            (td, sd), (tg, sg) = res["dynamic"], res["growing"]
            same = "identical" if torch.equal(td, tg) else f"{int((td != tg).any(1).sum())}/{b} rows differ"
            print(f"context {n:6,d}  batch {b:2d}  DynamicCache {b * args.new / sd:6.1f} tok/s  "
                  f"GrowingLayer {b * args.new / sg:6.1f} tok/s  tokens {same}  {sd / sg:.2f}×")


if __name__ == "__main__":
    main()
