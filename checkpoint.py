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
    iter_num, val_loss        the iteration and the val loss of the weights it holds
    best_val_loss             the lowest val loss the run has seen (best.pt holds the weights that had it)
    rng, meta                 the RNG states; the dataset's meta.json, i.e. its tokenizer

An out_dir holds one run: ckpt.pt, its last checkpoint (what init_from=resume continues), and best.pt, a
hard link to the saved checkpoint with the lowest val loss (never replaced by a worse one). claim_out_dir
makes sure of it: a second process, or a new run over an existing one, is refused in one line.

A save is never half-written: it goes to a temp file renamed over the old one, and Ctrl-C during it waits for
the rename (interrupts_deferred). How a run ends on Ctrl-C is train.py's (watch_interrupts, end_now).
"""

import contextlib
import fcntl
import glob
import hashlib
import os
import pickle
import shutil
import signal
import sys
import threading
import zipfile

import torch

ROOT = os.path.dirname(os.path.abspath(__file__))

# The files whose edits change what a run trains or the numbers it reports. The config's values are
# recorded as values (config), so config files and configurator.py are not here; eval_length.py, sample.py
# and experiments/ only read a trained model. The C kernel is here although it is tested against the eager
# rotation: runs train through it (rotary_backend=auto) and its rounding is not eager's bit for bit, nor
# the same under other compiler flags (build.py).
SOURCES = ("train.py", "model.py", "pretrained.py", "fope.py", "rope_scaling.py", "baselines.py", "passkey.py", "data/shards.py",
           "data/tokenizer.py", "checkpoint.py",  # checkpoint.py: load_parent_weights starts continued runs
           "fope_ext/__init__.py", "fope_ext/rotation.py", "fope_ext/build.py", "fope_ext/*.c", "fope_ext/*.h")

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


def resumed_sources(checkpoint, current, say=True):
    """The sources of a run resumed with the code `current` (a source_hashes() dict): the checkpoint's, then
    `current` if the code changed since its last version, which it then says on stderr (if say)."""
    saved = checkpoint.get("sources") or [{}]
    if saved[-1] == current:
        return saved
    if say:
        print(f"resuming with other sources than the run was trained with ({', '.join(changed_sources(saved[-1], current))}); "
              "the checkpoint records both", file=sys.stderr)
    return saved + [current]


def files_sha256(files, names=False):
    """sha256 of the files' bytes in order (names=True: each file's name before its bytes)."""
    digest = hashlib.sha256()
    for file in files:
        if names:
            digest.update(os.path.basename(file).encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def file_sha256(path):
    """sha256 of the checkpoint file at an out_dir or ckpt.pt: which exact weights a run started from."""
    return files_sha256([checkpoint_file(path)])


def checkpoint_file(path):
    """An out_dir or a ckpt.pt -> the file."""
    return os.path.join(path, "ckpt.pt") if os.path.isdir(path) else str(path)


def save_checkpoint(checkpoint, path, best=False):
    """Atomic: write a temp file in the same directory, fsync it, then rename over the old one; best: also
    make best.pt beside it a link to the new file (a copy where links are not possible). An interruption at
    any point leaves the previous checkpoint whole (Ctrl-C waits for the rename); a failed write (a full
    disk) is a one-line CheckpointError that keeps it too."""
    tmp = f"{path}.tmp{os.getpid()}"
    best_path = os.path.join(os.path.dirname(path), BEST)
    best_tmp = f"{best_path}.tmp{os.getpid()}"
    try:
        with interrupts_deferred():
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            if best:
                try:
                    os.link(path, best_tmp)
                except OSError:  # a file system without hard links
                    shutil.copyfile(path, best_tmp)
                os.replace(best_tmp, best_path)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
        reason = os.strerror(e.errno) if getattr(e, "errno", None) else " ".join(str(e).split())[:160]
        raise CheckpointError(f"could not write {path} ({reason}): the previous checkpoint is kept; free some space "
                              "or pick another --out_dir") from None
    finally:
        for leftover in (tmp, best_tmp):
            if os.path.exists(leftover):
                os.remove(leftover)


BEST = "best.pt"  # beside ckpt.pt: the saved checkpoint with the lowest val loss
LEFTOVERS = ("ckpt.pt.tmp*", "best.pt.tmp*")  # what a save killed before its rename leaves


def existing_run(out_dir):
    """'ckpt.pt at iter N' if out_dir holds a run's checkpoint (or best.pt), else None."""
    for name in ("ckpt.pt", BEST):
        path = os.path.join(out_dir, name)
        if os.path.isfile(path):
            try:
                return f"{name} at iter {load_checkpoint(path, mmap=True)['iter_num']}"
            except CheckpointError:
                return f"an unreadable {name}"
    return None


