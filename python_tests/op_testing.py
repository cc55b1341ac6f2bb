"""Shared checks every vtp_ext op runs: opcheck, float64 gradcheck, dtype tolerances, layouts.

A new op's test module builds a list of ``Sample``s and calls ``run_opcheck`` / ``run_gradcheck``;
the layout helpers give the non-contiguous variants the standards ask for.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Tolerances for comparing an op in a low-precision dtype with a float64 reference rounded to that
# dtype: the op accumulates in float32, so the only error left is about one rounding of the output.
TOLERANCES = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=2e-3, atol=1e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
}


@dataclasses.dataclass
class Sample:
    args: tuple
    kwargs: dict = dataclasses.field(default_factory=dict)
    name: str = ""


def run_opcheck(op: torch._ops.OpOverload, samples: Sequence[Sample]) -> None:
    """torch.library.opcheck on every sample: schema, fake kernel (shapes and strides), autograd
    registration and AOT dispatch."""
    assert samples, "no samples"
    for s in samples:
        try:
            torch.library.opcheck(op, s.args, s.kwargs)
        except Exception as e:  # add which sample failed
            raise AssertionError(f"opcheck failed for sample {s.name!r}: {e}") from e


def run_gradcheck(fn: Callable[..., torch.Tensor], samples: Sequence[Sample]) -> None:
    """torch.autograd.gradcheck in float64 on every sample (inputs must be float64, requires_grad)."""
    assert samples, "no samples"
    for s in samples:
        tensors = [a for a in s.args if isinstance(a, torch.Tensor) and a.requires_grad]
        assert tensors and all(t.dtype == torch.float64 for t in tensors), f"sample {s.name!r} needs float64 grads"
        assert torch.autograd.gradcheck(lambda *a: fn(*a, **s.kwargs), s.args, eps=1e-6, atol=1e-7, rtol=1e-5), s.name


def layouts(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same values in several memory layouts: contiguous, a strided slice of a bigger tensor,
    transposed leading dimensions, an offset view, and (for 4-d) channels_last."""
    out = {"contiguous": x.contiguous()}
    big = torch.zeros(*x.shape[:-1], 2 * x.shape[-1] + 3, dtype=x.dtype, device=x.device)
    big[..., 1 : 2 * x.shape[-1] + 1 : 2] = x
    out["strided_last_dim"] = big[..., 1 : 2 * x.shape[-1] + 1 : 2]
    padded = torch.zeros(*x.shape[:-1], x.shape[-1] + 5, dtype=x.dtype, device=x.device)
    padded[..., 2 : 2 + x.shape[-1]] = x
    out["row_padded_offset"] = padded[..., 2 : 2 + x.shape[-1]]
    if x.dim() >= 3:
        out["transposed_leading"] = x.transpose(0, 1).contiguous().transpose(0, 1)
    if x.dim() == 4:
        out["channels_last"] = x.contiguous(memory_format=torch.channels_last)
    for name, t in out.items():
        assert torch.equal(t, x), name
    return out


def assert_close_to_reference(actual: torch.Tensor, expected_fp64: torch.Tensor, dtype: torch.dtype, **kw: Any) -> None:
    """Compare with a float64 reference rounded to the op's dtype, NaN positions included."""
    tol = dict(TOLERANCES[dtype])
    tol.update(kw)
    assert actual.dtype == dtype, (actual.dtype, dtype)
    torch.testing.assert_close(actual.double(), expected_fp64.to(dtype).double(), equal_nan=True, **tol)

requires_cuda = __import__("pytest").mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
