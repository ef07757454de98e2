"""How many pairs rotate (experiments/geometry.py): the geometry configs keep and rotate the stated pairs,
production FoPE (config/fope_production.py) equals the formula read out of vLLM's FourierRotaryEmbedding and
XTuner's FourierEmbedding and vLLM 0.33.0's own output on a fixed input, the padding arms differ exactly on the position-free pairs, the lens's new
measures on known inputs, and the quick pipeline end to end."""

import json
import math
from pathlib import Path

import pytest
import torch

from configurator import read_config_file
from experiments import geometry, runner
from experiments import lens_measures as measures
from fope import FourierPositionEmbedding, RotaryPositionEmbedding
from model import GPT, GPTConfig
from test_demo import PASSKEY_CHARS, experiment
from tinydata import write_random_chars

ROOT = Path(__file__).resolve().parent.parent


def model_config(*files, **overrides):
    """GPTConfig from config files read in order (as train.py reads them) and overrides."""
    args = {}
    for f in files:
        args.update(read_config_file(str(ROOT / f)))
    args.update(overrides)
    fields = GPTConfig.__dataclass_fields__
    return GPTConfig(**{k: v for k, v in args.items() if k in fields})


def rotating(rotary):
    return int((measures.pair_frequencies(rotary) != 0).sum())


# (config, theta, L_train): frequencies kept by the clamp D, pairs the paper's FoPE rotates, pairs production rotates
GEOMETRY_PAIRS = [
    (["config/ablate.py"], 5, 5, 5),  # make ablate: 5 of 16
    (["config/geometry_theta150.py"], 8, 8, 8),  # theta 150 at L_train 64: half, as the paper's 60M model
    (["config/geometry_L512.py"], 8, 8, 8),  # L_train 512 at theta 1e4: half
    (["config/geometry_theta50.py"], 10, 8, 10),  # theta 50 at L_train 64: D > head_dim/4, paper and production differ
]


@pytest.mark.parametrize("files, D, paper, production", GEOMETRY_PAIRS)
def test_geometry_configs_keep_and_rotate_the_stated_pairs(files, D, paper, production):
    c = model_config(*files, pos_emb="fope")
    assert c.n_embd // c.n_head == 32
    fope = GPT(c).transformer.h[0].attn.rotary
    assert fope.inv_freq.numel() == D and fope.d_out == paper and rotating(fope) == paper
    clamp = GPT(model_config(*files, pos_emb="fope", fope_fourier=False)).transformer.h[0].attn.rotary
    assert rotating(clamp) == D  # the clamp-only arm rotates exactly the kept frequencies
    prod = GPT(model_config(*files, "config/fope_production.py")).transformer.h[0].attn.rotary
    assert prod.inv_freq.numel() == D and prod.d_out == production and rotating(prod) == production


@pytest.mark.parametrize("theta, train_len, D", [(50.0, 64, 10), (1e4, 1024, 9)])
def test_production_rotates_every_kept_frequency_where_the_paper_caps_at_a_quarter(theta, train_len, D):
    # D > head_dim/4 = 8: the paper's code fills 8 pairs (its step identity reaches only 5 of them at D = 10:
    # rows 0, 2, 4, 6, 8), production one pair per kept frequency
    paper = FourierPositionEmbedding(32, 4, train_len, theta=theta, sigma=0.0)
    prod = FourierPositionEmbedding(32, 4, train_len, theta=theta, sigma=0.0, d_out_mode="kept", zero_pad="identity")
    assert paper.inv_freq.numel() == prod.inv_freq.numel() == D
    assert paper.d_out == 8 and prod.d_out == D
    # identity coefficients and identity padding: the clamp-only arm (RoPE on the kept frequencies) exactly
    assert torch.equal(prod.sin_coef[0], torch.eye(D))
    x = torch.randn(1, 4, 20, 32, dtype=torch.float64)
    rope = RotaryPositionEmbedding(32, theta=theta, train_len=train_len, clamp_floor=True)
    assert torch.allclose(prod(x.float()).double(), rope(x.float()).double(), atol=1e-5)
    assert rotating(prod) == D and rotating(paper) == 8


