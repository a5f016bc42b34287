"""Starting points of the train stage: where a variant's first weights and input normalisation come from.

A starting point is a folder. ``start.json`` names the architecture, the source (``selfsup``,
``imagenet`` or ``scratch``) and the channel mean/std the weights expect; ``backbone.pt`` holds the
pretrained backbone, and is absent for ``scratch``, whose weights the model definition initialises
from the training seed. The scratch folder's bytes depend only on the training set's statistics,
so retuning pretraining rewrites it unchanged and DVC keeps the from-scratch variants cached.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from retinopathy.utils import atomic_path, load_checkpoint

START_SOURCES = ("selfsup", "imagenet", "scratch")


def write_start_point(
    path: str | os.PathLike[str],
    *,
    arch: str,
    source: str,
    mean: Sequence[float],
    std: Sequence[float],
    state: dict[str, torch.Tensor] | None = None,
    record: dict[str, Any] | None = None,
) -> None:
    """Write the folder ``path`` atomically; ``state`` (backbone weights) is required unless ``source`` is scratch.

    ``record`` adds facts about how the weights were made (pretext history, precision, hardware)
    to ``start.json``.
    """
    if source not in START_SOURCES:
        raise ValueError(f"start point source {source!r}; choose one of {list(START_SOURCES)}")
    if (state is None) != (source == "scratch"):
        raise ValueError(f"a {source} start point {'needs' if state is None else 'has no'} backbone weights")
    meta = {"arch": arch, "source": source, "mean": [float(m) for m in mean], "std": [float(s) for s in std],
            **(record or {})}
    # An earlier start point is replaced; a folder holding other files is refused (retinopathy.utils.atomic_path).
    with atomic_path(path, replace_dir=True) as tmp:
        tmp.mkdir()
        (tmp / "start.json").write_text(json.dumps(meta, indent=2) + "\n")
        if state is not None:
            torch.save({"arch": arch, "state_dict": state}, tmp / "backbone.pt")


def read_start_point(path: str | os.PathLike[str], *, arch: str) -> dict[str, Any]:
    """``start.json`` of ``path`` plus ``state_dict`` (None for scratch), checked to be for ``arch``.

    Raises:
        FileNotFoundError: naming the missing folder or file.
        ValueError: when the start point is for another architecture or its files disagree.
    """
    path = Path(path)
    meta_path = path / "start.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"start point not found: {meta_path} "
                                f"(run the pretrain stage: dvc repro pretrain@{arch})")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{meta_path} is not valid JSON: {exc}") from exc
    if meta.get("arch") != arch:
        raise ValueError(f"{path} is a start point for {meta.get('arch')!r}, not {arch!r}")
    meta["state_dict"] = None
    if meta.get("source") != "scratch":
        checkpoint = load_checkpoint(path / "backbone.pt")
        if checkpoint.get("arch") != arch:
            raise ValueError(f"{path / 'backbone.pt'} holds {checkpoint.get('arch')!r} weights, not {arch!r}")
        meta["state_dict"] = checkpoint["state_dict"]
    return meta
