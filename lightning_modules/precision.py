"""``precision: auto``: the fastest precision the hardware runs natively, chosen at start-up.

bf16 autocast is only fast where the hardware has bf16 arithmetic. On a CPU without it (AVX2
only, as most laptops are) PyTorch emulates it, and a matmul under bf16 autocast ran ~6x slower
than in float32 on such a machine. So ``auto`` resolves, before the Trainer is built, to:

- ``bf16-mixed`` on a CUDA GPU with bf16 (``torch.cuda.is_bf16_supported()``, Ampere and later);
- ``16-mixed`` on a CUDA GPU without bf16 (with a gradient scaler, as Lightning does);
- ``bf16-mixed`` on a CPU whose kernels use AVX-512 (or AMX) *and* whose processor reports
  AVX512_BF16 or AMX (:func:`~lightning_modules.hardware.cpu_has_native_bf16`); both, because
  ``ATEN_CPU_CAPABILITY=avx2`` restricts the kernels on such a processor too;
- ``32-true`` everywhere else (AVX2 CPUs, Arm CPUs, MPS, other accelerators).

An explicit precision (YAML or command line) is used as given. The choice and its reason are
logged, and :class:`~main.FeedbackTrainer` keeps them (``precision_choice``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from lightning_modules.hardware import cpu_capability, cpu_has_native_bf16, describe_cpu

log = logging.getLogger(__name__)

AUTO = "auto"


@dataclass(frozen=True)
class PrecisionChoice:
    """What ``precision`` resolved to, on which device, and why."""

    requested: str | int | None
    precision: str | int | None
    device: str
    reason: str

    def describe(self) -> str:
        if self.requested != AUTO:
            return f"precision {self.precision} (as configured) on {self.device}"
        return f"precision auto -> {self.precision} on {self.device}: {self.reason}"


def _uses_cuda(accelerator: object) -> bool:
    name = accelerator if isinstance(accelerator, str) else type(accelerator).__name__
    name = name.lower()
    if name in ("auto", "gpu"):
        return torch.cuda.is_available()
    return "cuda" in name


def resolve_precision(precision: str | int | None, accelerator: object = "auto") -> PrecisionChoice:
    """Resolve ``auto`` for the device ``accelerator`` will run on; pass anything else through."""
    if precision != AUTO:
        device = "cuda" if _uses_cuda(accelerator) else str(accelerator)
        return PrecisionChoice(precision, precision, device, "configured")
    if _uses_cuda(accelerator):
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice(AUTO, "bf16-mixed", "cuda", "the GPU supports bf16")
        return PrecisionChoice(AUTO, "16-mixed", "cuda", "the GPU has no bf16: fp16 with a scaler")
    name = accelerator if isinstance(accelerator, str) else type(accelerator).__name__
    if name.lower() not in ("auto", "cpu") and "cpu" not in name.lower():
        return PrecisionChoice(AUTO, "32-true", name, f"no native mixed precision known for {name}")
    if name.lower() == "auto" and _mps_available():
        return PrecisionChoice(AUTO, "32-true", "mps", "mixed precision on MPS is not measured")
    capability = cpu_capability()
    if cpu_has_native_bf16(capability):
        return PrecisionChoice(AUTO, "bf16-mixed", "cpu", f"the CPU is {describe_cpu(capability)}")
    return PrecisionChoice(
        AUTO,
        "32-true",
        "cpu",
        f"bf16 would be emulated (several times slower than float32) on this CPU: "
        f"{describe_cpu(capability)}",
    )


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())
