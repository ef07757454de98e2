"""
Position embeddings for length generalization: the frequency math and the position modules.

- RoPE: Su et al. 2021, "RoFormer" (arXiv 2104.09864), rotate-half (GPT-NeoX) layout.
- FoPE: Hua et al. 2025, "Fourier Position Embedding: Enhancing Attention's Periodic Extension
  for Length Generalization" (arXiv 2412.17739, ICML 2025). Semantics follow the official code
  (TsinghuaC3I/Fourier-Position-Embedding, olmo/model.py, FourierEmbedding).
- ALiBi: Press et al. 2022, "Train Short, Test Long" (arXiv 2108.12409).
- Context extension: PI (Chen et al. 2023, arXiv 2306.15595), NTK-aware scaling (bloc97 2023),
  dynamic NTK, YaRN (Peng et al. 2023, arXiv 2309.00071), Llama 3.1's rescaling, LongRoPE (Ding et
  al. 2024, arXiv 2402.13753). rope_scaling dicts are spelled as HF transformers spells them, and the
  frequencies and attention factors equal its ROPE_INIT_FUNCTIONS (tests/test_fope.py).

Every rotary variant is the same computation on tables C and S of shape (H or 1, T, head_dim//2):

    y = x * cat(C, C) + rotate_half(x) * cat(S, S)                                  (1)

RoPE:  C[t, m] = cos(t w_m),  S[t, m] = sin(t w_m),  w_m = theta^(-2m/d).
FoPE:  the kept frequencies are w_m >= 2 pi / L_train (paper Sec. 4.2, "clamp the floor"), and
       every output dimension is a Fourier series over them, per head h (paper Eq. 10-11):
           S[h, t, :] = sin(t w) @ sin_coef[h],   C[h, t, :] = cos(t w) @ cos_coef[h],
       padded to head_dim//2 with position-free dimensions. In this file RoPE is the base class and
       FoPE only changes the frequencies (clamp) and the mixing (coefficients), i.e. the data.

The paper's ablation arms (its Fig. 6a) are four settings of the two parts:
    RoPE                  RotaryPositionEmbedding(...)
    clamp only ("w/o FS") RotaryPositionEmbedding(..., clamp_floor=True): low frequencies set to 0
    Fourier only ("w/o CF") FourierPositionEmbedding(..., clamp_floor=False)
    FoPE                  FourierPositionEmbedding(...)
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# frequency math


def rope_inv_freq(head_dim, theta=10000.0):
    """w_m = theta^(-2m/head_dim), m = 0 .. head_dim/2 - 1 (float64)."""
    check_even(head_dim)
    return theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)


def check_even(head_dim):
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for a rotary embedding, got {head_dim}")


def whole_cycle_inv_freq(inv_freq, train_len):
    """RoPE-A (the FoPE paper's Table 2): every frequency moved to the nearest one that completes a whole
    number of cycles in the training length, w' = 2 pi round(w L / 2 pi) / L. Those with less than half a
    cycle round to 0 and become position-free, as under the floor clamp."""
    return 2 * math.pi * torch.round(inv_freq * train_len / (2 * math.pi)) / train_len


def floor_clamp_mask(inv_freq, train_len):
    """FoPE's floor clamp: frequencies whose period 2 pi / w exceeds the training length never
    complete a cycle in training, so they are zeroed (dropped): keep w >= 2 pi / train_len."""
    return inv_freq >= 2 * math.pi / train_len


# -----------------------------------------------------------------------------
# context extension: rope_scaling, spelled as HF transformers spells it (its ROPE_INIT_FUNCTIONS)
#
# Each rescaling maps the frequencies (after FoPE's clamp) to new ones for sequences past the original
# length, and may set an attention factor that multiplies both tables (so q.k scales by its square),
# as HF applies it. A rescaling only sees each frequency's index m in theta^(-2m/rot_dim), so it applies
# alike to RoPE's frequencies and to the ones FoPE keeps ("after the clamp", as the official code's
# `len_extra_before_clamp=False`). Every function returns (inv_freq, attention_factor).

SCALING_KEYS = {  # rope_type -> the keys it reads besides rope_type, factor, original_max_position_embeddings
    "default": (),
    "linear": (),
    "ntk": (),
    "dynamic": (),
    "yarn": ("attention_factor", "beta_fast", "beta_slow", "truncate", "mscale", "mscale_all_dim", "ramp"),
    "llama3": ("low_freq_factor", "high_freq_factor"),
    "longrope": ("short_factor", "long_factor", "attention_factor"),
}
SCALING_TYPES = tuple(SCALING_KEYS)
SCALING_ALIASES = {"type": "rope_type", "original_len": "original_max_position_embeddings"}  # nanoFoPE's short names
LENGTH_DEPENDENT = ("dynamic", "longrope")  # their frequencies depend on the current sequence length


def check_scaling(scaling):
    """Validate a rope_scaling dict (HF's keys, or the short names type / original_len / attn_temperature);
    returns it normalised to HF's keys (or None). attn_temperature=False means attention_factor=1.0."""
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        raise ValueError(f"rope_scaling must be a dict like {{'rope_type': 'yarn', 'factor': 8.0}}, got {scaling!r}")
    scaling = {SCALING_ALIASES.get(k, k): v for k, v in scaling.items()}
    kind = scaling.get("rope_type")
    if kind not in SCALING_KEYS:
        raise ValueError(f"rope_scaling rope_type must be one of {SCALING_TYPES}, got {kind!r}")
    if "attn_temperature" in scaling:
        if kind != "yarn":
            raise ValueError("rope_scaling attn_temperature applies to yarn only")
        if not scaling.pop("attn_temperature"):
            scaling.setdefault("attention_factor", 1.0)
    allowed = {"rope_type", "factor", "original_max_position_embeddings", *SCALING_KEYS[kind]}
    unknown = set(scaling) - allowed
    if unknown:
        raise ValueError(f"rope_scaling has unknown keys {sorted(unknown)} for rope_type {kind!r}; allowed: {sorted(allowed)}")
    if kind in ("linear", "ntk", "dynamic", "yarn", "llama3"):
        if not isinstance(scaling.get("factor"), (int, float)) or scaling["factor"] < 1:
            raise ValueError(f"rope_scaling {kind} needs a factor >= 1, got {scaling.get('factor')!r}")
    if kind == "llama3" and not {"low_freq_factor", "high_freq_factor"} <= set(scaling):
        raise ValueError("rope_scaling llama3 needs low_freq_factor and high_freq_factor (Llama 3.1: 1 and 4)")
    if kind == "llama3" and scaling["high_freq_factor"] <= scaling["low_freq_factor"]:
        raise ValueError("rope_scaling llama3 needs high_freq_factor > low_freq_factor")
    if kind == "longrope" and not {"short_factor", "long_factor"} <= set(scaling):
        raise ValueError("rope_scaling longrope needs short_factor and long_factor (one per frequency, head_dim/2 each)")
    if kind == "yarn" and scaling.get("ramp", "index") not in ("index", "ratio"):
        raise ValueError(f"rope_scaling yarn ramp must be 'index' (HF, the YaRN and FoPE code) or 'ratio' "
                         f"(the YaRN paper's Eq. 18), got {scaling['ramp']!r}")
    orig = scaling.get("original_max_position_embeddings")
    if orig is not None and (not isinstance(orig, int) or orig < 1):
        raise ValueError(f"rope_scaling original_max_position_embeddings must be a positive int, got {orig!r}")
    return scaling


def _linear(inv_freq, index, rot_dim, theta, p, seq_len):
    """PI (Chen et al. 2023): positions t -> t / s."""
    return inv_freq / p["factor"], 1.0


def _ntk(inv_freq, index, rot_dim, theta, p, seq_len, factor=None):
    """NTK-aware (bloc97 2023): the base theta -> theta * s^(d / (d - 2)), i.e. w_m * s^(-2m/(d-2))."""
    alpha = (factor or p["factor"]) ** (rot_dim / (rot_dim - 2))
    return inv_freq * alpha ** (-2.0 * index / rot_dim), 1.0


def _dynamic(inv_freq, index, rot_dim, theta, p, seq_len):
    """Dynamic NTK: NTK with s' = s L / L_orig - (s - 1) for a sequence of L > L_orig tokens (HF)."""
    orig, s = p["original_max_position_embeddings"], p["factor"]
    length = max(seq_len or orig, orig)
    return _ntk(inv_freq, index, rot_dim, theta, p, seq_len, factor=s * length / orig - (s - 1))


def _mscale(s, mscale=1.0):
    """YaRN's sqrt(1/t) = 0.1 ln(s) + 1 (YaRN paper Eq. 22; DeepSeek's mscale generalises it)."""
    return 0.1 * mscale * math.log(s) + 1.0 if s > 1 else 1.0


def _yarn(inv_freq, index, rot_dim, theta, p, seq_len):
    """YaRN (Peng et al. 2023): keep the frequencies that turn more than beta_fast times within the
    original length, interpolate (w / s) those that turn fewer than beta_slow times, blend in between.

    ramp="index" (default; HF, the YaRN authors' and the official FoPE code): the blend is linear in the
    frequency index m between the correction dims d(beta) = rot_dim ln(L / (2 pi beta)) / (2 ln theta),
    floored / ceiled when truncate (HF's default) and clamped to [0, rot_dim - 1] as HF clamps them.
    ramp="ratio": linear in r = L w / 2 pi, the YaRN paper's Eq. 18 (an option; no code we compare with
    runs it). The official FoPE code runs the index ramp with no attention factor: attention_factor=1.0."""
    s, orig = p["factor"], p["original_max_position_embeddings"]
    beta_fast, beta_slow = p.get("beta_fast") or 32.0, p.get("beta_slow") or 1.0
    if p.get("ramp", "index") == "index":
        def correction_dim(rotations):
            return rot_dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(theta))
        low, high = correction_dim(beta_fast), correction_dim(beta_slow)
        if p.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, rot_dim - 1)
        if low == high:
            high += 0.001  # as HF: avoid dividing by zero
        keep = 1 - ((index.double() - low) / (high - low)).clamp(0, 1)  # 1: extrapolate (keep w)
    else:
        r = orig * inv_freq / (2 * math.pi)
        keep = ((r - beta_slow) / (beta_fast - beta_slow)).clamp(0, 1)
    inv_freq = (1 - keep) * inv_freq / s + keep * inv_freq
    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        if p.get("mscale") and p.get("mscale_all_dim"):
            attention_factor = _mscale(s, p["mscale"]) / _mscale(s, p["mscale_all_dim"])
        else:
            attention_factor = _mscale(s)
    return inv_freq, float(attention_factor)


