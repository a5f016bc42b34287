"""Resume snapshots: a killed training run carries on from its last completed epoch, as if never stopped.

The snapshot holds the model, optimizer, schedule, history and every random stream; its key
fingerprints the params, data, initial weights and code, so a changed run starts afresh.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from retinopathy.utils import save_checkpoint


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
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
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
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["gauss"]))
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

