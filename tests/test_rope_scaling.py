"""rope_scaling.py: the context-extension rescalings against their formulas and HF transformers' numbers."""

import math

import pytest
import torch

from fope import FourierPositionEmbedding, RotaryPositionEmbedding, rope_inv_freq
from rope_scaling import ROPE_SCALING, Rescaling, check_scaling, rescale_inv_freq


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
    pe = RotaryPositionEmbedding(head_dim, theta=theta, scaling={"type": "ntk", "factor": s}, train_len=128)
    new_base = theta * s ** (head_dim / (head_dim - 2))
    expected = RotaryPositionEmbedding(head_dim, theta=new_base, train_len=128)
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
    for bad, match in [({"type": "rotary2", "factor": 2.0}, "rope_type must be one of"),
                       ({"rope_type": "yarn", "factor": 2.0, "beta_fastest": 3}, "unknown keys"),
                       ({"rope_type": "llama3", "factor": 8.0}, "needs low_freq_factor"),
                       ({"rope_type": "longrope", "factor": 2.0}, "needs short_factor"),
                       ({"rope_type": "linear", "factor": 0.5}, "factor >= 1"),
                       ({"rope_type": "yarn", "factor": 2.0, "ramp": "log"}, "ramp must be")]:
        with pytest.raises(ValueError, match=match) as err:
            RotaryPositionEmbedding(64, scaling=bad, train_len=128)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="short_factor needs 32 values"):
        RotaryPositionEmbedding(64, scaling={"rope_type": "longrope", "short_factor": [1.0] * 4,
                                             "long_factor": [1.0] * 32}, train_len=128)


def test_a_new_rescaling_is_one_function_and_one_entry(monkeypatch):
    def divide(inv_freq, index, rot_dim, theta, scaling, seq_len):  # PI with a knob of its own
        return inv_freq / scaling["divisor"], 1.0

    def check(scaling):
        if not scaling.get("divisor", 0) > 0:
            raise ValueError("rope_scaling divide needs a divisor > 0")

    monkeypatch.setitem(ROPE_SCALING, "divide", Rescaling(divide, ("divisor",), needs_factor=False, check=check))
    cos, sin = rope_tables({"rope_type": "divide", "divisor": 4}, 400)  # a rotary module takes it as it is
    cos0, sin0 = rope_tables(None, 100)
    assert torch.allclose(cos[:, ::4], cos0, atol=1e-5) and torch.allclose(sin[:, ::4], sin0, atol=1e-5)
    with pytest.raises(ValueError, match="needs a divisor"):
        check_scaling({"rope_type": "divide"})
    with pytest.raises(ValueError, match="unknown keys"):
        check_scaling({"rope_type": "divide", "divisor": 2, "beta_fast": 32})


