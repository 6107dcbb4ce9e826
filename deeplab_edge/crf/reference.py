"""The reference implementation: Krähenbühl's densecrf (C++) through pydensecrf."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DeepLabEdgeError
from .params import CRFParams

__all__ = ["pydensecrf_crf"]


def pydensecrf_crf(image: np.ndarray, unary: torch.Tensor, p: CRFParams) -> torch.Tensor:
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as e:
        raise DeepLabEdgeError("the pydensecrf CRF needs pydensecrf: pip install pydensecrf2 (it imports as "
                               "pydensecrf; the 2018 'pydensecrf' sdist does not build with Cython 3)") from e
    labels, h, w = unary.shape
    crf = dcrf.DenseCRF2D(w, h, labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary.reshape(labels, -1).numpy(), dtype=np.float32))
    crf.addPairwiseGaussian(sxy=p.theta_gamma, compat=p.w2, kernel=dcrf.DIAG_KERNEL,
                            normalization=dcrf.NORMALIZE_SYMMETRIC)
    crf.addPairwiseBilateral(sxy=p.theta_alpha, srgb=p.theta_beta, rgbim=np.require(image, np.uint8, ["C", "W"]),
                             compat=p.w1,
                             kernel=dcrf.DIAG_KERNEL, normalization=dcrf.NORMALIZE_SYMMETRIC)
    q = np.array(crf.inference(p.iterations), dtype=np.float32).reshape(labels, h, w)
    return torch.from_numpy(q)
