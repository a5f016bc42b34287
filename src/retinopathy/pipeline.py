"""What each stage does, as functions of typed arguments; ``stages/*.py`` only parse params and paths."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from torch.utils.data import ConcatDataset

import retinopathy.data
import retinopathy.models
import retinopathy.training
from retinopathy import GRADES
from retinopathy.data import IMAGENET_MEAN, IMAGENET_STD, build_transform, processed_dataset
from retinopathy.metrics import summarize
from retinopathy.models import build_model
from retinopathy.plotting import accuracy_curves, confusion_pair, summary_bars
from retinopathy.pretraining import (
    TwoViews,
    backbone_state,
    contrastive_transform,
    imagenet_state_dict,
    load_backbone,
    rotation_pretrain,
    simclr_pretrain,
)
from retinopathy.training import (
    ResumeCheckpoint,
    TrainConfig,
    broadcast,
    class_weights,
    fingerprint,
    fit,
    init_distributed,
    make_loader,
    predict,
    shutdown_distributed,
)
from retinopathy.utils import atomic_path, load_checkpoint, save_checkpoint, seed_everything, select_device, write_csv, write_json


def read_stats(data_dir: str | os.PathLike[str]) -> dict:
    """The processed set's ``stats.json`` (channel mean/std of train, image size)."""
    path = Path(data_dir) / "stats.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the preprocess stage first (dvc repro preprocess)")
    return json.loads(path.read_text())


def pretrain_backbone(
    arch: str,
    *,
    source: str,
    method: str,
    data_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
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
) -> None:
    """Write ``out``: backbone weights of ``arch`` and the normalisation they expect."""
    stats = read_stats(data_dir)
    start = time.perf_counter()
    if source == "imagenet":
        state, mean, std, history = imagenet_state_dict(arch), list(IMAGENET_MEAN), list(IMAGENET_STD), []
    elif source == "selfsup":
        generator = seed_everything(seed)
        dev = select_device(device)
        if method == "rotation":
            transform = build_transform(mean=stats["mean"], std=stats["std"], train=False)
        elif method == "simclr":
            transform = TwoViews(contrastive_transform(stats["size"], mean=stats["mean"], std=stats["std"]))
        else:
            raise ValueError(f"unknown pretrain.method {method!r}; choose rotation or simclr")
        # Labels are never read: the pool and the training images are used as unlabelled pictures.
        parts = [processed_dataset(data_dir, "train", transform)]
        if (Path(data_dir) / "unlabeled.csv").is_file():
            parts.append(processed_dataset(data_dir, "unlabeled", transform, labelled=False))
        loader = make_loader(ConcatDataset(parts), batch_size=batch_size, train=True, num_workers=num_workers, generator=generator, device=dev)
        common = dict(optimizer=optimizer, epochs=epochs, lr=lr, weight_decay=weight_decay, momentum=momentum, device=dev, zero_init_residual=zero_init_residual)
        if method == "rotation":
            model, history = rotation_pretrain(arch, loader, **common)
        else:
            model, history = simclr_pretrain(arch, loader, **common)
        state, mean, std = backbone_state(model), stats["mean"], stats["std"]
    else:
        raise ValueError(f"unknown pretrain.source {source!r}; choose selfsup or imagenet")
    save_checkpoint(out, {"arch": arch, "source": source, "method": method if source == "selfsup" else None, "state_dict": state, "mean": mean, "std": std, "history": history})
    print(f"pretrain {arch} ({source}) written to {out} in {time.perf_counter() - start:.1f}s")


