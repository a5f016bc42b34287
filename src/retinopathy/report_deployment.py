"""The report's sections on what happens after the test set: another site's patients (external validation), whether
the probabilities can be trusted (calibration, referral), and which photographs are refused (the gradability gate).

Every number is read from the evaluate, compare, quality_gate and preprocess stages' files.
"""

from __future__ import annotations

from typing import Any

from retinopathy.results import describe

REFERRED = (0.0, 0.1, 0.2)  # the referral table's shares


def interval_text(entry: dict[str, float] | None, digits: int = 3) -> str:
    """``value (low-high)``; "undefined" for a metric that could not be computed."""
    if entry is None:
        return "undefined"
    return f"{entry['value']:.{digits}f} ({entry['low']:.{digits}f}-{entry['high']:.{digits}f})"


def _grade_cells(m: dict[str, Any]) -> list[str]:
    return [interval_text(m["intervals"]["kappa"]), interval_text(m["intervals"]["accuracy"]),
            interval_text(m["referable"]["auc"])]


def _external_table(evals: dict[str, list[dict]]) -> list[str]:
    lines = ["| variant (seed) | set | QWK | accuracy | referable AUC |", "|---|---|---|---|---|"]
    for variant, runs in evals.items():
        for m in runs:
            for name, record in (("in-domain test", m), ("external", m["external"])):
                lines.append(f"| {describe(variant)} ({m['seed']}) | {name} | " + " | ".join(_grade_cells(record))
                             + " |")
    return lines


def _shift_table(shift: dict[str, Any]) -> list[str]:
    lines = ["| variant | QWK | accuracy | referable AUC |", "|---|---|---|---|"]
    for variant, rows in shift["variants"].items():
        cells = [f"{r['difference']:+.3f} ({r['low']:+.3f} to {r['high']:+.3f}): {r['verdict']}"
                 for r in (rows["kappa"], rows["accuracy"], rows["referable_auc"])]
        lines.append(f"| {describe(variant)} | " + " | ".join(cells) + " |")
    return lines


def _deployed_points_table(evals: dict[str, list[dict]]) -> list[str]:
    lines = ["| variant (seed) | point | threshold | in-domain sensitivity / specificity "
             "| external sensitivity / specificity |", "|---|---|---|---|---|"]
    for variant, runs in evals.items():
        for m in runs:
            external = m["external"]["referable"].get("operating_points", {})
            for name, point in m["referable"]["operating_points"].items():
                if "threshold" not in point or name not in external:
                    continue
                there = external[name]
                lines.append(
                    f"| {describe(variant)} ({m['seed']}) | {name.replace('_', ' ')} | {point['threshold']:.3f} | "
                    f"{interval_text(point['test_sensitivity'])} / {interval_text(point['test_specificity'])} | "
                    f"{interval_text(there['sensitivity'])} / {interval_text(there['specificity'])} |")
    return lines


def external_lines(evals: dict[str, list[dict]], compared: dict[str, Any]) -> list[str]:
    """The external-validation section: both sets' scores side by side, the drop with its interval, and the
    operating points chosen on in-domain validation applied unchanged to the site; empty when no site was scored."""
    shift = compared.get("external")
    first = next(iter(evals.values()))[0]
    if shift is None or "external" not in first:
        return []
    site = first["external"]["site"]
    return [
        f"Every model scored on {site['images']} photographs of {site['patients']} patients of another site "
        f"(`{site['source']}` layout under `{site['root']}`; {site['patients_formed']}), graded with "
        f"{site['grading']}. Nothing of the site is used for training, selection or fitting. Each cell: value "
        "(95% patient-bootstrap interval).",
        "",
        *_external_table(evals),
        "",
        "In-domain minus external (95% interval over both sets' patients"
        + (", and the training seeds" if len(first_runs(evals)) > 1 else "") + "):",
        "",
        *_shift_table(shift),
        "",
        "Referable DR at the operating points chosen on in-domain validation, applied unchanged to the external site "
        "(as a deployed threshold meets a new clinic):",
        "",
        *_deployed_points_table(evals),
    ]


def first_runs(evals: dict[str, list[dict]]) -> list[dict]:
    """The first variant's evaluations (one per seed)."""
    return next(iter(evals.values()))


