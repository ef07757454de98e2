"""
The paper's ablations and baselines at laptop scale, with seeds (what `make ablate` runs).

Every arm is a train.py run (config/ablate.py: make demo's model and data, 900 iterations) with 3 seeds;
the sections are the paper's comparisons, and an arm in several sections is trained once:

    parts       RoPE, clamp only ("w/o FS"), Fourier series only ("w/o CF"), FoPE      (its Fig. 6a)
    sigma       FoPE with coefficient gain sigma in {0, 0.1, ..., 0.5}                  (Fig. 6b)
    basis       FoPE with fourier_dim in {1, 2, 3, 4} x head_dim (the basis size)       (Fig. 6c)
    table2      RoPE, RoPE-A and NoPE, each without and with QK norm                    (Table 2)
    embeddings  every position embedding of model.POS_EMBS side by side                 (Fig. 1)

Then one length sweep (eval_length.py) over every run: perplexity beyond L_train at 4x and 16x (and
2x, 8x), perplexity at L_train, passkey at 1x and 2x; per section a table, a figure and the paper's
claims tested with a paired per-seed difference (see compare()).

A finished run is kept while its config and code are unchanged (runner.stale_reason). With --scale=demo
the arms are trained at make demo's own settings into out/demo, so make demo's runs (rope, fope,
clamp-only, alibi, nope; seeds 1 and 2), when made by the same code, are the same runs and are reused.

    python experiments/ablate.py                  # about 70 minutes on 2 CPU cores (make ablate)
    python experiments/ablate.py --quick          # a smoke run of the same pipeline: 2 seeds, 20 iterations
    python experiments/ablate.py --scale=demo     # the demo's 2200 iterations, reusing make demo's runs (~2.5 h)

Writes results/ablate.{csv,json,md}, results/ablate_<section>.png and results/ablate_timing.json.
"""

import json
import os
import statistics
import sys
from collections import defaultdict
from typing import NamedTuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from configurator import read_config_file  # noqa: E402
from experiments import demo, runner  # noqa: E402
from experiments.protocol import PROTOCOL, header  # noqa: E402
from experiments.stats import MARGIN_AFTER, at_ceiling, decide, verdict_text  # noqa: E402
from fope import FOPE_SIGMA  # noqa: E402  (GPTConfig's default: the "fope" arm is sigma 0.3, fourier_dim = head_dim)
from model import POS_EMBS  # noqa: E402
from runs import format_table, plot_sweep, spread  # noqa: E402

SIGMAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
_config = read_config_file(runner.repo_path("config/ablate.py"))
HEAD_DIM = _config["n_embd"] // _config["n_head"]  # config/ablate.py's (make demo's): 32
FOURIER_DIMS = (HEAD_DIM, 2 * HEAD_DIM, 3 * HEAD_DIM, 4 * HEAD_DIM)
# --quick: a smoke run of 20 iterations (make geometry's and make power's too)
# when the margin (experiments/stats.py) was set: after make ablate's runs (swept 2026-11-23; the margins 2026-12-06)
MARGIN = MARGIN_AFTER
QUICK_TRAIN = ["--max_iters=20", "--passkey_warmup=10", "--warmup_iters=5", "--eval_interval=20", "--eval_iters=2"]


def arms():
    """arm -> train.py flags. The demo's variants keep the demo's names and flags (so the runs coincide)."""
    a = {"rope": demo.VARIANTS["rope"], "clamp-only": demo.VARIANTS["clamp-only"],
         "fourier-only": ["--pos_emb=fope", "--fope_clamp=False"], "fope": demo.VARIANTS["fope"]}
    a.update({f"fope-sigma{s:g}": ["--pos_emb=fope", f"--fope_sigma={s}"] for s in SIGMAS if s != FOPE_SIGMA})
    a.update({f"fope-dim{d}": ["--pos_emb=fope", f"--fope_dim={d}"] for d in FOURIER_DIMS if d != HEAD_DIM})
    a.update({f"{name}+qknorm": [f"--pos_emb={name}", "--qk_norm=True"] for name in ("rope", "rope-a", "nope")})
    for name in POS_EMBS:  # a new registry line is a new arm
        a.setdefault(name, demo.VARIANTS.get(name, [f"--pos_emb={name}"]))
    return a


