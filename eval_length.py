"""
Length generalization sweep: perplexity and passkey retrieval against evaluation length.

    python eval_length.py --ckpt out/demo/rope_s0 out/demo/fope_s0 out/demo/alibi_s0
    python eval_length.py --ckpt out/demo/* --rope_scaling yarn --factor 8 --out results/yarn

Protocol (the README states it too):
- Perplexity: non-overlapping windows of each length over the val split, the same token budget at
  every length (--tokens, so ~tokens/length windows). Two views per window: the loss averaged over
  all positions, and over the positions beyond the training length only (where extrapolation
  happens). Reported as perplexity exp(mean loss).
- Passkey (passkey.py): documents of exactly `length` tokens with a random 5-digit key at each depth
  in --depths, --trials per (length, depth), fixed seed. Scored by exact match of the greedy answer
  (teacher forcing: the greedy answer is the key iff the argmax is right at every answer token).
- Checkpoints sharing a label (pos_emb, clamp-only, scaling) are seeds of one variant: tables and
  plots show their mean and min-max.

Outputs <out>.csv (a row per checkpoint and length), <out>.json (rows, per-position losses, summary),
<out>.png (ppl and passkey accuracy vs length) and <out>_positions.png (loss vs token position at the
longest length).
"""

import argparse
import csv
import json
import math
import os
import resource
import sys
import time
from collections import defaultdict

import numpy as np
import torch
from tqdm import tqdm

from data.shards import ShardError, TokenShards
from data.tokenizer import get_tokenizer
from model import GPT, GPTConfig
from passkey import PasskeyDocs, score

# -----------------------------------------------------------------------------
# loading


def load_checkpoint(path, scaling=None, device="cpu"):
    """-> (model, checkpoint) from an out_dir or a ckpt.pt, with rope_scaling applied at eval time."""
    file = os.path.join(path, "ckpt.pt") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise SystemExit(f"no checkpoint at {path}: train one with python train.py --out_dir={path}")
    checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    for key in ("model", "model_args", "config", "meta"):
        if key not in checkpoint:
            raise SystemExit(f"{file} has no '{key}': not a checkpoint written by train.py")
    args = dict(checkpoint["model_args"])
    if scaling is not None and args["pos_emb"] in ("rope", "fope"):
        args["rope_scaling"] = {**scaling, "original_len": args["block_size"]}
    try:
        model = GPT(GPTConfig.from_dict(args))
        model.load_state_dict(checkpoint["model"])
    except (ValueError, RuntimeError) as e:
        raise SystemExit(f"{file}: {str(e).splitlines()[0]}")
    checkpoint["path"] = path
    return model.to(device).eval(), checkpoint


def variant_label(model_args):
    """The variant a checkpoint belongs to; seeds of one variant share it."""
    pos_emb = model_args["pos_emb"]
    label = "fope-clamp" if pos_emb == "fope" and model_args["fope_sigma"] == 0 else pos_emb
    scaling = model_args.get("rope_scaling")
    if scaling and pos_emb in ("rope", "fope"):
        label += f"+{scaling['rope_type']}{scaling['factor']:g}"
    return label


# -----------------------------------------------------------------------------
# the two measurements


