"""Stage synthesize: render the embedded default data set (synthetic fundus photographs) in the course layout."""

from __future__ import annotations

import argparse

from retinopathy.embedded import write_synthetic_set
from retinopathy.params import load_params, load_settings
from retinopathy.settings import SyntheticSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="data/synthetic")
    args = parser.parse_args()

    spec = load_settings(SyntheticSpec, load_params(args.params))
    table = write_synthetic_set(args.out, spec)
    counts = table.groupby("split").size().to_dict()
    print(f"wrote {len(table)} images to {args.out}: {counts}")


if __name__ == "__main__":
    main()
