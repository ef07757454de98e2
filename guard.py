"""
What keeps a training process in order whatever ends it: train.py makes one call to each.

    guard.quiet_while_loading()   # __main__, first: a Ctrl-C while torch loads ends quietly
    guard.run_script(main)        # __main__: Ctrl-C or SIGTERM ends the run in seconds, exit 130 or 143
    with guard.on_interrupt(ckpt_path, say):  # ... and says what the run leaves (its last checkpoint, whole)
    with guard.claim_out_dir(out_dir, new_run, overwrite):  # out_dir held by this process alone

Signals. Called first by a script (quiet_while_loading, before torch, which takes seconds to load), it makes a
Ctrl-C or SIGTERM during the imports end the process quietly (130, 143): nothing has started. watch_interrupts
then turns either signal into a KeyboardInterrupt and arms a watchdog, so a run that hangs afterwards still
ends; interrupts_deferred holds one back while a checkpoint is renamed into place (checkpoint.save_checkpoint);
end_now ends the process without finalizing the interpreter. out_dir: claim_out_dir locks it, refuses a new
run over an old one unless --overwrite, which moves the old run aside until the new one has saved.

Why a module of its own: none of this is training, and none of it is reading a checkpoint (checkpoint.py,
which sample.py and eval_length.py load without the lock or the signals). It imports nothing heavy, so
it can be first.
"""

import atexit
import contextlib
import faulthandler
import fcntl
import glob
import os
import shutil
import signal
import sys
import threading

STOPPED_BY = []  # the signal that stopped the run (watch_interrupts), once one has
END_STATUS = []  # run_script's exit status where the process ends without finalizing (end_now)


def quiet_while_loading():
    """A script's first call, before it imports torch (seconds): a Ctrl-C or SIGTERM meanwhile ends the process
    quietly (130, 143), since nothing has started; and end_now's exit is registered before torch and wandb
    register theirs, so it runs after them, last. Only a script's own process (python train.py) calls it."""
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    atexit.register(lambda: not END_STATUS or end_now(END_STATUS[0]))


def run_script(main, argv=None):
    """__main__'s: main(argv) with the signals watched (watch_interrupts). An interrupted run (130, 143: main
    said so) ends within seconds, not after finalizing the interpreter; so does every torchrun process (end_now)."""
    watch_interrupts()
    try:
        main(sys.argv[1:] if argv is None else argv)
    except SystemExit as stop:
        if stop.code in (130, 143):
            END_STATUS.append(stop.code)
        raise
    if "RANK" in os.environ:  # torchrun: finalizing can abort (end_now)
        END_STATUS.append(0)


@contextlib.contextmanager
def on_interrupt(ckpt_path, say=True):
    """Ctrl-C or SIGTERM inside (a KeyboardInterrupt, from watch_interrupts or Python's own handler): say what
    the run leaves at ckpt_path in one line (if say), then exit 130, or 143 for SIGTERM."""
    try:
        yield
    except KeyboardInterrupt:
        term = STOPPED_BY[:1] == [signal.SIGTERM]
        if say:
            from checkpoint import checkpoint_status
            print(f"\n{'terminated (SIGTERM)' if term else 'interrupted'}; {checkpoint_status(ckpt_path)}",
                  file=sys.stderr)
        raise SystemExit(143 if term else 130)


def watch_interrupts(grace=10):
    """Ctrl-C, or SIGTERM (what `timeout` and schedulers send), raises KeyboardInterrupt as Ctrl-C does and arms
    faulthandler's watchdog, a C thread that needs no GIL: if anything after it hangs (a C call, a lock, a blocked
    write), the process still ends within `grace` seconds, printing every thread's stack to stderr (exit status
    1). A second signal while the first is handled does nothing (no chained traceback): the watchdog is armed."""
    def on_interrupt(signum, frame):
        if STOPPED_BY:
            return
        STOPPED_BY.append(signum)
        faulthandler.dump_traceback_later(grace, exit=True)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_interrupt)
    signal.signal(signal.SIGTERM, on_interrupt)


