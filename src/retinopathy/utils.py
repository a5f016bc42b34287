"""Small shared helpers: seeding, device choice, atomic file and directory writes that never remove what they did
not write."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used, so stages that never touch a tensor do not load it
    import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch from one integer; return a torch Generator for DataLoaders."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


class DeviceUnavailableError(ValueError):
    """A device was asked for by name that this machine does not have; the message names it."""


def select_device(requested: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cpu``/``cuda``/``cuda:N`` are taken as given.

    Raises:
        DeviceUnavailableError: naming ``requested`` when it is a CUDA device torch cannot see.
        ValueError: naming ``requested`` when it is no device name at all.
    """
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:  # torch's word for a string that names no device
        raise ValueError(f"unknown device {requested!r}; choose auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device {requested!r} was asked for, but torch sees no CUDA device (use cpu or auto)"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceUnavailableError(
            f"device {requested!r} was asked for, but torch sees {torch.cuda.device_count()} CUDA device(s)"
        )
    return device


class OutputPathError(ValueError):
    """An output path that is, lies inside or contains an input, the model or another output; the message names both."""


def _file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of an existing path, so that two names of one file (a hard link) are seen as one."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def check_outputs_apart(
    outputs: Sequence[tuple[str, str | os.PathLike[str]]], others: Sequence[tuple[str, str | os.PathLike[str]]]
) -> None:
    """Refuse an output that is, lies inside or contains another output or one of ``others`` (the inputs, a model file).

    Each item is ``(what it is, path)``; ``what`` names it in the error (``"--out"``, ``"input folder"``).
    Symbolic links are followed, and two names of one existing file (a hard link) count as the same path.
    Every path is resolved once, so a long list of inputs costs one pass.

    Raises:
        OutputPathError: naming both paths and how they stand to each other.
    """
    outs = [(what, Path(path), Path(path).resolve()) for what, path in outputs]
    rest = [(what, Path(path), Path(path).resolve()) for what, path in others]
    for i, (what, path, real) in enumerate(outs):
        parents = set(real.parents)
        identity = _file_identity(real)
        for other_what, other, other_real in [*outs[i + 1 :], *rest]:
            if other_real == real or (identity is not None and identity == _file_identity(other_real)):
                relation = "is"
            elif other_real in parents:
                relation = "lies inside"
            elif real in other_real.parents:
                relation = "contains"
            else:
                continue
            raise OutputPathError(f"{what} {path} {relation} {other_what} {other}: an output never goes over, into "
                                  f"or around an input, the model or another output; nothing was written")


def _files_under(root: Path) -> set[Path]:
    """Every non-directory entry under ``root``, relative to it."""
    return {p.relative_to(root) for p in root.rglob("*") if not p.is_dir() or p.is_symlink()}


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, replace_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` only if the block succeeds.

    Works for files and directories alike, so a crash never leaves a half-written output
    under the real name. An existing file (or symbolic link) at ``path`` is replaced. An existing
    directory is never removed unless ``replace_dir`` is set, and then only when every file in it has a
    namesake in the new directory: a stage's own earlier output is replaced, a folder that also holds
    anything else is left as it is.

    Raises:
        IsADirectoryError: naming ``path`` when a directory is there and may not be replaced; without
            ``replace_dir`` this is raised before the block runs, so no work is done in vain.
        RuntimeError: the block wrote nothing at the temporary path.
    """
    path = Path(path)
    if path.is_dir() and (path.is_symlink() or not replace_dir):
        raise _directory_refused(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if not target.exists():
            raise RuntimeError(f"nothing was written for {path}")
        _replace(target, path, replace_dir=replace_dir, aside=tmp / f"{path.name}.old")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _directory_refused(path: Path) -> IsADirectoryError:
    """The error for an existing directory where :func:`atomic_path` may not replace one."""
    return IsADirectoryError(f"{path} is an existing directory; it is left as it is and nothing was written "
                             f"(name a path that is not a directory, or remove it first)")


def _replace(target: Path, path: Path, *, replace_dir: bool, aside: Path) -> None:
    """``os.replace(target, path)``; an existing directory at ``path`` is first moved to ``aside``
    (see :func:`atomic_path`).

    The old directory is moved, not deleted, until the new one is in place: if the rename fails it is put back.
    """
    if not path.is_dir() or path.is_symlink():
        os.replace(target, path)
        return
    if not replace_dir or not target.is_dir():
        raise _directory_refused(path)
    foreign = sorted(map(str, _files_under(path) - _files_under(target)))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise IsADirectoryError(f"{path} exists and holds files this run would not write ({shown}); it is left as it "
                                f"is and nothing was written (remove it, or move those files, and run again)")
    os.replace(path, aside)
    try:
        os.replace(target, path)
    except OSError:
        os.replace(aside, path)
        raise


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(path: str | os.PathLike[str], frame: "Any", **kwargs: Any) -> None:
    """Write a pandas DataFrame to CSV, atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, **kwargs)


def save_checkpoint(path: str | os.PathLike[str], checkpoint: dict[str, Any]) -> None:
    """``torch.save`` a checkpoint dict, atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, naming the file on failure."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc
