"""A small CLIP-style vision transformer ([CLS] + patch tokens, pre-norm blocks). Its blocks use the
same submodule names as HF ``CLIPEncoderLayer`` (layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2,
mlp), so the ToMe patch (vtp_ext.nn.tome) serves both."""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"vtp_ext.nn.ViT: dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None):
        B, N, _ = hidden_states.shape
        split = lambda t: t.view(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q_proj(hidden_states)), split(self.k_proj(hidden_states)), split(self.v_proj(hidden_states))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, scale=self.scale)
        return self.out_proj(out.transpose(1, 2).reshape(B, N, -1)), None


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, num_heads)
        self.layer_norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = hidden_states + self.self_attn(self.layer_norm1(hidden_states), attention_mask)[0]
        return x + self.mlp(self.layer_norm2(x))


class ViT(nn.Module):
    """``ViT(image_size=32, patch_size=4, dim=64, depth=4, num_heads=4)``: images ``[B, C, H, W]`` ->
    tokens ``[B, 1 + (H/p)(W/p), dim]`` (CLS first). ``output_hidden_states=True`` also returns the input
    of every block and the last output (LLaVA reads the penultimate layer)."""

    def __init__(self, image_size: int = 32, patch_size: int = 4, dim: int = 64, depth: int = 4, num_heads: int = 4,
                 mlp_ratio: float = 4.0, channels: int = 3):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"vtp_ext.nn.ViT: image_size {image_size} must be a multiple of patch_size {patch_size}")
        self.image_size, self.patch_size = image_size, patch_size
        self.num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(channels, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + self.num_patches, dim) * 0.02)
        self.pre_norm = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def embed_tokens(self, images: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """CLS + patch embeddings with positions, before the pre-norm (where a budget token is appended)."""
        patches = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(images.shape[0], -1, -1), patches], 1)
        return x + self._positions(images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size,
                                   interpolate_pos_encoding)

    def _positions(self, gh: int, gw: int, interpolate: bool) -> torch.Tensor:
        g = self.image_size // self.patch_size
        if (gh, gw) == (g, g):
            return self.pos_embed
        if not interpolate:
            raise ValueError(f"vtp_ext.nn.ViT: images give a {gh}x{gw} patch grid, the model has {g}x{g}; "
                             "pass interpolate_pos_encoding=True to resize the position embeddings")
        # Bicubic resize of the patch-position grid, as HF CLIP's interpolate_pos_encoding does.
        grid = self.pos_embed[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
        grid = nn.functional.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
        return torch.cat([self.pos_embed[:, :1], grid.flatten(2).transpose(1, 2)], 1)

    def embed(self, images: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        return self.pre_norm(self.embed_tokens(images, interpolate_pos_encoding))

    def forward(self, images: torch.Tensor, output_hidden_states: bool = False, interpolate_pos_encoding: bool = False
                ) -> Union[torch.Tensor, Tuple[torch.Tensor, List[torch.Tensor]]]:
        x = self.embed(images, interpolate_pos_encoding)
        hidden = [x]
        for block in self.blocks:
            x = block(x)
            hidden.append(x)
        x = self.norm(x)
        return (x, hidden) if output_hidden_states else x
