"""precision: auto resolves from the hardware's flags; bf16 autocast keeps weights, optimizer state and loss in fp32."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch
from torch import nn

from retinopathy.models import resnet18
from retinopathy.precision import autocast, cpu_info, resolve_precision
from retinopathy.training import make_optimizer, make_schedule, train_one_epoch

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [({"avx2", "fma"}, "fp32"), ({"avx512f", "avx512_vnni"}, "fp32"), ({"avx512f", "avx512_bf16"}, "bf16"),
     ({"amx_bf16", "amx_tile"}, "bf16")],
)
def test_auto_takes_bf16_only_on_a_cpu_with_native_bf16(flags: set[str], expected: str) -> None:
    precision, reason = resolve_precision("auto", CPU, cpu_flags=flags)
    assert precision == expected
    assert reason.startswith("auto:") and ("bf16" in reason)


def test_an_explicit_precision_is_taken_as_given_and_fp16_needs_cuda() -> None:
    assert resolve_precision("bf16", CPU, cpu_flags=set()) == ("bf16", "asked for in params.yaml")
    assert resolve_precision("fp32", CPU, cpu_flags={"avx512_bf16"})[0] == "fp32"
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ValueError, match="'half'"):
        resolve_precision("half", CPU)


def test_cpu_info_reads_model_name_and_flags(tmp_path: Path) -> None:
    fake = tmp_path / "cpuinfo"
    fake.write_text(
        "processor\t: 0\nmodel name\t: Some CPU 9000\nflags\t\t: fpu avx2 avx512_bf16\n\n"
        "processor\t: 1\nmodel name\t: Some CPU 9000\nflags\t\t: fpu avx2 avx512_bf16\n"
    )
    assert cpu_info(fake) == ("Some CPU 9000", {"fpu", "avx2", "avx512_bf16"})
    model, flags = cpu_info(tmp_path / "missing")
    assert model and flags == set()


def test_bf16_training_step_keeps_weights_optimizer_state_and_loss_in_fp32() -> None:
    torch.manual_seed(0)
    model = resnet18(num_classes=5)
    opt = make_optimizer("adamw", model, lr=1e-3, momentum=0.9, weight_decay=1e-4)
    schedule = make_schedule("constant", opt, total_steps=1)
    batch = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))]
    before = model.conv1.weight.detach().clone()
    stats = train_one_epoch(model, batch, opt, schedule, nn.CrossEntropyLoss(), CPU, precision="bf16")
    assert torch.isfinite(torch.tensor(stats.loss))
    assert not torch.equal(before, model.conv1.weight)  # a step was taken
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(v.dtype == torch.float32 for state in opt.state.values() for v in state.values()
               if torch.is_tensor(v) and v.is_floating_point())
    with autocast(CPU, "bf16"):
        assert model(torch.randn(2, 3, 32, 32)).dtype == torch.bfloat16
    with autocast(CPU, "fp32"):
        assert model(torch.randn(2, 3, 32, 32)).dtype == torch.float32


@pytest.mark.parametrize(
    ("flags", "expected", "evidence"),
    [({"avx2", "avx512f"}, "fp32", "none of the CPU flags"), ({"avx512f", "avx512_bf16"}, "bf16", "avx512_bf16"),
     ({"amx_bf16", "amx_tile"}, "bf16", "amx_bf16")],
)
def test_auto_reads_the_cpus_own_flags_bf16_where_native_fp32_elsewhere(
    cpu_flags: Callable[[set[str]], None], flags: set[str], expected: str, evidence: str
) -> None:
    """The path every stage takes: no flags passed in, so the detection reads the CPU (here, a stand-in for it)."""
    cpu_flags(flags)
    precision, reason = resolve_precision("auto", CPU)
    assert precision == expected and evidence in reason
    assert resolve_precision("fp32", CPU)[0] == "fp32"  # an explicit choice ignores the flags

