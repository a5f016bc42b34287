"""The supervised training loop: one epoch at a time, model chosen on validation, never on test.

Read top to bottom: optimizer and schedule, one epoch of optimisation, one evaluation pass, and
:func:`fit`, which runs the epochs and keeps the best validation epoch. Where the run is spread
over processes (``distributed.py``) or resumed after a kill (``resume.py``), those modules do the
plumbing; on a single CPU process all of it is off.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from retinopathy.decoding import DEFAULT_CUTPOINTS, Decoder, check_head
from retinopathy.distributed import SINGLE, Distributed, broadcast, gather
from retinopathy.inference import memory_format_for, place, predict
from retinopathy.metrics import accuracy, quadratic_weighted_kappa
from retinopathy.precision import autocast, resolve_precision
from retinopathy.resume import ResumeCheckpoint, rng_state, set_rng_state
from retinopathy.settings import OPTIMIZERS, SCHEDULES, TrainConfig


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
    seconds: float = 0.0  # time spent in epochs, summed over every run that contributed (resumes)


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Parameter groups: weight decay on convolution and linear weights only.

    Decaying BatchNorm scales and biases only shrinks them towards zero, which fights the
    normalisation rather than regularising (the practice of torchvision's reference recipes).
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(
    name: str, parameters: nn.Module | Iterable[nn.Parameter], *, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """SGD with momentum (the study's choice), Adam or AdamW.

    Given a module, weight decay skips its BatchNorm parameters and biases (:func:`decay_groups`);
    given bare parameters, it applies to all of them.
    """
    if isinstance(parameters, nn.Module):
        parameters = decay_groups(parameters, weight_decay)
    # fused: one kernel per step for all parameters, on CPU as on CUDA. The default on CPU loops over the
    # tensors one by one: an AdamW step took 38 ms for ResNet18 and 53 ms for ResNet50 on 2 cores, against 6 and
    # 12 fused (benchmarks/layout.py; the same update to float rounding), where a whole ResNet18 training step
    # at batch 32 takes about 100-150 ms.
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=True)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay, fused=True)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=True)
    raise ValueError(f"optimizer {name!r}; choose one of {OPTIMIZERS}")


def make_schedule(
    name: str, optimizer: torch.optim.Optimizer, *, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: ``constant``, ``cosine`` decay to zero, or ``step`` (x0.1 at 50% and 75%)."""
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    if name == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / max(total_steps, 1)))
        )
    if name == "step":
        milestones = [int(total_steps * 0.5), int(total_steps * 0.75)]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    raise ValueError(f"lr_schedule {name!r}; choose one of {SCHEDULES}")


