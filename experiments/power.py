"""
Verdicts with power: the paper's parts claims (its Fig. 6a: RoPE, the clamp alone, the Fourier series
alone, FoPE) and FoPE / RoPE / ALiBi on the passkey, with 10 seeds, at two geometries and two training
budgets, scored by the one protocol (experiments/protocol.py) and decided by experiments/stats.py.

    geometry  ablate     make ablate's model (head_dim 32, L_train 64, theta 1e4): D = 5 of 16 pairs kept
              theta150   the same at theta 150: D = 8 of 16 kept, the paper's kept fraction
    budget    900        config/ablate.py (make ablate's: 900 iterations, passkey warm-up 450)
              2200       config/demo.py (make demo's: 2200 iterations, passkey warm-up 1000)

Each (geometry, budget) is a grid; runs are shared with the experiment that trains the same run (make
ablate's out/ablate, make demo's out/demo, make geometry's out/geometry), so nothing is trained twice.
Each grid's sweep is written as soon as it ends (results/power_<grid>.json, with the sources it was
made with); the report combines the grids there are and names the ones not yet run.

Seeds: 10. make ablate's 3 seeds gave paired differences whose spread (sd over seeds) is 0.2-0.8 of their
mean for the parts claims at 16x; for an effect of one sd, a paired t at 5% with 80% power needs 10 pairs
(stats.seeds_for_difference(1, 1)), and each undecided claim's row says how many more it would need.

    python experiments/power.py                                   # every grid (about 4 h on 2 CPU cores)
    python experiments/power.py --grids theta150-900 ablate-900   # the 900-iteration grids (about 1 h)
    python experiments/power.py --report_only                     # results/power.md from the grids' JSON
    python experiments/power.py --quick                           # a smoke run: 2 seeds, 20 iterations

Writes results/power_<grid>.{csv,json,png}, results/power.{json,md} and results/power_timing.json.
"""

import json
import os
import sys
from collections import defaultdict
from typing import NamedTuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from checkpoint import changed_sources, source_hashes  # noqa: E402
from experiments import ablate, runner  # noqa: E402
from experiments.protocol import PROTOCOL, deviation  # noqa: E402
from experiments.stats import MARGIN_AFTER, MARGIN_BEFORE, wilson  # noqa: E402

PARTS = ("rope", "clamp-only", "fourier-only", "fope")


class Grid(NamedTuple):
    """One grid: its config, out folder under out_root, run name prefix, extra train.py flags, arms, and when the
    verdicts' margin (experiments/stats.py) was set against its runs (stats.MARGIN_BEFORE or MARGIN_AFTER)."""
    config: str
    folder: str
    prefix: str
    flags: list
    arms: tuple
    margin: str


GRIDS = {  # the margins were set 2026-12-06 14:54, after the 900-iteration grids were swept (14:12, 14:50)
    "theta150-900": Grid("config/geometry_theta150.py", "geometry", "theta150-", [], PARTS, MARGIN_AFTER),
    "ablate-900": Grid("config/ablate.py", "ablate", "", [], (*PARTS, "alibi"), MARGIN_AFTER),
    "theta150-2200": Grid("config/demo.py", "power", "theta150_2200-", ["--rope_theta=150.0"], PARTS, MARGIN_BEFORE),
    "ablate-2200": Grid("config/demo.py", "demo", "", [], PARTS, MARGIN_BEFORE),  # ALiBi's passkey: at 900 only
}
QUICK_PROTOCOL = PROTOCOL._replace(multiples=(1, 2, 4), tokens_per_length=2048, passkey_docs_per_depth=1)


def arm_flags(arm):
    """The arm's train.py flags, as make ablate (and so make demo and make geometry) gives them."""
    return ablate.arms()[arm]


def train_grid(grid, args, stages, extra):
    config, folder, prefix, flags, arms, _ = GRIDS[grid]
    out = os.path.join(args.out_root, f"{folder}_quick" if args.quick else folder)
    os.makedirs(out, exist_ok=True)
    runs = runner.train_grid(config, out, {prefix + a: [*arm_flags(a), *flags] for a in arms}, args.seeds, stages,
                             extra, args.dataset, args.fresh)
    return {name[len(prefix):]: dirs for name, dirs in runs.items()}


