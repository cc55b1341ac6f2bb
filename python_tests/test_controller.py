"""The budget-conditioned adaptive token controller: encoding, exact-K selection, both fusion options,
compact and masked outputs, the straight-through gradient, HF CLIP, and clear errors for bad budgets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vtp_ext import nn as vnn


def tiny_tower(depth=3, dtype=torch.float32):
    torch.manual_seed(0)
    vit = vnn.ViT(image_size=32, patch_size=4, dim=48, depth=depth, num_heads=4).to(dtype).eval()
    return vnn.VisionTower(vit)


def test_budget_encoding_matches_adallava_formula():
    b = torch.tensor([0.0, 0.2, 0.85, 1.0])
    s = 2 * np.pi * b.numpy().astype(np.float64)
    f = 10000.0 ** (-np.arange(128) / 128)
    expected = np.concatenate([np.sin(s[:, None] * f), np.cos(s[:, None] * f)], 1)
    np.testing.assert_allclose(vnn.budget_encoding(b).numpy(), expected, atol=2e-6)
    emb = vnn.BudgetEmbedding(40)
    assert emb(b).shape == (4, 40)
    assert [type(m).__name__ for m in emb.proj] == ["LayerNorm", "Linear", "GELU", "Linear"]


def test_budget_to_k():
    b = torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], dtype=torch.float64)
    assert vnn.budget_to_k(b, 576).tolist() == [1, 115, 230, 345, 460, 576]
    assert vnn.budget_to_k(torch.tensor([0.2], dtype=torch.float32).double(), 576).tolist() == [115]


OPTIONS = [(f, lg, out) for f in ("A", "B") for lg in ("per_patch", "budget_token") for out in ("compact", "masked")]


@pytest.mark.parametrize("fusion,logits,output", OPTIONS)
def test_exact_k_and_shapes(fusion, logits, output):
    tower = tiny_tower()
    ctrl = vnn.AdaptiveTokenController(tower, fusion=fusion, logits=logits, output=output)
    images = torch.rand(4, 3, 32, 32)
    budget = torch.tensor([0.0, 0.3, 0.7, 1.0])
    k = [1, 19, 44, 64]
    for training in (True, False):
        ctrl.train(training)
        red = ctrl(images, budget, seed=3)
        assert red.num_tokens.tolist() == [1 + kk for kk in k]
        T = 1 + (64 if output == "masked" else max(k))
        assert red.tokens.shape == (4, T, 48) and red.mask.shape == (4, T)
        assert red.mask[:, 0].all() and (red.indices[:, 0] == 0).all()
        # the selected tokens are the encoder's patch tokens, unchanged, in their original order
        feats, _ = ctrl.encode(images, torch.as_tensor(budget, dtype=torch.float64))
        for b in range(4):
            src = red.indices[b][red.mask[b]]
            assert torch.all(src[1:] > src[:-1])
            torch.testing.assert_close(red.tokens[b][red.mask[b]], feats[b, src])
            assert (red.tokens[b][~red.mask[b]] == 0).all()
        if not training:   # eval: the deterministic top-K of the logits
            lg = red.extras["logits"]
            for b in range(4):
                top = set((torch.topk(lg[b], k[b]).indices + 1).tolist())
                assert set(red.indices[b][red.mask[b]][1:].tolist()) == top


@pytest.mark.parametrize("fusion,logits,output", OPTIONS)
def test_straight_through_gradient_reaches_the_controller(fusion, logits, output):
    tower = tiny_tower()
    ctrl = vnn.AdaptiveTokenController(tower, fusion=fusion, logits=logits, output=output).train()
    red = ctrl(torch.rand(2, 3, 32, 32), torch.tensor([0.25, 0.6]), seed=1)
    target = torch.randn_like(red.tokens)
    (red.tokens * target).sum().backward()
    head = ctrl.head.weight if logits == "budget_token" else ctrl.score.weight
    for p in (head, ctrl.budget_embedding.proj[1].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("fusion", ["A", "B"])
def test_gated_output(fusion):
    """output="gated": every token unchanged, all valid, and a 0/1 key gate marking CLS + the same K patches
    the compact output keeps; the gate carries the straight-through gradient to the controller."""
    ctrl = vnn.AdaptiveTokenController(tiny_tower(), fusion=fusion).train()
    images, budget = torch.rand(3, 3, 32, 32), torch.tensor([0.1, 0.5, 1.0])
    gated = ctrl(images, budget, seed=5, output="gated")
    compact = ctrl(images, budget, seed=5)
    feats, _ = ctrl.encode(images, budget.double())
    torch.testing.assert_close(gated.tokens, feats)
    assert gated.mask.all() and gated.tokens.shape == (3, 65, 48)
    gate = gated.extras["key_gate"]
    assert set(gate.unique().tolist()) <= {0.0, 1.0} and gate[:, 0].eq(1).all()
    for b in range(3):
        assert torch.nonzero(gate[b]).flatten().tolist() == compact.indices[b][compact.mask[b]].tolist()
    (gate * torch.randn_like(gate)).sum().backward()
    assert ctrl.score.weight.grad is not None and ctrl.score.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="output must be"):
        ctrl(images, budget, output="soft")


def test_option_a_reuses_the_encoder():
    """With the budget token hidden from every other token's attention, the CLS and patch outputs of the
    wrapped run equal the plain encoder's (so option A runs the same encoder on N + 2 tokens)."""
    tower = tiny_tower()
    ctrl = vnn.AdaptiveTokenController(tower, fusion="A")
    images = torch.rand(2, 3, 32, 32)
    T = 66
    mask = torch.zeros(1, 1, T, T)
    mask[..., :-1, -1] = float("-inf")
    feats, z = ctrl.encode(images, torch.tensor([0.5, 0.5], dtype=torch.float64), attention_mask=mask)
    torch.testing.assert_close(feats, tower.features(images), rtol=1e-5, atol=1e-5)
    unmasked, _ = ctrl.encode(images, torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert not torch.allclose(unmasked, feats)   # ... and without the mask the budget token does take part


def test_hf_clip_vision_model():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.CLIPVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                                        num_attention_heads=4, image_size=32, patch_size=4)
    torch.manual_seed(0)
    clip = transformers.CLIPVisionModel(cfg).eval()
    tower = vnn.VisionTower(clip)             # LLaVA's penultimate layer
    images = torch.rand(2, 3, 32, 32)
    hf = clip(pixel_values=images, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(tower.features(images), hf, rtol=1e-5, atol=1e-5)
    for fusion in ("A", "B"):
        ctrl = vnn.AdaptiveTokenController(tower, fusion=fusion).train()
        red = ctrl(images, 0.5, seed=0)
        assert red.num_tokens.tolist() == [33, 33]
        red.tokens.sum().backward()
        assert ctrl.budget_embedding.proj[1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("budget,match", [
    (-0.1, r"budget must be in \[0, 1\]"), (1.5, r"budget must be in \[0, 1\]"), (float("nan"), "NaN"),
    (torch.tensor([0.5, 0.5, 0.5]), r"shape \[B\] = \[2\]"), (torch.full((2, 1), 0.5), r"shape \[B\] = \[2\]"),
    ("half", "budget must be a float or a tensor"),
])
def test_bad_budgets(budget, match):
    ctrl = vnn.AdaptiveTokenController(tiny_tower())
    with pytest.raises((ValueError, TypeError), match=match):
        ctrl(torch.rand(2, 3, 32, 32), budget)


def test_bad_options():
    with pytest.raises(ValueError, match="fusion must be one of"):
        vnn.AdaptiveTokenController(tiny_tower(), fusion="C")
    with pytest.raises(ValueError, match="select_layer must be in"):
        vnn.VisionTower(tiny_tower().model, select_layer=7)
    with pytest.raises(TypeError, match="must be a vtp_ext.nn.ViT or a transformers CLIPVisionModel"):
        vnn.VisionTower(torch.nn.Linear(2, 2))


def test_pos_embedding_interpolation():
    vit = tiny_tower().model
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        vit(torch.rand(1, 3, 16, 16))
    assert vit(torch.rand(1, 3, 16, 16), interpolate_pos_encoding=True).shape == (1, 17, 48)
    # the same size interpolates to itself
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(vit(x), vit(x, interpolate_pos_encoding=True))
