"""
The baselines FoPE is compared against that are not rotary: absolute positions added to the token
embeddings, and additive attention biases. (RoPE and its variants are in fope.py.)

- Sinusoidal absolute positions: Vaswani et al. 2017, "Attention Is All You Need" (arXiv 1706.03762).
- Learned absolute positions: GPT-2 (Radford et al. 2019); cannot run past block_size.
- ALiBi: Press et al. 2022, "Train Short, Test Long" (arXiv 2108.12409).
- KERPLE, logarithmic variant: Chi et al. 2022, "KERPLE: Kernelized Relative Positional Embedding
  for Length Extrapolation" (arXiv 2205.09921).
- FIRE: Li et al. 2023, "Functional Interpolation for Relative Positions Improves Long Context
  Transformers" (arXiv 2310.04418).
- T5's bucketed relative bias: Raffel et al. 2020 (arXiv 1910.10683), unidirectional buckets.

Every bias module maps query positions i and key positions j to an additive score bias
b[h, i, j] (shape (H, len(i), len(j))) with -inf where j > i (the causal mask travels with it):

    ALiBi   b = -slope_h (i - j)                          slopes fixed (alibi_slopes)
    KERPLE  b = -r1_h log(1 + r2_h (i - j))               r1, r2 > 0 learned per head and layer
    FIRE    b = mlp( psi(i - j) / psi(max(L, i)) )_h,     psi(x) = log(c x + 1), c and L learned
    T5      b = emb[bucket(i - j), h]                     32 log-spaced buckets up to distance 128

attend_with_bias asks for rows of queries at a time once a sequence is long, so no bias ever needs a
(H, T, T) tensor for the whole sequence at once.
"""

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from positions import PositionModule

# -----------------------------------------------------------------------------
# absolute positions: (T, n_embd) added to the token embeddings


def sinusoidal_table(positions, n_embd, base=10000.0):
    """PE[t, 2i] = sin(t / base^(2i/d)), PE[t, 2i+1] = cos(t / base^(2i/d)) (Vaswani et al., Sec. 3.5)."""
    if n_embd % 2:
        raise ValueError(f"sinusoidal positions interleave sin and cos: n_embd must be even, got {n_embd}")
    inv = base ** (-torch.arange(0, n_embd, 2, dtype=torch.float64) / n_embd)
    angle = positions.double()[:, None] * inv[None, :]  # (T, d/2)
    return torch.stack((angle.sin(), angle.cos()), dim=-1).flatten(1)  # (T, d): sin, cos, sin, cos ...


class SinusoidalPositions(PositionModule):
    """Fixed sinusoids, defined at every position: runs past block_size. As in Vaswani et al. (Sec. 3.4)
    the token embeddings are multiplied by sqrt(n_embd) before the sinusoids are added (embed_scale; the
    tied output layer is unchanged), else GPT's N(0, 0.02) embeddings would drown in unit-size sinusoids."""

    def __init__(self, n_embd, length=1024):
        super().__init__()
        self.n_embd = n_embd
        self.embed_scale = math.sqrt(n_embd)
        # computed once in float64 (extended for a longer input), kept in float32; a non-persistent buffer,
        # so it follows the model to its device and a compiled step only slices it
        self.register_buffer("table", sinusoidal_table(torch.arange(length), n_embd).float(), persistent=False)

    @classmethod
    def from_config(cls, c):
        return cls(c.n_embd)

    def forward(self, T, device, dtype=torch.float32):
        if T > self.table.shape[0]:
            self.table = sinusoidal_table(torch.arange(2 * T), self.n_embd).float().to(self.table.device)
        return self.table[:T].to(device, dtype)


class LearnedPositions(nn.Embedding, PositionModule):
    """GPT-2's table of block_size learned vectors (an nn.Embedding, so checkpoints keep GPT-2's layout)."""

    def __init__(self, block_size, n_embd):
        super().__init__(block_size, n_embd)

    @classmethod
    def from_config(cls, c):
        return cls(c.block_size, c.n_embd)

    def forward(self, T, device, dtype=None):
        if T > self.num_embeddings:
            raise ValueError(f"pos_emb='learned' cannot take {T} tokens (block_size is {self.num_embeddings}); "
                             "use a relative position embedding (rope, fope, alibi, ...) for longer inputs")
        return super().forward(torch.arange(T, device=device))


# -----------------------------------------------------------------------------
# additive attention biases


