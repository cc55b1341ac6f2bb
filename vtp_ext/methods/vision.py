"""Vision-side methods: they return the tokens the projector sees. Per-sample budgets are batched with
``segmented_topk`` / ``gather_tokens``; methods whose shapes depend on the budget (pool, ToMe) run one
group per distinct budget."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from ..nn.controller import AdaptiveTokenController
from ..nn.reduction import Reduction
from ..nn.tome import apply_tome, r_schedule_for_tokens, remove_tome
from ..ops.blur_downsample import gaussian_pyramid
from ..ops.gather_tokens import gather_tokens
from ..ops.segmented_topk import segmented_topk
from ..ops.token_saliency import token_saliency
from . import register
from .base import Method, VisionInputs, pad_rows, select_patches


@register("full")
class Full(Method):
    """Every token; the budget is ignored."""

    def reduce(self, inputs, k):
        f = inputs.features
        idx = torch.arange(f.shape[1], device=f.device).expand(f.shape[0], -1)
        return Reduction(f, torch.ones(idx.shape, dtype=torch.bool, device=f.device), idx, inputs.full_passes())


@register("random")
class RandomDrop(Method):
    """K patches uniformly at random (``seed`` makes it reproducible; None draws from torch's generator)."""

    def __init__(self, seed: Optional[int] = None):
        super().__init__()
        self.seed = seed

    def reduce(self, inputs, k):
        f = inputs.features
        gen = None if self.seed is None else torch.Generator().manual_seed(self.seed)
        scores = torch.rand(f.shape[0], f.shape[1] - 1, generator=gen).to(f.device)
        return select_patches(f, scores, k, inputs.full_passes())


@register("saliency")
class Saliency(Method):
    """The K patches of highest feature variance (``kind="l2norm"``: norm), fused ops end to end."""

    def __init__(self, kind: str = "variance"):
        super().__init__()
        self.kind = kind

    def reduce(self, inputs, k):
        f = inputs.features
        return select_patches(f, token_saliency(f[:, 1:].detach(), self.kind), k, inputs.full_passes())


def _grid(tokens: torch.Tensor, g: int) -> torch.Tensor:
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, g, g)


@register("pool")
class Pool(Method):
    """Uniform spatial average pooling of the patch grid to g x g, g = round(sqrt(K)) (so about K tokens)."""

    def reduce(self, inputs, k):
        f, g0 = inputs.features, inputs.tower.grid
        sides = torch.round(torch.sqrt(k.double())).long().clamp(1, g0)
        rows = [None] * f.shape[0]
        for g in sides.unique().tolist():
            sel = (sides == g).nonzero().flatten()
            pooled = nn.functional.adaptive_avg_pool2d(_grid(f[sel, 1:], g0), g).flatten(2).transpose(1, 2)
            for j, b in enumerate(sel.tolist()):
                rows[b] = torch.cat([f[b, :1], pooled[j]], 0)
        tokens, mask = pad_rows(rows, f.shape[-1])
        idx = torch.full(mask.shape, -1, dtype=torch.int64, device=tokens.device)
        idx[:, 0] = 0
        return Reduction(tokens, mask, idx, inputs.full_passes())


def level_budgets(k: torch.Tensor, sizes: Sequence[int], weights: Sequence[float]) -> torch.Tensor:
    """Split ``k [B]`` over pyramid levels (finest first) in proportion to ``weights``; a level never gets
    more than it holds and its excess moves to the next finer level (the finest holds N >= K, so everything
    fits). -> int64 ``[B, levels]`` summing to ``k``."""
    w = torch.tensor(weights, dtype=torch.float64)
    share = torch.floor(k.double()[:, None] * w / w.sum()).long()
    share[:, 0] += k - share.sum(1)
    out, carry = torch.zeros_like(share), torch.zeros_like(k)
    for lvl in range(len(sizes) - 1, -1, -1):
        want = share[:, lvl] + carry
        out[:, lvl] = want.clamp(max=sizes[lvl])
        carry = want - out[:, lvl]
    return out


