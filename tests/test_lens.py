"""lens.py on inputs with a known answer: planted means, pure and mixed cosines, Fig. 8's closed form,
and scores that must be exactly what each position embedding's layer attends with."""

import json
import math

import numpy as np
import pytest
import torch

import lens
import train
from tinydata import write_random_chars
from fope import FourierPositionEmbedding, RotaryPositionEmbedding
from model import GPT, GPTConfig

L, HD = 64, 32  # the demo's training length and head_dim
POS_EMBS = {"learned": {"pos_emb": "learned"}, "nope": {"pos_emb": "nope"}, "rope": {"pos_emb": "rope"},
            "fope": {"pos_emb": "fope"}, "clamp-only": {"pos_emb": "fope", "fope_fourier": False},
            "alibi": {"pos_emb": "alibi"}}


def tiny_gpt(seed=0, **kwargs):
    torch.manual_seed(seed)
    config = GPTConfig(block_size=16, vocab_size=11, n_layer=2, n_head=2, n_embd=16, rotary_backend="eager", **kwargs)
    return GPT(config).eval()


# -----------------------------------------------------------------------------
# 1. undertrained dimensions


def test_probe_reads_a_planted_per_dimension_mean_of_q_and_k():
    model = tiny_gpt(pos_emb="rope", bias=True)
    attn, C = model.transformer.h[1].attn, 16
    planted = torch.randn(3 * C)
    with torch.no_grad():
        attn.c_attn.weight.zero_()
        attn.c_attn.bias.copy_(planted)  # q and k are the bias at every token
    q, k = lens.QKProbe(model)(torch.randint(0, 11, (3, 16)))[1]
    mu_q, mu_k = planted[:C].view(2, 8), planted[C:2 * C].view(2, 8)  # (H, hd)
    assert torch.allclose(q, mu_q[None, :, None, :].expand_as(q)) and torch.allclose(k, mu_k[None, :, None, :].expand_as(k))
    expected = torch.sqrt(mu_q[:, :4] ** 2 + mu_q[:, 4:] ** 2)  # pair m = dims m and m + hd/2
    assert torch.allclose(lens.pair_mean_norms(q).float(), expected, atol=1e-6)


