"""
Sample text from a checkpoint written by train.py, decoded with the checkpoint's own tokenizer.

    python sample.py --out_dir=out/laptop_fope --start="ROMEO:"
    python sample.py --out_dir=out/laptop_rope --start=FILE:prompt.txt --num_samples=1 --max_new_tokens=2000
    python sample.py --init_from=smollm2-135m --start="The capital of France is" --temperature=0 --num_samples=1

After Karpathy's nanoGPT sample.py.
"""

import dataclasses
import sys
from types import SimpleNamespace

import torch

from checkpoint import build_model, load_checkpoint
from configurator import autocast_context, configure, resolve_device, resolve_dtype
from data.tokenizer import get_tokenizer
from model import is_rotary
from util.args import run_main

_names_before_config = set(globals())
# -----------------------------------------------------------------------------
out_dir = "out/laptop_fope"  # reads out_dir/ckpt.pt
init_from = None  # or a pretrained source (pretrained.py: "smollm2-135m", a .gguf file, an HF folder), used instead
start = "\n"  # the prompt, or FILE:path to read it from a file
num_samples = 3
max_new_tokens = 500
temperature = 0.8  # 1.0: the model's distribution; lower is more conservative; 0: greedy
top_k = None  # e.g. 200: sample only among the top_k most likely tokens
seed = 1337
use_cache = True  # generate with a KV cache (prefill once, then one token at a time); False: the whole context per token
device = "auto"  # auto (cuda, mps, then cpu) | cpu | cuda | mps
dtype = "auto"  # auto: bfloat16 on CUDA, float32 elsewhere
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items() if k not in _names_before_config and not k.startswith("_")}
LIMITS = {  # key: (what it must be, test)
    "num_samples": (">= 1", lambda v: v >= 1),
    "max_new_tokens": (">= 1", lambda v: v >= 1),
    "temperature": (">= 0 (0: greedy)", lambda v: 0 <= v < float("inf")),
    "top_k": ("None or >= 1", lambda v: v is None or v >= 1),
}


def main(argv):
    cfg = SimpleNamespace(**configure(DEFAULTS, argv, optional_types={"top_k": int, "init_from": str}))
    for key, (requirement, ok) in LIMITS.items():
        if not ok(getattr(cfg, key)):
            raise SystemExit(f"{key} must be {requirement}, got {getattr(cfg, key)!r}")
    device = resolve_device(cfg.device)
    if cfg.init_from:
        from pretrained import from_pretrained, is_pretrained, load_tokenizer  # only for a pretrained model
        if not is_pretrained(cfg.init_from):
            raise SystemExit(f"init_from={cfg.init_from} is not a pretrained source; for a run pass --out_dir")
        model, tokenizer = from_pretrained(cfg.init_from), load_tokenizer(cfg.init_from)
        margs = dataclasses.asdict(model.config)
    else:
        checkpoint = load_checkpoint(cfg.out_dir)
        margs = checkpoint["model_args"]
        model, tokenizer = build_model(checkpoint, cfg.out_dir), get_tokenizer(checkpoint["meta"])
    dtype = resolve_dtype(cfg.dtype, device, margs.get("rotary_backend") if is_rotary(margs["pos_emb"]) else None)
    ctx = autocast_context(device, dtype)
    model = model.eval().to(device)

    prompt = cfg.start
    if prompt.startswith("FILE:"):
        try:
            with open(prompt[len("FILE:"):], encoding="utf-8") as f:
                prompt = f.read()
        except OSError as e:
            raise SystemExit(f"--start={cfg.start}: {e.strerror}")
        except UnicodeDecodeError as e:
            raise SystemExit(f"--start={cfg.start}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at {e.start}: "
                             f"{e.reason}): give a text file")
    try:
        ids = tokenizer.encode(prompt)
    except ValueError as e:
        raise SystemExit(f"--start: {e}")
    if not ids:
        raise SystemExit("--start is empty: give the model at least one token to continue")
    x = torch.tensor(ids, dtype=torch.long, device=device)[None, :]  # (1, T)

    torch.manual_seed(cfg.seed)
    samples = []
    for _ in range(cfg.num_samples):
        stats = {}
        with ctx:
            y = model.generate(x, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                               use_cache=cfg.use_cache, stats=stats)
        samples.append(tokenizer.decode(y[0].tolist()))
        print(samples[-1])
        print("---------------")
        print(speed_line(x.shape[1], stats, *cache_use(model, x.shape[1], cfg.max_new_tokens, cfg.use_cache)),
              file=sys.stderr)
    return samples


def cache_use(model, prompt_tokens, new_tokens, use_cache):
    """How many of the new tokens model.generate makes with its KV cache, and why not the others (None: all)."""
    context = [prompt_tokens + k for k in range(new_tokens)]  # the context at each step
    cached = sum(use_cache and T <= model.config.block_size and model.cache_holds(T) for T in context)
    if not use_cache or cached == new_tokens:
        return cached, None
    past = context[cached] > model.config.block_size  # the first step without it
    return cached, f"the context passed block_size {model.config.block_size}" if past else \
        "a length-dependent rescaling moves every position"


def speed_line(prompt_tokens, stats, cached=None, why=None):
    """One line: the prefill of the prompt and the tokens/s of the new tokens after the first, and whether the KV
    cache made them (cached, why: cache_use's; cached None: stats' use_cache)."""
    rest, new = stats["new_tokens"] - 1, stats["new_tokens"]
    decode = f"{rest} more in {stats['decode_s']:.2f} s, {rest / stats['decode_s']:.1f} tokens/s" if rest else "no more"
    cached = (new if stats["cache"] else 0) if cached is None else cached
    cache = "KV cache" if cached == new else "no cache" if cached == 0 else f"KV cache for {cached} of them"
    cache += f": {why}" if why else ""
    return f"{prompt_tokens} prompt tokens and the first new one in {stats['prefill_s']:.2f} s; {decode} ({cache})"


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
