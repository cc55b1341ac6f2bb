"""vtp_ext: fused, autograd-aware PyTorch ops for vision-token reduction in VLMs.

Every op is registered under ``torch.ops.vtp_ext`` (C++ schema, CPU and CUDA kernels, fake kernel for
torch.compile, autograd) and wrapped here with a documented Python signature.
"""
import torch  # noqa: F401  (loads libtorch before the extension that links to it)

from ._load import load_extension
from ._version import __version__

_C = load_extension()

from .ops import token_saliency  # noqa: E402
from .ops import gather_tokens, segmented_topk  # noqa: E402
from .ops import gumbel_noise, gumbel_topk, philox4x32_10  # noqa: E402

__all__ = ["__version__", "token_saliency", "cuda_built"]
__all__ += ["segmented_topk", "gather_tokens"]
__all__ += ["gumbel_topk", "gumbel_noise", "philox4x32_10"]


def cuda_built() -> bool:
    """True when this build contains the CUDA kernels."""
    return bool(_C.cuda_built)
