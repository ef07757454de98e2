"""p-RoPE (prope.py): one module and one registry line. p = 1 is RoPE, p = 0 is NoPE's attention, it
trains, it declares RoPE's ladder, and the registry-driven tests took it up without another edit."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import positions
from model import GPT, POS_EMBS, GPTConfig
from prope import PartialRotaryEmbedding

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(block_size=32, vocab_size=17, n_layer=2, n_head=2, n_embd=32, rotary_backend="eager")


def tiny(pos_emb, **kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**TINY, "pos_emb": pos_emb, **kw}))


def test_it_trains_a_step():
    model = tiny("p-rope")
    assert model.config.prope_fraction == 0.75
    opt = model.configure_optimizers(0.1, 1e-2, (0.9, 0.95), "cpu")
    idx = torch.randint(0, 17, (4, 32))
    _, before = model(idx, idx)
    before.backward()
    opt.step()
    _, after = model(idx, idx)
    assert torch.isfinite(after) and after < before


def test_the_lowest_frequencies_are_position_free():
    pe = PartialRotaryEmbedding(16, 0.75)  # 8 pairs, 6 rotate
    assert (pe.inv_freq[:6] > 0).all() and (pe.inv_freq[6:] == 0).all()
    assert torch.equal(pe.inv_freq[:6], PartialRotaryEmbedding(16, 1.0).inv_freq[:6])
    assert (pe.pair_frequencies()[6:] == 0).all()


@pytest.mark.parametrize("backend", ["eager", "auto"])
def test_p_one_is_rope_exactly(backend):
    rope, prope = tiny("rope", rotary_backend=backend), tiny("p-rope", prope_fraction=1.0, rotary_backend=backend)
    assert rope.state_dict().keys() == prope.state_dict().keys()
    prope.load_state_dict(rope.state_dict())
    idx = torch.randint(0, 17, (2, 48))  # past block_size too
    assert torch.equal(rope(idx, idx)[0], prope(idx, idx)[0])


def test_p_zero_is_nopes_attention():
    nope, prope = tiny("nope"), tiny("p-rope", prope_fraction=0.0)
    prope.load_state_dict(nope.state_dict())
    idx = torch.randint(0, 17, (2, 40))
    assert torch.equal(nope(idx, idx)[0], prope(idx, idx)[0])
    half = tiny("p-rope", prope_fraction=0.5)
    half.load_state_dict(nope.state_dict())
    assert not torch.allclose(nope(idx, idx)[0], half(idx, idx)[0])


def test_its_knob_is_checked_and_refused_elsewhere_in_one_line():
    with pytest.raises(ValueError, match=r"prope_fraction .* must be in \[0, 1\], got 1.5"):
        GPTConfig(pos_emb="p-rope", prope_fraction=1.5)
    with pytest.raises(ValueError, match="prope_fraction is a knob of p-rope, not of rope: drop it or pass "
                                         "--pos_emb=p-rope"):
        GPTConfig(pos_emb="rope", prope_fraction=0.5)
    GPTConfig(pos_emb="rope", prope_fraction=0.75)  # the default is no mistake


def test_it_declares_ropes_ladder_so_rope_scaling_applies():
    # linear (position interpolation) by 2: position 2t turns as position t did; the dropped pairs stay still
    pe = tiny("p-rope", rope_scaling={"rope_type": "linear", "factor": 2.0}).transformer.h[0].attn.rotary
    plain = PartialRotaryEmbedding(16, 0.75, train_len=32)
    cos, sin = pe.tables(0, 8)
    torch.testing.assert_close(sin[:, ::2], plain.tables(0, 4)[1])
    torch.testing.assert_close(cos[:, ::2], plain.tables(0, 4)[0])
    assert (sin[..., 6:] == 0).all() and (cos[..., 6:] == 1).all()


def test_registering_it_touched_only_its_module_and_one_registry_entry():
    entry = POS_EMBS["p-rope"]
    assert entry.kind == "rotary" and entry.build == "prope:prope_from_config"
    # the registry-driven tests take every name: nothing lists p-rope but prope.py, positions.py and this file
    out = subprocess.run(["git", "grep", "-l", "-e", "p-rope", "-e", "prope", "--", "*.py"], cwd=ROOT,
                         capture_output=True, text=True).stdout.split()
    if out:  # a git checkout
        assert set(out) <= {"prope.py", "positions.py", "tests/test_prope.py"}
    assert "p-rope" in positions.__doc__


def test_a_scratch_run_imports_only_what_it_uses():
    code = ("import sys; from model import GPT, GPTConfig; GPT(GPTConfig(rotary_backend='eager'));"
            "print(sorted(m for m in ('baselines', 'rope_scaling', 'pretrained', 'passkey', 'fope_ext') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    code = "import sys; from model import GPT, GPTConfig; GPT(GPTConfig(pos_emb='alibi')); print('baselines' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
