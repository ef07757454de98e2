"""
Check nanoFoPE against HF transformers: rope_scaling.py's rescalings against its ROPE_INIT_FUNCTIONS, and
(--pretrained) a pretrained model's logits and token ids against transformers loading the same GGUF file.

    pip install transformers accelerate   # not dependencies of nanoFoPE: only this check needs them
    python experiments/compare_hf.py      # prints the largest relative difference per rope_type
    python experiments/compare_hf.py --pretrained smollm2-135m   # logits (float32, 512 tokens), ids
    python experiments/compare_hf.py --generate smollm2-135m     # greedy tokens and speed -> results/bench_generate.json

--pretrained: the first --tokens tokens of Shakespeare's val split in the model's tokens (data/shakespeare/
prepare.py --pretrained=SOURCE), through nanoFoPE's GPT.from_pretrained and through
AutoModelForCausalLM.from_pretrained(dir, gguf_file=name) in float32, as trained and with rope_scaling
linear and yarn at factor 4 set on both sides; the largest absolute logit difference of each (it passes
below 1e-3). Then token ids of a verse, a prose and a code text, and of the window's own text, against
AutoTokenizer.from_pretrained(dir, gguf_file=name).

Over head_dim {32, 64, 128}, theta {1e4, 5e5}, original length {64, 512, 2048}, factor {1, 2, 4, 8, 16}:
default, linear, yarn (with its options), llama3, dynamic (at lengths below, at and above the original)
and longrope (random per-frequency factors, below and above the original length). Both the inverse
frequencies and the attention factor are compared. HF computes in float32, nanoFoPE in float64, so
differences of a few 1e-7 are float32 rounding. tests/test_rope_scaling.py carries a few of these cases written
out, so the test suite runs without transformers.
"""

import itertools
import sys

import os

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from fope import rope_inv_freq  # noqa: E402
from rope_scaling import check_scaling, rescale_inv_freq  # noqa: E402

GRID = dict(head_dim=(32, 64, 128), theta=(1e4, 5e5), original=(64, 512, 2048), factor=(1, 2, 4, 8, 16))


def hf_rescaling(rope_type, head_dim, theta, original, seq_len, params):
    """(inv_freq, attention_factor) from transformers, with max_position_embeddings = the original length."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type == "default":  # HF has no init function for it: the plain formula
        return 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim), 1.0
    config = LlamaConfig(hidden_size=2 * head_dim, num_attention_heads=2, head_dim=head_dim,
                         max_position_embeddings=original,
                         rope_parameters={"rope_type": rope_type, "rope_theta": theta, **params})
    if rope_type in ("dynamic", "longrope"):
        return ROPE_INIT_FUNCTIONS[rope_type](config, "cpu", seq_len=seq_len)
    return ROPE_INIT_FUNCTIONS[rope_type](config, "cpu")


def cases(head_dim, original, factor):
    """(rope_type, seq_len, extra params) for one point of the grid."""
    g = torch.Generator().manual_seed(head_dim * 100_000 + original * 100 + factor)
    yield "default", None, {}
    yield "linear", None, {}
    for extra in ({}, {"beta_fast": 16, "beta_slow": 2}, {"truncate": False}, {"attention_factor": 1.0},
                  {"mscale": 0.707, "mscale_all_dim": 1.0}):
        yield "yarn", None, extra
    yield "llama3", None, {"low_freq_factor": 1.0, "high_freq_factor": 4.0}
    for seq_len in (original // 2, original, 3 * original, 16 * original + 7):
        yield "dynamic", seq_len, {}
    short = (1 + torch.rand(head_dim // 2, generator=g)).tolist()
    long = (1 + factor * torch.rand(head_dim // 2, generator=g)).tolist()
    for seq_len in (original // 2, original, original + 1, 4 * original):
        yield "longrope", seq_len, {"short_factor": short, "long_factor": long}


TEXTS = ["To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer",
         "In 1848, the price of wheat rose 23.5% to $1,234 a ton; nobody expected it.",
         "def f(x):\n    return x**2 + 1  # square, then one\n"]
SCALINGS = {"as trained": None, "linear x4": {"rope_type": "linear", "factor": 4.0},
            "yarn x4": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192}}


def hf_llama(path, scaling):
    """transformers' model of a GGUF file in float32, its rope_parameters set to `scaling` (HF's spelling)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    folder, name = os.path.split(os.path.abspath(path))
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if scaling is not None:
        config.rope_parameters = {"rope_theta": config.rope_parameters["rope_theta"], **scaling}
        if "original_max_position_embeddings" in scaling:  # HF wants max_position_embeddings = factor x original
            config.max_position_embeddings = int(scaling["factor"] * scaling["original_max_position_embeddings"])
        config.standardize_rope_params()
        config.validate_rope()
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, config=config, dtype=torch.float32).eval()


