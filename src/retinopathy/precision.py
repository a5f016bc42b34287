"""Which arithmetic a network runs in (fp32 or bf16 autocast), decided from what the hardware runs natively.

``precision: auto`` picks bf16 only where the hardware has native bf16 arithmetic: a CUDA GPU that
supports it, or a CPU with AVX512-BF16 or AMX-BF16 in its flags. Elsewhere bf16 is emulated and
slower than fp32, so ``auto`` stays fp32 on such a CPU and takes fp16 (with loss scaling) on a
GPU without bf16. Weights, optimizer state and losses stay fp32 either way:
autocast only changes the arithmetic of convolutions and matrix products.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from retinopathy.settings import PRECISIONS

# CPU flags (as /proc/cpuinfo spells them) that mean bf16 arithmetic runs natively.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_info(path: str | Path = "/proc/cpuinfo") -> tuple[str, set[str]]:
    """The CPU's model name and flags; (``platform.processor()``, empty set) where /proc/cpuinfo is missing."""
    model, flags = "", set()
    try:
        for line in Path(path).read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not model:
                model = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return model or platform.processor() or "unknown CPU", flags


def native_bf16(device: torch.device, cpu_flags: set[str] | None = None) -> tuple[bool, str]:
    """Whether ``device`` runs bf16 natively, and the evidence that decided it."""
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        return supported, f"torch.cuda.is_bf16_supported() is {supported} on {torch.cuda.get_device_name(device)}"
    flags = cpu_info()[1] if cpu_flags is None else cpu_flags
    found = [flag for flag in NATIVE_BF16_FLAGS if flag in flags]
    if found:
        return True, f"CPU flags {', '.join(found)}"
    return False, f"none of the CPU flags {', '.join(NATIVE_BF16_FLAGS)}"


def resolve_precision(requested: str, device: torch.device, cpu_flags: set[str] | None = None) -> tuple[str, str]:
    """``fp32`` or ``bf16`` for ``requested`` (auto | fp32 | bf16) on ``device``, and why.

    Raises:
        ValueError: for an unknown precision.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r}; choose one of {list(PRECISIONS)}")
    if requested == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device; on CPU choose fp32, bf16 or auto")
    if requested != "auto":
        return requested, "asked for in params.yaml"
    native, evidence = native_bf16(device, cpu_flags)
    if native:
        return "bf16", f"auto: {evidence}"
    return ("fp16" if device.type == "cuda" else "fp32"), f"auto: {evidence}"


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context for a resolved ``precision``: bf16 or fp16 autocast, or a disabled one for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    raise ValueError(f"precision must be resolved to fp32 or bf16 first, got {precision!r}")


def hardware(device: torch.device) -> str:
    """The device's model name, for the records each trained model keeps."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_info()[0]
