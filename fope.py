"""
Rotary position embeddings for length generalization: RoPE, and FoPE as its paper writes it.

- RoPE: Su et al. 2021, "RoFormer" (arXiv 2104.09864), rotate-half (GPT-NeoX) layout.
- FoPE: Hua et al. 2025, "Fourier Position Embedding: Enhancing Attention's Periodic Extension
  for Length Generalization" (arXiv 2412.17739, ICML 2025). Semantics follow the official code
  (TsinghuaC3I/Fourier-Position-Embedding, olmo/model.py, FourierEmbedding).
- Context extension (rope_scaling: PI, NTK, dynamic, YaRN, Llama 3, LongRoPE) is rope_scaling.py.

The equations, and where each is computed:

  (1) the rotation, every rotary variant, RotaryEmbedding.forward: x (B, H, T, hd), tables C, S of
      shape (H or 1, T, hd//2),
          y = x * cat(C, C) + rotate_half(x) * cat(S, S)
  (2) RoPE's tables, RotaryEmbedding._compute:
          C[t, m] = cos(t w_m),  S[t, m] = sin(t w_m),  w_m = theta^(-2m/d)       (rope_inv_freq)
  (3) FoPE's clamp (paper Sec. 4.2, "clamp the floor"), FourierPositionEmbedding.__init__: keep
      only the frequencies that complete a cycle within the training length,
          w_m >= 2 pi / L_train                                                   (floor_clamp_mask)
  (4) FoPE's Fourier series (paper Eq. 10-11), FourierPositionEmbedding.mix: every output pair is
      a series over the D kept frequencies, per head h, separate coefficients for sin and cos,
          S[h, t, :] = sin(t w) @ sin_coef[h],   C[h, t, :] = cos(t w) @ cos_coef[h]
      with sin_coef, cos_coef (H, D, d_out) = xavier_normal(sigma) + step identity
      (fope_coefficients), padded to hd//2 with position-free pairs.

RoPE and FoPE share the table machinery (RotaryEmbedding): FoPE changes only the frequencies (3)
and the mixing (4). Forward computes (1) in plain PyTorch; rotary_backend picks a faster path for
the same line (rotate below: the C kernel of fope_ext on CPU, or torch.compile), tested against it
in tests/test_fope_ext.py. QK norm is attention's (model.py), not a rotary module's.

The paper's ablation arms (its Fig. 6a) are four settings of the two parts:
    RoPE                  RotaryPositionEmbedding(...)
    clamp only ("w/o FS") RotaryPositionEmbedding(..., clamp_floor=True): low frequencies set to 0
    Fourier only ("w/o CF") FourierPositionEmbedding(..., clamp_floor=False)
    FoPE                  FourierPositionEmbedding(...)
"""

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from positions import PositionModule

ROPE_THETA = 10000.0  # RoPE's base (Su et al.), the default of every rotary module and of GPTConfig
FOPE_SIGMA = 0.3  # xavier gain of FoPE's coefficients: the official 60M config (0.4 for 180M, 0.6 for 1.2B)
ZERO_PADS = ("official", "identity")  # how FoPE fills its position-free dimensions
D_OUTS = ("quarter", "kept")  # how many pairs FoPE's series fill: the paper's code | production (XTuner, vLLM)

# -----------------------------------------------------------------------------
# the rotation (1), and the switch to its faster paths


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x, cos, sin):
    """(1) in plain PyTorch, the reference. x: (B, H, T, hd); cos, sin: (H or 1, T, hd//2)."""
    cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
    return x * cos + rotate_half(x) * sin


BACKENDS = ("auto", "eager", "c", "compile")  # GPTConfig.rotary_backend


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


def rotate(x, cos, sin, backend="eager"):
    """(1) by the path `backend` takes on x's device: the C kernel (fope_ext, one pass; the reference
    when no C compiler is found), apply_rotary compiled, or apply_rotary itself."""
    path = rotation_path(backend, x.device)
    if path == "c":
        from fope_ext.rotation import c_rotate
        y = c_rotate(x, cos, sin)
        if y is not None:
            return y
    elif path == "compile":
        return compiled_apply_rotary()(x, cos, sin)
    return apply_rotary(x, cos, sin)


