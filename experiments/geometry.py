"""
How many pairs rotate: make ablate's parts ablation at the paper's kept fraction, FoPE as production runs
it, and the padding dispute (what `make geometry` runs).

At make ablate's setting (head_dim 32, L_train 64, theta 1e4) the floor clamp keeps D = 5 of 16 frequencies
and FoPE rotates 5 of 16 pairs; in the paper's 60M model (head_dim 64, L_train 512) it keeps and rotates 16
of 32: half. Two settings give half at laptop cost, and each is a geometry here (config/geometry_*.py):

    theta150   head_dim 32, L_train 64, theta 150: D = 8 of 16, periods 6.3 to 56 tokens
    L512       head_dim 32, L_train 512, theta 1e4: D = 8 of 16, periods 6.3 to 353 (the paper's 60M model: 6.3 to 471)

and a third where D > head_dim/4, so that production's d_out = D differs from the paper's head_dim/4:

    theta50    head_dim 32, L_train 64, theta 50: D = 10 of 16; the paper's code rotates 8 pairs, production 10

At theta150 and L512, 7 arms (3 seeds each, config/ablate.py's 900 iterations):

    parts       RoPE, clamp only, Fourier only, FoPE (the paper's Fig. 6a, as make ablate)
    production  FoPE as XTuner trains it and vLLM serves it (config/fope_production.py: sigma 0.5, one
                coefficient set per key/value head, shared by all layers, d_out = D) against the paper's
    padding     the position-free pairs padded as the paper's code (cos = sin = 1) or as the identity
                (sin = 0, vLLM's fix), for the paper's FoPE and for production FoPE

At both D = head_dim/4, so production's "every kept frequency rotates" (d_out = D) changes nothing there.
At theta50 (5 arms):

    d_out       RoPE, clamp only, FoPE (d_out = head_dim/4), FoPE with d_out = D, production FoPE

Then per geometry one length sweep (eval_length.py: perplexity to 16x, passkey at 1x, 2x, 4x), the claims
as paired per-seed differences (experiments/ablate.py's compare), and the lens on every run:
- free share: the share of |q.k| the position-free pairs carry (lens_measures.free_share), on val windows
  of L_train tokens;
- far mass: the attention the last L_train queries of 4 L_train windows put on keys farther than L_train;
- key attention: on passkey documents at 1x, 2x, 4x with the key at depth 0 or 0.25 (so farther than L_train
  from the question at 2x and 4x), the softmax weight the query reading the answer puts on the key's first
  digit, for the model's copy head (the head with the largest weight at 1x on other documents, drawn from
  another seed), and the largest over all heads; and the copy head's own far mass at 4x;
- trained-vs-served padding: perplexity of the runs trained with the official padding when run with the
  identity padding instead (a model trained by XTuner and served by vLLM after its fix).

    python experiments/geometry.py            # about 40-60 minutes on 2 CPU cores (make geometry)
    python experiments/geometry.py --quick    # a smoke run of the same pipeline: 2 seeds, 20 iterations

Writes results/ablate_geometry.{md,json}, results/ablate_geometry_<geometry>.{csv,json,png} (the sweeps),
results/ablate_geometry_<geometry>_<section>.png and results/ablate_geometry_timing.json.
"""

import json
import math
import os
import sys
from collections import defaultdict

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from checkpoint import load_model  # noqa: E402
from data.shards import TokenShards  # noqa: E402
from data.tokenizer import get_tokenizer  # noqa: E402
from eval_length import perplexity  # noqa: E402
from experiments import ablate, runner  # noqa: E402
from experiments.ablate import Claim  # noqa: E402
from experiments.protocol import PROTOCOL, header  # noqa: E402
from experiments.stats import MARGIN_BEFORE  # noqa: E402
from experiments.lens_measures import (QKProbe, distance_means, far_mass, free_pairs, free_share,  # noqa: E402
                                       key_attention, pick_windows)
from fope import FourierPositionEmbedding  # noqa: E402
from passkey import PasskeyDocs  # noqa: E402
from runs import format_table, plot_sweep, spread, stats  # noqa: E402

# geometry -> (config, its sections); its arms are the sections' arms
GEOMETRIES = {"theta150": ("config/geometry_theta150.py", ("parts", "production", "padding")),
              "L512": ("config/geometry_L512.py", ("parts", "production", "padding")),
              "theta50": ("config/geometry_theta50.py", ("d_out",))}
