"""experiments/gpu_check.py, the prepared GPU check, dry-run on the CPU through the same stage code: one JSON
line per stage as it ends, whatever ends a stage (an exception, SystemExit, CheckpointError, its budget even
inside a broad except, a hang the watchdog ends) leaving every other stage's line and the table; partial
results kept; the tolerance check on tensors of the stage's magnitudes; files under $OUT; a run with none of
the optional packages (tiktoken, cffi, tokenizers, gguf, safetensors, tqdm, matplotlib) importable."""

import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time

import pytest
import torch

from checkpoint import CheckpointError
from experiments import gpu_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def quick(args, out):  # a stage that works: what every stage but the injected one is, so a test takes a second
    out["value"] = 1.0


def swallowing(args, out):  # a library that catches Exception around a long call, as load_checkpoint does
    for _ in range(300):
        try:
            time.sleep(0.1)
        except Exception:
            pass


def swallowing_everything_once(args, out):  # even `except BaseException` once: the alarm comes again
    try:
        time.sleep(30)
    except BaseException:
        pass
    time.sleep(30)


def nan_exit(args, out):  # train.py's refusals and its NaN stop are SystemExit with a message
    out["owt_fope"] = {"ms_per_iter": 1.0}
    raise SystemExit("iter 1: loss is nan, training stopped (try a lower --learning_rate)")


def checkpoint_error(args, out):
    raise CheckpointError("out/x/ckpt.pt is unreadable (truncated)")


def exit_status(args, out):
    sys.exit(1)


def partial_then_broken(args, out):
    out["rope"] = {"rows": [{"length": 32, "seconds": 0.1, "peak_memory_gb": None}]}
    raise RuntimeError("the kernel crashed at 64 tokens")


INJECTED = {  # kind: (stage function, the start of its error)
    "exception": (partial_then_broken, "RuntimeError: the kernel crashed"),
    "system_exit": (nan_exit, "SystemExit: iter 1: loss is nan"),
    "exit_status": (exit_status, "SystemExit: exit status 1"),
    "checkpoint_error": (checkpoint_error, "CheckpointError: out/x/ckpt.pt is unreadable"),
    "timeout_in_broad_except": (swallowing, "StageTimeout: over its budget of 0.3 s"),
    "timeout_swallowed_once": (swallowing_everything_once, "StageTimeout: over its budget of 0.3 s"),
}


@pytest.mark.parametrize("kind", list(INJECTED))
@pytest.mark.parametrize("where", ["train", "sweep"])
def test_a_failure_of_any_kind_leaves_six_lines_and_the_table(tmp_path, monkeypatch, kind, where):
    stage, error = INJECTED[kind]
    for name in gpu_check.STAGES:
        monkeypatch.setitem(gpu_check.STAGES, name, quick)
    monkeypatch.setitem(gpu_check.STAGES, where, stage)
    monkeypatch.setitem(gpu_check.BUDGETS, where, 0.3)
    gpu_check.main(["--device=cpu", f"--out={tmp_path}/gpu"])
    got = lines(tmp_path / "gpu.jsonl")
    assert [l["stage"] for l in got] == list(gpu_check.STAGES)
    assert [l["stage"] for l in got if not l["ok"]] == [where]
    failed = next(l for l in got if l["stage"] == where)
    assert failed["error"].startswith(error), failed["error"]
    assert "Traceback" in failed["traceback"]  # the whole of it, in the line and in the log
    assert failed["error"].split(":")[0] in (tmp_path / "gpu.log").read_text()
    table = (tmp_path / "gpu.md").read_text()
    assert f"| {where} | no |" in table and table.count("| yes |") == 5


def test_what_a_stage_finished_before_it_failed_is_kept_and_marked_partial(tmp_path, monkeypatch):
    monkeypatch.setitem(gpu_check.STAGES, "sweep", partial_then_broken)
    gpu_check.main(["--device=cpu", f"--out={tmp_path}/gpu", "--stages", "sweep"])
    (line,) = lines(tmp_path / "gpu.jsonl")
    assert not line["ok"] and line["partial"]["rope"]["rows"][0]["length"] == 32
    table = (tmp_path / "gpu.md").read_text()
    assert "| sweep (partial) |" in table and "| rope | 32 | 0.10 |" in table


