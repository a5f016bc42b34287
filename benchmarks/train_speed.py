"""Training throughput (images/s) and peak GPU memory per architecture and input size.

Runs the project's own training path (``prepare_model``: channels_last, cuDNN autotuning,
optional torch.compile; ``train_one_epoch``: bf16/fp16 autocast, grad scaler, non-blocking copies)
on a fixed random batch already on the device, so the figure is the model's, not the disk's.
With ``--stage`` it also trains one epoch of the real ``train`` stage code on a small generated
set, to show the whole data path (DataLoader, pinned memory) runs on the device.

    python benchmarks/train_speed.py --device cuda --sizes 224 512 --batch 64 --steps 20
    python benchmarks/train_speed.py --device cpu --sizes 32 --steps 1 --warmup 1   # plumbing only
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from retinopathy.models import build_model
from retinopathy.precision import resolve_precision
from retinopathy.settings import TrainConfig
from retinopathy.training import make_optimizer, make_scaler, make_schedule, prepare_model, train_one_epoch
from retinopathy.utils import select_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    arch: str, *, size: int, batch: int, steps: int, warmup: int, device: torch.device, compile_model: bool,
    precision: str = "auto",
) -> dict:
    """Images/s over ``steps`` training steps after ``warmup`` steps, and the peak memory allocated."""
    model, net = prepare_model(build_model(arch, num_classes=5), device, compile_model=compile_model)
    where = next(model.parameters()).device
    if where.type != device.type:
        raise RuntimeError(f"{arch} parameters are on {where}, not {device}")
    optimizer = make_optimizer("sgd", model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    schedule = make_schedule("constant", optimizer, total_steps=warmup + steps)
    precision, _ = resolve_precision(precision, device)
    scaler, criterion = make_scaler(device, precision), nn.CrossEntropyLoss()
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 5, (batch,), device=device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with contextlib.redirect_stderr(io.StringIO()):  # no progress bars in the table
        start = time.perf_counter()
        train_one_epoch(net, [(images, labels)] * warmup, optimizer, schedule, criterion, device, scaler=scaler,
                        precision=precision)
        _sync(device)
        warm_seconds = time.perf_counter() - start
        start = time.perf_counter()
        stats = train_one_epoch(net, [(images, labels)] * steps, optimizer, schedule, criterion, device,
                                scaler=scaler, precision=precision)
        _sync(device)
        seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"arch": arch, "size": size, "batch": batch, "images_per_s": batch * steps / seconds, "peak_gib": peak,
            "warmup_s": warm_seconds, "loss": stats.loss, "device": str(where), "precision": precision}


def stage_check(device: str, size: int, batch: int) -> dict:
    """One epoch of ``train_variant`` (the train stage's code) on a small generated set at ``size`` px."""
    from retinopathy.embedded import write_synthetic_set
    from retinopathy.preprocessing import CropSettings, build_processed_set
    from retinopathy.settings import SyntheticSpec
    from retinopathy.sources import read_course
    from retinopathy.train_stage import train_variant

    with tempfile.TemporaryDirectory(prefix="stage-check-") as tmp:
        tmp = Path(tmp)
        spec = SyntheticSpec(seed=1, train_patients=48, test_patients=8, unlabeled_patients=1, min_size=size,
                             max_size=size + 32)
        write_synthetic_set(tmp / "raw", spec)
        build_processed_set(read_course(tmp / "raw"), out_dir=tmp / "processed", balance_path=tmp / "balance.json",
                            settings=CropSettings(size=size), val_fraction=0.25, seed=0)
        config = TrainConfig(lr=0.01, batch_size=batch, epochs=1, num_workers=2, rotation=0.0, precision="fp32",
                             device=device)
        return train_variant("resnet18", pretrained=False, config=config, data_dir=tmp / "processed", start_path=None,
                             model_out=tmp / "model.pt", summary_out=tmp / "summary.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 512])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed steps (0: skip the throughput table)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (cuDNN autotuning, compilation)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (the compile param)")
    parser.add_argument("--stage", type=int, default=0, metavar="SIZE",
                        help="also train one epoch of the train stage's code at SIZE px")
    args = parser.parse_args()

    device = select_device(args.device)
    if device.type == "cuda":
        precision = "bf16 autocast" if torch.cuda.is_bf16_supported() else "fp16 autocast + grad scaler"
        print(f"device {device}: {torch.cuda.get_device_name(device)}, {precision}, torch {torch.__version__}")
    else:
        print(f"device {device}: fp32, {torch.get_num_threads()} threads, torch {torch.__version__}")
    if args.steps > 0:
        print(f"{'arch':<9} {'size':>5} {'batch':>5} {'images/s':>9} {'peak GiB':>9} {'warm-up s':>9}  "
              f"compile={args.compile}")
    for arch in args.archs if args.steps > 0 else []:
        for size in args.sizes:
            row = measure(arch, size=size, batch=args.batch, steps=args.steps, warmup=args.warmup, device=device,
                          compile_model=args.compile)
            print(f"{arch:<9} {size:>5} {args.batch:>5} {row['images_per_s']:>9.1f} {row['peak_gib']:>9.2f} "
                  f"{row['warmup_s']:>9.1f}", flush=True)
    if args.stage:
        summary = stage_check(args.device, args.stage, args.batch)
        print(f"train stage, resnet18 at {args.stage} px, 1 epoch: {summary}")
        if select_device(args.device).type != torch.device(summary["device"]).type:
            raise RuntimeError(f"the train stage ran on {summary['device']}, not {args.device}")


if __name__ == "__main__":
    main()
