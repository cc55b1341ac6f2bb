"""The CUDA kernels themselves, executed on the CPU through ../shared/cuda-cpu (see python_tests/cucpu.py)
and compared with the CPU ops on the same inputs: every op, forward and backward, every dtype the CUDA
path supports, tails, empty inputs, single-block, multi-block and grid-stride launches, and both the
16-byte-vector and the scalar load paths. CI runs this file in both thread orders (CUCPU_REVERSE=1)
and under AddressSanitizer + UBSan."""
from __future__ import annotations

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


# ---------------------------------------------------------------------------------------------- selection
def random_topk_case(B, L, S, gen, dtype, ties=False, special=False):
    cuts = torch.randint(0, L + 1, (S - 1,), generator=gen).sort().values.tolist() if S > 1 else []
    offsets = torch.tensor([0] + cuts + [L])
    lens = offsets[1:] - offsets[:-1]
    k = (torch.rand(B, S, generator=gen) * (lens + 3).double()).long()
    k[torch.rand(B, S, generator=gen) < 0.2] = 0
    if ties:
        scores = torch.randint(-3, 4, (B, L), generator=gen).to(dtype)
    else:
        scores = torch.randn(B, L, generator=gen, dtype=torch.float64).to(dtype)
    if special and scores.numel():
        flat = scores.view(-1)
        pick = torch.randint(0, flat.numel(), (max(1, flat.numel() // 10),), generator=gen)
        flat[pick] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0], dtype=dtype)[
            torch.arange(pick.numel()) % 5]
    return scores, offsets, k, int(k.sum(1).max()) + 1 if B else 2


def assert_topk_equal(got, expected):
    for g, e, name in zip(got, expected, ("values", "indices", "lengths")):
        torch.testing.assert_close(g, e, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{name}: {m}")


# (B, L, S, what it covers). Budgets: 24 KiB of keys = 6144 float / 3072 double keys in shared memory.
TOPK_SHAPES = [
    (1, 1, 1, "one entry"),
    (3, 37, 3, "short segments, chunk tail"),
    (4, 576, 1, "CLIP row: keys + bitonic sort in shared memory"),
    (2, 700, 5, "several segments per row, empty ones"),
    (2, 7000, 2, "segment longer than the shared key budget: keys from global memory"),
    (0, 5, 2, "no rows"),
    (3, 0, 2, "no columns"),
]


@pytest.mark.parametrize("B,L,S,_what", TOPK_SHAPES, ids=[s[3] for s in TOPK_SHAPES])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("order", ["score", "index"])
def test_segmented_topk_cuda_kernels(cucpu, B, L, S, _what, dtype, order):
    gen = torch.Generator().manual_seed(L * 31 + S)
    for ties, special in [(False, False), (True, True)]:
        scores, offsets, k, max_k = random_topk_case(B, L, S, gen, dtype, ties, special)
        for largest in (True, False):
            expected = torch.ops.vtp_ext.segmented_topk(scores, offsets, k, max_k, largest, order)
            got = cucpu.segmented_topk(scores, offsets, k, max_k, largest, order)
            assert_topk_equal(got, expected)
            grad = torch.randn(B, max_k, generator=gen, dtype=torch.float64).to(dtype)
            torch.testing.assert_close(cucpu.segmented_topk_backward(grad, got[1], L),
                                       torch.ops.vtp_ext.segmented_topk_backward(grad, expected[1], L), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_segmented_topk_fallbacks_and_grid_stride(cucpu, max_blocks, monkeypatch, dtype):
    gen = torch.Generator().manual_seed(99)
    cases = [random_topk_case(5, 300, 4, gen, dtype, ties=True, special=True),
             random_topk_case(3, 130, 1, gen, dtype)]
    big = torch.zeros(5, 2 * 300 + 1, dtype=dtype)
    big[:, 1::2] = cases[0][0]
    cases.append((big[:, 1::2], *cases[0][1:]))  # strided columns
    cases.append((cases[0][0].t().contiguous().t(), *cases[0][1:]))  # column-major
    # budgets: default; keys from global memory; sort by counting ranks in global scratch; both
    budgets = [(None, None), ("64", None), (None, "64"), ("0", "0")]
    for blocks in (None, 1, 3):
        max_blocks(blocks)
        for key_bytes, sort_bytes in budgets:
            for name, value in (("VTP_CUCPU_TOPK_KEY_BYTES", key_bytes), ("VTP_CUCPU_TOPK_SORT_BYTES", sort_bytes)):
                if value is None:
                    monkeypatch.delenv(name, raising=False)
                else:
                    monkeypatch.setenv(name, value)
            for scores, offsets, k, max_k in cases:
                for order in ("score", "index"):
                    expected = torch.ops.vtp_ext.segmented_topk(scores, offsets, k, max_k, True, order)
                    assert_topk_equal(cucpu.segmented_topk(scores, offsets, k, max_k, True, order), expected)


def test_segmented_topk_bad_input_same_message(cucpu):
    s = torch.randn(2, 10)
    for args in [(s, torch.tensor([0, 6, 5, 10]), torch.zeros(2, 3, dtype=torch.int64), 3),
                 (s, torch.tensor([0, 4, 10]), torch.tensor([[1, -1], [0, 0]]), 3),
                 (s, torch.tensor([0, 4, 10]), torch.tensor([[3, 3], [0, 0]]), 5),
                 (s, torch.tensor([0, 4, 9]), torch.zeros(2, 2, dtype=torch.int64), 3)]:
        with pytest.raises(RuntimeError) as cpu_err:
            torch.ops.vtp_ext.segmented_topk(*args)
        with pytest.raises(RuntimeError) as cuda_err:
            cucpu.segmented_topk(*args)
        tail = lambda e: str(e.value).split(", ", 2)[-1].split("\n")[0]  # noqa: E731
        assert tail(cpu_err) == tail(cuda_err)
    for op in ("segmented_topk_backward",):
        for bad in (torch.tensor([[0, 10]]), torch.tensor([[-2, 0]])):
            with pytest.raises(RuntimeError, match=r"indices must be -1 or in \[0, L\) = \[0, 10\)"):
                getattr(cucpu, op)(torch.randn(1, 2), bad, 10)


GATHER_SHAPES = [
    ((1, 1, 1, 1), "one element"),
    ((2, 10, 4, 3), "small, odd D"),
    ((3, 40, 17, 64), "several blocks"),
    ((2, 576, 115, 33), "CLIP-like token count"),
    ((2, 5, 0, 8), "K = 0"),
    ((0, 5, 3, 2), "no rows"),
    ((2, 6, 4, 0), "D = 0"),
    ((2, 0, 3, 4), "L = 0 (only -1 indices)"),
]


@pytest.mark.parametrize("shape,_what", GATHER_SHAPES, ids=[s[1] for s in GATHER_SHAPES])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gather_tokens_cuda_kernels(cucpu, shape, _what, dtype):
    B, L, K, D = shape
    gen = torch.Generator().manual_seed(B * 1000 + L * 10 + K)
    x = torch.randn(B, L, D, generator=gen, dtype=torch.float64).to(dtype)
    for unique in (True, False):
        if L == 0 or B == 0:
            idx = torch.full((B, K), -1, dtype=torch.int64)
        elif unique:
            idx = torch.stack([torch.randperm(L, generator=gen)[: min(K, L)] for _ in range(B)]).reshape(B, -1)
        else:
            idx = torch.randint(0, L, (B, K), generator=gen)
        idx[torch.rand(idx.shape, generator=gen) < 0.2] = -1
        out = cucpu.gather_tokens(x, idx)
        torch.testing.assert_close(out, torch.ops.vtp_ext.gather_tokens(x, idx), rtol=0, atol=0)
        grad = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(dtype)
        # Repeated indices are summed in the same order on both backends: bit-identical.
        torch.testing.assert_close(cucpu.gather_tokens_backward(grad, idx, L),
                                   torch.ops.vtp_ext.gather_tokens_backward(grad, idx, L), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gather_tokens_grid_stride_and_strides(cucpu, max_blocks, dtype):
    gen = torch.Generator().manual_seed(17)
    x = torch.randn(4, 30, 20, generator=gen, dtype=torch.float64).to(dtype)
    idx = torch.randint(-1, 30, (4, 25), generator=gen)
    grad = torch.randn(4, 25, 20, generator=gen, dtype=torch.float64).to(dtype)
    xs = {"contiguous": x, "transposed": x.transpose(0, 1).contiguous().transpose(0, 1),
          "strided D": torch.stack([x, x], -1)[..., 0]}
    for blocks in (None, 1, 3):
        max_blocks(blocks)
        for name, xi in xs.items():
            torch.testing.assert_close(cucpu.gather_tokens(xi, idx), torch.ops.vtp_ext.gather_tokens(xi, idx),
                                       rtol=0, atol=0, msg=lambda m: f"{name}: {m}")
        for gi in (grad, grad.transpose(0, 1).contiguous().transpose(0, 1)):
            torch.testing.assert_close(cucpu.gather_tokens_backward(gi, idx.t().contiguous().t(), 30),
                                       torch.ops.vtp_ext.gather_tokens_backward(gi, idx, 30), rtol=0, atol=0)


def test_gather_tokens_bad_index_same_message(cucpu):
    x = torch.randn(2, 5, 3)
    for bad in (torch.tensor([[0, 5], [0, 0]]), torch.tensor([[0, 1], [-2, 0]])):
        for op, args in (("gather_tokens", (x, bad)), ("gather_tokens_backward", (torch.randn(2, 2, 3), bad, 5))):
            with pytest.raises(RuntimeError) as cpu_err:
                getattr(torch.ops.vtp_ext, op)(*args)
            with pytest.raises(RuntimeError) as cuda_err:
                getattr(cucpu, op)(*args)
            tail = lambda e: str(e.value).split(", ", 2)[-1].split("\n")[0]  # noqa: E731
            assert tail(cpu_err) == tail(cuda_err) and "indices must be -1 or in [0, L) = [0, 5)" in tail(cpu_err)


# --------------------------------------------------------------------------------------------- gumbel
PHILOX_KAT = [
    ([0, 0, 0, 0], [0, 0], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]),
    ([0xffffffff] * 4, [0xffffffff] * 2, [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]),
    ([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0],
     [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]),
]


def test_philox_known_answers_on_the_cuda_path(cucpu, max_blocks):
    counter = torch.tensor([c for c, _, _ in PHILOX_KAT] * 5)
    key = torch.tensor([k for _, k, _ in PHILOX_KAT] * 5)
    for blocks in (None, 1):
        max_blocks(blocks)
        assert cucpu.philox4x32_10(counter, key).tolist() == [e for _, _, e in PHILOX_KAT] * 5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
def test_gumbel_noise_bit_identical(cucpu, max_blocks, dtype):
    for blocks in (None, 1, 3):
        max_blocks(blocks)
        for seed, shape, step in [(0, (1, 1), 0), (-7, (3, 5), 2), (2**62 + 3, (5, 577), 287), (9, (2, 1030), 4),
                                  (1, (0, 4), 0)]:
            like = torch.empty(shape, dtype=dtype)
            expected = torch.ops.vtp_ext.gumbel_noise(like, seed, step)
            got = cucpu.gumbel_noise(like, seed, step)
            assert got.dtype == expected.dtype and torch.equal(got, expected), (seed, shape, step)


def gumbel_case(B, N, gen, dtype, special=False):
    logits = torch.randn(B, N, generator=gen, dtype=torch.float64).to(dtype)
    if special and B * N:
        logits.view(-1)[torch.randint(0, B * N, (max(1, B * N // 8),), generator=gen)] = -float("inf")
        logits[0, :] = -float("inf")  # a row with no finite entry
    k = torch.randint(0, N + 2, (B,), generator=gen)
    if B:
        k[0] = min(N, 3)
    grad = torch.randn(B, N, generator=gen, dtype=torch.float64).to(dtype)
    return logits, k, grad


GUMBEL_SHAPES = [
    (1, 1, "one entry"),
    (3, 7, "N not a multiple of the Philox block"),
    (4, 64, "several columns per thread"),
    (2, 1100, "more Philox blocks than threads"),
    (0, 5, "no rows"),
    (3, 0, "no columns"),
]


@pytest.mark.parametrize("B,N,_what", GUMBEL_SHAPES, ids=[s[2] for s in GUMBEL_SHAPES])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", ["sequential", "single"])
def test_gumbel_topk_cuda_kernels(cucpu, B, N, _what, dtype, mode):
    gen = torch.Generator().manual_seed(B * 7 + N)
    for special in (False, True):
        logits, k, grad = gumbel_case(B, N, gen, dtype, special)
        for training in (True, False):
            args = (logits, k, 2.5, 1234, mode, training)
            expected = torch.ops.vtp_ext.gumbel_topk(*args)
            got = cucpu.gumbel_topk(*args)
            assert torch.equal(got, expected), (special, training)  # same noise, same picks
            g_cpu = torch.ops.vtp_ext.gumbel_topk_backward(grad, *args)
            g_cuda = cucpu.gumbel_topk_backward(grad, *args)
            tol = dict(rtol=1e-9, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
            if dtype in (torch.float16, torch.bfloat16):
                tol = TOLERANCES[dtype]
            torch.testing.assert_close(g_cuda, g_cpu, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_gumbel_topk_global_scratch_and_grid_stride(cucpu, max_blocks, monkeypatch, dtype):
    gen = torch.Generator().manual_seed(5)
    logits, k, grad = gumbel_case(5, 70, gen, dtype, special=True)
    views = {"contiguous": logits, "column-major": logits.t().contiguous().t()}
    for smem in (None, "0"):  # shared-memory row state, or the global scratch rows
        if smem is None:
            monkeypatch.delenv("VTP_CUCPU_GUMBEL_SMEM_BYTES", raising=False)
        else:
            monkeypatch.setenv("VTP_CUCPU_GUMBEL_SMEM_BYTES", smem)
        for blocks in (None, 1, 2):
            max_blocks(blocks)
            for name, x in views.items():
                for mode in ("sequential", "single"):
                    args = (x, k, 1.5, -99, mode, True)
                    assert torch.equal(cucpu.gumbel_topk(*args), torch.ops.vtp_ext.gumbel_topk(*args)), name
                    torch.testing.assert_close(cucpu.gumbel_topk_backward(grad.t().contiguous().t(), *args),
                                               torch.ops.vtp_ext.gumbel_topk_backward(grad, *args),
                                               rtol=1e-4 if dtype == torch.float32 else 1e-9,
                                               atol=1e-5 if dtype == torch.float32 else 1e-12)


def test_gumbel_topk_bad_input_same_message(cucpu):
    nan = torch.tensor([[0.0, float("nan"), 1.0], [0.0, 1.0, 2.0]])
    inf = torch.tensor([[0.0, 1.0, 2.0], [0.0, float("inf"), 2.0]])
    for args in [(nan, torch.tensor([1, 1]), 5.0, 1, "sequential", True),
                 (inf, torch.tensor([1, 1]), 5.0, 1, "single", True),
                 (inf, torch.tensor([1, 1]), 5.0, 1, "single", False),
                 (torch.randn(2, 3), torch.tensor([1, -1]), 5.0, 1, "single", True),
                 (torch.randn(2, 3), torch.tensor([1, 1]), 0.0, 1, "single", True)]:
        for op, call_args in (("gumbel_topk", args), ("gumbel_topk_backward", (torch.randn(2, 3),) + args)):
            with pytest.raises(RuntimeError) as cpu_err:
                getattr(torch.ops.vtp_ext, op)(*call_args)
            with pytest.raises(RuntimeError) as cuda_err:
                getattr(cucpu, op)(*call_args)
            tail = lambda e: str(e.value).split(", ", 2)[-1].split("\n")[0]  # noqa: E731
            assert tail(cpu_err) == tail(cuda_err)
