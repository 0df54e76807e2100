"""Stage-01 throughput: corpus -> tokens -> statistics against tokenizer-only on the same text, in one run.

Usage: python bench/bench_mixture.py [RUN_DIR]   (default runs/cpu; builds it with the cpu profile if absent)
Prints tokens/s of (a) the Rust tokenizer alone on texts already in memory, (b) the stage's streaming
statistics (read shards, parse JSON, validate, tokenize, histogram), (b) with 2 processes, and the ratios.
Each measurement is repeated, alternating, and the best is kept, since this machine is noisy.
"""
import json, subprocess, sys, time
from pathlib import Path

from longctx_nb.corpus import iter_docs
from longctx_nb.mixture import corpus_stats
from longctx_nb.tokenizer import load_tokenizer, token_counts

def main():
    run_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/cpu")
    if not (run_dir / "data.json").exists():
        subprocess.run([str(Path(sys.executable).parent / "longctx"), "run", "--run-dir", str(run_dir), "--stages", "01"], check=True)
    data = json.loads((run_dir / "data.json").read_text())
    tok = load_tokenizer(data["tokenizer"])
    texts = [d.text for d in iter_docs(data["train"])]
    chars = sum(map(len, texts))


    def tokenizer_only():
        n = 0
        for i in range(0, len(texts), 64): n += sum(token_counts(tok, texts[i:i + 64]))
        return n


    def pipeline(num_proc=1):
        stats, _ = corpus_stats(data["train"], data["tokenizer"], num_proc=num_proc, progress=False)
        return sum(s.tokens for s in stats.values())


    best = {}
    for rep in range(3):
        for name, fn in [("tokenizer only", tokenizer_only), ("stage statistics", pipeline),
                         ("stage statistics, 2 procs", lambda: pipeline(2))]:
            t = time.perf_counter(); n = fn(); dt = time.perf_counter() - t
            best[name] = max(best.get(name, (0, 0)), (n / dt, n))
    ref = best["tokenizer only"][0]
    print(f"corpus: {len(texts):,} documents, {chars / 1e6:.1f}M chars, {best['tokenizer only'][1]:,} tokens")
    for name, (rate, n) in best.items():
        print(f"{name:28s} {rate:12,.0f} tokens/s   ratio to tokenizer-only {rate / ref:5.2f}")
    assert len({n for _, n in best.values()}) == 1, "the pipeline counted different tokens than the tokenizer"


if __name__ == "__main__":  # the 2-process measurement spawns workers that import this file
    main()