def test_pair_mean_norms_finds_a_planted_mean_under_unit_noise():
    g = torch.Generator().manual_seed(0)
    mu = torch.zeros(2, HD)
    mu[:, 12], mu[:, 12 + HD // 2] = 0.6, 0.8  # pair 12: |mean| 1; every other pair 0
    x = mu[None, :, None, :] + torch.randn(64, 2, 128, HD, generator=g)
    norms = lens.pair_mean_norms(x)
    assert torch.allclose(norms[:, 12], torch.ones(2, dtype=torch.float64), atol=0.02)
    assert norms[:, [m for m in range(HD // 2) if m != 12]].max() < 0.05  # noise: sd 0.011 per coordinate


def test_pair_frequencies_of_rope_clamp_only_and_fope():
    rope = RotaryPositionEmbedding(HD, train_len=L)
    clamp = RotaryPositionEmbedding(HD, train_len=L, clamp_floor=True)
    fope = FourierPositionEmbedding(HD, 4, L)
    r_rope = lens.cycles(lens.pair_frequencies(rope, HD), L)
    assert torch.allclose(r_rope, lens.cycles(10000.0 ** (-torch.arange(0, HD, 2, dtype=torch.float64) / HD), L))
    assert (r_rope < 1).sum() == 11  # head_dim 32 at L_train 64: 11 of 16 pairs never turn a full cycle
    r_clamp = lens.cycles(lens.pair_frequencies(clamp, HD), L)
    assert torch.equal(r_clamp[:5], r_rope[:5]) and (r_clamp[5:] == 0).all()
    r_fope = lens.cycles(lens.pair_frequencies(fope, HD), L)
    assert torch.allclose(r_fope[:5], r_rope[:5]) and (r_fope[5:] == 0).all()  # d_out = 5 kept, the rest position-free
    assert torch.allclose(lens.own_frequencies(fope), lens.own_frequencies(clamp))
    assert lens.pair_frequencies(None, HD) is None and len(lens.own_frequencies(None)) == 0


# -----------------------------------------------------------------------------
# 2. distance


def test_mean_by_distance_and_far_mass_on_known_matrices():
    T = 40
    pos = torch.arange(T, dtype=torch.float64)
    distance = pos[:, None] - pos[None, :]
    masked = distance.masked_fill(distance < 0, float("-inf"))  # -inf above the diagonal is ignored
    assert torch.allclose(lens.mean_by_distance(masked), pos)
    uniform = torch.softmax(masked.masked_fill(distance >= 0, 0.0), dim=-1)  # query i: 1 / (i + 1) on each key
    assert torch.allclose(lens.mean_by_distance(uniform)[T - 1], torch.tensor(1 / T, dtype=torch.float64))
    # the last 8 queries, keys farther than 8: (i - 8 + 1) of the i + 1 keys
    expected = np.mean([(i - 8 + 1) / (i + 1) for i in range(T - 8, T)])
    assert float(lens.far_mass(uniform, 8)) == pytest.approx(expected)
    assert float(lens.far_mass(uniform[:8, :8], 8)) == 0.0


# -----------------------------------------------------------------------------
# 3. spectrum and leakage


def own(kind):
    module = RotaryPositionEmbedding(HD, train_len=L) if kind == "rope" else FourierPositionEmbedding(HD, 4, L)
    return lens.own_frequencies(module)


@pytest.mark.parametrize("kind", ["rope", "fope"])
def test_a_cosine_at_an_own_frequency_has_no_leakage(kind):
    d = torch.arange(L, dtype=torch.float64)
    for w in own(kind)[-5:]:  # the five frequencies that turn >= 1 cycle, kept by both
        for phase in (0.0, 1.0, 2.5):
            result = lens.leakage(3.0 + 2.0 * torch.cos(w * d + phase), own(kind))
            assert result["leakage"] < 1e-6
    # on the DFT grid a cosine at r = 5.73 puts > 5% of its energy in bins more than one bin from r (the
    # rectangular window's sidelobes): the reason lens.py projects onto the exact frequencies instead
    w = own(kind)[-2]
    power, r = lens.power_spectrum(torch.cos(w * d)), float(lens.cycles(w, L))
    far = (torch.arange(len(power)) - r).abs() >= 1
    assert power[far].sum() / power.sum() > 0.05


@pytest.mark.parametrize("kind", ["rope", "fope"])
@pytest.mark.parametrize("share", [0.1, 0.5])
def test_leakage_is_the_share_of_a_mixed_in_foreign_frequency(kind, share):
    d = torch.arange(L, dtype=torch.float64)
    w_own, w_foreign = own(kind)[-2], 2 * math.pi * 20 / L  # 20 cycles: far from every own r (<= 10.2)
    curve = math.sqrt(1 - share) * torch.cos(w_own * d + 0.3) + math.sqrt(share) * torch.cos(w_foreign * d + 1.1)
    assert lens.leakage(curve, own(kind))["leakage"] == pytest.approx(share, abs=0.02)


def test_rope_owns_a_slow_trend_through_its_r_below_one_frequencies_and_fope_does_not():
    d = torch.arange(L, dtype=torch.float64)
    decay = -0.05 * d  # a ramp within L_train, as an undertrained frequency looks
    rope, fope = lens.leakage(decay, own("rope")), lens.leakage(decay, own("fope"))
    assert rope["leakage"] < 0.01 < 0.1 < fope["leakage"]
    assert rope["own_rank"] > fope["own_rank"] == 10  # so chance levels differ, and are reported
    assert fope["chance_leakage"] == pytest.approx(1 - 10 / (L - 1))
    assert lens.leakage(decay, torch.zeros(0, dtype=torch.float64)) is None  # no frequencies: no leakage


# -----------------------------------------------------------------------------
# 4. the paper's Fig. 8


def test_fig8_sampled_curve_matches_its_closed_form_at_mu_zero_and_one():
    rope = RotaryPositionEmbedding(HD, backend="eager")
    g = torch.Generator().manual_seed(0)
    for mu in (0.0, 1.0):
        mean, se = lens.sampled_score(rope, mu, 4 * L, 2000, g)
        closed = lens.rope_closed_form(HD, 10000.0, mu, 4 * L)
        assert ((mean - closed).abs() <= 5 * se).all()
    assert lens.rope_closed_form(HD, 10000.0, 0.0, 4 * L).abs().max() == 0  # the decay vanishes at mu = 0
    assert lens.rope_closed_form(HD, 10000.0, 1.0, 0)[0] == pytest.approx(HD)  # 2 mu^2 per pair at d = 0


def test_expected_score_with_given_means_is_the_closed_form():
    rope = RotaryPositionEmbedding(HD, backend="eager")
    for mu in (0.1, 1.0):
        means = torch.full((1, HD), mu)
        expected = lens.expected_score(rope, means, means, 3 * L, L)
        assert torch.allclose(expected, lens.rope_closed_form(HD, 10000.0, mu, 3 * L), atol=1e-4 * max(1, mu ** 2 * HD))


# -----------------------------------------------------------------------------
# the scores are the layer's own, causal, inside and past block_size, for every position embedding


@pytest.mark.parametrize("name", list(POS_EMBS))
def test_scores_are_what_each_layer_attends_with_causally_and_past_block_size(name):
    model = tiny_gpt(seed=1, **POS_EMBS[name])
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0)  # sharper attention than at init, so a wrong score shows
    outputs = {}
    hooks = [block.attn.c_proj.register_forward_pre_hook(
        lambda m, args, layer=layer: outputs.__setitem__(layer, args[0])) for layer, block in enumerate(model.transformer.h)]
    values = {}
    hooks += [block.attn.c_attn.register_forward_hook(
        lambda m, args, out, layer=layer: values.__setitem__(layer, out.split(16, dim=2)[2]))
        for layer, block in enumerate(model.transformer.h)]
    probe = lens.QKProbe(model)
    lengths = [16] if name == "learned" else [16, 48]  # 48: three times block_size
    for T in lengths:
        idx = torch.randint(0, 11, (2, T), generator=torch.Generator().manual_seed(T))
        for layer, (q, k) in enumerate(probe(idx)):
            scores = lens.attention_scores(model.transformer.h[layer].attn, q, k, getattr(model.transformer, "pos_bias", None))
            weights = torch.softmax(scores, dim=-1)
            assert (weights.triu(1) == 0).all()  # causal: no weight on a later key
            v = values[layer].view(2, T, 2, 8).transpose(1, 2)
            y = (weights @ v).transpose(1, 2).reshape(2, T, 16)
            assert torch.allclose(y, outputs[layer], atol=1e-4), f"{name}, T={T}, layer {layer}"
    if name == "learned":
        with pytest.raises(ValueError, match="block_size"):
            probe(torch.zeros(1, 48, dtype=torch.long))
    for h in hooks:
        h.remove()


# -----------------------------------------------------------------------------
# the command, on tiny checkpoints written by train.py


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("lens")
    data_dir = write_random_chars(root / "data", "abcdefghijklmnopqrst", 20000, 6000)
    runs = {"rope_s1": ["--pos_emb=rope", "--seed=1"], "rope_s2": ["--pos_emb=rope", "--seed=2"],
            "fope_s1": ["--pos_emb=fope"], "clamp_s1": ["--pos_emb=fope", "--fope_fourier=False"],
            "alibi_s1": ["--pos_emb=alibi"], "nope_s1": ["--pos_emb=nope"], "learned_s1": ["--pos_emb=learned"]}
    for name, flags in runs.items():
        train.main([f"--dataset={data_dir}", f"--out_dir={root / name}", "--n_layer=2", "--n_head=2", "--n_embd=32",
                    "--block_size=32", "--batch_size=4", "--max_iters=2", "--eval_interval=2", "--eval_iters=1",
                    "--rotary_backend=eager", *flags])
    return root, data_dir, list(runs)


def test_lens_writes_figures_json_and_report_for_every_pos_emb(ckpts, tmp_path):
    root, data_dir, names = ckpts
    out = tmp_path / "lens"
    lens.main(["--ckpt", *[str(root / n) for n in names], "--data_dir", str(data_dir), "--out", str(out),
               "--windows", "16", "--long_windows", "2", "--max_multiple", "3", "--draws", "50", "--per_head"])
    for name in ("lens_dims.png", "lens_distance.png", "lens_spectrum.png", "lens_fig8.png", "lens.md"):
        assert (out / name).stat().st_size > 0
    result = json.loads((out / "lens.json").read_text())
    by_name = {r["ckpt"].split("/")[-1]: r for r in result["checkpoints"]}
    assert by_name["rope_s1"]["label"] == by_name["rope_s2"]["label"]  # seeds of one run
    assert result["summary"][by_name["rope_s1"]["label"]]["layers"][0]["leakage"]["n"] == 2
    for name in ("rope_s1", "fope_s1", "clamp_s1"):
        r = by_name[name]
        assert all(0 <= x <= 1 for x in r["leakage"]) and len(r["spectrum"][0]) == 32 // 2 + 1
        assert len(r["score_by_distance"][1]) == 96 and len(r["expected_score_measured"][0]) == 96
        assert len(r["score_by_distance_per_head"][0]) == 2
    assert by_name["clamp_s1"]["own_r"] == by_name["fope_s1"]["own_r"] and len(by_name["rope_s1"]["own_r"]) == 8
    for name in ("alibi_s1", "nope_s1", "learned_s1"):
        assert by_name[name]["leakage"] == [None, None] and by_name[name]["pair_r"] is None
    # learned positions stop at block_size: the long view is skipped and said so, the rest is measured
    learned = by_name["learned_s1"]
    assert "score_by_distance" not in learned and "block_size" in learned["note"]
    assert len(learned["qk_mean"]["q"]) == 2 and "block_size" in (out / "lens.md").read_text()
    assert all(len(r["weight_by_distance"][0]) == 96 for n, r in by_name.items() if n != "learned_s1")


def test_lens_rejects_bad_flags_and_a_repeated_checkpoint_in_one_line(ckpts, tmp_path):
    root, data_dir, _ = ckpts
    with pytest.raises(SystemExit, match="--windows must be at least 1"):
        lens.main(["--ckpt", str(root / "rope_s1"), "--windows", "0"])
    with pytest.raises(SystemExit, match="twice"):
        lens.main(["--ckpt", str(root / "rope_s1"), str(root / "rope_s1"), "--data_dir", str(data_dir)])
    with pytest.raises(SystemExit, match="no checkpoint"):
        lens.main(["--ckpt", str(tmp_path / "nothing"), "--data_dir", str(data_dir)])
