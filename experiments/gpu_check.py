"""
The prepared GPU check: what a first, short GPU run must bring back, on a bare machine (its own python and
torch, no network, perhaps no tiktoken, cffi or C compiler). It needs only torch, numpy and this repo.

Stages, in order of value. Each runs under its own time budget and fills its result as it goes; whatever
ends it (an exception, SystemExit, its budget, a hang that the watchdog ends) becomes its JSON line in
<out>.jsonl the moment it ends, with what it had finished ("partial"), and the stages after it still run.
<out>.md, the table, is written whatever fails; full tracebacks go to stderr and <out>.log.

    env       torch, CUDA, the device, driver, triton, whether triton can build (Python.h, gcc, a compiled
              kernel), the peak FLOP/s used for MFU, which optional packages exist
    train     train.py itself: config/owt_fope.py and owt_rope.py on synthetic GPT-2-shaped shards (a temporary
              folder: same vocabulary, same shapes), 20 iterations, eval, checkpoint, then a resume of 2;
              ms/iter, tokens/s and MFU from iteration 5 on (medians), peak memory, and torch's own counters:
              graphs, graph breaks, recompile-limit hits
    flex      FlexAttention against the dense path for alibi, kerple and t5: forward and gradients, by the
              relative error of each tensor, within the tolerance of the arithmetic (TOLERANCE)
    sweep     GPT.token_losses over 12 lengths up to 32k for fope, rope and alibi: the peak memory per length
              must grow as T, not T^2 (no score matrix), with no recompile-limit hit
    smollm2   a SmolLM2-135M-shaped model (random weights: no file) in bf16: 8k, 16k and 32k tokens for rope,
              fope with production's knobs and a YaRN x4 override; time and peak memory
    rotation  the rotation (eager, torch.compile) against a plain copy of the same bytes (the bandwidth roof)

    python3 experiments/gpu_check.py                # on a CUDA GPU: -> $OUT/gpu.* where OUT is set, else results/gpu.*
    python3 experiments/gpu_check.py --device=cpu   # the dry run: the same stages at tiny shapes (CI) -> results/quick/
    python3 experiments/gpu_check.py --stages train flex --budget 120
"""

import argparse
import contextlib
import faulthandler
import gc
import importlib.metadata
import importlib.util
import io
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
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

# Each stage's time budget on a GPU, from what it compiles: a cold inductor compile of the 124M model
# (forward and backward, or the eval forward) is budgeted COMPILE_S; the rest is its run time. The dry run's
# tiny shapes take a few seconds each under the same budgets.
COMPILE_S = 45
COMPILES = {  # stage: (cold compiles, seconds of work besides them)
    "env": (0, 20),       # device queries; one tiny inductor kernel (triton's first build of its C helper)
    "train": (4, 60),     # owt_fope and owt_rope: the train graph and the eval graph each; 20 + 2 iterations
    "flex": (3, 15),      # one flex_attention forward+backward compile per bias (alibi, kerple, t5)
    "sweep": (1, 45),     # eager fope and rope; alibi's flex path, compiled once with dynamic shapes
    "smollm2": (0, 45),   # eager, 9 forwards of 8k-32k tokens through 30 layers
    "rotation": (1, 15),  # the compiled rotation
}
BUDGETS = {stage: compiles * COMPILE_S + rest for stage, (compiles, rest) in COMPILES.items()}
IMPORTS_S = 30  # python, torch, CUDA's start-up before the first stage
# 455 s of stages + 30 s of imports: under 9 minutes; a call of 10 minutes keeps the rest for the start-up
WATCHDOG_GRACE_S = 20  # past its budget by this much, a stage that no alarm could stop is ended by the watchdog

# The relative error (||a - b|| / ||b||, per tensor) that each arithmetic is expected to stay within, when two
# correct paths add in another order: about sqrt(terms) units in the last place. Unit roundoff: float32 6e-8,
# TF32 (10-bit mantissa, what train.py turns on for matmuls on a GPU) 4.9e-4, bfloat16 3.9e-3. The tolerance
# is ~20x that expected error; a wrong bias, mask or gradient is off by O(1).
TOLERANCE = {"float32": 1e-4, "tf32": 1e-2, "bfloat16": 5e-2}


