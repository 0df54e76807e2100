"""A ring-attention (context-parallel) training step against a Ulysses (sequence-parallel) one, on the same GPUs.

Run under torchrun, one process per GPU (2 or more); every rank holds the whole Llama-3.2-1B-shaped model (random
init, bf16, activation checkpointing) and 1/world of one sequence:
  ring     torch's `context_parallel` (torch.distributed.tensor.experimental): the sequence sharded with load
           balancing, causal SDPA turned into ring attention (keys and values passed around the ranks)
  ulysses  contiguous shards; before attention an all-to-all trades the sequence split for a head split, SDPA
           runs on the whole sequence for 1/world of the heads, and an all-to-all trades back
Both time forward + backward (no optimizer step, no gradient all-reduce: the same for both) and report the global
loss, which must agree between them and with one rank's loss over the whole sequence (same weights, same tokens).

    torchrun --standalone --nproc_per_node=2 bench/bench_cp.py --out cp.json
    torchrun --standalone --nproc_per_node=2 bench/bench_cp.py --device cpu --seq-len 256   # gloo: Ulysses only
"""
import argparse
import json
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from longctx_nb.parallel import SHAPES, Shape

CAUSAL, ULYSSES = "cp_causal_sdpa", "ulysses_sdpa"  # the attention functions registered with transformers


def repeat_kv(x: torch.Tensor, n: int) -> torch.Tensor:
    "Key/value heads repeated `n` times to match the query heads (GQA)."
    return x if n == 1 else x.repeat_interleave(n, dim=1)


def causal_sdpa(module, q, k, v, attention_mask, *args, **kw):
    "Causal SDPA over the given (local) sequence, mask ignored: under `context_parallel` it becomes ring attention."
    k, v = repeat_kv(k, q.shape[1] // k.shape[1]), repeat_kv(v, q.shape[1] // v.shape[1])
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=kw.get("scaling"))
    return out.transpose(1, 2).contiguous(), None


def all_to_all(x: torch.Tensor) -> torch.Tensor:
    "Differentiable all-to-all over the world: chunk i of dim 0 goes to rank i, and dim 0 of the result is by sender."
    from torch.distributed._functional_collectives import all_to_all_single_autograd, wait_tensor
    return wait_tensor(all_to_all_single_autograd(x, None, None, dist.group.WORLD))


