"""Stage report: the study written up as the lab report it reproduces, from the committed outputs; it draws nothing
itself.

Every number in it is read from the evaluate, compare and preprocess stages' files, and every
conclusion follows its interval: where an interval spans 0 the report says "no detectable
difference", never "improves".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from retinopathy.report_deployment import calibration_lines, external_lines, gate_lines
from retinopathy.report_deployment import interval_text as _ci
from retinopathy.results import ARCHS, PRETRAINED, describe, read_json, variant_name
from retinopathy.utils import atomic_path

METRIC_NAMES = {"accuracy": "accuracy", "kappa": "QWK", "macro_f1": "macro-F1", "referable_auc": "referable AUC"}


def _signed(c: dict[str, Any]) -> str:
    return f"{c['difference']:+.3f} ({c['low']:+.3f} to {c['high']:+.3f})"


def _results_table(evals: dict[str, list[dict]], compared: dict[str, Any]) -> list[str]:
    lines = ["| variant | seeds | accuracy | QWK | macro-F1 | referable AUC |", "|---|---|---|---|---|---|"]
    for variant, runs in evals.items():
        row = compared["variants"][variant]
        if len(runs) == 1:
            m = runs[0]
            cells = [
                _ci(m["intervals"]["accuracy"]), _ci(m["intervals"]["kappa"]), _ci(m["intervals"]["macro_f1"]),
                _ci(m["referable"]["auc"]),
            ]
        else:  # mean over seeds, and the seeds' standard deviation
            cells = [
                f"{row[k]:.3f} (sd {row[k + '_sd']:.3f})" for k in ("accuracy", "kappa", "macro_f1", "referable_auc")
            ]
        lines.append(f"| {describe(variant)} | {len(runs)} | " + " | ".join(cells) + " |")
    return lines


def _screening_table(evals: dict[str, list[dict]], key: str) -> list[str]:
    lines = [("| variant (seed) | AUC | high-sensitivity point: sensitivity / specificity "
              "| high-specificity point: sensitivity / specificity |"),
             "|---|---|---|---|"]
    for variant, runs in evals.items():
        for m in runs:
            s = m[key]
            cells = []
            for point in ("high_sensitivity", "high_specificity"):
                p = s["operating_points"].get(point, {})
                cells.append(
                    p["error"] if "error" in p else f"{_ci(p['test_sensitivity'])} / {_ci(p['test_specificity'])}"
                )
            lines.append(f"| {describe(variant)} ({m['seed']}) | {_ci(s['auc'])} | " + " | ".join(cells) + " |")
    return lines


def _setup_name(row: dict[str, Any]) -> str:
    decode = {
        "argmax": "argmax", "expected": "expected grade, tuned cut-points", "cut-points": "tuned cut-points",
    }[row["decode"]]
    return f"{decode}; TTA {row['tta']}; two-eye blend {'yes' if row['patient_blend'] else 'no'}"


def _configured_setup(grading: dict[str, Any]) -> str:
    """The setup an evaluation reports (its ``grading`` record), named as in the components table."""
    decode = "cut-points" if grading["head"] == "regression" else grading["decoder"]["decode"]
    return _setup_name({"decode": decode, "tta": grading["tta"], "patient_blend": grading["patient_blend"]})


def _blend_lines(evals: dict[str, list[dict]]) -> list[str]:
    """What each configured two-eye blend was fitted on (nothing when the blend is off)."""
    first = next(iter(evals.values()))[0]["grading"]
    if not first["patient_blend"]:
        return []
    lines = [f"Two-eye blend (logistic regressions on each eye's {first['blend'].get('inputs', 'outputs')} and its "
             "partner's, fitted on the training images' outputs; the partner's weight is the ratio of its "
             "coefficients' norm to the eye's own):"]
    for variant, runs in evals.items():
        lines.append(
            f"- {describe(variant)}: "
            + "; ".join(f"seed {m['seed']}: {_blend_fit(m['grading']['blend'])}" for m in runs)
        )
    return [*lines, ""]


def _blend_fit(blend: dict[str, Any]) -> str:
    """One model's blend record (retinopathy.decoding.PatientBlend.to_dict, or why it was not fitted), in words."""
    if not blend.get("fitted", True):
        return f"not fitted ({blend['reason']})"
    return (
        f"C {blend['c']:g}, {blend['paired_images']} paired images, "
        f"partner's weight {blend['partner_to_own_weight']:.2f}"
    )


