"""
Length generalization sweep: perplexity and passkey retrieval against evaluation length.

    python eval_length.py --ckpt out/demo/rope_s0 out/demo/fope_s0 out/demo/alibi_s0
    python eval_length.py --ckpt out/demo/* --rope_scaling yarn --factor 8 --out results/yarn
    python eval_length.py --ckpt out/a_s1 out/a_s2 out/b_s1 --label mine=out/a_s1,out/a_s2

Protocol (the README states it too):
- Perplexity: non-overlapping windows of each length over the val split, the same token budget at
  every length (--tokens, so ~tokens/length windows). Two views per window: the loss averaged over
  all positions, and over the positions beyond the training length only (where extrapolation
  happens). Reported as perplexity exp(mean loss).
- Passkey (passkey.py): documents of exactly `length` tokens with a random 5-digit key at each depth
  in --depths, --trials per (length, depth), fixed seed. Scored by exact match of the greedy answer
  (teacher forcing: the greedy answer is the key iff the argmax is right at every answer token).
- Checkpoints whose runs differ only in what does not change the trained model (seed, out_dir, wandb
  names, device, rotary_backend, compile, log/eval intervals: NOT_THE_MODEL) are seeds of one run:
  tables and plots show their mean and min-max. Any other difference (a model field, the learning
  rate, the iteration reached, ...) makes another row.
- A row is labelled by its pos_emb and what sets it apart from the other rows (e.g. "fope" and
  "fope fope_sigma=0.1": the settings that vary between rows, where they differ from train.py's
  default), then "+yarn8" etc. for eval-time scaling. --label NAME=CKPT[,CKPT...] names the row those
  checkpoints are in (repeat it for several rows).
- A length is skipped only where it cannot be measured, and the table says so: longer than the
  split's longest shard (perplexity and passkey), past block_size for learned positions, shorter
  than a passkey document (passkey only). Any other error stops the sweep.

Outputs <out>.csv (a row per checkpoint and length), <out>.json (rows, per-position losses, summary),
<out>.png (ppl and passkey accuracy vs length) and <out>_positions.png (loss vs token position at the
longest length).
"""

import argparse
import ast
import csv
import dataclasses
import json
import math
import os
import resource
import sys
import time
from collections import Counter, defaultdict

import numpy as np
import torch
from tqdm import tqdm

from checkpoint import build_model, checkpoint_file, load_checkpoint
from configurator import resolve_device
from data.shards import ShardError, TokenShards
from data.tokenizer import get_tokenizer
from fope import check_scaling
from model import POS_EMBS, is_rotary
from passkey import PasskeyDocs, score
from train import DEFAULTS as TRAIN_DEFAULTS

# -----------------------------------------------------------------------------
# loading




def load_model(path, scaling=None, device="cpu"):
    """-> (model, checkpoint) from an out_dir or a ckpt.pt, with rope_scaling applied at eval time."""
    checkpoint = load_checkpoint(path)
    args = dict(checkpoint["model_args"])
    if scaling is not None and is_rotary(args["pos_emb"]):
        args["rope_scaling"] = {"original_max_position_embeddings": args["block_size"], **scaling}
    checkpoint["path"] = path
    return build_model(checkpoint, path, args).to(device).eval(), checkpoint


# -----------------------------------------------------------------------------
# which checkpoints are seeds of one run, and what to call each run

# train.py settings that do not change the trained model: checkpoints differing only in these are seeds
NOT_THE_MODEL = ("seed", "out_dir", "wandb_log", "wandb_project", "wandb_run_name", "init_from", "device",
                 "rotary_backend", "compile", "log_interval", "eval_interval", "eval_iters", "always_save_checkpoint")


def run_settings(checkpoint, model):
    """Everything that makes the evaluated model what it is: the train config minus NOT_THE_MODEL, the
    model's fields (eval-time rope_scaling included) and the iteration reached. Settings the position
    embedding never reads are left out, so two rope runs that differ only in fope_sigma are one run."""
    settings = {k: v for k, v in checkpoint["config"].items() if k not in NOT_THE_MODEL}
    settings.update((k, v) for k, v in dataclasses.asdict(model.config).items() if k not in NOT_THE_MODEL)
    settings["iter_num"] = checkpoint["iter_num"]
    parent = checkpoint.get("parent")  # a continued run (init_from=<run>): what it started from counts too
    if parent:
        settings["parent"] = f"{parent['model_args']['pos_emb']}@{parent['model_args']['block_size']}:{parent['iter_num']}"
    pos_emb = settings["pos_emb"]
    for key in list(settings):
        if (key.startswith("fope_") and pos_emb != "fope"
                or key in ("rope_theta", "rope_scaling") and not is_rotary(pos_emb)):
            del settings[key]
    return settings


