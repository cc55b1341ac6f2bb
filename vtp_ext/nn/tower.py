"""One view of a vision encoder for the token-reduction methods: the project's ViT or HF ``transformers``
``CLIPVisionModel``, run block by block so a method can append a token (the budget token), mask
attention, stop at the layer LLaVA reads (the penultimate), or read the last block's queries and keys."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .vit import ViT


class VisionTower(nn.Module):
    """``VisionTower(model, select_layer=-2)``: ``model`` is a :class:`vtp_ext.nn.ViT` or a HF
    ``CLIPVisionModel``. ``select_layer`` indexes the hidden states as HF's ``output_hidden_states`` does
    (0 = embeddings after the pre-norm, -1 = the last block's output, -2 = LLaVA's penultimate layer);
    :meth:`features` returns that layer, CLS first: ``[B, 1 + N, C]``."""

    def __init__(self, model: nn.Module, select_layer: int = -2):
        super().__init__()
        self.model = model
        if isinstance(model, ViT):
            self.blocks, self.pre_norm = model.blocks, model.pre_norm
            self.dim, self.grid = model.pos_embed.shape[-1], model.image_size // model.patch_size
            self.image_size = model.image_size
        elif hasattr(model, "vision_model") or hasattr(model, "embeddings"):  # HF CLIPVisionModel (5.x layouts)
            vm = getattr(model, "vision_model", model)
            self.blocks, self.pre_norm = vm.encoder.layers, vm.pre_layrnorm
            cfg = model.config
            self.dim, self.grid, self.image_size = cfg.hidden_size, cfg.image_size // cfg.patch_size, cfg.image_size
            self._hf_embeddings = vm.embeddings
        else:
            raise TypeError(f"vtp_ext.nn.VisionTower: model must be a vtp_ext.nn.ViT or a transformers CLIPVisionModel, "
                            f"got {type(model).__name__}")
        depth = len(self.blocks)
        if not -(depth + 1) <= select_layer <= depth:
            raise ValueError(f"vtp_ext.nn.VisionTower: select_layer must be in [{-(depth + 1)}, {depth}] for "
                             f"{depth} blocks, got {select_layer}")
        self.select_layer = select_layer
        self.layers_run = select_layer % (depth + 1)  # blocks run to reach the selected hidden state

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def embed_tokens(self, images: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """CLS + patch embeddings with positions, before the pre-norm: ``[B, 1 + N, C]``."""
        if isinstance(self.model, ViT):
            return self.model.embed_tokens(images, interpolate_pos_encoding)
        return self._hf_embeddings(images, interpolate_pos_encoding=interpolate_pos_encoding)

    def encode(self, tokens: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Pre-norm + the blocks up to ``select_layer`` on any token sequence (``attention_mask``: additive
        ``[B, 1, T, T]`` or None)."""
        x = self.pre_norm(tokens)
        for block in self.blocks[:self.layers_run]:
            x = block(x, attention_mask)
        return x

    def features(self, images: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        return self.encode(self.embed_tokens(images, interpolate_pos_encoding))

    def last_block_qk(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw ``q_proj`` / ``k_proj`` outputs (bias included, no scaling) of the block that follows the
        selected layer, computed from ``features`` (PruMerge reads these from the last block, whose input is
        the penultimate layer)."""
        block = self.blocks[min(self.layers_run, len(self.blocks) - 1)]
        h = block.layer_norm1(features)
        return block.self_attn.q_proj(h), block.self_attn.k_proj(h)
