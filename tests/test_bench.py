"""fope_ext/bench.py and experiments/bench.py: the baseline does the official FoPE code's per-call work, every
method timed computes what it claims (a benchmark of different computations would compare nothing), and
the report (results/bench.md) is written from bench.json, numbers unchanged."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import fope
import fope_ext
from experiments import bench as experiment
from experiments import runner
from fope_ext import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMITTED = os.path.join(ROOT, "results", "bench.json")
SHAPE = (2, 4, 64, 32)  # (B, H, T, head_dim): FoPE keeps D=5 frequencies, d_out=5 of 16 pairs
NEEDS_KERNEL = {"c", "qk_norm_c"}
SLOW = {"compile"}  # a cold torch.compile of the rotation, forward and backward (inductor), takes ~20 s on 2 cores


class TorchCalls(TorchFunctionMode):
    """The names of the torch functions and tensor methods called inside the block."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", repr(func)))
        return func(*args, **(kwargs or {}))


def test_official_baseline_caches_sin_cos_and_per_call_mixes_pads_and_rotates():
    forward, _ = bench.rotation_methods(SHAPE)["eager_official"]
    forward()
    with TorchCalls() as calls:
        forward()
    # sin/cos of t*w come from the cache, as the official BufferCache serves them
    assert not {"sin", "cos"} & set(calls.names), calls.names
    # the per-head Fourier mixing and the one-padding are redone on every call, as in the official code
    assert calls.names.count("einsum") == 2 and calls.names.count("pad") == 2, calls.names


def expected(name, shape):
    """(forward, forward_backward) that method `name` must return, computed here from fope.apply_rotary on the
    benchmark's own inputs: a rotation's output and (dx,); QK norm's the same after F.layer_norm; copy's x, (x, g)."""
    _, cos, sin, x, g = bench.rotation_inputs(shape)
    if name == "copy":
        return x, (x, g)
    x = x.clone().requires_grad_()
    y = fope.apply_rotary(F.layer_norm(x, x.shape[-1:]) if name.startswith("qk_norm") else x, cos, sin)
    return y.detach(), torch.autograd.grad(y, x, g)


@pytest.mark.parametrize("name", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW else m for m in bench.METHODS])
def test_every_benchmarked_method_computes_what_it_claims(name):
    """Every name in METHODS, compile included: its forward and its gradient against the eager reference."""
    if name in NEEDS_KERNEL and not fope_ext.available():
        pytest.skip(f"fope_ext not built ({fope_ext.build_error()}): the C kernel was not compared")
    forward, forward_backward = bench.rotation_methods(SHAPE)[name]
    want_forward, want_forward_backward = expected(name, SHAPE)
    torch.testing.assert_close(forward(), want_forward, msg=f"{name} forward")
    got = forward_backward()
    assert len(got) == len(want_forward_backward)
    for a, b in zip(got, want_forward_backward):
        torch.testing.assert_close(a, b, msg=f"{name} gradient")


def test_qk_norm_methods_rotate_the_normalised_input():
    plain, norm = expected("eager_cached", SHAPE)[0], expected("qk_norm_eager", SHAPE)[0]
    assert not torch.allclose(plain, norm)  # so the qk_norm rows are not the plain rotation twice


def test_docstring_lists_exactly_the_methods():
    block = bench.__doc__.split("METHODS, one line each:\n\n", 1)[1].split("\n\n", 1)[0]
    assert [line.split()[0] for line in block.splitlines()] == list(bench.METHODS)


def test_paired_ratios_divide_within_each_repeat_and_report_the_median_and_quartiles():
    """Load that changes between repeats (x1, x3, x1, x3, x3) scales both steps of a repeat: the paired
    ratios are all 1.02. An outlier repeat moves the quartile, not the median."""
    load = [1.0, 3.0, 1.0, 3.0, 3.0]
    times = {"nope": load, "rope": [1.02 * f for f in load], "fire": [1.1 * f for f in load[:4]] + [2.0 * load[4]]}
    ratios = bench.paired_ratios(times, "nope")
    assert ratios["nope"] == (1.0, 1.0, 1.0)
    assert all(abs(r - 1.02) < 1e-12 for r in ratios["rope"])
    median, q1, q3 = ratios["fire"]
    assert abs(median - 1.1) < 1e-12 and q3 > 1.1


