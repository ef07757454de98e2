"""
The laptop reproduction of FoPE's length curves, end to end (what `make demo` runs):

  1. data:  char-level Shakespeare (data/shakespeare/prepare.py), if not prepared yet
  2. train: rope, fope, clamp-only (FoPE's floor clamp without its Fourier series), alibi and nope,
            each with several seeds (config/demo.py), into out/demo/<variant>_s<seed>
  3. eval:  the length sweep (eval_length.py) at L_train x {1, 2, 4, 8, 16}, then again with YaRN
            (factor 8) on the rotary variants
  4. write: results/demo.{csv,json,png}, results/demo_positions.png, results/demo_yarn.*, and
            results/demo.md (the tables and stage times the README quotes)

    python demo.py            # the full run (~25 minutes on 2 CPU cores)
    python demo.py --quick    # a smoke run of the same pipeline in a few minutes (results/quick/)

A finished training run is kept and not trained again only if it is current: its checkpoint is at
max_iters, records the same resolved config as train.py would resolve now (train.py's defaults,
config/demo.py, the variant's flags) and was made by the same sources (checkpoint.SOURCES: model.py,
fope.py, fope_ext/, passkey.py, train.py, data/...). Otherwise it is trained again and the demo says
why; --fresh retrains everything.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch

import train
from checkpoint import CheckpointError, changed_sources, checkpoint_file, file_sha256, load_checkpoint, source_hashes
from configurator import configure

VARIANTS = {  # name (the label of its row in the tables) -> train.py overrides
    "rope": ["--pos_emb=rope"],
    "fope": ["--pos_emb=fope"],
    "clamp-only": ["--pos_emb=fope", "--fope_fourier=False"],  # the ablation: RoPE with the floor clamp alone
    "alibi": ["--pos_emb=alibi"],
    "nope": ["--pos_emb=nope"],
}
ROTARY = ("rope", "fope", "clamp-only")
QUICK_TRAIN = ["--max_iters=200", "--passkey_warmup=100", "--eval_interval=100"]  # --quick: a smoke run


def run(cmd, log):
    """Run a stage's command; its output goes to a log file, a failure ends the demo with one line."""
    with open(log, "w") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    if code:
        with open(log) as f:
            tail = f.read().strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"demo: '{' '.join(cmd)}' failed ({tail[0]}); full log: {log}")


def stale_reason(out_dir, train_args):
    """None if out_dir holds a finished run of `python train.py *train_args` made by today's code, else why
    it must be trained (again): results/ never mixes in a run made with other settings or sources."""
    path = os.path.join(out_dir, "ckpt.pt")
    if not os.path.isfile(path):
        return "not trained yet"
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as e:
        return f"unreadable ({e})"
    expected = configure(train.DEFAULTS, train_args, train.OPTIONAL_TYPES)  # as train.py resolves it now
    saved = ckpt["config"]
    changed = sorted(k for k in expected.keys() | saved.keys() if k not in saved or k not in expected or saved[k] != expected[k])
    if changed:
        return f"config changed ({', '.join(changed)})"
    if ckpt["iter_num"] < expected["max_iters"]:
        return f"unfinished (iter {ckpt['iter_num']} of {expected['max_iters']})"
    sources, current = ckpt.get("sources") or [], source_hashes()
    if len(sources) > 1:
        return "resumed across a code change"
    if sources != [current]:
        return f"code changed ({', '.join(changed_sources(sources[0] if sources else {}, current))})"
    parent = ckpt.get("parent")
    if parent and (not os.path.isfile(checkpoint_file(parent["init_from"]))
                   or file_sha256(parent["init_from"]) != parent["sha256"]):
        return f"its parent {parent['init_from']} was trained again"
    return None


def run_args(config, out, name, flags, seed, extra=()):
    """(out_dir, train.py arguments) of one run: a config file, the run's flags, its seed, the mode's extras."""
    out_dir = f"{out}/{name}_s{seed}"
    return out_dir, [config, *flags, f"--seed={seed}", *extra, f"--out_dir={out_dir}", f"--wandb_run_name={name}_s{seed}"]


