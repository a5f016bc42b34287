"""From processed image tensors to grade probabilities: the one path every evaluation takes.

Training's per-epoch validation, the evaluate stage and anything else that grades images call
:func:`predict` (or :func:`probabilities`, one batch of it), so the numbers they report come from
the same arithmetic. A raw photograph becomes the network's input through :func:`prepare_photograph`,
which runs the preprocess stage's own crop (:func:`retinopathy.preprocessing.crop_photograph`) in
memory; :func:`model_metadata` is what every saved model carries so that it can do so alone.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from retinopathy.data import build_transform
from retinopathy.decoding import Decoder, head_outputs
from retinopathy.models import build_model
from retinopathy.precision import autocast, resolve_precision
from retinopathy.preprocessing import Cropped, CropSettings, crop_photograph
from retinopathy.settings import TTA
from retinopathy.utils import load_checkpoint

# Bumped when a key's meaning changes; files without it (or with another) are refused, not guessed at.
# 2: ``decoding`` became a record (head, decode, cut-points, temperature; retinopathy.decoding.Decoder).
MODEL_FORMAT = "retinopathy-model/2"
# International Clinical Diabetic Retinopathy scale, grade 0..4.
GRADE_NAMES = ("No DR", "Mild", "Moderate", "Severe", "Proliferative DR")
# Test-time augmentation: none, or the mean over the identity and the three flips (horizontal, vertical, both).
# What grading needs besides the weights; everything else in a checkpoint is provenance.
REQUIRED_KEYS = ("arch", "state_dict", "head", "decoding", "grade_names", "preprocessing", "mean", "std")


def model_metadata(
    arch: str,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    crop: CropSettings | dict[str, Any],
    precision: str = "fp32",
    data_fingerprint: dict[str, Any] | None = None,
    decoder: Decoder | None = None,
    data_source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything a saved model carries to grade a raw photograph by itself (all but the weights and provenance).

    Args:
        arch: ``resnet18`` or ``resnet50``.
        mean, std: the per-channel normalisation of the network's input, in [0, 1] units.
        crop: the preprocess settings the model was trained on (a stats.json ``crop`` record or the settings).
        precision: the autocast arithmetic the model was trained with.
        data_fingerprint: SHA-256 of the processed set's tables and statistics.
        decoder: the head and how its outputs become grades (cut-points tuned on validation); argmax by default.
        data_source: where the training images came from (the processed set's ``data_source``: ``source`` is
            params.yaml's ``data.source``); None where unknown. :func:`training_data_warning` reads it.
    """
    decoder = decoder or Decoder()
    record = (
        crop.to_record() if isinstance(crop, CropSettings)
        else {k: crop[k] for k in ("size", "fov_threshold", "graham", "graham_sigma")}
    )
    return {
        "format": MODEL_FORMAT,
        "arch": arch,
        "head": decoder.head,
        "decoding": decoder.to_dict(),
        "grade_names": list(GRADE_NAMES),
        "preprocessing": {"size": int(record["size"]), "fov_threshold": int(record["fov_threshold"]),
                          "graham": bool(record["graham"]), "graham_sigma": float(record["graham_sigma"])},
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "precision": precision,
        "data_fingerprint": data_fingerprint or {},
        "data_source": dict(data_source) if data_source is not None else None,
    }


def training_data_warning(meta: dict[str, Any], model_path: str | os.PathLike[str]) -> str | None:
    """The warning a model's training data calls for before it grades real photographs, or None.

    A model trained on the embedded synthetic set (``data_source.source`` synthetic) gets one: its grades of real
    photographs mean nothing. So does a model whose file does not say what it was trained on (no ``data_source``
    record), in softer words. A model trained on any other source gets none.
    """
    record = meta.get("data_source")
    source = record.get("source") if isinstance(record, dict) else None
    if source is None:
        return (f"warning: {model_path} does not say what it was trained on (it has no data_source record); if that "
                "was the embedded synthetic set, its grades of real photographs mean nothing")
    if source == "synthetic":
        return (f"warning: {model_path} was trained on the embedded synthetic set (data.source synthetic); its grades "
                "of real photographs mean nothing")
    return None


