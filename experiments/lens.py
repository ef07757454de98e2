"""
The lens: FoPE's frequency-domain account of length generalization, measured on trained checkpoints.

    python experiments/lens.py --ckpt out/demo/rope_s1 out/demo/rope_s2 out/demo/fope_s1 ... --out results/lens
    python experiments/lens.py --report_only --out results/lens  # lens.md and figures again from lens.json
    make lens                                                    # the same on the demo's checkpoints

The paper (Hua et al. 2025, arXiv 2412.17739, Sec. 3 and App. "Analyses") says RoPE makes attention a
sum of periodic terms, one per frequency, and that this periodicity is damaged (1) by linear layers and
activations, which mix frequencies, and (2) by frequencies that complete less than one cycle within the
training length L_train, which training never sees whole. It argues this mostly analytically. This
script measures it on a checkpoint, from the model's own q and k: forward hooks on each layer's
attn.c_attn give q and k before the rotation (split as CausalSelfAttention.forward splits them), the
layer's attn.rotary module rotates them (after QK norm if the model has it), and the scores are
q.k / sqrt(head_dim) plus the bias of the bias embeddings (ALiBi, T5: model.transformer.pos_bias, shared
by all layers; FIRE, KERPLE: each layer's own attn.pos_bias): exactly what the layer feeds to its
softmax (tests/test_lens.py checks it). The measures on tensors: experiments/lens_measures.py.

Four measurements, per checkpoint and layer (heads averaged):
1. Undertrained dimensions (the paper's Fig. 7): |mean| of q and of k before the rotation over val
   windows of L_train tokens, per rotary pair m (dims m and m + head_dim/2, rotate-half layout: the
   length of the pair's mean vector), against the pair's cycle count within L_train, r = w L_train / 2 pi.
   r < 1: the pair never turns a full cycle in training. A FoPE pair is a Fourier series over the kept
   frequencies; its r is that of its dominant coefficient (the step identity); the pairs past d_out and
   the clamped pairs of the clamp-only ablation are position-free (r = 0). "undertrained_ratio" is the
   mean |mean| of the r < 1 pairs over that of the r >= 1 pairs (position-free pairs count as r < 1; a
   model without rotation is split by RoPE's r of the same pair index, as a control).
2. Attention against distance d = i - j: the mean pre-softmax score and the mean attention weight at
   each distance, over queries i >= d of val windows of max_multiple * L_train tokens; and the
   attention mass the last L_train queries put on keys farther than L_train ("far_mass").
3. The spectrum of the mean score-vs-distance curve within L_train (d = 0 .. L_train - 1, from windows
   of L_train tokens, the training condition): its DFT power (bin k = k cycles within L_train, so an
   embedding frequency w sits at bin r = w L_train / 2 pi), and the leakage: the share of the curve's
   energy (its mean removed) that is NOT at the embedding's own frequencies.
   - Own frequencies: the frequencies the module rotates with, its nonzero inv_freq. RoPE: all
     head_dim/2 of them. FoPE: the kept ones (w >= 2 pi / L_train); its Fourier coefficients mix them
     across dimensions, but every table is still a sum of those frequencies, so averaged over absolute
     position the score contains only them (a cross term cos(i w_a) cos(j w_b), a != b, depends on i and
     averages out; over a finite window it does not fully, and that remainder counts as leakage: FoPE's
     score is not a function of i - j alone). Clamp-only: the kept ones. The mean (bin 0) is content,
     not position: it is removed from the energy.
   - "At a frequency" is measured exactly, not on the DFT grid: the own energy is that of the curve's
     least-squares projection onto cos(w d), sin(w d) for every own w (the DFT generalised to
     frequencies off the bin grid). On the grid, a pure cosine at one of FoPE's kept frequencies puts
     2-11% of its energy in bins more than one bin from it (the rectangular window's sidelobes: r is not
     an integer) and would read as leakage; projected, it reads 0 at any phase. A foreign frequency
     within about one bin of an own one is, over L_train samples, not separable from it and counts
     (partly) as own.
   - RoPE's r < 1 frequencies (11 of 16 pairs at head_dim 32, L_train 64) are own, but over L_train they
     are partial cycles: together they span only smooth trends (a ramp, a bend), not 22 independent
     shapes. The projection keeps the directions of their span whose singular value is at least 1% of
     the largest ("own_rank" counts them), so RoPE's own space is larger than FoPE's: a curve of white
     noise would read leakage 1 - own_rank / (L_train - 1) ("chance_leakage"), and RoPE's leakage is
     to be read against its own chance level. NoPE, ALiBi and learned positions have no frequencies:
     their leakage is null (their spectrum is still drawn).
4. Expected score vs distance for q, k ~ N(mu, 1) per coordinate (the paper's Fig. 8), through a RoPE
   module of the checkpoints' head_dim: E[q'.k'] = 2 mu^2 sum_m cos(w_m d) (the sine terms cancel), so
   the decay vanishes at mu = 0. Drawn as the mean of --draws samples (as the paper) with the closed form;
   and the same expectation with the means measured in (1) (per layer, through the checkpoint's own
   rotary module, unit variance: rot(mu_q) . rot(mu_k), averaged over key positions 0 .. L_train - 1).

Learned absolute positions cannot take more than block_size tokens: (2) past L_train is skipped with a
note; everything within L_train is measured. Outputs in --out: lens_dims.png, lens_distance.png,
lens_spectrum.png, lens_fig8.png, lens.json (every number and curve), lens.md (the tables, the reading
experiments/readings/lens.md filled from lens.json, the runtime) and lens_timing.json.
"""

