"""
Context extension by continued training, the paper's Fig. 4 at laptop scale (what `make extend` runs).

The paper starts from its length-512 RoPE and FoPE models and trains each on at length 1024 with an
extension method, six arms in all. Here the parents are `make demo`'s length-64 rope and fope runs
(trained first if missing or stale), continued at length 128 (config/extend.py):

    rope, fope          the parents, not extended
    rope+yarn           RoPE with YaRN (the official code's: factor 16, beta_fast 32, beta_slow 1, index ramp,
    fope+yarn           no attention temperature; for FoPE after the clamp, new coefficients zero)
    rope->fope          the RoPE parent turned into FoPE (freshly drawn coefficients)
    fope->fope          FoPE at the new length (more frequencies kept, coefficients grown with a fresh init)

Every continued arm is evaluated after 500 and 1000 iterations (YaRN overfits with more steps, so the
paper reports its best checkpoint; here both are reported): the 500-iteration run is trained, copied,
and resumed to 1000, which train.py makes identical to an uninterrupted run. Then the length sweep
(eval_length.py) out to 32x the parent's length, perplexity beyond the parent's L_train and passkey.

    python extend.py            # ~15 minutes on 2 CPU cores after make demo
    python extend.py --quick    # a smoke run on make demo --quick's runs (results/quick/)

Writes results/extend.{csv,json,md,png} and results/extend_positions.png.
"""

import argparse
import json
import os
import shutil
import sys
import time

import demo

YARN = ("--rope_scaling={'rope_type': 'yarn', 'factor': 16.0, 'original_max_position_embeddings': 64, "
        "'attention_factor': 1.0}")
ARMS = {  # name -> (the demo variant it starts from, train.py overrides); no overrides: the parent itself
    "rope": ("rope", None),
    "fope": ("fope", None),
    "rope+yarn": ("rope", ["--pos_emb=rope", YARN]),
    "fope+yarn": ("fope", ["--pos_emb=fope", YARN, "--fourier_expand=zero"]),
    "rope->fope": ("rope", ["--pos_emb=fope"]),
    "fope->fope": ("fope", ["--pos_emb=fope", "--fourier_expand=fresh"]),
}
STEPS = (500, 1000)  # the continued runs are evaluated at each


def main(argv=None):
    p = argparse.ArgumentParser(description="context extension by continued training (the paper's Fig. 4)")
    p.add_argument("--quick", action="store_true", help="smoke run on make demo --quick's runs: 1 seed, 40 + 40 iters")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--fresh", action="store_true", help="retrain continued runs that already finished")
    args = p.parse_args(argv)
    if args.quick:
        seeds, steps = args.seeds[:1], (40, 80)
        demo_out, out, results = "out/demo_quick", "out/extend_quick", "results/quick"
        demo_extra = demo.QUICK_TRAIN
        extra = ["--eval_interval=40", "--lr_decay_iters=80"]
        sweep = ["--tokens=4096", "--trials=4", "--multipliers", "1", "2", "4", "--passkey_up_to=2"]
    else:
        seeds, steps = args.seeds, STEPS
        demo_out, out, results = "out/demo", "out/extend", "results"
        demo_extra, extra = [], []
        sweep = ["--tokens=32768", "--trials=20", "--multipliers", "1", "2", "4", "8", "16", "32", "--passkey_up_to=4"]
    os.makedirs(out, exist_ok=True)
    os.makedirs(results, exist_ok=True)
    stages, t_all = {}, time.time()

    def stage(message):
        print(f"[extend {time.time() - t_all:6.0f}s] {message}", flush=True)
        return time.time()

    t0 = stage("1/3 parents: make demo's length-64 rope and fope runs")
    parents = {}
    for variant in ("rope", "fope"):
        for seed in seeds:
            out_dir, train_args = demo.run_args("config/demo.py", demo_out, variant, demo.VARIANTS[variant], seed, demo_extra)
            demo.ensure_trained(out_dir, train_args, stages)
            parents[variant, seed] = out_dir
    stages["parents"] = time.time() - t0

    t0 = stage(f"2/3 continue at length 128: {len(ARMS) - 2} arms x {len(seeds)} seeds, evaluated at {steps}")
    groups = {}  # label -> checkpoints
    for arm, (variant, flags) in ARMS.items():
        for seed in seeds:
            parent = parents[variant, seed]
            if flags is None:
                groups.setdefault(f"{arm} (L 64)", []).append(parent)
                continue
            name = arm.replace(">", "")  # rope->fope -> rope-fope_s1
            common = [f"--init_from={parent}", *flags, *extra]
            half_dir, half_args = demo.run_args("config/extend.py", out, f"{name}_it{steps[0]}", common, seed,
                                                [f"--max_iters={steps[0]}"])
            trained = demo.ensure_trained(half_dir, half_args, stages, args.fresh)
            full_dir, full_args = demo.run_args("config/extend.py", out, name, flags, seed,
                                                [*extra, "--init_from=resume", f"--max_iters={steps[1]}"])
            if trained or demo.stale_reason(full_dir, full_args) is not None:
                shutil.rmtree(full_dir, ignore_errors=True)
                shutil.copytree(half_dir, full_dir)  # then resumed: the same run, stopped later
                demo.ensure_trained(full_dir, full_args, stages, fresh=True, why=f"resumed from {half_dir}")
            else:
                print(f"  {full_dir}: already trained with this config and code, kept", flush=True)
            for step, out_dir in zip(steps, (half_dir, full_dir)):
                groups.setdefault(f"{arm} @{step}", []).append(out_dir)
    stages["train"] = time.time() - t0

    t0 = stage("3/3 eval: the length sweep against the parents' L_train = 64")
    ckpts = [c for group in groups.values() for c in group]
    labels = [f"--label={name}={','.join(group)}" for name, group in groups.items()]
    demo.run([sys.executable, "eval_length.py", "--ckpt", *ckpts, *labels, "--train_len=64",
              "--out", f"{results}/extend", *sweep], f"{out}/eval.log")
    stages["eval"] = time.time() - t0
    stages["total"] = time.time() - t_all
    write_report(results, stages, seeds, steps)
    print(f"[extend {stages['total']:6.0f}s] done: {results}/extend.png, {results}/extend.md", flush=True)


def write_report(results, stages, seeds, steps):
    from eval_length import format_table
    with open(f"{results}/extend.json") as f:
        sweep = json.load(f)
    lines = [f"# nanoFoPE context extension ({time.strftime('%Y-%m-%d')})", "",
             f"Parents: make demo's length-64 rope and fope runs; continued at length 128 for {steps[0]} and "
             f"{steps[1]} iterations (config/extend.py); seeds {seeds}. Lengths as multiples of the parents' "
             "L_train = 64; 'beyond L_train' means positions >= 64.", "",
             "```", format_table(sweep["summary"], sweep["info"]["lengths"]).strip(), "```", ""]
    demo.write_markdown(f"{results}/extend", lines, stages)


if __name__ == "__main__":
    main()
