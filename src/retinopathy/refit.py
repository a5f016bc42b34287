"""Classifier re-training: the last layer refitted to convergence on the trained network's frozen features.

A few epochs of augmented mini-batch training leave the final linear layer short of its optimum for
the rare grades: the default run's networks rank grade-4 eyes apart in their features but never
give grade 4 the largest logit. Refitting that one layer as a multinomial logistic regression
(scikit-learn, Newton-CG, L2 strength ``1 / C``) on the pooled features of the un-augmented training
images, weighted per grade as training was, is the "classifier re-training" step of Kang et al.,
*Decoupling Representation and Classifier for Long-Tailed Recognition*, ICLR 2020. The backbone is
not touched; the result replaces ``model.fc`` in place, so the model file, ``retinopathy predict``
and the ONNX export need nothing new. Regression heads are left as they are.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from retinopathy.data import build_transform, make_loader, processed_dataset
from retinopathy.inference import memory_format_for, over_loader
from retinopathy.precision import autocast

# Newton-CG rather than scikit-learn's default L-BFGS: the pooled features are unstandardised and badly
# conditioned (2,048 of them for ResNet50), where L-BFGS took hundreds to thousands of iterations and most of a
# train stage's wall time; Newton-CG's Hessian-vector steps reach the same optimum of the same objective in a few
# tens (benchmarks/refit_solver.py measures both).
SOLVER = "newton-cg"
MAX_ITER = 1000


@torch.no_grad()
def pooled_features(
    model: nn.Module, loader: DataLoader, device: torch.device, *, precision: str = "fp32", desc: str = "features",
) -> tuple[np.ndarray, np.ndarray]:
    """The pooled features before ``model.fc`` (N, D) in fp32 and the labels, in loader order."""
    model.eval()

    def features(images: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            return model.forward_features(images.to(device, memory_format=memory_format_for(device))).float().cpu()

    feats, labels = over_loader(loader, features, desc=desc)
    return feats.astype(np.float64), labels


def fit_classifier(
    features: np.ndarray, labels: np.ndarray, *, num_classes: int, class_weights: np.ndarray | None, c: float,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Weights (num_classes, D) and bias (num_classes,) of a weighted multinomial logistic regression.

    Raises:
        ValueError: for ``c`` not positive, features and labels of different lengths, or a grade
            outside ``0..num_classes-1``.
    """
    if not c > 0:
        raise ValueError(f"refit_c must be positive, got {c!r}")
    if len(features) != len(labels):
        raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {sorted(set(labels.tolist()))}")
    # scikit-learn is imported here, not at module level: only a train stage that refits pays for it.
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    weight = None if class_weights is None else {k: float(class_weights[k]) for k in range(num_classes)}
    clf = LogisticRegression(C=c, class_weight=weight, solver=SOLVER, max_iter=MAX_ITER)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(features, labels)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    info = {"c": c, "solver": SOLVER, "images": int(len(labels)), "iterations": int(np.max(clf.n_iter_)),
            "converged": converged}
    return clf.coef_, clf.intercept_, info


def refit_classifier(
    model: nn.Module, loader: DataLoader, device: torch.device, *, class_weights: np.ndarray | None, c: float,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Replace ``model.fc`` in place with the logistic regression fitted on ``loader``'s features.

    ``loader`` should give the training images without augmentation. When a grade has no training
    image the layer is kept (a logistic regression cannot learn a class it never sees) and the
    returned record says why; it has ``applied`` either way.
    """
    num_classes = model.fc.out_features
    feats, labels = pooled_features(model, loader, device, precision=precision, desc="features (refit)")
    missing = sorted(set(range(num_classes)) - set(np.asarray(labels).tolist()))
    if missing:
        return {"applied": False, "reason": f"grade(s) {missing} have no training image"}
    coef, intercept, info = fit_classifier(feats, labels, num_classes=num_classes, class_weights=class_weights, c=c)
    with torch.no_grad():
        model.fc.weight.copy_(torch.as_tensor(coef, dtype=model.fc.weight.dtype))
        model.fc.bias.copy_(torch.as_tensor(intercept, dtype=model.fc.bias.dtype))
    return {"applied": True, **info}


def refit_on_training_images(
    model: nn.Module, data_dir: str | os.PathLike[str], device: torch.device, *, mean: Sequence[float],
    std: Sequence[float],
    class_weights: np.ndarray | None, c: float, batch_size: int, num_workers: int = 0, precision: str = "fp32",
) -> dict[str, Any]:
    """:func:`refit_classifier` on the processed set's training images, without augmentation (as evaluation sees
    them)."""
    dataset = processed_dataset(data_dir, "train", build_transform(mean=mean, std=std, train=False))
    loader = make_loader(dataset, batch_size=batch_size, train=False, num_workers=num_workers, generator=None,
                         device=device)
    return refit_classifier(model, loader, device, class_weights=class_weights, c=c, precision=precision)
