"""Export a saved model to ONNX (softmax inside, so the output is probabilities), checked against PyTorch at once.

Next to ``OUT.onnx`` goes ``OUT.json``: the model's metadata (preprocessing settings, mean/std, grade
names, provenance) and the input and output names, so the ONNX file grades photographs without this
package. Neither file may be an existing directory, the model file, or the other (:func:`check_export_outputs`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from retinopathy.inference import load_model
from retinopathy.utils import OutputPathError, atomic_path, check_outputs_apart, write_json

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
# The largest difference of probabilities between onnxruntime and PyTorch that counts as the same model.
TOLERANCE = 1e-4
PREPROCESSING_STEPS = [
    "decode the photograph as 8-bit RGB, upright (EXIF orientation applied)",
    ("find the circular field of view: pixels brighter than fov_threshold (grey level); its horizontal extent is "
     "the diameter"),
    "crop the square around the circle (black padding where it leaves the frame), resize to size x size (Lanczos)",
    "if graham: 4 * (image - GaussianBlur(image, sigma = graham_sigma * size)) + 128, black outside 95% of the circle",
    "scale to [0, 1], subtract mean and divide by std per channel (RGB order), layout N x 3 x size x size, float32",
]


class WithSoftmax(nn.Module):
    """A classifier whose output is its softmax probabilities (computed in fp32)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x).float(), dim=1)


def _jsonable(value: Any) -> Any:
    """The metadata as plain JSON (tuples as lists, anything else as text)."""
    return json.loads(json.dumps(value, default=str))


def sidecar_path(out: str | os.PathLike[str]) -> Path:
    """``OUT.json`` next to ``OUT.onnx``."""
    return Path(out).with_suffix(".json")


def check_export_outputs(model_path: str | os.PathLike[str], out: str | os.PathLike[str]) -> None:
    """Refuse an ONNX path (or its sidecar) that is an existing directory, the model file, or the other, before
    anything is written.

    Raises:
        OutputPathError: naming the path.
    """
    outputs = [("--onnx", Path(out)), ("its sidecar OUT.json", sidecar_path(out))]
    for flag, path in outputs:
        if path.is_dir():
            raise OutputPathError(f"{flag} {path} is an existing directory; the export writes a file there "
                                  "(nothing was written)")
    check_outputs_apart(outputs, [("the model", Path(model_path))])


def export_onnx(
    model_path: str | os.PathLike[str], out: str | os.PathLike[str], *, check_batch: int = 3, seed: int = 0
) -> dict[str, Any]:
    """Write ``out`` (ONNX, dynamic batch axis) and its JSON sidecar; fail unless onnxruntime matches PyTorch.

    The check runs ``check_batch`` seeded random inputs through both (a batch size other than the
    export's, so the dynamic axis is exercised) before the file appears under its name.

    Returns:
        The sidecar's contents, with ``onnx.max_abs_difference``.

    Raises:
        FileNotFoundError, ValueError: the model is missing or not a retinopathy model.
        OutputPathError: ``out`` or its sidecar is an existing directory, the model, or the other (a ``ValueError``).
        RuntimeError: the exported graph differs from PyTorch by ``TOLERANCE`` or more.
    """
    import onnxruntime as ort  # only the export needs it

    out = Path(out)
    check_export_outputs(model_path, out)
    model, meta = load_model(model_path, torch.device("cpu"))
    if meta["head"] != "classification":
        raise ValueError(f"{model_path}: ONNX export covers classification heads (probabilities out); "
                         f"this model has a {meta['head']!r} head")
    wrapped = WithSoftmax(model).eval()
    size = int(meta["preprocessing"]["size"])
    generator = torch.Generator().manual_seed(seed)
    example = torch.randn(2, 3, size, size, generator=generator)
    check = torch.randn(check_batch, 3, size, size, generator=generator)
    with atomic_path(out) as tmp:
        torch.onnx.export(
            wrapped, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, external_data=False, dynamo=True,
        )
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        onnx_probs = session.run([OUTPUT_NAME], {INPUT_NAME: check.numpy()})[0]
        with torch.no_grad():
            torch_probs = wrapped(check).numpy()
        difference = float(np.abs(onnx_probs - torch_probs).max())
        if not difference < TOLERANCE:
            raise RuntimeError(f"ONNX export of {model_path} differs from PyTorch by {difference:.2e} "
                               f"(>= {TOLERANCE:g}); nothing written")
    sidecar = {
        **_jsonable(meta),
        "onnx": {
            "file": out.name, "input": INPUT_NAME, "input_shape": ["batch", 3, size, size], "input_dtype": "float32",
            "output": OUTPUT_NAME, "output_shape": ["batch", len(meta["grade_names"])],
            "max_abs_difference": difference, "checked_batch": check_batch, "torch_version": torch.__version__,
            "onnxruntime_version": ort.__version__,
        },
        "preprocessing_steps": PREPROCESSING_STEPS,
    }
    write_json(sidecar_path(out), sidecar)
    return sidecar
