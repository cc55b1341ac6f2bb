"""Analytic FLOPs (2 per multiply-add; matrix products only, as ``torch.utils.flop_counter`` counts) of a
LLaVA-shaped model: vision encoder + 2-layer MLP projector + decoder LM, given the tokens every layer
sees. Methods that change counts inside a model (ToMe in the ViT; FastV and PyramidDrop in the LM) are
counted layer by layer from :class:`vtp_ext.nn.Reduction`."""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Union

import torch


@dataclasses.dataclass(frozen=True)
class VisionSpec:
    layers: int
    dim: int
    ffn: int
    patch_size: int
    channels: int = 3


@dataclasses.dataclass(frozen=True)
class LMSpec:
    layers: int
    dim: int
    ffn: int
    heads: int
    vocab: int
    gated: bool = True        # SwiGLU: gate, up and down projections


@dataclasses.dataclass(frozen=True)
class VLMSpec:
    vision: VisionSpec
    projector: tuple          # (in, hidden, out) of the 2-layer MLP
    lm: LMSpec


PRESETS: Dict[str, VLMSpec] = {
    # CLIP ViT-L/14-336 (24 layers, 1024, MLP 4096), MLP projector 1024 -> 4096 -> 4096, LLaMA-7B/Vicuna-7B.
    "llava-1.5-7b": VLMSpec(VisionSpec(24, 1024, 4096, 14), (1024, 4096, 4096), LMSpec(32, 4096, 11008, 32, 32000)),
    # The project's tiny model (vtp_ext.models): ViT 64x64 px / patch 4, dim 128, depth 4; LM d=256, 4 layers.
    "tiny": VLMSpec(VisionSpec(4, 128, 512, 4), (128, 256, 256), LMSpec(4, 256, 672, 4, 64)),
}


def _spec(spec: Union[str, VLMSpec]) -> VLMSpec:
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise KeyError(f"vtp_ext.flops: unknown preset {spec!r}; presets: {', '.join(PRESETS)}")
        return PRESETS[spec]
    return spec


def vision_layer_flops(spec: VisionSpec, n: torch.Tensor, n_mlp: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One pre-norm ViT block: q, k, v, out projections, Q K^T and A V on ``n`` tokens, the two MLP matrices
    on ``n_mlp`` (fewer when ToMe merges between attention and MLP; default ``n``)."""
    n = n.double()
    n_mlp = n if n_mlp is None else n_mlp.double()
    return 2 * n * 4 * spec.dim ** 2 + 4 * n * n * spec.dim + 2 * n_mlp * 2 * spec.dim * spec.ffn


def lm_layer_flops(spec: LMSpec, n: torch.Tensor) -> torch.Tensor:
    """One decoder layer on ``n`` tokens (attention over all n keys, as the dense kernels compute it)."""
    n = n.double()
    return 2 * n * (4 * spec.dim ** 2 + (3 if spec.gated else 2) * spec.dim * spec.ffn) + 4 * n * n * spec.dim


def vision_flops(spec: Union[str, VLMSpec], vision_tokens: torch.Tensor) -> torch.Tensor:
    """``vision_tokens [B, passes, layers + 1]`` (tokens entering each block, then out of the last, per encoder
    pass; see :class:`vtp_ext.nn.Reduction`) -> ``[B]``; each pass also pays the patch embedding."""
    v = _spec(spec).vision
    blocks = vision_layer_flops(v, vision_tokens[..., :-1], vision_tokens[..., 1:]).sum((1, 2))
    patches = (vision_tokens[..., 0].double() - 1).clamp(min=0).sum(1)
    return blocks + 2 * patches * v.channels * v.patch_size ** 2 * v.dim


def projector_flops(spec: Union[str, VLMSpec], image_tokens: torch.Tensor) -> torch.Tensor:
    a, h, o = _spec(spec).projector
    return 2 * image_tokens.double() * (a * h + h * o)


def lm_flops(spec: Union[str, VLMSpec], image_tokens_per_layer: torch.Tensor, text_tokens: Union[int, torch.Tensor],
             lm_head_tokens: Union[int, torch.Tensor] = 1) -> torch.Tensor:
    """``image_tokens_per_layer [B, layers]`` + ``text_tokens`` in every layer; the LM head on
    ``lm_head_tokens`` positions (1 = next-token prediction at the end of the prompt)."""
    lm = _spec(spec).lm
    if image_tokens_per_layer.shape[-1] != lm.layers:
        raise ValueError(f"vtp_ext.flops: image_tokens_per_layer has {image_tokens_per_layer.shape[-1]} layers, the LM {lm.layers}")
    n = image_tokens_per_layer.double() + torch.as_tensor(text_tokens, dtype=torch.float64).reshape(-1, 1)
    head = 2 * torch.as_tensor(lm_head_tokens, dtype=torch.float64) * lm.dim * lm.vocab
    return lm_layer_flops(lm, n).sum(1) + head


def vlm_flops(spec: Union[str, VLMSpec], reduction, text_tokens: Union[int, torch.Tensor],
              lm_head_tokens: Union[int, torch.Tensor] = 1) -> torch.Tensor:
    """Per-sample FLOPs ``[B]`` of one prefill with the tokens of ``reduction`` (a
    :class:`vtp_ext.nn.Reduction`): encoder passes + projector + LM."""
    s = _spec(spec)
    n_img = reduction.num_tokens.cpu()
    return (vision_flops(s, reduction.vision_tokens.cpu()) + projector_flops(s, n_img)
            + lm_flops(s, reduction.lm_image_tokens(s.lm.layers).cpu(), text_tokens, lm_head_tokens))


def full_vlm_flops(spec: Union[str, VLMSpec], num_patches: int, text_tokens: int, vision_layers: int) -> float:
    """FLOPs with every token (CLS + ``num_patches``) and no reduction, for ratios."""
    s = _spec(spec)
    n = torch.tensor([[[num_patches + 1] * (vision_layers + 1)]])
    return float(vision_flops(s, n) + projector_flops(s, torch.tensor([num_patches + 1]))
                 + lm_flops(s, torch.full((1, s.lm.layers), num_patches + 1), text_tokens))
