"""Python face of the operators: one module per op with its wrapper, fake kernel and autograd."""
from .blur_downsample import GaussianPyramid, blur_downsample, gaussian_pyramid
from .token_saliency import token_saliency
from .tome import MergePlan, bipartite_matching, merge, merge_source, unmerge

__all__ = ["token_saliency", "blur_downsample", "gaussian_pyramid", "GaussianPyramid", "MergePlan", "bipartite_matching",
           "merge", "unmerge", "merge_source"]