@register("pyramid")
class Pyramid(Method):
    """Seed 001: a Gaussian pyramid of the image (``levels`` levels, fused ``blur_downsample``), the encoder
    on every level (position embeddings interpolated), per-level budgets (coarse-heavy ``weights``, finest
    first), token saliency per level and ``segmented_topk`` across levels. ``ptp=True`` is the PTP variant:
    score = alpha * region saliency (mean over ``regions`` x ``regions`` cells) + beta * token saliency + gamma *
    question relevance (max cosine similarity to the question tokens), each standardised per level."""

    def __init__(self, levels: int = 3, weights: Optional[Sequence[float]] = None, ptp: bool = False,
                 alpha: float = 0.3, beta: float = 0.4, gamma: float = 0.3, regions: int = 2):
        super().__init__()
        self.levels, self.ptp, self.abg, self.regions = levels, ptp, (alpha, beta, gamma), regions
        self.weights = list(weights) if weights is not None else [2.0 ** i for i in range(levels)]
        if len(self.weights) != levels:
            raise ValueError(f"vtp_ext.methods.pyramid: {levels} levels need {levels} weights, got {len(self.weights)}")

    def _scores(self, feats: torch.Tensor, question: Optional[torch.Tensor]) -> torch.Tensor:
        def z(s):
            return (s - s.mean(1, keepdim=True)) / (s.std(1, keepdim=True) + 1e-6) if s.shape[1] > 1 else s * 0
        token = z(token_saliency(feats, "variance"))
        if not self.ptp:
            return token
        g = int(math.isqrt(feats.shape[1]))
        r = max(1, min(self.regions, g))
        region = nn.functional.adaptive_avg_pool2d(token.view(-1, 1, g, g), r)
        region = nn.functional.interpolate(region, size=(g, g), mode="nearest").flatten(1)
        if question is None:
            raise ValueError("vtp_ext.methods.pyramid: ptp=True needs the question embeddings [B, Lq, C]")
        rel = (nn.functional.normalize(feats, dim=-1) @ nn.functional.normalize(question, dim=-1).transpose(1, 2))
        a, b, c = self.abg
        return a * z(region) + b * token + c * z(rel.amax(-1))

    def reduce(self, inputs, k):
        tower = inputs.tower
        pyr = [inputs.images] + gaussian_pyramid(inputs.images.float(), self.levels, mode="opencv")[1:]
        feats = [inputs.features] + [tower.features(p.to(inputs.images.dtype), interpolate_pos_encoding=True)
                                     for p in pyr[1:]]
        sizes = [f.shape[1] - 1 for f in feats]
        scores = torch.cat([self._scores(f[:, 1:].detach(), inputs.question) for f in feats], 1)
        offsets = torch.tensor([0] + sizes).cumsum(0)
        per_level = level_budgets(k, sizes, self.weights)
        k_max = int(per_level.sum(1).max())
        _, idx, _ = segmented_topk(scores.float(), offsets, per_level.to(scores.device), k_max, order="index")
        patches = torch.cat([f[:, 1:] for f in feats], 1)
        tokens = torch.cat([feats[0][:, :1], gather_tokens(patches, idx)], 1)
        idx = torch.cat([torch.zeros_like(idx[:, :1]), torch.where(idx >= 0, idx + 1, idx)], 1)
        passes = torch.tensor([[s + 1] * (tower.layers_run + 1) for s in sizes]).expand(inputs.batch, -1, -1)
        red = Reduction(tokens, idx >= 0, idx, passes)
        red.extras["level_budgets"] = per_level
        return red


@register("tome")
class ToMe(Method):
    """ToMe inside the encoder with the schedule that reaches 1 + K tokens at the selected layer (clamped to
    what ToMe can reach: each layer merges at most half of the tokens)."""

    def reduce(self, inputs, k):
        tower, N = inputs.tower, inputs.tower.num_patches
        layers, rows = tower.layers_run, [None] * inputs.batch
        passes = torch.zeros(inputs.batch, 1, layers + 1, dtype=torch.int64)
        for kk in k.unique().tolist():
            sel = (k == kk).nonzero().flatten()
            floor = N + 1
            for _ in range(layers):
                floor -= (floor - 1) // 2
            target = max(kk + 1, floor)
            r = r_schedule_for_tokens(N + 1, layers, target) if layers else []
            apply_tome(tower.model, r + [0] * (len(tower.blocks) - layers))
            try:
                out = tower.features(inputs.images[sel])
            finally:
                remove_tome(tower.model)
            counts = torch.tensor([N + 1 - sum(r[:i]) for i in range(layers + 1)], dtype=torch.int64)
            for j, b in enumerate(sel.tolist()):
                rows[b], passes[b, 0] = out[j], counts
        tokens, mask = pad_rows(rows, tower.dim)
        idx = torch.full(mask.shape, -1, dtype=torch.int64, device=tokens.device)
        idx[:, 0] = 0
        return Reduction(tokens, mask, idx, passes)


def _iqr_counts(attn: torch.Tensor) -> torch.Tensor:
    """PruMerge's outlier count per sample: entries above Q3 + 1.5 IQR (linear percentiles, as numpy)."""
    q = torch.quantile(attn.float(), torch.tensor([0.25, 0.75], device=attn.device), dim=1)
    upper = q[1] + 1.5 * (q[1] - q[0])
    ratio = (attn.float() > upper[:, None]).sum(1).double() / attn.shape[1]
    return torch.floor(ratio * attn.shape[1]).long().cpu(), ratio.cpu()


