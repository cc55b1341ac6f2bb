"""A small LLaMA-shaped causal decoder (RMSNorm, RoPE at explicit positions, SwiGLU) whose forward lets an
LLM-side token pruner (FastV, PyramidDrop) drop image tokens between layers. Sequences are right-padded:
``attention_mask [B, L]`` marks the valid prefix of each row. An optional ``key_gate [B, L]`` (0/1 values
that may carry a gradient) multiplies every attention row's probabilities before they are renormalised:
a token gated to 0 is seen by no one -- the forward equals dropping it -- yet the loss has a derivative
with respect to its gate (how training lets a token selector learn what a dropped token was worth)."""
from __future__ import annotations

import dataclasses
from typing import List, Optional

import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x):
        ft = torch.promote_types(x.dtype, torch.float32)
        return x * torch.rsqrt(x.to(ft).pow(2).mean(-1, keepdim=True) + self.eps).to(x.dtype) * self.weight


def rotate(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """RoPE (half-split layout) of ``x [B, H, L, d]`` at ``positions [B, L]``."""
    d = x.shape[-1]
    ft = torch.promote_types(x.dtype, torch.float32)
    inv = base ** (-torch.arange(0, d, 2, dtype=ft, device=x.device) / d)
    ang = positions.to(ft)[:, None, :, None] * inv
    cos, sin = torch.cat([ang.cos()] * 2, -1).to(x.dtype), torch.cat([ang.sin()] * 2, -1).to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


@dataclasses.dataclass
class LMState:
    """What flows between layers (and what a pruner may rewrite): right-padded rows; the image occupies
    ``[image_start, image_start + image_len)`` of each row; ``query_index`` is the last prompt token."""
    hidden: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    image_start: torch.Tensor
    image_len: torch.Tensor
    query_index: torch.Tensor
    labels: Optional[torch.Tensor] = None


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.input_layernorm, self.post_attention_layernorm = RMSNorm(dim), RMSNorm(dim)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.gate_proj, self.up_proj = nn.Linear(dim, ffn, bias=False), nn.Linear(dim, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, dim, bias=False)

    def _split(self, t):
        return t.view(t.shape[0], t.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def qk(self, hidden, positions):
        h = self.input_layernorm(hidden)
        return rotate(self._split(self.q_proj(h)), positions), rotate(self._split(self.k_proj(h)), positions)

    def forward(self, hidden, positions, key_mask, output_attentions=False, key_gate=None):
        B, L, _ = hidden.shape
        h = self.input_layernorm(hidden)
        q, k = rotate(self._split(self.q_proj(h)), positions), rotate(self._split(self.k_proj(h)), positions)
        v = self._split(self.v_proj(h))
        allowed = torch.ones(L, L, dtype=torch.bool, device=hidden.device).tril() & key_mask[:, None, None, :]
        probs = None
        if output_attentions or key_gate is not None:
            logits = (q @ k.transpose(-1, -2)) * self.head_dim ** -0.5
            ft = torch.promote_types(logits.dtype, torch.float32)
            probs = torch.softmax(logits.to(ft).masked_fill(~allowed, float("-inf")), -1).nan_to_num(0.0)
            if key_gate is not None:   # every row keeps key 0 (<bos>, gate 1): the sum is never 0
                probs = probs * key_gate.to(ft)[:, None, None, :]
                probs = probs / probs.sum(-1, keepdim=True)
            probs = probs.to(q.dtype)
            attn = probs @ v
        else:   # padded query rows still see key 0 (a valid token), so no row is fully masked
            attn = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        x = hidden + self.o_proj(attn.transpose(1, 2).reshape(B, L, -1))
        h = self.post_attention_layernorm(x)
        x = x + self.down_proj(nn.functional.silu(self.gate_proj(h)) * self.up_proj(h))
        return x, probs


@dataclasses.dataclass
class LMOutput:
    logits: torch.Tensor
    state: LMState
    attentions: Optional[List[torch.Tensor]] = None
    tokens_per_layer: Optional[torch.Tensor] = None     # [B, layers] valid tokens each layer processed


class TinyLM(nn.Module):
    """``TinyLM(vocab_size, dim=256, layers=4, heads=4, ffn=None)``; ``ffn`` defaults to LLaMA's 8/3 d rounded
    to a multiple of 32."""

    def __init__(self, vocab_size: int, dim: int = 256, layers: int = 4, heads: int = 4, ffn: Optional[int] = None):
        super().__init__()
        ffn = ffn or 32 * round(8 * dim / 3 / 32)
        self.dim, self.heads, self.ffn, self.vocab_size = dim, heads, ffn, vocab_size
        self.embed_tokens = nn.Embedding(vocab_size, dim)
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, ffn) for _ in range(layers))
        self.norm = RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)

    def attention_row(self, layer: int, state: LMState) -> torch.Tensor:
        """Head-averaged attention probabilities ``[B, L]`` of each row's ``query_index`` token in layer
        ``layer``, taking ``state.hidden`` as that layer's input (softmax in float32 over every valid key
        up to the query, as the layer computes it)."""
        q, k = self.layers[layer].qk(state.hidden, state.position_ids)
        B, H, L, d = q.shape
        qi = q[torch.arange(B), :, state.query_index]                       # [B, H, d]
        logits = (qi[:, :, None] @ k.transpose(-1, -2))[:, :, 0] * d ** -0.5
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        allowed = state.attention_mask & (torch.arange(L, device=q.device)[None] <= state.query_index[:, None])
        return torch.softmax(logits.masked_fill(~allowed[:, None], float("-inf")), -1).mean(1)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, image_start: torch.Tensor,
                image_len: torch.Tensor, query_index: torch.Tensor, position_ids: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, pruner=None, output_attentions: bool = False,
                key_gate: Optional[torch.Tensor] = None) -> LMOutput:
        B, L, _ = inputs_embeds.shape
        if key_gate is not None and pruner is not None:
            raise ValueError("vtp_ext.models.TinyLM: key_gate and an LM-side pruner cannot be combined")
        if position_ids is None:
            position_ids = torch.arange(L, device=inputs_embeds.device).expand(B, -1) * attention_mask
        state = LMState(inputs_embeds, position_ids, attention_mask.bool(), image_start, image_len, query_index, labels)
        attentions, counts = [], []
        for i, layer in enumerate(self.layers):
            if pruner is not None:
                state = pruner.before_layer(i, state, self)
            counts.append(state.attention_mask.sum(1))
            state.hidden, probs = layer(state.hidden, state.position_ids, state.attention_mask, output_attentions,
                                        key_gate)
            attentions.append(probs)
        logits = self.lm_head(self.norm(state.hidden))
        return LMOutput(logits, state, attentions if output_attentions else None, torch.stack(counts, 1))
