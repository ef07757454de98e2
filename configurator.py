"""
Override a script's config globals from the command line, the nanoGPT way:

    python train.py config/laptop_rope.py --batch_size=16 --rope_scaling="{'type': 'ntk', 'factor': 4.0}"

A bare argument is a Python config file whose top-level names override the defaults (in order);
`--key=value` overrides one value. Every key must already exist and keep its default's type
(an int is accepted for a float, anything for a default of None); mistakes are one-line errors.
"""

import ast
import difflib
import types


def configure(defaults, argv):
    """Returns a copy of `defaults` (name -> value) with the config files and --key=value in argv applied."""
    config = dict(defaults)
    for arg in argv:
        if arg in ("-h", "--help"):
            print("config keys (defaults):\n" + "\n".join(f"  --{k}={v!r}" for k, v in config.items()))
            raise SystemExit(0)
        if not arg.startswith("--"):
            for key, value in read_config_file(arg).items():
                config[key] = checked(defaults, key, value, source=arg)
            continue
        key, eq, text = arg[2:].partition("=")
        if not eq:
            raise SystemExit(f"{arg}: write overrides as --key=value")
        config[key] = checked(defaults, key, parse(text, defaults.get(key)), source=arg)
    return config


def read_config_file(path):
    try:
        with open(path) as f:
            source = f.read()
    except OSError:
        raise SystemExit(f"config file {path} not found (arguments without -- are config files)")
    namespace = {"__file__": path}  # so a config can build on another: exec(open(sibling).read())
    exec(compile(source, path, "exec"), namespace)
    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and not isinstance(v, (types.ModuleType, types.FunctionType, type))}


def parse(text, default):
    """Text from the command line -> a value: strings stay text, everything else is a Python literal."""
    if isinstance(default, str):
        return text
    if isinstance(default, bool) and text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # the type check below reports it unless the default is None


def checked(defaults, key, value, source):
    if key not in defaults:
        close = difflib.get_close_matches(key, list(defaults), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (--help lists them)"
        raise SystemExit(f"{source}: unknown config key '{key}'{hint}")
    default = defaults[key]
    if default is None:
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not type(default):
        raise SystemExit(f"{source}: {key} must be {type(default).__name__} like its default {default!r}, "
                         f"got {type(value).__name__} {value!r}")
    return value
