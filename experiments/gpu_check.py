"""
The prepared GPU check: what a first, short GPU run must bring back, on a bare machine (its own python and
torch, no network, perhaps no tiktoken, cffi or C compiler). It needs only torch, numpy and this repo.

Stages, in order of value. Each runs in its own try/except under its own time budget and appends one JSON
line to <out>.jsonl the moment it ends (its numbers, or its error), so a crash or a timeout loses only the
stage it hit; <out>.md is a table of whatever finished.

    env       torch, CUDA, the device, the peak FLOP/s used for MFU, which optional packages exist
    train     train.py itself: config/owt_fope.py and owt_rope.py on synthetic GPT-2-shaped shards (a temporary
              folder: same vocabulary, same shapes), 20 iterations, eval, checkpoint, then a resume of 2;
              ms/iter, tokens/s and MFU from iteration 5 on (medians), peak memory, and torch's own counters:
              graphs, graph breaks, recompile-limit hits
    flex      FlexAttention against the dense path for alibi, kerple and t5: forward and gradients, within a
              tolerance that fails the stage
    sweep     GPT.token_losses over 12 lengths up to 32k for fope, rope and alibi: the peak memory per length
              must grow as T, not T^2 (no score matrix), with no recompile-limit hit
    smollm2   a SmolLM2-135M-shaped model (random weights: no file) in bf16: 8k, 16k and 32k tokens for rope,
              fope with production's knobs and a YaRN x4 override; time and peak memory
    rotation  the rotation (eager, torch.compile) against a plain copy of the same bytes (the bandwidth roof)

    python experiments/gpu_check.py                 # on a CUDA GPU: about 6 minutes -> results/gpu.{jsonl,md}
    python experiments/gpu_check.py --device=cpu    # the dry run: the same stages at tiny shapes (CI)
    python experiments/gpu_check.py --stages train flex --budget 120
"""

import argparse
import contextlib
import gc
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configurator import accelerator_peak_flops, autocast_context, describe_machine  # noqa: E402
from fope import apply_rotary  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

GPT2_VOCAB = 50257
OPTIONAL = ("tiktoken", "cffi", "tokenizers", "gguf", "safetensors", "tqdm", "matplotlib", "triton")
# each stage's time budget (seconds) on a GPU; the dry run's shapes take a few seconds each
BUDGETS = {"env": 20, "train": 200, "flex": 60, "sweep": 90, "smollm2": 60, "rotation": 30}  # 7.7 min in all


class StageTimeout(Exception):
    pass


# -----------------------------------------------------------------------------
# helpers


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
    return statistics.median(times)


def fresh_memory(device):
    """Forget what earlier stages held, so a peak is this stage's own."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gb(device):
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def autocast(device):  # bfloat16 on the GPU, as train.py's dtype=auto there; float32 in a CPU dry run
    return autocast_context(device, "bfloat16" if device.startswith("cuda") else "float32")


def dynamo_counts():
    """torch._dynamo's own counters: graphs compiled, graph breaks, recompile-limit hits (a fallback to eager)."""
    from torch._dynamo.utils import counters
    limit_hits = sum(n for category in counters.values() for msg, n in category.items()
                     if "recompile limit" in str(msg).lower() or "cache_size_limit" in str(msg).lower())
    return {"graphs": counters["stats"]["unique_graphs"], "graph_breaks": sum(counters["graph_break"].values()),
            "recompile_limit_hits": limit_hits}


def counted(before):
    now = dynamo_counts()
    return {k: now[k] - before[k] for k in now}


# -----------------------------------------------------------------------------
# the stages: each returns a dict of plain numbers (its JSON line) or raises


def importable(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules (hidden)
        return False


def stage_env(args):
    cuda = args.device.startswith("cuda")
    found = {name: importable(name) for name in OPTIONAL}
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "device": args.device,
            "device_name": torch.cuda.get_device_name(args.device) if cuda else None,
            "peak_flops": accelerator_peak_flops(args.device), "machine": describe_machine(),
            "compiler": shutil.which("cc") or shutil.which("gcc"), "optional_packages": found,
            "missing": [name for name, ok in found.items() if not ok]}