def vllm_rotate(query, key, inv_freq, sin_coef, cos_coef, head_size, pad_sin):
    """vLLM's FourierRotaryEmbedding (fope_sep_head=True) written out from reading it: positions t, tables
    sin = einsum("htD,hDd->thd", sin(t w), sin_coef) (cos likewise), padded to head_size/2 with pad_sin
    (sin) and 1 (cos), doubled (neox), and query (T, n_heads, hs) viewed as (T * n_kv, n_heads / n_kv, hs),
    so query head j uses key/value set j // (n_heads / n_kv)."""
    T = query.shape[0]
    freqs = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq[None, :].float()
    n_kv = sin_coef.shape[0]
    sin = torch.einsum("htD,hDd->thd", freqs.sin()[None].expand(n_kv, -1, -1), sin_coef.float())
    cos = torch.einsum("htD,hDd->thd", freqs.cos()[None].expand(n_kv, -1, -1), cos_coef.float())
    pad = head_size // 2 - sin.shape[-1]
    sin = torch.nn.functional.pad(sin, (0, pad), value=pad_sin)
    cos = torch.nn.functional.pad(cos, (0, pad), value=1.0)
    sin, cos = torch.cat((sin, sin), -1).flatten(0, 1)[:, None], torch.cat((cos, cos), -1).flatten(0, 1)[:, None]

    def neox(x):
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    out = []
    for x in (query, key):
        shape = x.shape
        x = x.reshape(T * n_kv, -1, head_size)
        out.append((x * cos + neox(x) * sin).reshape(shape))
    return out


@pytest.mark.parametrize("zero_pad, pad_sin", [("official", 1.0), ("identity", 0.0)])
def test_production_fope_equals_vllms_formula_with_gqa(zero_pad, pad_sin):
    # head_dim 32, theta 1e4, L_train 64: D = 5 kept (vLLM keeps w > 2 pi / L; none sits on the boundary);
    # 4 query heads on 2 key/value heads, so heads 0, 1 share set 0 and heads 2, 3 set 1
    torch.manual_seed(0)
    c = GPTConfig(block_size=64, n_head=4, n_kv_head=2, n_embd=128, pos_emb="fope", fope_sigma=0.5, fope_d_out="kept",
                  fope_kv_heads=True, fope_zero_pad=zero_pad, rotary_backend="eager")
    rotary = GPT(c).transformer.h[0].attn.rotary
    inv_freq = 1e4 ** (-torch.arange(0, 32, 2, dtype=torch.float64) / 32)
    inv_freq = inv_freq[inv_freq > 2 * math.pi / 64]
    assert torch.allclose(rotary.inv_freq, inv_freq) and rotary.sin_coef.shape == (2, 5, 5)
    assert not torch.equal(rotary.sin_coef[0], rotary.sin_coef[1])  # one draw per key/value head
    T = 40
    q = torch.randn(1, 4, T, 32)
    k = torch.randn(1, 2, T, 32).repeat_interleave(2, dim=1)  # as CausalSelfAttention.repeat_kv
    ours_q, ours_k = rotary(q), rotary(k)
    vq, vk = vllm_rotate(q[0].transpose(0, 1), k[0, ::2].transpose(0, 1), inv_freq, rotary.sin_coef, rotary.cos_coef, 32, pad_sin)
    assert torch.allclose(ours_q[0].transpose(0, 1), vq, atol=1e-5)
    assert torch.allclose(ours_k[0, ::2].transpose(0, 1), vk, atol=1e-5)


