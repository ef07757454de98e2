"""
fope_ext: the rotary rotation of fope.py, eq. (1), as one-pass C with OpenMP, registered as a
torch custom op (fope::rotate) so torch.compile(fullgraph=True) traces through it and opcheck passes.

    y = x * cat(C, C) + rotate_half(x) * cat(S, S),  x (B, H, T, hd),  C, S (H or 1, T, hd//2)

RoPE (tables shared by the heads) and FoPE (per-head tables) are the same call. Eager PyTorch
makes about five passes over x for this; the kernel makes one, so it runs near the speed of a plain
copy of x (fope_ext/bench.py measures both). The reference it is tested against, apply_rotary, and the
dispatch every rotary module calls (rotate: this kernel, a compiled reference or the reference) sit beside
it in fope_ext/rotation.py.

    import fope_ext
    y = fope_ext.rotate(x, cos, sin)   # float32, float64 or bfloat16 on CPU
    y = fope_ext.norm_rotate(x, cos, sin)  # QK norm (F.layer_norm over hd, no affine), then the rotation
    fope_ext.available()               # False when no C compiler (rotation.rotate then runs the reference)
    fope_ext.build_error()             # why not, or None

fope.py imports this package and the package (this file, build.py, rotation.py) never imports fope: this
file holds the kernel and nothing else, rotation.py the reference and the fallback to it. Only the benchmark
script beside it, fope_ext/bench.py, imports fope (to time the kernel against fope's eager reference and
position modules); nothing in the package imports the benchmark.

The C library is compiled on first use (fope_ext/build.py, a cffi API-mode build cached in
fope_ext/_build/). Backward: the gradient of a rotation is the inverse rotation of the gradient,
so dx is the same op with inverse=True; when the tables require grad (learnable FoPE
coefficients) a second op, fope::rotate_backward, also sums dC and dS in the same pass.
fope::norm_rotate and fope::norm_rotate_backward fuse model.py's QK norm into the same pass (constant
tables; fope_ext/bench.py's qk_norm rows: F.layer_norm then the rotation take 3-6x the fused pass). Eager
calls go through a plain autograd.Function over the same kernels (cheaper than the dispatcher);
under torch.compile the registered ops are traced.
"""

import warnings

import torch
from torch.autograd.function import once_differentiable

from . import build