def sections():
    """section -> (title, [(row label, arm)])."""
    return {
        "parts": ("Parts of FoPE (the paper's Fig. 6a)", [
            ("RoPE", "rope"), ("clamp only (w/o FS)", "clamp-only"), ("Fourier only (w/o CF)", "fourier-only"),
            ("FoPE", "fope")]),
        "sigma": ("FoPE's coefficient gain sigma (Fig. 6b)", [
            (f"sigma={s:g}", "fope" if s == FOPE_SIGMA else f"fope-sigma{s:g}") for s in SIGMAS]),
        "basis": ("FoPE's basis size, fourier_dim (Fig. 6c)", [
            (f"fourier_dim={d}", "fope" if d == HEAD_DIM else f"fope-dim{d}") for d in FOURIER_DIMS]),
        "table2": ("QK norm and whole-cycle frequencies (Table 2)", [
            ("RoPE", "rope"), ("RoPE + QK norm", "rope+qknorm"), ("RoPE-A", "rope-a"),
            ("RoPE-A + QK norm", "rope-a+qknorm"), ("NoPE", "nope"), ("NoPE + QK norm", "nope+qknorm")]),
        "embeddings": ("Every position embedding (Fig. 1's baselines and the classics)", [
            (name, name) for name in POS_EMBS]),
    }


class Claim(NamedTuple):
    """One of the paper's claims as a paired comparison of arms A and B at a multiple of L_train. expect:
    "better" (A below B in perplexity, above in passkey), "no difference" (the paper sees little effect), or None:
    the paper claims nothing here (a row of our own, e.g. "(no paper claim)", or the passkey at 1x, where the
    paper claims nothing): its row is never read for or against the paper, whatever its verdict."""
    section: str
    a: str
    b: str
    metric: str
    multiple: int
    text: str
    expect: str = "better"


CLAIMS = [
    Claim("parts", "fope", "rope", "ppl_beyond", 16, "FoPE generalizes past L_train better than RoPE"),
    Claim("parts", "clamp-only", "rope", "ppl_beyond", 16, "the clamp alone helps"),
    Claim("parts", "fourier-only", "rope", "ppl_beyond", 16, "the Fourier series alone helps"),
    Claim("parts", "fope", "clamp-only", "ppl_beyond", 16, "the combination beats the clamp alone"),
    Claim("parts", "fope", "fourier-only", "ppl_beyond", 16, "the combination beats the Fourier series alone"),
    Claim("parts", "fourier-only", "clamp-only", "ppl_beyond", 16, "the Fourier series contributes more to length generalization"),
    Claim("parts", "clamp-only", "fourier-only", "ppl", 1, "the clamp contributes more to fitting the training length"),
    *[Claim("sigma", "fope", f"fope-sigma{s:g}", "ppl_beyond", 16, f"sigma 0.3 beats sigma {s:g}") for s in SIGMAS if s != FOPE_SIGMA],
    *[Claim("basis", "fope", f"fope-dim{d}", "ppl_beyond", 16, f"little effect on perplexity: fourier_dim {HEAD_DIM} vs {d}",
            "no difference")
      for d in FOURIER_DIMS if d != HEAD_DIM],
    Claim("table2", "rope+qknorm", "rope", "ppl_beyond", 16, "QK norm helps RoPE past L_train (7.16 -> 6.66 at 16x)"),
    Claim("table2", "rope-a", "rope", "ppl_beyond", 16, "RoPE-A generalizes better than RoPE (7.16 -> 6.67 at 16x)"),
    Claim("table2", "rope", "rope-a", "ppl", 1, "RoPE fits L_train better than RoPE-A (5.50 vs 5.72)"),
    Claim("table2", "nope", "rope", "ppl_beyond", 16, "NoPE degrades less than RoPE at 16x (6.99 vs 7.16)"),
    Claim("table2", "rope-a", "rope-a+qknorm", "ppl_beyond", 16, "QK norm does not help RoPE-A (6.67 vs 6.81 at 16x)"),
    Claim("table2", "nope", "nope+qknorm", "ppl_beyond", 16, "QK norm hurts NoPE past L_train (6.99 vs 7.43 at 16x)"),
    Claim("embeddings", "fope", "rope", "ppl_beyond", 4, "FoPE's perplexity is far more stable than RoPE's"),
    Claim("embeddings", "alibi", "fope", "ppl_beyond", 16, "ALiBi's perplexity is slightly below FoPE's"),
    Claim("embeddings", "fope", "rope", "passkey", 2, "RoPE's passkey falls to 0 at 2x, FoPE's stays"),
    Claim("embeddings", "fope", "alibi", "passkey", 2, "FoPE's passkey is stable where ALiBi's declines"),
    Claim("embeddings", "fope", "kerple", "ppl_beyond", 16, "(Fig. 1 plots it) FoPE vs KERPLE"),
    Claim("embeddings", "fope", "fire", "ppl_beyond", 16, "(Fig. 1 plots it) FoPE vs FIRE"),
]
METRIC_NAMES = {"ppl_beyond": "ppl beyond L_train", "ppl": "ppl", "passkey": "passkey"}


