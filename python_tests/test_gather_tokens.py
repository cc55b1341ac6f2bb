"""gather_tokens: values and gradients against plain-torch references, -1 padding, repeated indices,
dtypes, layouts, opcheck, gradcheck, bad inputs, torch.compile, and CUDA (skipped without a GPU)."""
from __future__ import annotations

import pytest
import torch

import vtp_ext
from op_testing import FLOAT_DTYPES, Sample, layouts, requires_cuda, run_gradcheck, run_opcheck

OP = torch.ops.vtp_ext.gather_tokens.default
BWD = torch.ops.vtp_ext.gather_tokens_backward.default
ALL_DTYPES = (torch.float64,) + FLOAT_DTYPES


def reference(x, indices):
    B, K = indices.shape
    out = torch.zeros(B, K, x.shape[2], dtype=x.dtype)
    for b in range(B):
        for j in range(K):
            if indices[b, j] >= 0:
                out[b, j] = x[b, indices[b, j]]
    return out


def reference_grad(grad, indices, L):
    """Scatter-add in float64, rounded once to grad's dtype (the op sums in its accumulation type)."""
    B, K, D = grad.shape
    out = torch.zeros(B, L, D, dtype=torch.float64)
    for b in range(B):
        keep = indices[b] >= 0
        out[b].index_add_(0, indices[b][keep], grad[b][keep].double())
    return out.to(grad.dtype)


def random_indices(B, K, L, gen, unique=False, pad=0.2):
    if unique:
        idx = torch.stack([torch.randperm(L, generator=gen)[:K] for _ in range(B)]) if B else torch.zeros(0, K)
    else:
        idx = torch.randint(0, max(L, 1), (B, K), generator=gen)
    idx = idx.long()
    idx[torch.rand(B, K, generator=gen) < pad] = -1
    return idx


