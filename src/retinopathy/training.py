"""The supervised training loop: one epoch at a time, model chosen on validation, never on test.

Also what lets one run use more hardware and survive interruption: the CUDA fast path (mixed
precision, channels_last, cuDNN autotuning, optional ``torch.compile``), DistributedDataParallel
under torchrun, and a per-epoch resume checkpoint. On a single CPU process all of it is off.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import hashlib
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from retinopathy import NUM_CLASSES
from retinopathy.metrics import accuracy, quadratic_weighted_kappa
from retinopathy.utils import save_checkpoint

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
    optimizer: str = "adamw"
    lr_schedule: str = "cosine"
    class_weighting: str = "sqrt_inverse"
    select_on: str = "kappa"
    num_workers: int = 0
    seed: int = 0
    compile: bool = False  # torch.compile the model: faster steps on CUDA after a compile warm-up
    sync_bn: bool = False  # under torchrun on CUDA: BatchNorm statistics over the global batch


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


@dataclass(frozen=True)
class Distributed:
    """Where this process sits in a torchrun job; the defaults describe a process running alone."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 evaluates, logs and writes every file."""
        return self.rank == 0


SINGLE = Distributed()


def under_torchrun() -> bool:
    """Whether this process was started by torchrun (which sets ``LOCAL_RANK`` for each worker)."""
    return "LOCAL_RANK" in os.environ


def torchrun_command(nproc: int, script: str | os.PathLike[str], args: Sequence[str]) -> list[str]:
    """The command that reruns ``script args`` as ``nproc`` processes on this machine under torchrun.

    ``--standalone`` picks a free local port, so several such runs (``dvc queue start -j N``) can
    share a machine. Multi-node runs call torchrun themselves with ``--nnodes`` and ``--rdzv-*``.
    """
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script), *args]