def paired(rows, a, b, metric, length):
    """The per-seed values of arms A and B at one length -> (seeds, A - B per seed, B's mean)."""
    by_seed = defaultdict(dict)
    for r in rows:
        if r["length"] == length and r["label"] in (a, b) and r[metric] is not None:
            by_seed[r["seed"]][r["label"]] = r[metric]
    seeds = sorted(s for s, v in by_seed.items() if a in v and b in v)
    d = [by_seed[s][a] - by_seed[s][b] for s in seeds]
    return seeds, d, (statistics.mean(by_seed[s][b] for s in seeds) if seeds else None)


def arm_mean(rows, arm, metric, length, seeds):
    """One arm's mean of a metric at one length over the given seeds (those paired() kept)."""
    values = [r[metric] for r in rows if r["length"] == length and r["label"] == arm and r["seed"] in seeds
              and r[metric] is not None]
    return statistics.mean(values) if values else None


def unmeasurable(rows, claim, train_len):
    """Why a passkey claim cannot be read, or None: past L_train both arms must retrieve at L_train (mean >= 0.5),
    at L_train at least one must (two arms that never retrieve say nothing about each other)."""
    if claim.metric != "passkey":
        return None
    low = {}
    for arm in (claim.a, claim.b):
        values = [r["passkey"] for r in rows if r["label"] == arm and r["length"] == train_len and r["passkey"] is not None]
        if values and statistics.mean(values) < 0.5:
            low[arm] = statistics.mean(values)
    if low and (claim.multiple > 1 or len(low) == 2):
        return "; ".join(f"{arm} retrieves {m:.2f} at L_train" for arm, m in low.items())
    return None


def tested_claims(rows, train_len, claims=None):
    """The claims (default: CLAIMS) that the sweep's rows can test, as paired per-seed differences, not yet
    decided (stats.decide takes a report's claims together, one family for Holm)."""
    out = []
    for claim in CLAIMS if claims is None else claims:
        seeds, d, reference = paired(rows, claim.a, claim.b, claim.metric, claim.multiple * train_len)
        if len(d) < 2:
            continue
        out.append({"section": claim.section, "claim": claim.text, "a": claim.a, "b": claim.b, "metric": claim.metric,
                    "length": claim.multiple * train_len, "multiple": claim.multiple, "expect": claim.expect,
                    "seeds": seeds, "d": d, "reference": reference, "min": min(d), "max": max(d),
                    "a_mean": arm_mean(rows, claim.a, claim.metric, claim.multiple * train_len, seeds),
                    "not_measurable": unmeasurable(rows, claim, train_len)})
    return out