@torch.no_grad()
def perplexity(model, data, length, train_len, tokens, device, batch_tokens=16384):
    """Mean loss over all positions and beyond train_len, and the per-position mean loss, over
    ~tokens/length non-overlapping windows of the split."""
    n_windows = max(1, tokens // length)
    windows = []
    for w in data.windows(length):
        windows.append(w)
        if len(windows) == n_windows:
            break
    if not windows:
        raise ValueError(f"the {data.split} split has {data.num_tokens} tokens, fewer than one window of {length + 1}")
    per_position = torch.zeros(length, dtype=torch.float64)
    batch = max(1, batch_tokens // length)
    for i in range(0, len(windows), batch):
        w = torch.from_numpy(np.stack(windows[i:i + batch])).to(device)
        _, loss = model(w[:, :-1], w[:, 1:], reduction="none")  # (B, T)
        per_position += loss.double().sum(0).cpu()
    per_position /= len(windows)
    beyond = per_position[train_len:].mean().item() if length > train_len else float("nan")
    return {"loss": per_position.mean().item(), "loss_beyond": beyond, "windows": len(windows),
            "per_position": per_position.tolist()}


@torch.no_grad()
def passkey_accuracy(model, docs, tok, length, depths, trials, seed, device, batch_tokens=16384):
    """Exact-match accuracy (and digit accuracy) per depth over `trials` documents of `length` tokens."""
    rng = np.random.default_rng(seed)
    by_depth = {}
    for depth in depths:
        keys = [docs.random_key(rng) for _ in range(trials)]
        built = [docs.build(length, depth, key) for key in keys]
        exact, digits = [], []
        batch = max(1, batch_tokens // length)
        for i in range(0, trials, batch):
            ids = torch.tensor([b[0] for b in built[i:i + batch]], device=device)
            logits, _ = model(ids, ids)  # the whole document, exactly `length` tokens
            pred = logits.argmax(-1)  # pred[:, j] is the greedy guess for token j + 1
            for row, (_, answer_start, _), key in zip(pred, built[i:i + batch], keys[i:i + batch]):
                guess = tok.decode(row[answer_start - 1:length - 1].tolist())
                e, d = score(guess, key)
                exact.append(e)
                digits.append(d)
        by_depth[depth] = (float(np.mean(exact)), float(np.mean(digits)))
    return {"passkey": float(np.mean([v[0] for v in by_depth.values()])),
            "passkey_digits": float(np.mean([v[1] for v in by_depth.values()])),
            "passkey_by_depth": {f"{d:g}": v[0] for d, v in by_depth.items()}}


# -----------------------------------------------------------------------------
# aggregation and outputs


def summarize(rows):
    """label -> length -> {metric: (mean, min, max, n)} over seeds."""
    groups = defaultdict(lambda: defaultdict(list))
    for r in rows:
        groups[r["label"]][r["length"]].append(r)
    summary = {}
    for label, by_length in groups.items():
        summary[label] = {}
        for length, rs in sorted(by_length.items()):
            stats = {}
            for metric in ("ppl", "ppl_beyond", "passkey"):
                values = [r[metric] for r in rs if r[metric] is not None and not math.isnan(r[metric])]
                if values:
                    stats[metric] = {"mean": float(np.mean(values)), "min": min(values), "max": max(values), "n": len(values)}
            summary[label][length] = stats
    return summary


def format_table(summary, lengths):
    def cell(stats, metric, fmt):
        if metric not in stats:
            return "-"
        s = stats[metric]
        text = fmt.format(s["mean"])
        return text + (f" [{fmt.format(s['min'])}-{fmt.format(s['max'])}]" if s["n"] > 1 else "")

    summary = {label: {int(L): s for L, s in by_length.items()} for label, by_length in summary.items()}  # JSON: str keys
    lines = []
    for title, metric, fmt in (("perplexity (all positions)", "ppl", "{:.2f}"),
                               ("perplexity (positions beyond L_train)", "ppl_beyond", "{:.2f}"),
                               ("passkey accuracy", "passkey", "{:.2f}")):
        lines.append(f"{title}: mean over seeds [min-max]")
        header = ["variant"] + [str(L) for L in lengths]
        body = [[label] + [cell(by_length.get(L, {}), metric, fmt) for L in lengths] for label, by_length in summary.items()]
        widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
        for r in [header] + body:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        lines.append("")
    return "\n".join(lines)


def plot(summary, per_position, train_len, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, ylabel in ((axes[0], "ppl", "perplexity (val)"), (axes[1], "passkey", "passkey accuracy")):
        for label, by_length in summary.items():
            pts = [(L, s[metric]) for L, s in sorted(by_length.items()) if metric in s]
            if not pts:
                continue
            xs = [L for L, _ in pts]
            line, = ax.plot(xs, [s["mean"] for _, s in pts], marker="o", label=label)
            ax.fill_between(xs, [s["min"] for _, s in pts], [s["max"] for _, s in pts], color=line.get_color(), alpha=0.2)
        ax.axvline(train_len, color="gray", linestyle="--", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("evaluation length (tokens); dashed: training length")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].set_ylim(-0.03, 1.03)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path + ".png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, curves in per_position.items():
        loss = np.mean(curves, axis=0)
        bin_size = max(1, len(loss) // 64)
        n = len(loss) // bin_size * bin_size
        binned = loss[:n].reshape(-1, bin_size).mean(1)
        ax.plot(np.arange(len(binned)) * bin_size + bin_size / 2, binned, label=label)
    ax.axvline(train_len, color="gray", linestyle="--", linewidth=1)
    ax.set_xlabel("token position (dashed: training length)")
    ax.set_ylabel("val loss (mean over windows and seeds)")
    ax.grid(alpha=0.3)
    if per_position:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path + "_positions.png", dpi=120)
    plt.close(fig)


# -----------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", nargs="+", required=True, help="out_dirs or ckpt.pt files")
    p.add_argument("--multipliers", type=float, nargs="+", default=[1, 2, 4, 8, 16], help="lengths as multiples of L_train")
    p.add_argument("--lengths", type=int, nargs="+", help="explicit lengths (override --multipliers)")
    p.add_argument("--tokens", type=int, default=65536, help="perplexity token budget per length")
    p.add_argument("--trials", type=int, default=20, help="passkey documents per (length, depth); 0 skips passkey")
    p.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--rope_scaling", choices=["linear", "ntk", "dynamic", "yarn"], help="eval-time context extension for rope/fope")
    p.add_argument("--factor", type=float, default=8.0)
    p.add_argument("--no_attn_temperature", action="store_true", help="YaRN without its attention temperature")
    p.add_argument("--split", default="val")
    p.add_argument("--data_dir", help="default: data/<dataset> of each checkpoint's config")
    p.add_argument("--out", default="results/length")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    scaling = None
    if args.rope_scaling:
        scaling = {"type": args.rope_scaling, "factor": args.factor, "attn_temperature": not args.no_attn_temperature}
    models = [load_checkpoint(path, scaling, args.device) for path in args.ckpt]
    train_lens = {ckpt["model_args"]["block_size"] for _, ckpt in models}
    if len(train_lens) > 1:
        raise SystemExit(f"the checkpoints were trained at different lengths {sorted(train_lens)}: sweep them separately")
    train_len = train_lens.pop()
    lengths = args.lengths or sorted({int(round(m * train_len)) for m in args.multipliers})

    data_cache, rows, per_position = {}, [], defaultdict(list)
    tasks = [(m, L) for m in models for L in lengths]
    t0 = time.time()
    for (model, ckpt), length in tqdm(tasks, desc="sweep", unit="run", file=sys.stderr):
        margs = ckpt["model_args"]
        label = variant_label(model.config.__dict__)
        data_dir = args.data_dir or os.path.join("data", ckpt["config"]["dataset"])
        if data_dir not in data_cache:
            try:
                data_cache[data_dir] = TokenShards(data_dir, args.split)
            except ShardError as e:
                raise SystemExit(str(e))
        data = data_cache[data_dir]
        row = {"ckpt": ckpt["path"], "label": label, "pos_emb": margs["pos_emb"], "seed": ckpt["config"].get("seed"),
               "scaling": json.dumps(model.config.rope_scaling) if model.config.rope_scaling else "",
               "train_len": train_len, "length": length, "ppl": None, "ppl_beyond": None, "windows": 0,
               "passkey": None, "passkey_digits": None, "passkey_by_depth": None, "note": ""}
        if margs["pos_emb"] == "learned" and length > margs["block_size"]:
            row["note"] = f"skipped: learned positions stop at block_size {margs['block_size']}"
            tqdm.write(f"{ckpt['path']}: {row['note']} (length {length})", file=sys.stderr)
            rows.append(row)
            continue
        try:
            ppl = perplexity(model, data, length, train_len, args.tokens, args.device)
        except ValueError as e:
            row["note"] = f"skipped: {e}"
            tqdm.write(f"{ckpt['path']}: {row['note']}", file=sys.stderr)
            rows.append(row)
            continue
        row.update(ppl=math.exp(ppl["loss"]), ppl_beyond=math.exp(ppl["loss_beyond"]) if length > train_len else None,
                   windows=ppl["windows"])
        if length == max(lengths):
            per_position[label].append(ppl["per_position"])
        if args.trials > 0:
            tok = get_tokenizer(ckpt["meta"])
            docs = PasskeyDocs(tok)
            if length >= docs.min_length:
                row.update(passkey_accuracy(model, docs, tok, length, args.depths, args.trials, args.seed, args.device))
        rows.append(row)

    summary = summarize(rows)
    table = format_table(summary, lengths)
    print(table)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".csv", "w", newline="") as f:
        fields = [k for k in rows[0] if k != "passkey_by_depth"] + ["passkey_by_depth"]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "passkey_by_depth": json.dumps(r["passkey_by_depth"]) if r["passkey_by_depth"] else ""})
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": "python eval_length.py " + " ".join(argv or sys.argv[1:]),
            "train_len": train_len, "lengths": lengths, "tokens_per_length": args.tokens, "passkey_trials": args.trials,
            "passkey_depths": args.depths, "seconds": round(time.time() - t0, 1), "peak_rss_mb": round(peak_mb, 1),
            "scaling": scaling}
    with open(args.out + ".json", "w") as f:
        json.dump({"info": info, "rows": rows, "summary": summary,
                   "per_position": {"length": max(lengths), "loss": {k: np.mean(v, 0).tolist() for k, v in per_position.items()}}},
                  f, indent=1)
    plot(summary, {k: np.array(v) for k, v in per_position.items()}, train_len, args.out)
    print(f"wrote {args.out}.csv, .json, .png, _positions.png ({info['seconds']} s, peak memory {peak_mb:.0f} MB)")


if __name__ == "__main__":
    main()
