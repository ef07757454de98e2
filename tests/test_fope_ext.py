"""fope_ext: the C rotation equals fope.apply_rotary (values and gradients), composes as a torch custom
op (opcheck, gradcheck, torch.compile fullgraph), refuses bad inputs in one line, and falls back to
the reference when no C compiler is there."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fope_ext
from fope import apply_rotary
from fope_ext import build

# every test that calls the kernel; the fallback tests below run with or without a compiler
needs_kernel = pytest.mark.skipif(not fope_ext.available(), reason=f"C kernel not built: {fope_ext.build_error()}")


def make_inputs(B, H, T, hd, table_heads, dtype=torch.float32, transposed=False, sliced_tables=False,
                seed=0):
    """x (B, H, T, hd), optionally the (B, T, H, hd).transpose(1, 2) view the model makes; tables
    (table_heads, T, hd//2), optionally slices of a longer cached table (strided over heads)."""
    g = torch.Generator().manual_seed(seed)
    if transposed:
        x = torch.randn(B, T, H, hd, generator=g, dtype=dtype).transpose(1, 2)
    else:
        x = torch.randn(B, H, T, hd, generator=g, dtype=dtype)
    extra = 3 if sliced_tables else 0
    cos = torch.randn(table_heads, T + extra, hd // 2, generator=g, dtype=dtype)[:, extra:]
    sin = torch.randn(table_heads, T + extra, hd // 2, generator=g, dtype=dtype)[:, extra:]
    return x, cos, sin


CASES = {  # (B, H, T, hd, table_heads, transposed, sliced_tables)
    "fope_per_head": (2, 3, 5, 8, 3, False, False),
    "rope_shared_table": (2, 3, 5, 8, 1, False, False),
    "T_1": (3, 2, 1, 8, 2, False, False),
    "odd_T_odd_half": (2, 2, 7, 6, 2, False, False),
    "H_1": (2, 1, 4, 8, 1, False, False),
    "transposed_view": (2, 4, 6, 16, 4, True, False),
    "transposed_view_shared_table": (2, 4, 6, 16, 1, True, False),
    "sliced_tables": (2, 3, 5, 8, 3, False, True),
    # enough work for two threads, and more batch rows than one table read serves (BATCH_CHUNK)
    "parallel_transposed_view": (10, 4, 33, 64, 4, True, False),
    "parallel_shared_table": (10, 4, 33, 64, 1, False, False),
}
TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-12, atol=1e-12)}


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", list(CASES))
def test_c_matches_eager_reference_values_and_all_gradients(case, dtype):
    B, H, T, hd, table_heads, transposed, sliced = CASES[case]
    x, cos, sin = make_inputs(B, H, T, hd, table_heads, dtype, transposed, sliced)
    grad = torch.randn(B, H, T, hd, dtype=dtype)
    results = []
    # fope_ext.rotate (eager autograd.Function), the registered op (what torch.compile traces), reference
    for rotate in (fope_ext.rotate, fope_ext.rotate_op, apply_rotary):
        leaves = [t.detach().clone().requires_grad_() for t in (x, cos, sin)]
        y = rotate(*leaves)
        results.append((y, *torch.autograd.grad(y, leaves, grad)))
    tol = TOLERANCE[dtype]
    for got_results in results[:2]:
        for name, got, want in zip(("y", "dx", "dcos", "dsin"), got_results, results[2]):
            assert got.shape == want.shape, name
            torch.testing.assert_close(got, want, **tol, msg=lambda m: f"{name}: {m}")
    torch.testing.assert_close(fope_ext.rotate(x, cos, sin), results[2][0], **tol)  # no grad at all


@needs_kernel
@pytest.mark.parametrize("table_heads", [1, 3])
def test_frozen_tables_take_the_dx_only_backward_and_match(table_heads):
    x, cos, sin = make_inputs(2, 3, 5, 8, table_heads)
    grad = torch.randn(2, 3, 5, 8)
    (dx,) = torch.autograd.grad(fope_ext.rotate(x.requires_grad_(), cos, sin), x, grad)
    (dx_ref,) = torch.autograd.grad(apply_rotary(x, cos, sin), x, grad)
    torch.testing.assert_close(dx, dx_ref)


@needs_kernel
def test_bfloat16_is_the_float32_result_rounded_once():
    x, cos, sin = make_inputs(2, 3, 9, 16, 3, torch.bfloat16)
    y = fope_ext.rotate(x, cos, sin)
    want = apply_rotary(x.float(), cos.float(), sin.float())
    assert y.dtype == torch.bfloat16
    # one rounding to bfloat16 (8 bits of mantissa): within half an ulp of the exact float32 result
    assert ((y.float() - want).abs() <= want.abs() * 2.0**-8 + 1e-30).all()
    grads = [t.detach().clone().requires_grad_() for t in (x, cos, sin)]
    g = torch.randn(2, 3, 9, 16, dtype=torch.bfloat16)
    got = torch.autograd.grad(fope_ext.rotate(*grads), grads, g)
    ref_leaves = [t.detach().float().requires_grad_() for t in (x, cos, sin)]
    want = torch.autograd.grad(apply_rotary(*ref_leaves), ref_leaves, g.float())
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b, rtol=2e-2, atol=2e-2)


