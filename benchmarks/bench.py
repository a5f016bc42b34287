"""Speed of the project's training path, measured in one run so that ratios hold on a noisy machine.

- training step (images/s) of our ResNet18/50 against torchvision's, same weights, input size and
  batch, measured interleaved (ours, theirs, theirs, ours, ...) and reported as medians;
- data loading (images/s): the training DataLoader over processed PNGs against decoding a
  camera-sized JPEG, cropping its field of view and transforming it for every item (what the
  study did every epoch), and how many times over the loader feeds the model;
- preprocessing (images/s, camera JPEG in, processed PNG out) with one worker and with all;
- multiply-adds of our ResNet18/50 at 224x224 against the ResNet paper's table.

Inputs are generated in a temporary folder, so it runs on a fresh checkout:

    make bench                      # or: python benchmarks/bench.py [--repeats 11 --steps 2]

Writes ``metrics/bench.json`` and ``metrics/bench.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from torch.utils.flop_counter import FlopCounterMode

from retinopathy.data import FundusDataset, build_transform, load_rgb, make_loader
from retinopathy.fundus import crop_to_fov
from retinopathy.models import build_model
from retinopathy.params import get, load_params
from retinopathy.precision import cpu_info, resolve_precision
from retinopathy.synthetic import render_fundus
from retinopathy.training import make_optimizer, make_schedule, prepare_model, train_one_epoch
from retinopathy.utils import atomic_path, select_device, write_json

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("resnet18", "resnet50")
# He et al. (2016), Table 1: "FLOPs" there are multiply-adds.
PAPER_MACS = {"resnet18": 1.8e9, "resnet50": 3.8e9}
STEP_TARGET, LOADER_TARGET = 0.97, 3.0
CAMERA_HEIGHT = 1944  # a 5-megapixel fundus camera (2592 x 1944); EyePACS images run from ~1.5 to 16 MP
MEAN, STD = [0.5, 0.3, 0.2], [0.25, 0.15, 0.1]  # any plausible normalisation: it costs the same


def _quiet() -> contextlib.AbstractContextManager:
    """Silence the training loop's progress bars while timing (they cost the same on both sides)."""
    return contextlib.redirect_stderr(io.StringIO())


# ---------------------------------------------------------------------------------------------
# Inputs


def camera_jpegs(folder: Path, count: int, seed: int) -> list[Path]:
    """``count`` synthetic fundus photographs at camera size, quality 90.

    Rendered at 1024 px and enlarged (rendering at full size takes seconds per image), with
    fixed-pattern sensor noise added so the JPEGs are as hard to decode as a real camera's.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    noise = None
    paths = []
    for i in range(count):
        small = render_fundus(int(rng.integers(0, 5)), rng, size=1024, eye="left" if i % 2 == 0 else "right")
        big = small.resize((small.width * CAMERA_HEIGHT // small.height, CAMERA_HEIGHT), Image.Resampling.BILINEAR)
        arr = np.asarray(big, dtype=np.int16)
        if noise is None or noise.shape != arr.shape:
            noise = rng.normal(0.0, 3.0, arr.shape).astype(np.int16)
        arr = np.clip(arr + noise * (arr > 10), 0, 255).astype(np.uint8)  # the black border stays black
        path = folder / f"{i + 1}_{'left' if i % 2 == 0 else 'right'}.jpeg"
        Image.fromarray(arr).save(path, quality=90)
        paths.append(path)
    return paths


def processed_pngs(folder: Path, jpegs: list[Path], size: int, count: int) -> pd.DataFrame:
    """``count`` processed PNGs (FOV crop at ``size``), copies of the crops of ``jpegs``; returns the label table."""
    folder.mkdir(parents=True, exist_ok=True)
    crops = []
    for path in jpegs:
        crop = folder / f"{path.stem}.png"
        crop_to_fov(load_rgb(path), size).save(crop, format="PNG")
        crops.append(crop)
    names = []
    for i in range(count):
        name = f"img{i:05d}"
        shutil.copyfile(crops[i % len(crops)], folder / f"{name}.png")
        names.append(name)
    for crop in crops:
        crop.unlink()
    return pd.DataFrame({"image": names, "level": [i % 5 for i in range(count)]})


class CameraDataset(Dataset):
    """What the study's loader did for every item of every epoch: decode the full JPEG, crop, transform."""

    def __init__(self, paths: list[Path], size: int, transform) -> None:
        self.paths, self.size, self.transform = paths, size, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(crop_to_fov(load_rgb(self.paths[index]), self.size)), index % 5


# ---------------------------------------------------------------------------------------------
# Measurements


