"""The baselines beside FoPE: the registry, the additive biases against written-out references, RoPE-A,
QK norm, causality and running past block_size for every registered position embedding."""

import math

import pytest
import torch
import torch.nn.functional as F

from baselines import (AlibiBias, alibi_slopes, BiasedAttention, FireBias, KerpleLogBias, SinusoidalPositions, T5Bias, attend_with_bias,
                       biased_attention, sinusoidal_table, t5_bucket)
from fope import RotaryPositionEmbedding, apply_rotary, rope_inv_freq, whole_cycle_inv_freq
from model import GPT, POS_EMBS, GPTConfig, PositionEmbedding

ALL = [(name, False) for name in POS_EMBS] + [("rope", True), ("nope", True)]


def tiny(pos_emb, qk_norm=False, block_size=16, seed=0, rotary_backend="eager"):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=block_size, vocab_size=11, n_layer=2, n_head=2, n_embd=16, pos_emb=pos_emb,
                         qk_norm=qk_norm, rotary_backend=rotary_backend)).eval()


def test_the_registry_holds_the_paper_baselines_and_every_name_is_buildable():
    assert {"nope", "learned", "sinusoidal", "rope", "rope-a", "fope", "alibi", "kerple", "fire", "t5"} <= set(POS_EMBS)
    for name, spec in POS_EMBS.items():
        assert isinstance(spec, PositionEmbedding) and spec.kind in ("none", "absolute", "rotary", "bias")
        assert tiny(name).config.pos_emb == name


def test_a_new_registry_line_is_all_a_position_embedding_needs(monkeypatch):
    """A twelfth embedding: its module and one line; GPTConfig, the model and training accept it."""
    class Halved(KerpleLogBias):
        def values(self, distance, query_pos):
            return super().values(distance, query_pos) / 2

    monkeypatch.setitem(POS_EMBS, "kerple-half", PositionEmbedding("bias", lambda c: Halved(c.n_head), shared=False))
    model = tiny("kerple-half")
    assert isinstance(model.transformer.h[1].attn.pos_bias, Halved)
    logits, loss = model(torch.randint(0, 11, (2, 40)), torch.randint(0, 11, (2, 40)))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("pos_emb,qk_norm", ALL)
def test_every_position_embedding_is_causal(pos_emb, qk_norm):
    model = tiny(pos_emb, qk_norm)
    x = torch.randint(0, 11, (1, 16))
    y = x.clone()
    y[0, 9:] = (y[0, 9:] + 3) % 11  # change the future of position 8
    with torch.no_grad():
        a, _ = model(x, x)
        b, _ = model(y, y)
    assert torch.allclose(a[0, :9], b[0, :9], atol=1e-6)
    assert not torch.allclose(a[0, 9:], b[0, 9:], atol=1e-6)


@pytest.mark.parametrize("pos_emb,qk_norm", ALL)
def test_every_position_embedding_runs_past_block_size_or_says_it_cannot(pos_emb, qk_norm):
    model = tiny(pos_emb, qk_norm)
    x = torch.randint(0, 11, (2, 3 * 16 + 5))
    if not POS_EMBS[pos_emb].past_block_size:
        with pytest.raises(ValueError, match="cannot take 53 tokens"):
            model(x, x)
        return
    with torch.no_grad():
        _, loss = model(x, x)
        _, short = model(x[:, :16], x[:, :16])
    assert torch.isfinite(loss)
    with torch.no_grad():  # and the first block_size positions are computed as in a short sequence
        long_logits, _ = model(x, x)
        short_logits, _ = model(x[:, :16], x[:, :16])
    assert torch.allclose(long_logits[:, :16], short_logits, atol=1e-5)


def test_kerple_bias_is_minus_r1_log_of_one_plus_r2_distance():
    bias = KerpleLogBias(2)
    with torch.no_grad():
        bias.r1.copy_(torch.tensor([0.5, 2.0]))
        bias.r2.copy_(torch.tensor([1.0, 0.25]))
    b = bias(0, 4, 4, "cpu")
    r1, r2 = [0.5, 2.0], [1.0, 0.25]
    for h in range(2):
        for i in range(4):
            for j in range(4):
                expected = -r1[h] * math.log(1 + r2[h] * (i - j)) if j <= i else -math.inf
                assert b[h, i, j].item() == pytest.approx(expected, rel=1e-6)