@needs_kernel
@pytest.mark.parametrize("table_heads", [1, 3])
def test_gradcheck_in_float64(table_heads):
    x, cos, sin = make_inputs(2, 3, 4, 6, table_heads, torch.float64, transposed=True)
    inputs = [t.detach().clone().requires_grad_() for t in (x, cos, sin)]
    assert torch.autograd.gradcheck(fope_ext.rotate, inputs)
    assert torch.autograd.gradcheck(fope_ext.rotate_op, inputs)
    # second order wrt x (frozen tables) through the op: its backward is the op itself
    assert torch.autograd.gradgradcheck(lambda x: fope_ext.rotate_op(x, cos, sin), (inputs[0],))


@needs_kernel
def test_opcheck_passes_for_both_ops():
    x, cos, sin = make_inputs(2, 3, 5, 8, 3, torch.float64, transposed=True)
    torch.library.opcheck(fope_ext.rotate_op, (x.requires_grad_(), cos, sin))
    torch.library.opcheck(fope_ext.rotate_op, (x.detach(), cos.requires_grad_(), sin.requires_grad_(), True))
    x1, cos1, sin1 = make_inputs(2, 3, 5, 8, 1)
    torch.library.opcheck(fope_ext.rotate_op, (x1, cos1, sin1))
    torch.library.opcheck(fope_ext.rotate_backward_op, (torch.randn(2, 3, 5, 8), x1, cos1, sin1, False))


def norm_then_rotate(x, cos, sin):
    """The reference of the fused QK norm + rotation: F.layer_norm (no affine), then apply_rotary."""
    return apply_rotary(torch.nn.functional.layer_norm(x, x.shape[-1:]), cos, sin)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", list(CASES))
def test_fused_qk_norm_and_rotation_match_layer_norm_then_the_reference(case, dtype):
    B, H, T, hd, table_heads, transposed, sliced = CASES[case]
    x, cos, sin = make_inputs(B, H, T, hd, table_heads, dtype, transposed, sliced)
    x = x * 3 + torch.linspace(-2, 2, hd, dtype=dtype)  # rows far from mean 0, variance 1
    grad = torch.randn(B, H, T, hd, dtype=dtype)
    results = []
    for fn in (fope_ext.norm_rotate, fope_ext.norm_rotate_op, norm_then_rotate):
        leaf = x.detach().clone().requires_grad_()
        y = fn(leaf, cos, sin)
        results.append((y, *torch.autograd.grad(y, leaf, grad)))
    for got_results in results[:2]:
        for name, got, want in zip(("y", "dx"), got_results, results[2]):
            torch.testing.assert_close(got, want, **TOLERANCE[dtype], msg=lambda m: f"{name}: {m}")


