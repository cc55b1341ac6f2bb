"""Small models the methods run in: a LLaMA-shaped decoder with hooks for LLM-side pruning."""
from .lm import LMOutput, LMState, TinyLM

__all__ = ["TinyLM", "LMState", "LMOutput"]
