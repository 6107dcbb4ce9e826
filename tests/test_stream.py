"""`predict --video`: a video made of real VOC images, segmented frame by frame; each frame's
classes must be the ones the model gives for the decoded frame itself."""

import json
import os
import stat

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
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask  # a usual file, not the temporary file's 0600
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


@pytest.mark.slow
def test_sigterm_ends_a_stream_with_the_frames_so_far(shared, imported, tmp_path):
    """A camera session is stopped by Ctrl-C or, under a supervisor, SIGTERM: the frame in progress is finished,
    the video written so far is kept, complete, and the JSON counts exactly the frames in it."""
    from cli_child import run_and_signal  # tests/

    from deeplab_edge.data import open_dataset

    img = cv2.resize(open_dataset(shared["voc"]).load(0)[1], (64, 48), interpolation=cv2.INTER_AREA)
    long = tmp_path / "long.mp4"
    w = cv2.VideoWriter(str(long), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (64, 48))
    for _ in range(2000):
        w.write(np.ascontiguousarray(img[..., ::-1]))
    w.release()
    out = tmp_path / "out"

    def writing():  # OpenCV opens the partial video beside -o (and writes its header) at the first frame
        return any(f.stat().st_size > 0 for f in tmp_path.glob(".long_overlay.*.mp4"))

    rc, stdout, stderr = run_and_signal(["predict", "--weights", str(imported[0]), "--device", "cpu", "--video",
                                         str(long), "-o", str(out), "--json"], tmp_path, writing)
    assert rc == 0, stderr[-2000:]
    res = json.loads(stdout)
    cap = cv2.VideoCapture(res["output"])
    n = 0
    while cap.read()[0]:
        n += 1
    assert 0 < res["frames"] < 2000 and n == res["frames"] == len(res["per_frame"]), (res["frames"], n)
    assert res["stopped_by"] == "SIGTERM"
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".")] == []
