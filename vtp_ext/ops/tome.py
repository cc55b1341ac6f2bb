"""ToMe (Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023): fused bipartite soft
matching, size-weighted merging, unmerging and source tracking. Implemented from the paper and the
semantics in research/algorithms.md §2."""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import torch

_MODES = ("wavg", "mean", "sum")


@dataclasses.dataclass(frozen=True)
class MergePlan:
    """One ToMe merge step over ``n`` tokens. Tokens alternate between sources (even positions,
    ``na = ceil(n/2)``) and destinations (odd positions, ``nb = n // 2``). ``unm_idx [B, na - r]``: the
    kept sources (ascending when a class token is protected, else in descending-similarity order, as
    ToMe); ``src_idx [B, r]``: the merged sources, most similar first; ``dst_idx [B, r]``: their
    destinations. Indices count within the sources / destinations (token ``2*i`` / ``2*j + 1``)."""

    unm_idx: torch.Tensor
    src_idx: torch.Tensor
    dst_idx: torch.Tensor
    n: int
    class_token: bool = False
    distill_token: bool = False

    @property
    def r(self) -> int:
        return self.src_idx.shape[1]

    @property
    def n_out(self) -> int:
        return self.n - self.r

    def positions(self) -> torch.Tensor:
        """``[B, n]`` int64: the merged row each original token ends up in."""
        B, na, nb, r = self.src_idx.shape[0], (self.n + 1) // 2, self.n // 2, self.r
        if r == 0:
            return torch.arange(self.n, device=self.src_idx.device).expand(B, self.n).clone()
        kept = na - r
        kept_rows = torch.arange(kept, device=self.src_idx.device)
        dst_rows = kept + torch.arange(nb, device=self.src_idx.device)
        if self.distill_token:  # [kept[0], dst[0], kept[1:], dst[1:]]
            kept_rows = torch.where(kept_rows > 0, kept_rows + 1, kept_rows)
            dst_rows = torch.where(dst_rows == kept, torch.ones_like(dst_rows), dst_rows)
        pos = torch.empty(B, self.n, dtype=torch.int64, device=self.src_idx.device)
        pos.scatter_(1, 2 * self.unm_idx, kept_rows.expand(B, kept))
        pos.scatter_(1, 2 * self.src_idx, dst_rows[self.dst_idx])
        pos[:, 1::2] = dst_rows
        return pos

    def to(self, device) -> "MergePlan":
        return dataclasses.replace(self, unm_idx=self.unm_idx.to(device), src_idx=self.src_idx.to(device),
                                   dst_idx=self.dst_idx.to(device))


def bipartite_matching(metric: torch.Tensor, r: int, class_token: bool = False,
                       distill_token: bool = False) -> MergePlan:
    """ToMe's bipartite soft matching of ``metric [B, N, C]`` (e.g. attention keys averaged over heads).

    Cosine similarity between every source (even token) and destination (odd token), computed tile by
    tile without forming the ``[N/2, N/2]`` matrix; each source's best destination (ties -> lower
    index); the ``r`` most similar sources merge (ties -> lower index, so CPU and CUDA agree).
    ``r`` is clamped to ``(N - class_token - distill_token) // 2`` as in ToMe. A protected class token
    (token 0) is never merged away; nothing merges into a protected distillation token (token 1). A
    zero metric row has an undefined (NaN) similarity, which ranks below every number. The matching is
    not differentiated."""
    if not isinstance(metric, torch.Tensor):
        raise TypeError(f"vtp_ext.bipartite_matching: metric must be a torch.Tensor, got {type(metric).__name__}")
    if isinstance(r, bool) or not isinstance(r, int):
        raise TypeError(f"vtp_ext.bipartite_matching: r must be an int, got {r!r}")
    unm, src, dst = torch.ops.vtp_ext.tome_match.default(metric.detach(), r, bool(class_token), bool(distill_token))
    return MergePlan(unm, src, dst, metric.shape[1], bool(class_token), bool(distill_token))


def _as_2d_size(size: Optional[torch.Tensor], x: torch.Tensor) -> Optional[torch.Tensor]:
    if size is None:
        return None
    if not isinstance(size, torch.Tensor):
        raise TypeError(f"vtp_ext.merge: size must be a tensor or None, got {type(size).__name__}")
    if size.dim() == 3 and size.shape[-1] == 1:
        return size.squeeze(-1)
    return size


