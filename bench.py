"""
Benchmark the rotary rotation, eq. (1) of fope.py, on CPU: how close each path gets to a plain copy
of the same bytes (the memory-bandwidth roof), then what it means for a training step.

(1) Rotation, forward and forward+backward, FoPE's per-head tables, float32:
    eager_official  the official FoPE code's per-call work (olmo/model.py, FourierEmbedding): sin/cos
                    of t*w cached once (its BufferCache), then on every call the per-head einsum with
                    the coefficients, the padding to head_dim/2 and the eager rotation
    eager_cached    fope.apply_rotary on cached tables (about five passes over x)
    compile         torch.compile(fope.apply_rotary)
    c               fope_ext.rotate (one pass of OpenMP C)
    copy            torch.empty_like(x).copy_(x): the roof, output allocation included as in c;
                    forward+backward counts two copies (the backward also reads g and writes dx)
(2) Training step of the laptop GPT (4 layers, 4 heads, 128 wide, T=128, batch 32, AdamW) for
    RoPE and FoPE with each rotary_backend, and for every position embedding of model.POS_EMBS (and
    RoPE + QK norm) as a ratio to NoPE's step, against the targets: rotary <= 1.03, additive biases
    <= 1.10.
(3) Peak memory of an additive-bias sweep at 8192 tokens: config/owt's model (12 layers, 12 heads,
    768 wide; L_train 512, so 16x), batch 1, one forward with per-token losses as eval_length.py
    computes them, float32 on CPU, each embedding in a fresh process (its ru_maxrss).

Methods, forward and forward+backward alike, are interleaved (round-robin each repeat), so drifting
machine load hits all alike, and medians over repeats are reported. Every method allocates its outputs
and temporaries per call, as in use, but from warm memory: glibc's malloc is told to keep freed memory
(no mmap per large block, no trim), and each method is warmed up first, so a timed call measures the
method's passes over memory, not the kernel zeroing fresh pages (page faults per call are reported).
Results, ratios, how allocation was treated and the machine go to bench.json.

$ python bench.py            # the full run (a few minutes; run it alone on the machine)
$ python bench.py --quick    # the same in under a minute, fewer repeats
"""

import argparse
import ctypes
import ctypes.util
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import fope
import fope_ext
from fope import FourierPositionEmbedding, RotaryPositionEmbedding
from model import GPT, POS_EMBS, GPTConfig

SHAPES = {"gpt2_small": (8, 12, 1024, 64), "laptop": (32, 4, 128, 32)}  # (B, H, T, head_dim)
METHODS = ("eager_official", "eager_cached", "compile", "c", "qk_norm_eager", "qk_norm_c", "copy")
# qk_norm_*: QK norm then the rotation (F.layer_norm + the eager rotation, and the fused C kernel); their
# backward reads x once more than a rotation's (LayerNorm's backward needs it), which GB/s does not count
STEP_CONFIGS = [(pos_emb, backend) for pos_emb in ("rope", "fope") for backend in ("eager", "c", "compile")]
STEP_TARGETS = {"rotary": 1.03, "bias": 1.10}  # step time over NoPE's, by POS_EMBS kind
OWT_SHAPE = dict(n_layer=12, n_head=12, n_embd=768, block_size=512, vocab_size=50304)  # config/owt_*.py

# -----------------------------------------------------------------------------
# rotation microbenchmark


class OfficialForm:
    """What the official FoPE code does per call (olmo/model.py: FourierEmbedding.apply_rotary_pos_emb),
    with the sin/cos of t*w it caches once per length (get_rotary_embedding's BufferCache) built here
    once, in float32 as there: per call, the einsum of the cached basis with each head's coefficients,
    the padding of the position-free dimensions with ones, and the eager rotation."""

    def __init__(self, pe, T):
        angle = torch.arange(T, dtype=torch.float32)[:, None] * pe.inv_freq.float()[None, :]  # (T, D)
        self.sin_basis, self.cos_basis = angle.sin(), angle.cos()
        self.sin_coef, self.cos_coef = pe.sin_coef.float(), pe.cos_coef.float()  # (H, D, d_out)
        self.pad = pe.head_dim // 2 - pe.d_out

    def __call__(self, x):
        sin = torch.einsum("td,hde->hte", self.sin_basis, self.sin_coef)  # (H, T, d_out)
        cos = torch.einsum("td,hde->hte", self.cos_basis, self.cos_coef)
        sin = F.pad(sin, (0, self.pad), value=1.0)  # the official zero-frequency padding
        cos = F.pad(cos, (0, self.pad), value=1.0)
        return fope.apply_rotary(x, cos, sin)


