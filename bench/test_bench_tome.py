"""ToMe matching + merge (size-weighted) vs the plain-torch algorithm a user writes from the paper
(normalise, full score matmul, max, argsort, gather, scatter_reduce), eager and under torch.compile.
Shapes: ViT-B/16 [B, 197, 768] and CLIP ViT-L/14-336 [B, 577, 1024], B in {1, 32}, r in {8, 16}.
Also unmerge (fwd, fwd+bwd) against the plain-torch scatter/gather. Memory: on CUDA the measured peak; on the CPU the size of the largest intermediate each approach
allocates (the plain algorithm's [B, N/2, N/2] score matrix vs vtp_ext's O(N*C) unit-norm copies)."""
from __future__ import annotations

import functools

import pytest
import torch

import vtp_ext
from bench_utils import QUICK, timed

SHAPES = [(1, 197, 768)] if QUICK else [(1, 197, 768), (32, 197, 768), (1, 577, 1024), (32, 577, 1024)]
RS = [8] if QUICK else [8, 16]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def plain_tome(x, metric, r, class_token=True):
    """The algorithm as written from the paper (fp32), with a class token: match + merge_wavg."""
    with torch.no_grad():
        m = metric / metric.norm(dim=-1, keepdim=True)
        scores = m[:, ::2] @ m[:, 1::2].transpose(-1, -2)
        if class_token:
            scores[:, 0, :] = -float("inf")
        node_max, node_idx = scores.max(dim=-1)
        order = node_max.argsort(dim=-1, descending=True)[..., None]
        unm, src = order[:, r:], order[:, :r]
        dst = node_idx[..., None].gather(1, src)
        if class_token:
            unm = unm.sort(dim=1).values
    size = torch.ones_like(x[..., :1])

    def merge(t, reduce):
        a, b = t[:, ::2], t[:, 1::2]
        C = t.shape[-1]
        kept = a.gather(1, unm.expand(-1, -1, C))
        moved = a.gather(1, src.expand(-1, -1, C))
        return torch.cat([kept, b.scatter_reduce(1, dst.expand(-1, -1, C), moved, reduce=reduce)], 1)

    total = merge(size, "sum")
    return merge(x * size, "sum") / total, total


@functools.lru_cache(maxsize=None)
def compiled_plain():
    return torch.compile(plain_tome, dynamic=False)


def vtp_tome(x, metric, r):
    plan = vtp_ext.bipartite_matching(metric, r, class_token=True)
    return vtp_ext.merge(x, plan)


IMPLS = {"vtp_ext": vtp_tome, "plain torch": plain_tome, "torch.compile(plain)": lambda x, m, r: compiled_plain()(x, m, r)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("r", RS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", list(IMPLS))
def test_match_and_merge(benchmark, impl, shape, r, device):
    benchmark.group = f"tome match+merge {list(shape)} r={r} float32 {device}"
    B, N, C = shape
    x = torch.randn(shape, device=device)
    metric = torch.randn(B, N, 64, device=device)  # keys averaged over heads: head_dim 64 (ViT-B/16, ViT-L/14)
    if impl == "vtp_ext":
        ref, _ = plain_tome(x, metric, r)
        got, _ = vtp_tome(x, metric, r)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    fn = timed(IMPLS[impl], device)
    fn(x, metric, r)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    benchmark(fn, x, metric, r)
    na, nb = (N + 1) // 2, N // 2
    if device == "cuda":
        benchmark.extra_info["peak MB"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    elif impl == "vtp_ext":
        benchmark.extra_info["largest intermediate MB"] = round(B * (na + nb) * metric.shape[-1] * 4 / 2**20, 2)
    else:
        benchmark.extra_info["largest intermediate MB"] = round(max(B * na * nb, B * N * C) * 4 / 2**20, 2)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", ["vtp_ext", "plain torch"])
def test_merge_forward_backward(benchmark, impl, shape):
    benchmark.group = f"tome merge fwd+bwd {list(shape)} r=16 float32 cpu"
    B, N, C = shape
    x = torch.randn(shape, requires_grad=True)
    metric = torch.randn(B, N, 64)
    f = IMPLS[impl]
    g = torch.randn(B, N - 16, C)
    benchmark(lambda: torch.autograd.grad(f(x, metric, 16)[0], x, g))


def plain_unmerge(y, plan):
    """ToMe's unmerge as a user writes it: destinations to the odd positions, kept sources scattered back,
    merged sources take their destination's row (class token protected, no distillation token)."""
    B, _, C = y.shape
    kept = plan.unm_idx.shape[1]
    kept_rows, dst_rows = y[:, :kept], y[:, kept:]
    out = y.new_zeros(B, plan.n, C)
    out[:, 1::2] = dst_rows
    out = out.scatter(1, (2 * plan.unm_idx)[..., None].expand(-1, -1, C), kept_rows)
    return out.scatter(1, (2 * plan.src_idx)[..., None].expand(-1, -1, C),
                       dst_rows.gather(1, plan.dst_idx[..., None].expand(-1, -1, C)))


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", ["vtp_ext", "plain torch"])
def test_unmerge(benchmark, impl, shape, backward):
    """unmerge (dense outputs / visualisation after merging): [B, N - r, C] -> [B, N, C], r = 16."""
    benchmark.group = f"tome unmerge {'fwd+bwd' if backward else 'fwd'} {list(shape)} r=16 float32 cpu"
    B, N, C = shape
    plan = vtp_ext.bipartite_matching(torch.randn(B, N, 64), 16, class_token=True)
    y = torch.randn(B, N - 16, C, requires_grad=backward)
    f = vtp_ext.unmerge if impl == "vtp_ext" else plain_unmerge
    torch.testing.assert_close(f(y, plan), plain_unmerge(y, plan), rtol=0, atol=0)
    if backward:
        g = torch.randn(B, N, C)
        benchmark(lambda: torch.autograd.grad(f(y, plan), y, g))
    else:
        benchmark(f, y, plan)


@pytest.mark.parametrize("batch", [1] if QUICK else [1, 32])
@pytest.mark.parametrize("tome", ["off", "r=13"])
def test_vit_forward(benchmark, tome, batch):
    """A DeiT-Tiny-sized ViT (224px, patch 16, dim 192, 12 blocks, 3 heads: 197 tokens) with and without
    ToMe (r = 13 per block, ToMe's ViT-S setting: 197 -> 41 tokens). Users report no gain at batch 1."""
    benchmark.group = f"ViT-Tiny/16 forward B={batch} float32 cpu"
    from vtp_ext import nn as vnn

    torch.manual_seed(0)
    model = vnn.ViT(image_size=224, patch_size=16, dim=192, depth=12, num_heads=3).eval()
    if tome != "off":
        vnn.apply_tome(model, 13)
    images = torch.rand(batch, 3, 224, 224)
    with torch.no_grad():
        out = model(images)
        assert out.shape[1] == (197 if tome == "off" else 197 - 12 * 13)
        benchmark(model, images)
