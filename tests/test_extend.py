"""Stage 03 on the cpu run: extended models carry their rope configuration, the loss tables cover every
(domain, band), and a progressive schedule runs phase after phase from the previous checkpoint."""
import json, shutil

import pandas as pd

from conftest import longctx, manifest
from longctx_nb.core import TRAIN_LOG
from longctx_nb.extend import rope_config, model_inv_freq, rope_inv_freq
from longctx_nb.train import load_model


def test_extended_models_load_with_their_rope(cpu_run):
    m = load_model(cpu_run / "models" / "per_source" / "phase-0" / "final")
    want = rope_config("abf", 10000.0, 256, 1024, 160000.0)
    assert m.config.rope_parameters == want and m.config.max_position_embeddings == 1024
    assert (abs(model_inv_freq(m) - rope_inv_freq(want, 32, 1024)[0]) < 1e-6).all()


def test_loss_tables_cover_every_domain_band_and_model(cpu_run):
    st = cpu_run / "03_extend"
    losses = pd.read_csv(st / "tables" / "validation_loss.csv")
    assert set(losses.model) == {"base", "base + rope, untrained", "original", "per_source", "global", "upsample_domain"}
    cells = losses.groupby(["domain", "band"]).size()
    assert (cells == 6).all() and len(cells) >= 12 and (losses.tokens > 0).all()
    delta = pd.read_csv(st / "tables" / "delta_vs_original.csv")
    assert {"per_source", "global", "upsample_domain"} <= set(delta.columns)
    m = json.loads((st / "metrics.json").read_text())
    assert m["train"]["base"]["final_loss"] < 7.0  # the base learned something (ln 8192 = 9.0)
    ext = [v["final_loss"] for k, v in m["train"].items() if k != "base"]
    assert len(ext) == 4 and all(x < 7.0 for x in ext)
    for f in ("training_loss.png", "position_loss.png", "delta_vs_original.png"): assert (st / "figures" / f).exists()


def test_progressive_schedule_runs_phases_back_to_back(cpu_run, tmp_path):
    rd = tmp_path / "run"; rd.mkdir()
    for p in ("data.json", "manifest.json", "upsampled", "tokens", "02_upsample"):
        (shutil.copytree if (cpu_run / p).is_dir() else shutil.copy)(cpu_run / p, rd / p)
    phases = "[{seq_len: 512, rope_theta: 40000.0, max_tokens: 4096}, {seq_len: 1024, rope_theta: 160000.0, max_tokens: 4096}]"
    longctx("run", "--run-dir", str(rd), "--stages", "03", "-p", f"03.phases={phases}", "-p", "03.strategies=[per_source]",
            "-p", "03.base_train={lr: 0.003, max_tokens: 16384, batch_tokens: 2048, micro_batch: 8}", "-p", "03.eval_docs=1")
    p0 = json.loads((rd / "models" / "per_source" / "phase-0" / TRAIN_LOG).read_text())
    p1 = json.loads((rd / "models" / "per_source" / "phase-1" / TRAIN_LOG).read_text())
    assert (p0["seq_len"], p1["seq_len"]) == (512, 1024) and p0["finished"] and p1["finished"]
    m1 = load_model(rd / "models" / "per_source" / "phase-1" / "final")
    assert m1.config.rope_parameters["rope_theta"] == 160000.0 and m1.config.max_position_embeddings == 1024
    assert manifest(rd)["stages"]["03_extend"]["status"] == "completed"