def end_now(status):
    """Flush and end the process without finalizing the interpreter; __main__ calls it from atexit's last handler,
    after the others (wandb's, logging's, torch's compile workers'). Finalizing took over 10 s after a Ctrl-C on a
    loaded machine (garbage collection), and under torchrun it can abort (SIGABRT: a gloo worker that DDP keeps past
    destroy_process_group, needing the GIL to free the last tensors, is ended by std::terminate)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


@contextlib.contextmanager
def interrupts_deferred():
    """Ctrl-C or SIGTERM inside waits until the block ends (a checkpoint's rename), then raises as usual. A
    torch.save interrupted inside its C++ writer would fail with a RuntimeError instead of a KeyboardInterrupt,
    and SIGTERM's default ends the process at once, leaving the temp file. The handler in place still runs at
    once (train.py's arms its watchdog, so a save that hangs still ends the process within the grace); only
    what it raises waits for the end of the block. A SIGTERM with no handler is sent again after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    previous = {s: h for s, h in previous.items() if h is not None}  # None: set outside Python, left alone
    raised, resent = [], []

    def defer(signum, frame):
        handler = previous[signum]
        try:
            if callable(handler):
                handler(signum, frame)
            elif handler == signal.SIG_DFL and signum == signal.SIGINT:
                raise KeyboardInterrupt
            elif handler == signal.SIG_DFL:
                resent.append(signum)
        except BaseException as e:  # the handler's KeyboardInterrupt, as a rule
            raised.append(e)

    for signum in previous:
        signal.signal(signum, defer)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in resent[:1]:
            signal.raise_signal(signum)
        if raised:
            raise raised[0]


# -----------------------------------------------------------------------------
# out_dir: one run, one process

LEFTOVERS = ("ckpt.pt.tmp*", "best.pt.tmp*")  # what a save killed before its rename leaves

RUN_FILES = ("ckpt.pt", "best.pt")  # what --overwrite moves aside


class Claim:
    """out_dir, held by this process; aside: where the run it replaces waits (<out_dir>.replaced), or None."""

    def __init__(self, out_dir, aside=None):
        self.out_dir, self.aside = out_dir, aside

    def saved(self):
        """This run's first checkpoint is on disk: the run it replaces goes (said in one line)."""
        if self.aside:
            shutil.rmtree(self.aside)
            print(f"removed {self.aside}: the run this one replaces", file=sys.stderr)
            self.aside = None

    def release(self):
        """At the run's end: if it saved no checkpoint of its own, the run it was to replace goes back into out_dir
        (whatever ended it: an error, a NaN, Ctrl-C, SIGTERM, a full disk); if it did, that run goes."""
        if self.aside and os.path.isfile(os.path.join(self.out_dir, "ckpt.pt")):  # saved, then interrupted at once
            self.saved()
        elif self.aside:
            move_run(self.aside, self.out_dir)
            os.rmdir(self.aside)
            print(f"{self.out_dir} keeps the run it held: this run saved no checkpoint", file=sys.stderr)
            self.aside = None


def move_run(src, dst):
    """Move ckpt.pt and best.pt from folder src to folder dst (renames: nothing is copied)."""
    for name in RUN_FILES:
        if os.path.isfile(os.path.join(src, name)):
            os.replace(os.path.join(src, name), os.path.join(dst, name))


def aside_dir(out_dir):
    """Where --overwrite keeps the run it replaces until the new run's first checkpoint: <out_dir>.replaced."""
    return os.path.normpath(out_dir) + ".replaced"


def settle_aside(out_dir, has_run):
    """A <out_dir>.replaced that a killed run left: put back into an out_dir holding no run (the new run saved
    nothing), removed beside one (the new run saved). A folder of that name holding anything else is the user's:
    a one-line exit, nothing touched."""
    aside = aside_dir(out_dir)
    if not os.path.isdir(aside):
        return
    if set(os.listdir(aside)) - set(RUN_FILES):
        raise SystemExit(f"{aside} holds other files than a run moved aside by --overwrite: move it out of the way")
    if has_run:
        shutil.rmtree(aside)
        print(f"removed {aside}: the run replaced by the one in {out_dir}, which saved before it was killed",
              file=sys.stderr)
    else:
        move_run(aside, out_dir)
        os.rmdir(aside)
        print(f"put back into {out_dir} the run in {aside} (a run meant to replace it was killed before its first "
              "save)", file=sys.stderr)


@contextlib.contextmanager
def claim_out_dir(out_dir, new_run, overwrite=False):
    """Hold out_dir for one training process (a lock the kernel drops when the process ends, even by kill -9)
    and check that a new run (not a resume) does not replace one already there unless overwrite. Removes
    what killed saves left; with overwrite, moves the old run's checkpoints aside (Claim: removed once this run
    has saved, put back if it ends first). Makes out_dir first, and checks it takes files, so a mistake costs
    nothing, not a run's first eval_interval. One-line exits otherwise. Yields the Claim."""
    from checkpoint import BEST, existing_run, writable_dir  # here: checkpoint.py imports torch

    writable_dir(out_dir, f"out_dir {out_dir}", "--out_dir")
    fd = os.open(out_dir, os.O_RDONLY)
    claim = Claim(out_dir)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"out_dir {out_dir} is in use by another training run: wait for it to end, "
                             "or pick another --out_dir") from None
        except OSError:  # a file system without locks (some network mounts): go on unguarded
            pass
        settle_aside(out_dir, any(os.path.isfile(os.path.join(out_dir, n)) for n in RUN_FILES))
        run = existing_run(out_dir) if new_run else None
        if run and not overwrite:
            if not os.path.isfile(os.path.join(out_dir, "ckpt.pt")):  # best.pt alone: resume would send them back
                best = os.path.join(out_dir, BEST)
                raise SystemExit(f"out_dir {out_dir} holds only {run}: to continue from it, "
                                 f"cp {best} {os.path.join(out_dir, 'ckpt.pt')} then pass --init_from=resume; or pass "
                                 "--overwrite=True to replace it, or pick another --out_dir")
            raise SystemExit(f"out_dir {out_dir} already holds a run ({run}): continue it with --init_from=resume, "
                             "pick another --out_dir, or pass --overwrite=True to replace it")
        leftovers = [p for pattern in LEFTOVERS for p in glob.glob(os.path.join(glob.escape(out_dir), pattern))]
        for path in leftovers:
            os.remove(path)
        if leftovers:
            print(f"removed from {out_dir}: {', '.join(os.path.basename(p) for p in leftovers)}", file=sys.stderr)
        if run:
            aside = aside_dir(out_dir)
            try:
                os.mkdir(aside)
                claim.aside = aside  # from here, put back if anything ends the run before its first save
                move_run(out_dir, aside)
            except OSError as e:
                raise SystemExit(f"cannot move the run in {out_dir} aside to {aside} ({e.strerror}): move or "
                                 "remove it yourself, or pick another --out_dir") from None
            print(f"moved the run in {out_dir} ({run}) to {aside}: removed once this run saves its first "
                  "checkpoint, put back if it ends before", file=sys.stderr)
        yield claim
    finally:
        try:
            claim.release()
        finally:
            os.close(fd)  # releases the lock