@functools.cache
def compiled_apply_rotary():
    """apply_rotary compiled once per process (rotary_backend="compile"); dynamic shapes, so an eager model
    fed new lengths (sampling, an evaluation sweep) does not recompile for each."""
    return torch.compile(apply_rotary, dynamic=True)


# -----------------------------------------------------------------------------
# frequency math


def rope_inv_freq(head_dim, theta=ROPE_THETA):
    """w_m = theta^(-2m/head_dim), m = 0 .. head_dim/2 - 1 (float64)."""
    check_even(head_dim)
    return theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)


def check_even(head_dim):
    if head_dim % 2:
        raise ValueError(f"a rotary embedding rotates pairs of dimensions: head_dim (n_embd / n_head) must be even, "
                         f"got {head_dim}")


def check_fope_args(head_dim, sigma, fourier_dim, zero_pad, d_out_mode="quarter"):
    """The one check of FoPE's knobs (GPTConfig's fope_sigma, fope_dim, fope_zero_pad, fope_d_out): a one-line
    ValueError."""
    if sigma < 0:
        raise ValueError(f"fope_sigma (the xavier gain of FoPE's coefficients) must be >= 0, got {sigma}")
    if fourier_dim is not None and (fourier_dim % 2 or fourier_dim < head_dim):
        raise ValueError(f"fope_dim (FoPE's basis: frequencies theta^(-2m/fope_dim)) must be an even number "
                         f">= head_dim {head_dim}, or None for head_dim; got {fourier_dim}")
    if zero_pad not in ZERO_PADS:
        raise ValueError(f"fope_zero_pad must be one of {ZERO_PADS}, got {zero_pad!r}")
    if d_out_mode not in D_OUTS:
        raise ValueError(f"fope_d_out must be one of {D_OUTS}, got {d_out_mode!r}")


def whole_cycle_inv_freq(inv_freq, train_len):
    """RoPE-A (the FoPE paper's Table 2): every frequency moved to the nearest one that completes a whole
    number of cycles in the training length, w' = 2 pi round(w L / 2 pi) / L. Those with less than half a
    cycle round to 0 and become position-free, as under the floor clamp."""
    return 2 * math.pi * torch.round(inv_freq * train_len / (2 * math.pi)) / train_len


def floor_clamp_mask(inv_freq, train_len):
    """FoPE's floor clamp: frequencies whose period 2 pi / w exceeds the training length never
    complete a cycle in training, so they are zeroed (dropped): keep w >= 2 pi / train_len."""
    return inv_freq >= 2 * math.pi / train_len


TAPERS = ("hard", "hann")


def clamped_inv_freq(inv_freq, train_len, taper="hard"):
    """The floor clamp applied to inv_freq (D,), highest frequency first. taper="hard": FoPE's cut, the n
    frequencies past the floor set to 0. taper="hann": CoPE's soft clip (Li et al. 2026, arXiv 2602.05258), the
    same n multiplied by a Hann half-window 0.5 (1 + cos(pi k / (n - 1))), k = 0 .. n-1 from the highest of them:
    the first is kept whole (so n = 1 changes nothing, as in CoPE's code), the lowest zeroed, those between slowed.
    CoPE's released code clips a fixed count (20 of Llama-3-8B's 64); here the count is the clamp's, set by the
    training length. rope_scaling then rescales the slowed frequencies as it does every other one."""
    if taper not in TAPERS:
        raise ValueError(f"the clamp's taper must be one of {TAPERS}, got {taper!r}")
    cut = ~floor_clamp_mask(inv_freq, train_len)
    out = inv_freq.clone()
    if taper == "hard":
        out[cut] = 0.0
    else:
        steps = torch.linspace(0, math.pi, int(cut.sum()), dtype=torch.float64, device=inv_freq.device)
        window = 0.5 * (1 + torch.cos(steps))
        out[cut] = (out[cut].double() * window).to(out.dtype)
    return out


# -----------------------------------------------------------------------------
# rotary position modules


