"""
The prepared GPU check (`make gpu-check`): one command that measures what a first GPU run needs to know, for
when a GPU is at hand. On CUDA, at config/owt_fope.py's shape (GPT-2 small, block 512, bf16, torch.compile):

1. the training step of fope, rope, alibi and kerple: tokens/s, MFU (configurator.GPU_PEAK_FLOPS), peak memory,
   and how many graphs torch.compile made over the warm-up, the timed steps and an evaluation at the same length;
2. compiled against eager logits, every position embedding (a small model, float32);
3. evaluation to 8192 tokens (GPT.token_losses under bf16 autocast) for fope, rope and alibi: time, peak memory;
4. the rotation at the owt shape: eager, torch.compile and a plain copy of the same bytes (the roof).

Tokens are random ids of GPT-2's vocabulary (the speed and memory of a step do not depend on the text, and a
lent GPU machine reaches no network). It assumes no torch release beyond 2.x with torch.compile.

    python experiments/gpu_check.py                  # on a CUDA GPU, about 5 minutes -> results/gpu.{json,md}
    python experiments/gpu_check.py --device=cpu     # the dry run (tiny shapes): CI runs it
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from configurator import accelerator_peak_flops, describe_machine  # noqa: E402
from fope import apply_rotary  # noqa: E402
from model import GPT, POS_EMBS, GPTConfig  # noqa: E402

OWT = dict(n_layer=12, n_head=12, n_embd=768, block_size=512, vocab_size=50257, vocab_multiple=64)
TINY = dict(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=50257, vocab_multiple=64)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device, repeats):
    """Median seconds of fn() over repeats calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def counting_compile(model, backend):
    from torch._dynamo.testing import CompileCounterWithBackend
    torch._dynamo.reset()  # each model's graphs counted alone, none of the previous model's cache limits
    counter = CompileCounterWithBackend(backend)
    return torch.compile(model, backend=counter), counter


def autocast(device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast("cpu", enabled=False)


def train_step(pos_emb, shape, batch, steps, device, backend):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**shape, pos_emb=pos_emb)).to(device)
    compiled, counter = counting_compile(model, backend)
    opt = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), device.split(":")[0])
    x = torch.randint(0, shape["vocab_size"], (batch, shape["block_size"] + 1), device=device)

    def step():
        with autocast(device):
            _, loss = compiled(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(step, device, steps)
    model.eval()
    with torch.no_grad(), autocast(device):
        compiled(x[:, :-1], x[:, 1:])
    tokens = batch * shape["block_size"]
    peak = accelerator_peak_flops(device)
    return {"pos_emb": pos_emb, "ms_per_step": seconds * 1e3, "tokens_per_s": tokens / seconds,
            "mfu": model.flops_per_token() * tokens / seconds / peak if peak else None,
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None,
            "graphs": counter.frame_count}


def compiled_equals_eager(device, backend):
    out = {}
    for pos_emb in POS_EMBS:
        torch.manual_seed(0)
        model = GPT(GPTConfig(**TINY, pos_emb=pos_emb)).to(device).eval()
        x = torch.randint(0, TINY["vocab_size"], (2, 64), device=device)
        torch._dynamo.reset()
        with torch.no_grad():
            eager = model(x, x)[0]
            compiled = torch.compile(model, backend=backend)(x, x)[0]
        finite = torch.isfinite(eager)
        out[pos_emb] = (eager[finite] - compiled[finite]).abs().max().item()
    return out


def evaluation(pos_emb, shape, length, device):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**shape, pos_emb=pos_emb)).to(device).eval()
    x = torch.randint(0, shape["vocab_size"], (1, length + 1), device=device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with autocast(device):
        seconds = timed(lambda: model.token_losses(x[:, :-1], x[:, 1:]), device, 2)
    return {"pos_emb": pos_emb, "length": length, "seconds": seconds,
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None}


def rotation(shape, batch, device, repeats):
    H, hd, T = shape["n_head"], shape["n_embd"] // shape["n_head"], shape["block_size"]
    x = torch.randn(batch, H, T, hd, device=device, dtype=torch.bfloat16 if device.startswith("cuda") else torch.float32)
    cos, sin = torch.randn(1, T, hd // 2, device=device), torch.randn(1, T, hd // 2, device=device)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    compiled = torch.compile(apply_rotary)
    gbytes = 2 * x.numel() * x.element_size() / 1e9  # read x, write y
    out = {}
    for name, fn in (("eager", lambda: apply_rotary(x, cos, sin)), ("compile", lambda: compiled(x, cos, sin)),
                     ("copy", lambda: x.clone())):
        seconds = timed(fn, device, repeats)
        out[name] = {"ms": seconds * 1e3, "GB_per_s": gbytes / seconds}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="results/gpu")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per position embedding")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run make gpu-check where one is, or --device=cpu for the dry run")
    shape, batch = (OWT, 16) if cuda else (TINY, 2)
    backend = "inductor" if cuda else "aot_eager"
    steps = args.steps if cuda else 2
    t0 = time.time()
    doc = {"machine": describe_machine(), "device": args.device, "torch": torch.__version__, "shape": shape,
           "batch": batch, "backend": backend, "date": time.strftime("%Y-%m-%d %H:%M")}
    doc["train"] = [train_step(pe, shape, batch, steps, args.device, backend) for pe in ("fope", "rope", "alibi", "kerple")]
    doc["compiled_vs_eager_max_abs"] = compiled_equals_eager(args.device, backend)
    eval_len = 8192 if cuda else 256
    doc["eval"] = [evaluation(pe, shape, eval_len, args.device) for pe in ("fope", "rope", "alibi")]
    doc["rotation"] = rotation(shape, batch, args.device, 20 if cuda else 2)
    doc["seconds"] = time.time() - t0
    torch._dynamo.reset()
    lines = [f"GPU check: {doc['machine']}, {args.device}, torch {doc['torch']}, {backend}, batch {batch} x "
             f"{shape['block_size']} ({time.strftime('%Y-%m-%d')}, {doc['seconds']:.0f} s)", "",
             "| step | ms | tokens/s | MFU | peak GB | graphs |", "| --- | --- | --- | --- | --- | --- |"]
    for r in doc["train"]:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] else "-"
        mem = f"{r['peak_memory_gb']:.1f}" if r["peak_memory_gb"] is not None else "-"
        lines.append(f"| {r['pos_emb']} | {r['ms_per_step']:.1f} | {r['tokens_per_s']:,.0f} | {mfu} | {mem} | {r['graphs']} |")
    lines += ["", "| eval | length | s | peak GB |", "| --- | --- | --- | --- |"]
    for r in doc["eval"]:
        mem = f"{r['peak_memory_gb']:.1f}" if r["peak_memory_gb"] is not None else "-"
        lines.append(f"| {r['pos_emb']} | {r['length']} | {r['seconds']:.2f} | {mem} |")
    lines += ["", "rotation: " + ", ".join(f"{k} {v['ms']:.3f} ms ({v['GB_per_s']:.0f} GB/s)" for k, v in doc["rotation"].items()),
              "compiled vs eager, max |logit difference|: "
              + ", ".join(f"{k} {v:.1e}" for k, v in doc["compiled_vs_eager_max_abs"].items())]
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(f"{args.out}.json", "w") as f:
        json.dump(doc, f, indent=1)
    with open(f"{args.out}.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
