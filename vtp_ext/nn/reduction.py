"""What every token-reduction method returns, and the budget conventions they share."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Union

import torch

Budget = Union[float, torch.Tensor]


def check_budget(budget: Budget, batch: int, where: str = "vtp_ext") -> torch.Tensor:
    """``budget``: a float or a tensor ``[B]`` of fractions of the patch tokens to keep, each in [0, 1].
    Returns a float64 CPU tensor ``[B]``; anything else is a clear error."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float, torch.Tensor)):
        raise TypeError(f"{where}: budget must be a float or a tensor [B], got {type(budget).__name__}")
    b = torch.as_tensor(budget, dtype=torch.float64).detach().cpu()
    if b.dim() == 0:
        b = b.expand(batch)
    if b.shape != (batch,):
        raise ValueError(f"{where}: budget must be a float or have shape [B] = [{batch}], got {list(b.shape)}")
    if torch.isnan(b).any():
        raise ValueError(f"{where}: budget must not be NaN")
    if ((b < 0) | (b > 1)).any():
        raise ValueError(f"{where}: budget must be in [0, 1], got values in [{b.min().item()}, {b.max().item()}]")
    return b.clone()


def budget_to_k(budget: torch.Tensor, num_patches: int) -> torch.Tensor:
    """``K = clamp(floor(b * N), 1, N)`` per sample (int64). Computed in float64, so b = 0.2 keeps 115 of 576."""
    return torch.floor(budget.double() * num_patches).long().clamp(1, max(num_patches, 1))


@dataclasses.dataclass
class Reduction:
    """``tokens [B, T, C]`` with CLS first; ``mask [B, T]`` marks the valid tokens (compact outputs are
    right-padded; masked outputs keep ``1 + N`` rows and zero the dropped ones). ``indices [B, T]``: the
    source of each token (0 = CLS, 1..N = patch, -1 = merged/extra/padding). ``vision_tokens [B, passes,
    layers + 1]``: tokens entering each ViT block that ran, then the tokens out of the last one, per
    encoder pass (for FLOPs; ToMe merges inside a block, so its MLP sees the next entry's count). ``lm_pruner``: set by
    methods that prune inside the language model (FastV, PyramidDrop)."""

    tokens: torch.Tensor
    mask: torch.Tensor
    indices: Optional[torch.Tensor]
    vision_tokens: torch.Tensor
    lm_pruner: Any = None
    extras: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_tokens(self) -> torch.Tensor:
        """Valid tokens per sample (what the projector and the first LM layer see), ``[B]``."""
        return self.mask.sum(1)

    def lm_image_tokens(self, num_layers: int) -> torch.Tensor:
        """Image tokens each LM layer sees, ``[B, num_layers]``."""
        if self.lm_pruner is not None:
            return self.lm_pruner.image_tokens_per_layer(self.num_tokens, num_layers)
        return self.num_tokens[:, None].expand(-1, num_layers)
