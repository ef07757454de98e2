"""fope.py against simple references: the rotation, RoPE, FoPE's clamp and coefficients, the backends."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from fope import FourierPositionEmbedding, RotaryPositionEmbedding, apply_rotary, fope_coefficients, rope_inv_freq, rotation_path


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


def test_clamp_only_arm_is_rope_with_its_low_frequencies_set_to_zero():
    # the paper's "w/o FS" arm (official rope_clamp_floor_freq + rope_clamp_floor_to_zero, no fourier)
    head_dim, train_len = 64, 1024
    clamp = RotaryPositionEmbedding(head_dim, train_len=train_len, clamp_floor=True)
    plain = rope_inv_freq(head_dim)
    kept = plain >= 2 * math.pi / train_len
    assert int(kept.sum()) == 18
    assert torch.equal(clamp.inv_freq[kept], plain[kept]) and (clamp.inv_freq[~kept] == 0).all()
    x = torch.randn(2, 3, 50, head_dim, dtype=torch.float64)
    y = clamp(x, offset=300)
    half = head_dim // 2
    dropped = torch.cat([torch.arange(half)[~kept], half + torch.arange(half)[~kept]])
    assert torch.equal(y[..., dropped], x[..., dropped])  # the clamped pairs pass through unrotated
    rope = RotaryPositionEmbedding(head_dim, train_len=train_len)
    keep_dims = torch.cat([torch.arange(half)[kept], half + torch.arange(half)[kept]])
    assert torch.allclose(y[..., keep_dims], rope(x, offset=300)[..., keep_dims], atol=1e-6)


@pytest.mark.parametrize("head_dim, train_len", [(64, 1024), (64, 8192), (128, 256), (32, 64)])
def test_copes_hann_taper_slows_the_clamped_frequencies_from_whole_to_zero(head_dim, train_len):
    # CoPE (arXiv 2602.05258): the frequencies the clamp would cut, highest first, times 0.5 (1 + cos(pi k / (n-1)))
    plain = rope_inv_freq(head_dim)
    hard = RotaryPositionEmbedding(head_dim, train_len=train_len, clamp_floor=True).inv_freq
    soft = RotaryPositionEmbedding(head_dim, train_len=train_len, clamp_floor=True, taper="hann").inv_freq
    cut = plain < 2 * math.pi / train_len
    n = int(cut.sum())
    assert n >= 2 and torch.equal(soft[~cut], plain[~cut]) and torch.equal(hard[~cut], plain[~cut])
    assert soft[cut][0] == plain[cut][0] and soft[cut][-1] == 0  # the first kept whole, the lowest frozen
    ratio = (soft[cut] / plain[cut])[:-1]
    k = torch.arange(n - 1, dtype=torch.float64)
    assert torch.allclose(ratio.double(), 0.5 * (1 + torch.cos(math.pi * k / (n - 1))), atol=1e-6)
    assert (soft[cut][1:] < soft[cut][:-1]).all()  # still ordered: a slowed frequency stays below its neighbour
    with pytest.raises(ValueError, match="taper must be one of"):
        RotaryPositionEmbedding(head_dim, train_len=train_len, clamp_floor=True, taper="cosine")


def test_the_taper_is_a_knob_of_the_clamp_only_arm_and_refused_elsewhere_in_one_line():
    from model import GPT, GPTConfig
    kw = dict(n_layer=1, n_head=2, n_embd=64, block_size=256, vocab_size=32, pos_emb="fope", fope_fourier=False)
    soft = GPT(GPTConfig(**kw, fope_taper="hann")).transformer.h[0].attn.rotary.inv_freq
    expected = RotaryPositionEmbedding(32, train_len=256, clamp_floor=True, taper="hann").inv_freq
    assert torch.equal(soft, expected)
    for bad, match in [({"fope_fourier": True}, "set fope_fourier=False"), ({"fope_taper": "soft"}, "must be one of")]:
        with pytest.raises(ValueError, match=match) as err:
            GPT(GPTConfig(**{**kw, "fope_taper": "hann", **bad}))
        assert "\n" not in str(err.value)


def test_fope_at_sigma_zero_is_not_the_clamp_only_arm_when_more_frequencies_are_kept_than_d_out():
    # head_dim 64 at L_train 1024: D = 18 kept, d_out = 16; the step identity keeps 9 of them only
    fope = FourierPositionEmbedding(64, 2, 1024, sigma=0.0, zero_pad="identity")
    clamp = RotaryPositionEmbedding(64, train_len=1024, clamp_floor=True)
    x = torch.randn(1, 2, 40, 64)
    assert not torch.allclose(fope(x, 100), clamp(x, 100), atol=1e-3)


def test_fourier_only_arm_with_sigma_zero_is_rope_and_with_sigma_mixes_every_frequency():
    # the paper's "w/o CF" arm: no clamp, every dimension pair a series over all head_dim/2 frequencies
    head_dim, train_len = 32, 64
    identity = FourierPositionEmbedding(head_dim, 2, train_len, sigma=0.0, clamp_floor=False)
    assert identity.inv_freq.numel() == 16 and identity.d_out == 16
    x = torch.randn(2, 2, 300, head_dim)
    assert torch.allclose(identity(x), RotaryPositionEmbedding(head_dim, train_len=train_len)(x), atol=1e-5)
    mixed = FourierPositionEmbedding(head_dim, 2, train_len, sigma=0.3, clamp_floor=False)
    assert mixed.sin_coef.shape == (2, 16, 16) and (mixed.sin_coef != torch.eye(16)).all()


def test_the_four_ablation_arms_are_named_config_files():
    from configurator import configure
    from model import GPT, GPTConfig
    import train
    arms = {}
    for name in ("laptop_rope", "laptop_clamp_only", "laptop_fourier_only", "laptop_fope"):
        cfg = configure(train.DEFAULTS, [f"config/{name}.py"])
        args = {f: cfg[f] for f in GPTConfig.__dataclass_fields__ if f in cfg}
        arms[name] = GPT(GPTConfig(**{**args, "block_size": 64, "n_layer": 1})).transformer.h[0].attn.rotary
    rope, clamp, fourier, fope = arms.values()
    assert type(rope) is RotaryPositionEmbedding and (rope.inv_freq > 0).all()
    assert type(clamp) is RotaryPositionEmbedding and (clamp.inv_freq == 0).sum() == 11  # 5 of 16 kept at 64
    assert isinstance(fourier, FourierPositionEmbedding) and fourier.inv_freq.numel() == 16 and fourier.sigma > 0
    assert isinstance(fope, FourierPositionEmbedding) and fope.inv_freq.numel() == 5 and fope.sigma > 0


# The official rule (get_step_eye in olmo/model.py): column i of (D, d_out) has a 1 at row i * ceil(D / d_out)
# when that row is < D. Written out for the official configs' shapes: (head_dim, L_train) -> (D, rows of the
# ones in columns 0, 1, ...); the columns after the listed ones have no 1.
OFFICIAL_STEP_IDENTITY = {
    (64, 512): (16, list(range(16))),
    (64, 1024): (18, [0, 2, 4, 6, 8, 10, 12, 14, 16]),
    (64, 2048): (21, [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20]),
    (64, 4096): (23, [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22]),
    (128, 512): (31, list(range(31))),
    (128, 1024): (36, [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34]),
    (128, 2048): (41, [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 40]),
    (128, 4096): (46, [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 40, 42, 44]),
}


@pytest.mark.parametrize("head_dim,train_len", list(OFFICIAL_STEP_IDENTITY))
def test_step_identity_puts_its_ones_where_the_official_code_does(head_dim, train_len):
    D, rows = OFFICIAL_STEP_IDENTITY[(head_dim, train_len)]
    pe = FourierPositionEmbedding(head_dim, 2, train_len, sigma=0.0)
    d_out = min(D, head_dim // 4)
    assert pe.sin_coef.shape == pe.cos_coef.shape == (2, D, d_out)
    expected = torch.zeros(D, d_out)
    expected[rows, list(range(len(rows)))] = 1.0
    for coef in (pe.sin_coef, pe.cos_coef):
        assert torch.equal(coef, expected.expand(2, D, d_out))


@pytest.mark.parametrize("zero_pad", ["official", "identity"])
@pytest.mark.parametrize("head_dim,train_len,fourier_dim", [(16, 32, None), (32, 64, None), (16, 32, 48)])
def test_fope_equals_plain_reference(zero_pad, head_dim, train_len, fourier_dim):
    torch.manual_seed(1)
    H = 3
    pe = FourierPositionEmbedding(head_dim, H, train_len, sigma=0.7, fourier_dim=fourier_dim, zero_pad=zero_pad)
    # random (not identity-like) coefficients, set after construction: the cache must follow them
    pe.sin_coef.copy_(torch.randn_like(pe.sin_coef))
    pe.cos_coef.copy_(torch.randn_like(pe.cos_coef))
    pe.reset_tables()
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
    expected_identity = torch.zeros(D, d_out)
    expected_identity[torch.arange(d_out) * 2, torch.arange(d_out)] = 1.0  # step ceil(64 / 32) = 2
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


# --- devices -----------------------------------------------------------------


@pytest.mark.parametrize("device,path", [("cpu", "c"), ("cuda", "eager"), ("cuda:1", "eager"),
                                         ("mps", "eager"), ("xpu", "eager"), ("meta", "eager")])
def test_only_cpu_tensors_take_the_c_kernel(device, path):
    assert rotation_path("c", device) == path
    assert rotation_path("eager", device) == "eager"
    assert rotation_path("compile", device) == "compile"


def test_a_gpu_run_never_builds_the_c_kernel(monkeypatch):
    import fope_ext
    monkeypatch.setattr(fope_ext, "available", lambda: pytest.fail("the C kernel was looked for off the CPU"))
    for backend in ("auto", "c"):
        assert rotation_path(backend, "cuda:0") == "eager"
    pe = FourierPositionEmbedding(32, 2, 64, backend="auto")  # construction looks for nothing either
    assert pe(torch.randn(1, 2, 8, 32, device="meta")).device.type == "meta"


def test_a_non_cpu_tensor_with_the_c_backend_runs_on_its_own_device(monkeypatch):
    import fope_ext
    monkeypatch.setattr(fope_ext, "rotate", lambda *a: pytest.fail("the CPU kernel got a non-CPU tensor"))
    pe = FourierPositionEmbedding(32, 2, 64, backend="c")
    y = pe(torch.empty(2, 2, 10, 32, device="meta"))  # meta: a device that is neither CPU nor CUDA
    assert y.device.type == "meta" and y.shape == (2, 2, 10, 32)


def test_position_tables_follow_the_module_to_its_device_and_are_never_saved():
    for pe in (RotaryPositionEmbedding(32, train_len=64), FourierPositionEmbedding(32, 2, 64)):
        assert pe.cos_cached is not None  # built once, at train_len
        assert not any("cached" in k for k in pe.state_dict())
        pe.to("meta")
        assert pe.cos_cached.device.type == pe.sin_cached.device.type == "meta"


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