def synthetic_gpt2_shards(folder, n_train, n_val, seed=0):
    """Random GPT-2 token ids in the shard format, with GPT-2's meta.json: what train.py reads of OpenWebText."""
    from data.shards import write_shard
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    write_shard(os.path.join(folder, "train_000000.bin"), rng.integers(0, GPT2_VOCAB, n_train), GPT2_VOCAB)
    write_shard(os.path.join(folder, "val_000000.bin"), rng.integers(0, GPT2_VOCAB, n_val), GPT2_VOCAB)
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump({"tokenizer": "gpt2", "vocab_size": GPT2_VOCAB}, f)
    return folder


LOG_LINE = re.compile(r"^iter (\d+): loss [\d.naif]+, (\d+) ms, (\d+)k tok/s(?:, mfu ([\d.]+)%)?")


def train_once(argv):
    """train.main(argv) with its output captured -> (its stdout, {iter: (ms, tokens/s, mfu or None)})."""
    import train
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        train.main(argv)
    steps = {}
    for line in out.getvalue().splitlines():
        m = LOG_LINE.match(line)
        if m:
            steps[int(m[1])] = (float(m[2]), float(m[3]) * 1e3, float(m[4]) / 100 if m[4] else None)
    return out.getvalue(), steps


def stage_train(args):
    from checkpoint import load_checkpoint
    cuda = args.device.startswith("cuda")
    shape = [] if cuda else ["--n_layer=2", "--n_head=2", "--n_embd=64", "--block_size=64", "--batch_size=2",
                             "--compile=False", "--require_gpu=False", "--dtype=float32"]
    iters, accumulation = (20, 4) if cuda else (6, 2)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_gpt2_shards(os.path.join(tmp, "owt"), 2_000_000 if cuda else 50_000, 200_000 if cuda else 20_000)
        for config in ("owt_fope", "owt_rope"):
            fresh_memory(args.device)
            torch._dynamo.reset()
            before = dynamo_counts()
            out_dir = os.path.join(tmp, config)
            common = [os.path.join(ROOT, "config", f"{config}.py"), f"--dataset={data}", f"--out_dir={out_dir}",
                      f"--device={args.device}", f"--gradient_accumulation_steps={accumulation}", "--log_interval=1",
                      f"--eval_interval={iters}", "--eval_iters=4", "--warmup_iters=2", *shape]
            t0 = time.time()
            _, steps = train_once([*common, f"--max_iters={iters}"])
            seconds = time.time() - t0
            warm = [v for it, v in steps.items() if it >= 5]  # iterations 0-4 include compiling
            ckpt = load_checkpoint(out_dir)
            first = {"iters": len(steps), "seconds_with_compile": seconds,
                     "ms_per_iter": statistics.median(v[0] for v in warm),
                     "tokens_per_s": statistics.median(v[1] for v in warm),
                     "mfu": statistics.median(v[2] for v in warm) if warm[0][2] is not None else None,
                     "peak_memory_gb": peak_gb(args.device), "checkpoint_iter": ckpt["iter_num"],
                     "val_loss": ckpt["val_loss"], **counted(before)}
            # the resume checks the checkpoint, not the compiler: eager, so it costs no second compile
            _, resumed = train_once([*common, "--init_from=resume", f"--max_iters={iters + 2}", "--compile=False"])
            first["resumed_iters"] = sorted(resumed)
            first["resumed_checkpoint_iter"] = load_checkpoint(out_dir)["iter_num"]
            if first["resumed_checkpoint_iter"] != iters + 2:
                raise RuntimeError(f"{config}: the resume ended at iter {first['resumed_checkpoint_iter']}, not {iters + 2}")
            results[config] = first
    return results