SHAPES = [(1, 1, 1, 1), (2, 10, 4, 3), (3, 40, 17, 64), (4, 576, 115, 33), (2, 5, 0, 8), (0, 5, 3, 2), (2, 6, 4, 0)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("unique", [True, False], ids=["unique", "repeated"])
def test_matches_reference(shape, dtype, unique):
    B, L, K, D = shape
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(B, L, D, generator=gen, dtype=torch.float64).to(dtype)
    idx = random_indices(B, min(K, L) if unique else K, L, gen, unique)
    out = vtp_ext.gather_tokens(x, idx)
    assert out.shape == (B, idx.shape[1], D) and out.is_contiguous()
    torch.testing.assert_close(out, reference(x, idx), rtol=0, atol=0)
    grad = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(dtype)
    got = BWD(grad, idx, L)
    assert got.shape == (B, L, D) and got.is_contiguous()
    tol = dict(rtol=0, atol=0) if unique else dict(rtol=1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-6,
                                                   atol=1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-6)
    torch.testing.assert_close(got, reference_grad(grad, idx, L), **tol)


def test_repeated_indices_sum_in_index_order_exactly():
    # fp16: summing 2048 + 1 + 1 one at a time in fp16 gives 2048; the op sums in float32 -> 2050.
    grad = torch.tensor([[[2048.0], [1.0], [1.0]]], dtype=torch.float16)
    got = BWD(grad, torch.tensor([[0, 0, 0]]), 2)
    assert got[0, :, 0].tolist() == [2050.0, 0.0]


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_layouts(dtype):
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(3, 20, 12, generator=gen, dtype=torch.float64).to(dtype)
    idx = random_indices(3, 8, 20, gen)
    expected = reference(x, idx)
    for name, view in layouts(x).items():
        torch.testing.assert_close(vtp_ext.gather_tokens(view, idx), expected, rtol=0, atol=0,
                                   msg=lambda m: f"{name}: {m}")
    torch.testing.assert_close(vtp_ext.gather_tokens(x, idx.t().contiguous().t()), expected, rtol=0, atol=0)
    grad = torch.randn(3, 8, 12, generator=gen, dtype=torch.float64).to(dtype)
    expected_grad = BWD(grad, idx, 20)
    for name, view in layouts(grad).items():
        torch.testing.assert_close(BWD(view, idx, 20), expected_grad, rtol=0, atol=0, msg=lambda m: f"{name}: {m}")


def test_autograd_and_selection_pipeline():
    feats = torch.randn(4, 50, 16, dtype=torch.float64, requires_grad=True)
    scores = feats.detach().norm(dim=-1)
    values, indices, lengths = vtp_ext.segmented_topk(scores, [0, 20, 50], torch.tensor([[3, 5]] * 4), 9,
                                                      order="index")
    kept = vtp_ext.gather_tokens(feats, indices)
    w = torch.randn_like(kept)
    (kept * w).sum().backward()
    expected = torch.zeros_like(feats)
    for b in range(4):
        for j in range(int(lengths[b])):
            expected[b, indices[b, j]] += w[b, j]
    torch.testing.assert_close(feats.grad, expected, rtol=0, atol=0)


def gradcheck_samples():
    gen = torch.Generator().manual_seed(2)
    out = []
    for B, L, K, D, unique in [(2, 7, 5, 3, True), (3, 4, 9, 2, False), (1, 6, 6, 1, True)]:
        x = torch.randn(B, L, D, generator=gen, dtype=torch.float64, requires_grad=True)
        out.append(Sample((x, random_indices(B, K, L, gen, unique)), name=f"{B}x{L}x{K}x{D}"))
    return out


def test_gradcheck():
    run_gradcheck(vtp_ext.gather_tokens, gradcheck_samples())


def test_gradgradcheck():
    for s in gradcheck_samples():
        assert torch.autograd.gradgradcheck(lambda x: vtp_ext.gather_tokens(x, s.args[1]), (s.args[0],)), s.name


def opcheck_samples():
    gen = torch.Generator().manual_seed(4)
    samples = []
    for dtype in ALL_DTYPES:
        for rg in (False, True):
            x = torch.randn(3, 11, 8, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(rg and dtype == torch.float64)
            samples.append(Sample((x, random_indices(3, 6, 11, gen)), name=f"{dtype}-{rg}"))
    samples.append(Sample((torch.randn(4, 9, 6)[:, ::2, 1:], random_indices(4, 3, 5, gen)), name="sliced"))
    samples.append(Sample((torch.randn(0, 4, 3), torch.zeros(0, 2, dtype=torch.int64)), name="empty"))
    return samples


def test_opcheck_forward():
    run_opcheck(OP, opcheck_samples())


def test_opcheck_backward():
    gen = torch.Generator().manual_seed(6)
    samples = []
    for dtype in ALL_DTYPES:
        grad = torch.randn(2, 5, 7, generator=gen, dtype=torch.float64).to(dtype)
        samples.append(Sample((grad, random_indices(2, 5, 9, gen), 9), name=str(dtype)))
    g = torch.randn(2, 5, 7, dtype=torch.float64, requires_grad=True)
    samples.append(Sample((g, random_indices(2, 5, 4, gen), 4), name="requires-grad"))
    run_opcheck(BWD, samples)


def test_torch_compile_fullgraph():
    def f(x, idx):
        return vtp_ext.gather_tokens(x * 2, idx).sum()

    x = torch.randn(2, 8, 16, requires_grad=True)
    idx = torch.tensor([[0, 7, -1], [3, 3, 1]])
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, idx), f(x, idx))
    compiled(x, idx).backward()
    g = x.grad.clone()
    x.grad = None
    f(x, idx).backward()
    torch.testing.assert_close(g, x.grad)


