"""One command for a GPU machine: the suite's GPU-scale figures, measured on whatever GPU is present, in one report.

Steps, each timed; one that fails is recorded with its error and the others still run:
  wheels            deepspeed, liger-kernel and flash-attn-4 installed from wheels/ (`make gpu-wheels`) where they
                    do not import and the folder exists; without them the run carries on and the report says so
  profile           `longctx check --profile P`, then `longctx run --profile P --run-dir RUN` (dry run: check only)
  distributed       bench/bench_distributed.py: the longest Llama-3-8B-shaped sequence on one GPU (ALST: 500K tokens
                    on one H100) and the MFU of a Llama-3.2-1B shape at 16K/32K/64K (ALST: 45%)
  packing           bench/bench_packing.py --synthetic: packing / naive real tokens/s per attention backend
                    (LongAlign: 2.9x)
  context_parallel  bench/bench_cp.py under torchrun: a ring-attention (cp_size=2) step against the Ulysses
                    (sp_size=2) one; needs ≥2 GPUs (skipped, with the reason, otherwise)

    python bench/gpu_check.py                     # on a GPU machine (`make gpu-check`), default profile smol
    python bench/gpu_check.py --dry-run --profile cpu --out /tmp/gc   # on CPU: the same steps on tiny shapes

`--out DIR` (default runs/gpu_check) gets report.json, report.md (check, measured, paper's figure, ratio, status)
and each step's raw JSON. Every figure comes from this run; only the papers' figures are constants.
"""
import argparse
import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALST_TOKENS = 500_000        # ALST (Arctic Long Sequence Training): Llama-8B, ~500K tokens on one H100
ALST_MFU = 0.45              # the MFU figure the issue compares a 1B model's at 16K/32K/64K against
LONGALIGN_PACKING = 2.9      # LongAlign: packing (with loss weighting) against naive batching, training speed
WHEELS = {"deepspeed": "deepspeed", "liger-kernel": "liger_kernel", "flash-attn-4": "flash_attn.cute"}  # pkg: module


def env() -> dict:
    "The environment for the steps' subprocesses: this checkout's `longctx_nb` first on the import path."
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), e.get("PYTHONPATH", "")) if p)
    e["PYTHONUNBUFFERED"] = "1"
    return e


def call(cmd: list[str], timeout: float, log: Path | None = None) -> dict:
    "Run `cmd` from the checkout's root; raise with the output's tail when it fails; return its record."
    t = time.perf_counter()
    shown = " ".join(cmd).replace(f"{sys.executable} -m longctx_nb.runner", "longctx").replace(sys.executable, "python")
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"{shown}: timed out after {timeout:.0f} s") from e
    if log:
        log.write_text(f"$ {shown}\n{r.stdout}\n--- stderr\n{r.stderr}")
    rec = {"cmd": shown, "rc": r.returncode, "seconds": round(time.perf_counter() - t, 1),
           "stdout_tail": r.stdout[-3000:], "stderr_tail": r.stderr[-3000:]}
    if r.returncode:
        tail = (r.stderr.strip() or r.stdout.strip())[-1500:]
        raise RuntimeError(f"{shown} exited {r.returncode}: {tail}")
    return rec


def importable(module: str, dist: str | None = None) -> bool:
    "Whether `module` imports (any error counts as no) and, given `dist`, that distribution is installed."
    try:
        if dist:
            importlib.metadata.distribution(dist)  # flash-attn 2 also ships flash_attn.cute: the name tells them apart
        importlib.import_module(module)
        return True
    except Exception:  # a broken install (missing CUDA library, ABI) is as unusable as a missing one
        return False


def step_wheels(a, out: Path) -> dict:
    "Install the optional GPU packages from wheels/ where they do not import; say what is there and what is not."
    missing = [pkg for pkg, mod in WHEELS.items() if not importable(mod, pkg)]
    res = {"wanted": list(WHEELS), "missing_before": missing, "wheels_dir": str(a.wheels)}
    if missing and a.dry_run:
        res["note"] = "dry run: nothing installed"
    elif missing and Path(a.wheels).is_dir():
        res["install"], errors = {}, []
        for pkg in missing:  # one at a time: a package whose wheels are absent leaves the others installed
            cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(a.wheels), pkg]
            try:
                res["install"][pkg] = call(cmd, a.timeout)
            except RuntimeError as e:
                errors.append(f"{pkg}: {str(e)[-300:]}")
        if errors:
            res["install_error"] = " / ".join(errors)
        importlib.invalidate_caches()
    elif missing:
        res["note"] = f"no {a.wheels}/ folder (`make gpu-wheels` fills it): carrying on without {', '.join(missing)}"
    res["available"] = {pkg: importable(mod, pkg) for pkg, mod in WHEELS.items()}
    return res


