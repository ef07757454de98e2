"""model.py: every position module gives a causal, trainable GPT that runs past its training length."""

import dataclasses

import pytest
import torch

from checkpoint import load_parent_weights
from model import GPT, GPTConfig, POS_EMBS

TINY = dict(block_size=32, vocab_size=17, n_layer=2, n_head=2, n_embd=32, rotary_backend="eager")


def tiny(pos_emb, **kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**TINY, "pos_emb": pos_emb, **kw}))


@pytest.mark.parametrize("pos_emb", POS_EMBS)
def test_changing_later_tokens_never_changes_earlier_logits(pos_emb):
    model = tiny(pos_emb).eval()
    idx = torch.randint(0, 17, (2, 32))
    changed = idx.clone()
    changed[:, 20:] = (changed[:, 20:] + 5) % 17
    logits, _ = model(idx, idx)
    logits2, _ = model(changed, changed)
    assert torch.allclose(logits[:, :20], logits2[:, :20], atol=1e-5)
    assert not torch.allclose(logits[:, 20:], logits2[:, 20:], atol=1e-3)


@pytest.mark.parametrize("pos_emb", POS_EMBS)
def test_tiny_model_overfits_a_fixed_batch(pos_emb):
    model = tiny(pos_emb, norm="rmsnorm", mlp="swiglu") if pos_emb == "fope" else tiny(pos_emb)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 17, (4, 33), generator=g)
    x, y = idx[:, :-1], idx[:, 1:]
    opt = model.configure_optimizers(0.0, 3e-3, (0.9, 0.99), "cpu")
    for _ in range(300):
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if loss.item() < 0.1:
            break
    assert loss.item() < 0.1


@pytest.mark.parametrize("pos_emb", ["nope", "rope", "fope", "alibi"])
def test_forward_at_four_times_the_training_length(pos_emb):
    model = tiny(pos_emb).eval()
    idx = torch.randint(0, 17, (1, 4 * 32))
    logits, loss = model(idx, idx)
    assert logits.shape == (1, 128, 17) and torch.isfinite(loss)


def test_learned_positions_refuse_a_longer_sequence_in_one_line():
    model = tiny("learned")
    with pytest.raises(ValueError, match="cannot take 128 tokens") as err:
        model(torch.zeros(1, 128, dtype=torch.long))
    assert "\n" not in str(err.value)


def test_per_token_loss_averages_to_the_mean_loss():
    model = tiny("fope")
    idx = torch.randint(0, 17, (3, 32))
    _, mean = model(idx, idx)
    _, per_token = model(idx, idx, reduction="none")
    assert per_token.shape == (3, 32) and torch.allclose(per_token.mean(), mean)


def test_frozen_fope_coefficients_never_reach_the_optimizer():
    model = tiny("fope")
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    coefs = [b for n, b in model.named_buffers() if n.endswith("_coef")]
    assert len(coefs) == 2 * TINY["n_layer"] and not any(id(c) in in_opt for c in coefs)
    learnable = tiny("fope", fope_learnable=True)
    opt = learnable.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    no_decay = {id(p) for p in opt.param_groups[1]["params"]}
    coefs = [p for n, p in learnable.named_parameters() if n.endswith("_coef")]
    assert len(coefs) == 2 * TINY["n_layer"] and all(id(c) in no_decay for c in coefs)


def test_each_layer_draws_its_own_fope_coefficients():
    model = tiny("fope")
    layers = [block.attn.rotary.sin_coef for block in model.transformer.h]
    assert not torch.equal(layers[0], layers[1])


def test_state_dict_round_trip_reproduces_the_model():
    a, b = tiny("fope"), GPT(GPTConfig(**{**TINY, "pos_emb": "fope"}))  # b: another random draw
    idx = torch.randint(0, 17, (1, 64))
    assert not torch.allclose(a(idx, idx)[0], b(idx, idx)[0])
    b.load_state_dict(a.state_dict())
    assert torch.allclose(a(idx, idx)[0], b(idx, idx)[0], atol=1e-6)
    assert GPTConfig.from_dict(dataclasses.asdict(a.config)) == a.config


