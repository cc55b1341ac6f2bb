"""ToMe inside ViTs: the project's ViT and HF transformers' CLIP vision encoder (tiny random configs,
no downloads). r = 0 leaves the model's output unchanged; merges happen between attention and MLP
with keys-averaged metric and proportional attention, checked against a forward written here."""
from __future__ import annotations

import pytest
import torch

import vtp_ext
from vtp_ext import nn as vnn


def tiny_vit():
    torch.manual_seed(0)
    return vnn.ViT(image_size=32, patch_size=4, dim=48, depth=4, num_heads=4).eval()


def manual_tome_forward(model: vnn.ViT, images, r_list):
    """ToMe written out with plain torch attention around the vtp_ext ops."""
    x = model.embed(images)
    size = None
    for block, r in zip(model.blocks, r_list):
        attn = block.self_attn
        B, N, _ = x.shape
        h = block.layer_norm1(x)
        q, k, v = (p(h).view(B, N, attn.num_heads, attn.head_dim).transpose(1, 2)
                   for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        logits = q @ k.transpose(-1, -2) * attn.scale
        if size is not None:
            logits = logits + size.log().view(B, 1, 1, N)
        x = x + attn.out_proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(B, N, -1))
        if r:
            plan = vtp_ext.bipartite_matching(k.mean(1), r, class_token=True)
            x, size = vtp_ext.merge(x, plan, size)
        x = x + block.mlp(block.layer_norm2(x))
    return model.norm(x)


def test_r_zero_is_the_unpatched_model():
    model = tiny_vit()
    images = torch.rand(3, 3, 32, 32)
    expected = model(images)
    vnn.apply_tome(model, 0)
    torch.testing.assert_close(model(images), expected, rtol=1e-5, atol=1e-5)
    vnn.remove_tome(model)
    assert torch.equal(model(images), expected)


def test_merging_matches_the_written_out_forward():
    model = tiny_vit()
    images = torch.rand(2, 3, 32, 32)
    r_list = [8, 0, 6, 4]
    state = vnn.apply_tome(model, r_list, trace_source=True)
    got = model(images)
    assert got.shape == (2, 65 - sum(r_list), 48)
    torch.testing.assert_close(got, manual_tome_forward(model, images, r_list), rtol=1e-5, atol=1e-5)
    # sizes count patches; source tracking agrees with them
    assert torch.allclose(state.size.sum(1).squeeze(-1), torch.full((2,), 65.0))
    src = vtp_ext.merge_source(state.plans)
    counts = torch.stack([torch.bincount(s, minlength=got.shape[1]) for s in src]).float()
    torch.testing.assert_close(counts, state.size.squeeze(-1))


def test_training_gradients_flow():
    model = tiny_vit().train()
    vnn.apply_tome(model, 5)
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_schedules():
    assert vnn.parse_r(4, 3) == [3, 3, 3, 3]
    assert vnn.parse_r(4, [5, 2]) == [5, 2, 0, 0]
    assert vnn.parse_r(5, (8, -1)) == [16, 12, 8, 4, 0]  # decreasing: lo = 16, hi = 0
    with pytest.raises(ValueError):
        vnn.parse_r(2, [1, 2, 3])
    for n, layers, k in [(577, 24, 115), (577, 24, 288), (197, 12, 99), (65, 4, 17), (577, 2, 145)]:
        sched = vnn.r_schedule_for_tokens(n, layers, k)
        assert len(sched) == layers and n - sum(sched) == k
        t = n
        for r in sched:
            assert 0 <= r <= (t - 1) // 2
            t -= r
    with pytest.raises(ValueError, match="at best"):
        vnn.r_schedule_for_tokens(577, 2, 100)
    with pytest.raises(ValueError, match="target_tokens must be in"):
        vnn.r_schedule_for_tokens(65, 4, 0)


def test_schedule_reaches_the_budget_in_the_model():
    model = tiny_vit()
    for k in (9, 17, 33, 65):
        vnn.apply_tome(model, vnn.r_schedule_for_tokens(65, 4, k))
        assert model(torch.rand(1, 3, 32, 32)).shape[1] == k


def test_no_blocks_is_an_error():
    with pytest.raises(ValueError, match="found no ViT blocks"):
        vnn.apply_tome(torch.nn.Linear(3, 3), 2)


def test_hf_clip_vision_model():
    transformers = pytest.importorskip("transformers", reason="transformers is an optional dependency")
    cfg = transformers.CLIPVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                                        num_attention_heads=4, image_size=32, patch_size=4)
    torch.manual_seed(0)
    clip = transformers.CLIPVisionModel(cfg).eval()
    images = torch.rand(2, 3, 32, 32)
    expected = clip(pixel_values=images, output_hidden_states=True)
    state = vnn.apply_tome(clip, 0)
    got = clip(pixel_values=images, output_hidden_states=True)
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.pooler_output, expected.pooler_output, rtol=1e-5, atol=1e-5)
    state.r = vnn.r_schedule_for_tokens(65, 3, 20)
    out = clip(pixel_values=images, output_hidden_states=True)
    assert [h.shape[1] for h in out.hidden_states] == [65, 50, 35, 20]
    assert out.pooler_output.shape == (2, 48)  # the class token survived and stayed first
    vnn.remove_tome(clip)
    torch.testing.assert_close(clip(pixel_values=images).last_hidden_state, expected.last_hidden_state)