def _refit_lines(evals: dict[str, list[dict]]) -> list[str]:
    """What the classifier refit (retinopathy.refit) did to each model: validation QWK before and after."""
    lines = ["Classifier refit (last layer refitted on the frozen training features after the chosen epoch; "
             "validation QWK with argmax, before -> after; used for selection: validation chose the epoch and the "
             "refit's C, so these figures are in-sample and read high):"]
    for variant, runs in evals.items():
        parts = []
        for m in runs:
            refit = m["grading"]["refit"]  # evaluation records it, with a reason when the model file has none
            if refit["applied"]:
                parts.append(f"seed {m['seed']}: C {refit['c']:g}, "
                             f"{refit['val_kappa_before']:.3f} -> {refit['val_kappa_after']:.3f}"
                             + ("" if refit["converged"] else " (not converged)"))
            else:
                parts.append(f"seed {m['seed']}: not applied ({refit['reason']})")
        lines.append(f"- {describe(variant)}: " + "; ".join(parts))
    return lines


def _stage_times(evals: dict[str, list[dict]], train_dir: Path | None, preprocess: dict[str, Any] | None) -> list[str]:
    """Each stage's recorded wall time (preprocess, train, evaluate; seconds), as a table, with the CPU."""
    lines = ["| stage | seconds |", "|---|---|"]
    if preprocess and "seconds" in preprocess:
        lines.append(f"| preprocess (images only) | {preprocess['seconds']:.1f} |")
    for variant, runs in evals.items():
        for m in runs:
            key = f"{variant}-{m['seed']}"
            summary = (
                read_json(train_dir / f"{key}.json")
                if train_dir is not None and (train_dir / f"{key}.json").is_file()
                else {}
            )
            if "seconds" in summary:
                lines.append(f"| train@{key} | {summary['seconds']:.1f} (epochs {summary['train_seconds']:.1f}) |")
            if "seconds" in m:
                lines.append(f"| evaluate@{key} | {m['seconds']:.1f} |")
    return lines


def _better(c: dict[str, Any]) -> str:
    """``<better> better than <worse>``, for a difference whose interval excludes 0 (every metric here: higher is
    better)."""
    first, second = describe(c["first"]), describe(c["second"])
    better, worse = (first, second) if c["difference"] > 0 else (second, first)
    return f"{better} better than {worse}"


def _detected(c: dict[str, Any]) -> bool:
    """Whether a comparison shows a difference: its interval excludes 0 and its verdict is not "undetermined"
    (an undefined interval, or one model with a single seed against several: see
    retinopathy.statistics.paired_difference)."""
    return bool(c["low"] > 0 or c["high"] < 0) and not c["verdict"].startswith("undetermined")


def _paired_note(compared: dict[str, Any], n_seeds: int) -> str:
    """What the intervals of the paired differences cover and how they are built, in words."""
    resamples = compared["settings"]["resamples"]
    if n_seeds == 1:
        return ("Differences on the same test patients, first minus second, with 95% percentile intervals from "
                f"{resamples} bootstrap replicates that resample test patients (both eyes together, the same patients "
                "for both variants) only: with one seed per variant, training randomness is not in these intervals.")
    return (f"Differences on the same test patients, first minus second, mean over {n_seeds} training seeds. Each 95% "
            "interval adds the variance between training seeds (each seed's metric on all test patients: training "
            f"randomness) to the variance of the difference over {resamples} bootstrap replicates that resample test "
            "patients (both eyes together, the same patients for both variants: test-set sampling), and takes a "
            "Student t quantile with Welch-Satterthwaite degrees of freedom (df): with few seeds the df are few and "
            "the intervals wide, by design (retinopathy.statistics.paired_difference).")


