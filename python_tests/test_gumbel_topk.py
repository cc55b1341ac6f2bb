"""gumbel_topk, gumbel_noise, philox4x32_10: Random123 known-answer vectors, the noise layout against a
pure-Python Philox, the sequential mode against AdaLLaVA's n_times_gumbel_softmax loop in plain torch and
the single mode against Xie & Ermon's relaxed top-k loop (both fed the same noise), gradcheck through
the soft paths, the Plackett-Luce distribution of both modes, edge cases, opcheck, bad inputs,
torch.compile, portable-vs-AVX2 noise identity, and CUDA (skipped without a GPU)."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import vtp_ext
from op_testing import FLOAT_DTYPES, Sample, requires_cuda, run_gradcheck, run_opcheck

OP = torch.ops.vtp_ext.gumbel_topk.default
BWD = torch.ops.vtp_ext.gumbel_topk_backward.default
NOISE = torch.ops.vtp_ext.gumbel_noise.default
ALL_DTYPES = (torch.float64,) + FLOAT_DTYPES

# Random123 tests/kat_vectors, the three "philox4x32 10" lines: counter (4 words), key (2), expected (4).
KAT = [
    ([0x00000000, 0x00000000, 0x00000000, 0x00000000], [0x00000000, 0x00000000],
     [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]),
    ([0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff], [0xffffffff, 0xffffffff],
     [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]),
    ([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0],
     [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]),
]


def philox_py(counter, key, rounds=10):
    """Philox4x32 written from Salmon et al. (SC'11), independent of the C++."""
    c, (k0, k1) = list(counter), key
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + 0x9E3779B9) & 0xFFFFFFFF, (k1 + 0xBB67AE85) & 0xFFFFFFFF
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & 0xFFFFFFFF, (p0 >> 32) ^ c[3] ^ k1, p0 & 0xFFFFFFFF]
    return c


def test_philox_known_answer_vectors():
    counter = torch.tensor([c for c, _, _ in KAT])
    key = torch.tensor([k for _, k, _ in KAT])
    assert vtp_ext.philox4x32_10(counter, key).tolist() == [e for _, _, e in KAT]
    assert [philox_py(c, k) for c, k, _ in KAT] == [e for _, _, e in KAT]


def test_philox_random_counters_match_python():
    gen = torch.Generator().manual_seed(1)
    counter = torch.randint(0, 2**32, (64, 4), generator=gen)
    key = torch.randint(0, 2**32, (64, 2), generator=gen)
    got = vtp_ext.philox4x32_10(counter, key).tolist()
    assert got == [philox_py(c, k) for c, k in zip(counter.tolist(), key.tolist())]


