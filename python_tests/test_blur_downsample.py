"""blur_downsample and gaussian_pyramid: exact parity with kornia.geometry.transform.pyrdown,
cv2.pyrDown and the seed's plain-torch level (written here), dtypes, layouts, opcheck, gradcheck,
bad inputs, torch.compile, and CUDA (skipped without a GPU)."""
from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap

import cv2
import kornia
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vtp_ext
from op_testing import Sample, assert_close_to_reference, requires_cuda, run_gradcheck, run_opcheck

OP = torch.ops.vtp_ext.blur_downsample.default
BWD = torch.ops.vtp_ext.blur_downsample_backward.default
CONFIGS = [  # (mode, sigma, kernel_size, border)
    ("kornia", 1.0, 5, "reflect"),
    ("opencv", 1.0, 5, "reflect"),
    ("gauss_avgpool", 1.0, 5, "zeros"),
    ("gauss_avgpool", 1.0, 5, "reflect"),
    ("gauss_avgpool", 0.6, 3, "zeros"),
    ("gauss_avgpool", 2.0, 7, "reflect"),
]
CONFIG_IDS = [f"{m}-{s}-{k}-{b}" for m, s, k, b in CONFIGS]


def seed_level(x: torch.Tensor, sigma: float, k: int, border: str) -> torch.Tensor:
    """Seed 001's level, fixed: a normalised k x k Gaussian, depthwise conv2d with padding='same' (zeros)
    or reflect padding, then 2x2 average pooling."""
    t = torch.arange(-k // 2 + 1, k // 2 + 1, dtype=torch.float64)
    g = torch.exp(-(t ** 2) / (2 * sigma ** 2))
    g2 = g[:, None] * g[None, :]
    w = (g2 / g2.sum()).to(x.dtype).expand(x.shape[1], 1, k, k)
    if border == "zeros":
        blurred = F.conv2d(x, w, padding="same", groups=x.shape[1])
    else:
        blurred = F.conv2d(F.pad(x, (k // 2,) * 4, mode="reflect"), w, groups=x.shape[1])
    return F.avg_pool2d(blurred, 2, 2)


def opencv_level(x: torch.Tensor) -> torch.Tensor:
    planes = [cv2.pyrDown(x[b, c].numpy()) for b in range(x.shape[0]) for c in range(x.shape[1])]
    out = np.stack(planes).reshape(x.shape[0], x.shape[1], *planes[0].shape)
    return torch.from_numpy(out)


def reference(x: torch.Tensor, mode: str, sigma: float, k: int, border: str) -> torch.Tensor:
    """The real library for each mode (float64 for kornia and the seed; OpenCV in float32/uint8)."""
    if mode == "kornia":
        return kornia.geometry.transform.pyrdown(x)
    if mode == "opencv":
        return opencv_level(x)
    return seed_level(x, sigma, k, border)


def random_sizes(n, lo=3, hi=70, seed=0):
    rng = random.Random(seed)
    return [(rng.randint(lo, hi), rng.randint(lo, hi)) for _ in range(n)]


SIZES = [(3, 3), (3, 4), (4, 4), (5, 7), (8, 8), (16, 13), (33, 64), (64, 33)] + random_sizes(6)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("hw", SIZES, ids=str)
def test_matches_reference_fp64_and_fp32(config, hw):
    mode, sigma, k, border = config
    if mode == "gauss_avgpool" and border == "reflect" and k // 2 >= min(hw):
        pytest.skip("F.pad reflect rejects this size; tested in test_small_inputs")
    x = torch.rand(2, 3, *hw, dtype=torch.float64)
    if mode == "opencv":  # OpenCV has no float64 pyrDown parity claim here; compare float32 exactly
        torch.testing.assert_close(vtp_ext.blur_downsample(x.float(), *config), reference(x.float(), *config),
                                   rtol=0, atol=1e-6)
        return
    torch.testing.assert_close(vtp_ext.blur_downsample(x, *config), reference(x, *config), rtol=0, atol=1e-12)
    torch.testing.assert_close(vtp_ext.blur_downsample(x.float(), *config), reference(x.float(), *config),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("hw", [(1, 1), (1, 2), (2, 1), (2, 3), (3, 2), (5, 5), (7, 9), (64, 33), (101, 77)], ids=str)
def test_uint8_bit_exact_with_opencv(hw):
    x = torch.randint(0, 256, (2, 3, *hw), dtype=torch.uint8)
    got = vtp_ext.blur_downsample(x, "opencv")
    assert got.dtype == torch.uint8
    assert torch.equal(got, opencv_level(x))
    # channels_last HWC images, as a data loader holds them, against cv2 on the HWC array.
    img = torch.randint(0, 256, (1, *hw, 3), dtype=torch.uint8)
    got = vtp_ext.blur_downsample(img.permute(0, 3, 1, 2), "opencv").permute(0, 2, 3, 1)
    assert np.array_equal(got[0].numpy(), cv2.pyrDown(img[0].numpy()).reshape(got.shape[1:]))


UINT8_HW = [(1, 1), (1, 7), (6, 1), (2, 2), (3, 5), (4, 4), (5, 6), (9, 33), (33, 34), (40, 71), (70, 47), (17, 130)]


@pytest.mark.parametrize("channels", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("hw", UINT8_HW, ids=str)
def test_uint8_hwc_bit_exact_with_opencv(channels, hw):
    # The integer kernel keeps channels interleaved: every pixel width, odd sides, images narrower
    # than the 5-tap stencil and rows shorter than one vector.
    img = torch.randint(0, 256, (2, *hw, channels), dtype=torch.uint8)
    x = img.permute(0, 3, 1, 2)
    got = vtp_ext.blur_downsample(x, "opencv")
    for b in range(2):
        want = cv2.pyrDown(img[b].numpy()).reshape(*got.shape[2:], channels)
        assert np.array_equal(got[b].permute(1, 2, 0).numpy(), want), b
    assert torch.equal(vtp_ext.blur_downsample(x.contiguous(), "opencv"), got)  # NCHW planes, same numbers
    assert torch.equal(got, vtp_ext.blur_downsample(x.double(), "opencv").add(0.5).floor().to(torch.uint8))


def test_uint8_extremes_and_views():
    for fill in (0, 255):
        x = torch.full((1, 3, 37, 29), fill, dtype=torch.uint8)
        assert (vtp_ext.blur_downsample(x, "opencv") == fill).all()
    big = torch.randint(0, 256, (3, 6, 50, 80), dtype=torch.uint8)
    views = {
        "sliced": big[:2, :3, 3:40, 5:70],
        "strided width": big[:2, :3, :, ::2],
        "channels_last slice": big.contiguous(memory_format=torch.channels_last)[:2, 1:4, 3:40, 5:70],
        "flipped channels": big.permute(0, 2, 3, 1).flip(-1).permute(0, 3, 1, 2),
    }
    for name, v in views.items():
        assert torch.equal(vtp_ext.blur_downsample(v, "opencv"), opencv_level(v.contiguous())), name


def test_uint8_integer_path_only_where_exact():
    # gauss_avgpool with kernel_size 1 is a 2x2 mean: weights in 1/16ths, so the integer kernel runs; the
    # Gaussians and kornia's bilinear weights are not, and keep the float kernel. Both round half up.
    x = torch.randint(0, 256, (2, 3, 21, 26), dtype=torch.uint8)
    for cfg in [("gauss_avgpool", 1.0, 1, "zeros"), ("gauss_avgpool", 1.0, 5, "zeros"), ("kornia", 1.0, 5, "reflect")]:
        want = vtp_ext.blur_downsample(x.double(), *cfg).add(0.5).floor().clamp(0, 255).to(torch.uint8)
        for xi in (x, x.contiguous(memory_format=torch.channels_last)):
            got = vtp_ext.blur_downsample(xi, *cfg)
            assert (got.int() - want.int()).abs().max() <= (0 if cfg[2] == 1 else 1), cfg


@pytest.mark.parametrize("isa", ["base", "avx2"])
def test_uint8_portable_kernels_match_opencv(isa):
    code = """
        import cv2, numpy as np, torch, vtp_ext
        torch.manual_seed(0)
        for c in (1, 2, 3, 4, 5):
            for hw in ((1, 1), (3, 5), (37, 70), (64, 129)):
                img = torch.randint(0, 256, (*hw, c), dtype=torch.uint8)
                got = vtp_ext.blur_downsample(img.permute(2, 0, 1)[None], "opencv")[0].permute(1, 2, 0).numpy()
                assert np.array_equal(got, cv2.pyrDown(img.numpy()).reshape(got.shape)), (c, hw)
        print(vtp_ext._C.cpu_isa)
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            env={**os.environ, "VTP_EXT_CPU_ISA": isa}, cwd=os.path.dirname(__file__))
    assert result.returncode == 0, result.stderr
    if result.stdout.strip() != isa:
        pytest.skip(f"this CPU cannot run the {isa} kernels")


def test_operator_cache_many_sizes_and_threads():
    # The CPU op caches the tables of recent sizes (16): more sizes than that, in both directions and
    # dtypes, interleaved and from several threads, must still give each size its own operator.
    from concurrent.futures import ThreadPoolExecutor

    sizes = [(5 + i, 40 - i) for i in range(20)]
    inputs = [torch.rand(1, 2, h, w, dtype=torch.float64) for h, w in sizes]
    expected = [reference(x, "kornia", 1.0, 5, "reflect") for x in inputs]

    def check(k):
        x = inputs[k]
        torch.testing.assert_close(vtp_ext.blur_downsample(x, "kornia"), expected[k], rtol=0, atol=1e-12)
        torch.testing.assert_close(vtp_ext.blur_downsample(x.float(), "kornia"), expected[k].float(), rtol=0, atol=1e-5)
        g = torch.ones_like(expected[k])
        assert torch.allclose(BWD(g, *sizes[k], "kornia", 1.0, 5, "reflect").sum(), g.sum(), rtol=1e-12)
        u8 = (x * 255).to(torch.uint8)
        assert torch.equal(vtp_ext.blur_downsample(u8, "opencv"), opencv_level(u8))

    for rep in range(2):
        for k in range(len(sizes)):
            check(k)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(check, [k % len(sizes) for k in range(80)]))


def test_uint8_rounds_half_up_like_opencv():
    x = torch.zeros(1, 1, 5, 5, dtype=torch.uint8)
    x[0, 0, 2, 2] = 32  # centre output = 32 * 36/256 = 4.5 exactly
    assert vtp_ext.blur_downsample(x, "opencv")[0, 0, 1, 1].item() == 5 == cv2.pyrDown(x[0, 0].numpy())[1, 1]
    big = torch.full((1, 1, 6, 6), 255, dtype=torch.uint8)
    assert (vtp_ext.blur_downsample(big, "opencv") == 255).all()  # saturates, no wrap-around


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision(config, dtype):
    x = torch.rand(2, 3, 37, 50, dtype=torch.float64).to(dtype)
    expected = reference(x.double(), *config) if config[0] != "opencv" else reference(x.float(), *config).double()
    assert_close_to_reference(vtp_ext.blur_downsample(x, *config), expected, dtype)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_layouts_and_memory_format(config):
    x = torch.rand(2, 4, 23, 30, dtype=torch.float64)
    expected = vtp_ext.blur_downsample(x, *config)
    assert expected.is_contiguous()
    cl = vtp_ext.blur_downsample(x.contiguous(memory_format=torch.channels_last), *config)
    assert cl.is_contiguous(memory_format=torch.channels_last) and not cl.is_contiguous()
    torch.testing.assert_close(cl, expected, rtol=0, atol=1e-14)
    big = torch.rand(3, 6, 40, 70, dtype=torch.float64)
    views = {
        "sliced spatial": big[:2, :4, 5:28, 10:40],
        "strided width": big[:2, :4, :23, ::2][..., :30],
        "strided channels": big[:2, ::2, :23, :30],
        "transposed batch/channel": big[:4, :2, :23, :30].transpose(0, 1),
        "channels_last slice": big.contiguous(memory_format=torch.channels_last)[:2, :4, 5:28, 10:40],
    }
    for name, v in views.items():
        torch.testing.assert_close(vtp_ext.blur_downsample(v, *config), vtp_ext.blur_downsample(v.contiguous(), *config),
                                   rtol=0, atol=1e-14, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("channels", [2, 3, 5, 7, 9])
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_channels_last_pixel_widths(config, channels):
    # channels_last rows keep their channels interleaved in the horizontal stencil (taps C apart).
    for hw in [(9, 12), (24, 71)]:
        x = torch.rand(2, channels, *hw, dtype=torch.float64)
        expected = vtp_ext.blur_downsample(x, *config)
        for dtype, atol in [(torch.float64, 1e-14), (torch.float32, 1e-6), (torch.bfloat16, 1e-2)]:
            got = vtp_ext.blur_downsample(x.to(dtype).contiguous(memory_format=torch.channels_last), *config)
            assert got.is_contiguous(memory_format=torch.channels_last)
            want = vtp_ext.blur_downsample(x.to(dtype), *config)
            torch.testing.assert_close(got.double(), want.double(), rtol=0, atol=atol)
        torch.testing.assert_close(got.double(), expected, rtol=0, atol=2e-2)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_empty(config):
    for shape in [(0, 3, 8, 8), (2, 0, 8, 8)]:
        x = torch.rand(shape, requires_grad=True)
        y = vtp_ext.blur_downsample(x, *config)
        assert y.shape[:2] == shape[:2] and y.numel() == 0
        y.sum().backward()
        assert x.grad.shape == x.shape


def test_small_inputs_like_the_references():
    # OpenCV takes any size; kornia (F.pad reflect of 2) needs >= 3; the seed's zeros padding any size >= 2.
    for hw in [(1, 1), (1, 3), (2, 2), (2, 3)]:
        x = torch.rand(1, 2, *hw)
        torch.testing.assert_close(vtp_ext.blur_downsample(x, "opencv"), opencv_level(x), rtol=0, atol=1e-6)
    for hw in [(2, 2), (2, 5), (3, 2)]:
        x = torch.rand(1, 2, *hw, dtype=torch.float64)
        torch.testing.assert_close(vtp_ext.blur_downsample(x, "gauss_avgpool", 1.0, 5, "zeros"),
                                   seed_level(x, 1.0, 5, "zeros"), rtol=0, atol=1e-12)
        with pytest.raises(RuntimeError):
            kornia.geometry.transform.pyrdown(x)
        with pytest.raises(RuntimeError, match="kornia mode .* needs height and width >= 3"):
            vtp_ext.blur_downsample(x, "kornia")
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError):
        seed_level(x, 1.0, 9, "reflect")
    with pytest.raises(RuntimeError, match="kernel_size // 2 < height and width"):
        vtp_ext.blur_downsample(x, "gauss_avgpool", 1.0, 9, "reflect")


def test_kornia_docstring_example():
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    expected = torch.tensor([[[[4.6875, 5.8125], [9.1875, 10.3125]]]])  # algorithms.md §6.3
    torch.testing.assert_close(vtp_ext.blur_downsample(x), expected)


def gradcheck_samples():
    samples = []
    for config in CONFIGS:
        for hw in [(6, 8), (7, 5)]:
            x = torch.rand(2, 2, *hw, dtype=torch.float64, requires_grad=True)
            samples.append(Sample((x, *config), name=f"{config}-{hw}"))
    xcl = torch.rand(1, 3, 6, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    samples.append(Sample((xcl, "kornia", 1.0, 5, "reflect"), name="channels_last"))
    return samples


def test_gradcheck():
    run_gradcheck(vtp_ext.blur_downsample, gradcheck_samples())


def test_gradgradcheck():
    for config in CONFIGS[:3]:
        x = torch.rand(1, 2, 7, 6, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradgradcheck(lambda t: vtp_ext.blur_downsample(t, *config), (x,))


def test_backward_is_the_adjoint_of_autograd_through_the_reference():
    for config in CONFIGS:
        if config[0] == "opencv":
            continue  # cv2 is not differentiable; the adjoint identity below covers it
        x = torch.rand(2, 3, 19, 22, dtype=torch.float64, requires_grad=True)
        g = torch.randn_like(reference(x.detach(), *config))
        (expected,) = torch.autograd.grad(reference(x, *config), x, g)
        (got,) = torch.autograd.grad(vtp_ext.blur_downsample(x, *config), x, g)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    # <A x, g> == <x, A^T g> for every mode.
    for config in CONFIGS:
        x = torch.rand(2, 3, 11, 9, dtype=torch.float64)
        y = vtp_ext.blur_downsample(x, *config)
        g = torch.randn_like(y)
        lhs = (y * g).sum()
        rhs = (x * BWD(g, 11, 9, *config)).sum()
        torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=0)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("hw", [(8, 8), (40, 70), (41, 69), (37, 100)], ids=str)
def test_backward_rows_wide_enough_for_the_vector_path(config, hw):
    # Planar gradient rows long enough for the vectorised backward (two stencils, one per output
    # phase) next to their gathered borders, against autograd through the reference and in float32.
    if config[0] == "gauss_avgpool" and config[3] == "reflect" and config[2] // 2 >= min(hw):
        pytest.skip("F.pad reflect rejects this size")
    x = torch.rand(2, 2, *hw, dtype=torch.float64, requires_grad=True)
    ref = opencv_level if config[0] == "opencv" else None
    g = torch.randn_like(vtp_ext.blur_downsample(x.detach(), *config))
    got = BWD(g, *hw, *config)
    if ref is None:
        (expected,) = torch.autograd.grad(reference(x, *config), x, g)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    else:  # opencv: the adjoint identity
        torch.testing.assert_close((x.detach() * got).sum(), (vtp_ext.blur_downsample(x.detach(), *config) * g).sum(),
                                   rtol=1e-12, atol=0)
    torch.testing.assert_close(BWD(g.float(), *hw, *config), got.float(), rtol=0, atol=1e-5)
    gcl = g.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(BWD(gcl, *hw, *config), got, rtol=0, atol=1e-12)


def opcheck_samples():
    samples = []
    for config in CONFIGS:
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            x = torch.rand(2, 3, 9, 12, dtype=dtype, requires_grad=dtype == torch.float64)
            samples.append(Sample((x, *config), name=f"{config}-{dtype}"))
        samples.append(Sample((torch.rand(1, 3, 10, 8).contiguous(memory_format=torch.channels_last), *config),
                              name="channels_last"))
        samples.append(Sample((torch.rand(2, 4, 12, 20)[:, ::2, 1:11, ::2], *config), name="strided"))
    samples.append(Sample((torch.randint(0, 256, (1, 3, 9, 9), dtype=torch.uint8), "opencv", 1.0, 5, "reflect"), name="u8"))
    return samples


def test_opcheck_forward():
    run_opcheck(OP, opcheck_samples())


def test_opcheck_backward():
    samples = []
    for config in CONFIGS:
        h, w = 9, 12
        out = OP(torch.rand(1, 3, h, w), *config)
        samples.append(Sample((torch.rand_like(out), h, w, *config), name=str(config)))
        samples.append(Sample((torch.rand_like(out, dtype=torch.float64).requires_grad_(True), h, w, *config),
                              name=str(config) + "-rg"))
        samples.append(Sample((torch.rand_like(out).contiguous(memory_format=torch.channels_last), h, w, *config),
                              name=str(config) + "-cl"))
    run_opcheck(BWD, samples)


def test_torch_compile_fullgraph():
    def f(x):
        return sum(level.mean() for level in vtp_ext.gaussian_pyramid(x * 2, 3))

    x = torch.rand(2, 3, 32, 24, requires_grad=True)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), f(x))


@pytest.mark.parametrize("mode", ["kornia", "opencv", "gauss_avgpool"])
def test_pyramid(mode):
    x = torch.rand(2, 3, 64, 48, dtype=torch.float64)
    levels = vtp_ext.gaussian_pyramid(x, 4, mode)
    assert len(levels) == 4 and levels[0] is x
    for prev, cur in zip(levels, levels[1:]):
        torch.testing.assert_close(cur, vtp_ext.blur_downsample(prev, mode))
    if mode == "kornia":
        for a, b in zip(levels, kornia.geometry.transform.build_pyramid(x, 4)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    module = vtp_ext.GaussianPyramid(4, mode)
    assert [t.shape for t in module(x)] == [t.shape for t in levels]
    assert "levels=4" in repr(module)


def test_pyramid_too_many_levels():
    x = torch.rand(1, 1, 16, 16)
    assert len(vtp_ext.gaussian_pyramid(x, 5, "opencv")) == 5  # 16, 8, 4, 2, 1
    with pytest.raises(ValueError, match="level 5 .* would be 0x0 .* at most 5 levels"):
        vtp_ext.gaussian_pyramid(x, 6, "gauss_avgpool")
    with pytest.raises(ValueError, match="levels must be an int >= 1"):
        vtp_ext.gaussian_pyramid(x, 0)
    assert vtp_ext.gaussian_pyramid(x, 1) == [x]


BAD_INPUTS = [
    ((torch.rand(3, 8, 8),), {}, RuntimeError, "x must have shape [B, C, H, W] (4 dimensions), got 3"),
    ((torch.rand(1, 1, 3, 8, 8),), {}, RuntimeError, "(4 dimensions), got 5"),
    ((torch.rand(8, 8),), {}, RuntimeError, "got 2 dimension"),
    ((torch.ones(1, 1, 8, 8, dtype=torch.int32),), {}, RuntimeError, "or uint8, got int32"),
    ((torch.ones(1, 1, 8, 8, dtype=torch.bool),), {}, RuntimeError, "got bool"),
    ((torch.ones(1, 1, 8, 8, dtype=torch.complex64),), {}, RuntimeError, "got complex64"),
    ((torch.rand(1, 1, 8, 8), "pyrdown"), {}, RuntimeError, 'mode must be "kornia", "opencv" or "gauss_avgpool", got "pyrdown"'),
    ((torch.rand(1, 1, 8, 8), "gauss_avgpool", 1.0, 5, "replicate"), {}, RuntimeError, 'border must be "reflect" or "zeros", got "replicate"'),
    ((torch.rand(1, 1, 8, 8), "gauss_avgpool", 1.0, 4), {}, RuntimeError, "kernel_size must be odd and in [1, 63], got 4"),
    ((torch.rand(1, 1, 8, 8), "gauss_avgpool", 1.0, -3), {}, RuntimeError, "kernel_size must be odd and in [1, 63], got -3"),
    ((torch.rand(1, 1, 8, 8), "gauss_avgpool", 1.0, 65), {}, RuntimeError, "got 65"),
    ((torch.rand(1, 1, 8, 8), "gauss_avgpool", 0.0), {}, RuntimeError, "sigma must be a positive finite number, got 0"),
    ((torch.rand(1, 1, 8, 8), "gauss_avgpool", -1.0), {}, RuntimeError, "sigma must be a positive finite number, got -1"),
    ((torch.rand(1, 1, 8, 8), "gauss_avgpool", float("nan")), {}, RuntimeError, "sigma must be a positive finite number"),
    ((torch.rand(1, 1, 8, 8), "kornia", 1.0, 7), {}, RuntimeError, "uses the fixed 5-tap binomial filter, so kernel_size must be 5"),
    ((torch.rand(1, 1, 8, 8), "opencv", 1.0, 5, "zeros"), {}, RuntimeError, 'border must be "reflect", got "zeros"'),
    ((torch.rand(1, 1, 2, 8), "kornia"), {}, RuntimeError, "needs height and width >= 3, got 2x8"),
    ((torch.rand(1, 1, 8, 1), "gauss_avgpool"), {}, RuntimeError, "needs height and width >= 2, got 8x1"),
    ((torch.rand(1, 1, 0, 8), "opencv"), {}, RuntimeError, "opencv mode needs a non-empty image, got 0x8"),
    (("image",), {}, TypeError, "x must be a torch.Tensor"),
    ((torch.rand(1, 1, 8, 8), 2), {}, TypeError, "mode must be a str"),
    ((torch.rand(1, 1, 8, 8), "gauss_avgpool", 1.0, 5.0), {}, TypeError, "kernel_size must be an odd int"),
    ((torch.rand(1, 1, 8, 8), "gauss_avgpool", "1"), {}, TypeError, "sigma must be a positive float"),
    ((torch.rand(1, 1, 8, 8).to_sparse(),), {}, (RuntimeError, NotImplementedError), ""),
]


@pytest.mark.parametrize("args,kwargs,exc,fragment", BAD_INPUTS, ids=[str(i) for i in range(len(BAD_INPUTS))])
def test_bad_inputs(args, kwargs, exc, fragment):
    with pytest.raises(exc) as info:
        vtp_ext.blur_downsample(*args, **kwargs)
    assert fragment in str(info.value)


def test_bad_backward_inputs():
    g = torch.rand(1, 2, 4, 4)
    cfg = ("kornia", 1.0, 5, "reflect")
    with pytest.raises(RuntimeError, match=r"grad must have the output size of a 10x10 input, 5x5, got 4x4"):
        BWD(g, 10, 10, *cfg)
    with pytest.raises(RuntimeError, match="grad must be float32, float64, float16 or bfloat16, got uint8"):
        BWD(g.to(torch.uint8), 8, 8, *cfg)
    with pytest.raises(RuntimeError, match="needs height and width >= 3"):
        BWD(torch.rand(1, 2, 1, 4), 2, 8, *cfg)
    with pytest.raises(RuntimeError, match="grad must have shape"):
        BWD(torch.rand(2, 4, 4), 8, 8, *cfg)


def test_uint8_has_no_gradient():
    x = torch.randint(0, 256, (1, 1, 8, 8), dtype=torch.uint8)
    y = vtp_ext.blur_downsample(x, "opencv")
    assert not y.requires_grad
    with pytest.raises(RuntimeError, match="only Tensors of floating point"):
        x.requires_grad_(True)


@requires_cuda
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.uint8], ids=str)
def test_cuda_matches_cpu(config, dtype):
    assert vtp_ext.cuda_built(), "a CUDA device is present but vtp_ext was built without CUDA kernels"
    for shape in [(2, 3, 37, 50), (1, 4, 64, 64), (3, 1, 5, 7), (0, 3, 8, 8)]:
        x = (torch.rand(shape, dtype=torch.float64) * 255).to(dtype)
        for xi in (x, x.contiguous(memory_format=torch.channels_last)):
            got = vtp_ext.blur_downsample(xi.cuda(), *config)
            want = vtp_ext.blur_downsample(xi, *config)
            assert got.is_cuda and got.stride() == want.stride()
            atol = 1 if dtype == torch.uint8 else (1e-10 if dtype == torch.float64 else 1e-2)
            torch.testing.assert_close(got.cpu().double(), want.double(), rtol=1e-3, atol=atol)
            if dtype.is_floating_point:
                g = torch.rand_like(want)
                torch.testing.assert_close(BWD(g.cuda(), shape[2], shape[3], *config).cpu().double(),
                                           BWD(g, shape[2], shape[3], *config).double(), rtol=1e-3, atol=atol)


@requires_cuda
def test_cuda_opcheck_and_gradcheck():
    x = torch.rand(1, 2, 9, 8, dtype=torch.float64, device="cuda", requires_grad=True)
    run_gradcheck(vtp_ext.blur_downsample, [Sample((x, *c), name=str(c)) for c in CONFIGS])
    run_opcheck(OP, [Sample((torch.rand(2, 3, 10, 12, device="cuda"), *c)) for c in CONFIGS])
