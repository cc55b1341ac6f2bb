"""gather_tokens vs advanced indexing (what users write today): forward alone, and forward + backward
with autograd (the backward is the fused scatter-add op, gather_tokens_backward). The token tensor is
[B, 576, 1024] float32 (CLIP-L/14-336 patch tokens), K = 288 kept, the last 10 slots padding (-1).
Memory-bound: "% of bandwidth" compares with this machine's copy bandwidth (bench_utils.py).
(bench_utils.py explains the quick mode CI uses.)"""
from __future__ import annotations

import pytest
import torch

import vtp_ext
from bench_utils import QUICK, report_bandwidth, timed

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
B, L, D, K = (4, 576, 1024, 288) if QUICK else (32, 576, 1024, 288)


def inputs(device, requires_grad=False):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, L, D, generator=gen).to(device).requires_grad_(requires_grad)
    idx = torch.stack([torch.randperm(L, generator=gen)[:K] for _ in range(B)]).to(device)
    idx[:, -10:] = -1
    return x, idx


def gather_torch(x, idx):
    return x[torch.arange(x.shape[0], device=x.device)[:, None], idx.clamp(min=0)] * (idx >= 0)[..., None]


FORWARD_IMPLS = {"vtp_ext": vtp_ext.gather_tokens, "advanced indexing": gather_torch}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", list(FORWARD_IMPLS))
def test_gather_tokens_forward(benchmark, bandwidth, impl, device):
    benchmark.group = f"gather_tokens forward [{B}, {L}, {D}] K={K} float32 {device}"
    x, idx = inputs(device)
    fn = timed(FORWARD_IMPLS[impl], device)
    torch.testing.assert_close(fn(x, idx), gather_torch(x, idx))
    benchmark(fn, x, idx)
    report_bandwidth(benchmark, 2 * B * K * D * 4, bandwidth(device))  # read the kept rows, write them


def gather_fwd_bwd_vtp(x, idx, g):
    return torch.autograd.grad(vtp_ext.gather_tokens(x, idx), x, g)[0]


def gather_fwd_bwd_torch(x, idx, g):
    return torch.autograd.grad(gather_torch(x, idx), x, g)[0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["vtp_ext", "advanced indexing"])
def test_gather_tokens_forward_backward(benchmark, impl, device):
    benchmark.group = f"gather_tokens fwd+bwd [{B}, {L}, {D}] K={K} float32 {device}"
    x, idx = inputs(device, requires_grad=True)
    g = torch.randn(B, K, D, device=device)
    fn = timed(gather_fwd_bwd_vtp if impl == "vtp_ext" else gather_fwd_bwd_torch, device)
    torch.testing.assert_close(fn(x, idx, g), gather_fwd_bwd_torch(x, idx, g))
    benchmark(fn, x, idx, g)
