"""The grading study's summary: every setup over the seeds, paired differences, and the choice rule on validation.

The rule, fixed before the study runs: **a setting replaces the baseline (no refit; no blend) only if its
validation QWK difference from the baseline has a 95% interval above zero (the summary's ``confidence``);
among those that pass, the highest mean validation QWK wins.** The knobs are chosen one at a time: the refit
first, then the blend on top of the refit chosen. The differences are paired over the same networks (each
network graded both ways: :func:`retinopathy.statistics.paired_difference` with ``paired_seeds``), on the same
patients. Test figures are reported beside every choice and never used to make one.

Validation is the held-out validation split: no network trains on it, though each picked its epoch on it (the
same epoch for every arm of a network). The argmax arms fit nothing on it and are scored on it directly; the
ablation's tuned setups are scored 2-fold over its patients (:func:`retinopathy.ablation.components`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from retinopathy.grading_study import (
    NONE,
    SPLITS,
    STUDY_PARAMS,
    StudyAxes,
    StudyLayout,
    arm_name,
    machine,
    setting_label,
)
from retinopathy.metrics import accuracy, macro_f1, quadratic_weighted_kappa
from retinopathy.params import check_known, get
from retinopathy.plotting import forest
from retinopathy.results import ARCH_LABELS, read_json
from retinopathy.statistics import IntervalSettings, paired_difference
from retinopathy.utils import atomic_path, write_json

COMMAND = "dvc repro studies/grading/dvc.yaml"
METRICS = {"kappa": quadratic_weighted_kappa, "macro_f1": macro_f1, "accuracy": accuracy}
METRIC_LABELS = {"kappa": "QWK", "macro_f1": "macro-F1", "accuracy": "accuracy"}
SPLIT_LABELS = {"val": "validation", "test": "test"}
COMPONENT_KEYS = ("refit", "decode", "tta", "patient_blend")  # one setup of the ablation
ARM_KEYS = ("refit", "blend")  # one argmax arm, no TTA


@dataclass(frozen=True)
class SummarySettings(IntervalSettings):
    """The ``summary`` section of the study's params.yaml: how its intervals are drawn, and its figure's resolution."""

    dpi: int = 110


def summary_settings(study: dict[str, Any]) -> SummarySettings:
    """:class:`SummarySettings` from the study's params.yaml (ParamsError naming a bad key)."""
    names = [f.name for f in fields(SummarySettings)]
    check_known(study, "summary", names)
    kinds = {"bootstrap_resamples": int, "confidence": float, "bootstrap_seed": int, "dpi": int}
    return SummarySettings(**{name: get(study, f"summary.{name}", kinds[name]) for name in names})


def current_settings(params: dict[str, Any]) -> dict[str, str]:
    """What the project's params.yaml grades with now, in the study's labels (``refit``, ``blend``)."""
    refit = setting_label(get(params, "refit_c", float)) if get(params, "refit_classifier", bool) else NONE
    blend = (
        setting_label(get(params, "evaluate.blend_c", float)) if get(params, "evaluate.patient_blend", bool) else NONE
    )
    return {"refit": refit, "blend": blend}


def describe(knob: str, setting: str) -> str:
    """``no refit``, ``refit C=1``, ``no blend``, ``blend C=0.03``."""
    return f"no {knob}" if setting == NONE else f"{knob} C={setting}"


def _number(value: float | None, digits: int = 4) -> float | None:
    """Rounded, or None where undefined (JSON has no NaN)."""
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


# ---------------------------------------------------------------------------------------------------------------
# Tables: one entry per setup, over the seeds.


