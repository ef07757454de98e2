"""
Position embeddings for length generalization: the frequency math and the position modules.

- RoPE: Su et al. 2021, "RoFormer" (arXiv 2104.09864), rotate-half (GPT-NeoX) layout.
- FoPE: Hua et al. 2025, "Fourier Position Embedding: Enhancing Attention's Periodic Extension
  for Length Generalization" (arXiv 2412.17739, ICML 2025). Semantics follow the official code
  (TsinghuaC3I/Fourier-Position-Embedding, olmo/model.py, FourierEmbedding).
- ALiBi: Press et al. 2022, "Train Short, Test Long" (arXiv 2108.12409).
- Context extension: PI (Chen et al. 2023, arXiv 2306.15595), NTK-aware scaling (bloc97 2023),
  dynamic NTK, YaRN (Peng et al. 2023, arXiv 2309.00071). Names follow HF transformers' rope_scaling.

Every rotary variant is the same computation on tables C and S of shape (H or 1, T, head_dim//2):

    y = x * cat(C, C) + rotate_half(x) * cat(S, S)                                  (1)

RoPE:  C[t, m] = cos(t w_m),  S[t, m] = sin(t w_m),  w_m = theta^(-2m/d).
FoPE:  the kept frequencies are w_m >= 2 pi / L_train (paper Sec. 4.2, "clamp the floor"), and
       every output dimension is a Fourier series over them, per head h (paper Eq. 10-11):
           S[h, t, :] = sin(t w) @ sin_coef[h],   C[h, t, :] = cos(t w) @ cos_coef[h],
       padded to head_dim//2 with position-free dimensions. RoPE is the special case with
       identity coefficients and no clamp: in this file RoPE is the base class and FoPE only
       changes the frequencies (clamp) and the mixing (coefficients), i.e. the data.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# frequency math


def rope_inv_freq(head_dim, theta=10000.0):
    """w_m = theta^(-2m/head_dim), m = 0 .. head_dim/2 - 1 (float64)."""
    return theta ** (-rope_exponents(head_dim))


def rope_exponents(head_dim):
    """2m/head_dim: the exponent of theta for each frequency (the NTK rescaling needs it)."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for a rotary embedding, got {head_dim}")
    return torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim


def floor_clamp_mask(inv_freq, train_len):
    """FoPE's floor clamp: frequencies whose period 2 pi / w exceeds the training length never
    complete a cycle in training, so they are zeroed (dropped): keep w >= 2 pi / train_len."""
    return inv_freq >= 2 * math.pi / train_len


SCALING_TYPES = ("linear", "ntk", "dynamic", "yarn")


