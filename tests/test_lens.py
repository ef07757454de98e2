"""The lens (experiments/lens.py, experiments/lens_measures.py) on inputs with a known answer: planted
means, pure and mixed cosines, Fig. 8's closed form, scores that must be exactly what each position
embedding's layer attends with (a custom rotary module that keeps only the contract included), and the
command on tiny checkpoints trained into tmp_path."""

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import model as model_module
import train
from data.shards import TokenShards
from experiments import lens, runner
from experiments import lens_measures as measures
from fope import FourierPositionEmbedding, RotaryPositionEmbedding
from model import GPT, GPTConfig, PositionEmbedding
from tinydata import write_random_chars

L, HD = 64, 32  # the demo's training length and head_dim
VARIANTS = {"learned": {"pos_emb": "learned"}, "nope": {"pos_emb": "nope"}, "rope": {"pos_emb": "rope"},
            "fope": {"pos_emb": "fope"}, "clamp-only": {"pos_emb": "fope", "fope_fourier": False},
            "alibi": {"pos_emb": "alibi"}, "t5": {"pos_emb": "t5"}, "fire": {"pos_emb": "fire"},
            "kerple": {"pos_emb": "kerple"}}


class ThetaRope(nn.Module):
    """RoPE at theta 500 in a few lines: a rotary module that keeps only the contract (head_dim, inv_freq,
    pair_frequencies(), forward(x, offset=0, norm=False)), not a fope.RotaryEmbedding."""

    def __init__(self, head_dim, theta=500.0):
        super().__init__()
        self.head_dim = head_dim
        inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def pair_frequencies(self):
        return self.inv_freq.double().cpu()

    def forward(self, x, offset=0, norm=False):
        if norm:
            x = F.layer_norm(x, x.shape[-1:])
        pos = torch.arange(offset, offset + x.shape[2], dtype=torch.float64, device=x.device)
        angle = pos[:, None] * self.inv_freq.to(x.device)[None, :]
        cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)  # the rotate-half layout: pair m is dims m and m + head_dim/2
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


