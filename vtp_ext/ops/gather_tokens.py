"""gather_tokens: pick token rows by index (-1 = a zero row), with a fused scatter-add backward."""
from __future__ import annotations

import torch

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_OP = "vtp_ext.gather_tokens"


def gather_tokens(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``out[b, j] = x[b, indices[b, j]]`` for ``x [B, L, D]`` and int64 ``indices [B, K]`` -> ``[B, K, D]``.

    An index of -1 gives a zero row (the padding of :func:`segmented_topk`); any other index outside
    ``[0, L)`` is an error. float32, float64, float16 and bfloat16; any strides. Differentiable with respect
    to ``x``: the backward is its own fused op that scatter-adds ``grad`` into ``[B, L, D]`` (repeated indices
    add up, summed in increasing ``j`` so CPU and CUDA round alike).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{_OP}: x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(indices, torch.Tensor):
        raise TypeError(f"{_OP}: indices must be a torch.Tensor, got {type(indices).__name__}")
    return torch.ops.vtp_ext.gather_tokens.default(x, indices)


def _check_indices(indices, B, K, device, op):
    torch._check(indices.dtype == torch.int64, lambda: f"{op}: indices must be int64, got {indices.dtype}")
    torch._check(indices.dim() == 2 and indices.shape[0] == B and indices.shape[1] == K,
                 lambda: f"{op}: indices must have shape [B, K] = [{B}, {K}], got {list(indices.shape)}")
    torch._check(indices.device == device, lambda: f"{op}: the tensors must be on the same device")


@torch.library.register_fake("vtp_ext::gather_tokens")
def _gather_tokens_fake(x, indices):
    torch._check(x.dim() == 3, lambda: f"{_OP}: x must have shape [B, L, D] (3 dimensions), got {x.dim()} dimension(s)")
    torch._check(x.dtype in _FLOAT_DTYPES, lambda: f"{_OP}: x must be float32, float64, float16 or bfloat16, got {x.dtype}")
    torch._check(indices.dim() == 2, lambda: f"{_OP}: indices must have shape [B, K] (2 dimensions)")
    _check_indices(indices, x.shape[0], indices.shape[1], x.device, _OP)
    return x.new_empty((x.shape[0], indices.shape[1], x.shape[2]))


@torch.library.register_fake("vtp_ext::gather_tokens_backward")
def _gather_tokens_backward_fake(grad, indices, L):
    op = "vtp_ext.gather_tokens_backward"
    torch._check(grad.dim() == 3, lambda: f"{op}: grad must have shape [B, K, D] (3 dimensions)")
    torch._check(grad.dtype in _FLOAT_DTYPES, lambda: f"{op}: grad must be a float tensor")
    _check_indices(indices, grad.shape[0], grad.shape[1], grad.device, op)
    torch._check(0 <= L, lambda: f"{op}: L must be in [0, 2^31-1], got {L}")
    return grad.new_empty((grad.shape[0], L, grad.shape[2]))


def _setup_context(ctx, inputs, output):
    x, indices = inputs
    ctx.L = x.shape[1]
    ctx.save_for_backward(indices)


def _backward(ctx, grad):
    (indices,) = ctx.saved_tensors
    return torch.ops.vtp_ext.gather_tokens_backward.default(grad, indices, ctx.L), None


torch.library.register_autograd("vtp_ext::gather_tokens", _backward, setup_context=_setup_context)


# Double backward: the scatter-add at fixed indices is linear; its derivative is the gather.
def _backward_setup_context(ctx, inputs, output):
    _, indices, _ = inputs
    ctx.save_for_backward(indices)


def _backward_backward(ctx, grad_grad_x):
    (indices,) = ctx.saved_tensors
    return torch.ops.vtp_ext.gather_tokens.default(grad_grad_x, indices), None, None


torch.library.register_autograd("vtp_ext::gather_tokens_backward", _backward_backward,
                                setup_context=_backward_setup_context)