class StageTimeout(BaseException):
    """A stage over its budget. A BaseException, so a library's `except Exception` (load_checkpoint turns any
    Exception into a CheckpointError) cannot swallow it; and time_budget raises it again every second until
    the stage gives up."""


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


def relative_error(a, b):
    """||a - b|| / ||b|| over the whole tensor (0 where both are 0): a scale-free distance."""
    a, b = a.detach().double(), b.detach().double()
    scale = b.norm().item()
    diff = (a - b).norm().item()
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


def check_close(pairs, arithmetic, what):
    """{name: relative error} of each (name, got, reference) pair; AssertionError naming every tensor past the
    arithmetic's tolerance (TOLERANCE), with its error, so a failure says which tensor and by how much."""
    tolerance = TOLERANCE[arithmetic]
    errors = {name: relative_error(got, ref) for name, got, ref in pairs}
    bad = {name: e for name, e in errors.items() if not e <= tolerance}
    if bad:
        raise AssertionError(f"{what}: " + ", ".join(f"{name} off by {e:.2e}" for name, e in bad.items())
                             + f" (relative; {arithmetic} tolerance {tolerance:g})")
    return errors


def package_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def driver_version():
    """The NVIDIA driver, as nvidia-smi reports it (None without it)."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        run = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=15)
        return run.stdout.strip().splitlines()[0] if run.returncode == 0 and run.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def preflight(device):
    """What decides whether the compiled stages can run at all: the device, its driver, torch, triton, and
    what triton needs to build its C helper on first use (Python.h and a C compiler)."""
    cuda = device.startswith("cuda")
    python_h = os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))
    return {"device": device, "device_name": torch.cuda.get_device_name(device) if cuda else None,
            "driver": driver_version() if cuda else None, "torch": torch.__version__, "cuda": torch.version.cuda,
            "triton": package_version("triton"), "python": sys.version.split()[0], "python_h": python_h,
            "gcc": shutil.which("gcc"), "cc": shutil.which("cc")}


def preflight_line(p):
    def get(key, missing="-"):
        return p.get(key) or missing
    return (f"preflight: {get('device_name', None) or get('device')}, driver {get('driver')}, torch {get('torch')} "
            f"(CUDA {get('cuda')}), triton {get('triton')}, Python {get('python')}, "
            f"Python.h {'yes' if p.get('python_h') else 'NO'}, gcc {get('gcc', 'NONE')}")


# -----------------------------------------------------------------------------
# the stages: each fills `out` (its result, plain numbers) as it goes, so a failure keeps what finished


def importable(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules (hidden)
        return False


def stage_env(args, out):
    found = {name: importable(name) for name in OPTIONAL}
    out.update(preflight(args.device))
    out.update(peak_flops=accelerator_peak_flops(args.device), machine=describe_machine(),
               compiler=shutil.which("cc") or shutil.which("gcc"), optional_packages=found,
               missing=[name for name, ok in found.items() if not ok])
    if args.device.startswith("cuda"):  # the first inductor kernel builds triton's C helper: Python.h and gcc
        try:
            x = torch.arange(8.0, device=args.device)
            y = torch.compile(lambda t: t * 2 + 1, backend="inductor")(x)
            out["triton_builds"] = bool(torch.equal(y, x * 2 + 1))
        except Exception as e:  # the compiled stages will fail the same way: say why once, here
            out["triton_builds"] = False
            out["triton_error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:2000]}"


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


def train_once(argv, log):
    """train.main(argv) with its output captured -> (its stdout, {iter: (ms, tokens/s, mfu or None)}). What
    it printed goes to the log file too, whether it ends or raises."""
    import train
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            train.main(argv)
    finally:
        log(f"train.py {' '.join(argv)}\n{out.getvalue()}")
    steps = {}
    for line in out.getvalue().splitlines():
        m = LOG_LINE.match(line)
        if m:
            steps[int(m[1])] = (float(m[2]), float(m[3]) * 1e3, float(m[4]) / 100 if m[4] else None)
    # (the log's tokens/s is rounded to thousands: the stage computes its own from ms/iter)
    return out.getvalue(), steps


def stage_train(args, out):
    from checkpoint import load_checkpoint
    cuda = args.device.startswith("cuda")
    shape = [] if cuda else ["--n_layer=2", "--n_head=2", "--n_embd=64", "--block_size=64", "--batch_size=2",
                             "--compile=False", "--require_gpu=False", "--dtype=float32"]
    iters, accumulation = (20, 4) if cuda else (6, 2)
    tokens_per_iter = accumulation * (16 * 512 if cuda else 2 * 64)  # batch_size * block_size: config or shape
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_gpt2_shards(os.path.join(tmp, "owt"), 2_000_000 if cuda else 50_000,
                                     200_000 if cuda else 20_000)
        for config in ("owt_fope", "owt_rope"):
            fresh_memory(args.device)
            torch._dynamo.reset()
            before = dynamo_counts()
            out_dir = os.path.join(tmp, config)
            common = [os.path.join(ROOT, "config", f"{config}.py"), f"--dataset={data}", f"--out_dir={out_dir}",
                      f"--device={args.device}", f"--gradient_accumulation_steps={accumulation}",
                      "--log_interval=1", f"--eval_interval={iters}", "--eval_iters=4", "--warmup_iters=2", *shape]
            row = out[config] = {}  # filled as it goes: a failure in the resume keeps the run's numbers
            t0 = time.time()
            _, steps = train_once([*common, f"--max_iters={iters}"], args.log)
            warm = [v for it, v in steps.items() if it >= 5]  # iterations 0-4 include compiling
            ckpt = load_checkpoint(out_dir)
            row.update({"iters": len(steps), "seconds_with_compile": time.time() - t0,
                        "ms_per_iter": statistics.median(v[0] for v in warm),
                        "tokens_per_s": tokens_per_iter / (statistics.median(v[0] for v in warm) / 1e3),
                        "mfu": statistics.median(v[2] for v in warm) if warm[0][2] is not None else None,
                        "peak_memory_gb": peak_gb(args.device), "checkpoint_iter": ckpt["iter_num"],
                        "val_loss": ckpt["val_loss"], **counted(before)})
            # the resume checks the checkpoint, not the compiler: eager, so it costs no second compile
            _, resumed = train_once([*common, "--init_from=resume", f"--max_iters={iters + 2}", "--compile=False"],
                                    args.log)
            row["resumed_iters"] = sorted(resumed)
            row["resumed_checkpoint_iter"] = load_checkpoint(out_dir)["iter_num"]
            if row["resumed_checkpoint_iter"] != iters + 2:
                raise RuntimeError(f"{config}: the resume ended at iter {row['resumed_checkpoint_iter']}, "
                                   f"not {iters + 2}")


def stage_flex(args, out):
    """FlexAttention (the GPU path of distance-only biases) against the dense path: forward and gradients,
    each tensor by its relative error. On a GPU both run in float32 with TF32 matmuls where torch allows them
    (train.py turns TF32 on; the flex kernel may use it regardless): TF32's tolerance."""
    import warnings

    from baselines import AlibiBias, KerpleLogBias, T5Bias, flex_biased_attention
    cuda = args.device.startswith("cuda")
    B, H, T, hd = (2, 12, 1024, 64) if cuda else (1, 2, 64, 16)
    arithmetic = "tf32" if cuda else "float32"
    for name, make in (("alibi", AlibiBias), ("kerple", KerpleLogBias), ("t5", T5Bias)):
        torch.manual_seed(0)
        bias = make(H).to(args.device)
        if name == "t5":
            torch.nn.init.normal_(bias.emb.weight)  # T5's starts at zero: no bias to compare
        q, k, v = (torch.randn(B, H, T, hd, device=args.device, requires_grad=cuda) for _ in range(3))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # eager flex_attention on the CPU warns that it is the slow reference
            mask = bias(0, T, T, q.device, q.dtype)[None]
            dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            flex = flex_biased_attention(q, k, v, bias, compiled=cuda)
        row = out[name] = {"arithmetic": arithmetic, "tolerance": TOLERANCE[arithmetic]}
        pairs = [("output", flex, dense)]
        if cuda:  # flex_attention has no backward on the CPU: forward only there
            inputs = {"q": q, "k": k, "v": v, **{f"bias.{n}": w for n, w in bias.named_parameters()}}
            grads = [torch.autograd.grad(o.square().sum(), list(inputs.values()), allow_unused=True)
                     for o in (flex, dense)]
            pairs += [(f"grad {n}", g, r) for n, g, r in zip(inputs, *grads) if g is not None and r is not None]
        row["relative_error"] = {n: relative_error(g, r) for n, g, r in pairs}  # kept before any verdict
        check_close(pairs, arithmetic, f"{name}: FlexAttention against the dense path")


