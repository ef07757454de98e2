"""
A real pretrained model past its training length, with every training-free extension (`make pretrained`).

SmolLM2-135M (HuggingFaceTB; 8k context, RoPE theta 1e5, 9 heads of 64, 3 key/value heads), loaded with
GPT.from_pretrained("smollm2-135m") (pretrained.py), is evaluated on Shakespeare's val plays (Hamlet, Julius
Caesar, The Tempest; data/shakespeare/prepare.py --pretrained smollm2-135m) from 2k to 32k tokens, 4x its
L_train = 8192, with nothing trained. The arms change only the rotary frequencies at evaluation time:

    rope          as trained
    linear, ntk, dynamic, yarn, llama3      rope_scaling (rope_scaling.py, HF's spelling), factor 4
    clamp         FoPE's clamp on the trained frequencies: every frequency whose period exceeds 8192 set
                  to zero (pos_emb=fope, fope_fourier=False; p-RoPE and "clipped RoPE" propose the same)
    clamp+yarn    the clamp, then YaRN on the frequencies it keeps

Measured per arm:
- Perplexity against length. A causal model's loss at position t depends only on tokens 0..t, so the
  first L positions of a window of 32k tokens are exactly a window of L tokens: one forward of each 32k
  window gives every length (all positions, and positions beyond 8192). Dynamic NTK's frequencies depend
  on the sequence's length, so it gets one forward per length past 8192; up to 8192 it is RoPE, exactly.
- Loss against token position on the 32k windows.
- Passkey (passkey.py, the landmark format, 5-digit keys) at 8k and 16k, --depths x --trials documents.
- The lens: the share of attention that queries at the end of a 16k and a 32k window put on keys more than
  8192 tokens back, per layer (forward hooks, the last --tail_queries queries); and the paper's Fig. 7
  question on a real LM: do the pairs with r = w L_train / 2 pi < 1 carry a larger |mean| of q and k
  before the rotation (the paper: Llama-2-7B on 1000 random tokens; here the same on SmolLM2)?

    python experiments/pretrained.py          # about 40 minutes on 2 CPU cores (bfloat16 autocast)
    python experiments/pretrained.py --quick  # a smoke run: 3 arms at 1k-4k tokens (results/quick/)

Writes results/pretrained.{json,csv,md,png} and results/pretrained_positions.png.
"""

import csv
import json
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from configurator import autocast_context, resolve_device  # noqa: E402
from data.shards import ShardError, TokenShards  # noqa: E402
from eval_length import passkey_accuracy  # noqa: E402
from experiments import runner  # noqa: E402
from experiments.protocol import PROTOCOL, deviation  # noqa: E402
from experiments.stats import decide, verdict_text, wilson  # noqa: E402
from experiments.lens_measures import FarMass, QKProbe, cycles, pair_frequencies, pair_mean_norms  # noqa: E402
from passkey import PasskeyDocs  # noqa: E402
from pretrained import from_pretrained, load_tokenizer  # noqa: E402
from util.args import at_least, check_args, in_range  # noqa: E402
from util.machine import cpu_flags, describe_machine  # noqa: E402

SOURCE = "smollm2-135m"
FACTOR = 4.0


