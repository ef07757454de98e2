"""
The runner the experiments share (demo, extend, ablate, geometry, power, lens, bench): the common flags, the
stage timer, the main() of demo, extend, ablate and geometry (run_experiment: --quick, --report_only, the
folders, the data, the report; each experiment gives only its own stages), training a grid of runs with
train.py (kept while current), sweeping them with eval_length.py, and writing results/<experiment>.md with
its reading (experiments/readings/<experiment>.md, whose {{DOC/key/...:FMT}} placeholders are filled from
the experiment's JSON).

A trained run is kept while it is current (stale_reason): same resolved config, finished, its parent (or
pretrained source) unchanged, and today's code computes what it computed. The last is decided by what
the run computes, not by which files changed (checkpoint sources are provenance only): train.py records in
the checkpoint a fingerprint, the training losses of its first FINGERPRINT_ITERS (3) iterations and its
iter-0 val loss as the run computed them, and the sha256 of its lr at every iteration. stale_reason runs
the same config again for those iterations (probe: in-process train.main, a temporary out_dir, max_iters=3
and lr_decay_iters pinned so that the lr is the run's) and compares the losses and the val loss bit for
bit, and the schedule's hash. So adding an embedding, or editing a comment, keeps every cached run, and
any change to the model, data, optimizer or initialisation that alters the first steps retrains it.
Blind spots: a change that acts only after iteration 3 and is not in the lr schedule (e.g. a bug at
iter 500, a passkey_warmup edge past the first steps, a change to the checkpoint's other contents or to
eval_length.py's reading) keeps a stale run; delete the run or pass --fresh. A run trained under torchrun
is probed in one process, and a CUDA run whose kernels are not deterministic may probe differently: both
are retrained needlessly (the safe side). A checkpoint without a fingerprint (before it existed) is stale.

Code (train.py, eval_length.py, config/) is found from the repo root; data, out/ and results/ are relative
to the working directory (make runs from the repo root), or wherever --dataset, --out_root and --results say.
"""

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import train  # noqa: E402  (experiments may import scripts; nothing below experiments/ does)
from checkpoint import CheckpointError, checkpoint_file, file_sha256, load_checkpoint  # noqa: E402
from configurator import configure  # noqa: E402
from pretrained import source_sha256  # noqa: E402
from util.args import at_least, check_args, distinct  # noqa: E402

READINGS = os.path.join(ROOT, "experiments", "readings")


def repo_path(path):
    """A file of the repo (train.py, config/demo.py, ...) as an absolute path."""
    return os.path.join(ROOT, path)




class Parser(argparse.ArgumentParser):
    """An experiment's flags; parse_args checks the common ones (--seeds) before the experiment does any work."""

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        check_args([at_least("--seeds", parsed.seeds, 0), distinct("--seeds", parsed.seeds)])
        return parsed


def parser(description, quick_help, seeds=(1, 2)):
    """The flags every experiment takes."""
    p = Parser(description=description)
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--seeds", type=int, nargs="+", default=list(seeds))
    p.add_argument("--fresh", action="store_true", help="retrain runs that already finished")
    p.add_argument("--report_only", action="store_true",
                   help="rewrite results/<experiment>.md from the saved JSON (no training, no sweep)")
    p.add_argument("--dataset", help="train on these shards instead of the config's (a data/ name or a folder)")
    p.add_argument("--out_root", default="out", help="where the runs go: <out_root>/<experiment>/<run>_s<seed>")
    p.add_argument("--results", default="results", help="where the tables, figures and reports go")
    return p


class Stages:
    """Times the stages of an experiment: `with stages("train", "2/4 train: ...")` prints the message
    with the time since the start, and records the stage's seconds (stages.times)."""

    def __init__(self, name):
        self.name, self.start, self.times = name, time.time(), {}

    def __call__(self, key, message):
        self.say(message)
        self.key, self.t0 = key, time.time()
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.times[self.key] = time.time() - self.t0

    def say(self, message):
        print(f"[{self.name} {time.time() - self.start:6.0f}s] {message}", flush=True)

    def done(self, *paths):
        self.times["total"] = time.time() - self.start
        self.say(f"done: {', '.join(paths)}")