class Trainer:
    """A model with its own optimizer and schedule, stepped by the project's training loop."""

    def __init__(self, model: nn.Module, device: torch.device, precision: str = "fp32") -> None:
        self.model, self.device, self.precision = model, device, precision
        self.optimizer = make_optimizer("sgd", model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
        self.schedule = make_schedule("constant", self.optimizer, total_steps=1)
        self.criterion = nn.CrossEntropyLoss()

    def images_per_second(self, images: torch.Tensor, labels: torch.Tensor, steps: int) -> float:
        """Images/s of ``steps`` passes of ``train_one_epoch``'s loop body on one fixed batch."""
        with _quiet():
            start = time.perf_counter()
            train_one_epoch(self.model, [(images, labels)] * steps, self.optimizer, self.schedule, self.criterion,
                            self.device, precision=self.precision)
            seconds = time.perf_counter() - start
        return len(labels) * steps / seconds


def bench_training(
    archs: tuple[str, ...], *, size: int, batch: int, repeats: int, steps: int, device: torch.device,
    precisions: tuple[str, ...] = ("fp32", "bf16"),
) -> dict:
    """Ours against torchvision's, same weights and batch, in each precision (fp32, bf16 autocast).

    Every repeat measures each (architecture, implementation, precision) once, alternating which
    implementation goes first, so a burst of load elsewhere on the machine hits all of them alike.
    """
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, 5, (batch,), generator=generator).to(device)
    models: dict[tuple[str, str, str], Trainer] = {}
    for arch in archs:
        for precision in precisions:
            ours = build_model(arch, num_classes=5)
            theirs = getattr(torchvision.models, arch)(num_classes=5)
            theirs.load_state_dict(ours.state_dict(), strict=True)
            models[arch, "ours", precision] = Trainer(prepare_model(ours, device)[1], device, precision)
            models[arch, "torchvision", precision] = Trainer(prepare_model(theirs, device)[1], device, precision)
    for trainer in models.values():  # warm-up: allocator, momentum buffers, oneDNN/cuDNN algorithm choice
        trainer.images_per_second(images, labels, 3)
    samples: dict[tuple[str, str, str], list[float]] = {key: [] for key in models}
    for r in range(repeats):
        order = ("ours", "torchvision") if r % 2 == 0 else ("torchvision", "ours")
        for arch in archs:
            for precision in precisions:
                for impl in order:
                    samples[arch, impl, precision].append(
                        models[arch, impl, precision].images_per_second(images, labels, steps)
                    )
    result: dict = {}
    for arch in archs:
        result[arch] = {}
        for precision in precisions:
            ours, theirs = samples[arch, "ours", precision], samples[arch, "torchvision", precision]
            ratios = [a / b for a, b in zip(ours, theirs)]
            result[arch][precision] = {
                "ours": statistics.median(ours),
                "torchvision": statistics.median(theirs),
                "ratio": statistics.median(ours) / statistics.median(theirs),
                "paired_ratio_min_max": [min(ratios), max(ratios)],
                "samples": {"ours": ours, "torchvision": theirs},
            }
        if "fp32" in precisions and "bf16" in precisions:
            result[arch]["bf16_over_fp32"] = result[arch]["bf16"]["ours"] / result[arch]["fp32"]["ours"]
    return result