class AttentionBias(PositionModule):
    """Base class: subclasses give `values(distance, query_pos)` for distance = i - j >= 0 (long,
    (Tq, Tk)) and query positions i (long, (Tq,)), returning (H, Tq, Tk); the base adds the causal mask.
    distance_only: the bias is a function of (head, i - j) alone (ALiBi, KERPLE, T5; not FIRE), so one
    (H, T) row of it serves FlexAttention's score_mod on a GPU (flex_biased_attention)."""

    distance_only = True

    @classmethod
    def from_config(cls, c):
        """The module of a GPTConfig: one bias per head (FIRE also reads the training length)."""
        return cls(c.n_head)

    def distance_values(self, T, device, dtype=torch.float32):
        """(H, T): the bias at distances 0 .. T-1 (distance_only biases)."""
        d = torch.arange(T, device=device)
        return self.values(d[None, :], d[-1:])[:, 0].to(dtype)

    def from_parent(self, name, parent, own, expand=None):
        """checkpoint.load_parent_weights: a parent run without this bias (rope -> kerple) leaves it freshly drawn."""
        if parent is not None and parent.shape != own.shape:
            raise ValueError(f"the parent run's {name} has shape {tuple(parent.shape)} where this model's has "
                             f"{tuple(own.shape)}: it was written by another model.py")
        return own if parent is None else parent

    def forward(self, q_start, q_end, k_end, device, dtype=torch.float32):
        """The bias of query rows q_start..q_end-1 over keys 0..k_end-1: (H, Tq, Tk), -inf above the diagonal."""
        i = torch.arange(q_start, q_end, device=device)
        j = torch.arange(k_end, device=device)
        distance = i[:, None] - j[None, :]
        bias = self.values(distance.clamp(min=0), i).to(dtype)
        return bias.masked_fill(distance < 0, float("-inf"))


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


class AlibiBias(AttentionBias):
    """ALiBi: no parameters, so one instance serves every layer and caches its last table."""

    def __init__(self, n_head):
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(n_head), persistent=False)
        self._cache = None

    def values(self, distance, query_pos):
        return -self.slopes.to(distance.device)[:, None, None] * distance

    def forward(self, q_start, q_end, k_end, device, dtype=torch.float32):
        if torch.compiler.is_compiling():  # a compiled model computes it in its graph: no cache to guard on
            return super().forward(q_start, q_end, k_end, device, dtype)
        key = (q_start, q_end, k_end, torch.device(device), dtype)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, super().forward(q_start, q_end, k_end, device, dtype))
        return self._cache[1]


class KerpleLogBias(AttentionBias):
    """KERPLE's logarithmic kernel, -r1 log(1 + r2 |i - j|), r1 and r2 learned per head (and layer:
    every attention layer owns one). They are kept positive by projecting them onto [eps, inf) before
    each use (a clamp inside the graph would zero their gradient below eps and leave them stuck there);
    the initial values are uniform in (0, 2) for r1 and (0, 1) for r2."""

    def __init__(self, n_head, eps=1e-2):
        super().__init__()
        self.eps = eps
        self.r1 = nn.Parameter(torch.rand(n_head) * 2)
        self.r2 = nn.Parameter(torch.rand(n_head))

    def values(self, distance, query_pos):
        with torch.no_grad():
            self.r1.clamp_(min=self.eps)
            self.r2.clamp_(min=self.eps)
        return -self.r1[:, None, None] * torch.log1p(self.r2[:, None, None] * distance)


class FireBias(AttentionBias):
    """FIRE: b = mlp(psi(i - j) / psi(max(L, i))), psi(x) = log(c x + 1). The progressive interpolation
    maps every distance into [0, 1]: within the threshold L by the fixed normaliser psi(L), past it by
    the query's own position, so a longer sequence never leaves the MLP's training range. c (init 0.1) and
    L (init L_train, learned as a multiple of it) are learned; the MLP is 1 -> 32 (ReLU) -> n_head.
    Every layer owns one (its own MLP, c and L), as every layer owns its KERPLE bias."""

    distance_only = False  # the query's position enters too

    @classmethod
    def from_config(cls, c):
        return cls(c.n_head, c.block_size)

    def __init__(self, n_head, train_len, hidden=32, init_c=0.1, eps=1e-6):
        super().__init__()
        self.train_len, self.eps = train_len, eps
        self.c = nn.Parameter(torch.tensor(float(init_c)))
        self.l_mult = nn.Parameter(torch.tensor(1.0))  # L = |l_mult| * train_len
        self.mlp = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, n_head))

    def reset_position_parameters(self):  # PyTorch's default Linear init, not GPT's N(0, 0.02)
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()

    def psi(self, x):
        return torch.log(self.c.abs() * x + 1)

    def interpolated(self, distance, query_pos):
        """psi(i - j) / psi(max(L, i)), (Tq, Tk) in [0, 1] for j <= i."""
        threshold = self.l_mult.abs() * self.train_len
        normaliser = self.psi(torch.maximum(query_pos.to(threshold.dtype), threshold))
        return self.psi(distance.to(threshold.dtype)) / normaliser.clamp(min=self.eps)[:, None]

    def values(self, distance, query_pos):
        x = self.interpolated(distance, query_pos)
        return self.mlp(x[..., None]).permute(2, 0, 1)  # (Tq, Tk, H) -> (H, Tq, Tk)