def stage_flex(args):
    """FlexAttention (the GPU path of distance-only biases) against the dense path: forward and gradients."""
    import warnings

    from baselines import AlibiBias, KerpleLogBias, T5Bias, flex_biased_attention
    cuda = args.device.startswith("cuda")
    B, H, T, hd = (2, 12, 1024, 64) if cuda else (1, 2, 64, 16)
    out = {}
    for name, make in (("alibi", AlibiBias), ("kerple", KerpleLogBias), ("t5", T5Bias)):
        torch.manual_seed(0)
        bias = make(H).to(args.device)
        if name == "t5":
            torch.nn.init.normal_(bias.emb.weight)  # T5's starts at zero: no bias to compare
        q, k, v = (torch.randn(B, H, T, hd, device=args.device, requires_grad=cuda) for _ in range(3))
        # the CPU has no flex backward: forward only there
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # eager flex_attention on the CPU warns that it is the slow reference
            dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias(0, T, T, q.device, q.dtype)[None])
            flex = flex_biased_attention(q, k, v, bias, compiled=cuda)
        forward = (flex - dense).abs().max().item()
        row = {"forward_max_abs": forward}
        if cuda:  # flex_attention has no backward on the CPU
            grads = [torch.autograd.grad(o.square().sum(), [q, k, v, *bias.parameters()], allow_unused=True)
                     for o in (flex, dense)]
            row["grad_max_abs"] = max((a - b).abs().max().item() for a, b in zip(*grads) if a is not None)
        else:
            row["grad_max_abs"] = None
        out[name] = row
        tolerance = 2e-2 if cuda else 1e-4  # flex accumulates in another order (and tf32 on a GPU)
        if forward > tolerance or (row["grad_max_abs"] or 0) > tolerance:
            raise AssertionError(f"{name}: FlexAttention differs from the dense path by {row} (tolerance {tolerance})")
    return out


def stage_sweep(args):
    """token_losses at 12 lengths (more than torch.compile's 8 recompiles) for fope, rope and alibi."""
    cuda = args.device.startswith("cuda")
    shape = dict(n_layer=12, n_head=12, n_embd=768, block_size=512) if cuda else dict(n_layer=1, n_head=2, n_embd=32, block_size=32)
    L = shape["block_size"]
    lengths = [L * m for m in (1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)]
    lengths = [int(x) for x in lengths]
    out = {}
    for pos_emb in ("fope", "rope", "alibi"):
        torch.manual_seed(0)
        torch._dynamo.reset()
        model = GPT(GPTConfig(**shape, vocab_size=GPT2_VOCAB, pos_emb=pos_emb, rotary_backend="auto")).to(args.device).eval()
        before = dynamo_counts()
        rows = []
        for T in lengths:
            fresh_memory(args.device)
            x = torch.randint(0, GPT2_VOCAB, (1, T + 1), device=args.device)
            with torch.no_grad(), autocast(args.device):
                seconds = timed(lambda: model.token_losses(x[:, :-1], x[:, 1:]), args.device, 1)
            rows.append({"length": T, "seconds": seconds, "peak_memory_gb": peak_gb(args.device)})
        counts = counted(before)
        out[pos_emb] = {"rows": rows, **counts}
        if counts["recompile_limit_hits"]:
            raise AssertionError(f"{pos_emb}: the sweep hit torch.compile's recompile limit")
        if cuda:  # memory O(T): doubling 16x -> 32x at most ~2x (+ the weights), never the 4x of a score matrix
            peak = {r["length"]: r["peak_memory_gb"] for r in rows}
            growth = peak[32 * L] / peak[16 * L]
            out[pos_emb]["memory_growth_16x_to_32x"] = growth
            if growth > 3:
                raise AssertionError(f"{pos_emb}: peak memory grew {growth:.1f}x from {16 * L} to {32 * L} tokens (O(T^2)?)")
    return out


