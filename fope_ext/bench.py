"""
The rotation microbenchmark: the rotary rotation of eq. (1) (fope.py), float32 on CPU, with FoPE's per-head
tables, forward and forward+backward, each path timed beside a plain copy of the same bytes (the
memory-bandwidth roof) and given as a multiple of it. METHODS, one line each:

    eager_official  the official FoPE code's per-call work: cached sin/cos of t*w, per-head einsum, padding, rotation
    eager_cached    fope.apply_rotary, the eager reference, on cached tables (about five passes over x)
    compile         torch.compile(fope.apply_rotary), as fope.rotate(x, cos, sin, "compile") runs it
    c               fope_ext.rotate: one pass of OpenMP C
    qk_norm_eager   QK norm then the rotation, eager: F.layer_norm, then fope.apply_rotary
    qk_norm_c       QK norm fused into the rotation: fope_ext.norm_rotate, one pass of OpenMP C
    copy            torch.empty_like(x).copy_(x): the roof; forward+backward counts two copies (dx from g too)

eager_official follows olmo/model.py's FourierEmbedding (see OfficialForm); copy allocates its output, as c
does. The qk_norm rows' backward reads x once more than a rotation's (LayerNorm's backward needs it), which
their GB/s does not count. Also timed: the forward of the FoPE module against the RoPE module, per backend.

Methods, forward and forward+backward alike, are interleaved (round-robin each repeat), so drifting machine
load hits all alike, and medians over repeats are reported. Every method allocates its outputs and
temporaries per call, as in use, but from warm memory: glibc's malloc is told to keep freed memory (no mmap
per large block, no trim), and each method is warmed up first, so a timed call measures the method's passes
over memory, not the kernel zeroing fresh pages (page faults per call are reported).

    python -m fope_ext.bench            # from the repo root: the full rotation benchmark (a few minutes)
    python -m fope_ext.bench --quick    # fewer repeats

experiments/bench.py (make bench) runs this, then what it means for a training step, into results/bench.json.
"""

import argparse
import ctypes
import ctypes.util
import os
import platform
import resource
import statistics
import time

import torch
import torch.nn.functional as F

import fope
import fope_ext
from fope import FourierPositionEmbedding, RotaryPositionEmbedding

SHAPES = {"gpt2_small": (8, 12, 1024, 64), "laptop": (32, 4, 128, 32)}  # (B, H, T, head_dim)
METHODS = ("eager_official", "eager_cached", "compile", "c", "qk_norm_eager", "qk_norm_c", "copy")
MODES = (("fwd", 0, 2), ("fwd_bwd", 1, 4))  # (name, index in a method's pair, bytes moved / size of x)


def settings(quick):
    """(repeats, calls per repeat, warm-up calls) of a full or a quick run."""
    return (3, 3, 3) if quick else (30, 5, 20)


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


def rotation_inputs(shape):
    """(pe, cos, sin, x, g) of a benchmark at shape (B, H, T, head_dim): FoPE's module, its (H, T, hd//2)
    tables, the input and the output gradient. Seeded: every call returns the same tensors."""
    B, H, T, hd = shape
    torch.manual_seed(0)
    pe = FourierPositionEmbedding(hd, H, train_len=T)
    cos, sin = pe.tables(0, T)
    return pe, cos, sin, torch.randn(shape), torch.randn(shape)


