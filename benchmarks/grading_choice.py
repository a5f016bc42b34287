"""Choose the grading defaults on validation: heads x class weighting x classifier refit x decodings x TTA x two-eye
blend, several seeds.

Trains one architecture/pretraining variant with each head (and each loss weighting and classifier refit asked
for) and each seed on the pipeline's processed
set and start point (run `dvc repro pretrain@resnet18` first), evaluates it with every grading setup
(retinopathy.evaluation.components) and writes a table of validation figures (2-fold over validation
patients, so nothing tuned scores itself) with test figures beside them. The choice is made on the
validation column alone. Writes metrics/grading_choice.{json,md}.

    python benchmarks/grading_choice.py --seeds 42 43
    python benchmarks/grading_choice.py --heads classification --refit-c none 0.1 1 10 --seeds 42 43 44 \
        --out metrics/refit_choice
"""

from __future__ import annotations

import argparse
import itertools
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from retinopathy.evaluation import EvalSettings, evaluate_variant
from retinopathy.inference import load_model
from retinopathy.metrics import accuracy, macro_f1, quadratic_weighted_kappa
from retinopathy.params import load_params
from retinopathy.precision import cpu_info
from retinopathy.refit import refit_on_training_images
from retinopathy.statistics import paired_difference
from retinopathy.data import CLASS_WEIGHTING, class_weight_values, processed_dataset
from retinopathy.training import TrainConfig
from retinopathy.utils import save_checkpoint, select_device, write_json
from retinopathy.variants import train_variant

