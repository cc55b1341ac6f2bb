"""vtp_ext.flops against torch.utils.flop_counter.FlopCounterMode on a tiny vision tower + projector + LM
(the math attention backend, so attention's matrix products are counted too)."""
from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vtp_ext import flops, methods
from vtp_ext import nn as vnn
from vtp_ext.models import TinyLM

DIM, DEPTH, LM_LAYERS, VOCAB = 48, 3, 4, 50
SPEC = flops.VLMSpec(flops.VisionSpec(DEPTH, DIM, 4 * DIM, 4), (DIM, 64, 64),
                     flops.LMSpec(LM_LAYERS, 64, 160, 4, VOCAB))


def model():
    torch.manual_seed(0)
    tower = vnn.VisionTower(vnn.ViT(image_size=32, patch_size=4, dim=DIM, depth=DEPTH, num_heads=4).eval())
    projector = torch.nn.Sequential(torch.nn.Linear(DIM, 64), torch.nn.GELU(), torch.nn.Linear(64, 64))
    return tower, projector, TinyLM(VOCAB, dim=64, layers=LM_LAYERS, heads=4, ffn=160).eval()


def counted(fn):
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = fn()
    return counter.get_total_flops(), out


@pytest.mark.parametrize("name,budget", [("full", 1.0), ("saliency", 0.3), ("tome", 0.4), ("pool", 0.5),
                                         ("pyramid", 0.5), ("prumerge+", 0.3)])
def test_vlm_flops_match_the_counter(name, budget):
    tower, projector, lm = model()
    images, text = torch.rand(1, 3, 32, 32), torch.randn(1, 7, 64)
    method = methods.get(name).eval()

    def run():
        red = method(tower, images, budget)
        emb = torch.cat([text[:, :2], projector(red.tokens), text[:, 2:]], 1)
        L = emb.shape[1]
        lm(emb, torch.ones(1, L, dtype=torch.bool), torch.tensor([2]), red.num_tokens, torch.tensor([L - 1]))
        return red, L

    total, (red, L) = counted(run)
    if name == "prumerge+":   # its importance and neighbour search are extra products the LLaVA model never runs
        f = tower.features(images)
        n, c, kept = f.shape[1], DIM, int(red.num_tokens) - 2
        # q_proj and k_proj of the last block, the CLS row q.k^T, the kept tokens' similarities to every patch
        extra = 2 * (2 * n * c * c) + 2 * n * c + 2 * kept * (n - 1) * c
        total -= extra
    assert total == pytest.approx(float(flops.vlm_flops(SPEC, red, text_tokens=7, lm_head_tokens=L)[0]), rel=1e-12)


def test_fastv_layerwise_flops():
    tower, projector, lm = model()
    images, text = torch.rand(1, 3, 32, 32), torch.randn(1, 7, 64)
    red = methods.get("fastv", k=2)(tower, images, 0.25)
    feats = projector(red.tokens).detach()
    emb = torch.cat([text[:, :2], feats, text[:, 2:]], 1)
    L = emb.shape[1]
    total, out = counted(lambda: lm(emb, torch.ones(1, L, dtype=torch.bool), torch.tensor([2]), red.num_tokens,
                                    torch.tensor([L - 1]), pruner=red.lm_pruner))
    # FastV reads layer 1's attention row: q/k projections of that layer plus one query row against L keys
    overhead = 2 * L * 64 * 64 * 2 + 2 * L * 64
    L_final = int(out.state.attention_mask.sum())
    expected = flops.lm_flops(SPEC, red.lm_image_tokens(LM_LAYERS), 7, lm_head_tokens=L_final)
    assert total - overhead == pytest.approx(float(expected[0]), rel=1e-12)
    counts = red.lm_image_tokens(LM_LAYERS)[0].tolist()
    assert counts == [65, 65, 17, 17]


def test_presets_and_ratios():
    llava = flops.PRESETS["llava-1.5-7b"]
    assert (llava.vision.layers, llava.vision.dim, llava.lm.layers, llava.lm.dim, llava.lm.ffn) == (24, 1024, 32, 4096, 11008)
    full = flops.full_vlm_flops("llava-1.5-7b", 576, text_tokens=64, vision_layers=23)
    # a 7B LM forward over ~640 tokens is ~2 * 6.7e9 * 640 ~ 8.6e12 FLOPs; the ViT-L adds ~0.35e12
    assert 8e12 < full < 1.0e13
    half = flops.lm_flops("llava-1.5-7b", torch.full((1, 32), 289), 64)
    assert float(half[0]) < 0.6 * full
    with pytest.raises(KeyError, match="unknown preset"):
        flops.full_vlm_flops("nope", 1, 1, 1)
    with pytest.raises(ValueError, match="layers"):
        flops.lm_flops("tiny", torch.ones(1, 3), 5)