def rotation_methods(shape):
    """{method: (forward, forward_backward)} for every name in METHODS, each a no-argument callable;
    forward_backward returns the gradient of x, (dx,) (copy: its two copies)."""
    pe, cos, sin, x, g = rotation_inputs(shape)
    x_grad = x.clone().requires_grad_()
    rotations = {
        "eager_official": OfficialForm(pe, shape[2]),
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
    assert tuple(methods) == METHODS
    return methods


def require_kernel():
    if not fope_ext.available():
        raise SystemExit(f"fope_ext is not built ({fope_ext.build_error()}): install a C compiler "
                         "with OpenMP (e.g. apt-get install gcc) and run make ext")


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


def bench_rotation(shape, repeats, burst, warmup):
    """{method}_{mode}_{ms, page_faults_per_call, GBps, over_copy} for every method and mode, and
    forward_below_forward_backward {method: bool} (False: the machine was busy, or allocation leaked in)."""
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


def rotation_table(name, r):
    """The markdown table of one bench_rotation result r (with its "shape"): ms, GB/s and multiple of a
    copy for each method, forward and forward+backward."""
    lines = [f"Rotation, {name} (B, H, T, head_dim) = {tuple(r['shape'])}, float32, FoPE per-head tables:", "",
             "| method | fwd ms | GB/s | x copy | fwd+bwd ms | GB/s | x copy |",
             "|---|--:|--:|--:|--:|--:|--:|"]
    for m in METHODS:
        cells = [f"{r[f'{m}_{mode}_ms']:.3f} | {r[f'{m}_{mode}_GBps']:.1f} | {r[f'{m}_{mode}_over_copy']:.2f}"
                 for mode, _, _ in MODES]
        lines.append(f"| {m} | {' | '.join(cells)} |")
    slower = [m for m, below in r["forward_below_forward_backward"].items() if not below]
    if slower:
        lines += ["", f"WARNING: forward not below forward+backward for {', '.join(slower)}: the machine was busy "
                  "or allocation leaked into the timing; rerun alone"]
    return lines


def print_rotation(name, r):
    print("\n".join(rotation_table(name, r)))


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


def machine():
    """The machine the numbers were made on (bench.json's "machine")."""
    from util.machine import cpu_name
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version()}


def ratios(results):
    """The headline ratios at GPT-2-small's shape, from run()'s rotation and module results."""
    big, mods = results["rotation_gpt2_small"], results["modules"]
    return {
        "speedup_c_over_eager_official_fwd_bwd": big["eager_official_fwd_bwd_ms"] / big["c_fwd_bwd_ms"],
        "speedup_c_over_eager_cached_fwd_bwd": big["eager_cached_fwd_bwd_ms"] / big["c_fwd_bwd_ms"],
        "speedup_c_over_compile_fwd_bwd": big["compile_fwd_bwd_ms"] / big["c_fwd_bwd_ms"],
        "c_fwd_over_copy": big["c_fwd_over_copy"],
        "c_fwd_bwd_over_copy": big["c_fwd_bwd_over_copy"],
        "fope_over_rope_module_fwd_c": mods["module_fope_c_fwd_ms"] / mods["module_rope_c_fwd_ms"],
        "fope_over_rope_module_fwd_eager": mods["module_fope_eager_fwd_ms"] / mods["module_rope_eager_fwd_ms"],
    }


def run(quick=False):
    """The rotation at every shape of SHAPES and the position modules, printed as it goes. Returns
    {"timing", "allocation", "rotation_<shape>" for each shape, "modules"}; ratios(result) the headline
    ratios. Call it before the process makes large tensors (keep_freed_memory)."""
    require_kernel()
    allocation = keep_freed_memory()
    repeats, burst, warmup = settings(quick)
    print(f"rotation: {repeats} repeats x {burst} calls per method, interleaved, after {warmup} warm-up calls; "
          f"torch on {torch.get_num_threads()} threads")
    print(f"allocation: {allocation}")
    out = {"timing": {"statistic": "median", "repeats": repeats, "calls_per_repeat": burst, "warmup_calls": warmup,
                      "order": "methods (forward and forward+backward) round-robin within each repeat"},
           "allocation": allocation}
    for name, shape in SHAPES.items():
        print(f"rotation {name} {shape} ...")
        out[f"rotation_{name}"] = r = {"shape": shape, **bench_rotation(shape, repeats, burst, warmup)}
        print_rotation(name, r)
    out["modules"] = bench_modules(SHAPES["gpt2_small"], repeats, burst, warmup)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description="the rotation of eq. (1): each path beside a plain copy")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args(argv)
    m = machine()
    print(f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}; {'quick' if args.quick else 'full'} run")
    out = run(args.quick)
    headline = ratios(out)
    out.update(headline)
    print("ratios (rotation at (8, 12, 1024, 64)):")
    for key, value in headline.items():
        print(f"  {key:38s} {value:6.2f}")
    return out


if __name__ == "__main__":
    main()
