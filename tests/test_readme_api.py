"""The README's Python API block, run as written (paths pointed at the real data and a temp folder)."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
WEIGHTS = ROOT / "weights"
RECORD = json.loads((ROOT / "bench" / "results" / "camvid_val_mnv2_single.json").read_text())


@pytest.mark.slow
def test_readme_python_api_block_runs(shared, tmp_path):
    text = README.read_text()
    section = text[text.index("## Python API"):text.index("## Commands")]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 8 <= len([ln for ln in code.splitlines() if ln.strip()]) <= 14  # the "10 lines" a user writes
    code = (code.replace('"../shared/data/camvid_val"', repr(str(shared["camvid"])))
                .replace('"weights/', '"' + str(WEIGHTS) + '/')
                .replace('"camvid.onnx"', repr(str(tmp_path / "camvid.onnx"))))
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["labels"].shape == ns["image"].shape[:2] and ns["image_id"] == RECORD["per_image"][0]["id"]
    # the committed CamVid model's mIoU on CamVid val as recorded when it was committed (8b49414), and ONNX Runtime
    # (an independent runtime) on the exported file
    assert ns["miou"] == pytest.approx(RECORD["miou"], abs=1e-3)  # CPU record; a GPU may differ
    assert ns["onnx_miou"] == pytest.approx(RECORD["miou"], abs=2e-3) and (tmp_path / "camvid.onnx").is_file()
