"""Python face of the operators: one module per op with its wrapper, fake kernel and autograd."""
from .blur_downsample import GaussianPyramid, blur_downsample, gaussian_pyramid
from .token_saliency import token_saliency

__all__ = ["token_saliency", "blur_downsample", "gaussian_pyramid", "GaussianPyramid"]
