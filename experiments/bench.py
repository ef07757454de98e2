"""
What `make bench` runs, on CPU: how close each rotation path gets to a plain copy of the same bytes (the
memory-bandwidth roof), then what it means for a training step and for a long sweep.

(1) Rotation, forward and forward+backward, FoPE's per-head tables, float32: fope_ext/bench.py (every
    method of its METHODS beside a copy, and FoPE's module against RoPE's), at GPT-2 small's and the
    laptop's shapes.
(2) Training step of the laptop GPT (4 layers, 4 heads, 128 wide, T=128, batch 32, AdamW) for
    RoPE and FoPE with each rotary_backend, and for every position embedding of model.POS_EMBS (and
    RoPE + QK norm) as a ratio to NoPE's step, against the targets: rotary <= 1.03, additive biases
    <= 1.10.
(3) Peak memory of an additive-bias sweep at 8192 tokens: config/owt's model (12 layers, 12 heads,
    768 wide; L_train 512, so 16x), batch 1, one forward with per-token losses as eval_length.py
    computes them, float32 on CPU, each embedding in a fresh process (its ru_maxrss).

Writes results/bench.json (results, ratios, how allocation was treated, the machine), results/bench.md (the
tables, then the reading experiments/readings/bench.md filled from bench.json, the stage times) and
results/bench_timing.json.

    python experiments/bench.py                 # the full run (about ten minutes; run it alone on the machine)
    python experiments/bench.py --quick         # the same in a few minutes, fewer repeats -> results/quick/
    python experiments/bench.py --report_only   # rewrite results/bench.md from results/bench.json (no timing)
    python -m fope_ext.bench [--quick]          # (1) alone
"""

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
import torch  # noqa: E402

from fope_ext import bench as rotation  # noqa: E402
from model import GPT, POS_EMBS, GPTConfig  # noqa: E402

# experiments.runner and configurator are imported where used: the sweep-memory child (this file, run
# again in a fresh process) measures its own peak memory, and imports no more than the model needs.

STEP_CONFIGS = [(pos_emb, backend) for pos_emb in ("rope", "fope") for backend in ("eager", "c", "compile")]
STEP_TARGETS = {"rotary": 1.03, "bias": 1.10}  # step time over NoPE's, by POS_EMBS kind
NANOGPT_TARGET = 0.98  # learned and nope: throughput at least this share of nanoGPT's identical model
RATIO_PREFIXES = ("speedup", "c_fwd", "fope_over")  # bench.json's headline ratios (top-level keys)
OWT_SHAPE = dict(n_layer=12, n_head=12, n_embd=768, block_size=512, vocab_size=50304)  # config/owt_*.py

# -----------------------------------------------------------------------------
# (2) training step


def training_steps(models, batch_size=32, block_size=128):
    """{name: one AdamW step on random tokens} for the laptop GPT with each {name: GPTConfig overrides}."""
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 65, (batch_size, block_size + 1), generator=g)
    x, y = idx[:, :-1], idx[:, 1:]
    steps = {}
    for name, overrides in models.items():
        torch.manual_seed(0)
        model = GPT(GPTConfig(block_size=block_size, n_layer=4, n_head=4, n_embd=128, vocab_size=65, **overrides))
        optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")

        def step(model=model, optimizer=optimizer):
            _, loss = model(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        steps[name] = step
    return steps


def nanogpt_steps(path, batch_size=32, block_size=128):
    """{name: one AdamW step} of nanoGPT's own model (its model.py, given by path: never part of nanoFoPE) and of
    nanoFoPE's learned and nope models at the same laptop shape, on the same tokens."""
    import contextlib
    import importlib.util
    import io
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    nano = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nano)
    steps = training_steps({"learned": {"pos_emb": "learned"}, "nope": {"pos_emb": "nope"}}, batch_size, block_size)
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its parameter counts
        model = nano.GPT(nano.GPTConfig(block_size=block_size, vocab_size=65, n_layer=4, n_head=4, n_embd=128,
                                        dropout=0.0, bias=False))
        optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    idx = torch.randint(0, 65, (batch_size, block_size + 1), generator=torch.Generator().manual_seed(0))
    x, y = idx[:, :-1].contiguous(), idx[:, 1:].contiguous()  # its loss views the targets

    def step():
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return {"nanogpt": step, **steps}


