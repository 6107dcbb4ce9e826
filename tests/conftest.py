import os
import random
from pathlib import Path

# Triton kernels must see this before they are decorated (tests run them in the interpreter).
os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VOC = SHARED / "data" / "voc2012_samples"
CAMVID = SHARED / "data" / "camvid_val"
TFLITE = SHARED / "models" / "deeplabv3_mnv2_pascal_quant.tflite"
REFERENCE = SHARED / "data" / "reference"
REF_JSON = REFERENCE / "deeplabv3_mnv2_pascal_quant__voc2012_samples.json"
REF_PRED = REFERENCE / "deeplabv3_mnv2_pascal_quant__voc2012_samples_pred"


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(scope="session")
def shared() -> dict[str, Path]:
    """Paths into ../shared (real data and the real TFLite model); skips when it is absent."""
    if not (VOC.is_dir() and TFLITE.is_file()):
        msg = f"real shared data not found at {SHARED} (expected beside the repository)"
        if os.environ.get("DEEPLAB_EDGE_REQUIRE_SHARED"):
            pytest.fail(msg)
        pytest.skip(msg)
    return {"voc": VOC, "camvid": CAMVID, "tflite": TFLITE, "ref_json": REF_JSON, "ref_pred": REF_PRED}


@pytest.fixture(scope="session")
def imported(shared, tmp_path_factory):
    """The real MobileNetV2 VOC model imported once per session: (checkpoint path, model, meta)."""
    from deeplab_edge.checkpoint import save_checkpoint
    from deeplab_edge.tflite_import import import_tflite

    model, meta = import_tflite(shared["tflite"])
    path = tmp_path_factory.mktemp("ckpt") / "mnv2_voc.pt"
    save_checkpoint(model, meta, path)
    return path, model, meta
