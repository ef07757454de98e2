"""bench.py: its baseline does the official FoPE code's per-call work, and every method it times
computes the same rotation (a benchmark of different computations would compare nothing)."""

import pytest
import torch
from torch.overrides import TorchFunctionMode

import bench
import fope_ext

SHAPE = (2, 4, 64, 32)  # (B, H, T, head_dim): FoPE keeps D=5 frequencies, d_out=5 of 16 pairs


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


def test_every_benchmarked_rotation_computes_the_reference_rotation():
    methods = bench.rotation_methods(SHAPE)
    reference_forward, reference_forward_backward = methods["eager_cached"]  # fope.apply_rotary
    expected, (expected_grad,) = reference_forward(), reference_forward_backward()
    names = ["eager_official"] + (["c"] if fope_ext.available() else [])
    for name in names:
        forward, forward_backward = methods[name]
        torch.testing.assert_close(forward(), expected, msg=f"{name} forward")
        torch.testing.assert_close(forward_backward()[0], expected_grad, msg=f"{name} gradient")
    if not fope_ext.available():
        pytest.skip(f"fope_ext not built ({fope_ext.build_error()}): the C kernel was not compared")
    norm_forward, norm_forward_backward = methods["qk_norm_eager"]  # F.layer_norm, then fope.apply_rotary
    forward, forward_backward = methods["qk_norm_c"]
    torch.testing.assert_close(forward(), norm_forward(), msg="qk_norm_c forward")
    torch.testing.assert_close(forward_backward()[0], norm_forward_backward()[0], msg="qk_norm_c gradient")
    assert not torch.allclose(norm_forward(), expected)  # the norm changes what is rotated


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
