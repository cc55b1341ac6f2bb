"""Modules built on the vtp_ext ops: the project's ViT, a view of any supported vision encoder, ToMe for
ViTs (own and HF CLIP) and the budget-conditioned adaptive token controller."""
from .controller import AdaptiveTokenController, BudgetEmbedding, budget_encoding
from .reduction import Reduction, budget_to_k, check_budget
from .tome import ToMeState, apply_tome, parse_r, r_schedule_for_tokens, remove_tome
from .tower import VisionTower
from .vit import ViT

__all__ = ["ViT", "VisionTower", "apply_tome", "remove_tome", "parse_r", "r_schedule_for_tokens", "ToMeState",
           "BudgetEmbedding", "budget_encoding", "AdaptiveTokenController", "Reduction", "check_budget", "budget_to_k"]
