"""The committed checkpoints (weights/): at most five, each at most 10 MB, each with the training record that made
it, each loading as the model that record trained (architecture, rates, classes, epochs), zoo files from a clean
commit. The README's commands score them; these tests only hold the files to what the project promises of them."""

from __future__ import annotations

import csv
import json
import math
import subprocess
from pathlib import Path

import pytest
import torch

from deeplab_edge.checkpoint import load_checkpoint
from deeplab_edge.models import get_model

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


def _committed() -> list[Path]:
    """The files of weights/ that git tracks (what a clone gets; a local experiment's checkpoint left beside them
    is not the project's), or every file there outside a git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "weights"], cwd=WEIGHTS.parent, capture_output=True,
                             check=True, timeout=60).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        return sorted(p for p in WEIGHTS.iterdir() if p.is_file())
    return sorted(p for p in (WEIGHTS.parent / name for name in out.split("\0") if name) if p.is_file())


COMMITTED = _committed()
FILES = [p for p in COMMITTED if p.suffix == ".pt"]
LIMIT = 10 * 10**6


def test_at_most_five_checkpoints_and_nothing_else_binary():
    assert 1 <= len(FILES) <= 5, [f.name for f in FILES]
    for f in COMMITTED:
        assert f.suffix in {".pt", ".json", ".csv"}, f"{f.name}: only checkpoints and their records belong here"


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_checkpoint_is_small_recorded_and_loads_as_what_was_trained(path: Path):
    assert path.stat().st_size <= LIMIT, f"{path.name}: {path.stat().st_size} bytes, over 10 MB"
    record_json, record_csv = path.with_suffix(".train_record.json"), path.with_suffix(".train_record.csv")
    assert record_json.is_file() and record_csv.is_file(), f"{path.name}: no training record beside it"
    record = json.loads(record_json.read_text())
    config, epochs = record["config"], record["epochs"]
    assert len(epochs) == config["epochs"], "the record stops before its last epoch"
    assert [e["epoch"] for e in epochs] == list(range(1, config["epochs"] + 1))
    assert all(math.isfinite(e["loss"]) for e in epochs)
    with record_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [e["epoch"] for e in epochs]
    assert [float(r["loss"]) for r in rows] == pytest.approx([e["loss"] for e in epochs], rel=1e-9)

    loaded = load_checkpoint(path)
    model, meta = loaded.model, loaded.meta
    assert loaded.classes == record["classes"]
    assert model.num_classes == len(record["classes"])
    assert meta["source"]["epochs"] == config["epochs"]
    if config.get("arch"):  # a zoo head built from the imported trunk
        assert model.config["arch"] == config["arch"]
        if config.get("aspp_rates"):
            assert list(model.config["aspp_rates"]) == list(config["aspp_rates"])
        zoo = meta["zoo"]
        commit = config["extra"]["environment"]["git_commit"]
        assert zoo["trained_at_commit"] == commit and zoo["epochs"] == config["epochs"]
        assert commit and not commit.endswith("-dirty"), "trained from a tree with uncommitted changes"
    else:  # fine-tuned from an earlier checkpoint
        assert config["weights"]
    # the parameters are those of a fresh builder of the same config (the builder is the reference)
    kwargs = {k: v for k, v in model.config.items() if k != "arch"}
    fresh = get_model(model.config["arch"], **kwargs)
    assert {k: tuple(v.shape) for k, v in fresh.state_dict().items()} == \
           {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if meta.get("stored_dtype") == "float16":  # every float weight is exactly a float16 value
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                assert torch.equal(t, t.half().float()), name
    # it segments: a forward pass gives finite logits at the checkpoint's class count
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 65, 81))
    out = out["out"] if isinstance(out, dict) else out
    assert out.shape == (1, model.num_classes, 65, 81) and torch.isfinite(out).all()
