"""
A pretrained RoPE LM turned into FoPE, its clamp, NoPE or YaRN by continued training (`make convert`).

SmolLM2-135M (GPT.from_pretrained, L_train 8192) is trained on Shakespeare's train plays in its own tokens
(data/shakespeare/prepare.py --pretrained), once per arm, on the same batches in the same order (one seeded
generator per arm, drawn alike), with the same steps and learning-rate schedule:

    rope        as trained: the control, what the same tokens do without a change of position embedding
    yarn        rope_scaling yarn x4 (the FoPE paper's rival in its Fig. 4: RoPE-512 + YaRN-1024)
    clamp       FoPE's clamp at the model's own L_train: every frequency with a period over 8192 set to zero (p-RoPE)
    fope        the clamp and the Fourier series, as production runs FoPE on a GQA model (config/fope_production.py:
                one coefficient set per key/value head, a pair per kept frequency, one set for all layers, sigma 0.5)
    nope        no rotation at all (DroPE's recalibration)
    fope+yarn   (--arms) FoPE, then YaRN x4 on the frequencies it keeps
    cope        (--arms) the clamp with CoPE's soft taper (fope_taper="hann", arXiv 2602.05258) instead of a cut

Training windows are --window tokens (shorter than 8192 on a CPU); the model's block_size stays its own, so the
clamp's floor stays at 8192. Each arm is scored at step 0 (its training-free value: make pretrained's for rope,
yarn and clamp, by the same functions) and at --evals points along training, on the val plays the training never
sees: perplexity at 2k and 8k (does the trained context survive?) at every point, and at the last step (--long_evals:
also at step 0, or at every point) past 8192 at 16k (--longest 4: and 32k, the GPU recipe's) for what the conversion
buys, and the passkey at 8k and 16k (documents as units). Perplexity is read on --windows val windows of the longest
length, every shorter length on their prefixes (make pretrained's way: one forward per window).
Each arm is compared with the rope control at the end (experiments/stats.py: windows or documents as the paired
units, one Holm family); the rope control's own curve is the reference, as the same tokens also adapt the model
to Shakespeare.

    python experiments/convert.py            # 71 min on 2 AMD EPYC cores in bf16 (results/convert_timing.json)
    python experiments/convert.py --quick    # a smoke run: rope and fope, 4 steps, 1k windows (results/quick/)
    python experiments/convert.py --device=cuda --compile --window=4096 --steps=2000 --longest=4   # the GPU recipe

The GPU recipe has not been timed on a GPU. An estimate from its FLOPs: a step of 2 x 4096 tokens is ~1e13 (6 x 135M
x 8192, and attention), so 2000 steps take 3-13 minutes an arm at 25-100 TFLOP/s sustained in bf16; a forward of 32k
is ~5e13 (attention dominates), so the evaluations add a minute or two: ~20-70 minutes for the five arms.

Each arm keeps its state (weights, optimizer, batch generator, step, curve) in <out_root>/convert/<arm>/state.pt,
written at each evaluation (1.6 GB for SmolLM2 in float32): an interrupted run resumes there. A finished arm keeps
only its curve (done.json) and is never trained again (--fresh does).
Writes results/convert.{json,md,png}.
"""

import json
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from checkpoint import save_checkpoint  # noqa: E402
from configurator import autocast_context, resolve_device  # noqa: E402
from data.shards import ShardError, TokenShards  # noqa: E402
from eval_length import passkey_accuracy  # noqa: E402
from experiments import runner  # noqa: E402
from experiments.pretrained import arms as pretrained_arms  # noqa: E402
from experiments.pretrained import native_bf16, perplexity_rows, window_losses  # noqa: E402
from experiments.protocol import PROTOCOL, deviation  # noqa: E402
from experiments.stats import decide, verdict_text, wilson  # noqa: E402
from passkey import PasskeyDocs  # noqa: E402
from pretrained import from_pretrained, load_tokenizer  # noqa: E402
from util.args import at_least, check_args, distinct, in_range  # noqa: E402
from util.machine import describe_machine  # noqa: E402

FOPE = {"pos_emb": "fope", "fope_sigma": 0.5, "fope_d_out": "kept", "fope_kv_heads": True, "fope_share_layers": True}


