"""
Verdicts: what a comparison of two arms over seeds decides, and with what confidence.

A claim compares arm A with arm B on one metric at one length through the paired per-seed differences
d_s = A_s - B_s (seed s trains both arms on the same data order). Each claim gets one of four verdicts:

    better      A is better than B: the two-sided paired t-test rejects "no difference" (Holm-adjusted p < 0.05)
                and A is on the good side (lower perplexity, higher passkey accuracy)
    worse       the same test rejects, A on the bad side
    equivalent  within +/- m: the two one-sided tests (TOST, Schuirmann 1987) reject |mean d| >= m
                (Holm-adjusted p < 0.05), i.e. the 90% interval lies inside +/- m
    undecided   neither, with the seeds the observed effect would need (80% power at 5% / the number of claims,
                the level Holm asks of the strictest claim in the family)

The margin m is fixed here, before any run: 2% of B's mean perplexity, or 0.10 of passkey accuracy
(MARGINS). Equality is never read from a failed test of difference: "equivalent" needs its own test.
Holm's step-down correction runs over the claims of one report (one family), separately for the
difference tests and for the equivalence tests. Passkey accuracies also get a pooled Wilson interval
(all seeds' documents together) beside the per-seed mean.
"""

import math

import numpy as np
from scipy import stats as st

ALPHA = 0.05
POWER = 0.8
MARGINS = {"ppl": ("relative", 0.02), "ppl_beyond": ("relative", 0.02), "passkey": ("absolute", 0.10)}
HIGHER_IS_BETTER = {"ppl": False, "ppl_beyond": False, "passkey": True}
VERDICTS = ("better", "worse", "equivalent", "undecided")


def margin(metric, reference_mean):
    """The equivalence margin of a metric, from MARGINS and the reference arm B's mean."""
    kind, value = MARGINS[metric]
    return value * abs(reference_mean) if kind == "relative" else value


def paired_test(d, m):
    """Paired differences d -> mean, sd, 95% interval, two-sided p of 'no difference', TOST p of '|mean| >= m'.
    Degenerate spreads (every difference equal) are decided exactly: a constant nonzero difference is a
    difference (p = 0), a constant zero one is equivalence within any m > 0."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "sd": sd, "ci95": (math.nan, math.nan), "t": math.nan, "p": 1.0, "p_equiv": 1.0}
    se = sd / math.sqrt(n)
    if se == 0:
        p = 0.0 if mean != 0 else 1.0
        p_equiv = 0.0 if abs(mean) < m else 1.0
        return {"n": n, "mean": mean, "sd": sd, "ci95": (mean, mean), "t": math.copysign(math.inf, mean) if mean else 0.0,
                "p": p, "p_equiv": p_equiv}
    t = mean / se
    p = float(2 * st.t.sf(abs(t), n - 1))
    half = float(st.t.ppf(1 - ALPHA / 2, n - 1)) * se
    p_lower = float(st.t.sf((mean + m) / se, n - 1))  # H0: mean <= -m
    p_upper = float(st.t.cdf((mean - m) / se, n - 1))  # H0: mean >= +m
    return {"n": n, "mean": mean, "sd": sd, "ci95": (mean - half, mean + half), "t": t, "p": p,
            "p_equiv": max(p_lower, p_upper)}


def holm(pvalues):
    """Holm's step-down adjusted p-values (same order as given)."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def seeds_for_difference(mean, sd, alpha=ALPHA):
    """Seeds a paired t-test needs to detect a true difference `mean` with spread `sd` (two-sided alpha,
    POWER), by the noncentral t; None if there is no effect to detect."""
    if not mean or not math.isfinite(sd) or sd == 0:
        return None
    effect = abs(mean) / sd
    for n in range(2, 10_000):
        crit = st.t.ppf(1 - alpha / 2, n - 1)
        if st.nct.sf(crit, n - 1, effect * math.sqrt(n)) >= POWER:
            return n
    return None


def seeds_for_equivalence(mean, sd, m, alpha=ALPHA):
    """Seeds TOST needs to show |difference| < m when the true difference is `mean` with spread `sd`
    (the power of the worse one-sided test, a conservative bound); None if |mean| >= m."""
    if abs(mean) >= m or not math.isfinite(sd):
        return None
    if sd == 0:
        return 2
    for n in range(2, 10_000):
        crit = st.t.ppf(1 - alpha, n - 1)
        if st.nct.cdf(-crit, n - 1, (abs(mean) - m) / sd * math.sqrt(n)) >= POWER:
            return n
    return None


def wilson(successes, trials, z=1.959964):
    """The Wilson score interval of a binomial proportion (95%)."""
    if trials == 0:
        return (math.nan, math.nan)
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return (centre - half, centre + half)


def decide(claims):
    """claims: [{"d": per-seed differences A - B, "metric": ..., "reference": B's mean}, ...], one report's
    family -> each claim with its test, Holm-adjusted p-values, margin and verdict added (a new dict)."""
    tested = []
    for c in claims:
        m = margin(c["metric"], c["reference"])
        tested.append({**c, **paired_test(c["d"], m), "margin": m})
    p_diff = holm([c["p"] for c in tested]) if tested else []
    p_equiv = holm([c["p_equiv"] for c in tested]) if tested else []
    out = []
    for c, pd, pe in zip(tested, p_diff, p_equiv):
        good = c["mean"] > 0 if HIGHER_IS_BETTER[c["metric"]] else c["mean"] < 0
        if pd < ALPHA:
            verdict = "better" if good else "worse"
        elif pe < ALPHA:
            verdict = "equivalent"
        else:
            verdict = "undecided"
        need = None
        if verdict == "undecided":  # at the level Holm asks of the family's strictest rank (Bonferroni's)
            alpha = ALPHA / len(tested)
            options = [n for n in (seeds_for_difference(c["mean"], c["sd"], alpha),
                                   seeds_for_equivalence(c["mean"], c["sd"], c["margin"], alpha)) if n]
            need = min(options) if options else None
        out.append({**c, "p_holm": pd, "p_equiv_holm": pe, "verdict": verdict, "seeds_needed": need})
    return out


def verdict_text(c, fmt=".3f"):
    """One claim's verdict as a reviewer reads it, e.g. 'better: -0.84 [-1.20, -0.50], 10 seeds, Holm p = 0.003'."""
    lo, hi = c["ci95"]
    effect = f"{c['mean']:+{fmt}} [{lo:+{fmt}}, {hi:+{fmt}}], {c['n']} {c.get('unit', 'seeds')}"
    if c["verdict"] in ("better", "worse"):
        return f"{c['verdict']}: {effect}, paired t, Holm p = {c['p_holm']:.2g}"
    if c["verdict"] == "equivalent":
        return f"equivalent within +/- {c['margin']:{fmt}}: {effect}, TOST Holm p = {c['p_equiv_holm']:.2g}"
    unit = c.get("unit", "seeds")
    need = f"; ~{c['seeds_needed']} {unit} would decide it" if c["seeds_needed"] else f"; no count of {unit} decides it"
    return f"undecided: {effect}, Holm p = {c['p_holm']:.2g} (difference), {c['p_equiv_holm']:.2g} (within +/- {c['margin']:{fmt}}){need}"
