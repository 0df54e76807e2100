"""Stage 04's local generation: batched against one request at a time, on the real model, in one run.

Usage: python bench/bench_synth.py [N] [BATCH]   (defaults 16 requests, batches of 8)
Sends the same N query-focused summary requests (stage 04's prompt over 256-token chunks of Paul Graham's essays,
64 new tokens, greedy) to SmolLM2-135M-Instruct through `HFChatClient`, first one at a time, then in batches of
BATCH (sorted by length, as the stage sends them). Prints generated tokens per second of each and their ratio.
"""
import sys, time

from longctx_nb.llm import HFChatClient, HFGenerator
from longctx_nb.models import resolve_model
from longctx_nb.retrieval import chunk_by_tokens
from longctx_nb.sources import paul_graham_essays
from longctx_nb.synth import SUMMARY_PROMPT, user


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    gen = HFGenerator(resolve_model("smollm2-135m-instruct").path, batch_size=1)
    essays = [t for _, t in paul_graham_essays()]
    chunks = [c for t in essays[:8] for c in chunk_by_tokens(gen.tok, t[:6000], 256)][:n]
    reqs = [user(SUMMARY_PROMPT.format(query="What does the author advise founders to do?", chunk=c)) for c in chunks]
    res = {}
    for bs in (1, batch):
        gen.batch_size = bs
        client = HFChatClient(gen, max_tokens=64)  # no cache: every request is generated
        t = time.perf_counter()
        out = client.chat_many(reqs)
        s = time.perf_counter() - t
        res[bs] = {"s": s, "tokens": client.usage["completion_tokens"], "texts": [o["content"] for o in out]}
    print(f"{n} summary requests, 64 new tokens at most, prompts {min(map(len, map(gen.encode, reqs)))}-"
          f"{max(map(len, map(gen.encode, reqs)))} tokens, SmolLM2-135M-Instruct")
    for bs, r in res.items():
        print(f"batch {bs:2d}: {r['tokens']:5d} tokens in {r['s']:6.1f} s = {r['tokens'] / r['s']:6.1f} tokens/s")
    one, many = (res[b]["tokens"] / res[b]["s"] for b in (1, batch))
    print(f"ratio batched/one-at-a-time tokens/s: {many / one:.2f}")
    same = sum(a == b for a, b in zip(res[1]["texts"], res[batch]["texts"]))
    print(f"identical outputs: {same}/{n} (padding changes summation order, so a few greedy paths may part)")


if __name__ == "__main__":
    main()
