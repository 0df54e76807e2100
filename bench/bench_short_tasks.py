"""Stage 09's short-task scoring (lm-eval log-likelihoods of each choice) one prompt at a time against padded batches.

Usage: python bench/bench_short_tasks.py [--dtypes float32 auto] [--batches 1 8] [--questions 20] [--repeats 3]

SmolLM2-135M-Instruct (the offline registry model) loaded once per precision (`infer.resolve_dtype`), scored on the
stage's offline multiple-choice fixture (next-sentence questions from Paul Graham's essays, 4 choices each) through
`benchmarks.evaluate_model`, as stage 09 scores it. Each batch size runs `--repeats` times, the batch sizes taking
turns within a round, and the median is reported with its ratio to the first batch size. Then the accuracy of each
batch size and the largest difference of a choice's log-likelihood from the first batch size's: in float32 padding
changes nothing; in bfloat16 the sums may move in their last bits.
"""
import argparse, contextlib, io, logging, statistics, tempfile, time
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from longctx_nb.benchmarks import FIXTURE_MC, evaluate_model, mc_fixture, mc_task
from longctx_nb.evalsets import essay_docs
from longctx_nb.infer import resolve_dtype
from longctx_nb.models import registry_path


def score(model, tok, task: dict, batch: int) -> tuple[float, dict]:
    "Seconds to score the fixture at `batch` prompts a forward pass, and lm-eval's result."
    t = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # lm-eval's progress bars, three a call
        res = evaluate_model(SimpleNamespace(model=model, tok=tok, device="cpu"), [task], chat=False, max_length=2048,
                             batch_size=batch)
    return time.perf_counter() - t, res


def loglikelihoods(res: dict) -> list[float]:
    "Every choice's log-likelihood in a result, question by question."
    return [ll for s in res["samples"][FIXTURE_MC] for (ll, _), in s["resps"]]


def main():
    for name in ("lm_eval", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "auto"], help="precisions (infer.resolve_dtype)")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8],
                    help="prompts per forward pass; the first is the base")
    ap.add_argument("--questions", type=int, default=20, help="fixture questions (the cpu profile's short_samples)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each batch size; the median is reported")
    args = ap.parse_args()
    path = registry_path("smollm2-135m-instruct", progress=False)
    tok = AutoTokenizer.from_pretrained(path)
    task = mc_task(mc_fixture(essay_docs(), args.questions, Path(tempfile.mkdtemp()) / "mc.jsonl", seed=0))
    print(f"SmolLM2-135M-Instruct on {torch.get_num_threads()} threads, {args.questions} questions x 4 choices")
    for d in args.dtypes:
        dtype, int8 = resolve_dtype(d)
        if int8:
            raise SystemExit(f"--dtypes {d}: int8 weights are not measured here (stage 09 loads them through llm)")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
        times, results = {b: [] for b in args.batches}, {}
        for _ in range(args.repeats):
            for b in args.batches:
                secs, results[b] = score(model, tok, task, b)
                times[b].append(secs)
        base = args.batches[0]
        for b in args.batches:
            med = statistics.median(times[b])
            drift = max(abs(x - y) for x, y in zip(loglikelihoods(results[b]), loglikelihoods(results[base])))
            print(f"{d:>8s} ({str(dtype).removeprefix('torch.')}) batch {b:3d}: {med:6.2f} s, "
                  f"x{statistics.median(times[base]) / med:4.2f} against batch {base}; "
                  f"acc {results[b]['results'][FIXTURE_MC]['acc,none']:.2f}; largest log-likelihood change {drift:.4f}")


if __name__ == "__main__":
    main()
