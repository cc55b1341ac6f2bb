"""blur_downsample: one Gaussian-pyramid level (blur + 2x downsample) in one pass, and pyramids of it."""
from __future__ import annotations

from typing import List

import torch

_MODES = ("kornia", "opencv", "gauss_avgpool")
_BORDERS = ("reflect", "zeros")
_IMAGE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8)


def blur_downsample(x: torch.Tensor, mode: str = "kornia", sigma: float = 1.0, kernel_size: int = 5,
                    border: str = "reflect") -> torch.Tensor:
    """Blur ``x [B, C, H, W]`` and downsample it by 2, matching a reference exactly.

    * ``"kornia"``: ``kornia.geometry.transform.pyrdown`` with its defaults -- 5x5 binomial
      ``[1,4,6,4,1]/16``, reflect border, bilinear resize to ``floor(H/2) x floor(W/2)``
      (``align_corners=False``). Needs H, W >= 3, as kornia does.
    * ``"opencv"``: ``cv2.pyrDown`` -- same binomial, BORDER_REFLECT_101, the even pixels, output
      ``ceil(H/2) x ceil(W/2)``; any size >= 1x1.
    * ``"gauss_avgpool"``: the seed's level -- normalised Gaussian of ``kernel_size`` (odd) and ``sigma``,
      ``border="zeros"`` (``padding='same'``) or ``"reflect"``, then 2x2 average pooling (floor).

    ``sigma``, ``kernel_size`` and ``border`` configure ``"gauss_avgpool"``; the other modes take their
    fixed filter (kernel_size must stay 5). float32/float64/float16/bfloat16 (float32 accumulation,
    float64 for float64) and uint8 (forward only; the result rounds half up and saturates, which is
    bit-exact with OpenCV in ``"opencv"`` mode). The output keeps x's memory format (channels_last in,
    channels_last out). The full-resolution blurred image is never materialised. Differentiable for
    floating inputs; the backward is its own fused op (the adjoint filter).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"vtp_ext.blur_downsample: x must be a torch.Tensor, got {type(x).__name__}")
    for name, value in (("mode", mode), ("border", border)):
        if not isinstance(value, str):
            raise TypeError(f"vtp_ext.blur_downsample: {name} must be a str, got {type(value).__name__}")
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int):
        raise TypeError(f"vtp_ext.blur_downsample: kernel_size must be an odd int, got {kernel_size!r}")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
        raise TypeError(f"vtp_ext.blur_downsample: sigma must be a positive float, got {sigma!r}")
    return torch.ops.vtp_ext.blur_downsample.default(x, mode, float(sigma), kernel_size, border)


def _out_size(n: int, mode: str) -> int:
    return (n + 1) // 2 if mode == "opencv" else n // 2


def _channels_last(x: torch.Tensor) -> bool:
    # The same rule as csrc/include/vtp_ext/blur_downsample.h (looks_channels_last).
    return (not x.is_contiguous() and x.size(1) > 1 and x.stride(1) == 1
            and (x.size(3) == 1 or x.stride(3) == x.size(1)))


def _check(x: torch.Tensor, mode: str, sigma: float, kernel_size: int, border: str, op: str, dtypes) -> None:
    torch._check(x.dim() == 4, lambda: f"{op}: x must have shape [B, C, H, W] (4 dimensions), got {x.dim()} dimension(s)")
    torch._check(x.dtype in dtypes, lambda: f"{op}: unsupported dtype {x.dtype}")
    torch._check(mode in _MODES, lambda: f'{op}: mode must be "kornia", "opencv" or "gauss_avgpool", got "{mode}"')
    torch._check(border in _BORDERS, lambda: f'{op}: border must be "reflect" or "zeros", got "{border}"')
    torch._check(sigma > 0, lambda: f"{op}: sigma must be a positive finite number, got {sigma}")
    torch._check(kernel_size >= 1 and kernel_size % 2 == 1, lambda: f"{op}: kernel_size must be odd, got {kernel_size}")


def _empty_image(like: torch.Tensor, h: int, w: int) -> torch.Tensor:
    fmt = torch.channels_last if _channels_last(like) else torch.contiguous_format
    return torch.empty((like.size(0), like.size(1), h, w), dtype=like.dtype, device=like.device, memory_format=fmt)


@torch.library.register_fake("vtp_ext::blur_downsample")
def _blur_downsample_fake(x, mode="kornia", sigma=1.0, kernel_size=5, border="reflect"):
    _check(x, mode, sigma, kernel_size, border, "vtp_ext.blur_downsample", _IMAGE_DTYPES)
    return _empty_image(x, _out_size(x.size(2), mode), _out_size(x.size(3), mode))


@torch.library.register_fake("vtp_ext::blur_downsample_backward")
def _blur_downsample_backward_fake(grad, height, width, mode, sigma, kernel_size, border):
    op = "vtp_ext.blur_downsample_backward"
    _check(grad, mode, sigma, kernel_size, border, op, _IMAGE_DTYPES[:4])
    torch._check(grad.size(2) == _out_size(height, mode) and grad.size(3) == _out_size(width, mode),
                 lambda: f"{op}: grad must have the output size of a {height}x{width} input")
    return _empty_image(grad, height, width)


def _setup_context(ctx, inputs, output):
    x, mode, sigma, kernel_size, border = inputs
    ctx.config = (mode, sigma, kernel_size, border)
    ctx.size = (x.size(2), x.size(3))


def _backward(ctx, grad):
    grad_x = torch.ops.vtp_ext.blur_downsample_backward.default(grad, *ctx.size, *ctx.config)
    return grad_x, None, None, None, None


torch.library.register_autograd("vtp_ext::blur_downsample", _backward, setup_context=_setup_context)


# The backward is linear in grad, so its own derivative is the forward operator (A^T)^T = A.
def _backward_setup_context(ctx, inputs, output):
    _, _, _, mode, sigma, kernel_size, border = inputs
    ctx.config = (mode, sigma, kernel_size, border)


def _backward_backward(ctx, v):
    return torch.ops.vtp_ext.blur_downsample.default(v, *ctx.config), None, None, None, None, None, None


torch.library.register_autograd("vtp_ext::blur_downsample_backward", _backward_backward,
                                setup_context=_backward_setup_context)


def gaussian_pyramid(x: torch.Tensor, levels: int, mode: str = "kornia", sigma: float = 1.0, kernel_size: int = 5,
                     border: str = "reflect") -> List[torch.Tensor]:
    """``[x, level1, ..., level_{levels-1}]``: ``levels`` entries including ``x`` (kornia's
    ``build_pyramid(x, max_level=levels)``), each the ``blur_downsample`` of the previous one.
    Raises if a level would be smaller than 1x1 (or than what the mode needs)."""
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"vtp_ext.gaussian_pyramid: levels must be an int >= 1, got {levels!r}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError("vtp_ext.gaussian_pyramid: x must be a [B, C, H, W] tensor")
    h, w = x.shape[-2:]
    for level in range(1, levels):
        h, w = _out_size(h, mode), _out_size(w, mode)
        if h < 1 or w < 1:
            raise ValueError(f"vtp_ext.gaussian_pyramid: level {level} of a {x.shape[-2]}x{x.shape[-1]} image would be "
                             f"{h}x{w} (smaller than 1x1); use at most {level} levels")
    out = [x]
    for _ in range(1, levels):
        out.append(blur_downsample(out[-1], mode, sigma, kernel_size, border))
    return out


class GaussianPyramid(torch.nn.Module):
    """``nn.Module`` form of :func:`gaussian_pyramid`: ``GaussianPyramid(4)(images) -> list of 4 tensors``."""

    def __init__(self, levels: int, mode: str = "kornia", sigma: float = 1.0, kernel_size: int = 5,
                 border: str = "reflect"):
        super().__init__()
        self.levels, self.mode, self.sigma, self.kernel_size, self.border = levels, mode, sigma, kernel_size, border

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return gaussian_pyramid(x, self.levels, self.mode, self.sigma, self.kernel_size, self.border)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, mode={self.mode!r}, sigma={self.sigma}, kernel_size={self.kernel_size}, border={self.border!r}"
