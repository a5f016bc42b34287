"""The supervised training loop: one epoch at a time, model chosen on validation, never on test."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from retinopathy import NUM_CLASSES
from retinopathy.metrics import accuracy, quadratic_weighted_kappa

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")
CLASS_WEIGHTING = ("none", "inverse", "sqrt_inverse")
SELECT_ON = ("kappa", "accuracy", "loss")


@dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters (the top level of params.yaml)."""

    lr: float = 1e-3
    batch_size: int = 32
    epochs: int = 5
    weight_decay: float = 5e-4
    momentum: float = 0.9
    optimizer: str = "sgd"
    lr_schedule: str = "cosine"
    class_weighting: str = "sqrt_inverse"
    select_on: str = "kappa"
    num_workers: int = 0
    seed: int = 0


@dataclass
class EpochStats:
    """Loss and accuracy of one pass over a split (plus kappa for evaluation passes)."""

    loss: float
    acc: float
    kappa: float = 0.0


@dataclass
class FitResult:
    """What :func:`fit` returns: the chosen weights and the per-epoch history."""

    best_state: dict[str, torch.Tensor]
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)


def make_loader(dataset: Dataset, *, batch_size: int, train: bool, num_workers: int, generator: torch.Generator | None, device: torch.device) -> DataLoader:
    """DataLoader with shuffling for training; pinned memory and persistent workers where they help."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train and len(dataset) > batch_size,
        num_workers=num_workers,
        generator=generator,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
    )


def class_weights(labels: Iterable[int], mode: str) -> torch.Tensor | None:
    """Loss weights per grade: ``inverse`` frequency, its square root (gentler), or ``none``."""
    if mode not in CLASS_WEIGHTING:
        raise ValueError(f"class_weighting {mode!r}; choose one of {CLASS_WEIGHTING}")
    if mode == "none":
        return None
    counts = np.bincount(np.asarray(list(labels), dtype=np.int64), minlength=NUM_CLASSES).astype(np.float64)
    inv = np.where(counts > 0, counts.sum() / np.maximum(counts, 1), 0.0)
    weights = np.sqrt(inv) if mode == "sqrt_inverse" else inv
    # Scale so the weighted mean over the training samples is 1: lr keeps its meaning.
    weights = weights / (weights * counts).sum() * counts.sum()
    return torch.tensor(weights, dtype=torch.float32)


def make_optimizer(name: str, parameters: Iterable[nn.Parameter], *, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """SGD with momentum (the study's choice), Adam or AdamW."""
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer {name!r}; choose one of {OPTIMIZERS}")


def make_schedule(name: str, optimizer: torch.optim.Optimizer, *, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: ``constant``, ``cosine`` decay to zero, or ``step`` (x0.1 at 50% and 75%)."""
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    if name == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / max(total_steps, 1))))
    if name == "step":
        milestones = [int(total_steps * 0.5), int(total_steps * 0.75)]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    raise ValueError(f"lr_schedule {name!r}; choose one of {SCHEDULES}")


def _autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA where supported (else fp16); a no-op context on CPU."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    criterion: nn.Module,
    device: torch.device,
    *,
    scaler: torch.amp.GradScaler | None = None,
    desc: str = "train",
    target_fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> EpochStats:
    """One pass of optimisation; ``target_fn`` can rewrite (images, labels), e.g. for a pretext task."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    bar = tqdm(loader, desc=desc, leave=False, unit="batch", dynamic_ncols=True)
    for images, labels in bar:
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        labels = torch.as_tensor(labels).to(device, non_blocking=True)
        if target_fn is not None:
            images, labels = target_fn(images, labels)
        with _autocast(device):
            logits = model(images)
            loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        schedule.step()
        total_loss += loss.item() * labels.numel()
        correct += (logits.argmax(1) == labels).sum().item()
        seen += labels.numel()
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
    return EpochStats(loss=total_loss / max(seen, 1), acc=correct / max(seen, 1))


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device, *, desc: str = "eval") -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities (N, classes) and the labels the loader gave, in loader order."""
    model.eval()
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    probs, labels = [], []
    for images, batch_labels in tqdm(loader, desc=desc, leave=False, unit="batch", dynamic_ncols=True):
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        with _autocast(device):
            logits = model(images)
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
        labels.append(torch.as_tensor(batch_labels))
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


def evaluate_split(model: nn.Module, loader: DataLoader, device: torch.device, criterion: nn.Module, *, desc: str) -> EpochStats:
    """Loss, accuracy and quadratic weighted kappa of the model on one split."""
    probs, labels = predict(model, loader, device, desc=desc)
    loss = criterion(torch.log(torch.from_numpy(probs).clamp_min(1e-12)), torch.from_numpy(labels).long()).item()
    preds = probs.argmax(1)
    return EpochStats(loss=loss, acc=accuracy(labels, preds), kappa=quadratic_weighted_kappa(labels, preds))


def fit(
    model: nn.Module,
    *,
    train_loader: DataLoader,
    val_loader: DataLoader,
    test_loader: DataLoader | None,
    config: TrainConfig,
    device: torch.device,
    weights: torch.Tensor | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Train for ``config.epochs``, keep the weights of the best validation epoch.

    Test loss/accuracy are logged per epoch (the study's curves) but never used to choose.
    """
    if config.select_on not in SELECT_ON:
        raise ValueError(f"select_on {config.select_on!r}; choose one of {SELECT_ON}")
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(config.optimizer, model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    schedule = make_schedule(config.lr_schedule, optimizer, total_steps=config.epochs * len(train_loader))
    use_scaler = device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    criterion = nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device))
    # Evaluation losses are unweighted NLL so they compare across weighting choices.
    eval_criterion = nn.NLLLoss()

    best_score, best_epoch, best_state = -math.inf, 0, copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = []
    for epoch in tqdm(range(1, config.epochs + 1), desc="epochs", unit="epoch", dynamic_ncols=True):
        tr = train_one_epoch(model, train_loader, optimizer, schedule, criterion, device, scaler=scaler, desc=f"train {epoch}")
        va = evaluate_split(model, val_loader, device, eval_criterion, desc="val")
        row = {"epoch": epoch, "train_loss": tr.loss, "train_acc": tr.acc, "val_loss": va.loss, "val_acc": va.acc, "val_kappa": va.kappa}
        if test_loader is not None:
            te = evaluate_split(model, test_loader, device, eval_criterion, desc="test")
            row.update(test_loss=te.loss, test_acc=te.acc, test_kappa=te.kappa)
        history.append(row)
        score = {"kappa": va.kappa, "accuracy": va.acc, "loss": -va.loss}[config.select_on]
        if score > best_score:
            best_score, best_epoch = score, epoch
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if on_epoch is not None:
            on_epoch(epoch, row)
        tqdm.write(
            f"epoch {epoch}: train loss {tr.loss:.3f} acc {tr.acc:.3f} | val acc {va.acc:.3f} kappa {va.kappa:.3f}"
            + (f" | test acc {row['test_acc']:.3f}" if test_loader is not None else "")
        )
    return FitResult(best_state=best_state, best_epoch=best_epoch, history=history)
