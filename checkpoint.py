"""
The one place that writes, reads and checks out_dir/ckpt.pt: train.py, eval_length.py, sample.py and
the experiments all go through it, so a missing, truncated or foreign checkpoint gets the same one-line
error everywhere.

A checkpoint is the dict train.py saves:
    model, optimizer, scaler  state dicts (scaler: float16's GradScaler, so a float16 resume is exact)
    model_args                the GPTConfig fields
    config                    the resolved train.py config: defaults, then config files, then flags
    sources                   what the code was: {file: sha256} of every file in SOURCES (and the torch
                              version), one dict per code version that trained the run (two or more
                              only if it was resumed after an edit)
    parent                    None, or the run this one started from (train.py init_from=<run>): its
                              path, iter_num, model_args and the sha256 of its checkpoint file
    iter_num, best_val_loss, rng, meta (the dataset's meta.json, i.e. its tokenizer)

Also how a run ends on Ctrl-C (watch_interrupts, exit_without_finalizing): within seconds, its last
checkpoint whole.
"""

import atexit
import faulthandler
import glob
import hashlib
import os
import pickle
import signal
import sys

import torch

ROOT = os.path.dirname(os.path.abspath(__file__))

# The files whose edits change what a run trains or the numbers it reports. The config's values are
# recorded as values (config), so config files and configurator.py are not here; eval_length.py, sample.py
# and experiments/ only read a trained model. The C kernel is here although it is tested against the eager
# rotation: runs train through it (rotary_backend=auto) and its rounding is not eager's bit for bit, nor
# the same under other compiler flags (build.py).
SOURCES = ("train.py", "model.py", "pretrained.py", "fope.py", "rope_scaling.py", "baselines.py", "passkey.py", "data/shards.py",
           "data/tokenizer.py",
           "fope_ext/__init__.py", "fope_ext/build.py", "fope_ext/*.c", "fope_ext/*.h")

REQUIRED = ("model", "model_args", "config", "iter_num", "meta")  # what every reader needs


class CheckpointError(SystemExit):
    """A one-line error about a checkpoint file; uncaught, it ends the script like SystemExit."""


def source_hashes(root=ROOT):
    """{file: sha256} of the SOURCES under root, and the torch version (its kernels round too)."""
    hashes = {}
    for pattern in SOURCES:
        for path in sorted(glob.glob(os.path.join(root, pattern))):
            with open(path, "rb") as f:
                hashes[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    hashes["torch"] = str(torch.__version__)
    return hashes


def changed_sources(saved, current):
    """The names in which two source_hashes() dicts differ, sorted."""
    return sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))


def file_sha256(path):
    """sha256 of the checkpoint file at an out_dir or ckpt.pt: which exact weights a run started from."""
    digest = hashlib.sha256()
    with open(checkpoint_file(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_file(path):
    """An out_dir or a ckpt.pt -> the file."""
    return os.path.join(path, "ckpt.pt") if os.path.isdir(path) else str(path)


def save_checkpoint(checkpoint, path):
    """Atomic: write a temp file in the same directory, fsync it, then rename over the old one.
    An interruption at any point leaves the previous checkpoint whole."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path, missing=None, require=(), mmap=False):
    """The checkpoint at an out_dir or ckpt.pt, checked to be one train.py wrote (else CheckpointError).

    missing: what to tell the user when there is none (default: how to train one).
    require: keys needed beyond REQUIRED (train.py's resume needs optimizer and rng).
    """
    file = checkpoint_file(path)
    if not os.path.isfile(file):
        raise CheckpointError(f"no checkpoint at {path}: {missing or f'train one with python train.py --out_dir={path}'}")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:  # weights_only refused an object: not something train.py writes
        raise CheckpointError(f"{file} holds Python objects besides tensors and plain data: not a checkpoint "
                              "written by train.py (it is not loaded, as that could run code)") from None
    except Exception as e:  # whatever else torch.load says (a truncated zip, not a zip...): unreadable
        reason = " ".join(str(e).split()).split(". ")[0] or type(e).__name__  # its first sentence
        raise CheckpointError(f"{file} is not a readable checkpoint ({reason[:160]}): "
                              "delete it and train again, or pass another") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{file} holds a {type(checkpoint).__name__}, not a checkpoint written by train.py")
    absent = [k for k in (*REQUIRED, *require) if k not in checkpoint]
    if absent:
        raise CheckpointError(f"{file} has no {', '.join(absent)}: not a checkpoint written by train.py")
    return checkpoint


def build_model(checkpoint, path, model_args=None):
    """The GPT of a checkpoint with its weights (model_args: e.g. with eval-time rope_scaling)."""
    from model import GPT, GPTConfig  # here: the experiments read checkpoints without building models

    try:
        model = GPT(GPTConfig.from_dict(model_args or checkpoint["model_args"]))
        model.load_state_dict(checkpoint["model"])
    except (ValueError, TypeError, RuntimeError) as e:  # fields or weights this model.py does not take
        reason = " ".join(str(e).split()) or type(e).__name__
        raise CheckpointError(f"{checkpoint_file(path)}: {reason[:200]} (written by another version of "
                              "model.py? train it again)") from None
    return model


def load_model(path, scaling=None, device="cpu"):
    """-> (model in eval mode, checkpoint) from an out_dir or a ckpt.pt, with an eval-time rope_scaling
    (HF's spelling; its original length defaults to the model's block_size) on a rotary model."""
    from model import is_rotary

    checkpoint = load_checkpoint(path)
    args = dict(checkpoint["model_args"])
    if scaling is not None and is_rotary(args["pos_emb"]):
        args["rope_scaling"] = {"original_max_position_embeddings": args["block_size"], **scaling}
    checkpoint["path"] = path
    return build_model(checkpoint, path, args).to(device).eval(), checkpoint


# -----------------------------------------------------------------------------
# ending a run: Ctrl-C leaves the last checkpoint whole and ends the process within seconds


INTERRUPT_GRACE_S = 10  # after Ctrl-C, the run ends within this many seconds whatever it is doing


def watch_interrupts(grace=INTERRUPT_GRACE_S):
    """Ctrl-C raises KeyboardInterrupt as usual (main() reports the last checkpoint, then the process exits 130
    without finalizing the interpreter), and also arms faulthandler's watchdog: a C thread that needs no GIL,
    so if anything after the interrupt hangs (a C call that never returns, a lock, a blocked write), the
    process still ends within `grace` seconds, printing every thread's stack to stderr (exit status 1).
    Checkpoints are written atomically, so the last one stays whole either way."""
    def on_interrupt(signum, frame):
        faulthandler.dump_traceback_later(grace, exit=True)
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGINT, on_interrupt)


def exit_without_finalizing(code):
    """End the process now: the atexit handlers (wandb, logging) run and the output is flushed, but the
    interpreter is not finalized. Finalizing after a run is a full garbage collection of everything the run
    held and the teardown of torch's libraries: it took over 10 s after a Ctrl-C on a loaded machine (a
    native backtrace showed Py_FinalizeEx in gc_collect_main), and under torchrun it can abort: torch's DDP
    keeps the gloo process group and its worker threads alive past destroy_process_group, and a worker still
    releasing the last collective's tensors while the interpreter finalizes needs the GIL, is ended inside a
    noexcept destructor, and std::terminate aborts the process (SIGABRT) after the run finished."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