def load_model(path: str | os.PathLike[str], device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """A saved retinopathy model in eval mode on ``device``, and its metadata (the checkpoint less its weights).

    Raises:
        FileNotFoundError: naming a missing file.
        ValueError: ``"<path> is not a retinopathy model: ..."`` for a file that is not a torch file, has no
            ``format`` key, another format, or lacks a key grading needs.
    """
    if Path(path).is_file() and not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise ValueError(f"{path} is not a retinopathy model: not a file written by torch.save")
    try:
        checkpoint = load_checkpoint(path)
    except ValueError as exc:
        reason = str(exc.__cause__ or exc).strip().splitlines()[0][:200]
        raise ValueError(f"{path} is not a retinopathy model: cannot read it as a torch file ({reason})") from exc
    if not isinstance(checkpoint, dict) or "format" not in checkpoint:
        keys = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{path} is not a retinopathy model: it has no 'format' key (found {keys}); models written "
                         f"before metadata was added must be retrained (dvc repro)")
    if checkpoint["format"] != MODEL_FORMAT:
        raise ValueError(
            f"{path} is not a retinopathy model of a format this version reads: {checkpoint['format']!r}, "
            f"expected {MODEL_FORMAT!r}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise ValueError(f"{path} is not a retinopathy model: keys {missing} are missing")
    try:
        decoder = Decoder.from_dict(checkpoint["decoding"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: its decoding {checkpoint['decoding']!r} is not usable: {exc}") from exc
    if decoder.head != checkpoint["head"]:
        raise ValueError(f"{path}: head {checkpoint['head']!r} disagrees with its decoding's head {decoder.head!r}")
    model = build_model(checkpoint["arch"], num_classes=head_outputs(decoder.head))
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    place(model, device).eval()
    return model, {key: value for key, value in checkpoint.items() if key != "state_dict"}


def model_decoder(meta: dict[str, Any]) -> Decoder:
    """The decoder a loaded model carries."""
    return Decoder.from_dict(meta["decoding"])


def grading_precision(
    meta: dict[str, Any], device: torch.device, *, model_path: str | os.PathLike[str] = "the model"
) -> tuple[str, str]:
    """The arithmetic to grade a loaded model in on ``device``, and why.

    The precision the model records (the one it was trained and evaluated in) where ``device`` runs it
    natively, fp32 elsewhere: an fp32 model is always graded in fp32, so grading gives the evaluate stage's
    probabilities on any machine, and emulated bf16 (slower than fp32) is never used.

    Raises:
        ValueError: naming ``model_path`` when the recorded precision is none of fp32, bf16, fp16.
    """
    recorded = meta.get("precision", "fp32")
    if recorded == "fp32":
        return "fp32", "recorded in the model"
    if recorded == "fp16":
        if device.type == "cuda":
            return "fp16", "recorded in the model"
        return "fp32", "the model records fp16, which runs on CUDA only"
    if recorded == "bf16":
        # resolve_precision's auto is bf16 exactly where the hardware runs it natively.
        native, evidence = resolve_precision("auto", device)
        if native == "bf16":
            return "bf16", f"recorded in the model; {evidence}"
        return "fp32", f"the model records bf16, which this {device.type} device does not run natively ({evidence})"
    raise ValueError(f"{model_path} records precision {recorded!r}; expected fp32, bf16 or fp16")


def photograph_input(path: str | os.PathLike[str], meta: dict[str, Any]) -> tuple[torch.Tensor, Cropped]:
    """The network's input (3, size, size) for one raw photograph, and the crop it came from (for heatmaps).

    Exactly the training path: the preprocess stage's crop, then the evaluation transform; only the
    PNG written in between is skipped (it is lossless).

    Raises:
        FileNotFoundError, ValueError: naming the file (corrupt, truncated, no field of view, ...).
    """
    cropped = crop_photograph(Path(path), CropSettings.from_record(meta["preprocessing"]))
    transform = build_transform(mean=meta["mean"], std=meta["std"], train=False)
    return transform(cropped.image), cropped


def prepare_photograph(path: str | os.PathLike[str], meta: dict[str, Any]) -> torch.Tensor:
    """The network's input (3, size, size) for one raw photograph, preprocessed exactly as in training."""
    return photograph_input(path, meta)[0]


def memory_format_for(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA, where cuDNN's convolutions prefer it; the default layout on CPU.

    On CPU it does not pay for training: on a 2-core AMD EPYC with native bf16 (batch 32, 64 px, median of
    3 alternating repeats of ``benchmarks/layout.py``), a ResNet18 training step ran at 250 images/s in fp32
    in the default layout against 216 in channels_last, and at 325 against 330 in bf16; ResNet50 at 99
    against 97 (fp32) and 131 against 127 (bf16). Only bf16 inference gained (ResNet18 1,206 -> 1,492
    images/s), a few seconds of a whole run.
    """
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def place(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device``, its weights in :func:`memory_format_for`'s layout (in place; returned for chaining)."""
    return model.to(device, memory_format=memory_format_for(device))


@torch.no_grad()
def predict(
    model: nn.Module, loader: DataLoader, device: torch.device, *, precision: str = "fp32", desc: str = "eval",
    head: str = "classification", tta: str = "none",
) -> tuple[np.ndarray, np.ndarray]:
    """The head's outputs for every image (see :func:`outputs`: softmax probabilities (N, 5) for a classification
    head, the score (N, 1) for a regression head) and the loader's labels, in loader order."""
    model.eval()
    return over_loader(
        loader, lambda images: outputs(model, images, device, precision=precision, head=head, tta=tta), desc=desc
    )


@torch.no_grad()
def over_loader(
    loader: DataLoader, fn: Callable[[torch.Tensor], torch.Tensor], *, desc: str
) -> tuple[np.ndarray, np.ndarray]:
    """``fn`` of every batch (CPU tensors) concatenated, and the loader's labels, in loader order, with a
    progress bar."""
    out, labels = [], []
    for images, batch_labels in tqdm(loader, desc=desc, leave=False, unit="batch", dynamic_ncols=True):
        out.append(fn(images))
        labels.append(torch.as_tensor(batch_labels))
    return torch.cat(out).numpy(), torch.cat(labels).numpy()


def tta_views(images: torch.Tensor, tta: str) -> list[torch.Tensor]:
    """The batch (N, 3, H, W) as the network sees it under ``tta``: itself, or itself and its three flips."""
    if tta not in TTA:
        raise ValueError(f"tta {tta!r}; choose one of {list(TTA)}")
    if images.ndim != 4:
        raise ValueError(f"expected a batch of shape (N, 3, H, W), got {tuple(images.shape)}")
    if tta == "none":
        return [images]
    return [images, images.flip(3), images.flip(2), images.flip(2, 3)]


@torch.no_grad()
def outputs(
    model: nn.Module, images: torch.Tensor, device: torch.device, *, precision: str = "fp32",
    head: str = "classification", tta: str = "none",
) -> torch.Tensor:
    """One batch's outputs on the CPU, in fp32: softmax probabilities (N, 5) for a classification head, the
    grade (N, 1) for a regression head; with ``tta="flips"`` the mean over the image and its flips."""
    views = tta_views(images, tta)
    total = None
    for view in views:
        view = view.to(device, non_blocking=True, memory_format=memory_format_for(device))
        with autocast(device, precision):
            logits = model(view)
        out = torch.softmax(logits.float(), dim=1) if head == "classification" else logits.float()
        total = out if total is None else total + out
    return (total / len(views)).cpu()


@torch.no_grad()
def probabilities(
    model: nn.Module, images: torch.Tensor, device: torch.device, *, precision: str = "fp32"
) -> torch.Tensor:
    """Softmax probabilities (N, classes) of one batch of a classification model, on the CPU, in fp32."""
    return outputs(model, images, device, precision=precision)
