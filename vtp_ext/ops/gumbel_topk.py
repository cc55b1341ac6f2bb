"""gumbel_topk: exactly-k straight-through Gumbel selection (AdaLLaVA's n_times_gumbel_softmax, or one
noise draw with the relaxed subset sampling of Xie & Ermon 2019), with counter-based noise."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_MODES = ("sequential", "single")
_OP = "vtp_ext.gumbel_topk"


def _draw_seed() -> int:
    # From torch's default CPU generator, so torch.manual_seed makes runs reproducible.
    return int(torch.randint(0, 2**62, (), dtype=torch.int64).item())


def gumbel_topk(logits: torch.Tensor, k: Union[int, torch.Tensor], tau: float = 5.0, seed: Optional[int] = None,
                mode: str = "sequential", training: bool = True) -> torch.Tensor:
    """Select exactly ``k`` entries of every row of ``logits [B, N]``; returns a 0/1 mask ``[B, N]`` in the
    dtype of ``logits`` whose gradient is the straight-through estimator of the relaxed selection.

    ``mode="sequential"`` is AdaLLaVA's ``n_times_gumbel_softmax``: ``k`` steps; step ``t`` draws fresh Gumbel
    noise ``g_t``, forms ``p_t = softmax((logits + g_t) / tau)`` over the entries not yet picked and picks its
    argmax (ties: lower index). Backward: ``dL/dlogits = (1/tau) sum_t (diag(p_t) - p_t p_t^T) G``, computed by
    regenerating each step's noise, so memory stays O(B*N).
    ``mode="single"`` draws the noise once: the forward is the top-``k`` of ``logits + g_0``; the backward is
    that of the relaxed k-hot ``sum_j p_j`` with ``p_j = softmax(a_j / tau)``, ``a_0 = logits + g_0``,
    ``a_{j+1} = a_j + log(max(1 - p_j, tiny))`` (O(N sqrt(k)) scratch per row for the reverse pass).
    Both modes draw from the same distribution over subsets (Plackett-Luce).

    ``training=False``: the deterministic top-``k`` of ``logits`` (ties: lower index), no noise, zero gradient.

    ``k``: an int or an int64 tensor ``[B]`` (per-sample budgets; a CPU tensor or on the device of ``logits``).
    ``k = 0`` gives all zeros, ``k >= N`` all ones; ``k < 0``, ``tau <= 0``, NaN or ``+inf`` logits are errors.
    ``-inf`` logits are never picked while finite entries remain (they are picked, lowest index first, only
    when ``k`` exceeds the number of finite entries) and get zero gradient.

    Noise: Philox4x32-10 keyed by ``(seed, row, step, column)``, identical on CPU and CUDA
    (:func:`gumbel_noise` returns it). ``seed=None`` draws a seed from torch's default generator, so
    ``torch.manual_seed`` makes runs reproducible (under ``torch.compile`` pass an explicit seed to avoid the
    graph break of drawing it). Computed in float32 (float64 for float64 logits).
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{_OP}: logits must be a torch.Tensor, got {type(logits).__name__}")
    if not isinstance(k, torch.Tensor):
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"{_OP}: k must be an int or an int64 tensor [B], got {k!r}")
        k = torch.full((logits.shape[0] if logits.dim() >= 1 else 0,), k, dtype=torch.int64)
    if isinstance(tau, bool) or not isinstance(tau, (int, float)):
        raise TypeError(f"{_OP}: tau must be a float, got {tau!r}")
    if seed is None:
        seed = _draw_seed()
    elif isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{_OP}: seed must be an int or None, got {seed!r}")
    if not -(2**63) <= seed < 2**63:
        raise ValueError(f"{_OP}: seed must fit in int64, got {seed}")
    if not isinstance(mode, str):
        raise TypeError(f"{_OP}: mode must be a str (\"sequential\" or \"single\"), got {type(mode).__name__}")
    if not isinstance(training, bool):
        raise TypeError(f"{_OP}: training must be a bool, got {training!r}")
    return torch.ops.vtp_ext.gumbel_topk.default(logits, k, float(tau), seed, mode, training)