def bench_nanogpt(path, repeats, warmup):
    """nanoFoPE's learned and nope steps against nanoGPT's identical model, interleaved in one run: throughput
    ratio = the median over repeats of nanoGPT's step time over ours in the same repeat (>= 0.98: NANOGPT_TARGET)."""
    if not path or not os.path.isfile(path):
        note = "skipped: pass --nanogpt PATH/TO/nanoGPT/model.py (not part of nanoFoPE)"
        print(f"nanoGPT comparison {note}")
        return {"note": note}
    times, _ = rotation.interleaved_times(nanogpt_steps(path), repeats, 1, warmup)
    result = {"statistic": "median over repeats of nanoGPT's step / ours in the same repeat (throughput ratio)",
              "repeats": repeats, "target": NANOGPT_TARGET, "throughput_vs_nanogpt": {}, "step_ms": {}}
    for name in ("learned", "nope"):
        ratio = statistics.median(n / o for n, o in zip(times["nanogpt"], times[name]))
        result["throughput_vs_nanogpt"][name] = ratio
        result["step_ms"][name] = statistics.median(times[name]) * 1e3
    result["step_ms"]["nanogpt"] = statistics.median(times["nanogpt"]) * 1e3
    result["meets_target"] = all(r >= NANOGPT_TARGET for r in result["throughput_vs_nanogpt"].values())
    print("throughput against nanoGPT's model (laptop shape): " + ", ".join(
        f"{k} {v:.3f}x" for k, v in result["throughput_vs_nanogpt"].items()) + f" (target >= {NANOGPT_TARGET})")
    return result


def embedding_models():
    """Every position embedding (rotary ones on the default backend, auto), and RoPE and NoPE with QK norm."""
    return {**{name: {"pos_emb": name} for name in POS_EMBS}, "rope+qknorm": {"pos_emb": "rope", "qk_norm": True},
            "nope+qknorm": {"pos_emb": "nope", "qk_norm": True}}


def bench_embeddings(repeats, warmup, batch_size=32, block_size=128):
    """Every embedding's laptop step time over NoPE's, measured interleaved in one run: the median over
    repeats of the step's time over NoPE's step in the same repeat. An embedding's cost is taken against
    NoPE with the same model flags: RoPE + QK norm against NoPE + QK norm (QK norm is a flag of the model,
    not of the embedding: the paper's Table 2 also has NoPE + QK norm), whose own cost is reported apart."""
    steps = training_steps(embedding_models(), batch_size, block_size)
    times, _ = rotation.interleaved_times(steps, repeats, 1, warmup)
    over_nope = rotation.paired_ratios(times, "nope")
    over_nope_qk = rotation.paired_ratios(times, "nope+qknorm")
    result = {"statistic": "median over repeats of step / baseline's step in the same repeat; [q1, q3] beside it",
              "repeats": repeats, "step_ms": {}, "over_nope": {}, "baseline": {}, "over_baseline": {},
              "over_baseline_quartiles": {}, "target": {}, "meets_target": {}}
    print(f"training step per position embedding, laptop GPT, T={block_size}, batch {batch_size}: median of "
          f"{repeats} paired ratios [q1-q3] over NoPE's step (NoPE + QK norm's for a model with QK norm):")
    for name, t in times.items():
        kind = POS_EMBS[name.split("+")[0]].kind
        baseline = "nope+qknorm" if name.endswith("+qknorm") else "nope"
        ratio, q1, q3 = (over_nope_qk if baseline == "nope+qknorm" else over_nope)[name]
        result["step_ms"][name] = statistics.median(t) * 1e3
        result["over_nope"][name] = over_nope[name][0]
        result["baseline"][name], result["over_baseline"][name] = baseline, ratio
        result["over_baseline_quartiles"][name] = [q1, q3]
        target = STEP_TARGETS.get(kind)
        if target is not None:
            result["target"][name], result["meets_target"][name] = target, ratio <= target
        print(f"  {name:14s} {result['step_ms'][name]:8.2f} ms  {ratio:5.3f}x [{q1:5.3f}-{q3:5.3f}] over {baseline:11s}"
              + (f"  (target <= {target}: {'met' if ratio <= target else 'MISSED'})" if target else ""))
    result["qk_norm_cost"] = {"nope": over_nope["nope+qknorm"][0],
                              "rope": rotation.paired_ratios(times, "rope")["rope+qknorm"][0]}
    print(f"  QK norm's own cost: NoPE + QK norm over NoPE {result['qk_norm_cost']['nope']:.3f}x, "
          f"RoPE + QK norm over RoPE {result['qk_norm_cost']['rope']:.3f}x")
    result["all_targets_met"] = all(result["meets_target"].values())
    return result