def arms(train_len, factor=4.0):
    """name -> from_pretrained overrides; rope, yarn and clamp are make pretrained's own."""
    same = pretrained_arms(train_len, factor)
    return {"rope": same["rope"], "yarn": same["yarn"], "clamp": same["clamp"], "fope": FOPE,
            "nope": {"pos_emb": "nope"}, "fope+yarn": {**FOPE, "rope_scaling": same["yarn"]["rope_scaling"]},
            "cope": {**same["clamp"], "fope_taper": "hann"}}


ARMS = ("rope", "yarn", "clamp", "fope", "nope", "fope+yarn", "cope")  # arms()'s names, for the checks


# A forward of 32k tokens costs ~12 times one of 8k on a CPU (attention is quadratic: 260 s against 21 s for SmolLM2
# on 2 AMD EPYC cores in bfloat16), so the lengths past L_train and the passkey are scored at the end by default.
LONG_EVALS = {"end": "at the last step only", "ends": "at step 0 and the last step", "all": "at every evaluation"}


def lr_at(step, args):
    """Linear warmup, then a cosine to --min_lr at --steps: the same for every arm."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.min_lr + 0.5 * (1 + math.cos(math.pi * min(1.0, progress))) * (args.lr - args.min_lr)


def eval_windows(data, lengths, n):
    """{L: n windows of L + 1 tokens}: the val split's first n windows of the longest length, and their prefixes for
    every shorter one (a causal model's first L positions are a window of L: one forward gives every length)."""
    longest = list(data.windows(max(lengths)))[:n]
    if len(longest) < n:
        raise SystemExit(f"the val split holds {len(longest)} windows of {max(lengths)} tokens, --windows asks {n}")
    return {L: [w[:L + 1] for w in longest] for L in lengths}


@torch.no_grad()
def evaluate(model, windows, docs, tok, args, train_len, long=True):
    """Perplexity per window at each length (past train_len: its positions beyond it) and each passkey document's
    exact match; means alongside. long=False: only the lengths up to train_len, no passkey (LONG_EVALS)."""
    model.eval()
    out = {"lengths": {}, "passkey": {}}
    lengths = [L for L in windows if long or L <= train_len]
    losses = np.stack([window_losses(model, w, args.dtype).numpy() for w in windows[max(lengths)]])  # prefixes: every L
    for L, row in perplexity_rows(losses, lengths, train_len).items():
        key = "ppl" if L <= train_len else "ppl_beyond"
        values = row["per_window" if L <= train_len else "per_window_beyond"]
        out["lengths"][str(L)] = {"metric": key, "per_window": values, "mean": float(np.mean(values))}
    for L in args.passkey_lengths if long else []:
        with autocast_context(args.device, args.dtype):
            r = passkey_accuracy(model, docs, tok, L, args.depths, args.trials, args.seed, args.device, batch_tokens=L)
        out["passkey"][str(L)] = {"per_document": [float(x) for x in r["passkey_exact"]], "mean": r["passkey"]}
    model.train()
    return out


def train_arm(name, overrides, data, windows, docs, tok, args, train_len, folder, stages):
    """Train one arm for --steps, scoring it at each of the eval steps; resumes from folder/state.pt."""
    os.makedirs(folder, exist_ok=True)
    path, done = os.path.join(folder, "state.pt"), os.path.join(folder, "done.json")
    if os.path.isfile(done) and not args.fresh:  # a finished arm: its curve, not its 1.6 GB of weights and moments
        saved = runner.load_json(done)
        if saved["overrides"] != overrides or saved["settings"] != settings(args):
            raise SystemExit(f"{done} was trained with other settings: pass --fresh to train {name} again")
        stages.say(f"  {name}: finished before, kept ({done})")
        return saved["state"]
    torch.manual_seed(args.seed)  # FoPE's coefficients: the same draw for fope and fope+yarn
    model = from_pretrained(args.source, **overrides).to(args.device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, betas=(0.9, 0.95),
                                  weight_decay=0.0)
    rng = np.random.default_rng(args.seed)  # the batches: one generator per arm, drawn alike
    state = {"step": 0, "curve": [], "batches": [], "step_seconds": []}
    if os.path.isfile(path) and not args.fresh:
        saved = torch.load(path, weights_only=True)
        if saved["overrides"] != overrides or saved["settings"] != settings(args):
            raise SystemExit(f"{path} was trained with other settings: pass --fresh to train {name} again")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        rng.bit_generator.state = saved["rng"]
        state = saved["state"]
        stages.say(f"  {name}: resumed at step {state['step']}")
    step_model = torch.compile(model) if args.compile else model
    ctx = autocast_context(args.device, args.dtype)
    while True:
        step = state["step"]
        if step in args.eval_steps and not any(p["step"] == step for p in state["curve"]):
            long = {"end": step == args.steps, "ends": step in (0, args.steps), "all": True}[args.long_evals]
            state["curve"].append({"step": step, "tokens": step * args.batch * args.window,
                                   **evaluate(model, windows, docs, tok, args, train_len, long)})
            save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng.bit_generator.state,
                             "state": state, "overrides": overrides, "settings": settings(args)}, path)
            stages.say(f"  {name} step {step}: " + ", ".join(f"{L} {v['mean']:.1f}" for L, v in state["curve"][-1]["lengths"].items()))
        if step >= args.steps:  # >=, not ==: no count of steps makes the loop endless
            with open(done + ".tmp", "w") as f:
                json.dump({"overrides": overrides, "settings": settings(args), "state": state}, f)
            os.replace(done + ".tmp", done)
            os.remove(path)  # the weights and moments: nothing left to resume
            return state
        t0 = time.perf_counter()
        x, y = data.get_batch(args.batch, args.window, rng)
        state["batches"].append(int(x.sum()) * 31 + int(x[:, 0].sum()))  # the batch's fingerprint (test: arms alike)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args)
        with ctx:
            _, loss = step_model(x.to(args.device), y.to(args.device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state["step_seconds"].append(time.perf_counter() - t0)
        state.setdefault("loss", []).append(loss.item())
        state["step"] = step + 1


def settings(args):
    """What makes two runs of an arm the same run."""
    return {k: getattr(args, k) for k in ("source", "steps", "window", "batch", "lr", "min_lr", "warmup", "seed",
                                            "windows", "longest", "trials", "depths", "evals", "long_evals", "dtype")}


# -----------------------------------------------------------------------------
# verdicts and the report


def claims(measured, train_len):
    """Every arm against the rope control at the end, and fope against yarn (the paper's Fig. 4): per length, the
    paired per-window (or per-document) differences A - B; one Holm family."""
    pairs = [(a, "rope") for a in measured if a != "rope" and "rope" in measured]
    pairs += [("fope", "yarn")] if {"fope", "yarn"} <= set(measured) else []
    out = []
    for a, b in pairs:
        end_a, end_b = measured[a]["curve"][-1], measured[b]["curve"][-1]
        for L, v in end_a["lengths"].items():
            ref = end_b["lengths"][L]
            out.append({"a": a, "b": b, "length": int(L), "metric": v["metric"], "unit": "windows",
                        "d": list(np.subtract(v["per_window"], ref["per_window"])), "reference": ref["mean"]})
        for L, v in end_a["passkey"].items():
            ref = end_b["passkey"][L]
            out.append({"a": a, "b": b, "length": int(L), "metric": "passkey", "unit": "documents",
                        "d": list(np.subtract(v["per_document"], ref["per_document"])), "reference": ref["mean"]})
    return decide([c for c in out if len(c["d"]) > 1])


def row(cells):
    """A markdown table row: as many cells as the header's separator counts, none empty."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def same_batches(measured):
    """Whether every arm trained on the same batches (their fingerprints alike); None for fewer than two arms."""
    return len({json.dumps(m["batches"]) for m in measured.values()}) == 1 if len(measured) > 1 else None


def fingerprints(doc):
    same = same_batches(doc["arms"])
    return "one arm, no fingerprints to compare" if same is None else f"fingerprints {'alike' if same else 'NOT alike'}"


def report_lines(doc):
    info, measured = doc["info"], doc["arms"]
    lengths = [str(L) for L in info["lengths"]]
    cost = {a: float(np.median(m["step_seconds"])) for a, m in measured.items() if m["step_seconds"]}
    lines = [PROTOCOL.describe(), deviation(
        f"one pretrained model trained once per arm, so no seeds; lengths {info['lengths']}; perplexity on "
        f"{info['windows']} val window(s) of {max(info['lengths']):,} tokens and their prefixes; passkey "
        f"{info['trials']} document(s) per depth at {len(info['depths'])} depths, at {info['passkey_lengths']}",
        "a 135M model trained and scored on 2 CPU cores; claims between arms take the windows (paired t, TOST) or the "
        "passkey documents (exact McNemar, the discordance bound) as units"), "",
             f"{info['source']} (L_train {info['train_len']}) trained {info['steps']} steps of {info['batch']} x "
             f"{info['window']} tokens per arm ({info['steps'] * info['batch'] * info['window']:,} tokens each, the same "
             f"batches: {fingerprints(doc)}), lr {info['lr']:g} -> "
             f"{info['min_lr']:g}, {info['dtype']} on {info['machine']}. Median step: "
             + ", ".join(f"{a} {s:.2f} s" for a, s in cost.items()) + ".", "",
             f"Perplexity on {info['windows']} val window(s) of {max(info['lengths']):,} tokens (shorter lengths: their "
             f"prefixes; past {info['train_len']}: its positions beyond it), passkey on {len(info['depths']) * info['trials']} "
             f"documents per length, at each evaluation step (past {info['train_len']} and the passkey: "
             f"{LONG_EVALS[info['long_evals']]}; '-': not scored there):", "",
             row(["arm", "step", "tokens", *(f"ppl {L}" for L in lengths),
                  *(f"passkey {L}" for L in info["passkey_lengths"])]),
             "|---" * (3 + len(lengths) + len(info["passkey_lengths"])) + "|"]
    for arm, m in measured.items():
        for point in m["curve"]:
            keys = []
            for L, v in point["passkey"].items():
                lo, hi = wilson(sum(v["per_document"]), len(v["per_document"]))
                keys.append(f"{v['mean']:.2f} [{lo:.2f}, {hi:.2f}]")
            keys += ["-"] * (len(info["passkey_lengths"]) - len(keys))
            cells = [f"{point['lengths'][L]['mean']:.1f}" if L in point["lengths"] else "-" for L in lengths]
            lines.append(row([arm, point["step"], f"{point['tokens']:,}", *cells, *keys]))
    lines += ["", "Verdicts at the end (A - B; windows or documents as the paired units, so they speak of this one "
              "training run per arm, not of seeds; experiments/stats.py):", "", "| A vs B | metric at length | verdict |",
              "|---|---|---|"]
    for c in doc["claims"]:
        lines.append(f"| {c['a']} vs {c['b']} | {c['metric']} at {c['length']} | {verdict_text(c)} |")
    return lines


def plot(path, doc):
    """Training loss against tokens; perplexity at each length up to L_train against tokens (the recovery curves);
    the length curve at the last step, every arm beside the rope control."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    info = doc["info"]
    short = [str(L) for L in info["lengths"] if L <= info["train_len"]]
    fig, axes = plt.subplots(1, len(short) + 2, figsize=(4 * (len(short) + 2), 3.4))
    for arm, m in doc["arms"].items():
        line, = axes[0].plot(np.arange(1, len(m.get("loss", [])) + 1) * info["batch"] * info["window"], m.get("loss", []),
                             label=arm, lw=1)
        for ax, L in zip(axes[1:], short):
            points = [p for p in m["curve"] if L in p["lengths"]]
            ax.plot([p["tokens"] for p in points], [p["lengths"][L]["mean"] for p in points], "o-", color=line.get_color())
            ax.set_title(f"perplexity at {L}")
            ax.set_xlabel("tokens trained")
        end = m["curve"][-1]["lengths"]
        axes[-1].plot([int(L) for L in end], [v["mean"] for v in end.values()], "o-", color=line.get_color(),
                      lw=2.5 if arm == "rope" else 1.2)
    axes[0].set(title="training loss", xlabel="tokens trained")
    axes[-1].set(title=f"at the last step (past {info['train_len']}: beyond it)", xlabel="evaluation length", xscale="log")
    axes[-1].axvline(info["train_len"], color="gray", ls=":", lw=1)
    axes[-1].set_xticks(info["lengths"], [f"{L // 1024}k" if L % 1024 == 0 else str(L) for L in info["lengths"]])
    axes[-1].minorticks_off()
    for ax in axes[1:]:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 3, 5)))  # 20, 30, 50, 100, ...
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parser():
    p = runner.parser("SmolLM2-135M turned into FoPE (and its clamp, NoPE, YaRN) by continued training",
                      "smoke run: rope and fope, 4 steps, 1k windows", seeds=(1,))
    p.add_argument("--source", default="smollm2-135m", help="a pretrained source (pretrained.py)")
    p.add_argument("--arms", nargs="+", default=["rope", "yarn", "clamp", "fope", "nope"])
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--window", type=int, default=1024, help="training window (tokens); the model keeps its own L_train")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--min_lr", type=float, default=3e-6)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--evals", type=int, default=2, help="evaluations after step 0, evenly spaced to --steps")
    p.add_argument("--long_evals", choices=tuple(LONG_EVALS), default="end",
                   help="when to score past L_train and the passkey: " + "; ".join(f"{k}: {v}" for k, v in LONG_EVALS.items()))
    p.add_argument("--windows", type=int, default=3, help="val windows of the longest length (the paired units)")
    p.add_argument("--longest", type=int, default=2, choices=(1, 2, 4),
                   help="the longest length, in L_train: 2 (16k) fits 90 minutes on 2 CPU cores, 4 (32k) is the GPU's")
    p.add_argument("--trials", type=int, default=1, help="passkey documents per (length, depth)")
    p.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    p.add_argument("--train_len", type=int, help="the lengths' unit (default: the model's own L_train)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    p.add_argument("--compile", action="store_true", help="torch.compile the training step (the GPU recipe)")
    return p


def check(args):
    """Every count and choice, before the data stage and the model's load."""
    check_args([at_least("--steps", args.steps, 1, " (a step-0-only run would report untrained arms)"),
                at_least("--window", args.window, 1), at_least("--batch", args.batch, 1),
                ("--lr", args.lr, 0 < args.lr < math.inf, "must be > 0"),
                in_range("--min_lr", args.min_lr, 0, args.lr), at_least("--warmup", args.warmup, 0),
                at_least("--evals", args.evals, 1), at_least("--windows", args.windows, 1),
                at_least("--trials", args.trials, 0, " (0: no passkey)"), in_range("--depths", args.depths, 0, 1),
                at_least("--train_len", args.train_len, 1), distinct("--arms", args.arms)])
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"--arms: unknown {sorted(unknown)}; pick from {', '.join(ARMS)}")


