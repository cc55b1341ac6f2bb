"""blur_downsample (one pyramid level) vs what users run today: the seed's plain torch
(conv2d 5x5 + avg_pool2d), torch.compile of it, kornia.geometry.transform.pyrdown, and cv2.pyrDown
looped over the batch (HWC arrays prepared outside the timing, as a data loader holds them).
Reports GB/s and % of this machine's copy bandwidth (read the input once, write a quarter)."""
from __future__ import annotations

import functools

import cv2
import kornia
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vtp_ext
from bench_utils import QUICK, report_bandwidth, timed

SHAPES = [(1, 3, 336, 336)] if QUICK else [(1, 3, 336, 336), (32, 3, 336, 336), (1, 3, 1024, 1024), (8, 3, 1024, 1024)]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _seed_kernel(C, dtype, device):
    t = torch.arange(-2, 3, dtype=torch.float64)
    g = torch.exp(-(t ** 2) / 2)
    g2 = g[:, None] * g[None, :]
    return (g2 / g2.sum()).to(dtype=dtype, device=device).expand(C, 1, 5, 5)


def seed_level(x):
    return F.avg_pool2d(F.conv2d(x, _seed_kernel(x.shape[1], x.dtype, x.device), padding="same", groups=x.shape[1]), 2, 2)


@functools.lru_cache(maxsize=None)
def compiled_seed():
    return torch.compile(seed_level, dynamic=False)


FLOAT_IMPLS = {
    "vtp_ext gauss_avgpool": lambda x: vtp_ext.blur_downsample(x, "gauss_avgpool", 1.0, 5, "zeros"),
    "seed torch": seed_level,
    "torch.compile(seed)": lambda x: compiled_seed()(x),
    "vtp_ext kornia": lambda x: vtp_ext.blur_downsample(x, "kornia"),
    "kornia.pyrdown": kornia.geometry.transform.pyrdown,
    "vtp_ext opencv": lambda x: vtp_ext.blur_downsample(x, "opencv"),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", list(FLOAT_IMPLS) + ["cv2.pyrDown loop"])
def test_forward_float32(benchmark, bandwidth, impl, shape, device):
    benchmark.group = f"blur_downsample fwd {list(shape)} float32 {device}"
    x = torch.rand(shape, device=device)
    if impl == "cv2.pyrDown loop":
        if device != "cpu":
            pytest.skip("OpenCV runs on the CPU")
        hwc = [np.ascontiguousarray(x[b].permute(1, 2, 0).numpy()) for b in range(shape[0])]
        out = benchmark(lambda: [cv2.pyrDown(im) for im in hwc])
        np.testing.assert_allclose(out[0].transpose(2, 0, 1), vtp_ext.blur_downsample(x[:1], "opencv")[0].numpy(), atol=1e-5)
    else:
        fn = timed(FLOAT_IMPLS[impl], device)
        fn(x)  # warm-up (and compile)
        benchmark(fn, x)
    report_bandwidth(benchmark, x.nbytes * 5 // 4, bandwidth(device))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", ["vtp_ext opencv", "vtp_ext opencv NCHW", "cv2.pyrDown loop"])
def test_forward_uint8(benchmark, bandwidth, impl, shape):
    benchmark.group = f"blur_downsample fwd {list(shape)} uint8 cpu"
    x = torch.randint(0, 256, shape, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    if impl == "cv2.pyrDown loop":
        hwc = [np.ascontiguousarray(x[b].permute(1, 2, 0).numpy()) for b in range(shape[0])]
        out = benchmark(lambda: [cv2.pyrDown(im) for im in hwc])
        assert np.array_equal(out[0], vtp_ext.blur_downsample(x[:1], "opencv")[0].permute(1, 2, 0).numpy())
    else:  # channels_last (HWC images batched without a copy), or the NCHW-contiguous planes
        benchmark(vtp_ext.blur_downsample, x.contiguous() if impl.endswith("NCHW") else x, "opencv")
    report_bandwidth(benchmark, x.nbytes * 5 // 4, bandwidth("cpu"))


FWD_BWD = {
    "vtp_ext gauss_avgpool": lambda x: vtp_ext.blur_downsample(x, "gauss_avgpool", 1.0, 5, "zeros"),
    "seed torch (autograd)": seed_level,
    "vtp_ext kornia": lambda x: vtp_ext.blur_downsample(x, "kornia"),
    "kornia.pyrdown (autograd)": kornia.geometry.transform.pyrdown,
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES[:3], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", list(FWD_BWD))
def test_forward_backward_float32(benchmark, bandwidth, impl, shape, device):
    benchmark.group = f"blur_downsample fwd+bwd {list(shape)} float32 {device}"
    x = torch.rand(shape, device=device, requires_grad=True)
    f = FWD_BWD[impl]
    g = torch.rand_like(f(x.detach()))
    fn = timed(lambda: torch.autograd.grad(f(x), x, g)[0], device)
    fn()
    benchmark(fn)
    report_bandwidth(benchmark, x.nbytes * 5 // 2, bandwidth(device))  # read x, write y, read g, write grad_x