def test_kerple_projects_r1_and_r2_back_to_positive_and_keeps_learning_them():
    bias = KerpleLogBias(1, eps=0.01)
    with torch.no_grad():
        bias.r1.fill_(-3.0)
        bias.r2.fill_(-1.0)
    b = bias(0, 3, 3, "cpu")
    assert b[0, 2, 0].item() == pytest.approx(-0.01 * math.log(1 + 0.01 * 2))
    assert bias.r1.item() == pytest.approx(0.01) and bias.r2.item() == pytest.approx(0.01)
    b[0, 2, 0].backward()
    assert bias.r1.grad.item() != 0 and bias.r2.grad.item() != 0  # at eps, not stuck there


def fire_with_known_mlp(train_len=4):
    """FIRE with c = 0.1, L = train_len and an MLP that computes 2x + 0.5 for x >= 0 (one head)."""
    fire = FireBias(1, train_len, hidden=2)
    with torch.no_grad():
        fire.mlp[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        fire.mlp[0].bias.zero_()
        fire.mlp[2].weight.copy_(torch.tensor([[2.0, 3.0]]))
        fire.mlp[2].bias.fill_(0.5)
    return fire


def test_fire_interpolates_by_the_threshold_below_it_and_by_the_query_position_past_it():
    fire = fire_with_known_mlp(train_len=4)
    psi = lambda x: math.log(0.1 * x + 1)  # noqa: E731
    b = fire(0, 10, 10, "cpu")[0]
    assert b[2, 0].item() == pytest.approx(2 * psi(2) / psi(4) + 0.5, rel=1e-6)  # i = 2 < L = 4: psi(L)
    assert b[3, 1].item() == pytest.approx(2 * psi(2) / psi(4) + 0.5, rel=1e-6)  # a distance, whatever i < L
    assert b[8, 3].item() == pytest.approx(2 * psi(5) / psi(8) + 0.5, rel=1e-6)  # i = 8 > L: psi(i)
    assert b[9, 0].item() == pytest.approx(2 * 1.0 + 0.5, rel=1e-6)  # the farthest key past L maps to 1
    assert b[5, 5].item() == pytest.approx(0.5)  # distance 0 maps to 0
    assert b[2, 3].item() == -math.inf
    x = fire.interpolated(torch.arange(0, 1000).clamp(min=0)[None, :], torch.tensor([999]))
    assert x.min() >= 0 and x.max() <= 1 + 1e-6  # every distance of a long sequence stays in [0, 1]


def test_fire_threshold_and_c_are_learned():
    fire = fire_with_known_mlp()
    fire(0, 10, 10, "cpu")[0].masked_fill(torch.ones(10, 10).triu(1).bool(), 0).sum().backward()
    assert fire.c.grad is not None and fire.c.grad != 0
    assert fire.l_mult.grad is not None and fire.l_mult.grad != 0  # rows i < L use psi(L)


T5_BUCKETS = {0: 0, 1: 1, 15: 15, 16: 16, 20: 17, 64: 26, 127: 31, 128: 31, 1000: 31}  # 32 buckets, max distance 128


def test_t5_buckets_are_exact_then_log_spaced_then_the_last():
    distance = torch.tensor(list(T5_BUCKETS))
    assert t5_bucket(distance).tolist() == list(T5_BUCKETS.values())


def test_t5_bias_is_the_learned_scalar_of_the_distance_bucket_per_head():
    bias = T5Bias(2)
    with torch.no_grad():
        bias.emb.weight.copy_(torch.arange(64.0).view(32, 2))  # bucket b, head h -> 2b + h
    b = bias(0, 200, 200, "cpu")
    for (i, j) in [(0, 0), (20, 0), (100, 36), (199, 0), (150, 140)]:
        for h in range(2):
            assert b[h, i, j].item() == 2 * T5_BUCKETS.get(i - j, t5_bucket(torch.tensor(i - j)).item()) + h
    assert b[0, 3, 4].item() == -math.inf


def test_alibi_bias_is_minus_slope_times_distance_and_masks_the_future():
    bias = AlibiBias(2)(0, 3, 3, "cpu", torch.float32)  # slopes of 2 heads: 2^-4, 2^-8
    inf = float("inf")
    expected = torch.tensor([[[0, -inf, -inf], [-1 / 16, 0, -inf], [-2 / 16, -1 / 16, 0]],
                             [[0, -inf, -inf], [-1 / 256, 0, -inf], [-2 / 256, -1 / 256, 0]]])
    assert torch.equal(bias, expected)


@pytest.mark.parametrize("make", [lambda: AlibiBias(3), lambda: KerpleLogBias(3), lambda: FireBias(3, 8), lambda: T5Bias(3)])
def test_chunked_and_fast_attention_equal_attention_over_the_whole_bias(make):
    torch.manual_seed(0)
    bias = make()
    q, k, v = (torch.randn(2, 3, 50, 8, requires_grad=True) for _ in range(3))
    inputs = (q, k, v, *bias.parameters())  # the learned biases' parameters get their gradient too
    whole = F.scaled_dot_product_attention(q, k, v, attn_mask=bias(0, 50, 50, "cpu"))
    for out in (attend_with_bias(q, k, v, bias), attend_with_bias(q, k, v, bias, max_elems=3 * 50 * 7)):  # 7 rows at a time
        assert torch.allclose(whole, out, atol=1e-5)
        g_whole = torch.autograd.grad(whole.square().sum(), inputs, retain_graph=True)
        g_out = torch.autograd.grad(out.square().sum(), inputs)
        for a, b in zip(g_whole, g_out):
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_a_constant_bias_takes_the_causal_kernel_and_a_learned_one_gets_its_gradient():
    torch.manual_seed(0)
    bias = AlibiBias(4)(0, 300, 300, "cpu")[None]
    q, k, v = (torch.randn(1, 4, 300, 8, requires_grad=True) for _ in range(3))
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    fast = biased_attention(q, k, v, bias, is_causal=True)  # the CPU flash kernel, upper blocks skipped
    assert torch.allclose(fast, reference, atol=1e-5)
    g = torch.randn_like(fast)
    for a, b in zip(torch.autograd.grad((fast * g).sum(), (q, k, v)), torch.autograd.grad((reference * g).sum(), (q, k, v))):
        assert torch.allclose(a, b, atol=1e-4)
    learned = bias.clone().requires_grad_(True)
    out = biased_attention(q, k, v, learned, is_causal=True)
    assert torch.allclose(out, reference, atol=1e-5)
    (grad,) = torch.autograd.grad((out * g).sum(), (learned,))
    assert grad.abs().sum() > 0 and grad[0, :, 0, 1:].abs().max() == 0  # nothing flows to masked entries


@pytest.mark.parametrize("bias_batch", [1, 2])
def test_learned_bias_attention_gradients_equal_finite_differences_and_sdpa(bias_batch):
    """BiasedAttention (the CPU path of a bias that needs its gradient): gradcheck in float64, causal
    -inf included, for a bias shared by the batch (its gradient summed over it) and one per element."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    causal = torch.ones(6, 6, dtype=torch.bool).triu(1)
    bias = torch.randn(bias_batch, 3, 6, 6, dtype=torch.float64).masked_fill(causal, float("-inf")).requires_grad_()
    assert torch.autograd.gradcheck(BiasedAttention.apply, (q, k, v, bias))
    out = biased_attention(q, k, v, bias, is_causal=True)
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    assert torch.allclose(out, reference, atol=1e-12)
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), (q, k, v, bias))
    assert grads[3].shape == bias.shape
    for a, b in zip(grads, torch.autograd.grad((reference * g).sum(), (q, k, v, bias))):
        assert torch.allclose(a.nan_to_num(), b.nan_to_num(), atol=1e-12)


def test_rope_a_frequencies_complete_whole_cycles_in_the_training_length():
    L = 64
    w = rope_inv_freq(32)
    snapped = whole_cycle_inv_freq(w, L)
    cycles = snapped * L / (2 * math.pi)
    assert torch.allclose(cycles, cycles.round(), atol=1e-9)  # whole cycles
    assert (snapped - w).abs().max() <= math.pi / L + 1e-12  # the nearest such frequency
    assert (snapped == 0).any() and (snapped[:3] > 0).all()  # less than half a cycle: position-free
    rotary = tiny("rope-a").transformer.h[0].attn.rotary
    assert torch.equal(rotary.inv_freq, whole_cycle_inv_freq(rope_inv_freq(8), 16))
    # whole cycles: the rotation at position t + L equals the rotation at t
    cos, sin = rotary.tables(0, 40)
    assert torch.allclose(cos[:, 16:32], cos[:, :16], atol=1e-5) and torch.allclose(sin[:, 16:32], sin[:, :16], atol=1e-5)
    plain = RotaryPositionEmbedding(8, train_len=16, backend="eager")
    assert not torch.allclose(plain.tables(0, 40)[0][:, 16:32], plain.tables(0, 40)[0][:, :16], atol=1e-3)


@pytest.mark.parametrize("backend", ["c", "eager"])
def test_qk_norm_gives_q_and_k_zero_mean_and_unit_variance_per_head_before_the_rotation(backend):
    """Attention normalises q and k (model.qk_norm) and the rotary module rotates what it gets: its input
    has rows of mean 0 and variance 1, equal to a normalisation of the raw q, k written out here, and undoing
    its rotation (the inverse rotation is exact) gives that input back."""
    seen, raw = [], []

    def run(qk_norm):
        model = tiny("rope", qk_norm=qk_norm, rotary_backend=backend)
        attn = model.transformer.h[1].attn
        rotary = attn.rotary
        handles = [rotary.register_forward_hook(lambda m, args, out: seen.append((args[0].detach(), out.detach()))),
                   attn.c_attn.register_forward_hook(lambda m, args, out: raw.extend(attn.split_heads(out)[:2]))]
        with torch.no_grad():
            attn.c_attn.weight.mul_(5).add_(0.3)  # q, k far from normalised
            model(torch.randint(0, 11, (3, 16)))
        for handle in handles:
            handle.remove()
        cos, sin = rotary.tables(0, 16)
        return [(x, r.detach(), apply_rotary(y, cos, -sin)) for (x, y), r in zip(seen, raw)]

    normalised = run(qk_norm=True)
    assert len(normalised) == 2  # q and k
    for x, r, unrotated in normalised:
        assert torch.allclose(unrotated, x, atol=1e-5)
        assert unrotated.mean(-1).abs().max() < 1e-5
        assert torch.allclose(unrotated.var(-1, unbiased=False), torch.ones(()), atol=1e-3)
        by_hand = (r - r.mean(-1, keepdim=True)) / torch.sqrt(r.var(-1, unbiased=False, keepdim=True) + 1e-5)
        assert torch.allclose(unrotated, by_hand, atol=1e-5)
    seen.clear(), raw.clear()
    x, r, unrotated = run(qk_norm=False)[0]
    assert torch.equal(x, r) and torch.allclose(unrotated, r, atol=1e-5)  # without qk_norm: the raw q
    assert unrotated.mean(-1).abs().max() > 0.1


def test_sinusoidal_positions_are_sin_and_cos_of_the_vaswani_frequencies():
    table = sinusoidal_table(torch.arange(50), 8)
    for t in (0, 7, 49):
        for i in range(4):
            angle = t / 10000 ** (2 * i / 8)
            assert table[t, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[t, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert torch.equal(SinusoidalPositions(8)(50, "cpu"), table.float())
    model = tiny("sinusoidal")  # token embeddings scaled by sqrt(n_embd) = 4, then the table added
    idx = torch.randint(0, 11, (1, 20))
    seen = []
    model.transformer.drop.register_forward_hook(lambda m, args, out: seen.append(out))
    with torch.no_grad():
        model(idx)
    assert torch.allclose(seen[0][0], model.transformer.wte(idx)[0] * 4 + sinusoidal_table(torch.arange(20), 16).float(), atol=1e-6)


def test_a_parent_cannot_switch_qk_norm_or_into_or_out_of_sinusoidal_positions():
    from checkpoint import load_parent_weights
    for parent, child, message in [(tiny("rope"), tiny("rope", qk_norm=True), "qk_norm False -> True"),
                                   (tiny("rope"), tiny("sinusoidal"), "cannot switch into or out of"),
                                   (tiny("sinusoidal"), tiny("rope"), "cannot switch into or out of")]:
        with pytest.raises(ValueError, match=message):
            load_parent_weights(child, parent.state_dict(), {**vars(parent.config)})


def test_a_rope_parent_starts_a_bias_model_with_fresh_bias_parameters():
    from checkpoint import load_parent_weights
    parent = tiny("rope")
    child = tiny("kerple", seed=1)
    r1 = child.transformer.h[0].attn.pos_bias.r1.detach().clone()
    load_parent_weights(child, parent.state_dict(), {**vars(parent.config)}, "fresh")
    assert torch.equal(child.transformer.h[0].attn.pos_bias.r1, r1)
    assert torch.equal(child.transformer.h[0].attn.c_attn.weight, parent.transformer.h[0].attn.c_attn.weight)


def test_alibi_slopes_for_a_power_of_two_are_geometric():
    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0 ** -i for i in range(1, 9)]))


def test_alibi_slopes_for_twelve_heads_follow_the_non_power_of_two_rule():
    # the 8 slopes of 8 heads, then every other slope of 16 heads (2^-0.5, 2^-1.5, ...) for the rest
    expected = [2.0 ** -i for i in range(1, 9)] + [2.0 ** -(i + 0.5) for i in range(4)]
    assert torch.allclose(alibi_slopes(12), torch.tensor(expected))


@pytest.mark.parametrize("name", ["alibi", "kerple", "t5"])
def test_the_gpu_path_flex_attention_equals_sdpa_with_the_dense_bias(name):
    import warnings
    from types import SimpleNamespace

    from baselines import AlibiBias, KerpleLogBias, T5Bias, attend_with_bias, bias_path, flex_biased_attention
    torch.manual_seed(0)
    bias = {"alibi": AlibiBias(4), "kerple": KerpleLogBias(4), "t5": T5Bias(4)}[name]
    if name == "t5":
        torch.nn.init.normal_(bias.emb.weight)
    q, k, v = (torch.randn(2, 4, 200, 16) for _ in range(3))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex_attention on the CPU warns that it is the slow reference
        flex = flex_biased_attention(q, k, v, bias, compiled=False)  # forward only: no flex backward on CPU
        dense = attend_with_bias(q, k, v, bias)
    torch.testing.assert_close(flex, dense, atol=2e-5, rtol=1e-4)
    gpu = SimpleNamespace(device=torch.device("cuda"))
    assert bias_path(gpu, bias, 0.0) == "flex" and bias_path(gpu, bias, 0.1) == "dense"
    assert bias_path(q, bias, 0.0) == "dense"


def test_fire_depends_on_the_query_position_so_it_keeps_the_dense_path_on_a_gpu():
    from types import SimpleNamespace

    from baselines import FireBias, bias_path
    assert bias_path(SimpleNamespace(device=torch.device("cuda")), FireBias(4, 64), 0.0) == "dense"


def flex_sweep_counts(lengths):
    """flex_biased_attention compiled as the GPU path compiles it (dynamic=FLEX_DYNAMIC), over lengths ->
    (graphs compiled, recompile-limit hits, max |flex - dense|). The CPU's inductor has no dynamic-shape flex
    kernel, so aot_eager stands in for it: the recompiles are Dynamo's, whatever the backend."""
    import warnings

    import baselines
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    baselines.compiled_flex_attention.cache_clear()
    bias, err = baselines.AlibiBias(2), 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Dynamo's recompile-limit warning, flex's unfused fallback warning
        for T in lengths:
            q, k, v = (torch.randn(1, 2, T, 16) for _ in range(3))
            flex = baselines.flex_biased_attention(q, k, v, bias, backend="aot_eager")
            dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias(0, T, T, q.device, q.dtype)[None])
            err = max(err, (flex - dense).abs().max().item())
    hits = sum(n for c in counters.values() for msg, n in c.items() if "recompile limit" in str(msg).lower())
    baselines.compiled_flex_attention.cache_clear()
    torch._dynamo.reset()
    return counters["stats"]["unique_graphs"], hits, err


def test_a_flex_sweep_of_more_than_eight_lengths_compiles_twice_and_never_falls_back(monkeypatch):
    lengths = [64, 96, 128, 160, 200, 256, 320, 400, 512, 640]  # 10 lengths: past Dynamo's recompile limit of 8
    graphs, hits, err = flex_sweep_counts(lengths)
    # one static graph, then one with symbolic lengths (and one more where the mask grows from 1 block to 2:
    # Dynamo specialises sizes of 1)
    assert graphs <= 3 and hits == 0 and err < 1e-5
    import baselines
    monkeypatch.setattr(baselines, "FLEX_DYNAMIC", False)  # the old setting: a graph per length, then the limit
    graphs, hits, _ = flex_sweep_counts(lengths)
    assert graphs >= 8 and hits >= 1


def test_the_causal_block_mask_built_from_blocks_equals_create_block_mask():
    from torch.nn.attention.flex_attention import create_block_mask

    from baselines import causal, causal_block_mask
    for T in (64, 128, 200, 513):
        ours = causal_block_mask(T, "cpu").to_dense()
        assert torch.equal(ours, create_block_mask(causal, None, None, T, T, device="cpu").to_dense())