def decided_claims(tested):
    """One report's tested claims -> each with its verdict (experiments/stats.py), the measurable ones one
    family for Holm; a passkey claim the arms cannot show gets the verdict "not measurable". Its reading against
    the paper (paper_label): a row the paper makes no claim on (expect None) is "no paper claim" whatever its
    verdict; a row whose arms are both at the ceiling says so."""
    family = [c for c in tested if not c["not_measurable"]]
    decided = iter(decide(family))
    out = []
    for c in tested:
        if c["not_measurable"]:
            out.append({**c, "n": len(c["d"]), "mean": statistics.mean(c["d"]), "verdict": "not measurable",
                        "verdict_text": f"not measurable: {c['not_measurable']}", "paper": "not measurable"})
            continue
        c = next(decided)
        c["verdict_text"] = verdict_text(c)
        c["ceiling"] = at_ceiling(c["metric"], c.get("a_mean"), c["reference"], c["margin"])
        c["paper"] = paper_label(c)
        out.append(c)
    return out


def paper_label(c):
    """A decided claim's reading against the paper: "no paper claim" where the paper claims nothing (expect
    None), "undecided", "as the paper says" or "against the paper"; a ceiling row (both arms within the margin of
    the metric's best value, stats.at_ceiling) says so beside that label."""
    if c["expect"] is None:
        label = "no paper claim"
    elif c["verdict"] == "undecided":
        label = "undecided"
    else:
        wanted = "equivalent" if c["expect"] == "no difference" else "better"
        label = "as the paper says" if c["verdict"] == wanted else "against the paper"
    return f"{label}; both arms at the ceiling" if c.get("ceiling") else label


def claim_rows(rows, train_len, claims=None):
    """The claims (default: CLAIMS) the rows can test, decided as one family."""
    return decided_claims(tested_claims(rows, train_len, claims))


def claim_key(c):
    """A claim's name in ablate.json's "claim": e.g. "fope vs rope, ppl_beyond at 16x"."""
    return f"{c['a']} vs {c['b']}, {c['metric']} at {c['multiple']}x"


def claims_note(margin):
    """The words above a claims table; margin: when the margin was set against these runs (the experiment's or
    its grids' MARGIN field: stats.MARGIN_BEFORE or stats.MARGIN_AFTER, or a sentence naming grids)."""
    return ("The claims, as paired per-seed differences A - B (lower perplexity, higher passkey is better): "
            "better / worse by a two-sided paired t with the 95% interval wholly beyond the margin, equivalent within "
            f"the margin by TOST (2% of B's perplexity, 0.10 of passkey accuracy, {margin}), Holm-adjusted over the "
            "report's claims; zero spread by exact sign tests; undecided rows give the seeds that would decide them "
            "(experiments/stats.py).")


def format_claims(claims):
    lines = ["| claim (paper) | A - B | metric @ length | verdict: mean [95% CI], seeds, test | vs the paper |",
             "|---|---|---|---|---|"]
    for c in claims:
        lines.append(f"| {c['claim']} | {c['a']} - {c['b']} | {METRIC_NAMES[c['metric']]} @ {c['multiple']}x | "
                     f"{c['verdict_text']} | {c['paper']} |")
    return lines


def main(argv=None):
    p = runner.parser("the paper's ablations and baselines at laptop scale, with seeds",
                      "smoke run: 2 seeds, 20 iterations, small sweeps", seeds=(1, 2, 3))
    p.add_argument("--scale", choices=("ablate", "demo"), default="ablate",
                   help="ablate: config/ablate.py (900 iterations); demo: make demo's settings and runs")
    args = p.parse_args(argv)
    config = f"config/{args.scale}.py"
    if not args.quick and not os.path.isfile(f"{args.results}/ablate_geometry.json"):  # before an hour of training
        raise SystemExit(f"no {args.results}/ablate_geometry.json: the reading of results/ablate.md cites make geometry's "
                         "runs; run make geometry (with the same --results) first")
    runner.run_experiment(args, "ablate", lambda experiment: train_and_eval(experiment, config), stage_count=4,
                          out_name="demo" if args.scale == "demo" else "ablate", quick_seeds=2, min_seeds=2,
                          report=lambda experiment, times: report(experiment.results, times, experiment.seeds, config,
                                                                  args.quick))