def _llama3(inv_freq, index, rot_dim, theta, p, seq_len):
    """Llama 3.1: wavelengths longer than L_orig / low_freq_factor are interpolated (w / s), shorter than
    L_orig / high_freq_factor kept, and the band between blended by L_orig / wavelength."""
    s, orig = p["factor"], p["original_max_position_embeddings"]
    low, high = p["low_freq_factor"], p["high_freq_factor"]
    wavelen = 2 * math.pi / inv_freq  # inf for a clamped (zero) frequency: stays zero
    smooth = ((orig / wavelen - low) / (high - low)).clamp(0, 1)
    return (1 - smooth) * inv_freq / s + smooth * inv_freq, 1.0


def _longrope(inv_freq, index, rot_dim, theta, p, seq_len):
    """LongRoPE (Ding et al. 2024): a searched factor per frequency, short_factor up to the original
    length and long_factor past it; attention factor sqrt(1 + ln s / ln L_orig)."""
    orig = p["original_max_position_embeddings"]
    factors = p["long_factor"] if seq_len and seq_len > orig else p["short_factor"]
    factors = torch.tensor(factors, dtype=torch.float64, device=inv_freq.device)[index]
    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        s = p.get("factor") or 1.0
        attention_factor = math.sqrt(1 + math.log(s) / math.log(orig)) if s > 1 else 1.0
    return inv_freq / factors, float(attention_factor)