def copy(x):
    return torch.empty_like(x).copy_(x)


def rotation_methods(shape):
    """{method: (forward, forward_backward)}, each a no-argument callable."""
    B, H, T, hd = shape
    torch.manual_seed(0)
    pe = FourierPositionEmbedding(hd, H, train_len=T)
    cos, sin = pe.tables(0, T)  # (H, T, hd//2)
    x = torch.randn(shape)
    x_grad = x.clone().requires_grad_()
    g = torch.randn(shape)
    rotations = {
        "eager_official": OfficialForm(pe, T),
        "eager_cached": lambda x: fope.apply_rotary(x, cos, sin),
        "compile": lambda x: fope.rotate(x, cos, sin, "compile"),
        "c": lambda x: fope_ext.rotate(x, cos, sin),
        "qk_norm_eager": lambda x: fope.apply_rotary(F.layer_norm(x, x.shape[-1:]), cos, sin),
        "qk_norm_c": lambda x: fope_ext.norm_rotate(x, cos, sin),
    }
    methods = {}
    for name, rotate in rotations.items():
        methods[name] = (lambda rotate=rotate: rotate(x),
                         lambda rotate=rotate: torch.autograd.grad(rotate(x_grad), x_grad, g))
    methods["copy"] = (lambda: copy(x), lambda: (copy(x), copy(g)))
    return methods


def keep_freed_memory():
    """Tell glibc's malloc to serve every block from its heap and never hand memory back (mallopt
    M_MMAP_MAX=0, M_TRIM_THRESHOLD=1 GiB): a freed tensor's pages stay mapped, and a later tensor
    reuses them instead of faulting in fresh zeroed pages. Returns how allocation is treated."""
    treatment = ("outputs and temporaries allocated per call as in use; each method warmed up; timed calls "
                 "reuse warm memory")
    libc_name = ctypes.util.find_library("c")
    if platform.libc_ver()[0] != "glibc" or libc_name is None:
        return treatment + f" (not glibc: {platform.libc_ver()[0] or 'unknown'} libc left as it is)"
    libc = ctypes.CDLL(libc_name)
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # malloc.h
    if not (libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, 2**30)):
        return treatment + " (mallopt refused: glibc defaults)"
    return treatment + " (glibc mallopt: M_MMAP_MAX=0, M_TRIM_THRESHOLD=1 GiB: freed memory stays mapped)"


def interleaved_times(fns, repeats, burst, warmup):
    """Seconds of every call of each fn, in order, and its page faults per call (first touches of freshly
    mapped memory: with keep_freed_memory() and the warm-up, only a call that raises the heap's
    high-water mark pays them); every repeat runs a burst of each fn in turn."""
    for _ in range(warmup):  # round-robin too: the heap settles on the mix the timing will see
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    faults = dict.fromkeys(fns, 0)
    for _ in range(repeats):
        for name, fn in fns.items():
            for _ in range(burst):
                faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
                faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
    return times, {name: f / (repeats * burst) for name, f in faults.items()}


def interleaved_medians(fns, repeats, burst, warmup):
    """Median seconds per call of each fn (interleaved_times), and its page faults per call."""
    times, faults = interleaved_times(fns, repeats, burst, warmup)
    return {name: statistics.median(t) for name, t in times.items()}, faults


def paired_ratios(times, baseline):
    """Each fn's time over the baseline's in the same repeat (burst 1): the machine's load drifts
    between repeats, and a ratio taken within one repeat cancels most of that drift. Median and
    quartiles over the repeats."""
    out = {}
    for name, t in times.items():
        ratios = sorted(a / b for a, b in zip(t, times[baseline]))
        q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        out[name] = (statistics.median(ratios), q1, q3)
    return out


MODES = (("fwd", 0, 2), ("fwd_bwd", 1, 4))  # (name, index in a method's pair, bytes moved / size of x)