class RotaryEmbedding(PositionModule):
    """A rotary module (the contract: positions.PositionModule) with tables built once per length, and
    forward the rotation (1). A subclass sets head_dim, theta, train_len and
    rot_dim, registers inv_freq (D,) and freq_index (D,) (each frequency's m in theta^(-2m/rot_dim), what
    rope_scaling reads) and whatever its mix() reads, then calls reset_tables().

    Tables (H or 1, N, hd//2) are computed in float64, stored as float32 for the training length and
    extended when a longer sequence arrives. They are non-persistent buffers: nothing to save, and they
    follow model.to(device), so a compiled model never finds them elsewhere (train.py's DDP does not
    broadcast buffers: every process computes the same tables)."""

    learnable = False  # True: the tables depend on parameters and are recomputed every call

    def configure(self, scaling, backend):
        """rope_scaling (HF's spelling, rope_scaling.check_scaling) and the rotation backend. A rescaling
        assumes RoPE's ladder: a module that does not declare it (rope_ladder) refuses one."""
        check_backend(backend)
        self.backend = backend  # resolved per call by the tensor's device (rotation_path)
        self.scaling = None
        if scaling is not None:  # rope_scaling.py is imported only for a rescaled run
            from rope_scaling import scaling_for_module
            self.scaling = scaling_for_module(scaling, self.train_len, self.rot_dim)
        if self.scaling is not None and not self.rope_ladder:
            raise ValueError(f"rope_scaling {self.scaling['rope_type']!r} rescales RoPE's frequencies theta^(-2m/d) "
                             f"by their index m; {type(self).__name__} does not declare that ladder "
                             "(rope_ladder = True): drop rope_scaling, or declare it if its frequencies are RoPE's")

    def reset_tables(self):
        """(Re)build the tables: at construction, and after the frequencies or frozen coefficients changed
        (load_state_dict does it itself)."""
        if not hasattr(self, "cos_cached"):
            self.register_load_state_dict_post_hook(lambda module, keys: module.reset_tables())
            self.register_buffer("cos_cached", None, persistent=False)
            self.register_buffer("sin_cached", None, persistent=False)
        self._long = None  # (length, cos, sin): dynamic / longrope tables past the original length
        length = self.cos_cached.shape[1] if self.cos_cached is not None else self.train_len
        self.cos_cached = self.sin_cached = None  # (H or 1, N, hd//2) float32, positions 0 .. N-1
        if length is not None:
            self._build(length)

    def mix(self, cos_basis, sin_basis):
        """(T, D) cos/sin of t*w -> tables (cos, sin), each (H or 1, T, hd//2). RoPE: identity coefficients."""
        return cos_basis[None], sin_basis[None]

    def pair_frequencies(self):
        """(head_dim//2,) float64: the frequency w (radians per token) each rotary pair turns at, 0 for a
        position-free pair. RoPE (and clamp-only, whose dropped frequencies are zeros): inv_freq."""
        freqs = torch.zeros(self.head_dim // 2, dtype=torch.float64)
        inv_freq = self.inv_freq.detach().double().cpu()
        n = min(len(freqs), inv_freq.numel())
        freqs[:n] = inv_freq[:n]
        return freqs

    def _compute(self, start, end, seq_len):
        """(2): (cos, sin) in float64 for positions start .. end-1, through mix (FoPE: (4)); seq_len drives
        dynamic NTK / longrope."""
        inv_freq, attn_factor = self.inv_freq.double(), 1.0
        if self.scaling is not None:
            from rope_scaling import rescale_inv_freq
            inv_freq, attn_factor = rescale_inv_freq(inv_freq, self.freq_index, self.rot_dim, self.theta,
                                                     self.scaling, seq_len)
        pos = torch.arange(start, end, device=inv_freq.device, dtype=torch.float64)
        angle = pos[:, None] * inv_freq[None, :]  # (T, D)
        cos, sin = self.mix(angle.cos(), angle.sin())
        return attn_factor * cos, attn_factor * sin

    def length_dependent(self, end):
        """True when a sequence ending at `end` needs tables of its own length (dynamic NTK, LongRoPE)."""
        s = self.scaling
        if s is None:
            return False
        from rope_scaling import LENGTH_DEPENDENT
        return s["rope_type"] in LENGTH_DEPENDENT and end > s["original_max_position_embeddings"]

    @torch.no_grad()
    def _build(self, length):
        # the cache serves every sequence up to the original length, so it is built for that length:
        # a length-dependent rescaling leaves such sequences as they were trained
        cos, sin = self._compute(0, length, seq_len=None)
        self.cos_cached, self.sin_cached = cos.float(), sin.float()

    def tables(self, offset, T, device=None, dtype=torch.float32):
        """(cos, sin), each (H or 1, T, hd//2), for positions offset .. offset+T-1 of a sequence
        that ends at offset+T."""
        end = offset + T
        device = torch.device(device) if device is not None else self.inv_freq.device
        if self.learnable:  # the tables depend on parameters: mix every call, cache no autograd graph
            cos, sin = self._compute(offset, end, seq_len=end)
        elif self.length_dependent(end):
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

    def forward(self, x, offset=0):
        """(1): x (B, H, T, hd) at positions offset .. offset+T-1, rotated by the tables."""
        C, S = self.tables(offset, x.shape[2], x.device, x.dtype)  # (H or 1, T, hd//2)
        if self.backend != "eager":  # the same line by the C kernel or compiled (rotate, above)
            return rotate(x, C, S, self.backend)
        return x * torch.cat((C, C), dim=-1) + rotate_half(x) * torch.cat((S, S), dim=-1)  # (1)


class RotaryPositionEmbedding(RotaryEmbedding):
    """RoPE, and with clamp_floor=True the paper's clamp-only ablation ("FoPE w/o FS", Fig. 6a: the
    official rope_clamp_floor_freq + rope_clamp_floor_to_zero without fourier): every frequency below
    2 pi / train_len is set to zero, so its dimension pair passes through unrotated. whole_cycles=True is
    RoPE-A (the paper's Table 2): every frequency snapped to whole cycles in train_len. taper="hann": the
    clamp as CoPE softens it (clamped_inv_freq)."""

    rope_ladder = True  # rope_scaling applies (clamped frequencies are 0 and stay 0; rope-a: see below)

    def __init__(self, head_dim, *, theta=ROPE_THETA, scaling=None, train_len=None, backend="eager", clamp_floor=False,
                 whole_cycles=False, taper="hard"):
        super().__init__()
        if (clamp_floor or whole_cycles) and train_len is None:
            raise ValueError("clamp_floor and whole_cycles need train_len (the training length)")
        inv_freq = rope_inv_freq(head_dim, theta)
        if clamp_floor:
            inv_freq = clamped_inv_freq(inv_freq, train_len, taper)
        if whole_cycles:  # RoPE-A: snapped off the ladder, so no rescaling of it is RoPE's
            inv_freq = whole_cycle_inv_freq(inv_freq, train_len)
            self.rope_ladder = False
        self.head_dim, self.theta, self.train_len, self.rot_dim = head_dim, theta, train_len, head_dim
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("freq_index", torch.arange(head_dim // 2), persistent=False)
        self.configure(scaling, backend)
        self.reset_tables()


class FourierPositionEmbedding(RotaryEmbedding):
    """FoPE (Hua et al. 2025): floor-clamped frequencies, per-head Fourier-series coefficients.

    head_dim, n_head: attention shape. train_len: the training length L_train (clamp threshold).
    sigma: xavier-normal gain of the random coefficients (FOPE_SIGMA). sigma=0 leaves the step identity
      alone, which is NOT the clamp-only ablation when D > head_dim/4 (the identity then keeps only some
      kept frequencies): the clamp-only arm is RotaryPositionEmbedding(clamp_floor=True).
    fourier_dim: draw the input frequencies from theta^(-2m/fourier_dim) instead, an even number
      >= head_dim (a richer basis; the paper's Fig. 6c).
    clamp_floor: drop frequencies w < 2 pi / train_len. With it (FoPE, the official
      `ignore_clamp_zero` configs) the series fill d_out = min(D, head_dim/4) dimension pairs and the
      rest are position-free; without it ("Fourier series only", Fig. 6a's "w/o CF") no frequency is
      dropped and every pair is a series, d_out = head_dim/2 (the official layout when no zero
      frequency is ignored); with sigma=0 and no fourier_dim that is RoPE exactly.
    learnable: train the coefficients (frozen by default, as in the paper).
    zero_pad: how the position-free dimensions beyond d_out are filled: "official" puts 1 in both
      the cos and sin tables (the official code's zero frequency at a 45-degree phase: y = x1 - x2,
      x2 + x1; XTuner trains with it, vLLM 0.33.0 serves with it); "identity" puts cos=1, sin=0 (the
      dimension passes through unrotated: the fix proposed for vllm#55204 in #55243). For q.k the two differ by
      exactly a factor 2 on each position-free pair's term: (q1 - q2)(k1 - k2) + (q2 + q1)(k2 + k1) =
      2 (q1 k1 + q2 k2).
    d_out_mode: how many pairs the series fill (self.d_out): "quarter" (the paper's code, min(D, head_dim/4)
      with the clamp) or "kept" (production, XTuner's FourierEmbedding and vLLM's FourierRotaryEmbedding:
      D, at most head_dim/2). The two differ only where D > head_dim/4.
    coef_heads: how many coefficient sets (None: n_head, one per head, as the paper's code). Production
      draws one per key/value head (fope_sep_head with num_key_value_heads): coef_heads = n_kv_head,
      query heads j*g .. j*g+g-1 (g = n_head / coef_heads) sharing set j, as they share key/value head j.
    """

    rope_ladder = True  # the kept frequencies are RoPE's at their index m (freq_index)

    def __init__(self, head_dim, n_head, train_len, *, theta=ROPE_THETA, sigma=FOPE_SIGMA, fourier_dim=None,
                 clamp_floor=True, learnable=False, zero_pad="official", scaling=None, backend="eager",
                 d_out_mode="quarter", coef_heads=None):
        super().__init__()
        check_even(head_dim)
        check_fope_args(head_dim, sigma, fourier_dim, zero_pad, d_out_mode)
        coef_heads = coef_heads or n_head
        if n_head % coef_heads:
            raise ValueError(f"FoPE's coefficient sets ({coef_heads}) must divide n_head ({n_head})")
        rot_dim = fourier_dim or head_dim
        inv_freq, freq_index = rope_inv_freq(rot_dim, theta), torch.arange(rot_dim // 2)
        if clamp_floor:  # (3): drop the frequencies with a period longer than train_len
            keep = floor_clamp_mask(inv_freq, train_len)
            inv_freq, freq_index = inv_freq[keep], freq_index[keep]
        if inv_freq.numel() == 0:
            raise ValueError(f"no frequency survives the floor clamp at train_len={train_len}; raise block_size")
        self.head_dim, self.theta, self.train_len, self.rot_dim = head_dim, theta, train_len, rot_dim
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("freq_index", freq_index, persistent=False)
        self.configure(scaling, backend)
        self.n_head, self.sigma, self.zero_pad, self.learnable = n_head, sigma, zero_pad, learnable
        D = inv_freq.numel()
        # official: with the clamp, the series fill a quarter of head_dim (fourier_ignore_zero); production
        # (d_out_mode="kept"): one pair per kept frequency
        if not clamp_floor:
            self.d_out = head_dim // 2
        else:
            self.d_out = min(D, head_dim // 4 if d_out_mode == "quarter" else head_dim // 2)
        sin_coef = fope_coefficients(coef_heads, D, self.d_out, sigma)
        cos_coef = fope_coefficients(coef_heads, D, self.d_out, sigma)
        if learnable:
            self.sin_coef, self.cos_coef = nn.Parameter(sin_coef), nn.Parameter(cos_coef)
        else:
            self.register_buffer("sin_coef", sin_coef)
            self.register_buffer("cos_coef", cos_coef)
        self.reset_tables()

    def mix(self, cos_basis, sin_basis):
        """(4), paper Eq. 10-11: cos/sin (T, D) of the kept frequencies -> tables (H, T, hd//2): every
        output pair a Fourier series over them, per head, separate coefficients for cos and sin."""
        cos = torch.einsum("td,hde->hte", cos_basis, self.cos_coef.double())
        sin = torch.einsum("td,hde->hte", sin_basis, self.sin_coef.double())
        group = self.n_head // self.sin_coef.shape[0]  # query heads per coefficient set (per-key/value-head sets)
        if group > 1:
            sin, cos = sin.repeat_interleave(group, dim=0), cos.repeat_interleave(group, dim=0)
        pad = self.head_dim // 2 - self.d_out  # position-free dimensions
        sin = F.pad(sin, (0, pad), value=1.0 if self.zero_pad == "official" else 0.0)
        cos = F.pad(cos, (0, pad), value=1.0)
        return cos, sin

    def pair_frequencies(self):
        """Pair e < d_out follows its largest coefficient (the step identity), averaged over heads and the sin
        and cos series; the pairs past d_out are position-free (0)."""
        freqs = torch.zeros(self.head_dim // 2, dtype=torch.float64)
        weight = (self.cos_coef.detach().double().abs() + self.sin_coef.detach().double().abs()).mean(0).cpu()
        freqs[:weight.shape[1]] = self.inv_freq.detach().double().cpu()[weight.argmax(0)]
        return freqs

    def from_parent(self, name, parent, own, expand="fresh"):
        """What checkpoint.load_parent_weights loads into coefficient `name` from a parent run's tensor (None: the
        parent had none, RoPE -> FoPE: keep the fresh draw): resized to this model's kept frequencies."""
        if parent is None:
            return own
        if parent.shape[0] != own.shape[0]:
            raise ValueError(f"the parent run has {parent.shape[0]} FoPE coefficient sets in {name} where this model has "
                             f"{own.shape[0]}: fope_kv_heads must be the parent's")
        return resize_coefficients(parent, own.shape[1], own.shape[2], self.sigma, expand)


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


# -----------------------------------------------------------------------------
# FoPE's knobs in GPTConfig, and the builders model.py's registry calls


@dataclass
class FoPEKnobs:
    """GPTConfig's FoPE fields (GPTConfig inherits them; train.py takes each as --key=value). Their meaning is
    FourierPositionEmbedding's argument of the same name; the last three are FoPE as production runs it
    (config/fope_production.py: XTuner, vLLM, Intern-S1-Pro)."""
    fope_sigma: float = FOPE_SIGMA  # sigma (0: the step identity alone)
    fope_dim: int = None  # fourier_dim (None: head_dim)
    fope_clamp: bool = True  # clamp_floor: zero frequencies whose period exceeds block_size
    fope_fourier: bool = True  # False: no Fourier series (with fope_clamp: the clamp-only arm, RoPE's module)
    fope_learnable: bool = False  # learnable
    fope_zero_pad: str = "official"  # zero_pad: official | identity
    fope_d_out: str = "quarter"  # d_out_mode: quarter (the paper's code) | kept (production)
    fope_kv_heads: bool = False  # coef_heads = n_kv_head (production) instead of n_head
    fope_share_layers: bool = False  # one FoPE module (coefficients) for all layers (production)
    fope_taper: str = "hard"  # the clamp-only arm's cut: hard | hann (CoPE's soft clip; fope_fourier=False)


def check_fope_config(c):
    check_fope_args(c.n_embd // c.n_head, c.fope_sigma, c.fope_dim, c.fope_zero_pad, c.fope_d_out)
    if c.fope_taper not in TAPERS:
        raise ValueError(f"fope_taper must be one of {TAPERS}, got {c.fope_taper!r}")
    if c.fope_taper != "hard" and (c.fope_fourier or not c.fope_clamp):
        raise ValueError(f"fope_taper={c.fope_taper!r} softens the clamp-only arm: set fope_fourier=False, "
                         "fope_clamp=True")


def rope_a_from_config(c):
    """RoPE-A (the paper's Table 2): RoPE with whole cycles in block_size."""
    return rope_from_config(c, whole_cycles=True)


def rope_from_config(c, **kw):
    """RoPE (rope, rope-a; the clamp-only arm with clamp_floor=True) of a GPTConfig."""
    return RotaryPositionEmbedding(c.n_embd // c.n_head, theta=c.rope_theta, scaling=c.rope_scaling,
                                   train_len=c.block_size, backend=c.rotary_backend, **kw)


def fope_from_config(c):
    """FoPE of a GPTConfig; fope_fourier=False gives the clamp-only arm (or RoPE, without the clamp)."""
    if not c.fope_fourier:
        return rope_from_config(c, clamp_floor=c.fope_clamp, taper=c.fope_taper)
    return FourierPositionEmbedding(
        c.n_embd // c.n_head, c.n_head, c.block_size, theta=c.rope_theta, sigma=c.fope_sigma, fourier_dim=c.fope_dim,
        clamp_floor=c.fope_clamp, learnable=c.fope_learnable, zero_pad=c.fope_zero_pad, scaling=c.rope_scaling,
        backend=c.rotary_backend, d_out_mode=c.fope_d_out,
        coef_heads=(c.n_kv_head or c.n_head) if c.fope_kv_heads else c.n_head)
