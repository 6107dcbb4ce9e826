"""The README's Python API block, run as written (paths pointed at the real data and a temp folder)."""

import json
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_python_api_block_runs(shared, imported, tmp_path):
    text = README.read_text()
    section = text[text.index("## Python API"):text.index("## Commands")]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 8 <= len([ln for ln in code.splitlines() if ln.strip()]) <= 14  # the "10 lines" a user writes
    code = (code.replace('"../shared/data/voc2012_samples"', repr(str(shared["voc"])))
                .replace('"mnv2_voc.pt"', repr(str(imported[0])))
                .replace('"mnv2.onnx"', repr(str(tmp_path / "mnv2.onnx"))))
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["labels"].shape == ns["image"].shape[:2] and ns["image_id"] == "0"
    # the recorded TFLite interpreter's mIoU on these 9 images (an independent runtime), as in test_cli
    ref = json.loads(shared["ref_json"].read_text())
    assert abs(ns["miou"] - ref["miou"]) < 0.01
    assert ns["onnx_miou"] == pytest.approx(ns["miou"], abs=2e-3) and (tmp_path / "mnv2.onnx").is_file()
