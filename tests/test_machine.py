"""util/machine.py: what the machine is (CPU name and flags, the GPU's peak), read in one place."""

import pytest

import configurator
from fope_ext import build
from util import machine

X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx2 avx512f avx2
"""
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd sve
"""


@pytest.mark.parametrize("cpuinfo, name, flags", [(X86, "AMD EPYC 7B13", ("avx2", "avx512f", "fpu", "sse2")),
                                                  (ARM, None, ("asimd", "fp", "sve"))])
def test_cpu_name_and_flags_are_read_from_cpuinfo(cpuinfo, name, flags, tmp_path, monkeypatch):
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    monkeypatch.setattr(machine, "CPUINFO", str(tmp_path / "cpuinfo"))
    monkeypatch.setattr(machine.platform, "processor", lambda: "aarch64")
    assert machine.cpu_name() == (name or "aarch64")  # no model name (ARM): platform's guess
    assert machine.cpu_flags() == flags


def test_without_cpuinfo_the_cpu_is_platforms_guess_and_has_no_flags(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "CPUINFO", str(tmp_path / "none"))
    monkeypatch.setattr(machine.platform, "processor", lambda: "")
    monkeypatch.setattr(machine.platform, "machine", lambda: "arm64")
    assert machine.cpu_name() == "arm64" and machine.cpu_flags() == ()


def test_the_c_library_is_built_again_on_a_cpu_with_other_flags(monkeypatch):
    # -march=native compiles for the flags: two CPUs of one model name (a VM on different hosts) get two builds
    name = build.module_name()
    monkeypatch.setattr(build, "cpu_flags", lambda: ("sse2",))
    assert build.module_name() != name


def test_configurator_still_hands_out_the_machine_helpers():
    assert configurator.describe_machine is machine.describe_machine
    assert configurator.accelerator_peak_flops is machine.accelerator_peak_flops
    assert configurator.peak_flops_of("NVIDIA H100 PCIe") == 756e12
