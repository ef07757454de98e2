"""
The one place that writes, reads and checks out_dir/ckpt.pt: train.py, eval_length.py, sample.py and
the experiments all go through it, so a missing, truncated or foreign checkpoint gets the same one-line
error everywhere.

A checkpoint is the dict train.py saves:
    model, optimizer, scaler  state dicts (scaler: float16's GradScaler, so a float16 resume is exact)
    model_args                the GPTConfig fields
    config                    the resolved train.py config: defaults, then config files, then flags
    sources                   provenance: what the code was: {file: sha256} of every file in SOURCES (and the torch
                              version), one dict per code version that trained the run (two or more
                              only if it was resumed after an edit)
    parent                    None, or the run this one started from (train.py init_from=<run>): its
                              path, iter_num, model_args and the sha256 of its checkpoint file
    iter_num, val_loss        the iteration and the val loss of the weights it holds
    best_val_loss             the lowest val loss the run has seen (best.pt holds the weights that had it)
    rng, meta                 the RNG states; the dataset's meta.json, i.e. its tokenizer
    past_configs              the config of each earlier stretch of a resumed run: [{until_iter, config}]
    fingerprint               what the run computes: its first iterations' losses, its iter-0 val loss, the hash
                              of its lr schedule (train.run_fingerprint; experiments/runner.py stale_reason)
    sha256                    of every other entry (content_sha256), written by save_checkpoint and checked
                              by load_checkpoint: a file changed on disk after its save is refused

An out_dir holds one run: ckpt.pt, its last checkpoint (what init_from=resume continues), and best.pt, a
hard link to the saved checkpoint with the lowest val loss (never replaced by a worse one). Who may write
there (one process; a new run over an old one only with --overwrite) is guard.claim_out_dir's.

A save is never half-written: it goes to a temp file renamed over the old one, and Ctrl-C or SIGTERM during
it waits for the rename (guard.interrupts_deferred). best.pt is renamed into place before ckpt.pt, so a kill
between the two leaves best.pt ahead of ckpt.pt's record, never behind it (best_pair repairs or reports
what a resume finds).
"""

import errno
import glob
import hashlib
import os
import pickle
import shutil
import sys

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


def run_sources(resumed=None, say=True):
    """The sources a run's checkpoint records (provenance: what made it; experiments/runner.py decides whether a run is
    current by what it computes): this code's source_hashes(), after those of the resumed checkpoint `resumed`; a
    resume with changed code records both, and says so on stderr (if say)."""
    current = source_hashes()
    if resumed is None:
        return [current]
    saved = resumed.get("sources") or [{}]
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


