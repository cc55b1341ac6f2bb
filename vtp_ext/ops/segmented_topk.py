"""segmented_topk: per-row, per-segment top-K with per-sample budgets, padded to a static width."""
from __future__ import annotations

from typing import Sequence, Union

import torch

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_ORDERS = ("score", "index")
_OP = "vtp_ext.segmented_topk"


def segmented_topk(scores: torch.Tensor, offsets: Union[torch.Tensor, Sequence[int]],
                   k: Union[torch.Tensor, int], max_k: int, largest: bool = True,
                   order: str = "score") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k[b, s]`` entries of every segment ``s`` of every row ``b`` of ``scores [B, L]``.

    Segment ``s`` of row ``b`` is ``scores[b, offsets[s]:offsets[s+1]]`` (``offsets``: ``S+1`` non-decreasing
    int64 values from 0 to ``L``; empty segments are allowed). It contributes its best ``k[b, s]`` entries,
    clamped to the segment's length. Per row, the selections of all segments are concatenated in segment
    order; within a segment they are ordered by score (``order="score"``: best first, equal scores by lower
    index first) or by index (``order="index"``). Returns ``(values [B, max_k], indices [B, max_k] int64,
    lengths [B] int64)``: ``lengths[b]`` entries are valid, the rest is padded with index -1 and value 0.
    ``indices`` are column indices into ``scores`` (not segment-relative), ready for :func:`gather_tokens`.

    ``k`` is an int64 tensor ``[B, S]`` (per-sample, per-segment budgets) or an int (the same budget for every
    segment of every row). Every row's ``sum_s k[b, s]`` must be ``<= max_k``; ``max_k`` fixes the output width
    so the op traces under ``torch.compile`` without graph breaks. ``largest=False`` selects the smallest.

    NaN ranks below every number in both directions: a NaN is only selected when its segment has fewer
    than ``k`` other entries. ``+-inf`` are ordinary values; ``-0.0 == +0.0``.

    ``offsets`` and ``k`` may be CPU tensors or on the device of ``scores``; their values are validated on the
    host (a device tensor costs one small synchronising copy). Differentiable with respect to ``scores``
    through ``values`` (the gradient scatters back to the selected positions; a fused backward op).
    """
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"{_OP}: scores must be a torch.Tensor, got {type(scores).__name__}")
    if not isinstance(offsets, torch.Tensor):
        if isinstance(offsets, (list, tuple)) and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets):
            offsets = torch.tensor(offsets, dtype=torch.int64)
        else:
            raise TypeError(f"{_OP}: offsets must be an int64 tensor or a sequence of ints, got {offsets!r}")
    if isinstance(max_k, bool) or not isinstance(max_k, int):
        raise TypeError(f"{_OP}: max_k must be an int, got {max_k!r}")
    if not isinstance(k, torch.Tensor):
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"{_OP}: k must be an int64 tensor [B, S] or an int, got {k!r}")
        k = torch.full((scores.shape[0] if scores.dim() >= 1 else 0, max(offsets.numel() - 1, 0)), k,
                       dtype=torch.int64, device=offsets.device)
    if not isinstance(largest, bool):
        raise TypeError(f"{_OP}: largest must be a bool, got {largest!r}")
    if not isinstance(order, str):
        raise TypeError(f"{_OP}: order must be a str (\"score\" or \"index\"), got {type(order).__name__}")
    return torch.ops.vtp_ext.segmented_topk.default(scores, offsets, k, max_k, largest, order)


def _check(scores, offsets, k, max_k, order, op=_OP):
    torch._check(scores.dim() == 2, lambda: f"{op}: scores must have shape [B, L] (2 dimensions), got {scores.dim()} dimension(s)")
    torch._check(scores.dtype in _FLOAT_DTYPES,
                 lambda: f"{op}: scores must be float32, float64, float16 or bfloat16, got {scores.dtype}")
    torch._check(offsets.dtype == torch.int64, lambda: f"{op}: offsets must be int64, got {offsets.dtype}")
    torch._check(offsets.dim() == 1 and offsets.shape[0] >= 1,
                 lambda: f"{op}: offsets must have shape [S+1] (1 dimension, at least one element), got {list(offsets.shape)}")
    torch._check(k.dtype == torch.int64, lambda: f"{op}: k must be int64, got {k.dtype}")
    torch._check(k.dim() == 2 and k.shape[0] == scores.shape[0] and k.shape[1] == offsets.shape[0] - 1,
                 lambda: f"{op}: k must have shape [B, S], got {list(k.shape)}")
    for name, t in (("offsets", offsets), ("k", k)):
        torch._check(t.device.type == "cpu" or t.device == scores.device,
                     lambda: f"{op}: {name} must be a CPU tensor or on the device of scores")
    torch._check(max_k >= 0, lambda: f"{op}: max_k must be >= 0, got {max_k}")
    torch._check(order in _ORDERS, lambda: f'{op}: order must be "score" or "index", got "{order}"')


@torch.library.register_fake("vtp_ext::segmented_topk")
def _segmented_topk_fake(scores, offsets, k, max_k, largest=True, order="score"):
    _check(scores, offsets, k, max_k, order)
    B = scores.shape[0]
    return (scores.new_empty((B, max_k)), scores.new_empty((B, max_k), dtype=torch.int64),
            scores.new_empty((B,), dtype=torch.int64))


@torch.library.register_fake("vtp_ext::segmented_topk_backward")
def _segmented_topk_backward_fake(grad_values, indices, L):
    op = "vtp_ext.segmented_topk_backward"
    torch._check(grad_values.dim() == 2, lambda: f"{op}: grad_values must have shape [B, max_k] (2 dimensions)")
    torch._check(grad_values.dtype in _FLOAT_DTYPES, lambda: f"{op}: grad_values must be a float tensor")
    torch._check(indices.dtype == torch.int64 and indices.shape == grad_values.shape,
                 lambda: f"{op}: indices must be int64 with the shape of grad_values")
    torch._check(indices.device == grad_values.device, lambda: f"{op}: grad_values and indices must be on the same device")
    torch._check(0 <= L, lambda: f"{op}: L must be in [0, 2^31-1], got {L}")
    return grad_values.new_empty((grad_values.shape[0], L))


def _setup_context(ctx, inputs, output):
    scores = inputs[0]
    _, indices, lengths = output
    ctx.L = scores.shape[1]
    ctx.mark_non_differentiable(indices, lengths)
    ctx.save_for_backward(indices)


def _backward(ctx, grad_values, _grad_indices, _grad_lengths):
    (indices,) = ctx.saved_tensors
    grad_scores = torch.ops.vtp_ext.segmented_topk_backward.default(grad_values, indices, ctx.L)
    return grad_scores, None, None, None, None, None


torch.library.register_autograd("vtp_ext::segmented_topk", _backward, setup_context=_setup_context)


# Double backward: the backward is a scatter at fixed indices, so its derivative is the gather at the
# same indices (gather_tokens with D = 1; zero where the index is -1).
def _backward_setup_context(ctx, inputs, output):
    _, indices, _ = inputs
    ctx.save_for_backward(indices)


def _backward_backward(ctx, grad_grad_scores):
    (indices,) = ctx.saved_tensors
    d_grad_values = torch.ops.vtp_ext.gather_tokens.default(grad_grad_scores.unsqueeze(-1), indices).squeeze(-1)
    return d_grad_values, None, None


torch.library.register_autograd("vtp_ext::segmented_topk_backward", _backward_backward,
                                setup_context=_backward_setup_context)