@torch.no_grad()
def compare_pretrained(source, n_tokens):
    from transformers import AutoTokenizer

    from data.shards import TokenShards
    from pretrained import from_pretrained, load_tokenizer, resolve
    _, path = resolve(source)
    tok = load_tokenizer(source)
    window = next(iter(TokenShards(os.path.join("data", "shakespeare", source), "val").windows(n_tokens - 1)))
    idx = torch.from_numpy(window.astype("int64"))[None]
    worst = 0.0
    for name, scaling in SCALINGS.items():
        ours = from_pretrained(source, rotary_backend="eager", **({"rope_scaling": scaling} if scaling else {}))
        theirs = hf_llama(path, scaling)
        a, b = ours(idx, idx)[0][0], theirs(input_ids=idx, use_cache=False).logits[0].float()
        diff = (a - b).abs().max().item()
        worst = max(worst, diff)
        print(f"  logits, {n_tokens} tokens, {name:10s}: max abs difference {diff:.2e} (logits up to {b.abs().max():.1f})")
    folder, name = os.path.split(os.path.abspath(path))
    hf_tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    same = True
    for text in TEXTS + [tok.decode(window.tolist())]:
        a, b = tok.encode(text), hf_tok(text, add_special_tokens=False)["input_ids"]
        same &= a == b
        print(f"  ids equal: {a == b} ({len(a)} tokens) for {text[:40]!r}")
    return 0 if worst < 1e-3 and same else 1