KERNEL_SUFFIX = {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16"}

_lib = None  # (ffi, lib) once loaded; False when the build failed
_error = None  # why the build failed, one line


def _load():
    global _lib, _error
    if _lib is None:
        try:
            _lib = build.load()
        except Exception as e:  # no compiler, no OpenMP, no cffi: keep working on the reference
            _lib = False
            _error = f"{type(e).__name__}: {e}".splitlines()[0]
            warnings.warn(f"fope_ext: C kernel not built ({_error}); using the eager PyTorch rotation. "
                          f"Compiler output: {build.build_dir()}/build.log", RuntimeWarning, stacklevel=3)
    return _lib


@torch.compiler.assume_constant_result  # decided once, outside any traced graph
def available():
    """True when the C library is built (building it now if needed)."""
    return bool(_load())


def build_error():
    """Why the C library could not be built (one line), or None."""
    _load()
    return _error


def check_inputs(x, cos, sin):
    """One-line ValueErrors for what the kernel does not take."""
    if x.dim() != 4:
        raise ValueError(f"fope_ext.rotate: x must be (B, H, T, head_dim), got shape {tuple(x.shape)}")
    B, H, T, hd = x.shape
    if hd % 2:
        raise ValueError(f"fope_ext.rotate: head_dim must be even, got {hd}")
    if x.dtype not in KERNEL_SUFFIX:
        raise ValueError(f"fope_ext.rotate: dtype {x.dtype} not supported; use float32, float64 or bfloat16")
    for name, table in (("cos", cos), ("sin", sin)):
        if table.dtype != x.dtype or table.device != x.device:
            raise ValueError(f"fope_ext.rotate: {name} is {table.dtype} on {table.device} but x is "
                             f"{x.dtype} on {x.device}; pass tables of x's dtype and device")
        if table.dim() != 3 or table.shape[0] not in (1, H) or tuple(table.shape[1:]) != (T, hd // 2):
            raise ValueError(f"fope_ext.rotate: {name} must be ({H} or 1, {T}, {hd // 2}) for x of shape "
                             f"{tuple(x.shape)}, got {tuple(table.shape)}")
    if cos.shape != sin.shape:
        raise ValueError(f"fope_ext.rotate: cos and sin must have one shape, got {tuple(cos.shape)} "
                         f"and {tuple(sin.shape)}")
    if x.device.type != "cpu":
        raise ValueError(f"fope_ext.rotate runs on CPU, got x on {x.device}; "
                         "use rotary_backend='compile' there")


def rotate(x, cos, sin):
    """Eq. (1) of fope.py: x (B, H, T, hd), cos/sin (H or 1, T, hd//2) -> y, contiguous (B, H, T, hd)."""
    check_inputs(x, cos, sin)
    if not available():
        _unbuilt()
    if torch.compiler.is_compiling():
        return rotate_op(x, cos, sin)  # what the compiler traces: fake kernel + registered autograd
    return _EagerRotate.apply(x, cos, sin, False)


def norm_rotate(x, cos, sin, eps=1e-5):
    """QK norm then eq. (1) in one pass: F.layer_norm(x, (hd,), eps=eps) (no affine), rotated by the
    tables. Constant tables only (RoPE, frozen FoPE); fope.rotate sends learnable ones the unfused way."""
    check_inputs(x, cos, sin)
    if cos.requires_grad or sin.requires_grad:
        raise ValueError("fope_ext.norm_rotate takes constant tables; with learnable ones use "
                         "F.layer_norm and then fope_ext.rotate (fope.rotate does)")
    if not available():
        _unbuilt()
    if torch.compiler.is_compiling():
        return norm_rotate_op(x, cos, sin, eps)
    return _EagerNormRotate.apply(x, cos, sin, eps)


# -----------------------------------------------------------------------------
# calling the C kernels


def _last_dim_contiguous(t):
    return t if t.stride(-1) == 1 else t.contiguous()  # one copy, only when needed


def _rows(ffi, t):
    """A (B, H, T, n) tensor, or an (H or 1, T, n) table seen as (1, H or 1, T, n), as fope_rows."""
    sb, sh, st = t.stride()[:3] if t.dim() == 4 else (0, *t.stride()[:2])
    if t.dim() == 3 and t.shape[0] == 1:
        sh = 0  # one table row for every head
    return (ffi.cast("void *", t.data_ptr()), sb, sh, st)


def _rotate(x, cos, sin, inverse):
    ffi, lib = _load() or _unbuilt()
    x, cos, sin = _last_dim_contiguous(x), _last_dim_contiguous(cos), _last_dim_contiguous(sin)
    B, H, T, hd = x.shape
    y = torch.empty(x.shape, dtype=x.dtype)
    kernel = getattr(lib, "fope_rotate_" + KERNEL_SUFFIX[x.dtype])
    kernel(_rows(ffi, y), _rows(ffi, x), _rows(ffi, cos), _rows(ffi, sin), B, H, T, hd // 2,
           inverse, torch.get_num_threads())
    return y


def _rotate_backward(grad, x, cos, sin, inverse):
    ffi, lib = _load() or _unbuilt()
    grad, x = _last_dim_contiguous(grad), _last_dim_contiguous(x)
    cos, sin = _last_dim_contiguous(cos), _last_dim_contiguous(sin)
    B, H, T, hd = x.shape
    dx = torch.empty(x.shape, dtype=x.dtype)
    dcos, dsin = torch.empty(cos.shape, dtype=x.dtype), torch.empty(sin.shape, dtype=x.dtype)
    kernel = getattr(lib, "fope_rotate_backward_" + KERNEL_SUFFIX[x.dtype])
    kernel(_rows(ffi, dx), _rows(ffi, dcos), _rows(ffi, dsin), _rows(ffi, grad), _rows(ffi, x),
           _rows(ffi, cos), _rows(ffi, sin), B, H, T, hd // 2, cos.shape[0], inverse, torch.get_num_threads())
    return dx, dcos, dsin


def _norm_rotate(x, cos, sin, eps, grad=None):
    """The fused QK norm + rotation: y from x, or with grad given, dx from grad (the backward)."""
    ffi, lib = _load() or _unbuilt()
    x, cos, sin = _last_dim_contiguous(x), _last_dim_contiguous(cos), _last_dim_contiguous(sin)
    B, H, T, hd = x.shape
    out = torch.empty(x.shape, dtype=x.dtype)
    if grad is None:
        kernel = getattr(lib, "fope_norm_rotate_" + KERNEL_SUFFIX[x.dtype])
        kernel(_rows(ffi, out), _rows(ffi, x), _rows(ffi, cos), _rows(ffi, sin), B, H, T, hd // 2, eps,
               torch.get_num_threads())
    else:
        grad = _last_dim_contiguous(grad)
        kernel = getattr(lib, "fope_norm_rotate_backward_" + KERNEL_SUFFIX[x.dtype])
        kernel(_rows(ffi, out), _rows(ffi, grad), _rows(ffi, x), _rows(ffi, cos), _rows(ffi, sin), B, H, T,
               hd // 2, eps, torch.get_num_threads())
    return out


def _unbuilt():
    raise RuntimeError(f"fope_ext: the C library is not built ({_error}); "
                       "use fope.rotate or rotary_backend='eager', which run the eager reference")


# -----------------------------------------------------------------------------
# autograd: the gradient of a rotation is the inverse rotation of the gradient; the tables'
# gradients (learnable FoPE) are dC = sum(g1*x1 + g2*x2), dS = sum(g2*x1 - g1*x2), summed over
# the batch (and the heads when the table is shared), computed only when a table requires grad.


def _setup_context(ctx, inputs, output):
    x, cos, sin, inverse = inputs
    ctx.inverse = inverse
    tables_need_grad = cos.requires_grad or sin.requires_grad
    ctx.save_for_backward(x if tables_need_grad else None, cos, sin)  # x only for dC, dS


def _backward_using(rotate, rotate_backward):
    def backward(ctx, grad):
        x, cos, sin = ctx.saved_tensors
        if x is None:  # constant tables (RoPE, frozen FoPE): one inverse rotation
            return rotate(grad, cos, sin, not ctx.inverse), None, None, None
        dx, dcos, dsin = rotate_backward(grad, x, cos, sin, ctx.inverse)
        return dx, dcos, dsin, None
    return backward


# -----------------------------------------------------------------------------
# the custom ops, for torch.compile and opcheck: real kernels call C, fake kernels describe outputs


@torch.library.custom_op("fope::rotate", mutates_args=())
def rotate_op(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """y = rotation of x by the tables; inverse=True rotates by the opposite angle (sin -> -sin)."""
    check_inputs(x, cos, sin)
    return _rotate(x, cos, sin, inverse)


@rotate_op.register_fake
def _(x, cos, sin, inverse=False):
    check_inputs(x, cos, sin)
    return x.new_empty(x.shape)


@torch.library.custom_op("fope::rotate_backward", mutates_args=())
def rotate_backward_op(grad: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                       inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dcos, dsin) of rotate_op in one pass (dcos, dsin reduced to the tables' shapes)."""
    check_inputs(x, cos, sin)
    return _rotate_backward(grad, x, cos, sin, inverse)


@rotate_backward_op.register_fake
def _(grad, x, cos, sin, inverse=False):
    check_inputs(x, cos, sin)
    return x.new_empty(x.shape), cos.new_empty(cos.shape), sin.new_empty(sin.shape)


rotate_op.register_autograd(_backward_using(rotate_op, rotate_backward_op), setup_context=_setup_context)


class _EagerRotate(torch.autograd.Function):
    """rotate_op for eager autograd, without the dispatcher: same kernels, same formula. The custom
    op's wrapper (a setup_context-style autograd.Function) costs ~80 us per call on this machine,
    5-10% of a forward+backward at GPT-2-small shapes; this old-style Function costs ~20 us."""

    @staticmethod
    def forward(ctx, x, cos, sin, inverse):
        _setup_context(ctx, (x, cos, sin, inverse), None)
        return _rotate(x, cos, sin, inverse)

    backward = staticmethod(once_differentiable(_backward_using(_rotate, _rotate_backward)))


# the fused QK norm + rotation: the same pattern, the backward needs x (its statistics) and no table grads


@torch.library.custom_op("fope::norm_rotate", mutates_args=())
def norm_rotate_op(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """y = rotation of F.layer_norm(x, (hd,), eps=eps) by the (constant) tables."""
    check_inputs(x, cos, sin)
    return _norm_rotate(x, cos, sin, eps)


@norm_rotate_op.register_fake
def _(x, cos, sin, eps=1e-5):
    check_inputs(x, cos, sin)
    return x.new_empty(x.shape)


@torch.library.custom_op("fope::norm_rotate_backward", mutates_args=())
def norm_rotate_backward_op(grad: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                            eps: float = 1e-5) -> torch.Tensor:
    """dx of norm_rotate_op, in one pass over grad and x."""
    check_inputs(x, cos, sin)
    return _norm_rotate(x, cos, sin, eps, grad)


@norm_rotate_backward_op.register_fake
def _(grad, x, cos, sin, eps=1e-5):
    check_inputs(x, cos, sin)
    return x.new_empty(x.shape)


def _norm_setup_context(ctx, inputs, output):
    x, cos, sin, eps = inputs
    ctx.eps = eps
    ctx.save_for_backward(x, cos, sin)


def _norm_backward_using(backward_fn):
    def backward(ctx, grad):
        x, cos, sin = ctx.saved_tensors
        return backward_fn(grad, x, cos, sin, ctx.eps), None, None, None
    return backward


norm_rotate_op.register_autograd(_norm_backward_using(norm_rotate_backward_op), setup_context=_norm_setup_context)


class _EagerNormRotate(torch.autograd.Function):
    """norm_rotate_op for eager autograd, without the dispatcher (see _EagerRotate)."""

    @staticmethod
    def forward(ctx, x, cos, sin, eps):
        _norm_setup_context(ctx, (x, cos, sin, eps), None)
        return _norm_rotate(x, cos, sin, eps)

    backward = staticmethod(once_differentiable(_norm_backward_using(
        lambda grad, x, cos, sin, eps: _norm_rotate(x, cos, sin, eps, grad))))