def setup_table(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], *, val_key: str) -> list[dict[str, Any]]:
    """One entry per setup (the values of ``keys``), in first-seen order.

    Each entry: the mean and ``[min, max]`` over seeds of every metric on validation (read from ``val_key``) and
    test, how many seeds predicted grade 4 on each, and ``errors``: the seeds where the setup could not be
    scored (with the first ``error``), which the means leave out.
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in keys), []).append(row)
    table = []
    for setup, group in groups.items():
        scored = [row for row in group if "error" not in row]
        entry: dict[str, Any] = {**dict(zip(keys, setup)), "seeds": len(group), "errors": len(group) - len(scored)}
        if entry["errors"]:
            entry["error"] = next(row["error"] for row in group if "error" in row)
        for split, source in (("val", val_key), ("test", "test")):
            for metric in METRICS:
                values = [row[source][metric] for row in scored]
                entry[f"{split}_{metric}"] = _number(float(np.mean(values))) if values else None
                entry[f"{split}_{metric}_range"] = [_number(min(values)), _number(max(values))] if values else None
            entry[f"{split}_predicts_grade_4"] = sum(row[f"{split}_predicted_grades"][4] > 0 for row in scored)
        table.append(entry)
    return table


# ---------------------------------------------------------------------------------------------------------------
# Paired differences: each refit against none, each blend against none at each refit.


def _pair(knob: str, setting: str, refit: str, first: str, second: str, label: str) -> dict[str, str]:
    return {"knob": knob, "setting": setting, "refit": refit, "first": first, "second": second,
            "first_label": describe(knob, setting), "second_label": describe(knob, NONE), "label": label}


def comparisons(axes: StudyAxes) -> list[dict[str, str]]:
    """Every paired comparison of the study: ``first`` minus ``second``, two argmax arms of the same networks."""
    refits = [refit for refit in axes.refit_labels if refit != NONE]
    blends = [blend for blend in axes.blend_labels if blend != NONE]
    pairs = [_pair("refit", refit, refit, arm_name(refit, NONE), arm_name(NONE, NONE),
                   f"{describe('refit', refit)} - no refit")
             for refit in refits]
    pairs += [_pair("blend", blend, refit, arm_name(refit, blend), arm_name(refit, NONE),
                    f"{describe('blend', blend)} - no blend ({describe('refit', refit)})")
              for refit in axes.refit_labels for blend in blends]
    return pairs


def _aligned(
    predictions: Sequence[Mapping[str, pd.DataFrame]], pair: Mapping[str, str], split: str, seeds: Sequence[int],
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    """Both arms' grades on ``split`` per seed, and the labels and patients they share (ValueError where they do
    not)."""
    reference: pd.DataFrame | None = None
    grades: dict[str, list[np.ndarray]] = {pair["first"]: [], pair["second"]: []}
    for seed, arms in zip(seeds, predictions):
        for arm in grades:
            frame = arms[arm][arms[arm]["split"] == split]
            if reference is None:
                reference = frame
            elif (frame["image"].tolist() != reference["image"].tolist()
                  or not np.array_equal(frame["actual"], reference["actual"])):
                raise ValueError(f"seed {seed}, arm {arm}: other {split} images or labels than the first seed's; "
                                 "every network must be graded on the same processed set (rerun the study)")
            grades[arm].append(frame["predicted"].to_numpy())
    assert reference is not None
    return (grades[pair["first"]], grades[pair["second"]], reference["actual"].to_numpy(),
            reference["patient"].astype(str).to_numpy())


def paired_differences(
    predictions: Sequence[Mapping[str, pd.DataFrame]], pairs: Sequence[Mapping[str, str]], *, seeds: Sequence[int],
    settings: SummarySettings,
) -> list[dict[str, Any]]:
    """Each pair's difference on validation and test in every metric, with its interval and verdict.

    ``predictions`` holds each seed's argmax arms by :func:`retinopathy.grading_study.arm_name`; a pair with an arm
    missing for some seed (its blend could not be fitted) gets no difference, and its verdict says why.
    """
    out = []
    for pair in pairs:
        missing = [seed for seed, arms in zip(seeds, predictions)
                   if pair["first"] not in arms or pair["second"] not in arms]
        for split in SPLITS:
            for metric, fn in METRICS.items():
                row: dict[str, Any] = {**pair, "split": split, "metric": metric}
                if missing:
                    out.append({**row, "difference": None, "low": None, "high": None,
                                "verdict": f"not scored: no grades for seed(s) {missing} "
                                           "(see their grade records' errors)"})
                    continue
                first, second, labels, patients = _aligned(predictions, pair, split, seeds)
                diff = paired_difference(fn, labels, first, second, patients, paired_seeds=True,
                                         names=(pair["first_label"], pair["second_label"]), **settings.keywords())
                out.append({**row, **{key: _number(diff[key]) for key in ("difference", "low", "high")},
                            "verdict": diff["verdict"]})
    return out


# ---------------------------------------------------------------------------------------------------------------
# The choice rule, on validation alone.


def choose(candidates: Mapping[str, tuple[float | None, float | None]], baseline: str = NONE) -> tuple[str, list[str]]:
    """The rule: ``candidates`` maps each setting to (the low end of its validation QWK difference's interval,
    its mean validation QWK). The settings whose low end is above zero pass; the passing one with the highest
    mean wins, else ``baseline`` stays. Returns the choice and the passing settings."""
    passing = [s for s, (low, _) in candidates.items() if low is not None and low > 0]
    if not passing:
        return baseline, passing
    return max(passing, key=lambda s: -math.inf if candidates[s][1] is None else candidates[s][1]), passing


def _decision(knob: str, differences: Mapping[str, Mapping[str, Any]], means: Mapping[str, float | None], *,
              confidence: float, current: str | None) -> dict[str, Any]:
    """:func:`choose` for one knob, from each setting's validation QWK difference and mean, with its verdict in
    words."""
    chosen, passing = choose({s: (d["low"], means[s]) for s, d in differences.items()})
    level = f"{100 * confidence:g}%"
    if not differences:
        verdict = f"{describe(knob, NONE)} stays: no setting was compared"
    elif chosen == NONE:
        verdict = (f"{describe(knob, NONE)} stays: no setting's validation QWK difference from it has a {level} "
                   "interval above zero")
    else:
        d = differences[chosen]
        others = [describe(knob, s) for s in passing if s != chosen]
        verdict = (f"{describe(knob, chosen)} replaces {describe(knob, NONE)}: its validation QWK difference, "
                   f"{d['difference']:+.3f} ({d['low']:+.3f} to {d['high']:+.3f}), has a {level} interval above zero"
                   + (f", and it has the highest mean validation QWK of those that do (also {', '.join(others)})"
                      if others else ""))
    entry: dict[str, Any] = {"knob": knob, "chosen": chosen, "passing": passing, "verdict": verdict,
                             "val_kappa_low": {s: d["low"] for s, d in differences.items()},
                             "val_kappa_mean": dict(means)}
    if current is not None:
        entry["params_yaml"] = current
        entry["agrees_with_params_yaml"] = current == chosen
    return entry


def choices(
    arms: Sequence[Mapping[str, Any]], differences: Sequence[Mapping[str, Any]], axes: StudyAxes, *, confidence: float,
    current: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """The rule applied to the refit, then to the blend on top of the refit it chose."""
    means = {(entry["refit"], entry["blend"]): entry["val_kappa"] for entry in arms}
    val = {(d["knob"], d["refit"], d["setting"]): d
           for d in differences if d["split"] == "val" and d["metric"] == "kappa"}
    current = current or {}
    refits = [r for r in axes.refit_labels if r != NONE]
    refit = _decision("refit", {r: val[("refit", r, r)] for r in refits}, {r: means[(r, NONE)] for r in refits},
                      confidence=confidence, current=current.get("refit"))
    on, blends = refit["chosen"], [b for b in axes.blend_labels if b != NONE]
    blend = _decision("blend", {b: val[("blend", on, b)] for b in blends}, {b: means[(on, b)] for b in blends},
                      confidence=confidence, current=current.get("blend"))
    return {"refit": refit, "blend": {**blend, "on_refit": on}}


def summarize(
    records: Sequence[Mapping[str, Any]], predictions: Sequence[Mapping[str, pd.DataFrame]], *, axes: StudyAxes,
    settings: SummarySettings = SummarySettings(), current: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The study's tables, differences and choices from each seed's grade record and argmax arms (in seed order).

    Raises:
        ValueError: when the records are not one per seed, or a record lacks an arm of ``axes``.
    """
    if not len(records) == len(predictions) == len(axes.seeds):
        raise ValueError(f"{len(records)} grade records and {len(predictions)} sets of grades "
                         f"for {len(axes.seeds)} seeds")
    for seed, record in zip(axes.seeds, records):
        have = {arm_name(arm["refit"], arm["blend"]) for arm in record["arms"]}
        if missing := [arm for arm in axes.arms if arm not in have]:
            raise ValueError(f"the grade record of seed {seed} has no arm {missing[0]}: it was graded with other "
                             f"refit or blend_c values than {STUDY_PARAMS} lists; rerun its grade stage")
    arms = setup_table([arm for record in records for arm in record["arms"]], ARM_KEYS, val_key="val")
    differences = paired_differences(predictions, comparisons(axes), seeds=axes.seeds, settings=settings)
    return {
        "study": {**asdict(axes), "refits": axes.refit_labels, "blend_cs": axes.blend_labels[1:]},
        "settings": asdict(settings),
        "components_blend_c": sorted({record.get("components_blend_c") for record in records}, key=str),
        "components": setup_table([row for record in records for row in record["components"]], COMPONENT_KEYS,
                                  val_key="val_2fold"),
        "arms": arms,
        "differences": differences,
        "choice": choices(arms, differences, axes, confidence=settings.confidence, current=current),
        "refits": [{"seed": seed, **refit} for seed, record in zip(axes.seeds, records) for refit in record["refits"]],
    }


