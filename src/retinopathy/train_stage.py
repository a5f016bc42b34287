"""Stage train@<arch>-<pretrained>-<seed>: one variant trained from its start point, best validation epoch kept.

:func:`train_variant` reads as its steps: set up the run (model, data, resume snapshot), fit it
(:func:`retinopathy.training.fit`, logging each epoch through dvclive), then finish the chosen epoch
(refit its last layer, tune its decoding) and write the model and the run's summary.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from dvclive import Live
from torch import nn
from torch.utils.data import DataLoader

from retinopathy.data import FundusDataset, build_transform, class_weights, make_loader, processed_dataset, read_stats
from retinopathy.decoding import Decoder, head_outputs
from retinopathy.distributed import Distributed, broadcast, distributed_sampler, init_distributed, shutdown_distributed
from retinopathy.inference import model_metadata, predict
from retinopathy.metrics import quadratic_weighted_kappa
from retinopathy.models import build_model, load_backbone
from retinopathy.precision import hardware, resolve_precision
from retinopathy.refit import refit_on_training_images
from retinopathy.resume import ResumeCheckpoint, fingerprint
from retinopathy.settings import TrainConfig
from retinopathy.startpoints import read_start_point
from retinopathy.training import FitResult, fit
from retinopathy.utils import save_checkpoint, seed_everything, select_device, write_json

# A resume snapshot is only continued by the same code: every module of the package counts.
PACKAGE_DIR = Path(__file__).resolve().parent
# The processed set's files a model depends on; their hashes go into the model (its data fingerprint).
DATA_FILES = ("train.csv", "val.csv", "test.csv", "stats.json")


def data_fingerprint(data_dir: str | os.PathLike[str]) -> dict[str, str]:
    """SHA-256 of each of the processed set's tables and statistics, by file name."""
    return {name: hashlib.sha256((Path(data_dir) / name).read_bytes()).hexdigest() for name in DATA_FILES}


def processed_crop(data_dir: str | os.PathLike[str]) -> dict:
    """The crop settings the processed set was made with (``crop`` in its stats.json)."""
    stats = read_stats(data_dir)
    if "crop" not in stats:
        raise ValueError(f"{Path(data_dir) / 'stats.json'} has no 'crop' settings: it predates self-describing models; "
                         "rerun the preprocess stage (dvc repro preprocess)")
    return stats["crop"]


