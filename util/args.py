"""
The scripts' own checks of their arguments, made before any work: a value out of range ends the script
in one line that names the flag, says what it must be and what it got (SystemExit, the repo's way).

    check_args([at_least("--steps", args.steps, 1), in_range("--depths", args.depths, 0, 1), ...])
    run_main(main, sys.argv[1:])   # Ctrl-C: one line and exit status 130, no traceback
"""

import sys


def _values(value):
    """A flag's values: a list (nargs), one value, or none (an optional flag not given)."""
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def at_least(flag, value, minimum, note=""):
    """A check: every value of the flag (None: not given, fine) is >= minimum."""
    return flag, value, all(v >= minimum for v in _values(value)), f"must be >= {minimum}{note}"


def in_range(flag, value, low, high, closed=True):
    """A check: every value is in [low, high] (closed=False: [low, high))."""
    ok = all(low <= v <= high if closed else low <= v < high for v in _values(value))
    return flag, value, ok, f"must be in [{low}, {high}{']' if closed else ')'}"


def distinct(flag, value):
    """A check: no value given twice (a seed listed twice would count as two seeds)."""
    values = _values(value)
    return flag, value, len(set(values)) == len(values), "must not list a value twice"


def check_args(checks):
    """End the script at the first (flag, value, ok, requirement) that is not ok, in one line."""
    for flag, value, ok, requirement in checks:
        if not ok:
            raise SystemExit(f"{flag} {requirement}, got {value}")


def run_main(main, *args):
    """A script's main(*args), where Ctrl-C ends it in one line with exit status 130 (128 + SIGINT), as a
    shell reports an interrupted command, not in a KeyboardInterrupt traceback."""
    try:
        return main(*args)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C)", file=sys.stderr)
        raise SystemExit(130) from None
