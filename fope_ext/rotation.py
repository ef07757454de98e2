"""
The rotation (1) of fope.py, y = x * cat(C, C) + rotate_half(x) * cat(S, S): its eager reference
(apply_rotary) beside the C kernel it is tested against, and the one dispatch point (rotate) that every
rotary module calls: the C kernel on CPU (fope_ext), a compiled reference, or the eager reference. It never
imports fope (in this package only the benchmark script, bench.py, does); fope.py re-exports these names.
"""

import functools

import torch
import torch.nn.functional as F


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x, cos, sin):
    """Eager reference of (1). x: (B, H, T, hd); cos, sin: (H or 1, T, hd//2)."""
    cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
    return x * cos + rotate_half(x) * sin


BACKENDS = ("auto", "eager", "c", "compile")


def check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"rotary_backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def resolve_backend(backend):
    """'auto' -> 'c' when the C extension is built (it is compiled on first use), else 'eager'."""
    check_backend(backend)
    if backend != "auto":
        return backend
    import fope_ext
    return "c" if fope_ext.available() else "eager"


def rotation_path(backend, device):
    """The path a tensor on `device` takes. The C kernel runs on CPU only, and "auto" looks for it (builds
    it on first use) only there. Off the CPU, "auto" and "c" take the eager rotation, which runs wherever
    torch does: on a GPU the model is compiled whole (train.py compile=True) and the compiler fuses it,
    with no C build and no nested compile; "compile" asks for a compiled rotation in an eager model."""
    if torch.device(device).type != "cpu":
        return "eager" if backend in ("auto", "c") else backend
    return resolve_backend(backend)


QK_NORM_EPS = 1e-5  # F.layer_norm's default


def qk_norm(x, backend="eager"):
    """QK norm without a rotation (a model with qk_norm and no rotary embedding): F.layer_norm over
    head_dim, no affine. On CPU with the C kernel it is the fused kernel with the identity rotation
    (cos 1, sin 0, exact), one pass where F.layer_norm over rows this short takes several times longer."""
    if rotation_path(backend, x.device) == "c":
        import fope_ext
        if fope_ext.available():
            table = (1, x.shape[2], x.shape[-1] // 2)  # one row, every position (stride 0)
            cos, sin = x.new_ones(1, 1, table[2]).expand(table), x.new_zeros(1, 1, table[2]).expand(table)
            return fope_ext.norm_rotate(x, cos, sin, QK_NORM_EPS)
    return F.layer_norm(x, x.shape[-1:], eps=QK_NORM_EPS)


def rotate(x, cos, sin, backend="eager", norm=False):
    """The one function the model rotates q and k through. norm=True normalises each row of x first (the
    QK norm of model.py: F.layer_norm over head_dim, no affine); the C kernel fuses the two in one pass
    when the tables are constant."""
    path = rotation_path(backend, x.device)
    if path == "c":
        import fope_ext  # the fallback to the eager reference lives here
        if not fope_ext.available():
            path = "eager"  # no C compiler: fope_ext has warned once, with the compiler's output
        elif norm and not (cos.requires_grad or sin.requires_grad):
            return fope_ext.norm_rotate(x, cos, sin, QK_NORM_EPS)
    if norm:  # learnable tables (their gradient comes from the plain rotation) or no C kernel
        x = F.layer_norm(x, x.shape[-1:], eps=QK_NORM_EPS)
    if path == "c":
        return fope_ext.rotate(x, cos, sin)
    if path == "compile":
        return compiled_apply_rotary()(x, cos, sin)
    return apply_rotary(x, cos, sin)


@functools.cache
def compiled_apply_rotary():
    """apply_rotary compiled once per process (rotary_backend="compile"); dynamic shapes, so an eager model
    fed new lengths (sampling, an evaluation sweep) does not recompile for each."""
    return torch.compile(apply_rotary, dynamic=True)
