"""The shared trainer: a run killed after a checkpoint resumes and ends with the same weights as one never killed."""
import logging

import pytest
import torch

from longctx_nb.train import TrainConfig, tiny_llama, train_lm, last_checkpoint

logging.getLogger("transformers").setLevel(logging.ERROR)


class Rand(torch.utils.data.Dataset):
    def __init__(self, n=32, T=16):
        g = torch.Generator().manual_seed(0); self.x = torch.randint(0, 64, (n, T), generator=g)
    def __len__(self): return len(self.x)
    def __getitem__(self, i): return {"input_ids": self.x[i], "labels": self.x[i], "position_ids": torch.arange(self.x.shape[1])}


class Killed(Exception): pass


def _cfg(): return TrainConfig(lr=3e-3, batch_tokens=64, micro_batch=2, max_tokens=64 * 10, save_steps=4, log_steps=2, warmup_steps=2)


def test_resume_after_kill_loses_nothing(tmp_path):
    from transformers import TrainerCallback
    ref = train_lm(tiny_llama(64, hidden=32, layers=2, heads=2, max_pos=16), Rand(), tmp_path / "ref", _cfg())

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 6: raise Killed()  # after the checkpoint at step 4, before the one at 8
    with pytest.raises(Killed):
        train_lm(tiny_llama(64, hidden=32, layers=2, heads=2, max_pos=16), Rand(), tmp_path / "run", _cfg(), callbacks=[Kill()])
    assert last_checkpoint(tmp_path / "run").endswith("checkpoint-4")
    # a fresh process would build the model again from any seed: the checkpoint's weights replace it
    log = train_lm(tiny_llama(64, hidden=32, layers=2, heads=2, max_pos=16, seed=123), Rand(), tmp_path / "run", _cfg())
    assert (ref["resumed_from_step"], log["resumed_from_step"]) == (0, 4)
    from transformers import AutoModelForCausalLM
    ma = AutoModelForCausalLM.from_pretrained(tmp_path / "ref" / "final"); mb = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    for (n, p), (_, q) in zip(ma.named_parameters(), mb.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), n
    ref_losses = [h["loss"] for h in ref["history"] if "loss" in h]
    run_losses = [h["loss"] for h in log["history"] if "loss" in h]
    assert run_losses[-3:] == pytest.approx(ref_losses[-3:], abs=1e-5)


def test_finished_phase_is_not_retrained(tmp_path):
    log = train_lm(tiny_llama(64, hidden=32, layers=1, heads=2, max_pos=16), Rand(), tmp_path, _cfg())
    again = train_lm(tiny_llama(64, hidden=32, layers=1, heads=2, max_pos=16), Rand(), tmp_path, _cfg())
    assert again["wall_s"] == log["wall_s"]


def test_checkpoints_of_another_run_are_never_resumed(tmp_path):
    train_lm(tiny_llama(64, hidden=32, layers=1, heads=2, max_pos=16), Rand(), tmp_path, _cfg(), init="A")
    cfg = _cfg(); cfg.lr = 1e-3
    log = train_lm(tiny_llama(64, hidden=32, layers=1, heads=2, max_pos=16), Rand(), tmp_path, cfg, init="A")
    assert [h["step"] for h in log["history"] if "loss" in h][0] == 2, "trained from step 0, not resumed"
    log2 = train_lm(tiny_llama(64, hidden=32, layers=1, heads=2, max_pos=16), Rand(), tmp_path, cfg, init="B")
    assert log2["key"] != log["key"] and [h["step"] for h in log2["history"] if "loss" in h][0] == 2
