"""A tiny LLaVA-shaped VLM: the project's ViT (CLS + patches, LLaVA's penultimate layer), a 2-layer MLP
projector and TinyLM; trained with next-token loss on the answer tokens only. Any token-reduction method
(vtp_ext.methods) or the adaptive controller sits between the vision tower and the projector; LLM-side
methods prune inside TinyLM."""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional

import torch
from torch import nn

from .. import flops
from ..nn.reduction import Reduction
from ..nn.tower import VisionTower
from ..nn.vit import ViT
from .lm import LMOutput, TinyLM


@dataclasses.dataclass
class VLMConfig:
    vocab_size: int
    image_size: int = 64
    patch_size: int = 8
    vision_dim: int = 128
    vision_depth: int = 4
    vision_heads: int = 4
    select_layer: int = -2
    lm_dim: int = 128
    lm_layers: int = 4
    lm_heads: int = 4
    aux_classes: int = 0          # >0: a per-patch auxiliary head for stage-1 training (what lies under each patch)


class TinyVLM(nn.Module):
    def __init__(self, config: VLMConfig):
        super().__init__()
        c = self.config = config
        self.vit = ViT(c.image_size, c.patch_size, c.vision_dim, c.vision_depth, c.vision_heads)
        self.tower = VisionTower(self.vit, c.select_layer)
        self.projector = nn.Sequential(nn.Linear(c.vision_dim, c.lm_dim), nn.GELU(), nn.Linear(c.lm_dim, c.lm_dim))
        self.lm = TinyLM(c.vocab_size, c.lm_dim, c.lm_layers, c.lm_heads)
        self.aux_head = nn.Linear(c.vision_dim, c.aux_classes) if c.aux_classes else None
        self.freeze_unused()

    def freeze_unused(self) -> None:
        """Blocks after the selected layer and the final norm never run (LLaVA reads the penultimate layer):
        frozen, so DDP does not wait for their gradients."""
        for m in list(self.tower.blocks[self.tower.layers_run:]) + [self.vit.norm]:
            m.requires_grad_(False)

    def flops_spec(self) -> flops.VLMSpec:
        c = self.config
        return flops.VLMSpec(flops.VisionSpec(c.vision_depth, c.vision_dim, 4 * c.vision_dim, c.patch_size),
                             (c.vision_dim, c.lm_dim, c.lm_dim),
                             flops.LMSpec(c.lm_layers, c.lm_dim, self.lm.ffn, c.lm_heads, c.vocab_size))

    def full_reduction(self, images: torch.Tensor) -> Reduction:
        f = self.tower.features(images)
        B, T = f.shape[:2]
        return Reduction(f, torch.ones(B, T, dtype=torch.bool, device=f.device),
                         torch.arange(T, device=f.device).expand(B, -1),
                         torch.full((B, 1, self.tower.layers_run + 1), T, dtype=torch.int64))

    def assemble(self, image_tokens: torch.Tensor, image_mask: torch.Tensor, text: torch.Tensor, pad: int, bos: int,
                 target: Optional[torch.Tensor] = None,
                 image_gate: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """One right-padded row per text row: ``[<bos>, valid image tokens, text]``. ``image_tokens [R, T, D]``
        are projected and gathered per row; ``text [R, Lt]`` is right-padded with ``pad``; ``target [R, Lt]``
        marks the text tokens the loss predicts (labels elsewhere are -100). ``query_index`` is each row's
        last token (where the next answer token is predicted). ``image_gate [R, T]``: 0/1 per image token;
        gated-out tokens stay in the row behind the LM's key gate, and positions count only the tokens
        gated in, so the forward equals that of the row without them."""
        R, T, D = image_tokens.shape
        dev = image_tokens.device
        text_valid = text != pad
        parts = torch.cat([self.lm.embed_tokens(torch.full((R, 1), bos, device=dev)), image_tokens,
                           self.lm.embed_tokens(text)], 1)
        valid = torch.cat([torch.ones(R, 1, dtype=torch.bool, device=dev), image_mask, text_valid], 1)
        order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices   # valid tokens first, in order
        lengths = valid.sum(1)
        L = int(lengths.max())
        order = order[:, :L]
        mask = torch.arange(L, device=dev)[None] < lengths[:, None]
        out = {"inputs_embeds": torch.gather(parts, 1, order[..., None].expand(-1, -1, D)) * mask[..., None],
               "attention_mask": mask, "image_start": torch.ones(R, dtype=torch.long, device=dev),
               "image_len": image_mask.sum(1), "query_index": lengths - 1}
        if image_gate is not None:
            ones = torch.ones(R, 1, dtype=image_gate.dtype, device=dev)
            gate = torch.cat([ones, image_gate, ones.expand(-1, text.shape[1])], 1).gather(1, order)
            out["key_gate"] = torch.where(mask, gate, torch.ones_like(gate))
            seen = (mask & (gate >= 0.5)).long()   # 0/1 gates; a threshold keeps positions fixed under perturbation
            out["position_ids"] = (seen.cumsum(1) - 1).clamp(min=0) * mask
        if target is not None:
            pre = torch.full((R, 1 + T), -100, dtype=torch.long, device=dev)
            tgt = torch.cat([pre, torch.where(target & text_valid, text, -100)], 1).gather(1, order)
            labels = torch.full((R, L), -100, dtype=torch.long, device=dev)
            labels[:, :-1] = torch.where(mask[:, 1:], tgt[:, 1:], -100)   # position p predicts token p + 1
            out["labels"] = labels
        return out

    def forward(self, images: torch.Tensor, text: torch.Tensor, image_index: torch.Tensor, tokenizer,
                target: Optional[torch.Tensor] = None, reduction: Optional[Reduction] = None) -> LMOutput:
        """Images ``[I, 3, H, W]``, text rows ``[R, Lt]`` (``image_index [R]`` picks each row's image).
        ``reduction``: what a method returned for the images (default: every token)."""
        red = reduction if reduction is not None else self.full_reduction(images)
        tokens = self.projector(red.tokens)[image_index]
        gate = red.extras.get("key_gate")
        batch = self.assemble(tokens, red.mask[image_index], text, tokenizer.pad, tokenizer.bos, target,
                              None if gate is None else gate[image_index])
        pruner = red.lm_pruner.select(image_index) if red.lm_pruner is not None else None
        return self.lm(batch["inputs_embeds"], batch["attention_mask"], batch["image_start"], batch["image_len"],
                       batch["query_index"], position_ids=batch.get("position_ids"), labels=batch.get("labels"),
                       pruner=pruner, key_gate=batch.get("key_gate"))

    @staticmethod
    def loss(out: LMOutput) -> torch.Tensor:
        labels = out.state.labels
        return nn.functional.cross_entropy(out.logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)

    @staticmethod
    def first_answer_logits(out: LMOutput) -> torch.Tensor:
        """Logits of the first answer token ``[Q, V]`` (the prediction at the last question token)."""
        return out.logits[torch.arange(out.logits.shape[0]), out.state.query_index]