SMOLLM2 = dict(n_layer=30, n_head=9, n_kv_head=3, n_embd=576, mlp_hidden=1536, vocab_size=49152, block_size=8192,
               norm="rmsnorm", norm_eps=1e-5, mlp="swiglu", bias=False, tie_embeddings=True, rope_theta=1e5)
TINY_LLAMA = dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=32, mlp_hidden=48, vocab_size=260, block_size=32,
                  norm="rmsnorm", norm_eps=1e-5, mlp="swiglu", bias=False, tie_embeddings=True, rope_theta=1e4)


def stage_smollm2(args):
    cuda = args.device.startswith("cuda")
    shape = SMOLLM2 if cuda else TINY_LLAMA
    L = shape["block_size"]
    production = dict(pos_emb="fope", fope_sigma=0.5, fope_kv_heads=True, fope_share_layers=True, fope_d_out="kept")
    arms = {"rope": dict(pos_emb="rope"), "fope-production": production,
            "yarn4": dict(pos_emb="rope", rope_scaling={"rope_type": "yarn", "factor": 4.0})}
    out = {}
    for name, knobs in arms.items():
        torch.manual_seed(0)
        model = GPT(GPTConfig(**shape, **knobs)).to(args.device).eval()
        rows = []
        for T in (L, 2 * L, 4 * L):
            fresh_memory(args.device)
            x = torch.randint(0, shape["vocab_size"], (1, T + 1), device=args.device)
            with torch.no_grad(), autocast(args.device):
                t0 = time.perf_counter()
                loss = model.token_losses(x[:, :-1], x[:, 1:]).float().mean().item()
                sync(args.device)
            rows.append({"length": T, "seconds": time.perf_counter() - t0, "mean_loss": loss,
                         "peak_memory_gb": peak_gb(args.device)})
            if not np.isfinite(loss):
                raise AssertionError(f"{name} at {T} tokens: loss {loss}")
        out[name] = rows
        del model
    return out