class WeightedSmoothL1(nn.Module):
    """Smooth L1 between a one-output head and the grade, each image weighted by its grade's class weight.

    The weighted mean (sum of w * loss over sum of w), as ``nn.CrossEntropyLoss(weight=...)`` averages,
    so the class-weighting schemes mean the same thing for both heads.
    """

    def __init__(self, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = F.smooth_l1_loss(outputs[:, 0].float(), labels.float(), reduction="none")
        if self.weight is None:
            return loss.mean()
        w = self.weight.to(loss.device)[labels.long()]
        return (w * loss).sum() / w.sum()


def make_criterion(head: str, weights: torch.Tensor | None) -> nn.Module:
    """The training loss of a head: weighted cross-entropy on logits, or weighted smooth L1 on the grade."""
    check_head(head)
    return nn.CrossEntropyLoss(weight=weights) if head == "classification" else WeightedSmoothL1(weights)


def output_grades(outputs: torch.Tensor) -> torch.Tensor:
    """Grades from raw outputs during training: argmax of logits, or the regression output cut at 0.5, 1.5, ..."""
    if outputs.shape[1] > 1:
        return outputs.argmax(1)
    return torch.bucketize(outputs[:, 0].float(), torch.tensor(DEFAULT_CUTPOINTS, device=outputs.device), right=True)


def make_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A gradient scaler where training runs in fp16 (its small range underflows gradients); None elsewhere."""
    if precision == "fp16":
        return torch.amp.GradScaler(device.type)
    return None


def prepare_model(
    model: nn.Module, device: torch.device, *, world: Distributed = SINGLE, compile_model: bool = False,
    sync_bn: bool = False,
) -> tuple[nn.Module, nn.Module]:
    """Move ``model`` to ``device`` and wrap it for speed (CUDA, compile) and scale (DDP).

    Returns:
        ``(model, net)``: ``model`` owns the parameters, and state dicts are read from it with their
        usual names; ``net`` is what training calls: ``model`` itself, or ``model`` in DDP and/or
        ``torch.compile``.

    Raises:
        ValueError: for ``sync_bn`` in a multi-process CPU run (torch's SyncBatchNorm needs GPUs).
    """
    if device.type == "cuda":
        # Input sizes are fixed: cuDNN times its convolution algorithms once and keeps the fastest.
        torch.backends.cudnn.benchmark = True
    if sync_bn and world.enabled:
        if device.type != "cuda":
            raise ValueError(
                "sync_bn: true needs CUDA (torch's SyncBatchNorm runs on GPUs only); set sync_bn: false for CPU runs"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    place(model, device)
    net: nn.Module = model
    if world.enabled:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile_model:
        net = torch.compile(net)
    return model, net


def _progress(iterable: Iterable, world: Distributed, **kwargs: Any) -> tqdm:
    """A progress bar on rank 0 only; there, ``TQDM_*`` environment variables (``TQDM_DISABLE=1``) apply."""
    if not world.is_main:
        kwargs["disable"] = True
    return tqdm(iterable, dynamic_ncols=True, **kwargs)


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
    world: Distributed = SINGLE,
    precision: str = "fp32",
) -> EpochStats:
    """One pass of optimisation; ``target_fn`` can rewrite (images, labels), e.g. for a pretext task.

    Under torchrun the returned loss and accuracy cover every process's share of the epoch.
    """
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    memory_format = memory_format_for(device)
    bar = _progress(loader, world, desc=desc, leave=False, unit="batch")
    for images, labels in bar:
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        labels = torch.as_tensor(labels).to(device, non_blocking=True)
        if target_fn is not None:
            images, labels = target_fn(images, labels)
        with autocast(device, precision):
            logits = model(images)
        # The loss in fp32 whatever the arithmetic of the network.
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
        correct += (output_grades(logits.detach()) == labels).sum().item()
        seen += labels.numel()
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
    if world.enabled:
        sums = torch.tensor([total_loss, correct, seen], dtype=torch.float64, device=device)
        dist.all_reduce(sums)
        total_loss, correct, seen = sums[0].item(), int(sums[1].item()), int(sums[2].item())
    return EpochStats(loss=total_loss / max(seen, 1), acc=correct / max(seen, 1))


def evaluate_split(
    model: nn.Module, loader: DataLoader, device: torch.device, criterion: nn.Module, *, desc: str,
    precision: str = "fp32", head: str = "classification",
) -> EpochStats:
    """Loss, accuracy and quadratic weighted kappa of the model on one split.

    Grades here use the untuned decoding (argmax, or cut-points 0.5, 1.5, ... for regression): cut-points
    are tuned once, on the chosen epoch, after training (:mod:`retinopathy.decoding`).
    """
    outputs, labels = predict(model, loader, device, precision=precision, desc=desc, head=head)
    scores, targets = torch.from_numpy(outputs), torch.from_numpy(labels).long()
    # Classification outputs are probabilities: the loss is the NLL of their log, i.e. the cross-entropy.
    loss = (
        criterion(torch.log(scores.clamp_min(1e-12)), targets) if head == "classification"
        else criterion(scores, targets)
    ).item()
    preds = Decoder(head=head).grades(outputs)
    return EpochStats(loss=loss, acc=accuracy(labels, preds), kappa=quadratic_weighted_kappa(labels, preds))


@dataclass
class _Loop:
    """What one training run steps: the model (which owns the weights), its optimiser and losses."""

    model: nn.Module
    net: nn.Module  # what training calls: the model, or the model in DDP and/or torch.compile
    eval_net: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    criterion: nn.Module
    eval_criterion: nn.Module


@dataclass
class _Progress:
    """How far a run has come: the per-epoch history, the best validation epoch so far and the time spent."""

    best_state: dict[str, torch.Tensor]
    best_score: float = -math.inf
    best_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    done: int = 0
    seconds: float = 0.0


def _build_loop(
    model: nn.Module, config: TrainConfig, device: torch.device, class_weights: torch.Tensor | None, *,
    world: Distributed, total_steps: int,
) -> _Loop:
    """Wrap the model and make its optimiser, per-step schedule, gradient scaler and losses."""
    model, net = prepare_model(model, device, world=world, compile_model=config.compile, sync_bn=config.sync_bn)
    optimizer = make_optimizer(
        config.optimizer, model, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    # Validation and test losses carry the same class weights as the training loss, so the three
    # curves measure one quantity (training's is on augmented images, in training mode).
    cpu_weights = None if class_weights is None else class_weights.to("cpu")
    return _Loop(
        model=model, net=net,
        # Rank 0 evaluates alone, so not through DDP, whose forward may wait for the other processes.
        eval_net=model if world.enabled else net,
        optimizer=optimizer,
        schedule=make_schedule(config.lr_schedule, optimizer, total_steps=total_steps),
        scaler=make_scaler(device, config.precision),
        criterion=make_criterion(config.head, None if class_weights is None else class_weights.to(device)),
        eval_criterion=(nn.NLLLoss(weight=cpu_weights) if config.head == "classification"
                        else WeightedSmoothL1(cpu_weights)),
    )


def _restore(
    loop: _Loop, resume: ResumeCheckpoint | None, world: Distributed, generator: torch.Generator | None, epochs: int
) -> _Progress:
    """Continue from a matching resume snapshot, or start afresh with the initial weights as the best."""
    progress = _Progress(best_state=copy.deepcopy(loop.model.state_dict()))
    # Rank 0 reads the snapshot and sends it to the others: on several machines only its disk has it.
    snapshot = broadcast(resume.load() if resume is not None and world.is_main else None, world)
    if snapshot is None:
        return progress
    loop.model.load_state_dict(snapshot["model"])
    loop.optimizer.load_state_dict(snapshot["optimizer"])
    loop.schedule.load_state_dict(snapshot["schedule"])
    if loop.scaler is not None and snapshot.get("scaler"):
        loop.scaler.load_state_dict(snapshot["scaler"])
    best_state = snapshot["best_state"] if snapshot["best_state"] is not None else copy.deepcopy(snapshot["model"])
    set_rng_state(snapshot["rng"][world.rank], generator)
    if world.is_main:
        tqdm.write(f"resuming after epoch {snapshot['epoch']} of {epochs} from {resume.path}")
    return _Progress(best_state=best_state, best_score=snapshot["best_score"], best_epoch=snapshot["best_epoch"],
                     history=snapshot["history"], done=snapshot["epoch"], seconds=snapshot["seconds"])


def _evaluate_epoch(
    loop: _Loop, epoch: int, tr: EpochStats, val_loader: DataLoader, test_loader: DataLoader | None,
    device: torch.device, config: TrainConfig,
) -> tuple[dict[str, float], float]:
    """The epoch's history row (train, validation and, when given, test) and its validation score."""
    def scored(loader: DataLoader, desc: str) -> EpochStats:
        return evaluate_split(loop.eval_net, loader, device, loop.eval_criterion, desc=desc,
                              precision=config.precision, head=config.head)

    va = scored(val_loader, "val")
    row = {"epoch": epoch, "train_loss": tr.loss, "train_acc": tr.acc,
           "val_loss": va.loss, "val_acc": va.acc, "val_kappa": va.kappa}
    if test_loader is not None:
        te = scored(test_loader, "test")
        row.update(test_loss=te.loss, test_acc=te.acc, test_kappa=te.kappa)
    return row, {"kappa": va.kappa, "accuracy": va.acc, "loss": -va.loss}[config.select_on]


def _save_snapshot(
    resume: ResumeCheckpoint, loop: _Loop, progress: _Progress, epoch: int, generator: torch.Generator | None,
    world: Distributed,
) -> None:
    """Keep everything the next call needs to continue after ``epoch`` as if never stopped."""
    # Captured after evaluation, which draws from the global generator too.
    rng = gather(rng_state(generator), world)
    if world.is_main:
        resume.save({
            "epoch": epoch,
            "model": loop.model.state_dict(),
            "optimizer": loop.optimizer.state_dict(),
            "schedule": loop.schedule.state_dict(),
            "scaler": loop.scaler.state_dict() if loop.scaler is not None else None,
            "history": progress.history,
            "best_score": progress.best_score,
            "best_epoch": progress.best_epoch,
            # The best weights are the current ones most epochs: do not store them twice.
            "best_state": None if progress.best_epoch == epoch else progress.best_state,
            "rng": rng,
            "seconds": progress.seconds,
        })


def _epoch_line(row: dict[str, float], tr: EpochStats) -> str:
    """One line per epoch for the console."""
    line = (f"epoch {row['epoch']}: train loss {tr.loss:.3f} acc {tr.acc:.3f} | "
            f"val acc {row['val_acc']:.3f} kappa {row['val_kappa']:.3f}")
    return line + (f" | test acc {row['test_acc']:.3f}" if "test_acc" in row else "")


def fit(
    model: nn.Module,
    *,
    train_loader: DataLoader,
    val_loader: DataLoader,
    test_loader: DataLoader | None,
    config: TrainConfig,
    device: torch.device,
    class_weights: Sequence[float] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    log: Callable[[int, dict[str, float]], None] | None = None,
    world: Distributed = SINGLE,
    resume: ResumeCheckpoint | None = None,
) -> FitResult:
    """Train for ``config.epochs``, keep the weights of the best validation epoch.

    Test loss/accuracy are logged per epoch (the study's curves) but never used to choose.
    ``class_weights`` weight the loss per grade (:func:`retinopathy.data.class_weights`).
    ``config.precision`` ``auto`` is resolved for ``device`` (:mod:`retinopathy.precision`).
    Under torchrun every process trains on its share of each batch, and rank 0 alone evaluates,
    keeps the history and saves snapshots; the other processes return an empty history.
    With ``resume``, a snapshot is saved after every epoch, and a matching one found at the start
    is continued from: model, optimizer, schedule, history, best weights and every random stream,
    so the run ends as it would have without the interruption. On rank 0, ``on_epoch`` is called
    with the row of each epoch this call trains, and ``log`` with every epoch's row, a resumed
    run's restored rows first, so a log it writes is complete.
    """
    if config.precision == "auto":
        config = replace(config, precision=resolve_precision("auto", device)[0])
    weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
    loop = _build_loop(model, config, device, weights, world=world, total_steps=config.epochs * len(train_loader))
    progress = _restore(loop, resume, world, train_loader.generator, config.epochs)
    for row in progress.history if log is not None else []:
        log(int(row["epoch"]), row)

    epochs = _progress(range(progress.done + 1, config.epochs + 1), world, initial=progress.done,
                       total=config.epochs, desc="epochs", unit="epoch")
    for epoch in epochs:
        start = time.perf_counter()
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        # One pass of optimisation on every process, then evaluation and the choice on rank 0.
        tr = train_one_epoch(loop.net, train_loader, loop.optimizer, loop.schedule, loop.criterion, device,
                             scaler=loop.scaler, desc=f"train {epoch}", world=world, precision=config.precision)
        if world.is_main:
            row, score = _evaluate_epoch(loop, epoch, tr, val_loader, test_loader, device, config)
            progress.history.append(row)
            if score > progress.best_score:
                progress.best_score, progress.best_epoch = score, epoch
                progress.best_state = {k: v.detach().cpu().clone() for k, v in loop.model.state_dict().items()}
        progress.seconds += time.perf_counter() - start
        if resume is not None:
            _save_snapshot(resume, loop, progress, epoch, train_loader.generator, world)
        if world.is_main:
            for callback in (log, on_epoch):
                if callback is not None:
                    callback(epoch, row)
            tqdm.write(_epoch_line(row, tr))
    return FitResult(best_state=progress.best_state, best_epoch=progress.best_epoch, history=progress.history,
                     seconds=progress.seconds)
