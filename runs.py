"""
Runs over seeds: which checkpoints are seeds of one run, what to call each run, and their summaries
(mean [min-max] over seeds) as tables and figures. eval_length.py and the experiments share it.

- Checkpoints whose runs differ only in what does not change the trained model (seed, out_dir, wandb
  names, device, rotary_backend, compile, log/eval intervals: NOT_THE_MODEL) are seeds of one run.
  Any other difference (a model field, the learning rate, the iteration reached, ...) makes another run.
- A run is labelled by its pos_emb and what sets it apart from the other runs (e.g. "fope" and
  "fope fope_sigma=0.1": of the settings that vary between runs, a model field is shown where it differs
  from GPTConfig's default, any other setting where it differs from the value most runs share, or
  always when no value is shared by most), then "+yarn8" etc. for eval-time scaling.
  --label NAME=CKPT[,CKPT...] names the run those checkpoints are in.
"""

import dataclasses
import json
import math
import os
from collections import Counter, defaultdict

import numpy as np

from checkpoint import checkpoint_file
from model import POS_EMBS, GPTConfig, is_rotary, knob_fields

# train.py settings that do not change the trained model: checkpoints differing only in these are seeds
NOT_THE_MODEL = ("seed", "out_dir", "wandb_log", "wandb_project", "wandb_run_name", "init_from", "device",
                 "rotary_backend", "compile", "log_interval", "eval_interval", "eval_iters", "always_save_checkpoint",
                 "overwrite", "new_val_batches")
MODEL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(GPTConfig)}


def run_settings(checkpoint, model):
    """Everything that makes the evaluated model what it is: the train config minus NOT_THE_MODEL, the
    model's fields (eval-time rope_scaling included) and the iteration reached. Settings the position
    embedding never reads (another entry's knobs, model.POS_EMBS) are left out, so two rope runs that
    differ only in a FoPE knob are one run."""
    settings = {k: v for k, v in checkpoint["config"].items() if k not in NOT_THE_MODEL}
    settings.update((k, v) for k, v in dataclasses.asdict(model.config).items() if k not in NOT_THE_MODEL)
    settings["iter_num"] = checkpoint["iter_num"]
    parent = checkpoint.get("parent")  # a continued run (init_from=<run>): what it started from counts too
    if parent:
        settings["parent"] = f"{parent['model_args']['pos_emb']}@{parent['model_args']['block_size']}:{parent['iter_num']}"
    spec = POS_EMBS.get(settings["pos_emb"])
    for key in set(knob_fields()) - set(spec.reads() if spec else ()):  # another embedding's knobs
        settings.pop(key, None)
    return settings


def differences(a, b):
    return [k for k in {**a, **b} if a.get(k) != b.get(k)]


def label_runs(settings_by_ckpt, names, suffix=""):
    """{ckpt: settings}, {ckpt: --label name} -> {ckpt: label}; equal settings share a label (seeds).
    suffix (e.g. "+yarn8") follows the label of rotary runs."""
    runs = defaultdict(list)  # settings as JSON -> the checkpoints of that run
    for ckpt, settings in settings_by_ckpt.items():
        runs[json.dumps(settings, sort_keys=True, default=str)].append(ckpt)
    settings_of = {run: settings_by_ckpt[ckpts[0]] for run, ckpts in runs.items()}
    values = defaultdict(list)  # setting -> its value in each run that has it
    for settings in settings_of.values():
        for key, value in settings.items():
            values[key].append(json.dumps(value, sort_keys=True, default=str))
    varying = {k for k, v in values.items() if len(set(v)) > 1} - {"pos_emb", "rope_scaling"}
    usual = {}  # the value a varying setting is not shown at: GPTConfig's default, else the one most runs share
    for key in varying:
        if key in MODEL_DEFAULTS:
            usual[key] = json.dumps(MODEL_DEFAULTS[key], sort_keys=True, default=str)
        else:
            (top, n), *rest = Counter(values[key]).most_common()
            if not rest or rest[0][1] < n:
                usual[key] = top

    def shown(key, value):
        return key in varying and json.dumps(value, sort_keys=True, default=str) != usual.get(key)

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


def unique_checkpoints(ckpts):
    """One-line exit when --ckpt names one checkpoint twice (out/x and out/x/ckpt.pt are the same file):
    it would count as two seeds."""
    files = [os.path.abspath(checkpoint_file(c)) for c in ckpts]
    for path, file in zip(ckpts, files):
        if files.count(file) > 1:
            raise SystemExit(f"--ckpt lists {path} twice: it would count as two seeds")


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
            if names.get(ckpt, name) != name:
                raise SystemExit(f"--label {arg}: {path} is already labelled {names[ckpt]!r}: give each checkpoint one label")
            names[ckpt] = name
    return names


# -----------------------------------------------------------------------------
# summaries over seeds: mean [min-max]


def stats(values):
    """{mean, min, max, n} of the values that are not None or NaN; None if there are none."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None
    return {"mean": float(np.mean(values)), "min": min(values), "max": max(values), "n": len(values)}


def spread(s, fmt="{:.2f}"):
    """A stats() dict as text: 'mean [min-max]' over seeds, the mean alone for one seed, '-' for None."""
    if s is None:
        return "-"
    text = fmt.format(s["mean"])
    return text + (f" [{fmt.format(s['min'])}-{fmt.format(s['max'])}]" if s["n"] > 1 else "")


METRICS = (("ppl", "perplexity (all positions)"), ("ppl_beyond", "perplexity (positions beyond L_train)"),
           ("passkey", "passkey accuracy"))


def summarize(rows):
    """Sweep rows -> label -> length -> {metric: stats over seeds}, and "note": why a length was skipped."""
    groups = defaultdict(lambda: defaultdict(list))
    for r in rows:
        groups[r["label"]][r["length"]].append(r)
    summary = {}
    for label, by_length in groups.items():
        summary[label] = {}
        for length, rs in sorted(by_length.items()):
            entry = {metric: stats([r[metric] for r in rs]) for metric, _ in METRICS}
            entry = {k: v for k, v in entry.items() if v is not None}
            notes = sorted({r["note"] for r in rs if r["note"]})
            if notes:
                entry["note"] = "; ".join(notes)
            summary[label][length] = entry
    return summary


def format_table(summary, lengths):
    """The sweep's three tables (perplexity, beyond L_train, passkey) as aligned text."""
    summary = {label: {int(L): s for L, s in by_length.items()} for label, by_length in summary.items()}  # JSON: str keys
    lines = []
    for metric, title in METRICS:
        lines.append(f"{title}: mean over seeds [min-max]")
        header = ["variant"] + [str(L) for L in lengths]
        body = [[label] + [spread(by_length.get(L, {}).get(metric)) for L in lengths] for label, by_length in summary.items()]
        widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
        for r in [header] + body:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        lines.append("")
    skipped = [f"  {label} at {L}: {s['note']}" for label, by_length in summary.items()
               for L, s in sorted(by_length.items()) if "note" in s]
    if skipped:
        lines += ["-: not measured", *skipped, ""]
    return "\n".join(lines)


def plot_sweep(summary, per_position, train_len, path):
    """path.png: perplexity and passkey accuracy against length (mean, min-max band), one line per run;
    path_positions.png: loss against token position at the longest length."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = {label: {int(L): s for L, s in by_length.items()} for label, by_length in summary.items()}
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
    if axes[0].get_legend_handles_labels()[0]:  # an all-skipped sweep draws no line: no empty legend
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