def content_sha256(checkpoint):
    """sha256 of a checkpoint's entries but "sha256": tensors as dtype, shape and bytes, everything else as its
    repr, in order. It reads the same after a save and a load, so a load can tell a file changed on disk."""
    digest = hashlib.sha256()

    def feed(obj):
        if isinstance(obj, torch.Tensor):
            digest.update(f"tensor {obj.dtype} {tuple(obj.shape)};".encode())
            digest.update(obj.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        elif isinstance(obj, dict):
            digest.update(f"dict {len(obj)};".encode())
            for key, value in obj.items():
                feed(key)
                feed(value)
        elif isinstance(obj, (list, tuple)):
            digest.update(f"{type(obj).__name__} {len(obj)};".encode())
            for value in obj:
                feed(value)
        else:
            digest.update(f"{type(obj).__name__} {obj!r};".encode())

    feed({k: v for k, v in checkpoint.items() if k != "sha256"})
    return digest.hexdigest()


def save_checkpoint(checkpoint, path, best=False):
    """Atomic: write a temp file in the same directory, fsync it, then rename over the old one; best: first make
    best.pt beside it a link to the new file (a copy where links are not possible), renamed into place before
    ckpt.pt is, so that no kill leaves ckpt.pt recording a best val loss best.pt does not hold. Records the
    content's sha256. An interruption at any point leaves the previous checkpoint whole (Ctrl-C and SIGTERM wait
    for the renames); a failed write (a full disk) is a one-line CheckpointError that keeps it too."""
    from guard import interrupts_deferred  # here: a reader of checkpoints needs no signals

    tmp = f"{path}.tmp{os.getpid()}"
    best_path = os.path.join(os.path.dirname(path), BEST)
    best_tmp = f"{best_path}.tmp{os.getpid()}"
    try:
        with interrupts_deferred():
            with open(tmp, "wb") as f:
                torch.save({**checkpoint, "sha256": content_sha256(checkpoint)}, f)
                f.flush()
                os.fsync(f.fileno())
            if best:
                try:
                    os.link(tmp, best_tmp)
                except OSError:  # a file system without hard links
                    shutil.copyfile(tmp, best_tmp)
                os.replace(best_tmp, best_path)
            os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
        kept = "the previous checkpoint is kept" if os.path.exists(path) else "no checkpoint was written"
        raise CheckpointError(f"could not write {path} ({write_error(e)}): {kept}; free some space or pick another "
                              "--out_dir") from None
    finally:
        for leftover in (tmp, best_tmp):
            if os.path.exists(leftover):
                os.remove(leftover)


def write_error(error):
    """Why a write failed, plainly: the OS's reason (torch.save wraps it in a RuntimeError of its C++ writer,
    the OSError being its context), else an OSError's own words."""
    cause = error
    while cause is not None and not getattr(cause, "errno", None):
        cause = cause.__context__
    if cause is not None:
        full = cause.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
        return os.strerror(cause.errno) + (": disk full?" if full else "")
    if isinstance(error, OSError) and str(error):
        return " ".join(str(error).split())[:160]
    return "the write failed: disk full?"  # torch's own words name its C++ source, not the cause


BEST = "best.pt"  # beside ckpt.pt: the saved checkpoint with the lowest val loss


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



def load_checkpoint(path, missing=None, require=(), mmap=False, verify=None):
    """The checkpoint at an out_dir or ckpt.pt, checked to be one train.py wrote (else CheckpointError).

    missing: what to tell the user when there is none (default: how to train one).
    require: keys needed beyond REQUIRED (train.py's resume needs optimizer and rng).
    verify: check the recorded sha256 (checkpoints that have one); default: unless mmap (a look at its numbers).
    """
    file = checkpoint_file(path)
    if not os.path.isfile(file):
        raise CheckpointError(f"no checkpoint at {path}: {missing or f'train one with python train.py --out_dir={path}'}")
    if not looks_saved(file):  # a text file, an image, an empty file...
        raise CheckpointError(f"{file} is not a checkpoint (not a torch save file): pass the out_dir or ckpt.pt "
                              "of a run")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():  # a broken pickle, not one that weights_only refused
            raise CheckpointError(f"{file} is not a readable checkpoint (a broken pickle): damaged or cut short; "
                                  "pass another") from None
        raise CheckpointError(f"{file} holds Python objects besides tensors and plain data: not a checkpoint "
                              "written by train.py (it is not loaded, as that could run code)") from None
    except Exception as e:  # whatever else torch.load says (a truncated zip...): unreadable
        reason = " ".join(str(e).split()).split(". ")[0] or type(e).__name__  # its first sentence
        raise CheckpointError(f"{file} is not a readable checkpoint ({reason[:160]}): damaged or cut short; "
                              "pass another") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{file} holds a {type(checkpoint).__name__}, not a checkpoint written by train.py")
    absent = [k for k in (*REQUIRED, *require) if k not in checkpoint]
    if absent:
        raise CheckpointError(f"{file} has no {', '.join(absent)}: not a checkpoint written by train.py")
    if (not mmap if verify is None else verify) and "sha256" in checkpoint:
        if content_sha256(checkpoint) != checkpoint["sha256"]:
            raise CheckpointError(f"{file} does not match the sha256 recorded at its save: it changed on disk "
                                  "since (a disk or copy error?); pass another checkpoint")
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


def looks_saved(file):
    """Whether a file starts as torch.save's files do: a zip archive (even one cut short), or a pickle of protocol
    2 or later (its legacy format)."""
    with open(file, "rb") as f:
        head = f.read(4)
    return head == b"PK\x03\x04" or head[:1] == b"\x80"


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


def best_pair(checkpoint, path, repair=True):
    """What a resume finds of ckpt.pt's record and best.pt, made one again: -> (best_val_loss, the val loss of
    best.pt's weights, a line to say or None). A kill between best.pt's rename and ckpt.pt's leaves best.pt
    ahead: kept, and its loss is the run's best. ckpt.pt recording a best that best.pt does not hold (a kill by
    an older train.py, which renamed ckpt.pt first): best.pt is linked to ckpt.pt if ckpt.pt holds those
    weights (repair), else the run's best becomes best.pt's. best.pt is read, not checked against its sha256."""
    best_path = os.path.join(os.path.dirname(path), BEST)
    recorded, held = checkpoint["best_val_loss"], saved_val_loss(best_path)
    if held == recorded:
        return recorded, held, None
    if held < recorded:
        return held, held, (f"{best_path} (val loss {held:.4f}) is ahead of {path} (iter {checkpoint['iter_num']}, "
                            f"best val loss {recorded:.4f}): a run was killed between their saves; resuming from "
                            f"{path}, best.pt kept")
    if checkpoint.get("val_loss") == recorded:  # ckpt.pt's own weights scored the best
        if repair:
            tmp = f"{best_path}.tmp{os.getpid()}"
            try:
                os.link(path, tmp)
            except OSError:  # a file system without hard links
                shutil.copyfile(path, tmp)
            os.replace(tmp, best_path)
        return recorded, recorded, (f"{best_path} did not hold the best weights ({path} records val loss "
                                    f"{recorded:.4f}, best.pt {held:.4f}): best.pt is now {path}, which holds them")
    lost = "no best.pt" if held == float("inf") else f"best.pt {held:.4f}"
    return held, held, (f"{path} records a best val loss {recorded:.4f} that no file holds ({lost}): those weights "
                        "were lost (a kill mid-save by an older train.py?); the run's best is now best.pt's")



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

