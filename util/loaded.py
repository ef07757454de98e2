"""
Which of this repository's files a script loads, and their lines: the reader's load (STYLE.md: "list the repo
files a scratch `python train.py` loads ... and ask of each whether a reader changing the loop needs it").

    python util/loaded.py train.py --max_iters=2 --eval_interval=2 --eval_iters=1 --out_dir=/tmp/loaded
    python util/loaded.py sample.py --out_dir=/tmp/loaded --max_new_tokens=5 --num_samples=1
    python util/loaded.py eval_length.py --ckpt /tmp/loaded --lengths 64 --trials 0 --out /tmp/loaded_eval

Runs the script as __main__ (its own argv), then lists every module file under the repository in sys.modules,
with its lines; the script itself counts too, this file does not.
"""

import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def repo_files():
    """The repository's .py files among the loaded modules (the .venv and tests excluded), sorted."""
    files = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path or not os.path.isabs(path):  # a relative __file__ (torch._classes): no file of ours
            continue
        rel = os.path.relpath(path, ROOT)
        if (rel.startswith("..") or rel.split(os.sep)[0] in (".venv", "tests") or not rel.endswith(".py")
                or rel == os.path.join("util", "loaded.py")):  # this file is the measurement, not the load
            continue
        files.add(rel)
    return sorted(files)


def main(argv):
    if not argv:
        raise SystemExit("usage: python util/loaded.py SCRIPT.py [its arguments]")
    script = os.path.join(ROOT, argv[0])
    sys.argv, sys.path[0] = [script, *argv[1:]], ROOT
    status = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        status = e.code or 0
    files = sorted(set(repo_files()) | {argv[0]})
    lines = {f: sum(1 for _ in open(os.path.join(ROOT, f))) for f in files}
    for f in files:
        print(f"{lines[f]:6d}  {f}", file=sys.stderr)
    print(f"{argv[0]} loaded {len(files)} repository files, {sum(lines.values()):,} lines (exit status {status})",
          file=sys.stderr)
    sys.stderr.flush()
    os._exit(0 if status in (0, None) else 1)


if __name__ == "__main__":
    main(sys.argv[1:])
