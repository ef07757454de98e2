"""
The lens's measurements, on tensors: what experiments/lens.py measures on a checkpoint, each function
with a known answer in tests/test_lens.py. lens.py's docstring defines every quantity; a rotary module is
read only through its contract (fope.RotaryEmbedding): head_dim, inv_freq, pair_frequencies() and
forward(x, offset=0, norm=False).
"""

import math
from collections import defaultdict

import numpy as np
import torch

from fope import RotaryPositionEmbedding

OWN_RANK_CUTOFF = 0.01  # keep own directions with singular value >= 1% of the largest (lens.py's docstring, 3.)

# -----------------------------------------------------------------------------
# reading q and k out of a model


def pick_windows(data, length, n):
    """n windows of `length` tokens spread evenly over the split -> (n, length) int64."""
    windows = [w[:-1] for w in data.windows(length)]
    if not windows:
        raise SystemExit(f"the {data.split} split of {data.data_dir} has fewer than {length + 1} tokens: "
                         f"lower --max_multiple")
    picks = np.linspace(0, len(windows) - 1, min(n, len(windows))).round().astype(int)
    return torch.from_numpy(np.stack([windows[i] for i in picks]))


class QKProbe:
    """Forward hooks on every layer's attn.c_attn: q and k (B, H, T, hd) before the rotation, per layer."""

    def __init__(self, model):
        self.model, self.qk, self.handles = model, {}, []
        for layer, block in enumerate(model.transformer.h):
            self.handles.append(block.attn.c_attn.register_forward_hook(self._hook(layer, block.attn)))

    def _hook(self, layer, attn):
        def hook(module, inputs, output):
            q, k, _ = attn.split_heads(output)  # as CausalSelfAttention.forward: (B, nh, T, hs)
            self.qk[layer] = (q, k)
        return hook

    @torch.no_grad()
    def __call__(self, idx):
        """-> [(q, k) per layer] for the token windows idx (B, T)."""
        self.qk = {}
        self.model(idx)
        return [self.qk[layer] for layer in range(len(self.model.transformer.h))]

    def close(self):
        for h in self.handles:
            h.remove()


def attention_scores(attn, q, k, shared_bias=None):
    """The pre-softmax scores (B, H, T, T) a layer computes from q, k before the rotation: normalised if
    the model uses QK norm and rotated by the layer's own rotary module (attn.position_qk), q.k / sqrt(hd),
    plus the additive bias if any: the layer's own attn.pos_bias (FIRE, KERPLE: one per layer) or else
    shared_bias, the one model.transformer.pos_bias all layers share (ALiBi, T5); -inf above the diagonal."""
    T = q.shape[2]
    q, k = attn.position_qk(q, k)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    bias = attn.pos_bias if attn.pos_bias is not None else shared_bias
    if bias is not None:
        return scores + bias(0, T, T, q.device, q.dtype)  # the bias carries the causal -inf
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(future, float("-inf"))


@torch.no_grad()
def window_means(probe, idx, shared_bias, batch):
    """Windows idx (n, L_train) through the probe's model, batch at a time -> per layer: the mean of q and of
    k before the rotation over all tokens ({"q", "k"}: (H, hd) float64), and the mean pre-softmax score
    by distance (layers, H, L_train) (mean_by_distance, summed over windows, then / n)."""
    blocks = list(probe.model.transformer.h)
    sums = [defaultdict(float) for _ in blocks]
    score_within = torch.zeros(len(blocks), blocks[0].attn.n_head, idx.shape[1], dtype=torch.float64)
    for chunk in idx.split(batch, dim=0):
        for layer, (q, k) in enumerate(probe(chunk)):
            sums[layer]["q"] = sums[layer]["q"] + q.double().sum(dim=(0, 2))  # (H, hd)
            sums[layer]["k"] = sums[layer]["k"] + k.double().sum(dim=(0, 2))
            scores = attention_scores(blocks[layer].attn, q, k, shared_bias)
            score_within[layer] += mean_by_distance(scores.masked_fill(scores.isinf(), 0).sum(0)).cpu()
    score_within /= len(idx)
    n_tokens = idx.numel()
    return [{name: (s[name] / n_tokens).cpu() for name in ("q", "k")} for s in sums], score_within