# -----------------------------------------------------------------------------
# claims


Claim = ablate.Claim
# the passkey at 1x: the paper claims nothing within L_train (its passkey claims are past it), so no expectation
CLAIMS = [c for c in ablate.CLAIMS if c.section == "parts"] + [
    Claim("parts", "fope", "rope", "ppl_beyond", 4, "FoPE generalizes past L_train better than RoPE, at 4x"),
    Claim("parts", "fope", "rope", "ppl", 1, "(no paper claim) FoPE against RoPE within L_train", None),
    *[Claim("passkey", "fope", b, "passkey", k, f"FoPE retrieves the passkey {what} at {k}x") if k > 1 else
      Claim("passkey", "fope", b, "passkey", k, f"(no paper claim) FoPE against {name}, passkey at 1x", None)
      for b, what, name in (("rope", "better than RoPE", "RoPE"), ("alibi", "better than ALiBi", "ALiBi"))
      for k in PROTOCOL.passkey_multiples],
]


def margin_words(grids):
    """When the margin was set, for the grids in a report: one phrase if they agree, else per grid."""
    by = defaultdict(list)
    for g in grids:
        by[GRIDS[g].margin].append(g)
    if len(by) == 1:
        return next(iter(by))
    return "; ".join(f"{words} for {', '.join(gs)}" for words, gs in by.items())


def passkey_pool(rows, arm, length, docs):
    """Pooled passkey successes over seeds -> (mean of per-seed accuracies, Wilson 95% interval, documents)."""
    accs = [r["passkey"] for r in rows if r["label"] == arm and r["length"] == length and r["passkey"] is not None]
    if not accs:
        return None
    hits = round(sum(accs) * docs)
    return {"mean": sum(accs) / len(accs), "wilson": wilson(hits, docs * len(accs)), "documents": docs * len(accs),
            "seeds": len(accs)}


# -----------------------------------------------------------------------------


