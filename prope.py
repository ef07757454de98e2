"""
p-RoPE: Barbero et al. 2024, "Round and Round We Go! What makes Rotary Positional Encodings useful?"
(arXiv 2410.06205, Sec. 6). RoPE's lowest frequencies turn so slowly that they act as a semantic
channel which drifts with distance; p-RoPE keeps only the fraction p of frequency pairs with the
highest frequencies rotating and makes the lowest (1 - p) position-free:

    w_m = theta^(-2m/d)  for m < round(p d/2),   w_m = 0  otherwise

then RoPE's rotation (fope.py's (1)) with those frequencies: a zero frequency gives cos 1, sin 0, so
its pair passes through unrotated. p = 1 is RoPE; p = 0 is no position information at all (NoPE).
The paper's Gemma runs use p = 0.25 and 0.75; 0.75 is the default here.

Its kept frequencies are RoPE's at their own index m and the dropped ones are 0 (every rescaling
multiplies a frequency, so 0 stays 0): it declares RoPE's ladder, and rope_scaling applies.

Registered by one line in positions.POS_EMBS: "p-rope", with its one knob prope_fraction.
"""

from dataclasses import dataclass

import torch

from fope import ROPE_THETA, RotaryEmbedding, rope_inv_freq


@dataclass
class PRoPEKnobs:
    """p-RoPE's GPTConfig field (train.py: --prope_fraction=0.25)."""
    prope_fraction: float = 0.75  # p: the fraction of frequency pairs that rotate, the highest ones


def check_prope_fraction(fraction):
    if not 0 <= fraction <= 1:
        raise ValueError(f"prope_fraction (the fraction of RoPE's frequency pairs that rotate) must be in [0, 1], "
                         f"got {fraction}")


class PartialRotaryEmbedding(RotaryEmbedding):
    """p-RoPE on head_dim dimensions: RoPE's tables with the lowest (1 - fraction) frequencies set to 0."""

    rope_ladder = True

    def __init__(self, head_dim, fraction=0.75, *, theta=ROPE_THETA, scaling=None, train_len=None,
                 backend="eager"):
        super().__init__()
        check_prope_fraction(fraction)
        inv_freq = rope_inv_freq(head_dim, theta)  # highest frequency first
        inv_freq[round(fraction * (head_dim // 2)):] = 0.0  # the lowest ones: position-free
        self.head_dim, self.theta, self.train_len, self.rot_dim = head_dim, theta, train_len, head_dim
        self.fraction = fraction
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("freq_index", torch.arange(head_dim // 2), persistent=False)
        self.configure(scaling, backend)
        self.reset_tables()


def check_prope_config(c):
    check_prope_fraction(c.prope_fraction)


def prope_from_config(c):
    return PartialRotaryEmbedding(c.n_embd // c.n_head, c.prope_fraction, theta=c.rope_theta, scaling=c.rope_scaling,
                                  train_len=c.block_size, backend=c.rotary_backend)