@torch.no_grad()
def distance_means(probe, idx, shared_bias, train_len):
    """Long windows idx (n, T), two at a time -> means over windows, per layer and head: the pre-softmax
    score and the attention weight by distance (layers, H, T), and far_mass (layers, H)."""
    blocks = list(probe.model.transformer.h)
    T = idx.shape[1]
    score = torch.zeros(len(blocks), blocks[0].attn.n_head, T, dtype=torch.float64)
    weight, mass = torch.zeros_like(score), torch.zeros(len(blocks), blocks[0].attn.n_head, dtype=torch.float64)
    future = torch.ones(T, T, dtype=torch.bool, device=idx.device).triu(1)
    for chunk in idx.split(2, dim=0):  # (B, H, T, T) scores and weights: the memory peak
        for layer, (q, k) in enumerate(probe(chunk)):
            scores = attention_scores(blocks[layer].attn, q, k, shared_bias)
            weights = torch.softmax(scores, dim=-1).sum(0)  # sums over windows: the measures are linear
            score[layer] += mean_by_distance(scores.masked_fill(future, 0.0).sum(0)).cpu()
            weight[layer] += mean_by_distance(weights).cpu()
            mass[layer] += far_mass(weights, train_len).cpu()
    n = len(idx)
    return score / n, weight / n, mass / n


# -----------------------------------------------------------------------------
# the measurements, on tensors (tests/test_lens.py gives each a known answer)


