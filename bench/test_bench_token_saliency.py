"""token_saliency vs what users run today: torch.var / x.norm, torch.compile of the same, and the
two-pass plain-torch formula. Shapes: one CLIP-L/14-336 image, a batch of 32, and a 4-level pyramid
of 8 images (5440 tokens). Reports GB/s and % of this machine's copy bandwidth (bench/conftest.py);
the op reads x once, so its floor is x.nbytes / bandwidth.
(bench_utils.py explains the quick mode CI uses.)"""
from __future__ import annotations

import functools

import pytest
import torch

import vtp_ext
from bench_utils import QUICK, report_bandwidth, timed

SHAPES = [(1, 576, 1024)] if QUICK else [(1, 576, 1024), (32, 576, 1024), (8, 5440, 1024)]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def two_pass_var(x):
    centred = x - x.mean(-1, keepdim=True)
    return (centred * centred).sum(-1) / (x.shape[-1] - 1)


@functools.lru_cache(maxsize=None)
def compiled(fn):
    return torch.compile(fn, dynamic=False)


def torch_var(x):
    return torch.var(x, dim=-1, correction=1)


IMPLS = {
    "vtp_ext": lambda x: vtp_ext.token_saliency(x, "variance", 1),
    "torch.var": torch_var,
    "torch.compile(torch.var)": lambda x: compiled(torch_var)(x),
    "plain two-pass": two_pass_var,
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", list(IMPLS))
def test_variance(benchmark, bandwidth, impl, shape, dtype, device):
    benchmark.group = f"token_saliency variance {list(shape)} {str(dtype)[6:]} {device}"
    x = torch.randn(shape, dtype=dtype, device=device)
    fn = timed(IMPLS[impl], device)
    out = fn(x)  # warm-up (and compile)
    torch.testing.assert_close(out.float(), torch_var(x.float()), rtol=2e-2, atol=1e-3)
    benchmark(fn, x)
    report_bandwidth(benchmark, x.nbytes, bandwidth(device))


NORM_IMPLS = {
    "vtp_ext": lambda x: vtp_ext.token_saliency(x, "l2norm", 0),
    "x.norm": lambda x: x.norm(dim=-1),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES[:2], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", list(NORM_IMPLS))
def test_l2norm(benchmark, bandwidth, impl, shape, device):
    benchmark.group = f"token_saliency l2norm {list(shape)} float32 {device}"
    x = torch.randn(shape, device=device)
    fn = timed(NORM_IMPLS[impl], device)
    torch.testing.assert_close(fn(x), x.norm(dim=-1), rtol=1e-4, atol=1e-4)
    benchmark(fn, x)
    report_bandwidth(benchmark, x.nbytes, bandwidth(device))


BWD_IMPLS = {
    "vtp_ext": lambda x, g: torch.autograd.grad(vtp_ext.token_saliency(x, "variance", 1), x, g)[0],
    "torch.var": lambda x, g: torch.autograd.grad(torch_var(x), x, g)[0],
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES[:2], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", list(BWD_IMPLS))
def test_variance_forward_backward(benchmark, bandwidth, impl, shape, device):
    benchmark.group = f"token_saliency variance fwd+bwd {list(shape)} float32 {device}"
    x = torch.randn(shape, device=device, requires_grad=True)
    g = torch.randn(shape[:-1], device=device)
    fn = timed(BWD_IMPLS[impl], device)
    torch.testing.assert_close(fn(x, g), BWD_IMPLS["torch.var"](x, g), rtol=1e-4, atol=1e-5)
    benchmark(fn, x, g)
    # forward reads x; backward reads x twice and writes grad_x
    report_bandwidth(benchmark, 4 * x.nbytes, bandwidth(device))