def test_production_coefficients_are_xtuners_init_and_shared_by_every_layer():
    torch.manual_seed(0)
    c = model_config("config/ablate.py", "config/fope_production.py", n_kv_head=2, n_layer=3)
    assert c.fope_sigma == 0.5 and c.fope_d_out == "kept" and c.fope_kv_heads and c.fope_share_layers
    m = GPT(c)
    rotaries = [b.attn.rotary for b in m.transformer.h]
    assert all(r is rotaries[0] for r in rotaries)  # one module: one set of coefficients for all layers
    coef = rotaries[0].sin_coef
    assert coef.shape == (2, 5, 5)  # (n_kv_head, D, D)
    # xavier-normal of gain 0.5 on (n_kv, D, D) (torch's fans: fan_in = D * D, fan_out = n_kv * D) plus the identity
    assert (coef - torch.eye(5)).abs().max() > 0
    # the fans, on a draw large enough to tell them apart: (4 sets, D, D) -> fan_in D * D, fan_out 4 * D
    big = FourierPositionEmbedding(256, 8, 4096, sigma=0.5, d_out_mode="kept", coef_heads=4).sin_coef
    D = big.shape[1]
    assert big.shape == (4, D, D) and D > 64
    expected = 0.5 * math.sqrt(2 / (D * D + 4 * D))
    assert abs((big - torch.eye(D)).std().item() / expected - 1) < 0.05
    # the state dict holds every layer's key (any checkpoint loads), and a load keeps them one module
    state = m.state_dict()
    assert torch.equal(state["transformer.h.2.attn.rotary.sin_coef"], state["transformer.h.0.attn.rotary.sin_coef"])
    other = GPT(c)
    other.load_state_dict(state)
    assert torch.equal(other.transformer.h[1].attn.rotary.sin_coef, coef)
    assert other.transformer.h[1].attn.rotary is other.transformer.h[0].attn.rotary
    with pytest.raises(ValueError, match="fope_share_layers is a knob of fope, not of rope: drop it or pass --pos_emb=fope"):
        GPTConfig(pos_emb="rope", fope_share_layers=True)
    with pytest.raises(ValueError, match="fope_d_out must be one of"):
        GPTConfig(fope_d_out="all")


@pytest.mark.parametrize("d_out", ["quarter", "kept"])
def test_the_padding_arms_differ_exactly_on_the_position_free_pairs_by_a_factor_two_in_q_dot_k(d_out):
    torch.manual_seed(0)
    official = FourierPositionEmbedding(32, 4, 64, theta=1e4, d_out_mode=d_out)
    identity = FourierPositionEmbedding(32, 4, 64, theta=1e4, d_out_mode=d_out, zero_pad="identity")
    identity.load_state_dict(official.state_dict())  # the same coefficients
    free = measures.free_pairs(official)
    assert int(free.sum()) == 2 * (16 - 5)  # 11 position-free pairs, both halves
    q, k = torch.randn(2, 4, 30, 32, dtype=torch.float64), torch.randn(2, 4, 30, 32, dtype=torch.float64)
    qo, ko, qi, ki = official(q.float()), official(k.float()), identity(q.float()), identity(k.float())
    assert torch.equal(qo[..., ~free], qi[..., ~free])  # the rotating pairs: the same
    assert not torch.allclose(qo[..., free], qi[..., free])
    assert torch.equal(qi[..., free], q.float()[..., free])  # identity: the free pairs pass through
    dot = lambda a, b: (a[..., free].double() * b[..., free].double()).sum(-1)  # noqa: E731
    assert torch.allclose(dot(qo, ko), 2 * dot(qi, ki), atol=1e-4)  # official = 2 x identity on those terms


def test_free_share_is_the_share_of_q_dot_k_carried_by_the_free_pairs():
    free = torch.tensor([False, True, False, True])  # hd 4: pair 1 (dims 1 and 3) free
    q = torch.tensor([1.0, 2.0, 0.0, 0.0]).expand(1, 1, 2, 4)
    k = torch.tensor([3.0, 1.0, 0.0, 0.0]).expand(1, 1, 2, 4)
    # every causal (i, j): s_free = 2 * 1 = 2, s_pos = 1 * 3 = 3
    assert measures.free_share(q, k, free).item() == pytest.approx(2 / 5)
    assert measures.free_share(q, k, torch.zeros(4, dtype=torch.bool)).item() == 0.0


