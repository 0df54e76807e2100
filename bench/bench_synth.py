"""Stage 04's local generation: batched against one request at a time, on the real model, in one run.

Usage: python bench/bench_synth.py [N] [BATCH] [NEW]   (defaults 32 requests, batches of 32, 96 new tokens)
Sends the same N query-focused summary requests (stage 04's prompt over 256-token chunks of Paul Graham's essays,
at most NEW new tokens, greedy: the cpu profile's summary step) to SmolLM2-135M-Instruct through `HFChatClient`,
first one at a time, then in batches of BATCH (sorted by length, as the stage sends them). Prints generated tokens
per second of each, where the time went (prefill, decoding), and the ratio.
"""
import sys, time

from longctx_nb.llm import HFChatClient, HFGenerator
from longctx_nb.models import resolve_model
from longctx_nb.retrieval import chunk_by_tokens
from longctx_nb.sources import paul_graham_essays
from longctx_nb.synth import SUMMARY_PROMPT, user


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    new = int(sys.argv[3]) if len(sys.argv) > 3 else 96
    gen = HFGenerator(resolve_model("smollm2-135m-instruct").path, batch_size=1)
    essays = [t for _, t in paul_graham_essays()]
    chunks = [c for t in essays[:8] for c in chunk_by_tokens(gen.tok, t[:6000], 256)][:n]
    reqs = [user(SUMMARY_PROMPT.format(query="What does the author advise founders to do?", chunk=c)) for c in chunks]
    res = {}
    for bs in (1, batch):
        gen.batch_size = bs
        gen.stats = dict.fromkeys(gen.stats, 0)
        client = HFChatClient(gen, max_tokens=new)  # no cache: every request is generated
        t = time.perf_counter()
        out = client.chat_many(reqs)
        s = time.perf_counter() - t
        res[bs] = {"s": s, "tokens": client.usage["completion_tokens"], "texts": [o["content"] for o in out],
                   "prefill_s": gen.stats["prefill_s"], "decode_s": gen.stats["decode_s"]}
    print(f"{n} summary requests, {new} new tokens at most, prompts {min(map(len, map(gen.encode, reqs)))}-"
          f"{max(map(len, map(gen.encode, reqs)))} tokens, SmolLM2-135M-Instruct")
    for bs, r in res.items():
        print(f"batch {bs:2d}: {r['tokens']:5d} tokens in {r['s']:6.1f} s = {r['tokens'] / r['s']:6.1f} tokens/s "
              f"(prefill {r['prefill_s']:.1f} s, decoding {r['decode_s']:.1f} s)")
    one, many = (res[b]["tokens"] / res[b]["s"] for b in (1, batch))
    print(f"ratio batched/one-at-a-time tokens/s: {many / one:.2f}")
    same = sum(a == b for a, b in zip(res[1]["texts"], res[batch]["texts"]))
    print(f"identical outputs: {same}/{n} (padding changes summation order, so a few greedy paths may part)")


if __name__ == "__main__":
    main()