def _paired_table(compared: dict[str, Any]) -> list[str]:
    """The paired differences, one row each; with a df column where the intervals have degrees of freedom."""
    comparisons = compared["comparisons"]
    with_df = any("df" in c for c in comparisons)
    header = ["question", "metric", "difference (95% interval)", *(["df"] if with_df else []), "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in comparisons:
        df = [f"{c['df']:.1f}" if "df" in c else "-"] if with_df else []
        lines.append(
            "| " + " | ".join([c["question"], METRIC_NAMES[c["metric"]], _signed(c), *df, c["verdict"]]) + " |"
        )
    return lines


def _screening_note(first: dict[str, Any]) -> str:
    """How the sensitivity and specificity intervals are built (the evaluation records their method)."""
    point = next((p for p in first["referable"]["operating_points"].values() if "test_sensitivity" in p), None)
    method = None if point is None else point["test_sensitivity"].get("method")
    if method is None:  # an evaluation written before proportion intervals: patient bootstrap
        return "Sensitivity and specificity intervals: patient bootstrap."
    return (f"Sensitivity and specificity intervals: {method}, a binomial interval on the number of eyes divided by "
            "the design effect of two eyes per patient (retinopathy.statistics.proportion_interval), so that a "
            "proportion of 1 still gets a lower bound below 1; the AUC interval is the patient bootstrap.")


def _conclusions(compared: dict[str, Any]) -> list[str]:
    lines = []
    for question in dict.fromkeys(c["question"] for c in compared["comparisons"]):
        parts = [c for c in compared["comparisons"] if c["question"] == question]
        detected = [c for c in parts if _detected(c)]
        summary = "; ".join(f"{METRIC_NAMES[c['metric']]} {_signed(c)}" for c in parts)
        if detected:
            verdicts = "; ".join(f"{METRIC_NAMES[c['metric']]}: {_better(c)}" for c in detected)
            answer = f"a difference is detected in {len(detected)} of {len(parts)} metrics ({verdicts})."
        elif all(c["low"] <= 0 <= c["high"] for c in parts):
            answer = "no detectable difference in any metric: every interval spans 0."
        else:
            answer = "undetermined: " + "; ".join(f"{METRIC_NAMES[c['metric']]}: {c['verdict']}" for c in parts) + "."
        lines.append(f"- **{question}** {answer} Differences (first minus second, 95% interval): {summary}.")
    return lines


def _scope_lines(n_seeds: int) -> list[str]:
    """What the conclusions below are findings about: with one training seed, one training run, not the study."""
    if n_seeds > 1:
        return []
    return ["With one training seed per variant these are findings about one training run: another seed, or another "
            "CPU (bf16 where fp32 was used), can reverse a verdict, since the intervals leave training randomness out. "
            "The study's answers, over several seeds, are the seeds study's: `make seeds-study`, docs/seeds.md.", ""]


def _read_evaluations(eval_dir: Path, seeds: Sequence[int], archs: Sequence[str]) -> dict[str, list[dict]]:
    """Each variant's evaluation record per seed (with its ``seed``), in the report's variant order."""
    evals: dict[str, list[dict]] = {}
    for arch in archs:
        for pretrained in PRETRAINED:
            variant = variant_name(arch, pretrained)
            evals[variant] = [{**read_json(eval_dir / f"{variant}-{seed}.json"), "seed": seed} for seed in seeds]
    return evals


def _section(title: str, lines: list[str]) -> list[str]:
    """``lines`` under a ``## title`` heading, followed by a blank line; nothing when there are no lines."""
    return [f"## {title}", "", *lines, ""] if lines else []


def _title_lines(first: dict[str, Any], seeds: Sequence[int]) -> list[str]:
    """The report's title, where it comes from, and the machine and seeds behind it."""
    return [
        "# Diabetic-retinopathy grading with ResNet18 and ResNet50, with and without pretraining",
        "",
        "Generated by the `report` stage (`dvc repro report`) from the pipeline's outputs; do not edit by hand.",
        "",
        f"Machine: {first.get('hardware', 'unknown')}, precision {first.get('precision', 'fp32')}. "
        f"Training seeds: {', '.join(map(str, seeds))}.",
        "",
    ]


def _data_lines(balance: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """Images per split and grade, and the test set's images and patients."""
    return [
        "| split | images | grade 0 | grade 1 | grade 2 | grade 3 | grade 4 |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {split} | {b['total']} | " + " | ".join(str(c) for c in b["counts"]) + " |"
            for split, b in balance.items()
        ],
        "",
        f"Test: {settings['test_images']} images of {settings['test_patients']} patients; every interval counts "
        "patients, not eyes (a bootstrap resamples both eyes of a patient together).",
    ]


def _results_lines(evals: dict[str, list[dict]], compared: dict[str, Any], first: dict[str, Any],
                   n_seeds: int, figure: str | None = "figures/summary.png") -> list[str]:
    """The test results table, with what its cells hold, and the summary figure (unless ``figure`` is None)."""
    return [
        ("Each cell: value (95% patient-bootstrap interval, "
         f"{first['bootstrap']['resamples']} resamples)." if n_seeds == 1 else
         f"Each cell: mean over {n_seeds} training seeds (standard deviation over seeds)."),
        "",
        *_results_table(evals, compared),
        *(["", f"![summary]({figure})"] if figure else []),
    ]


def _paired_lines(compared: dict[str, Any], n_seeds: int) -> list[str]:
    """The paired differences: how their intervals are built and read, their table and the forest plot."""
    return [
        _paired_note(compared, n_seeds),
        "",
        "A variant is called better than another only where the 95% interval of their difference excludes zero; "
        "where it spans zero, the verdict is \"no detectable difference\".",
        "",
        *_paired_table(compared),
        "",
        "![paired differences](forest.png)",
    ]


def _screening_lines(evals: dict[str, list[dict]], first: dict[str, Any]) -> list[str]:
    """Referable and sight-threatening DR: how the operating points were chosen, their tables and the ROC figure."""
    referable = first["referable"]
    scored_by = referable["definition"].split("scored by ")[-1]
    points = referable["operating_points"]
    min_sensitivity = points.get("high_sensitivity", {}).get("target", {}).get("min_sensitivity", "?")
    min_specificity = points.get("high_specificity", {}).get("target", {}).get("min_specificity", "?")
    return [
        f"Scored by {scored_by}. Operating points chosen on the validation set (high sensitivity: the highest "
        f"threshold with validation sensitivity >= {min_sensitivity}; high specificity: the lowest threshold with "
        f"validation specificity >= {min_specificity}) and applied unchanged to test "
        f"({referable['test_positives']} referable, {referable['test_negatives']} not). "
        + _screening_note(first),
        "",
        *_screening_table(evals, "referable"),
        "",
        "![ROC, referable](figures/roc_referable.png)",
        "",
        "Sight-threatening DR (grade >= 3), the same way:",
        "",
        *_screening_table(evals, "sight_threatening"),
    ]


def _grading_lines(evals: dict[str, list[dict]], first: dict[str, Any]) -> list[str]:
    """The refit of each model, the grading the results use, and the two-eye blend's fits."""
    return [
        *_refit_lines(evals),
        "",
        f"The reported results grade with: {first['grading']['head']} head, "
        f"{_configured_setup(first['grading'])}"
        f" (test patients with one eye, graded from it alone: {first['grading']['test_patients_with_one_eye']}).",
        "",
        *_blend_lines(evals),
        "Other ways of grading the same kind of model (decodings, TTA, the blend, the refit, over several seeds, "
        "compared on held-out validation) are the grading study's: `make grading-study`, docs/grading.md.",
    ]


def write_report(
    path: str | os.PathLike[str],
    *,
    seeds: Sequence[int],
    compared: dict[str, Any],
    balance: dict[str, Any],
    eval_dir: str | os.PathLike[str],
    setup: dict[str, Any],
    archs: Sequence[str] = ARCHS,
    train_dir: str | os.PathLike[str] | None = None,
    preprocess: dict[str, Any] | None = None,
    gate: dict[str, Any] | None = None,
) -> str:
    """Write ``path`` (markdown) and return its text; ``gate`` is the quality_gate stage's result, where it ran."""
    evals = _read_evaluations(Path(eval_dir), seeds, archs)
    first = next(iter(evals.values()))[0]
    settings = compared["settings"]
    text = [
        *_title_lines(first, seeds),
        *_section("Data", _data_lines(balance, settings)),
        *_section("Setup", [f"- `{key}`: {value}" for key, value in setup.items()]),
        *_section("Results on the test set", _results_lines(evals, compared, first, len(seeds))),
        *_section("Paired differences", _paired_lines(compared, len(seeds))),
        *_section("Screening: referable DR (grade >= 2)", _screening_lines(evals, first)),
        *_section("External validation", external_lines(evals, compared)),
        *_section("Calibration and referral", calibration_lines(evals)),
        *_section("Gradability gate", gate_lines(gate, preprocess)),
        *_section("Grading: classifier refit, decoding, TTA and the two-eye blend", _grading_lines(evals, first)),
        *_section("Confusion matrices", [f"![confusion {arch}](figures/confusion_{arch}.png)" for arch in archs]),
        *_section("Conclusions", [*_scope_lines(len(seeds)), *_conclusions(compared)]),
        *_section("Stage times", [
            f"Wall seconds each stage recorded on {first.get('hardware', 'unknown')} (imports excluded).",
            "",
            *_stage_times(evals, None if train_dir is None else Path(train_dir), preprocess),
        ]),
    ]
    out = "\n".join(text)
    with atomic_path(path) as tmp:
        tmp.write_text(out)
    return out


def write_seeds_summary(
    path: str | os.PathLike[str],
    *,
    seeds: Sequence[int],
    compared: dict[str, Any],
    eval_dir: str | os.PathLike[str],
    archs: Sequence[str] = ARCHS,
    per_seed: dict[int, dict[str, Any]] | None = None,
) -> str:
    """Write the seeds study's answers (studies/seeds/) to ``path`` (markdown, beside its forest.png) and return
    them: the machine, each variant over the seeds, the paired differences with their intervals and the verdicts,
    and, from ``per_seed`` (seed: that seed's comparison alone), the QWK verdict a one-seed run would have given."""
    evals = _read_evaluations(Path(eval_dir), seeds, archs)
    first = next(iter(evals.values()))[0]
    text = [
        "# The study's questions over training seeds",
        "",
        "Generated by the seeds study's `summarize` stage (`make seeds-study`, studies/seeds/dvc.yaml); "
        "do not edit by hand.",
        "",
        f"Machine: {first.get('hardware', 'unknown')}, precision {first.get('precision', 'fp32')}. "
        f"Training seeds: {', '.join(map(str, seeds))} ({len(seeds)} per variant).",
        "",
        *_section("Results on the test set", _results_lines(evals, compared, first, len(seeds), figure=None)),
        *_section("Paired differences", _paired_lines(compared, len(seeds))),
        *_section("Answers", _conclusions(compared)),
        *(_section("One seed at a time", _per_seed_lines(per_seed)) if per_seed else []),
    ]
    out = "\n".join(text)
    with atomic_path(path) as tmp:
        tmp.write_text(out)
    return out


def _per_seed_lines(per_seed: dict[int, dict[str, Any]]) -> list[str]:
    """Each question's QWK difference and verdict from each seed alone (patient-bootstrap intervals): what a one-seed
    run of the main pipeline with that seed would report."""
    questions = list(dict.fromkeys(c["question"] for c in next(iter(per_seed.values()))["comparisons"]))
    lines = [
        "The QWK difference (95% patient-bootstrap interval) and its verdict from each training seed alone, as a "
        "one-seed run of the main pipeline with that seed reports them:",
        "",
        "| seed | " + " | ".join(questions) + " |",
        "|---|" + "---|" * len(questions),
    ]
    for seed, compared in per_seed.items():
        kappa = {c["question"]: c for c in compared["comparisons"] if c["metric"] == "kappa"}
        cells = [f"{_signed(kappa[q])}: {_winner(kappa[q])}" for q in questions]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return lines


def _winner(c: dict[str, Any]) -> str:
    """``<better> better`` where the interval excludes 0, else "no detectable difference"."""
    if not _detected(c):
        return "no detectable difference"
    return f"{describe(c['first'] if c['difference'] > 0 else c['second'])} better"
