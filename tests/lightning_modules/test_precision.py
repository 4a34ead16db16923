"""``precision: auto`` follows the hardware: each case with the capability mocked."""

from __future__ import annotations

import sys

import pytest
import torch

from lightning_modules import hardware
from lightning_modules import precision as precision_module
from lightning_modules.hardware import cpu_has_native_bf16, describe_cpu
from lightning_modules.precision import resolve_precision


def mock_cpu(monkeypatch, kernels: str, *, bf16: bool = False, amx: bool = False) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision_module, "_mps_available", lambda: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: kernels)
    flags = {"avx2", "fma"} | ({"avx512f"} if kernels == "AVX512" else set())
    flags |= {"avx512_bf16"} if bf16 else set()
    flags |= {"amx_tile", "amx_bf16"} if amx else set()
    monkeypatch.setattr(hardware, "read_cpuinfo", lambda: ("Test CPU", flags))


def mock_cuda(monkeypatch, *, bf16: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


@pytest.mark.parametrize(
    ("kernels", "bf16", "amx", "expected"),
    [
        ("AVX2", False, False, "32-true"),  # most laptops
        ("AVX512", False, False, "32-true"),  # AVX-512 without bf16 (e.g. Skylake-SP)
        ("AVX512", True, False, "bf16-mixed"),  # avx512_bf16 (Zen 4, Cooper Lake)
        ("AVX512", False, True, "bf16-mixed"),  # AMX (Sapphire Rapids)
        ("AVX2", True, False, "32-true"),  # bf16 hardware, kernels held to AVX2
        ("DEFAULT", False, False, "32-true"),  # Arm, or no vector extension
    ],
)
def test_auto_on_cpu(monkeypatch, kernels, bf16, amx, expected):
    mock_cpu(monkeypatch, kernels, bf16=bf16, amx=amx)
    choice = resolve_precision("auto", "auto")
    assert (choice.precision, choice.device) == (expected, "cpu")
    assert kernels in choice.reason
    assert choice.describe().startswith(f"precision auto -> {expected} on cpu")
    # asking for the CPU explicitly resolves the same way, even with a GPU present
    if expected == "bf16-mixed":
        mock_cuda(monkeypatch, bf16=False)
        assert resolve_precision("auto", "cpu").precision == "bf16-mixed"


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "16-mixed")])
@pytest.mark.parametrize("accelerator", ["auto", "gpu", "cuda"])
def test_auto_on_cuda(monkeypatch, bf16, expected, accelerator):
    mock_cpu(monkeypatch, "AVX2")
    mock_cuda(monkeypatch, bf16=bf16)
    choice = resolve_precision("auto", accelerator)
    assert (choice.precision, choice.device) == (expected, "cuda")


def test_auto_on_mps_and_unknown_accelerators_is_float32(monkeypatch):
    mock_cpu(monkeypatch, "AVX512", bf16=True)
    monkeypatch.setattr(precision_module, "_mps_available", lambda: True)
    assert resolve_precision("auto", "auto").precision == "32-true"
    assert resolve_precision("auto", "mps").precision == "32-true"
    # the user asked for the CPU: MPS being there does not matter
    assert resolve_precision("auto", "cpu").precision == "bf16-mixed"


@pytest.mark.parametrize("explicit", ["32-true", "bf16-mixed", "16-mixed", 64])
def test_explicit_precision_wins(monkeypatch, explicit):
    mock_cpu(monkeypatch, "AVX2")
    choice = resolve_precision(explicit, "auto")
    assert choice.precision == explicit
    assert "as configured" in choice.describe()


def test_describe_cpu_names_the_capability(monkeypatch):
    mock_cpu(monkeypatch, "AVX2", bf16=True)
    capability = hardware.cpu_capability()
    assert not cpu_has_native_bf16(capability)
    text = describe_cpu(capability)
    assert text.startswith("Test CPU (")
    assert ": AVX2 kernels, native bf16 (avx512_bf16) unused by these kernels" in text
    assert "flags avx2 fma avx512_bf16; without avx512f" in text


def test_without_cpuinfo_torch_probes_give_the_flags(monkeypatch):
    monkeypatch.setattr(hardware, "read_cpuinfo", lambda: (None, None))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    for name in ("_is_avx2_supported", "_is_avx512_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: True)
    for name in ("_is_vnni_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False)
    capability = hardware.cpu_capability()
    assert {f for f, on in capability["flags"].items() if on} == {"avx2", "avx512f", "avx512_bf16"}
    assert cpu_has_native_bf16(capability)


def test_trainer_resolves_auto_before_it_is_built(monkeypatch, caplog):
    from main import FeedbackTrainer

    mock_cpu(monkeypatch, "AVX2")
    kwargs = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    with caplog.at_level("INFO", logger="main"):
        trainer = FeedbackTrainer(accelerator="cpu", **kwargs)  # auto is the default
    assert trainer.precision == "32-true"
    assert trainer.precision_choice.requested == "auto"
    assert any("precision auto -> 32-true on cpu" in r.message for r in caplog.records)

    mock_cpu(monkeypatch, "AVX512", bf16=True)
    assert FeedbackTrainer(accelerator="cpu", precision="auto", **kwargs).precision == "bf16-mixed"
    assert FeedbackTrainer(accelerator="cpu", precision="32-true", **kwargs).precision == "32-true"


def test_command_line_precision_overrides_the_configs_auto(monkeypatch):
    from main import FeedbackCLI, FeedbackTrainer

    mock_cpu(monkeypatch, "AVX512", bf16=True)
    monkeypatch.setattr(sys, "argv", ["main.py"])
    common = ["--config", "configs/reranker.yaml", "--trainer.logger=false"]
    cli = FeedbackCLI(trainer_class=FeedbackTrainer, args=common, run=False)
    assert cli.config["trainer"]["precision"] == "auto"
    assert cli.trainer.precision == "bf16-mixed"
    cli = FeedbackCLI(
        trainer_class=FeedbackTrainer, args=[*common, "--trainer.precision=32-true"], run=False
    )
    assert cli.trainer.precision == "32-true"