def differences(a, b):
    return [k for k in {**a, **b} if a.get(k) != b.get(k)]


def label_runs(settings_by_ckpt, names, suffix=""):
    """{ckpt: settings}, {ckpt: --label name} -> {ckpt: label}; equal settings share a label (seeds).

    A run without a --label name is called by its pos_emb and, of the settings that vary between the
    runs, those where it differs from train.py's default (all of them for a setting without a default,
    such as iter_num). suffix (e.g. "+yarn8") follows the label of rotary runs."""
    runs = defaultdict(list)  # settings as JSON -> the checkpoints of that run
    for ckpt, settings in settings_by_ckpt.items():
        runs[json.dumps(settings, sort_keys=True, default=str)].append(ckpt)
    settings_of = {run: settings_by_ckpt[ckpts[0]] for run, ckpts in runs.items()}
    values = defaultdict(list)  # setting -> its value in each run that has it
    for settings in settings_of.values():
        for key, value in settings.items():
            values[key].append(json.dumps(value, sort_keys=True, default=str))
    varying = {k for k, v in values.items() if len(set(v)) > 1} - {"pos_emb", "rope_scaling"}

    def shown(key, value):  # a setting without a train.py default (iter_num, vocab_size) is always shown
        return key in varying and (key not in TRAIN_DEFAULTS or value != TRAIN_DEFAULTS[key])

    labels = {}
    for run, ckpts in runs.items():
        settings = settings_of[run]
        given = {names[c] for c in ckpts if c in names}
        if len(given) > 1:
            raise SystemExit(f"--label gives one run two names ({', '.join(sorted(given))}): {', '.join(ckpts)} "
                             "differ only in seed or output names")
        if given:
            label = given.pop()
        else:
            apart = [f"{k}={v}" for k, v in settings.items() if shown(k, v)]
            label = " ".join([settings["pos_emb"], *apart])
        labels[run] = label + (suffix if is_rotary(settings["pos_emb"]) else "")
    for name in set(names.values()):
        named = [run for run, ckpts in runs.items() if any(names.get(c) == name for c in ckpts)]
        if len(named) > 1:
            differ = differences(settings_of[named[0]], settings_of[named[1]])
            raise SystemExit(f"--label {name} names checkpoints of different runs (they differ in "
                             f"{', '.join(differ)}): give each run its own label")
    repeated = [label for label, n in Counter(labels.values()).items() if n > 1]
    if repeated:
        raise SystemExit(f"two different runs would both be labelled {repeated[0]!r}: name them apart with --label")
    return {ckpt: labels[run] for run, ckpts in runs.items() for ckpt in ckpts}


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
    if not windows:  # main() skips such lengths before calling: here it is a caller's mistake
        raise ValueError(f"the {data.split} split has no window of {length + 1} tokens")
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


def longest_length(data):
    """The longest evaluation length the split can fill: a window needs length + 1 tokens of one shard."""
    return max(len(shard) for shard in data.shards) - 1


