"""vtp_ext.integrations.hf on a tiny random LLaVA (CLIP 32 px / patch 4 -> 64 patches, LLaMA 2 layers), saved
with save_pretrained and loaded back offline. References are built here by hand: the method run on a
VisionTower, the projector, the LLaMA layers called one by one, and FastV / PyramidDrop written out as in
algorithms.md sections 4 and 5 (batch 1, no padding, their own attention-row and RoPE code)."""
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is an optional dependency")

import vtp_ext.methods as methods  # noqa: E402
from vtp_ext.integrations import hf  # noqa: E402
from vtp_ext.nn import VisionTower  # noqa: E402

IMG = 99          # image_token_index
PAD = 0
N = 64            # patches
# text before / after the image, per row
PROMPTS = [([1, 5, 6], [7, 8, 9, 10]), ([1, 11, 12, 13, 14], [15, 16, 17, 18, 19, 20])]


def _config(strategy, lm_layers=2):
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                           num_attention_heads=4, image_size=32, patch_size=4, projection_dim=32)
    text = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=lm_layers,
                                    num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                                    max_position_embeddings=256, pad_token_id=PAD,
                                    bos_token_id=1, eos_token_id=None)   # no EOS: greedy runs are never cut short
    return transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMG,
                                    vision_feature_layer=-2, vision_feature_select_strategy=strategy)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """variant -> directory of a saved random LLaVA: "default" / "full" (the select strategy, 2 LM layers) and
    "deep" ("default", 4 LM layers, for FastV's default k = 2 and three PyramidDrop stages)."""
    dirs = {}
    for variant in ("default", "full", "deep"):
        torch.manual_seed(1)
        strategy = "full" if variant == "full" else "default"
        model = transformers.LlavaForConditionalGeneration(_config(strategy, 4 if variant == "deep" else 2))
        with torch.no_grad():   # a peakier LM than the default init, so greedy tokens are far from ties
            for p in model.model.language_model.parameters():
                p.mul_(4.0 if p.dim() == 2 else 1.0)
        dirs[variant] = tmp_path_factory.mktemp(f"llava_{variant}")
        model.save_pretrained(dirs[variant])
    return dirs


def load(saved, variant="default", attn="sdpa"):
    model = transformers.LlavaForConditionalGeneration.from_pretrained(saved[variant], attn_implementation=attn)
    assert isinstance(model, transformers.LlavaForConditionalGeneration)
    return model.eval()


