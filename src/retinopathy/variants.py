"""Stage train@<arch>-<pretrained>: one variant trained from its starting weights, best validation epoch kept."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from retinopathy.data import build_transform, class_weight_values, make_loader, processed_dataset, read_stats
from retinopathy.decoding import Decoder, head_outputs
from retinopathy.distributed import broadcast, distributed_sampler, init_distributed, shutdown_distributed
from retinopathy.inference import model_metadata, predict
from retinopathy.metrics import quadratic_weighted_kappa
from retinopathy.models import build_model, load_backbone
from retinopathy.precision import hardware, resolve_precision
from retinopathy.refit import refit_on_training_images
from retinopathy.resume import ResumeCheckpoint, fingerprint
from retinopathy.startpoints import read_start_point
from retinopathy.training import TrainConfig, class_weights, fit
from retinopathy.utils import save_checkpoint, seed_everything, select_device, write_csv, write_json

# A resume snapshot is only continued by the same code: every module of the package counts.
PACKAGE_DIR = Path(__file__).resolve().parent
# The processed set's files a model depends on; their hashes go into the model (its data fingerprint).
DATA_FILES = ("train.csv", "val.csv", "test.csv", "stats.json")


def data_fingerprint(data_dir: str | os.PathLike[str]) -> dict[str, str]:
    """SHA-256 of each of the processed set's tables and statistics, by file name."""
    return {name: hashlib.sha256((Path(data_dir) / name).read_bytes()).hexdigest() for name in DATA_FILES}


def crop_record(data_dir: str | os.PathLike[str]) -> dict:
    """The crop settings the processed set was made with (``crop`` in its stats.json)."""
    stats = read_stats(data_dir)
    if "crop" not in stats:
        raise ValueError(f"{Path(data_dir) / 'stats.json'} has no 'crop' settings: it predates self-describing models; "
                         "rerun the preprocess stage (dvc repro preprocess)")
    return stats["crop"]