def test_the_train_stage_records_train_pys_checkpoint_error_and_the_next_stage_runs(tmp_path, monkeypatch):
    import train

    def refused(argv):
        raise CheckpointError("ckpt.pt is not a checkpoint of this model")

    monkeypatch.setattr(train, "main", refused)
    monkeypatch.setitem(gpu_check.STAGES, "flex", quick)
    gpu_check.main(["--device=cpu", f"--out={tmp_path}/gpu", "--stages", "train", "flex"])
    got = lines(tmp_path / "gpu.jsonl")
    assert [(l["stage"], l["ok"]) for l in got] == [("train", False), ("flex", True)]
    assert got[0]["error"] == "CheckpointError: ckpt.pt is not a checkpoint of this model"
    assert got[0]["partial"] == {"owt_fope": {}}  # it had begun owt_fope


def test_each_stage_is_written_the_moment_it_ends(tmp_path, monkeypatch):
    seen = []

    def after_env(args, out):  # runs after env: env's line must already be on disk
        seen.extend(lines(tmp_path / "gpu.jsonl"))

    monkeypatch.setitem(gpu_check.STAGES, "flex", after_env)
    gpu_check.main(["--device=cpu", f"--out={tmp_path}/gpu", "--stages", "env", "flex"])
    assert [l["stage"] for l in seen] == ["env"]
    # the watchdog ends with main: left running, it would end the process that called main at its deadline
    assert not any(t.name == "gpu_check watchdog" for t in threading.enumerate())


def test_the_env_stage_records_what_triton_needs_to_build(tmp_path):
    gpu_check.main(["--device=cpu", f"--out={tmp_path}/gpu", "--stages", "env"])
    env = lines(tmp_path / "gpu.jsonl")[0]["result"]
    assert {"python_h", "gcc", "triton", "driver", "torch"} <= set(env)
    assert env["python_h"] == os.path.exists(os.path.join(__import__("sysconfig").get_paths()["include"],
                                                          "Python.h"))
    assert "preflight:" in (tmp_path / "gpu.md").read_text()


# a stage stuck in one C call: SIGALRM blocked, so no alarm reaches Python; only the watchdog can end it
HUNG = """
import ctypes, signal, sys
sys.path.insert(0, ".")
from experiments import gpu_check
def hung(args, out):
    out["owt_fope"] = {"ms_per_iter": 12.0}
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
    ctypes.CDLL(None).sleep(60)  # 60 s inside C: Python never gets control back to raise
gpu_check.STAGES["train"] = hung
gpu_check.BUDGETS["train"] = 0.5
gpu_check.WATCHDOG_GRACE_S = 0.5
gpu_check.main(["--device=cpu", "--out=" + sys.argv[1], "--stages", "env", "train", "flex"])
"""


