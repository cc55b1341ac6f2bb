"""gumbel_topk forward + backward vs AdaLLaVA's n_times_gumbel_softmax loop as users run it today: per
sample, k steps of masked_gumbel_softmax (torch's own noise), in eager mode and with the step compiled
by torch.compile (compiling the whole k-step loop unrolls k steps into one graph, which does not
finish compiling in reasonable time for k in the hundreds). Shapes: B in {1, 32}, N = 576 (CLIP-L/14-336
patches), k in {115, 288, 460}.
Memory: "saved MB" is the size of every tensor autograd keeps for the backward (measured with
saved_tensors_hooks): O(B*N) for vtp_ext (logits and k), O(B*k*N) for the loop. On CUDA the peak
allocation of the call is reported too. Goal (issue 4, not asserted): >= 50x the loop at k = 288.
Also: training=False (the deterministic top-k mask) against torch.topk + scatter; gumbel_noise against
torch's own Gumbel sample of the same shape (-log of exponential_, as the loop draws it) and torch.rand;
philox4x32_10 against torch.randint of the same [n, 4] words.
(bench_utils.py explains the quick mode CI uses.)"""
from __future__ import annotations

import functools

import pytest
import torch

import vtp_ext
from bench_utils import QUICK, timed

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BATCHES = [1] if QUICK else [1, 32]
KS = [115] if QUICK else [115, 288, 460]
N, TAU = 576, 5.0


def masked_gumbel_softmax_hard(logits: torch.Tensor, mask: torch.Tensor, tau: float) -> torch.Tensor:
    """AdaLLaVA's masked_gumbel_softmax(hard=True, training=True) for one sample."""
    g = -torch.empty_like(logits).exponential_().log()
    z = ((logits + g) / tau).masked_fill(mask != 0, float("-inf"))
    p = torch.softmax(z, -1)
    j = torch.argmax(torch.where(mask != 0, torch.full_like(p, -1.0), p), -1, keepdim=True)
    hard = torch.zeros_like(p).scatter_(-1, j, 1.0)
    return hard - p.detach() + p


@functools.lru_cache(maxsize=None)
def compiled_step():
    return torch.compile(masked_gumbel_softmax_hard, dynamic=False)


def adallava_loop(logits: torch.Tensor, k: list[int], step=masked_gumbel_softmax_hard) -> torch.Tensor:
    rows = []
    for b, kb in enumerate(k):
        acc = torch.zeros_like(logits[b])
        for _ in range(kb):
            acc = acc + step(logits[b], acc, TAU)
        rows.append(acc)
    return torch.stack(rows)


IMPLS = {
    "vtp_ext sequential": lambda x, k, kt: vtp_ext.gumbel_topk(x, kt, TAU, 1234, "sequential"),
    "vtp_ext single": lambda x, k, kt: vtp_ext.gumbel_topk(x, kt, TAU, 1234, "single"),
    "AdaLLaVA loop": lambda x, k, kt: adallava_loop(x, k),
    "AdaLLaVA loop, torch.compile(step)": lambda x, k, kt: adallava_loop(x, k, compiled_step()),
}


def saved_bytes(fn) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("impl", list(IMPLS))
def test_forward_backward(benchmark, impl, B, k, device):
    benchmark.group = f"gumbel_topk fwd+bwd B={B} N={N} k={k} float32 {device}"
    logits = torch.randn(B, N, device=device, requires_grad=True)
    G = torch.randn(B, N, device=device)
    k_list, k_tensor = [k] * B, torch.full((B,), k, dtype=torch.int64)
    impl_fn = IMPLS[impl]

    def fwd_bwd():
        mask = impl_fn(logits, k_list, k_tensor)
        (grad,) = torch.autograd.grad(mask, logits, G)
        return mask, grad

    fn = timed(fwd_bwd, device)
    mask, grad = fn()  # warm-up (and compile)
    assert torch.allclose(mask.sum(1), torch.full((B,), float(k), device=device), atol=1e-3)
    assert torch.isfinite(grad).all()
    benchmark.extra_info["saved MB"] = round(saved_bytes(lambda: impl_fn(logits, k_list, k_tensor)) / 2**20, 3)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        benchmark.extra_info["peak MB"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 3)
    slow = impl.startswith("AdaLLaVA")
    if slow:  # seconds per call on a CPU: a few rounds are enough
        benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=0)
    else:
        benchmark(fn)


EVAL_IMPLS = {
    "vtp_ext": lambda x, k: vtp_ext.gumbel_topk(x, k, TAU, 0, "sequential", training=False),
    "torch.topk + scatter": lambda x, k: torch.zeros_like(x).scatter_(1, torch.topk(x, k, dim=1).indices, 1.0),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("impl", list(EVAL_IMPLS))
def test_eval_mask(benchmark, impl, B, device):
    k = 288
    benchmark.group = f"gumbel_topk training=False B={B} N={N} k={k} float32 {device}"
    logits = torch.randn(B, N, device=device)
    fn = timed(EVAL_IMPLS[impl], device)
    torch.testing.assert_close(fn(logits, k), EVAL_IMPLS["torch.topk + scatter"](logits, k))
    benchmark(fn, logits, k)


NOISE_SHAPES = [(32, 576)] if QUICK else [(1, 576), (32, 576), (256, 4096)]
NOISE_IMPLS = {
    "vtp_ext.gumbel_noise": lambda shape, device: vtp_ext.gumbel_noise(1234, shape, device=device),
    "torch Gumbel (-log exponential_)": lambda shape, device: -torch.empty(shape, device=device).exponential_().log(),
    "torch.rand (uniform only)": lambda shape, device: torch.rand(shape, device=device),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", NOISE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", list(NOISE_IMPLS))
def test_gumbel_noise(benchmark, impl, shape, device):
    benchmark.group = f"gumbel_noise {list(shape)} float32 {device}"
    fn = timed(NOISE_IMPLS[impl], device)
    assert fn(shape, device).shape == shape
    benchmark(fn, shape, device)


PHILOX_N = [1024] if QUICK else [1024, 65536]
PHILOX_IMPLS = {
    "vtp_ext.philox4x32_10": lambda c, k: vtp_ext.philox4x32_10(c, k),
    "torch.randint (same words)": lambda c, k: torch.randint(0, 2**32, c.shape, dtype=torch.int64, device=c.device),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", PHILOX_N)
@pytest.mark.parametrize("impl", list(PHILOX_IMPLS))
def test_philox4x32_10(benchmark, impl, n, device):
    benchmark.group = f"philox4x32_10 [{n}, 4] {device}"
    gen = torch.Generator().manual_seed(0)
    counter = torch.randint(0, 2**32, (n, 4), dtype=torch.int64, generator=gen).to(device)
    key = torch.randint(0, 2**32, (n, 2), dtype=torch.int64, generator=gen).to(device)
    fn = timed(PHILOX_IMPLS[impl], device)
    assert fn(counter, key).shape == (n, 4)
    benchmark(fn, counter, key)
