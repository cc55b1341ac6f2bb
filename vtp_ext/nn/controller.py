"""The budget-conditioned adaptive token controller (seeds 002/003): a scalar budget b in [0, 1] decides
*how many* patches are kept (K = clamp(floor(b N), 1, N)), a budget embedding fused with the image decides
*which* (per-patch logits), and Gumbel top-K picks exactly K with a straight-through gradient."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..ops.gather_tokens import gather_tokens
from ..ops.gumbel_topk import gumbel_topk
from ..ops.segmented_topk import segmented_topk
from .reduction import Budget, Reduction, budget_to_k, check_budget
from .tower import VisionTower


def budget_encoding(budget: torch.Tensor, num_freqs: int = 128) -> torch.Tensor:
    """AdaLLaVA's sinusoidal encoding: s = 2 pi b, f_j = 10000^(-j/num_freqs) (j < num_freqs), then all the
    sines followed by all the cosines -> ``[B, 2 num_freqs]`` (float32)."""
    j = torch.arange(num_freqs, dtype=torch.float32, device=budget.device)
    angle = (2 * math.pi * budget.float())[:, None] * torch.pow(10000.0, -j / num_freqs)
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


class BudgetEmbedding(nn.Module):
    """Budget ``[B]`` -> sinusoidal encoding -> LayerNorm -> Linear -> GELU -> Linear -> ``[B, dim_out]``."""

    def __init__(self, dim_out: int, num_freqs: int = 128, hidden_dim: Optional[int] = None):
        super().__init__()
        self.num_freqs = num_freqs
        hidden_dim = hidden_dim or dim_out
        self.proj = nn.Sequential(nn.LayerNorm(2 * num_freqs), nn.Linear(2 * num_freqs, hidden_dim), nn.GELU(),
                                  nn.Linear(hidden_dim, dim_out))

    def forward(self, budget: torch.Tensor) -> torch.Tensor:
        return self.proj(budget_encoding(budget, self.num_freqs).to(self.proj[1].weight.dtype))


_OUTPUTS = ("compact", "masked", "gated")


class AdaptiveTokenController(nn.Module):
    """``AdaptiveTokenController(tower, fusion="A", logits="per_patch", output="compact", tau=5.0)``.

    - ``fusion="A"``: the budget token (its embedding + one learned position vector) is appended after the
      CLS + patch embedding and the *same* encoder runs on ``[CLS, P_1..P_N, BUDGET]``.
      ``fusion="B"``: the encoder runs unchanged; the budget embedding attends over its tokens (one
      cross-attention, budget as query).
    - ``logits="per_patch"`` (seed 002): logit_i = w . GELU(W_p LN(p_i) + W_z z) from each patch token p_i and
      the fused budget vector z. ``logits="budget_token"`` (seed 003): ``Linear(C, N)`` of z.
    - Selection: ``gumbel_topk`` (sequential, straight-through) in training, the deterministic top-K in eval.
      CLS is always kept. ``output="compact"``: ``[B, 1 + K_max, C]``, CLS then the selected patches in their
      original order, right-padded; ``output="masked"``: ``[B, 1 + N, C]`` with the dropped patches zeroed
      (fixed shapes for ZeRO-3/FSDP); ``output="gated"`` (training with a language model that takes a key
      gate, as ``vtp_ext.models.TinyVLM``): every token unchanged, ``mask`` all true and
      ``extras["key_gate"] [B, 1 + N]`` the 0/1 selection carrying the straight-through gradient. Dropping a
      token from the sequence gives the loss no derivative for it, so the selector would only ever learn
      to push the tokens it dropped further down; gating keeps the forward and gives them one.
      ``forward(..., output=)`` overrides the constructor's choice for one call.
    """

    def __init__(self, tower: VisionTower, fusion: str = "A", logits: str = "per_patch", output: str = "compact",
                 tau: float = 5.0, num_heads: int = 4):
        super().__init__()
        for name, value, allowed in (("fusion", fusion, ("A", "B")), ("logits", logits, ("per_patch", "budget_token")),
                                     ("output", output, _OUTPUTS)):
            if value not in allowed:
                raise ValueError(f"vtp_ext.nn.AdaptiveTokenController: {name} must be one of {allowed}, got {value!r}")
        self.tower, self.fusion, self.logits_from, self.output, self.tau = tower, fusion, logits, output, tau
        C, N = tower.dim, tower.num_patches
        self.budget_embedding = BudgetEmbedding(C)
        if fusion == "A":
            self.budget_position = nn.Parameter(torch.zeros(1, C))
        else:
            self.fuse = nn.MultiheadAttention(C, num_heads if C % num_heads == 0 else 1, batch_first=True)
            self.fuse_norm = nn.LayerNorm(C)
        if logits == "budget_token":
            self.head = nn.Linear(C, N)
        else:
            self.patch_norm, self.patch_proj, self.budget_proj = nn.LayerNorm(C), nn.Linear(C, C), nn.Linear(C, C)
            self.score = nn.Linear(C, 1)

    def encode(self, images: torch.Tensor, budget: torch.Tensor, attention_mask: Optional[torch.Tensor] = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (vision tokens ``[B, 1 + N, C]``, fused budget vector ``[B, C]``)."""
        emb = self.budget_embedding(budget.to(images.device))
        if self.fusion == "A":
            tokens = self.tower.embed_tokens(images)
            out = self.tower.encode(torch.cat([tokens, (emb + self.budget_position).to(tokens.dtype)[:, None]], 1),
                                    attention_mask)
            return out[:, :-1], out[:, -1]
        feats = self.tower.features(images)
        fused = self.fuse(emb[:, None].to(feats.dtype), feats, feats, need_weights=False)[0][:, 0]
        return feats, self.fuse_norm(emb + fused)

    def patch_logits(self, feats: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if self.logits_from == "budget_token":
            return self.head(z)
        h = self.patch_proj(self.patch_norm(feats[:, 1:])) + self.budget_proj(z)[:, None]
        return self.score(nn.functional.gelu(h)).squeeze(-1)

    def forward(self, images: torch.Tensor, budget: Budget, seed: Optional[int] = None,
                output: Optional[str] = None) -> Reduction:
        output = self.output if output is None else output
        if output not in _OUTPUTS:
            raise ValueError(f"vtp_ext.nn.AdaptiveTokenController: output must be one of {_OUTPUTS}, got {output!r}")
        B, N = images.shape[0], self.tower.num_patches
        b = check_budget(budget, B, "vtp_ext.nn.AdaptiveTokenController")
        k = budget_to_k(b, N)
        feats, z = self.encode(images, b)
        logits = self.patch_logits(feats, z)
        keep = gumbel_topk(logits.float(), k.to(logits.device), tau=self.tau, seed=seed, mode="sequential",
                           training=self.training)
        ones = torch.ones(B, 1, dtype=torch.bool, device=feats.device)
        passes = torch.full((B, 1, self.tower.layers_run + 1), N + 1 + (self.fusion == "A"), dtype=torch.int64)
        extras = {"logits": logits, "k": k}
        if output == "gated":
            idx = torch.arange(N + 1, device=feats.device).expand(B, -1)
            extras["key_gate"] = torch.cat([ones.to(keep.dtype), keep], 1)
            every = torch.ones(B, N + 1, dtype=torch.bool, device=feats.device)
            return Reduction(feats, every, idx, passes, extras=extras)
        # Multiplying by the 0/1 mask keeps the values and routes the straight-through gradient to the logits.
        patches = feats[:, 1:] * keep.to(feats.dtype)[..., None]
        if output == "masked":
            tokens = torch.cat([feats[:, :1], patches], 1)
            idx = torch.arange(N + 1, device=feats.device).expand(B, -1)
            return Reduction(tokens, torch.cat([ones, keep > 0], 1), idx, passes, extras=extras)
        k_max = int(k.max()) if B else 1
        _, idx, _ = segmented_topk(keep.detach(), torch.tensor([0, N]), k[:, None].to(keep.device), k_max,
                                   order="index")
        tokens = torch.cat([feats[:, :1], gather_tokens(patches, idx)], 1)
        idx = torch.cat([torch.zeros_like(idx[:, :1]), torch.where(idx >= 0, idx + 1, idx)], 1)
        return Reduction(tokens, idx >= 0, idx, passes, extras=extras)