def main(argv=None):
    p = runner.parser("the parts claims and the passkey with 10 seeds, two geometries, two budgets",
                      "smoke run: 2 seeds, 20 iterations, small sweeps", seeds=tuple(range(1, 11)))
    p.add_argument("--grids", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    p.add_argument("--train_only", action="store_true", help="train the grids' runs, no sweep, no report")
    args = p.parse_args(argv)
    results = os.path.join(args.results, "quick") if args.quick else args.results
    protocol, extra = (QUICK_PROTOCOL, ablate.QUICK_TRAIN) if args.quick else (PROTOCOL, [])
    if args.quick:
        args.seeds = args.seeds[:2]
    if args.report_only:
        with runner.saved_results(results, f"{results}/power_*.json"):
            return report(results, args.quick)
    os.makedirs(results, exist_ok=True)
    stages = runner.Stages("power")
    with stages("data", "1/3 data: char-level Shakespeare"):
        runner.prepare_data(args, args.out_root)
    for grid in args.grids:
        with stages(f"train {grid}", f"2/3 train {grid}: {len(GRIDS[grid][4])} arms x {len(args.seeds)} seeds"):
            ckpts = train_grid(grid, args, stages, extra)
        if args.train_only:
            continue
        with stages(f"eval {grid}", f"3/3 eval {grid}: the protocol's sweep over every run"):
            runner.sweep(ckpts, f"{results}/power_{grid}", protocol.sweep_args(),
                         os.path.join(args.out_root, f"eval_power_{grid}.log"))
            sweep = runner.load_json(f"{results}/power_{grid}.json")
            sweep["power"] = {"grid": grid, "sources": source_hashes(), "seeds": args.seeds, "quick": args.quick,
                              "protocol": protocol._asdict()}
            with open(f"{results}/power_{grid}.json", "w") as f:
                json.dump(sweep, f, indent=1)
    stages.done(f"{results}/power.md")
    timing = os.path.join(results, "power_timing.json")
    previous = runner.load_json(timing) if os.path.isfile(timing) else {}
    with open(timing, "w") as f:  # the stage times of every run of this experiment, by grid
        json.dump({**previous, **{k: round(v) for k, v in stages.times.items()}}, f, indent=1)
    if not args.train_only:
        report(results, args.quick)


def report(results, quick=False):
    """results/power.{json,md} from the grids' JSON that exist."""
    protocol = QUICK_PROTOCOL if quick else PROTOCOL
    current = source_hashes()
    grids = {g: runner.load_json(f"{results}/power_{g}.json") for g in GRIDS if os.path.isfile(f"{results}/power_{g}.json")}
    if not grids:  # no JSON, or no folder: an empty report would read as if every grid were still to run
        raise SystemExit(f"no power_<grid>.json in {results}: run python experiments/power.py first "
                         "(without --report_only), or pass the --results it wrote to")
    tested = {g: ablate.tested_claims(sweep["rows"], sweep["info"]["train_len"], CLAIMS) for g, sweep in grids.items()}
    decided = ablate.decided_claims([{**c, "grid": g} for g in tested for c in tested[g]])  # one family for Holm
    doc = {"protocol": protocol._asdict(), "grids": {}, "claims": decided}
    lines = [protocol.describe(), ""]
    if quick:
        lines += [deviation("2 seeds, 20 iterations, 2,048 tokens and 5 passkey documents per length", "--quick smoke run"), ""]
    for g in GRIDS:
        if g not in grids:
            lines.append(f"- grid {g}: not run yet (`python experiments/power.py --grids {g}`)")
            continue
        sweep = grids[g]
        made = sweep.get("power", {})
        changed = changed_sources(made.get("sources", {}), current)
        doc["grids"][g] = {"date": sweep["info"]["date"], "seeds": made.get("seeds"), "changed_sources": changed}
        doc["grids"][g]["margin"] = GRIDS[g].margin
        lines.append(f"- grid {g}: {' '.join([GRIDS[g].config, *GRIDS[g].flags])}, seeds {made.get('seeds')}, swept "
                     f"{sweep['info']['date']}; margin {GRIDS[g].margin}"
                     + (f"; made with other sources ({', '.join(changed)})" if changed else ""))
    lines += ["", ablate.claims_note(margin_words(grids)) + " Every claim of every grid is one family.", ""]
    by_grid = defaultdict(list)
    for c in decided:
        by_grid[c["grid"]].append(c)
    doc["claim"] = {g: {ablate.claim_key(c): c for c in cs} for g, cs in by_grid.items()}  # by name, for readings
    if grids:  # how each verdict moves with the geometry and the training budget
        keys = list(dict.fromkeys(ablate.claim_key(c) for c in decided))
        lines += ["Verdicts by grid (A vs B, metric at length; details below):", "",
                  "| claim | " + " | ".join(grids) + " |", "|---" * (len(grids) + 1) + "|"]
        for key in keys:
            cells = [doc["claim"][g].get(key, {}).get("verdict", "-") for g in grids]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        lines.append("")
    for g, sweep in grids.items():
        train_len = sweep["info"]["train_len"]
        lines += [f"## {g}", "", *ablate.format_claims(by_grid[g]), ""]
        docs = protocol.passkey_docs()
        pool = {arm: {k: passkey_pool(sweep["rows"], arm, k * train_len, docs) for k in protocol.passkey_multiples}
                for arm in sorted({r["label"] for r in sweep["rows"]})}
        doc["grids"].setdefault(g, {})["passkey_pooled"] = pool
        lines += ["", "Passkey, per-seed mean and pooled Wilson 95% interval (documents):", "",
                  "| arm | " + " | ".join(f"{k}x" for k in protocol.passkey_multiples) + " |",
                  "|---" * (len(protocol.passkey_multiples) + 1) + "|"]
        for arm, by_k in pool.items():
            cells = [f"{v['mean']:.2f} [{v['wilson'][0]:.2f}, {v['wilson'][1]:.2f}] ({v['documents']})" if v else "-"
                     for v in by_k.values()]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines.append("")
    with open(f"{results}/power.json", "w") as f:
        json.dump(doc, f, indent=1, default=float)
    times = runner.load_json(f"{results}/power_timing.json") if os.path.isfile(f"{results}/power_timing.json") else {}
    reading = "power" if not quick and {"theta150-900", "ablate-900"} <= set(grids) else None  # what the reading cites
    runner.write_report(f"{results}/power", "Verdicts with power: the parts claims and the passkey", lines, times,
                        reading, {"power": json.loads(json.dumps(doc, default=float))})
    print(f"wrote {results}/power.md")


if __name__ == "__main__":
    main()