import argparse
import json
import os
import sys
import time
from collections import defaultdict

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from checkpoint import check_data, load_model  # noqa: E402
from configurator import resolve_device  # noqa: E402
from data.shards import ShardError, TokenShards  # noqa: E402
from experiments import runner  # noqa: E402
from experiments.lens_measures import (OWN_RANK_CUTOFF, QKProbe, cycles, distance_means, expected_score,  # noqa: E402
                                       fig8_curves, leakage, log_bins, own_frequencies, pair_frequencies, pair_norms,
                                       pick_windows, power_spectrum, window_means)
from fope import RotaryPositionEmbedding  # noqa: E402
from model import POS_EMBS  # noqa: E402
from runs import label_runs, parse_labels, run_settings, spread, stats, unique_checkpoints  # noqa: E402

# -----------------------------------------------------------------------------
# one checkpoint


@torch.no_grad()
def measure(model, ckpt, data, args):
    """Every measurement of the docstring for one checkpoint -> a JSON-able dict."""
    config = model.config
    L, hd, H = config.block_size, config.n_embd // config.n_head, config.n_head
    blocks = list(model.transformer.h)
    shared_bias = getattr(model.transformer, "pos_bias", None)  # ALiBi, T5 (FIRE, KERPLE: attn.pos_bias per layer)
    rope_ref = RotaryPositionEmbedding(hd, theta=config.rope_theta, backend="eager")
    result = {"ckpt": ckpt["path"], "label": None, "pos_emb": config.pos_emb,
              "seed": ckpt["config"].get("seed"), "train_len": L, "head_dim": hd, "n_head": H,
              "n_layer": len(blocks), "rope_theta": config.rope_theta, "note": ""}
    rotary = blocks[0].attn.rotary
    freqs = pair_frequencies(rotary)
    result["pair_r"] = None if freqs is None else cycles(freqs, L).tolist()
    result["own_r"] = cycles(own_frequencies(rotary), L).tolist()
    # the r < 1 split: the model's own r (position-free: 0), or RoPE's r of the same index as a control
    split_r = cycles(pair_frequencies(rope_ref) if freqs is None else freqs, L)
    slow = split_r < 1

    # 1, 3: windows of L_train tokens, the training condition
    probe = QKProbe(model)
    mu, score_within = window_means(probe, pick_windows(data, L, args.windows).to(args.device), shared_bias, args.batch)
    result["qk_mean"], result["undertrained_ratio"] = {}, {}
    for name in ("q", "k"):
        norms = [pair_norms(m[name]).mean(0) for m in mu]  # (hd/2,): heads averaged
        result["qk_mean"][name] = [n.tolist() for n in norms]
        result["undertrained_ratio"][name] = [
            float(n[slow].mean() / n[~slow].mean()) if slow.any() and (~slow).any() else None for n in norms]
    own = own_frequencies(rotary)
    result["score_within"] = score_within.mean(1).tolist()
    result["spectrum"] = [power_spectrum(c).tolist() for c in score_within.mean(1)]
    result["leakage"], result["leakage_per_head"] = [], []
    for layer in range(len(blocks)):
        whole = leakage(score_within[layer].mean(0), own)
        result["leakage"].append(None if whole is None else whole["leakage"])
        result["leakage_per_head"].append([None if whole is None else leakage(c, own)["leakage"]
                                           for c in score_within[layer]])
        if whole is not None:
            result["own_rank"], result["chance_leakage"] = whole["own_rank"], whole["chance_leakage"]

    # 4: the expected score with the measured means (rotary models)
    if rotary is not None:
        result["expected_score_measured"] = [
            expected_score(block.attn.rotary, m["q"], m["k"], args.max_multiple * L - 1, L).tolist()
            for block, m in zip(blocks, mu)]

    # 2: long windows, out to max_multiple * L_train
    T = args.max_multiple * L
    if not POS_EMBS[config.pos_emb].past_block_size and T > L:
        result["note"] = f"past L_train skipped: {config.pos_emb} positions stop at block_size {L}"
    else:
        score, weight, mass = distance_means(probe, pick_windows(data, T, args.long_windows).to(args.device), shared_bias, L)
        result["score_by_distance"] = score.mean(1).tolist()
        result["weight_by_distance"] = weight.mean(1).tolist()
        result["far_mass"] = mass.mean(1).tolist()
        if args.per_head:
            result["score_by_distance_per_head"] = score.tolist()
            result["weight_by_distance_per_head"] = weight.tolist()
    probe.close()
    return result


