"""
The one evaluation protocol: how every experiment scores a checkpoint, so that two reports' numbers can be
read side by side. A report prints PROTOCOL.describe() at its top; an experiment that deviates says so
there, with why (deviation()).

    lengths        L_train x (1, 2, 4, 8, 16)
    perplexity     the first 65,536 tokens of the val split at each length, cut into windows of that length
                   (65,536 / L windows; at 16 x 64 = 1024 tokens, 64 windows): mean loss over all positions
                   ("ppl") and over the positions >= L_train ("ppl beyond L_train")
    passkey        at L_train x (1, 2, 4): 20 documents per depth at depths 0, 0.25, 0.5, 0.75, 1, so 100 per
                   seed and length (one document moves a seed's accuracy by 0.01); exact match of every digit
    statistic      per seed, then the paired per-seed differences of a claim (experiments/stats.py: paired t,
                   TOST within the margin, Holm over a report's claims); passkey also pooled with a Wilson interval
"""

from typing import NamedTuple


class Protocol(NamedTuple):
    multiples: tuple = (1, 2, 4, 8, 16)
    tokens_per_length: int = 65536
    passkey_multiples: tuple = (1, 2, 4)
    passkey_depths: tuple = (0.0, 0.25, 0.5, 0.75, 1.0)
    passkey_docs_per_depth: int = 20

    def sweep_args(self):
        """eval_length.py's flags for this protocol."""
        return ["--multipliers", *map(str, self.multiples), f"--tokens={self.tokens_per_length}",
                f"--trials={self.passkey_docs_per_depth}", "--depths", *map(str, self.passkey_depths),
                f"--passkey_up_to={max(self.passkey_multiples)}"]

    def passkey_docs(self):
        return self.passkey_docs_per_depth * len(self.passkey_depths)

    def describe(self):
        return (f"Protocol (experiments/protocol.py): lengths L_train x {list(self.multiples)}; perplexity on the first "
                f"{self.tokens_per_length:,} val tokens per length in windows of that length; passkey at L_train x "
                f"{list(self.passkey_multiples)}, {self.passkey_docs()} documents per seed and length "
                f"({self.passkey_docs_per_depth} at each depth {list(self.passkey_depths)}); claims as paired per-seed "
                "differences: paired t, TOST within the stated margin, Holm over the report's claims.")


PROTOCOL = Protocol()


def deviation(what, why):
    """The line a report prints where its experiment departs from PROTOCOL."""
    return f"Deviation from the protocol: {what} ({why})."


def header(info, why="", protocol=PROTOCOL):
    """A report's first lines: the protocol, then each way the sweep whose eval_length.py info is given departed
    from it (read from what the sweep recorded, so a report made before the protocol says so), with why."""
    train_len = info["train_len"]
    multiples = [length / train_len for length in info["lengths"]]
    found = []
    if multiples != list(protocol.multiples):
        found.append(f"lengths L_train x {[f'{m:g}' for m in multiples]}")
    if info.get("tokens_per_length") != protocol.tokens_per_length:
        found.append(f"{info.get('tokens_per_length'):,} perplexity tokens per length")
    trials, depths = info.get("passkey_trials"), info.get("passkey_depths") or []
    if trials != protocol.passkey_docs_per_depth or list(depths) != list(protocol.passkey_depths):
        found.append(f"{trials} passkey documents per depth at depths {list(depths)} ({(trials or 0) * len(depths)} per "
                     "seed and length)")
    lines = [protocol.describe()]
    if found:
        lines.append(deviation("; ".join(found), why or "made before the protocol; the next run of this experiment "
                               "follows it"))
    return lines + [""]