@needs_kernel
def test_fused_qk_norm_passes_gradcheck_opcheck_and_refuses_learnable_tables():
    x, cos, sin = make_inputs(2, 3, 4, 6, 3, torch.float64, transposed=True)
    assert torch.autograd.gradcheck(lambda x: fope_ext.norm_rotate(x, cos, sin), (x.detach().requires_grad_(),))
    assert torch.autograd.gradcheck(lambda x: fope_ext.norm_rotate_op(x, cos, sin), (x.detach().requires_grad_(),))
    torch.library.opcheck(fope_ext.norm_rotate_op, (x.detach().requires_grad_(), cos, sin, 1e-5))
    torch.library.opcheck(fope_ext.norm_rotate_backward_op, (torch.randn(2, 3, 4, 6, dtype=torch.float64),
                                                             x.detach(), cos, sin, 1e-5))
    with pytest.raises(ValueError, match="constant tables"):
        fope_ext.norm_rotate(x, cos.requires_grad_(), sin)


@needs_kernel
def test_fused_qk_norm_in_bfloat16_is_close_to_float32():
    x, cos, sin = make_inputs(2, 3, 9, 16, 3, torch.bfloat16)
    y = fope_ext.norm_rotate(x, cos, sin)
    want = norm_then_rotate(x.float(), cos.float(), sin.float())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), want, rtol=2e-2, atol=2e-2)


