"""segmented_topk: values against an independent plain-torch reference (per-segment loops with a stable
index tie-break), random segment layouts with empty segments and k = 0, ties, NaN/inf, dtypes, layouts,
opcheck, gradcheck, bad inputs, torch.compile, and CUDA (skipped without a GPU)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import vtp_ext
from op_testing import FLOAT_DTYPES, Sample, requires_cuda, run_gradcheck, run_opcheck

OP = torch.ops.vtp_ext.segmented_topk.default
BWD = torch.ops.vtp_ext.segmented_topk_backward.default
ALL_DTYPES = (torch.float64,) + FLOAT_DTYPES


def stable_rank(seg: torch.Tensor, largest: bool) -> torch.Tensor:
    """Positions of seg, best first: by value (ties: lower index first), NaN after every number."""
    nan = torch.isnan(seg)
    perm = torch.sort(torch.where(nan, torch.zeros_like(seg), seg), descending=largest, stable=True).indices
    # A second stable sort on "is NaN" moves the NaNs behind the numbers and keeps both groups' order.
    return perm[torch.sort(nan[perm].to(torch.int8), stable=True).indices]


def reference(scores, offsets, k, max_k, largest=True, order="score"):
    """Plain-torch loops over rows and segments."""
    B, _ = scores.shape
    offsets = [int(o) for o in offsets]
    values = torch.zeros(B, max_k, dtype=scores.dtype)
    indices = torch.full((B, max_k), -1, dtype=torch.int64)
    lengths = torch.zeros(B, dtype=torch.int64)
    for b in range(B):
        pos = 0
        for s in range(len(offsets) - 1):
            lo, hi = offsets[s], offsets[s + 1]
            take = min(int(k[b, s]), hi - lo)
            if take == 0:
                continue
            seg = scores[b, lo:hi].double().cpu()
            chosen = stable_rank(seg, largest)[:take]
            if not torch.isnan(seg).any():  # the same values torch.topk reports
                expected = torch.topk(seg, take, largest=largest, sorted=True).values
                torch.testing.assert_close(seg[chosen], expected, rtol=0, atol=0)
            if order == "index":
                chosen = chosen.sort().values
            indices[b, pos:pos + take] = chosen + lo
            values[b, pos:pos + take] = scores[b].cpu()[chosen + lo]
            pos += take
        lengths[b] = pos
    return values, indices, lengths


def assert_same(got, expected):
    for g, e, name in zip(got, expected, ("values", "indices", "lengths")):
        assert g.dtype == e.dtype, name
        torch.testing.assert_close(g.cpu(), e, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{name}: {m}")


def random_layout(L: int, S: int, gen: torch.Generator) -> list[int]:
    """S segments covering [0, L), some of them empty."""
    cuts = torch.randint(0, L + 1, (S - 1,), generator=gen).sort().values.tolist() if S > 1 else []
    return [0] + cuts + [L]


def random_case(B, L, S, gen, dtype=torch.float32, ties=False):
    offsets = random_layout(L, S, gen)
    lens = torch.tensor([offsets[s + 1] - offsets[s] for s in range(S)])
    k = (torch.rand(B, S, generator=gen) * (lens + 3).double()).long()  # includes 0 and k > len
    k[torch.rand(B, S, generator=gen) < 0.2] = 0
    if ties:
        scores = torch.randint(-3, 4, (B, L), generator=gen).to(dtype)
    else:
        scores = torch.randn(B, L, generator=gen, dtype=torch.float64).to(dtype)
    max_k = int(k.sum(1).max()) + 2 if B else 3
    return scores, torch.tensor(offsets), k, max_k


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("order", ["score", "index"])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_matches_reference_random_layouts(dtype, largest, order, ties):
    gen = torch.Generator().manual_seed(1234)
    # (2, 3000, 3): segments long enough for several partition levels of the AVX-512 kernel
    for B, L, S in [(1, 1, 1), (3, 10, 1), (4, 37, 3), (5, 64, 7), (2, 300, 4), (3, 9, 9), (2, 0, 3), (0, 5, 2),
                    (2, 3000, 3)]:
        scores, offsets, k, max_k = random_case(B, L, S, gen, dtype, ties)
        got = vtp_ext.segmented_topk(scores, offsets, k, max_k, largest, order)
        assert got[0].shape == (B, max_k) and got[0].is_contiguous() and got[1].shape == (B, max_k)
        assert_same(got, reference(scores, offsets, k, max_k, largest, order))


@pytest.mark.parametrize("isa", ["base", "avx2"])
def test_every_cpu_build_selects_the_same(isa):
    # The AVX-512 build sorts by score with a partial quicksort, the others by radix select + sort: the
    # same values and indices, bit for bit, on ties, NaN, +-inf, -0.0, every dtype and both orders.
    code = """
        import torch, vtp_ext
        gen = torch.Generator().manual_seed(7)
        print(vtp_ext._C.cpu_isa)
        for dt in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            for ties in (False, True):
                s = (torch.randint(-4, 5, (6, 1500), generator=gen).float() if ties
                     else torch.randn(6, 1500, generator=gen))
                s[0, ::7] = float("nan"); s[1, ::11] = float("inf"); s[2, ::13] = -float("inf"); s[3, ::5] = -0.0
                s = s.to(dt)
                k = torch.randint(0, 700, (6, 3), generator=gen)
                for largest in (True, False):
                    for order in ("score", "index"):
                        v, i, n = vtp_ext.segmented_topk(s, [0, 1000, 1001, 1500], k, 2100, largest, order)
                        print(dt, ties, largest, order, repr(v.double().flatten().tolist()),
                              i.flatten().tolist(), n.tolist())
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            env={**os.environ, "VTP_EXT_CPU_ISA": isa}, cwd=os.path.dirname(__file__))
    default = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                             cwd=os.path.dirname(__file__))
    assert result.returncode == 0 and default.returncode == 0, result.stderr + default.stderr
    lines, expected = result.stdout.split("\n"), default.stdout.split("\n")
    if lines[0] != isa:
        pytest.skip(f"this CPU cannot run the {isa} kernels")
    assert len(lines) == 34 and lines[1:] == expected[1:]