X = torch.randn(2, 5, 3)
IDX = torch.tensor([[0, 4], [-1, 2]])
BAD_INPUTS = [
    ((torch.randn(5, 3), IDX), RuntimeError, "x must have shape [B, L, D] (3 dimensions), got 2"),
    ((torch.ones(2, 5, 3, dtype=torch.int32), IDX), RuntimeError, "x must be float32, float64, float16 or bfloat16, got int32"),
    ((X, IDX.int()), RuntimeError, "indices must be int64, got int32"),
    ((X, IDX.float()), RuntimeError, "indices must be int64, got float32"),
    ((X, IDX[0]), RuntimeError, "indices must have shape [B, K] (2 dimensions), got 1"),
    ((X, torch.zeros(3, 2, dtype=torch.int64)), RuntimeError, "indices must have shape [B, K] = [2, 2], got [3, 2]"),
    ((X, torch.tensor([[0, 5], [0, 0]])), RuntimeError, "indices must be -1 or in [0, L) = [0, 5), got an entry outside"),
    ((X, torch.tensor([[0, 1], [-2, 0]])), RuntimeError, "indices must be -1 or in [0, L) = [0, 5)"),
    ((torch.randn(2, 0, 3), torch.tensor([[0], [-1]])), RuntimeError, "indices must be -1 or in [0, L) = [0, 0)"),
    ((X.tolist(), IDX), TypeError, "x must be a torch.Tensor"),
    ((X, [[0, 1], [1, 2]]), TypeError, "indices must be a torch.Tensor"),
]


@pytest.mark.parametrize("args,exc,fragment", BAD_INPUTS, ids=[str(i) for i in range(len(BAD_INPUTS))])
def test_bad_inputs(args, exc, fragment):
    with pytest.raises(exc) as info:
        vtp_ext.gather_tokens(*args)
    assert fragment in str(info.value) and "vtp_ext.gather_tokens" in str(info.value)


BAD_BACKWARD = [
    ((torch.randn(2, 2), IDX, 5), "grad must have shape [B, K, D] (3 dimensions), got 2"),
    ((torch.randn(2, 3, 3), IDX, 5), "indices must have shape [B, K] = [2, 3], got [2, 2]"),
    ((torch.randn(2, 2, 3), IDX, 4), "indices must be -1 or in [0, L) = [0, 4)"),
    ((torch.randn(2, 2, 3), IDX, -3), "L must be in [0, 2^31-1], got -3"),
    ((torch.ones(2, 2, 3, dtype=torch.int64), IDX, 5), "grad must be float32, float64, float16 or bfloat16, got int64"),
]


@pytest.mark.parametrize("args,fragment", BAD_BACKWARD, ids=[str(i) for i in range(len(BAD_BACKWARD))])
def test_bad_backward_inputs(args, fragment):
    with pytest.raises(RuntimeError) as info:
        BWD(*args)
    assert fragment in str(info.value) and "vtp_ext.gather_tokens_backward" in str(info.value)


def test_mismatched_devices_rejected():
    with pytest.raises(RuntimeError, match="same device"):
        vtp_ext.gather_tokens(X, IDX.to("meta"))


@requires_cuda
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_cuda_matches_cpu(dtype):
    assert vtp_ext.cuda_built(), "a CUDA device is present but vtp_ext was built without CUDA kernels"
    gen = torch.Generator().manual_seed(8)
    for B, L, K, D in SHAPES:
        for unique in (True, False):
            x = torch.randn(B, L, D, generator=gen, dtype=torch.float64).to(dtype)
            idx = random_indices(B, min(K, L) if unique else K, L, gen, unique)
            out = vtp_ext.gather_tokens(x.cuda(), idx.cuda())
            torch.testing.assert_close(out.cpu(), vtp_ext.gather_tokens(x, idx), rtol=0, atol=0)
            grad = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(dtype)
            torch.testing.assert_close(BWD(grad.cuda(), idx.cuda(), L).cpu(), BWD(grad, idx, L), rtol=0, atol=0)


@requires_cuda
def test_cuda_gradcheck_opcheck_and_bad_index():
    x = torch.randn(2, 7, 3, dtype=torch.float64, device="cuda", requires_grad=True)
    idx = torch.tensor([[0, 6, -1, 6], [1, 2, 3, -1]], device="cuda")
    run_gradcheck(vtp_ext.gather_tokens, [Sample((x, idx))])
    run_opcheck(OP, [Sample((x.detach().float(), idx)), Sample((x.detach().bfloat16(), idx))])
    with pytest.raises(RuntimeError, match=r"indices must be -1 or in \[0, L\) = \[0, 7\)"):
        vtp_ext.gather_tokens(x.detach(), torch.tensor([[0, 7]] * 2, device="cuda"))
