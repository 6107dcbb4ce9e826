"""Keep trained zoo runs (issue 28): runs/zoo/NAME/last.pt -> weights/FILE.pt with float16 storage (every zoo file
at most 10 MB; loading casts back to float32, and the bench scores the kept file itself), and the run's training
record beside it. Refuses a run that has not finished its epochs or whose record is not from a clean commit.

    python bench/experiments/zoo_keep.py largefov v2_aspp_l v3_rates v3plus
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from deeplab_edge.checkpoint import load_checkpoint, save_checkpoint

KEPT = {"largefov": "deeplab_largefov_mnv2_camvid", "v2_aspp_l": "deeplabv2_mnv2_camvid",
        "v3_rates": "deeplabv3_rates_mnv2_camvid", "v3plus": "deeplabv3plus_mnv2_camvid"}
LIMIT = 10 * 10**6


def keep(name: str, runs: Path, out: Path, epochs: int) -> Path:
    run = runs / name
    try:
        record = json.loads((run / "train_record.json").read_text())
        commit = record["config"]["extra"]["environment"]["git_commit"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"{run}: no readable training record ({e!r}); train it with bench/experiments/zoo_train.sh")
    if len(record["epochs"]) < epochs:
        sys.exit(f"{run}: {len(record['epochs'])} of {epochs} epochs; finish it with bench/experiments/zoo_train.sh")
    if not commit or commit.endswith("-dirty"):
        sys.exit(f"{run}: trained from commit {commit!r}, not a clean tree; train it again from a clean checkout")
    loaded = load_checkpoint(run / "last.pt")
    meta = {k: v for k, v in loaded.meta.items() if k != "sha256"}  # the new file has its own
    meta["zoo"] = {"run": name, "trained_at_commit": commit, "epochs": len(record["epochs"])}
    dest = out / f"{KEPT[name]}.pt"
    tmp = save_checkpoint(loaded.model, meta, out / f".{KEPT[name]}.pt.tmp", half=True)
    size = tmp.stat().st_size
    if size > LIMIT:  # the kept file (if any) stays as it was
        tmp.unlink()
        sys.exit(f"{dest}: {size / 1e6:.1f} MB, over the 10 MB a committed checkpoint may have")
    tmp.replace(dest)
    for suffix in ("json", "csv"):
        shutil.copyfile(run / f"train_record.{suffix}", out / f"{KEPT[name]}.train_record.{suffix}")
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="+", choices=sorted(KEPT))
    ap.add_argument("--runs", type=Path, default=Path("runs/zoo"))
    ap.add_argument("--out", type=Path, default=Path("weights"))
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()
    for name in args.names:
        dest = keep(name, args.runs, args.out, args.epochs)
        print(f"{name}: {dest} ({dest.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