def processed_data_source(data_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Where the processed set's images came from (``data_source`` in its stats.json: ``source`` is ``data.source``),
    or None for a set whose stats.json does not say."""
    record = read_stats(data_dir).get("data_source")
    return dict(record) if isinstance(record, dict) else None


def _in_git_but_not_dvc(start: Path) -> Path | None:
    """The git repository above ``start`` when no DVC repository is, else None."""
    for folder in (start, *start.parents):
        if (folder / ".dvc").is_dir():
            return None
        if (folder / ".git").exists():
            return folder
    return None


class EpochLog:
    """Each epoch's history row logged through dvclive into ``folder``, the epoch as its step.

    dvclive writes ``plots/metrics/<split>/<metric>.tsv`` (``train/loss``, ``val/kappa``, ...), which
    the train stage declares as plots, and ``metrics.json`` (the latest epoch). Values are rounded to
    5 decimals and carry no timestamps, so the files are the same on every rerun. No dvc.yaml, report
    or experiment is written (``dvcyaml=None``, ``report=None``, ``save_dvc_exp=False``).

    Raises:
        RuntimeError: in a git repository without DVC, where dvclive would run ``dvc init`` in it.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        repository = _in_git_but_not_dvc(Path.cwd().resolve())
        if repository is not None:
            raise RuntimeError(f"{repository} is a git repository without DVC, where dvclive would run `dvc init`: "
                               "run `dvc init` there yourself, or train without a live_dir")
        self.live = Live(str(folder), dvcyaml=None, save_dvc_exp=False, report=None)

    def __call__(self, epoch: int, row: dict[str, float]) -> None:
        self.live.step = epoch
        for name, value in row.items():
            if name != "epoch":
                split, _, metric = name.partition("_")
                self.live.log_metric(f"{split}/{metric}", round(float(value), 5))
        self.live.make_summary()

    def close(self) -> None:
        self.live.end()


@dataclass
class _Run:
    """One variant's training set-up: the model and its start, the data, and where a snapshot is kept."""

    model: nn.Module
    start: dict[str, Any]
    datasets: dict[str, FundusDataset]
    loaders: dict[str, DataLoader]
    resume: ResumeCheckpoint | None
    crop: dict
    decoder: Decoder
    data_source: dict[str, Any] | None


def _start_model(
    arch: str, pretrained: bool, config: TrainConfig, data_dir: str | os.PathLike[str],
    start_path: str | os.PathLike[str] | None,
) -> tuple[nn.Module, dict[str, Any], list[Path]]:
    """The network with its start point's backbone loaded, the start point, and the files it came from."""
    model = build_model(arch, num_classes=head_outputs(config.head), zero_init_residual=config.zero_init_residual)
    init_files: list[Path] = []
    if start_path is not None:
        start = read_start_point(start_path, arch=arch)
        init_files += sorted(Path(start_path).iterdir())
    elif pretrained:
        raise ValueError(f"a pretrained {arch} variant needs a start point with backbone weights (start_path)")
    else:  # a library caller training from scratch: the training set's statistics normalise the inputs
        stats = read_stats(data_dir)
        start = {"source": "scratch", "mean": stats["mean"], "std": stats["std"], "state_dict": None}
    if pretrained != (start["source"] != "scratch"):
        what = "has no backbone weights" if pretrained else f"holds {start['source']} weights"
        raise ValueError(f"the {'pretrained' if pretrained else 'from-scratch'} {arch} variant was given "
                         f"start point {start_path}, which {what}")
    if start["state_dict"] is not None:
        load_backbone(model, start["state_dict"], source=str(start_path))
    return model, start, init_files


def _data(
    data_dir: str | os.PathLike[str], start: dict[str, Any], config: TrainConfig, world: Distributed,
    generator: torch.Generator, device: torch.device,
) -> tuple[dict[str, FundusDataset], dict[str, DataLoader]]:
    """The three splits, augmented for training only, and their loaders (each process a share of a batch)."""
    mean, std = start["mean"], start["std"]
    train_tf = build_transform(mean=mean, std=std, train=True, hflip=config.flip, vflip=config.flip,
                               rotation=config.rotation)
    eval_tf = build_transform(mean=mean, std=std, train=False)
    datasets = {
        "train": processed_dataset(data_dir, "train", train_tf),
        **{split: processed_dataset(data_dir, split, eval_tf) for split in ("val", "test")},
    }
    train_ds = datasets["train"]
    loaders = {
        "train": make_loader(
            train_ds, batch_size=config.batch_size // world.world_size, train=True, num_workers=config.num_workers,
            generator=generator, device=device, sampler=distributed_sampler(train_ds, world, seed=config.seed),
        ),
        **{
            split: make_loader(datasets[split], batch_size=config.batch_size, train=False,
                               num_workers=config.num_workers, generator=None, device=device)
            for split in ("val", "test")
        },
    }
    return datasets, loaders


def _resume_checkpoint(
    resume_path: str | os.PathLike[str], arch: str, pretrained: bool, config: TrainConfig, device: torch.device,
    world: Distributed, datasets: dict[str, FundusDataset], data_dir: str | os.PathLike[str], init_files: list[Path],
) -> ResumeCheckpoint:
    """The resume snapshot, valid only for the same settings, data, start point and code."""
    # Tables and statistics change with any preprocessing change; image sizes guard the rest
    # cheaply (hashing every image of a real set would take minutes).
    settings = {
        "arch": arch, "pretrained": pretrained, "config": asdict(config), "device": device.type,
        "processes": world.world_size, "image_bytes": [p.stat().st_size for ds in datasets.values() for p in ds.paths],
    }
    code = sorted(PACKAGE_DIR.glob("*.py"))
    tables = [Path(data_dir) / name for name in DATA_FILES]
    return ResumeCheckpoint(resume_path, fingerprint(settings, [*tables, *init_files, *code]))


def _prepare(
    arch: str, pretrained: bool, config: TrainConfig, data_dir: str | os.PathLike[str],
    start_path: str | os.PathLike[str] | None, resume_path: str | os.PathLike[str] | None, world: Distributed,
    device: torch.device, generator: torch.Generator,
) -> _Run:
    """Check the request, then build the model, the data and the resume snapshot, in that order."""
    if config.batch_size % world.world_size:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by nproc {world.world_size}: "
                         "each process takes an equal share of every batch")
    crop = processed_crop(data_dir)  # before training, so an old processed set stops the run at once
    decoder = Decoder(head=config.head, decode=config.decode)  # checks both before any work
    model, start, init_files = _start_model(arch, pretrained, config, data_dir, start_path)
    if world.enabled:
        # Same initial weights everywhere (above), then different augmentations on each process.
        generator = seed_everything(config.seed + world.rank)
    datasets, loaders = _data(data_dir, start, config, world, generator, device)
    resume = None if resume_path is None else _resume_checkpoint(
        resume_path, arch, pretrained, config, device, world, datasets, data_dir, init_files)
    return _Run(model=model, start=start, datasets=datasets, loaders=loaders, resume=resume, crop=crop,
                decoder=decoder, data_source=processed_data_source(data_dir))