def stage_sweep(args, out):
    """token_losses at 12 lengths (more than torch.compile's 8 recompiles) for fope, rope and alibi."""
    cuda = args.device.startswith("cuda")
    shape = (dict(n_layer=12, n_head=12, n_embd=768, block_size=512) if cuda
             else dict(n_layer=1, n_head=2, n_embd=32, block_size=32))
    L = shape["block_size"]
    lengths = [int(L * m) for m in (1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)]
    for pos_emb in ("fope", "rope", "alibi"):
        torch.manual_seed(0)
        torch._dynamo.reset()
        model = GPT(GPTConfig(**shape, vocab_size=GPT2_VOCAB, pos_emb=pos_emb, rotary_backend="auto"))
        model = model.to(args.device).eval()
        before = dynamo_counts()
        rows = []
        out[pos_emb] = {"rows": rows}  # a length that fails keeps the lengths before it
        for T in lengths:
            fresh_memory(args.device)
            x = torch.randint(0, GPT2_VOCAB, (1, T + 1), device=args.device)
            with torch.no_grad(), autocast(args.device):
                seconds = timed(lambda: model.token_losses(x[:, :-1], x[:, 1:]), args.device, 1)
            rows.append({"length": T, "seconds": seconds, "peak_memory_gb": peak_gb(args.device)})
        counts = counted(before)
        out[pos_emb].update(counts)
        if counts["recompile_limit_hits"]:
            raise AssertionError(f"{pos_emb}: the sweep hit torch.compile's recompile limit")
        if cuda:  # memory O(T): doubling 16x -> 32x at most ~2x (+ the weights), never the 4x of a score matrix
            peak = {r["length"]: r["peak_memory_gb"] for r in rows}
            growth = peak[32 * L] / peak[16 * L]
            out[pos_emb]["memory_growth_16x_to_32x"] = growth
            if growth > 3:
                raise AssertionError(f"{pos_emb}: peak memory grew {growth:.1f}x from {16 * L} to {32 * L} tokens "
                                     "(O(T^2)?)")


