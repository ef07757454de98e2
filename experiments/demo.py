"""
The laptop reproduction of FoPE's length curves, end to end (what `make demo` runs):

  1. data:  char-level Shakespeare (data/shakespeare/prepare.py), if not prepared yet
  2. train: rope, fope, clamp-only (FoPE's floor clamp without its Fourier series), alibi and nope,
            each with several seeds (config/demo.py), into out/demo/<variant>_s<seed>
  3. eval:  the length sweep (eval_length.py) at L_train x {1, 2, 4, 8, 16}, then again with YaRN
            (factor 8) on the rotary variants
  4. write: results/demo.{csv,json,png}, results/demo_positions.png, results/demo_yarn.*, and
            results/demo.md (the tables, their reading against the paper, the stage times)

    python experiments/demo.py            # the full run (about half an hour on 2 CPU cores)
    python experiments/demo.py --quick    # a smoke run of the same pipeline in a few minutes (results/quick/)

A finished training run is kept and not trained again only if it is current (runner.stale_reason): its
checkpoint is at max_iters, records the same resolved config as train.py would resolve now, and today's code
computes its first iterations the same (its fingerprint: runner.py's docstring). Otherwise it is trained again and the demo says why; --fresh
retrains everything.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from experiments import runner  # noqa: E402
from experiments.protocol import PROTOCOL, header  # noqa: E402
from experiments.stats import MARGIN_AFTER  # noqa: E402
from runs import format_table  # noqa: E402

VARIANTS = {  # name (the label of its row in the tables) -> train.py overrides
    "rope": ["--pos_emb=rope"],
    "fope": ["--pos_emb=fope"],
    "clamp-only": ["--pos_emb=fope", "--fope_fourier=False"],  # the ablation: RoPE with the floor clamp alone
    "alibi": ["--pos_emb=alibi"],
    "nope": ["--pos_emb=nope"],
}
ROTARY = ("rope", "fope", "clamp-only")
# when the verdicts' margin (experiments/stats.py) was set: after these runs (swept 2026-11-29; the margins 2026-12-06)
MARGIN = MARGIN_AFTER
QUICK_TRAIN = ["--max_iters=200", "--passkey_warmup=100", "--eval_interval=100"]  # --quick: a smoke run


def out_dir(args):
    """Where the demo's runs are (extend.py starts from them)."""
    return os.path.join(args.out_root, "demo_quick" if args.quick else "demo")


def train_variants(args, variants, stages, fresh=False):
    """Train (or keep) the demo's runs of `variants` -> {variant: [out_dir per seed]}."""
    return runner.train_grid("config/demo.py", out_dir(args), {v: VARIANTS[v] for v in variants},
                             args.seeds[:1] if args.quick else args.seeds, stages, QUICK_TRAIN if args.quick else [],
                             args.dataset, fresh)


def main(argv=None):
    args = runner.parser("the laptop reproduction of FoPE's length curves",
                         "smoke run: 1 seed, 200 iters, small sweeps").parse_args(argv)
    runner.run_experiment(args, "demo", train_and_eval, stage_count=4,
                          report=lambda experiment, times: write_report(experiment.results, times, experiment.seeds,
                                                                        args.quick))


def train_and_eval(experiment):
    """Stages 2-4: every variant trained (or kept), the length sweep without and with YaRN."""
    args, stages, out, results = experiment.args, experiment.stages, experiment.out, experiment.results
    sweep = (["--tokens=4096", "--trials=4", "--multipliers", "1", "2", "4"] if args.quick
             else PROTOCOL.sweep_args())  # the one evaluation protocol (experiments/protocol.py)
    with stages("train", f"2/4 train: {len(VARIANTS)} variants x {len(experiment.seeds)} seeds"):
        ckpts = train_variants(args, VARIANTS, stages, args.fresh)
    with stages("eval", "3/4 eval: length sweep, then YaRN x8 on the rotary variants"):
        runner.sweep(ckpts, f"{results}/demo", sweep, f"{out}/eval.log")
        runner.sweep({v: ckpts[v] for v in ROTARY}, f"{results}/demo_yarn",
                     ["--rope_scaling", "yarn", "--factor", "8", *sweep], f"{out}/eval_yarn.log")
    stages.say("4/4 write: tables")


def claims():
    """The paper's claims this demo can test (experiments/ablate.py's machinery; YaRN's rows from demo_yarn)."""
    from experiments.ablate import Claim
    return [Claim("demo", "fope", "rope", "ppl_beyond", 8, "FoPE degrades far less than RoPE (Fig. 1), at 8x"),
            Claim("demo", "fope", "rope", "ppl_beyond", 16, "FoPE degrades far less than RoPE (Fig. 1), at 16x"),
            Claim("demo", "alibi", "fope", "ppl_beyond", 16, "ALiBi's perplexity is slightly below FoPE's (Fig. 1)"),
            Claim("demo", "clamp-only", "rope", "ppl_beyond", 16, "the clamp alone helps (Fig. 6a)"),
            Claim("demo", "fope", "clamp-only", "ppl_beyond", 16, "the combination beats the clamp alone (Fig. 6a)"),
            Claim("demo", "fope", "rope", "passkey", 2, "RoPE's passkey falls at 2x, FoPE's stays (Fig. 5)"),
            Claim("demo", "fope", "alibi", "passkey", 2, "FoPE's passkey is stable where ALiBi's declines (Fig. 5)"),
            Claim("demo", "fope", "clamp-only", "passkey", 2, "(no paper claim) FoPE against the clamp alone, passkey",
                  None),
            Claim("demo", "rope+yarn8", "rope", "ppl_beyond", 8, "(YaRN's claim) YaRN extends RoPE without training"),
            Claim("demo", "rope+yarn8", "rope", "ppl", 1, "(YaRN) its cost within L_train"),
            Claim("demo", "fope+yarn8", "fope", "ppl_beyond", 8, "(no paper claim) YaRN on top of FoPE", None)]


def write_report(results, times, seeds, quick=False):
    from experiments import ablate
    plain = runner.load_json(f"{results}/demo.json")
    yarn = runner.load_json(f"{results}/demo_yarn.json")
    plain["claims"] = ablate.claim_rows(plain["rows"] + yarn["rows"], plain["info"]["train_len"], claims())
    plain["claim"] = {ablate.claim_key(c): c for c in plain["claims"]}  # by name: what the reading cites
    with open(f"{results}/demo.json", "w") as f:
        json.dump(plain, f, indent=1)
    lines = [*header(plain["info"], "" if not quick else "--quick smoke run"),
             f"Machine: {plain['info'].get('machine', 'not recorded')}; seeds {seeds}; L_train = {plain['info']['train_len']}; "
             f"made {plain['info']['date']} by `python experiments/demo.py` (`make demo`).", "",
             "![perplexity and passkey accuracy vs length](demo.png)", "",
             "Without context extension:", "", "```", format_table(plain["summary"], plain["info"]["lengths"]).strip(), "```", "",
             "With YaRN (factor 8, attention temperature on), rotary variants:", "", "```",
             format_table(yarn["summary"], yarn["info"]["lengths"]).strip(), "```", "",
             f"Peak memory of the sweep: {plain['info']['peak_rss_mb']:.0f} MB (eval_length.py's ru_maxrss).", "",
             ablate.claims_note(MARGIN), "", *ablate.format_claims(plain["claims"])]
    runner.write_report(f"{results}/demo", "nanoFoPE laptop demo", lines, times, None if quick else "demo",
                        {"demo": plain, "demo_yarn": yarn})


if __name__ == "__main__":
    main()