def step_profile(a, out: Path) -> dict:
    "`longctx check` on the profile, then (not in a dry run) `longctx run` into the run folder."
    cli = [sys.executable, "-m", "longctx_nb.runner"]
    stages = ["--stages", a.stages] if a.stages else []
    run_dir = a.run_dir or str(out / "run")
    res = {"profile": a.profile, "run_dir": run_dir,
           "check": call([*cli, "check", "--profile", a.profile, "--run-dir", run_dir, *stages], a.timeout,
                         out / "profile_check.log")}
    if a.dry_run:
        res["run"] = {"skipped": "dry run: `longctx check` only"}
        return res
    res["run"] = call([*cli, "run", "--profile", a.profile, "--run-dir", run_dir, *stages], a.timeout,
                      out / "profile_run.log")
    manifest = Path(run_dir) / "manifest.json"
    if manifest.exists():
        stages_done = json.loads(manifest.read_text()).get("stages", {})
        res["stages"] = {k: {"status": v.get("status"), "wall_s": v.get("wall_s")}
                         for k, v in stages_done.items()}
    return res


def step_distributed(a, out: Path) -> dict:
    "bench/bench_distributed.py: the longest sequence that trains on one GPU, and MFU at three lengths."
    raw = out / "bench_distributed.json"
    cmd = [sys.executable, "bench/bench_distributed.py", "--out", str(raw), "--peak-tflops", str(a.peak_tflops),
           "--max-len", str(a.max_len)]
    call(cmd + (["--dry-run"] if a.dry_run else []), a.timeout, out / "bench_distributed.log")
    return json.loads(raw.read_text())


def step_packing(a, out: Path) -> dict:
    "bench/bench_packing.py --synthetic: packing against naive batching per attention backend."
    raw = out / "packing.json"
    cmd = [sys.executable, "bench/bench_packing.py", "--synthetic", "--out", str(raw)]
    call(cmd + (["--dry-run"] if a.dry_run else []), a.timeout, out / "packing.log")
    return json.loads(raw.read_text())


def cp_skip(dry_run: bool) -> str | None:
    "Why the context-parallel step cannot run here (None when it can)."
    import torch  # torch loads only for this question, so the report's other steps never wait on it
    if dry_run:
        return "dry run on CPU: ring attention (torch context_parallel) needs ≥2 GPUs; nothing measured"
    n = torch.cuda.device_count()
    if n < 2:
        return f"needs ≥2 GPUs (found {n})"
    try:
        from torch.distributed.tensor.experimental import context_parallel  # noqa: F401  (torch >= 2.7)
    except ImportError:
        return f"torch {torch.__version__} has no torch.distributed.tensor.experimental.context_parallel"
    return None


def step_context_parallel(a, out: Path) -> dict:
    "A ring-attention (cp_size=2) training step against the Ulysses (sp_size=2) one, under torchrun on 2 GPUs."
    why = cp_skip(a.dry_run)
    if why:
        return {"skipped": why}
    raw = out / "context_parallel.json"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    call([*torchrun, "bench/bench_cp.py", "--out", str(raw)], a.timeout, out / "context_parallel.log")
    return json.loads(raw.read_text())


STEPS = {"wheels": step_wheels, "profile": step_profile, "distributed": step_distributed, "packing": step_packing,
         "context_parallel": step_context_parallel}


def run_step(name: str, fn, a, out: Path) -> dict:
    "Time one step; its figures, or its error (the step failed) or skip reason; its raw JSON written to `out`."
    print(f"== {name}", flush=True)
    t = time.perf_counter()
    try:
        figures = fn(a, out)
        skipped = figures.get("skipped") if isinstance(figures, dict) else None
        rec = {"status": "skipped" if skipped else "ok", "figures": figures}
        if skipped:
            rec["reason"] = skipped
    except Exception as e:  # a step's failure is a finding of the report, not the end of the check
        rec = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:4000], "traceback": traceback.format_exc()}
    rec["seconds"] = round(time.perf_counter() - t, 1)
    rec["raw"] = str(out / f"step_{name}.json")
    Path(rec["raw"]).write_text(json.dumps(rec, indent=1))
    print(f"   {rec['status']} in {rec['seconds']} s" + (f": {rec.get('error') or rec.get('reason')}"
                                                         if rec["status"] != "ok" else ""), flush=True)
    return rec


def row(check: str, measured: str, paper: str = "-", ratio: float | None = None, status: str = "ok") -> dict:
    "One line of the report's table."
    return {"check": check, "measured": measured, "paper": paper,
            "ratio": None if ratio is None else round(ratio, 3), "status": status}