def seq_to_heads(x: torch.Tensor, world: int) -> torch.Tensor:
    "(B, H, S, D) with this rank's S tokens and all heads -> (B, H/world, world*S, D): all tokens, this rank's heads."
    B, H, S, D = x.shape
    send = x.reshape(B, world, H // world, S, D).transpose(0, 1).contiguous()
    recv = all_to_all(send)  # recv[i]: rank i's tokens of this rank's heads
    return recv.permute(1, 2, 0, 3, 4).reshape(B, H // world, world * S, D)


def heads_to_seq(x: torch.Tensor, world: int) -> torch.Tensor:
    "(B, H/world, world*S, D) -> (B, H, S, D): the inverse of `seq_to_heads`."
    B, h, T, D = x.shape
    send = x.reshape(B, h, world, T // world, D).permute(2, 0, 1, 3, 4).contiguous()
    recv = all_to_all(send)  # recv[i]: this rank's tokens of rank i's heads
    return recv.transpose(0, 1).reshape(B, h * world, T // world, D)


def ulysses_sdpa(module, q, k, v, attention_mask, *args, **kw):
    "Ulysses attention: all-to-all to a head split, causal SDPA over the whole sequence, all-to-all back."
    world = dist.get_world_size()
    k, v = repeat_kv(k, q.shape[1] // k.shape[1]), repeat_kv(v, q.shape[1] // v.shape[1])
    q, k, v = (seq_to_heads(t, world) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=kw.get("scaling"))
    return heads_to_seq(out, world).transpose(1, 2).contiguous(), None


def register() -> None:
    "Register both attention functions with transformers, with no mask built for them (attention is causal)."
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface
    for name, fn in ((CAUSAL, causal_sdpa), (ULYSSES, ulysses_sdpa)):
        AttentionInterface.register(name, fn)
        AttentionMaskInterface.register(name, lambda *a, **k: None)


def build(shape: Shape, device: str, dtype):
    "A Llama-shaped model, the same weights on every rank (rank 0's, broadcast)."
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                      num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                      num_key_value_heads=shape.kv_heads, max_position_embeddings=1 << 20,
                      tie_word_embeddings=shape.tied, rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    torch.manual_seed(0)
    with torch.device(device):
        m = LlamaForCausalLM(cfg).to(dtype)
    for p in m.parameters():
        dist.broadcast(p.data, 0)
    m.gradient_checkpointing_enable({"use_reentrant": False})
    m.config.use_cache = False
    return m


def local_loss(model, ids, pos, tgt, total: int) -> torch.Tensor:
    "This rank's share of the global mean next-token loss (its targets' summed NLL / all targets)."
    logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits
    return F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten(), reduction="sum", ignore_index=-100) / total


def sync(device: str) -> None:
    "Wait for the GPU's queued work (timing)."
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> tuple[float, float]:
    "A warm-up call of `fn` (returning the loss), then the fastest of `repeats`; (seconds, global loss)."
    fn()
    best, loss = float("inf"), None
    for _ in range(repeats):
        sync(device)
        dist.barrier()
        t = time.perf_counter()
        loss = fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    dist.all_reduce(loss)
    return best, float(loss)


def main():
    "Time a ring step and a Ulysses step on the same model and tokens; rank 0 writes the figures."
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seq-len", type=int, default=32768, help="tokens in the one sequence (all ranks together)")
    ap.add_argument("--shape", default="llama-3.2-1b", choices=sorted(SHAPES), help="model shape")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: gloo, tiny shape, Ulysses only")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per method (the fastest is kept)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here (rank 0)")
    a = ap.parse_args()
    dev = a.device
    dist.init_process_group("nccl" if dev == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if dev == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    shape = SHAPES[a.shape] if dev == "cuda" else Shape(64, 2, 4, 2, 172, 512)
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    T = a.seq_len - a.seq_len % (2 * world)  # ring's load balancing cuts the sequence into 2*world chunks
    register()
    model = build(shape, dev, dtype)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, shape.vocab, (1, T), generator=g).to(dev)
    pos = torch.arange(T, device=dev)[None]
    tgt = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], 1)  # next token; none after the last
    res = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "world": world, "seq_len": T,
           "shape": a.shape if dev == "cuda" else "tiny", "measures": "forward + backward, best of "
           f"{a.repeats}"}
    model.set_attn_implementation(CAUSAL)
    with torch.no_grad():  # the loss on one rank over the whole sequence: what both methods must reproduce
        res["reference_loss"] = float(local_loss(model, ids, pos, tgt, T - 1))
    S = T // world
    sl = slice(rank * S, (rank + 1) * S)

    def ulysses_step():
        "One Ulysses forward+backward on this rank's contiguous shard; its share of the loss."
        model.set_attn_implementation(ULYSSES)
        loss = local_loss(model, ids[:, sl], pos[:, sl], tgt[:, sl], T - 1)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss.detach()

    res["ulysses_s"], res["ulysses_loss"] = timed(ulysses_step, dev, a.repeats)
    if dev == "cuda":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor.experimental import context_parallel
        mesh = init_device_mesh("cuda", (world,), mesh_dim_names=("cp",))

        def ring_step():
            "One ring-attention forward+backward on this rank's load-balanced shard; its share of the loss."
            model.set_attn_implementation(CAUSAL)
            b = [ids.clone(), pos.clone(), tgt.clone()]  # sharded in place by context_parallel
            with context_parallel(mesh, buffers=b, buffer_seq_dims=[1, 1, 1], no_restore_buffers=set(b)):
                loss = local_loss(model, *b, T - 1)
                loss.backward()
            model.zero_grad(set_to_none=True)
            return loss.detach()

        res["ring_s"], res["ring_loss"] = timed(ring_step, dev, a.repeats)
        res["ring_over_ulysses"] = round(res["ring_s"] / res["ulysses_s"], 3)
        res["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 1)
    else:
        res["ring"] = "skipped: torch's ring attention runs on CUDA only"
    if rank == 0:
        print(json.dumps(res, indent=1), flush=True)
        if a.out:
            with open(a.out, "w") as f:
                f.write(json.dumps(res, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