def bench_rotation(shape, repeats, burst, warmup):
    methods = rotation_methods(shape)
    nbytes = torch.Size(shape).numel() * 4
    t0 = time.perf_counter()
    fns = {(m, mode): pair[index] for m, pair in methods.items() for mode, index, _ in MODES}
    medians, faults = interleaved_medians(fns, repeats, burst, warmup)
    print(f"  measured in {time.perf_counter() - t0:.0f} s (compile warm-up included)")
    result = {}
    for mode, _, passes in MODES:
        for m in METHODS:
            result[f"{m}_{mode}_ms"] = medians[m, mode] * 1e3
            result[f"{m}_{mode}_page_faults_per_call"] = faults[m, mode]
            result[f"{m}_{mode}_GBps"] = passes * nbytes / medians[m, mode] / 1e9
            result[f"{m}_{mode}_over_copy"] = medians[m, mode] / medians["copy", mode]
    result["forward_below_forward_backward"] = {m: medians[m, "fwd"] < medians[m, "fwd_bwd"] for m in METHODS}
    return result


def print_rotation(name, shape, r):
    print(f"rotation {name} (B, H, T, hd) = {shape}, float32, FoPE per-head tables")
    print(f"  {'method':16s} {'fwd ms':>8s} {'GB/s':>6s} {'x copy':>6s}"
          f"   {'fwd+bwd ms':>10s} {'GB/s':>6s} {'x copy':>6s}")
    for m in METHODS:
        fwd, fwd_bwd = (f"{r[f'{m}_{mode}_GBps']:6.1f} {r[f'{m}_{mode}_over_copy']:6.2f}"
                        for mode in ("fwd", "fwd_bwd"))
        print(f"  {m:16s} {r[f'{m}_fwd_ms']:8.3f} {fwd}   {r[f'{m}_fwd_bwd_ms']:10.3f} {fwd_bwd}")
    slower = [m for m, below in r["forward_below_forward_backward"].items() if not below]
    if slower:
        print(f"  WARNING: forward not below forward+backward for {', '.join(slower)}: the machine was busy "
              "or allocation leaked into the timing; rerun alone")

