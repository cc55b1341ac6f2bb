"""Python face of the operators: one module per op with its wrapper, fake kernel and autograd."""
from .token_saliency import token_saliency
from .segmented_topk import segmented_topk
from .gather_tokens import gather_tokens
from .gumbel_topk import gumbel_noise, gumbel_topk, philox4x32_10

__all__ = ["token_saliency"]
__all__ += ["segmented_topk", "gather_tokens"]
__all__ += ["gumbel_topk", "gumbel_noise", "philox4x32_10"]
