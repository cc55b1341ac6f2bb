"""Python face of the operators: one module per op with its wrapper, fake kernel and autograd."""
from .blur_downsample import GaussianPyramid, blur_downsample, gaussian_pyramid
from .token_saliency import token_saliency
from .tome import MergePlan, bipartite_matching, merge, merge_source, unmerge
from .segmented_topk import segmented_topk
from .gather_tokens import gather_tokens
from .gumbel_topk import gumbel_noise, gumbel_topk, philox4x32_10

__all__ = ["token_saliency", "blur_downsample", "gaussian_pyramid", "GaussianPyramid", "MergePlan", "bipartite_matching",
           "merge", "unmerge", "merge_source", "segmented_topk", "gather_tokens", "gumbel_topk", "gumbel_noise",
           "philox4x32_10"]
