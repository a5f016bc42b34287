"""What each stage script pays before its own work: interpreter start-up plus its imports.

Runs ``python stages/<name>.py --help`` (argparse exits right after the module-level imports) ``--repeats``
times per stage, prints the median wall seconds and which heavy libraries the stage loaded. A stage that
never touches a tensor should load no torch; one that draws no figure, no matplotlib.

    python benchmarks/stage_imports.py --repeats 5

The work a stage imports lazily (scikit-learn for a ROC curve, scipy.stats for an interval) is not
counted here: it is paid only where the stage uses it.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from retinopathy.precision import NATIVE_BF16_FLAGS, cpu_info

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["synthesize", "preprocess", "pretrain", "train", "evaluate", "compare", "plot", "report"]
HEAVY = ("torch", "torchvision", "sklearn", "scipy.stats", "matplotlib", "pandas", "onnxruntime", "torchcam")

PROBE = """
import runpy, sys
sys.argv = [{script!r}, "--help"]
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit:
    pass
print("LOADED", ",".join(m for m in {heavy!r} if m in sys.modules))
"""


def measure(name: str, repeats: int) -> tuple[float, str]:
    """Median wall seconds of ``stages/<name>.py --help`` and the heavy modules it loaded."""
    script = str(ROOT / "stages" / f"{name}.py")
    code = PROBE.format(script=script, heavy=HEAVY)
    times, loaded = [], ""
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - start)
        loaded = next(line for line in done.stdout.splitlines() if line.startswith("LOADED")).split(" ", 1)[-1]
    return statistics.median(times), loaded.strip() or "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model, flags = cpu_info()
    native = ", ".join(sorted(flags & set(NATIVE_BF16_FLAGS))) or "none"
    print(f"Machine: {model} (native bf16 flags: {native}); Python {platform.python_version()}. "
          f"Median of {args.repeats} runs of `python stages/<name>.py --help`.\n")
    print("| stage | start-up + imports (s) | heavy libraries loaded |")
    print("|---|---|---|")
    for name in STAGES:
        seconds, loaded = measure(name, args.repeats)
        print(f"| {name} | {seconds:.2f} | {loaded} |", flush=True)


if __name__ == "__main__":
    main()