def test_uniform_k_matches_torch_topk():
    scores = torch.randn(32, 576)
    for K in (115, 288, 460):
        values, indices, lengths = vtp_ext.segmented_topk(scores, [0, 576], K, K)
        ref = torch.topk(scores, K, dim=1)
        torch.testing.assert_close(values, ref.values, rtol=0, atol=0)
        torch.testing.assert_close(indices, ref.indices, rtol=0, atol=0)  # distinct values: same order
        assert (lengths == K).all()


def test_pyramid_budgets():
    levels = [4096, 1024, 256, 64]
    offsets = torch.tensor([0] + torch.tensor(levels).cumsum(0).tolist())
    scores = torch.randn(8, 5440)
    k = torch.tensor([[400, 200, 64, 16]] * 4 + [[100, 50, 20, 64]] * 4)
    got = vtp_ext.segmented_topk(scores, offsets, k, 680, order="index")
    assert_same(got, reference(scores, offsets, k, 680, True, "index"))
    assert got[2].tolist() == [680] * 4 + [234] * 4


def test_ties_pick_lower_index_first():
    scores = torch.tensor([[1.0, 2.0, 2.0, 1.0, 2.0, -0.0, 0.0, -0.0]])
    values, indices, _ = vtp_ext.segmented_topk(scores, [0, 5, 8], torch.tensor([[2, 2]]), 4)
    assert indices.tolist() == [[1, 2, 5, 6]]
    values, indices, _ = vtp_ext.segmented_topk(scores, [0, 5, 8], torch.tensor([[3, 1]]), 4, largest=False)
    assert indices.tolist() == [[0, 3, 1, 5]]


def test_nan_ranks_below_every_number_and_inf_is_ordinary():
    nan, inf = float("nan"), float("inf")
    scores = torch.tensor([[nan, -inf, 1.0, nan, inf, -2.0]])
    for largest, expected in [(True, [4, 2, 5, 1, 0, 3]), (False, [1, 5, 2, 4, 0, 3])]:
        values, indices, lengths = vtp_ext.segmented_topk(scores, [0, 6], 6, 6, largest=largest)
        assert indices.tolist() == [expected]
        torch.testing.assert_close(values, scores[:, expected], equal_nan=True, rtol=0, atol=0)
    values, indices, _ = vtp_ext.segmented_topk(scores, [0, 6], 4, 4, largest=True, order="index")
    assert indices.tolist() == [[1, 2, 4, 5]]  # no NaN while numbers are left


