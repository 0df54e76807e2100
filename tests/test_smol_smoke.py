"""The `smol` profile end to end on CPU: the GPU profile's code paths at CPU sizes, every stage 01-09.

`SMOKE` shrinks sizes only (lengths, steps, counts, models and tasks evaluated, and the parallel degree of stage 06);
every switch stays as the profile sets it: SmolLM2-135M-Instruct's own tokenizer and checkpoint, the RoPE base change
and continual pretraining on all four data strategies, bf16 autocast and checkpointing, SmolLM2 writing stage 04's
data, packing with the attention backend's CPU fallback, stage 06 training its own job under DeepSpeed ZeRO-3 with
Ulysses SP, a tiled MLP and the loss in chunks, needles across every strategy, the judged LongBench-Chat run, and stage
09's lm-eval benchmarks with RULER inside and past SmolLM2's 8K window. Stage 09's short tasks are the offline
multiple-choice fixture: the leaderboard's tasks that smol names need the hub. Stage 06 runs 3 processes with SP 3:
SmolLM2's 9 attention heads (3 key/value) split by 3, not by 2. `make smoke` runs this file (LONGCTX_SMOKE=1); `make
test` skips it: on a 2-core AVX2 machine, where bf16 autocast is emulated, it outlasts the rest of the suite's
budget."""
import json, os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from conftest import longctx, manifest
from longctx_nb.core import PROFILES_DIR, TRAIN_LOG
from test_benchmarks import check_stage

SMOKE = [
    "01.max_docs=200",
    "02.token_budget=12000", "02.seq_len=256", "02.threshold=1024", "02.shard_seqs=16",
    "03.phases=[{seq_len: 256, rope_theta: 1600000.0, max_tokens: 256}]",
    "03.extend_train={lr: 0.00002, schedule: constant, warmup_steps: 0, batch_tokens: 256, micro_batch: 1, "
    "bf16: true, grad_checkpointing: true, save_steps: 20}",
    "03.eval_len=256", "03.eval_docs=1",
    "04.generator={path: smollm2-135m-instruct, batch_size: 4, max_new_tokens: 48}", "04.max_new_tokens=48",
    "04.summary_tokens=32", "04.retries=1",
    "04.n_self_instruct=1", "04.n_agent=1", "04.n_backtranslation=1", "04.pool_size=40", "04.short_per_long=2",
    "04.doc_tokens=300", "04.agent_doc_tokens=128", "04.chunk_tokens=128", "04.summary_budget=96",
    "04.backtranslation_tokens=[200, 400]", "04.view_tokens=256",
    "05.max_len=256", "05.n_long=2", "05.n_short=4", "05.loss_all_above=200",
    "06.nproc=3", "06.phases=[{seq_len: 384, sp_size: 3, steps: 2}]", "06.loss_chunk=64",
    "07.lengths=[512, 1024]", "07.depths={n: 2, spacing: linear}", "07.max_new_tokens=8",
    "08.n_fixture=1", "08.max_length=512", "08.max_new_tokens=16",
    "08.models={sft-packing: {path: models/sft-packing/final, max_length: 512, batch_size: 1}}",
    # RULER inside and past SmolLM2's 8K window, for SmolLM2 as is and one strategy's extension; one LongBench task
    "09.models={base: {path: smollm2-135m-instruct, prompt: chat}, "
    "per_source: {path: models/per_source/phase-0/final, prompt: chat}}",
    "09.tasks=[niah_single_1, longbench_qasper]", "09.lengths=[4096, 9216]", "09.samples_per_cell=1",
    "09.longbench_samples=1", "09.longbench_max_length=1024", "09.longbench_max_gen=16",
    "09.short_tasks={next_sentence: 0}", "09.short_samples=20",
]
pytestmark = pytest.mark.skipif(not os.environ.get("LONGCTX_SMOKE"),
                                reason="the smol smoke runs with `make smoke` (LONGCTX_SMOKE=1)")
STAGES = ["01_mixture", "02_upsample", "03_extend", "04_synth", "05_packing", "06_distributed", "07_needle",
          "08_longbench_chat", "09_benchmarks"]


def metrics(rd, stage): return json.loads((rd / stage / "metrics.json").read_text())


