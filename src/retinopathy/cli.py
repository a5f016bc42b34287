"""The ``retinopathy`` command: argument parsing only; the work is in :mod:`retinopathy.grading` and
:mod:`retinopathy.export`.

Exit status: 0 when everything was done, 1 when some photographs could not be read or were ungradable (named on
stderr), 2 on a usage error (bad flag, missing model file, a file that is not a retinopathy model, a device this
machine lacks, an output path that is an existing directory or collides with an input, the model or another
output); after a usage error nothing has been written or removed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from retinopathy.settings import EXTERNAL_SOURCES

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2

MAIN_EPILOG = """\
examples:
  retinopathy predict models/resnet18-true-42.pt photos/ --out grades.csv
  retinopathy predict models/resnet18-true-42.pt 10_left.jpeg 10_right.jpeg --heatmaps heatmaps/
  retinopathy evaluate models/resnet18-true-42.pt --source messidor2 --root ~/data/messidor2 --out m2.json
  retinopathy export models/resnet18-true-42.pt --onnx resnet18.onnx

Run `retinopathy <command> --help` for each command's options. Also runs as `python -m retinopathy`.
"""

PREDICT_EPILOG = """\
INPUT is any mix of image files, folders (searched recursively for .jpeg/.jpg/.png/.tif/.tiff,
in sorted order) and CSV lists (one column of paths, or a column named `image` or `path`;
relative paths are taken from the CSV's folder).

Each photograph is preprocessed exactly as the model's training set was (the settings are stored
in the model file), and graded in the precision the model was trained and evaluated in (recorded in
the model file) where this machine runs it natively, else in fp32 (an fp32 model always in fp32).
Before grading, each photograph passes a gradability gate (docs/quality.md): is it a fundus
photograph at all (a field of view of a plausible size, a retina's colour), and could a grader
grade it (exposure, focus, how much of the retina is usable)? One that fails gets a row with
gradable = False, its quality_reasons, and no grade or probabilities, as screening systems answer
"ungradable", and is named on stderr; --no-quality-gate grades it anyway (the verdict stays in the CSV).
The CSV has one row per photograph read: image, patient, eye, gradable, quality_reasons, grade,
p0..p4, p_referable (= p2 + p3 + p4, referable DR) and patient_grade. For names like `clinicA/10_left.jpeg` the patient
is the folder and the name before _left/_right (`clinicA/10`) and the eye is left; both are empty for
other names. patient_grade is the worse eye's grade, filled only when a left and a right photograph of
that patient (same folder, same number) were graded; photographs in different folders are never one
patient. The grade follows the model's own decoding (argmax, or cut-points tuned on its validation set;
a regression head's p0..p4 come from its fitted cumulative-link model); each eye is graded alone
(the evaluate stage's two-eye blend is not applied here).
A photograph that cannot be read (not an image, truncated, empty, over 100 megapixels, or anything
else that fails while reading it) is named on stderr with its reason and gets NO row; the others are
still graded. 100 megapixels is several times any fundus camera's frame; the
limit refuses "decompression bombs", tiny files whose header claims a huge image.
The CSV is written whole at the end (atomically), also when nothing could be graded.
A model trained on the embedded synthetic set (the model file records its data.source) gets a warning
on stderr: its grades of real photographs mean nothing; a model file that does not record what it was
trained on gets a softer one.

Outputs never overwrite what is read: --out and --heatmaps may not be, lie inside or contain an
INPUT (file, folder, CSV list or a listed image), the MODEL or each other, and --out may not be an
existing directory. --heatmaps may be a new or an existing folder; a heatmap replaces one of the
same name, other files there are left alone.

exit status: 0 all graded, 1 some could not be read or were ungradable, 2 usage error (bad flag, missing model
file, not a retinopathy model, --device cuda without CUDA, an output path refused as above);
after a usage error nothing has been written or removed.

examples:
  retinopathy predict models/resnet18-true-42.pt photos/ --out grades.csv
  retinopathy predict models/resnet50-true-42.pt list.csv extra.jpeg --heatmaps heatmaps/ --device cpu
"""

EVALUATE_EPILOG = """\
SOURCE is the layout of the labelled set under --root (docs/real-data.md):
  course     the course layout; its test split (train_img.csv ... test_label.csv, <name>.jpeg)
  kaggle     Kaggle 2015: trainLabels.csv and train/<image>.jpeg; every labelled row
  aptos      APTOS 2019: train.csv and train_images/<id_code>.png; every labelled row
  idrid      IDRiD disease grading: "B. Disease Grading/2. Groundtruths/a. IDRiD_Disease Grading_Training
             Labels.csv" (and b. ..._Testing Labels.csv), images "B. Disease Grading/1. Original Images/
             a. Training Set/<Image name>.jpg" (and b. Testing Set); each image its own patient
  messidor2  Messidor-2, adjudicated grades (Krause et al. 2018): messidor_data.csv, images by image_id
             anywhere under --root (.png, .JPG); ungradable rows left out and counted; the two images
             of an examination are one patient where messidor-2.csv pairs them
A set with another grade scale is refused. Every photograph is cropped as the model's training set
was, graded by the model's own decoding; the JSON has accuracy, QWK and macro-F1 with 95%
patient-bootstrap intervals, the confusion matrix and per-grade recall, and referable DR (grade >= 2)
AUC, sensitivity and specificity at P(referable) >= 0.5; the expected calibration error (with its
interval) and the reliability diagram's bins; the referral curve (the metrics of the images kept
when the least confident 0-50% go to a grader); the CSV (--predictions, default FILE.csv beside
--out) one row per photograph. A label
problem (a grade outside 0..4, a missing image, a duplicate) is named with its file and row, and
nothing is written; so is a photograph that cannot be cropped, unless --skip-bad-images. A model trained
on the embedded synthetic set, or one that does not record what it was trained on, gets a warning on stderr.

exit status: 0 scored, 2 usage error or a problem in the set (named; nothing written).

example:
  retinopathy evaluate models/resnet18-true-42.pt --source idrid --root ~/data/IDRiD --out idrid.json
"""

EXPORT_EPILOG = """\
Writes OUT.onnx (input `image`: float32 N x 3 x size x size; output `probabilities`: N x 5, softmax
inside the graph; dynamic batch axis), checks it with onnxruntime against PyTorch on a batch (the
largest difference of probabilities is printed; above 1e-4 nothing is written), and writes OUT.json
next to it with the model's metadata: preprocessing settings, mean, std, grade names, provenance.
Neither may be an existing directory, the MODEL, or the other (exit status 2, nothing written).

Grading with the ONNX file alone (no PyTorch, no this package), per photograph:
  1. decode as 8-bit RGB, upright (apply the EXIF orientation);
  2. field of view: pixels with grey level > preprocessing.fov_threshold; the horizontal extent of
     the bright columns is the circle's diameter, its centre row from the chords at top and bottom;
  3. crop the circle's bounding square (black where it leaves the frame), resize to
     preprocessing.size x preprocessing.size with Lanczos;
  4. if preprocessing.graham: 4 * (img - GaussianBlur(img, radius = graham_sigma * size)) + 128,
     black outside 95% of the circle;
  5. divide by 255, subtract `mean`, divide by `std` (per RGB channel), as N x 3 x H x W float32;
  6. if decoding.decode is argmax: grade = argmax of `probabilities`; if expected: grade = the number of
     decoding.cutpoints at or below sum(k * p_k); P(referable) = p2 + p3 + p4.
Classification heads only: a regression-head model is refused (its output is not probabilities).
The reference implementation of steps 1-4 is retinopathy.preprocessing.crop_photograph.

example:
  retinopathy export models/resnet18-true-42.pt --onnx resnet18.onnx
  python -c "import onnxruntime as ort; print(ort.InferenceSession('resnet18.onnx').get_inputs()[0])"
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``retinopathy`` parser with its ``predict`` and ``export`` subcommands."""
    parser = argparse.ArgumentParser(
        prog="retinopathy",
        description="Grade diabetic retinopathy (0-4) in colour fundus photographs with a trained model.",
        epilog=MAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    predict = commands.add_parser(
        "predict", help="grade photographs, write a CSV (and Grad-CAM heatmaps)",
        description="Grade photographs with a trained model.",
        epilog=PREDICT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument("model", metavar="MODEL", help="a trained model, e.g. models/resnet18-true-42.pt")
    predict.add_argument("inputs", metavar="INPUT", nargs="+", help="image files, folders and CSV lists")
    predict.add_argument("--out", default="grades.csv",
                         help="CSV to write; never an input, the model or a folder (default: %(default)s)")
    predict.add_argument("--heatmaps", metavar="DIR",
                         help="write one PNG per photograph: Grad-CAM of the predicted grade over the photograph "
                         "(a new or existing folder apart from the inputs)")
    predict.add_argument("--batch-size", type=int, default=32,
                         help="photographs per forward pass (default: %(default)s)")
    predict.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                         help="auto: CUDA when present; cuda without one is a usage error (default: %(default)s)")
    predict.add_argument("--no-quality-gate", dest="quality_gate", action="store_false",
                         help="grade every photograph with a field of view, also those the gradability gate calls "
                         "ungradable (its verdict is still in the CSV); for research on such images only")
    evaluate = commands.add_parser(
        "evaluate", help="score a model on a labelled set it never saw (external validation)",
        description="Score a trained model on a labelled external set: accuracy, QWK, macro-F1 and referable "
        "screening, with intervals over patients.",
        epilog=EVALUATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluate.add_argument("model", metavar="MODEL", help="a trained model, e.g. models/resnet18-true-42.pt")
    evaluate.add_argument("--source", required=True, choices=EXTERNAL_SOURCES,
                          help="the set's layout (all grade on the ICDR 0-4 scale)")
    evaluate.add_argument("--root", required=True, metavar="DIR", help="the set's folder, as it is laid out")
    evaluate.add_argument("--out", required=True, metavar="FILE.json", help="metrics JSON to write")
    evaluate.add_argument("--predictions", metavar="FILE.csv",
                          help="per-photograph predictions CSV to write (default: --out with .csv)")
    evaluate.add_argument("--idrid-sets", nargs="+", choices=["train", "test"], default=["train", "test"],
                          help="IDRiD only: which of its sets to score (default: both)")
    evaluate.add_argument("--skip-bad-images", action="store_true",
                          help="leave out photographs that cannot be cropped (counted in the JSON) instead of "
                          "stopping")
    evaluate.add_argument("--batch-size", type=int, default=32, help="photographs per forward pass (default: 32)")
    evaluate.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                          help="auto: CUDA when present (default: %(default)s)")
    export = commands.add_parser(
        "export", help="export a model to ONNX (probabilities out), verified with onnxruntime",
        description="Export a trained model to ONNX.",
        epilog=EXPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("model", metavar="MODEL", help="a trained model, e.g. models/resnet18-true-42.pt")
    export.add_argument("--onnx", required=True, metavar="OUT.onnx",
                        help="the ONNX file to write; OUT.json goes next to it")
    return parser


# The library is imported inside the commands: `--help` and a bad flag answer without loading torch.


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on a usage error, 0 after --help
        return int(exc.code or 0)
    try:
        if args.command == "predict":
            return _predict(args)
        if args.command == "evaluate":
            return _evaluate(args)
        return _export(args)
    except FileNotFoundError as exc:
        print(f"retinopathy {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:  # not a retinopathy model, a bad --batch-size, a missing device, a refused output path
        print(f"retinopathy {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (IsADirectoryError, NotADirectoryError) as exc:  # an output path that became a folder (or a file)
        # while running
        print(f"retinopathy {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _predict(args: argparse.Namespace) -> int:
    from retinopathy.grading import grade_photographs, summary_table

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    grading = grade_photographs(args.model, args.inputs, out=args.out, heatmaps=args.heatmaps,
                                batch_size=args.batch_size, device=args.device, quality_gate=args.quality_gate)
    print(summary_table(grading))
    print(f"wrote {args.out}"
          + (f" and {len(grading.heatmaps)} heatmap(s) in {args.heatmaps}" if args.heatmaps else ""))
    return EXIT_SOME_FAILED if grading.failures or grading.ungradable else EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    from retinopathy.external import evaluate_external, read_external
    from retinopathy.utils import OutputPathError, check_outputs_apart

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    out = Path(args.out)
    predictions = Path(args.predictions) if args.predictions else out.with_suffix(".csv")
    for what, path in (("--out", out), ("the predictions CSV", predictions)):
        if path.is_dir():
            raise OutputPathError(f"{what} {path} is an existing directory (nothing was written)")
    check_outputs_apart([("--out", out), ("the predictions CSV", predictions)],
                        [("the model", args.model), ("--root", args.root)])
    if not Path(args.model).is_file():
        raise FileNotFoundError(f"model file not found: {args.model}")
    data = read_external(args.source, args.root, idrid_sets=tuple(args.idrid_sets))
    metrics = evaluate_external(args.model, data, out=out, predictions=predictions, device=args.device,
                                batch_size=args.batch_size, skip_bad_images=args.skip_bad_images)
    external, kappa = metrics["external"], metrics["intervals"]["kappa"]
    auc = metrics["referable"]["auc"]
    print(f"{args.source}: {external['images']} images of {external['patients']} patients "
          f"({external['patients_formed']})")
    for reason, count in external["left_out"].items():
        print(f"left out: {count} {reason}")
    print(f"accuracy {metrics['accuracy']:.4f}, QWK {metrics['kappa']:.4f} [{kappa['low']:.3f}, {kappa['high']:.3f}], "
          f"macro-F1 {metrics['macro_f1']:.4f}"
          + (f", referable AUC {auc['value']:.3f} [{auc['low']:.3f}, {auc['high']:.3f}]" if auc else ""))
    ece = metrics["calibration"]["ece"]
    print(f"expected calibration error {ece['value']:.3f} [{ece['low']:.3f}, {ece['high']:.3f}]; referring the "
          "least confident: " + ", ".join(f"{row['referred_fraction']:.0%} -> QWK {row['kappa']:.3f}"
                                         for row in metrics["referral"]["curve"] if row["referred_fraction"] <= 0.2))
    print(f"wrote {out} and {predictions}")
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from retinopathy.export import export_onnx

    sidecar = export_onnx(args.model, args.onnx)
    check = sidecar["onnx"]
    print(f"wrote {args.onnx} and {Path(args.onnx).with_suffix('.json')}; onnxruntime vs PyTorch on a batch of "
          f"{check['checked_batch']}: "
          f"max abs difference of probabilities {check['max_abs_difference']:.2e}")
    return EXIT_OK