HEADS = ("classification", "regression")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--pretrained", default="true", choices=["true", "false"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=HEADS)
    parser.add_argument("--class-weighting", nargs="+", choices=CLASS_WEIGHTING, default=None,
                        help="loss weightings to compare (default: params.yaml's class_weighting alone)")
    parser.add_argument("--refit-c", nargs="+", default=None,
                        help="classifier refits to compare: 'none' or a refit_c value each (default: params.yaml's); "
                             "each trained network is refitted with each C, so a C costs one refit, not one training")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/processed")
    parser.add_argument("--out", default="metrics/grading_choice")
    parser.add_argument("--keep", default=None, help="folder to keep the trained models and predictions in (default: discard)")
    args = parser.parse_args()

    params = load_params(args.params)
    keys = ["lr", "batch_size", "epochs", "weight_decay", "momentum", "optimizer", "lr_schedule", "class_weighting", "select_on",
            "num_workers", "precision"]
    base = TrainConfig(**{key: params[key] for key in keys})
    weightings = args.class_weighting or [base.class_weighting]
    default_refit = str(params["refit_c"]) if params["refit_classifier"] else "none"
    refit_settings = [None if r == "none" else float(r) for r in dict.fromkeys(args.refit_c or [default_refit])]
    rows, started = [], time.perf_counter()
    predictions: dict[tuple, pd.DataFrame] = {}
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or scratch
        Path(tmp).mkdir(parents=True, exist_ok=True)
        for head, weighting, seed in itertools.product(args.heads, weightings, args.seeds):
            name = f"{args.arch}-{args.pretrained}-{seed}-{head}-{weighting}"
            config = replace(base, seed=seed, head=head, decode="argmax", class_weighting=weighting)
            t0 = time.perf_counter()
            train_variant(
                args.arch, pretrained=args.pretrained == "true", config=config, data_dir=args.data,
                start_path=f"models/start/{args.arch}-{args.pretrained}", model_out=f"{tmp}/{name}.pt",
                history_out=f"{tmp}/{name}.tsv", summary_out=f"{tmp}/{name}.json", flip=params["flip"],
                rotation=params["rotation"], zero_init_residual=params["zero_init_residual"], device=params["device"],
                refit=False,
            )
            seconds = time.perf_counter() - t0
            # A regression head is never refitted: it is scored once, as trained.
            for refit_c in refit_settings if head == "classification" else [None]:
                refit = "none" if refit_c is None else f"C={refit_c:g}"
                model_path = f"{tmp}/{name}.pt"
                if refit_c is not None:
                    model_path = f"{tmp}/{name}-{refit}.pt"
                    _refitted_copy(f"{tmp}/{name}.pt", model_path, args.data, weighting, refit_c, params["device"])
                metrics = evaluate_variant(
                    model_path=model_path, data_dir=args.data, metrics_out=f"{model_path[:-3]}-eval.json",
                    predictions_out=f"{model_path[:-3]}-pred.csv", settings=EvalSettings(bootstrap_resamples=200),
                    device=params["device"], head=head,
                )
                for row in metrics["components"]:
                    rows.append({"head": head, "class_weighting": weighting, "refit": refit, "seed": seed,
                                 "train_seconds": round(seconds, 1), **row})
                predictions[(head, weighting, refit, seed)] = pd.read_csv(f"{model_path[:-3]}-pred.csv")
    paired = _paired_against_no_refit(predictions, args.seeds)
    table = _table(rows)
    record = {
        "command": (f"python benchmarks/grading_choice.py --arch {args.arch} --pretrained {args.pretrained} "
                    f"--seeds {' '.join(map(str, args.seeds))} --heads {' '.join(args.heads)} "
                    f"--class-weighting {' '.join(weightings)} "
                    f"--refit-c {' '.join('none' if c is None else f'{c:g}' for c in refit_settings)} --out {args.out}"),
        "machine": {"cpu": cpu_info()[0] or platform.processor(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
        "summary": table,
        "paired_test": paired,
    }
    write_json(f"{args.out}.json", record)
    Path(f"{args.out}.md").write_text(_markdown(record, args))
    print(Path(f"{args.out}.md").read_text())


def _paired_against_no_refit(predictions: dict[tuple, pd.DataFrame], seeds: list[int]) -> list[dict]:
    """Each refit's test difference from no refit (argmax, no TTA): the same patients, every seed; the interval
    resamples test patients and, with several seeds, seeds (retinopathy.statistics.paired_difference)."""
    out = []
    for head, weighting, refit in dict.fromkeys(key[:3] for key in predictions):
        if refit == "none" or (head, weighting, "none", seeds[0]) not in predictions:
            continue
        first = predictions[(head, weighting, refit, seeds[0])]
        a = [predictions[(head, weighting, refit, s)]["predicted"].to_numpy() for s in seeds]
        b = [predictions[(head, weighting, "none", s)]["predicted"].to_numpy() for s in seeds]
        for name, metric in (("kappa", quadratic_weighted_kappa), ("macro_f1", macro_f1), ("accuracy", accuracy)):
            diff = paired_difference(metric, first["actual"].to_numpy(), a, b, first["patient"].astype(str).to_numpy(),
                                     n_resamples=2000, seed=0, names=(refit, "none"))
            out.append({"head": head, "class_weighting": weighting, "refit": refit, "metric": name,
                        **{k: diff[k] for k in ("difference", "low", "high")}})
    return out


def _refitted_copy(src: str, dst: str, data_dir: str, weighting: str, c: float, device: str) -> None:
    """Copy of the model file at ``src`` with its last layer refitted as the train stage would (refit_c = ``c``)."""
    dev = select_device(device)
    model, meta = load_model(src, dev)
    labels = processed_dataset(data_dir, "train", None).labels
    record = refit_on_training_images(model, data_dir, dev, mean=meta["mean"], std=meta["std"],
                                      class_weights=class_weight_values(labels, weighting), c=c, batch_size=64)
    # load_model's metadata is the checkpoint less its weights: the file is read once.
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    save_checkpoint(dst, {**meta, "state_dict": state, "refit": record})


def _setup(row: dict) -> tuple:
    return (row["head"], row.get("class_weighting"), row.get("refit", "none"), row["decode"], row["tta"], row["patient_blend"])


def _table(rows: list[dict]) -> list[dict]:
    """Mean (and range) over seeds of each setup's validation and test figures."""
    out = []
    for setup in dict.fromkeys(_setup(r) for r in rows):
        group = [r for r in rows if _setup(r) == setup]
        entry = {"head": setup[0], "class_weighting": setup[1], "refit": setup[2], "decode": setup[3], "tta": setup[4],
                 "patient_blend": setup[5], "seeds": len(group)}
        for split in ("val_2fold", "test"):
            for metric in ("kappa", "accuracy", "macro_f1"):
                values = np.array([r[split][metric] for r in group])
                entry[f"{split}_{metric}"] = round(float(values.mean()), 4)
                entry[f"{split}_{metric}_range"] = [round(float(values.min()), 4), round(float(values.max()), 4)]
        entry["test_predicts_grade_4"] = sum(r["test_predicted_grades"][4] > 0 for r in group)
        if all("val_predicted_grades" in r for r in group):
            entry["val_predicts_grade_4"] = sum(r["val_predicted_grades"][4] > 0 for r in group)
        out.append(entry)
    return out


def _markdown(record: dict, args: argparse.Namespace) -> str:
    lines = [
        f"Grading setups of {args.arch} (pretrained: {args.pretrained}), mean over seeds {args.seeds} "
        f"(min-max in brackets). Machine: {record['machine']['cpu']}, {record['machine']['torch_threads']} torch threads; "
        f"{record['seconds']:.0f} s in all. Command: `{record['command']}`.",
        "",
        "Validation: 2-fold over validation patients (cut-points and blend fitted on one half, scored on the other). "
        "Test: fitted on all of validation. Choose on validation only.",
        "",
        "| head | class weighting | classifier refit | decode | TTA | two-eye blend | val QWK | val macro-F1 | test QWK | "
        "test macro-F1 | test acc | seeds predicting grade 4 on val / on test |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in record["summary"]:
        def cell(key: str) -> str:
            low, high = e[f"{key}_range"]
            return f"{e[key]:.3f} [{low:.3f}-{high:.3f}]"
        lines.append(
            f"| {e['head']} | {e['class_weighting']} | {e['refit']} | {e['decode']} | {e['tta']} | {'yes' if e['patient_blend'] else 'no'} | {cell('val_2fold_kappa')} | "
            f"{cell('val_2fold_macro_f1')} | {cell('test_kappa')} | {cell('test_macro_f1')} | {e['test_accuracy']:.3f} | "
            f"{e.get('val_predicts_grade_4', '?')} / {e['test_predicts_grade_4']} of {e['seeds']} |"
        )
    if record["paired_test"]:
        lines += [
            "",
            "Refit minus no refit on test (argmax, no TTA; the same patients; the 95% interval resamples test patients and "
            "seeds). Reported, not used to choose:",
            "",
            "| head | class weighting | classifier refit | metric | difference (95% interval) |",
            "|---|---|---|---|---|",
        ]
        for d in record["paired_test"]:
            lines.append(f"| {d['head']} | {d['class_weighting']} | {d['refit']} | {d['metric']} | "
                         f"{d['difference']:+.3f} ({d['low']:+.3f} to {d['high']:+.3f}) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
