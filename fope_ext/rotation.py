"""
The C path of fope.rotate and of model.py's QK norm: the kernel, or None when it could not be built
(no C compiler: fope_ext has warned once, with the compiler's output, and the caller runs the eager
PyTorch line). It never imports fope; the rotation's reference and the switch between paths are in
fope.py (apply_rotary, rotate).
"""

import fope_ext


def c_rotate(x, cos, sin):
    """Eq. (1) of fope.py by the kernel: x (B, H, T, hd), cos/sin (H or 1, T, hd//2) -> y, or None."""
    return fope_ext.rotate(x, cos, sin) if fope_ext.available() else None


def c_layer_norm(x, eps):
    """F.layer_norm(x, (hd,), eps=eps) without affine, x (B, H, T, hd), by the kernel's QK norm with the
    identity rotation (cos 1, sin 0: exact), or None. One pass, where F.layer_norm over rows this short
    takes several times longer; rotated by c_rotate afterwards, the result (values and gradients) is the
    fused norm_rotate kernel's bit for bit at head sizes 32, 64 and 128 (tests/test_fope_ext.py)."""
    if not fope_ext.available():
        return None
    table = (1, x.shape[2], x.shape[-1] // 2)  # one row, every position (stride 0)
    cos, sin = x.new_ones(1, 1, table[2]).expand(table), x.new_zeros(1, 1, table[2]).expand(table)
    return fope_ext.norm_rotate(x, cos, sin, eps)
