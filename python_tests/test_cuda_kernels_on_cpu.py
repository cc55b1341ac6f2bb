"""The CUDA kernels themselves, executed on the CPU through ../shared/cuda-cpu (see python_tests/cucpu.py)
and compared with the CPU ops on the same inputs: every op, forward and backward, every dtype the CUDA
path supports, tails, empty inputs, single-block, multi-block and grid-stride launches, and both the
16-byte-vector and the scalar load paths. CI runs this file in both thread orders (CUCPU_REVERSE=1)
and under AddressSanitizer + UBSan."""
from __future__ import annotations

import os

import pytest
import torch

from cucpu import require_cucpu
from op_testing import TOLERANCES

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
METHODS = [("variance", 1), ("variance", 0), ("l2norm", 0)]


@pytest.fixture(scope="module")
def cucpu():
    return require_cucpu()


@pytest.fixture
def max_blocks(monkeypatch):
    def set_(n: int | None):
        if n is None:
            monkeypatch.delenv("VTP_CUCPU_MAX_BLOCKS", raising=False)
        else:
            monkeypatch.setenv("VTP_CUCPU_MAX_BLOCKS", str(n))
    return set_


def close(a, b, dtype):
    tol = TOLERANCES[dtype] if dtype != torch.float64 else dict(rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(a, b, equal_nan=True, **tol)


# (shape, what it covers). 8 rows per block: 8 rows = one block, 9 = a partial second block.
SHAPES = [
    ((1, 1, 1), "one row, D=1"),
    ((1, 8, 64), "exactly one block, D a multiple of every pack width"),
    ((1, 9, 40), "partial second block; D=40 packs for fp32/fp16 only"),
    ((3, 7, 37), "odd D: scalar path, lane tail"),
    ((2, 5, 300), "D > 32 lanes x pack width: lanes loop"),
    ((4, 33, 1024), "CLIP-like D, many blocks"),
    ((0, 4, 16), "no rows"),
    ((2, 3, 0), "D = 0"),
]


@pytest.mark.parametrize("shape,_what", SHAPES, ids=[s[1] for s in SHAPES])
@pytest.mark.parametrize("method,correction", METHODS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_token_saliency_cuda_kernels(cucpu, shape, _what, method, correction, dtype):
    x = (torch.randn(shape, dtype=torch.float64) * 2 + 3).to(dtype)
    grad = torch.randn(shape[:-1], dtype=torch.float64).to(dtype)
    ref = torch.ops.vtp_ext.token_saliency(x, method, correction)
    got = cucpu.token_saliency(x, method, correction)
    close(got, ref, dtype)
    gref = torch.ops.vtp_ext.token_saliency_backward(grad, x, ref, method, correction)
    ggot = cucpu.token_saliency_backward(grad, x, got, method, correction)
    close(ggot, gref, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_token_saliency_grid_stride_and_unaligned(cucpu, max_blocks, dtype):
    x = torch.randn(6, 11, 72, dtype=torch.float64).to(dtype)
    grad = torch.randn(6, 11, dtype=torch.float64).to(dtype)
    inputs = {
        "contiguous": x,
        "unaligned rows (offset 1 element)": torch.cat([torch.zeros(1, dtype=dtype), x.flatten()])[1:].view_as(x),
        "strided leading dims": x.transpose(0, 1),
        "strided last dim": torch.stack([x, x], -1)[..., 0],
    }
    for blocks in (None, 1, 3):  # default grid; 1 and 3 blocks force the grid-stride loop
        max_blocks(blocks)
        for name, xi in inputs.items():
            gi = grad if xi.shape == x.shape else grad.t()
            for method, correction in METHODS:
                ref = torch.ops.vtp_ext.token_saliency(xi, method, correction)
                got = cucpu.token_saliency(xi, method, correction)
                close(got, ref, dtype)
                close(cucpu.token_saliency_backward(gi, xi, got, method, correction),
                      torch.ops.vtp_ext.token_saliency_backward(gi, xi, ref, method, correction), dtype)


def test_token_saliency_bad_input_same_message(cucpu):
    for args in [(torch.randn(4), "variance", 1), (torch.randn(2, 3), "std", 1), (torch.randn(2, 3), "variance", 2),
                 (torch.ones(2, 3, dtype=torch.int64), "variance", 1)]:
        with pytest.raises(RuntimeError) as cpu_err:
            torch.ops.vtp_ext.token_saliency(*args)
        with pytest.raises(RuntimeError) as cuda_err:
            cucpu.token_saliency(*args)
        tail = lambda e: str(e.value).split(", ", 2)[-1].split("\n")[0]  # noqa: E731 (drop function/file prefix)
        assert tail(cpu_err) == tail(cuda_err)


def test_runs_in_the_requested_thread_order():
    """Makes the thread order of this run visible in the log (CI runs both)."""
    print(f"CUCPU_REVERSE={os.environ.get('CUCPU_REVERSE', '0')}")


# ---------------------------------------------------------------------------------------- blur_downsample
PYRAMID_CONFIGS = [("kornia", 1.0, 5, "reflect"), ("opencv", 1.0, 5, "reflect"), ("gauss_avgpool", 1.3, 7, "zeros"),
                   ("gauss_avgpool", 0.8, 3, "reflect")]
IMAGE_DTYPES = DTYPES + (torch.uint8,)
# (shape, what it covers). Tiles are 8 output rows x 32 output pixels.
IMAGE_SHAPES = [
    ((1, 1, 3, 3), "one tile, smallest kornia input"),
    ((1, 1, 1, 1), "1x1 (opencv only)"),
    ((2, 3, 16, 64), "exactly one tile per plane, several planes"),
    ((1, 2, 37, 150), "several tiles in x and y with ragged tails, odd sizes"),
    ((3, 1, 70, 9), "narrow: tall column of tiles"),
    ((0, 3, 8, 8), "empty batch"),
]


def image_close(a, b, dtype):
    if dtype == torch.uint8:
        assert a.shape == b.shape
        assert a.numel() == 0 or (a.int() - b.int()).abs().max() <= 1, "uint8 results differ by more than one rounding"
        return
    tol = TOLERANCES[dtype] if dtype != torch.float64 else dict(rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(a, b, **tol)


def run_blur_downsample(cucpu, x, config, dtype):
    if config[0] == "kornia" and min(x.shape[-2:]) < 3:
        return
    if config[0] == "gauss_avgpool" and (min(x.shape[-2:]) < 2 or (config[3] == "reflect" and config[2] // 2 >= min(x.shape[-2:]))):
        return
    ref = torch.ops.vtp_ext.blur_downsample(x, *config)
    got = cucpu.blur_downsample(x, *config)
    assert got.shape == ref.shape and got.stride() == ref.stride()
    image_close(got, ref, dtype)
    if dtype == torch.uint8 and config[0] == "opencv":  # exact integer sums in float: bit-exact like OpenCV
        assert torch.equal(got, ref)
    if dtype.is_floating_point:
        g = torch.randn(ref.shape, dtype=torch.float64).to(dtype)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            g = g.contiguous(memory_format=torch.channels_last)
        h, w = x.shape[-2:]
        image_close(cucpu.blur_downsample_backward(g, h, w, *config),
                    torch.ops.vtp_ext.blur_downsample_backward(g, h, w, *config), dtype)


@pytest.mark.parametrize("shape,_what", IMAGE_SHAPES, ids=[s[1] for s in IMAGE_SHAPES])
@pytest.mark.parametrize("config", PYRAMID_CONFIGS, ids=[c[0] + "-" + c[3] for c in PYRAMID_CONFIGS])
@pytest.mark.parametrize("dtype", IMAGE_DTYPES, ids=str)
def test_blur_downsample_cuda_kernels(cucpu, shape, _what, config, dtype):
    x = (torch.rand(shape, dtype=torch.float64) * 255).to(dtype)
    run_blur_downsample(cucpu, x, config, dtype)


@pytest.mark.parametrize("config", PYRAMID_CONFIGS, ids=[c[0] + "-" + c[3] for c in PYRAMID_CONFIGS])
@pytest.mark.parametrize("dtype", IMAGE_DTYPES, ids=str)
def test_blur_downsample_layouts_direct_kernel_and_plane_loop(cucpu, monkeypatch, config, dtype):
    x = (torch.rand(2, 3, 21, 45, dtype=torch.float64) * 255).to(dtype)
    inputs = {
        "contiguous": x,
        "channels_last (pixels of 3 channels)": x.contiguous(memory_format=torch.channels_last),
        "unaligned rows": torch.cat([torch.zeros(1, dtype=dtype), x.flatten()])[1:].view_as(x),
        "strided width (copied)": torch.stack([x, x], -1)[..., 0],
        "sliced": (torch.rand(3, 4, 30, 60, dtype=torch.float64) * 255).to(dtype)[1:, ::2, 3:24, 5:50],
    }
    for env in ({}, {"VTP_CUCPU_MAX_BLOCKS": "1"}, {"VTP_CUCPU_FORCE_DIRECT": "1", "VTP_CUCPU_MAX_BLOCKS": "3"}):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        for name, xi in inputs.items():
            run_blur_downsample(cucpu, xi, config, dtype)
        for k in env:
            monkeypatch.delenv(k)


def test_blur_downsample_bad_input_same_message(cucpu):
    for args in [(torch.rand(3, 8, 8), "kornia", 1.0, 5, "reflect"), (torch.rand(1, 1, 8, 8), "x", 1.0, 5, "reflect"),
                 (torch.rand(1, 1, 8, 8), "gauss_avgpool", 1.0, 4, "zeros"), (torch.rand(1, 1, 2, 8), "kornia", 1.0, 5, "reflect")]:
        with pytest.raises(RuntimeError) as cpu_err:
            torch.ops.vtp_ext.blur_downsample(*args)
        with pytest.raises(RuntimeError) as cuda_err:
            cucpu.blur_downsample(*args)
        tail = lambda e: str(e.value).split(", ", 2)[-1].split("\n")[0]  # noqa: E731
        assert tail(cpu_err) == tail(cuda_err)


# ---------------------------------------------------------------------------------------- ToMe
TOME_CASES = [  # (B, N, C, r, class_token, distill_token): source tiles are 32, channel slices 32
    (1, 1, 4, 1, False, False),      # nothing to merge
    (2, 10, 8, 3, False, False),     # one partial tile
    (3, 65, 40, 16, True, False),    # 33 sources: two tiles; 40 channels: two slices, ragged
    (2, 77, 64, 30, True, True),     # distillation token, r at the clamp
    (2, 129, 33, 20, False, True),   # 65 sources / 64 destinations: three and two tiles
    (0, 8, 4, 2, False, False),      # empty batch
]


@pytest.mark.parametrize("case", TOME_CASES, ids=[str(c) for c in TOME_CASES])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_tome_cuda_kernels(cucpu, case, dtype):
    B, N, C, r, ct, dt = case
    metric = torch.randn(B, N, C, dtype=torch.float64).to(dtype)
    plan = torch.ops.vtp_ext.tome_match(metric, r, ct, dt)
    got = cucpu.tome_match(metric, r, ct, dt)
    for a, b in zip(got, plan):
        assert torch.equal(a, b), "CUDA matching differs from the CPU matching"
    x = torch.randn(B, N, 40, dtype=torch.float64).to(dtype)[..., ::2]  # strided rows
    size = (torch.rand(B, N, dtype=torch.float64) + 0.5).to(dtype)
    for mode in ("wavg", "mean", "sum"):
        for s in (None, size):
            out, so = torch.ops.vtp_ext.tome_merge(x, s, *plan, mode, dt)
            cout, cso = cucpu.tome_merge(x, s, *plan, mode, dt)
            close(cout, out, dtype)
            close(cso, so, dtype)
            g, gs = torch.randn_like(out), torch.randn_like(so)
            for a, b in zip(cucpu.tome_merge_backward(g, gs, x, s, cout, cso, *plan, mode, dt),
                            torch.ops.vtp_ext.tome_merge_backward(g, gs, x, s, out, so, *plan, mode, dt)):
                close(a, b, dtype)
    close(cucpu.tome_unmerge(out, *plan, N, dt), torch.ops.vtp_ext.tome_unmerge(out, *plan, N, dt), dtype)
    g = torch.randn(B, N, 20, dtype=torch.float64).to(dtype)
    close(cucpu.tome_unmerge_backward(g, *plan, dt), torch.ops.vtp_ext.tome_unmerge_backward(g, *plan, dt), dtype)


def test_tome_grid_stride_normalise(cucpu, monkeypatch):
    monkeypatch.setenv("VTP_CUCPU_MAX_BLOCKS", "2")  # 16 warps for 3*65 tokens: the normalise loop wraps
    metric = torch.randn(3, 65, 24)
    for a, b in zip(cucpu.tome_match(metric, 10, True, False), torch.ops.vtp_ext.tome_match(metric, 10, True, False)):
        assert torch.equal(a, b)


def test_tome_ties_and_zero_rows_match(cucpu):
    for metric in (torch.ones(2, 40, 8), torch.cat([torch.zeros(1, 3, 8), torch.randn(1, 37, 8)], 1)):
        for a, b in zip(cucpu.tome_match(metric, 9, False, False), torch.ops.vtp_ext.tome_match(metric, 9, False, False)):
            assert torch.equal(a, b)