# Expected values from HF transformers 5.23's ROPE_INIT_FUNCTIONS (modeling_rope_utils.py), written out so
# these tests run without it; the full grid (head_dim, theta, original length, factor) was checked against
# transformers itself (see the README). (rope_scaling, head_dim, theta, seq_len) -> (inv_freq, attention_factor)
HF_EXPECTED = {
    "yarn_demo": (({"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 64}, 32, 1e4, None),
                  ([1.0, 0.46393159, 0.205548048, 0.0844682679, 0.0300000012, 0.0070292661, 0.00395284733,
                    0.00222284929, 0.00124999997, 0.000702926656, 0.000395284733, 0.000222284929, 0.000125000006,
                    7.02926627e-05, 3.95284733e-05, 2.22284925e-05], 1.2079441541679836)),
    "yarn_official_fope": (({"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 512}, 64, 1e4, None),
                           ([1.0, 0.749894202, 0.562341332, 0.421696514, 0.293422878, 0.202934861, 0.139355555,
                             0.0948851854, 0.0639423057, 0.0425420739, 0.0278467052, 0.0178410038, 0.0110983783,
                             0.00661248341, 0.00367625058, 0.00179512496, 0.000624999986, 0.000468683895,
                             0.000351463328, 0.000263560301, 0.000197642366, 0.000148210864, 0.000111142464,
                             8.33450904e-05, 6.2500003e-05, 4.68683866e-05, 3.51463314e-05, 2.63560305e-05,
                             1.97642366e-05, 1.48210866e-05, 1.11142463e-05, 8.3345094e-06], 1.2772588722239782)),
    "llama3": (({"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 64,
                 "low_freq_factor": 1.0, "high_freq_factor": 4.0}, 32, 5e5, None),
               ([1.0, 0.440366626, 0.079403013, 0.0106746377, 0.00470075384, 0.00207005511, 0.000911583134,
                 0.000401430763, 0.000176776681, 7.78465546e-05, 3.42810235e-05, 1.50962178e-05, 6.64786967e-06,
                 2.92749974e-06, 1.28917316e-06, 5.6770881e-07], 1.0)),
    "dynamic_4x": (({"rope_type": "dynamic", "factor": 4.0, "original_max_position_embeddings": 64}, 32, 1e4, 256),
                   ([1.0, 0.473954976, 0.224633351, 0.1064661, 0.0504601374, 0.0239158347, 0.0113350293,
                     0.00537229376, 0.00254622544, 0.00120679627, 0.000571967161, 0.000271086697, 0.00012848289,
                     6.08951123e-05, 2.88615411e-05, 1.36790723e-05], 1.0)),
    "longrope_past_original": (({"rope_type": "longrope", "factor": 4.0, "original_max_position_embeddings": 64,
                                 "short_factor": [1.0, 1.5, 2.0, 3.0], "long_factor": [1.0, 2.0, 4.0, 8.0]}, 8, 1e4, 65),
                               ([1.0, 0.0500000007, 0.00249999994, 0.000125000006], 1.1547005383792517)),
    "longrope_within_original": (({"rope_type": "longrope", "factor": 4.0, "original_max_position_embeddings": 64,
                                   "short_factor": [1.0, 1.5, 2.0, 3.0], "long_factor": [1.0, 2.0, 4.0, 8.0]}, 8, 1e4, 64),
                                 ([1.0, 0.0666666701, 0.00499999989, 0.00033333333], 1.1547005383792517)),
}


@pytest.mark.parametrize("case", list(HF_EXPECTED))
def test_rescaled_frequencies_and_attention_factor_equal_hf_transformers(case):
    (scaling, head_dim, theta, seq_len), (inv_freq, attention_factor) = HF_EXPECTED[case]
    got, got_factor = rescale_inv_freq(rope_inv_freq(head_dim, theta), torch.arange(head_dim // 2), head_dim,
                                       theta, check_scaling(scaling), seq_len)
    torch.testing.assert_close(got, torch.tensor(inv_freq, dtype=torch.float64), rtol=1e-6, atol=0)
    assert got_factor == pytest.approx(attention_factor, rel=1e-9)
    # the module's tables use exactly these frequencies and factor
    pe = RotaryPositionEmbedding(head_dim, theta=theta, scaling=scaling, train_len=scaling["original_max_position_embeddings"])
    cos, sin = pe.tables(0, seq_len or 2)
    torch.testing.assert_close(cos[0, 0], torch.full((head_dim // 2,), attention_factor, dtype=torch.float32))
    angle = torch.atan2(sin[0, 1], cos[0, 1]).double()
    torch.testing.assert_close(angle, torch.tensor(inv_freq, dtype=torch.float64), rtol=1e-5, atol=1e-7)


def test_hf_spelled_and_short_rope_scaling_dicts_are_the_same_rescaling():
    hf = {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 512, "attention_factor": 1.0,
          "beta_fast": 32, "beta_slow": 1, "truncate": True}
    short = {"type": "yarn", "factor": 16.0, "original_len": 512, "attn_temperature": False}
    a, b = RotaryPositionEmbedding(64, scaling=hf, train_len=1024), RotaryPositionEmbedding(64, scaling=short, train_len=1024)
    for got, want in zip(a.tables(0, 300), b.tables(0, 300)):
        assert torch.equal(got, want)
    for key in ("mscale", "mscale_all_dim"):  # DeepSeek's spelling of the attention factor is read too
        check_scaling({"rope_type": "yarn", "factor": 4.0, key: 1.0})


def test_yarn_ramps_over_frequency_indices_by_default_and_over_rotations_on_request():
    # head_dim 64, L_orig 512, s 16: the index ramp runs between the correction dims floor(3.25) = 3 and
    # ceil(15.29) = 16 (d(beta) = 64 ln(512 / (2 pi beta)) / (2 ln 1e4)); the ratio ramp between r = 1 and 32
    s, orig, head_dim = 16.0, 512, 64
    base = rope_inv_freq(head_dim)
    index = torch.arange(head_dim // 2)
    scaling = check_scaling({"rope_type": "yarn", "factor": s, "original_max_position_embeddings": orig})
    by_index, _ = rescale_inv_freq(base, index, head_dim, 1e4, scaling)
    keep = 1 - ((index - 3) / 13).clamp(0, 1).double()
    torch.testing.assert_close(by_index, keep * base + (1 - keep) * base / s)
    by_ratio, _ = rescale_inv_freq(base, index, head_dim, 1e4, {**scaling, "ramp": "ratio"})
    r = orig * base / (2 * math.pi)
    keep = ((r - 1) / 31).clamp(0, 1)
    torch.testing.assert_close(by_ratio, keep * base + (1 - keep) * base / s)
    assert (by_index - by_ratio).abs().max() / base.max() > 0.01  # they are different rescalings


def test_fope_yarn_after_the_clamp_follows_the_official_formula():
    # the official continued-training arm (configs/c4/length-1024/ce-extra/x+yarn, 60M FoPE): head_dim 64,
    # max_sequence_length 1024 (the clamp), len_extra_orig_length 512, yarn scale 16, betas 32 / 1, no
    # temperature. Its extra_yarn ramps over all 32 indices (low floor(3.25) = 3, high ceil(15.29) = 16) and
    # keeps the clamped zeros at zero; the 18 frequencies that survive the clamp at 1024 are m = 0 .. 17:
    #   w_m = theta^(-m/32), keep_m = 1 - clamp((m - 3) / 13, 0, 1), w'_m = keep_m w_m + (1 - keep_m) w_m / 16
    pe = FourierPositionEmbedding(64, 2, 1024, sigma=0.0, scaling={"rope_type": "yarn", "factor": 16.0,
                                  "original_max_position_embeddings": 512, "attention_factor": 1.0})
    got, factor = rescale_inv_freq(pe.inv_freq, pe.freq_index, pe.rot_dim, pe.theta, pe.scaling)
    m = torch.arange(18, dtype=torch.float64)
    w = 10000.0 ** (-m / 32)
    keep = 1 - ((m - 3) / 13).clamp(0, 1)
    torch.testing.assert_close(got, keep * w + (1 - keep) * w / 16)
    assert factor == 1.0


def test_dynamic_ntk_leaves_sequences_within_the_original_length_unscaled_whatever_came_before():
    plain = RotaryPositionEmbedding(32, train_len=128)
    pe = RotaryPositionEmbedding(32, scaling={"rope_type": "dynamic", "factor": 2.0,
                                              "original_max_position_embeddings": 200}, train_len=128)
    pe.tables(0, 150)  # the cache doubles to 256, past the original length
    pe.tables(0, 300)  # a sequence past the original length: its own rescaled tables
    for got, want in zip(pe.tables(0, 160), plain.tables(0, 160)):
        torch.testing.assert_close(got, want)
    fresh = RotaryPositionEmbedding(32, scaling={"rope_type": "dynamic", "factor": 2.0,
                                                 "original_max_position_embeddings": 200}, train_len=128)
    for got, want in zip(fresh.tables(0, 150), plain.tables(0, 150)):  # first call past train_len
        torch.testing.assert_close(got, want)


def test_learnable_fope_with_dynamic_ntk_follows_every_optimizer_step():
    torch.manual_seed(0)
    pe = FourierPositionEmbedding(32, 2, 64, learnable=True,
                                  scaling={"rope_type": "dynamic", "factor": 2.0})
    opt = torch.optim.SGD(pe.parameters(), lr=0.1)
    x = torch.randn(1, 2, 100, 32)
    for _ in range(2):  # a second backward through fresh tables, not a cached graph
        before = pe(x)
        before.square().sum().backward()
        opt.step()
        opt.zero_grad()
    assert not torch.allclose(pe(x), before.detach())  # the tables follow the new coefficients




def test_a_rescaling_refuses_a_module_that_does_not_declare_ropes_ladder():
    """A power-law ladder w_m = theta^-(2m/d)^p is not RoPE's: YaRN's correction dimensions (and every other
    rescaling by the index m) would be RoPE's, silently. Refused in one line, unless the module declares it."""
    from fope import RotaryEmbedding

    class PowerLadder(RotaryEmbedding):
        def __init__(self, head_dim, power, scaling=None):
            super().__init__()
            m = torch.arange(head_dim // 2, dtype=torch.float64)
            self.head_dim, self.theta, self.train_len, self.rot_dim = head_dim, 1e4, 64, head_dim
            self.register_buffer("inv_freq", 1e4 ** -((2 * m / head_dim) ** power), persistent=False)
            self.register_buffer("freq_index", m.long(), persistent=False)
            self.configure(scaling, "eager")
            self.reset_tables()

    PowerLadder(16, 0.5)  # without rope_scaling it is fine
    with pytest.raises(ValueError, match=r"rope_scaling 'yarn' .* PowerLadder does not declare that ladder "
                                         r"\(rope_ladder = True\): drop rope_scaling") as err:
        PowerLadder(16, 0.5, scaling={"rope_type": "yarn", "factor": 4.0})
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="RotaryPositionEmbedding does not declare that ladder"):  # rope-a
        RotaryPositionEmbedding(16, train_len=64, whole_cycles=True, scaling={"rope_type": "linear", "factor": 2.0})
    RotaryPositionEmbedding(16, train_len=64, clamp_floor=True, scaling={"rope_type": "linear", "factor": 2.0})
