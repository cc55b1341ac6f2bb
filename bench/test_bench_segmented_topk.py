"""segmented_topk and gather_tokens vs what users run today.

* uniform k: ``torch.topk`` (and its torch.compile) on ``[32, 576]`` with K in {115, 288, 460};
* per-sample k: the Python loop over samples a user writes today (``torch.topk`` per row, then padding);
* a 4-level pyramid ``[8, 5440]`` (4096 + 1024 + 256 + 64 tokens) with per-sample, per-level budgets,
  against the loop over samples and levels;
* forward + backward (values -> scores) against torch.topk with autograd.
gather_tokens has its own file (test_bench_gather_tokens.py).
Goals (issue 4, not asserted): >= 10x the loops, >= 1x torch.topk at uniform k.
(bench_utils.py explains the quick mode CI uses.)"""
from __future__ import annotations

import functools

import pytest
import torch

import vtp_ext
from bench_utils import QUICK, timed

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
UNIFORM_K = [115] if QUICK else [115, 288, 460]


@functools.lru_cache(maxsize=None)
def compiled_topk(k: int):
    return torch.compile(lambda s: torch.topk(s, k, dim=1), dynamic=False)


UNIFORM_IMPLS = {
    "vtp_ext": lambda s, k: vtp_ext.segmented_topk(s, [0, s.shape[1]], k, k)[:2],
    "torch.topk": lambda s, k: tuple(torch.topk(s, k, dim=1)),
    "torch.compile(torch.topk)": lambda s, k: tuple(compiled_topk(k)(s)),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", UNIFORM_K)
@pytest.mark.parametrize("impl", list(UNIFORM_IMPLS))
def test_uniform_k(benchmark, impl, k, device):
    benchmark.group = f"segmented_topk uniform k={k} [32, 576] float32 {device}"
    scores = torch.randn(32, 576, device=device)
    fn = timed(UNIFORM_IMPLS[impl], device)
    values, indices = fn(scores, k)  # warm-up (and compile)
    ref = torch.topk(scores, k, dim=1)
    torch.testing.assert_close(values, ref.values)
    torch.testing.assert_close(indices, ref.indices)
    benchmark(fn, scores, k)


def loop_per_sample(scores: torch.Tensor, k: list[int], max_k: int):
    """The loop a user writes today: one torch.topk per sample, padded to max_k."""
    values = scores.new_zeros(scores.shape[0], max_k)
    indices = torch.full((scores.shape[0], max_k), -1, dtype=torch.int64, device=scores.device)
    for b, kb in enumerate(k):
        v, i = torch.topk(scores[b], kb)
        values[b, :kb] = v
        indices[b, :kb] = i
    return values, indices


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["vtp_ext", "python loop"])
def test_per_sample_k(benchmark, impl, device):
    benchmark.group = f"segmented_topk per-sample k [32, 576] float32 {device}"
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(32, 576, generator=gen).to(device)
    k = torch.randint(58, 461, (32,), generator=gen)  # budgets between 10% and 80%
    max_k = 460
    offsets, k2 = torch.tensor([0, 576]), k[:, None]
    k_list = k.tolist()
    fn = timed((lambda: vtp_ext.segmented_topk(scores, offsets, k2, max_k)[:2]) if impl == "vtp_ext"
               else (lambda: loop_per_sample(scores, k_list, max_k)), device)
    values, indices = fn()
    ref_values, ref_indices = loop_per_sample(scores, k_list, max_k)
    torch.testing.assert_close(values, ref_values)
    torch.testing.assert_close(indices, ref_indices)
    benchmark(fn)


LEVELS = [4096, 1024, 256, 64]


def loop_pyramid(scores: torch.Tensor, k: list[list[int]], max_k: int):
    """Loop over samples and pyramid levels: torch.topk per level, concatenated, padded."""
    bounds = [0]
    for n in LEVELS:
        bounds.append(bounds[-1] + n)
    values = scores.new_zeros(scores.shape[0], max_k)
    indices = torch.full((scores.shape[0], max_k), -1, dtype=torch.int64, device=scores.device)
    for b, kb in enumerate(k):
        pos = 0
        for s, ks in enumerate(kb):
            v, i = torch.topk(scores[b, bounds[s]:bounds[s + 1]], ks)
            values[b, pos:pos + ks] = v
            indices[b, pos:pos + ks] = i + bounds[s]
            pos += ks
    return values, indices


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["vtp_ext", "python loop"])
def test_pyramid_per_level_budgets(benchmark, impl, device):
    benchmark.group = f"segmented_topk pyramid [8, 5440] per-level budgets float32 {device}"
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(8, 5440, generator=gen).to(device)
    ratio = torch.rand(8, 1, generator=gen) * 0.3 + 0.05  # keep 5%..35% of every level
    k = (ratio * torch.tensor(LEVELS)).long()
    max_k = int(k.sum(1).max())
    offsets = torch.tensor([0] + torch.tensor(LEVELS).cumsum(0).tolist())
    k_list = k.tolist()
    fn = timed((lambda: vtp_ext.segmented_topk(scores, offsets, k, max_k)[:2]) if impl == "vtp_ext"
               else (lambda: loop_pyramid(scores, k_list, max_k)), device)
    values, indices = fn()
    ref_values, ref_indices = loop_pyramid(scores, k_list, max_k)
    torch.testing.assert_close(values, ref_values)
    torch.testing.assert_close(indices, ref_indices)
    benchmark(fn)


FWD_BWD_IMPLS = {
    "vtp_ext": lambda s, k: vtp_ext.segmented_topk(s, [0, s.shape[1]], k, k)[0],
    "torch.topk": lambda s, k: torch.topk(s, k, dim=1).values,
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", list(FWD_BWD_IMPLS))
def test_forward_backward(benchmark, impl, device):
    k = 288
    benchmark.group = f"segmented_topk fwd+bwd uniform k={k} [32, 576] float32 {device}"
    scores = torch.randn(32, 576, device=device, requires_grad=True)
    g = torch.randn(32, k, device=device)
    fwd = FWD_BWD_IMPLS[impl]
    fn = timed(lambda: torch.autograd.grad(fwd(scores, k), scores, g)[0], device)
    torch.testing.assert_close(fn(), torch.autograd.grad(torch.topk(scores, k, dim=1).values, scores, g)[0])
    benchmark(fn)