def train_variant(
    arch: str,
    *,
    pretrained: bool,
    config: TrainConfig,
    data_dir: str | os.PathLike[str],
    pretrained_path: str | os.PathLike[str],
    model_out: str | os.PathLike[str],
    history_out: str | os.PathLike[str],
    summary_out: str | os.PathLike[str],
    flip: bool = True,
    rotation: float = 0.0,
    zero_init_residual: bool = False,
    device: str = "auto",
    resume_path: str | os.PathLike[str] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> dict:
    """Train one variant, keep the best validation epoch, write model, per-epoch history and summary.

    Under torchrun (``WORLD_SIZE`` > 1) each process takes ``batch_size / processes`` of every
    batch, and rank 0 alone evaluates and writes; every process returns the summary. With
    ``resume_path``, a snapshot is kept there after each epoch and continued from by the next call
    with the same params, data and code; it is deleted once the outputs are written.
    """
    generator = seed_everything(config.seed)
    world, dev = init_distributed(select_device(device))
    try:
        if config.batch_size % world.world_size:
            raise ValueError(f"batch_size {config.batch_size} must be divisible by nproc {world.world_size}: each process takes an equal share of every batch")
        model = build_model(arch, num_classes=len(GRADES), zero_init_residual=zero_init_residual)
        init_files: list[Path] = []
        if pretrained:
            checkpoint = load_checkpoint(pretrained_path)
            if checkpoint.get("arch") != arch:
                raise ValueError(f"{pretrained_path} holds {checkpoint.get('arch')!r} weights, not {arch!r}")
            load_backbone(model, checkpoint["state_dict"], source=str(pretrained_path))
            mean, std = checkpoint["mean"], checkpoint["std"]
            init_files.append(Path(pretrained_path))
        else:
            stats = read_stats(data_dir)
            mean, std = stats["mean"], stats["std"]
        if world.enabled:
            # Same initial weights everywhere (above), then different augmentations on each process.
            generator = seed_everything(config.seed + world.rank)
        train_tf = build_transform(mean=mean, std=std, train=True, hflip=flip, vflip=flip, rotation=rotation)
        eval_tf = build_transform(mean=mean, std=std, train=False)
        datasets = {"train": processed_dataset(data_dir, "train", train_tf), **{split: processed_dataset(data_dir, split, eval_tf) for split in ("val", "test")}}
        train_ds = datasets["train"]
        loaders = {
            "train": make_loader(
                train_ds, batch_size=config.batch_size // world.world_size, train=True, num_workers=config.num_workers,
                generator=generator, device=dev, world=world, seed=config.seed,
            ),
            **{
                split: make_loader(datasets[split], batch_size=config.batch_size, train=False, num_workers=config.num_workers, generator=None, device=dev)
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
            code = [Path(__file__), *(Path(module.__file__) for module in (retinopathy.training, retinopathy.models, retinopathy.data))]
            tables = [Path(data_dir) / name for name in ("train.csv", "val.csv", "test.csv", "stats.json")]
            resume = ResumeCheckpoint(resume_path, fingerprint(settings, [*tables, *init_files, *code]))
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
            summary = {
                "best_epoch": result.best_epoch,
                "val_acc": round(float(best["val_acc"]), 4),
                "val_kappa": round(float(best["val_kappa"]), 4),
                "train_seconds": round(result.seconds, 1),
                "images_per_second": round(len(train_ds) * config.epochs / result.seconds, 1),
                "device": str(dev),
                **({"processes": world.world_size} if world.enabled else {}),
            }
            save_checkpoint(
                model_out,
                {"arch": arch, "pretrained": pretrained, "state_dict": result.best_state, "mean": mean, "std": std, "best_epoch": result.best_epoch, "config": asdict(config)},
            )
            write_csv(history_out, history.round(5), sep="\t")
            write_json(summary_out, summary)
            if resume is not None:
                resume.remove()
        return broadcast(summary, world)
    finally:
        shutdown_distributed()


def evaluate_variant(
    *,
    model_path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    metrics_out: str | os.PathLike[str],
    predictions_out: str | os.PathLike[str],
    batch_size: int,
    device: str = "auto",
) -> dict:
    """Predict the test split with a trained model; write metrics JSON and a predictions CSV."""
    checkpoint = load_checkpoint(model_path)
    dev = select_device(device)
    model = build_model(checkpoint["arch"], num_classes=len(GRADES))
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    model.to(dev)
    dataset = processed_dataset(data_dir, "test", build_transform(mean=checkpoint["mean"], std=checkpoint["std"], train=False))
    loader = make_loader(dataset, batch_size=batch_size, train=False, num_workers=0, generator=None, device=dev)
    probs, labels = predict(model, loader, dev, desc="test")
    preds = probs.argmax(1)
    metrics = summarize(labels, preds)
    frame = pd.DataFrame({"image": dataset.names, "actual": labels, "predicted": preds})
    for grade in GRADES:
        frame[f"p{grade}"] = probs[:, grade].round(5)
    write_csv(predictions_out, frame)
    write_json(metrics_out, metrics)
    print(f"{model_path}: accuracy {metrics['accuracy']:.4f}, kappa {metrics['kappa']:.4f}, macro-F1 {metrics['macro_f1']:.4f}")
    return metrics


def make_figures(
    *,
    archs: list[str],
    eval_dir: str | os.PathLike[str],
    history_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    dpi: int,
) -> pd.DataFrame:
    """Draw the comparison figures and write a summary table of the four variants; return the table."""
    eval_dir, history_dir = Path(eval_dir), Path(history_dir)
    rows = {}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for arch in archs:
            matrices, histories = {}, {}
            for pretrained in (True, False):
                variant = f"{arch}-{str(pretrained).lower()}"
                metrics = json.loads((eval_dir / f"{variant}.json").read_text())
                cm = np.asarray(metrics["confusion"])
                matrices[pretrained] = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
                histories[pretrained] = pd.read_csv(history_dir / f"{variant}.tsv", sep="\t")
                rows[variant] = {k: metrics[k] for k in ("accuracy", "kappa", "macro_f1")}
            confusion_pair(arch, matrices, tmp / f"confusion_{arch}.png", dpi=dpi)
            accuracy_curves(arch, histories, tmp / f"accuracy_{arch}.png", dpi=dpi)
        table = pd.DataFrame.from_dict(rows, orient="index")
        summary_bars(table, tmp / "summary.png", dpi=dpi)
        table.rename_axis("variant").reset_index().to_csv(tmp / "summary.csv", index=False)
    return table
