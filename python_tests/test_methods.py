"""vtp_ext.methods: one call shape for every method; batched PruMerge/PruMerge+ and FastV equal per-sample
references written here from the papers' reference semantics; PyramidDrop's staged counts; difficulty."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vtp_ext import methods
from vtp_ext import nn as vnn
from vtp_ext.methods.difficulty import (DifficultyClassifier, apply_query_rules, difficulty_labels,
                                        difficulty_to_budget, fit_classifier, two_pass)
from vtp_ext.methods.vision import level_budgets
from vtp_ext.models import TinyLM

N = 64


def tiny_tower(dtype=torch.float32):
    torch.manual_seed(0)
    return vnn.VisionTower(vnn.ViT(image_size=32, patch_size=4, dim=48, depth=3, num_heads=4).to(dtype).eval())


def build(name, tower):
    config = {"adaptive": dict(tower=tower), "difficulty": dict(classifier=DifficultyClassifier(48)),
              "pyramiddrop": dict(num_lm_layers=4), "random": dict(seed=0)}.get(name, {})
    return methods.get(name, **config).eval()


def test_registry():
    assert methods.available() == sorted(["full", "random", "pool", "saliency", "pyramid", "tome", "prumerge",
                                          "prumerge+", "fastv", "pyramiddrop", "adaptive", "difficulty"])
    with pytest.raises(KeyError, match="unknown method 'nope'"):
        methods.get("nope")


EXACT_K = {"random", "saliency", "pyramid", "prumerge", "prumerge+", "adaptive", "tome"}


@pytest.mark.parametrize("name", sorted(set(methods.available())))
@pytest.mark.parametrize("budget", [0.0, 1.0, [0.1, 0.5, 1.0]], ids=["K=1", "K=N", "mixed"])
def test_shapes_and_masks(name, budget):
    tower = tiny_tower()
    images, q = torch.rand(3, 3, 32, 32), torch.randn(3, 4, 48)
    b = torch.tensor(budget if isinstance(budget, list) else [budget] * 3)
    k = vnn.budget_to_k(b.double(), N)
    with torch.no_grad():
        red = build(name, tower)(tower, images, b, question=q, question_text=["a", "b", "c"])
    B, T, C = red.tokens.shape
    assert (B, C) == (3, 48) and red.mask.shape == (B, T) and red.indices.shape == (B, T)
    assert red.mask[:, 0].all() and (red.indices[:, 0] == 0).all()
    n = red.num_tokens
    assert torch.equal(red.mask, torch.arange(T)[None] < n[:, None]), "valid tokens first, then padding"
    assert (red.tokens[~red.mask] == 0).all()
    if name in EXACT_K and name != "tome":
        assert n.tolist() == (k + 1).tolist()
    if name == "tome":   # as close as ToMe's per-layer clamp allows
        assert (n >= k + 1).all() and (n[k >= 16] == k[k >= 16] + 1).all()
    if name in ("full", "fastv", "pyramiddrop"):
        assert n.tolist() == [N + 1] * 3
    if name == "pool":
        g = torch.round(torch.sqrt(k.double())).long()
        assert n.tolist() == (g * g + 1).tolist()
    if name in ("saliency", "random", "full"):   # selected tokens are the encoder's own, in order
        f = tower.features(images)
        for row in range(3):
            src = red.indices[row][red.mask[row]]
            torch.testing.assert_close(red.tokens[row][red.mask[row]], f[row, src])
    assert red.vision_tokens.shape[0] == 3 and (red.lm_image_tokens(4) >= 1).all()


def test_saliency_keeps_the_highest_variance_patches():
    tower = tiny_tower()
    images = torch.rand(2, 3, 32, 32)
    red = methods.get("saliency")(tower, images, 0.25)
    f = tower.features(images)[:, 1:].detach()
    for b in range(2):
        top = torch.topk(f[b].var(-1, unbiased=False), 16).indices.sort().values + 1
        assert red.indices[b, 1:17].tolist() == top.tolist()


def test_level_budgets():
    k = torch.tensor([1, 10, 40, 64])
    out = level_budgets(k, [64, 16, 4], [1.0, 2.0, 4.0])
    assert out.sum(1).tolist() == k.tolist()
    assert (out <= torch.tensor([64, 16, 4])).all()
    assert out[2].tolist() == [20, 16, 4]  # coarse-heavy: the coarse levels fill first, the rest falls to the finest


# ---- PruMerge / PruMerge+: the reference algorithm (B = 1, Python loops), from algorithms.md section 3 ----

def prumerge_reference(feat, q, k, plus):
    """feat [N, C] patches; q, k [N + 1, C] raw projections of the last block (CLS first)."""
    n, c = feat.shape
    a = torch.softmax(q @ k.T / c ** 0.5, -1)[0, 1:]
    v = a.float().numpy()
    q1, q3 = np.percentile(v, 25), np.percentile(v, 75)
    ratio = float((v > q3 + 1.5 * (q3 - q1)).sum()) / len(v)
    idx = torch.topk(a, int(n * ratio)).indices.tolist()
    if plus:
        # the reference divides by zero when no outlier exists and steps by 0 when ratio > 1/3; vtp_ext
        # documents ratio >= 1/N and stride >= 1 for those cases
        step = int(1 / max(ratio, 1 / n))
        idx += [s for s in range(0, n - 1, max(int(step / 3), 1)) if s not in idx]
    pruned = sorted(set(range(n)) - set(idx))
    kn = torch.nn.functional.normalize(k[1:], dim=-1)
    out = []
    for i in idx:
        cands = [j for j in idx if j != i] + pruned
        top = torch.topk(kn[i] @ kn[cands].T, 32).indices.tolist()
        out.append(feat[i] + sum(a[cands[t]] * feat[cands[t]] for t in top))
    out.append(sum(a[j] * feat[j] for j in pruned))
    return torch.stack(out)


@pytest.mark.parametrize("plus", [False, True], ids=["prumerge", "prumerge+"])
def test_prumerge_batched_equals_reference(plus):
    tower = tiny_tower(torch.float64)
    images = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    method = methods.get("prumerge+" if plus else "prumerge", count="iqr")
    with torch.no_grad():
        red = method(tower, images, 1.0)
        f = tower.features(images)
        q, k = tower.last_block_qk(f)
    for b in range(4):
        ref = prumerge_reference(f[b, 1:], q[b], k[b], plus)
        got = red.tokens[b][red.mask[b]][1:]        # drop CLS
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_prumerge_budget_mode_counts():
    tower = tiny_tower()
    with torch.no_grad():
        for name in ("prumerge", "prumerge+"):
            red = methods.get(name)(tower, torch.rand(3, 3, 32, 32), torch.tensor([0.1, 0.5, 1.0]))
            assert red.num_tokens.tolist() == [7, 33, 65]
            assert (red.indices[torch.arange(3), red.num_tokens - 1] == -1).all()   # the extra token is last


# ---- FastV: per-sample reference (batch 1, full attention matrices), from algorithms.md section 4 ----

def lm_inputs(B=3, D=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    starts, img_len, text_after = [2, 4, 3], [20, 20, 16], [5, 3, 7]
    lengths = [s + n + t for s, n, t in zip(starts, img_len, text_after)]
    L = max(lengths)
    emb = torch.randn(B, L, D, generator=g, dtype=torch.float64)
    mask = torch.arange(L)[None] < torch.tensor(lengths)[:, None]
    return emb * mask[..., None], mask, torch.tensor(starts), torch.tensor(img_len), torch.tensor(lengths) - 1


def fastv_reference(lm, emb, start, n_img, q, K, keep):
    full = lm(emb, torch.ones(1, emb.shape[1], dtype=torch.bool), torch.tensor([start]), torch.tensor([n_img]),
              torch.tensor([q]), output_attentions=True)
    scores = full.attentions[K - 1][0].mean(0)[q, start:start + n_img]
    top = (torch.topk(scores, keep).indices + start).sort().values.tolist()
    kept = list(range(start)) + top + list(range(start + n_img, emb.shape[1]))
    h, pos = emb, torch.arange(emb.shape[1])[None]
    ones = torch.ones(1, emb.shape[1], dtype=torch.bool)
    for layer in lm.layers[:K]:
        h, _ = layer(h, pos, ones)
    h, pos = h[:, kept], torch.tensor(kept)[None]
    for layer in lm.layers[K:]:
        h, _ = layer(h, pos, torch.ones(1, len(kept), dtype=torch.bool))
    return lm.lm_head(lm.norm(h))[0]


@pytest.mark.parametrize("K", [1, 2])
def test_fastv_batched_equals_reference(K):
    torch.manual_seed(0)
    lm = TinyLM(50, dim=32, layers=4, heads=4).double().eval()
    emb, mask, start, n_img, q = lm_inputs()
    keep = torch.tensor([5, 12, 1])
    from vtp_ext.methods.lm import FastVPruner
    with torch.no_grad():
        out = lm(emb, mask, start, n_img, q, pruner=FastVPruner(K, keep))
        for b in range(3):
            L_b = int(mask[b].sum())
            ref = fastv_reference(lm, emb[b:b + 1, :L_b], int(start[b]), int(n_img[b]), int(q[b]), K, int(keep[b]))
            assert int(out.state.attention_mask[b].sum()) == ref.shape[0]
            torch.testing.assert_close(out.logits[b, :ref.shape[0]], ref, rtol=1e-10, atol=1e-10)
            # positions keep FastV's gaps
            assert int(out.state.position_ids[b, int(start[b]) + int(keep[b])]) == int(start[b] + n_img[b])
    expected = mask.sum(1)[:, None] - torch.stack([torch.zeros(3, dtype=torch.long) if i < K else n_img - keep
                                                   for i in range(4)], 1)
    assert torch.equal(out.tokens_per_layer, expected)


def test_fastv_and_pyramiddrop_counts_match_what_the_lm_runs():
    torch.manual_seed(0)
    tower = tiny_tower()
    lm = TinyLM(50, dim=48, layers=4, heads=4).eval()
    images = torch.rand(2, 3, 32, 32)
    text = torch.randn(2, 6, 48)
    for name, config in (("fastv", dict(k=2)), ("pyramiddrop", dict(num_lm_layers=4)),
                         ("pyramiddrop", dict(num_lm_layers=4, lam=0.5))):
        with torch.no_grad():
            red = methods.get(name, **config)(tower, images, torch.tensor([0.2, 0.6]))
            emb = torch.cat([text[:, :2], red.tokens, text[:, 2:]], 1)
            L = emb.shape[1]
            out = lm(emb, torch.ones(2, L, dtype=torch.bool), torch.tensor([2, 2]), red.num_tokens, torch.tensor([L - 1] * 2),
                     pruner=red.lm_pruner)
        assert torch.equal(out.tokens_per_layer, red.lm_image_tokens(4) + 6), name
        if name == "pyramiddrop":   # positions renumbered after every drop
            assert torch.equal(out.state.position_ids, torch.arange(out.state.position_ids.shape[1]).expand(2, -1)
                               * out.state.attention_mask)
            if "lam" not in config:  # lambda chosen so the layer-averaged image tokens match the budget
                # (b = 0.2 is out of reach on 4 layers: layer 0 sees all 65, the rest >= 1 -> 17 at best)
                avg = red.lm_image_tokens(4).double().mean(1)
                assert avg[0] == 17 and abs(avg[1] - 39) < 2


# ---- difficulty ----

def test_difficulty_mappings_and_rules():
    probs = torch.tensor([[0.8, 0.15, 0.05], [0.1, 0.2, 0.7], [0.5, 0.3, 0.2], [0.6, 0.3, 0.1]])
    levels = [0.25, 0.5, 0.75]
    assert difficulty_to_budget(probs, levels, confidence=None).tolist() == [0.25, 0.75, 0.25, 0.25]
    # low confidence (top prob < 0.7) bumps one level up
    assert difficulty_to_budget(probs, levels, confidence=0.7).tolist() == [0.25, 0.75, 0.5, 0.5]
    torch.testing.assert_close(difficulty_to_budget(probs, levels, "continuous"), probs.double() @ torch.tensor(levels).double())
    b = apply_query_rules(torch.tensor([0.2, 0.2, 0.9, 0.5]), ["Read the sign", "How many cubes?", "What color is it?", "Where?"])
    torch.testing.assert_close(b, torch.tensor([400 / 576, 350 / 576, 200 / 576, 0.5]))
    correct = torch.tensor([[1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 0]], dtype=torch.bool)
    assert difficulty_labels(correct).tolist() == [0, 1, 2, 2]


def test_difficulty_classifier_learns_and_drives_the_budget():
    torch.manual_seed(0)
    images = torch.rand(60, 3, 32, 32)
    labels = torch.arange(60) % 3
    question = torch.nn.functional.one_hot(labels, 8).float()[:, None].expand(-1, 2, -1) + 0.01 * torch.randn(60, 2, 8)
    clf = DifficultyClassifier(8)
    losses = fit_classifier(clf, images, question, labels, epochs=30, lr=1e-2)
    assert losses[-1] < 0.1 < losses[0]
    tower = tiny_tower()
    method = methods.get("difficulty", classifier=clf, inner="saliency", levels=(0.1, 0.5, 1.0), rules=False)
    with torch.no_grad():
        red = method(tower, images[:3], None, question=question[:3])
    assert red.num_tokens.tolist() == [7, 33, 65]
    assert red.extras["budget"].tolist() == [0.1, 0.5, 1.0]


def test_two_pass():
    conf = torch.tensor([0.9, 0.3, 0.8, 0.1])

    def answer(budget, rows):
        return (budget * 10).long() + rows * 100, conf[rows] if budget[0] < 0.5 else torch.ones(len(rows))

    answers, used, again = two_pass(answer, 4, low=0.2, high=1.0, threshold=0.5)
    assert again.tolist() == [False, True, False, True]
    assert answers.tolist() == [2, 110, 202, 310] and used.tolist() == [0.2, 1.0, 0.2, 1.0]


@pytest.mark.parametrize("budget", [-0.5, 2.0, float("nan"), torch.ones(5)])
def test_methods_reject_bad_budgets(budget):
    tower = tiny_tower()
    for name in ("saliency", "tome", "fastv", "prumerge"):
        with pytest.raises(ValueError, match="budget"):
            methods.get(name)(tower, torch.rand(2, 3, 32, 32), budget)


def test_pyramid_ptp_uses_the_question():
    tower = tiny_tower()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        f = tower.features(images)
        plain = methods.get("pyramid")(tower, images, 0.3)
        # a question equal to some patch features pulls those patches in
        target = torch.tensor([5, 40])
        q = f[torch.arange(2), 1 + target][:, None]
        ptp = methods.get("pyramid", ptp=True, alpha=0.0, beta=0.0, gamma=1.0)(tower, images, 0.3, question=q)
    assert plain.num_tokens.tolist() == ptp.num_tokens.tolist() == [20, 20]
    for b in range(2):
        assert int(target[b]) + 1 in ptp.indices[b].tolist()
    assert torch.equal(ptp.extras["level_budgets"], plain.extras["level_budgets"])
    with pytest.raises(ValueError, match="ptp=True needs the question"):
        methods.get("pyramid", ptp=True)(tower, images, 0.3)


def test_difficulty_sets_pyramid_depth():
    torch.manual_seed(0)

    class Fixed(torch.nn.Module):   # a classifier that says easy, hard
        def forward(self, images, question):
            return torch.tensor([[9.0, 0.0, 0.0], [0.0, 0.0, 9.0]])

    tower = tiny_tower()
    method = methods.get("difficulty", classifier=Fixed(), inner="pyramid", levels=(0.25, 0.5, 0.75), rules=False,
                         depths=(3, 2, 1))
    with torch.no_grad():
        red = method(tower, torch.rand(2, 3, 32, 32), None, question=torch.randn(2, 1, 48))
    assert red.num_tokens.tolist() == [17, 49]
    assert red.vision_tokens[0, :, 0].tolist() == [65, 17, 5] and red.vision_tokens[1, :, 0].tolist() == [65, 0, 0]
    assert method.inner.levels == 3   # restored
