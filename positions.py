"""
The position embeddings model.py can run, by name, and what a position module promises it.

POS_EMBS maps a name to how its module is built, where it acts (kind) and its own knobs. Adding an
embedding is one module file and one line here (prope.py is the worked example). Builders are
"module:function" strings imported on first use, so a scratch run imports only the embedding it
trains (baselines.py only for absolute and bias embeddings). Knobs are imported at once: they are
GPTConfig fields, so GPTConfig needs them when it is defined.

This lives beside model.py, not at its bottom, for that reason (GPTConfig inherits the knob classes
as it is defined) and because runs.py, checkpoint.py, eval_length.py and experiments/ read the
registry without building a model.

- absolute, added to the token embeddings: "learned" (GPT-2; cannot run past block_size),
  "sinusoidal" (Vaswani et al. 2017);
- rotary, applied to q and k in every layer: "rope" (Su et al. 2021), "rope-a" (RoPE with every
  frequency snapped to whole cycles in L_train, the FoPE paper's Table 2), "fope" (Hua et al. 2025,
  arXiv 2412.17739; its fope_* knobs give the paper's ablation arms), "p-rope" (Barbero et al.
  2024, arXiv 2410.06205: only the highest fraction p of RoPE's frequencies rotate);
- additive attention biases: "alibi" (Press et al. 2022; one module for all layers), "kerple" (Chi
  et al. 2022) and "fire" (Li et al. 2023), each layer its own, "t5" (Raffel et al. 2020; shared);
- "nope": no position information at all (causal masking alone; Kazemnejad et al. 2023).
"""

import importlib
from dataclasses import MISSING, dataclass, fields
from typing import Callable, Union

import torch.nn as nn


class PositionModule(nn.Module):
    """The contract of a position module, stated once. What model.py calls, by kind:

    absolute  forward(T, device, dtype) -> (T, n_embd), added to the token embeddings
    rotary    forward(x, offset) -> x (B, H, T, hd) at positions offset .. offset+T-1, rotated;
              the lens (experiments/lens.py) also reads head_dim, inv_freq and pair_frequencies()
    bias      forward(q_start, q_end, k_end, device, dtype) -> (H, Tq, Tk), added to the scores
              (baselines.attend_with_bias)

    and the optional parts, with the defaults below; a module overrides what applies to it. A module
    that does not subclass this class (tests/test_model.py's PhaseRotary) gets the defaults'
    behaviour. checkpoint.load_parent_weights also looks for from_parent(name, parent, own, expand):
    how a module takes a parent run's tensor its own way (FoPE, the biases); without it, a tensor of
    the same shape is copied."""

    embed_scale = None  # absolute: the token embeddings are multiplied by it first (sinusoidal)
    rope_ladder = False  # rotary: its frequencies are RoPE's w_m = theta^(-2m/rot_dim) at the indices
    # freq_index (or zero), the ladder rope_scaling's rescalings assume; False refuses rope_scaling

    def reset_position_parameters(self):
        """Called after GPT's own init (N(0, 0.02) for every Linear and Embedding): an init of its own."""

    def length_dependent(self, end):
        """True when a sequence ending at `end` changes earlier positions' values (dynamic NTK,
        LongRoPE past the original length): the KV cache cannot serve it."""
        return False


def _resolve(ref):
    """A "module:name" string -> that object, importing the module now; anything else as it is."""
    if not isinstance(ref, str):
        return ref
    module, _, name = ref.partition(":")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class PositionEmbedding:
    """How one position embedding enters the model, and all the rest of nanoFoPE needs to know of it.
    build, knobs and check are callables or "module:name" strings (imported when first needed)."""
    kind: str  # "absolute" (added to the token embeddings), "rotary" (applied to q and k),
    # "bias" (added to scores), "none"
    build: Union[Callable, str] = None  # GPTConfig -> module
    shared: bool = True  # a bias module serves all layers (False: every layer owns one)
    past_block_size: bool = True  # it can take sequences longer than it was trained on
    knobs: Union[type, str] = None  # a dataclass of its own GPTConfig fields: GPTConfig inherits them,
    # a pretrained model may override them, runs.py leaves them out of other embeddings' run settings
    check: Union[Callable, str] = None  # GPTConfig -> None: a one-line ValueError for a bad knob
    share_layers: str = None  # the bool knob that hands layer 0's module to every layer
    scales_tokens: bool = False  # it multiplies the token embeddings: no run switches into or out

    def make(self, config):
        """The module for `config` (its builder imported now)."""
        return _resolve(self.build)(config)

    def knob_class(self):
        return _resolve(self.knobs)

    def own_knobs(self):
        """{field name: default} of this embedding's own knobs."""
        if not self.knobs:
            return {}
        return {f.name: f.default if f.default is not MISSING else f.default_factory()
                for f in fields(self.knob_class())}

    def reads(self):
        """The position knobs (GPTConfig fields) this embedding reads."""
        return tuple(self.own_knobs()) + (ROTARY_FIELDS if self.kind == "rotary" else ())


ROTARY_FIELDS = ("rope_theta", "rope_scaling")  # what every rotary embedding reads

POS_EMBS = {  # name -> how it is built; ablate and eval_length.py take every name here
    "nope": PositionEmbedding("none"),
    "learned": PositionEmbedding("absolute", "baselines:LearnedPositions.from_config",
                                 past_block_size=False),
    "sinusoidal": PositionEmbedding("absolute", "baselines:SinusoidalPositions.from_config",
                                    scales_tokens=True),
    "rope": PositionEmbedding("rotary", "fope:rope_from_config"),
    "rope-a": PositionEmbedding("rotary", "fope:rope_a_from_config"),
    "fope": PositionEmbedding("rotary", "fope:fope_from_config", knobs="fope:FoPEKnobs",
                              check="fope:check_fope_config", share_layers="fope_share_layers"),
    "p-rope": PositionEmbedding("rotary", "prope:prope_from_config", knobs="prope:PRoPEKnobs",
                                check="prope:check_prope_config"),
    "alibi": PositionEmbedding("bias", "baselines:AlibiBias.from_config"),
    "kerple": PositionEmbedding("bias", "baselines:KerpleLogBias.from_config", shared=False),
    "fire": PositionEmbedding("bias", "baselines:FireBias.from_config", shared=False),
    "t5": PositionEmbedding("bias", "baselines:T5Bias.from_config"),
}


def knob_classes(registry=POS_EMBS):
    """The knobs dataclasses of the registry's entries, once each: GPTConfig's bases."""
    return tuple(dict.fromkeys(s.knob_class() for s in registry.values() if s.knobs))


def knob_fields(registry=POS_EMBS):
    """Every position knob field: those of the entries' knobs, and the rotary ones."""
    return tuple(dict.fromkeys(f for s in registry.values() for f in s.reads()))


def is_rotary(pos_emb):
    return POS_EMBS[pos_emb].kind == "rotary"


def check_knobs(config):
    """The one-line ValueErrors of GPTConfig's position knobs: the chosen embedding's own check, and a
    knob of another embedding set away from its default (it would be ignored silently)."""
    chosen = POS_EMBS[config.pos_emb]
    for name, spec in POS_EMBS.items():
        for knob, default in spec.own_knobs().items():
            if knob not in chosen.own_knobs() and getattr(config, knob, default) != default:
                raise ValueError(f"{knob} is a knob of {name}, not of {config.pos_emb}: drop it or "
                                 f"pass --pos_emb={name}")
    if chosen.check:
        _resolve(chosen.check)(config)
