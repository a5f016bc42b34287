"""Where pretrained weights come from: self-supervised rotation prediction, or torchvision's ImageNet.

Self-supervision (the default) needs no network: the backbone learns to tell by how many
quarter turns an image was rotated (Gidaris et al., 2018). To answer, it must find the optic
disc, the macula and the direction of the vessel arcades, which are the structures a grader
orients by. One forward pass per image keeps it cheap enough for a CPU budget.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from PIL import Image

import pandas as pd
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader
from tqdm.auto import tqdm

from retinopathy.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_transform,
    listing,
    make_loader,
    patient_of,
    processed_dataset,
    read_stats,
)
from retinopathy.inference import memory_format_for, place
from retinopathy.models import ResNet, backbone_state, build_model
from retinopathy.precision import autocast, hardware, resolve_precision
from retinopathy.startpoints import write_start_point
from retinopathy.training import make_optimizer, make_schedule, train_one_epoch
from retinopathy.utils import seed_everything, select_device


@dataclass(frozen=True)
class PretextTraining:
    """How a pretext task (rotation or SimCLR) trains its network: the ``pretrain`` section's optimiser keys, the
    top level's ``zero_init_residual``, and the autocast arithmetic."""

    epochs: int
    lr: float
    weight_decay: float
    momentum: float
    optimizer: str
    zero_init_residual: bool = False
    precision: str = "fp32"

    def optimizer_and_schedule(
        self, model: nn.Module, steps_per_epoch: int
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """The optimiser of ``model``'s parameters and its cosine schedule over every step of every epoch."""
        opt = make_optimizer(self.optimizer, model, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        return opt, make_schedule("cosine", opt, total_steps=self.epochs * steps_per_epoch)


def _rotate_batch(images: torch.Tensor, _labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate each image by a random multiple of 90 degrees; the multiple is the target."""
    turns = torch.randint(0, 4, (images.shape[0],), device=images.device)
    rotated = images.clone()
    for k in (1, 2, 3):  # one rot90 per turn count, not one per image
        chosen = turns == k
        if chosen.any():
            rotated[chosen] = torch.rot90(images[chosen], k, dims=(2, 3))
    return rotated, turns


def rotation_pretrain(
    arch: str, loader: DataLoader, training: PretextTraining, *, device: torch.device
) -> tuple[ResNet, list[dict[str, float]]]:
    """Train ``arch`` to predict rotations of the loader's images (labels are ignored).

    Returns:
        The model (its ``fc`` is the 4-way rotation head) and per-epoch pretext loss/accuracy.
    """
    model = place(build_model(arch, num_classes=4, zero_init_residual=training.zero_init_residual), device)
    opt, schedule = training.optimizer_and_schedule(model, len(loader))
    criterion = nn.CrossEntropyLoss()
    history = []
    for epoch in range(1, training.epochs + 1):
        stats = train_one_epoch(model, loader, opt, schedule, criterion, device, desc=f"rotation {epoch}",
                                target_fn=_rotate_batch, precision=training.precision)
        history.append({"epoch": epoch, "pretext_loss": stats.loss, "pretext_acc": stats.acc})
        print(f"pretrain epoch {epoch}: rotation loss {stats.loss:.3f} acc {stats.acc:.3f} (chance 0.25)")
    return model, history


class TwoViews:
    """Wrap a transform so each image yields two independently augmented views (SimCLR's positive pair)."""

    def __init__(self, transform: "Callable[[Image.Image], torch.Tensor]") -> None:
        self.transform = transform

    def __call__(self, image: "Image.Image") -> torch.Tensor:
        return torch.stack([self.transform(image), self.transform(image)])


def contrastive_transform(size: int, *, mean: list[float], std: list[float]) -> "Callable[[Image.Image], torch.Tensor]":
    """SimCLR augmentations for fundus images: crops, flips, rotations, colour casts, blur.

    Colour and brightness jitter make the features ignore camera nuisances; crops force them to
    describe local content, where the lesions are.
    """
    from torchvision import transforms as T

    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.4, 1.0), antialias=True),
        T.RandomHorizontalFlip(),
        T.RandomVerticalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.3, 0.05)], p=0.8),
        T.RandomApply([T.GaussianBlur(3, sigma=(0.1, 1.0))], p=0.3),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised temperature-scaled cross entropy for ``z`` of shape (2N, d), pairs (i, i+N)."""
    z = nn.functional.normalize(z.float(), dim=1)
    n = z.shape[0] // 2
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))  # an embedding is not its own positive
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return nn.functional.cross_entropy(logits, targets)


def simclr_pretrain(
    arch: str,
    loader: DataLoader,
    training: PretextTraining,
    *,
    device: torch.device,
    temperature: float = 0.2,
    projection_dim: int = 128,
) -> tuple[ResNet, list[dict[str, float]]]:
    """Contrastive pretraining (Chen et al., 2020): two views of an image attract, other images repel.

    ``loader`` must yield batches of shape (N, 2, C, H, W) (see :class:`TwoViews`).

    Returns:
        The backbone model (its ``fc`` is the projection head's first layer, discarded later) and
        per-epoch contrastive loss and positive-pair retrieval accuracy.
    """
    model = build_model(arch, num_classes=projection_dim, zero_init_residual=training.zero_init_residual)
    width = model.fc.in_features
    model.fc = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, projection_dim))
    place(model, device)
    opt, schedule = training.optimizer_and_schedule(model, len(loader))
    history = []
    for epoch in range(1, training.epochs + 1):
        model.train()
        total, hits, seen = 0.0, 0, 0
        bar = tqdm(loader, desc=f"simclr {epoch}", leave=False, unit="batch", dynamic_ncols=True)
        for views, _ in bar:
            n = views.shape[0]
            x = torch.cat([views[:, 0], views[:, 1]]).to(device, non_blocking=True,
                                                          memory_format=memory_format_for(device))
            with autocast(device, training.precision):
                z = model(x)
            loss = nt_xent(z.float(), temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            with torch.no_grad():
                zn = nn.functional.normalize(z.float(), dim=1)
                sim = zn @ zn.T
                sim.fill_diagonal_(float("-inf"))
                partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(device)
                hits += (sim.argmax(1) == partner).sum().item()
            total += loss.item() * 2 * n
            seen += 2 * n
            bar.set_postfix(loss=f"{total / seen:.3f}", top1=f"{hits / seen:.3f}")
        history.append({"epoch": epoch, "pretext_loss": total / seen, "pretext_acc": hits / seen})
        print(f"pretrain epoch {epoch}: contrastive loss {total / seen:.3f}, positive found first {hits / seen:.3f}")
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


def check_pool(data_dir: str | os.PathLike[str]) -> None:
    """Refuse a processed set whose unlabelled pool holds an eye of a validation or test patient, naming each image.

    The preprocess stage never puts one there; this catches a set made otherwise, before pretraining shows
    the network the other eye of a patient that validation or test will score.
    """
    data_dir = Path(data_dir)
    pool = pd.read_csv(data_dir / "unlabeled.csv", dtype={"image": str})["image"]
    found = []
    for split in ("val", "test"):
        patients = set(pd.read_csv(data_dir / f"{split}.csv", dtype={"image": str})["image"].map(patient_of))
        found += [f"{image!r} (patient {patient_of(image)!r} is in {split})"
                  for image in pool if patient_of(image) in patients]
    if found:
        raise ValueError(f"{data_dir / 'unlabeled.csv'}: {len(found)} pool image(s) of validation or test patients; "
                         f"rerun the preprocess stage (dvc repro preprocess):{listing(found)}")


def pretrain_backbone(
    arch: str,
    *,
    source: str,
    method: str,
    data_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    scratch_out: str | os.PathLike[str] | None = None,
    epochs: int,
    lr: float,
    batch_size: int,
    optimizer: str,
    weight_decay: float,
    momentum: float,
    seed: int,
    zero_init_residual: bool = False,
    num_workers: int = 0,
    device: str = "auto",
    precision: str = "auto",
) -> None:
    """Write the start point ``out`` (backbone weights of ``arch`` and the normalisation they expect) and,
    with ``scratch_out``, the from-scratch variant's start point (no weights; the training set's statistics).

    ``precision`` (auto | fp32 | bf16 | fp16) is resolved for the device and recorded in ``out``.
    """
    stats = read_stats(data_dir)
    start = time.perf_counter()
    dev = select_device(device)
    resolved, reason = resolve_precision(precision, dev)
    # The backbone: torchvision's ImageNet weights, or a pretext task trained on the images themselves.
    if source == "imagenet":
        state, mean, std, history = imagenet_state_dict(arch), list(IMAGENET_MEAN), list(IMAGENET_STD), []
    elif source == "selfsup":
        training = PretextTraining(epochs=epochs, lr=lr, weight_decay=weight_decay, momentum=momentum,
                                   optimizer=optimizer, zero_init_residual=zero_init_residual, precision=resolved)
        generator = seed_everything(seed)
        loader = _pretext_loader(method, data_dir, stats, batch_size=batch_size, num_workers=num_workers,
                                 generator=generator, device=dev)
        pretrain = rotation_pretrain if method == "rotation" else simclr_pretrain
        model, history = pretrain(arch, loader, training, device=dev)
        state, mean, std = backbone_state(model), stats["mean"], stats["std"]
    else:
        raise ValueError(f"unknown pretrain.source {source!r}; choose selfsup or imagenet")
    # The start points, with what made them.
    seconds = time.perf_counter() - start
    record = {
        "method": method if source == "selfsup" else None, "history": history, "precision": resolved,
        "precision_reason": reason, "hardware": hardware(dev), "seconds": round(seconds, 1),
    }
    write_start_point(out, arch=arch, source=source, mean=mean, std=std, state=state, record=record)
    if scratch_out is not None:
        write_start_point(scratch_out, arch=arch, source="scratch", mean=stats["mean"], std=stats["std"])
    print(f"pretrain {arch} ({source}, {resolved}: {reason}) written to {out} in {seconds:.1f}s")


def _pretext_loader(
    method: str, data_dir: str | os.PathLike[str], stats: dict[str, Any], *, batch_size: int, num_workers: int,
    generator: torch.Generator, device: torch.device,
) -> DataLoader:
    """The shuffled loader of ``method``'s pretext task over the training images and the unlabelled pool.

    Labels are never read: the pool and the training images are used as unlabelled pictures. The pool is
    checked first (:func:`check_pool`).

    Raises:
        ValueError: for an unknown ``method``, or a pool holding an eye of a validation or test patient.
    """
    if method == "rotation":
        transform = build_transform(mean=stats["mean"], std=stats["std"], train=False)
    elif method == "simclr":
        transform = TwoViews(contrastive_transform(stats["size"], mean=stats["mean"], std=stats["std"]))
    else:
        raise ValueError(f"unknown pretrain.method {method!r}; choose rotation or simclr")
    parts = [processed_dataset(data_dir, "train", transform)]
    if (Path(data_dir) / "unlabeled.csv").is_file():
        check_pool(data_dir)
        parts.append(processed_dataset(data_dir, "unlabeled", transform, labelled=False))
    return make_loader(ConcatDataset(parts), batch_size=batch_size, train=True, num_workers=num_workers,
                       generator=generator, device=device)