def summarize(rows):
    """label -> length -> {metric: {mean, min, max, n}} over seeds, and "note": why a length was skipped."""
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
            notes = sorted({r["note"] for r in rs if r["note"]})
            if notes:
                stats["note"] = "; ".join(notes)
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
    skipped = [f"  {label} at {L}: {s['note']}" for label, by_length in summary.items()
               for L, s in sorted(by_length.items()) if "note" in s]
    if skipped:
        lines += ["-: not measured", *skipped, ""]
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
    p.add_argument("--label", action="append", default=[], metavar="NAME=CKPT[,CKPT...]",
                   help="name the run these checkpoints belong to (repeatable); default: what sets it apart")
    p.add_argument("--multipliers", type=float, nargs="+", default=[1, 2, 4, 8, 16], help="lengths as multiples of L_train")
    p.add_argument("--lengths", type=int, nargs="+", help="explicit lengths (override --multipliers)")
    p.add_argument("--tokens", type=int, default=65536, help="perplexity token budget per length")
    p.add_argument("--trials", type=int, default=20, help="passkey documents per (length, depth); 0 skips passkey")
    p.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--passkey_up_to", type=float, help="passkey only at lengths up to this multiple of L_train")
    p.add_argument("--rope_scaling", help="eval-time context extension for rope/fope: linear, ntk, dynamic or yarn "
                   "(with --factor), or a rope_scaling dict in HF's spelling, e.g. \"{'rope_type': 'llama3', "
                   "'factor': 8, 'low_freq_factor': 1, 'high_freq_factor': 4}\"")
    p.add_argument("--factor", type=float, default=8.0)
    p.add_argument("--train_len", type=int, help="the L_train of the multipliers and of the beyond-L_train view "
                   "(default: the checkpoints' block_size, which must then agree; make extend sweeps runs "
                   "continued at 2L against their parents' L)")
    p.add_argument("--no_attn_temperature", action="store_true", help="YaRN without its attention temperature")
    p.add_argument("--split", default="val")
    p.add_argument("--data_dir", help="default: data/<dataset> of each checkpoint's config")
    p.add_argument("--out", default="results/length")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device", default="auto", help="auto (cuda, mps, then cpu) | cpu | cuda | cuda:N | mps")
    args = p.parse_args(argv)
    checks = [("--multipliers", args.multipliers, all(0 < m < math.inf for m in args.multipliers), "must be > 0"),
              ("--lengths", args.lengths, not args.lengths or min(args.lengths) >= 1, "must be >= 1"),
              ("--tokens", args.tokens, args.tokens >= 1, "must be >= 1"),
              ("--trials", args.trials, args.trials >= 0, "must be >= 0 (0 skips passkey)"),
              ("--depths", args.depths, all(0 <= d <= 1 for d in args.depths), "must be in [0, 1]"),
              ("--factor", args.factor, args.factor >= 1, "must be >= 1"),
              ("--no_attn_temperature", True, not args.no_attn_temperature or args.rope_scaling == "yarn",
               "applies to --rope_scaling yarn only"),
              ("--passkey_up_to", args.passkey_up_to, args.passkey_up_to is None or args.passkey_up_to > 0, "must be > 0"),
              ("--train_len", args.train_len, args.train_len is None or args.train_len >= 1, "must be >= 1"),
              ("--out", args.out, bool(os.path.basename(args.out)), "must name files (results/NAME), not a directory")]
    for flag, value, ok, requirement in checks:
        if not ok:
            raise SystemExit(f"{flag} {requirement}, got {value}")
    return args


def eval_scaling(args):
    """--rope_scaling (a type name with --factor, or a dict) -> (normalised rope_scaling or None, label suffix)."""
    if not args.rope_scaling:
        return None, ""
    if args.rope_scaling in ("linear", "ntk", "dynamic", "yarn"):
        scaling = {"rope_type": args.rope_scaling, "factor": args.factor}
        if args.no_attn_temperature:
            scaling["attention_factor"] = 1.0
    else:
        try:
            scaling = ast.literal_eval(args.rope_scaling)
        except (ValueError, SyntaxError):
            scaling = args.rope_scaling
    try:
        scaling = check_scaling(scaling)
    except ValueError as e:
        raise SystemExit(f"--rope_scaling: {e}")
    kind, factor = scaling["rope_type"], scaling.get("factor")
    sep = "x" if kind[-1].isdigit() else ""  # yarn8, but llama3x8
    return scaling, f"+{kind}" + ("" if factor is None else f"{sep}{factor:g}")


def parse_labels(label_args, ckpts):
    """--label NAME=CKPT[,CKPT...] -> {ckpt as given in --ckpt: NAME}."""
    given = {os.path.abspath(checkpoint_file(c)): c for c in ckpts}
    names = {}
    for arg in label_args:
        name, eq, paths = arg.partition("=")
        if not (name and eq and paths):
            raise SystemExit(f"--label {arg}: write --label NAME=CKPT[,CKPT...]")
        for path in paths.split(","):
            ckpt = given.get(os.path.abspath(checkpoint_file(path)))
            if ckpt is None:
                raise SystemExit(f"--label {arg}: {path} is not one of the --ckpt checkpoints")
            names[ckpt] = name
    return names


def prepare_out(out):
    """Make the output directory and check it takes files, before the sweep's work is done."""
    folder = os.path.dirname(out) or "."
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"cannot make {folder} for --out {out} ({e.strerror}): pick another --out")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SystemExit(f"{folder} is not writable: pick another --out")