@torch.no_grad()
def compare_generate(source, prompt_tokens=2048, new_tokens=64, forward_tokens=4096, repeats=3):
    """Greedy decoding of new_tokens after the first prompt_tokens of the val split, by GPT.generate (KV cache)
    and by HF's generate on the same GGUF, float32, one process, the two interleaved; then the no-grad forward
    of forward_tokens (the last position's logits only, on both sides). Medians over repeats; results/bench_generate.json (experiments/bench.py reports it)."""
    import json
    import statistics
    import time

    import transformers

    from data.shards import TokenShards
    from pretrained import from_pretrained, resolve
    from util.machine import describe_machine
    _, path = resolve(source)
    window = next(iter(TokenShards(os.path.join("data", "shakespeare", source), "val").windows(forward_tokens - 1)))
    tokens = torch.from_numpy(window.astype("int64"))[None]
    prompt = tokens[:, :prompt_tokens]
    ours, theirs = from_pretrained(source), hf_llama(path, None)
    runs = {"ours": [], "hf": []}
    for _ in range(repeats):
        stats = {}
        t0 = time.perf_counter()
        a = ours.generate(prompt, new_tokens, temperature=0, stats=stats)
        runs["ours"].append({"total_s": time.perf_counter() - t0, **stats})
        t0 = time.perf_counter()
        b = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, do_sample=False,
                            min_new_tokens=new_tokens, pad_token_id=0)
        total = time.perf_counter() - t0
        t0 = time.perf_counter()  # HF's own prefill and per-token time: its model with its cache, by hand
        out = theirs(input_ids=prompt, use_cache=True, logits_to_keep=1)  # as its generate runs the prompt
        prefill = time.perf_counter() - t0
        past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        for _ in range(new_tokens - 1):
            out = theirs(input_ids=nxt, past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        runs["hf"].append({"total_s": total, "prefill_s": prefill, "decode_s": time.perf_counter() - t0})
    a, b = a[0, prompt_tokens:].tolist(), b[0, prompt_tokens:].tolist()
    first_diff = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    forward = {"ours": [], "hf": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        ours(tokens[:, :-1])  # the last position's logits only, as logits_to_keep=1
        forward["ours"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        theirs(input_ids=tokens[:, :-1], use_cache=False, logits_to_keep=1)
        forward["hf"].append(time.perf_counter() - t0)

    def med(side, key):
        return statistics.median(r[key] for r in runs[side])

    rows = {side: {"total_s": med(side, "total_s"), "prefill_s": med(side, "prefill_s"),
                   "ms_per_token": 1000 * med(side, "decode_s") / (new_tokens - 1),
                   "generate_tokens_per_s": new_tokens / med(side, "total_s"),
                   "forward_s": statistics.median(forward[side])} for side in runs}
    doc = {"source": source, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "forward_tokens": forward_tokens - 1,
           "repeats": repeats, "dtype": "float32", "same_tokens": first_diff is None, "first_difference": first_diff,
           "ours": rows["ours"], "hf": rows["hf"], "runs": runs, "forward_runs": forward,
           "transformers": transformers.__version__, "torch": torch.__version__, "machine": describe_machine(),
           "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
    os.makedirs("results", exist_ok=True)
    with open("results/bench_generate.json", "w") as f:
        json.dump(doc, f, indent=1)
    for side in ("ours", "hf"):
        r = rows[side]
        print(f"  {side:4s}: prefill {r['prefill_s']:.2f} s, {r['ms_per_token']:.1f} ms/token, {r['generate_tokens_per_s']:.2f} "
              f"new tokens/s over the whole generate of {new_tokens}, forward of {forward_tokens - 1} tokens {r['forward_s']:.2f} s")
    print(f"  the same {new_tokens} greedy tokens: {first_diff is None}" + ("" if first_diff is None else f" (first differs at {first_diff})"))
    return 0 if first_diff is None else 1


def main():
    try:
        import transformers
    except ImportError:
        raise SystemExit("compare_hf.py needs transformers: pip install transformers (nanoFoPE itself does not)")
    if "--generate" in sys.argv:
        source = sys.argv[sys.argv.index("--generate") + 1]
        print(f"transformers {transformers.__version__}, torch {torch.__version__}: {source}, greedy generation")
        return compare_generate(source)
    if "--pretrained" in sys.argv:
        source = sys.argv[sys.argv.index("--pretrained") + 1]
        print(f"transformers {transformers.__version__}, torch {torch.__version__}: {source}")
        return compare_pretrained(source, 512)
    worst, count = {}, 0
    for head_dim, theta, original, factor in itertools.product(*GRID.values()):
        for rope_type, seq_len, extra in cases(head_dim, original, factor):
            params = {} if rope_type == "default" else {
                "factor": float(factor), "original_max_position_embeddings": original, **extra}
            if rope_type == "dynamic":  # HF's dynamic reads max_position_embeddings, not this key
                params.pop("original_max_position_embeddings")
            want, want_factor = hf_rescaling(rope_type, head_dim, theta, original, seq_len, params)
            scaling = check_scaling({"rope_type": rope_type, **params, "original_max_position_embeddings": original})
            got, got_factor = rescale_inv_freq(rope_inv_freq(head_dim, theta), torch.arange(head_dim // 2),
                                               head_dim, theta, scaling, seq_len)
            want = want.double()
            rel = max(((got - want).abs() / want.abs()).max().item(), abs(got_factor - want_factor) / want_factor)
            if rel > worst.get(rope_type, (0.0,))[0]:
                options = {k: v for k, v in extra.items() if k not in ("short_factor", "long_factor")}
                worst[rope_type] = (rel, f"head_dim {head_dim}, theta {theta:g}, original {original}, "
                                         f"factor {factor}, seq_len {seq_len} {options or ''}")
            count += 1
    print(f"transformers {transformers.__version__}: {count} cases; largest relative difference per rope_type "
          "(inverse frequencies and attention factor):")
    for rope_type, (rel, where) in worst.items():
        print(f"  {rope_type:9s} {rel:.2e}  at {where}")
    return 0 if max(rel for rel, _ in worst.values()) < 2e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