def batch(strategy="default", rows=(0, 1)):
    """Processor-style rows (the image expanded to N or 1 + N tokens), left-padded, and pixel values."""
    n_img = N + (strategy == "full")
    seqs = [PROMPTS[r][0] + [IMG] * n_img + PROMPTS[r][1] for r in rows]
    width = max(map(len, seqs))
    ids = torch.tensor([[PAD] * (width - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    g = torch.Generator().manual_seed(7)
    pixels = torch.randn(len(seqs), 3, 32, 32, generator=g)
    return ids, mask, pixels


# -------------------------------------------------------------------------------------------------------------
# independent references
# -------------------------------------------------------------------------------------------------------------

def reduced_features(model, method, pixels, budget, strategy="default"):
    """The method on a VisionTower of the LLaVA vision tower, LLaVA's select strategy, the projector:
    a list of [n_b, D] per sample."""
    red = method(VisionTower(model.model.vision_tower, select_layer=-2), pixels, budget)
    tokens, mask = (red.tokens, red.mask) if strategy == "full" else (red.tokens[:, 1:], red.mask[:, 1:])
    proj = model.model.multi_modal_projector(tokens)
    return [proj[b][mask[b]] for b in range(proj.shape[0])]


def lm_logits(model, embeds, positions):
    """The LLaMA decoder + lm_head on one unpadded row ``embeds [1, L, D]``."""
    out = model.model.language_model(inputs_embeds=embeds, position_ids=positions, use_cache=False)
    return model.lm_head(out.last_hidden_state)


def row_embeds(model, row, features, extra_tokens=()):
    before, after = PROMPTS[row]
    emb = model.model.language_model.embed_tokens
    return torch.cat([emb(torch.tensor([before])), features[None],
                      emb(torch.tensor([after + list(extra_tokens)]))], 1)


def _rope(x, pos, theta):
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = pos.double()[:, None] * inv
    cos, sin = torch.cat([ang.cos()] * 2, -1).float(), torch.cat([ang.sin()] * 2, -1).float()
    return x * cos + torch.cat([-x[..., d // 2:], x[..., :d // 2]], -1) * sin


def attention_row(model, layer, x, pos, query):
    """Head-mean softmax attention of token ``query`` over keys 0..query in LLaMA layer ``layer`` (x [1, L, D])."""
    tc = model.config.text_config
    blk = model.model.language_model.layers[layer]
    h = blk.input_layernorm(x)[0]
    H, Hkv, d = tc.num_attention_heads, tc.num_key_value_heads, tc.hidden_size // tc.num_attention_heads
    q = _rope(blk.self_attn.q_proj(h).view(-1, H, d).transpose(0, 1), pos, tc.rope_parameters["rope_theta"])
    k = _rope(blk.self_attn.k_proj(h).view(-1, Hkv, d).transpose(0, 1), pos, tc.rope_parameters["rope_theta"])
    k = k.repeat_interleave(H // Hkv, 0)
    logits = (q[:, query, None] @ k[:, :query + 1].transpose(-1, -2))[:, 0] / d ** 0.5
    return torch.softmax(logits.float(), -1).mean(0)             # [query + 1]


def run_layer(model, i, x, pos):
    L = x.shape[1]
    causal = torch.full((L, L), torch.finfo(x.dtype).min).triu(1)[None, None]
    lm = model.model.language_model
    return lm.layers[i](x, attention_mask=causal, position_ids=pos[None],
                        position_embeddings=lm.rotary_emb(x, pos[None]))


def manual_pruned_lm(model, embeds, img_start, n_img, prompt_len, plan):
    """FastV (plan = ("fastv", k, keep)) or PyramidDrop (plan = ("pdrop", layers, counts)) by hand on one row;
    the image tokens are ranked by the last prompt token (prompt_len - 1) and tokens after the prompt (teacher-
    forced generated ones) are kept like text. Returns logits of the surviving tokens and their original indices."""
    x, L = embeds, embeds.shape[1]
    idx = torch.arange(L)                     # original index of each surviving token
    pos = torch.arange(L)
    query, cur = prompt_len - 1, n_img
    lm = model.model.language_model
    for i in range(len(lm.layers)):
        drop_now, keep = False, None
        if plan[0] == "fastv":
            _, k, keep_count = plan
            if i == k - 1:
                scores = attention_row(model, i, x, pos, query)[img_start:img_start + cur]
            if i == k:
                drop_now, keep = True, keep_count
        elif i in plan[1]:
            scores = attention_row(model, i, x, pos, query)[img_start:img_start + cur]
            drop_now, keep = True, plan[2][plan[1].index(i)]
        if drop_now:
            top = torch.sort(torch.topk(scores, keep).indices).values + img_start
            sel = torch.cat([torch.arange(img_start), top, torch.arange(img_start + cur, x.shape[1])])
            x, idx = x[:, sel], idx[sel]
            pos = pos[sel] if plan[0] == "fastv" else torch.arange(len(sel))     # FastV keeps gaps; PDrop renumbers
            query, cur = query - (cur - keep), keep
        x = run_layer(model, i, x, pos)
    return model.lm_head(lm.norm(x)), idx


def teacher_forced_logits(model, plan_for, features, rows, new_tokens):
    """For each row: the manual pruned LM's next-token logits on prompt + new_tokens, at the last prompt
    token and each fed-back token: ``[rows, len(new_tokens[0]), V]``."""
    preds = []
    for j, row in enumerate(rows):
        extra = new_tokens[j][:-1]
        emb = row_embeds(model, row, features[j], extra)
        start, n_img = len(PROMPTS[row][0]), features[j].shape[0]
        prompt_len = start + n_img + len(PROMPTS[row][1])
        logits, idx = manual_pruned_lm(model, emb, start, n_img, prompt_len, plan_for(j))
        at = [int((idx == t).nonzero()) for t in range(prompt_len - 1, emb.shape[1])]
        preds.append(logits[0, at])
    return torch.stack(preds)


# -------------------------------------------------------------------------------------------------------------
# (1) budget 1.0 with "full" reproduces the unpatched model
# -------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["default", "full"])
def test_full_budget_reproduces_unpatched(saved, strategy):
    model = load(saved, strategy)
    ids, mask, px = batch(strategy)
    with torch.no_grad():
        ref = model(input_ids=ids, pixel_values=px, attention_mask=mask).logits
        ref_gen = model.generate(input_ids=ids, pixel_values=px, attention_mask=mask, max_new_tokens=4, do_sample=False)
        handle = hf.apply(model, "full", 1.0)
        out = model(input_ids=ids, pixel_values=px, attention_mask=mask).logits
        gen = model.generate(input_ids=ids, pixel_values=px, attention_mask=mask, max_new_tokens=4, do_sample=False)
    assert torch.equal(handle.last_inputs["input_ids"], ids)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(gen, ref_gen)


# -------------------------------------------------------------------------------------------------------------
# (2) a vision-side method against the LLaMA run by hand on embeddings built here
# -------------------------------------------------------------------------------------------------------------

def test_saliency_matches_manual_llama(saved):
    model = load(saved)
    ids, mask, px = batch()
    hf.apply(model, "saliency", 0.25)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=px, attention_mask=mask).logits
        gen = model.generate(input_ids=ids, pixel_values=px, attention_mask=mask, max_new_tokens=3, do_sample=False)
        hf.remove(model)
        feats = reduced_features(model, methods.get("saliency"), px, 0.25)
        width = out.shape[1]
        for b in range(2):
            assert feats[b].shape[0] == 16                                      # floor(0.25 * 64), CLS dropped
            emb = row_embeds(model, b, feats[b])
            L = emb.shape[1]
            # the patched forward left-pads and (as LlamaModel without position_ids) numbers columns 0..width-1
            ref = lm_logits(model, emb, torch.arange(width - L, width)[None])
            torch.testing.assert_close(out[b, width - L:], ref[0], rtol=1e-4, atol=1e-4)
            # generate: greedy with a full recompute on the prompt + the tokens generated so far
            new = gen[b, width:]
            for t in range(len(new)):
                e = row_embeds(model, b, feats[b], new[:t].tolist())
                step = lm_logits(model, e, torch.arange(e.shape[1])[None])
                assert step[0, -1].argmax() == new[t]
        short = torch.tensor(PROMPTS[1][0] + [IMG] * 16 + PROMPTS[1][1])
        assert torch.equal(gen[1, :width], short)


# -------------------------------------------------------------------------------------------------------------
# (3) generate for several methods, per-sample budgets, batch 2
# -------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,config", [("saliency", {}), ("random", {"seed": 0}), ("pool", {}), ("tome", {}),
                                         ("prumerge", {}), ("prumerge+", {}), ("fastv", {"k": 1}),
                                         ("pyramiddrop", {"lam": 0.5})])
def test_generate_per_sample_budgets(saved, name, config):
    model = load(saved)
    ids, mask, px = batch()
    budget = torch.tensor([0.25, 0.5])
    handle = hf.apply(model, name, budget, **config)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=px, attention_mask=mask)
        gen = model.generate(input_ids=ids, pixel_values=px, attention_mask=mask, max_new_tokens=3, do_sample=False)
    short = handle.last_inputs["input_ids"]
    assert gen.shape == (2, short.shape[1] + 3)
    assert torch.equal(gen[:, :short.shape[1]], short)
    assert torch.equal(gen[:, short.shape[1]], out.logits[:, -1].argmax(-1))          # same prefill as forward
    if name not in ("fastv", "pyramiddrop"):
        n_img = (short == IMG).sum(1)
        assert torch.equal(n_img, handle.last_reduction.mask[:, 1:].sum(1))
        if name in ("saliency", "random", "prumerge", "prumerge+"):
            assert n_img.tolist() == [16, 32]


def test_generate_sampling_and_num_return_sequences(saved):
    model = load(saved)
    ids, mask, px = batch()
    hf.apply(model, "fastv", torch.tensor([0.25, 0.5]), k=1)
    with torch.no_grad():
        gen = model.generate(input_ids=ids, pixel_values=px, attention_mask=mask, max_new_tokens=3, do_sample=True,
                             num_return_sequences=2)
    assert gen.shape[0] == 4


# -------------------------------------------------------------------------------------------------------------
# (4) FastV / PyramidDrop: prefill logits and decoded tokens against algorithms.md written out by hand
# -------------------------------------------------------------------------------------------------------------

PLANS = {
    # budget b keeps K = floor(b * 64) image tokens from layer k on (CLS is not in the LM with "default")
    ("default", "fastv"): ({"k": 1}, lambda b: ("fastv", 1, int(b * N))),
    ("deep", "fastv"): ({}, lambda b: ("fastv", 2, int(b * N))),                  # the default k = 2
    # lam = 0.5: one drop at layer 1 with 2 LM layers; drops at layers 1, 2, 3 (quarters) with 4
    ("default", "pyramiddrop"): ({"lam": 0.5}, lambda b: ("pdrop", [1], [N // 2])),
    ("deep", "pyramiddrop"): ({"lam": 0.5}, lambda b: ("pdrop", [1, 2, 3], [N // 2, N // 4, N // 8])),
}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("variant", ["default", "deep"])
@pytest.mark.parametrize("name", ["fastv", "pyramiddrop"])
def test_llm_side_prefill_matches_reference(saved, name, variant, attn):
    model = load(saved, variant, attn=attn)
    config, plan = PLANS[variant, name]
    with torch.no_grad():
        ids, mask, px = batch(rows=(1,))
        feats = reduced_features(model, methods.get("full"), px, 1.0)
        hf.apply(model, name, 0.25, **config)
        out = model(input_ids=ids, pixel_values=px).logits              # batch 1, no padding
        no_cache = model(input_ids=ids, pixel_values=px, use_cache=False)
        start = len(PROMPTS[1][0])
        ref, idx = manual_pruned_lm(model, row_embeds(model, 1, feats[0]), start, N, ids.shape[1], plan(0.25))
    assert out.shape == ref.shape
    kept = plan(0.25)[2] if name == "fastv" else plan(0.25)[2][-1]                   # image tokens in the last layer
    assert out.shape[1] == ids.shape[1] - N + kept
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert no_cache.past_key_values is None
    torch.testing.assert_close(no_cache.logits, out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["default", "deep"])
@pytest.mark.parametrize("name", ["fastv", "pyramiddrop"])
def test_llm_side_batched_prefill_and_generate(saved, name, variant):
    """Batch 2, left padding, per-sample budgets: each row's prefill logits and greedy tokens equal the
    per-sample reference (decode steps attend to the pruned per-layer KV cache)."""
    model = load(saved, variant)
    config, plan = PLANS[variant, name]
    budget = torch.tensor([0.25, 0.5])
    ids, mask, px = batch()
    with torch.no_grad():
        feats = reduced_features(model, methods.get("full"), px, 1.0)
        hf.apply(model, name, budget, **config)
        out = model(input_ids=ids, pixel_values=px, attention_mask=mask).logits
        gen = model.generate(input_ids=ids, pixel_values=px, attention_mask=mask, max_new_tokens=4, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
        new = gen.sequences[:, ids.shape[1]:]
        ref_steps = teacher_forced_logits(model, lambda j: plan(float(budget[j])), feats, (0, 1), new)
        for b in range(2):
            start = len(PROMPTS[b][0])
            prompt_len = start + N + len(PROMPTS[b][1])
            ref, _ = manual_pruned_lm(model, row_embeds(model, b, feats[b]), start, N, prompt_len,
                                      plan(float(budget[b])))
            # padded rows are numbered from the first column (LlamaModel without position_ids): RoPE is relative
            torch.testing.assert_close(out[b, out.shape[1] - ref.shape[1]:], ref[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.stack(gen.logits, 1), ref_steps, rtol=1e-4, atol=1e-4)
    assert torch.equal(new, ref_steps.argmax(-1))


# -------------------------------------------------------------------------------------------------------------
# (5) remove() restores the model
# -------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["saliency", "fastv"])
def test_remove_restores(saved, name):
    model = load(saved)
    ids, mask, px = batch()
    with torch.no_grad():
        ref = model(input_ids=ids, pixel_values=px, attention_mask=mask).logits
        handle = hf.apply(model, name, 0.25, **({"k": 1} if name == "fastv" else {}))
        changed = model(input_ids=ids, pixel_values=px, attention_mask=mask).logits
        with pytest.raises(RuntimeError, match="already applied"):
            hf.apply(model, name, 0.25)
        handle.remove()
        assert "forward" not in model.__dict__ and "generate" not in model.__dict__
        assert "forward" not in model.model.language_model.__dict__
        out = model(input_ids=ids, pixel_values=px, attention_mask=mask).logits
        gen = model.generate(input_ids=ids, pixel_values=px, attention_mask=mask, max_new_tokens=2, do_sample=False)
        hf.remove(model)                                              # no-op
        hf.apply(model, "full", 1.0).remove()                         # can be applied again
    assert changed.shape != ref.shape
    assert torch.equal(out, ref)
    assert gen.shape == (2, ids.shape[1] + 2)


# -------------------------------------------------------------------------------------------------------------
# (6) errors
# -------------------------------------------------------------------------------------------------------------

def test_errors(saved):
    model = load(saved)
    ids, mask, px = batch()
    llama = transformers.LlamaForCausalLM(model.config.text_config)
    with pytest.raises(TypeError, match="LlavaForConditionalGeneration"):
        hf.apply(llama, "saliency", 0.5)
    with pytest.raises(KeyError, match="unknown method 'nope'"):
        hf.apply(model, "nope", 0.5)
    with pytest.raises(TypeError, match="method must be a name"):
        hf.apply(model, 3, 0.5)
    with pytest.raises(ValueError, match=r"budget must be in \[0, 1\]"):
        hf.apply(model, "saliency", 1.5)
    with pytest.raises(TypeError, match="budget must be a float"):
        hf.apply(model, "saliency", "half")
    with pytest.raises(TypeError, match="only for a method given by name"):
        hf.apply(model, methods.get("saliency"), 0.5, kind="l2norm")
    assert "forward" not in model.__dict__                            # failed applies install nothing

    handle = hf.apply(model, "saliency", torch.tensor([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match=r"shape \[B\] = \[2\]"):
        model(input_ids=ids, pixel_values=px, attention_mask=mask)
    handle.remove()

    hf.apply(model, "saliency", 0.5)
    with pytest.raises(ValueError, match="processor-expanded 64 image tokens"):
        model(input_ids=ids[:, 10:], pixel_values=px)
    with pytest.raises(NotImplementedError, match="one image per sample"):
        model(input_ids=ids, pixel_values=px[:1])
    with pytest.raises(NotImplementedError, match="use_cache=True"):
        model.generate(input_ids=ids, pixel_values=px, attention_mask=mask, max_new_tokens=2, use_cache=False)
    with pytest.raises(NotImplementedError, match="chunked prefill"):
        model.generate(input_ids=ids, pixel_values=px, attention_mask=mask, max_new_tokens=2, prefill_chunk_size=16)
    hf.remove(model)

    hf.apply(model, "fastv", 0.5, k=1)
    with pytest.raises(NotImplementedError, match="labels with an LLM-side method"):
        model(input_ids=ids, pixel_values=px, attention_mask=mask, labels=ids)
    with pytest.raises(NotImplementedError, match="beam search"):
        model.generate(input_ids=ids, pixel_values=px, attention_mask=mask, max_new_tokens=2, num_beams=2)
    with pytest.raises(NotImplementedError, match="need a DynamicCache, got StaticCache"):
        model.generate(input_ids=ids, pixel_values=px, attention_mask=mask, max_new_tokens=2,
                       cache_implementation="static")
    hf.remove(model)


def test_labels_are_shortened_for_vision_side(saved):
    model = load(saved)
    ids, mask, px = batch()
    labels = ids.masked_fill((ids == IMG) | (mask == 0), -100)
    handle = hf.apply(model, "saliency", 0.25)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=px, attention_mask=mask, labels=labels)
    short = handle.last_inputs["input_ids"]
    want = short.masked_fill((short == IMG) | (handle.last_inputs["attention_mask"] == 0), -100)
    logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
    ref = torch.nn.functional.cross_entropy(logits, want[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, ref)


def test_fastv_full_strategy_counts_cls(saved):
    """With "full" the CLS row is in the LM and counts as an image token: FastV keeps 1 + K of 1 + N."""
    model = load(saved, "full")
    ids, _, px = batch("full", rows=(0,))
    with torch.no_grad():
        feats = reduced_features(model, methods.get("full"), px, 1.0, strategy="full")
        hf.apply(model, "fastv", 0.25, k=1)
        out = model(input_ids=ids, pixel_values=px).logits
        ref, _ = manual_pruned_lm(model, row_embeds(model, 0, feats[0]), len(PROMPTS[0][0]), N + 1, ids.shape[1],
                                  ("fastv", 1, 1 + N // 4))
    assert out.shape[1] == ids.shape[1] - (N + 1) + (1 + N // 4)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_input_padding_side_does_not_matter(saved):
    """Right-padded (or unpadded) rows give the same shortened, left-padded rows and logits as left-padded ones."""
    model = load(saved)
    ids, mask, px = batch()
    order = torch.sort(mask, dim=1, descending=True, stable=True).indices     # valid tokens first
    right_ids, right_mask = ids.gather(1, order), mask.gather(1, order)
    handle = hf.apply(model, "saliency", torch.tensor([0.25, 0.5]))
    with torch.no_grad():
        left = model(input_ids=ids, pixel_values=px, attention_mask=mask).logits
        left_inputs = handle.last_inputs
        right = model(input_ids=right_ids, pixel_values=px, attention_mask=right_mask).logits
    assert right_mask[0, -1] == 0 and torch.equal(handle.last_inputs["input_ids"], left_inputs["input_ids"])
    assert torch.equal(handle.last_inputs["attention_mask"], left_inputs["attention_mask"])
    torch.testing.assert_close(right, left, rtol=0, atol=0)


def test_clear_error_without_transformers(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install 'vtp_ext\[hf\]'"):
        hf.apply(object(), "saliency", 0.5)
