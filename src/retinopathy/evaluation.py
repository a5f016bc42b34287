"""Stage evaluate@<variant>: test-set probabilities of a trained model, its metrics and per-image predictions."""

from __future__ import annotations

import os

import pandas as pd

from retinopathy import GRADES
from retinopathy.data import build_transform, make_loader, processed_dataset
from retinopathy.inference import predict
from retinopathy.metrics import summarize
from retinopathy.models import build_model
from retinopathy.precision import hardware, resolve_precision
from retinopathy.utils import load_checkpoint, select_device, write_csv, write_json


def evaluate_variant(
    *,
    model_path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    metrics_out: str | os.PathLike[str],
    predictions_out: str | os.PathLike[str],
    batch_size: int,
    device: str = "auto",
    num_workers: int = 0,
    precision: str = "auto",
) -> dict:
    """Predict the test split with a trained model; write metrics JSON and a predictions CSV."""
    checkpoint = load_checkpoint(model_path)
    dev = select_device(device)
    resolved, _ = resolve_precision(precision, dev)
    model = build_model(checkpoint["arch"], num_classes=len(GRADES))
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    model.to(dev)
    dataset = processed_dataset(data_dir, "test", build_transform(mean=checkpoint["mean"], std=checkpoint["std"], train=False))
    loader = make_loader(dataset, batch_size=batch_size, train=False, num_workers=num_workers, generator=None, device=dev)
    probs, labels = predict(model, loader, dev, precision=resolved, desc="test")
    preds = probs.argmax(1)
    metrics = {**summarize(labels, preds), "precision": resolved, "hardware": hardware(dev)}
    frame = pd.DataFrame({"image": dataset.names, "actual": labels, "predicted": preds})
    for grade in GRADES:
        frame[f"p{grade}"] = probs[:, grade].round(5)
    write_csv(predictions_out, frame)
    write_json(metrics_out, metrics)
    print(f"{model_path}: accuracy {metrics['accuracy']:.4f}, kappa {metrics['kappa']:.4f}, macro-F1 {metrics['macro_f1']:.4f}")
    return metrics