# ---------------------------------------------------------------------------------------------------------------
# Reading the stages' outputs, and writing the results.


def read_study(layout: StudyLayout, axes: StudyAxes) -> tuple[list[dict[str, Any]], list[dict[str, pd.DataFrame]]]:
    """Each seed's grade record (with its train summary under ``train``) and argmax arms' grades, in seed order.

    Raises:
        FileNotFoundError: naming the first missing stage output.
    """
    records, predictions = [], []
    for seed in axes.seeds:
        name = axes.network(seed)
        record = read_json(layout.grading(name))
        record["train"] = read_json(layout.train_summary(name))
        scored = {arm_name(arm["refit"], arm["blend"]) for arm in record["arms"] if "error" not in arm}
        arms = {}
        for arm in sorted(scored & set(axes.arms)):
            path = layout.predictions(name) / f"{arm}.csv"
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: rerun the study's grade@{seed} stage (make grading-study)")
            arms[arm] = pd.read_csv(path, dtype={"image": str, "patient": str})
        records.append(record)
        predictions.append(arms)
    return records, predictions


def run_summary(layout: StudyLayout, axes: StudyAxes, *, settings: SummarySettings,
                current: Mapping[str, str] | None = None) -> dict[str, Any]:
    """:func:`summarize` of the study's outputs under ``layout``, with the machine and the seconds each stage took."""
    started = time.perf_counter()
    records, predictions = read_study(layout, axes)
    summary = summarize(records, predictions, axes=axes, settings=settings, current=current)
    train = [record["train"] for record in records]
    summary["command"] = COMMAND
    summary["machine"] = {  # where each seed was graded (cpu_info) and trained (a CPU model or a GPU name)
        "cpu": sorted({record["machine"]["cpu"] for record in records}),
        "torch_threads": sorted({record["machine"]["torch_threads"] for record in records}),
        "training": sorted({t.get("hardware") or "unknown" for t in train}),
        "summary": machine(),
    }
    summary["seconds"] = {
        "training": round(sum(t["train_seconds"] for t in train), 1),
        "grading": round(sum(record["seconds"] for record in records), 1),
        "summary": round(time.perf_counter() - started, 1),
    }
    summary["networks"] = [{"seed": seed, **{key: t.get(key) for key in ("best_epoch", "val_kappa", "train_seconds")}}
                           for seed, t in zip(axes.seeds, train)]
    return summary