def test_padding_and_lengths():
    scores = torch.randn(3, 6)
    k = torch.tensor([[1, 0], [0, 0], [2, 5]])  # row 2: the second k is clamped to the segment length 4
    values, indices, lengths = vtp_ext.segmented_topk(scores, [0, 2, 6], k, 7)
    assert lengths.tolist() == [1, 0, 6]
    assert (indices[0, 1:] == -1).all() and (values[0, 1:] == 0).all()
    assert (indices[1] == -1).all() and (values[1] == 0).all()
    assert (indices[2, 6:] == -1).all()


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_layouts(dtype):
    gen = torch.Generator().manual_seed(7)
    scores, offsets, k, max_k = random_case(6, 50, 4, gen, dtype)
    expected = reference(scores, offsets, k, max_k)
    big = torch.zeros(6, 2 * 50 + 3, dtype=dtype)
    big[:, 1:101:2] = scores
    views = {
        "strided columns": big[:, 1:101:2],
        "transposed": scores.t().contiguous().t(),
        "row slice": torch.cat([torch.zeros(1, 50, dtype=dtype), scores])[1:],
        "k transposed": scores,
    }
    for name, view in views.items():
        kv = k.t().contiguous().t() if name == "k transposed" else k
        assert torch.equal(view, scores)
        assert_same(vtp_ext.segmented_topk(view, offsets, kv, max_k), expected)
    assert_same(vtp_ext.segmented_topk(scores, offsets[None].expand(2, -1)[1], k, max_k), expected)


def test_expanded_scores():
    row = torch.randn(1, 40)
    scores = row.expand(5, 40)  # row stride 0
    values, indices, _ = vtp_ext.segmented_topk(scores, [0, 40], torch.tensor([[3]] * 5), 3)
    assert (indices == indices[0]).all() and (values == values[0]).all()


def test_gradient_scatters_into_scores():
    scores = torch.randn(4, 30, dtype=torch.float64, requires_grad=True)
    k = torch.tensor([[2, 0, 5]] * 2 + [[1, 1, 1]] * 2)
    values, indices, lengths = vtp_ext.segmented_topk(scores, [0, 10, 20, 30], k, 8)
    w = torch.randn_like(values)
    (values * w).sum().backward()
    expected = torch.zeros(4, 30, dtype=torch.float64)
    for b in range(4):
        for j in range(int(lengths[b])):
            expected[b, indices[b, j]] += w[b, j]
    torch.testing.assert_close(scores.grad, expected, rtol=0, atol=0)


def test_backward_op_scatter_adds_repeated_indices():
    grad = torch.tensor([[1.0, 2.0, 4.0, 8.0]])
    indices = torch.tensor([[3, -1, 3, 0]])
    torch.testing.assert_close(BWD(grad, indices, 5), torch.tensor([[8.0, 0, 0, 5.0, 0]]))


def gradcheck_samples():
    out = []
    for B, L, offsets, k, max_k, order in [(2, 12, [0, 5, 12], [[2, 3], [0, 7]], 7, "score"),
                                           (3, 20, [0, 20], [[4], [1], [0]], 5, "index"),
                                           (1, 9, [0, 0, 4, 9], [[1, 6, 2]], 9, "score")]:
        # well separated values so the finite differences never change the selection
        scores = (torch.randperm(B * L).reshape(B, L).double() * 0.1).requires_grad_(True)
        out.append(Sample((scores, torch.tensor(offsets), torch.tensor(k), max_k, True, order), name=f"{B}x{L}-{order}"))
    return out


def test_gradcheck():
    run_gradcheck(lambda *a: vtp_ext.segmented_topk(*a)[0], gradcheck_samples())


def test_gradgradcheck():
    scores = (torch.randperm(24).reshape(2, 12).double() * 0.1).requires_grad_(True)
    k = torch.tensor([[2, 3], [4, 1]])
    assert torch.autograd.gradgradcheck(lambda s: vtp_ext.segmented_topk(s, [0, 5, 12], k, 6)[0], (scores,))


def opcheck_samples():
    gen = torch.Generator().manual_seed(3)
    samples = []
    for dtype in ALL_DTYPES:
        for rg in (False, True):
            scores, offsets, k, max_k = random_case(3, 40, 3, gen, dtype)
            scores.requires_grad_(rg and dtype == torch.float64)
            for order in ("score", "index"):
                samples.append(Sample((scores, offsets, k, max_k, True, order), name=f"{dtype}-{rg}-{order}"))
    scores, offsets, k, max_k = random_case(4, 33, 2, gen)
    samples.append(Sample((scores.t().contiguous().t(), offsets, k, max_k, False, "score"), name="transposed"))
    samples.append(Sample((torch.randn(0, 5), torch.tensor([0, 5]), torch.zeros(0, 1, dtype=torch.int64), 2),
                          name="no rows"))
    samples.append(Sample((torch.randn(2, 0), torch.tensor([0, 0]), torch.zeros(2, 1, dtype=torch.int64), 0),
                          name="no columns"))
    return samples


def test_opcheck_forward():
    run_opcheck(OP, opcheck_samples())