def t5_bucket(distance, num_buckets=32, max_distance=128):
    """T5's unidirectional bucket of a distance i - j >= 0: exact for the first num_buckets/2
    distances, then log-spaced up to max_distance, and the last bucket for everything beyond."""
    exact = num_buckets // 2
    far = exact + (torch.log(distance.clamp(min=1).float() / exact) / math.log(max_distance / exact)
                   * (num_buckets - exact)).long()
    return torch.where(distance < exact, distance, far.clamp(max=num_buckets - 1))


class T5Bias(AttentionBias):
    """T5's relative bias: a learned scalar per (bucket, head), shared by all layers (as T5 computes it
    in the first layer and reuses it). Causal LM, so the buckets are unidirectional."""

    def __init__(self, n_head, num_buckets=32, max_distance=128):
        super().__init__()
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.emb = nn.Embedding(num_buckets, n_head)

    def values(self, distance, query_pos):
        return self.emb(t5_bucket(distance, self.num_buckets, self.max_distance)).permute(2, 0, 1)


# torch's CPU flash-attention kernel takes a mask and the causal flag together, skipping the blocks above
# the diagonal: a constant bias (ALiBi's, or any under no_grad) then costs what causal attention costs.
# SDPA refuses a mask with is_causal, so it computes every block. The kernel returns no gradient for its
# mask, so a learned bias on CPU takes BiasedAttention below.
_cpu_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


class BiasedAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(hd) + bias) v for a bias (1 or B, H, Tq, Tk) that needs its gradient, summed
    over the batch when the bias is shared by it. SDPA's CPU path for such a mask (the math path) computes
    the same numbers with more passes over the (B, H, Tq, Tk) scores: it checks every row for all -inf
    (a causal bias never has one) and copies the strided q/k/v views before each matmul, in the forward
    and again in the backward. Here k, v and the output gradient are made contiguous once, and the
    backward is the four matmuls and one softmax backward:

        dP = dO V^T,  dS = P * (dP - rowsum(P * dP)),  dq = dS K / sqrt(hd),  dk = dS^T q / sqrt(hd),
        dv = P^T dO,  dbias = dS (summed over the batch when the bias has batch size 1)
    """

    @staticmethod
    def forward(ctx, q, k, v, bias):
        q = q * q.shape[-1] ** -0.5
        k, v = k.contiguous(), v.contiguous()
        scores = torch.matmul(q, k.transpose(-1, -2))
        scores += bias
        p = torch.softmax(scores, dim=-1)
        ctx.save_for_backward(q, k, v, p)
        ctx.bias_batch = bias.shape[0]
        return torch.matmul(p, v)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, p = ctx.saved_tensors  # q already scaled
        grad_out = grad_out.contiguous()
        ds = torch._softmax_backward_data(torch.matmul(grad_out, v.transpose(-1, -2)), p, -1, p.dtype)
        dbias = None
        if ctx.needs_input_grad[3]:
            dbias = ds.sum(0, keepdim=True) if ctx.bias_batch == 1 and ds.shape[0] > 1 else ds
        dq = torch.matmul(ds, k).mul_(q.shape[-1] ** -0.5)
        dk = torch.matmul(ds.transpose(-1, -2), q)
        dv = torch.matmul(p.transpose(-1, -2), grad_out)
        return dq, dk, dv, dbias


def biased_attention(q, k, v, bias, is_causal=False, dropout=0.0):
    """One attention call with an additive bias (1 or B, H, Tq, Tk) that carries the causal -inf itself;
    is_causal=True (square only) lets the CPU kernel skip the blocks above the diagonal."""
    if q.device.type == "cpu" and dropout == 0.0 and q.dtype == bias.dtype:
        if bias.requires_grad and q.dtype in (torch.float32, torch.float64):
            return BiasedAttention.apply(q, k, v, bias)
        if _cpu_flash is not None and q.dtype == torch.float32 and not bias.requires_grad:
            return _cpu_flash(q, k, v, 0.0, is_causal, attn_mask=bias)[0]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)


def causal(b, h, i, j):
    return i >= j


@functools.cache
def causal_block_mask(T, device, block=128):
    """FlexAttention's block mask of causal attention over T tokens, from its blocks: those below the diagonal
    full (no mask evaluated), those on it partial (causal), those above it skipped. It takes O((T/block)^2)
    integers, where create_block_mask evaluates the mask at all T^2 positions (a gigabyte at 32k). Cached per
    length for the eager caller; a compiled model traces these few arange ops into its graph instead."""
    from torch.nn.attention.flex_attention import BlockMask
    n = -(-T // block)
    rows = torch.arange(n, dtype=torch.int32, device=device)
    diagonal = rows[:, None].expand(n, n)[None, None]  # row i: block i first (only the first is read)
    below = rows[None, :].expand(n, n)[None, None]  # row i: blocks 0 .. i-1 first (only i are read)
    return BlockMask.from_kv_blocks(torch.ones(1, 1, n, dtype=torch.int32, device=device), diagonal.contiguous(),
                                    rows[None, None].contiguous(), below.contiguous(), BLOCK_SIZE=block,
                                    mask_mod=causal, seq_lengths=(T, T))


# torch.compile's dynamic=None: the first length compiles a kernel for that shape; a second length recompiles
# once with symbolic lengths, which then serves every later one. dynamic=False recompiled per length, and the
# 9th length of a sweep hit Dynamo's recompile limit, after which flex_attention runs unfused and materialises
# the full scores (13 GB per score tensor at 16k tokens).
FLEX_DYNAMIC = None


@functools.cache
def compiled_flex_attention(backend="inductor"):
    """flex_attention compiled once (its fused kernel; a compiled model traces through it). backend: the
    tests' "aot_eager" checks the recompiles on a CPU, whose inductor has no dynamic-shape flex kernel."""
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=FLEX_DYNAMIC, backend=backend)