def _cell(entry: Mapping[str, Any], key: str) -> str:
    """``0.909 [0.875, 0.929]``: mean [min, max] over seeds; ``-`` where not scored."""
    if entry.get(key) is None:
        return "-"
    low, high = entry[f"{key}_range"]
    return f"{entry[key]:.3f} [{low:.3f}, {high:.3f}]"


def _grade_4(entry: Mapping[str, Any]) -> str:
    scored = entry["seeds"] - entry["errors"]
    return f"{entry['val_predicts_grade_4']} / {entry['test_predicts_grade_4']} of {scored}"


def _verdict_lines(summary: Mapping[str, Any]) -> list[str]:
    level = f"{100 * summary['settings']['confidence']:g}%"
    lines = [f"The rule, applied on validation alone: a setting replaces the baseline (no refit; no blend) only if its "
             f"validation QWK difference from it has a {level} interval above zero; among those, the highest mean "
             "validation QWK wins. The refit is chosen first, the blend on top of the refit chosen.", ""]
    for knob, title in (("refit", "Classifier refit"), ("blend", "Two-eye blend")):
        entry = summary["choice"][knob]
        on = f" (on {describe('refit', entry['on_refit'])})" if knob == "blend" else ""
        line = f"- **{title}{on}:** {entry['verdict']}. Chosen: **{describe(knob, entry['chosen'])}**."
        if "params_yaml" in entry:
            agree = "agrees" if entry["agrees_with_params_yaml"] else "differs"
            line += f" params.yaml now grades with {describe(knob, entry['params_yaml'])}: the study {agree}."
        lines.append(line)
    return lines


