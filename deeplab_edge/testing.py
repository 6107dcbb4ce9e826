"""Helpers shared by the tests and the fixture generators (torch only, no other imports).

Tolerances for comparing tensors live here, in one table.
"""

from __future__ import annotations

import math

import torch

# dtype -> (atol, rtol) for comparisons of logits against a float64/float32 reference.
TOLERANCES = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (8e-2, 8e-2),
}

# dtype -> (atol, rtol) for a Triton kernel's output against the float64 PyTorch reference
# computed from the same dtype-rounded inputs and weights (O(1) values): what is left is fp32
# accumulation order plus one rounding of the output to the dtype (half an ulp: 2**-11 for
# fp16, 2**-8 for bf16, relative), with margin.
KERNEL_TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1e-2, 1e-2),
}


def deterministic_state_dict(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Weights that depend only on key order and shape (no RNG), so two programs with
    different torch versions build bit-identical models from a list of (key, shape)."""
    out: dict[str, torch.Tensor] = {}
    for idx, (key, shape) in enumerate(shapes.items()):
        numel = math.prod(shape) if shape else 1
        base = torch.sin(torch.arange(numel, dtype=torch.float64) * 0.731 + idx * 1.3).reshape(shape)
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            out[key] = torch.tensor(0, dtype=torch.long)
            continue
        if leaf == "running_var":
            t = 1.0 + 0.5 * base.abs()
        elif leaf == "running_mean" or leaf == "bias":
            t = 0.1 * base
        elif leaf == "weight" and len(shape) == 1:  # batch-norm scale
            t = 1.0 + 0.2 * base
        else:  # conv weight: keep activations O(1) through deep nets
            fan_in = numel // shape[0]
            t = base * math.sqrt(1.0 / fan_in)
        out[key] = t.to(torch.float32)
    return out


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, atol: float, rtol: float, what: str = "") -> None:
    """torch.testing.assert_close that also prints the first mismatching positions."""
    try:
        torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, check_dtype=False)
    except AssertionError as e:
        diff = (actual.double() - expected.double()).abs()
        bad = (diff > atol + rtol * expected.double().abs()).nonzero()[:5].tolist()
        raise AssertionError(f"{what}: first mismatches at {bad}; max abs diff {diff.max().item():.3g}\n{e}") from None