def bench_training(repeats, burst, warmup, batch_size=32, block_size=128):
    t0 = time.perf_counter()
    models = {f"{p}_{b}": {"pos_emb": p, "rotary_backend": b} for p, b in STEP_CONFIGS}
    medians, _ = rotation.interleaved_medians(training_steps(models, batch_size, block_size), repeats, burst, warmup)
    print(f"training step, laptop GPT (4 x 128, 4 heads, T={block_size}), batch {batch_size}, AdamW "
          f"(measured in {time.perf_counter() - t0:.0f} s)")
    result = {}
    for name, seconds in medians.items():
        result[f"step_{name}_ms"] = seconds * 1e3
        result[f"step_{name}_tokens_per_s"] = batch_size * block_size / seconds
        print(f"  {name:14s} {seconds * 1e3:8.2f} ms  {batch_size * block_size / seconds / 1e3:7.1f}k tok/s")
    return result


def step_ratios(t):
    """The headline ratios of bench_training's result t."""
    return {"fope_over_rope_step_c": t["step_fope_c_ms"] / t["step_rope_c_ms"],
            "fope_over_rope_step_eager": t["step_fope_eager_ms"] / t["step_rope_eager_ms"],
            "speedup_step_c_over_eager_fope": t["step_fope_eager_ms"] / t["step_fope_c_ms"],
            "speedup_step_c_over_compile_fope": t["step_fope_compile_ms"] / t["step_fope_c_ms"]}

# -----------------------------------------------------------------------------
# (3) memory of a long additive-bias sweep