def test_report_only_writes_the_saved_numbers(tmp_path):
    """--report_only rewrites bench.md beside --out from the saved JSON (the committed one), without timing:
    its tables carry the JSON's numbers, and the reading is filled from it."""
    out_path = tmp_path / "bench.json"
    shutil.copy(COMMITTED, out_path)
    saved = json.loads(out_path.read_text())
    experiment.main(["--report_only", "--out", str(out_path)])
    md = (tmp_path / "bench.md").read_text()
    assert json.loads(out_path.read_text()) == saved  # read, not rewritten
    assert json.loads((tmp_path / "bench_timing.json").read_text()) == {"total": saved["seconds"]}
    for name in bench.SHAPES:
        r = saved[f"rotation_{name}"]
        for m in bench.METHODS:
            row = (f"| {m} | {r[f'{m}_fwd_ms']:.3f} | {r[f'{m}_fwd_GBps']:.1f} | {r[f'{m}_fwd_over_copy']:.2f} | "
                   f"{r[f'{m}_fwd_bwd_ms']:.3f} | {r[f'{m}_fwd_bwd_GBps']:.1f} | {r[f'{m}_fwd_bwd_over_copy']:.2f} |")
            assert row in md, row
    e = saved["embeddings"]
    for name, ratio in e["over_baseline"].items():
        q1, q3 = e["over_baseline_quartiles"][name]
        assert f"| {name} | {e['step_ms'][name]:.2f} | {ratio:.3f} | {q1:.3f} | {q3:.3f} |" in md, name
    for key, ms in saved["training"].items():
        if key.endswith("_ms"):
            assert f"| {key[5:-3]} | {ms:.2f} |" in md, key
    for name, gib in saved["bias_sweep_memory"]["peak_rss_gib"].items():
        assert f"| {name} | {gib:.2f} |" in md, name
    assert f"QK norm's own cost: NoPE + QK norm over NoPE {e['qk_norm_cost']['nope']:.3f}x" in md
    assert f"{saved['machine']['cpu']}, {saved['machine']['cores']} cores, torch {saved['machine']['torch']}" in md
    if os.path.isfile(os.path.join(runner.READINGS, "bench.md")):
        assert f"the C kernel takes {saved['rotation_gpt2_small']['c_fwd_bwd_ms']:.2f} ms" in md


def test_sweep_memory_child_runs_from_its_file():
    """(3) runs experiments/bench.py again, by its own path, in a fresh process."""
    r = experiment.sweep_memory("alibi", 64, 1)
    assert 0 < r["peak_rss_gib"] < 4 and r["seconds"] >= 0


def test_rotation_benchmark_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "fope_ext.bench", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and "--quick" in proc.stdout, proc.stderr


@pytest.mark.slow
def test_quick_run_writes_the_committed_keys_and_a_report(tmp_path):
    """make bench QUICK=1 end to end into tmp_path: the JSON has bench.json's keys (so the committed
    results and the reading stay readable), and the report is written beside it."""
    if not fope_ext.available():
        pytest.skip(f"fope_ext not built ({fope_ext.build_error()}): bench.py needs the C kernel")
    out_path = tmp_path / "bench.json"
    script = os.path.join(ROOT, "experiments", "bench.py")
    proc = subprocess.run([sys.executable, script, "--quick", "--out", str(out_path)], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out, committed = json.loads(out_path.read_text()), json.loads(open(COMMITTED).read())
    assert out.keys() == committed.keys()
    for key, value in committed.items():
        if key == "nanogpt" and out[key].keys() == {"note"}:
            continue  # measured only with --nanogpt PATH, which a quick run here is not given
        if isinstance(value, dict):
            assert out[key].keys() == value.keys(), key
    assert out["quick"] and os.path.isfile(tmp_path / "bench.md") and os.path.isfile(tmp_path / "bench_timing.json")
    template = os.path.join(runner.READINGS, "bench.md")
    if os.path.isfile(template):  # the reading (left out of a quick report) cites only keys a run writes
        with open(template) as f:
            runner.render_reading(f.read(), {"bench": out, "timing": {}})
    assert sorted(os.listdir(tmp_path)) == ["bench.json", "bench.md", "bench_timing.json"]


def test_the_generation_row_reads_compare_hfs_json(tmp_path):
    from experiments import bench
    assert "Not measured" in " ".join(bench.generation_lines(str(tmp_path / "none.json")))
    side = {"prefill_s": 2.0, "ms_per_token": 50.0, "generate_tokens_per_s": 10.0, "forward_s": 8.0}
    doc = {"source": "smollm2-135m", "dtype": "float32", "prompt_tokens": 2048, "new_tokens": 64, "forward_tokens": 4095,
           "transformers": "5.0", "repeats": 3, "machine": "AMD EPYC, 2 cores", "threads": 2, "date": "2026-12-06",
           "ours": side, "hf": {**side, "prefill_s": 3.0, "ms_per_token": 40.0}, "same_tokens": False, "first_difference": 7}
    path = tmp_path / "bench_generate.json"
    path.write_text(json.dumps(doc))
    text = "\n".join(bench.generation_lines(str(path)))
    assert "| nanoFoPE / HF speed | 1.50x | 0.80x | 1.00x | 1.00x |" in text
    assert "first difference at new token 7" in text and "AMD EPYC, 2 cores" in text
