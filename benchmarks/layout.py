"""Memory layout and optimizer implementation on this machine: what the training loop's choices buy.

Measures, for ResNet18 and ResNet50 on a fixed random batch, the images/s of one training step (forward,
backward, AdamW) and of inference, in the default layout and in channels_last, in fp32 and in bf16 autocast;
and the milliseconds of one AdamW step over each network's parameters, looped over the tensors (torch's
default on CPU), ``foreach`` and ``fused``. The project trains with fused steps, in channels_last on CUDA and
the default layout on CPU (``retinopathy.training.make_optimizer``, ``retinopathy.inference.memory_format_for``,
whose docstring has the figures behind that choice); rerun this to check it on another CPU. bf16 rows are
slow where the CPU has no native bf16 (emulated).

    python benchmarks/layout.py                  # 64 px, batch 32, as the default pipeline trains
    python benchmarks/layout.py --size 128 --steps 4
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from retinopathy.models import build_model
from retinopathy.precision import autocast, cpu_info

ARCHS = ("resnet18", "resnet50")
LAYOUTS = {"default": torch.contiguous_format, "channels_last": torch.channels_last}


def _seconds(fn, steps: int) -> float:
    """Seconds per call of ``fn`` over ``steps`` calls, after two warm-up calls."""
    for _ in range(2):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def step_rates(arch: str, layout: torch.memory_format, precision: str, *, size: int, batch: int,
               steps: int) -> tuple[float, float]:
    """Images/s of a training step (fused AdamW) and of inference for ``arch`` in ``layout`` and ``precision``."""
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = build_model(arch, num_classes=5).to(memory_format=layout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=layout)
    labels = torch.randint(0, 5, (batch,))

    def train_step() -> None:
        with autocast(device, precision):
            logits = model(images)
        loss = nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def infer() -> None:
        with autocast(device, precision):
            model(images)

    model.train()
    train = batch / _seconds(train_step, steps)
    model.eval()
    return train, batch / _seconds(infer, steps)


def optimizer_ms(arch: str, implementation: str, *, steps: int) -> float:
    """Milliseconds of one AdamW step over ``arch``'s parameters with ``implementation``."""
    torch.manual_seed(0)
    model = build_model(arch, num_classes=5)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    kwargs = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[implementation]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=5e-4, **kwargs)
    return 1000 * _seconds(optimizer.step, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per figure (after 2 warm-up steps)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_name, flags = cpu_info()
    native = sorted(flags & {"avx512_bf16", "amx_bf16"})
    print(f"CPU: {model_name}; native bf16 flags: {', '.join(native) or 'none'}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; batch {args.batch}, {args.size} px\n")
    # Every repeat measures each configuration once, the two layouts in alternating order, so a burst of load
    # elsewhere on the machine (common on shared virtual machines) hits both alike; medians are printed.
    rates: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for repeat in range(args.repeats):
        layouts = list(LAYOUTS.items()) if repeat % 2 == 0 else list(LAYOUTS.items())[::-1]
        for arch in ARCHS:
            for precision in ("fp32", "bf16"):
                for name, layout in layouts:
                    rates.setdefault((arch, precision, name), []).append(
                        step_rates(arch, layout, precision, size=args.size, batch=args.batch, steps=args.steps))
    print(f"Median of {args.repeats} repeats [min-max].\n")
    print("| network | precision | layout | train images/s | inference images/s |\n|---|---|---|---|---|")
    for (arch, precision, name), samples in rates.items():
        cells = []
        for values in zip(*samples):
            cells.append(f"{statistics.median(values):.0f} [{min(values):.0f}-{max(values):.0f}]")
        print(f"| {arch} | {precision} | {name} | {cells[0]} | {cells[1]} |")
    print("\n| network | AdamW step, looped (ms) | foreach (ms) | fused (ms) |\n|---|---|---|---|")
    for arch in ARCHS:
        cells = []
        for impl in ("loop", "foreach", "fused"):
            values = [optimizer_ms(arch, impl, steps=20) for _ in range(args.repeats)]
            cells.append(f"{statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]")
        print(f"| {arch} | " + " | ".join(cells) + " |", flush=True)

if __name__ == "__main__":
    main()