def not_ok(rec: dict) -> str:
    "A failed or skipped step's status cell: the first line of its error or its reason."
    text = rec.get("error") or rec.get("reason") or ""
    return f"{rec['status']}: {text.splitlines()[0][:300] if text else ''}"


def rows_wheels(rec: dict) -> list[dict]:
    "The optional GPU packages: which import, and why the others do not."
    f = rec.get("figures") or {}
    have = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in f.get("available", {}).items())
    note = f.get("note")
    if f.get("install_error"):
        lack = [k for k, v in f.get("available", {}).items() if not v]
        note = f"not installed from {f['wheels_dir']}: {', '.join(lack)} (pip's errors in step_wheels.json)"
    return [row("GPU packages (deepspeed, liger-kernel, flash-attn-4)", have or "-",
                status=not_ok(rec) if rec["status"] != "ok" else ("ok" + (f": {note[:300]}" if note else "")))]


def rows_profile(rec: dict, profile: str) -> list[dict]:
    "`longctx check` and `longctx run` of the profile."
    if rec["status"] != "ok":
        return [row(f"longctx check/run --profile {profile}", "-", status=not_ok(rec))]
    f = rec["figures"]
    out = [row(f"longctx check --profile {profile}", f"ok in {f['check']['seconds']} s")]
    if "skipped" in f["run"]:
        out.append(row(f"longctx run --profile {profile}", "-", status=f"skipped: {f['run']['skipped']}"))
    else:
        st = f.get("stages", {})
        done = sum(v["status"] == "completed" for v in st.values())
        measured = f"{done}/{len(st)} stages completed in {f['run']['seconds']} s"
        out.append(row(f"longctx run --profile {profile}", measured))
    return out


def rows_distributed(rec: dict, dry_run: bool) -> list[dict]:
    "The longest sequence against ALST's 500K, and each MFU measurement against 45%."
    if rec["status"] != "ok":
        return [row("bench_distributed (longest sequence, MFU)", "-", status=not_ok(rec))]
    f = rec["figures"]
    big, small = ("tiny stand-in for Llama-3-8B", "tiny stand-in for Llama-3.2-1B") if dry_run else (
        "Llama-3-8B shape", "Llama-3.2-1B shape")
    lg = f.get("longest")
    if lg:
        peak = f", peak {lg['peak_gib']:.1f} GiB" if lg.get("peak_gib") else ""
        out = [row(f"longest sequence, {big}, 1 GPU", f"{lg['seq_len']:,} tokens, "
                   f"{lg['tokens_per_s']:,.0f} tokens/s{peak}", f"{ALST_TOKENS:,} tokens (ALST, 1x H100)",
                   lg["seq_len"] / ALST_TOKENS)]
    else:
        out = [row(f"longest sequence, {big}, 1 GPU", "none fit", f"{ALST_TOKENS:,} tokens (ALST, 1x H100)",
                   status="failed: the shortest length ran out of memory")]
    for m in f.get("mfu", []):
        name = f"MFU, {small}, {m['attn']}, {m['seq_len']:,} tokens"
        if m["mfu"] is None:
            out.append(row(name, "out of memory", f"{ALST_MFU:.0%} (ALST)", status="failed: out of memory"))
        else:
            out.append(row(name, f"{m['mfu']:.1%} ({m['tokens_per_s']:,.0f} tokens/s)", f"{ALST_MFU:.0%} (ALST)",
                           m["mfu"] / ALST_MFU))
    return out


def rows_packing(rec: dict) -> list[dict]:
    "Packing / naive real tokens/s per attention backend against LongAlign's 2.9x."
    paper = f"{LONGALIGN_PACKING}x (LongAlign)"
    if rec["status"] != "ok":
        return [row("packing / naive tokens/s", "-", paper, status=not_ok(rec))]
    out = []
    for name, b in rec["figures"]["backends"].items():
        check = f"packing / naive tokens/s, {name}"
        if "ratio" in b:
            measured = (f"{b['ratio']:.2f}x ({b['packing']['tokens_per_s']:,.0f} vs "
                        f"{b['naive']['tokens_per_s']:,.0f} tokens/s)")
            out.append(row(check, measured, paper, b["ratio"] / LONGALIGN_PACKING))
        else:
            out.append(row(check, "-", paper, status=f"skipped: {b['skipped']}" if "skipped" in b
                           else f"failed: {b.get('error', '')[:300]}"))
    return out