def _refit_and_decode(
    run: _Run, result: FitResult, config: TrainConfig, data_dir: str | os.PathLike[str], device: torch.device,
    weights: np.ndarray | None,
) -> tuple[dict[str, Any], Decoder]:
    """On the chosen epoch's weights: refit a classification head's last layer, then tune the decoding on validation.

    Cut-points (and a regression head's temperature) are tuned on the chosen epoch's validation outputs.
    """
    best = next(row for row in result.history if row["epoch"] == result.best_epoch)
    run.model.load_state_dict(result.best_state)
    run.model.to(device)
    if not config.refit_classifier:
        refit_record: dict = {"applied": False, "reason": "refit_classifier is false"}
    elif config.head != "classification":
        refit_record = {"applied": False, "reason": f"{config.head} head (only a classification head is refitted)"}
    else:
        refit_record = refit_on_training_images(run.model, data_dir, device, mean=run.start["mean"],
                                                std=run.start["std"], class_weights=weights, c=config.refit_c,
                                                batch_size=config.batch_size, num_workers=config.num_workers,
                                                precision=config.precision)
    val_outputs, val_labels = predict(run.model, run.loaders["val"], device, precision=config.precision,
                                      desc="val (decoding)", head=config.head)
    if refit_record["applied"]:
        refit_record["val_kappa_before"] = round(float(best["val_kappa"]), 4)
        refit_record["val_kappa_after"] = round(quadratic_weighted_kappa(val_labels, val_outputs.argmax(1)), 4)
    return refit_record, run.decoder.fitted(val_labels, val_outputs, seed=config.seed)


def _summary(
    result: FitResult, config: TrainConfig, device: torch.device, precision_reason: str, train_images: int,
    weights: np.ndarray | None, decoder: Decoder, refit_record: dict[str, Any], world: Distributed, started: float,
) -> dict[str, Any]:
    """The run's summary: the chosen epoch, what the run cost, where it ran, and how it grades."""
    best = next(row for row in result.history if row["epoch"] == result.best_epoch)
    return {
        "best_epoch": result.best_epoch,
        "val_acc": round(float(best["val_acc"]), 4),
        "val_kappa": round(float(best["val_kappa"]), 4),
        "train_seconds": round(result.seconds, 1),
        # The whole stage after imports: epochs, refit, decoding, writing (the epochs alone above).
        "seconds": round(time.perf_counter() - started, 1),
        "images_per_second": round(train_images * config.epochs / result.seconds, 1),
        "device": str(device),
        "hardware": hardware(device),
        "precision": config.precision,
        "precision_reason": precision_reason,
        # Results depend on the CPU type and the thread count (reductions are split per thread).
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_version": torch.__version__,
        "class_weighting": config.class_weighting,
        "class_weights": None if weights is None else [round(float(w), 4) for w in weights],
        "decoding": decoder.to_dict(),
        "refit": refit_record,
        **({"processes": world.world_size} if world.enabled else {}),
    }


