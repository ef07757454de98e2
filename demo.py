"""
The laptop reproduction of FoPE's length curves, end to end (what `make demo` runs):

  1. data:  char-level Shakespeare (data/shakespeare/prepare.py), if not prepared yet
  2. train: rope, fope, fope-clamp (sigma=0: the clamp-only ablation), alibi and nope, each with
            several seeds (config/demo.py), into out/demo/<variant>_s<seed>
  3. eval:  the length sweep (eval_length.py) at L_train x {1, 2, 4, 8, 16}, then again with YaRN
            (factor 8) on the rotary variants
  4. write: results/demo.{csv,json,png}, results/demo_positions.png, results/demo_yarn.*, and
            results/demo.md (the tables and stage times the README quotes)

    python demo.py            # the full run (~25 minutes on 2 CPU cores)
    python demo.py --quick    # a smoke run of the same pipeline in a few minutes (results/quick/)

A finished training run (its checkpoint at max_iters, made with the current config/demo.py) is kept and
not trained again; --fresh retrains.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch

from configurator import parse, read_config_file

VARIANTS = {  # name -> train.py overrides
    "rope": ["--pos_emb=rope"],
    "fope": ["--pos_emb=fope"],
    "fope-clamp": ["--pos_emb=fope", "--fope_sigma=0.0"],
    "alibi": ["--pos_emb=alibi"],
    "nope": ["--pos_emb=nope"],
}
ROTARY = ("rope", "fope", "fope-clamp")


def run(cmd, log):
    """Run a stage's command; its output goes to a log file, a failure ends the demo with one line."""
    with open(log, "w") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    if code:
        with open(log) as f:
            tail = f.read().strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"demo: '{' '.join(cmd)}' failed ({tail[0]}); full log: {log}")


def expected_config(flags):
    """The settings a run gets from config/demo.py and its --key=value flags (as train.py parses them)."""
    expected = read_config_file("config/demo.py")
    for flag in flags:
        key, value = flag[2:].split("=", 1)
        expected[key] = parse(value, expected.get(key))
    return expected


def finished(out_dir, flags):
    """True if out_dir holds a run that completed with these settings; a run made with other settings
    (config/demo.py edited since) is trained again, so results/ never mixes stale runs in."""
    path = os.path.join(out_dir, "ckpt.pt")
    if not os.path.isfile(path):
        return False
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    expected, saved = expected_config(flags), ckpt.get("config", {})
    return ckpt["iter_num"] >= expected["max_iters"] and all(saved.get(k) == v for k, v in expected.items())


def main(argv=None):
    p = argparse.ArgumentParser(description="the laptop reproduction of FoPE's length curves")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 200 iters, small sweeps")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--fresh", action="store_true", help="retrain runs that already finished")
    args = p.parse_args(argv)
    py = sys.executable
    if args.quick:
        seeds = args.seeds[:1]
        train_extra = ["--max_iters=200", "--passkey_warmup=100", "--eval_interval=100"]
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
            out_dir = f"{out}/{variant}_s{seed}"
            ckpts.setdefault(variant, []).append(out_dir)
            run_flags = [*flags, f"--seed={seed}", *train_extra]
            if not args.fresh and finished(out_dir, run_flags):
                print(f"  {out_dir}: already trained, kept", flush=True)
                continue
            t1 = time.time()
            run([py, "train.py", "config/demo.py", *run_flags, f"--out_dir={out_dir}",
                 f"--wandb_run_name={variant}_s{seed}"], f"{out_dir}.log")
            stages[f"train {variant}_s{seed}"] = time.time() - t1
            print(f"  {out_dir}: {time.time() - t1:.0f} s", flush=True)
    stages[name] = time.time() - t0

    name, t0 = stage("eval", "3/4 eval: length sweep, then YaRN x8 on the rotary variants")
    every = [d for dirs in ckpts.values() for d in dirs]
    rotary = [d for v in ROTARY for d in ckpts[v]]
    run([py, "eval_length.py", "--ckpt", *every, "--out", f"{results}/demo", *sweep], f"{out}/eval.log")
    run([py, "eval_length.py", "--ckpt", *rotary, "--rope_scaling", "yarn", "--factor", "8",
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
             "Stage times (seconds):", ""]
    lines += [f"- {k}: {v:.0f}" for k, v in stages.items()]
    lines += ["", f"Peak memory of the sweep: {plain['info']['peak_rss_mb']:.0f} MB (eval_length.py's ru_maxrss)."]
    with open(f"{results}/demo.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(f"{results}/demo_timing.json", "w") as f:
        json.dump(stages, f, indent=1)


if __name__ == "__main__":
    main()
