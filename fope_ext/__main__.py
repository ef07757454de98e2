"""python -m fope_ext (make ext): build the C library now, or show the compiler's error."""

import os
import sys

from fope_ext import build

try:
    build.load()
except Exception as e:
    log = os.path.join(build.build_dir(), "build.log")
    if os.path.exists(log):
        with open(log) as f:
            sys.stderr.write(f.read().rstrip("\n") + "\n")
    raise SystemExit(f"fope_ext: build failed ({type(e).__name__}: {e})")
print(f"fope_ext: built {build.module_name()} in {build.build_dir()}")
