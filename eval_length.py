"""
Length generalization sweep: perplexity and passkey retrieval against evaluation length.

    python eval_length.py --ckpt out/demo/rope_s1 out/demo/fope_s1 out/demo/alibi_s1
    python eval_length.py --ckpt out/demo/*_s1 --rope_scaling yarn --factor 8 --out results/yarn
    python eval_length.py --ckpt out/a_s1 out/a_s2 out/b_s1 --label mine=out/a_s1,out/a_s2

Protocol:
- Perplexity: non-overlapping windows of each length over the val split, the same token budget at
  every length (--tokens, so ~tokens/length windows). Two views per window: the loss averaged over
  all positions, and over the positions beyond the training length only (where extrapolation
  happens). Reported as perplexity exp(mean loss).
- Passkey (passkey.py): documents of exactly `length` tokens with a random 5-digit key at each depth
  in --depths, --trials per (length, depth), fixed seed. Scored by exact match of the greedy answer
  (teacher forcing: the greedy answer is the key iff the argmax is right at every answer token).
- Checkpoints that are seeds of one run (runs.py says which) make one row: tables and plots show their
  mean and min-max. A row is named by what sets its run apart (runs.label_runs), or by
  --label NAME=CKPT[,CKPT...] (repeat it for several rows).
- A length is skipped only where it cannot be measured, and the table says so: longer than the
  split's longest shard (perplexity and passkey), past block_size for learned positions, shorter
  than a passkey document (passkey only). Any other error stops the sweep.

Outputs <out>.csv (a row per checkpoint and length), <out>.json (rows, per-position losses, summary),
<out>.png (ppl and passkey accuracy vs length) and <out>_positions.png (loss vs token position at the
longest length; not written where no run was measured there). Ctrl-C ends it in one line (status 130).
"""

import argparse
import ast
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

from checkpoint import check_data, load_model, writable_dir
from configurator import autocast_context, describe_machine, resolve_device, resolve_dtype
from data.shards import ShardError, TokenShards
from data.tokenizer import get_tokenizer
from model import POS_EMBS, is_rotary
from runs import format_table, label_runs, parse_labels, plot_sweep, run_settings, summarize, unique_checkpoints
from util.args import run_main

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
        loss = model.token_losses(w[:, :-1], w[:, 1:])  # (B, T)
        per_position += loss.double().sum(0).cpu()
    per_position /= len(windows)
    beyond = per_position[train_len:].mean().item() if length > train_len else float("nan")
    return {"loss": per_position.mean().item(), "loss_beyond": beyond, "windows": len(windows),
            "per_position": per_position.tolist()}


