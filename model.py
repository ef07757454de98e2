"""
A GPT whose position embedding is chosen by name, for studying length generalization.

nanoGPT's model (Karpathy, github.com/karpathy/nanoGPT) with the position embedding as a knob: the
config, then the modules (norm, attention, MLP, block, GPT). Which embeddings exist, and what a
position module promises, is positions.py (POS_EMBS, PositionModule); this file builds the one
named by pos_emb and calls it where its kind acts: added to the token embeddings (absolute),
applied to q and k (rotary), added to the scores (bias). qk_norm=True normalises q and k per head
before any rotation (the FoPE paper's Table 2 "QK norm"). RMSNorm and SwiGLU (the paper's OLMo),
n_kv_head (GQA), mlp_hidden, norm_eps and tie_embeddings make the one GPT a Llama too:
GPT.from_pretrained (pretrained.py) loads SmolLM2-135M into it. GPT.generate decodes with a KV cache.
"""

import inspect
import math
import time
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from positions import (POS_EMBS, ROTARY_FIELDS, PositionEmbedding, PositionModule, check_knobs,  # noqa: F401
                       is_rotary, knob_classes, knob_fields)  # (re-exported: runs.py, tests and experiments)


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
    pos_emb: str = "fope"  # a name in positions.POS_EMBS
    qk_norm: bool = False  # q and k to zero mean, unit variance per head, before the rotation
    norm: str = "layernorm"  # layernorm | rmsnorm
    mlp: str = "gelu"  # gelu | swiglu
    mlp_hidden: int = None  # the MLP's hidden size; None: 4 n_embd (gelu), 8/3 n_embd rounded up to 64 (swiglu)
    norm_eps: float = 1e-5
    tie_embeddings: bool = True  # the output head is the token embedding (GPT-2, SmolLM2)
    rope_theta: float = 10000.0  # RoPE's base (Su et al.; fope.ROPE_THETA)
    rope_scaling: dict = None  # HF's spelling, e.g. {"rope_type": "yarn", "factor": 8.0}; see rope_scaling.py
    rotary_backend: str = "auto"  # auto | eager | c | compile (fope.rotate)


@dataclass
class GPTConfig(*knob_classes(POS_EMBS), ModelFields):
    """The model's fields and their defaults: their one home (train.py takes every field as a config key), then
    the position embeddings' knobs from their entries. __post_init__ is the one check, one line per mistake."""

    def __post_init__(self):
        choices = {"pos_emb": tuple(POS_EMBS), "norm": ("layernorm", "rmsnorm"), "mlp": ("gelu", "swiglu"),
                   "rotary_backend": ("auto", "eager", "c", "compile")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("block_size", "vocab_size", "vocab_multiple", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        limits = {"dropout": (0 <= self.dropout < 1, "in [0, 1)"), "rope_theta": (self.rope_theta > 0, "> 0"),
                  "mlp_hidden": (self.mlp_hidden is None or self.mlp_hidden >= 1, ">= 1"),
                  "norm_eps": (self.norm_eps > 0, "> 0")}
        for name, (ok, what) in limits.items():
            if not ok:
                raise ValueError(f"{name} must be {what}, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_kv_head is not None and not (0 < self.n_kv_head <= self.n_head and self.n_head % self.n_kv_head == 0):
            raise ValueError(f"n_kv_head must divide n_head ({self.n_head}), got {self.n_kv_head}")
        if is_rotary(self.pos_emb) and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"a rotary embedding rotates pairs of dimensions: head_dim (n_embd / n_head) must be "
                             f"even, got {self.n_embd // self.n_head}")
        check_knobs(self)  # the embedding's own check; another embedding's knob refused
        if self.rope_scaling is not None:  # stored in HF's spelling
            from rope_scaling import check_scaling
            self.rope_scaling = check_scaling(self.rope_scaling)

    @classmethod
    def from_dict(cls, args):
        """Build from a checkpoint's model_args, with a one-line error for a foreign checkpoint. Knobs of
        another embedding than the checkpoint's (which older runs took silently and never read) are reset
        to their defaults, so such a checkpoint still loads."""
        names = {f.name for f in fields(cls)}
        unknown = set(args) - names
        if unknown:
            raise ValueError(f"checkpoint model_args has unknown fields {sorted(unknown)}: "
                             "it was written by another model.py")
        spec = POS_EMBS.get(args.get("pos_emb", cls.pos_emb))
        unread = {k: v for s in POS_EMBS.values() if s is not spec for k, v in s.own_knobs().items()
                  if spec is None or k not in spec.own_knobs()}
        return cls(**{k: unread.get(k, v) for k, v in args.items()})


def padded_vocab(c):
    return -(-c.vocab_size // c.vocab_multiple) * c.vocab_multiple


def make_norm(config):
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


QK_NORM_EPS = 1e-5  # F.layer_norm's default


def qk_norm(x, backend="eager"):
    """QK norm: each head's row of x (B, H, T, hd) to zero mean and unit variance, no affine (F.layer_norm
    over hd). On CPU, where rotary_backend takes the C kernel (fope.rotation_path), the kernel's one-pass
    norm does the same sums (fope_ext/rotation.py); without a C compiler, F.layer_norm."""
    if backend in ("auto", "c") and x.device.type == "cpu":
        from fope import rotation_path
        if rotation_path(backend, x.device) == "c":
            from fope_ext.rotation import c_layer_norm
            y = c_layer_norm(x, QK_NORM_EPS)
            if y is not None:
                return y
    return F.layer_norm(x, x.shape[-1:], eps=QK_NORM_EPS)


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
        self.rotary = spec.make(config) if spec.kind == "rotary" else None
        self.pos_bias = spec.make(config) if spec.kind == "bias" and not spec.shared else None

    def position_qk(self, q, k, offset=0):
        """q, k (B, nh, T, hs) at positions offset .. offset+T-1 as attention uses them: QK norm if the model
        has it, then the rotation if the embedding rotates. The lens calls this too."""
        if self.qk_norm:
            q, k = qk_norm(q, self.rotary_backend), qk_norm(k, self.rotary_backend)
        if self.rotary is not None:
            q, k = self.rotary(q, offset), self.rotary(k, offset)
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
        if bias is not None:  # scores + bias (B, nh, T, start+T), a row block at a time (baselines.py)
            from baselines import attend_with_bias
            y = attend_with_bias(q, k, v, bias, dropout, q_start=start)
        elif start == 0 or T == 1:  # the new token sees every cached one: no mask
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=start == 0)
        else:  # T new tokens after a cache: row i sees keys 0 .. start+i
            mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


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
            self.transformer.wpe = spec.make(config)
        if spec.kind == "bias" and spec.shared:  # one bias module for all layers (ALiBi, T5)
            self.transformer.pos_bias = spec.make(config)
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
            if isinstance(m, PositionModule):
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
            scale = wpe.embed_scale if isinstance(wpe, PositionModule) else None  # sinusoidal's sqrt(n_embd)
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
        return not any(m.length_dependent(end) for m in self.modules() if isinstance(m, PositionModule))

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