def arms(train_len, factor=FACTOR):
    """name -> from_pretrained overrides; every rescaling at `factor`, in HF's spelling."""
    yarn = {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": train_len}
    return {
        "rope": {},
        "linear": {"rope_scaling": {"rope_type": "linear", "factor": factor}},
        "ntk": {"rope_scaling": {"rope_type": "ntk", "factor": factor}},
        "dynamic": {"rope_scaling": {"rope_type": "dynamic", "factor": factor}},
        "yarn": {"rope_scaling": yarn},
        # the YaRN paper's training-free method: YaRN with s = max(1, L / L_train), set anew for each length L
        "dynamic-yarn": {"rope_scaling": {"rope_type": "dynamic-yarn"}},
        "llama3": {"rope_scaling": {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0}},  # Llama 3.1's
        "clamp": {"pos_emb": "fope", "fope_fourier": False},
        "clamp+yarn": {"pos_emb": "fope", "fope_fourier": False, "rope_scaling": yarn},
    }


def model_device(model):
    return next(model.parameters()).device


def window_losses(model, window, dtype, probe=None):
    """(T,) float64 per-token loss (on the CPU) of one window of T + 1 tokens, on the model's device."""
    device = model_device(model)
    idx = torch.from_numpy(window.astype(np.int64))[None].to(device)
    with torch.no_grad(), autocast_context(device, dtype):
        return model.token_losses(idx[:, :-1], idx[:, 1:])[0].double().cpu()


def perplexity_rows(losses, lengths, train_len):
    """{length: {ppl, ppl_beyond}} from per-position losses (windows x T) of windows at least max(lengths) long."""
    rows = {}
    for L in lengths:
        part = losses[:, :L]
        rows[L] = {"ppl": math.exp(part.mean()), "per_window": np.exp(part.mean(1)).tolist()}
        if L > train_len:
            rows[L].update(ppl_beyond=math.exp(part[:, train_len:].mean()),
                           per_window_beyond=np.exp(part[:, train_len:].mean(1)).tolist())
        else:
            rows[L]["ppl_beyond"] = float("nan")
    return rows


def smooth(curve, bin_size):
    n = len(curve) // bin_size
    return np.asarray(curve[:n * bin_size]).reshape(n, bin_size).mean(1).tolist()


def dynamic_yarn(overrides, L, train_len):
    """Dynamic-YaRN's model overrides at length L: static YaRN with s = max(1, L / L_train) (Peng et al. 2023)."""
    scaling = {"rope_type": "yarn", "factor": max(1.0, L / train_len), "original_max_position_embeddings": train_len}
    return {**overrides, "rope_scaling": scaling}


def measure_arm(name, overrides, windows, docs, tok, args, train_len, lengths, stages):
    kind = (overrides.get("rope_scaling") or {}).get("rope_type")
    per_length = kind in ("dynamic", "dynamic-yarn")  # frequencies that depend on the sequence's length
    base = {**overrides, "rope_scaling": None} if kind == "dynamic-yarn" else overrides
    model = from_pretrained(args.source, **base).to(args.device)
    longest = max(lengths)
    n_layer = len(model.transformer.h)
    probe = FarMass(model, [e for e in (2 * train_len, 4 * train_len) if e <= longest], train_len, args.tail_queries)
    mass = {}
    result = {"overrides": overrides}
    if not per_length:  # one forward per window gives every length
        losses = np.stack([window_losses(model, w, args.dtype).numpy() for w in windows])
        result["lengths"] = perplexity_rows(losses, lengths, train_len)
    else:  # its own forward per length past train_len; up to train_len it is RoPE (copied by the caller)
        result["lengths"], losses = {}, None
        for L in (L for L in lengths if L > train_len):
            if kind == "dynamic-yarn":  # a model per length: YaRN at s = L / L_train
                probe.close()
                model = from_pretrained(args.source, **dynamic_yarn(base, L, train_len)).to(args.device)
                probe = FarMass(model, [], train_len, args.tail_queries)
            probe.ends = [L] if L in (2 * train_len, 4 * train_len) else []
            part = np.stack([window_losses(model, w[:L + 1], args.dtype).numpy() for w in windows])
            result["lengths"][L] = perplexity_rows(part, [L], train_len)[L]
            losses = part if L == longest else losses
            for end, values in probe.mass.items():
                mass.setdefault(end, []).extend(values)
            probe.mass = {}
    for end, values in probe.mass.items():
        mass.setdefault(end, []).extend(values)
    probe.mass = mass
    result["far_mass_by_layer"] = {str(end): [float(np.mean(v[layer::n_layer])) for layer in range(n_layer)]
                                   for end, v in probe.mass.items()}
    result["far_mass"] = {end: float(np.mean(v)) for end, v in result["far_mass_by_layer"].items()}
    probe.close()
    result["loss_by_position"] = smooth(losses.mean(0), args.position_bin) if losses is not None else None
    stages.say(f"  {name}: perplexity done")
    result["passkey"] = {}
    for L in args.passkey_lengths:
        if per_length and L <= train_len:
            continue  # RoPE's, copied by the caller
        if kind == "dynamic-yarn":
            model = from_pretrained(args.source, **dynamic_yarn(base, L, train_len)).to(args.device)
        with torch.no_grad(), autocast_context(args.device, args.dtype):
            result["passkey"][L] = passkey_accuracy(model, docs, tok, L, args.depths, args.trials, args.seed, args.device,
                                                    batch_tokens=L)
    return result


@torch.no_grad()
def precision_check(windows, L, args):
    """bfloat16 autocast against float32 on one window of L tokens (the RoPE arm)."""
    model = from_pretrained(args.source).to(args.device)
    w = windows[0][:L + 1]
    lo, hi = window_losses(model, w, "bfloat16"), window_losses(model, w, "float32")
    return {"length": L, "max_abs_loss_diff": float((lo - hi).abs().max()), "mean_loss_bfloat16": float(lo.mean()),
            "mean_loss_float32": float(hi.mean()), "ppl_bfloat16": math.exp(lo.mean()), "ppl_float32": math.exp(hi.mean())}


@torch.no_grad()
def fig7(args, train_len, n_tokens=1000):
    """The paper's Fig. 7 on the real model: |mean| of q and k before the rotation per rotary pair over
    n_tokens random tokens, the pairs with r < 1 against the rest, per layer (heads averaged)."""
    model = from_pretrained(args.source).to(args.device)
    rotary = model.transformer.h[0].attn.rotary
    r = cycles(pair_frequencies(rotary), train_len)
    slow = r < 1
    idx = torch.randint(0, model.config.vocab_size, (1, n_tokens), generator=torch.Generator().manual_seed(args.seed))
    probe = QKProbe(model)
    qk = probe(idx.to(args.device))
    probe.close()
    out = {"r": r.tolist(), "slow_pairs": int(slow.sum()), "pairs": len(r), "tokens": n_tokens, "ratio": {}, "by_pair": {}}
    for name, which in (("q", 0), ("k", 1)):
        norms = torch.stack([pair_mean_norms(layer[which]).mean(0) for layer in qk])  # (n_layer, hd/2)
        out["ratio"][name] = (norms[:, slow].mean(1) / norms[:, ~slow].mean(1)).tolist()
        out["by_pair"][name] = norms.mean(0).tolist()
    return out


def main(argv=None):
    p = runner.parser("SmolLM2-135M past its training length, every training-free extension",
                      "smoke run: 3 arms, windows of 4k, passkey at 2k (results/quick/)", seeds=(1,))
    p.add_argument("--source", default=SOURCE, help="a pretrained source (pretrained.py)")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, then cpu) | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                   help="auto: bfloat16 autocast where the CPU has native bf16 (AMX or AVX512-BF16), else float32")
    p.add_argument("--windows", type=int, default=None, help="val windows of the longest length (default: all of them)")
    p.add_argument("--trials", type=int, default=2, help="passkey documents per (length, depth)")
    p.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    p.add_argument("--tail_queries", type=int, default=256, help="queries at the end of a window for the far mass")
    p.add_argument("--position_bin", type=int, default=256, help="tokens per point of the loss-by-position curve")
    args = p.parse_args(argv)
    check_args([at_least("--windows", args.windows, 1, " (default: all of them)"),
                at_least("--trials", args.trials, 1), in_range("--depths", args.depths, 0, 1),
                at_least("--tail_queries", args.tail_queries, 1), at_least("--position_bin", args.position_bin, 1)])
    results = os.path.join(args.results, "quick") if args.quick else args.results
    if args.report_only:
        with runner.saved_results(results, f"{results}/pretrained.json"):
            return write_report(results, runner.load_json(f"{results}/pretrained.json"), args.quick)
    args.device = resolve_device(args.device)
    if args.quick and args.windows is None:
        args.windows = 1
    if args.dtype == "auto":
        args.dtype = "bfloat16" if args.device.startswith("cuda") or native_bf16() else "float32"
    args.seed = args.seeds[0]
    stages = runner.Stages("pretrained")
    os.makedirs(results, exist_ok=True)

    with stages("data", "1/5 data: Shakespeare's val plays in SmolLM2's tokens"):
        data_dir = args.dataset and os.path.join("data", args.dataset) or os.path.join("data", "shakespeare", args.source)
        if not args.dataset and not os.path.isfile(os.path.join(data_dir, "meta.json")):
            runner.run([sys.executable, runner.repo_path("data/shakespeare/prepare.py"), "--char-only",
                        f"--pretrained={args.source}"], os.path.join(results, "pretrained_prepare.log"))
        tok = load_tokenizer(args.source)
        try:
            data = TokenShards(data_dir, "val")
            data.check_vocab(tok.vocab_size)
        except ShardError as e:
            raise SystemExit(str(e))
        train_len = from_pretrained(args.source).config.block_size
        if args.quick:
            train_len = 1024  # the quick run pretends L_train is 1k, so that 4x fits in seconds
        lengths = [train_len // 4, train_len // 2, train_len, 2 * train_len, 4 * train_len]
        args.passkey_lengths = [train_len // 2] if args.quick else [train_len, 2 * train_len]
        windows = list(data.windows(max(lengths)))[:args.windows]  # --windows None: every window of the val split
        if args.windows and len(windows) < args.windows:
            raise SystemExit(f"{data_dir} val has {len(windows)} windows of {max(lengths)} tokens, --windows asks {args.windows}")
        docs = PasskeyDocs(tok)
    names = arms(train_len)
    if args.quick:
        names = {k: names[k] for k in ("rope", "dynamic", "dynamic-yarn", "clamp+yarn")}
    override = {"block_size": train_len} if args.quick else {}

    with stages("precision", f"2/5 precision: {args.dtype} against float32 on one window of {train_len} tokens"):
        precision = precision_check(windows, train_len, args) if args.dtype == "bfloat16" else None
    with stages("fig7", "3/5 the paper's Fig. 7: |mean| of q, k per rotary pair on 1000 random tokens"):
        fig = fig7(args, train_len)
    measured = {}
    for name, overrides in names.items():
        with stages(f"arm {name}", f"4/5 {name}: perplexity to {max(lengths)} tokens, passkey at {args.passkey_lengths}"):
            measured[name] = measure_arm(name, {**override, **overrides}, windows, docs, tok, args, train_len,
                                         lengths, stages)
    for dynamic in ("dynamic", "dynamic-yarn"):  # up to L_train, dynamic NTK and Dynamic-YaRN are RoPE exactly
        if dynamic in measured and "rope" in measured:
            for L in lengths:
                measured[dynamic]["lengths"].setdefault(L, measured["rope"]["lengths"][L])
            for L in args.passkey_lengths:
                measured[dynamic]["passkey"].setdefault(L, measured["rope"]["passkey"][L])
            measured[dynamic]["lengths"] = dict(sorted(measured[dynamic]["lengths"].items()))
            measured[dynamic]["passkey"] = dict(sorted(measured[dynamic]["passkey"].items()))

    with stages("report", "5/5 report"):
        doc = {"info": {"date": time.strftime("%Y-%m-%d %H:%M"), "source": args.source, "dtype": args.dtype,
                        "train_len": train_len, "lengths": lengths, "windows": len(windows),
                        "window_tokens": max(lengths), "passkey_lengths": args.passkey_lengths,
                        "depths": args.depths, "trials": args.trials, "tail_queries": args.tail_queries,
                        "position_bin": args.position_bin, "factor": FACTOR, "seed": args.seed,
                        "machine": describe_machine(), "threads": torch.get_num_threads(),
                        "command": "python experiments/pretrained.py " + " ".join(argv or sys.argv[1:])},
               "precision": precision, "fig7": fig, "arms": jsonable(measured)}
        doc["info"]["stage_seconds"] = {k: round(v) for k, v in stages.times.items()}
        write_json(f"{results}/pretrained.json", doc)
        write_csv(f"{results}/pretrained.csv", doc)
        plot(results, doc)
    stages.done(f"{results}/pretrained.md", f"{results}/pretrained.png")
    doc["info"]["stage_seconds"] = {k: round(v) for k, v in stages.times.items()}
    write_json(f"{results}/pretrained.json", doc)
    write_report(results, doc, args.quick)


def native_bf16():
    """Whether this CPU multiplies bfloat16 natively (AMX or AVX512-BF16), where autocast pays off."""
    return bool({"amx_bf16", "avx512_bf16"} & set(cpu_flags()))


def jsonable(x):
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def write_json(path, doc):
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)


def write_csv(path, doc):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arm", "length", "ppl", "ppl_beyond", "passkey", "far_mass"])
        for name, arm in doc["arms"].items():
            for L, row in arm["lengths"].items():
                pk = arm["passkey"].get(L, {}).get("passkey")
                w.writerow([name, L, row["ppl"], row["ppl_beyond"], pk, arm["far_mass"].get(L)])


def plot(results, doc):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    info = doc["info"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, arm in doc["arms"].items():
        Ls = [int(L) for L in arm["lengths"]]
        axes[0].plot(Ls, [arm["lengths"][str(L)]["ppl"] for L in Ls], marker="o", label=name)
        if arm["loss_by_position"]:
            x = (np.arange(len(arm["loss_by_position"])) + 0.5) * info["position_bin"]
            axes[1].plot(x, arm["loss_by_position"], label=name, lw=1)
    for ax in axes:
        ax.axvline(info["train_len"], color="gray", ls=":", lw=1)
        ax.set_xscale("log", base=2)
    axes[0].set(xlabel="evaluation length (tokens)", ylabel="perplexity (all positions)", yscale="log",
                title=f"{info['source']}, Shakespeare val, L_train {info['train_len']}")
    axes[1].set(xlabel="token position", ylabel=f"loss (mean over {info['position_bin']}-token bins)",
                title=f"loss by position, {info['windows']} window(s) of {info['window_tokens']}")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(f"{results}/pretrained.png", dpi=110)
    plt.close(fig)


def table(doc):
    arms_, info = doc["arms"], doc["info"]
    lengths = [str(L) for L in info["lengths"]]
    beyond = [L for L in lengths if int(L) > info["train_len"]]
    head = (["arm"] + [f"ppl@{L}" for L in lengths] + [f"beyond@{L}" for L in beyond]
            + [f"passkey@{L}" for L in info["passkey_lengths"]] + [f"far@{L}" for L in beyond])
    rows = []
    for name, arm in arms_.items():
        row = [name] + [f"{arm['lengths'][L]['ppl']:.2f}" for L in lengths]
        row += [f"{arm['lengths'][L]['ppl_beyond']:.2f}" for L in beyond]
        docs = info["trials"] * len(info["depths"])
        for L in info["passkey_lengths"]:  # with the Wilson 95% interval of its documents
            acc = arm["passkey"][str(L)]["passkey"]
            lo, hi = wilson(round(acc * docs), docs)
            row.append(f"{acc:.2f} [{lo:.2f}, {hi:.2f}]")
        row += [f"{arm['far_mass'][L]:.3f}" if L in arm["far_mass"] else "-" for L in beyond]
        rows.append(row)
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))  # noqa: E731
    return [fmt(head)] + [fmt(r) for r in rows]