def writable_dir(folder, name, flag):
    """Make `folder` and check that it takes files, or exit in one line: `name` says what it is, `flag` what to
    change."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"cannot make {name} ({e.strerror}): pick another {flag}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SystemExit(f"{name} is not writable: pick another {flag}")


@contextlib.contextmanager
def claim_out_dir(out_dir, new_run, overwrite=False):
    """Hold out_dir for one training process (a lock the kernel drops when the process ends, even by kill -9)
    and check that a new run (not a resume) does not replace one already there unless overwrite. Removes
    what killed saves left; with overwrite, the old run's checkpoints. Makes out_dir first, and checks it takes
    files, so a mistake costs nothing, not a run's first eval_interval. One-line exits otherwise."""
    writable_dir(out_dir, f"out_dir {out_dir}", "--out_dir")
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"out_dir {out_dir} is in use by another training run: wait for it to end, "
                             "or pick another --out_dir") from None
        except OSError:  # a file system without locks (some network mounts): go on unguarded
            pass
        run = existing_run(out_dir) if new_run else None
        if run and not overwrite:
            raise SystemExit(f"out_dir {out_dir} already holds a run ({run}): continue it with --init_from=resume, "
                             "pick another --out_dir, or pass --overwrite=True to replace it")
        leftovers = [p for pattern in LEFTOVERS for p in glob.glob(os.path.join(glob.escape(out_dir), pattern))]
        if run:
            leftovers += [os.path.join(out_dir, n) for n in ("ckpt.pt", BEST) if os.path.isfile(os.path.join(out_dir, n))]
        for path in leftovers:
            os.remove(path)
        if leftovers:
            print(f"removed from {out_dir}: {', '.join(os.path.basename(p) for p in leftovers)}", file=sys.stderr)
        yield
    finally:
        os.close(fd)  # releases the lock


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
    except pickle.UnpicklingError:  # weights_only refused an object, or the file is no pickle at all
        if not (zipfile.is_zipfile(file) or is_pickle(file)):  # a text file, an image, ...
            raise CheckpointError(f"{file} is not a checkpoint (neither a torch.save archive nor a pickle): "
                                  "pass the out_dir or ckpt.pt of a run") from None
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


def check_model_args(checkpoint, path, model_args, may_differ=()):
    """A one-line CheckpointError unless the checkpoint at path holds the model model_args describe (the fields in
    may_differ aside): it names each difference and the flags that would match the checkpoint."""
    saved = checkpoint["model_args"]
    diff = [k for k in model_args if k not in may_differ and saved.get(k) != model_args[k]]
    if diff:
        def show(args):
            return ", ".join(f"{k}={args.get(k)}" for k in diff)
        flags = [f"--dataset={checkpoint['config']['dataset']}" if k == "vocab_size" else f"--{k}={saved.get(k)}"
                 for k in diff]
        raise CheckpointError(f"{path} holds another model ({show(saved)}) than the config asks ({show(model_args)}): "
                              f"use a new out_dir or matching {' '.join(flags)}")


def check_data(checkpoint, data_meta, data_dir):
    """A one-line CheckpointError unless the data at data_dir are in the checkpoint's tokenizer: scored on
    another vocabulary, a model gives a number (or an index error), never a meaningful one."""
    if data_meta != checkpoint["meta"]:
        def name(meta):
            return (f"{meta.get('tokenizer')}" + (f" {meta['source']}" if meta.get("source") else "")
                    + f", vocab {meta.get('vocab_size')}")
        raise CheckpointError(f"{checkpoint.get('path', 'the checkpoint')} was trained on other tokens ({name(checkpoint['meta'])}) "
                              f"than {data_dir} holds ({name(data_meta)}): pass the --data_dir of its own dataset "
                              f"(data/{checkpoint['config'].get('dataset')})")


def is_pickle(file):
    """Whether a file starts as a pickle of protocol 2 or later does (torch.save's legacy format)."""
    with open(file, "rb") as f:
        return f.read(1) == b"\x80"


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


def saved_val_loss(path):
    """The val loss of the weights in a checkpoint file (older checkpoints: their best_val_loss); inf if none."""
    if not os.path.exists(path):
        return float("inf")
    checkpoint = load_checkpoint(path, mmap=True)
    return checkpoint.get("val_loss", checkpoint["best_val_loss"])


def checkpoint_status(path):
    """One phrase on what a reader will find at path (the last checkpoint) and beside it (best.pt)."""
    def described(file):
        return f"{file} (iter {load_checkpoint(file, mmap=True)['iter_num']}, val loss {saved_val_loss(file):.4f})"
    if not os.path.exists(path):
        return "no checkpoint was written"
    best = os.path.join(os.path.dirname(path), BEST)
    status = f"last checkpoint: {described(path)}"
    if os.path.exists(best) and not os.path.samefile(best, path):
        status += f"; best: {described(best)}"
    return status


