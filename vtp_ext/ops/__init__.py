"""Python face of the operators: one module per op with its wrapper, fake kernel and autograd."""
from .token_saliency import token_saliency
from .segmented_topk import segmented_topk
from .gather_tokens import gather_tokens

__all__ = ["token_saliency"]
__all__ += ["segmented_topk", "gather_tokens"]