# -----------------------------------------------------------------------------
# seeds, figures, report


def by_label(results):
    groups = defaultdict(list)
    for r in results:
        groups[r["label"]].append(r)
    return dict(groups)


def summarize(results):
    """label -> per layer: leakage, undertrained ratios, far mass (mean/min/max over seeds)."""
    summary = {}
    for label, runs in by_label(results).items():
        n_layer = runs[0]["n_layer"]
        entry = {"seeds": [r["seed"] for r in runs], "own_r": runs[0]["own_r"],
                 "own_rank": runs[0].get("own_rank"), "chance_leakage": runs[0].get("chance_leakage"), "layers": []}
        for layer in range(n_layer):
            entry["layers"].append({
                "leakage": stats([r["leakage"][layer] for r in runs]),
                "undertrained_ratio_q": stats([r["undertrained_ratio"]["q"][layer] for r in runs]),
                "undertrained_ratio_k": stats([r["undertrained_ratio"]["k"][layer] for r in runs]),
                "far_mass": stats([r["far_mass"][layer] for r in runs if "far_mass" in r]),
            })
        summary[label] = entry
    return summary


def plot_all(results, out, draws, seed):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = by_label(results)
    labels = list(groups)
    L = results[0]["train_len"]
    n_layer = max(r["n_layer"] for r in results)
    colors = {label: f"C{i}" for i, label in enumerate(labels)}

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(f"{out}/{name}", dpi=110)
        plt.close(fig)

    # 1. undertrained dimensions: |mean| of q and k before the rotation per layer and pair
    fig, axes = plt.subplots(len(labels), 1, figsize=(10, 1.0 + 0.45 * 2 * n_layer * len(labels) + 0.6 * len(labels)),
                             squeeze=False)
    for ax, label in zip(axes[:, 0], labels):
        runs = groups[label]
        q, k = np.mean([r["qk_mean"]["q"] for r in runs], 0), np.mean([r["qk_mean"]["k"] for r in runs], 0)
        image = np.stack([m for layer in range(len(q)) for m in (q[layer], k[layer])])
        shown = ax.imshow(image, aspect="auto", cmap="viridis")
        fig.colorbar(shown, ax=ax, pad=0.01, label="|mean|")
        ax.set_yticks(range(len(image)), [f"L{layer} {name}" for layer in range(len(q)) for name in ("q", "k")])
        pair_r = runs[0]["pair_r"]
        if pair_r is None:
            ax.set_title(f"{label}: no rotation (columns: RoPE's pairs, a control)", fontsize=9)
            ax.set_xticks(range(image.shape[1]))
        else:
            ax.set_title(f"{label}: |mean| before the rotation; x: r = w L/2pi per pair (red: r < 1, 'free': position-free)",
                         fontsize=9)
            ticks = ["free" if r == 0 else f"{r:.2g}" for r in pair_r]
            ax.set_xticks(range(len(ticks)), ticks, rotation=90, fontsize=7)
            for tick, r in zip(ax.get_xticklabels(), pair_r):
                tick.set_color("red" if r < 1 else "black")
    save(fig, "lens_dims.png")

    # 2. score and attention weight against distance, out to max_multiple * L_train
    long_runs = [r for r in results if "score_by_distance" in r]
    if long_runs:
        T = len(long_runs[0]["score_by_distance"][0])
        edges = np.unique(np.round(np.geomspace(1, T, 48)).astype(int))
        fig, axes = plt.subplots(2, n_layer, figsize=(5 * n_layer, 7), squeeze=False)
        for label in labels:
            runs = [r for r in groups[label] if "score_by_distance" in r]
            if not runs:
                continue
            for layer in range(n_layer):
                for row, key in enumerate(("score_by_distance", "weight_by_distance")):
                    curve = np.mean([r[key][layer] for r in runs], 0)
                    x, y = log_bins(curve, edges)
                    axes[row, layer].plot(x, y, color=colors[label], label=label)
        for layer in range(n_layer):
            for row, ylabel in enumerate(("mean score (pre-softmax)", "mean attention weight")):
                ax = axes[row, layer]
                ax.axvline(L, color="gray", linestyle="--", linewidth=1)
                ax.set_xscale("log")
                ax.set_xlabel("distance i - j (dashed: L_train)")
                ax.set_ylabel(ylabel)
                ax.set_title(f"layer {layer}", fontsize=9)
                ax.grid(alpha=0.3)
            axes[1, layer].set_yscale("log")
        axes[0, 0].legend(fontsize=8)
        save(fig, "lens_distance.png")

    # 3. the spectrum of the score-vs-distance curve within L_train
    fig, axes = plt.subplots(len(labels), n_layer, figsize=(4.5 * n_layer, 1.2 + 2.0 * len(labels)), squeeze=False)
    for i, label in enumerate(labels):
        runs = groups[label]
        for layer in range(runs[0]["n_layer"]):
            ax = axes[i, layer]
            power = np.mean([r["spectrum"][layer] for r in runs], 0)
            ax.semilogy(np.arange(len(power))[1:], power[1:], marker=".", color=colors[label])
            for r in runs[0]["own_r"]:
                if r <= len(power):
                    ax.axvline(r, color="red", linewidth=0.7, alpha=0.6)
            leak = [r["leakage"][layer] for r in runs if r["leakage"][layer] is not None]
            title = f"{label}, layer {layer}"
            title += f": leakage {np.mean(leak):.2f}" if leak else ": no own frequencies"
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3)
        axes[i, 0].set_ylabel("DFT power")
    for ax in axes[-1]:
        ax.set_xlabel("cycles within L_train (red: own frequencies, r)")
    save(fig, "lens_spectrum.png")

    # 4. the paper's Fig. 8, then the same expectation with the measured means
    rotary_runs = [r for r in results if "expected_score_measured" in r]
    hd, theta = (rotary_runs or results)[0]["head_dim"], (rotary_runs or results)[0]["rope_theta"]
    max_multiple = len(rotary_runs[0]["expected_score_measured"][0]) // L if rotary_runs else 16
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.3))
    for i, (mu, (sampled, closed)) in enumerate(fig8_curves(hd, theta, max_multiple * L - 1, draws, seed).items()):
        axes[0].plot(sampled.numpy(), color=f"C{i}", linewidth=0.8, label=f"mu = {mu:g}: mean of {draws} draws")
        axes[0].plot(closed.numpy(), color=f"C{i}", linestyle="--", linewidth=1, label=f"mu = {mu:g}: 2 mu^2 sum cos(w d)")
    axes[0].set_yscale("symlog", linthresh=0.5)  # mu = 0.1's curve is 100x smaller than mu = 1's
    axes[0].set_title(f"Fig. 8: q, k ~ N(mu, 1), RoPE head_dim {hd} (symlog y)", fontsize=9)
    axes[0].set_ylabel("q'.k' (unscaled)")
    for label in labels:
        runs = [r for r in groups[label] if "expected_score_measured" in r]
        for layer in range(n_layer):
            curves = [r["expected_score_measured"][layer] for r in runs if layer < len(r["expected_score_measured"])]
            if curves:
                axes[1].plot(np.mean(curves, 0), color=colors[label], linestyle=("-", "--", ":", "-.")[layer % 4],
                             linewidth=1, label=f"{label} layer {layer}")
    axes[1].set_title("E[q'.k'] with the measured means of q and k, unit variance", fontsize=9)
    for ax in axes:
        ax.axvline(L, color="gray", linestyle="--", linewidth=1)
        ax.set_xlabel("distance (dashed: L_train)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save(fig, "lens_fig8.png")


def report_lines(results, summary, info):
    """lens.md's tables, under its title (runner.write_report adds the reading and the stage times)."""
    n_layer = max(r["n_layer"] for r in results)
    L = info["train_len"]
    layers = range(n_layer)
    lines = [f"`{info['command']}`", "",
             f"{len(results)} checkpoints, L_train = {L}, {info['windows']} windows of L_train tokens for the means and the "
             f"spectrum, {info['long_windows']} of {info['max_multiple']} L_train for attention vs distance; "
             f"{info['seconds']:.0f} s on {info['threads']} threads. Mean over seeds [min-max].", "",
             "## Leakage of the score-vs-distance curve within L_train", "",
             "The share of its energy (mean removed) not at the embedding's own frequencies; chance: the leakage "
             "of white noise against the same own frequencies (lens.py's docstring, 3.).", "",
             "| variant | own frequencies (r) | " + " | ".join(f"layer {i}" for i in layers) + " | chance |",
             "| --- | --- | " + " | ".join("---" for _ in layers) + " | --- |"]
    for label, s in summary.items():
        whole = [r for r in sorted(s["own_r"], reverse=True) if r >= 1]
        own = ", ".join(f"{r:.2g}" for r in whole) or "none"
        if len(s["own_r"]) > len(whole):
            own += f" + {len(s['own_r']) - len(whole)} with r < 1"
        chance = f"{s['chance_leakage']:.2f}" if s["chance_leakage"] is not None else "-"
        lines.append(f"| {label} | {own} | " + " | ".join(spread(l["leakage"], "{:.3f}") for l in s["layers"]) + f" | {chance} |")
    lines += ["", "## Undertrained dimensions: |mean| of the r < 1 pairs over that of the r >= 1 pairs (q / k)", "",
              "Above 1: the pairs that never turn a full cycle within L_train carry larger means (the paper's Fig. 7 "
              "claim, for RoPE). Position-free pairs count as r < 1; models without rotation are split by RoPE's r "
              "of the same pair (a control).", "",
              "| variant | " + " | ".join(f"layer {i} q | layer {i} k" for i in layers) + " |",
              "| --- | " + " | ".join("--- | ---" for _ in layers) + " |"]
    for label, s in summary.items():
        lines.append(f"| {label} | " + " | ".join(f"{spread(l['undertrained_ratio_q'])} | {spread(l['undertrained_ratio_k'])}"
                                                  for l in s["layers"]) + " |")
    for label, s in summary.items():
        ratios = [l[f"undertrained_ratio_{name}"] for l in s["layers"] for name in ("q", "k")]
        ratios = [r["mean"] for r in ratios if r is not None]
        if ratios:
            lines.append(f"\n{label}: the r < 1 pairs have the larger |mean| in {sum(r > 1 for r in ratios)} of "
                         f"{len(ratios)} (layer, q/k) cells.")
    lines += ["", f"## Attention past L_train: mass the last L_train queries of a {info['max_multiple']} L_train window "
              "put on keys farther than L_train", "",
              "| variant | " + " | ".join(f"layer {i}" for i in layers) + " |", "| --- | " + " | ".join("---" for _ in layers) + " |"]
    for label, s in summary.items():
        lines.append(f"| {label} | " + " | ".join(spread(l["far_mass"], "{:.3f}") for l in s["layers"]) + " |")
    notes = sorted({f"{r['label']}: {r['note']}" for r in results if r["note"]})
    if notes:
        lines += ["", "Notes: " + "; ".join(notes) + "."]
    lines += ["", "Figures: lens_dims.png (|mean| per pair), lens_distance.png (score and weight vs distance), "
              "lens_spectrum.png (DFT power, own frequencies in red), lens_fig8.png (the paper's Fig. 8, and with the "
              "measured means)."]
    return lines


def write_outputs(results, info, args):
    """The figures and lens.md (its tables, the reading experiments/readings/lens.md, the runtime) -> lens.md's text."""
    summary = summarize(results)
    plot_all(results, args.out, info.get("draws", args.draws), info.get("seed", args.seed))
    path, title, lines = f"{args.out}/lens", f"The lens ({info['date']})", report_lines(results, summary, info)
    try:
        runner.write_report(path, title, lines, {"total": info["seconds"]}, "lens",
                            {"lens": {"info": info, "summary": summary, "checkpoints": results}})
    except runner.ReadingError as e:  # the reading cites the demo's runs (make lens); other checkpoints get the tables
        print(f"lens.md without its reading (experiments/readings/lens.md): {e}")
        lines += ["", "(The reading experiments/readings/lens.md is left out: it is written for the demo's runs (make lens) "
                  "and cites numbers these checkpoints do not have.)"]
        runner.write_report(path, title, lines, {"total": info["seconds"]})
    with open(f"{args.out}/lens.md") as f:
        return f.read()


# -----------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", nargs="+", default=[], help="out_dirs or ckpt.pt files")
    p.add_argument("--label", action="append", default=[], metavar="NAME=CKPT[,CKPT...]",
                   help="name the run these checkpoints belong to (repeatable); default: what sets it apart")
    p.add_argument("--out", default="results/lens", help="a directory: PNGs, lens.json, lens.md")
    p.add_argument("--report_only", action="store_true", help="rewrite lens.md and the figures from <out>/lens.json "
                   "(no checkpoint is loaded)")
    p.add_argument("--windows", type=int, default=256, help="val windows of L_train tokens (means, spectrum)")
    p.add_argument("--long_windows", type=int, default=8, help="val windows of max_multiple * L_train tokens")
    p.add_argument("--max_multiple", type=int, default=16, help="attention vs distance out to this many L_train "
                   "(memory: 2 windows x n_head x (max_multiple L_train)^2 floats at a time)")
    p.add_argument("--per_head", action="store_true", help="also keep the per-head distance curves in lens.json")
    p.add_argument("--draws", type=int, default=1000, help="samples of q, k for the Fig. 8 panel")
    p.add_argument("--batch", type=int, default=64, help="windows of L_train tokens per forward pass")
    p.add_argument("--split", default="val")
    p.add_argument("--data_dir", help="default: data/<dataset> of each checkpoint's config")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | mps | auto")
    args = p.parse_args(argv)
    if not args.ckpt and not args.report_only:
        p.error("--ckpt is required (unless --report_only)")
    for name in ("windows", "long_windows", "max_multiple", "draws", "batch"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be at least 1, got {getattr(args, name)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.report_only:
        doc = runner.load_json(f"{args.out}/lens.json")
        with runner.saved_results(args.out, os.path.join(args.out, "lens.json")):
            print(write_outputs(doc["checkpoints"], doc["info"], args))
        print(f"rewrote {args.out}/lens.md and the figures from {args.out}/lens.json")
        return
    args.device = resolve_device(args.device)
    unique_checkpoints(args.ckpt)
    names = parse_labels(args.label, args.ckpt)
    t0 = time.time()
    results, settings, data_cache, train_lens = [], {}, {}, set()
    for path in tqdm(args.ckpt, desc="lens", unit="ckpt", file=sys.stderr):
        model, ckpt = load_model(path, device=args.device)
        train_lens.add(model.config.block_size)
        if len(train_lens) > 1:
            raise SystemExit(f"the checkpoints were trained at different lengths {sorted(train_lens)}: look at them separately")
        settings[ckpt["path"]] = run_settings(ckpt, model)
        data_dir = args.data_dir or os.path.join("data", ckpt["config"]["dataset"])
        if data_dir not in data_cache:
            try:
                data_cache[data_dir] = TokenShards(data_dir, args.split)
            except ShardError as e:
                raise SystemExit(str(e))
        check_data(ckpt, data_cache[data_dir].meta, data_dir)
        try:
            data_cache[data_dir].check_vocab(model.config.vocab_size)
        except ShardError as e:
            raise SystemExit(str(e))
        results.append(measure(model, ckpt, data_cache[data_dir], args))
    labels = label_runs(settings, names)  # seeds of one run share a label, as in eval_length.py
    for r in results:
        r["label"] = labels[r["ckpt"]]
    os.makedirs(args.out, exist_ok=True)
    info = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": "python experiments/lens.py " + " ".join(argv or sys.argv[1:]),
            "train_len": train_lens.pop(), "windows": args.windows, "long_windows": args.long_windows,
            "max_multiple": args.max_multiple, "draws": args.draws, "seed": args.seed,
            "threads": torch.get_num_threads(), "own_rank_cutoff": OWN_RANK_CUTOFF}
    info["seconds"] = round(time.time() - t0, 1)  # the measurements; the figures take a second more
    with open(f"{args.out}/lens.json", "w") as f:
        json.dump({"info": info, "summary": summarize(results), "checkpoints": results}, f)
    report = write_outputs(results, info, args)
    print(report)
    print(f"wrote {args.out}/lens.md, lens.json, lens_dims.png, lens_distance.png, lens_spectrum.png, lens_fig8.png "
          f"({time.time() - t0:.1f} s)")


if __name__ == "__main__":
    main()