def test_key_attention_is_the_softmax_weight_on_the_key_position():
    q = torch.zeros(1, 2, 6, 4)
    k = torch.zeros(1, 2, 6, 4)
    q[0, 0, 5, 0] = 10.0
    k[0, 0, 2, 0] = 1.0  # head 0: score 10 / 2 at key 2, 0 elsewhere
    w = measures.key_attention(q, k, torch.tensor([5]), torch.tensor([2]))
    assert w.shape == (1, 2)
    assert w[0, 0].item() == pytest.approx(math.exp(5) / (math.exp(5) + 5))
    assert w[0, 1].item() == pytest.approx(1 / 6)  # head 1: uniform over the 6 keys i <= 5
    assert measures.key_attention(q, k, torch.tensor([3]), torch.tensor([2]))[0, 1].item() == pytest.approx(1 / 4)


def test_geometry_arms_are_the_sections_arms_and_each_claim_names_two_arms():
    arms = geometry.arms()
    used = {arm for _, rows in geometry.SECTIONS.values() for _, arm in rows}
    assert used == set(arms)
    assert all(c.a in arms and c.b in arms for c in geometry.CLAIMS)
    assert arms["fope-prod"] == [runner.repo_path("config/fope_production.py")]
    assert set(geometry.geometry_arms("theta150")) == set(arms) - {"fope-kept"}
    assert set(geometry.geometry_arms("theta50")) == {"rope", "clamp-only", "fope", "fope-kept", "fope-prod"}


@pytest.mark.slow
def test_quick_geometry_runs_end_to_end(tmp_path):
    write_random_chars(tmp_path / "data", PASSKEY_CHARS, 40_000, 8_000)
    proc = experiment("geometry", tmp_path, "--geometries", "theta150", "theta50")
    for stage in ("1/5 data", "2/5 train theta150", "2/5 train theta50", "3/5 eval theta150", "4/5 lens", "5/5 write"):
        assert stage in proc.stdout
    results = tmp_path / "results" / "quick"
    doc = json.loads((results / "ablate_geometry.json").read_text())
    g = doc["geometries"]["theta150"]
    assert set(g["summary"]) == set(geometry.geometry_arms("theta150")) and g["info"]["train_len"] == 64
    assert g["lens"]["fope"]["rotating_pairs"] == 8 and g["lens"]["rope"]["rotating_pairs"] == 16
    assert g["lens"]["clamp-only"]["rotating_pairs"] == 8 and g["lens"]["rope"]["free_share"]["mean"] == 0
    assert 0 < g["lens"]["fope"]["free_share"]["mean"] < 1
    assert "served_1x_identity" in g["lens"]["fope-prod"] and "served_1x_identity" not in g["lens"]["fope-identity"]
    assert {c["section"] for c in g["claims"]} == {"parts", "production", "padding"}
    assert g["claim"]["fope vs rope, passkey at 4x"]["n"] == 2
    d = doc["geometries"]["theta50"]
    assert set(d["summary"]) == set(geometry.geometry_arms("theta50"))
    assert d["lens"]["fope"]["rotating_pairs"] == 8 and d["lens"]["fope-kept"]["rotating_pairs"] == 10
    assert {c["section"] for c in d["claims"]} == {"d_out"}
    report = (results / "ablate_geometry.md").read_text()
    assert "d_out = D" in report and "passkey 4x" in report and "Trained with the official padding" in report and "paired t" in report
    (results / "ablate_geometry.md").unlink()
    experiment("geometry", tmp_path, "--report_only")
    assert (results / "ablate_geometry.md").read_text() == report