PRODUCTION = "config/fope_production.py"
MULTIPLES = (1, 2, 4, 16)
PASSKEY_MULTIPLES = (1, 2, 4)
KEY_DEPTHS = (0.0, 0.25)  # the lens's passkey documents: keys farther than L_train from the question at 2x and 4x
# when the verdicts' margin (experiments/stats.py, 2026-12-06 14:54) was set: before these runs (out/geo2, swept 20:34)
MARGIN = MARGIN_BEFORE
SCORE_SEED, CHOICE_SEED = 1234, 4321  # the documents key attention is scored on; those the copy head is chosen on


def arms():
    """arm -> train.py flags (a config file among them is read after the geometry's): make ablate's parts arms,
    taken from its table (ablate.arms), then this experiment's own."""
    production = runner.repo_path(PRODUCTION)
    parts = {arm: ablate.arms()[arm] for _, arm in SECTIONS["parts"][1]}
    return {**parts, "fope-identity": ["--pos_emb=fope", "--fope_zero_pad=identity"],
            "fope-kept": ["--pos_emb=fope", "--fope_d_out=kept"],
            "fope-prod": [production], "fope-prod-identity": [production, "--fope_zero_pad=identity"]}


SECTIONS = {
    "parts": ablate.sections()["parts"],  # make ablate's section, at this experiment's geometries
    "production": ("FoPE as production runs it (XTuner, vLLM) against the paper's", [
        ("paper's FoPE", "fope"), ("production FoPE", "fope-prod")]),
    "padding": ("The position-free pairs: official padding (cos = sin = 1) against the identity (sin = 0)", [
        ("FoPE, official", "fope"), ("FoPE, identity", "fope-identity"),
        ("production, official", "fope-prod"), ("production, identity", "fope-prod-identity")]),
    "d_out": ("Where D > head_dim/4: the paper's d_out = head_dim/4 against production's d_out = D", [
        ("RoPE", "rope"), ("clamp only", "clamp-only"), ("FoPE, d_out = head_dim/4 (paper)", "fope"),
        ("FoPE, d_out = D", "fope-kept"), ("production FoPE (d_out = D)", "fope-prod")]),
}


def geometry_arms(g):
    """The arms one geometry trains: those of its sections, in arms()'s order."""
    used = {arm for name in GEOMETRIES[g][1] for _, arm in SECTIONS[name][1]}
    return {name: flags for name, flags in arms().items() if name in used}
CLAIMS = [c for c in ablate.CLAIMS if c.section == "parts"] + [
    Claim("parts", "fope", "rope", "passkey", 4, "FoPE keeps the passkey past L_train where RoPE loses it"),
    Claim("parts", "fope", "clamp-only", "ppl_beyond", 4, "(make ablate: FoPE best at 4x) FoPE vs the clamp at 4x", None),
    *[Claim("production", "fope-prod", "fope", m, k, "(no paper claim) production FoPE against the paper's", None)
      for m, k in (("ppl_beyond", 16), ("ppl_beyond", 4), ("ppl", 1), ("passkey", 1), ("passkey", 4))],
    *[Claim("padding", a, b, m, k, f"(the dispute) identity padding against official, {what}", None)
      for a, b, what in (("fope-identity", "fope", "paper's FoPE"), ("fope-prod-identity", "fope-prod", "production FoPE"))
      for m, k in (("ppl_beyond", 16), ("ppl", 1))],
    *[Claim("d_out", a, "fope", m, k, f"(no paper claim) {what} against the paper's", None)
      for a, what in (("fope-kept", "d_out = D"), ("fope-prod", "production FoPE"))
      for m, k in (("ppl_beyond", 16), ("ppl_beyond", 4), ("ppl", 1), ("passkey", 1), ("passkey", 4))],
    *[Claim("d_out", "fope-prod", "fope-kept", m, k, "(no paper claim) production's other changes (sigma 0.5, shared "
            "coefficients) on top of d_out = D", None) for m, k in (("ppl_beyond", 16), ("passkey", 1))],
    Claim("d_out", "fope", "clamp-only", "ppl_beyond", 16, "the combination beats the clamp alone"),
]


def main(argv=None):
    p = runner.parser("the parts ablation at the paper's kept fraction, production FoPE and the padding arms",
                      "smoke run: 2 seeds, 20 iterations, small sweeps", seeds=(1, 2, 3))
    p.add_argument("--geometries", nargs="+", choices=tuple(GEOMETRIES), default=list(GEOMETRIES))
    args = p.parse_args(argv)
    runner.run_experiment(args, "geometry", train_and_eval, stage_count=5, quick_seeds=2, min_seeds=2,
                          report_name="ablate_geometry",
                          report=lambda experiment, times: report(experiment.results, times, args.quick))