class Experiment(NamedTuple):
    """One run of an experiment's main(), as run_experiment hands it to the experiment's own steps."""
    args: argparse.Namespace  # its flags: parser()'s and its own
    out: str  # where its training runs go: <out_root>/<name>, or <out_root>/<name>_quick with --quick
    results: str  # where its tables and report go: --results, or <results>/quick with --quick
    seeds: list  # --seeds, or their first few with --quick
    stages: Stages = None  # the stage timer (None with --report_only)


def run_experiment(args, name, train_and_eval, report, stage_count, out_name=None, quick_seeds=1, min_seeds=1,
                   report_name=None):
    """The main() every experiment shares. --quick: the first quick_seeds seeds, the runs in
    <out_root>/<name>_quick, the results in <results>/quick. --report_only: report(experiment, times) from the
    saved stage times (<results>/<report_name>_timing.json) and nothing else. Otherwise: the folders
    (<out_root>/<out_name>, default <name>), the stage timer, stage 1 of stage_count (the data:
    prepare_data), train_and_eval(experiment) for the stages after it, then report(experiment, times)."""
    results = os.path.join(args.results, "quick") if args.quick else args.results
    seeds = args.seeds[:quick_seeds] if args.quick else args.seeds
    if len(seeds) < min_seeds:
        raise SystemExit(f"{name} needs at least {min_seeds} seeds for its paired comparisons: pass --seeds 1 2 3")
    out = os.path.join(args.out_root, f"{name}_quick" if args.quick else out_name or name)
    report_name = report_name or name
    if args.report_only:
        with saved_results(results, f"{results}/{report_name}*.json"):
            return report(Experiment(args, out, results, seeds), load_json(f"{results}/{report_name}_timing.json"))
    os.makedirs(out, exist_ok=True)
    os.makedirs(results, exist_ok=True)
    experiment = Experiment(args, out, results, seeds, Stages(name))
    with experiment.stages("data", f"1/{stage_count} data: char-level Shakespeare"):
        prepare_data(args, out)
    train_and_eval(experiment)
    experiment.stages.done(f"{results}/{report_name}.md")
    report(experiment, experiment.stages.times)


def run(cmd, log):
    """Run a stage's command; its output goes to a log file, a failure ends the experiment with one line."""
    with open(log, "w") as f:
        status = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    if status:
        with open(log) as f:
            tail = f.read().strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"'{' '.join(cmd)}' failed ({tail[0]}); full log: {log}")


def prepare_data(args, out):
    """The char-level Shakespeare shards the configs train on, prepared once (unless --dataset is given)."""
    if args.dataset:
        if not os.path.isfile(os.path.join("data", args.dataset, "meta.json")):
            raise SystemExit(f"--dataset {args.dataset}: no shards there (no meta.json): prepare it first")
        return
    if not os.path.isfile("data/shakespeare/char/meta.json"):
        run([sys.executable, repo_path("data/shakespeare/prepare.py"), "--char-only"], f"{out}/prepare.log")


def stale_reason(out_dir, train_args):
    """None if out_dir holds a finished run of `python train.py *train_args` that today's code would compute the
    same (its fingerprint: the module docstring), else why it must be trained (again): results/ never mixes in a
    run made with other settings, or that today's code would train otherwise."""
    path = os.path.join(out_dir, "ckpt.pt")
    if not os.path.isfile(path):
        return "not trained yet"
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as e:
        return f"unreadable ({e})"
    expected = configure(train.DEFAULTS, train_args, train.OPTIONAL_TYPES)  # as train.py resolves it now
    saved = ckpt["config"]
    # a key the run's config lacks, at its default now, is a knob added since (a new embedding's): not a change
    changed = sorted(k for k in expected.keys() | saved.keys()
                     if (saved[k] != expected[k] if k in saved and k in expected
                         else k in saved or expected[k] != train.DEFAULTS.get(k)))
    if changed:
        return f"config changed ({', '.join(changed)})"
    if ckpt["iter_num"] < expected["max_iters"]:
        return f"unfinished (iter {ckpt['iter_num']} of {expected['max_iters']})"
    parent = ckpt.get("parent")
    if parent and "pretrained" in parent:  # a pretrained source: its weights' file (or folder)
        if not os.path.exists(parent["pretrained"]) or source_sha256(parent["pretrained"]) != parent["sha256"]:
            return f"its pretrained source {parent['init_from']} changed"
    elif parent and (not os.path.isfile(checkpoint_file(parent["init_from"]))
                     or file_sha256(parent["init_from"]) != parent["sha256"]):
        return f"its parent {parent['init_from']} was trained again"
    return computes_otherwise(ckpt)


