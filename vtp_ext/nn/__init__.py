"""Modules built on the vtp_ext ops: the project's ViT and ToMe for ViTs (own and HF CLIP)."""
from .tome import ToMeState, apply_tome, parse_r, r_schedule_for_tokens, remove_tome
from .vit import ViT

__all__ = ["ViT", "apply_tome", "remove_tome", "parse_r", "r_schedule_for_tokens", "ToMeState"]
