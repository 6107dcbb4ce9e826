"""Segmenting a video file or a live camera frame by frame, with the live frame rate.

OpenCV reads and writes the frames (``opencv-python-headless``; JetPack ships its own OpenCV).
The overlay video is written to a temporary file and renamed when the stream ends, so a
failed run leaves no half-written video; Ctrl-C (the way a camera session
ends), or SIGTERM, finishes the video with the frames written so far; a second one stops at once.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .data.datasets import voc_palette
from .errors import DataError, DeepLabEdgeError
from .interrupts import deferred_stop
from .outputs import atomic_path
from .visualize import overlay

__all__ = ["segment_stream", "open_capture"]


def _cv2():
    # ffmpeg writes its own complaints ("moov atom not found") straight to stderr; our errors say it in one
    # line. Set OPENCV_FFMPEG_LOGLEVEL yourself to see them.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    try:
        import cv2
    except ImportError as e:
        raise DeepLabEdgeError("video and camera input need OpenCV: pip install 'deeplab-edge[video]' "
                               "(opencv-python-headless)") from e
    return cv2


def open_capture(source: str | int):
    cv2 = _cv2()
    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        what = f"camera {source}" if isinstance(source, int) else f"{source}"
        raise DataError(f"{what}: cannot be opened as a video (unsupported codec, or no such camera); convert "
                        "it to H.264 MP4 (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4) or check the camera index")
    return cap


def segment_stream(segmenter, source: str | int, output: Path, *, alpha: float = 0.5, max_frames: int | None = None,
                   classes: list[str] | None = None, console=None) -> dict[str, Any]:
    """Segment every frame of ``source`` (file path or camera index) into ``output/<name>_overlay.mp4``.

    Returns frame count, end-to-end FPS, the model's median time per frame and, per frame, the
    fraction of pixels of each class."""
    cv2 = _cv2()
    cap = open_capture(source)
    fps_in = cap.get(cv2.CAP_PROP_FPS) or 25.0
    name = f"camera{source}" if isinstance(source, int) else Path(source).stem
    final = Path(output) / f"{name}_overlay.mp4"
    palette = voc_palette()
    classes = classes or [f"class_{i}" for i in range(segmenter.num_classes)]
    writer = None
    per_frame, model_ms = [], []
    frames = 0
    status = console.status("starting") if console is not None else None
    t0 = time.perf_counter()
    # the first Ctrl-C or SIGTERM ends the session after the current frame (a second one at once, video removed)
    with atomic_path(final, suffix=".mp4") as tmp, deferred_stop() as stop:  # OpenCV goes by the suffix
        try:
            if status is not None:
                status.start()
            while (max_frames is None or frames < max_frames) and not stop:
                ok, bgr = cap.read()
                if not ok or stop:
                    break
                rgb = np.ascontiguousarray(bgr[..., ::-1])
                n_calls = len(segmenter.timing.model_calls)
                labels = segmenter.predict(rgb)
                model_ms.extend(1e3 * t for t in segmenter.timing.model_calls[n_calls:])
                if writer is None:
                    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps_in,
                                             (rgb.shape[1], rgb.shape[0]))
                    if not writer.isOpened():
                        raise DeepLabEdgeError(f"{final}: OpenCV cannot write MPEG-4 video here; install "
                                               "opencv-python-headless from PyPI")
                writer.write(np.ascontiguousarray(overlay(rgb, labels, palette, alpha)[..., ::-1]))
                counts = np.bincount(labels.ravel(), minlength=segmenter.num_classes)
                per_frame.append({classes[c]: float(counts[c] / labels.size) for c in np.nonzero(counts)[0]})
                frames += 1
                if status is not None:
                    fps = frames / (time.perf_counter() - t0)
                    status.update(f"frame {frames}: {fps:.1f} FPS, model {model_ms[-1]:.1f} ms")
            wall = time.perf_counter() - t0
            if frames == 0 and stop:
                raise KeyboardInterrupt  # stopped before the first frame: nothing to keep
            if frames == 0:
                raise DataError(f"{source}: no frames could be read; check that the file plays or the camera is free")
        finally:  # the video is complete before atomic_path renames it into place
            if status is not None:
                status.stop()
            if writer is not None:
                writer.release()
            cap.release()
    return {"source": str(source), "output": str(final), "frames": frames, "fps": frames / wall,
            "model_ms_p50": float(np.median(model_ms)), "input_fps": fps_in,
            "stopped_by": stop.signal, "per_frame": per_frame}