def noise_py(seed, row, step, col, double):
    """The documented noise layout, from the Python Philox, in float64 math."""
    key = [seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF]
    per = 2 if double else 4
    words = philox_py([col // per, step, row & 0xFFFFFFFF, row >> 32], key)
    if double:
        m = (words[2 * (col % 2)] << 20) | (words[2 * (col % 2) + 1] >> 12)
        u = (2 * m + 1) * 2.0**-53
    else:
        u = (2 * (words[col % 4] >> 9) + 1) * 2.0**-24
    return -math.log(-math.log(u))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_noise_layout(dtype):
    seed = 0x1234_5678_9ABC_DEF0 - 2**63  # negative: the key is the two's-complement words
    # 150 columns: the SIMD generators' 8- and 16-block groups and a scalar tail
    noise = vtp_ext.gumbel_noise(seed, (3, 150), 5, dtype)
    assert noise.dtype == dtype and noise.shape == (3, 150)
    expected = torch.tensor([[noise_py(seed % 2**64, b, 5, j, dtype == torch.float64) for j in range(150)]
                             for b in range(3)], dtype=torch.float64)
    # float32: u is exact, the two logs are each within an ulp of float32
    tol = dict(rtol=4e-7, atol=4e-7) if dtype == torch.float32 else dict(rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(noise.double(), expected, **tol)


def test_noise_dtype_rules_and_statistics():
    n32 = vtp_ext.gumbel_noise(3, (4, 1000), 2)
    for dt in (torch.float16, torch.bfloat16):
        assert torch.equal(vtp_ext.gumbel_noise(3, (4, 1000), 2, dt), n32)  # noise is float32 for these
    assert vtp_ext.gumbel_noise(3, (4, 1000), 2, torch.float64).dtype == torch.float64
    assert not torch.equal(vtp_ext.gumbel_noise(3, (4, 1000), 3), n32)  # fresh noise per step
    assert not torch.equal(vtp_ext.gumbel_noise(4, (4, 1000), 2), n32)  # and per seed
    assert not torch.equal(n32[0], n32[1])  # and per row
    big = vtp_ext.gumbel_noise(11, (200, 1000), 0, torch.float64)
    assert torch.isfinite(big).all()
    assert abs(big.mean().item() - 0.5772156649) < 0.01  # Euler-Mascheroni
    assert abs(big.var().item() - math.pi**2 / 6) < 0.03


def noise_steps(seed, B, N, steps, dtype):
    return [vtp_ext.gumbel_noise(seed, (B, N), t, dtype) for t in range(steps)]


def adallava_reference(logits, k, tau, seed):
    """AdaLLaVA's n_times_gumbel_softmax per sample (masked_gumbel_softmax with hard=True, training=True),
    fed gumbel_noise; in the noise's dtype (float64 for float64 logits, float32 otherwise). k is clamped to N:
    the loop itself turns NaN past N (every entry masked), where the op defines k >= N as k = N."""
    B, N = logits.shape
    noise = noise_steps(seed, B, N, int(k.max()) if B else 0, logits.dtype)
    lg = logits.to(noise[0].dtype) if noise else logits
    rows = []
    for b in range(B):
        acc = torch.zeros(N, dtype=lg.dtype)
        for t in range(min(int(k[b]), N)):
            z = (lg[b] + noise[t][b]) / tau
            z = z.masked_fill(acc != 0, float("-inf"))
            p = torch.softmax(z, -1)
            if lg.dtype == torch.float64:
                j = torch.argmax(torch.where(acc != 0, torch.full_like(p, -1), p))
            else:  # the op picks the argmax of logits + noise (see the docstring of gumbel_topk)
                j = torch.argmax((lg[b] + noise[t][b]).masked_fill(acc != 0, float("-inf")))
            hard = torch.nn.functional.one_hot(j, N).to(lg.dtype)
            acc = acc + (hard - p.detach() + p)
        rows.append(acc)
    return torch.stack(rows) if rows else lg.new_zeros(0, N)


def relaxed_topk_reference(logits, k, tau, seed):
    """Xie & Ermon (2019) relaxed subset sampling per sample (the scores += log(max(1 - p, tiny)) loop of
    their code), fed gumbel_noise at step 0; returns (hard top-k mask, soft k-hot)."""
    B, N = logits.shape
    g = vtp_ext.gumbel_noise(seed, (B, N), 0, logits.dtype)
    x = logits.to(g.dtype) + g
    tiny = torch.finfo(x.dtype).tiny
    hard, soft = [], []
    for b in range(B):
        kb = int(min(k[b], N))
        order = torch.sort(x[b].detach(), descending=True, stable=True).indices
        h = torch.zeros(N, dtype=x.dtype)
        h[order[:kb]] = 1
        alpha, khot = x[b], torch.zeros(N, dtype=x.dtype)
        for _ in range(kb):
            p = torch.softmax(alpha / tau, -1)
            khot = khot + p
            alpha = alpha + torch.log(torch.clamp(1 - p, min=tiny))
        hard.append(h)
        soft.append(khot)
    return torch.stack(hard), torch.stack(soft)


CASES = [  # (B, N, k, tau)
    (1, 1, [1], 5.0),
    (3, 10, [3, 0, 10], 2.0),
    (4, 17, [5, 16, 17, 40], 5.0),
    (2, 64, [32, 7], 0.5),
    (1, 200, [60], 5.0),
    # one row, two threads or more per row: the CPU kernel splits the steps over threads, in chunks of
    # 64 steps (several chunks here) and, for N > 4096, noise blocks of 4096 columns
    (1, 576, [288], 5.0),
    (1, 5000, [20], 5.0),
]


@pytest.mark.parametrize("B,N,k,tau", CASES, ids=[f"{c[0]}x{c[1]}" for c in CASES])
def test_sequential_matches_adallava_loop_float64(B, N, k, tau):
    gen = torch.Generator().manual_seed(N)
    logits = (torch.randn(B, N, generator=gen, dtype=torch.float64) * 2).requires_grad_(True)
    k = torch.tensor(k)
    seed = 1000 + N
    mask = vtp_ext.gumbel_topk(logits, k, tau, seed, "sequential")
    ref = adallava_reference(logits, k, tau, seed)
    assert mask.dtype == torch.float64 and mask.is_contiguous()
    assert torch.equal(mask, ref.detach().round())  # exactly 0/1
    assert mask.sum(1).tolist() == [min(int(kb), N) for kb in k]
    G = torch.randn(B, N, generator=gen, dtype=torch.float64)
    (g_op,) = torch.autograd.grad(mask, logits, G)
    (g_ref,) = torch.autograd.grad(ref, logits, G)
    torch.testing.assert_close(g_op, g_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_sequential_same_bits_for_any_thread_count_and_batch(dtype):
    # A row alone (its steps split over threads) and the same row in a batch (rows split over threads),
    # on one thread and on two: the same mask and bit-identical gradients, including chunk boundaries and
    # steps whose noise argmax an earlier step of their chunk had taken.
    gen = torch.Generator().manual_seed(5)
    batch = torch.randn(3, 700, generator=gen, dtype=dtype)
    G = torch.randn(3, 700, generator=gen, dtype=dtype)
    k = torch.tensor([300, 5, 650])
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            for rows in (slice(0, 1), slice(0, 3)):
                x = batch[rows].clone().requires_grad_(True)
                mask = vtp_ext.gumbel_topk(x, k[rows], 5.0, 77, "sequential")
                (grad,) = torch.autograd.grad(mask, x, G[rows])
                results.append((mask[0], grad[0]))
    finally:
        torch.set_num_threads(threads)
    for mask, grad in results[1:]:
        assert torch.equal(mask, results[0][0]) and torch.equal(grad, results[0][1])
    assert results[0][0].sum().item() == 300


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_sequential_low_precision(dtype):
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 40, generator=gen).to(dtype).requires_grad_(True)
    k = torch.tensor([1, 10, 25, 40])
    mask = vtp_ext.gumbel_topk(logits, k, 3.0, 77)
    ref = adallava_reference(logits.detach(), k, 3.0, 77)  # float32 with the same float32 noise
    assert mask.dtype == dtype and torch.equal(mask.float(), ref.round())
    G = torch.randn(4, 40, generator=gen).to(dtype)
    (g_op,) = torch.autograd.grad(mask, logits, G)
    lr = logits.detach().float().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(adallava_reference(lr, k, 3.0, 77), lr, G.float())
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(g_op.float(), g_ref, **tol)


@pytest.mark.parametrize("B,N,k,tau", CASES, ids=[f"{c[0]}x{c[1]}" for c in CASES])
def test_single_matches_relaxed_subset_sampling_float64(B, N, k, tau):
    gen = torch.Generator().manual_seed(N + 1)
    logits = (torch.randn(B, N, generator=gen, dtype=torch.float64) * 2).requires_grad_(True)
    k = torch.tensor(k)
    mask = vtp_ext.gumbel_topk(logits, k, tau, 5, "single")
    hard, soft = relaxed_topk_reference(logits, k, tau, 5)
    assert torch.equal(mask, hard)
    G = torch.randn(B, N, generator=gen, dtype=torch.float64)
    (g_op,) = torch.autograd.grad(mask, logits, G)
    (g_ref,) = torch.autograd.grad(soft, logits, G)
    torch.testing.assert_close(g_op, g_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_single_low_precision(dtype):
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 50, generator=gen).to(dtype).requires_grad_(True)
    k = torch.tensor([5, 30, 49])
    mask = vtp_ext.gumbel_topk(logits, k, 4.0, 9, "single")
    lr = logits.detach().float().requires_grad_(True)
    hard, soft = relaxed_topk_reference(lr, k, 4.0, 9)
    assert torch.equal(mask.float(), hard)
    G = torch.randn(3, 50, generator=gen).to(dtype)
    (g_op,) = torch.autograd.grad(mask, logits, G)
    (g_ref,) = torch.autograd.grad(soft, lr, G.float())
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(g_op.float(), g_ref, **tol)


def test_single_checkpoint_segments():
    # k = 1, a perfect square, one past it, and N: every checkpoint layout of the reverse pass.
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(5, 30, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.tensor([1, 16, 17, 29, 30])
    mask = vtp_ext.gumbel_topk(logits, k, 1.5, 21, "single")
    _, soft = relaxed_topk_reference(logits, k, 1.5, 21)
    G = torch.randn(5, 30, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(mask, logits, G)[0], torch.autograd.grad(soft, logits, G)[0],
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("mode", ["sequential", "single"])
def test_eval_mode_is_deterministic_topk(mode):
    logits = torch.tensor([[0.5, 2.0, 2.0, -1.0, 2.0], [3.0, -float("inf"), 1.0, 1.0, 0.0]], requires_grad=True)
    mask = vtp_ext.gumbel_topk(logits, torch.tensor([2, 4]), 5.0, 0, mode, training=False)
    assert mask.tolist() == [[0, 1, 1, 0, 0], [1, 0, 1, 1, 1]]
    assert torch.equal(vtp_ext.gumbel_topk(logits, 2, 5.0, 123, mode, False), vtp_ext.gumbel_topk(logits, 2, 5.0, 9, mode, False))
    (g,) = torch.autograd.grad(mask, logits, torch.randn(2, 5))
    assert (g == 0).all()


@pytest.mark.parametrize("mode", ["sequential", "single"])
def test_k_edge_cases(mode):
    logits = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    mask = vtp_ext.gumbel_topk(logits, torch.tensor([0, 9, 100, 4]), 5.0, 1, mode)
    assert (mask[0] == 0).all() and (mask[1] == 1).all() and (mask[2] == 1).all() and mask[3].sum() == 4
    G = torch.randn(4, 9, dtype=torch.float64)
    (g,) = torch.autograd.grad(mask, logits, G)
    assert (g[0] == 0).all()  # k = 0: nothing selected, no gradient
    # k >= N behaves as k = N
    (g_n,) = torch.autograd.grad(vtp_ext.gumbel_topk(logits, torch.tensor([0, 9, 9, 4]), 5.0, 1, mode), logits, G)
    torch.testing.assert_close(g, g_n, rtol=0, atol=0)
    assert vtp_ext.gumbel_topk(torch.zeros(0, 5), 2, 5.0, 0, mode).shape == (0, 5)
    assert vtp_ext.gumbel_topk(torch.zeros(3, 0), 2, 5.0, 0, mode).shape == (3, 0)


@pytest.mark.parametrize("mode", ["sequential", "single"])
def test_negative_infinity_logits(mode):
    ninf = -float("inf")
    logits = torch.tensor([[ninf, 0.3, ninf, -2.0, 1.0, ninf]] * 3, dtype=torch.float64, requires_grad=True)
    mask = vtp_ext.gumbel_topk(logits, torch.tensor([3, 4, 6]), 2.0, 5, mode)
    finite = torch.isfinite(logits.detach())
    assert (mask[0][finite[0]] == 1).all() and (mask[0][~finite[0]] == 0).all()  # k = finite count
    assert mask[1].tolist() == [1, 1, 0, 1, 1, 0]  # one -inf needed: the lowest index
    assert (mask[2] == 1).all()
    (g,) = torch.autograd.grad(mask, logits, torch.randn(3, 6, dtype=torch.float64))
    assert torch.isfinite(g).all() and (g[~finite] == 0).all()
    all_ninf = torch.full((1, 4), ninf, requires_grad=True)
    m = vtp_ext.gumbel_topk(all_ninf, 2, 5.0, 0, mode)
    assert m.tolist() == [[1, 1, 0, 0]]
    assert (torch.autograd.grad(m, all_ninf, torch.ones(1, 4))[0] == 0).all()


def test_seed_none_follows_torch_manual_seed():
    logits = torch.randn(3, 50)
    torch.manual_seed(42)
    a = vtp_ext.gumbel_topk(logits, 10)
    torch.manual_seed(42)
    b = vtp_ext.gumbel_topk(logits, 10)
    c = vtp_ext.gumbel_topk(logits, 10)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_layouts_and_per_sample_k():
    gen = torch.Generator().manual_seed(12)
    logits = torch.randn(6, 33, generator=gen)
    k = torch.randint(0, 34, (6,), generator=gen)
    G = torch.randn(6, 33, generator=gen)
    for mode in ("sequential", "single"):
        expected = vtp_ext.gumbel_topk(logits, k, 3.0, 8, mode)
        expected_grad = BWD(G, logits, k, 3.0, 8, mode, True)
        big = torch.zeros(6, 67)
        big[:, 1::2] = logits
        for view in (big[:, 1::2], logits.t().contiguous().t()):
            assert torch.equal(vtp_ext.gumbel_topk(view, k, 3.0, 8, mode), expected)
            torch.testing.assert_close(BWD(G.t().contiguous().t(), view, k, 3.0, 8, mode, True), expected_grad,
                                       rtol=0, atol=0)
        for b in range(6):  # a row's result depends only on its own k and its row index
            single = vtp_ext.gumbel_topk(logits, torch.full((6,), int(k[b])), 3.0, 8, mode)
            assert torch.equal(single[b], expected[b])


class SoftPath(torch.autograd.Function):
    """Forward: the relaxed output whose gradient the op's backward claims to be (plain torch, picks and
    noise fixed); backward: the op's fused backward. gradcheck compares the two."""

    @staticmethod
    def forward(ctx, logits, k, tau, seed, mode):
        ctx.save_for_backward(logits, k)
        ctx.args = (tau, seed, mode)
        if mode == "single":
            return relaxed_topk_reference(logits, k, tau, seed)[1]
        B, N = logits.shape
        noise = noise_steps(seed, B, N, int(k.max()), logits.dtype)
        rows = []
        for b in range(B):
            picked = torch.zeros(N, dtype=torch.bool)
            soft = torch.zeros(N, dtype=logits.dtype)
            for t in range(min(int(k[b]), N)):
                z = (logits[b] + noise[t][b]).masked_fill(picked, float("-inf"))
                soft = soft + torch.softmax(z / tau, -1)
                picked[torch.argmax(z)] = True
            rows.append(soft)
        return torch.stack(rows)

    @staticmethod
    def backward(ctx, grad):
        logits, k = ctx.saved_tensors
        tau, seed, mode = ctx.args
        return BWD(grad.contiguous(), logits, k, tau, seed, mode, True), None, None, None, None


def test_gradcheck_through_the_soft_paths():
    samples = []
    for mode in ("sequential", "single"):
        for B, N, k, tau in [(2, 6, [2, 6], 1.0), (3, 9, [1, 4, 8], 3.0)]:
            logits = torch.randn(B, N, dtype=torch.float64, requires_grad=True)
            samples.append(Sample((logits, torch.tensor(k), tau, 31, mode), name=f"{mode}-{B}x{N}"))
    run_gradcheck(SoftPath.apply, samples)


def plackett_luce_subset_probs(logits: torch.Tensor, k: int) -> dict:
    """Exact probability of every unordered k-subset under sequential sampling without replacement."""
    from itertools import permutations

    w = torch.softmax(logits.double(), -1).tolist()
    probs: dict = {}
    for perm in permutations(range(len(w)), k):
        p, left = 1.0, 1.0
        for i in perm:
            p *= w[i] / left
            left -= w[i]
        key = tuple(sorted(perm))
        probs[key] = probs.get(key, 0.0) + p
    return probs


def test_sequential_and_single_draw_the_same_plackett_luce_distribution():
    logits = torch.tensor([1.0, 0.0, -0.5, 0.7, -1.5])
    n, k = 20000, 2
    exact = plackett_luce_subset_probs(logits, k)
    counts = {}
    for mode, seed in (("sequential", 101), ("single", 202)):
        mask = vtp_ext.gumbel_topk(logits.expand(n, -1), k, 5.0, seed, mode)  # one sample per row
        assert (mask.sum(1) == k).all()
        chosen = mask.nonzero()[:, 1].view(n, k)
        c = {}
        for row in chosen.tolist():
            c[tuple(row)] = c.get(tuple(row), 0) + 1
        counts[mode] = c
        # each subset frequency within 5 standard errors of the exact probability
        for subset, p in exact.items():
            f = c.get(subset, 0) / n
            assert abs(f - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-4, (mode, subset, f, p)
        chi2 = sum((c.get(s, 0) - n * p) ** 2 / (n * p) for s, p in exact.items())
        assert chi2 < 35.0, (mode, chi2)  # 9 degrees of freedom: P(chi2 > 35) < 1e-4
    # and the two modes agree with each other (two-sample chi-square, 9 dof)
    chi2 = sum((counts["sequential"].get(s, 0) - counts["single"].get(s, 0)) ** 2 /
               max(counts["sequential"].get(s, 0) + counts["single"].get(s, 0), 1) for s in exact)
    assert chi2 < 35.0, chi2


def opcheck_samples():
    gen = torch.Generator().manual_seed(5)
    samples = []
    for dtype in ALL_DTYPES:
        for mode in ("sequential", "single"):
            logits = torch.randn(3, 20, generator=gen, dtype=torch.float64).to(dtype)
            logits.requires_grad_(dtype == torch.float64)
            samples.append(Sample((logits, torch.tensor([0, 5, 20]), 2.0, 17, mode, True), name=f"{dtype}-{mode}"))
    samples.append(Sample((torch.randn(4, 9).t(), torch.tensor([1] * 9), 5.0, 3, "sequential", False), name="eval-t"))
    samples.append(Sample((torch.randn(0, 5), torch.zeros(0, dtype=torch.int64), 5.0, 3, "single", True), name="empty"))
    return samples


def test_opcheck_forward():
    run_opcheck(OP, opcheck_samples())


def test_opcheck_backward_noise_philox():
    samples = []
    for dtype in ALL_DTYPES:
        for mode in ("sequential", "single"):
            logits = torch.randn(2, 12, dtype=torch.float64).to(dtype)
            samples.append(Sample((torch.randn(2, 12).to(dtype), logits, torch.tensor([3, 12]), 2.0, 5, mode, True),
                                  name=f"{dtype}-{mode}"))
    run_opcheck(BWD, samples)
    run_opcheck(NOISE, [Sample((torch.empty(3, 7, dtype=dt), 5, 2), name=str(dt)) for dt in ALL_DTYPES])
    run_opcheck(torch.ops.vtp_ext.philox4x32_10.default,
                [Sample((torch.tensor([c for c, _, _ in KAT]), torch.tensor([k for _, k, _ in KAT])))])


def test_double_backward_is_a_clear_error():
    logits = torch.randn(2, 8, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(vtp_ext.gumbel_topk(logits, 3, 5.0, 1).sum(), logits, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward"):
        g.sum().backward()


def test_torch_compile_fullgraph():
    def f(x, k):
        return (vtp_ext.gumbel_topk(x * 2, k, 5.0, 1234, "sequential") * x).sum()

    x = torch.randn(3, 24, requires_grad=True)
    k = torch.tensor([3, 7, 0])
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, k), f(x, k))
    compiled(x, k).backward()
    g = x.grad.clone()
    x.grad = None
    f(x, k).backward()
    torch.testing.assert_close(g, x.grad)


@pytest.mark.parametrize("isa", ["base", "avx2"])
def test_portable_kernels_draw_the_same_noise_and_picks(isa):
    # The baseline build has no FMA unit (fma is a library call) and a different vectoriser, the AVX2 and
    # AVX-512 builds other vector widths: the noise must still be bit-identical, which is what makes the
    # CPU and CUDA noise identical too.
    code = """
        import torch, vtp_ext
        torch.manual_seed(0)
        for dt in (torch.float32, torch.float64):
            n = vtp_ext.gumbel_noise(77, (3, 301), 4, dt)
            print(vtp_ext._C.cpu_isa, n.view(torch.int32 if dt == torch.float32 else torch.int64).sum().item())
        x = torch.randn(4, 301, dtype=torch.float64)
        for mode in ("sequential", "single"):
            m = vtp_ext.gumbel_topk(x, torch.tensor([5, 100, 300, 1]), 2.0, 99, mode)
            print(mode, m.nonzero().sum().item())
        m = vtp_ext.gumbel_topk(torch.randn(1, 700), torch.tensor([300]), 5.0, 3, "sequential")  # steps split
        print("one row", m.nonzero().sum().item())
    """
    def run(**env):
        out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                             env={**os.environ, **env}, cwd=os.path.dirname(__file__))
        assert out.returncode == 0, out.stderr
        return out.stdout.split("\n")
    base, best = run(VTP_EXT_CPU_ISA=isa), run()
    if not base[0].startswith(isa + " "):
        pytest.skip(f"this CPU cannot run the {isa} kernels")
    assert [line.split(" ", 1)[1] for line in base if line] == [line.split(" ", 1)[1] for line in best if line]


def bad(logits=None, k=3, tau=5.0, seed=1, mode="sequential", training=True):
    return (torch.randn(2, 6) if logits is None else logits, k, tau, seed, mode, training)


NAN_LOGITS = torch.tensor([[0.0, float("nan"), 1.0], [0.0, 1.0, 2.0]])
INF_LOGITS = torch.tensor([[0.0, 1.0, 2.0], [0.0, float("inf"), 2.0]])
BAD_INPUTS = [
    (bad(logits=torch.randn(6)), RuntimeError, "logits must have shape [B, N] (2 dimensions), got 1"),
    (bad(logits=torch.randn(2, 3, 4)), RuntimeError, "logits must have shape [B, N] (2 dimensions), got 3"),
    (bad(logits=torch.ones(2, 6, dtype=torch.int64)), RuntimeError,
     "logits must be float32, float64, float16 or bfloat16, got int64"),
    (bad(k=torch.tensor([3, -1])), RuntimeError, "k must be >= 0, got k[1] = -1"),
    (bad(k=-2), RuntimeError, "k must be >= 0, got k[0] = -2"),
    (bad(k=torch.tensor([3, 3, 3])), RuntimeError, "k must have shape [B] = [2], got [3]"),
    (bad(k=torch.tensor([[3, 3]])), RuntimeError, "k must have shape [B] = [2], got [1, 2]"),
    (bad(k=torch.tensor([3.0, 3.0])), RuntimeError, "k must be int64, got float32"),
    (bad(k=torch.tensor([3, 3], dtype=torch.int32)), RuntimeError, "k must be int64, got int32"),
    (bad(tau=0.0), RuntimeError, "tau must be a positive finite number, got 0"),
    (bad(tau=-1.0), RuntimeError, "tau must be a positive finite number, got -1"),
    (bad(tau=float("inf")), RuntimeError, "tau must be a positive finite number, got inf"),
    (bad(tau=float("nan")), RuntimeError, "tau must be a positive finite number, got nan"),
    (bad(mode="topk"), RuntimeError, 'mode must be "sequential" or "single", got "topk"'),
    (bad(logits=NAN_LOGITS), RuntimeError, "logits must not contain NaN or +inf"),
    (bad(logits=NAN_LOGITS, mode="single"), RuntimeError, "logits must not contain NaN or +inf"),
    (bad(logits=INF_LOGITS, training=False), RuntimeError, "logits must not contain NaN or +inf"),
    (bad(logits=[[1.0, 2.0]]), TypeError, "logits must be a torch.Tensor"),
    (bad(k=2.5), TypeError, "k must be an int or an int64 tensor [B]"),
    (bad(tau="5"), TypeError, "tau must be a float"),
    (bad(seed=1.5), TypeError, "seed must be an int or None"),
    (bad(seed=2**63), ValueError, "seed must fit in int64"),
    (bad(mode=None), TypeError, "mode must be a str"),
    (bad(training=1), TypeError, "training must be a bool"),
]


@pytest.mark.parametrize("args,exc,fragment", BAD_INPUTS, ids=[str(i) for i in range(len(BAD_INPUTS))])
def test_bad_inputs(args, exc, fragment):
    with pytest.raises(exc) as info:
        vtp_ext.gumbel_topk(*args)
    assert fragment in str(info.value) and "vtp_ext.gumbel_topk" in str(info.value)


def test_bad_backward_noise_and_philox_inputs():
    x = torch.randn(2, 6)
    k = torch.tensor([1, 2])
    cases = [
        (lambda: BWD(torch.randn(2, 5), x, k, 5.0, 1, "sequential", True), "grad must have the shape of logits"),
        (lambda: BWD(torch.randn(2, 6, dtype=torch.float64), x, k, 5.0, 1, "single", True),
         "logits and grad must have the same dtype"),
        (lambda: BWD(torch.randn(2, 6), NAN_LOGITS.repeat(1, 2), k, 5.0, 1, "sequential", True),
         "vtp_ext.gumbel_topk_backward: logits must not contain NaN or +inf"),
        (lambda: NOISE(x, 1, -1), "vtp_ext.gumbel_noise: step must be in [0, 2^32-1], got -1"),
        (lambda: NOISE(x, 1, 2**32), "step must be in [0, 2^32-1], got 4294967296"),
        (lambda: NOISE(torch.randn(6), 1, 0), "vtp_ext.gumbel_noise: logits must have shape [B, N]"),
        (lambda: vtp_ext.philox4x32_10(torch.tensor([[0, 0, 0, 2**32]]), torch.tensor([[0, 0]])),
         "counter words must be in [0, 2^32-1], got 4294967296"),
        (lambda: vtp_ext.philox4x32_10(torch.tensor([[0, 0, 0, 0]]), torch.tensor([[-1, 0]])),
         "key words must be in [0, 2^32-1], got -1"),
        (lambda: vtp_ext.philox4x32_10(torch.tensor([[0, 0, 0]]), torch.tensor([[0, 0]])),
         "counter must have shape [n, 4], got [1, 3]"),
        (lambda: vtp_ext.philox4x32_10(torch.tensor([[0, 0, 0, 0]]), torch.tensor([[0, 0, 0]])),
         "key must have shape [n, 2] = [1, 2], got [1, 3]"),
    ]
    for call, fragment in cases:
        with pytest.raises(RuntimeError) as info:
            call()
        assert fragment in str(info.value), (fragment, str(info.value))
    with pytest.raises((TypeError, ValueError)):
        vtp_ext.gumbel_noise(1, (2, 3, 4))


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_cuda_noise_is_bit_identical(dtype):
    assert vtp_ext.cuda_built(), "a CUDA device is present but vtp_ext was built without CUDA kernels"
    for seed, shape, step in [(0, (1, 1), 0), (-5, (7, 577), 3), (2**62 + 11, (33, 4099), 287)]:
        cpu = vtp_ext.gumbel_noise(seed, shape, step, dtype)
        cuda = vtp_ext.gumbel_noise(seed, shape, step, dtype, "cuda")
        assert torch.equal(cpu, cuda.cpu())
    counter = torch.tensor([c for c, _, _ in KAT], device="cuda")
    key = torch.tensor([k for _, k, _ in KAT], device="cuda")
    assert vtp_ext.philox4x32_10(counter, key).tolist() == [e for _, _, e in KAT]


@requires_cuda
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("mode", ["sequential", "single"])
def test_cuda_matches_cpu(dtype, mode):
    gen = torch.Generator().manual_seed(21)
    for B, N in [(3, 10), (4, 576), (2, 5000), (0, 4)]:
        logits = torch.randn(B, N, generator=gen, dtype=torch.float64).to(dtype)
        k = torch.randint(0, N + 2, (B,), generator=gen)
        G = torch.randn(B, N, generator=gen, dtype=torch.float64).to(dtype)
        for training in (True, False):
            expected = vtp_ext.gumbel_topk(logits, k, 2.0, 55, mode, training)
            for kk in (k, k.cuda()):
                got = vtp_ext.gumbel_topk(logits.cuda(), kk, 2.0, 55, mode, training)
                assert torch.equal(got.cpu(), expected)
            g_cpu = BWD(G, logits, k, 2.0, 55, mode, training)
            g_cuda = BWD(G.cuda(), logits.cuda(), k.cuda(), 2.0, 55, mode, training).cpu()
            tol = dict(rtol=1e-9, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-3, atol=1e-5)
            torch.testing.assert_close(g_cuda.float(), g_cpu.float(), **tol)


@requires_cuda
def test_cuda_bad_logits_and_opcheck():
    with pytest.raises(RuntimeError, match="logits must not contain NaN"):
        vtp_ext.gumbel_topk(NAN_LOGITS.cuda(), 2, 5.0, 1)
    run_opcheck(OP, [Sample(tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in s.args), name=s.name)
                     for s in opcheck_samples()])
