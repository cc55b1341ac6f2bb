"""vtp_ext: fused, autograd-aware PyTorch ops for vision-token reduction in VLMs.

Every op is registered under ``torch.ops.vtp_ext`` (C++ schema, CPU and CUDA kernels, fake kernel for
torch.compile, autograd) and wrapped here with a documented Python signature.
"""
import torch  # noqa: F401  (loads libtorch before the extension that links to it)

from ._load import load_extension
from ._version import __version__

_C = load_extension()

from .ops import (GaussianPyramid, MergePlan, bipartite_matching, blur_downsample, gather_tokens,  # noqa: E402
                  gaussian_pyramid, gumbel_noise, gumbel_topk, merge, merge_source, philox4x32_10, segmented_topk,
                  token_saliency, unmerge)

from . import flops, methods, models, nn  # noqa: E402,F401  (modules built on the ops)

__all__ = ["__version__", "token_saliency", "blur_downsample", "gaussian_pyramid", "GaussianPyramid", "MergePlan",
           "bipartite_matching", "merge", "unmerge", "merge_source", "segmented_topk", "gather_tokens", "gumbel_topk",
           "gumbel_noise", "philox4x32_10", "cuda_built"]


def cuda_built() -> bool:
    """True when this build contains the CUDA kernels."""
    return bool(_C.cuda_built)