def gumbel_noise(seed: int, shape: Sequence[int], step: int = 0, dtype: torch.dtype = torch.float32,
                 device: Union[str, torch.device, None] = None) -> torch.Tensor:
    """The Gumbel noise :func:`gumbel_topk` adds at selection ``step`` to logits of ``shape = (B, N)`` and
    ``dtype`` (sequential mode: step ``t`` of ``k``; single mode: step 0), bit for bit, so a plain-torch
    reference can be fed the same noise. Returned in the op's accumulation type: float64 for float64 logits,
    float32 otherwise. Philox4x32-10 with key ``seed`` and counter ``(column / W, step, row)`` (see
    csrc/include/vtp_ext/gumbel_math.h); the same values on CPU and CUDA."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"vtp_ext.gumbel_noise: seed must be an int, got {seed!r}")
    if isinstance(step, bool) or not isinstance(step, int):
        raise TypeError(f"vtp_ext.gumbel_noise: step must be an int, got {step!r}")
    shape = tuple(shape)
    if len(shape) != 2:
        raise ValueError(f"vtp_ext.gumbel_noise: shape must be (B, N), got {shape}")
    if dtype not in _FLOAT_DTYPES:
        raise TypeError(f"vtp_ext.gumbel_noise: dtype must be float32, float64, float16 or bfloat16, got {dtype}")
    like = torch.empty(shape, dtype=dtype, device=device)
    return torch.ops.vtp_ext.gumbel_noise.default(like, seed, step)


def philox4x32_10(counter: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Philox4x32-10 of ``counter [n, 4]`` under ``key [n, 2]`` (int64 tensors holding 32-bit words) ->
    ``[n, 4]``: the generator behind :func:`gumbel_noise`, exposed for known-answer tests."""
    return torch.ops.vtp_ext.philox4x32_10.default(counter, key)


def _check_logits(logits, op):
    torch._check(logits.dim() == 2, lambda: f"{op}: logits must have shape [B, N] (2 dimensions), got {logits.dim()} dimension(s)")
    torch._check(logits.dtype in _FLOAT_DTYPES,
                 lambda: f"{op}: logits must be float32, float64, float16 or bfloat16, got {logits.dtype}")


def _check(logits, k, tau, mode, op):
    _check_logits(logits, op)
    torch._check(k.dtype == torch.int64, lambda: f"{op}: k must be int64, got {k.dtype}")
    torch._check(k.dim() == 1 and k.shape[0] == logits.shape[0], lambda: f"{op}: k must have shape [B], got {list(k.shape)}")
    torch._check(k.device.type == "cpu" or k.device == logits.device,
                 lambda: f"{op}: k must be a CPU tensor or on the device of logits")
    torch._check(tau > 0 and tau != float("inf"), lambda: f"{op}: tau must be a positive finite number, got {tau}")
    torch._check(mode in _MODES, lambda: f'{op}: mode must be "sequential" or "single", got "{mode}"')


@torch.library.register_fake("vtp_ext::gumbel_topk")
def _gumbel_topk_fake(logits, k, tau, seed, mode, training):
    _check(logits, k, tau, mode, _OP)
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


@torch.library.register_fake("vtp_ext::gumbel_topk_backward")
def _gumbel_topk_backward_fake(grad, logits, k, tau, seed, mode, training):
    op = "vtp_ext.gumbel_topk_backward"
    _check(logits, k, tau, mode, op)
    torch._check(grad.shape == logits.shape and grad.dtype == logits.dtype and grad.device == logits.device,
                 lambda: f"{op}: grad must have the shape, dtype and device of logits")
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


@torch.library.register_fake("vtp_ext::gumbel_noise")
def _gumbel_noise_fake(logits, seed, step):
    _check_logits(logits, "vtp_ext.gumbel_noise")
    torch._check(0 <= step < 2**32, lambda: f"vtp_ext.gumbel_noise: step must be in [0, 2^32-1], got {step}")
    noise_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return logits.new_empty(logits.shape, dtype=noise_dtype)


@torch.library.register_fake("vtp_ext::philox4x32_10")
def _philox_fake(counter, key):
    torch._check(counter.dim() == 2 and counter.shape[1] == 4 and counter.dtype == torch.int64,
                 lambda: "vtp_ext.philox4x32_10: counter must be int64 [n, 4]")
    torch._check(key.dim() == 2 and key.shape[1] == 2 and key.dtype == torch.int64 and key.shape[0] == counter.shape[0],
                 lambda: "vtp_ext.philox4x32_10: key must be int64 [n, 2]")
    return counter.new_empty(counter.shape)


def _setup_context(ctx, inputs, output):
    logits, k, tau, seed, mode, training = inputs
    ctx.tau, ctx.seed, ctx.mode, ctx.training = tau, seed, mode, training
    # The backward regenerates the noise from (seed, row, step, column): only logits and k are kept.
    ctx.save_for_backward(logits, k)


def _backward(ctx, grad):
    logits, k = ctx.saved_tensors
    grad_logits = torch.ops.vtp_ext.gumbel_topk_backward.default(grad, logits, k, ctx.tau, ctx.seed, ctx.mode,
                                                                 ctx.training)
    return grad_logits, None, None, None, None, None


torch.library.register_autograd("vtp_ext::gumbel_topk", _backward, setup_context=_setup_context)


def _no_double_backward(ctx, grad):
    raise NotImplementedError("vtp_ext.gumbel_topk: double backward (a gradient of the straight-through gradient) "
                              "is not supported")


torch.library.register_autograd("vtp_ext::gumbel_topk_backward", _no_double_backward,
                                setup_context=lambda ctx, inputs, output: None)
