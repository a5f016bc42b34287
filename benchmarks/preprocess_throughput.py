"""Preprocessing throughput (images/s) on camera-sized JPEGs, one worker versus all cores.

Writes ``--images`` generated fundus photographs (``--width`` x ``--height``, quality 90, a textured
circle on a noisy black border, cut at the top and bottom like many EyePACS images) to a
temporary folder, then times the preprocess stage's own ``process_images`` on them for each
worker count, with and without reduced-scale JPEG decoding, and prints a table of wall time,
images/s and CPU seconds per image (what an image costs however busy the machine is).

    python benchmarks/preprocess_throughput.py --images 60 --size 512

The files are read from the page cache after they are written, so disk reads are not measured.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from retinopathy.precision import cpu_info
from retinopathy.preprocessing import CropSettings, default_workers, process_images


def camera_photo(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A reddish textured disc whose diameter is 1.0-1.2 x the frame height, on a dark noisy border."""
    radius = height * rng.uniform(0.5, 0.6)
    cx, cy = width / 2 + rng.uniform(-0.03, 0.03) * width, height / 2 + rng.uniform(-0.02, 0.02) * height
    yy, xx = np.ogrid[:height, :width]
    dist = np.sqrt(((xx - cx) ** 2 + (yy - cy) ** 2).astype(np.float32)) / radius
    coarse = Image.fromarray(rng.integers(48, 208, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8))
    # Mottled texture (+-24 around 0) and fine sensor noise, on a retina that darkens towards the rim.
    arr = (np.asarray(coarse.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32) - 128) * 0.3
    arr += rng.standard_normal((height, width, 1), dtype=np.float32) * 3
    for channel, (centre, fall) in enumerate(((170, 60), (75, 30), (30, 10))):
        arr[..., channel] += centre - fall * dist
    arr[dist > 1] = 4
    arr = np.clip(arr, 0, 255).astype(np.uint8)
    arr[dist > 1] += rng.integers(0, 5, size=(int((dist > 1).sum()), 1), dtype=np.uint8)
    return Image.fromarray(arr)


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished worker processes.

    Unlike wall time it does not grow when other programs share the cores, so ``CPU s/image``
    gives the cost on an idle machine: ``cores / (CPU s/image)`` images/s at best.
    """
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--width", type=int, default=3000)
    parser.add_argument("--height", type=int, default=2000)
    parser.add_argument("--size", type=int, default=512, help="preprocess.size")
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="worker counts to time (default: 1 and all cores)")
    args = parser.parse_args()

    cores = default_workers()
    worker_counts = args.workers or sorted({1, cores})
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        src_dir, dst_dir = Path(tmp) / "raw", Path(tmp) / "out"
        src_dir.mkdir()
        dst_dir.mkdir()
        sources = []
        for i in range(args.images):
            path = src_dir / f"{i + 1}_{'left' if i % 2 == 0 else 'right'}.jpeg"
            camera_photo(args.width, args.height, rng).save(path, quality=90)
            sources.append(path)
        megabytes = sum(p.stat().st_size for p in sources) / len(sources) / 1e6
        pairs = [(src, dst_dir / f"{src.stem}.png") for src in sources]
        print(f"{args.images} JPEGs of {args.width}x{args.height} ({megabytes:.2f} MB each) -> {args.size} px PNG")
        load = f", load average {os.getloadavg()[0]:.1f} before timing" if hasattr(os, "getloadavg") else ""
        print(f"{cpu_info()[0]}, {cores} core(s) available{load}")
        print(f"{'workers':>7}  {'jpeg draft':>10}  {'seconds':>8}  {'images/s':>8}  {'CPU s/image':>11}")
        for draft in (True, False):
            for workers in worker_counts:
                settings = CropSettings(size=args.size, draft=draft)
                cpu, start = cpu_seconds(), time.perf_counter()
                outcomes = process_images(pairs, settings, workers=workers, progress=False)
                seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
                failed = [o.message for o in outcomes if o.kind is not None]
                if failed:
                    raise RuntimeError(f"benchmark images failed: {failed[:3]}")
                print(f"{workers:>7}  {'on' if draft else 'off':>10}  {seconds:>8.1f}  {args.images / seconds:>8.1f}  "
                      f"{cpu / args.images:>11.3f}")


if __name__ == "__main__":
    main()
