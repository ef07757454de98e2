"""model.py: every position module gives a causal, trainable GPT that runs past its training length."""

import dataclasses

import pytest
import torch

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
        GPTConfig(pos_emb="sinusoidal")
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="written by another model.py"):
        GPTConfig.from_dict({**dataclasses.asdict(GPTConfig()), "n_kv_head": 2})


def test_generate_appends_tokens():
    model = tiny("alibi")
    out = model.generate(torch.zeros(1, 3, dtype=torch.long), 40, top_k=5)
    assert out.shape == (1, 43) and out.max() < 17
