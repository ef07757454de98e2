"""
Passkey retrieval: the long-context probe of Mohtashami & Jaggi 2023 ("Landmark Attention",
arXiv 2305.16300), also used by YaRN (Peng et al. 2023) and the FoPE paper (Hua et al. 2025, Sec. 5).

A document is filler text with one key sentence hidden at a chosen depth, ending in a question whose
answer is the key:

    <filler ...> The key is [48213]. <filler ...> The key is [48213
                 ^ key sentence at `depth`          ^ question, then the answer

The template is shortened from the landmark format ("The pass key is 12345. Remember it. ...") so that
a whole document fits in the 64-character context of the laptop models, and the key is bracketed: "["
occurs nowhere else in a document, so retrieval is one induction step (find the earlier "[", copy what
followed). A model scores when its greedy continuation of the question reproduces the key. Documents are
built from token ids piece by piece, so a document hits the requested length exactly in tokens, for any
tokenizer.

Training mixes in such documents (train.py's passkey_warmup and passkey_frac): a tiny model trained on
Shakespeare alone retrieves nothing, and a curve of zeros measures nothing. The copy circuit (an
induction head) is slow to form: mixed into Shakespeare from the start it did not form within 2000
iterations here; on passkey documents alone it forms in ~500-1000, if the learning rate starts low
(config/demo.py has the measurements). Within the training length the models that formed it retrieve;
beyond it, what is measured is extrapolation.
"""

import numpy as np
import torch

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
KEY_PREFIX = "The key is ["  # key sentence: KEY_PREFIX + "48213" + "]. "; question: KEY_PREFIX; answer: "48213"
KEY_DIGITS = 5


class PasskeyDocs:
    """Builds passkey documents for one tokenizer (anything with .encode(str) -> list[int]). The key's
    tokens are encoded once and used both in the key sentence and as the answer, so that with BPE too
    the answer is a copy of tokens the document contains."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.filler = tokenizer.encode(FILLER)
        self.prefix = tokenizer.encode(KEY_PREFIX)
        self.period = tokenizer.encode("]. ")
        self.min_length = len(self.build(0, 0.5, "0" * KEY_DIGITS, pad=True)[0]) + 8  # and some filler

    def filler_tokens(self, n, start=0):
        reps = (start + n) // len(self.filler) + 1
        return (self.filler * reps)[start:start + n]

    def build(self, length, depth, key, pad=False):
        """-> (ids, answer_start, key_start): exactly `length` token ids ending in the question and
        its answer (the key); the key sentence starts at key_start, at fraction `depth` of the filler
        (0 = first, 1 = just before the question)."""
        answer = self.tok.encode(key)
        key_sentence = self.prefix + answer + self.period
        n_filler = length - len(key_sentence) - len(self.prefix) - len(answer)
        if pad:  # only the fixed parts (for min_length)
            n_filler = 0
        elif n_filler < 0:
            raise ValueError(f"a passkey document needs at least {length - n_filler} tokens, asked for {length}")
        before = int(round(depth * n_filler))
        ids = (self.filler_tokens(before) + key_sentence + self.filler_tokens(n_filler - before, before)
               + self.prefix + answer)
        return ids, len(ids) - len(answer), before

    def random_key(self, rng):
        """KEY_DIGITS distinct random digits (30,240 keys). With repeats allowed, half of the keys repeat
        a digit before their last one ("48843"), and there copying "what followed the earlier 8" is
        ambiguous: a model needs a longer match than one induction step. The laptop models formed the
        one step and then failed on those keys (exploratory runs: exact match 0.68-0.85 at a per-digit
        accuracy of 0.96), which measures the probe's ambiguity, not retrieval over distance."""
        return "".join(str(d) for d in rng.permutation(10)[:KEY_DIGITS])

    def training_doc(self, rng, max_length):
        """A document with a random key at a uniform random depth; half of the time `max_length` long,
        otherwise of a uniform random length in [min_length, max_length]. Random lengths move the
        question around the window; whole-window documents cover every key-to-question distance the
        window allows evenly (with random lengths alone the longest distances are rare, and models
        then missed keys placed at the very start of a window-long prompt)."""
        length = max_length if rng.random() < 0.5 else int(rng.integers(self.min_length, max_length + 1))
        ids, _, _ = self.build(length, float(rng.random()), self.random_key(rng))
        return np.asarray(ids, dtype=np.int64)

    def mix_into(self, x, y, frac, rng):
        """Training mix: each row of the batch (x, y = x shifted by one) starts, with probability
        frac, with a passkey document; the rest of the row keeps its text. In place."""
        block_size = x.shape[1]  # >= min_length - 1: train.py checks
        for i in np.flatnonzero(rng.random(x.shape[0]) < frac):
            doc = torch.from_numpy(self.training_doc(rng, block_size + 1))
            row = torch.cat((x[i], y[i, -1:]))  # the window's block_size + 1 tokens
            row = torch.cat((doc, row[:block_size + 1 - len(doc)]))
            x[i], y[i] = row[:-1], row[1:]


def score(predicted, key):
    """(exact match, fraction of the key's digits right) for a predicted answer string."""
    predicted = predicted.strip()
    right = sum(p == k for p, k in zip(predicted, key))
    return predicted == key, right / len(key)