def train_variant(
    arch: str,
    *,
    pretrained: bool,
    config: TrainConfig,
    data_dir: str | os.PathLike[str],
    start_path: str | os.PathLike[str] | None = None,
    model_out: str | os.PathLike[str],
    history_out: str | os.PathLike[str],
    summary_out: str | os.PathLike[str],
    flip: bool = True,
    rotation: float = 0.0,
    zero_init_residual: bool = False,
    device: str = "auto",
    resume_path: str | os.PathLike[str] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    refit: bool = True,
    refit_c: float = 1.0,
) -> dict:
    """Train one variant, keep the best validation epoch, write model, per-epoch history and summary.

    Under torchrun (``WORLD_SIZE`` > 1) each process takes ``batch_size / processes`` of every
    batch, and rank 0 alone evaluates and writes; every process returns the summary. With
    ``resume_path``, a snapshot is kept there after each epoch and continued from by the next call
    with the same params, data and code; it is deleted once the outputs are written.
    With ``refit`` (classification heads), the chosen epoch's last layer is refitted on the frozen
    features of the un-augmented training images (:mod:`retinopathy.refit`) before cut-points are tuned.
    """
    started = time.perf_counter()
    generator = seed_everything(config.seed)
    world, dev = init_distributed(select_device(device))
    precision, precision_reason = resolve_precision(config.precision, dev)
    config = replace(config, precision=precision)
    try:
        if config.batch_size % world.world_size:
            raise ValueError(f"batch_size {config.batch_size} must be divisible by nproc {world.world_size}: "
                             "each process takes an equal share of every batch")
        crop = crop_record(data_dir)  # before training, so an old processed set stops the run at once
        if refit and not refit_c > 0:
            raise ValueError(f"refit_c must be positive, got {refit_c!r}")
        decoder = Decoder(head=config.head, decode=config.decode)  # checks both before any work
        model = build_model(arch, num_classes=head_outputs(config.head), zero_init_residual=zero_init_residual)
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
        mean, std = start["mean"], start["std"]
        if world.enabled:
            # Same initial weights everywhere (above), then different augmentations on each process.
            generator = seed_everything(config.seed + world.rank)
        train_tf = build_transform(mean=mean, std=std, train=True, hflip=flip, vflip=flip, rotation=rotation)
        eval_tf = build_transform(mean=mean, std=std, train=False)
        datasets = {
            "train": processed_dataset(data_dir, "train", train_tf),
            **{split: processed_dataset(data_dir, split, eval_tf) for split in ("val", "test")},
        }
        train_ds = datasets["train"]
        loaders = {
            "train": make_loader(
                train_ds, batch_size=config.batch_size // world.world_size, train=True, num_workers=config.num_workers,
                generator=generator, device=dev, sampler=distributed_sampler(train_ds, world, seed=config.seed),
            ),
            **{
                split: make_loader(datasets[split], batch_size=config.batch_size, train=False,
                                   num_workers=config.num_workers, generator=None, device=dev)
                for split in ("val", "test")
            },
        }
        resume = None
        if resume_path is not None:
            # Tables and statistics change with any preprocessing change; image sizes guard the rest
            # cheaply (hashing every image of a real set would take minutes).
            settings = {
                "arch": arch, "pretrained": pretrained, "config": asdict(config), "flip": flip, "rotation": rotation,
                "zero_init_residual": zero_init_residual, "device": dev.type, "processes": world.world_size,
                "image_bytes": [p.stat().st_size for ds in datasets.values() for p in ds.paths],
            }
            code = sorted(PACKAGE_DIR.glob("*.py"))
            tables = [Path(data_dir) / name for name in ("train.csv", "val.csv", "test.csv", "stats.json")]
            resume = ResumeCheckpoint(resume_path, fingerprint(settings, [*tables, *init_files, *code]))
        weights = class_weight_values(train_ds.labels, config.class_weighting)
        result = fit(
            model,
            train_loader=loaders["train"],
            val_loader=loaders["val"],
            test_loader=loaders["test"],
            config=config,
            device=dev,
            weights=class_weights(train_ds.labels, config.class_weighting),
            on_epoch=on_epoch,
            world=world,
            resume=resume,
        )
        summary = None
        if world.is_main:
            history = pd.DataFrame(result.history)
            best = history.loc[history["epoch"] == result.best_epoch].iloc[0]
            # Cut-points (and a regression head's temperature) are tuned on the chosen epoch's validation outputs.
            model.load_state_dict(result.best_state)
            model.to(dev)
            if not refit:
                refit_record: dict = {"applied": False, "reason": "refit_classifier is false"}
            elif config.head != "classification":
                refit_record = {"applied": False,
                                "reason": f"{config.head} head (only a classification head is refitted)"}
            else:
                refit_record = refit_on_training_images(model, data_dir, dev, mean=mean, std=std,
                                                        class_weights=weights, c=refit_c,
                                                        batch_size=config.batch_size, num_workers=config.num_workers,
                                                        precision=precision)
            val_raw, val_labels = predict(model, loaders["val"], dev, precision=precision, desc="val (decoding)",
                                          head=config.head)
            if refit_record["applied"]:
                refit_record["val_kappa_before"] = round(float(best["val_kappa"]), 4)
                refit_record["val_kappa_after"] = round(quadratic_weighted_kappa(val_labels, val_raw.argmax(1)), 4)
            decoder = decoder.fitted(val_labels, val_raw, seed=config.seed)
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            summary = {
                "best_epoch": result.best_epoch,
                "val_acc": round(float(best["val_acc"]), 4),
                "val_kappa": round(float(best["val_kappa"]), 4),
                "train_seconds": round(result.seconds, 1),
                # The whole stage after imports: epochs, refit, decoding, writing (the epochs alone above).
                "seconds": round(time.perf_counter() - started, 1),
                "images_per_second": round(len(train_ds) * config.epochs / result.seconds, 1),
                "device": str(dev),
                "hardware": hardware(dev),
                "precision": precision,
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
            # Self-describing: the metadata lets `retinopathy predict` grade a raw photograph with this file alone.
            meta = model_metadata(arch, mean=mean, std=std, crop=crop, precision=precision,
                                  data_fingerprint=data_fingerprint(data_dir), decoder=decoder)
            save_checkpoint(
                model_out,
                {**meta, "arch": arch, "pretrained": pretrained, "state_dict": state, "mean": mean, "std": std,
                 "best_epoch": result.best_epoch, "config": asdict(config), "refit": refit_record,
                 "precision": precision, "hardware": hardware(dev)},
            )
            write_csv(history_out, history.round(5), sep="\t")
            write_json(summary_out, summary)
            if resume is not None:
                resume.remove()
        return broadcast(summary, world)
    finally:
        shutdown_distributed()