def pair_frequencies(rotary):
    """(head_dim//2,) float64: the frequency w (radians per token) each rotary pair turns at, 0 for a
    position-free pair (the module's pair_frequencies(): RoPE and clamp-only: inv_freq; FoPE: each pair's
    dominant coefficient). None without a rotary module."""
    if rotary is None:
        return None
    freqs = torch.as_tensor(rotary.pair_frequencies()).detach().double().cpu()
    if freqs.shape != (rotary.head_dim // 2,):
        raise ValueError(f"{type(rotary).__name__}.pair_frequencies() gave shape {tuple(freqs.shape)}, "
                         f"not (head_dim//2,) = ({rotary.head_dim // 2},)")
    return freqs


def own_frequencies(rotary):
    """The distinct nonzero frequencies the module rotates with (float64, ascending); empty without one."""
    if rotary is None:
        return torch.zeros(0, dtype=torch.float64)
    inv_freq = rotary.inv_freq.detach().double().cpu()
    return torch.unique(inv_freq[inv_freq > 0])


def cycles(freqs, train_len):
    """r = w L_train / 2 pi: how many cycles a frequency turns within the training length."""
    return freqs * train_len / (2 * math.pi)


def pair_norms(mean):
    """mean: (H, hd), q or k before the rotation averaged over tokens -> (H, hd//2): per head and rotary
    pair (dims m and m + hd/2), the length of the pair's mean vector (the rotation-invariant |mean|)."""
    hd = mean.shape[-1]
    return torch.sqrt(mean[:, : hd // 2] ** 2 + mean[:, hd // 2:] ** 2)


def pair_mean_norms(x):
    """x: (..., H, T, hd) before the rotation -> (H, hd//2): pair_norms of its mean over all tokens."""
    hd = x.shape[-1]
    return pair_norms(x.reshape(-1, x.shape[-3], x.shape[-2], hd).double().mean(dim=(0, 2)))  # (H, hd) mean


def mean_by_distance(matrix):
    """(..., T, T) causal matrix -> (..., T): entry d is the mean of matrix[..., i, i - d] over i >= d.
    Entries above the diagonal (masked, possibly -inf) are ignored."""
    T = matrix.shape[-1]
    pos = torch.arange(T, device=matrix.device)
    distance = pos[:, None] - pos[None, :]  # (T, T): i - j
    flat = matrix.masked_fill(distance < 0, 0.0).flatten(-2).double()
    sums = torch.zeros(*matrix.shape[:-2], T, dtype=torch.float64, device=matrix.device)
    sums.index_add_(-1, distance.clamp(min=0).flatten(), flat)  # masked entries add 0 to bin 0
    return sums / (T - pos).double()


def far_mass(weights, train_len):
    """(..., T, T) attention weights -> (...): the weight the last train_len queries put on keys
    farther than train_len, averaged over those queries (0 when T <= train_len)."""
    T = weights.shape[-1]
    if T <= train_len:
        return torch.zeros(weights.shape[:-2], dtype=torch.float64)
    rows = weights[..., T - train_len:, :].double()  # queries i = T - L .. T - 1
    pos = torch.arange(T - train_len, T, device=weights.device)
    far = torch.arange(T, device=weights.device)[None, :] < (pos[:, None] - train_len + 1)  # j <= i - L
    return (rows * far).sum(-1).mean(-1)


def own_basis(own_freqs, n):
    """Orthonormal (n, rank) basis of the mean-free span of cos(w d), sin(w d), d = 0 .. n-1, over the
    own frequencies: the directions with singular value >= OWN_RANK_CUTOFF of the largest."""
    if len(own_freqs) == 0:
        return torch.zeros(n, 0, dtype=torch.float64)
    d = torch.arange(n, dtype=torch.float64)[:, None]
    angle = d * torch.as_tensor(own_freqs, dtype=torch.float64)[None, :]
    basis = torch.cat([angle.cos(), angle.sin()], dim=1)
    basis = basis - basis.mean(0)  # the mean (bin 0) is not counted: lens.py's docstring, 3.
    u, s, _ = torch.linalg.svd(basis, full_matrices=False)
    return u[:, s >= OWN_RANK_CUTOFF * s[0]] if s[0] > 0 else u[:, :0]


def leakage(curve, own_freqs):
    """The share of a curve's energy (mean removed) outside the span of its own frequencies, with the
    rank of that span and the chance level (the leakage of white noise). None without frequencies."""
    curve = torch.as_tensor(curve, dtype=torch.float64)
    n = curve.shape[-1]
    basis = own_basis(own_freqs, n)
    if basis.shape[1] == 0:
        return None
    centred = curve - curve.mean()
    total = float(centred @ centred)
    own = float(((basis.T @ centred) ** 2).sum())
    return {"leakage": 1 - own / total if total > 0 else 0.0, "own_rank": basis.shape[1],
            "chance_leakage": 1 - basis.shape[1] / (n - 1)}


def power_spectrum(curve):
    """DFT power of a curve with its mean removed; bin k = k cycles over the curve's length."""
    curve = torch.as_tensor(curve, dtype=torch.float64)
    return torch.fft.rfft(curve - curve.mean()).abs() ** 2


@torch.no_grad()
def expected_score(rotary, mu_q, mu_k, max_distance, key_positions):
    """E[q'.k'] at distances 0 .. max_distance for independent q, k with means mu_q, mu_k (H or 1, hd)
    and any variance: rot(mu_q) . rot(mu_k) (the rotation is linear; noise terms have mean 0), averaged
    over key positions 0 .. key_positions-1 (FoPE's score also depends on absolute position). Unscaled."""
    H, hd = mu_q.shape
    T = key_positions + max_distance
    q = rotary(mu_q.float()[None, :, None, :].expand(1, H, T, hd).contiguous())[0].double()  # (H, T, hd)
    k = rotary(mu_k.float()[None, :, None, :].expand(1, H, key_positions, hd).contiguous())[0].double()
    j = torch.arange(key_positions)[:, None]
    d = torch.arange(max_distance + 1)[None, :]
    q_at = q[:, j + d, :]  # (H, key_positions, D + 1, hd): the query at j + d for each key j
    return (q_at * k[:, :, None, :]).sum(-1).mean(1).mean(0)  # (D + 1,)


@torch.no_grad()
def sampled_score(rotary, mu, max_distance, draws, generator):
    """The paper's Fig. 8 by sampling: q, k ~ N(mu, 1) per coordinate, k at position 0, q at position d.
    -> (mean, standard error) over draws of q'.k' at d = 0 .. max_distance (unscaled)."""
    hd = rotary.head_dim
    q = mu + torch.randn(draws, 1, 1, hd, generator=generator, dtype=torch.float64)
    k = mu + torch.randn(draws, 1, 1, hd, generator=generator, dtype=torch.float64)
    T = max_distance + 1
    q_rot = rotary(q.float().expand(draws, 1, T, hd).contiguous()).double()  # (draws, 1, T, hd)
    k_rot = rotary(k.float())
    score = (q_rot * k_rot).sum(-1)[:, 0]  # (draws, T)
    return score.mean(0), score.std(0) / math.sqrt(draws)


def rope_closed_form(head_dim, theta, mu, max_distance):
    """E[q'.k'] = 2 mu^2 sum_m cos(w_m d) for q, k ~ N(mu, 1) per coordinate under RoPE."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    d = torch.arange(max_distance + 1, dtype=torch.float64)[:, None]
    return 2 * mu ** 2 * torch.cos(d * inv_freq[None, :]).sum(1)


@torch.no_grad()
def fig8_curves(head_dim, theta, max_distance, draws, seed, mus=(0.0, 0.1, 1.0)):
    """The paper's Fig. 8 for a RoPE module of head_dim and theta: mu -> (mean of draws samples, closed form)."""
    rope = RotaryPositionEmbedding(head_dim, theta=theta, backend="eager")
    generator = torch.Generator().manual_seed(seed)
    return {mu: (sampled_score(rope, mu, max_distance, draws, generator)[0],
                 rope_closed_form(head_dim, theta, mu, max_distance)) for mu in mus}


def log_bins(curve, edges):
    """Mean of curve over [edges[b], edges[b+1]) -> (centres, means): a long curve, readable on a log axis."""
    centres = np.sqrt(edges[:-1] * np.maximum(edges[1:] - 1, edges[:-1]))
    return centres, np.array([np.mean(curve[a:b]) for a, b in zip(edges[:-1], edges[1:])])


# -----------------------------------------------------------------------------
# how many pairs rotate (experiments/geometry.py)


def free_pairs(rotary):
    """(head_dim,) bool: the dimensions of the position-free pairs (pair_frequencies() == 0: FoPE's pairs past
    d_out, the clamp-only arm's clamped pairs), both halves of each pair in the rotate-half layout."""
    free = pair_frequencies(rotary) == 0
    return torch.cat((free, free))


def free_share(q, k, free):
    """q, k (B, H, T, hd) as attention uses them (rotated), free (hd,) bool -> (H,) float64: the share of the
    causal scores' magnitude carried by the position-free pairs, sum |s_free| / (sum |s_free| + sum |s_pos|)
    over query i >= key j, where q_i.k_j = s_free + s_pos splits the dot product by pair."""
    T = q.shape[2]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    s_free = q[..., free].double() @ k[..., free].double().transpose(-2, -1)
    s_pos = q[..., ~free].double() @ k[..., ~free].double().transpose(-2, -1)
    a = (s_free.abs() * causal).sum(dim=(0, 2, 3))
    b = (s_pos.abs() * causal).sum(dim=(0, 2, 3))
    return (a / (a + b)).cpu()


def key_attention(q, k, query, key):
    """q, k (B, H, T, hd) rotated; query (B,) the position reading the answer, key (B,) the position of the key's
    first token -> (B, H): the softmax weight query puts on key (causal, scale 1/sqrt(hd)): how strongly each
    head looks where an induction head copying the key must look."""
    rows = torch.arange(q.shape[0], device=q.device)
    qi = q[rows, :, query]  # (B, H, hd)
    scores = torch.einsum("bhd,bhtd->bht", qi.double(), k.double()) / math.sqrt(q.shape[-1])
    future = torch.arange(q.shape[2], device=q.device)[None, :] > query[:, None]  # (B, T)
    weights = torch.softmax(scores.masked_fill(future[:, None], float("-inf")), dim=-1)
    return weights[rows, :, key].cpu()


class FarMass:
    """Forward hooks: for each layer and each end E in `ends` (E <= the sequence's length), the attention
    weight that the last `n` queries before E (of a window cut at E) put on keys at distance >= far,
    averaged over heads and queries. Exact for a window of E tokens when the rotation is static; for
    dynamic NTK use E = the forward's own length."""

    def __init__(self, model, ends, far, n):
        self.ends, self.far, self.n, self.mass = ends, far, n, {}
        self.handles = [block.attn.c_attn.register_forward_hook(self.hook(block.attn))
                        for block in model.transformer.h]

    def hook(self, attn):
        def measure(module, inputs, output):
            q, k, _ = attn.split_heads(output.float())
            for end in (e for e in self.ends if e <= q.shape[2]):
                qs, ks = attn.position_qk(q[:, :, :end], k[:, :, :end])  # as the layer does: QK norm, rotation
                qs = qs[:, :, end - self.n:end]
                scores = qs @ ks.transpose(-2, -1) / math.sqrt(qs.shape[-1])  # (B, H, n, end)
                i = torch.arange(end - self.n, end, device=q.device)[:, None]
                j = torch.arange(end, device=q.device)[None, :]
                weights = scores.masked_fill(j > i, float("-inf")).softmax(-1)
                far = (weights * (j <= i - self.far)).sum(-1).mean().item()
                self.mass.setdefault(end, []).append(far)
        return measure

    def close(self):
        for h in self.handles:
            h.remove()