def _header(summary: Mapping[str, Any]) -> list[str]:
    study, seconds, mach = summary["study"], summary.get("seconds"), summary.get("machine")
    arch = (f"{ARCH_LABELS.get(study['arch'], study['arch'])} "
            f"({'pretrained' if study['pretrained'] else 'from scratch'})")
    seeds = ", ".join(str(seed) for seed in study["seeds"])
    lines = [
        f"# Grading study: classifier refit and two-eye blend, {arch}",
        "",
        f"Written by the study's summarize stage: `{summary.get('command', COMMAND)}` ({STUDY_PARAMS} sets the axes; "
        "rerun the study rather than edit this file). One network per training seed "
        f"({seeds}), trained with the project's params.yaml without the classifier refit, then graded as trained and "
        "refitted, every way.",
    ]
    if mach and seconds:
        trained = "" if mach["training"] == mach["cpu"] else f" (trained on {', '.join(mach['training'])})"
        threads = ", ".join(map(str, mach["torch_threads"]))
        lines[-1] += (f" Machine: {', '.join(mach['cpu'])}; {threads} torch threads{trained}. "
                      f"Time: {seconds['training']:.0f} s training (the train stages' loops), "
                      f"{seconds['grading']:.0f} s grading, {seconds['summary']:.0f} s summary.")
    lines += [
        "",
        "**Validation** is the held-out validation split: no network trains on it, though each picked its epoch on it "
        "(one epoch for all arms of a network). The argmax arms fit nothing on it and are scored on it directly; the "
        "setups tuned on it (cut-points) are scored 2-fold over its patients (fitted on one half, scored on the other, "
        "and back). **Test** figures fit on all of validation and are never used to choose. Cells: mean over seeds "
        "[min, max].",
    ]
    return lines