def _stop_with_launcher() -> None:
    """Have Linux end this worker when its torchrun dies: killed with SIGKILL, torchrun cannot stop
    its workers (each runs in a session of its own), which would otherwise train on as orphans."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def init_distributed(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join the torchrun job described by the environment: gloo on CPU, NCCL with one GPU per process.

    Returns:
        This process's place in the job (``SINGLE`` outside torchrun) and the device it should use
        (``cuda:<LOCAL_RANK>`` on CUDA).

    Raises:
        RuntimeError: when there are more processes on this machine than CUDA devices.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE, device
    world = Distributed(rank=int(os.environ["RANK"]), local_rank=int(os.environ["LOCAL_RANK"]), world_size=world_size)
    _stop_with_launcher()
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"process {world.local_rank} of this machine needs its own GPU, but torch sees {torch.cuda.device_count()}: "
                "lower nproc (or torchrun's --nproc_per_node) to the number of GPUs"
            )
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # Rank 0 evaluates alone after each epoch while the others wait in the next collective:
        # allow that more than the default 10-30 minutes on large validation sets.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=2))
    return world, device


def shutdown_distributed() -> None:
    """Leave the torchrun job, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(obj: Any, world: Distributed = SINGLE) -> Any:
    """Rank 0's ``obj`` on every process (``obj`` itself when running alone)."""
    if not world.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    train: bool,
    num_workers: int,
    generator: torch.Generator | None,
    device: torch.device,
    world: Distributed = SINGLE,
    seed: int = 0,
) -> DataLoader:
    """DataLoader with shuffling for training; pinned memory and persistent workers where they help.

    Under torchrun the training loader draws this process's share of a permutation that depends on
    ``seed`` and the epoch only (``DistributedSampler``); ``batch_size`` is then per process.
    """
    sampler = None
    if train and world.enabled:
        sampler = DistributedSampler(dataset, num_replicas=world.world_size, rank=world.rank, shuffle=True, seed=seed)
    count = len(sampler) if sampler is not None else len(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        drop_last=train and count > batch_size,
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


def make_scaler(device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler where training runs in fp16 (CUDA without bf16); None elsewhere."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.amp.GradScaler("cuda")
    return None


def prepare_model(
    model: nn.Module, device: torch.device, *, world: Distributed = SINGLE, compile_model: bool = False, sync_bn: bool = False
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
            raise ValueError("sync_bn: true needs CUDA (torch's SyncBatchNorm runs on GPUs only); set sync_bn: false for CPU runs")
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
) -> EpochStats:
    """One pass of optimisation; ``target_fn`` can rewrite (images, labels), e.g. for a pretext task.

    Under torchrun the returned loss and accuracy cover every process's share of the epoch.
    """
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    bar = _progress(loader, world, desc=desc, leave=False, unit="batch")
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
    if world.enabled:
        sums = torch.tensor([total_loss, correct, seen], dtype=torch.float64, device=device)
        dist.all_reduce(sums)
        total_loss, correct, seen = sums[0].item(), int(sums[1].item()), int(sums[2].item())
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


def fingerprint(settings: dict[str, Any], files: Iterable[str | os.PathLike[str]] = ()) -> str:
    """SHA-256 of ``settings`` (as sorted JSON) and of the bytes of each file, in the order given."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in files:
        path = Path(path)
        digest.update(f"\0{path.name}\0".encode())
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def rng_state(generator: torch.Generator | None) -> dict[str, Any]:
    """Every random stream training draws from: torch (CPU, CUDA), NumPy, Python, the loader's generator.

    NumPy's state is stored as tensors and plain numbers, so the checkpoint loads with
    ``weights_only=True``.
    """
    _, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["loader"] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"], numpy["gauss"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
    if generator is not None and "loader" in state:
        generator.set_state(state["loader"])


class ResumeCheckpoint:
    """A snapshot of an unfinished run after its last completed epoch, so a killed run carries on.

    ``key`` fingerprints everything that produced the run (params, data, initial weights, code);
    a snapshot made under another key is ignored and overwritten, so changed params start fresh.
    Writes are atomic: a kill during a save leaves the previous epoch's snapshot.
    """

    def __init__(self, path: str | os.PathLike[str], key: str) -> None:
        self.path = Path(path)
        self.key = key

    def load(self) -> dict[str, Any] | None:
        """The snapshot, or None when there is none or it belongs to other params.

        Raises:
            ValueError: naming the file when it exists but cannot be read.
        """
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated by a full disk, or written by an incompatible torch
            raise ValueError(f"cannot read resume checkpoint {self.path}: {exc}; delete it to start afresh") from exc
        if state.get("key") != self.key:
            tqdm.write(f"{self.path} was made with other params, data or code: starting afresh")
            return None
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Replace the snapshot atomically."""
        save_checkpoint(self.path, {"key": self.key, **state})

    def remove(self) -> None:
        """Delete the snapshot once the run's outputs are written (and its folder, if now empty)."""
        self.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()


def _gather(obj: Any, world: Distributed) -> list[Any]:
    """``obj`` from every process, in rank order (``[obj]`` when running alone)."""
    if not world.enabled:
        return [obj]
    out: list[Any] = [None] * world.world_size
    dist.all_gather_object(out, obj)
    return out


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
    optimizer = make_optimizer(config.optimizer, raw.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    schedule = make_schedule(config.lr_schedule, optimizer, total_steps=config.epochs * len(train_loader))
    scaler = make_scaler(device)
    criterion = nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device))
    # Evaluation losses are unweighted NLL so they compare across weighting choices.
    eval_criterion = nn.NLLLoss()

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

    epochs = _progress(range(done + 1, config.epochs + 1), world, initial=done, total=config.epochs, desc="epochs", unit="epoch")
    for epoch in epochs:
        start = time.perf_counter()
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        tr = train_one_epoch(net, train_loader, optimizer, schedule, criterion, device, scaler=scaler, desc=f"train {epoch}", world=world)
        row: dict[str, float] = {}
        if world.is_main:
            va = evaluate_split(eval_net, val_loader, device, eval_criterion, desc="val")
            row = {"epoch": epoch, "train_loss": tr.loss, "train_acc": tr.acc, "val_loss": va.loss, "val_acc": va.acc, "val_kappa": va.kappa}
            if test_loader is not None:
                te = evaluate_split(eval_net, test_loader, device, eval_criterion, desc="test")
                row.update(test_loss=te.loss, test_acc=te.acc, test_kappa=te.kappa)
            history.append(row)
            score = {"kappa": va.kappa, "accuracy": va.acc, "loss": -va.loss}[config.select_on]
            if score > best_score:
                best_score, best_epoch = score, epoch
                best_state = {k: v.detach().cpu().clone() for k, v in raw.state_dict().items()}
        seconds += time.perf_counter() - start
        if resume is not None:
            # Captured after evaluation, which draws from the global generator too.
            rng = _gather(rng_state(train_loader.generator), world)
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
                f"epoch {epoch}: train loss {tr.loss:.3f} acc {tr.acc:.3f} | val acc {row['val_acc']:.3f} kappa {row['val_kappa']:.3f}"
                + (f" | test acc {row['test_acc']:.3f}" if test_loader is not None else "")
            )
    return FitResult(best_state=best_state, best_epoch=best_epoch, history=history, seconds=seconds)