def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    files = [os.path.abspath(checkpoint_file(c)) for c in args.ckpt]
    for path, file in zip(args.ckpt, files):
        if files.count(file) > 1:
            raise SystemExit(f"--ckpt lists {path} twice: it would count as two seeds")
    names = parse_labels(args.label, args.ckpt)
    scaling, suffix = eval_scaling(args)
    models = [load_model(path, scaling, device) for path in args.ckpt]
    train_lens = {ckpt["model_args"]["block_size"] for _, ckpt in models}
    if len(train_lens) > 1 and args.train_len is None:
        raise SystemExit(f"the checkpoints were trained at different lengths {sorted(train_lens)}: sweep them "
                         "separately, or pass --train_len to measure them all against one length")
    train_len = args.train_len or train_lens.pop()
    lengths = args.lengths or sorted({int(round(m * train_len)) for m in args.multipliers})
    if min(lengths) < 1:
        raise SystemExit(f"--multipliers {' '.join(f'{m:g}' for m in args.multipliers)} give length "
                         f"{min(lengths)} at L_train {train_len}: use multipliers >= {1 / train_len:.3g}")
    labels = label_runs({ckpt["path"]: run_settings(ckpt, model) for model, ckpt in models}, names, suffix)

    data_of = {}  # checkpoint path -> its split
    for _, ckpt in models:
        data_dir = args.data_dir or os.path.join("data", ckpt["config"]["dataset"])
        if data_dir not in data_of:
            try:
                data_of[data_dir] = TokenShards(data_dir, args.split)
            except ShardError as e:
                raise SystemExit(str(e))
        data_of[ckpt["path"]] = data_of[data_dir]
    longest = max(longest_length(data_of[ckpt["path"]]) for _, ckpt in models)
    if min(lengths) > longest:
        raise SystemExit(f"no length in {lengths} fits the {args.split} split (its longest shard fills "
                         f"{longest} tokens and a target): pass --lengths <= {longest}")
    prepare_out(args.out)

    rows, per_position = [], defaultdict(list)
    tasks = [(m, L) for m in models for L in lengths]
    t0 = time.time()
    for (model, ckpt), length in tqdm(tasks, desc="sweep", unit="run", file=sys.stderr):
        margs, data, label = ckpt["model_args"], data_of[ckpt["path"]], labels[ckpt["path"]]
        row = {"ckpt": ckpt["path"], "label": label, "pos_emb": margs["pos_emb"], "seed": ckpt["config"].get("seed"),
               "scaling": json.dumps(model.config.rope_scaling) if model.config.rope_scaling else "",
               "train_len": train_len, "length": length, "ppl": None, "ppl_beyond": None, "windows": 0,
               "passkey": None, "passkey_digits": None, "passkey_by_depth": None, "note": ""}
        rows.append(row)
        # the only lengths skipped: those that cannot be measured, each said in the row and the table
        if not POS_EMBS[margs["pos_emb"]].past_block_size and length > margs["block_size"]:
            row["note"] = f"skipped: {margs['pos_emb']} positions stop at block_size {margs['block_size']}"
            continue
        if length > longest_length(data):
            row["note"] = f"skipped: no {args.split} shard fills {length} tokens and a target"
            continue
        ppl = perplexity(model, data, length, train_len, args.tokens, device)
        row.update(ppl=math.exp(ppl["loss"]), ppl_beyond=math.exp(ppl["loss_beyond"]) if length > train_len else None,
                   windows=ppl["windows"])
        if length == max(lengths):
            per_position[label].append(ppl["per_position"])
        if args.trials > 0 and (args.passkey_up_to is None or length <= args.passkey_up_to * train_len):
            tok = get_tokenizer(ckpt["meta"])
            docs = PasskeyDocs(tok)
            if length >= docs.min_length:
                row.update(passkey_accuracy(model, docs, tok, length, args.depths, args.trials, args.seed, device))
            else:
                row["note"] = f"passkey skipped: a passkey document needs {docs.min_length} tokens"
    for row in rows:
        if row["note"]:
            tqdm.write(f"{row['ckpt']} at {row['length']}: {row['note']}", file=sys.stderr)

    summary = summarize(rows)
    table = format_table(summary, lengths)
    print(table)
    with open(args.out + ".csv", "w", newline="") as f:
        fields = [k for k in rows[0] if k != "passkey_by_depth"] + ["passkey_by_depth"]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "passkey_by_depth": json.dumps(r["passkey_by_depth"]) if r["passkey_by_depth"] else ""})
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    groups = defaultdict(list)
    for _, ckpt in models:
        groups[labels[ckpt["path"]]].append(ckpt["path"])
    info = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": "python eval_length.py " + " ".join(argv or sys.argv[1:]),
            "train_len": train_len, "lengths": lengths, "tokens_per_length": args.tokens, "passkey_trials": args.trials,
            "passkey_depths": args.depths, "seconds": round(time.time() - t0, 1), "peak_rss_mb": round(peak_mb, 1),
            "scaling": scaling, "groups": groups}
    with open(args.out + ".json", "w") as f:
        json.dump({"info": info, "rows": rows, "summary": summary,
                   "per_position": {"length": max(lengths), "loss": {k: np.mean(v, 0).tolist() for k, v in per_position.items()}}},
                  f, indent=1)
    plot(summary, {k: np.array(v) for k, v in per_position.items()}, train_len, args.out)
    print(f"wrote {args.out}.csv, .json, .png, _positions.png ({info['seconds']} s, peak memory {peak_mb:.0f} MB)")


if __name__ == "__main__":
    main()