def merge(x: torch.Tensor, plan: MergePlan, size: Optional[torch.Tensor] = None,
          mode: str = "wavg") -> Tuple[torch.Tensor, torch.Tensor]:
    """Apply ``plan`` to ``x [B, N, D]`` -> ``(x_merged [B, N - r, D], size_merged)``.

    Output order: kept sources, then every destination (class token first when protected; with a
    distillation token ``[cls, distill, rest]``). ``mode="wavg"``: each destination becomes
    ``sum(x * size) / sum(size)`` over itself and the sources merged into it (ToMe's merge_wavg);
    ``"mean"``: the plain mean over the same tokens; ``"sum"``: their sum. ``size [B, N, 1]`` (or
    ``[B, N]``; ``None`` = ones) counts the patches each token stands for; the merged sizes come back in
    the same layout (``[B, N - r, 1]`` for ``None``). Differentiable w.r.t. ``x`` and ``size``; the
    backward is its own op and the reduction order is fixed, so results are deterministic."""
    if not isinstance(plan, MergePlan):
        raise TypeError(f"vtp_ext.merge: plan must be a MergePlan (from vtp_ext.bipartite_matching), got {type(plan).__name__}")
    if mode not in _MODES:
        raise ValueError(f'vtp_ext.merge: mode must be "wavg", "mean" or "sum", got {mode!r}')
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[1] != plan.n:
        raise ValueError(f"vtp_ext.merge: x must have shape [B, {plan.n}, D] (the plan's N), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    size2 = _as_2d_size(size, x)
    if plan.r == 0:  # ToMe's identity: nothing merges, token order unchanged
        return x, (size if size is not None else x.new_ones(x.shape[0], x.shape[1], 1))
    out, size_out = torch.ops.vtp_ext.tome_merge.default(x, size2, plan.unm_idx, plan.src_idx, plan.dst_idx, mode,
                                                         plan.distill_token)
    if size is None or size.dim() == 3:
        size_out = size_out.unsqueeze(-1)
    return out, size_out


def unmerge(x_merged: torch.Tensor, plan: MergePlan) -> torch.Tensor:
    """Undo ``plan`` for visualisation or dense outputs: ``[B, N - r, D] -> [B, N, D]``, every original
    token taking the value of the row it was merged into. Differentiable (the backward sums)."""
    if not isinstance(plan, MergePlan):
        raise TypeError(f"vtp_ext.unmerge: plan must be a MergePlan, got {type(plan).__name__}")
    if plan.r == 0:
        return x_merged
    return torch.ops.vtp_ext.tome_unmerge.default(x_merged, plan.unm_idx, plan.src_idx, plan.dst_idx, plan.n,
                                                  plan.distill_token)


def merge_source(plans: Sequence[MergePlan]) -> torch.Tensor:
    """Source tracking across successive merges: ``[B, N0]`` -- for every original token, the index of
    the final merged token that covers it (for drawing which patches each token stands for)."""
    if not plans:
        raise ValueError("vtp_ext.merge_source: need at least one plan")
    pos = plans[0].positions()
    for plan in plans[1:]:
        pos = plan.positions().gather(1, pos)
    return pos


# ------------------------------------------------------------------------------ fake kernels
def _clamped_r(n: int, r: int, class_token: bool, distill_token: bool) -> int:
    return max(0, min(r, (n - int(class_token) - int(distill_token)) // 2))


@torch.library.register_fake("vtp_ext::tome_match")
def _tome_match_fake(metric, r, class_token=False, distill_token=False):
    torch._check(metric.dim() == 3, lambda: "vtp_ext.bipartite_matching: metric must have shape [B, N, C]")
    torch._check(r >= 0, lambda: f"vtp_ext.bipartite_matching: r must be >= 0, got {r}")
    B, N = metric.shape[0], metric.shape[1]
    rc = _clamped_r(N, r, class_token, distill_token)
    new = lambda *s: metric.new_empty(s, dtype=torch.int64)  # noqa: E731
    return new(B, (N + 1) // 2 - rc), new(B, rc), new(B, rc)


@torch.library.register_fake("vtp_ext::tome_merge")
def _tome_merge_fake(x, size, unm_idx, src_idx, dst_idx, mode, distill_token):
    torch._check(x.dim() == 3, lambda: "vtp_ext.merge: x must have shape [B, N, D]")
    torch._check(mode in _MODES, lambda: f'vtp_ext.merge: mode must be "wavg", "mean" or "sum", got "{mode}"')
    B, N, D = x.shape
    n_out = N - src_idx.shape[1]
    return x.new_empty(B, n_out, D), x.new_empty(B, n_out)


@torch.library.register_fake("vtp_ext::tome_merge_backward")
def _tome_merge_backward_fake(grad, grad_size, x, size, out, size_out, unm_idx, src_idx, dst_idx, mode, distill_token):
    return x.new_empty(x.shape), x.new_empty(x.shape[:2])


@torch.library.register_fake("vtp_ext::tome_unmerge")
def _tome_unmerge_fake(x_merged, unm_idx, src_idx, dst_idx, n, distill_token):
    torch._check(x_merged.dim() == 3, lambda: "vtp_ext.unmerge: x_merged must have shape [B, N - r, D]")
    return x_merged.new_empty(x_merged.shape[0], n, x_merged.shape[2])


@torch.library.register_fake("vtp_ext::tome_unmerge_backward")
def _tome_unmerge_backward_fake(grad, unm_idx, src_idx, dst_idx, distill_token):
    return grad.new_empty(grad.shape[0], grad.shape[1] - src_idx.shape[1], grad.shape[2])


# ------------------------------------------------------------------------------ autograd
def _merge_setup_context(ctx, inputs, output):
    x, size, unm_idx, src_idx, dst_idx, mode, distill_token = inputs
    out, size_out = output
    ctx.mode, ctx.distill_token, ctx.has_size = mode, distill_token, size is not None
    ctx.save_for_backward(x, size, out, size_out, unm_idx, src_idx, dst_idx)


def _merge_backward(ctx, grad_out, grad_size_out):
    x, size, out, size_out, unm_idx, src_idx, dst_idx = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    grad_x, grad_size = torch.ops.vtp_ext.tome_merge_backward.default(
        grad_out, grad_size_out, x, size, out, size_out, unm_idx, src_idx, dst_idx, ctx.mode, ctx.distill_token)
    return grad_x, (grad_size if ctx.has_size else None), None, None, None, None, None


torch.library.register_autograd("vtp_ext::tome_merge", _merge_backward, setup_context=_merge_setup_context)


def _merge_backward_backward(ctx, *grads):
    raise NotImplementedError("vtp_ext.merge: double backward (gradients of gradients) is not supported")


torch.library.register_autograd("vtp_ext::tome_merge_backward", _merge_backward_backward,
                                setup_context=lambda ctx, inputs, output: None)


def _unmerge_setup_context(ctx, inputs, output):
    _, unm_idx, src_idx, dst_idx, n, distill_token = inputs
    ctx.distill_token = distill_token
    ctx.save_for_backward(unm_idx, src_idx, dst_idx)


def _unmerge_backward(ctx, grad):
    unm_idx, src_idx, dst_idx = ctx.saved_tensors
    return (torch.ops.vtp_ext.tome_unmerge_backward.default(grad.contiguous(), unm_idx, src_idx, dst_idx,
                                                            ctx.distill_token), None, None, None, None, None)


torch.library.register_autograd("vtp_ext::tome_unmerge", _unmerge_backward, setup_context=_unmerge_setup_context)


# unmerge_backward is linear in grad and is the adjoint of unmerge, so its derivative is unmerge.
def _unmerge_bwd_setup_context(ctx, inputs, output):
    grad, unm_idx, src_idx, dst_idx, distill_token = inputs
    ctx.n, ctx.distill_token = grad.shape[1], distill_token
    ctx.save_for_backward(unm_idx, src_idx, dst_idx)


def _unmerge_bwd_backward(ctx, v):
    unm_idx, src_idx, dst_idx = ctx.saved_tensors
    return (torch.ops.vtp_ext.tome_unmerge.default(v, unm_idx, src_idx, dst_idx, ctx.n, ctx.distill_token),
            None, None, None, None)


torch.library.register_autograd("vtp_ext::tome_unmerge_backward", _unmerge_bwd_backward,
                                setup_context=_unmerge_bwd_setup_context)
