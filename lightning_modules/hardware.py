"""What this CPU can do: the one place that reads it, for ``precision: auto``, the app's loader
and every benchmark report (a figure is only meaningful next to the machine it came from).

It imports nothing heavy: the app's loader (:mod:`lightning_modules.inference`) uses it without
torch; where the process uses torch, its kernel level and thread count are added.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from typing import Any

# /proc/cpuinfo flags that decide which kernels torch and onnxruntime can use
CPU_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
# Kernel levels (torch.backends.cpu.get_cpu_capability()) under which bf16 can be native.
BF16_CAPABLE_KERNELS = {"AVX512", "AMX", "AVX512_BF16"}
# Torch's own probes, where /proc/cpuinfo is not there to read (macOS, Windows).
_TORCH_PROBES = {
    "avx2": "_is_avx2_supported",
    "avx512f": "_is_avx512_supported",
    "avx512_vnni": "_is_vnni_supported",
    "avx512_bf16": "_is_avx512_bf16_supported",
    "amx_tile": "_is_amx_tile_supported",
}


def _torch():
    """torch if this process already uses it: the app's ONNX path must not pay for importing
    it just to describe the CPU."""
    return sys.modules.get("torch")


def read_cpuinfo() -> tuple[str | None, set[str] | None]:
    """The CPU's model name and flags from ``/proc/cpuinfo`` (``None`` where there is none)."""
    model, flags = None, None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="ignore") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key in ("flags", "Features") and flags is None:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def cpu_capability() -> dict[str, Any]:
    """Model, architecture, torch's kernel level and threads, and the :data:`CPU_FLAGS`."""
    model, flags = read_cpuinfo()
    torch = _torch()
    if flags is None and torch is not None:
        probes = {}
        for flag, name in _TORCH_PROBES.items():
            try:
                probes[flag] = bool(getattr(torch.cpu, name)())
            except Exception:  # (an older torch, or a build without cpuinfo)
                probes[flag] = False
        flags = {flag for flag, present in probes.items() if present}
    return {
        "cpu_model": model or platform.processor() or platform.machine(),
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "kernels": torch.backends.cpu.get_cpu_capability() if torch is not None else None,
        "threads": torch.get_num_threads() if torch is not None else None,
        "flags": {flag: flag in (flags or ()) for flag in CPU_FLAGS},
    }


def cpu_has_native_bf16(capability: Mapping[str, Any] | None = None) -> bool:
    """bf16 arithmetic in hardware (AVX512_BF16 or AMX) *and* kernels that use it:
    ``ATEN_CPU_CAPABILITY=avx2`` holds such a processor's kernels to AVX2, where bf16 is
    emulated."""
    c = cpu_capability() if capability is None else capability
    flags = c["flags"]
    hardware = flags.get("avx512_bf16") or flags.get("amx_bf16") or flags.get("amx_tile")
    return bool(hardware) and str(c["kernels"]).upper() in BF16_CAPABLE_KERNELS


def describe_cpu(capability: Mapping[str, Any] | None = None) -> str:
    """One line, e.g. ``AMD EPYC (x86_64): AVX2 kernels, no native bf16, 2 threads; flags
    avx2 fma; without avx512f …``."""
    c = cpu_capability() if capability is None else capability
    native = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if c["flags"].get(f)]
    bf16 = f"native bf16 ({'+'.join(native)})" if native else "no native bf16"
    if native and not cpu_has_native_bf16(c):
        bf16 += " unused by these kernels"
    present = [flag for flag, on in c["flags"].items() if on]
    absent = [flag for flag, on in c["flags"].items() if not on]
    text = f"{c['cpu_model']} ({c['machine']}): {c['kernels']} kernels, {bf16}, "
    text += f"{c['threads']} threads; flags {' '.join(present) or 'none known'}"
    return text + (f"; without {' '.join(absent)}" if absent else "")
