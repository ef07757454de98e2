"""
Context extension: the rope_scaling rescalings of RoPE's frequencies, spelled as HF transformers spells them
(its modeling_rope_utils.ROPE_INIT_FUNCTIONS), kept apart from the models as HF keeps them.

- PI, "linear": Chen et al. 2023, "Extending Context Window of Large Language Models via Positional
  Interpolation" (arXiv 2306.15595).
- NTK-aware scaling, "ntk": bloc97 2023; dynamic NTK, "dynamic" (HF's).
- YaRN, "yarn": Peng et al. 2023 (arXiv 2309.00071).
- Llama 3.1's rescaling, "llama3".
- LongRoPE, "longrope": Ding et al. 2024 (arXiv 2402.13753).

The frequencies and attention factors equal HF's for the same dict (tests/test_rope_scaling.py carries
cases written out; experiments/compare_hf.py runs the whole grid against transformers).
"""

import math
from typing import Callable, NamedTuple, Optional

import torch

# Each rescaling maps the frequencies (after FoPE's clamp) to new ones for sequences past the original
# length, and may set an attention factor that multiplies both tables (so q.k scales by its square),
# as HF applies it. A rescaling only sees each frequency's index m in theta^(-2m/rot_dim), so it applies
# alike to RoPE's frequencies and to the ones FoPE keeps ("after the clamp", as the official code's
# `len_extra_before_clamp=False`). Every function returns (inv_freq, attention_factor).


class Rescaling(NamedTuple):
    """One rope_type, all that check_scaling and rescale_inv_freq know of it (ROPE_SCALING's entries)."""
    rescale: Callable  # (inv_freq, index, rot_dim, theta, scaling, seq_len) -> (inv_freq, attention_factor)
    keys: tuple = ()  # the keys it reads besides rope_type, factor, original_max_position_embeddings
    needs_factor: bool = True  # whether a factor >= 1 is required
    length_dependent: bool = False  # whether its frequencies depend on the current sequence length
    check: Optional[Callable] = None  # check(scaling): its own checks of its keys, raising ValueError


SCALING_ALIASES = {"type": "rope_type", "original_len": "original_max_position_embeddings"}  # nanoFoPE's short names


def check_scaling(scaling):
    """Validate a rope_scaling dict (HF's keys, or the short names type / original_len / attn_temperature);
    returns it normalised to HF's keys (or None). attn_temperature=False means attention_factor=1.0."""
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        raise ValueError(f"rope_scaling must be a dict like {{'rope_type': 'yarn', 'factor': 8.0}}, got {scaling!r}")
    scaling = {SCALING_ALIASES.get(k, k): v for k, v in scaling.items()}
    kind = scaling.get("rope_type")
    if kind not in ROPE_SCALING:
        raise ValueError(f"rope_scaling rope_type must be one of {tuple(ROPE_SCALING)}, got {kind!r}")
    if "attn_temperature" in scaling:
        if kind != "yarn":
            raise ValueError("rope_scaling attn_temperature applies to yarn only")
        if not scaling.pop("attn_temperature"):
            scaling.setdefault("attention_factor", 1.0)
    entry = ROPE_SCALING[kind]
    allowed = {"rope_type", "factor", "original_max_position_embeddings", *entry.keys}
    unknown = set(scaling) - allowed
    if unknown:
        raise ValueError(f"rope_scaling has unknown keys {sorted(unknown)} for rope_type {kind!r}; allowed: {sorted(allowed)}")
    if entry.needs_factor and (not isinstance(scaling.get("factor"), (int, float)) or scaling["factor"] < 1):
        raise ValueError(f"rope_scaling {kind} needs a factor >= 1, got {scaling.get('factor')!r}")
    if entry.check:
        entry.check(scaling)
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


