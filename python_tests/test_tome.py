"""ToMe ops: the plan and merged values against a plain-torch ToMe written here from the paper and
research/algorithms.md §2, protection rules, r clamp, odd N, empty batches, opcheck, gradcheck,
determinism, bad inputs, and CUDA (skipped without a GPU)."""
from __future__ import annotations

import pytest
import torch

import vtp_ext
from op_testing import Sample, requires_cuda, run_opcheck


# ---------------------------------------------------------------- the reference algorithm, in plain torch
def ref_match(metric, r, class_token=False, distill_token=False):
    N = metric.shape[1]
    r = max(0, min(r, (N - int(class_token) - int(distill_token)) // 2))
    m = metric.double() / metric.double().norm(dim=-1, keepdim=True)
    scores = m[:, ::2] @ m[:, 1::2].transpose(-1, -2)
    if class_token:
        scores[:, 0, :] = -float("inf")
    if distill_token:
        scores[:, :, 0] = -float("inf")
    node_max, node_idx = scores.max(dim=-1)
    order = node_max.argsort(dim=-1, descending=True, stable=True)
    unm, src = order[:, r:], order[:, :r]
    dst = node_idx.gather(1, src)
    if class_token:
        unm = unm.sort(dim=1).values
    return unm, src, dst


def ref_merge(x, unm, src, dst, size=None, mode="wavg", distill=False):
    B, N, _ = x.shape
    size = torch.ones(B, N, 1, dtype=x.dtype) if size is None else size

    def apply(t, reduce):
        a, b = t[:, ::2], t[:, 1::2]
        C = t.shape[-1]
        kept = a.gather(1, unm[..., None].expand(-1, -1, C))
        moved = a.gather(1, src[..., None].expand(-1, -1, C))
        b = b.scatter_reduce(1, dst[..., None].expand(-1, -1, C), moved, reduce=reduce, include_self=True)
        if distill:
            return torch.cat([kept[:, :1], b[:, :1], kept[:, 1:], b[:, 1:]], 1)
        return torch.cat([kept, b], 1)

    if mode == "wavg":
        total = apply(size, "sum")
        return apply(x * size, "sum") / total, total
    return apply(x, mode), apply(size, "sum")


def ref_unmerge(y, unm, src, dst, n, distill=False):
    B, _, C = y.shape
    kept = unm.shape[1]
    if distill:
        y = torch.cat([y[:, :1], y[:, 2:kept + 1], y[:, 1:2], y[:, kept + 1:]], 1)
    kept_rows, dst_rows = y[:, :kept], y[:, kept:]
    out = torch.zeros(B, n, C, dtype=y.dtype)
    out[:, 1::2] = dst_rows
    out.scatter_(1, (2 * unm)[..., None].expand(-1, -1, C), kept_rows)
    out.scatter_(1, (2 * src)[..., None].expand(-1, -1, C), dst_rows.gather(1, dst[..., None].expand(-1, -1, C)))
    return out


CASES = [  # (B, N, C, r, class_token, distill_token)
    (2, 10, 8, 3, False, False),
    (3, 17, 32, 5, True, False),
    (2, 197, 64, 16, True, False),
    (1, 197, 96, 8, True, True),
    (4, 33, 16, 100, False, True),   # r beyond the clamp
    (2, 9, 8, 4, False, False),      # r exactly at the clamp, odd N
    (2, 2, 4, 1, False, False),
]
CASE_IDS = [f"B{b}-N{n}-C{c}-r{r}-cls{int(ct)}-dist{int(dt)}" for b, n, c, r, ct, dt in CASES]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_plan_matches_reference(case, dtype):
    B, N, C, r, ct, dt = case
    metric = torch.randn(B, N, C, dtype=dtype)
    plan = vtp_ext.bipartite_matching(metric, r, ct, dt)
    unm, src, dst = ref_match(metric, r, ct, dt)
    assert plan.r == src.shape[1] and plan.n == N and plan.n_out == N - plan.r
    assert torch.equal(plan.src_idx, src) and torch.equal(plan.dst_idx, dst) and torch.equal(plan.unm_idx, unm)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("mode", ["wavg", "mean", "sum"])
@pytest.mark.parametrize("with_size", [False, True])
def test_merge_matches_reference(case, mode, with_size):
    B, N, C, r, ct, dt = case
    x = torch.randn(B, N, 12, dtype=torch.float64)
    size = torch.rand(B, N, 1, dtype=torch.float64) + 0.5 if with_size else None
    plan = vtp_ext.bipartite_matching(torch.randn(B, N, C), r, ct, dt)
    out, size_out = vtp_ext.merge(x, plan, size, mode)
    ref_out, ref_size = ref_merge(x, plan.unm_idx, plan.src_idx, plan.dst_idx, size, mode, dt)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(size_out, ref_size, rtol=0, atol=1e-12)
    xf = x.float()
    outf, _ = vtp_ext.merge(xf, plan, None if size is None else size.float(), mode)
    torch.testing.assert_close(outf, ref_out.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_unmerge_and_positions(case):
    B, N, C, r, ct, dt = case
    plan = vtp_ext.bipartite_matching(torch.randn(B, N, C), r, ct, dt)
    y = torch.randn(B, plan.n_out, 5, dtype=torch.float64)
    expected = ref_unmerge(y, plan.unm_idx, plan.src_idx, plan.dst_idx, N, dt)
    torch.testing.assert_close(vtp_ext.unmerge(y, plan), expected, rtol=0, atol=0)
    pos = plan.positions()
    torch.testing.assert_close(y.gather(1, pos[..., None].expand(-1, -1, 5)), expected, rtol=0, atol=0)
    # merging then unmerging keeps every token's group value; merging a constant gives back the constant
    x = torch.full((B, N, 3), 2.5, dtype=torch.float64)
    merged, _ = vtp_ext.merge(x, plan)
    assert torch.equal(vtp_ext.unmerge(merged, plan), x)


def test_protected_tokens():
    torch.manual_seed(1)
    for _ in range(5):
        metric = torch.randn(3, 41, 16)
        metric[:, 0] = metric[:, 1] * 10  # the class token is the most similar to token 1 -- still never merged
        plan = vtp_ext.bipartite_matching(metric, 20, class_token=True, distill_token=True)
        assert plan.r == 19  # (41 - 2) // 2
        assert not (plan.src_idx == 0).any(), "class token merged away"
        assert not (plan.dst_idx == 0).any(), "something merged into the distillation token"
        assert (plan.unm_idx[:, 0] == 0).all(), "class token is not the first kept token"
        x = torch.randn(3, 41, 4)
        out, _ = vtp_ext.merge(x, plan)
        assert torch.equal(out[:, 0], x[:, 0]) and torch.equal(out[:, 1], x[:, 1])  # [cls, distill, ...]


def test_r_zero_and_clamp():
    x = torch.randn(2, 11, 6)
    plan = vtp_ext.bipartite_matching(x, 0)
    assert plan.r == 0
    out, size = vtp_ext.merge(x, plan)
    assert out is x and size.shape == (2, 11, 1) and (size == 1).all()  # ToMe's identity
    assert vtp_ext.unmerge(out, plan) is x
    assert vtp_ext.bipartite_matching(x, 1000).r == 5
    assert vtp_ext.bipartite_matching(x, 1000, class_token=True).r == 5
    assert vtp_ext.bipartite_matching(x[:, :1], 3).r == 0


def test_empty_batch():
    x = torch.randn(0, 10, 4, requires_grad=True)
    plan = vtp_ext.bipartite_matching(x, 3)
    out, size = vtp_ext.merge(x, plan)
    assert out.shape == (0, 7, 4) and size.shape == (0, 7, 1)
    out.sum().backward()
    assert x.grad.shape == x.shape


def test_ties_and_zero_rows_are_deterministic():
    x = torch.ones(2, 12, 4)  # every similarity ties: lower indices win everywhere
    plan = vtp_ext.bipartite_matching(x, 3)
    assert plan.src_idx.tolist() == [[0, 1, 2]] * 2 and plan.dst_idx.tolist() == [[0, 0, 0]] * 2
    z = torch.randn(1, 12, 4)
    z[0, 2] = 0  # a zero row: NaN similarity ranks last, never merged while numbers remain
    plan = vtp_ext.bipartite_matching(z, 5)
    assert 1 not in plan.src_idx.tolist()[0]
    again = vtp_ext.bipartite_matching(z, 5)
    assert torch.equal(plan.src_idx, again.src_idx) and torch.equal(plan.unm_idx, again.unm_idx)


def test_merge_source_tracking():
    torch.manual_seed(0)
    x = torch.randn(2, 20, 8)
    p1 = vtp_ext.bipartite_matching(x, 4, class_token=True)
    y, size = vtp_ext.merge(x, p1)
    p2 = vtp_ext.bipartite_matching(y, 3, class_token=True)
    z, size2 = vtp_ext.merge(y, p2, size)
    src = vtp_ext.merge_source([p1, p2])
    assert src.shape == (2, 20) and int(src.max()) < z.shape[1]
    counts = torch.stack([torch.bincount(s, minlength=z.shape[1]) for s in src])
    torch.testing.assert_close(counts.float(), size2.squeeze(-1))  # sizes count the covered patches
    assert (src[:, 0] == 0).all()


def test_gradcheck():
    samples = []
    for B, N, C, r, ct, dt in CASES[:5]:
        plan = vtp_ext.bipartite_matching(torch.randn(B, N, C), r, ct, dt)
        x = torch.randn(B, N, 5, dtype=torch.float64, requires_grad=True)
        size = (torch.rand(B, N, 1, dtype=torch.float64) + 0.5).requires_grad_(True)
        for mode in ("wavg", "mean", "sum"):
            samples.append(Sample((x, size), dict(plan=plan, mode=mode), name=f"{N}-{r}-{mode}"))
    for s in samples:
        assert torch.autograd.gradcheck(lambda a, b: vtp_ext.merge(a, s.kwargs["plan"], b, s.kwargs["mode"]), s.args), s.name
    for B, N, C, r, ct, dt in CASES[:5]:
        plan = vtp_ext.bipartite_matching(torch.randn(B, N, C), r, ct, dt)
        y = torch.randn(B, plan.n_out, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: vtp_ext.unmerge(t, plan), (y,))
        assert torch.autograd.gradgradcheck(lambda t: vtp_ext.unmerge(t, plan), (y,))


def test_double_backward_of_merge_is_a_clear_error():
    plan = vtp_ext.bipartite_matching(torch.randn(1, 8, 4), 2)
    x = torch.randn(1, 8, 3, dtype=torch.float64, requires_grad=True)
    out, _ = vtp_ext.merge(x, plan)
    (g,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward"):
        g.sum().backward()


def test_opcheck():
    samples, merge_samples, unmerge_samples = [], [], []
    for B, N, C, r, ct, dt in CASES:
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            metric = torch.randn(B, N, C, dtype=dtype)
            samples.append(Sample((metric, r, ct, dt)))
        plan = vtp_ext.bipartite_matching(torch.randn(B, N, C), r, ct, dt)
        ids = (plan.unm_idx, plan.src_idx, plan.dst_idx)
        x = torch.randn(B, N, 6, dtype=torch.float64, requires_grad=True)
        size = torch.rand(B, N, dtype=torch.float64) + 0.5
        for mode in ("wavg", "mean", "sum"):
            merge_samples.append(Sample((x, size.requires_grad_(mode == "wavg"), *ids, mode, dt)))
            merge_samples.append(Sample((x.detach(), None, *ids, mode, dt)))
        merge_samples.append(Sample((torch.randn(B, N, 12)[..., ::2], None, *ids, "wavg", dt), name="strided"))
        unmerge_samples.append(Sample((torch.randn(B, N - plan.r, 5, dtype=torch.float64, requires_grad=True), *ids, N, dt)))
    run_opcheck(torch.ops.vtp_ext.tome_match.default, samples)
    run_opcheck(torch.ops.vtp_ext.tome_merge.default, merge_samples)
    run_opcheck(torch.ops.vtp_ext.tome_unmerge.default, unmerge_samples)


def test_deterministic_under_deterministic_algorithms():
    torch.use_deterministic_algorithms(True)
    try:
        x = torch.randn(4, 197, 64)
        plan = vtp_ext.bipartite_matching(x, 16, class_token=True)
        a, sa = vtp_ext.merge(x, plan)
        b, sb = vtp_ext.merge(x, plan)
        assert torch.equal(a, b) and torch.equal(sa, sb)
    finally:
        torch.use_deterministic_algorithms(False)


def test_torch_compile_fullgraph():
    def f(x):
        plan = vtp_ext.bipartite_matching(x, 4, class_token=True)
        out, size = vtp_ext.merge(x, plan)
        return out.sum() + size.sum()

    x = torch.randn(2, 17, 8, requires_grad=True)
    torch.testing.assert_close(torch.compile(f, fullgraph=True, backend="aot_eager")(x), f(x))


BAD = [
    (lambda: vtp_ext.bipartite_matching(torch.randn(4, 8), 2), RuntimeError, "metric must have shape [B, N, C] (3 dimensions), got 2"),
    (lambda: vtp_ext.bipartite_matching(torch.ones(1, 4, 2, dtype=torch.int64), 1), RuntimeError, "metric must be float32, float64, float16 or bfloat16, got int64"),
    (lambda: vtp_ext.bipartite_matching(torch.randn(1, 8, 4), -1), RuntimeError, "r must be >= 0, got -1"),
    (lambda: vtp_ext.bipartite_matching(torch.randn(1, 8, 4), 2.0), TypeError, "r must be an int"),
    (lambda: vtp_ext.bipartite_matching([[1.0]], 1), TypeError, "metric must be a torch.Tensor"),
    (lambda: vtp_ext.merge(torch.randn(1, 8, 3), "plan"), TypeError, "plan must be a MergePlan"),
    (lambda: vtp_ext.merge(torch.randn(1, 9, 3), vtp_ext.bipartite_matching(torch.randn(1, 8, 3), 2)), ValueError, "x must have shape [B, 8, D]"),
    (lambda: vtp_ext.merge(torch.randn(1, 8, 3), vtp_ext.bipartite_matching(torch.randn(1, 8, 3), 2), mode="max"), ValueError, 'mode must be "wavg", "mean" or "sum"'),
    (lambda: vtp_ext.merge(torch.randn(1, 8, 3), vtp_ext.bipartite_matching(torch.randn(1, 8, 3), 2), torch.ones(1, 7, 1)), RuntimeError, "size must have shape [B, N] = [1, 8]"),
    (lambda: vtp_ext.merge(torch.randn(1, 8, 3), vtp_ext.bipartite_matching(torch.randn(1, 8, 3), 2), torch.ones(1, 8, 1, dtype=torch.float64)), RuntimeError, "x and size must have the same dtype"),
    (lambda: torch.ops.vtp_ext.tome_merge(torch.randn(1, 8, 3), None, torch.tensor([[0, 1]]), torch.tensor([[2, 3]]), torch.tensor([[0, 9]]), "wavg", False), RuntimeError, "dst_idx values must be destination indices in [0, 4), got 9"),
    (lambda: torch.ops.vtp_ext.tome_merge(torch.randn(1, 8, 3), None, torch.tensor([[0, -1]]), torch.tensor([[2, 3]]), torch.tensor([[0, 1]]), "wavg", False), RuntimeError, "unm_idx values must be source indices in [0, 4), got -1"),
    (lambda: torch.ops.vtp_ext.tome_merge(torch.randn(1, 8, 3), None, torch.tensor([[0]]), torch.tensor([[2, 3]]), torch.tensor([[0, 1]]), "wavg", False), RuntimeError, "unm_idx must have shape [1, 2], got [1, 1]"),
    (lambda: torch.ops.vtp_ext.tome_merge(torch.randn(1, 8, 3), None, torch.tensor([[0, 1]]), torch.tensor([[2, 3]]).int(), torch.tensor([[0, 1]]), "wavg", False), RuntimeError, "src_idx must be int64, got int32"),
    (lambda: torch.ops.vtp_ext.tome_merge(torch.randn(1, 8, 3), None, torch.tensor([[0, 1]]), torch.tensor([[2, 3]]), torch.tensor([[0, 1]]), "avg", False), RuntimeError, 'mode must be "wavg", "mean" or "sum", got "avg"'),
    (lambda: torch.ops.vtp_ext.tome_unmerge(torch.randn(1, 5, 3), torch.tensor([[0, 1]]), torch.tensor([[2, 3]]), torch.tensor([[0, 1]]), 8, False), RuntimeError, "x_merged must have N - r = 6 tokens, got 5"),
    (lambda: torch.ops.vtp_ext.tome_unmerge(torch.randn(1, 6, 3), torch.tensor([[0, 1]]), torch.tensor([[2, 3]]), torch.tensor([[0, 1]]), -2, False), RuntimeError, "n must be >= 0, got -2"),
    (lambda: vtp_ext.merge_source([]), ValueError, "need at least one plan"),
]


@pytest.mark.parametrize("fn,exc,fragment", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_inputs(fn, exc, fragment):
    with pytest.raises(exc) as info:
        fn()
    assert fragment in str(info.value)


@requires_cuda
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cuda_matches_cpu(case):
    assert vtp_ext.cuda_built(), "a CUDA device is present but vtp_ext was built without CUDA kernels"
    B, N, C, r, ct, dt = case
    metric = torch.randn(B, N, C)
    plan, cplan = vtp_ext.bipartite_matching(metric, r, ct, dt), vtp_ext.bipartite_matching(metric.cuda(), r, ct, dt)
    for a, b in [(plan.unm_idx, cplan.unm_idx), (plan.src_idx, cplan.src_idx), (plan.dst_idx, cplan.dst_idx)]:
        assert torch.equal(a, b.cpu())
    x = torch.randn(B, N, 16, dtype=torch.float64, requires_grad=True)
    xc = x.detach().cuda().requires_grad_(True)
    for mode in ("wavg", "mean", "sum"):
        out, size = vtp_ext.merge(x, plan, mode=mode)
        outc, sizec = vtp_ext.merge(xc, cplan, mode=mode)
        torch.testing.assert_close(outc.cpu(), out)
        g = torch.randn_like(out)
        (gx,) = torch.autograd.grad(out, x, g)
        (gxc,) = torch.autograd.grad(outc, xc, g.cuda())
        torch.testing.assert_close(gxc.cpu(), gx)
    torch.testing.assert_close(vtp_ext.unmerge(outc, cplan).cpu(), vtp_ext.unmerge(out, plan))


@requires_cuda
def test_cuda_gradcheck():
    plan = vtp_ext.bipartite_matching(torch.randn(2, 17, 8, device="cuda"), 5, True)
    x = torch.randn(2, 17, 4, dtype=torch.float64, device="cuda", requires_grad=True)
    size = (torch.rand(2, 17, 1, dtype=torch.float64, device="cuda") + 0.5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: vtp_ext.merge(a, plan, b), (x, size))