def _save_model(
    path: str | os.PathLike[str], arch: str, pretrained: bool, run: _Run, result: FitResult, config: TrainConfig,
    decoder: Decoder, refit_record: dict[str, Any], data_dir: str | os.PathLike[str], device: torch.device,
) -> None:
    """The model file: weights plus the metadata that lets `retinopathy predict` grade a photograph with it alone."""
    mean, std = run.start["mean"], run.start["std"]
    # In the default layout, whatever layout training used (channels_last): a plain state dict for any reader.
    state = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
             for k, v in run.model.state_dict().items()}
    meta = model_metadata(arch, mean=mean, std=std, crop=run.crop, precision=config.precision,
                          data_fingerprint=data_fingerprint(data_dir), decoder=decoder, data_source=run.data_source)
    save_checkpoint(
        path,
        {**meta, "arch": arch, "pretrained": pretrained, "state_dict": state, "mean": mean, "std": std,
         "best_epoch": result.best_epoch, "config": asdict(config), "refit": refit_record,
         "precision": config.precision, "hardware": hardware(device)},
    )


def train_variant(
    arch: str,
    *,
    pretrained: bool,
    config: TrainConfig,
    data_dir: str | os.PathLike[str],
    start_path: str | os.PathLike[str] | None = None,
    model_out: str | os.PathLike[str],
    summary_out: str | os.PathLike[str],
    live_dir: str | os.PathLike[str] | None = None,
    resume_path: str | os.PathLike[str] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> dict:
    """Train one variant, keep the best validation epoch, write the model and the run's summary.

    ``live_dir`` receives the per-epoch history through dvclive (:class:`EpochLog`). Under torchrun
    (``WORLD_SIZE`` > 1) each process takes ``batch_size / processes`` of every batch, and rank 0
    alone evaluates and writes; every process returns the summary. With ``resume_path``, a snapshot
    is kept there after each epoch and continued from by the next call with the same params, data
    and code; it is deleted once the outputs are written. With ``config.refit_classifier``
    (classification heads), the chosen epoch's last layer is refitted on the frozen features of the
    un-augmented training images (:mod:`retinopathy.refit`) before cut-points are tuned.
    """
    started = time.perf_counter()
    generator = seed_everything(config.seed)
    world, dev = init_distributed(select_device(config.device))
    precision, precision_reason = resolve_precision(config.precision, dev)
    config = replace(config, precision=precision)
    try:
        # Set up: model, data, snapshot.
        run = _prepare(arch, pretrained, config, data_dir, start_path, resume_path, world, dev, generator)
        weights = class_weights(run.datasets["train"].labels, config.class_weighting)
        # Fit, logging every epoch on rank 0.
        log = EpochLog(live_dir) if live_dir is not None and world.is_main else None
        try:
            result = fit(run.model, train_loader=run.loaders["train"], val_loader=run.loaders["val"],
                         test_loader=run.loaders["test"], config=config, device=dev, class_weights=weights,
                         on_epoch=on_epoch, log=log, world=world, resume=run.resume)
        finally:
            if log is not None:
                log.close()
        summary = None
        if world.is_main:
            # Finish the chosen epoch, then write.
            refit_record, decoder = _refit_and_decode(run, result, config, data_dir, dev, weights)
            summary = _summary(result, config, dev, precision_reason, len(run.datasets["train"]), weights, decoder,
                               refit_record, world, started)
            _save_model(model_out, arch, pretrained, run, result, config, decoder, refit_record, data_dir, dev)
            write_json(summary_out, summary)
            if run.resume is not None:
                run.resume.remove()
        return broadcast(summary, world)
    finally:
        shutdown_distributed()