def test_opcheck_backward():
    samples = []
    for dtype in ALL_DTYPES:
        grad = torch.randn(3, 6, dtype=torch.float64).to(dtype)
        indices = torch.tensor([[0, 4, 2, -1, -1, -1], [9, 8, 7, 6, 5, 4], [-1] * 6])
        samples.append(Sample((grad, indices, 10), name=str(dtype)))
    g = torch.randn(6, 3, dtype=torch.float64, requires_grad=True).t()
    samples.append(Sample((g, torch.tensor([[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [1, 1, 1, -1, 2, 2]]), 6),
                          name="noncontig-requires-grad"))
    run_opcheck(BWD, samples)


def test_torch_compile_fullgraph():
    offsets = torch.tensor([0, 16, 24])

    def f(x, k):
        values, indices, lengths = vtp_ext.segmented_topk(x * 2, offsets, k, 10, order="index")
        return values.sum() + indices.sum() + lengths.sum()

    x = torch.randn(3, 24, requires_grad=True)
    k = torch.tensor([[3, 2], [5, 5], [0, 1]])
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, k), f(x, k))
    compiled(x, k).backward()
    g = x.grad.clone()
    x.grad = None
    f(x, k).backward()
    torch.testing.assert_close(g, x.grad)


def bad(scores=None, offsets=None, k=None, max_k=4, largest=True, order="score"):
    scores = torch.randn(2, 10) if scores is None else scores
    offsets = torch.tensor([0, 4, 10]) if offsets is None else offsets
    k = torch.tensor([[1, 2], [2, 2]]) if k is None else k
    return (scores, offsets, k, max_k, largest, order)


BAD_INPUTS = [
    (bad(scores=torch.randn(10)), RuntimeError, "scores must have shape [B, L] (2 dimensions), got 1"),
    (bad(scores=torch.randn(2, 10, 1)), RuntimeError, "scores must have shape [B, L] (2 dimensions), got 3"),
    (bad(scores=torch.ones(2, 10, dtype=torch.int64)), RuntimeError,
     "scores must be float32, float64, float16 or bfloat16, got int64"),
    (bad(offsets=torch.tensor([0.0, 4.0, 10.0])), RuntimeError, "offsets must be int64, got float32"),
    (bad(offsets=torch.tensor([0, 4, 10], dtype=torch.int32)), RuntimeError, "offsets must be int64, got int32"),
    (bad(offsets=torch.tensor([[0, 4, 10]])), RuntimeError, "offsets must have shape [S+1]"),
    (bad(offsets=torch.zeros(0, dtype=torch.int64), k=torch.zeros(2, 0, dtype=torch.int64)), RuntimeError,
     "offsets must have shape [S+1] (1 dimension, at least one element), got [0]"),
    (bad(offsets=torch.tensor([1, 4, 10])), RuntimeError, "offsets[0] must be 0, got 1"),
    (bad(offsets=torch.tensor([0, 6, 5, 10]), k=torch.zeros(2, 3, dtype=torch.int64)), RuntimeError,
     "offsets must be non-decreasing, got offsets[1] = 6 > offsets[2] = 5"),
    (bad(offsets=torch.tensor([0, 4, 9])), RuntimeError, "offsets[-1] must equal L = scores.shape[1] = 10, got 9"),
    (bad(offsets=torch.tensor([0, 4, 11])), RuntimeError, "offsets[-1] must equal L = scores.shape[1] = 10, got 11"),
    (bad(k=torch.tensor([[1, -1], [2, 2]])), RuntimeError, "k must be >= 0, got k[0, 1] = -1"),
    (bad(k=torch.tensor([[1, 2, 0], [2, 2, 0]])), RuntimeError, "k must have shape [B, S] = [2, 2], got [2, 3]"),
    (bad(k=torch.tensor([1, 2])), RuntimeError, "k must have shape [B, S] = [2, 2], got [2]"),
    (bad(k=torch.tensor([[1.0, 2.0], [2.0, 2.0]])), RuntimeError, "k must be int64, got float32"),
    (bad(max_k=3), RuntimeError, "the sum of k over the segments of a row must be <= max_k = 3, got 4 in row 1"),
    (bad(k=torch.tensor([[1, 2**62], [2, 2**62]]), max_k=2**62), RuntimeError,
     "the sum of k over the segments of a row must be <= max_k = 4611686018427387904, got 4611686018427387905 in row 0"),
    (bad(k=torch.tensor([[2**62, 2**62], [2**62, 2**62]])), RuntimeError,
     "got more than 2^63-1 in row 0"),
    (bad(max_k=-1), RuntimeError, "max_k must be >= 0, got -1"),
    (bad(order="value"), RuntimeError, 'order must be "score" or "index", got "value"'),
    (bad(order=""), RuntimeError, 'order must be "score" or "index", got ""'),
    (([[1.0, 2.0]], [0, 2], 1, 1), TypeError, "scores must be a torch.Tensor"),
    (bad(offsets=[0.0, 10.0]), TypeError, "offsets must be an int64 tensor or a sequence of ints"),
    (bad(k=1.5), TypeError, "k must be an int64 tensor [B, S] or an int"),
    (bad(max_k=4.0), TypeError, "max_k must be an int"),
    (bad(max_k=True), TypeError, "max_k must be an int"),
    (bad(largest=1), TypeError, "largest must be a bool"),
    (bad(order=None), TypeError, "order must be a str"),
]