def _referral_cells(curve: list[dict[str, Any]]) -> list[str]:
    rows = {round(r["referred_fraction"], 4): r for r in curve}
    cells = []
    for share in REFERRED:
        r = rows.get(share)
        cells.append("-" if r is None else
                     f"{r['kappa']:.3f} / {r['accuracy']:.3f} / {_num(r['referable_sensitivity'])} / "
                     f"{_num(r['referable_specificity'])}")
    return cells


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def calibration_lines(evals: dict[str, list[dict]]) -> list[str]:
    """The calibration and referral section: ECE with its interval per set, and the referral table at 0, 10 and
    20% referred; empty for evaluations without calibration records."""
    first = first_runs(evals)[0]
    if "calibration" not in first:
        return []
    has_external = "external" in first
    head = "| variant (seed) | test ECE |" + (" external ECE |" if has_external else "")
    lines = [
        f"Expected calibration error ({first['calibration']['definition']}; {first['calibration']['bins']} bins; "
        "95% patient-bootstrap interval). 0 is perfectly calibrated.",
        "",
        head, "|---|---|" + ("---|" if has_external else ""),
    ]
    for variant, runs in evals.items():
        for m in runs:
            cells = [interval_text(m["calibration"]["ece"])]
            if has_external:
                cells.append(interval_text(m["external"]["calibration"]["ece"]))
            lines.append(f"| {describe(variant)} ({m['seed']}) | " + " | ".join(cells) + " |")
    lines += [
        "", "![reliability diagrams](figures/calibration.png)", "",
        f"Referral ({first['referral']['confidence']}), as a screening service sends its least sure cases to a "
        "human grader; each cell "
        "gives the kept images' QWK / accuracy / referable sensitivity / specificity (referable called at "
        f"P(grade >= 2) >= {first['referral'].get('referable_threshold', 0.5):g}).",
        "",
        "| variant (seed) | set | " + " | ".join(f"{share:.0%} referred" for share in REFERRED) + " |",
        "|---|---|" + "---|" * len(REFERRED),
    ]
    for variant, runs in evals.items():
        for m in runs:
            sets = [("test", m)] + ([("external", m["external"])] if has_external else [])
            for name, record in sets:
                lines.append(f"| {describe(variant)} ({m['seed']}) | {name} | "
                             + " | ".join(_referral_cells(record["referral"]["curve"])) + " |")
    return [*lines, "", "![referral curves](figures/referral.png)", *_temperature_lines(evals)]


def _temperature_lines(evals: dict[str, list[dict]]) -> list[str]:
    """Temperature scaling fitted on validation: its effect on ECE and referable AUC (reported, not applied)."""
    fitted = [(variant, m) for variant, runs in evals.items() for m in runs
              if m.get("temperature_scaling", {}).get("fitted")]
    if not fitted:
        return []
    sets = [name for name in ("test", "external") if name in fitted[0][1]["temperature_scaling"]]
    header = " | ".join(f"{n} ECE | {n} referable AUC" for n in sets)
    lines = ["", "Temperature scaling (Guo et al. 2017), one temperature fitted on validation by negative "
             "log-likelihood and reported only (the grades above are unscaled; under argmax grading it changes no "
             "grade, so QWK stays as it is): ECE and referable AUC before -> after.", "",
             f"| variant (seed) | temperature | {header} |", "|---|---|" + "---|---|" * len(sets)]
    for variant, m in fitted:
        t = m["temperature_scaling"]
        cells = []
        for name in sets:
            before, after = t[name]["before"], t[name]["after"]
            cells += [f"{interval_text(before['ece'])} -> {interval_text(after['ece'])}",
                      f"{before['referable_auc']:.3f} -> {after['referable_auc']:.3f}"]
        lines.append(f"| {describe(variant)} ({m['seed']}) | {t['temperature']:.2f} | " + " | ".join(cells) + " |")
    return lines


def gate_lines(gate: dict[str, Any] | None, preprocess: dict[str, Any] | None) -> list[str]:
    """The gradability gate's section: its error rates on the gradability set, and how many of the pipeline's own
    images it calls ungradable; empty without the quality_gate stage's result."""
    if gate is None:
        return []
    sens, spec = gate["sensitivity"], gate["specificity"]
    lines = [
        f"The gate of `retinopathy predict` (docs/quality.md) on the embedded gradability set: {gate['images']} "
        f"photographs, half gradable, half with one defect each ({gate['interval']} intervals). Positive: ungradable.",
        "",
        f"- sensitivity (ungradable refused): {interval_text(sens)} of {sens['images']}",
        f"- specificity (gradable passed): {interval_text(spec)} of {spec['images']}",
        "",
        "| defect | refused |", "|---|---|",
        *[f"| {name.replace('_', ' ')} | {interval_text(r)} of {r['images']} |" for name, r in
          gate["sensitivity_per_defect"].items()],
    ]
    quality = (preprocess or {}).get("quality")
    if quality:
        lines += ["", _preprocess_quality(quality)]
    return lines


def _preprocess_quality(quality: dict[str, Any]) -> str:
    """One sentence on the gate's verdicts on the images the pipeline trained and tested on."""
    def count(key: str) -> int:  # a total, or counts per split
        value = quality.get(key, 0)
        return int(sum(value.values()) if isinstance(value, dict) else value)

    ungradable = count("ungradable")
    total = ungradable + count("gradable")
    policy = quality.get("on_ungradable", "keep")
    return (f"Of the {total} images preprocessing cropped, the gate called {ungradable} ungradable "
            f"(`preprocess.on_ungradable: {policy}`: {'kept' if policy == 'keep' else 'left out'}).")