def check_scaling(scaling):
    """Validate a HF-style rope_scaling dict; returns a normalised copy (or None)."""
    if scaling is None:
        return None
    allowed = {"type", "factor", "original_len", "beta_fast", "beta_slow", "attn_temperature"}
    unknown = set(scaling) - allowed
    if unknown:
        raise ValueError(f"rope_scaling has unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    if scaling.get("type") not in SCALING_TYPES:
        raise ValueError(f"rope_scaling type must be one of {SCALING_TYPES}, got {scaling.get('type')!r}")
    if float(scaling.get("factor", 0)) < 1:
        raise ValueError(f"rope_scaling factor must be >= 1, got {scaling.get('factor')}")
    return {"beta_fast": 32.0, "beta_slow": 1.0, "attn_temperature": True, **scaling}


def rescale_inv_freq(inv_freq, exponents, rot_dim, scaling, seq_len):
    """Context extension: rescale frequencies for sequences longer than the original length.

    inv_freq: (D,) float64 frequencies (after FoPE's clamp); exponents: (D,) their 2m/rot_dim.
    Returns (inv_freq, attn_factor): attn_factor multiplies both tables, so q.k is scaled by its
    square (YaRN's temperature sqrt(1/t) = 0.1 ln(s) + 1, applied to q and k as in HF).
    """
    if scaling is None:
        return inv_freq, 1.0
    kind, s, orig = scaling["type"], float(scaling["factor"]), scaling["original_len"]
    if kind == "linear":  # PI: positions t -> t / s
        return inv_freq / s, 1.0
    if kind in ("ntk", "dynamic"):  # base change theta -> theta * alpha^(d / (d - 2))
        if kind == "dynamic":  # alpha from the current length, only once it exceeds the original
            s = max(1.0, s * seq_len / orig - (s - 1))
        alpha = s ** (rot_dim / (rot_dim - 2))
        return inv_freq * alpha ** (-exponents), 1.0
    # YaRN (paper Eq. 19-20): r = L_orig / wavelength; keep w where r > beta_fast, interpolate
    # w / s where r < beta_slow, and blend linearly in between.
    r = orig * inv_freq / (2 * math.pi)
    gamma = ((r - scaling["beta_slow"]) / (scaling["beta_fast"] - scaling["beta_slow"])).clamp(0, 1)
    inv_freq = (1 - gamma) * inv_freq / s + gamma * inv_freq
    attn_factor = yarn_attn_factor(s) if scaling["attn_temperature"] else 1.0
    return inv_freq, attn_factor


def yarn_attn_factor(factor):
    """YaRN's sqrt(1/t) = 0.1 ln(s) + 1 (paper Eq. 22), applied to both q and k."""
    return 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0


def alibi_slopes(n_head):
    """ALiBi head slopes: a geometric sequence starting at 2^(-8/n) with that ratio. For a head count
    that is not a power of two, take the slopes of the closest smaller power of two and fill up with
    every other slope of the next power of two (Press et al. 2022, Sec. 3)."""
    def geometric(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if n_head & (n_head - 1) == 0:
        return torch.tensor(geometric(n_head))
    closest = 2 ** math.floor(math.log2(n_head))
    extra = geometric(2 * closest)[0::2][: n_head - closest]
    return torch.tensor(geometric(closest) + extra)


# -----------------------------------------------------------------------------
# the rotation (1): one reference, one dispatch point for the fast paths


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x, cos, sin):
    """Eager reference of (1). x: (B, H, T, hd); cos, sin: (H or 1, T, hd//2)."""
    cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
    return x * cos + rotate_half(x) * sin


BACKENDS = ("auto", "eager", "c", "compile")
_compiled_apply_rotary = None


def resolve_backend(backend):
    """'auto' -> 'c' when the C extension is built (it is compiled on first use), else 'eager'.
    A CUDA tensor takes the 'compile' path at call time (the C kernel is CPU only)."""
    if backend not in BACKENDS:
        raise ValueError(f"rotary_backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    try:
        import fope_ext
    except ImportError:
        return "eager"
    return "c" if fope_ext.available() else "eager"


def rotate(x, cos, sin, backend="eager"):
    """The one function the model rotates q and k through."""
    if backend == "c" and x.is_cuda:
        backend = "compile"
    if backend == "c":
        import fope_ext
        return fope_ext.rotate(x, cos, sin)
    if backend == "compile":
        global _compiled_apply_rotary
        if _compiled_apply_rotary is None:
            _compiled_apply_rotary = torch.compile(apply_rotary, dynamic=False)
        return _compiled_apply_rotary(x, cos, sin)
    return apply_rotary(x, cos, sin)


# -----------------------------------------------------------------------------
# position modules


class RotaryPositionEmbedding(nn.Module):
    """RoPE. Tables (1, N, hd//2) are built once (float32) for the training length and extended
    when a longer sequence arrives; buffers follow the module across devices."""

    def __init__(self, head_dim, theta=10000.0, scaling=None, train_len=None, backend="eager"):
        super().__init__()
        self._setup(head_dim, theta, train_len, scaling, backend, rot_dim=head_dim,
                    inv_freq=rope_inv_freq(head_dim, theta), exponents=rope_exponents(head_dim))
        self._build_initial()

    def _setup(self, head_dim, theta, train_len, scaling, backend, rot_dim, inv_freq, exponents):
        """What RoPE and FoPE share: the frequencies (D,), their exponents 2m/rot_dim, scaling."""
        self.head_dim, self.theta, self.train_len, self.rot_dim = head_dim, theta, train_len, rot_dim
        self.backend = resolve_backend(backend)
        self.scaling = check_scaling(scaling)
        if self.scaling is not None:
            self.scaling.setdefault("original_len", train_len)
            if self.scaling["original_len"] is None:
                raise ValueError("rope_scaling needs 'original_len' (the training length)")
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("exponents", exponents, persistent=False)

    def _build_initial(self):
        self.register_buffer("cos_cached", None, persistent=False)
        self.register_buffer("sin_cached", None, persistent=False)
        self._dynamic = None  # (length, cos, sin) for dynamic NTK, whose tables depend on the length
        if self.train_len is not None:
            self._build(self.train_len)
        self.register_load_state_dict_post_hook(lambda module, keys: module.clear_cache())

    def mix(self, sin_basis, cos_basis):
        """(T, D) sin/cos of t*w -> tables (H or 1, T, hd//2). RoPE: identity coefficients."""
        return sin_basis[None], cos_basis[None]

    def _compute(self, start, end, seq_len):
        """(cos, sin) in float64 for positions start .. end-1; seq_len drives dynamic NTK."""
        inv_freq, attn_factor = rescale_inv_freq(self.inv_freq.double(), self.exponents.double(),
                                                 self.rot_dim, self.scaling, seq_len)
        pos = torch.arange(start, end, device=inv_freq.device, dtype=torch.float64)
        angle = pos[:, None] * inv_freq[None, :]  # (T, D)
        sin, cos = self.mix(angle.sin(), angle.cos())
        return attn_factor * cos, attn_factor * sin

    @torch.no_grad()
    def _build(self, length):
        cos, sin = self._compute(0, length, length)
        self.cos_cached, self.sin_cached = cos.float(), sin.float()

    def clear_cache(self):
        """Rebuild the tables (after the frequencies or frozen coefficients changed)."""
        self._dynamic = None
        if self.cos_cached is not None:
            self._build(self.cos_cached.shape[1])

    def tables(self, offset, T, device=None, dtype=torch.float32):
        """(cos, sin), each (H or 1, T, hd//2), for positions offset .. offset+T-1."""
        end = offset + T
        if self.scaling is not None and self.scaling["type"] == "dynamic" and end > self.scaling["original_len"]:
            if self._dynamic is None or self._dynamic[0] != end:
                cos, sin = self._compute(0, end, end)
                self._dynamic = (end, cos.float(), sin.float())
            cos, sin = self._dynamic[1:]
        elif getattr(self, "learnable", False):  # tables depend on parameters: mix every call
            cos, sin = self._compute(offset, end, end)
            offset, end = 0, T
        else:
            if self.cos_cached is None or self.cos_cached.shape[1] < end:
                current = 0 if self.cos_cached is None else self.cos_cached.shape[1]
                self._build(max(end, 2 * current))
            cos, sin = self.cos_cached, self.sin_cached
        cos, sin = cos[:, offset:end], sin[:, offset:end]
        device = device or cos.device
        return cos.to(device=device, dtype=dtype), sin.to(device=device, dtype=dtype)

    def forward(self, x, offset=0):
        """x: (B, H, T, hd) -> rotated x, for positions offset .. offset+T-1."""
        cos, sin = self.tables(offset, x.shape[2], x.device, x.dtype)
        return rotate(x, cos, sin, self.backend)


class FourierPositionEmbedding(RotaryPositionEmbedding):
    """FoPE (Hua et al. 2025): floor-clamped frequencies, per-head Fourier-series coefficients.

    head_dim, n_head: attention shape. train_len: the training length L_train (clamp threshold).
    sigma: xavier-normal gain of the random coefficients (official configs: 0.3 for 60M, 0.4 for
      180M, 0.6 for 1.2B); sigma=0 leaves the identity only (the clamp-only ablation).
    fourier_dim: draw the input frequencies from theta^(-2m/fourier_dim) instead (a richer basis).
    clamp_floor: drop frequencies w < 2 pi / train_len.
    learnable: train the coefficients (frozen by default, as in the paper).
    zero_pad: how the position-free dimensions beyond d_out are filled: "official" puts 1 in both
      the cos and sin tables (the official code's zero frequency at a 45-degree phase: y = x1 - x2,
      x2 + x1); "identity" puts cos=1, sin=0 (the dimension passes through unrotated).
    """

    def __init__(self, head_dim, n_head, train_len, theta=10000.0, sigma=0.3, fourier_dim=None,
                 clamp_floor=True, learnable=False, zero_pad="official", scaling=None, backend="eager"):
        super(RotaryPositionEmbedding, self).__init__()
        if zero_pad not in ("official", "identity"):
            raise ValueError(f"zero_pad must be 'official' or 'identity', got {zero_pad!r}")
        rot_dim = max(head_dim, fourier_dim or 0)
        inv_freq, exponents = rope_inv_freq(rot_dim, theta), rope_exponents(rot_dim)
        rope_exponents(head_dim)  # checks head_dim is even
        if clamp_floor:
            keep = floor_clamp_mask(inv_freq, train_len)
            inv_freq, exponents = inv_freq[keep], exponents[keep]
        if inv_freq.numel() == 0:
            raise ValueError(f"no frequency survives the floor clamp at train_len={train_len}; raise train_len")
        self._setup(head_dim, theta, train_len, scaling, backend, rot_dim, inv_freq, exponents)
        self.n_head, self.sigma, self.zero_pad, self.learnable = n_head, sigma, zero_pad, learnable
        D = inv_freq.numel()
        self.d_out = min(D, head_dim // 4)  # official: the Fourier dims fill a quarter of head_dim
        sin_coef = fope_coefficients(n_head, D, self.d_out, sigma)
        cos_coef = fope_coefficients(n_head, D, self.d_out, sigma)
        if learnable:
            self.sin_coef, self.cos_coef = nn.Parameter(sin_coef), nn.Parameter(cos_coef)
        else:
            self.register_buffer("sin_coef", sin_coef)
            self.register_buffer("cos_coef", cos_coef)
        self._build_initial()

    def mix(self, sin_basis, cos_basis):
        # paper Eq. 10-11: every output dim is a Fourier series over the kept frequencies, per head
        sin = torch.einsum("td,hde->hte", sin_basis, self.sin_coef.double())
        cos = torch.einsum("td,hde->hte", cos_basis, self.cos_coef.double())
        pad = self.head_dim // 2 - self.d_out  # position-free dimensions
        sin = F.pad(sin, (0, pad), value=1.0 if self.zero_pad == "official" else 0.0)
        cos = F.pad(cos, (0, pad), value=1.0)
        return sin, cos


def fope_coefficients(n_head, D, d_out, sigma):
    """(n_head, D, d_out): torch's xavier_normal_(gain=sigma) on the 3-D tensor (so std =
    sigma * sqrt(2 / (fan_in + fan_out)) with torch's fans for 3-D: fan_in = D * d_out,
    fan_out = n_head * d_out), plus a step identity: 1 at [i * ceil(D / d_out), i] (official), or at
    [i * D // d_out, i] when that step would run past D."""
    coef = torch.empty(n_head, D, d_out)
    if sigma > 0:
        nn.init.xavier_normal_(coef, gain=sigma)
    else:
        coef.zero_()
    cols = torch.arange(d_out)
    rows = cols * math.ceil(D / d_out)
    if rows[-1] >= D:  # e.g. D=5, d_out=4: the step overshoots; spread the ones evenly instead
        rows = cols * D // d_out
    coef[:, rows, cols] += 1.0
    return coef


class AlibiBias(nn.Module):
    """ALiBi's additive causal bias -slope_h * (i - j), built once per length and shared by all
    layers (it has no parameters)."""

    def __init__(self, n_head):
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(n_head), persistent=False)
        self._cache = None

    def forward(self, T, device, dtype):
        key = (T, device, dtype)
        if self._cache is None or self._cache[0] != key:
            pos = torch.arange(T, device=device)
            distance = (pos[:, None] - pos[None, :]).to(dtype)  # (T, T): i - j
            bias = -self.slopes.to(device, dtype)[:, None, None] * distance  # (H, T, T)
            bias = bias.masked_fill(distance < 0, float("-inf"))
            self._cache = (key, bias)
        return self._cache[1]
