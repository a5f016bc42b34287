"""Stage synthesize: render the embedded default data set (synthetic fundus photographs) in the course layout."""

from __future__ import annotations

import argparse
from dataclasses import fields

from retinopathy.embedded import SyntheticSpec, write_synthetic_set
from retinopathy.params import check_known, get, load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="data/synthetic")
    args = parser.parse_args()

    params = load_params(args.params)
    names = [f.name for f in fields(SyntheticSpec)]
    check_known(params, "synthetic", names)
    kinds = {f.name: float if f.type in (float, "float") else int for f in fields(SyntheticSpec)}
    spec = SyntheticSpec(**{name: get(params, f"synthetic.{name}", kinds[name]) for name in names})
    table = write_synthetic_set(args.out, spec)
    counts = table.groupby("split").size().to_dict()
    print(f"wrote {len(table)} images to {args.out}: {counts}")


if __name__ == "__main__":
    main()