def train_and_eval(experiment):
    """Stages 2-5: per geometry its arms x seeds trained (or kept) and one length sweep, then the lens on every run."""
    args, stages, out, seeds = experiment.args, experiment.stages, experiment.out, experiment.seeds
    results = experiment.results
    extra, sweep, lens_n = [], PROTOCOL.sweep_args(), {"windows": 8, "long": 4, "docs": 4, "tokens": 32768}
    if args.quick:
        extra = ablate.QUICK_TRAIN
        sweep = ["--multipliers", *map(str, MULTIPLES), "--tokens=2048", "--trials=1", f"--passkey_up_to={max(PASSKEY_MULTIPLES)}"]
        lens_n = {"windows": 2, "long": 1, "docs": 1, "tokens": 2048}
    ckpts = {}
    for g in args.geometries:
        config, _ = GEOMETRIES[g]
        with stages(f"train {g}", f"2/5 train {g}: {len(geometry_arms(g))} arms x {len(seeds)} seeds ({config})"):
            runs = runner.train_grid(config, out, {f"{g}-{a}": f for a, f in geometry_arms(g).items()}, seeds, stages,
                                     extra, args.dataset, args.fresh)
            ckpts[g] = {name.split("-", 1)[1]: dirs for name, dirs in runs.items()}
    for g in args.geometries:
        with stages(f"eval {g}", f"3/5 eval {g}: one length sweep over every run"):
            runner.sweep(ckpts[g], f"{results}/ablate_geometry_{g}", sweep, f"{out}/eval_{g}.log")
    with stages("lens", "4/5 lens: free share, far mass, key attention, trained-vs-served padding"):
        lens = {g: {arm: [measure(d, lens_n) for d in dirs] for arm, dirs in ckpts[g].items()} for g in args.geometries}
    stages.say("5/5 write: tables, figures, the claims")
    with open(f"{results}/ablate_geometry_lens.json", "w") as f:
        json.dump(lens, f, indent=1)


# -----------------------------------------------------------------------------
# the lens on one run