@torch.no_grad()
def passkey_accuracy(model, docs, tok, length, depths, trials, seed, device, batch_tokens=16384):
    """Exact-match accuracy (and digit accuracy) per depth over `trials` documents of `length` tokens, and each
    document's exact match (passkey_exact: depth by depth, the same documents for every model at one seed)."""
    from passkey import score
    rng = np.random.default_rng(seed)
    by_depth, outcomes = {}, []
    for depth in depths:
        keys = [docs.random_key(rng) for _ in range(trials)]
        built = [docs.build(length, depth, key) for key in keys]
        exact, digits = [], []
        batch = max(1, batch_tokens // length)
        for i in range(0, trials, batch):
            ids = torch.tensor([b[0] for b in built[i:i + batch]], device=device)
            answer_start = min(b[1] for b in built[i:i + batch])
            # the whole document, exactly `length` tokens; logits only where the answer is read
            pred = model.head(model.hidden_states(ids)[:, answer_start - 1:length - 1]).argmax(-1)
            for row, (_, start, _), key in zip(pred, built[i:i + batch], keys[i:i + batch]):
                guess = tok.decode(row[start - answer_start:].tolist())  # row[j]: the guess for token answer_start + j
                e, d = score(guess, key)
                exact.append(e)
                digits.append(d)
        by_depth[depth] = (float(np.mean(exact)), float(np.mean(digits)))
        outcomes += exact
    return {"passkey": float(np.mean([v[0] for v in by_depth.values()])), "passkey_exact": outcomes,
            "passkey_digits": float(np.mean([v[1] for v in by_depth.values()])),
            "passkey_by_depth": {f"{d:g}": v[0] for d, v in by_depth.items()}}


def evaluation_precision(dtype, device):
    """The autocast context of an evaluation: train.py's dtype rule (bfloat16 on CUDA, float32 elsewhere, for
    --dtype auto), so a GPU model is evaluated at the precision it trained in; TF32 matmuls on CUDA."""
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return autocast_context(device, resolve_dtype(dtype, device))


def longest_length(data):
    """The longest evaluation length the split can fill: a window needs length + 1 tokens of one shard."""
    return max(len(shard) for shard in data.shards) - 1


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
    p.add_argument("--dtype", default="auto", help="autocast: auto (bfloat16 on CUDA, float32 elsewhere, as train.py) "
                   "| float32 | bfloat16 | float16")
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
              ("--seed", args.seed, args.seed >= 0, "must be >= 0"),
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
    from rope_scaling import check_scaling  # only where a rescaling is asked for
    try:
        scaling = check_scaling(scaling)
    except ValueError as e:
        raise SystemExit(f"--rope_scaling: {e}")
    kind, factor = scaling["rope_type"], scaling.get("factor")
    sep = "x" if kind[-1].isdigit() else ""  # yarn8, but llama3x8
    return scaling, f"+{kind}" + ("" if factor is None else f"{sep}{factor:g}")


def prepare_out(out):
    """Make the output directory and check it takes files, before the sweep's work is done."""
    folder = os.path.dirname(out) or "."
    writable_dir(folder, f"{folder} for --out {out}", "--out")


def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    ctx = evaluation_precision(args.dtype, device)
    unique_checkpoints(args.ckpt)
    names = parse_labels(args.label, args.ckpt)
    scaling, suffix = eval_scaling(args)
    models = [load_model(path, scaling, device) for path in args.ckpt]
    for _, ckpt in models:  # a dtype the model's rotation kernel cannot take (float16 on CPU): now, in one line
        margs = ckpt["model_args"]
        resolve_dtype(args.dtype, device, margs.get("rotary_backend") if is_rotary(margs["pos_emb"]) else None)
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
        check_data(ckpt, data_of[data_dir].meta, data_dir)
        data_of[ckpt["path"]] = data_of[data_dir]
    longest = max(longest_length(data_of[ckpt["path"]]) for _, ckpt in models)
    if min(lengths) > longest:
        raise SystemExit(f"no length in {lengths} fits the {args.split} split (its longest shard fills "
                         f"{longest} tokens and a target): pass --lengths <= {longest}")
    prepare_out(args.out)
    # each checkpoint's tokenizer for the passkey, now: a download (GPT-2's ranks) or a missing package fails
    # before the sweep's work, not in the middle of it
    tokenizers = {ckpt["path"]: get_tokenizer(ckpt["meta"]) for _, ckpt in models} if args.trials > 0 else {}
    passkey_docs = {}  # and its passkey documents: a char vocabulary may lack their characters
    for _, ckpt in models if args.trials > 0 else []:
        try:
            from passkey import PasskeyDocs  # only where passkey trials are asked for
            passkey_docs[ckpt["path"]] = PasskeyDocs(tokenizers[ckpt["path"]])
        except ValueError as e:
            raise SystemExit(f"{ckpt['path']}'s data cannot spell passkey documents ({e}): pass --trials 0 "
                             "(perplexity only)")

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
        with ctx:
            ppl = perplexity(model, data, length, train_len, args.tokens, device)
        row.update(ppl=math.exp(ppl["loss"]), ppl_beyond=math.exp(ppl["loss_beyond"]) if length > train_len else None,
                   windows=ppl["windows"])
        if length == max(lengths):
            per_position[label].append(ppl["per_position"])
        if args.trials > 0 and (args.passkey_up_to is None or length <= args.passkey_up_to * train_len):
            tok, docs = tokenizers[ckpt["path"]], passkey_docs[ckpt["path"]]
            if length >= docs.min_length:
                with ctx:
                    accuracy = passkey_accuracy(model, docs, tok, length, args.depths, args.trials, args.seed, device)
                    row.update((k, v) for k, v in accuracy.items() if k != "passkey_exact")  # a row per (run, length)
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
            "scaling": scaling, "groups": groups, "machine": describe_machine()}
    with open(args.out + ".json", "w") as f:
        json.dump({"info": info, "rows": rows, "summary": summary,
                   "per_position": {"length": max(lengths), "loss": {k: np.mean(v, 0).tolist() for k, v in per_position.items()}}},
                  f, indent=1)
    plot_sweep(summary, {k: np.array(v) for k, v in per_position.items()}, train_len, args.out)
    positions = ", _positions.png"
    if not per_position:  # the longest length was skipped for every run: an empty figure would say nothing
        os.remove(args.out + "_positions.png")
        positions = f" (no _positions.png: no run was measured at the longest length, {max(lengths)})"
    print(f"wrote {args.out}.csv, .json, .png{positions} ({info['seconds']} s, peak memory {peak_mb:.0f} MB)")


if __name__ == "__main__":
    run_main(main)