def test_eval_time_scaling_loads_a_trained_checkpoint():
    a = tiny("rope")
    scaled = GPT(GPTConfig(**{**TINY, "pos_emb": "rope", "rope_scaling": {"type": "yarn", "factor": 1.0}}))
    scaled.load_state_dict(a.state_dict())
    idx = torch.randint(0, 17, (1, 96))
    assert torch.allclose(a(idx, idx)[0], scaled(idx, idx)[0], atol=1e-5)


def test_bad_config_values_are_one_line_errors():
    with pytest.raises(ValueError, match="pos_emb must be one of"):
        GPTConfig(pos_emb="xpos")
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="written by another model.py"):
        GPTConfig.from_dict({**dataclasses.asdict(GPTConfig()), "n_expert": 8})


@pytest.mark.parametrize("field,value,match", [
    ("fope_dim", 3, "fope_dim .* must be an even number >= head_dim 32"),  # odd, below head_dim: refused
    ("fope_dim", 30, "fope_dim .* must be an even number >= head_dim 32"),
    ("fope_dim", 33, "fope_dim .* must be an even number"),
    ("fope_sigma", -0.1, "fope_sigma .* must be >= 0"),
    ("fope_zero_pad", "zeros", "fope_zero_pad must be one of"),
    ("rotary_backend", "cuda", "rotary_backend must be one of"),
    ("n_layer", 0, "n_layer must be >= 1"),
    ("dropout", 1.0, "dropout must be in"),
    ("rope_theta", 0.0, "rope_theta must be > 0"),
    ("n_embd", 132, "head_dim .* must be even"),  # 132 / 4 = 33 for a rotary embedding
])
def test_every_model_field_is_checked_once_by_gptconfig_in_one_line(field, value, match):
    with pytest.raises(ValueError, match=match) as err:
        GPTConfig(**{"n_embd": 128, "n_head": 4, field: value})
    assert "\n" not in str(err.value)


def test_fope_refuses_a_basis_narrower_than_head_dim_as_gptconfig_does():
    from fope import FourierPositionEmbedding
    with pytest.raises(ValueError, match="fope_dim"):
        FourierPositionEmbedding(32, 2, 64, fourier_dim=3)
    assert FourierPositionEmbedding(32, 2, 64, fourier_dim=64).rot_dim == 64