@pytest.mark.parametrize("args,exc,fragment", BAD_INPUTS, ids=[str(i) for i in range(len(BAD_INPUTS))])
def test_bad_inputs(args, exc, fragment):
    with pytest.raises(exc) as info:
        vtp_ext.segmented_topk(*args)
    assert fragment in str(info.value)
    assert "vtp_ext.segmented_topk" in str(info.value)


BAD_BACKWARD = [
    ((torch.randn(2, 3), torch.tensor([[0, 1, 2], [0, 1, 5]]), 5), "indices must be -1 or in [0, L) = [0, 5)"),
    ((torch.randn(2, 3), torch.tensor([[0, 1, -2], [0, 1, 2]]), 5), "indices must be -1 or in [0, L) = [0, 5)"),
    ((torch.randn(2, 3), torch.tensor([[0, 1], [0, 1]]), 5), "indices must have shape [B, K] = [2, 3], got [2, 2]"),
    ((torch.randn(2, 3), torch.tensor([[0, 1, 2], [0, 1, 2]], dtype=torch.int32), 5), "indices must be int64, got int32"),
    ((torch.randn(2, 3, 1), torch.tensor([[0, 1, 2], [0, 1, 2]]), 5), "grad_values must have shape [B, max_k]"),
    ((torch.ones(2, 3, dtype=torch.int64), torch.tensor([[0, 1, 2], [0, 1, 2]]), 5), "grad_values must be float32"),
    ((torch.randn(2, 3), torch.tensor([[0, 1, 2], [0, 1, 2]]), -1), "L must be in [0, 2^31-1], got -1"),
    ((torch.randn(1, 1), torch.tensor([[0]]), 0), "indices must be -1 or in [0, L) = [0, 0)"),
]


@pytest.mark.parametrize("args,fragment", BAD_BACKWARD, ids=[str(i) for i in range(len(BAD_BACKWARD))])
def test_bad_backward_inputs(args, fragment):
    with pytest.raises(RuntimeError) as info:
        BWD(*args)
    assert fragment in str(info.value)


def test_mismatched_devices_rejected():
    with pytest.raises(RuntimeError, match="same device"):
        BWD(torch.randn(2, 3), torch.zeros(2, 3, dtype=torch.int64, device="meta"), 4)


@requires_cuda
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("order", ["score", "index"])
def test_cuda_matches_cpu(dtype, order):
    assert vtp_ext.cuda_built(), "a CUDA device is present but vtp_ext was built without CUDA kernels"
    gen = torch.Generator().manual_seed(11)
    for B, L, S, ties in [(4, 37, 3, False), (3, 600, 2, True), (2, 9000, 3, False), (8, 5440, 4, True), (0, 5, 2, False)]:
        scores, offsets, k, max_k = random_case(B, L, S, gen, dtype, ties)
        for largest in (True, False):
            expected = vtp_ext.segmented_topk(scores, offsets, k, max_k, largest, order)
            for off, kk in [(offsets, k), (offsets.cuda(), k.cuda())]:
                got = vtp_ext.segmented_topk(scores.cuda(), off, kk, max_k, largest, order)
                assert all(t.is_cuda for t in got)
                assert_same(got, expected)


@requires_cuda
def test_cuda_gradcheck_and_opcheck():
    samples = [Sample(tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in s.args), name=s.name)
               for s in gradcheck_samples()]
    for s in samples:
        s.args[0].requires_grad_(True)
    run_gradcheck(lambda *a: vtp_ext.segmented_topk(*a)[0], samples)
    run_opcheck(OP, [Sample(tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in s.args), name=s.name)
                     for s in opcheck_samples()])
    with pytest.raises(RuntimeError, match="indices must be -1 or in"):
        BWD(torch.randn(2, 3, device="cuda"), torch.tensor([[0, 1, 2], [0, 1, 9]], device="cuda"), 5)