@contextlib.contextmanager
def interrupts_deferred():
    """Ctrl-C inside waits until the block ends (a checkpoint's rename), then raises as usual. A torch.save
    interrupted inside its C++ writer would fail with a RuntimeError instead of a KeyboardInterrupt. The SIGINT
    handler in place still runs at once (train.py's arms its watchdog, so a save that hangs still ends the
    process within the grace); only what it raises waits for the end of the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous, raised = signal.getsignal(signal.SIGINT), []

    def defer(signum, frame):
        try:
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                raise KeyboardInterrupt
        except BaseException as e:  # the handler's KeyboardInterrupt, as a rule
            raised.append(e)

    signal.signal(signal.SIGINT, defer)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if raised:
            raise raised[0]


# -----------------------------------------------------------------------------
# a run started from another run's weights (train.py init_from=<run>: context extension)


def load_parent(path, meta):
    """The checkpoint of a run another starts from (train.py init_from=<run>), checked to be in the tokenizer of
    the data `meta` describes, and its lineage: the path, iter_num, model_args and sha256 of those weights."""
    parent = load_checkpoint(path, missing="pass init_from=scratch, resume, or the out_dir of a finished run")
    if parent["meta"] != meta:
        raise CheckpointError(f"init_from={path} was trained on another tokenizer ({parent['config'].get('dataset')}): "
                              f"pass --dataset={parent['config'].get('dataset')} or another run")
    return parent, {"init_from": path, "iter_num": parent["iter_num"], "model_args": parent["model_args"],
                    "sha256": file_sha256(path)}


# what a parent run must share with the model it starts (load_parent_weights); everything else may change
SHAPE_FIELDS = ("n_layer", "n_head", "n_kv_head", "n_embd", "vocab_size", "vocab_multiple", "bias", "norm", "mlp", "mlp_hidden",
                "tie_embeddings", "qk_norm")


def load_parent_weights(model, parent_state, parent_args, fourier_expand="fresh"):
    """Start `model` from another run's weights, for continued training with a new block_size,
    position embedding or rope_scaling (the paper's context extension, Fig. 4). Every weight is copied,
    except where a position module says otherwise through its from_parent(name, parent, own, expand): FoPE
    resizes its coefficients to the model's kept frequencies (fope.resize_coefficients, new entries
    `fourier_expand` = "fresh" or "zero") and keeps its fresh draw when the parent had none (RoPE -> FoPE);
    a bias the parent did not have (rope -> kerple) starts freshly drawn. Raises a one-line ValueError for
    what cannot be carried over."""
    from model import POS_EMBS  # here, as build_model: the experiments read checkpoints without building models
    config, parent_spec, spec = model.config, POS_EMBS[parent_args["pos_emb"]], POS_EMBS[model.config.pos_emb]
    differ = [f"{k} {parent_args.get(k)} -> {getattr(config, k)}" for k in SHAPE_FIELDS if parent_args.get(k) != getattr(config, k)]
    if differ:
        raise ValueError(f"the parent run has another shape ({', '.join(differ)}): only block_size, the position "
                         "embedding and rope_scaling may change when starting from it")
    fixed = [p for p in (parent_args["pos_emb"], config.pos_emb) if not POS_EMBS[p].past_block_size]
    if fixed and (parent_args["pos_emb"] != config.pos_emb or parent_args["block_size"] != config.block_size):
        movable = ", ".join(n for n, s in POS_EMBS.items() if s.past_block_size)
        raise ValueError(f"{fixed[0]} positions cannot be carried to another block_size or position embedding "
                         f"(parent: {parent_args['pos_emb']} at {parent_args['block_size']}); pick {movable}")
    if parent_spec.scales_tokens != spec.scales_tokens:
        scaled = parent_args["pos_emb"] if parent_spec.scales_tokens else config.pos_emb
        raise ValueError(f"{scaled} positions scale the token embeddings: a run cannot switch into or out of them "
                         f"(parent: {parent_args['pos_emb']}, this run: {config.pos_emb})")
    state, loaded = model.state_dict(), {}
    for key, own in state.items():
        parent = parent_state.get(key)
        module, name = parent_taker(model, key)
        if module is not None:
            # a module shared by every layer (share_layers) takes its parent's weights once, from the first layer's
            which = (id(module), name)
            if which not in loaded:
                loaded[which] = module.from_parent(name, parent, own, fourier_expand)
            state[key] = loaded[which]
        elif parent is None or parent.shape != own.shape:
            raise ValueError(f"the parent run has {'no ' + key if parent is None else f'{key} of shape {tuple(parent.shape)}'}"
                             f" where this model has {tuple(own.shape)}: it was written by another model.py")
        else:
            state[key] = parent
    model.load_state_dict(state)
    return model


def parent_taker(model, key):
    """(the nearest module above state key `key` with a from_parent method, the key's name below it), or
    (None, key)."""
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module = model.get_submodule(".".join(parts[:i]))
        if hasattr(module, "from_parent"):
            return module, ".".join(parts[i:])
    return None, key
