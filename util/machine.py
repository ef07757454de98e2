"""
The machine numbers are made on: the CPU's name and instruction-set flags, one line naming CPU, cores, GPU
and torch for a report, and the GPUs' peak FLOP/s that train.py's MFU is measured against.

    cpu_name()                        # the model name in /proc/cpuinfo (platform's guess elsewhere)
    cpu_flags()                       # ("adx", "aes", "avx2", ...): what -march=native compiles for
    describe_machine()                # "<cpu_name>, 2 cores, torch 2.x", and the GPU where there is one
    accelerator_peak_flops("cuda:0")  # the GPU's dense bfloat16 peak by its exact name, else None

Reports (eval_length.py, experiments/) name their machine with describe_machine; fope_ext/build.py keys
its -march=native build by cpu_name and cpu_flags, so a library built for one CPU is never loaded on another.
"""

import os
import platform

CPUINFO = "/proc/cpuinfo"  # Linux's; elsewhere there is none and platform's guess names the CPU


def cpuinfo_field(*keys):
    """The value of the first /proc/cpuinfo line whose key is one of keys, or None (no such line, or not Linux)."""
    try:
        with open(CPUINFO) as f:
            for line in f:
                key, colon, value = line.partition(":")
                if colon and key.strip() in keys:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_name():
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags():
    """The CPU's instruction-set flags, sorted ("flags" on x86, "Features" on ARM); () where /proc/cpuinfo has none."""
    return tuple(sorted(set((cpuinfo_field("flags", "Features") or "").split())))


def describe_machine():
    """One line: the CPU (or GPU), the cores and the torch the numbers were made on."""
    import torch

    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu_name()}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}"


# dense bfloat16 peak FLOP/s (vendors' data sheets: half the "with sparsity" figure) by the exact name
# torch.cuda.get_device_name gives, for the MFU in train.py's log line. Matched exactly, since a substring
# would give an L40S the L4's figure and an H100 PCIe the SXM's. train.py's peak_flops gives any other.
GPU_PEAK_FLOPS = {
    "NVIDIA A100-SXM4-40GB": 312e12, "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100-PCIE-40GB": 312e12,
    "NVIDIA A100 80GB PCIe": 312e12,
    "NVIDIA H100 80GB HBM3": 989e12,  # SXM5
    "NVIDIA H100 PCIe": 756e12, "NVIDIA H100 NVL": 835e12,
    "NVIDIA H200": 989e12,  # SXM
    "NVIDIA H200 NVL": 835e12, "NVIDIA GH200 480GB": 989e12,
    "NVIDIA L4": 121e12, "NVIDIA L40S": 362e12, "NVIDIA A10G": 125e12, "NVIDIA A10": 125e12,
}


def peak_flops_of(name):
    """The table's peak for a device name (exact, ignoring case and surrounding spaces), else None."""
    table = {k.lower(): v for k, v in GPU_PEAK_FLOPS.items()}
    return table.get(" ".join(name.split()).lower())


def accelerator_peak_flops(device, given=None):
    """The peak FLOP/s MFU is measured against: `given`, else the table's for this CUDA GPU, else None
    (the log line then shows no MFU; pass --peak_flops)."""
    if given:
        return float(given)
    if not device.startswith("cuda"):
        return None
    import torch
    return peak_flops_of(torch.cuda.get_device_name(device))