def ensure_trained(out_dir, train_args, stages, fresh=False, why="--fresh"):
    """Train `python train.py *train_args` into out_dir unless it holds a current finished run (stale_reason)
    or fresh is set (`why` says why). Returns True if it trained."""
    reason = why if fresh else stale_reason(out_dir, train_args)
    if reason is None:
        print(f"  {out_dir}: already trained with this config and code, kept", flush=True)
        return False
    t1 = time.time()
    run([sys.executable, "train.py", *train_args], f"{out_dir}.log")
    stages[f"train {os.path.basename(out_dir)}"] = time.time() - t1
    print(f"  {out_dir}: trained ({reason}), {time.time() - t1:.0f} s", flush=True)
    return True


def main(argv=None):
    p = argparse.ArgumentParser(description="the laptop reproduction of FoPE's length curves")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 200 iters, small sweeps")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--fresh", action="store_true", help="retrain runs that already finished")
    args = p.parse_args(argv)
    py = sys.executable
    if args.quick:
        seeds = args.seeds[:1]
        train_extra = QUICK_TRAIN
        out, results = "out/demo_quick", "results/quick"
        sweep = ["--tokens=4096", "--trials=4", "--multipliers", "1", "2", "4"]
    else:
        seeds, train_extra = args.seeds, []
        out, results = "out/demo", "results"
        sweep = ["--tokens=65536", "--trials=20"]
    os.makedirs(out, exist_ok=True)
    os.makedirs(results, exist_ok=True)
    stages, t_all = {}, time.time()

    def stage(name, message):
        print(f"[demo {time.time() - t_all:6.0f}s] {message}", flush=True)
        return name, time.time()

    name, t0 = stage("data", "1/4 data: char-level Shakespeare")
    if not os.path.isfile("data/shakespeare/char/meta.json"):
        run([py, "data/shakespeare/prepare.py", "--char-only"], f"{out}/prepare.log")
    stages[name] = time.time() - t0

    name, t0 = stage("train", f"2/4 train: {len(VARIANTS)} variants x {len(seeds)} seeds")
    ckpts = {}
    for variant, flags in VARIANTS.items():
        for seed in seeds:
            out_dir, train_args = run_args("config/demo.py", out, variant, flags, seed, train_extra)
            ckpts.setdefault(variant, []).append(out_dir)
            ensure_trained(out_dir, train_args, stages, args.fresh)
    stages[name] = time.time() - t0

    name, t0 = stage("eval", "3/4 eval: length sweep, then YaRN x8 on the rotary variants")
    def ckpts_and_labels(variants):  # the rows are named after the variants
        return ["--ckpt", *[d for v in variants for d in ckpts[v]],
                *[f"--label={v}={','.join(ckpts[v])}" for v in variants]]

    run([py, "eval_length.py", *ckpts_and_labels(VARIANTS), "--out", f"{results}/demo", *sweep], f"{out}/eval.log")
    run([py, "eval_length.py", *ckpts_and_labels(ROTARY), "--rope_scaling", "yarn", "--factor", "8",
         "--out", f"{results}/demo_yarn", *sweep], f"{out}/eval_yarn.log")
    stages[name] = time.time() - t0

    stage("write", "4/4 write: tables")
    stages["total"] = time.time() - t_all
    write_report(results, stages, seeds)
    print(f"[demo {stages['total']:6.0f}s] done: {results}/demo.png, {results}/demo.md", flush=True)


def write_report(results, stages, seeds):
    with open(f"{results}/demo.json") as f:
        plain = json.load(f)
    with open(f"{results}/demo_yarn.json") as f:
        yarn = json.load(f)
    from eval_length import format_table
    lines = [f"# nanoFoPE laptop demo ({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
             f"seeds {seeds}; L_train = {plain['info']['train_len']}.", "",
             "Without context extension:", "", "```", format_table(plain["summary"], plain["info"]["lengths"]).strip(), "```", "",
             "With YaRN (factor 8, attention temperature on), rotary variants:", "", "```",
             format_table(yarn["summary"], yarn["info"]["lengths"]).strip(), "```", "",
             f"Peak memory of the sweep: {plain['info']['peak_rss_mb']:.0f} MB (eval_length.py's ru_maxrss).", ""]
    write_markdown(f"{results}/demo", lines, stages)


def write_markdown(path, lines, stages):
    """path.md: the lines, then the stage times; path_timing.json: the stage times."""
    lines = [*lines, "Stage times (seconds):", "", *(f"- {k}: {v:.0f}" for k, v in stages.items())]
    with open(f"{path}.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(f"{path}_timing.json", "w") as f:
        json.dump(stages, f, indent=1)


if __name__ == "__main__":
    main()