def rows_cp(rec: dict) -> list[dict]:
    "The ring-attention step against the Ulysses one."
    check = "ring attention (cp_size=2) step / Ulysses (sp_size=2) step"
    if rec["status"] != "ok":
        return [row(check, "-", status=not_ok(rec))]
    f = rec["figures"]
    measured = (f"{f['ring_s']:.3f} s vs {f['ulysses_s']:.3f} s per forward+backward, {f['seq_len']:,} tokens on "
                f"{f['world']} GPUs; loss {f['ring_loss']:.4f} vs {f['ulysses_loss']:.4f} (one GPU: "
                f"{f['reference_loss']:.4f})")
    return [row(check, measured, ratio=f["ring_s"] / f["ulysses_s"])]


def table(rows: list[dict]) -> str:
    "The rows as a Markdown table."
    lines = ["| check | measured | paper's figure | ratio | status |", "|---|---|---|---|---|"]
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3g}"
        cells = [r["check"], r["measured"], r["paper"], ratio, r["status"]]
        lines.append("| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


def device_name() -> str:
    "The GPU's name (and count), or cpu."
    import torch  # loaded here, after the wheels step may have installed packages next to it
    if not torch.cuda.is_available():
        return "cpu"
    return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"


PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "GH200": 989.0, "B200": 2250.0, "A100": 312.0,
               "A800": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}  # dense bf16 peak per GPU (vendors' sheets)


def peak_tflops(device: str, given: float | None) -> float:
    "The peak bf16 TFLOP/s MFU divides by: given, else looked up from the GPU's name, else an H100's."
    if given:
        return given
    for k in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if k in device:
            return PEAK_TFLOPS[k]
    return 989.0


def write_report(out: Path, rep: dict) -> None:
    "report.json and report.md in `out`."
    (out / "report.json").write_text(json.dumps(rep, indent=1))
    head = [f"# GPU check: {rep['device']}", "",
            f"Profile `{rep['profile']}`, {rep['started']}, {rep['seconds']} s in all; MFU against a peak of "
            f"{rep['peak_tflops']} bf16 TFLOP/s."]
    if rep["dry_run"]:
        head.append("**Dry run on CPU**: tiny shapes through the same code; the ratios to the papers' figures "
                    "are not comparable.")
    steps = [f"- `{k}`: {v['status']} in {v['seconds']} s (raw: `{Path(v['raw']).name}`)"
             for k, v in rep["steps"].items()]
    (out / "report.md").write_text("\n".join(head + ["", table(rep["rows"]), "", "Steps:", *steps, ""]))


def main(argv=None) -> int:
    "Command line: run every step, write the report, print its table; 0 unless a step failed."
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU: tiny shapes, `longctx check` only, nothing installed")
    ap.add_argument("--profile", default="smol", help="the profile for `longctx check`/`run` (default smol)")
    ap.add_argument("--stages", default=None, help="passed to `longctx check`/`run`, e.g. 01,02")
    ap.add_argument("--run-dir", default=None, help="run folder for `longctx run` (default OUT/run)")
    ap.add_argument("--out", default="runs/gpu_check", help="report folder (default runs/gpu_check)")
    ap.add_argument("--wheels", default="wheels", help="folder of wheels from `make gpu-wheels` (default wheels)")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    ap.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per command (default 4 h)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak per GPU (default: from its name)")
    ap.add_argument("--max-len", type=int, default=1 << 20,
                    help="bench_distributed's longest length tried (default 1M; 262144 fits a short GPU session)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    unknown = set(a.steps.split(",")) - set(STEPS)
    if unknown:
        ap.error(f"unknown steps {sorted(unknown)}: expected some of {list(STEPS)}")
    steps = {}
    if "wheels" in a.steps.split(","):
        steps["wheels"] = run_step("wheels", step_wheels, a, out)
    dev = device_name()
    a.peak_tflops = peak_tflops(dev, a.peak_tflops)
    for name, fn in STEPS.items():
        if name != "wheels" and name in a.steps.split(","):
            steps[name] = run_step(name, fn, a, out)
    rows = []
    makers = {"wheels": rows_wheels, "profile": lambda r: rows_profile(r, a.profile),
              "distributed": lambda r: rows_distributed(r, a.dry_run), "packing": rows_packing,
              "context_parallel": rows_cp}
    for name, rec in steps.items():
        rows += makers[name](rec)
    rep = {"dry_run": a.dry_run, "device": dev, "profile": a.profile, "started": started,
           "seconds": round(time.perf_counter() - t0, 1), "peak_tflops": a.peak_tflops,
           "paper": {"alst_tokens": ALST_TOKENS, "alst_mfu": ALST_MFU, "longalign_packing": LONGALIGN_PACKING},
           "steps": {k: {x: v[x] for x in v if x != "traceback"} for k, v in steps.items()}, "rows": rows}
    write_report(out, rep)
    print(table(rows))
    print(f"report: {(out / 'report.md').resolve()}")
    return 1 if any(s["status"] == "failed" for s in steps.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