def computes_otherwise(ckpt):
    """None if today's code computes the run's fingerprint again, else what differs (the module docstring)."""
    recorded = ckpt.get("fingerprint")
    if not recorded:
        return "no fingerprint of what it computes (trained before train.py recorded one)"
    start = ckpt.get("past_configs") or [{"config": ckpt["config"]}]  # a resumed run: the config it started with
    config = start[0]["config"]
    if train.schedule_sha256(argparse.Namespace(**config)) != recorded["lr_sha256"]:
        return "what it computes changed (its lr schedule)"
    iters = len(recorded["losses"])
    if iters == 0:
        return "no fingerprint of what it computes (saved before its first iteration)"
    try:
        probed = probe(config, iters)
    except SystemExit as e:  # a key today's train.py no longer takes, data gone...: one line
        return f"its probe failed ({e})"
    pairs = [("loss at iter", i, a, b) for i, (a, b) in enumerate(zip(recorded["losses"], probed["losses"]))]
    pairs.append(("val loss at iter", 0, recorded["val_loss0"], probed["val_loss0"]))
    for what, i, then, now in pairs:
        if then != now:
            return f"what it computes changed ({what} {i}: {then!r} vs {now!r})"
    return None


def probe(config, iters):
    """Run `config` (a checkpoint's resolved train.py config) again for its first `iters` iterations, in process
    and in a temporary out_dir, with the lr of those iterations the run's; -> the probe's fingerprint."""
    decay_iters = config.get("lr_decay_iters") or config["max_iters"]  # what get_lr reads of max_iters
    with tempfile.TemporaryDirectory(prefix="probe") as tmp:
        overrides = {**config, "out_dir": tmp, "max_iters": iters,
                     "lr_decay_iters": decay_iters, "eval_interval": iters, "wandb_log": False, "overwrite": False}
        argv = [f"--{k}={v}" if isinstance(v, str) else f"--{k}={v!r}" for k, v in overrides.items()]
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            train.main(argv)
        return load_checkpoint(tmp)["fingerprint"]


def run_args(config, out, name, flags, seed, extra=(), dataset=None):
    """(out_dir, train.py arguments) of one run: a config file, the run's flags, its seed, the mode's extras."""
    out_dir = f"{out}/{name}_s{seed}"
    data = [f"--dataset={dataset}"] if dataset else []
    return out_dir, [repo_path(config), *flags, f"--seed={seed}", *extra, *data, f"--out_dir={out_dir}",
                     f"--wandb_run_name={name}_s{seed}", "--overwrite=True"]  # a stale run there is trained again


def ensure_trained(out_dir, train_args, stages, fresh=False, why="--fresh"):
    """Train `python train.py *train_args` into out_dir unless it holds a current finished run (stale_reason)
    or fresh is set (`why` says why). Returns True if it trained."""
    reason = why if fresh else stale_reason(out_dir, train_args)
    if reason is None:
        print(f"  {out_dir}: already trained with this config and code, kept", flush=True)
        return False
    t1 = time.time()
    run([sys.executable, repo_path("train.py"), *train_args], f"{out_dir}.log")
    stages.times[f"train {os.path.basename(out_dir)}"] = time.time() - t1
    print(f"  {out_dir}: trained ({reason}), {time.time() - t1:.0f} s", flush=True)
    return True