def sweep_memory_child(name, T, n_layer):
    """In a fresh process: one eval forward of the owt model at T tokens, batch 1; print the peak RSS."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**OWT_SHAPE, "n_layer": n_layer}, pos_emb=name)).eval()
    idx = torch.randint(0, 50304, (1, T))
    t0 = time.perf_counter()
    with torch.no_grad():
        _, loss = model(idx, idx, reduction="none")
    assert torch.isfinite(loss).all()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(json.dumps({"peak_rss_gib": peak, "seconds": time.perf_counter() - t0}))


def sweep_memory(name, T, n_layer):
    """{"peak_rss_gib", "seconds"} of sweep_memory_child in a fresh process (this file, run again)."""
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--sweep-memory-child", name, str(T),
                           str(n_layer)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"the {T}-token sweep of {name} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_sweep_memory(T, n_layer):
    """Peak memory of the T-token sweep for every additive-bias embedding (and NoPE for reference), each
    in its own process; the dense (H, T, T) float32 tensor a bias or a score matrix alone would need."""
    names = ["nope"] + [n for n, spec in POS_EMBS.items() if spec.kind == "bias"]
    H = OWT_SHAPE["n_head"]
    result = {"tokens": T, "batch": 1, "n_layer": n_layer, "model": {**OWT_SHAPE, "n_layer": n_layer},
              "dtype": "float32", "dense_hTT_float32_gib": H * T * T * 4 / 2**30, "limit_gib": 24,
              "peak_rss_gib": {}, "seconds": {}}
    for name in names:
        r = sweep_memory(name, T, n_layer)
        result["peak_rss_gib"][name], result["seconds"][name] = r["peak_rss_gib"], r["seconds"]
        print(f"  {T}-token sweep, {name:8s} peak {r['peak_rss_gib']:6.2f} GiB ({r['seconds']:.0f} s)")
    result["within_limit"] = all(v <= result["limit_gib"] for v in result["peak_rss_gib"].values())
    return result

# -----------------------------------------------------------------------------
# the report


def report_lines(out, generation=None):
    """results/bench.md's tables, from bench.json's content `out` (a fresh run's or a saved one), and the
    generation row from `generation` (compare_hf.py --generate's JSON path) when given."""
    m, timing = out["machine"], out["timing"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} on {m['threads']} threads, Python "
             f"{m['python']}. {'Quick' if out['quick'] else 'Full'} run of {out['seconds']} s, made {out['date']} by "
             f"`{out['command']}`.", "",
             f"Timing: the {timing['statistic']} over {timing['repeats']} repeats x {timing['calls_per_repeat']} "
             f"calls, after {timing['warmup_calls']} warm-up calls; {timing['order']}.", "",
             f"Allocation: {out['allocation']}.", "",
             "## Rotation (fope_ext/bench.py)", ""]
    for name in rotation.SHAPES:
        if f"rotation_{name}" in out:
            lines += [*rotation.rotation_table(name, out[f"rotation_{name}"]), ""]
    mods = out["modules"]
    lines += ["Position modules at GPT-2 small's shape, forward: " + ", ".join(
        f"{k[len('module_'):-len('_fwd_ms')]} {v:.2f} ms" for k, v in mods.items()) + ".", "",
        "Ratios (rotation at GPT-2 small's shape, laptop training step):", ""]
    lines += [f"- {key}: {value:.2f}" for key, value in out.items() if key.startswith(RATIO_PREFIXES)]

    lines += ["", "## Training step per rotary backend", "",
              "Laptop GPT (4 layers, 4 heads, 128 wide, T=128, batch 32, AdamW), median step:", "",
              "| model | step ms | tokens/s |", "|---|--:|--:|"]
    t = out["training"]
    lines += [f"| {key[len('step_'):-len('_ms')]} | {ms:.2f} | {t[key[:-len('ms')] + 'tokens_per_s']:.0f} |"
              for key, ms in t.items() if key.endswith("_ms")]

    n = out.get("nanogpt") or {"note": "not measured in this run"}
    lines += ["", "## Against nanoGPT's model", ""]
    lines += ([n["note"]] if "note" in n else [
        f"The {n['statistic']}, {n['repeats']} repeats, laptop shape: " + ", ".join(
            f"{k} {v:.3f}x" for k, v in n["throughput_vs_nanogpt"].items())
        + f" (target >= {n['target']}: {'met' if n['meets_target'] else 'MISSED'}); median steps "
        + ", ".join(f"{k} {v:.2f} ms" for k, v in n["step_ms"].items()) + "."])

    e = out["embeddings"]
    lines += ["", "## Training step per position embedding", "",
              f"The {e['statistic']}, {e['repeats']} repeats; target: rotary <= {STEP_TARGETS['rotary']}, "
              f"additive biases <= {STEP_TARGETS['bias']}.", "",
              "| embedding | step ms | over baseline | q1 | q3 | baseline | target | met |",
              "|---|--:|--:|--:|--:|---|--:|---|"]
    for name, ms in e["step_ms"].items():
        q1, q3 = e["over_baseline_quartiles"][name]
        target = e["target"].get(name)
        met = "" if target is None else ("yes" if e["meets_target"][name] else "MISSED")
        lines.append(f"| {name} | {ms:.2f} | {e['over_baseline'][name]:.3f} | {q1:.3f} | {q3:.3f} | "
                     f"{e['baseline'][name]} | {'' if target is None else target} | {met} |")
    qk = e["qk_norm_cost"]
    lines += ["", f"QK norm's own cost: NoPE + QK norm over NoPE {qk['nope']:.3f}x, RoPE + QK norm over RoPE "
              f"{qk['rope']:.3f}x. All targets met: {'yes' if e['all_targets_met'] else 'no'}."]

    s = out["bias_sweep_memory"]
    lines += ["", "## Memory of a long additive-bias sweep", "",
              f"{s['tokens']} tokens, batch {s['batch']}, {s['n_layer']} layers of the owt model "
              f"({s['model']['n_head']} heads, {s['model']['n_embd']} wide), {s['dtype']}, each in a fresh process; "
              f"limit {s['limit_gib']} GiB; a dense (H, T, T) float32 tensor: {s['dense_hTT_float32_gib']:.2f} GiB.",
              "",
              "| embedding | peak RSS GiB | seconds |", "|---|--:|--:|"]
    lines += [f"| {name} | {gib:.2f} | {s['seconds'][name]:.0f} |" for name, gib in s["peak_rss_gib"].items()]
    lines += ["", f"Within the limit: {'yes' if s['within_limit'] else 'NO'}. Forward below forward+backward for every "
              f"rotation method: {'yes' if out['forward_below_forward_backward_everywhere'] else 'NO'}."]
    return lines + (generation_lines(generation) if generation else [])


def generation_lines(path):
    """The generation row against HF transformers, from experiments/compare_hf.py --generate's JSON (it needs
    transformers, which nanoFoPE does not depend on, so it is measured by that script, not by this one)."""
    lines = ["", "## Generation and forward against HF transformers", ""]
    if not os.path.isfile(path):
        return lines + ["Not measured: `pip install transformers accelerate` in a scratch venv, then "
                        "`python experiments/compare_hf.py --generate smollm2-135m`."]
    g = json.load(open(path))
    lines += [f"{g['source']}, {g['dtype']}, greedy, {g['prompt_tokens']}-token prompt of Shakespeare's val split, "
              f"{g['new_tokens']} new tokens; then a no-grad forward of {g['forward_tokens']} tokens. nanoFoPE's "
              f"GPT.generate (KV cache) and transformers {g['transformers']}'s generate on the same GGUF, one process, "
              f"interleaved, median of {g['repeats']}; {g['machine']}, {g['threads']} threads, {g['date']} "
              f"(`python experiments/compare_hf.py --generate {g['source']}`). HF's prefill and ms/token are its model "
              "with its own cache, timed by hand.", "",
              "| | prefill s | ms/token after it | new tokens/s (whole generate) | forward s |", "|---|--:|--:|--:|--:|"]
    for name, key in (("nanoFoPE", "ours"), ("HF transformers", "hf")):
        r = g[key]
        lines.append(f"| {name} | {r['prefill_s']:.2f} | {r['ms_per_token']:.1f} | {r['generate_tokens_per_s']:.2f} | "
                     f"{r['forward_s']:.2f} |")
    o, h = g["ours"], g["hf"]
    lines.append(f"| nanoFoPE / HF speed | {h['prefill_s'] / o['prefill_s']:.2f}x | {h['ms_per_token'] / o['ms_per_token']:.2f}x"
                 f" | {o['generate_tokens_per_s'] / h['generate_tokens_per_s']:.2f}x | {h['forward_s'] / o['forward_s']:.2f}x |")
    same = "yes" if g["same_tokens"] else f"no, first difference at new token {g['first_difference']}"
    return lines + ["", f"The same {g['new_tokens']} greedy tokens as HF: {same}."]


def write_report(out, path, times):
    """path.md (and path_timing.json) from bench.json's content; the reading for a full run only."""
    from experiments import runner
    generation = os.path.join(os.path.dirname(path), "bench_generate.json")  # beside bench.json
    runner.write_report(path, "nanoFoPE benchmark", report_lines(out, generation), times, None if out["quick"] else "bench",
                        {"bench": out})

# -----------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, a short sweep: a few minutes")
    parser.add_argument("--out", help="where to write the results (default results/bench.json; --quick: "
                                      "results/quick/bench.json); the report goes beside it (.md)")
    parser.add_argument("--report_only", action="store_true", help="rewrite the .md from the saved JSON (no timing)")
    parser.add_argument("--nanogpt", metavar="PATH", help="nanoGPT's model.py (a checkout of karpathy/nanoGPT, never "
                        "committed here): time the learned and nope steps against its identical model")
    parser.add_argument("--sweep-memory-child", nargs=3, help=argparse.SUPPRESS)  # (3)'s fresh process
    args = parser.parse_args(argv)
    if args.sweep_memory_child:
        name, T, n_layer = args.sweep_memory_child
        return sweep_memory_child(name, int(T), int(n_layer))
    out_path = args.out or os.path.join("results", "quick" if args.quick else "", "bench.json")
    base = os.path.splitext(out_path)[0]
    if args.report_only:
        from experiments import runner
        out = runner.load_json(out_path)
        with runner.saved_results(out_path, out_path):
            times = runner.load_json(f"{base}_timing.json") if os.path.isfile(f"{base}_timing.json") else \
                {"total": out["seconds"]}
            write_report(out, base, times)
        print(f"wrote {base}.md from {out_path}")
        return out

    from util.machine import describe_machine
    from experiments import runner
    rotation.require_kernel()
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    step_repeats = 5 if args.quick else 40
    stages = runner.Stages("bench")
    stages.say(f"{describe_machine()}, {torch.get_num_threads()} threads; {'quick' if args.quick else 'full'} run")
    out = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": rotation.machine(),
           "command": " ".join(["python"] + sys.argv), "quick": args.quick}
    t_start = time.perf_counter()
    with stages("rotation", "1/4 rotation: every path beside a copy (fope_ext/bench.py)"):
        out.update(rotation.run(args.quick))  # timing, allocation, rotation_<shape>, modules
    with stages("training", "2/4 training step per rotary backend"):
        out["training"] = bench_training(step_repeats, burst=1, warmup=min(out["timing"]["warmup_calls"], 5))
    with stages("embeddings", "3/4 training step per position embedding"):
        out["embeddings"] = bench_embeddings(2 * step_repeats, warmup=min(out["timing"]["warmup_calls"], 5))
    with stages("nanogpt", "3/4 the learned and nope steps against nanoGPT's model (--nanogpt)"):
        out["nanogpt"] = bench_nanogpt(args.nanogpt, 2 * step_repeats, warmup=min(out["timing"]["warmup_calls"], 5))
    # quick: a 1-layer model at 2048 tokens (the full run's 12 layers at 8192 take minutes)
    T, n_layer = (2048, 1) if args.quick else (8192, OWT_SHAPE["n_layer"])
    with stages("sweep", f"4/4 peak memory of a {T}-token additive-bias sweep"):
        out["bias_sweep_memory"] = bench_sweep_memory(T, n_layer)

    out.update(rotation.ratios(out))
    out.update(step_ratios(out["training"]))
    print("ratios (rotation at (8, 12, 1024, 64)):")
    for key, value in out.items():
        if key.startswith(RATIO_PREFIXES):
            print(f"  {key:38s} {value:6.2f}")
    out["forward_below_forward_backward_everywhere"] = all(
        all(out[f"rotation_{name}"]["forward_below_forward_backward"].values()) for name in rotation.SHAPES)
    out["seconds"] = round(time.perf_counter() - t_start)
    with open(out_path, "w") as f:
        json.dump(out, f, indent=2)
    stages.done(out_path, f"{base}.md")
    write_report(out, base, stages.times)
    print(f"forward below forward+backward for every method: {out['forward_below_forward_backward_everywhere']}")
    return out


if __name__ == "__main__":
    main()