def _check_yarn(p):
    if p.get("ramp", "index") not in ("index", "ratio"):
        raise ValueError(f"rope_scaling yarn ramp must be 'index' (HF, the YaRN and FoPE code) or 'ratio' "
                         f"(the YaRN paper's Eq. 18), got {p['ramp']!r}")


def _llama3(inv_freq, index, rot_dim, theta, p, seq_len):
    """Llama 3.1: wavelengths longer than L_orig / low_freq_factor are interpolated (w / s), shorter than
    L_orig / high_freq_factor kept, and the band between blended by L_orig / wavelength."""
    s, orig = p["factor"], p["original_max_position_embeddings"]
    low, high = p["low_freq_factor"], p["high_freq_factor"]
    wavelen = 2 * math.pi / inv_freq  # inf for a clamped (zero) frequency: stays zero
    smooth = ((orig / wavelen - low) / (high - low)).clamp(0, 1)
    return (1 - smooth) * inv_freq / s + smooth * inv_freq, 1.0


def _check_llama3(p):
    if not {"low_freq_factor", "high_freq_factor"} <= set(p):
        raise ValueError("rope_scaling llama3 needs low_freq_factor and high_freq_factor (Llama 3.1: 1 and 4)")
    if p["high_freq_factor"] <= p["low_freq_factor"]:
        raise ValueError("rope_scaling llama3 needs high_freq_factor > low_freq_factor")


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


def _check_longrope(p):
    if not {"short_factor", "long_factor"} <= set(p):
        raise ValueError("rope_scaling longrope needs short_factor and long_factor (one per frequency, head_dim/2 each)")


# rope_type -> its Rescaling: a new rescaling is one function and one entry here (check_scaling and
# rescale_inv_freq read all they need of it from the entry)
ROPE_SCALING = {
    "default": Rescaling(lambda inv_freq, *args: (inv_freq, 1.0), needs_factor=False),
    "linear": Rescaling(_linear),
    "ntk": Rescaling(_ntk),
    "dynamic": Rescaling(_dynamic, length_dependent=True),
    "yarn": Rescaling(_yarn, ("attention_factor", "beta_fast", "beta_slow", "truncate", "mscale", "mscale_all_dim",
                              "ramp"), check=_check_yarn),
    "llama3": Rescaling(_llama3, ("low_freq_factor", "high_freq_factor"), check=_check_llama3),
    "longrope": Rescaling(_longrope, ("short_factor", "long_factor", "attention_factor"), needs_factor=False,
                          length_dependent=True, check=_check_longrope),
}
LENGTH_DEPENDENT = tuple(kind for kind, entry in ROPE_SCALING.items() if entry.length_dependent)  # (fope.py reads it)


def rescale_inv_freq(inv_freq, index, rot_dim, theta, scaling, seq_len=None):
    """Context extension. inv_freq: (D,) float64 frequencies; index: (D,) their m in theta^(-2m/rot_dim);
    seq_len: the current length (dynamic and longrope depend on it). -> (inv_freq, attention_factor)."""
    if scaling is None:
        return inv_freq, 1.0
    return ROPE_SCALING[scaling["rope_type"]].rescale(inv_freq, index, rot_dim, theta, scaling, seq_len)


def scaling_for_module(scaling, train_len, rot_dim):
    """A rotary module's rope_scaling (check_scaling), with original_max_position_embeddings defaulting to
    its train_len and LongRoPE's factor lists checked against its rot_dim // 2 frequencies."""
    scaling = check_scaling(scaling)
    if scaling is None:
        return None
    if scaling.get("original_max_position_embeddings") is None:
        if train_len is None:
            raise ValueError("rope_scaling needs original_max_position_embeddings (the training length)")
        scaling["original_max_position_embeddings"] = train_len
    for key in ("short_factor", "long_factor"):
        if key in scaling and len(scaling[key]) != rot_dim // 2:
            raise ValueError(f"rope_scaling {key} needs {rot_dim // 2} values (one per frequency), got {len(scaling[key])}")
    return scaling
