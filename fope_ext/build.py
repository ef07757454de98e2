"""
Compile the C kernels (rotate.c) into a Python extension with cffi's API mode.

The library is built on first use into a cache directory (fope_ext/_build/, or $FOPE_EXT_BUILD_DIR)
under a name keyed by a hash of the C sources, the compiler flags and the CPU (its name and instruction-set
flags, util/machine.py), so editing the C rebuilds it and -march=native never leaks onto another machine.
`make ext` (python -m fope_ext) builds it ahead of time and prints where it went, or the compiler's error.
"""

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile

from util.machine import cpu_flags, cpu_name

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = ("rotate.h", "rotate_kernels.h", "rotate.c")
# -fassociative-math (with the two flags it needs) lets the compiler vectorize the row sums of the QK-norm
# kernel; -fno-math-errno keeps sqrtf one instruction.
COMPILE_ARGS = ["-O3", "-march=native", "-fopenmp", "-std=c99", "-fassociative-math", "-fno-signed-zeros",
                "-fno-trapping-math", "-fno-math-errno"]
LINK_ARGS = ["-fopenmp", "-lm"]


def build_dir():
    return os.environ.get("FOPE_EXT_BUILD_DIR") or os.path.join(HERE, "_build")


def module_name():
    """_fope_rotate_<hash>: the hash covers everything that changes the binary."""
    h = hashlib.sha256()
    for name in SOURCES:
        with open(os.path.join(HERE, name), "rb") as f:
            h.update(f.read())
    h.update(repr((COMPILE_ARGS, LINK_ARGS, os.environ.get("CC"), cpu_name(), cpu_flags(), sys.version)).encode())
    return "_fope_rotate_" + h.hexdigest()[:16]


@contextlib.contextmanager
def _output_to(path):
    """Send this process's stdout/stderr (the compiler's too) to a log file."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _compile(name, directory):
    """Build <name>.so into directory; returns its path. Raises on compiler errors."""
    import cffi

    with open(os.path.join(HERE, "rotate.h")) as f:
        header = f.read()
    ffi = cffi.FFI()
    ffi.cdef(header)
    ffi.set_source(name, '#include "rotate.h"', sources=[os.path.join(HERE, "rotate.c")],
                   include_dirs=[HERE], extra_compile_args=COMPILE_ARGS, extra_link_args=LINK_ARGS)
    tmp = tempfile.mkdtemp(prefix="tmp-", dir=directory)
    try:
        with _output_to(os.path.join(directory, "build.log")):
            built = ffi.compile(tmpdir=tmp, verbose=True)
        target = os.path.join(directory, os.path.basename(built))
        os.replace(built, target)  # atomic: a concurrent loader sees the whole file or none
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load():
    """Import the compiled module, building it first if the cache has none. Returns (ffi, lib)."""
    name = module_name()
    directory = build_dir()
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time (tests and bench may race)
        found = [f for f in os.listdir(directory) if f.startswith(name + ".") and f.endswith(".so")]
        path = os.path.join(directory, found[0]) if found else _compile(name, directory)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ffi, module.lib

