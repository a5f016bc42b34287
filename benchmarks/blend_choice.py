"""Choose the two-eye blend on validation: no blend against the blend at each C, several seeds.

Trains (or reuses, from --models) one architecture/pretraining variant per seed with params.yaml's settings
on the pipeline's processed set and start point (run `dvc repro pretrain@resnet18` first), takes its
outputs on the training, validation and test images (no TTA), fits the blend
(retinopathy.decoding.PatientBlend) on the training outputs at each C, and grades validation and test
with the model's own decoding. Nothing is fitted on validation or test, so both are scored directly.

The choice is made on validation alone: a C replaces "no blend" only when validation QWK minus no blend
has a 95% interval above zero (resampling validation patients and seeds, retinopathy.statistics.
paired_difference); among those, the highest mean validation QWK wins. Test differences are reported
beside it and never used to choose. Writes metrics/blend_choice.{json,md}.

    python benchmarks/blend_choice.py --seeds 42 43 44 45 46 --models /tmp/blend-models
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from retinopathy.data import class_weight_values
from retinopathy.decoding import Decoder
from retinopathy.evaluation import fit_blend, grade_with, split_outputs
from retinopathy.inference import load_model, model_decoder
from retinopathy.metrics import accuracy, macro_f1, quadratic_weighted_kappa
from retinopathy.params import load_params
from retinopathy.precision import cpu_info, resolve_precision
from retinopathy.statistics import paired_difference
from retinopathy.training import TrainConfig
from retinopathy.utils import select_device, write_json
from retinopathy.variants import train_variant

METRICS = {"kappa": quadratic_weighted_kappa, "macro_f1": macro_f1, "accuracy": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--pretrained", default="true", choices=["true", "false"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45, 46])
    parser.add_argument("--blend-c", type=float, nargs="+", default=[0.003, 0.01, 0.03, 0.1, 1.0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/processed")
    parser.add_argument("--models", default=None,
                        help="folder of <arch>-<pretrained>-<seed>.pt: a missing one is trained there first (default: a "
                             "temporary folder, so every seed is trained)")
    parser.add_argument("--out", default="metrics/blend_choice")
    args = parser.parse_args()
    if any(not c > 0 for c in args.blend_c):
        parser.error(f"--blend-c values must be positive, got {args.blend_c}")

    params = load_params(args.params)
    keys = ["lr", "batch_size", "epochs", "weight_decay", "momentum", "optimizer", "lr_schedule", "class_weighting", "select_on",
            "head", "decode", "num_workers", "precision"]
    base = TrainConfig(**{key: params[key] for key in keys})
    if Decoder(head=base.head, decode=base.decode).uses_cutpoints:  # before any training, not after it
        parser.error(f"{args.params}: head {base.head!r} with decode {base.decode!r} grades at cut-points tuned on validation; "
                     "this benchmark scores validation directly, which only argmax decoding of a classification head allows")
    dev = select_device(params["device"])
    precision, _ = resolve_precision(params["precision"], dev)
    started = time.perf_counter()
    setups = ["none", *[f"C={c:g}" for c in args.blend_c]]
    grades: dict[str, list[dict[str, np.ndarray]]] = {setup: [] for setup in setups}
    truth: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rows = []
    scratch = tempfile.TemporaryDirectory()
    folder = Path(args.models or scratch.name)
    folder.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        name = f"{args.arch}-{args.pretrained}-{seed}"
        model_path = folder / f"{name}.pt"
        if not model_path.is_file():
            train_variant(
                args.arch, pretrained=args.pretrained == "true", config=replace(base, seed=seed), data_dir=args.data,
                start_path=f"models/start/{args.arch}-{args.pretrained}", model_out=model_path,
                history_out=folder / f"{name}.tsv", summary_out=folder / f"{name}.json",
                flip=params["flip"], rotation=params["rotation"], zero_init_residual=params["zero_init_residual"],
                device=params["device"], refit=params["refit_classifier"], refit_c=params["refit_c"],
            )
        model, meta = load_model(model_path, dev)
        decoder = model_decoder(meta)
        if decoder.uses_cutpoints:  # a reused model file made with other params
            raise SystemExit(f"{model_path}: decoded with cut-points; this benchmark scores validation directly, "
                             "which only an argmax decoding (decode: argmax, classification head) allows")
        outs = {split: split_outputs(model, meta, args.data, split, dev, precision=precision, ttas=("none",))["none"]
                for split in ("train", "val", "test")}
        weights = class_weight_values(outs["train"].labels, params["class_weighting"])
        for split in ("val", "test"):
            truth[split] = (outs[split].labels, np.asarray(outs[split].patients))
        for setup in setups:
            blend = None if setup == "none" else fit_blend(decoder.head, outs["train"], c=float(setup[2:]), class_weights=weights)
            by_split = {"val": grade_with(decoder, outs["val"], outs["val"], blend=blend)[0],
                        "test": grade_with(decoder, outs["val"], outs["test"], blend=blend)[0]}
            grades[setup].append(by_split)
            rows.append({"seed": seed, "blend": setup, **{f"{split}_{m}": round(float(fn(truth[split][0], by_split[split])), 4)
                                                         for split in by_split for m, fn in METRICS.items()},
                         "test_predicted_grades": np.bincount(by_split["test"], minlength=5).tolist(),
                         **({} if blend is None else {"partner_to_own_weight": blend.to_dict()["partner_to_own_weight"]})})
    paired = []
    for setup in setups[1:]:
        for split in ("val", "test"):
            labels, patients = truth[split]
            for m, fn in METRICS.items():
                diff = paired_difference(fn, labels, [g[split] for g in grades[setup]], [g[split] for g in grades["none"]],
                                         patients, n_resamples=2000, seed=0, names=(setup, "none"), paired_seeds=True)
                paired.append({"blend": setup, "split": split, "metric": m, **{k: diff[k] for k in ("difference", "low", "high")}})
    record = {
        "command": (f"python benchmarks/blend_choice.py --arch {args.arch} --pretrained {args.pretrained} "
                    f"--seeds {' '.join(map(str, args.seeds))} --blend-c {' '.join(f'{c:g}' for c in args.blend_c)} --out {args.out}"),
        "machine": {"cpu": cpu_info()[0] or platform.processor(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
        "paired": paired,
        "choice": _choose(rows, paired, setups),
    }
    scratch.cleanup()
    write_json(f"{args.out}.json", record)
    Path(f"{args.out}.md").write_text(_markdown(record, args, setups))
    print(Path(f"{args.out}.md").read_text())


def _choose(rows: list[dict], paired: list[dict], setups: list[str]) -> dict:
    """The rule in the module docstring: a C must beat no blend on validation QWK with an interval above zero."""
    passing = [p["blend"] for p in paired if p["split"] == "val" and p["metric"] == "kappa" and p["low"] > 0]
    means = {s: float(np.mean([r["val_kappa"] for r in rows if r["blend"] == s])) for s in setups}
    chosen = max(passing, key=lambda s: means[s]) if passing else "none"
    return {"chosen": chosen, "passing": passing, "val_kappa_mean": {s: round(v, 4) for s, v in means.items()}}


def _markdown(record: dict, args: argparse.Namespace, setups: list[str]) -> str:
    rows = record["rows"]
    lines = [
        f"Two-eye blend of {args.arch} (pretrained: {args.pretrained}), seeds {args.seeds}, no TTA. Machine: "
        f"{record['machine']['cpu']}, {record['machine']['torch_threads']} torch threads; {record['seconds']:.0f} s in all. "
        f"Command: `{record['command']}`.",
        "",
        "The blend is fitted on the training images' outputs; validation and test are scored directly. Mean over seeds "
        "(min-max in brackets). Choose on validation only.",
        "",
        "| blend | val QWK | val macro-F1 | test QWK | test macro-F1 | test acc | seeds better than no blend on val QWK |",
        "|---|---|---|---|---|---|---|",
    ]
    none_val = {r["seed"]: r["val_kappa"] for r in rows if r["blend"] == "none"}
    for setup in setups:
        group = [r for r in rows if r["blend"] == setup]

        def cell(key: str) -> str:
            values = np.array([r[key] for r in group])
            return f"{values.mean():.3f} [{values.min():.3f}-{values.max():.3f}]"
        wins = "" if setup == "none" else f"{sum(r['val_kappa'] > none_val[r['seed']] for r in group)} of {len(group)}"
        lines.append(f"| {setup} | {cell('val_kappa')} | {cell('val_macro_f1')} | {cell('test_kappa')} | {cell('test_macro_f1')} | "
                     f"{np.mean([r['test_accuracy'] for r in group]):.3f} | {wins} |")
    lines += ["", "Blend minus no blend (the same images and networks; the 95% interval resamples patients and seeds, one draw of seeds for both):", "",
              "| blend | split | metric | difference | 95% interval |", "|---|---|---|---|---|"]
    for p in record["paired"]:
        lines.append(f"| {p['blend']} | {p['split']} | {p['metric']} | {p['difference']:+.3f} | {p['low']:+.3f} to {p['high']:+.3f} |")
    choice = record["choice"]
    lines += ["", f"Passing the rule (validation QWK interval above zero): {', '.join(choice['passing']) or 'none'}. "
              f"Chosen: **{choice['chosen']}**.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
