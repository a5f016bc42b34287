"""From processed image tensors to grade probabilities: the one path every evaluation takes.

Training's per-epoch validation, the evaluate stage and anything else that grades images call
:func:`predict`, so the numbers they report come from the same arithmetic.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from retinopathy.precision import autocast


def memory_format_for(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA, where cuDNN's convolutions prefer it; the default layout on CPU."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


@torch.no_grad()
def predict(
    model: nn.Module, loader: DataLoader, device: torch.device, *, precision: str = "fp32", desc: str = "eval"
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities (N, classes), computed in fp32 from the logits, and the loader's labels, in loader order."""
    model.eval()
    memory_format = memory_format_for(device)
    probs, labels = [], []
    for images, batch_labels in tqdm(loader, desc=desc, leave=False, unit="batch", dynamic_ncols=True):
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        with autocast(device, precision):
            logits = model(images)
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
        labels.append(torch.as_tensor(batch_labels))
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()
