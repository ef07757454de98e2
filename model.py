"""
A GPT whose position module is chosen by name, for studying length generalization.

nanoGPT's model (Karpathy, github.com/karpathy/nanoGPT) with the position embedding as a knob. POS_EMBS
maps each name to how it is built, where it acts and its own knobs; adding a position embedding means writing
its module (fope.py for rotary ones, baselines.py for the others) and one entry there:
- absolute, added to the token embeddings: "learned" (GPT-2; cannot run past block_size),
  "sinusoidal" (Vaswani et al. 2017);
- rotary, applied to q and k in every layer: "rope" (Su et al. 2021), "rope-a" (RoPE with every
  frequency snapped to whole cycles in L_train, the FoPE paper's Table 2), "fope" (Hua et al. 2025,
  arXiv 2412.17739; its fope_* knobs give the paper's ablation arms);
- additive attention biases: "alibi" (Press et al. 2022; one module for all layers), "kerple" (Chi et
  al. 2022) and "fire" (Li et al. 2023), each layer its own, "t5" (Raffel et al. 2020; shared, as in T5);
- "nope": no position information at all (causal masking alone; Kazemnejad et al. 2023).
qk_norm=True normalises q and k per head before any rotation (the paper's Table 2 "QK norm"). RMSNorm and SwiGLU
(the paper's OLMo), n_kv_head (GQA), mlp_hidden, norm_eps and tie_embeddings make the one GPT a Llama too:
GPT.from_pretrained (pretrained.py) loads SmolLM2-135M into it. GPT.generate decodes with a KV cache.
"""

import inspect
import math
import time
from dataclasses import dataclass, fields
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from baselines import AlibiBias, FireBias, KerpleLogBias, LearnedPositions, SinusoidalPositions, T5Bias, attend_with_bias
from fope import (ROPE_THETA, FoPEKnobs, check_backend, check_even, check_fope_config, fope_from_config, qk_norm,
                  rope_from_config)
from rope_scaling import check_scaling


@dataclass(frozen=True)
class PositionEmbedding:
    """How one position embedding enters the model, and all the rest of nanoFoPE needs to know of it. A module
    that takes a parent run's weights its own way defines from_parent(name, parent, own, expand)
    (checkpoint.load_parent_weights)."""
    kind: str  # "absolute" (added to the token embeddings), "rotary" (applied to q and k), "bias" (added to scores), "none"
    build: Callable = None  # GPTConfig -> module
    shared: bool = True  # a bias module serves all layers (False: every layer owns one)
    past_block_size: bool = True  # it can take sequences longer than it was trained on
    knobs: type = None  # a dataclass of its own GPTConfig fields: GPTConfig inherits them, a pretrained model may
    # override them, runs.py leaves them out of other embeddings' run settings
    check: Callable = None  # GPTConfig -> None: a one-line ValueError for a bad knob
    share_layers: str = None  # the bool knob that hands layer 0's module to every layer
    scales_tokens: bool = False  # it multiplies the token embeddings: no run switches into or out of it

    def reads(self):
        """The position knobs (GPTConfig fields) this embedding reads."""
        own = tuple(f.name for f in fields(self.knobs)) if self.knobs else ()
        return own + (ROTARY_FIELDS if self.kind == "rotary" else ())


ROTARY_FIELDS = ("rope_theta", "rope_scaling")  # what every rotary embedding reads