@register("prumerge")
class PruMerge(Method):
    """LLaVA-PruMerge, batched (``plus=True``: PruMerge+). Importance = the CLS row of a single-head
    attention proxy from the last block's raw q/k; kept tokens in descending attention; each kept token
    adds ``sum_j a_j x_j`` over its ``knn`` most similar other tokens (normalised keys; unnormalised
    weights, as the reference); one extra token ``sum_{pruned} a_j x_j`` is appended.

    ``count="budget"`` (default, for budget sweeps): K-1 kept tokens + the extra token = K tokens;
    PruMerge+ keeps min(IQR outliers, K-1) by attention and fills the rest with spatially uniform samples.
    ``count="iqr"``: the reference's adaptive count, computed per sample (the reference pools the batch)
    and, for PruMerge+, its raster supplement ``range(0, N-1, int(int(1/ratio)/3))`` minus the kept set."""

    def __init__(self, plus: bool = False, count: str = "budget", knn: int = 32):
        super().__init__()
        if count not in ("budget", "iqr"):
            raise ValueError(f"vtp_ext.methods.prumerge: count must be 'budget' or 'iqr', got {count!r}")
        self.plus, self.count, self.knn = plus, count, knn

    def _keep_sets(self, attn: torch.Tensor, k: torch.Tensor):
        B, N = attn.shape
        n_out, ratio = _iqr_counts(attn)
        a = attn.detach().cpu()
        keeps = []
        for b in range(B):   # index bookkeeping only: O(N) per sample on small integer tensors
            if self.count == "budget":
                want = max(int(k[b]) - 1, 1)   # one slot is the extra token (none when K = 1)
                n_top = min(int(n_out[b]), want) if self.plus else want
            else:
                n_top = int(n_out[b])           # may be 0: then only the extra token (and, for "+", the raster)
            top = torch.topk(a[b], n_top).indices
            if self.plus:
                rest = torch.ones(N, dtype=torch.bool)
                rest[top] = False
                if self.count == "budget":
                    free = rest.nonzero().flatten()
                    fill = want - n_top
                    extra = free[torch.linspace(0, len(free) - 1, fill).round().long()] if fill > 0 else free[:0]
                else:
                    r = max(float(ratio[b]), 1.0 / N)
                    extra = torch.arange(0, N - 1, max(int(int(1 / r) / 3), 1))
                    extra = extra[rest[extra]]
                top = torch.cat([top, extra])
            keeps.append(top)
        return keeps

    def reduce(self, inputs, k):
        f = inputs.features
        keys, attn = inputs.prumerge_keys_and_cls_attention()
        x, a = f[:, 1:], attn.to(f.dtype)
        B, N, C = x.shape
        keeps = self._keep_sets(attn, k)
        kmax = max(len(t) for t in keeps)
        idx = torch.full((B, kmax), -1, dtype=torch.int64)
        for b, t in enumerate(keeps):
            idx[b, :len(t)] = t
        idx = idx.to(f.device)
        valid = idx >= 0
        kn = nn.functional.normalize(keys[:, 1:], dim=-1)
        sim = gather_tokens(kn, idx) @ kn.transpose(1, 2)                 # [B, kmax, N]
        sim = sim.masked_fill(nn.functional.one_hot(idx.clamp(min=0), N).bool(), float("-inf"))
        nb = sim.topk(min(self.knn, N - 1), dim=-1).indices if N > 1 else sim.new_zeros(B, kmax, 0).long()
        w = torch.gather(a[:, None].expand(-1, kmax, -1), 2, nb)          # [B, kmax, knn]
        merged = gather_tokens(x, idx) + (w[..., None] * x[torch.arange(B)[:, None, None], nb]).sum(2)
        merged = merged * valid[..., None]
        pruned = torch.ones(B, N + 1, dtype=f.dtype, device=f.device).scatter(1, torch.where(valid, idx, N), 0.0)[:, :N]
        extra = ((a * pruned)[..., None] * x).sum(1)                      # [B, C]
        lengths = valid.sum(1)
        has_extra = (k >= 2).to(f.device) if self.count == "budget" else torch.ones_like(lengths, dtype=torch.bool)
        tokens = torch.cat([f[:, :1], merged, merged.new_zeros(B, 1, C)], 1)
        tokens[torch.arange(B), lengths + 1] = extra * has_extra[:, None]
        pos = torch.arange(kmax + 2, device=f.device)
        mask = pos[None] <= (lengths + has_extra)[:, None]
        src = torch.cat([torch.zeros(B, 1, dtype=torch.int64, device=f.device), torch.where(valid, idx + 1, -1),
                         torch.full((B, 1), -1, dtype=torch.int64, device=f.device)], 1)
        return Reduction(tokens, mask, torch.where(mask, src, -1), inputs.full_passes(), extras={"cls_attn": attn})


@register("prumerge+")
def _prumerge_plus(count: str = "budget", knn: int = 32) -> PruMerge:
    return PruMerge(plus=True, count=count, knn=knn)


@register("adaptive")
class Adaptive(Method):
    """The trained controller (:class:`vtp_ext.nn.AdaptiveTokenController`); pass it as ``controller=`` (its
    tower is used) or build an untrained one from ``tower=`` and keyword options."""

    def __init__(self, controller: Optional[AdaptiveTokenController] = None, tower=None, seed: Optional[int] = None,
                 **options):
        super().__init__()
        if controller is None:
            if tower is None:
                raise ValueError("vtp_ext.methods.adaptive: pass controller= (a trained AdaptiveTokenController) or tower=")
            controller = AdaptiveTokenController(tower, **options)
        self.controller, self.seed = controller, seed

    def run(self, inputs: VisionInputs, budget):
        return self.controller(inputs.images, budget, seed=self.seed)
