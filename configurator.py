"""
A script's config: its globals overridden from the command line, the nanoGPT way, then the two settings
that depend on the machine checked against it.

    python train.py config/laptop_rope.py --batch_size=16 --rope_scaling="{'type': 'ntk', 'factor': 4.0}"

configure: a bare argument is a Python config file whose top-level names override the defaults (in order);
`--key=value` overrides one value. Every key must already exist and keep its default's type (an int is
accepted for a float; a default of None takes None or the type the script declares in optional_types);
mistakes are one-line errors. resolve_device and resolve_dtype turn "auto" into this machine's device and
dtype, and refuse one it cannot run. (What the machine is, its CPU, GPU and peak FLOP/s, is util/machine.py.)
"""

import ast
import difflib
import types

# their home is util/machine.py; re-exported for the scripts and tests that still import them from here
from util.machine import GPU_PEAK_FLOPS, accelerator_peak_flops, describe_machine, peak_flops_of  # noqa: F401


def configure(defaults, argv, optional_types=None):
    """Returns a copy of `defaults` (name -> value) with the config files and --key=value in argv applied.
    optional_types: {name: type} for the defaults that are None (e.g. {"top_k": int})."""
    optional_types = optional_types or {}
    config = dict(defaults)
    for arg in argv:
        if arg in ("-h", "--help"):
            print("config keys (defaults):\n" + "\n".join(f"  --{k}={v!r}" for k, v in config.items()))
            raise SystemExit(0)
        if not arg.startswith("--"):
            for key, value in read_config_file(arg).items():
                config[key] = checked(defaults, key, value, arg, optional_types)
            continue
        key, eq, text = arg[2:].partition("=")
        if not eq:
            raise SystemExit(f"{arg}: write overrides as --key=value")
        config[key] = checked(defaults, key, parse(text, defaults.get(key)), arg, optional_types)
    return config


def read_config_file(path):
    try:
        with open(path) as f:
            source = f.read()
    except FileNotFoundError:
        raise SystemExit(f"config file {path} not found (arguments without -- are config files)")
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"config file {path} cannot be read ({getattr(e, 'strerror', None) or e})")
    namespace = {"__file__": path}  # so a config can build on another: exec(open(sibling).read())
    try:
        exec(compile(source, path, "exec"), namespace)
    except Exception as e:  # a config file is Python the user wrote: say where it failed, in one line
        frame = e.__traceback__.tb_next  # the config file's own frame
        line = e.lineno if isinstance(e, SyntaxError) else frame.tb_lineno if frame else "?"
        reason = e.msg if isinstance(e, SyntaxError) else " ".join(str(e).split())
        raise SystemExit(f"config file {path}, line {line}: {type(e).__name__}: {reason}")
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


def checked(defaults, key, value, source, optional_types):
    if key not in defaults:
        close = difflib.get_close_matches(key, list(defaults), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (--help lists them)"
        raise SystemExit(f"{source}: unknown config key '{key}'{hint}")
    default = defaults[key]
    if default is None:
        expected = optional_types.get(key)
        if value is None or expected is None:
            return value
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, expected) or isinstance(value, bool) and expected is not bool:
            raise SystemExit(f"{source}: {key} must be None or {expected.__name__}, got {type(value).__name__} {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not type(default):
        raise SystemExit(f"{source}: {key} must be {type(default).__name__} like its default {default!r}, "
                         f"got {type(value).__name__} {value!r}")
    return value


# -----------------------------------------------------------------------------
# the settings that depend on the machine


def resolve_device(name, local_rank=None):
    """'auto' -> cuda, mps, then cpu; a device this machine has, else a one-line error.
    local_rank: under torchrun, plain 'cuda' becomes this process's GPU."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise SystemExit(f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"device {name}: this torch ({torch.__version__}) sees no CUDA GPU; use --device=cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SystemExit(f"device {name}: this machine has {torch.cuda.device_count()} CUDA GPUs (cuda:0 ..); pick one of them")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SystemExit(f"device {name}: MPS is not available here; use --device=cpu (or auto)")
    if name == "cuda" and local_rank is not None:
        name = f"cuda:{local_rank}"
    return name


DTYPES = ("float32", "bfloat16", "float16")


def resolve_dtype(name, device, rotary_backend=None):
    """'auto' -> bfloat16 autocast on CUDA (float16 where it has none), float32 elsewhere.
    rotary_backend: the model's, when it has a rotary embedding. The C rotation kernel (CPU) takes
    float32 and bfloat16, not float16, so float16 on CPU needs the eager rotation."""
    import torch

    device_type = device.split(":")[0]
    if name == "auto":
        return "float32" if device_type != "cuda" else "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if name not in DTYPES:
        raise SystemExit(f"dtype must be auto or one of {', '.join(DTYPES)}, got {name!r}")
    if name == "float16" and device_type == "cpu" and rotary_backend in ("auto", "c"):
        raise SystemExit(f"dtype float16 on CPU: the C rotation kernel (rotary_backend={rotary_backend}) takes float32 "
                         "and bfloat16; use --dtype=bfloat16 (CPU autocast's type) or float32")
    return name


def autocast_context(device, dtype):
    """The context a forward runs in at dtype (a resolve_dtype name) on device (a name or a torch.device):
    torch.autocast for bfloat16 and float16, nothing for float32."""
    import contextlib

    import torch

    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=getattr(torch, dtype))
