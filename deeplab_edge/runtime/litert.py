"""Run a DeepLab TFLite model with the LiteRT interpreter (``ai-edge-litert``) as a runner.

The runner takes the same normalised NCHW batches as every other runner and undoes the
normalisation to feed the interpreter the uint8 pixels it expects; this is exact for the
imported preprocessing, which is read from the same graph. Models that end in ``ArgMax``
(like Google's) give labels, not logits: they are returned as one-hot scores, so argmax
(and so mIoU and predicted masks) is exact, but the scores carry no confidence.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.preprocess import Preprocess
from ..errors import DeepLabEdgeError
from ..tflite_import import TFLiteGraph, parse, preprocess_of

__all__ = ["TFLiteRunner"]


class TFLiteRunner:
    def __init__(self, path: str | Path, num_threads: int | None = None) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise DeepLabEdgeError("running .tflite models needs ai-edge-litert; pip install ai-edge-litert") from e
        parsed = parse(TFLiteGraph(path))
        self.num_classes = int(parsed.logits.weight.shape[0])
        self.preprocess = Preprocess.from_dict(preprocess_of(parsed))
        self.interp = Interpreter(model_path=str(path), num_threads=num_threads)
        self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        self.classes: list[str] = []  # a .tflite file carries no class names
        self.info = {"backend": "litert", "tflite": str(path), "precision": np.dtype(self.inp["dtype"]).name,
                     "device": "cpu"}

    def synchronize(self) -> None:
        """The interpreter's invoke() returns when its outputs are ready."""

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.preprocess.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocess.std).view(1, 3, 1, 1)
        pixels = (batch.float() * std + mean).round().clamp(0, 255).permute(0, 2, 3, 1).numpy()
        outs = []
        for img in pixels:
            if self.inp["dtype"] == np.uint8:
                x = img.astype(np.uint8)[None]
            elif self.inp["dtype"] == np.int8:
                x = (img.astype(np.int16) - 128).astype(np.int8)[None]
            else:
                x = ((img - mean.view(3).numpy()) / std.view(3).numpy()).astype(np.float32)[None]
            if tuple(x.shape) != tuple(self.inp["shape"]):
                raise DeepLabEdgeError(f"the TFLite model takes {tuple(self.inp['shape'])}, got {tuple(x.shape)}")
            self.interp.set_tensor(self.inp["index"], x)
            self.interp.invoke()
            y = self.interp.get_tensor(self.out["index"])[0]
            if y.ndim == 2:  # ArgMax labels -> one-hot scores
                scores = np.zeros((self.num_classes,) + y.shape, np.float32)
                np.put_along_axis(scores, y[None].astype(np.int64), 1.0, axis=0)
            else:
                scale, zero = self.out.get("quantization", (0.0, 0))
                yf = (y.astype(np.float32) - zero) * scale if scale else y.astype(np.float32)
                scores = yf.transpose(2, 0, 1)
            outs.append(torch.from_numpy(np.ascontiguousarray(scores)))
        return torch.stack(outs)
