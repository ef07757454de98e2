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

    python experiments/extend.py            # about 10 minutes on 2 CPU cores after make demo
    python experiments/extend.py --quick    # a smoke run on make demo --quick's runs (results/quick/)

Writes results/extend.{csv,json,md,png} and results/extend_positions.png.
"""

import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from experiments import demo, runner  # noqa: E402
from experiments.protocol import header  # noqa: E402
from experiments.stats import MARGIN_AFTER  # noqa: E402
from runs import format_table  # noqa: E402

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
# when the verdicts' margin (experiments/stats.py) was set: after these runs (swept 2026-11-29; the margins 2026-12-06)
MARGIN = MARGIN_AFTER


def main(argv=None):
    args = runner.parser("context extension by continued training (the paper's Fig. 4)",
                         "smoke run on make demo --quick's runs: 1 seed, 40 + 40 iters").parse_args(argv)
    steps = (40, 80) if args.quick else STEPS
    runner.run_experiment(args, "extend", lambda experiment: train_and_eval(experiment, steps), stage_count=4,
                          report=lambda experiment, times: write_report(experiment.results, times, experiment.seeds,
                                                                        steps, args.quick))


def train_and_eval(experiment, steps):
    """Stages 2-4: make demo's parents (trained if missing or stale), every arm continued and evaluated at both
    steps, the length sweep."""
    args, stages, out, seeds = experiment.args, experiment.stages, experiment.out, experiment.seeds
    if args.quick:
        extra = ["--eval_interval=40", "--lr_decay_iters=80"]
        sweep = ["--tokens=4096", "--trials=4", "--multipliers", "1", "2", "4", "--passkey_up_to=2"]
    else:
        extra = []
        sweep = ["--tokens=32768", "--trials=20", "--multipliers", "1", "2", "4", "8", "16", "32", "--passkey_up_to=4"]
    if args.dataset:
        extra.append(f"--dataset={args.dataset}")

    with stages("parents", "2/4 parents: make demo's length-64 rope and fope runs"):
        parents = demo.train_variants(args, ("rope", "fope"), stages)

    groups = {}  # label -> checkpoints
    with stages("train", f"3/4 continue at length 128: {len(ARMS) - 2} arms x {len(seeds)} seeds, evaluated at {steps}"):
        for arm, (variant, flags) in ARMS.items():
            for seed, parent in zip(seeds, parents[variant]):
                if flags is None:
                    groups.setdefault(f"{arm} (L 64)", []).append(parent)
                    continue
                name = arm.replace(">", "")  # rope->fope -> rope-fope_s1
                common = [f"--init_from={parent}", *flags, *extra]
                half_dir, half_args = runner.run_args("config/extend.py", out, f"{name}_it{steps[0]}", common, seed,
                                                      [f"--max_iters={steps[0]}"])
                trained = runner.ensure_trained(half_dir, half_args, stages, args.fresh)
                full_dir, full_args = runner.run_args("config/extend.py", out, name, flags, seed,
                                                      [*extra, "--init_from=resume", f"--max_iters={steps[1]}"])
                if trained or runner.stale_reason(full_dir, full_args) is not None:
                    shutil.rmtree(full_dir, ignore_errors=True)
                    shutil.copytree(half_dir, full_dir)  # then resumed: the same run, stopped later
                    runner.ensure_trained(full_dir, full_args, stages, fresh=True, why=f"resumed from {half_dir}")
                else:
                    print(f"  {full_dir}: already trained with this config and code, kept", flush=True)
                for step, run_dir in zip(steps, (half_dir, full_dir)):
                    groups.setdefault(f"{arm} @{step}", []).append(run_dir)

    with stages("eval", "4/4 eval: the length sweep against the parents' L_train = 64"):
        runner.sweep(groups, f"{experiment.results}/extend", ["--train_len=64", *sweep], f"{out}/eval.log")


def claims(steps):
    """The paper's Fig. 4 claims and YaRN's overfitting, as paired per-seed differences at the end of training
    (YaRN's also against its own halfway point: the same run, stopped earlier)."""
    from experiments.ablate import Claim
    end, half = f"@{steps[1]}", f"@{steps[0]}"

    def claim(a, b, metric, k, text):
        return Claim("extend", a, b, metric, k, text)
    out = []
    for parent in ("rope", "fope"):
        method, yarn = f"{parent}->fope {end}", f"{parent}+yarn {end}"
        out += [claim(method, yarn, "ppl_beyond", k, f"FoPE as the extension method beats YaRN ({parent} parent), {k}x")
                for k in (32, 8)]
    out += [claim(f"fope+yarn {end}", f"rope+yarn {end}", "ppl_beyond", k, f"FoPE+YaRN beats RoPE+YaRN, {k}x") for k in (8, 32)]
    out.append(claim(f"rope->fope {end}", f"rope+yarn {end}", "passkey", 4,
                     "FoPE as the extension method beats YaRN (rope parent), passkey 4x"))
    out += [claim(f"{parent}+yarn {half}", f"{parent}+yarn {end}", "ppl_beyond", 32,
                  f"YaRN overfits with more steps ({parent} parent): halfway better than the end") for parent in ("rope", "fope")]
    return out


def write_report(results, times, seeds, steps, quick=False):
    from experiments import ablate
    sweep = runner.load_json(f"{results}/extend.json")
    sweep["claims"] = ablate.claim_rows(sweep["rows"], sweep["info"]["train_len"], claims(steps))
    sweep["claim"] = {ablate.claim_key(c): c for c in sweep["claims"]}  # by name: what the reading cites
    with open(f"{results}/extend.json", "w") as f:
        json.dump(sweep, f, indent=1)
    lines = [*header(sweep["info"], "continued runs are measured against their parents' L_train = 64, out to 32x, so "
                     "32,768 tokens per length keep the sweep within minutes" if not quick else "--quick smoke run"),
             f"Parents: make demo's length-64 rope and fope runs; continued at length 128 for {steps[0]} and "
             f"{steps[1]} iterations (config/extend.py); seeds {seeds}. Lengths as multiples of the parents' "
             "L_train = 64; 'beyond L_train' means positions >= 64. Made "
             f"{sweep['info']['date']} by `python experiments/extend.py` (`make extend`); machine: "
             f"{sweep['info'].get('machine', 'not recorded')}.", "",
             "![perplexity and passkey accuracy vs length, the six arms](extend.png)", "",
             "```", format_table(sweep["summary"], sweep["info"]["lengths"]).strip(), "```", "",
             ablate.claims_note(MARGIN), "", *ablate.format_claims(sweep["claims"])]
    runner.write_report(f"{results}/extend", "nanoFoPE context extension", lines, times, None if quick else "extend", {"extend": sweep})


if __name__ == "__main__":
    main()
