"""A PyTorch model as a runner (eager, ``torch.compile`` or with the fused Triton ASPP)."""

from __future__ import annotations

import torch

from ..data.preprocess import Preprocess
from ..errors import DeepLabEdgeError
from ..kernels.dtypes import DTYPES

__all__ = ["TorchRunner", "DTYPES"]


class TorchRunner:
    """A PyTorch model in eval mode on one device and dtype."""

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu", precision: str = "fp32",
                 channels_last: bool = False, *, preprocess: Preprocess | None = None,
                 classes: list[str] | None = None) -> None:
        if precision not in DTYPES:
            raise ValueError(f"expected precision in {tuple(DTYPES)}, got {precision!r}")
        self.device = torch.device(device)
        self.dtype = DTYPES[precision]
        if self.device.type == "cpu" and self.dtype == torch.float16:
            raise DeepLabEdgeError("fp16 convolutions are not supported on the CPU; use --precision fp32 or bf16")
        self.channels_last = channels_last
        self.model = model.eval().to(self.device, self.dtype)
        self.num_classes = int(getattr(model, "num_classes", 0)) or None
        self.preprocess = preprocess or Preprocess.from_dict({})
        self.classes = list(classes or [])
        self.info: dict = {"backend": "torch", "device": str(self.device), "precision": precision}
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.device, self.dtype, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x).float()
