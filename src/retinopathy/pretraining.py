"""Where pretrained weights come from: self-supervised rotation prediction, or torchvision's ImageNet.

Self-supervision (the default) needs no network: the backbone learns to tell by how many
quarter turns an image was rotated (Gidaris et al., 2018). To answer, it must find the optic
disc, the macula and the direction of the vessel arcades, which are the structures a grader
orients by. One forward pass per image keeps it cheap enough for a CPU budget.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from retinopathy.models import ResNet, build_model
from retinopathy.training import make_optimizer, make_schedule, train_one_epoch

SOURCES = ("selfsup", "imagenet")


def backbone_state(model: ResNet) -> dict[str, torch.Tensor]:
    """The model's weights without the classifier head, on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}


def load_backbone(model: ResNet, state: dict[str, torch.Tensor], *, source: str = "checkpoint") -> None:
    """Load backbone weights strictly: every parameter but ``fc`` must be present and match in shape."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(f"{source} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def _rotate_batch(images: torch.Tensor, _labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate each image by a random multiple of 90 degrees; the multiple is the target."""
    turns = torch.randint(0, 4, (images.shape[0],), device=images.device)
    rotated = torch.stack([torch.rot90(img, int(k), dims=(1, 2)) for img, k in zip(images, turns)])
    return rotated, turns


def rotation_pretrain(
    arch: str,
    loader: DataLoader,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    momentum: float,
    optimizer: str,
    device: torch.device,
) -> tuple[ResNet, list[dict[str, float]]]:
    """Train ``arch`` to predict rotations of the loader's images (labels are ignored).

    Returns:
        The model (its ``fc`` is the 4-way rotation head) and per-epoch pretext loss/accuracy.
    """
    model = build_model(arch, num_classes=4).to(device)
    opt = make_optimizer(optimizer, model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    schedule = make_schedule("cosine", opt, total_steps=epochs * len(loader))
    criterion = nn.CrossEntropyLoss()
    history = []
    for epoch in range(1, epochs + 1):
        stats = train_one_epoch(model, loader, opt, schedule, criterion, device, desc=f"rotation {epoch}", target_fn=_rotate_batch)
        history.append({"epoch": epoch, "pretext_loss": stats.loss, "pretext_acc": stats.acc})
        print(f"pretrain epoch {epoch}: rotation loss {stats.loss:.3f} acc {stats.acc:.3f} (chance 0.25)")
    return model, history


def imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet-1k weights for ``arch``, through the weights API and the TORCH_HOME cache.

    Raises:
        FileNotFoundError: when the file is neither cached nor downloadable, naming the exact path
            to place it at and the address it comes from.
    """
    from torchvision.models import ResNet18_Weights, ResNet50_Weights

    weights = {"resnet18": ResNet18_Weights.IMAGENET1K_V1, "resnet50": ResNet50_Weights.IMAGENET1K_V1}.get(arch)
    if weights is None:
        raise ValueError(f"no ImageNet weights for architecture {arch!r}; choose resnet18 or resnet50")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    try:
        state = weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # URLError, hash mismatch, interrupted download
        raise FileNotFoundError(
            f"ImageNet weights for {arch} are not cached at {cached} and could not be downloaded ({exc}). "
            f"Download {weights.url} on a machine with network access and put it at {cached} "
            f"(the folder follows TORCH_HOME, now {os.environ.get('TORCH_HOME', '~/.cache/torch')})."
        ) from exc
    model = build_model(arch, num_classes=1000)
    model.load_state_dict(state, strict=True)  # our ResNet must match torchvision's names exactly
    return backbone_state(model)
