"""The classifier refit's solver: L-BFGS (scikit-learn's default) against Newton-CG on one model's features.

Takes a trained model file, computes the pooled features of the processed set's training images (as the train
stage's refit does), fits the same weighted multinomial logistic regression (L2 strength 1 / refit_c) with each
solver, and prints CPU seconds, iterations, the largest coefficient difference and how many validation and test
grades agree. Both solve the same objective, so their grades should agree; the point is the cost.

    python benchmarks/refit_solver.py models/resnet50-false-42.pt
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from retinopathy.data import build_transform, class_weights, make_loader, processed_dataset
from retinopathy.inference import load_model
from retinopathy.params import load_params
from retinopathy.precision import cpu_info
from retinopathy.refit import pooled_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--data", default="data/processed")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_params(args.params)
    dev = torch.device("cpu")
    model, meta = load_model(args.model, dev)
    feats = {}
    for split in ("train", "val", "test"):
        dataset = processed_dataset(args.data, split, build_transform(mean=meta["mean"], std=meta["std"], train=False))
        loader = make_loader(dataset, batch_size=64, train=False, num_workers=0, generator=None, device=dev)
        feats[split] = pooled_features(model, loader, dev, desc=f"features ({split})")
    x, y = feats["train"]
    weights = class_weights(y, params["class_weighting"])
    weight = None if weights is None else {k: float(w) for k, w in enumerate(weights)}
    print(f"{args.model}: {x.shape[0]} training images x {x.shape[1]} features; CPU {cpu_info()[0]}, "
          f"{torch.get_num_threads()} threads")
    fitted = {}
    for solver, max_iter in (("lbfgs", 5000), ("newton-cg", 1000)):
        clf = LogisticRegression(C=params["refit_c"], class_weight=weight, solver=solver, max_iter=max_iter)
        started = time.process_time()
        clf.fit(x, y)
        fitted[solver] = clf
        print(f"{solver:>9}: {time.process_time() - started:6.2f} CPU s, {int(np.max(clf.n_iter_))} iterations")
    lbfgs, newton = fitted["lbfgs"], fitted["newton-cg"]
    print(f"largest coefficient difference {np.abs(lbfgs.coef_ - newton.coef_).max():.2e}")
    for split in ("val", "test"):
        agree = (lbfgs.predict(feats[split][0]) == newton.predict(feats[split][0])).mean()
        print(f"{split}: {100 * agree:.1f}% of grades agree")


if __name__ == "__main__":
    main()