SMOLLM2 = dict(n_layer=30, n_head=9, n_kv_head=3, n_embd=576, mlp_hidden=1536, vocab_size=49152, block_size=8192,
               norm="rmsnorm", norm_eps=1e-5, mlp="swiglu", bias=False, tie_embeddings=True, rope_theta=1e5)
TINY_LLAMA = dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=32, mlp_hidden=48, vocab_size=260, block_size=32,
                  norm="rmsnorm", norm_eps=1e-5, mlp="swiglu", bias=False, tie_embeddings=True, rope_theta=1e4)


def stage_smollm2(args, out):
    cuda = args.device.startswith("cuda")
    shape = SMOLLM2 if cuda else TINY_LLAMA
    L = shape["block_size"]
    production = dict(pos_emb="fope", fope_sigma=0.5, fope_kv_heads=True, fope_share_layers=True,
                      fope_d_out="kept")
    arms = {"rope": dict(pos_emb="rope"), "fope-production": production,
            "yarn4": dict(pos_emb="rope", rope_scaling={"rope_type": "yarn", "factor": 4.0})}
    for name, knobs in arms.items():
        torch.manual_seed(0)
        model = GPT(GPTConfig(**shape, **knobs)).to(args.device).eval()
        rows = out[name] = []
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
        del model


