"""fope.py against simple references: the rotation, FoPE's clamp and coefficients, ALiBi, rescalings."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from fope import (FourierPositionEmbedding, RotaryPositionEmbedding, alibi_slopes, apply_rotary,
                  fope_coefficients, rope_inv_freq)


def rotate_at(pe, x, offset):
    """x: (hd,) vector placed at one position -> rotated (hd,)."""
    return pe(x.view(1, 1, 1, -1), offset=offset).view(-1)


def reference_fope(x, inv_freq, sin_coef, cos_coef, offset, zero_pad):
    """FoPE written out plainly in float64: per head h, position t and pair j, the j-th output
    dimension pair (j, j + hd/2) is rotated by the Fourier series S, C over the kept frequencies."""
    B, H, T, hd = x.shape
    half = hd // 2
    D, d_out = sin_coef.shape[1], sin_coef.shape[2]
    y = torch.empty_like(x)
    for h in range(H):
        for t in range(T):
            pos = offset + t
            for j in range(half):
                if j < d_out:
                    S = sum(math.sin(pos * inv_freq[d]) * sin_coef[h, d, j] for d in range(D))
                    C = sum(math.cos(pos * inv_freq[d]) * cos_coef[h, d, j] for d in range(D))
                else:  # position-free dimensions
                    S, C = (1.0 if zero_pad == "official" else 0.0), 1.0
                a, b = x[:, h, t, j], x[:, h, t, j + half]
                y[:, h, t, j] = a * C - b * S
                y[:, h, t, j + half] = b * C + a * S
    return y


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    pe = RotaryPositionEmbedding(64, train_len=64)
    q, k = torch.randn(64, dtype=torch.float64), torch.randn(64, dtype=torch.float64)
    for t, s in [(5, 2), (40, 3), (100, 100), (7, 30)]:
        base = rotate_at(pe, q, t) @ rotate_at(pe, k, s)
        for shift in (1, 17, 300):
            shifted = rotate_at(pe, q, t + shift) @ rotate_at(pe, k, s + shift)
            assert torch.allclose(base, shifted, atol=1e-4), (t, s, shift)
    # and it does depend on the distance
    assert not torch.allclose(rotate_at(pe, q, 5) @ rotate_at(pe, k, 2), rotate_at(pe, q, 9) @ rotate_at(pe, k, 2), atol=1e-3)


def test_fope_with_sigma_zero_equals_rope_minus_its_clamped_frequencies():
    head_dim, train_len = 64, 128
    fope = FourierPositionEmbedding(head_dim, 4, train_len, sigma=0.0, zero_pad="identity")
    assert fope.inv_freq.numel() == 11 and fope.d_out == 11  # D <= head_dim // 4
    rope = RotaryPositionEmbedding(head_dim, train_len=train_len)
    rope.inv_freq[rope.inv_freq < 2 * math.pi / train_len] = 0.0
    rope.clear_cache()
    x = torch.randn(2, 4, 300, head_dim)
    for offset in (0, 77):
        assert torch.allclose(fope(x, offset), rope(x, offset), atol=1e-5)
    # and it differs from full RoPE: the clamped frequencies matter
    assert not torch.allclose(fope(x), RotaryPositionEmbedding(head_dim, train_len=train_len)(x), atol=1e-3)


@pytest.mark.parametrize("zero_pad", ["official", "identity"])
@pytest.mark.parametrize("head_dim,train_len,fourier_dim", [(16, 32, None), (32, 64, None), (16, 32, 48)])
def test_fope_equals_plain_reference(zero_pad, head_dim, train_len, fourier_dim):
    torch.manual_seed(1)
    H = 3
    pe = FourierPositionEmbedding(head_dim, H, train_len, sigma=0.7, fourier_dim=fourier_dim, zero_pad=zero_pad)
    # random (not identity-like) coefficients, set after construction: the cache must follow them
    pe.sin_coef.copy_(torch.randn_like(pe.sin_coef))
    pe.cos_coef.copy_(torch.randn_like(pe.cos_coef))
    pe.clear_cache()
    x = torch.randn(2, H, 7, head_dim, dtype=torch.float64)
    for offset in (0, 5, 3 * train_len):
        expected = reference_fope(x, pe.inv_freq.tolist(), pe.sin_coef.double(), pe.cos_coef.double(), offset, zero_pad)
        assert torch.allclose(pe(x, offset), expected, atol=1e-5), offset


@pytest.mark.parametrize("head_dim,train_len,kept", [(64, 512, 16), (64, 1024, 18), (128, 512, 31), (64, 128, 11)])
def test_floor_clamp_keeps_only_frequencies_that_complete_a_period(head_dim, train_len, kept):
    pe = FourierPositionEmbedding(head_dim, 2, train_len)
    assert pe.inv_freq.numel() == kept
    assert (pe.inv_freq >= 2 * math.pi / train_len).all()
    dropped = rope_inv_freq(head_dim)[kept:]
    assert (dropped < 2 * math.pi / train_len).all()


def test_fope_coefficients_are_xavier_normal_plus_step_identity():
    torch.manual_seed(0)
    n_head, D, d_out, sigma = 48, 64, 32, 0.5
    coef = fope_coefficients(n_head, D, d_out, sigma)
    identity = fope_coefficients(n_head, D, d_out, 0.0)
    step = math.ceil(D / d_out)
    expected_identity = torch.zeros(D, d_out)
    expected_identity[torch.arange(d_out) * step, torch.arange(d_out)] = 1.0
    assert torch.equal(identity, expected_identity.expand(n_head, D, d_out))
    noise = coef - identity
    # torch's fans for a 3-D tensor (n_head, D, d_out): fan_in = D * d_out, fan_out = n_head * d_out
    std = sigma * math.sqrt(2.0 / (D * d_out + n_head * d_out))
    assert abs(noise.mean().item()) < 0.05 * std
    assert noise.std().item() == pytest.approx(std, rel=0.03)


def test_fope_coefficients_are_frozen_unless_learnable():
    frozen = FourierPositionEmbedding(32, 2, 64)
    assert list(frozen.parameters()) == [] and "sin_coef" in frozen.state_dict()
    learnable = FourierPositionEmbedding(32, 2, 64, learnable=True)
    assert {n for n, _ in learnable.named_parameters()} == {"sin_coef", "cos_coef"}
    x = torch.randn(1, 2, 10, 32)
    learnable(x).square().sum().backward()
    assert learnable.sin_coef.grad.abs().sum() > 0 and learnable.cos_coef.grad.abs().sum() > 0


def test_learnable_fope_matches_frozen_fope_with_same_coefficients():
    torch.manual_seed(0)
    frozen = FourierPositionEmbedding(32, 2, 64, sigma=0.5)
    learnable = FourierPositionEmbedding(32, 2, 64, learnable=True)
    learnable.load_state_dict(frozen.state_dict())
    x = torch.randn(2, 2, 100, 32)
    assert torch.allclose(frozen(x, 3), learnable(x, 3), atol=1e-5)


def test_tables_are_built_once_and_extended_for_longer_sequences():
    pe = FourierPositionEmbedding(32, 2, 64)
    ptr = pe.cos_cached.data_ptr()
    pe(torch.randn(1, 2, 64, 32))
    pe(torch.randn(1, 2, 10, 32), offset=20)
    assert pe.cos_cached.data_ptr() == ptr and pe.cos_cached.shape[1] == 64
    pe(torch.randn(1, 2, 200, 32))
    assert pe.cos_cached.shape[1] >= 200
    # the extended table agrees with one built directly at that length
    fresh = FourierPositionEmbedding(32, 2, 64)
    fresh.load_state_dict(pe.state_dict())
    fresh.cos_cached = fresh.sin_cached = None
    assert torch.allclose(fresh(torch.ones(1, 2, 200, 32)), pe(torch.ones(1, 2, 200, 32)), atol=1e-6)


def test_load_state_dict_rebuilds_cached_tables():
    torch.manual_seed(0)
    a = FourierPositionEmbedding(32, 2, 64)
    torch.manual_seed(1)
    b = FourierPositionEmbedding(32, 2, 64)
    x = torch.randn(1, 2, 50, 32)
    assert not torch.allclose(a(x), b(x))
    b.load_state_dict(a.state_dict())
    assert torch.allclose(a(x), b(x))


# --- ALiBi ---------------------------------------------------------------------


def test_alibi_slopes_for_a_power_of_two_are_geometric():
    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0 ** -i for i in range(1, 9)]))


def test_alibi_slopes_for_twelve_heads_follow_the_non_power_of_two_rule():
    # the 8 slopes of 8 heads, then every other slope of 16 heads (2^-0.5, 2^-1.5, ...) for the rest
    expected = [2.0 ** -i for i in range(1, 9)] + [2.0 ** -(i + 0.5) for i in range(4)]
    assert torch.allclose(alibi_slopes(12), torch.tensor(expected))


# --- context-extension rescalings ----------------------------------------------------


def rope_tables(scaling, length, head_dim=64, train_len=128):
    return RotaryPositionEmbedding(head_dim, scaling=scaling, train_len=train_len).tables(0, length)


@pytest.mark.parametrize("kind", ["linear", "ntk", "dynamic", "yarn"])
def test_rescaling_with_factor_one_changes_nothing(kind):
    # dynamic NTK (HF's formula) rescales by the current length even at factor 1, once past the
    # original length: there factor 1 changes nothing only within it
    for length in (100, 128) if kind == "dynamic" else (100, 600):
        for got, want in zip(rope_tables({"type": kind, "factor": 1.0}, length), rope_tables(None, length)):
            assert torch.allclose(got, want, atol=1e-6)


def test_linear_rescaling_divides_positions_by_the_factor():
    cos, sin = rope_tables({"type": "linear", "factor": 4.0}, 400)
    cos0, sin0 = rope_tables(None, 100)
    assert torch.allclose(cos[:, ::4], cos0, atol=1e-5) and torch.allclose(sin[:, ::4], sin0, atol=1e-5)


def test_ntk_rescaling_is_a_base_change():
    head_dim, s, theta = 64, 8.0, 10000.0
    pe = RotaryPositionEmbedding(head_dim, theta, {"type": "ntk", "factor": s}, train_len=128)
    new_base = theta * s ** (head_dim / (head_dim - 2))
    expected = RotaryPositionEmbedding(head_dim, new_base, train_len=128)
    for got, want in zip(pe.tables(0, 500), expected.tables(0, 500)):
        assert torch.allclose(got, want, atol=1e-5)


def test_dynamic_ntk_follows_the_current_length():
    pe = RotaryPositionEmbedding(64, scaling={"type": "dynamic", "factor": 2.0}, train_len=128)
    for got, want in zip(pe.tables(0, 128), rope_tables(None, 128)):  # within the original length: none
        assert torch.allclose(got, want)
    # at 2x the original length, factor 2: alpha = 2 * 256/128 - 1 = 3, as static NTK with factor 3
    for got, want in zip(pe.tables(0, 256), rope_tables({"type": "ntk", "factor": 3.0}, 256)):
        assert torch.allclose(got, want, atol=1e-5)


def test_yarn_keeps_high_frequencies_interpolates_low_ones_and_sets_the_temperature():
    s, train_len, head_dim = 8.0, 1024, 64
    pe = RotaryPositionEmbedding(head_dim, scaling={"type": "yarn", "factor": s}, train_len=train_len)
    plain = rope_inv_freq(head_dim)
    cos, sin = pe.tables(0, 2)
    angle = torch.atan2(sin[0, 1], cos[0, 1]).double()  # the frequencies YaRN uses, read off t = 1
    r = train_len * plain / (2 * math.pi)  # rotations per original context
    high, low, mid = r > 32, r < 1, (r > 1) & (r < 32)
    assert high.any() and low.any() and mid.any()
    assert torch.allclose(angle[high], plain[high], atol=1e-5)
    assert torch.allclose(angle[low], plain[low] / s, atol=1e-6)
    assert ((angle[mid] < plain[mid]) & (angle[mid] > plain[mid] / s)).all()
    temperature = 0.1 * math.log(s) + 1
    assert torch.allclose(cos[0, 0], torch.full((head_dim // 2,), temperature))
    no_temp = RotaryPositionEmbedding(head_dim, scaling={"type": "yarn", "factor": s, "attn_temperature": False}, train_len=train_len)
    assert torch.allclose(no_temp.tables(0, 1)[0], torch.ones(1, 1, head_dim // 2))


def test_rescalings_apply_to_fope_kept_frequencies_after_the_clamp():
    torch.manual_seed(0)
    plain = FourierPositionEmbedding(64, 2, 128, sigma=0.3)
    scaled = FourierPositionEmbedding(64, 2, 128, sigma=0.3, scaling={"type": "linear", "factor": 4.0})
    scaled.load_state_dict(plain.state_dict())
    assert torch.equal(scaled.inv_freq, plain.inv_freq)  # the clamp is decided on the original frequencies
    cos, sin = scaled.tables(0, 400)
    cos0, sin0 = plain.tables(0, 100)
    assert torch.allclose(cos[:, ::4], cos0, atol=1e-5) and torch.allclose(sin[:, ::4], sin0, atol=1e-5)


def test_unknown_rescaling_is_a_one_line_error():
    with pytest.raises(ValueError, match="rope_scaling type must be one of"):
        RotaryPositionEmbedding(64, scaling={"type": "longrope", "factor": 2.0}, train_len=128)


# --- the rotation ---------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 3), H=st.integers(1, 4), T=st.integers(1, 9), half=st.integers(1, 8), shared=st.booleans())
def test_apply_rotary_is_the_pairwise_rotation(B, H, T, half, shared):
    x = torch.randn(B, H, T, 2 * half, dtype=torch.float64)
    cos = torch.randn(1 if shared else H, T, half, dtype=torch.float64)
    sin = torch.randn(1 if shared else H, T, half, dtype=torch.float64)
    y = apply_rotary(x, cos, sin)
    x1, x2 = x[..., :half], x[..., half:]
    assert torch.allclose(y[..., :half], x1 * cos - x2 * sin)
    assert torch.allclose(y[..., half:], x2 * cos + x1 * sin)