def train_grid(config, out, arms, seeds, stages, extra=(), dataset=None, fresh=False):
    """Train (or keep) every arm {name: train.py flags} x seed into out/<name>_s<seed> -> {name: [out_dirs]}."""
    ckpts = {}
    for name, flags in arms.items():
        for seed in seeds:
            run_dir, train_args = run_args(config, out, name, flags, seed, extra, dataset)
            ckpts.setdefault(name, []).append(run_dir)
            ensure_trained(run_dir, train_args, stages, fresh)
    return ckpts


def sweep(groups, out, sweep_args, log):
    """eval_length.py over {label: [checkpoints]}, one row per label -> out.{csv,json,png}."""
    ckpts = [c for cs in groups.values() for c in cs]
    labels = [f"--label={label}={','.join(cs)}" for label, cs in groups.items()]
    run([sys.executable, repo_path("eval_length.py"), "--ckpt", *ckpts, *labels, "--out", out, *sweep_args], log)


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise SystemExit(f"no {path}: run the experiment first (without --report_only)") from None
    except ValueError as e:  # a truncated or empty file (json.JSONDecodeError)
        raise SystemExit(f"{path} is not readable JSON ({e}): run the experiment again (without --report_only)") from None


@contextlib.contextmanager
def saved_results(results, files=None):
    """Around a report written from saved JSON (files: which, for the message; default: the JSON in results): a
    file that lacks what the report reads (written by another version of the experiment), or holds something
    else where it should hold a list or a number (damaged, or edited), is a one-line exit, not a traceback."""
    files = files or f"the JSON in {results}"
    try:
        yield
    except KeyError as e:
        raise SystemExit(f"{files} lacks {e} (written by another version of the experiment?): "
                         "run the experiment again (without --report_only)") from None
    except (IndexError, TypeError, ValueError, AttributeError) as e:
        raise SystemExit(f"{files} is damaged ({type(e).__name__}: {e}): run the experiment again "
                         "(without --report_only)") from None


class ReadingError(SystemExit):
    """A reading cites a number its experiment's JSON does not hold (a one-line error, like SystemExit)."""


PLACEHOLDER = re.compile(r"\{\{([^{}]+?)\}\}")


def render_reading(template, docs):
    """Fill {{DOC/key/key/...:FMT}} from docs {DOC: JSON}: dict keys as strings, list indices as integers,
    FMT a format spec (none: str). A path that does not resolve is an error, so a reading cannot outlive
    the numbers it cites."""
    def fill(match):
        text = match.group(1)
        path, _, fmt = text.partition(":")
        value = docs
        for key in path.split("/"):
            if isinstance(value, (list, tuple)) and key.lstrip("-").isdigit() and -len(value) <= int(key) < len(value):
                value = value[int(key)]
            elif isinstance(value, dict) and key in value:
                value = value[key]
            else:
                raise ReadingError(f"reading placeholder {{{{{text}}}}}: no '{key}' in {path}")
        return format(value, fmt) if fmt else str(value)

    return PLACEHOLDER.sub(fill, template)


def write_report(path, title, lines, stages, reading=None, docs=None):
    """path.md: a title, the lines (tables), the reading (experiments/readings/<reading>.md filled from docs;
    None for a --quick run, whose numbers the reading does not describe) and the stage times;
    path_timing.json: the stage times (seconds)."""
    out = [f"# {title}", "", *lines]
    template = os.path.join(READINGS, f"{reading}.md") if reading else None
    if template and os.path.isfile(template):
        with open(template) as f:
            out += ["", render_reading(f.read(), {**docs, "timing": stages}).rstrip(), ""]
    out += ["", "Stage times (seconds):", "", *(f"- {k}: {v:.0f}" for k, v in stages.items())]
    with open(f"{path}.md", "w") as f:
        f.write("\n".join(out) + "\n")
    with open(f"{path}_timing.json", "w") as f:
        json.dump(stages, f, indent=1)
