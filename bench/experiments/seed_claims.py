"""The seed's claims from a several-model bench result (issue 28): writes OUT.json and OUT.md.

    python bench/experiments/seed_claims.py bench/results/bench_zoo_camvid_val.json -o bench/results/seed_claims_camvid_val
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from deeplab_edge.bench.claims import claims_markdown, seed_claims
from deeplab_edge.bench.report import load_result
from deeplab_edge.outputs import atomic_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("result", type=Path, help="bench_<tag>.json of a several-model bench run")
    ap.add_argument("-o", "--output", type=Path, required=True, help="OUT: writes OUT.json and OUT.md")
    args = ap.parse_args()
    doc = load_result(args.result)
    claims = {**seed_claims(doc), "source": str(args.result)}
    md = claims_markdown(claims)
    for suffix, text in ((".json", json.dumps(claims, indent=1, default=str)), (".md", md)):
        with atomic_path(args.output.with_suffix(suffix)) as tmp:
            tmp.write_text(text)
    print(md)


if __name__ == "__main__":
    main()