ROPE_SCALING = {  # rope_type -> function; a new rescaling is one function and one line here
    "default": lambda inv_freq, *args: (inv_freq, 1.0),
    "linear": _linear,
    "ntk": _ntk,
    "dynamic": _dynamic,
    "yarn": _yarn,
    "llama3": _llama3,
    "longrope": _longrope,
}


def rescale_inv_freq(inv_freq, index, rot_dim, theta, scaling, seq_len=None):
    """Context extension. inv_freq: (D,) float64 frequencies; index: (D,) their m in theta^(-2m/rot_dim);
    seq_len: the current length (dynamic and longrope depend on it). -> (inv_freq, attention_factor)."""
    if scaling is None:
        return inv_freq, 1.0
    return ROPE_SCALING[scaling["rope_type"]](inv_freq, index, rot_dim, theta, scaling, seq_len)


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
    """'auto' -> 'c' when the C extension is built (it is compiled on first use), else 'eager'."""
    if backend not in BACKENDS:
        raise ValueError(f"rotary_backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    import fope_ext
    return "c" if fope_ext.available() else "eager"


def rotation_path(backend, device):
    """The path a tensor on `device` takes. The C kernel runs on CPU only: a CUDA tensor takes the
    compiled path (the GPU path), any other device (mps, xpu, ...) the eager reference, which runs
    wherever torch does."""
    device_type = torch.device(device).type
    if backend == "c" and device_type != "cpu":
        return "compile" if device_type == "cuda" else "eager"
    return backend


QK_NORM_EPS = 1e-5  # F.layer_norm's default


def qk_norm(x, backend="eager"):
    """QK norm without a rotation (a model with qk_norm and no rotary embedding): F.layer_norm over
    head_dim, no affine. On CPU with the C kernel it is the fused kernel with the identity rotation
    (cos 1, sin 0, exact), one pass where F.layer_norm over rows this short takes several times longer."""
    if rotation_path(resolve_backend(backend), x.device) == "c":
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
        import fope_ext  # fope_ext never imports fope: the fallback to the reference lives here
        if not fope_ext.available():
            path = "eager"  # no C compiler: fope_ext has warned once, with the compiler's output
        elif norm and not (cos.requires_grad or sin.requires_grad):
            return fope_ext.norm_rotate(x, cos, sin, QK_NORM_EPS)
    if norm:  # learnable tables (their gradient comes from the plain rotation) or no C kernel
        x = F.layer_norm(x, x.shape[-1:], eps=QK_NORM_EPS)
    if path == "c":
        return fope_ext.rotate(x, cos, sin)
    if path == "compile":
        global _compiled_apply_rotary
        if _compiled_apply_rotary is None:
            _compiled_apply_rotary = torch.compile(apply_rotary, dynamic=False)
        return _compiled_apply_rotary(x, cos, sin)
    return apply_rotary(x, cos, sin)


# -----------------------------------------------------------------------------
# position modules


class RotaryPositionEmbedding(nn.Module):
    """RoPE, and with clamp_floor=True the paper's clamp-only ablation ("FoPE w/o FS", Fig. 6a: the
    official rope_clamp_floor_freq + rope_clamp_floor_to_zero without fourier): every frequency below
    2 pi / train_len is set to zero, so its dimension pair passes through unrotated. whole_cycles=True is
    RoPE-A (the paper's Table 2): every frequency snapped to whole cycles in train_len.

    Tables (H or 1, N, hd//2) are built once in float64, stored as float32 for the training length and
    extended when a longer sequence arrives. They are plain attributes, not buffers: nothing to save,
    and DDP's buffer broadcast does not resend them every step; they follow x to its device."""

    learnable = False

    def __init__(self, head_dim, theta=10000.0, scaling=None, train_len=None, backend="eager", clamp_floor=False,
                 whole_cycles=False):
        super().__init__()
        inv_freq = rope_inv_freq(head_dim, theta)
        if (clamp_floor or whole_cycles) and train_len is None:
            raise ValueError("clamp_floor and whole_cycles need train_len (the training length)")
        if clamp_floor:
            inv_freq[~floor_clamp_mask(inv_freq, train_len)] = 0.0
        if whole_cycles:  # RoPE-A
            inv_freq = whole_cycle_inv_freq(inv_freq, train_len)
        self._setup(head_dim, theta, train_len, scaling, backend, rot_dim=head_dim, inv_freq=inv_freq,
                    freq_index=torch.arange(head_dim // 2))
        self._build_initial()

    def _setup(self, head_dim, theta, train_len, scaling, backend, rot_dim, inv_freq, freq_index):
        """What RoPE and FoPE share: the frequencies (D,), their index m in theta^(-2m/rot_dim), scaling."""
        self.head_dim, self.theta, self.train_len, self.rot_dim = head_dim, theta, train_len, rot_dim
        self.backend = resolve_backend(backend)
        self.scaling = check_scaling(scaling)
        if self.scaling is not None:
            if self.scaling.get("original_max_position_embeddings") is None:
                if train_len is None:
                    raise ValueError("rope_scaling needs original_max_position_embeddings (the training length)")
                self.scaling["original_max_position_embeddings"] = train_len
            for key in ("short_factor", "long_factor"):
                if key in self.scaling and len(self.scaling[key]) != rot_dim // 2:
                    raise ValueError(f"rope_scaling {key} needs {rot_dim // 2} values (one per frequency), "
                                     f"got {len(self.scaling[key])}")
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("freq_index", freq_index, persistent=False)

    def _build_initial(self):
        self.cos_cached = self.sin_cached = None  # (H or 1, N, hd//2) float32, positions 0 .. N-1
        self._long = None  # (length, cos, sin): dynamic / longrope tables past the original length
        if self.train_len is not None:
            self._build(self.train_len)
        self.register_load_state_dict_post_hook(lambda module, keys: module.clear_cache())

    def mix(self, sin_basis, cos_basis):
        """(T, D) sin/cos of t*w -> tables (H or 1, T, hd//2). RoPE: identity coefficients."""
        return sin_basis[None], cos_basis[None]

    def _compute(self, start, end, seq_len):
        """(cos, sin) in float64 for positions start .. end-1; seq_len drives dynamic NTK / longrope."""
        inv_freq, attn_factor = rescale_inv_freq(self.inv_freq.double(), self.freq_index, self.rot_dim,
                                                 self.theta, self.scaling, seq_len)
        pos = torch.arange(start, end, device=inv_freq.device, dtype=torch.float64)
        angle = pos[:, None] * inv_freq[None, :]  # (T, D)
        sin, cos = self.mix(angle.sin(), angle.cos())
        return attn_factor * cos, attn_factor * sin

    def _length_dependent(self, end):
        """True when a sequence ending at `end` needs tables of its own length (dynamic NTK, LongRoPE)."""
        s = self.scaling
        return s is not None and s["rope_type"] in LENGTH_DEPENDENT and end > s["original_max_position_embeddings"]

    @torch.no_grad()
    def _build(self, length):
        # the cache serves every sequence up to the original length, so it is built for that length:
        # a length-dependent rescaling leaves such sequences as they were trained
        cos, sin = self._compute(0, length, seq_len=None)
        self.cos_cached, self.sin_cached = cos.float(), sin.float()

    def clear_cache(self):
        """Rebuild the tables (after the frequencies or frozen coefficients changed)."""
        self._long = None
        if self.cos_cached is not None:
            self._build(self.cos_cached.shape[1])

    def tables(self, offset, T, device=None, dtype=torch.float32):
        """(cos, sin), each (H or 1, T, hd//2), for positions offset .. offset+T-1 of a sequence
        that ends at offset+T."""
        end = offset + T
        device = torch.device(device) if device is not None else self.inv_freq.device
        if self.learnable:  # the tables depend on parameters: mix every call, cache no autograd graph
            cos, sin = self._compute(offset, end, seq_len=end)
        elif self._length_dependent(end):
            if self._long is None or self._long[0] != end:
                with torch.no_grad():
                    cos, sin = self._compute(0, end, seq_len=end)
                self._long = (end, cos.float(), sin.float())
            cos, sin = self._long[1][:, offset:end], self._long[2][:, offset:end]
        else:
            if self.cos_cached is None or self.cos_cached.shape[1] < end:
                current = 0 if self.cos_cached is None else self.cos_cached.shape[1]
                self._build(max(end, 2 * current))
            if self.cos_cached.device != device:  # move once, not every call
                self.cos_cached, self.sin_cached = self.cos_cached.to(device), self.sin_cached.to(device)
            cos, sin = self.cos_cached[:, offset:end], self.sin_cached[:, offset:end]
        return cos.to(device=device, dtype=dtype), sin.to(device=device, dtype=dtype)

    def forward(self, x, offset=0, norm=False):
        """x: (B, H, T, hd) -> rotated x, for positions offset .. offset+T-1; norm=True: QK norm first."""
        cos, sin = self.tables(offset, x.shape[2], x.device, x.dtype)
        return rotate(x, cos, sin, self.backend, norm)


class FourierPositionEmbedding(RotaryPositionEmbedding):
    """FoPE (Hua et al. 2025): floor-clamped frequencies, per-head Fourier-series coefficients.

    head_dim, n_head: attention shape. train_len: the training length L_train (clamp threshold).
    sigma: xavier-normal gain of the random coefficients (official configs: 0.3 for 60M, 0.4 for
      180M, 0.6 for 1.2B). sigma=0 leaves the step identity alone, which is NOT the clamp-only
      ablation when D > head_dim/4 (the identity then keeps only some kept frequencies): the
      clamp-only arm is RotaryPositionEmbedding(clamp_floor=True).
    fourier_dim: draw the input frequencies from theta^(-2m/fourier_dim) instead (a richer basis).
    clamp_floor: drop frequencies w < 2 pi / train_len. With it (FoPE, the official
      `ignore_clamp_zero` configs) the series fill d_out = min(D, head_dim/4) dimension pairs and the
      rest are position-free; without it ("Fourier series only", Fig. 6a's "w/o CF") no frequency is
      dropped and every pair is a series, d_out = head_dim/2 (the official layout when no zero
      frequency is ignored); with sigma=0 and no fourier_dim that is RoPE exactly.
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
        if sigma < 0:
            raise ValueError(f"fope sigma (the coefficients' xavier gain) must be >= 0, got {sigma}")
        check_even(head_dim)  # rot_dim may be a larger, even fourier_dim
        rot_dim = max(head_dim, fourier_dim or 0)
        inv_freq, freq_index = rope_inv_freq(rot_dim, theta), torch.arange(rot_dim // 2)
        if clamp_floor:
            keep = floor_clamp_mask(inv_freq, train_len)
            inv_freq, freq_index = inv_freq[keep], freq_index[keep]
        if inv_freq.numel() == 0:
            raise ValueError(f"no frequency survives the floor clamp at train_len={train_len}; raise train_len")
        self._setup(head_dim, theta, train_len, scaling, backend, rot_dim, inv_freq, freq_index)
        self.n_head, self.sigma, self.zero_pad, self.learnable = n_head, sigma, zero_pad, learnable
        D = inv_freq.numel()
        # official: with the clamp, the series fill a quarter of head_dim (fourier_ignore_zero)
        self.d_out = min(D, head_dim // 4) if clamp_floor else head_dim // 2
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


def step_identity(D, d_out):
    """The official code's identity-like part of the coefficients (get_step_eye): column i has a 1 at
    row i * ceil(D / d_out) when that row is < D, and no 1 otherwise. D == d_out: the identity.
    E.g. D=18, d_out=16 (head_dim 64 at L_train 1024): step 2, ones in columns 0..8 only."""
    eye = torch.zeros(D, d_out)
    step = math.ceil(D / d_out)
    for i in range(d_out):
        if i * step < D:
            eye[i * step, i] = 1.0
    return eye


def fope_coefficients(n_head, D, d_out, sigma):
    """(n_head, D, d_out): torch's xavier_normal_(gain=sigma) on the 3-D tensor (so std =
    sigma * sqrt(2 / (fan_in + fan_out)) with torch's fans for 3-D: fan_in = D * d_out,
    fan_out = n_head * d_out), plus the step identity (every head)."""
    coef = torch.zeros(n_head, D, d_out)
    if sigma > 0:
        nn.init.xavier_normal_(coef, gain=sigma)
    return coef + step_identity(D, d_out)


def resize_coefficients(coef, D, d_out, sigma, fill="fresh"):
    """FoPE coefficients of a run trained at one length, for training at another (paper Sec. 5.3, the
    official checkpoint loader): at a longer length the floor 2 pi / L moves down and more frequencies
    are kept (head_dim 64: D 16 at 512, 18 at 1024). Growing, the old (n_head, D, d_out) block is copied
    into the top-left and the new entries are a fresh FoPE init (fill="fresh": xavier-normal gain sigma
    plus the step identity, the official `len_extra_fourier_expand`) or zero (fill="zero", the official
    default). Shrinking keeps the top-left block."""
    if fill not in ("fresh", "zero"):
        raise ValueError(f"fill must be 'fresh' or 'zero', got {fill!r}")
    n_head, old_D, old_d_out = coef.shape
    if old_D >= D and old_d_out >= d_out:
        return coef[:, :D, :d_out].clone()
    new = fope_coefficients(n_head, D, d_out, sigma) if fill == "fresh" else torch.zeros(n_head, D, d_out)
    keep_D, keep_d_out = min(old_D, D), min(old_d_out, d_out)
    new[:, :keep_D, :keep_d_out] = coef[:, :keep_D, :keep_d_out]
    return new.to(coef.dtype)


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