def derived(doc):
    """Summaries the reading cites, computed from the JSON: Fig. 7's ratio over layers, the rescalings' span."""
    fig, arms_ = doc["fig7"], doc["arms"]
    out = {"fig7": {}}
    for name in ("q", "k"):
        ratio = fig["ratio"][name]
        out["fig7"][name] = {"mean": float(np.mean(ratio)), "min": min(ratio), "max": max(ratio),
                             "layers_above_1": sum(r > 1 for r in ratio), "layers": len(ratio)}
    rescaled = [a for a in ("linear", "ntk", "dynamic", "yarn", "llama3") if a in arms_]
    for L in (str(L) for L in doc["info"]["lengths"][-2:]):
        far = [arms_[a]["far_mass"][L] for a in rescaled if L in arms_[a]["far_mass"]]
        if far:
            out[f"far_rescaled_{L}"] = {"min": min(far), "max": max(far)}
    return out


# The claims the reading makes, one Holm family: (A, B, metric, length as a multiple of L_train). Perplexity with
# the val windows as paired units (every window of the split; "ppl": all positions, "ppl_beyond": those past
# L_train), the passkey with its documents (the same documents for every arm).
CLAIMS = [
    ("linear", "rope", "ppl", 0.25),        # the YaRN paper: interpolation without fine-tuning costs perplexity
    ("ntk", "rope", "ppl", 1), ("ntk", "rope", "ppl_beyond", 4),       # NTK-aware extends without fine-tuning
    ("dynamic", "rope", "ppl_beyond", 4),
    ("dynamic-yarn", "rope", "ppl_beyond", 2), ("dynamic-yarn", "rope", "ppl_beyond", 4),  # its training-free method
    ("dynamic-yarn", "yarn", "ppl_beyond", 4), ("dynamic-yarn", "dynamic", "ppl_beyond", 4),
    ("yarn", "rope", "ppl", 1), ("yarn", "rope", "ppl_beyond", 4), ("llama3", "rope", "ppl_beyond", 4),
    ("clamp", "rope", "ppl", 0.25), ("clamp", "rope", "ppl", 1),    # the clamp as a drop-in, within the context
    ("clamp+yarn", "clamp", "ppl_beyond", 4),
    ("yarn", "rope", "passkey", 2), ("dynamic-yarn", "rope", "passkey", 2), ("yarn", "rope", "passkey", 1),
]


