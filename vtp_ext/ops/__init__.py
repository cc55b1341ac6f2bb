"""Python face of the operators: one module per op with its wrapper, fake kernel and autograd."""
from .token_saliency import token_saliency

__all__ = ["token_saliency"]