def markdown(summary: Mapping[str, Any], *, figure: str | None = None) -> str:
    """The study's results as markdown: verdicts, the argmax arms, the paired differences, every setup."""
    level = f"{100 * summary['settings']['confidence']:g}%"
    lines = [*_header(summary), "", "## Verdicts", "", *_verdict_lines(summary), "",
             "## Argmax arms (no TTA): validation scored directly", "",
             "| classifier refit | two-eye blend | val QWK | val macro-F1 | val accuracy | test QWK | test macro-F1 | "
             "test accuracy | seeds predicting grade 4 (val / test) |", "|---|---|---|---|---|---|---|---|---|"]
    for e in summary["arms"]:
        cells = " | ".join(_cell(e, f"{split}_{m}") for split in SPLITS for m in METRICS)
        lines.append(f"| {describe('refit', e['refit'])} | {describe('blend', e['blend'])} | {cells} | {_grade_4(e)} |")
    lines += ["",
              f"## Paired differences (the same networks graded both ways, {len(summary['study']['seeds'])} seeds)", "",
              f"First minus second, on the same patients; the {level} interval is "
              "retinopathy.statistics.paired_difference's with paired seeds (it covers the patients and the training "
              "seeds).", "",
              f"| comparison | split | metric | difference ({level} interval) | verdict |", "|---|---|---|---|---|"]
    for d in summary["differences"]:
        value = "-" if d["difference"] is None else (
            f"{d['difference']:+.3f} ({'?' if d['low'] is None else format(d['low'], '+.3f')} to "
            f"{'?' if d['high'] is None else format(d['high'], '+.3f')})")
        lines.append(f"| {d['label']} | {SPLIT_LABELS[d['split']]} | {METRIC_LABELS[d['metric']]} | {value} "
                     f"| {d['verdict']} |")
    blend_c = ", ".join(f"{c:g}" for c in summary["components_blend_c"] if c is not None)
    lines += ["", "## Every grading setup (the ablation)", "",
              f"Validation 2-fold over its patients; the blend here is evaluate.blend_c's ({blend_c}).", "",
              "| classifier refit | decode | TTA | two-eye blend | val QWK (2-fold) | val macro-F1 (2-fold) "
              "| test QWK | test macro-F1 | test accuracy | seeds predicting grade 4 (val / test) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for e in summary["components"]:
        keys = ("val_kappa", "val_macro_f1", "test_kappa", "test_macro_f1", "test_accuracy")
        cells = " | ".join(_cell(e, key) for key in keys)
        lines.append(f"| {describe('refit', e['refit'])} | {e['decode']} | {e['tta']} "
                     f"| {'yes' if e['patient_blend'] else 'no'} | {cells} | {_grade_4(e)} |")
    errors = [e for e in (*summary["arms"], *summary["components"]) if e["errors"]]
    if errors:
        lines += ["", "Not scored for some seeds (left out of the means): " + "; ".join(
            f"{', '.join(f'{k} {e[k]}' for k in e if k in COMPONENT_KEYS + ARM_KEYS)}: "
            f"{e['errors']} seed(s), {e['error']}"
            for e in errors) + "."]
    unapplied = [r for r in summary.get("refits", []) if r["refit"] != NONE and not r.get("applied")]
    if unapplied:  # then that seed's refit arm is the network as trained
        lines += ["", "Refit not applied (the layer kept as trained): " + "; ".join(
            f"seed {r['seed']}, {describe('refit', r['refit'])}: {r.get('reason', 'no reason recorded')}"
            for r in unapplied) + "."]
    if figure is not None:
        lines += ["", f"![paired QWK differences, validation and test]({figure})"]
    return "\n".join(lines) + "\n"


def draw_differences(summary: Mapping[str, Any], path: str | os.PathLike[str], *, dpi: int = 110) -> None:
    """The QWK differences on validation and test, with their intervals (:func:`retinopathy.plotting.forest`)."""
    rows = [{**d, "label": f"{d['label']} ({SPLIT_LABELS[d['split']]})"} for d in summary["differences"]
            if d["metric"] == "kappa" and d["difference"] is not None]
    rows = [{**row, **{key: math.nan if row[key] is None else row[key] for key in ("low", "high")}} for row in rows]
    forest(rows, path, dpi=dpi, title=f"Grading study: QWK differences over {len(summary['study']['seeds'])} seeds")


def write_results(summary: Mapping[str, Any], out_dir: str | os.PathLike[str], *, docs: str | os.PathLike[str],
                  dpi: int = 110) -> dict[str, Path]:
    """``grading.json``, ``grading.md`` and ``grading.png`` in ``out_dir``, and the same markdown at ``docs`` (its
    figure link made relative to it), each written atomically."""
    out = Path(out_dir)
    paths = {"json": out / "grading.json", "md": out / "grading.md", "png": out / "grading.png", "docs": Path(docs)}
    write_json(paths["json"], summary)
    draw_differences(summary, paths["png"], dpi=dpi)
    for key, figure in (("md", paths["png"].name), ("docs", os.path.relpath(paths["png"], paths["docs"].parent))):
        with atomic_path(paths[key]) as tmp:
            tmp.write_text(markdown(summary, figure=Path(figure).as_posix()))
    return paths