def stage_rotation(args, out):
    cuda = args.device.startswith("cuda")
    B, H, T, hd = (16, 12, 512, 64) if cuda else (2, 2, 64, 32)
    dtype = torch.bfloat16 if cuda else torch.float32
    x = torch.randn(B, H, T, hd, device=args.device, dtype=dtype)
    cos, sin = (torch.randn(1, T, hd // 2, device=args.device).to(x.dtype) for _ in range(2))
    compiled = torch.compile(apply_rotary, backend="inductor" if cuda else "aot_eager")
    gbytes = 2 * x.numel() * x.element_size() / 1e9  # read x, write y
    out["relative_error"] = check_close([("rotation", compiled(x, cos, sin), apply_rotary(x, cos, sin))],
                                        "bfloat16" if cuda else "float32", "the compiled rotation against eager")
    for name, fn in (("eager", lambda: apply_rotary(x, cos, sin)), ("compile", lambda: compiled(x, cos, sin)),
                     ("copy", lambda: x.clone())):
        seconds = timed(fn, args.device, 20 if cuda else 2)
        out[name] = {"ms": seconds * 1e3, "GB_per_s": gbytes / seconds}


STAGES = {"env": stage_env, "train": stage_train, "flex": stage_flex, "sweep": stage_sweep,
          "smollm2": stage_smollm2, "rotation": stage_rotation}


# -----------------------------------------------------------------------------
# running the stages: one JSON line each, as it ends


@contextlib.contextmanager
def time_budget(seconds, expired):
    """Raise StageTimeout in the main thread once `seconds` have passed, and again every second (or sooner for a
    shorter budget) until the block ends, so a library that swallows one cannot keep the stage running (checked
    between Python steps: a hang inside one C call is the watchdog's). expired: records the first expiry."""
    active = [True]

    def expire(signum, frame):
        if active[0]:
            expired.append(time.time())
            raise StageTimeout(f"over its budget of {seconds:g} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds, min(1.0, seconds))
    try:
        yield
    finally:
        active[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def backend_flags_kept():
    """A stage may change torch's process-wide arithmetic (train.py turns TF32 on): the next one starts as
    this one did."""
    kept = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
            torch.get_float32_matmul_precision())
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = kept[:2]
        torch.set_float32_matmul_precision(kept[2])


class Check:
    """The stages' record: the lines written so far, the stage in flight, and the files. Each line is written
    once, by whoever ends its stage: run_stage as a rule, the watchdog for a stage hung past its budget."""

    def __init__(self, args):
        self.args, self.lines, self.lock = args, [], threading.Lock()
        self.jsonl, self.md, self.log_path = f"{args.out}.jsonl", f"{args.out}.md", f"{args.out}.log"
        self.current = None  # (the stage's line, its result so far, its start, its deadline) while one runs
        self.done = threading.Event()  # set when main ends: the watchdog stops with it

    def log(self, text):
        with open(self.log_path, "a") as f:
            f.write(text.rstrip("\n") + "\n")

    def say(self, text, stream=sys.stdout):
        print(text, file=stream, flush=True)
        self.log(text)

    def write_line(self, line):
        """Append line to the jsonl (once per stage) and say it; False if its stage was already written."""
        with self.lock:
            if line.get("written"):
                return False
            line["written"] = True
            self.lines.append(line)
            with open(self.jsonl, "a") as f:
                f.write(json.dumps({k: v for k, v in line.items() if k != "written"}, default=str) + "\n")
        status = "ok" if line["ok"] else "FAILED " + line["error"].splitlines()[0][:300]
        self.say(f"[gpu_check] {line['stage']}: {status} ({line['seconds']} s)")
        return True

    def write_summary(self):
        with self.lock:
            text = summary(self.lines, self.args.device)
            with open(self.md, "w") as f:
                f.write(text)
        return text


def failure(line, e, result, t0):
    """A stage's failure as its line: the exception's type and message, the full traceback, what finished."""
    message = " ".join(str(e).split()) or "(no message)"
    if isinstance(e, SystemExit) and not isinstance(e.code, str):
        message = f"exit status {e.code}"
    line.update(ok=False, error=f"{type(e).__name__}: {message[:2000]}", traceback=traceback.format_exc(),
                partial=result or None, seconds=round(time.time() - t0, 1))


def run_stage(name, check):
    """Run one stage under its budget; whatever ends it (an exception, SystemExit, its budget) becomes its line,
    appended to the jsonl at once; returns the line. Ctrl-C still ends the whole check (main writes the table)."""
    args = check.args
    t0, budget = time.time(), args.budget or BUDGETS[name]
    line = {"stage": name, "device": args.device, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    result, expired = {}, []
    check.current = (line, result, t0, t0 + budget + WATCHDOG_GRACE_S)
    try:
        with backend_flags_kept(), time_budget(budget, expired):
            STAGES[name](args, result)
        if expired:  # a library swallowed StageTimeout and the stage ended on its own, past its budget
            raise StageTimeout(f"over its budget of {budget:g} s (swallowed inside the stage)")
        line.update(ok=True, result=result, seconds=round(time.time() - t0, 1))
    except KeyboardInterrupt:
        failure(line, KeyboardInterrupt("interrupted"), result, t0)
        check.write_line(line)
        raise
    except BaseException as e:  # SystemExit (train.py's refusals, CheckpointError) and StageTimeout too
        failure(line, e, result, t0)
        check.say(f"[gpu_check] {name} failed; its traceback:\n{line['traceback']}", sys.stderr)
    finally:
        check.current = None
    check.write_line(line)
    return line


def watchdog(check, deadline, every=0.5):
    """A thread: if a stage outlives its budget by WATCHDOG_GRACE_S (stuck in one C call that no alarm can
    interrupt: a CUDA hang, a deadlocked compile worker), or the whole check passes `deadline`, it writes that
    stage's line with what it had finished, and the table, and ends the process (exit status 3)."""
    while not check.done.wait(every):
        current = check.current
        if current is None and time.time() < deadline:
            continue
        line, result, t0, stage_deadline = current if current else (None, None, None, None)
        if current is not None and time.time() < min(stage_deadline, deadline):
            continue
        if line is not None:
            line.update(ok=False, partial=result or None, seconds=round(time.time() - t0, 1),
                        error="Hung: past its budget in a call that no alarm could interrupt; the watchdog "
                              "ended the check here (the stages after it did not run)")
            check.write_line(line)
        check.say("[gpu_check] the watchdog ended the check; the table has what finished; every thread's "
                  f"stack is in {check.log_path}", sys.stderr)
        with open(check.log_path, "a") as f:  # where the main thread hung
            faulthandler.dump_traceback(f, all_threads=True)
        check.write_summary()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(3)


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def env_section(e, mark):
    triton = {True: "yes", False: f"NO ({e.get('triton_error', '')[:200]})"}.get(e.get("triton_builds"), "-")
    return [preflight_line(e) + mark,
            f"{e.get('machine')}; peak for MFU {fmt(e.get('peak_flops'), '.3g')} FLOP/s; missing optional "
            f"packages: {', '.join(e.get('missing', [])) or 'none'}; triton builds a kernel: {triton}"]


def train_section(result, mark):
    rows = [f"| train.py{mark} | ms/iter | tokens/s | MFU | peak GB | graphs | graph breaks | resumed to |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for config, r in result.items():
        if "ms_per_iter" not in r:  # begun, not finished
            rows.append(f"| {config} | - | - | - | - | - | - | - |")
            continue
        rows.append(f"| {config} | {r['ms_per_iter']:.0f} | {r['tokens_per_s']:,.0f} | {fmt(r['mfu'], '.1%')} | "
                    f"{fmt(r['peak_memory_gb'], '.1f')} | {r['graphs']} | {r['graph_breaks']} | "
                    f"{r.get('resumed_checkpoint_iter', '-')} |")
    return rows


def flex_section(result, mark):
    return [f"FlexAttention vs dense, relative error per tensor{mark}: " + "; ".join(
        f"{k} ({v['arithmetic']}, tolerance {v['tolerance']:g}) "
        + ", ".join(f"{n} {e:.1e}" for n, e in v.get("relative_error", {}).items())
        for k, v in result.items())]


def sweep_section(result, mark):
    rows = [f"| sweep{mark} | longest | s | peak GB | graphs | recompile-limit hits |",
            "| --- | --- | --- | --- | --- | --- |"]
    for pos_emb, r in result.items():
        last = r["rows"][-1] if r["rows"] else {}
        rows.append(f"| {pos_emb} | {last.get('length', '-')} | {fmt(last.get('seconds'), '.2f')} | "
                    f"{fmt(last.get('peak_memory_gb'), '.2f')} | {r.get('graphs', '-')} | "
                    f"{r.get('recompile_limit_hits', '-')} |")
    return rows


def smollm2_section(result, mark):
    lengths = max(result.values(), key=len)
    rows = [f"| SmolLM2-shaped, bf16{mark} | " + " | ".join(f"{r['length']} tokens: s, GB" for r in lengths) + " |",
            "| --- |" + " --- |" * len(lengths)]
    for arm, got in result.items():
        cells = [f"{r['seconds']:.2f}, {fmt(r['peak_memory_gb'], '.1f')}" for r in got]
        rows.append(f"| {arm} | " + " | ".join(cells + ["-"] * (len(lengths) - len(cells))) + " |")
    return rows


def rotation_section(result, mark):
    return [f"rotation{mark}: " + ", ".join(f"{k} {v['ms']:.3f} ms ({v['GB_per_s']:.0f} GB/s)"
                                            for k, v in result.items() if isinstance(v, dict) and "ms" in v)]


SECTIONS = {"env": env_section, "train": train_section, "flex": flex_section, "sweep": sweep_section,
            "smollm2": smollm2_section, "rotation": rotation_section}


def summary(lines, device):
    """The markdown table of whatever finished: a row per stage (ok, or its error), then each stage's numbers,
    those of a failed stage's finished parts marked (partial)."""
    out = [f"# GPU check: {device}, {lines[0]['date'] if lines else time.strftime('%Y-%m-%d %H:%M:%S')}", "",
           "| stage | ok | seconds | note |", "| --- | --- | --- | --- |"]
    for line in lines:
        note = "" if line["ok"] else line["error"].splitlines()[0][:160].replace("|", "/")
        if not line["ok"] and line.get("partial"):
            note += " (finished parts below, marked partial)"
        out.append(f"| {line['stage']} | {'yes' if line['ok'] else 'no'} | {line['seconds']} | {note} |")
    by, mark = {}, {}
    for line in lines:
        got = line.get("result") if line["ok"] else line.get("partial")
        if got:
            by[line["stage"]], mark[line["stage"]] = got, "" if line["ok"] else " (partial)"
    for stage, section in SECTIONS.items():
        if by.get(stage):
            try:
                out += [""] + section(by[stage], mark[stage])
            except Exception as e:  # a result of another shape than expected: the table still comes
                out += ["", f"{stage}: could not be tabulated ({type(e).__name__}: {e}); its numbers are in the jsonl"]
    return "\n".join(out) + "\n"


def device_name(value):
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a device this check runs on: auto, cuda, cuda:N or cpu")
    return value


def positive_seconds(value):
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {value}")
    return seconds


def default_out(device):
    """$OUT/gpu where the device tool set OUT (what it brings back), else results/gpu; results/quick/gpu for
    the CPU dry run, so a dry run never adds to the GPU's record."""
    if os.environ.get("OUT"):
        return os.path.join(os.environ["OUT"], "gpu")
    return os.path.join(ROOT, "results", "gpu" if device.startswith("cuda") else "quick/gpu")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--device", default="auto", type=device_name,
                   help="auto (cuda where torch sees a GPU, else the CPU dry run, said), cuda, cuda:N, or cpu")
    p.add_argument("--out", help="writes <out>.jsonl (appended, a line per stage), <out>.md (the table) and "
                                 "<out>.log (tracebacks, train.py's output); default $OUT/gpu where OUT is set, "
                                 "else results/gpu (results/quick/gpu with --device=cpu)")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    p.add_argument("--budget", type=positive_seconds, help="seconds per stage (default: BUDGETS)")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run it where one is, or pass --device=cpu for the dry run")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
        if args.device == "cpu":  # the table still comes back, and says why the GPU was not used
            print(f"[gpu_check] torch {torch.__version__} sees no CUDA GPU (built for CUDA {torch.version.cuda}, "
                  f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}): the CPU dry run instead",
                  file=sys.stderr, flush=True)
    args.out = args.out or default_out(args.device)
    folder = os.path.dirname(os.path.abspath(args.out))
    try:
        os.makedirs(folder, exist_ok=True)
        with open(f"{args.out}.log", "a"):
            pass
    except OSError as e:
        raise SystemExit(f"--out {args.out}: cannot write there ({e.strerror}); name a folder you can write to")
    check = Check(args)
    args.log = check.log
    check.say(preflight_line(preflight(args.device)))
    total = IMPORTS_S + sum(args.budget or BUDGETS[name] for name in args.stages) + WATCHDOG_GRACE_S
    dog = threading.Thread(target=watchdog, args=(check, time.time() + total), name="gpu_check watchdog", daemon=True)
    dog.start()
    try:
        for name in args.stages:
            run_stage(name, check)
    finally:  # the table, whatever ended the check (Ctrl-C included)
        check.done.set()
        dog.join()
        text = check.write_summary()
    print(text)
    print(f"[gpu_check] files: {check.jsonl}, {check.md}, {check.log_path}")
    return check.lines


if __name__ == "__main__":
    main()