def flex_biased_attention(q, k, v, bias, compiled=True, backend="inductor"):
    """Causal attention with a distance_only bias through FlexAttention (Dong et al. 2024, torch's fused
    attention with a score_mod): the bias enters as one (H, T) row read per score, the causal block mask
    skips the blocks above the diagonal, so no (H, T, T) bias is ever made or read. The GPU path."""
    from torch.nn.attention.flex_attention import flex_attention
    T = q.shape[2]
    table = bias.distance_values(T, q.device, torch.float32)

    def score_mod(score, b, h, i, j):
        return score + table[h, i - j]

    attend = compiled_flex_attention(backend) if compiled else flex_attention
    return attend(q, k, v, score_mod=score_mod, block_mask=causal_block_mask(T, str(q.device)))


def bias_path(q, bias, dropout):
    """"flex" on a GPU for a distance_only bias without dropout, else "dense" (SDPA or the CPU kernels)."""
    return "flex" if q.device.type == "cuda" and bias.distance_only and dropout == 0.0 else "dense"


def attend_with_bias(q, k, v, bias, dropout=0.0, max_elems=1 << 24, q_start=0):
    """Causal attention with an additive bias module: on a GPU through FlexAttention where it can
    (bias_path), else in query chunks of at most max_elems scores per batch element once the sequence is
    long, so an 8192-token sequence never holds a (H, T, T) bias or score tensor; a chunk of rows s..e
    needs only the keys 0..e. q_start: the position of q's first row when k and v hold earlier positions
    too (generation with a KV cache: k, v cover 0 .. q_start + T - 1)."""
    if q_start == 0 and bias_path(q, bias, dropout) == "flex":
        return flex_biased_attention(q, k, v, bias)
    B, H, T, hd = q.shape
    S = k.shape[2]
    rows = max(1, min(T, max_elems // (H * S)))
    out = []
    for s in range(0, T, rows):
        e = min(T, s + rows)
        mask = bias(q_start + s, q_start + e, q_start + e, q.device, q.dtype)[None]  # -inf above the diagonal
        square = q_start == 0 and s == 0 and e == T
        out.append(biased_attention(q[:, :, s:e], k[:, :, :q_start + e], v[:, :, :q_start + e], mask,
                                    is_causal=square, dropout=dropout))
    return out[0] if len(out) == 1 else torch.cat(out, dim=2)