def claims(doc):
    """CLAIMS decided (experiments/stats.py) on the paired per-window or per-document differences A - B."""
    arms_, L0 = doc["arms"], doc["info"]["train_len"]
    out = []
    for a, b, metric, multiple in CLAIMS:
        L = str(int(multiple * L0))
        if a not in arms_ or b not in arms_:
            continue
        if metric == "passkey":
            if "passkey_exact" not in arms_[a]["passkey"].get(L, {}) or "passkey_exact" not in arms_[b]["passkey"].get(L, {}):
                continue
            va, vb, unit = arms_[a]["passkey"][L]["passkey_exact"], arms_[b]["passkey"][L]["passkey_exact"], "documents"
        else:
            if L not in arms_[a]["lengths"] or L not in arms_[b]["lengths"]:
                continue
            field = "per_window" if metric == "ppl" else "per_window_beyond"
            if field not in arms_[a]["lengths"][L] or field not in arms_[b]["lengths"][L]:
                continue  # a run made before the values per window were kept
            va, vb, unit = arms_[a]["lengths"][L][field], arms_[b]["lengths"][L][field], "windows"
        out.append({"a": a, "b": b, "metric": metric, "multiple": multiple, "length": int(L), "unit": unit,
                    "d": list(np.subtract(va, vb)), "reference": float(np.mean(vb))})
    decided = decide([c for c in out if len(c["d"]) > 1])
    return {f"{c['a']} vs {c['b']}, {c['metric']} at {c['multiple']:g}x": {**c, "verdict_text": verdict_text(c, ".2f")}
            for c in decided}


