"""Our ResNets against torchvision's: names, shapes, parameter counts and outputs."""

from __future__ import annotations

import pytest
import torch
import torchvision

from retinopathy.models import BasicBlock, Bottleneck, build_model, resnet18, resnet50


@pytest.mark.parametrize("builder", [resnet18, resnet50])
def test_model_outputs_one_logit_per_grade(builder) -> None:
    model = builder(num_classes=5).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5)


@pytest.mark.parametrize(("builder", "expected"), [(resnet18, 11_689_512), (resnet50, 25_557_032)])
def test_parameter_count_matches_the_paper_models(builder, expected: int) -> None:
    assert sum(p.numel() for p in builder(num_classes=1000).parameters()) == expected


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_state_dict_loads_strictly_and_gives_equal_outputs(name: str) -> None:
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None).eval()
    ours = build_model(name, num_classes=1000).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))


def test_blocks_use_torchvision_expansions_and_projection_shortcuts() -> None:
    assert BasicBlock.expansion == 1 and Bottleneck.expansion == 4
    model = resnet50(num_classes=5)
    # layer1 changes 64 -> 256 channels at stride 1: a 1x1 projection is needed; later blocks keep identity.
    assert model.layer1[0].downsample is not None and model.layer1[1].downsample is None
    assert model.layer2[0].downsample[0].stride == (2, 2)
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert [len(getattr(resnet18(), f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]


def test_zero_init_residual_starts_blocks_as_identity() -> None:
    model = resnet18(zero_init_residual=True)
    assert all(torch.all(block.bn2.weight == 0) for block in model.layer1)


def test_unknown_architecture_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match="resnet34"):
        build_model("resnet34")