def test_a_stage_hung_where_no_alarm_reaches_is_ended_by_the_watchdog_with_the_table(tmp_path):
    run = subprocess.run([sys.executable, "-c", HUNG, f"{tmp_path}/gpu"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 3, run.stdout[-3000:] + run.stderr[-3000:]
    got = lines(tmp_path / "gpu.jsonl")
    assert [(l["stage"], l["ok"]) for l in got] == [("env", True), ("train", False)]
    assert got[1]["error"].startswith("Hung") and got[1]["partial"] == {"owt_fope": {"ms_per_iter": 12.0}}
    assert "| train | no |" in (tmp_path / "gpu.md").read_text()
    assert "Thread" in (tmp_path / "gpu.log").read_text()  # every thread's stack, where it hung


def test_relative_tolerance_passes_tf32_rounding_at_the_gradients_magnitudes_and_names_a_wrong_tensor():
    g = torch.Generator().manual_seed(0)
    # bias-parameter gradients as the flex stage sees them: ~4e4 (KERPLE's), ~3e3 (T5's), q/k/v ~1
    refs = {"grad bias.p": 4e4 * torch.randn(12, generator=g), "grad bias.emb.weight": 3e3 * torch.randn(32, 12, generator=g),
            "grad q": torch.randn(2, 12, 64, 64, generator=g)}
    tf32 = {n: r * (1 + 1e-3 * torch.randn(r.shape, generator=g)) for n, r in refs.items()}  # TF32-sized error
    assert max((tf32[n] - r).abs().max().item() for n, r in refs.items()) > 2e-2  # the old absolute bound failed
    errors = gpu_check.check_close([(n, tf32[n], r) for n, r in refs.items()], "tf32", "kerple")
    assert all(e < 2e-3 for e in errors.values())
    wrong = dict(tf32, **{"grad bias.p": -refs["grad bias.p"]})  # a sign error in one bias gradient
    with pytest.raises(AssertionError, match=r"kerple: grad bias\.p off by 2\.00e\+00"):
        gpu_check.check_close([(n, wrong[n], r) for n, r in refs.items()], "tf32", "kerple")
    with pytest.raises(AssertionError, match="grad q"):  # float32's tolerance is 100x tighter than TF32's
        gpu_check.check_close([("grad q", tf32["grad q"], refs["grad q"])], "float32", "t5")


def test_out_defaults_to_OUT_where_the_device_tool_sets_it(tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path))
    gpu_check.main(["--device=cpu", "--stages", "env"])
    assert sorted(os.listdir(tmp_path)) == ["gpu.jsonl", "gpu.log", "gpu.md"]


@pytest.mark.parametrize("argv, message", [
    (["--budget", "0"], "positive number of seconds"), (["--budget", "-5"], "positive number of seconds"),
    (["--device=tpu"], "not a device this check runs on"),
])
def test_bad_arguments_are_one_line_errors_before_any_stage(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        gpu_check.main([*argv, f"--out={tmp_path}/gpu"])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_an_out_under_a_file_is_a_one_line_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SystemExit, match=r"cannot write there .*name a folder you can write to"):
        gpu_check.main(["--device=cpu", f"--out={tmp_path}/f/g", "--stages", "env"])


def readme_command():
    """The README's one-call GPU command (in backticks: the one place it is given)."""
    with open(os.path.join(ROOT, "README.md")) as f:
        found = re.findall(r"`(python3 experiments/gpu_check\.py[^`]*)`", f.read())
    assert len(found) == 1, found
    return shlex.split(found[0])


# the optional packages hidden from every import: what a bare GPU machine may lack
WITHOUT_OPTIONAL = """
import runpy, sys
for name in ("tiktoken", "cffi", "tokenizers", "gguf", "safetensors", "tqdm", "matplotlib"):
    sys.modules[name] = None  # `import name` raises ModuleNotFoundError, as where it is not installed
sys.argv = ["experiments/gpu_check.py", *sys.argv[1:]]
runpy.run_path("experiments/gpu_check.py", run_name="__main__")
"""


@pytest.mark.slow
def test_the_readme_command_dry_runs_every_stage_with_only_torch_and_numpy_into_OUT(tmp_path):
    command = readme_command()
    assert command[:2] == ["python3", "experiments/gpu_check.py"]
    run = subprocess.run([sys.executable, "-c", WITHOUT_OPTIONAL, *command[2:]], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, env=dict(os.environ, OUT=str(tmp_path), CUDA_VISIBLE_DEVICES=""))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "the CPU dry run instead" in run.stderr and run.stdout.startswith("preflight: ")
    assert sorted(os.listdir(tmp_path)) == ["gpu.jsonl", "gpu.log", "gpu.md"]
    got = {l["stage"]: l for l in lines(tmp_path / "gpu.jsonl")}
    assert list(got) == list(gpu_check.STAGES)
    assert all(l["ok"] for l in got.values()), {k: l.get("error") for k, l in got.items()}
    env = got["env"]["result"]
    assert {"tiktoken", "cffi", "tokenizers"} <= set(env["missing"])
    for config, r in got["train"]["result"].items():  # train.py itself: 6 iterations, a checkpoint, a resume of 2
        assert r["checkpoint_iter"] == 6 and r["resumed_checkpoint_iter"] == 8 and r["resumed_iters"] == [6, 7]
        assert r["tokens_per_s"] > 0 and r["mfu"] is None  # no peak on a CPU
    assert all(r["relative_error"]["output"] < 1e-4 for r in got["flex"]["result"].values())
    for pos_emb, r in got["sweep"]["result"].items():
        assert len(r["rows"]) == 12 and r["recompile_limit_hits"] == 0
    assert set(got["smollm2"]["result"]) == {"rope", "fope-production", "yarn4"}
    assert {"eager", "compile", "copy"} <= set(got["rotation"]["result"])
    assert "iter 6" in (tmp_path / "gpu.log").read_text()  # train.py's own output, in the log