@pytest.fixture(scope="module")
def smol_run(tmp_path_factory):
    rd = tmp_path_factory.mktemp("runs") / "smol"
    longctx("run", "--profile", "smol", "--run-dir", str(rd), *[a for o in SMOKE for a in ("-p", o)])
    return rd


def test_every_stage_completes(smol_run):
    st = manifest(smol_run)["stages"]
    assert [s for s in STAGES if st[s]["status"] == "completed"] == STAGES
    assert manifest(smol_run)["runs"][-1]["profile"].endswith("smol.yaml")


def test_continual_pretraining_starts_from_smollm2_with_the_new_rope_base(smol_run):
    m = metrics(smol_run, "03_extend")
    for strategy in ("original", "per_source", "global", "upsample_domain"):
        cfg = json.loads((smol_run / "models" / strategy / "phase-0" / "final" / "config.json").read_text())
        assert cfg["num_attention_heads"] == 9 and cfg["vocab_size"] == 49152   # SmolLM2-135M, not a tiny model
        assert cfg["rope_parameters"]["rope_theta"] == 1600000.0
    base = [v["base"] for v in m["loss"].values()]
    assert all(2.0 < b < 4.5 for b in base), base     # a pretrained model's loss on real text, not a random one's ~10.8


def test_smollm2_writes_stage_04_records(smol_run):
    total = metrics(smol_run, "04_synth")["funnel"]["total"]
    assert total["generated"] == 3 and total["after_decontamination"] >= 1, total


def test_packing_trains_every_method(smol_run):
    m = metrics(smol_run, "05_packing")
    assert set(m["train"]) == {"naive", "sorted", "packing"} and all(v["steps"] >= 1 for v in m["train"].values())
    assert m["exactness"]["loss_gap_weighted"] < 1e-4   # packed + weighted = naive, on SmolLM2's attention fallback


def test_stage_06_trains_its_job_under_zero3_ulysses_tiled_mlp_chunked_loss(smol_run):
    job = json.loads((smol_run / "06_distributed" / "launch" / "job.json").read_text())
    log = json.loads((smol_run / "models" / "distributed" / "phase-0" / TRAIN_LOG).read_text())
    assert log["deepspeed"] and log["world"] == 3 and log["config"]["sp_size"] == 3
    assert log["config"]["tiled_mlp"] == 4 and log["config"]["loss_chunk"] == 64 and log["config"]["bf16"]
    assert job["train"]["optim"] == "adamw_torch" and job["model"]["path"].endswith("models/per_source/phase-0/final")
    (row,) = metrics(smol_run, "06_distributed")["job"]
    assert row["steps"] == 2 and row["seq_len"] == 384 and 0 < row["last_loss"] < 6   # SmolLM2's loss, not ~10.8
    with safe_open(str(smol_run / "models" / "distributed" / "phase-0" / "final" / "model.safetensors"), "pt") as f:
        emb = f.get_tensor("model.embed_tokens.weight")
    assert emb.shape == (49152, 576) and emb.dtype == torch.bfloat16   # ZeRO-3 gathered it; DeepSpeed ran in bf16


def test_needles_put_every_strategy_side_by_side(smol_run):
    figs = {p.name for p in (smol_run / "07_needle" / "figures").glob("*.png")}
    assert any("smol" in f for f in figs), figs
    m = metrics(smol_run, "07_needle")
    assert {"base", "original", "per_source", "global", "upsample_domain", "sft-packing"} <= set(json.dumps(m)
                                                                                                 .split('"'))


def test_longbench_chat_judges_the_sft_model(smol_run):
    m = metrics(smol_run, "08_longbench_chat")
    assert "sft-packing" in json.dumps(m)


def test_benchmarks_score_ruler_past_smollm2s_window(smol_run):
    p = yaml.safe_load((PROFILES_DIR / "smol.yaml").read_text())["stages"]["09"]
    p.update({o.split("=", 1)[0][3:]: yaml.safe_load(o.split("=", 1)[1]) for o in SMOKE if o.startswith("09.")})
    scored = check_stage(smol_run, p)  # every model x task x length, LongBench, retention against SmolLM2 as is
    assert max(scored.length.dropna()) > 8192  # past SmolLM2's window
    inside = scored[(scored.model == "base") & (scored.task == "niah_single_1") & (scored.length == 4096)]
    assert inside.value.item() == 1.0  # SmolLM2 as is finds the needle inside its window
