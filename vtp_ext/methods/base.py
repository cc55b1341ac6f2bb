"""The call shape every method shares and the helpers the simple ones are made of."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from ..nn.reduction import Budget, Reduction, budget_to_k, check_budget
from ..nn.tower import VisionTower
from ..ops.gather_tokens import gather_tokens
from ..ops.segmented_topk import segmented_topk


class VisionInputs:
    """What a method may read, computed once and shared (a wrapping method such as ``difficulty`` and the
    method it wraps see the same features)."""

    def __init__(self, tower: VisionTower, images: torch.Tensor, question: Optional[torch.Tensor] = None,
                 question_text: Optional[List[str]] = None):
        self.tower, self.images, self.question, self.question_text = tower, images, question, question_text
        self._features = self._cls_attn = None

    @property
    def batch(self) -> int:
        return self.images.shape[0]

    @property
    def features(self) -> torch.Tensor:
        """The selected layer, CLS first: ``[B, 1 + N, C]``."""
        if self._features is None:
            self._features = self.tower.features(self.images)
        return self._features

    def prumerge_keys_and_cls_attention(self) -> tuple[torch.Tensor, torch.Tensor]:
        """PruMerge's single-head proxy: ``softmax(q k^T / sqrt(C))[:, 0, 1:]`` from the raw q/k projections of
        the block after the selected layer, plus those keys ``[B, 1 + N, C]``."""
        q, k = self.tower.last_block_qk(self.features)
        logits = (q[:, :1] @ k.transpose(1, 2)) * q.shape[-1] ** -0.5
        attn = torch.softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))
        return k, attn[:, 0, 1:]

    def full_passes(self) -> torch.Tensor:
        return torch.full((self.batch, 1, self.tower.layers_run + 1), self.tower.num_patches + 1, dtype=torch.int64)


class Method(nn.Module):
    """``method(tower, images, budget, question=None, question_text=None) -> Reduction``; subclasses
    implement ``reduce(inputs, k)`` with ``k [B]`` the patch budget."""

    name = ""

    def forward(self, tower: VisionTower, images: torch.Tensor, budget: Budget, question: Optional[torch.Tensor] = None,
                question_text: Optional[List[str]] = None) -> Reduction:
        return self.run(VisionInputs(tower, images, question, question_text), budget)

    def run(self, inputs: VisionInputs, budget: Budget) -> Reduction:
        b = check_budget(budget, inputs.batch, f"vtp_ext.methods.{self.name or type(self).__name__}")
        return self.reduce(inputs, budget_to_k(b, inputs.tower.num_patches))

    def reduce(self, inputs: VisionInputs, k: torch.Tensor) -> Reduction:
        raise NotImplementedError


def select_patches(features: torch.Tensor, scores: torch.Tensor, k: torch.Tensor, passes: torch.Tensor) -> Reduction:
    """CLS + the top-``k[b]`` patches of ``scores [B, N]`` in their original order (compact, right-padded)."""
    B, N = scores.shape
    k_max = int(k.max()) if B else 1
    _, idx, _ = segmented_topk(scores, torch.tensor([0, N]), k[:, None].to(scores.device), k_max, order="index")
    tokens = torch.cat([features[:, :1], gather_tokens(features[:, 1:], idx)], 1)
    idx = torch.cat([torch.zeros_like(idx[:, :1]), torch.where(idx >= 0, idx + 1, idx)], 1)
    return Reduction(tokens, idx >= 0, idx, passes)


def pad_rows(rows: List[torch.Tensor], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad per-sample token rows ``[T_b, C]`` into ``[B, T_max, C]`` and a validity mask."""
    t_max = max((r.shape[0] for r in rows), default=1)
    out = rows[0].new_zeros(len(rows), t_max, dim) if rows else torch.zeros(0, 1, dim)
    mask = torch.zeros(len(rows), t_max, dtype=torch.bool, device=out.device)
    for b, r in enumerate(rows):
        out[b, :r.shape[0]], mask[b, :r.shape[0]] = r, True
    return out, mask