# vLLM 0.33.0's own FourierRotaryEmbedding (its fope.py and rotate_neox from the wheel, run with a stand-in for
# its CustomOp base class and tensor-parallel helpers, outside this repo) on a fixed input: 4 query heads on
# 2 key/value heads, head_size 32, max_position_embeddings 64, fope_sep_head, the coefficients and q below.
# (position, query head, dim, vLLM's output); dims 15 and 31 are a position-free pair (sin padded with 1).
VLLM_OUTPUTS = {
    1e4: [(7, 3, 0, -0.623033), (7, 3, 20, -0.675534), (49, 1, 4, -1.086915), (49, 1, 9, 0.013500),
          (30, 2, 15, -1.440684), (30, 2, 31, 0.453229)],  # D = 5 kept
    50.0: [(7, 3, 0, -0.380292), (7, 3, 20, -0.786748), (49, 1, 4, -0.512844), (49, 1, 9, -0.847215),
           (30, 2, 15, -1.440684), (30, 2, 31, 0.453229)],  # D = 10 > head_dim/4: every kept frequency rotates
}


@pytest.mark.parametrize("theta", sorted(VLLM_OUTPUTS))
def test_production_fope_reproduces_vllms_output_on_a_fixed_input(theta):
    H, KV, hd, T = 4, 2, 32, 50
    rotary = FourierPositionEmbedding(hd, H, 64, theta=theta, sigma=0.5, d_out_mode="kept", coef_heads=KV)
    D = rotary.inv_freq.numel()
    assert rotary.d_out == D == {1e4: 5, 50.0: 10}[theta]
    h, i, j = torch.meshgrid(torch.arange(KV), torch.arange(D), torch.arange(D), indexing="ij")
    with torch.no_grad():
        rotary.sin_coef.copy_(0.1 * (h + 1) * torch.cos(i + 2.0 * j) + torch.eye(D))
        rotary.cos_coef.copy_(0.1 * (h + 1) * torch.sin(2.0 * i + j) + torch.eye(D))
    rotary.reset_tables()
    t, hh, d = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(hd), indexing="ij")
    q = torch.sin(0.3 * t + 0.7 * hh + 0.11 * d).float()  # (T, H, hd), vLLM's layout
    y = rotary(q.transpose(0, 1)[None])[0]  # (H, T, hd)
    for pos, head, dim, expected in VLLM_OUTPUTS[theta]:
        assert y[head, pos, dim].item() == pytest.approx(expected, abs=2e-5), (pos, head, dim)


def test_a_parent_run_carries_its_coefficients_into_production_fope_or_says_why_not():
    from checkpoint import load_parent_weights
    torch.manual_seed(0)
    parent = GPT(model_config("config/ablate.py", "config/fope_production.py", n_kv_head=2))
    # a longer block_size keeps more frequencies (D 5 -> 6 at 128): the shared module is resized once, from layer 0
    child = GPT(model_config("config/ablate.py", "config/fope_production.py", n_kv_head=2, block_size=128))
    load_parent_weights(child, parent.state_dict(), dataclasses_asdict(parent.config))
    rotary = child.transformer.h[0].attn.rotary
    assert all(b.attn.rotary is rotary for b in child.transformer.h)
    assert rotary.sin_coef.shape == (2, 6, 6)
    assert torch.equal(rotary.sin_coef[:, :5, :5], parent.transformer.h[0].attn.rotary.sin_coef)
    per_head = GPT(model_config("config/ablate.py", "config/fope_production.py", n_kv_head=2, fope_kv_heads=False))
    with pytest.raises(ValueError, match="4 FoPE coefficient sets .* where this model has 2: fope_kv_heads must be the parent's"):
        load_parent_weights(child, per_head.state_dict(), dataclasses_asdict(per_head.config))


def dataclasses_asdict(config):
    import dataclasses
    return dataclasses.asdict(config)