def bench_modules(shape, repeats, burst, warmup):
    """Forward of the FoPE module against the RoPE module (cached tables), for each backend."""
    B, H, T, hd = shape
    x = torch.randn(shape)
    modules = {f"{name}_{backend}": make(backend) for backend in ("eager", "c") for name, make in (
        ("rope", lambda b: RotaryPositionEmbedding(hd, train_len=T, backend=b)),
        ("fope", lambda b: FourierPositionEmbedding(hd, H, T, backend=b)))}
    medians, _ = interleaved_medians({k: (lambda m=m: m(x)) for k, m in modules.items()}, repeats, burst, warmup)
    result = {f"module_{k}_fwd_ms": v * 1e3 for k, v in medians.items()}
    print(f"position modules {shape}: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in medians.items()))
    return result


# -----------------------------------------------------------------------------
# training step


def training_steps(models, batch_size=32, block_size=128):
    """{name: one AdamW step on random tokens} for the laptop GPT with each {name: GPTConfig overrides}."""
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 65, (batch_size, block_size + 1), generator=g)
    x, y = idx[:, :-1], idx[:, 1:]
    steps = {}
    for name, overrides in models.items():
        torch.manual_seed(0)
        model = GPT(GPTConfig(block_size=block_size, n_layer=4, n_head=4, n_embd=128, vocab_size=65, **overrides))
        optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")

        def step(model=model, optimizer=optimizer):
            _, loss = model(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        steps[name] = step
    return steps


def embedding_models():
    """Every position embedding (rotary ones on the default backend, auto), and RoPE and NoPE with QK norm."""
    return {**{name: {"pos_emb": name} for name in POS_EMBS}, "rope+qknorm": {"pos_emb": "rope", "qk_norm": True},
            "nope+qknorm": {"pos_emb": "nope", "qk_norm": True}}


def bench_embeddings(repeats, warmup, batch_size=32, block_size=128):
    """Every embedding's laptop step time over NoPE's, measured interleaved in one run: the median over
    repeats of the step's time over NoPE's step in the same repeat. An embedding's cost is taken against
    NoPE with the same model flags: RoPE + QK norm against NoPE + QK norm (QK norm is a flag of the model,
    not of the embedding: the paper's Table 2 also has NoPE + QK norm), whose own cost is reported apart."""
    times, _ = interleaved_times(training_steps(embedding_models(), batch_size, block_size), repeats, 1, warmup)
    over_nope = paired_ratios(times, "nope")
    over_nope_qk = paired_ratios(times, "nope+qknorm")
    result = {"statistic": "median over repeats of step / baseline's step in the same repeat; [q1, q3] beside it",
              "repeats": repeats, "step_ms": {}, "over_nope": {}, "baseline": {}, "over_baseline": {},
              "over_baseline_quartiles": {}, "target": {}, "meets_target": {}}
    print(f"training step per position embedding, laptop GPT, T={block_size}, batch {batch_size}: median of "
          f"{repeats} paired ratios [q1-q3] over NoPE's step (NoPE + QK norm's for a model with QK norm):")
    for name, t in times.items():
        kind = POS_EMBS[name.split("+")[0]].kind
        baseline = "nope+qknorm" if name.endswith("+qknorm") else "nope"
        ratio, q1, q3 = (over_nope_qk if baseline == "nope+qknorm" else over_nope)[name]
        result["step_ms"][name] = statistics.median(t) * 1e3
        result["over_nope"][name] = over_nope[name][0]
        result["baseline"][name], result["over_baseline"][name] = baseline, ratio
        result["over_baseline_quartiles"][name] = [q1, q3]
        target = STEP_TARGETS.get(kind)
        if target is not None:
            result["target"][name], result["meets_target"][name] = target, ratio <= target
        print(f"  {name:14s} {result['step_ms'][name]:8.2f} ms  {ratio:5.3f}x [{q1:5.3f}-{q3:5.3f}] over {baseline:11s}"
              + (f"  (target <= {target}: {'met' if ratio <= target else 'MISSED'})" if target else ""))
    result["qk_norm_cost"] = {"nope": over_nope["nope+qknorm"][0],
                              "rope": paired_ratios(times, "rope")["rope+qknorm"][0]}
    print(f"  QK norm's own cost: NoPE + QK norm over NoPE {result['qk_norm_cost']['nope']:.3f}x, "
          f"RoPE + QK norm over RoPE {result['qk_norm_cost']['rope']:.3f}x")
    result["all_targets_met"] = all(result["meets_target"].values())
    return result


def sweep_memory_child(name, T, n_layer):
    """In a fresh process: one eval forward of the owt model at T tokens, batch 1; print the peak RSS."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**OWT_SHAPE, "n_layer": n_layer}, pos_emb=name)).eval()
    idx = torch.randint(0, 50304, (1, T))
    t0 = time.perf_counter()
    with torch.no_grad():
        _, loss = model(idx, idx, reduction="none")
    assert torch.isfinite(loss).all()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(json.dumps({"peak_rss_gib": peak, "seconds": time.perf_counter() - t0}))


def bench_sweep_memory(T, n_layer):
    """Peak memory of the T-token sweep for every additive-bias embedding (and NoPE for reference), each
    in its own process; the dense (H, T, T) float32 tensor a bias or a score matrix alone would need."""
    names = ["nope"] + [n for n, spec in POS_EMBS.items() if spec.kind == "bias"]
    H = OWT_SHAPE["n_head"]
    result = {"tokens": T, "batch": 1, "n_layer": n_layer, "model": {**OWT_SHAPE, "n_layer": n_layer}, "dtype": "float32",
              "dense_hTT_float32_gib": H * T * T * 4 / 2**30, "limit_gib": 24, "peak_rss_gib": {}, "seconds": {}}
    for name in names:
        proc = subprocess.run([sys.executable, __file__, "--sweep-memory-child", name, str(T), str(n_layer)],
                              capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"the {T}-token sweep of {name} failed: {proc.stderr.strip().splitlines()[-1:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        result["peak_rss_gib"][name], result["seconds"][name] = r["peak_rss_gib"], r["seconds"]
        print(f"  {T}-token sweep, {name:8s} peak {r['peak_rss_gib']:6.2f} GiB ({r['seconds']:.0f} s)")
    result["within_limit"] = all(v <= result["limit_gib"] for v in result["peak_rss_gib"].values())
    return result


def bench_training(repeats, burst, warmup, batch_size=32, block_size=128):
    t0 = time.perf_counter()
    models = {f"{p}_{b}": {"pos_emb": p, "rotary_backend": b} for p, b in STEP_CONFIGS}
    medians, _ = interleaved_medians(training_steps(models, batch_size, block_size), repeats, burst, warmup)
    print(f"training step, laptop GPT (4 x 128, 4 heads, T={block_size}), batch {batch_size}, AdamW "
          f"(measured in {time.perf_counter() - t0:.0f} s)")
    result = {}
    for name, seconds in medians.items():
        result[f"step_{name}_ms"] = seconds * 1e3
        result[f"step_{name}_tokens_per_s"] = batch_size * block_size / seconds
        print(f"  {name:14s} {seconds * 1e3:8.2f} ms  {batch_size * block_size / seconds / 1e3:7.1f}k tok/s")
    return result

# -----------------------------------------------------------------------------


def machine():
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats: under a minute")
    parser.add_argument("--out", default="bench.json", help="where to write the results")
    parser.add_argument("--sweep-memory-child", nargs=3, help=argparse.SUPPRESS)  # (3)'s fresh process
    args = parser.parse_args()
    if args.sweep_memory_child:
        name, T, n_layer = args.sweep_memory_child
        return sweep_memory_child(name, int(T), int(n_layer))
    if not fope_ext.available():
        raise SystemExit(f"fope_ext is not built ({fope_ext.build_error()}): install a C compiler "
                         "with OpenMP (e.g. apt-get install gcc) and run make ext")
    repeats, burst, warmup, step_repeats = (3, 3, 3, 5) if args.quick else (30, 5, 20, 40)
    allocation = keep_freed_memory()  # before the first tensor
    m = machine()
    run = "quick" if args.quick else "full"
    print(f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} on {m['threads']} threads; "
          f"{run} run: {repeats} repeats x {burst} calls per method, interleaved, after {warmup} warm-up calls")
    print(f"allocation: {allocation}")

    out = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
           "command": " ".join(["python"] + sys.argv), "quick": args.quick,
           "timing": {"statistic": "median", "repeats": repeats, "calls_per_repeat": burst, "warmup_calls": warmup,
                      "order": "methods (forward and forward+backward) round-robin within each repeat"},
           "allocation": allocation}
    t_start = time.perf_counter()
    for name, shape in SHAPES.items():
        print(f"rotation {name} {shape} ...")
        out[f"rotation_{name}"] = r = {"shape": shape, **bench_rotation(shape, repeats, burst, warmup)}
        print_rotation(name, shape, r)
    out["modules"] = mods = bench_modules(SHAPES["gpt2_small"], repeats, burst, warmup)
    out["training"] = t = bench_training(step_repeats, burst=1, warmup=min(warmup, 5))
    out["embeddings"] = bench_embeddings(2 * step_repeats, warmup=min(warmup, 5))  # 12 models
    # quick: a 1-layer model at 2048 tokens (the full run's 12 layers at 8192 take minutes)
    out["bias_sweep_memory"] = bench_sweep_memory(*((2048, 1) if args.quick else (8192, OWT_SHAPE["n_layer"])))

    big = out["rotation_gpt2_small"]
    out["speedup_c_over_eager_official_fwd_bwd"] = big["eager_official_fwd_bwd_ms"] / big["c_fwd_bwd_ms"]
    out["speedup_c_over_eager_cached_fwd_bwd"] = big["eager_cached_fwd_bwd_ms"] / big["c_fwd_bwd_ms"]
    out["speedup_c_over_compile_fwd_bwd"] = big["compile_fwd_bwd_ms"] / big["c_fwd_bwd_ms"]
    out["c_fwd_over_copy"] = big["c_fwd_over_copy"]
    out["c_fwd_bwd_over_copy"] = big["c_fwd_bwd_over_copy"]
    out["fope_over_rope_module_fwd_c"] = mods["module_fope_c_fwd_ms"] / mods["module_rope_c_fwd_ms"]
    out["fope_over_rope_module_fwd_eager"] = mods["module_fope_eager_fwd_ms"] / mods["module_rope_eager_fwd_ms"]
    out["fope_over_rope_step_c"] = t["step_fope_c_ms"] / t["step_rope_c_ms"]
    out["fope_over_rope_step_eager"] = t["step_fope_eager_ms"] / t["step_rope_eager_ms"]
    out["speedup_step_c_over_eager_fope"] = t["step_fope_eager_ms"] / t["step_fope_c_ms"]
    out["speedup_step_c_over_compile_fope"] = t["step_fope_compile_ms"] / t["step_fope_c_ms"]
    print("ratios (rotation at (8, 12, 1024, 64)):")
    for key, value in out.items():
        if key.startswith(("speedup", "c_fwd", "fope_over")):
            print(f"  {key:38s} {value:6.2f}")
    out["forward_below_forward_backward_everywhere"] = all(
        below for name in SHAPES for below in out[f"rotation_{name}"]["forward_below_forward_backward"].values())
    out["seconds"] = round(time.perf_counter() - t_start)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.out} ({out['seconds']} s; forward below forward+backward for every method: "
          f"{out['forward_below_forward_backward_everywhere']})")


if __name__ == "__main__":
    main()
