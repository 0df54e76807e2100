"""The cpu run's real-model evaluations again in float32, answer by answer against the run's own precision.

Usage: python bench/bench_precision.py [RUN_DIR] [--stages 07 09]   (default runs/cpu, a finished `make run`)

A copy of RUN_DIR runs stages 07 (the needle grids) and 09 (RULER, the LongBench fixture, the short-task fixture)
again with every model's `dtype` set to float32, everything else as the run had it (its parameters are read from its
manifest). Each cell is then matched with the run's own (needle: variant, length, depth; stage 09: task, length,
sample) and the greedy answers compared: per stage and model, how many are identical, the mean score in each
precision, and the cells whose answers differ with both scores. Short tasks are scored by log-likelihood: their
accuracy in each precision is printed. On a CPU without native bf16 the run computed in float32 already, and there
is nothing to compare. The copy is removed at the end; RUN_DIR is only read.
"""
import argparse, json, shutil, subprocess, sys, tempfile
from collections import Counter
from pathlib import Path

import pandas as pd

from longctx_nb.core import read_json, read_jsonl

STAGES = {"07": "07_needle", "09": "09_benchmarks"}


def float32_models(params: dict) -> dict:
    "A stage's `models` parameter with every model's precision set to float32."
    return {name: {**spec, "dtype": "float32"} for name, spec in params["models"].items()}


def model_sources(stage_dir: Path) -> dict:
    "Where each model of a stage came from, with its precision (stage 07: `model_sources`, stage 09: `models`)."
    m = read_json(stage_dir / "metrics.json")
    return m.get("model_sources") or m["models"]


def needle_cells(stage_dir: Path, model: str) -> dict:
    "Stage 07's results of `model`: {(variant, length, depth): (answer, contains)}."
    rows = read_jsonl(stage_dir / "results" / f"{model}.jsonl")
    return {(r["variant"], r["length"], r["depth"]): (r["output"], r["contains"]) for r in rows}


def benchmark_cells(stage_dir: Path, model: str) -> dict:
    "Stage 09's generated answers of `model`: {(task, length, sample): (answer, score)}."
    rows = read_jsonl(stage_dir / "samples" / f"{model}.jsonl")
    return {(r["task"], r["length"], r["index"]): (r["answer"], r["score"]) for r in rows if r["score"] is not None}


def short(answer: str, n: int = 90) -> str:
    "An answer on one line, cut to `n` characters."
    a = repr(answer)
    return a if len(a) <= n else a[:n - 1] + "…"


def compare(label: str, ours: dict, f32: dict, dtype: str, show: int = 4) -> None:
    "Per model: identical answers and mean scores, the differing answers per task (or variant), up to `show` of them."
    keys = sorted(set(ours) & set(f32), key=str)
    diff = [k for k in keys if ours[k][0] != f32[k][0]]
    m_ours, m_f32 = (sum(d[k][1] for k in keys) / max(1, len(keys)) for d in (ours, f32))
    by = Counter(k[0] for k in diff)
    print(f"{label:28s} {len(keys) - len(diff):3d}/{len(keys):3d} answers identical; mean score {dtype} "
          f"{m_ours:.3f}, float32 {m_f32:.3f}" + (f"; differing: {dict(by)}" if by else ""))
    for k in diff[:show]:
        print(f"    {k}: {dtype} ({ours[k][1]:.2f}) {short(ours[k][0])}\n    {' ' * len(str(k))}  float32 "
              f"({f32[k][1]:.2f}) {short(f32[k][0])}")
    if len(diff) > show:
        print(f"    ... and {len(diff) - show} more")


def short_accuracy(stage_dir: Path) -> pd.DataFrame:
    "Stage 09's short-task accuracy per model and task."
    t = pd.read_csv(stage_dir / "tables" / "results.csv")
    return t[(t.group == "short") & (t.metric == "acc")].set_index(["model", "task"]).value


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", nargs="?", default="runs/cpu", help="a finished cpu run")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES), help="stages compared")
    args = ap.parse_args()
    run = Path(args.run_dir)
    man = read_json(run / "manifest.json", {})
    stages = {s: STAGES[s] for s in args.stages}
    missing = [n for n in stages.values() if man.get("stages", {}).get(n, {}).get("status") != "completed"]
    if missing:
        sys.exit(f"{run / 'manifest.json'}: {', '.join(missing)} not completed; finish the run first (make run)")
    dtypes = {n: {m: s.get("dtype") for m, s in model_sources(run / n).items()} for n in stages.values()}
    if all(d in (None, "float32") for ds in dtypes.values() for d in ds.values()):
        print(f"{run}: every model ran in float32 (no native bf16 here, or dtype set): nothing to compare")
        return
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / run.name
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns(*stages.values()))
        over = [a for s, n in stages.items()
                for a in ("-p", f"{s}.models={json.dumps(float32_models(man['stages'][n]['parameters']))}")]
        cmd = [str(Path(sys.executable).parent / "longctx"), "run", "--run-dir", str(copy), "--stages",
               ",".join(stages), "--force", *over]
        print(f"running stages {', '.join(stages)} in float32 in a copy of {run} ...", flush=True)
        subprocess.run(cmd, check=True)
        for s, n in stages.items():
            cells = needle_cells if s == "07" else benchmark_cells
            for model, dtype in dtypes[n].items():
                compare(f"stage {s} {model}", cells(run / n, model), cells(copy / n, model), dtype or "float32")
        if "09" in stages:
            acc = pd.DataFrame({"run": short_accuracy(run / STAGES["09"]),
                                "float32": short_accuracy(copy / STAGES["09"])})
            print("stage 09 short tasks (accuracy):\n" + acc.to_string())


if __name__ == "__main__":
    main()