@torch.no_grad()
def measure(path, n):
    """The lens's numbers for one checkpoint (means over layers; per-layer lists alongside)."""
    model, ckpt = load_model(path)
    L = model.config.block_size
    data = TokenShards(os.path.join("data", ckpt["config"]["dataset"]), "val")
    probe = QKProbe(model)
    blocks = list(model.transformer.h)
    rotated = [blocks[i].attn.position_qk(q, k) for i, (q, k) in enumerate(probe(pick_windows(data, L, n["windows"])))]
    free = free_pairs(blocks[0].attn.rotary)
    share = [free_share(q, k, free).mean().item() if free.any() else 0.0 for q, k in rotated]
    far = distance_means(probe, pick_windows(data, 4 * L, n["long"]), None, L)[2]  # (layers, H)
    tok = get_tokenizer(data.meta)
    key = {k: key_weights(model, probe, tok, k * L, n["docs"]) for k in PASSKEY_MULTIPLES}
    # the copy head is chosen at 1x on documents of its own (another seed), then scored on the others
    choice = key_weights(model, probe, tok, L, n["docs"], seed=CHOICE_SEED)
    copy_head = tuple(int(i) for i in np.unravel_index(int(np.argmax(choice)), choice.shape))  # (layer, head)
    probe.close()
    out = {"ckpt": path, "seed": ckpt["config"]["seed"], "rotating_pairs": int((~free).sum().item() // 2),
           "free_share": float(np.mean(share)), "free_share_by_layer": share, "far_mass_4x": far.mean().item(),
           "copy_head": list(copy_head), "copy_head_far_mass_4x": far[copy_head].item(),
           "key_attention": {str(k): float(w[copy_head]) for k, w in key.items()},
           "key_attention_best": {str(k): float(w.max()) for k, w in key.items()}}
    rotary = blocks[0].attn.rotary
    if isinstance(rotary, FourierPositionEmbedding) and rotary.zero_pad == "official" and free.any():
        out["served_identity"] = served_identity(model, data, L, n["tokens"])
    return out


def key_weights(model, probe, tok, length, n_docs, seed=SCORE_SEED):
    """(layers, H) float64: the mean key attention (lens_measures.key_attention) over passkey documents of
    `length` tokens, n_docs keys at each of KEY_DEPTHS (documents drawn from `seed`)."""
    docs, rng = PasskeyDocs(tok), np.random.default_rng(seed)
    built = [docs.build(length, depth, docs.random_key(rng)) for depth in KEY_DEPTHS for _ in range(n_docs)]
    total = 0.0
    for ids, answer_start, key_start in built:
        per_layer = []
        for layer, (q, k) in enumerate(probe(torch.tensor([ids]))):
            q, k = model.transformer.h[layer].attn.position_qk(q, k)
            query, key = torch.tensor([answer_start - 1]), torch.tensor([key_start + len(docs.prefix)])
            per_layer.append(key_attention(q, k, query, key)[0])
        total = total + torch.stack(per_layer).double().numpy()
    return total / len(built)


def served_identity(model, data, L, tokens):
    """Perplexity at L_train and beyond it at 4x as trained (official padding) and with the identity padding
    put in its place, as a server that pads sin with 0 runs a model trained with 1. On the sweep's windows (the
    same token budget), so "as trained" is the sweep's number."""
    def ppl(length):
        r = perplexity(model, data, length, L, tokens, "cpu")
        return math.exp(r["loss"] if length == L else r["loss_beyond"])
    trained = {"1": ppl(L), "4": ppl(4 * L)}
    for m in model.modules():
        if isinstance(m, FourierPositionEmbedding):
            m.zero_pad = "identity"
            m.reset_tables()
    return {"trained": trained, "identity": {"1": ppl(L), "4": ppl(4 * L)}}


# -----------------------------------------------------------------------------
# the report


def report(results, times, quick=False):
    """The claims into each geometry's sweep JSON, then results/ablate_geometry.{md,json}."""
    lens = runner.load_json(f"{results}/ablate_geometry_lens.json")
    doc = {"geometries": {}, "timing": times, "margin": MARGIN}  # the reading says when the margin was set
    lines = []
    sweeps = {g: runner.load_json(f"{results}/ablate_geometry_{g}.json") for g in lens}
    tested = {g: ablate.tested_claims(sweep["rows"], sweep["info"]["train_len"],
                                      [c for c in CLAIMS if c.section in GEOMETRIES[g][1]]) for g, sweep in sweeps.items()}
    decided = iter(ablate.decided_claims([c for g in tested for c in tested[g]]))  # one family: the report's claims
    lines += header(next(iter(sweeps.values()))["info"], "" if not quick else "--quick smoke run")
    for g in lens:
        sweep = sweeps[g]
        train_len = sweep["info"]["train_len"]
        claims = [next(decided) for _ in tested[g]]
        doc["geometries"][g] = {"info": sweep["info"], "summary": sweep["summary"], "claims": claims,
                                "far_mass_uniform_4x": uniform_far_mass(4 * train_len, train_len),
                                "passkey_digits": passkey_digits(sweep["rows"], train_len),
                                "claim": {ablate.claim_key(c): c for c in claims}, "lens": lens_summary(lens[g])}
        lines += geometry_section(results, g, sweep, claims, lens[g], doc["geometries"][g]["passkey_digits"])
    with open(f"{results}/ablate_geometry.json", "w") as f:
        json.dump(doc, f, indent=1)
    runner.write_report(f"{results}/ablate_geometry", "How many pairs rotate: the ablation at the paper's geometry",
                        lines, times, None if quick else "ablate_geometry", doc)


def uniform_far_mass(T, L):
    """The far mass of a head with no preference for distance (uniform over the causal keys): the lens's
    reference point for attention spread past L_train."""
    weights = torch.ones(T, T, dtype=torch.float64).tril()
    return far_mass(weights / weights.sum(-1, keepdim=True), L).item()


def passkey_digits(rows, train_len):
    """arm -> {multiple: the fraction of the key's digits right, mean [min-max] over seeds}."""
    out = defaultdict(dict)
    for k in PASSKEY_MULTIPLES:
        by_arm = defaultdict(list)
        for r in rows:
            if r["length"] == k * train_len and r.get("passkey_digits") is not None:
                by_arm[r["label"]].append(r["passkey_digits"])
        for arm, values in by_arm.items():
            out[arm][str(k)] = stats(values)
    return dict(out)


def lens_summary(lens):
    """arm -> the lens's numbers as mean [min-max] over seeds."""
    out = {}
    for arm, runs in lens.items():
        s = {"rotating_pairs": runs[0]["rotating_pairs"], "free_share": stats([r["free_share"] for r in runs]),
             "far_mass_4x": stats([r["far_mass_4x"] for r in runs]),
             "copy_head_far_mass_4x": stats([r["copy_head_far_mass_4x"] for r in runs])}
        for k in map(str, PASSKEY_MULTIPLES):
            s[f"key_attention_{k}x"] = stats([r["key_attention"][k] for r in runs])
            s[f"key_attention_best_{k}x"] = stats([r["key_attention_best"][k] for r in runs])
        if "served_identity" in runs[0]:
            for k in ("1", "4"):
                s[f"served_{k}x_trained"] = stats([r["served_identity"]["trained"][k] for r in runs])
                s[f"served_{k}x_identity"] = stats([r["served_identity"]["identity"][k] for r in runs])
        out[arm] = s
    return out


def geometry_section(results, g, sweep, claims, lens, digits):
    info, summary, train_len = sweep["info"], sweep["summary"], sweep["info"]["train_len"]
    per_position = sweep["per_position"]["loss"]
    lines = [f"## {g}: {GEOMETRIES[g][0]}", "", f"seeds {sorted({r['seed'] for r in sweep['rows']})}; L_train {train_len}; "
             f"lengths {info['lengths']}; made {info['date']}; machine: {info.get('machine', 'not recorded')}.", ""]
    label = {"rope": "RoPE", "clamp-only": "clamp only", "fourier-only": "Fourier only", "fope": "FoPE (paper)",
             "fope-identity": "FoPE (paper), identity pad", "fope-prod": "production FoPE",
             "fope-prod-identity": "production FoPE, identity pad", "fope-kept": "FoPE (paper), d_out = D"}
    cols = [("ppl_beyond", 4), ("ppl_beyond", 16), ("ppl", 1), *[("passkey", k) for k in PASSKEY_MULTIPLES]]
    for name in GEOMETRIES[g][1]:
        title, rows = SECTIONS[name]
        plot_sweep({lbl: summary[arm] for lbl, arm in rows if arm in summary},
                   {lbl: np.array([per_position[arm]]) for lbl, arm in rows if arm in per_position},
                   train_len, f"{results}/ablate_geometry_{g}_{name}")
        lines += [f"### {title}", "", f"![{g} {name}](ablate_geometry_{g}_{name}.png)", "",
                  *ablate.compact_table(summary, rows, train_len, cols)]
        section_claims = [c for c in claims if c["section"] == name]
        if section_claims:
            lines += ["", *ablate.format_claims(section_claims)]
        lines.append("")
    lines += ["### The lens", "", "Means [min-max] over seeds. Free share: of |q.k| within L_train; far mass: at 4x, all heads "
              f"and the copy head's (a head uniform over the causal keys: {uniform_far_mass(4 * train_len, train_len):.2f}); "
              "key attention: the copy head's (chosen at 1x on other documents) weight on the key's first digit, "
              "keys at depth 0 and 0.25 (in parentheses: "
              "the largest head's); "
              "digits: the fraction of the key's digits the passkey answers get right.", "",
              "| arm | rotating pairs | free share | far mass 4x | copy head's far mass 4x | "
              + " | ".join(f"key attention {k}x" for k in PASSKEY_MULTIPLES) + " | digits 1x | digits 4x |",
              "|---" * (7 + len(PASSKEY_MULTIPLES)) + "|"]
    ls = lens_summary(lens)
    for arm, s in ls.items():
        keys = " | ".join(f"{spread(s[f'key_attention_{k}x'])} ({s[f'key_attention_best_{k}x']['mean']:.2f})" for k in PASSKEY_MULTIPLES)
        dig = " | ".join(spread(digits.get(arm, {}).get(k)) for k in ("1", "4"))
        lines.append(f"| {label.get(arm, arm)} | {s['rotating_pairs']} | {spread(s['free_share'])} | "
                     f"{spread(s['far_mass_4x'])} | {spread(s['copy_head_far_mass_4x'])} | {keys} | {dig} |")
    served = [(arm, s) for arm, s in ls.items() if "served_1x_trained" in s]
    if served:
        lines += ["", "Trained with the official padding, run with the identity padding (perplexity at L_train, and "
                  "beyond L_train at 4x, on the sweep's windows):", "", "| arm | as trained 1x | identity 1x | as trained 4x | identity 4x |",
                  "|---|---|---|---|---|"]
        for arm, s in served:
            lines.append(f"| {label[arm]} | {spread(s['served_1x_trained'])} | {spread(s['served_1x_identity'])} | "
                         f"{spread(s['served_4x_trained'])} | {spread(s['served_4x_identity'])} |")
    lines += ["", "```", format_table(summary, info["lengths"]).strip(), "```", ""]
    return lines


if __name__ == "__main__":
    main()
