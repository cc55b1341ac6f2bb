"""token_saliency: per-token variance or L2 norm over the feature dimension, in one pass."""
from __future__ import annotations

import torch

_METHODS = ("variance", "l2norm")


def token_saliency(x: torch.Tensor, method: str = "variance", correction: int = 1) -> torch.Tensor:
    """Saliency of every token of ``x [..., N, D]``, reduced over ``D`` -> ``[..., N]``.

    ``method="variance"`` equals ``torch.var(x, dim=-1, correction=correction)`` (``correction`` 0 or 1;
    1, the unbiased estimate, is torch's and the seeds' default), NaN where ``D - correction <= 0`` as in
    torch. ``method="l2norm"`` equals ``x.norm(dim=-1)`` (``correction`` is ignored). float32, float64,
    float16 and bfloat16, accumulated in float32 (float64 for float64 inputs); output in x's dtype.
    Differentiable with respect to ``x``; the backward is its own fused op.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"vtp_ext.token_saliency: x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(method, str):
        raise TypeError(f"vtp_ext.token_saliency: method must be a str ({' or '.join(_METHODS)}), got {type(method).__name__}")
    if isinstance(correction, bool) or not isinstance(correction, int):
        raise TypeError(f"vtp_ext.token_saliency: correction must be the int 0 or 1, got {correction!r}")
    return torch.ops.vtp_ext.token_saliency.default(x, method, correction)


def _check(x: torch.Tensor, method: str, correction: int, op: str) -> None:
    torch._check(x.dim() >= 2, lambda: f"{op}: x must have shape [..., N, D] (at least 2 dimensions), got {x.dim()} dimension(s)")
    torch._check(x.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16),
                 lambda: f"{op}: x must be float32, float64, float16 or bfloat16, got {x.dtype}")
    torch._check(method in _METHODS, lambda: f'{op}: method must be "variance" or "l2norm", got "{method}"')
    torch._check(correction in (0, 1), lambda: f"{op}: correction must be 0 or 1, got {correction}")


@torch.library.register_fake("vtp_ext::token_saliency")
def _token_saliency_fake(x, method="variance", correction=1):  # defaults as in the C++ schema
    _check(x, method, correction, "vtp_ext.token_saliency")
    return x.new_empty(x.shape[:-1])


@torch.library.register_fake("vtp_ext::token_saliency_backward")
def _token_saliency_backward_fake(grad, x, out, method, correction):
    op = "vtp_ext.token_saliency_backward"
    _check(x, method, correction, op)
    torch._check(grad.device == x.device and out.device == x.device, lambda: f"{op}: x, grad and out must be on the same device")
    torch._check(grad.dtype == x.dtype and out.dtype == x.dtype, lambda: f"{op}: x, grad and out must have the same dtype")
    torch._check(grad.shape == x.shape[:-1], lambda: f"{op}: grad must have shape x.shape[:-1]")
    torch._check(out.shape == x.shape[:-1], lambda: f"{op}: out must have shape x.shape[:-1]")
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    x, method, correction = inputs
    ctx.method, ctx.correction = method, correction
    ctx.save_for_backward(x, output)


def _backward(ctx, grad):
    x, out = ctx.saved_tensors
    grad_x = torch.ops.vtp_ext.token_saliency_backward.default(grad, x, out, ctx.method, ctx.correction)
    return grad_x, None, None


torch.library.register_autograd("vtp_ext::token_saliency", _backward, setup_context=_setup_context)


# Double backward (e.g. gradient penalties): the derivative of token_saliency_backward, composed of
# plain torch ops -- second-order use is rare, so it is not fused. With v = dL/d(grad_x):
#   variance, grad_x = s g (x - mean),  s = 2 / (D - correction):
#       dL/dg = s <v, x - mean>,   dL/dx = s g (v - mean(v)),   dL/dout = 0
#   l2norm, grad_x = g x / out (0 where out == 0):
#       dL/dg = <v, x> / out,      dL/dx = g v / out,           dL/dout = -g <v, x> / out^2
# dL/dout reaches x through the saved forward output, so the composition is exact.
def _backward_setup_context(ctx, inputs, output):
    grad, x, out, method, correction = inputs
    ctx.method, ctx.correction = method, correction
    ctx.save_for_backward(grad, x, out)


def _backward_backward(ctx, v):
    grad, x, out = ctx.saved_tensors
    g = grad.unsqueeze(-1)
    if ctx.method == "variance":
        dof = x.shape[-1] - ctx.correction
        scale = 2.0 / dof if dof > 0 else float("nan")  # NaN like the forward backward's 0 * inf
        centred = x - x.mean(-1, keepdim=True)
        d_grad = scale * (v * centred).sum(-1)
        d_x = scale * g * (v - v.mean(-1, keepdim=True))
        d_out = torch.zeros_like(out)
    else:
        zero = out == 0
        inv = torch.where(zero, torch.zeros_like(out), 1.0 / torch.where(zero, torch.ones_like(out), out))
        vx = (v * x).sum(-1)
        d_grad = vx * inv
        d_x = g * v * inv.unsqueeze(-1)
        d_out = -grad * vx * inv * inv
    return d_grad, d_x, d_out, None, None


torch.library.register_autograd("vtp_ext::token_saliency_backward", _backward_backward,
                                setup_context=_backward_setup_context)
