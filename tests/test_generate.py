"""Generation with a KV cache: the same tokens and logits as running the whole context, for every embedding."""

import pytest
import torch

from model import GPT, POS_EMBS, GPTConfig, KVCache, is_rotary


def toy(pos_emb, **kw):
    torch.manual_seed(0)
    gqa = {"n_kv_head": 2} if is_rotary(pos_emb) else {}  # GQA's repeated keys go through the cache too
    config = GPTConfig(block_size=24, vocab_size=31, n_layer=2, n_head=4, n_embd=32, pos_emb=pos_emb,
                       rotary_backend="eager", **{**gqa, **kw})
    return GPT(config).double().eval()  # float64: the two paths' sums differ in order, not in value


@pytest.mark.parametrize("pos_emb", list(POS_EMBS))
def test_cached_and_uncached_generation_give_the_same_tokens(pos_emb):
    model = toy(pos_emb)
    prompt = torch.randint(0, 31, (2, 5))
    for new in (10, 30):  # 30: the context outgrows block_size (24) and slides
        cached = model.generate(prompt, new, temperature=0)
        assert cached.shape == (2, 5 + new)
        assert torch.equal(cached, model.generate(prompt, new, temperature=0, use_cache=False))


@pytest.mark.parametrize("pos_emb", ["rope", "fope", "alibi", "fire", "sinusoidal", "learned"])
def test_logits_after_a_cache_equal_the_whole_context(pos_emb):
    model = toy(pos_emb, **({"fope_kv_heads": True} if pos_emb == "fope" else {}))
    idx = torch.randint(0, 31, (2, 20))
    whole = model.head(model.hidden_states(idx))
    cache = KVCache(model.config.n_layer, 20)
    parts = [model.head(model.hidden_states(idx[:, s:e], cache)) for s, e in ((0, 7), (7, 8), (8, 20))]  # a chunk, a token, a chunk
    assert cache.pos == 20
    assert torch.allclose(torch.cat(parts, dim=1), whole, atol=1e-10, rtol=0)


def test_a_full_cache_says_so():
    model = toy("rope")
    cache = KVCache(model.config.n_layer, 4)
    model(torch.zeros(1, 4, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="holds 4 positions"):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache)


def test_sampling_with_a_temperature_stays_in_the_vocabulary_and_is_seeded():
    model = toy("fope")
    prompt = torch.zeros(1, 3, dtype=torch.long)
    torch.manual_seed(5)
    a = model.generate(prompt, 12, temperature=0.8, top_k=5)
    torch.manual_seed(5)
    b = model.generate(prompt, 12, temperature=0.8, top_k=5, use_cache=False)
    assert torch.equal(a, b) and a.max() < 31


def test_sample_py_prints_its_speed_and_the_cache_changes_no_token(tmp_path, capsys):
    import sample
    import train
    from tinydata import write_random_chars
    data_dir = write_random_chars(tmp_path / "data", "abcdefghijklmnop", 3000, 1000)
    train.main([f"--dataset={data_dir}", f"--out_dir={tmp_path / 'run'}", "--n_layer=1", "--n_head=2", "--n_embd=32",
                "--block_size=16", "--batch_size=4", "--max_iters=2", "--eval_interval=2", "--eval_iters=1",
                "--rotary_backend=eager"])
    capsys.readouterr()
    runs = [sample.main([f"--out_dir={tmp_path / 'run'}", "--max_new_tokens=12", "--start=abc", "--num_samples=1",
                         "--temperature=0", f"--use_cache={cache}"]) for cache in (True, False)]
    assert runs[0] == runs[1]
    err = capsys.readouterr().err
    assert "3 prompt tokens and the first new one in" in err and "11 more in" in err and "tokens/s (KV cache)" in err
    assert "tokens/s (no cache)" in err
    # 3 + 20 tokens outgrow block_size 16: the cache makes the first 14 new tokens, then the context slides
    sample.main([f"--out_dir={tmp_path / 'run'}", "--max_new_tokens=20", "--start=abc", "--num_samples=1"])
    assert "(KV cache for 14 of them: the context passed block_size 16)" in capsys.readouterr().err
    # a temperature so small that logits / temperature overflow: greedy's tokens, not nan probabilities
    tiny = sample.main([f"--out_dir={tmp_path / 'run'}", "--max_new_tokens=12", "--start=abc", "--num_samples=1",
                        "--temperature=1e-300"])
    assert tiny == runs[0]
    (tmp_path / "prompt.bin").write_bytes(b"ab\xff\xfe")
    with pytest.raises(SystemExit) as stop:
        sample.main([f"--out_dir={tmp_path / 'run'}", f"--start=FILE:{tmp_path / 'prompt.bin'}"])
    assert str(stop.value.code) == (f"--start=FILE:{tmp_path / 'prompt.bin'}: not UTF-8 text (byte 0xff at 2: "
                                    "invalid start byte): give a text file")


def test_a_tiny_temperature_samples_greedily_without_nan():
    model = toy("fope").float()  # in float32 1e-300 is 0: logits / temperature were inf and nan
    prompt = torch.zeros(1, 3, dtype=torch.long)
    greedy = model.generate(prompt, 12, temperature=0)
    for top_k in (None, 3):
        assert torch.equal(model.generate(prompt, 12, temperature=1e-300, top_k=top_k), greedy)


@pytest.mark.parametrize("scaling", [{"rope_type": "dynamic", "factor": 4.0}, {"rope_type": "yarn", "factor": 4.0}])
def test_a_length_dependent_rescaling_past_its_original_length_runs_the_context_whole(scaling):
    # dynamic NTK's frequencies follow the sequence's length past the original 8 tokens: keys cached at one length
    # are wrong at the next, so generate recomputes there (and only there; YaRN's are fixed: the cache holds)
    model = toy("rope", rope_scaling={**scaling, "original_max_position_embeddings": 8})
    prompt = torch.randint(0, 31, (1, 5))
    assert model.cache_holds(8) and model.cache_holds(20) == (scaling["rope_type"] == "yarn")
    torch.manual_seed(1)
    cached = model.generate(prompt, 15, temperature=1.0)
    torch.manual_seed(1)
    assert torch.equal(cached, model.generate(prompt, 15, temperature=1.0, use_cache=False))