def main(argv=None):
    args = parser().parse_args(argv)
    check(args)
    results = os.path.join(args.results, "quick") if args.quick else args.results
    if args.quick:
        args.arms, args.steps, args.window, args.evals, args.windows, args.trials = ["rope", "fope"], 4, 256, 1, 2, 1
        args.train_len, args.depths, args.warmup = args.train_len or 1024, [0.5], 1
    if args.report_only:
        with runner.saved_results(results, f"{results}/convert.json"):
            return write(results, runner.load_json(f"{results}/convert.json"))
    args.device = resolve_device(args.device)
    if args.dtype == "auto":
        args.dtype = "bfloat16" if args.device.startswith("cuda") or native_bf16() else "float32"
    args.seed = args.seeds[0]
    args.eval_steps = sorted({0, *(round(args.steps * (i + 1) / args.evals) for i in range(args.evals))})
    stages = runner.Stages("convert")
    with stages("data", "1/3 data: Shakespeare's plays in the model's tokens"):
        data_dir = os.path.join("data", args.dataset) if args.dataset else os.path.join("data", "shakespeare", args.source)
        if not args.dataset and not os.path.isfile(os.path.join(data_dir, "meta.json")):
            os.makedirs(args.out_root, exist_ok=True)
            runner.run([sys.executable, runner.repo_path("data/shakespeare/prepare.py"), "--char-only",
                        f"--pretrained={args.source}"], os.path.join(args.out_root, "convert_prepare.log"))
        tok = load_tokenizer(args.source)
        try:
            train, val = TokenShards(data_dir, "train"), TokenShards(data_dir, "val")
            val.check_vocab(tok.vocab_size)
        except ShardError as e:
            raise SystemExit(str(e))
        train_len = args.train_len or from_pretrained(args.source).config.block_size
        lengths = [L for L in (train_len // 4, train_len, 2 * train_len, 4 * train_len) if L <= args.longest * train_len]
        args.passkey_lengths = [train_len, 2 * train_len] if args.trials else []
        windows, docs = eval_windows(val, lengths, args.windows), PasskeyDocs(tok)
        longest = max(h.num_tokens for h in train.headers)
        if longest <= args.window:
            raise SystemExit(f"no train shard of {data_dir} holds --window + 1 = {args.window + 1} tokens "
                             f"(longest: {longest}): use a smaller --window")
    measured = {}
    out = os.path.join(args.out_root, "convert_quick" if args.quick else "convert")
    for name in args.arms:
        overrides = {**arms(train_len)[name], **({"block_size": train_len} if args.train_len else {})}
        with stages(f"arm {name}", f"2/3 {name}: {args.steps} steps of {args.batch} x {args.window} tokens, "
                                   f"evaluated at steps {args.eval_steps}"):
            measured[name] = train_arm(name, overrides, train, windows, docs, tok, args, train_len,
                                       os.path.join(out, name.replace("+", "_")), stages)
    with stages("report", "3/3 report"):
        same = same_batches(measured)
        doc = {"info": {**settings(args), "date": time.strftime("%Y-%m-%d %H:%M"), "train_len": train_len,
                        "lengths": lengths, "passkey_lengths": args.passkey_lengths, "quick": args.quick,
                        "machine": describe_machine(), "threads": torch.get_num_threads(),
                        "command": "python experiments/convert.py " + " ".join(argv or sys.argv[1:])},
               "same_batches": same, "arms": measured}
        os.makedirs(results, exist_ok=True)
    stages.done(f"{results}/convert.md")
    doc["info"]["stage_seconds"] = {k: round(v) for k, v in stages.times.items()}
    write(results, json.loads(json.dumps(doc, default=str)), stages.times)


def is_make_convert(doc):
    """Whether a run is make convert's own: every setting (but the dtype) and the arms at their defaults. Only its
    report carries experiments/readings/convert.md, whose prose names those settings."""
    default = parser().parse_args([])
    default.seed = default.seeds[0]
    same = {k: v for k, v in settings(default).items() if k != "dtype"}
    return not doc["info"]["quick"] and all(doc["info"].get(k) == v for k, v in same.items()) \
        and list(doc["arms"]) == default.arms


def write(results, doc, times=None):
    """The report from the measurements: the claims are decided here, so --report_only decides them anew."""
    if not doc["arms"]:
        raise SystemExit(f"{results}/convert.json holds no arms (damaged?): run experiments/convert.py again "
                         "(without --report_only)")
    doc["same_batches"] = same_batches(doc["arms"])
    doc["claims"] = claims(doc["arms"], doc["info"]["train_len"])
    doc["claim"] = {f"{c['a']} vs {c['b']}, {c['metric']} at {c['length']}": {**c, "verdict_text": verdict_text(c, ".2f")}
                    for c in doc["claims"]}  # by name, for the reading
    with open(f"{results}/convert.json", "w") as f:
        json.dump(doc, f, indent=1)
    plot(f"{results}/convert.png", doc)
    described = is_make_convert(doc)
    lines = report_lines(doc) + ([] if described else ["", "No reading: experiments/readings/convert.md describes "
                                                       "make convert's own run (its settings and its five arms, no other)."])
    runner.write_report(f"{results}/convert", "A pretrained RoPE model turned into FoPE by continued training",
                        lines, times or doc["info"].get("stage_seconds", {}), "convert" if described else None,
                        {"convert": doc})
    print(f"wrote {results}/convert.md")


if __name__ == "__main__":
    main()