def padded_vocab(c):
    return -(-c.vocab_size // c.vocab_multiple) * c.vocab_multiple


POS_EMBS = {  # name -> how it is built; make ablate and eval_length.py take every name here
    "nope": PositionEmbedding("none"),
    "learned": PositionEmbedding("absolute", lambda c: LearnedPositions(c.block_size, c.n_embd), past_block_size=False),
    "sinusoidal": PositionEmbedding("absolute", lambda c: SinusoidalPositions(c.n_embd), scales_tokens=True),
    "rope": PositionEmbedding("rotary", rope_from_config),
    "rope-a": PositionEmbedding("rotary", lambda c: rope_from_config(c, whole_cycles=True)),
    "fope": PositionEmbedding("rotary", fope_from_config, knobs=FoPEKnobs, check=check_fope_config,
                              share_layers="fope_share_layers"),  # fope_* knobs: the paper's ablation arms
    "alibi": PositionEmbedding("bias", lambda c: AlibiBias(c.n_head)),
    "kerple": PositionEmbedding("bias", lambda c: KerpleLogBias(c.n_head), shared=False),
    "fire": PositionEmbedding("bias", lambda c: FireBias(c.n_head, c.block_size), shared=False),
    "t5": PositionEmbedding("bias", lambda c: T5Bias(c.n_head)),
}


def knob_classes(registry):
    """The knobs dataclasses of the registry's entries, once each: GPTConfig's bases."""
    return tuple(dict.fromkeys(s.knobs for s in registry.values() if s.knobs))


def knob_fields(registry=POS_EMBS):
    """Every position knob field: those of the entries' knobs, and the rotary ones."""
    return tuple(dict.fromkeys(f for s in registry.values() for f in s.reads()))


def is_rotary(pos_emb):
    return POS_EMBS[pos_emb].kind == "rotary"


@dataclass
class ModelFields:
    """GPTConfig's own fields, first in its field order; the position embeddings' knobs follow them."""
    block_size: int = 128  # the training length L_train
    vocab_size: int = 65
    vocab_multiple: int = 1  # embedding and head rows padded to a multiple (64: GPT-2's 50257 -> 50304, nanoGPT's
    # faster GPU matmuls); a padded id is never a target, never sampled: its logit is -inf
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    n_kv_head: int = None  # key/value heads (GQA, Ainslie et al. 2023); None: n_head (multi-head attention)
    dropout: float = 0.0
    bias: bool = False
    pos_emb: str = "fope"  # a name in POS_EMBS
    qk_norm: bool = False  # q and k to zero mean, unit variance per head, before the rotation
    norm: str = "layernorm"  # layernorm | rmsnorm
    mlp: str = "gelu"  # gelu | swiglu
    mlp_hidden: int = None  # the MLP's hidden size; None: 4 n_embd (gelu), 8/3 n_embd rounded up to 64 (swiglu)
    norm_eps: float = 1e-5
    tie_embeddings: bool = True  # the output head is the token embedding (GPT-2, SmolLM2)
    rope_theta: float = ROPE_THETA
    rope_scaling: dict = None  # HF's spelling, e.g. {"rope_type": "yarn", "factor": 8.0}; see rope_scaling.py
    rotary_backend: str = "auto"  # auto | eager | c | compile


@dataclass
class GPTConfig(*knob_classes(POS_EMBS), ModelFields):
    """The model's fields and their defaults: their one home (train.py takes every field as a config key), then
    the position embeddings' knobs from their entries. __post_init__ is the one check, one line per mistake."""

    def __post_init__(self):
        choices = {"pos_emb": tuple(POS_EMBS), "norm": ("layernorm", "rmsnorm"), "mlp": ("gelu", "swiglu")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("block_size", "vocab_size", "vocab_multiple", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        limits = {"dropout": (0 <= self.dropout < 1, "in [0, 1)"), "rope_theta": (self.rope_theta > 0, "> 0"),
                  "mlp_hidden": (self.mlp_hidden is None or self.mlp_hidden >= 1, ">= 1"), "norm_eps": (self.norm_eps > 0, "> 0")}
        for name, (ok, what) in limits.items():
            if not ok:
                raise ValueError(f"{name} must be {what}, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_kv_head is not None and not (0 < self.n_kv_head <= self.n_head and self.n_head % self.n_kv_head == 0):
            raise ValueError(f"n_kv_head must divide n_head ({self.n_head}), got {self.n_kv_head}")
        if is_rotary(self.pos_emb):
            check_even(self.n_embd // self.n_head)
        for name, spec in POS_EMBS.items():
            if spec.check and spec.knobs and isinstance(self, spec.knobs):
                spec.check(self)
            if spec.share_layers and getattr(self, spec.share_layers, False) and name != self.pos_emb:
                raise ValueError(f"{spec.share_layers} shares {name}'s module across layers: it needs pos_emb={name}, "
                                 f"got {self.pos_emb!r}")
        check_backend(self.rotary_backend)
        self.rope_scaling = check_scaling(self.rope_scaling)  # stored in HF's spelling

    @classmethod
    def from_dict(cls, args):
        """Build from a checkpoint's model_args, with a one-line error for a foreign checkpoint."""
        names = {f.name for f in fields(cls)}
        unknown = set(args) - names
        if unknown:
            raise ValueError(f"checkpoint model_args has unknown fields {sorted(unknown)}: "
                             "it was written by another model.py")
        return cls(**args)


def make_norm(config):
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.n_kv_head = config.n_kv_head or config.n_head
        self.qk_norm, self.rotary_backend = config.qk_norm, config.rotary_backend
        self.kv_dim = self.n_kv_head * (config.n_embd // config.n_head)
        self.c_attn = nn.Linear(config.n_embd, config.n_embd + 2 * self.kv_dim, bias=config.bias)  # q, k, v
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        spec = POS_EMBS[config.pos_emb]
        # every layer owns its rotary module, so FoPE draws its coefficients per layer (as the official code;
        # the entry's share_layers knob: GPT hands layer 0's module to every layer, as production does)
        self.rotary = spec.build(config) if spec.kind == "rotary" else None
        self.pos_bias = spec.build(config) if spec.kind == "bias" and not spec.shared else None

    def position_qk(self, q, k, offset=0):
        """q, k (B, nh, T, hs) at positions offset .. offset+T-1 as attention uses them: QK norm (zero mean,
        unit variance over each head's dimensions, no affine) if the model has it, then the rotation if the
        embedding rotates; the C kernel does both in one pass. The lens calls this too."""
        if self.rotary is not None:
            return self.rotary(q, offset, norm=self.qk_norm), self.rotary(k, offset, norm=self.qk_norm)
        if self.qk_norm:
            return qk_norm(q, self.rotary_backend), qk_norm(k, self.rotary_backend)
        return q, k

    def repeat_kv(self, x):
        """GQA: (B, n_kv_head, T, hs) -> (B, n_head, T, hs), key/value head j serving query heads
        j*g .. j*g+g-1 (g = n_head / n_kv_head), as Llama does. Repeated before the position embedding, so
        every embedding (FoPE's per-head coefficients, biases, the C kernel) sees n_head heads as before."""
        g = self.n_head // self.n_kv_head
        if g == 1:
            return x
        B, H, T, hs = x.shape
        return x[:, :, None].expand(B, H, g, T, hs).reshape(B, H * g, T, hs)

    def split_heads(self, qkv):
        """c_attn's output (B, T, n_embd + 2 kv_dim) -> q, k, v, each (B, nh, T, hs), k and v repeated to
        n_head (GQA). The lens calls this too."""
        B, T, _ = qkv.shape
        hs = self.n_embd // self.n_head
        q, k, v = qkv.split((self.n_embd, self.kv_dim, self.kv_dim), dim=2)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)
        k = self.repeat_kv(k.view(B, T, self.n_kv_head, hs).transpose(1, 2))
        v = self.repeat_kv(v.view(B, T, self.n_kv_head, hs).transpose(1, 2))
        return q, k, v

    def forward(self, x, shared_bias=None, cache=None, layer=0):
        """cache (KVCache): x holds the tokens after the cache.pos cached ones; their keys and values join it."""
        B, T, C = x.size()
        q, k, v = self.split_heads(self.c_attn(x))  # (B, nh, T, hs)
        start = cache.pos if cache is not None else 0
        q, k = self.position_qk(q, k, start)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # every position so far: 0 .. start+T-1
        dropout = self.dropout if self.training else 0.0
        bias = self.pos_bias if self.pos_bias is not None else shared_bias
        if bias is not None:
            y = attend_with_bias(q, k, v, bias, dropout, q_start=start)
        elif start == 0 or T == 1:  # the new token sees every cached one: no mask
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=start == 0)
        else:  # T new tokens after a cache: row i sees keys 0 .. start+i
            mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class KVCache:
    """Every layer's keys and values (after the position embedding) of the tokens so far, so generation feeds the
    model only its new tokens: the prompt once (prefill), then one at a time. `capacity` positions; pos cached."""

    def __init__(self, n_layer, capacity):
        self.layers, self.capacity, self.pos = [None] * n_layer, capacity, 0

    def update(self, layer, k, v):
        """Write k, v (B, H, T, hs) at positions pos .. pos+T-1 of `layer`; return that layer's k, v so far."""
        end = self.pos + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"the KV cache holds {self.capacity} positions; {end} asked")
        if self.layers[layer] is None:
            shape = (*k.shape[:2], self.capacity, k.shape[3])
            self.layers[layer] = (k.new_empty(shape), v.new_empty(shape))
        keys, values = self.layers[layer]
        keys[:, :, self.pos:end], values[:, :, self.pos:end] = k, v
        return keys[:, :, :end], values[:, :, :end]


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        # SwiGLU keeps the parameter count of a 4x GELU MLP: hidden 8/3 * n_embd, rounded up to 64
        hidden = 64 * math.ceil(8 * config.n_embd / 3 / 64) if self.swiglu else 4 * config.n_embd
        hidden = config.mlp_hidden or hidden
        self.c_fc = nn.Linear(config.n_embd, (2 if self.swiglu else 1) * hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        if self.swiglu:
            gate, up = self.c_fc(x).chunk(2, dim=-1)
            x = F.silu(gate) * up
        else:
            x = F.gelu(self.c_fc(x))
        return self.dropout(self.c_proj(x))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, shared_bias=None, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), shared_bias, cache, layer)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        spec = POS_EMBS[config.pos_emb]
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(padded_vocab(config), config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=make_norm(config),
        ))
        if spec.share_layers and getattr(config, spec.share_layers):  # one module (production FoPE) for every layer
            for block in self.transformer.h[1:]:
                block.attn.rotary = self.transformer.h[0].attn.rotary
        if spec.kind == "absolute":
            self.transformer.wpe = spec.build(config)
        if spec.kind == "bias" and spec.shared:  # one bias module for all layers (ALiBi, T5)
            self.transformer.pos_bias = spec.build(config)
        self.lm_head = nn.Linear(config.n_embd, padded_vocab(config), bias=False)
        if padded_vocab(config) > config.vocab_size:  # -inf on the padded ids' logits
            mask = torch.zeros(padded_vocab(config))
            mask[config.vocab_size:] = float("-inf")
            self.register_buffer("vocab_mask", mask, persistent=False)
        else:
            self.vocab_mask = None
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for m in self.modules():  # position modules with an init of their own (FIRE's MLP)
            if hasattr(m, "reset_position_parameters"):
                m.reset_position_parameters()
        for name, p in self.named_parameters():  # scaled init of residual projections (GPT-2)
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @classmethod
    def from_pretrained(cls, source, **overrides):
        """A pretrained Llama-family model as this GPT, as nanoGPT loads GPT-2: source is "smollm2-135m",
        a .gguf file or an HF folder; overrides change block_size, pos_emb, rope_scaling or FoPE's knobs.
        See pretrained.py."""
        from pretrained import from_pretrained
        return from_pretrained(source, **overrides)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding=True):
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:  # absolute positions
            n -= sum(p.numel() for p in self.transformer.wpe.parameters())
        return n

    def flops_per_token(self, T=None):
        """Training FLOPs per token at sequence length T (default block_size), as nanoGPT and the PaLM paper
        (Chowdhery et al. 2022, App. B) count them: 6 N for the matmuls of the N non-embedding parameters,
        forward and backward, plus 12 L H Q T for attention's scores and weighted sums."""
        c, T = self.config, T or self.config.block_size
        return 6 * self.get_num_params() + 12 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * T

    def forward(self, idx, targets=None, reduction="mean", cache=None):
        """Logits and loss of idx (B, T); without targets only the last position's logits. cache (KVCache):
        idx are the tokens after the cached ones (generate)."""
        B, T = idx.size()
        x = self.hidden_states(idx, cache)
        if targets is None:  # inference: only the last position's logits
            return self.head(x[:, [-1], :]), None
        logits = self.head(x)  # (B, T, padded vocab)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=-1, reduction=reduction)
        if reduction == "none":
            loss = loss.view(B, T)
        return logits, loss

    @torch.no_grad()
    def token_losses(self, idx, targets, chunk=2048):
        """(B, T) float32 loss per token, without ever holding (B, T, vocab) logits: an evaluation of
        32k tokens with a 49k vocabulary would need 6 GB for them."""
        x = self.hidden_states(idx)
        losses = [F.cross_entropy(self.head(x[:, i:i + chunk]).float().transpose(1, 2), targets[:, i:i + chunk],
                                  ignore_index=-1, reduction="none") for i in range(0, idx.shape[1], chunk)]
        return torch.cat(losses, dim=1)

    def head(self, x):
        """Logits (..., padded vocab) of hidden states x: lm_head, with -inf on padded ids (vocab_multiple)."""
        logits = self.lm_head(x)
        return logits if self.vocab_mask is None else logits + self.vocab_mask.to(logits.dtype)

    def hidden_states(self, idx, cache=None):
        """(B, T, n_embd): the last layer's output after the final norm, what lm_head reads. cache: idx
        follows the cache.pos cached tokens, whose keys and values it extends."""
        start = cache.pos if cache is not None else 0
        x = self.transformer.wte(idx)  # (B, T, C)
        if "wpe" in self.transformer:  # absolute positions (learned raises past block_size)
            wpe = self.transformer.wpe
            scale = getattr(wpe, "embed_scale", None)  # sinusoidal's sqrt(n_embd); no multiply by 1 for learned
            x = (x * scale if scale is not None else x) + wpe(start + idx.shape[1], idx.device, x.dtype)[start:]
        x = self.transformer.drop(x)
        shared_bias = self.transformer.pos_bias if "pos_bias" in self.transformer else None
        for layer, block in enumerate(self.transformer.h):
            x = block(x, shared_bias, cache, layer)
        if cache is not None:
            cache.pos += idx.shape[1]
        return self.transformer.ln_f(x)

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        # frozen FoPE coefficients are buffers (or requires_grad=False): they never reach the optimizer
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() == 2]  # matmul weights and embeddings
        no_decay = [p for p in params if p.dim() != 2]  # norms, biases, learnable FoPE coefficients
        groups = [{"params": decay, "weight_decay": weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **({"fused": True} if fused else {}))

    def cache_holds(self, end):
        """Whether keys cached at shorter lengths hold for a sequence of `end` tokens: not where a rotary module's
        tables depend on the whole length (dynamic NTK, LongRoPE past the original length)."""
        return not any(m.length_dependent(end) for m in self.modules() if hasattr(m, "length_dependent"))

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, max_context=None, use_cache=True, stats=None):
        """Sample max_new_tokens after idx (B, T); temperature 0 (or one too small for a float): greedy. The
        context is cropped to max_context tokens (default block_size, the training length). use_cache: the prompt
        runs once (prefill), then each new token alone against a KV cache, the same tokens as without it; where every
        position moves (past max_context, or past a length-dependent rescaling's original length) each step runs the
        context whole. stats (a dict): seconds of the prefill and of the rest."""
        max_context, cache, clock = max_context or self.config.block_size, None, time.perf_counter()
        for step in range(max_new_tokens):
            if not use_cache or idx.size(1) > max_context or not self.cache_holds(idx.size(1)):
                logits, _ = self(idx[:, -max_context:])
            elif cache is None:
                cache = KVCache(self.config.n_layer, min(max_context, idx.size(1) + max_new_tokens))
                logits, _ = self(idx, cache=cache)
            else:
                logits, _ = self(idx[:, -1:], cache=cache)
            logits = logits[:, -1, :].float()
            if temperature == 0:
                idx_next = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = (logits - logits.amax(-1, keepdim=True)).div(temperature).nan_to_num(0.0, neginf=-math.inf)
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                idx_next = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat((idx, idx_next), dim=1)
            if stats is not None and step in (0, max_new_tokens - 1):
                idx_next.cpu()  # waits for the device
                now = time.perf_counter()
                stats["prefill_s" if step == 0 else "decode_s"], clock = now - clock, now
        if stats is not None:
            stats.update(new_tokens=max_new_tokens, decode_s=stats.get("decode_s", 0.0), cache=use_cache)
        return idx