@pytest.fixture
def theta_rope(monkeypatch):
    """pos_emb "rope500": ThetaRope in every layer, registered in model.POS_EMBS for one test."""
    monkeypatch.setitem(model_module.POS_EMBS, "rope500",
                        PositionEmbedding("rotary", lambda c: ThetaRope(c.n_embd // c.n_head)))
    return "rope500"


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
    q, k = measures.QKProbe(model)(torch.randint(0, 11, (3, 16)))[1]
    mu_q, mu_k = planted[:C].view(2, 8), planted[C:2 * C].view(2, 8)  # (H, hd)
    assert torch.allclose(q, mu_q[None, :, None, :].expand_as(q)) and torch.allclose(k, mu_k[None, :, None, :].expand_as(k))
    expected = torch.sqrt(mu_q[:, :4] ** 2 + mu_q[:, 4:] ** 2)  # pair m = dims m and m + hd/2
    assert torch.allclose(measures.pair_mean_norms(q).float(), expected, atol=1e-6)


def test_pair_norms_is_the_length_of_each_pairs_mean_vector():
    mean = torch.zeros(2, 8, dtype=torch.float64)
    mean[0, 1], mean[0, 5], mean[1, 3] = 3.0, 4.0, -2.0  # head 0, pair 1: (3, 4); head 1, pair 3: (-2, 0)
    expected = torch.zeros(2, 4, dtype=torch.float64)
    expected[0, 1], expected[1, 3] = 5.0, 2.0
    assert torch.equal(measures.pair_norms(mean), expected)
    x = torch.randn(3, 2, 7, 8)
    assert torch.equal(measures.pair_mean_norms(x), measures.pair_norms(x.double().mean(dim=(0, 2))))


def test_pair_mean_norms_finds_a_planted_mean_under_unit_noise():
    g = torch.Generator().manual_seed(0)
    mu = torch.zeros(2, HD)
    mu[:, 12], mu[:, 12 + HD // 2] = 0.6, 0.8  # pair 12: |mean| 1; every other pair 0
    x = mu[None, :, None, :] + torch.randn(64, 2, 128, HD, generator=g)
    norms = measures.pair_mean_norms(x)
    assert torch.allclose(norms[:, 12], torch.ones(2, dtype=torch.float64), atol=0.02)
    assert norms[:, [m for m in range(HD // 2) if m != 12]].max() < 0.05  # noise: sd 0.011 per coordinate


def test_pair_frequencies_of_rope_clamp_only_and_fope():
    rope = RotaryPositionEmbedding(HD, train_len=L)
    clamp = RotaryPositionEmbedding(HD, train_len=L, clamp_floor=True)
    fope = FourierPositionEmbedding(HD, 4, L)
    r_rope = measures.cycles(measures.pair_frequencies(rope), L)
    assert torch.allclose(r_rope, measures.cycles(10000.0 ** (-torch.arange(0, HD, 2, dtype=torch.float64) / HD), L))
    assert (r_rope < 1).sum() == 11  # head_dim 32 at L_train 64: 11 of 16 pairs never turn a full cycle
    r_clamp = measures.cycles(measures.pair_frequencies(clamp), L)
    assert torch.equal(r_clamp[:5], r_rope[:5]) and (r_clamp[5:] == 0).all()
    r_fope = measures.cycles(measures.pair_frequencies(fope), L)
    assert torch.allclose(r_fope[:5], r_rope[:5]) and (r_fope[5:] == 0).all()  # d_out = 5 kept, the rest position-free
    assert torch.allclose(measures.own_frequencies(fope), measures.own_frequencies(clamp))
    for module in (rope, clamp, fope):  # the lens reads the module's own method (the rotary contract)
        assert torch.equal(measures.pair_frequencies(module), module.pair_frequencies())
    assert measures.pair_frequencies(None) is None and len(measures.own_frequencies(None)) == 0


def test_pair_frequencies_of_a_contract_only_module_and_a_wrong_shape():
    module = ThetaRope(HD)
    assert torch.equal(measures.pair_frequencies(module), 500.0 ** (-torch.arange(0, HD, 2, dtype=torch.float64) / HD))
    assert torch.equal(measures.own_frequencies(module), module.inv_freq.flip(0))  # distinct, ascending
    module.pair_frequencies = lambda: torch.zeros(HD)  # one per dimension, not per pair
    with pytest.raises(ValueError, match="head_dim//2"):
        measures.pair_frequencies(module)


# -----------------------------------------------------------------------------
# 2. distance


def test_mean_by_distance_and_far_mass_on_known_matrices():
    T = 40
    pos = torch.arange(T, dtype=torch.float64)
    distance = pos[:, None] - pos[None, :]
    masked = distance.masked_fill(distance < 0, float("-inf"))  # -inf above the diagonal is ignored
    assert torch.allclose(measures.mean_by_distance(masked), pos)
    uniform = torch.softmax(masked.masked_fill(distance >= 0, 0.0), dim=-1)  # query i: 1 / (i + 1) on each key
    assert torch.allclose(measures.mean_by_distance(uniform)[T - 1], torch.tensor(1 / T, dtype=torch.float64))
    # the last 8 queries, keys farther than 8: (i - 8 + 1) of the i + 1 keys
    expected = np.mean([(i - 8 + 1) / (i + 1) for i in range(T - 8, T)])
    assert float(measures.far_mass(uniform, 8)) == pytest.approx(expected)
    assert float(measures.far_mass(uniform[:8, :8], 8)) == 0.0


# -----------------------------------------------------------------------------
# 3. spectrum and leakage


def own(kind):
    module = RotaryPositionEmbedding(HD, train_len=L) if kind == "rope" else FourierPositionEmbedding(HD, 4, L)
    return measures.own_frequencies(module)


@pytest.mark.parametrize("kind", ["rope", "fope"])
def test_a_cosine_at_an_own_frequency_has_no_leakage(kind):
    d = torch.arange(L, dtype=torch.float64)
    for w in own(kind)[-5:]:  # the five frequencies that turn >= 1 cycle, kept by both
        for phase in (0.0, 1.0, 2.5):
            result = measures.leakage(3.0 + 2.0 * torch.cos(w * d + phase), own(kind))
            assert result["leakage"] < 1e-6
    # on the DFT grid a cosine at r = 5.73 puts > 5% of its energy in bins more than one bin from r (the
    # rectangular window's sidelobes): the reason lens.py projects onto the exact frequencies instead
    w = own(kind)[-2]
    power, r = measures.power_spectrum(torch.cos(w * d)), float(measures.cycles(w, L))
    far = (torch.arange(len(power)) - r).abs() >= 1
    assert power[far].sum() / power.sum() > 0.05


@pytest.mark.parametrize("kind", ["rope", "fope"])
@pytest.mark.parametrize("share", [0.1, 0.5])
def test_leakage_is_the_share_of_a_mixed_in_foreign_frequency(kind, share):
    d = torch.arange(L, dtype=torch.float64)
    w_own, w_foreign = own(kind)[-2], 2 * math.pi * 20 / L  # 20 cycles: far from every own r (<= 10.2)
    curve = math.sqrt(1 - share) * torch.cos(w_own * d + 0.3) + math.sqrt(share) * torch.cos(w_foreign * d + 1.1)
    assert measures.leakage(curve, own(kind))["leakage"] == pytest.approx(share, abs=0.02)


def test_rope_owns_a_slow_trend_through_its_r_below_one_frequencies_and_fope_does_not():
    d = torch.arange(L, dtype=torch.float64)
    decay = -0.05 * d  # a ramp within L_train, as an undertrained frequency looks
    rope, fope = measures.leakage(decay, own("rope")), measures.leakage(decay, own("fope"))
    assert rope["leakage"] < 0.01 < 0.1 < fope["leakage"]
    assert rope["own_rank"] > fope["own_rank"] == 10  # so chance levels differ, and are reported
    assert fope["chance_leakage"] == pytest.approx(1 - 10 / (L - 1))
    assert measures.leakage(decay, torch.zeros(0, dtype=torch.float64)) is None  # no frequencies: no leakage


# -----------------------------------------------------------------------------
# 4. the paper's Fig. 8


def test_fig8_sampled_curve_matches_its_closed_form_at_mu_zero_and_one():
    rope = RotaryPositionEmbedding(HD, backend="eager")
    g = torch.Generator().manual_seed(0)
    for mu in (0.0, 1.0):
        mean, se = measures.sampled_score(rope, mu, 4 * L, 2000, g)
        closed = measures.rope_closed_form(HD, 10000.0, mu, 4 * L)
        assert ((mean - closed).abs() <= 5 * se).all()
    assert measures.rope_closed_form(HD, 10000.0, 0.0, 4 * L).abs().max() == 0  # the decay vanishes at mu = 0
    assert measures.rope_closed_form(HD, 10000.0, 1.0, 0)[0] == pytest.approx(HD)  # 2 mu^2 per pair at d = 0


@pytest.mark.parametrize("theta", [10000.0, 500.0])
def test_expected_score_with_given_means_is_the_closed_form(theta):
    rope = RotaryPositionEmbedding(HD, backend="eager") if theta == 10000.0 else ThetaRope(HD, theta)  # through forward
    for mu in (0.1, 1.0):
        means = torch.full((1, HD), mu)
        expected = measures.expected_score(rope, means, means, 3 * L, L)
        assert torch.allclose(expected, measures.rope_closed_form(HD, theta, mu, 3 * L), atol=1e-4 * max(1, mu ** 2 * HD))


def test_fig8_curves_are_the_sampled_score_and_its_closed_form():
    curves = measures.fig8_curves(HD, 10000.0, 2 * L, 500, seed=3)
    assert list(curves) == [0.0, 0.1, 1.0]
    for mu, (sampled, closed) in curves.items():
        assert torch.equal(closed, measures.rope_closed_form(HD, 10000.0, mu, 2 * L)) and sampled.shape == closed.shape
    assert torch.equal(curves[1.0][0], measures.fig8_curves(HD, 10000.0, 2 * L, 500, seed=3)[1.0][0])  # seeded


# -----------------------------------------------------------------------------
# the scores are the layer's own, causal, inside and past block_size, for every position embedding


def check_scores_are_what_each_layer_attends_with(model, lengths):
    """attention_scores, softmaxed and applied to the layer's v, give the layer's output exactly: causal,
    at every length in lengths (past block_size too)."""
    outputs, values = {}, {}
    hooks = [block.attn.c_proj.register_forward_pre_hook(
        lambda m, args, layer=layer: outputs.__setitem__(layer, args[0])) for layer, block in enumerate(model.transformer.h)]
    hooks += [block.attn.c_attn.register_forward_hook(
        lambda m, args, out, layer=layer: values.__setitem__(layer, out.split(16, dim=2)[2]))
        for layer, block in enumerate(model.transformer.h)]
    probe = measures.QKProbe(model)
    for T in lengths:
        idx = torch.randint(0, 11, (2, T), generator=torch.Generator().manual_seed(T))
        for layer, (q, k) in enumerate(probe(idx)):
            scores = measures.attention_scores(model.transformer.h[layer].attn, q, k, getattr(model.transformer, "pos_bias", None))
            weights = torch.softmax(scores, dim=-1)
            assert (weights.triu(1) == 0).all()  # causal: no weight on a later key
            v = values[layer].view(2, T, 2, 8).transpose(1, 2)
            y = (weights @ v).transpose(1, 2).reshape(2, T, 16)
            assert torch.allclose(y, outputs[layer], atol=1e-4), f"{model.config.pos_emb}, T={T}, layer {layer}"
    for h in hooks:
        h.remove()
    return probe


def sharpen(model):
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0)  # sharper attention than at init, so a wrong score shows
    return model


@pytest.mark.parametrize("name", list(VARIANTS))
def test_scores_are_what_each_layer_attends_with_causally_and_past_block_size(name):
    model = sharpen(tiny_gpt(seed=1, **VARIANTS[name]))
    probe = check_scores_are_what_each_layer_attends_with(model, [16] if name == "learned" else [16, 48])  # 48: 3 block_size
    if name == "learned":
        with pytest.raises(ValueError, match="block_size"):
            probe(torch.zeros(1, 48, dtype=torch.long))


@pytest.mark.parametrize("qk_norm", [False, True])
def test_scores_of_a_custom_rotary_module_that_keeps_only_the_contract(theta_rope, qk_norm):
    model = sharpen(tiny_gpt(seed=2, pos_emb=theta_rope, qk_norm=qk_norm))
    assert isinstance(model.transformer.h[0].attn.rotary, ThetaRope)
    check_scores_are_what_each_layer_attends_with(model, [16, 48])


# -----------------------------------------------------------------------------
# measure: one checkpoint, through the tested functions


def measure_args(**kwargs):
    args = dict(windows=8, long_windows=2, max_multiple=3, batch=3, device="cpu", per_head=False)
    return argparse.Namespace(**{**args, **kwargs})


@pytest.fixture(scope="module")
def val_shards(tmp_path_factory):
    return TokenShards(write_random_chars(tmp_path_factory.mktemp("lens_data"), "abcdefghijk", 2000, 3000), "val")


@pytest.mark.parametrize("pos_emb", ["rope", "fope", "nope"])
def test_measure_reports_pair_mean_norms_of_the_probed_q_and_k(pos_emb, val_shards):
    model = tiny_gpt(seed=3, pos_emb=pos_emb, bias=True)
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.bias.normal_()  # means far from zero, and different per pair
    result = lens.measure(model, {"path": "tiny", "config": {"seed": 1}}, val_shards, measure_args())
    idx = measures.pick_windows(val_shards, 16, 8)
    for layer, (q, k) in enumerate(measures.QKProbe(model)(idx)):
        for name, x in (("q", q), ("k", k)):
            expected = measures.pair_mean_norms(x).mean(0)  # heads averaged
            assert np.allclose(result["qk_mean"][name][layer], expected.numpy(), rtol=1e-6, atol=1e-9)
    assert len(result["score_by_distance"][0]) == 48 and len(result["far_mass"]) == 2


def test_measure_reads_a_custom_rotary_module_through_its_contract(theta_rope, val_shards):
    model = tiny_gpt(seed=4, pos_emb=theta_rope)
    result = lens.measure(model, {"path": "tiny", "config": {"seed": 1}}, val_shards, measure_args())
    module = model.transformer.h[0].attn.rotary
    expected_r = measures.cycles(module.pair_frequencies(), 16)
    assert np.allclose(result["pair_r"], expected_r.numpy()) and np.allclose(result["own_r"], sorted(expected_r.tolist()))
    assert not np.allclose(result["pair_r"], measures.cycles(RotaryPositionEmbedding(8).pair_frequencies(), 16).numpy())
    assert all(0 <= x <= 1 for x in result["leakage"]) and result["own_rank"] > 0
    assert len(result["expected_score_measured"][1]) == 48 and len(result["weight_by_distance"][1]) == 48
    ratios = result["undertrained_ratio"]["q"]  # theta 500 at head_dim 8, L_train 16: pairs on both sides of r = 1
    assert all(r is not None and r > 0 for r in ratios)


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


DEMO_LABELS = {"rope": ["rope_s1", "rope_s2"], "fope": ["fope_s1"], "clamp-only": ["clamp_s1"], "alibi": ["alibi_s1"],
               "nope": ["nope_s1"], "learned": ["learned_s1"]}  # the demo's names: its reading renders


@pytest.mark.slow
def test_lens_writes_figures_json_and_report_for_every_pos_emb_and_rewrites_the_report(ckpts, tmp_path, capsys):
    root, data_dir, names = ckpts
    out = tmp_path / "lens"
    labels = [f"--label={label}={','.join(str(root / n) for n in runs)}" for label, runs in DEMO_LABELS.items()]
    lens.main(["--ckpt", *[str(root / n) for n in names], *labels, "--data_dir", str(data_dir), "--out", str(out),
               "--windows", "16", "--long_windows", "2", "--max_multiple", "3", "--draws", "50", "--per_head"])
    figures = ("lens_dims.png", "lens_distance.png", "lens_spectrum.png", "lens_fig8.png")
    for name in (*figures, "lens.md", "lens_timing.json"):
        assert (out / name).stat().st_size > 0
    result = json.loads((out / "lens.json").read_text())
    by_name = {r["ckpt"].split("/")[-1]: r for r in result["checkpoints"]}
    assert by_name["rope_s1"]["label"] == by_name["rope_s2"]["label"] == "rope"  # seeds of one run
    assert result["summary"]["rope"]["layers"][0]["leakage"]["n"] == 2
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
    report = (out / "lens.md").read_text()
    assert len(learned["qk_mean"]["q"]) == 2 and "block_size" in report
    assert all(len(r["weight_by_distance"][0]) == 96 for n, r in by_name.items() if n != "learned_s1")
    # the tables format mean [min-max] over seeds as the project does (runs.spread); the reading is filled in
    leak = result["summary"]["rope"]["layers"][0]["leakage"]
    assert f"| {leak['mean']:.3f} [{leak['min']:.3f}-{leak['max']:.3f}] |" in report
    assert "{{" not in report and "left out" not in report and "Stage times" in report
    template = Path(runner.READINGS) / "lens.md"
    if template.is_file():  # its first words, before any placeholder, are in the report
        assert template.read_text().split("{{")[0].strip().splitlines()[0] in report
    # --report_only: the same report and the figures again, from lens.json alone (no checkpoint is read)
    for name in (*figures, "lens.md"):
        (out / name).unlink()
    for n in names:
        (root / n / "ckpt.pt").rename(root / n / "moved.pt")
    try:
        lens.main(["--report_only", "--out", str(out)])
    finally:
        for n in names:
            (root / n / "moved.pt").rename(root / n / "ckpt.pt")
    assert (out / "lens.md").read_text() == report and all((out / name).stat().st_size > 0 for name in figures)


def test_lens_command_on_a_checkpoint_with_a_custom_rotary_module(theta_rope, tmp_path, capsys):
    data_dir = write_random_chars(tmp_path / "data", "abcdefghijklmnopqrst", 4000, 3000)
    train.main([f"--dataset={data_dir}", f"--out_dir={tmp_path / 'run'}", "--n_layer=2", "--n_head=2", "--n_embd=32",
                "--block_size=32", "--batch_size=4", "--max_iters=2", "--eval_interval=2", "--eval_iters=1",
                f"--pos_emb={theta_rope}"])
    out = tmp_path / "lens"
    lens.main(["--ckpt", str(tmp_path / "run"), "--data_dir", str(data_dir), "--out", str(out), "--windows", "8",
               "--long_windows", "1", "--max_multiple", "2", "--draws", "20"])
    r = json.loads((out / "lens.json").read_text())["checkpoints"][0]
    r_expected = measures.cycles(500.0 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16), 32)
    assert r["label"] == theta_rope and np.allclose(r["pair_r"], r_expected.numpy())
    assert all(0 <= x <= 1 for x in r["leakage"]) and len(r["expected_score_measured"][0]) == 64
    # the demo's reading does not fit another set of runs: the tables come alone, and say so
    report = (out / "lens.md").read_text()
    assert "| rope500 |" in report and "{{" not in report
    if (Path(runner.READINGS) / "lens.md").is_file():
        assert "left out" in report and "without its reading" in capsys.readouterr().out


def test_lens_rejects_bad_flags_and_a_repeated_checkpoint_in_one_line(tmp_path, capsys):
    run, data_dir = tmp_path / "rope_s1", tmp_path / "data"  # every refusal comes before a checkpoint is read
    run.mkdir()
    with pytest.raises(SystemExit, match="--windows must be at least 1"):
        lens.main(["--ckpt", str(run), "--windows", "0"])
    for twice in ([run, run], [run, run / "ckpt.pt"], [tmp_path / ".." / tmp_path.name / "rope_s1", run]):
        with pytest.raises(SystemExit, match="twice"):  # out/x and out/x/ckpt.pt are one checkpoint: not two seeds
            lens.main(["--ckpt", *map(str, twice), "--data_dir", str(data_dir), "--out", str(tmp_path / "lens")])
    with pytest.raises(SystemExit, match="no checkpoint"):
        lens.main(["--ckpt", str(tmp_path / "nothing"), "--data_dir", str(data_dir), "--out", str(tmp_path / "lens")])
    with pytest.raises(SystemExit):
        lens.main(["--out", str(tmp_path / "lens")])
    assert "--ckpt is required" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no .*lens.json"):
        lens.main(["--report_only", "--out", str(tmp_path / "nowhere")])
    assert not (tmp_path / "lens").exists()  # nothing written on a refusal