def claim_lines(claimed):
    lines = ["Verdicts (A - B; lower perplexity, higher passkey is better; the val windows or the passkey documents as "
             "the paired units, so they speak of this one model and this text, not of seeds; one Holm family; "
             "experiments/stats.py):", "", "| A vs B | metric at length | verdict |", "|---|---|---|"]
    for c in claimed.values():
        lines.append(f"| {c['a']} vs {c['b']} | {c['metric']} at {c['length']} | {c['verdict_text']} |")
    return lines


def write_report(results, doc, quick=False):
    info = doc["info"]
    doc = {**doc, "derived": derived(doc), "claim": claims(doc)}
    lines = [PROTOCOL.describe(), deviation(
        f"one pretrained model, so no seeds; {info['windows']} window(s) of {info['window_tokens']} tokens; passkey "
        f"{info['trials']} document(s) per depth at {len(info['depths'])} depths", "a 135M model on 2 CPU cores; " + (
        "claims between arms are tested with the windows or documents as units" if doc["claim"] else
        "no claim between arms is tested, the numbers are descriptions")), "",
             f"{info['source']} (pretrained.py), nothing trained; Shakespeare's val plays in its tokens; L_train = "
             f"{info['train_len']}; every rescaling at factor {info['factor']:g}. {info['windows']} window(s) of "
             f"{info['window_tokens']} tokens give every length (a causal model's first L positions are a window of L); "
             f"passkey: depths {info['depths']} x {info['trials']} trial(s) per length; far@L: the attention weight "
             f"the last {info['tail_queries']} queries of a window of L put on keys more than {info['train_len']} back "
             f"(layers and heads averaged). {info['dtype']}. Made {info['date']} by `{info['command'].strip()}`; "
             f"machine: {info['machine']}.", "",
             "![perplexity vs length and loss by position](pretrained.png)", "", "```", *table(doc), "```",
             *(["", *claim_lines(doc["claim"])] if doc["claim"] else [])]
    runner.write_report(f"{results}/pretrained", "nanoFoPE on a pretrained model: SmolLM2-135M past 8k",
                        lines, info["stage_seconds"], None if quick else "pretrained", {"pretrained": doc})


if __name__ == "__main__":
    main()