def stage_rotation(args):
    cuda = args.device.startswith("cuda")
    B, H, T, hd = (16, 12, 512, 64) if cuda else (2, 2, 64, 32)
    x = torch.randn(B, H, T, hd, device=args.device, dtype=torch.bfloat16 if cuda else torch.float32)
    cos, sin = (torch.randn(1, T, hd // 2, device=args.device).to(x.dtype) for _ in range(2))
    compiled = torch.compile(apply_rotary, backend="inductor" if cuda else "aot_eager")
    gbytes = 2 * x.numel() * x.element_size() / 1e9  # read x, write y
    if not torch.allclose(compiled(x, cos, sin).float(), apply_rotary(x, cos, sin).float(), atol=1e-2):
        raise AssertionError("the compiled rotation differs from the eager one")
    out = {}
    for name, fn in (("eager", lambda: apply_rotary(x, cos, sin)), ("compile", lambda: compiled(x, cos, sin)),
                     ("copy", lambda: x.clone())):
        seconds = timed(fn, args.device, 20 if cuda else 2)
        out[name] = {"ms": seconds * 1e3, "GB_per_s": gbytes / seconds}
    return out


STAGES = {"env": stage_env, "train": stage_train, "flex": stage_flex, "sweep": stage_sweep,
          "smollm2": stage_smollm2, "rotation": stage_rotation}


# -----------------------------------------------------------------------------
# running the stages: one JSON line each, as it ends


@contextlib.contextmanager
def time_budget(seconds):
    """Raise StageTimeout in the main thread once `seconds` have passed (checked between Python steps)."""
    def expire(signum, frame):
        raise StageTimeout(f"over its budget of {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(max(1, int(seconds)))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_stage(name, args, jsonl):
    """Run one stage under its budget; append its line (result or error) to jsonl at once; return the line."""
    t0 = time.time()
    line = {"stage": name, "device": args.device, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        with time_budget(args.budget or BUDGETS[name]):
            line.update(ok=True, result=STAGES[name](args))
    except Exception as e:  # a stage's failure is its line; the next stage still runs
        line.update(ok=False, error=f"{type(e).__name__}: {' '.join(str(e).split())[:500]}",
                    where=traceback.format_exc(limit=-3).strip().splitlines()[-3:])
    line["seconds"] = round(time.time() - t0, 1)
    with open(jsonl, "a") as f:
        f.write(json.dumps(line, default=str) + "\n")
    print(f"[gpu_check] {name}: {'ok' if line['ok'] else 'FAILED ' + line['error']} ({line['seconds']} s)", flush=True)
    return line


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def summary(lines):
    """The markdown table of whatever finished."""
    out = [f"# GPU check: {lines[0]['device']}, {lines[0]['date']}", "",
           "| stage | ok | seconds | note |", "| --- | --- | --- | --- |"]
    for line in lines:
        out.append(f"| {line['stage']} | {'yes' if line['ok'] else 'no'} | {line['seconds']} | "
                   f"{line.get('error', '')[:120]} |")
    by = {line["stage"]: line.get("result") for line in lines if line["ok"]}
    if by.get("env"):
        e = by["env"]
        out += ["", f"{e['machine']}; CUDA {e['cuda']}; peak for MFU {fmt(e['peak_flops'], '.3g')} FLOP/s; "
                f"missing optional packages: {', '.join(e['missing']) or 'none'}; C compiler: {e['compiler'] or 'none'}"]
    if by.get("train"):
        out += ["", "| train.py | ms/iter | tokens/s | MFU | peak GB | graphs | graph breaks | resumed to |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for config, r in by["train"].items():
            out.append(f"| {config} | {r['ms_per_iter']:.0f} | {r['tokens_per_s']:,.0f} | {fmt(r['mfu'], '.1%')} | "
                       f"{fmt(r['peak_memory_gb'], '.1f')} | {r['graphs']} | {r['graph_breaks']} | {r['resumed_checkpoint_iter']} |")
    if by.get("flex"):
        out += ["", "FlexAttention vs dense, max |difference|: " + ", ".join(
            f"{k} forward {v['forward_max_abs']:.1e}, gradients {fmt(v['grad_max_abs'], '.1e')}" for k, v in by["flex"].items())]
    if by.get("sweep"):
        out += ["", "| sweep | longest | s | peak GB | graphs | recompile-limit hits |", "| --- | --- | --- | --- | --- | --- |"]
        for pos_emb, r in by["sweep"].items():
            last = r["rows"][-1]
            out.append(f"| {pos_emb} | {last['length']} | {last['seconds']:.2f} | {fmt(last['peak_memory_gb'], '.2f')} | "
                       f"{r['graphs']} | {r['recompile_limit_hits']} |")
    if by.get("smollm2"):
        out += ["", "| SmolLM2-shaped, bf16 | " + " | ".join(f"{r['length']} tokens: s, GB" for r in next(iter(by["smollm2"].values()))) + " |",
                "| --- |" + " --- |" * 3]
        for arm, rows in by["smollm2"].items():
            out.append(f"| {arm} | " + " | ".join(f"{r['seconds']:.2f}, {fmt(r['peak_memory_gb'], '.1f')}" for r in rows) + " |")
    if by.get("rotation"):
        out += ["", "rotation: " + ", ".join(f"{k} {v['ms']:.3f} ms ({v['GB_per_s']:.0f} GB/s)" for k, v in by["rotation"].items())]
    return "\n".join(out) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="results/gpu", help="writes <out>.jsonl (appended, a line per stage) and <out>.md")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    p.add_argument("--budget", type=float, help="seconds per stage (default: BUDGETS)")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run it where one is, or pass --device=cpu for the dry run")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    jsonl = f"{args.out}.jsonl"
    lines = [run_stage(name, args, jsonl) for name in args.stages]
    with open(f"{args.out}.md", "w") as f:
        f.write(summary(lines))
    print(summary(lines))
    return lines


if __name__ == "__main__":
    main()