def train_and_eval(experiment, config):
    """Stages 2-4: every arm x seed trained (or kept), one length sweep over every run."""
    args, stages, out, seeds = experiment.args, experiment.stages, experiment.out, experiment.seeds
    extra = QUICK_TRAIN if args.quick else []
    sweep = (["--multipliers", "1", "2", "4", "16", "--tokens=2048", "--trials=2", "--passkey_up_to=2"] if args.quick
             else PROTOCOL.sweep_args())  # the one evaluation protocol (experiments/protocol.py)
    all_arms = arms()
    with stages("train", f"2/4 train: {len(all_arms)} arms x {len(seeds)} seeds ({config}{' quick' if args.quick else ''})"):
        ckpts = runner.train_grid(config, out, all_arms, seeds, stages, extra, args.dataset, args.fresh)
    with stages("eval", "3/4 eval: one length sweep over every run"):
        runner.sweep(ckpts, f"{experiment.results}/ablate", sweep, f"{out}/eval_ablate.log")
    stages.say("4/4 write: tables, figures, the paper's claims")


def report(results, times, seeds, config, quick=False):
    """The paper's claims into results/ablate.json, then the tables and figures (write_report)."""
    sweep_result = runner.load_json(f"{results}/ablate.json")
    sweep_result["claims"] = claim_rows(sweep_result["rows"], sweep_result["info"]["train_len"])
    sweep_result["claim"] = {claim_key(c): c for c in sweep_result["claims"]}  # by name: what readings cite
    sweep_result["sections"] = {name: {"title": title, "rows": dict(rows)} for name, (title, rows) in sections().items()}
    with open(f"{results}/ablate.json", "w") as f:
        json.dump(sweep_result, f, indent=1)
    write_report(results, sweep_result, times, seeds, config, quick)


COMPACT_COLUMNS = (("ppl_beyond", 4), ("ppl_beyond", 16), ("ppl", 1), ("passkey", 1), ("passkey", 2))


def compact_table(summary, rows, train_len, cols=COMPACT_COLUMNS):
    """Per arm (rows: [(row label, arm)]): the cols [(metric, multiple of L_train)] of the sweep's summary;
    by default perplexity beyond L_train at 4x and 16x, perplexity at L_train, passkey at 1x and 2x."""
    lines = ["| arm | " + " | ".join(f"{METRIC_NAMES[m]} {k}x" for m, k in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for label, arm in rows:
        by_length = summary.get(arm, {})
        lines.append(f"| {label} | " + " | ".join(spread(by_length.get(str(k * train_len), {}).get(m))
                                                  for m, k in cols) + " |")
    return lines


def write_report(results, sweep, times, seeds, config, quick=False):
    lengths, train_len = sweep["info"]["lengths"], sweep["info"]["train_len"]
    per_position = sweep["per_position"]["loss"]
    lines = [*header(sweep["info"], "" if not quick else "--quick smoke run"),
             f"{config}; seeds {seeds}; L_train = {train_len}; lengths {lengths}. Perplexity 'beyond L_train' "
             f"averages the positions >= {train_len}; passkey is exact match, measured up to 2x. Made "
             f"{sweep['info']['date']} by `python experiments/ablate.py` (`make ablate`); machine: "
             f"{sweep['info'].get('machine', 'not recorded')}.", ""]
    for name, (title, rows) in sections().items():
        summary = {label: sweep["summary"][arm] for label, arm in rows if arm in sweep["summary"]}
        plot_sweep(summary, {label: np.array([per_position[arm]]) for label, arm in rows if arm in per_position},
                   train_len, f"{results}/ablate_{name}")
        lines += [f"## {title}", "", f"![{name}](ablate_{name}.png)", "", *compact_table(sweep["summary"], rows, train_len), "",
                  "```", format_table(summary, lengths).strip(), "```", ""]
        claims = [c for c in sweep["claims"] if c["section"] == name]
        if claims:
            lines += [claims_note(MARGIN), "", *format_claims(claims), ""]
    docs = {"ablate": sweep}
    if not quick:  # the reading's passkey paragraph cites make geometry's runs (main checked they exist)
        docs["geometry"] = runner.load_json(f"{results}/ablate_geometry.json")
    runner.write_report(f"{results}/ablate", "nanoFoPE ablations and baselines", lines, times, None if quick else "ablate", docs)


if __name__ == "__main__":
    main()
