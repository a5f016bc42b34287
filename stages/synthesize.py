"""Stage synthesize: render the embedded default data set (synthetic fundus photographs) in the course layout, an
external site's test set (another camera and clinic, in the Kaggle layout) and a gradability test set."""

from __future__ import annotations

import argparse

from retinopathy.embedded import write_synthetic_set
from retinopathy.params import load_params, load_settings
from retinopathy.settings import SyntheticSpec
from retinopathy.sites import write_external_site, write_quality_set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="data/synthetic")
    parser.add_argument("--external", default="data/external", help="folder of the external site")
    parser.add_argument("--quality", default="data/quality", help="folder of the gradability set")
    args = parser.parse_args()

    spec = load_settings(SyntheticSpec, load_params(args.params))
    table = write_synthetic_set(args.out, spec)
    counts = table.groupby("split").size().to_dict()
    print(f"wrote {len(table)} images to {args.out}: {counts}")
    external = write_external_site(args.external, spec)
    print(f"wrote {len(external)} images of the external site to {args.external}: grades "
          f"{external['level'].value_counts().sort_index().to_dict()}")
    quality = write_quality_set(args.quality, spec)
    print(f"wrote {len(quality)} images of the gradability set to {args.quality}: "
          f"{quality['defect'].value_counts().to_dict()}")


if __name__ == "__main__":
    main()
