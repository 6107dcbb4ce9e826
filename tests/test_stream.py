"""`predict --video`: a video made of real VOC images, segmented frame by frame; each frame's
classes must be the ones the model gives for the decoded frame itself."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from deeplab_edge.cli import main

cv2 = pytest.importorskip("cv2", reason="OpenCV (opencv-python-headless, in the dev extra) is not installed")


@pytest.fixture(scope="module")
def voc_video(shared, tmp_path_factory):
    from deeplab_edge.data import open_dataset

    ds = open_dataset(shared["voc"])
    path = tmp_path_factory.mktemp("video") / "voc.mp4"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (320, 240))
    for i in range(3):
        img = cv2.resize(ds.load(i)[1], (320, 240), interpolation=cv2.INTER_AREA)
        w.write(np.ascontiguousarray(img[..., ::-1]))
    w.release()
    return path


def test_predict_video_frames_match_the_model(voc_video, imported, tmp_path):
    from deeplab_edge.data.preprocess import Preprocess
    from deeplab_edge.inference import Segmenter
    from deeplab_edge.runtime.pytorch import TorchRunner

    r = CliRunner().invoke(main, ["predict", "--weights", str(imported[0]), "--device", "cpu", "--video",
                                  str(voc_video), "-o", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["frames"] == 3 and res["fps"] > 0 and res["model_ms_p50"] > 0
    out = tmp_path / "voc_overlay.mp4"
    assert res["output"] == str(out) and out.is_file()
    cap = cv2.VideoCapture(str(out))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 3
    # reference: the model run directly on the frames as OpenCV decodes them
    seg = Segmenter(TorchRunner(imported[1], "cpu"), Preprocess.from_dict(imported[2]["preprocess"]), 21)
    cap = cv2.VideoCapture(str(voc_video))
    for frame in res["per_frame"]:
        ok, bgr = cap.read()
        assert ok
        labels = seg.predict(np.ascontiguousarray(bgr[..., ::-1]))
        counts = np.bincount(labels.ravel(), minlength=21) / labels.size
        got = np.zeros(21)
        names = imported[2]["classes"]
        for name, frac in frame.items():
            got[names.index(name)] = frac
        np.testing.assert_allclose(got, counts, atol=1e-9)
        assert got.max() > 0.05 and got.sum() == pytest.approx(1.0)


def test_predict_stream_bad_input(imported, tmp_path):
    r = CliRunner().invoke(main, ["predict", "--weights", str(imported[0]), "--video", str(tmp_path / "none.mp4"),
                                  "-o", str(tmp_path)])
    assert r.exit_code == 2 and "video file not found" in r.output
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    r = CliRunner().invoke(main, ["predict", "--weights", str(imported[0]), "--video", str(bad), "-o",
                                  str(tmp_path / "o")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert not list((tmp_path / "o").glob("*.mp4"))
    r = CliRunner().invoke(main, ["predict", "--weights", str(imported[0]), "-o", str(tmp_path)])
    assert r.exit_code == 2 and "--video" in r.output