class PhaseRotary(torch.nn.Module):
    """A rotary module written against the contract alone (fope.RotaryEmbedding's docstring), not derived
    from it: RoPE at theta 500 with a fixed phase per pair, y = R(t w + phi) x."""

    def __init__(self, head_dim, train_len):
        super().__init__()
        self.head_dim = head_dim
        self.register_buffer("inv_freq", 500.0 ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        self.register_buffer("phase", torch.linspace(0, 1, head_dim // 2, dtype=torch.float64))
        self.calls = 0

    def pair_frequencies(self):
        return self.inv_freq.clone()

    def forward(self, x, offset=0, norm=False):
        self.calls += 1
        if norm:
            x = torch.nn.functional.layer_norm(x, x.shape[-1:])
        pos = torch.arange(offset, offset + x.shape[2], dtype=torch.float64)
        angle = pos[:, None] * self.inv_freq + self.phase  # (T, hd/2)
        cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def test_a_rotary_module_that_keeps_the_contract_joins_by_one_registry_line(monkeypatch):
    from model import PositionEmbedding
    monkeypatch.setitem(POS_EMBS, "phase", PositionEmbedding("rotary", lambda c: PhaseRotary(c.n_embd // c.n_head, c.block_size)))
    model = tiny("phase", qk_norm=True)
    assert all(block.attn.rotary.calls == 0 for block in model.transformer.h)
    idx = torch.randint(0, 17, (2, 64))  # twice the training length
    _, loss = model(idx, idx)
    loss.backward()
    assert torch.isfinite(loss) and all(block.attn.rotary.calls == 2 for block in model.transformer.h)  # q and k
    # it rotates: scores depend on the relative position only, so shifting both q and k by 7 keeps q.k
    rotary = model.transformer.h[0].attn.rotary
    q, k = torch.randn(1, 1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 1, 16, dtype=torch.float64)
    score = (rotary(q, offset=9) * rotary(k, offset=2)).sum()
    assert torch.allclose(score, (rotary(q, offset=16) * rotary(k, offset=9)).sum())
    assert not torch.allclose(score, (rotary(q, offset=2) * rotary(k, offset=9)).sum())
    model.generate(idx[:, :5], 3)  # sampling takes it too


def test_generate_appends_tokens():
    model = tiny("alibi")
    out = model.generate(torch.zeros(1, 3, dtype=torch.long), 40, top_k=5)
    assert out.shape == (1, 43) and out.max() < 17


# --- starting a run from another run's weights (context extension) ---------------------------


def fope_model(block_size, **kw):
    return GPT(GPTConfig(block_size=block_size, vocab_size=11, n_layer=2, n_head=2, n_embd=64, pos_emb="fope", **kw))


@pytest.mark.parametrize("fill", ["fresh", "zero"])
def test_fope_coefficients_grow_with_the_training_length_keeping_the_parent_block(fill):
    # head_dim 32: 5 frequencies kept at L_train 64, 6 at 128 (d_out = D while D <= head_dim / 4 = 8)
    torch.manual_seed(0)
    parent = fope_model(64)
    torch.manual_seed(1)
    child = load_parent_weights(fope_model(128, fope_sigma=0.0), parent.state_dict(), vars(parent.config), fill)
    for p_layer, c_layer in zip(parent.transformer.h, child.transformer.h):
        for name in ("sin_coef", "cos_coef"):
            old, new = getattr(p_layer.attn.rotary, name), getattr(c_layer.attn.rotary, name)
            assert old.shape == (2, 5, 5) and new.shape == (2, 6, 6)
            assert torch.equal(new[:, :5, :5], old)  # bit-exact
            fresh = torch.zeros(6, 6)
            if fill == "fresh":  # sigma 0 here: the fresh init is the step identity (step 1: the diagonal)
                fresh[5, 5] = 1.0
            assert torch.equal(new[:, 5, :], fresh[5].expand(2, 6)) and torch.equal(new[:, :, 5], fresh[:, 5].expand(2, 6))


def test_fresh_new_coefficients_are_xavier_noise_plus_the_step_identity():
    torch.manual_seed(0)
    parent = fope_model(64)
    child = load_parent_weights(fope_model(128, fope_sigma=0.5), parent.state_dict(), vars(parent.config))
    new = child.transformer.h[0].attn.rotary.sin_coef
    edge = torch.cat([new[:, 5, :5].flatten(), new[:, :5, 5].flatten()])
    assert edge.std() > 0.05 and new[:, 5, 5].sub(1).abs().max() < 1  # noise, and 1 + noise on the diagonal


def test_fope_coefficients_shrink_to_the_top_left_block_at_a_shorter_length():
    parent = fope_model(128)
    child = load_parent_weights(fope_model(64), parent.state_dict(), vars(parent.config))
    for name in ("sin_coef", "cos_coef"):
        old, new = getattr(parent.transformer.h[1].attn.rotary, name), getattr(child.transformer.h[1].attn.rotary, name)
        assert new.shape == (2, 5, 5) and torch.equal(new, old[:, :5, :5])


def test_rope_parent_into_fope_keeps_every_weight_and_draws_fresh_coefficients():
    torch.manual_seed(0)
    rope = GPT(GPTConfig(block_size=64, vocab_size=11, n_layer=2, n_head=2, n_embd=64, pos_emb="rope"))
    torch.manual_seed(1)
    child = fope_model(128)
    drawn = child.transformer.h[0].attn.rotary.sin_coef.clone()
    load_parent_weights(child, rope.state_dict(), vars(rope.config))
    own = child.state_dict()
    for key, value in rope.state_dict().items():
        assert torch.equal(own[key], value), key
    assert torch.equal(child.transformer.h[0].attn.rotary.sin_coef, drawn)
    idx = torch.randint(0, 11, (2, 100))
    assert torch.isfinite(child(idx, idx)[1])


@pytest.mark.parametrize("change, match", [
    (dict(n_embd=32), "another shape"),
    (dict(pos_emb="learned", block_size=128), "learned positions cannot"),
])
def test_what_cannot_be_carried_over_is_a_one_line_error(change, match):
    parent = GPT(GPTConfig(block_size=64, vocab_size=11, n_layer=2, n_head=2, n_embd=64, pos_emb="learned"))
    args = dict(block_size=64, vocab_size=11, n_layer=2, n_head=2, n_embd=64, pos_emb="rope")
    child = GPT(GPTConfig(**{**args, **change}))
    with pytest.raises(ValueError, match=match) as err:
        load_parent_weights(child, parent.state_dict(), vars(parent.config))
    assert "\n" not in str(err.value)


def test_a_padded_vocabulary_gives_its_padded_ids_no_probability_and_changes_no_loss():
    padded, plain = tiny("rope", vocab_multiple=64), tiny("rope")
    assert padded.lm_head.weight.shape[0] == padded.transformer.wte.weight.shape[0] == 64
    state = padded.state_dict()
    state.update({k: state[k][:17] for k in ("lm_head.weight", "transformer.wte.weight")})
    plain.load_state_dict(state)
    idx = torch.randint(0, 17, (2, 32))
    logits, loss = padded(idx, idx)
    assert torch.isinf(logits[..., 17:]).all() and torch.isfinite(logits[..., :17]).all()
    assert torch.allclose(loss, plain(idx, idx)[1], atol=1e-6)  # the padded ids take no probability mass
    assert torch.allclose(padded.token_losses(idx, idx), plain.token_losses(idx, idx), atol=1e-6)
    loss.backward()
    assert torch.isfinite(padded.lm_head.weight.grad).all()
    torch.manual_seed(0)
    sampled = padded.generate(idx[:, :4], 64, temperature=50.0)  # nearly uniform: any id could come up
    assert sampled.max() < 17 and len(set(sampled[:, 4:].flatten().tolist())) > 8


@pytest.mark.parametrize("pos_emb", POS_EMBS)
def test_after_a_move_to_meta_every_tensor_the_forward_reads_is_there(pos_emb):
    model = tiny(pos_emb).to("meta")
    assert all(t.device.type == "meta" for t in [*model.parameters(), *model.buffers()])
    idx = torch.randint(0, 17, (2, 24)).to("meta")
    logits, loss = model(idx, idx)  # a tensor left on the CPU would raise: meta and cpu do not mix
    assert logits.device.type == loss.device.type == "meta"


@pytest.mark.slow
@pytest.mark.parametrize("pos_emb", POS_EMBS)
def test_a_compiled_model_compiles_once_for_training_and_once_for_evaluation(pos_emb):
    from torch._dynamo.testing import CompileCounterWithBackend
    torch._dynamo.reset()
    model = tiny(pos_emb, rotary_backend="auto")
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    idx = torch.randint(0, 17, (2, 33))

    def train_steps(n):
        model.train()
        for _ in range(n):
            _, loss = compiled(idx[:, :-1], idx[:, 1:])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    train_steps(3)
    assert counter.frame_count == 1
    model.eval()
    with torch.no_grad():
        compiled(idx[:, :-1], idx[:, 1:])
        compiled(idx[:, 1:], idx[:, :-1])  # other tokens, the same length: no new graph
    assert counter.frame_count == 2
    train_steps(2)  # back to training: the first graph again
    assert counter.frame_count == 2
    torch._dynamo.reset()


def test_flops_per_token_is_nanogpts_count_for_its_gpt2_config():
    # nanoGPT's GPT-2 124M (bias=False, vocab 50304, block 1024) prints "number of parameters: 123.59M";
    # its estimate_mfu counts 6 N + 12 L H Q T per token: 6 * 123,587,328 + 12 * 12 * 12 * 64 * 1024
    model = GPT(GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304, pos_emb="learned"))
    assert model.get_num_params() == 123_587_328
    assert model.flops_per_token() == 854_770_176
    from util.machine import accelerator_peak_flops
    assert accelerator_peak_flops("cpu") is None and accelerator_peak_flops("cpu", 1e12) == 1e12


# --- a new embedding with knobs of its own, parent loading and sharing, through one registry entry ----

from dataclasses import dataclass  # noqa: E402


@dataclass
class GainKnobs:
    gain_start: float = 1.0  # the gain's first value
    gain_share: bool = False  # one module for every layer


class GainRotary(PhaseRotary):
    """PhaseRotary with a learnable gain per pair, and a parent rule of its own: it halves a parent's gain."""

    def __init__(self, head_dim, train_len, start):
        super().__init__(head_dim, train_len)
        self.gain = torch.nn.Parameter(torch.full((head_dim // 2,), start))
        self.parents = []  # the names from_parent was asked for

    def forward(self, x, offset=0, norm=False):
        x = super().forward(x, offset, norm)
        return x * torch.cat((self.gain, self.gain)).to(x.dtype)

    def from_parent(self, name, parent, own, expand):
        self.parents.append(name)
        return own if parent is None else parent / 2


def check_gain(c):
    if not c.gain_start > 0:
        raise ValueError(f"gain_start must be > 0, got {c.gain_start}")


def test_an_embedding_with_knobs_parent_loading_and_sharing_joins_by_one_entry(monkeypatch):
    import pretrained
    import runs
    from model import PositionEmbedding
    entry = PositionEmbedding("rotary", lambda c: GainRotary(c.n_embd // c.n_head, c.block_size, c.gain_start),
                              knobs=GainKnobs, check=check_gain, share_layers="gain_share")
    monkeypatch.setitem(POS_EMBS, "gain", entry)  # the one entry

    @dataclass
    class Config(GPTConfig, GainKnobs):  # what model.py's GPTConfig(*knob_classes(POS_EMBS)) does at import
        pass

    def build(pos_emb, **kw):
        return GPT(Config(block_size=32, vocab_size=17, n_layer=3, n_head=2, n_embd=32, pos_emb=pos_emb, **kw))

    with pytest.raises(ValueError, match="gain_start must be > 0"):
        Config(pos_emb="gain", gain_start=0.0)
    with pytest.raises(ValueError, match="gain_share is a knob of gain, not of rope: drop it or pass --pos_emb=gain"):
        Config(pos_emb="rope", gain_share=True)
    shared, own = build("gain", gain_share=True, gain_start=3.0), build("gain")
    rotaries = [b.attn.rotary for b in shared.transformer.h]
    assert all(r is rotaries[0] for r in rotaries) and float(rotaries[0].gain[0].detach()) == 3.0
    assert len({id(b.attn.rotary) for b in own.transformer.h}) == 3
    # parent loading: RoPE -> gain keeps the fresh gain; gain -> gain goes through from_parent, once per module
    rope = build("rope")
    load_parent_weights(own, rope.state_dict(), vars(rope.config))
    assert all(b.attn.rotary.parents.count("gain") == 1 and float(b.attn.rotary.gain[0].detach()) == 1.0 for b in own.transformer.h)
    child = build("gain", gain_share=True)
    load_parent_weights(child, shared.state_dict(), vars(shared.config))
    assert child.transformer.h[0].attn.rotary.parents.count("gain") == 1 and float(child.transformer.h[0].attn.rotary.gain[0].detach()) == 1.5
    # its knobs: a pretrained model may override them; a rope run's settings leave them out
    assert {"gain_start", "gain_share"} <= set(pretrained.overridable())
    checkpoint = {"config": {}, "iter_num": 1}
    assert "gain_start" in runs.run_settings(checkpoint, own) and "gain_start" not in runs.run_settings(checkpoint, rope)
    assert "fope_sigma" not in runs.run_settings(checkpoint, own)
    # it generates with a KV cache like every other embedding
    prompt = torch.randint(0, 17, (1, 4))
    assert torch.equal(shared.double().generate(prompt, 6, temperature=0),
                       shared.generate(prompt, 6, temperature=0, use_cache=False))
