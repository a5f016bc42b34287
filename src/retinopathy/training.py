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
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from retinopathy.data import class_weight_values
from retinopathy.decoding import DEFAULT_CUTPOINTS, Decoder, check_head
from retinopathy.distributed import SINGLE, Distributed, broadcast, gather
from retinopathy.inference import memory_format_for, predict
from retinopathy.metrics import accuracy, quadratic_weighted_kappa
from retinopathy.precision import autocast
from retinopathy.resume import ResumeCheckpoint, rng_state, set_rng_state

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")
SELECT_ON = ("kappa", "accuracy", "loss")


@dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters (the top level of params.yaml)."""

    lr: float = 1e-3
    batch_size: int = 32
    epochs: int = 5
    weight_decay: float = 5e-4
    momentum: float = 0.9
    optimizer: str = "adamw"
    lr_schedule: str = "cosine"
    class_weighting: str = "sqrt_inverse"
    select_on: str = "kappa"
    num_workers: int = 0
    seed: int = 0
    compile: bool = False  # torch.compile the model: faster steps on CUDA after a compile warm-up
    # auto | fp32 | bf16 | fp16; train_variant resolves auto for its device (retinopathy.precision)
    precision: str = "fp32"
    sync_bn: bool = False  # under torchrun on CUDA: BatchNorm statistics over the global batch
    head: str = "classification"  # classification (5 logits, cross-entropy) | regression (1 output, smooth L1)
    decode: str = "argmax"  # argmax | expected (classification): how outputs become grades (retinopathy.decoding)


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



def class_weights(labels: Iterable[int], mode: str) -> torch.Tensor | None:
    """Loss weights per grade as a tensor (see :func:`retinopathy.data.class_weight_values`); None for ``none``."""
    values = class_weight_values(labels, mode)
    return None if values is None else torch.tensor(values, dtype=torch.float32)


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
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
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
        ``(raw, net)``: ``raw`` owns the parameters, and state dicts are read from it with their
        usual names; ``net`` is what training calls: ``raw`` itself, or ``raw`` in DDP and/or
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
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
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
    raw, labels = predict(model, loader, device, precision=precision, desc=desc, head=head)
    outputs, targets = torch.from_numpy(raw), torch.from_numpy(labels).long()
    # Classification outputs are probabilities: the loss is the NLL of their log, i.e. the cross-entropy.
    loss = (
        criterion(torch.log(outputs.clamp_min(1e-12)), targets) if head == "classification"
        else criterion(outputs, targets)
    ).item()
    preds = Decoder(head=head).grades(raw)
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
    world: Distributed = SINGLE,
    resume: ResumeCheckpoint | None = None,
) -> FitResult:
    """Train for ``config.epochs``, keep the weights of the best validation epoch.

    Test loss/accuracy are logged per epoch (the study's curves) but never used to choose.
    Under torchrun every process trains on its share of each batch, and rank 0 alone evaluates,
    keeps the history and saves snapshots; the other processes return an empty history.
    With ``resume``, a snapshot is saved after every epoch, and a matching one found at the start
    is continued from: model, optimizer, schedule, history, best weights and every random stream,
    so the run ends as it would have without the interruption.
    """
    if config.select_on not in SELECT_ON:
        raise ValueError(f"select_on {config.select_on!r}; choose one of {SELECT_ON}")
    raw, net = prepare_model(model, device, world=world, compile_model=config.compile, sync_bn=config.sync_bn)
    # Rank 0 evaluates alone, so not through DDP, whose forward may wait for the other processes.
    eval_net = raw if world.enabled else net
    optimizer = make_optimizer(
        config.optimizer, raw, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    schedule = make_schedule(config.lr_schedule, optimizer, total_steps=config.epochs * len(train_loader))
    scaler = make_scaler(device, config.precision)
    criterion = make_criterion(config.head, None if weights is None else weights.to(device))
    # Validation and test losses carry the same class weights as the training loss, so the three
    # curves measure one quantity (training's is on augmented images, in training mode).
    cpu_weights = None if weights is None else weights.to("cpu")
    eval_criterion = (
        nn.NLLLoss(weight=cpu_weights) if config.head == "classification" else WeightedSmoothL1(cpu_weights)
    )

    best_score, best_epoch, best_state = -math.inf, 0, copy.deepcopy(raw.state_dict())
    history: list[dict[str, float]] = []
    done, seconds = 0, 0.0
    # Rank 0 reads the snapshot and sends it to the others: on several machines only its disk has it.
    snapshot = broadcast(resume.load() if resume is not None and world.is_main else None, world)
    if snapshot is not None:
        raw.load_state_dict(snapshot["model"])
        optimizer.load_state_dict(snapshot["optimizer"])
        schedule.load_state_dict(snapshot["schedule"])
        if scaler is not None and snapshot.get("scaler"):
            scaler.load_state_dict(snapshot["scaler"])
        history, best_score, best_epoch = snapshot["history"], snapshot["best_score"], snapshot["best_epoch"]
        best_state = snapshot["best_state"] if snapshot["best_state"] is not None else copy.deepcopy(snapshot["model"])
        set_rng_state(snapshot["rng"][world.rank], train_loader.generator)
        done, seconds = snapshot["epoch"], snapshot["seconds"]
        if world.is_main:
            tqdm.write(f"resuming after epoch {done} of {config.epochs} from {resume.path}")

    epochs = _progress(
        range(done + 1, config.epochs + 1), world, initial=done, total=config.epochs, desc="epochs", unit="epoch"
    )
    for epoch in epochs:
        start = time.perf_counter()
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        tr = train_one_epoch(
            net, train_loader, optimizer, schedule, criterion, device, scaler=scaler, desc=f"train {epoch}",
            world=world, precision=config.precision,
        )
        row: dict[str, float] = {}
        if world.is_main:
            va = evaluate_split(
                eval_net, val_loader, device, eval_criterion, desc="val", precision=config.precision, head=config.head
            )
            row = {
                "epoch": epoch, "train_loss": tr.loss, "train_acc": tr.acc,
                "val_loss": va.loss, "val_acc": va.acc, "val_kappa": va.kappa,
            }
            if test_loader is not None:
                te = evaluate_split(
                    eval_net, test_loader, device, eval_criterion, desc="test", precision=config.precision,
                    head=config.head,
                )
                row.update(test_loss=te.loss, test_acc=te.acc, test_kappa=te.kappa)
            history.append(row)
            score = {"kappa": va.kappa, "accuracy": va.acc, "loss": -va.loss}[config.select_on]
            if score > best_score:
                best_score, best_epoch = score, epoch
                best_state = {k: v.detach().cpu().clone() for k, v in raw.state_dict().items()}
        seconds += time.perf_counter() - start
        if resume is not None:
            # Captured after evaluation, which draws from the global generator too.
            rng = gather(rng_state(train_loader.generator), world)
            if world.is_main:
                resume.save({
                    "epoch": epoch,
                    "model": raw.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "history": history,
                    "best_score": best_score,
                    "best_epoch": best_epoch,
                    # The best weights are the current ones most epochs: do not store them twice.
                    "best_state": None if best_epoch == epoch else best_state,
                    "rng": rng,
                    "seconds": seconds,
                })
        if world.is_main:
            if on_epoch is not None:
                on_epoch(epoch, row)
            tqdm.write(
                f"epoch {epoch}: train loss {tr.loss:.3f} acc {tr.acc:.3f} | "
                f"val acc {row['val_acc']:.3f} kappa {row['val_kappa']:.3f}"
                + (f" | test acc {row['test_acc']:.3f}" if test_loader is not None else "")
            )
    return FitResult(best_state=best_state, best_epoch=best_epoch, history=history, seconds=seconds)