def bf16_probe(arch: str, *, size: int, batch: int, device: torch.device, steps: int = 2) -> dict[str, float]:
    """Images/s of our ``arch`` in fp32 and in bf16 autocast, one warm-up and ``steps`` steps each: enough to
    show how far emulated bf16 falls behind, too short for a precise figure."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, 5, (batch,), generator=generator).to(device)
    out = {}
    for precision in ("fp32", "bf16"):
        trainer = Trainer(prepare_model(build_model(arch, num_classes=5), device)[1], device, precision)
        trainer.images_per_second(images, labels, 1)
        out[precision] = trainer.images_per_second(images, labels, steps)
    out["bf16_over_fp32"] = out["bf16"] / out["fp32"]
    return out


def loader_throughput(dataset: Dataset, *, batch: int, num_workers: int, epochs: int) -> float:
    """Images/s the training DataLoader delivers over ``epochs`` passes (after one warm-up pass)."""
    loader = make_loader(
        dataset, batch_size=batch, train=True, num_workers=num_workers, generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
    )
    for _ in loader:
        pass
    seen, start = 0, time.perf_counter()
    for _ in range(epochs):
        for images, _labels in loader:
            seen += len(images)
    return seen / (time.perf_counter() - start)


def preprocess_throughput(jpegs: list[Path], out: Path, size: int, count: int) -> dict[str, float]:
    """Images/s of the preprocess stage's own ``process_images`` (default settings) with 1 worker and with all cores.

    ``count`` items cycle through ``jpegs``: enough work that starting the worker pool does not dominate.
    """
    from retinopathy.preprocessing import CropSettings, default_workers, process_images

    out.mkdir(parents=True, exist_ok=True)
    pairs = [(jpegs[i % len(jpegs)], out / f"{i:05d}.png") for i in range(count)]
    result = {}
    for workers in sorted({1, default_workers()}):
        start = time.perf_counter()
        outcomes = process_images(pairs, CropSettings(size=size), workers=workers, progress=False)
        seconds = time.perf_counter() - start
        failed = [o for o in outcomes if getattr(o, "kind", None) is not None]
        if failed:
            raise RuntimeError(f"benchmark images failed to preprocess: {failed[:3]}")
        result[f"{workers} worker{'s' if workers > 1 else ''}"] = len(pairs) / seconds
    return result


def multiply_adds(arch: str, size: int) -> float:
    """Multiply-adds of one forward pass at ``size`` x ``size`` (FlopCounterMode counts 2 per MAC)."""
    model = build_model(arch, num_classes=1000).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 2


# ---------------------------------------------------------------------------------------------
# Report


def machine() -> dict:
    cpu = cpu_info()[0]  # the same /proc/cpuinfo reader that decides `precision: auto`
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    auto, reason = resolve_precision("auto", torch.device("cpu"))
    return {"cpu": cpu, "cores": cores, "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "precision_auto": auto, "precision_auto_reason": reason}


def markdown(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} core(s), {m['torch_threads']} torch threads, GPU: {m['gpu']}; "
        f"torch {m['torch']}, torchvision {m['torchvision']}, kernels {m['cpu_capability']}. Device: {s['device']}. "
        f"Command: `{report['command']}`.",
        f"`precision: auto` resolves to **{m['precision_auto']}** on this CPU ({m['precision_auto_reason']}).",
        "",
        (f"Training step, batch {s['batch']} at {s['size']} px, median of {s['repeats']} interleaved runs of "
         f"{s['steps']} steps:"),
        "",
        "| model | precision | ours (img/s) | torchvision (img/s) | ours / torchvision | target |",
        "|---|---|---|---|---|---|",
    ]
    for arch, by_precision in report["training_step"].items():
        for precision, row in by_precision.items():
            if isinstance(row, dict):
                lines.append(f"| {arch} | {precision} | {row['ours']:.1f} | {row['torchvision']:.1f} "
                             f"| {row['ratio']:.3f} | >= {STEP_TARGET} |")
    ratios = [f"| {arch} | {row['bf16_over_fp32']:.2f}x |"
              for arch, row in report["training_step"].items() if "bf16_over_fp32" in row]
    if ratios:
        lines += ["", "| model | bf16 / fp32 (ours) |", "|---|---|", *ratios]
    if report.get("bf16_probe"):
        p = report["bf16_probe"]
        lines += ["", f"bf16 is emulated on this CPU: a short probe of ResNet18 gave {p['fp32']:.1f} img/s in fp32 and "
                  f"{p['bf16']:.1f} img/s in bf16 autocast ({p['bf16_over_fp32']:.2f}x), so `auto` keeps fp32 here."]
    d = report["data_loading"]
    lines += [
        "",
        f"Data loading, training DataLoader (batch {s['batch']}, {s['num_workers']} workers, flips + rotation):",
        "",
        "| input | img/s |",
        "|---|---|",
        f"| processed {s['size']}-px PNG | {d['processed_png']:.1f} |",
        (f"| camera JPEG ({d['camera_size']}, {d['camera_megabytes']:.2f} MB), decoded + FOV-cropped every epoch "
         f"| {d['camera_jpeg']:.1f} |"),
        f"| speed-up of preprocessing once | {d['processed_png'] / d['camera_jpeg']:.1f}x |",
        "",
        "| model | model consumes (img/s) | loader delivers / model consumes | target |",
        "|---|---|---|---|",
    ]
    for arch, ratio in d["loader_over_model"].items():
        lines.append(f"| {arch} | {report['training_step'][arch]['fp32']['ours']:.1f} | {ratio:.1f}x "
                     f"| >= {LOADER_TARGET}x |")
    if report.get("preprocess"):
        lines += ["",
                  (f"Preprocessing once, camera JPEG to {s['size']}-px PNG (the preprocess stage's "
                   "`process_images`, default settings):"), "",
                  "| workers | img/s |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in report["preprocess"].items()]
    lines += ["", "Multiply-adds of one forward pass at 224x224 (1000 classes), torch FlopCounterMode / 2:", "",
              "| model | ours (x10^9) | paper (x10^9) | ours / paper |", "|---|---|---|---|"]
    for arch, row in report["macs"].items():
        lines.append(f"| {arch} | {row['ours'] / 1e9:.2f} | {row['paper'] / 1e9:.1f} "
                     f"| {row['ours'] / row['paper']:.2f} |")
    lines += ["",
              ("ResNet50's excess over the paper is torchvision's layout (v1.5: stride 2 on the 3x3 rather than "
               "the first"),
              "1x1 of each downsampling bottleneck), which our model shares so ImageNet weights load."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=str(ROOT / "params.yaml"),
                        help="where the default size, batch and augmentation come from")
    parser.add_argument("--repeats", type=int, default=11, help="interleaved measurements per model")
    parser.add_argument("--steps", type=int, default=2, help="training steps per measurement")
    parser.add_argument("--camera-images", type=int, default=16)
    parser.add_argument("--png-images", type=int, default=256)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto (training-step comparison only)")
    parser.add_argument("--out", default=str(ROOT / "metrics"), help="folder for bench.json and bench.md")
    args = parser.parse_args()

    params = load_params(args.params)
    size, batch = get(params, "preprocess.size", int), get(params, "batch_size", int)
    flip, rotation, workers = get(params, "flip", bool), get(params, "rotation", float), get(params, "num_workers", int)
    device = select_device(args.device)
    torch.manual_seed(0)
    started = time.perf_counter()
    report: dict = {
        "command": "make bench" if os.environ.get("MAKELEVEL") else " ".join(["python", *sys.argv]),
        "machine": machine(),
        "settings": {"size": size, "batch": batch, "repeats": args.repeats, "steps": args.steps,
                     "num_workers": workers, "device": str(device)},
    }

    # Where bf16 is emulated it runs an order of magnitude slower than fp32 (about 17x for ResNet18
    # on a 2-core AVX2 EPYC): one short probe says so; the full interleaved comparison is for
    # hardware where `precision: auto` would pick bf16.
    native = resolve_precision("auto", device)[0] != "fp32"
    precisions = ("fp32", "bf16") if native else ("fp32",)
    print(f"training step: ours vs torchvision, {' and '.join(precisions)}, batch {batch} at {size} px "
          f"on {device} ...", flush=True)
    report["training_step"] = bench_training(ARCHS, size=size, batch=batch, repeats=args.repeats, steps=args.steps,
                                             device=device, precisions=precisions)
    if not native:
        print("bf16 is not native here: one short bf16 probe of ResNet18 ...", flush=True)
        report["bf16_probe"] = bf16_probe("resnet18", size=size, batch=batch, device=device)

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        tmp = Path(tmp)
        print(f"data loading: generating {args.camera_images} camera-sized JPEGs and {args.png_images} "
              "processed PNGs ...", flush=True)
        jpegs = camera_jpegs(tmp / "camera", args.camera_images, seed=0)
        table = processed_pngs(tmp / "processed", jpegs, size, args.png_images)
        transform = build_transform(mean=MEAN, std=STD, train=True, hflip=flip, vflip=flip, rotation=rotation)
        png = loader_throughput(FundusDataset(table, tmp / "processed", transform), batch=batch, num_workers=workers,
                                epochs=2)
        camera = loader_throughput(CameraDataset(jpegs, size, transform), batch=batch, num_workers=workers, epochs=1)
        with Image.open(jpegs[0]) as first:
            camera_size = f"{first.width}x{first.height}"
        report["data_loading"] = {
            "processed_png": png,
            "camera_jpeg": camera,
            "camera_size": camera_size,
            "camera_megabytes": sum(p.stat().st_size for p in jpegs) / len(jpegs) / 1e6,
            "loader_over_model": {arch: png / report["training_step"][arch]["fp32"]["ours"] for arch in ARCHS},
        }
        print("preprocessing: 1 worker and all cores ...", flush=True)
        report["preprocess"] = preprocess_throughput(jpegs, tmp / "preprocessed", size, count=96)

    report["macs"] = {arch: {"ours": multiply_adds(arch, 224), "paper": PAPER_MACS[arch]} for arch in ARCHS}
    report["seconds"] = round(time.perf_counter() - started, 1)

    out = Path(args.out)
    write_json(out / "bench.json", report)
    text = markdown(report)
    with atomic_path(out / "bench.md") as tmp_md:
        tmp_md.write_text(text)
    print()
    print(text)
    print(f"written {out / 'bench.json'} and {out / 'bench.md'} in {report['seconds']} s")


if __name__ == "__main__":
    main()