@needs_kernel
@pytest.mark.parametrize("hd", [32, 64, 128])
@pytest.mark.parametrize("per_head", [False, True])
def test_attention_qk_norm_then_the_c_rotation_is_the_fused_kernel_bit_for_bit(hd, per_head):
    """QK norm is attention's (model.qk_norm) and the rotation the rotary module's: on the C path the two
    passes give the fused norm_rotate kernel's values and gradients exactly (so runs with qk_norm kept their
    numbers when the fusion went); the reference agrees within rounding."""
    import fope
    from model import qk_norm

    torch.manual_seed(hd)
    x = (torch.randn(2, 4, 9, hd) * 3 + 1).requires_grad_()
    cos, sin = torch.randn(4 if per_head else 1, 9, hd // 2), torch.randn(4 if per_head else 1, 9, hd // 2)
    g = torch.randn(2, 4, 9, hd)
    fused = fope_ext.norm_rotate(x, cos, sin, 1e-5)
    two_pass = fope.rotate(qk_norm(x, "c"), cos, sin, "c")
    assert torch.equal(fused, two_pass)
    assert torch.equal(torch.autograd.grad(fused, x, g)[0], torch.autograd.grad(two_pass, x, g)[0])
    eager = apply_rotary(qk_norm(x, "eager"), cos, sin)
    torch.testing.assert_close(two_pass, eager)
    assert not torch.equal(qk_norm(x, "eager"), x)


@needs_kernel
def test_torch_compile_fullgraph_runs_a_gpt_with_the_c_backend():
    from model import GPT, GPTConfig

    torch.manual_seed(0)
    args = dict(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=16, pos_emb="fope",
                fope_learnable=True, rotary_backend="c")
    model = GPT(GPTConfig(**args))
    reference = GPT(GPTConfig(**{**args, "rotary_backend": "eager"}))
    reference.load_state_dict(model.state_dict())
    idx = torch.randint(0, 11, (2, 8))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # inductor: see fope_ext/bench.py
    _, loss = compiled(idx, idx)
    loss.backward()
    _, loss_ref = reference(idx, idx)
    loss_ref.backward()
    torch.testing.assert_close(loss, loss_ref)
    coef = model.transformer.h[0].attn.rotary.sin_coef
    coef_ref = reference.transformer.h[0].attn.rotary.sin_coef
    assert coef.grad is not None and coef.grad.abs().sum() > 0  # dC/dS reached the coefficients
    torch.testing.assert_close(coef.grad, coef_ref.grad, rtol=1e-4, atol=1e-6)


@needs_kernel
def test_torch_compile_fullgraph_traces_the_fused_qk_norm():
    from model import GPT, GPTConfig

    torch.manual_seed(0)
    args = dict(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=16, pos_emb="rope", qk_norm=True,
                rotary_backend="c")
    model = GPT(GPTConfig(**args))
    reference = GPT(GPTConfig(**{**args, "rotary_backend": "eager"}))
    reference.load_state_dict(model.state_dict())
    idx = torch.randint(0, 11, (2, 8))
    _, loss = torch.compile(model, fullgraph=True, backend="aot_eager")(idx, idx)
    loss.backward()
    _, loss_ref = reference(idx, idx)
    loss_ref.backward()
    torch.testing.assert_close(loss, loss_ref)
    w, w_ref = model.transformer.h[0].attn.c_attn.weight, reference.transformer.h[0].attn.c_attn.weight
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("bad, match", [
    ("float16", "dtype torch.float16 not supported"),
    ("meta_device", "runs on CPU"),
    ("odd_head_dim", "head_dim must be even"),
    ("table_shape", "cos must be"),
    ("table_dtype", "pass tables of x's dtype"),
    ("three_dims", r"x must be \(B, H, T, head_dim\)"),
    ("tables_differ", "cos and sin must have one shape"),
])
@needs_kernel
def test_bad_inputs_give_a_one_line_value_error(bad, match):
    x, cos, sin = make_inputs(2, 3, 5, 8, 3)
    if bad == "float16":
        x, cos, sin = x.half(), cos.half(), sin.half()
    elif bad == "meta_device":
        x, cos, sin = x.to("meta"), cos.to("meta"), sin.to("meta")
    elif bad == "odd_head_dim":
        x = torch.randn(2, 3, 5, 7)
    elif bad == "table_shape":
        cos, sin = cos[:, :4], sin[:, :4]
    elif bad == "table_dtype":
        cos = cos.double()
    elif bad == "three_dims":
        x = x[0]
    elif bad == "tables_differ":
        sin = sin[:1]
    with pytest.raises(ValueError, match=match) as err:
        fope_ext.rotate(x, cos, sin)
    assert "\n" not in str(err.value)


def test_without_a_compiler_the_model_warns_once_and_runs_the_reference(monkeypatch, tmp_path):
    import fope
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("FOPE_EXT_BUILD_DIR", str(tmp_path))
    monkeypatch.setattr(fope_ext, "_lib", None)  # forget the loaded library (restored afterwards)
    monkeypatch.setattr(fope_ext, "_error", None)
    with pytest.warns(RuntimeWarning, match="C kernel not built"):
        assert fope_ext.available() is False
    assert "nonexistent" in fope_ext.build_error() and "\n" not in fope_ext.build_error()
    assert fope.resolve_backend("auto") == "eager"
    x, cos, sin = make_inputs(2, 3, 5, 8, 1)
    torch.testing.assert_close(fope.rotate(x, cos, sin, "c"), apply_rotary(x, cos, sin), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="not built") as err:  # the kernel itself never pretends
        fope_ext.rotate(x, cos, sin)
    assert "\n" not in str(err.value)
    assert not list(tmp_path.glob("*.so"))


def test_fope_ext_never_imports_fope():
    # the dependency is one-way: fope.py imports fope_ext (its rotation), fope_ext stands alone
    code = "import sys, fope_ext, fope_ext.rotation; fope_ext.available(); print('fope' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "False"


def test_library_name_changes_when_source_or_flags_change(monkeypatch):
    name = build.module_name()
    monkeypatch.setattr(build, "COMPILE_ARGS", build.COMPILE_ARGS + ["-DFOPE_TEST"])
    assert build.module_name() != name


@needs_kernel
def test_qk_norm_without_a_rotation_is_layer_norm_through_the_identity_rotation():
    from model import qk_norm

    x, _, _ = make_inputs(3, 2, 7, 16, 2, transposed=True)
    x = (x * 4 + 1).requires_grad_()
    g = torch.randn(3, 2, 7, 16)
    for backend in ("c", "eager"):
        y = qk_norm(x, backend)
        want = torch.nn.functional.layer_norm(x, (16,))
        torch.testing.assert_close(y, want)
        torch.testing.assert_close(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(want, x, g)[0])
