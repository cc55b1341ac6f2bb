"""Any ``vtp_ext.methods`` method inside a HF ``transformers`` ``LlavaForConditionalGeneration``.

    from vtp_ext.integrations import hf
    handle = hf.apply(model, "saliency", budget=0.25)         # or a Method instance; budget float or [B]
    out = model(input_ids=ids, pixel_values=px, attention_mask=mask)
    seq = model.generate(input_ids=ids, pixel_values=px, attention_mask=mask, max_new_tokens=8)
    handle.remove()                                            # or hf.remove(model)

**Vision-side methods** (saliency, pool, tome, prumerge, ...) run on the LLaVA vision tower through
:class:`vtp_ext.nn.VisionTower` (``select_layer = config.vision_feature_layer``), then LLaVA's feature select
strategy ("default" drops the CLS row, "full" keeps it) and the model's ``multi_modal_projector``. The kept
count differs per sample, so each row's image placeholder run in ``input_ids`` (processor-expanded to the
count the unpatched model expects: N patches, or 1 + N with "full") is cut to that sample's count and the
rows are re-padded on the **left** (HF's generation convention; the input may be left-, right- or
un-padded). The image features are written at the remaining placeholders and the unpatched forward runs on
those ``inputs_embeds``. Consequently the returned logits (and ``generate``'s sequences) are laid out on the
shortened rows: ``handle.last_inputs`` holds the ``input_ids`` / ``attention_mask`` the model actually saw.
``labels`` are shortened the same way. Explicit ``position_ids`` are recomputed from the new mask.

**LLM-side methods** (``fastv``, ``pyramiddrop``) keep every image feature and drop image tokens inside
the LLaMA decoder during the prefill: the decoder's forward is replaced by a layer loop that gives the
method's pruner a :class:`vtp_ext.models.LMState` (rows converted to right-padded, as the pruner expects)
and an ``attention_row`` computed from the HF layer's ``input_layernorm``, ``q_proj`` / ``k_proj`` and
rotary embedding. FastV keeps the original position ids (with gaps), PyramidDrop renumbers them. Each
layer writes its own (possibly shorter) KV cache; decode steps attend to it with that layer's key mask and
continue that layer's positions (FastV: the original numbering; PyramidDrop: after the renumbered prefix,
as its reference shifts ``position_ids`` at each stage). The prefill returns hidden states/logits for the
tokens that reached the last layer, re-padded on the left. With the "default" strategy the CLS row never
reaches the LM, so FastV keeps K = floor(b N) image tokens and PyramidDrop counts from N (the registry's
pruners count the CLS row as an image token; they are adjusted here).

Supported: one image per sample (``pixel_values [B, 3, H, W]``), a CLIP vision tower with an integer
``vision_feature_layer``; ``generate`` with a KV cache, greedy or sampling, any ``num_return_sequences``.
LLM-side methods also need a LLaMA text model with "eager" or "sdpa" attention and the (default) dynamic
cache. Not supported (clear errors): ``inputs_embeds`` together with ``pixel_values``; ``generate`` with
``use_cache=False`` or chunked prefill; with LLM-side methods: a static cache, beam search, ``labels``,
``output_attentions`` / ``output_hidden_states``. Only ``LlavaForConditionalGeneration.forward`` and
``generate`` are patched: calling ``model.model`` (the ``LlavaModel``) directly bypasses the method.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import inspect
from typing import Any, List, Optional, Union

import torch

from .. import methods as _methods
from ..methods.base import Method
from ..methods.lm import FastVPruner, PyramidDropPruner
from ..models.lm import LMState
from ..nn.reduction import Budget, check_budget
from ..nn.tower import VisionTower

__all__ = ["apply", "remove", "Handle"]

_ATTR = "_vtp_ext_handle"


def _transformers():
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("vtp_ext.integrations.hf needs HF transformers >= 5: pip install 'vtp_ext[hf]'") from e
    return transformers


@functools.lru_cache(maxsize=None)
def _cache_kw() -> str:
    """The name of the KV-cache argument and output field: transformers 5.24 renamed ``past_key_values``
    to ``cache`` (the old argument name stays accepted, with a deprecation warning, until 5.40)."""
    params = inspect.signature(_transformers().LlamaModel.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------

def apply(model, method: Union[str, Method], budget: Budget, **method_config) -> "Handle":
    """Install ``method`` (a registered name, built with ``method_config``, or a Method instance) at
    ``budget`` (a float or a tensor ``[B]`` of patch fractions) into ``model``, a
    ``LlavaForConditionalGeneration``. Returns a :class:`Handle`; ``handle.remove()`` restores the model."""
    transformers = _transformers()
    if not isinstance(model, transformers.LlavaForConditionalGeneration):
        raise TypeError(f"vtp_ext.integrations.hf.apply: model must be a transformers LlavaForConditionalGeneration, "
                        f"got {type(model).__name__}")
    if getattr(model, _ATTR, None) is not None:
        raise RuntimeError("vtp_ext.integrations.hf.apply: a method is already applied to this model; "
                           "remove() it first")
    cfg = model.config
    if not isinstance(cfg.vision_feature_layer, int):
        raise NotImplementedError("vtp_ext.integrations.hf: only an integer vision_feature_layer is supported, got "
                                  f"{cfg.vision_feature_layer!r}")
    if cfg.vision_feature_select_strategy not in ("default", "full"):
        raise ValueError(f"vtp_ext.integrations.hf: unknown vision_feature_select_strategy "
                         f"{cfg.vision_feature_select_strategy!r}")
    if isinstance(method, str):
        if method == "pyramiddrop" and "num_lm_layers" not in method_config:
            method_config = dict(method_config, num_lm_layers=cfg.text_config.num_hidden_layers)
        method = _methods.get(method, **method_config)
    elif isinstance(method, Method):
        if method_config:
            raise TypeError("vtp_ext.integrations.hf.apply: keyword configuration is only for a method given by name")
    else:
        raise TypeError(f"vtp_ext.integrations.hf.apply: method must be a name ({', '.join(_methods.available())}) "
                        f"or a vtp_ext.methods.Method, got {type(method).__name__}")
    _check_budget_shape(budget)
    try:
        tower = VisionTower(model.model.vision_tower, select_layer=cfg.vision_feature_layer)
    except (TypeError, AttributeError) as e:
        name = type(model.model.vision_tower).__name__
        raise NotImplementedError(f"vtp_ext.integrations.hf: the vision tower {name} "
                                  f"is not supported ({e})") from e
    handle = Handle(model, method, budget, tower)
    handle._install()
    return handle


def remove(model) -> None:
    """Undo :func:`apply` on ``model`` (no-op if nothing is applied)."""
    handle = getattr(model, _ATTR, None)
    if handle is not None:
        handle.remove()


def _check_budget_shape(budget: Budget) -> None:
    n = budget.shape[0] if isinstance(budget, torch.Tensor) and budget.dim() == 1 else 1
    check_budget(budget, n, "vtp_ext.integrations.hf.apply")


# ----------------------------------------------------------------------------------------------------------
# What one multimodal call becomes: shortened rows, their embeddings, and (LLM-side) the pruning context
# ----------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Prepared:
    input_ids: torch.Tensor          # [B, L'] left-padded, n_b placeholders per row
    attention_mask: torch.Tensor     # [B, L'] int64
    inputs_embeds: torch.Tensor      # [B, L', D], image features at the placeholders
    labels: Optional[torch.Tensor]
    image_mask: torch.Tensor         # [B, L'] bool, the placeholder columns
    lm_pruner: Any                   # None for vision-side methods


@dataclasses.dataclass
class _PendingPrefill:
    """Handed from the Llava-level wrapper to the decoder's next prefill."""
    pruner: Any
    image_mask: torch.Tensor


def _left_pad(keep: torch.Tensor, tensors: List[Optional[torch.Tensor]],
              fills: List[Any]) -> List[Optional[torch.Tensor]]:
    """Keep the columns ``keep [B, L]`` of each row, in order, right-aligned in ``[B, max kept]`` (left
    padding with ``fills``)."""
    B, L = keep.shape
    n = keep.sum(1)
    width = int(n.max()) if B else 0
    dest = keep.long().cumsum(1) - 1 + (width - n)[:, None]
    rows = torch.arange(B, device=keep.device)[:, None].expand(B, L)
    out = []
    for t, fill in zip(tensors, fills):
        if t is None:
            out.append(None)
            continue
        o = t.new_full((B, width) + tuple(t.shape[2:]), fill)
        o[rows[keep], dest[keep]] = t[keep]
        out.append(o)
    return out


class Handle:
    """What :func:`apply` installed. ``remove()`` restores the model; ``budget`` may be reassigned between
    calls. ``last_reduction`` (the method's :class:`vtp_ext.nn.Reduction`) and ``last_inputs`` (the shortened
    ``input_ids`` / ``attention_mask`` the model saw) describe the latest multimodal call."""

    def __init__(self, model, method: Method, budget: Budget, tower: VisionTower):
        self.model, self.method, self.budget, self.tower = model, method, budget, tower
        self.last_reduction = None
        self.last_inputs = None
        self._pending: Optional[_PendingPrefill] = None
        self._saved = {}

    # -- installation --------------------------------------------------------------------------------------

    def _install(self):
        model, lm = self.model, self.model.model.language_model
        patches = [(model, "forward", self._llava_forward), (model, "generate", self._generate),
                   (lm, "forward", self._lm_forward)]
        for obj, name, wrapper in patches:
            original = getattr(obj, name)
            self._saved[(id(obj), name)] = (obj, name, obj.__dict__.get(name))
            setattr(obj, name, functools.wraps(original)(functools.partial(wrapper, original)))
        setattr(model, _ATTR, self)

    def remove(self) -> None:
        for obj, name, previous in self._saved.values():
            if previous is None:
                obj.__dict__.pop(name, None)
            else:
                setattr(obj, name, previous)
        self._saved.clear()
        if getattr(self.model, _ATTR, None) is self:
            delattr(self.model, _ATTR)

    # -- the vision side and the rewritten rows -------------------------------------------------------------

    def _prepare(self, input_ids, pixel_values, attention_mask, labels=None) -> _Prepared:
        cfg, llava = self.model.config, self.model.model
        where = "vtp_ext.integrations.hf"
        if input_ids is None:
            raise NotImplementedError(f"{where}: pass input_ids (not inputs_embeds) with pixel_values, so the image "
                                      "placeholders can be found and shortened")
        B, L = input_ids.shape
        if pixel_values.dim() != 4 or pixel_values.shape[0] != B:
            raise NotImplementedError(f"{where}: one image per sample is supported: pixel_values must be "
                                      f"[B={B}, 3, H, W], "
                                      f"got {list(pixel_values.shape)}")
        full = cfg.vision_feature_select_strategy == "full"
        expected = self.tower.num_patches + int(full)
        valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        placeholder = (input_ids == cfg.image_token_id) & valid
        counts = placeholder.sum(1)
        if (counts != expected).any():
            raise ValueError(f"{where}: every row needs the processor-expanded {expected} image tokens (id "
                             f"{cfg.image_token_id}), got {counts.tolist()}")

        red = self.method(self.tower, pixel_values.to(self.tower.model.dtype), self.budget)
        self.last_reduction = red
        tokens, mask = (red.tokens, red.mask) if full else (red.tokens[:, 1:], red.mask[:, 1:])
        n = mask.sum(1).to(input_ids.device)
        features = llava.multi_modal_projector(tokens)[mask]            # [sum n, D], row-major

        rank = placeholder.long().cumsum(1) - 1
        keep = valid & (~placeholder | (rank < n[:, None]))
        pad_id = cfg.text_config.pad_token_id if cfg.text_config.pad_token_id is not None else 0
        ids, new_labels = _left_pad(keep, [input_ids, labels], [pad_id, -100])
        new_mask = _left_pad(keep, [torch.ones_like(input_ids)], [0])[0]
        image_mask = (ids == cfg.image_token_id) & new_mask.bool()
        embeds = llava.get_input_embeddings()(ids)
        embeds = embeds.masked_scatter(image_mask[..., None], features.to(embeds.dtype))
        self.last_inputs = {"input_ids": ids, "attention_mask": new_mask}

        pruner = red.lm_pruner
        if pruner is not None and not full:
            _without_cls(pruner)
        return _Prepared(ids, new_mask, embeds, new_labels, image_mask, pruner)

    def _check_call(self, kwargs):
        cfg = self.model.config
        for key in ("vision_feature_layer", "vision_feature_select_strategy"):
            value = kwargs.pop(key, None)
            if value is not None and value != getattr(cfg, key):
                raise NotImplementedError(f"vtp_ext.integrations.hf: {key}={value!r} differs from the config's "
                                          f"{getattr(cfg, key)!r} the method was installed with")
        if kwargs.get("image_sizes") is not None:
            raise NotImplementedError("vtp_ext.integrations.hf: image_sizes is not supported")

    def _llava_forward(self, original, *args, **kwargs):
        bound = inspect.signature(original).bind(*args, **kwargs)
        kw = dict(bound.arguments)
        kw.update(kw.pop("kwargs", {}))
        pixel_values = kw.pop("pixel_values", None)
        if pixel_values is None:
            return original(**kw)
        self._check_call(kw)
        if kw.get("inputs_embeds") is not None:
            raise NotImplementedError("vtp_ext.integrations.hf: pass input_ids, not inputs_embeds, with pixel_values")
        prep = self._prepare(kw.pop("input_ids", None), pixel_values, kw.pop("attention_mask", None),
                             kw.pop("labels", None))
        if prep.lm_pruner is not None and prep.labels is not None:
            raise NotImplementedError("vtp_ext.integrations.hf: labels with an LLM-side method (the kept tokens are "
                                      "chosen inside the decoder) are not supported")
        if kw.get("position_ids") is not None:
            kw["position_ids"] = (prep.attention_mask.cumsum(1) - 1).clamp(min=0)
        with self._pending_prefill(prep):
            return original(input_ids=None, inputs_embeds=prep.inputs_embeds, attention_mask=prep.attention_mask,
                            labels=prep.labels, **kw)

    def _generate(self, original, *args, **kwargs):
        inputs = args[0] if args else kwargs.pop("inputs", None)
        if inputs is None:
            inputs = kwargs.pop("input_ids", None)
        args = args[1:]
        pixel_values = kwargs.pop("pixel_values", None)
        if pixel_values is None:
            return original(inputs, *args, **kwargs)
        self._check_call(kwargs)
        gen_cfg = kwargs.get("generation_config") or self.model.generation_config
        use_cache = kwargs.get("use_cache", gen_cfg.use_cache)
        if use_cache is False:
            raise NotImplementedError("vtp_ext.integrations.hf: generate needs use_cache=True (the image features are "
                                      "only given to the prefill)")
        if kwargs.get("inputs_embeds") is not None:
            raise NotImplementedError("vtp_ext.integrations.hf: pass input_ids, not inputs_embeds, with pixel_values")
        if kwargs.get("prefill_chunk_size") or getattr(gen_cfg, "prefill_chunk_size", None):
            raise NotImplementedError("vtp_ext.integrations.hf: chunked prefill (prefill_chunk_size) is not supported")
        prep = self._prepare(inputs, pixel_values, kwargs.pop("attention_mask", None))
        if prep.lm_pruner is not None and (kwargs.get("num_beams") or gen_cfg.num_beams or 1) > 1:
            raise NotImplementedError("vtp_ext.integrations.hf: beam search with an LLM-side method is not supported "
                                      "(the per-layer cache bookkeeping is not reordered)")
        with self._pending_prefill(prep):
            return original(prep.input_ids, *args, inputs_embeds=prep.inputs_embeds,
                            attention_mask=prep.attention_mask, **kwargs)

    @contextlib.contextmanager
    def _pending_prefill(self, prep: _Prepared):
        """For an LLM-side method: hand the pruner to the decoder's next call (the prefill) while inside."""
        self._pending = None if prep.lm_pruner is None else _PendingPrefill(prep.lm_pruner, prep.image_mask)
        try:
            yield
        finally:
            self._pending = None

    # -- the LLaMA side: a layer loop for the pruned prefill, per-layer bookkeeping for the decode ------------

    def _lm_forward(self, original, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                    inputs_embeds=None, use_cache=None, **kwargs):
        lm = self.model.model.language_model
        cache = kwargs.pop("cache", None)
        cache = past_key_values if cache is None else cache
        pending = self._pending
        record = getattr(cache, "_vtp_ext_layers", None) if cache is not None else None
        if pending is None and record is None:
            return original(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            inputs_embeds=inputs_embeds, use_cache=use_cache, **{_cache_kw(): cache}, **kwargs)
        transformers = _transformers()
        if lm.config.model_type != "llama":
            raise NotImplementedError(f"vtp_ext.integrations.hf: LLM-side methods need a LLaMA text model, got "
                                      f"{lm.config.model_type!r}")
        if lm.config._attn_implementation not in ("eager", "sdpa"):
            raise NotImplementedError("vtp_ext.integrations.hf: LLM-side methods support attn_implementation 'eager' "
                                      f"or 'sdpa', got {lm.config._attn_implementation!r}")
        if kwargs.get("output_attentions") or kwargs.get("output_hidden_states"):
            raise NotImplementedError("vtp_ext.integrations.hf: output_attentions / output_hidden_states are not "
                                      "supported with LLM-side methods")
        if cache is not None and (type(cache) is not transformers.DynamicCache or cache.is_compileable):
            raise NotImplementedError(f"vtp_ext.integrations.hf: LLM-side methods need a DynamicCache, got "
                                      f"{type(cache).__name__}")
        if attention_mask is not None and attention_mask.dim() != 2:
            raise NotImplementedError("vtp_ext.integrations.hf: LLM-side methods need a 2D attention_mask")
        hidden = inputs_embeds if inputs_embeds is not None else lm.embed_tokens(input_ids)
        if pending is not None:
            self._pending = None
            if (cache is not None and cache.get_seq_length() > 0) or hidden.shape[1] != pending.image_mask.shape[1]:
                raise NotImplementedError("vtp_ext.integrations.hf: the pruned prefill must see the whole prompt at "
                                          "once, with an empty cache (no chunked prefill or cache continuation)")
            use_cache = lm.config.use_cache if use_cache is None else use_cache
            if use_cache and cache is None:
                cache = transformers.DynamicCache(config=lm.config)
            out = _pruned_prefill(lm, pending, hidden, attention_mask, position_ids, cache if use_cache else None)
        else:
            out = _pruned_decode(lm, record, hidden, attention_mask, cache)
        return transformers.modeling_outputs.BaseModelOutputWithPast(last_hidden_state=out, **{_cache_kw(): cache})


def _without_cls(pruner) -> None:
    """The registry's pruners count the CLS row as an image token; with the "default" strategy it is not in
    the LM, so FastV keeps K (not 1 + K) and PyramidDrop's counts start from N (not 1 + N)."""
    if isinstance(pruner, FastVPruner):
        pruner.keep = (pruner.keep - 1).clamp(min=1)
    elif isinstance(pruner, PyramidDropPruner):
        pruner.n0 = pruner.n0 - 1
    else:
        raise NotImplementedError(f"vtp_ext.integrations.hf: unknown LLM-side pruner {type(pruner).__name__}")


def _repeat_pruner(pruner, repeats: int):
    """A copy of ``pruner`` whose per-sample counts are repeated for generate's expanded rows."""
    pruner = copy.copy(pruner)
    if isinstance(pruner, FastVPruner):
        pruner.keep = pruner.keep.repeat_interleave(repeats, 0)
    else:
        pruner.ratio, pruner.n0 = pruner.ratio.repeat_interleave(repeats, 0), pruner.n0.repeat_interleave(repeats, 0)
    return pruner


def _additive_mask(key_valid: torch.Tensor, query_key: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, 1, Q, K]`` additive mask: query ``q`` (whose own key is column ``query_key [B, Q]``) sees the
    valid keys up to its own column. Its own column is always allowed, so padding queries stay finite."""
    cols = torch.arange(key_valid.shape[1], device=key_valid.device)
    allowed = (key_valid[:, None, :] & (cols <= query_key[..., None])) | (cols == query_key[..., None])
    zero = torch.zeros((), dtype=dtype, device=key_valid.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]


class _LlamaAdapter:
    """What the vtp_ext pruners call: ``attention_row(layer, state)``, the head-averaged float32 softmax
    attention of each row's ``query_index`` token in that HF LlamaDecoderLayer, computed on ``state.hidden``
    as its input (input_layernorm, q_proj / k_proj, rotary embedding at ``state.position_ids``)."""

    def __init__(self, lm):
        self.lm = lm

    @torch.no_grad()
    def attention_row(self, layer: int, state: LMState) -> torch.Tensor:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv
        block = self.lm.layers[layer]
        attn = block.self_attn
        h = block.input_layernorm(state.hidden)
        B, L, _ = h.shape
        q = attn.q_proj(h).view(B, L, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(B, L, -1, attn.head_dim).transpose(1, 2)
        cos, sin = self.lm.rotary_emb(h, state.position_ids)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k = repeat_kv(k, attn.num_key_value_groups)
        qi = q[torch.arange(B, device=q.device), :, state.query_index]            # [B, H, d]
        logits = torch.einsum("bhd,bhld->bhl", qi, k).float() * attn.scaling
        cols = torch.arange(L, device=q.device)
        allowed = state.attention_mask & (cols[None] <= state.query_index[:, None])
        return torch.softmax(logits.masked_fill(~allowed[:, None], float("-inf")), -1).mean(1)


@dataclasses.dataclass
class _LayerRecord:
    """One layer's KV-cache layout after the pruned prefill: which of its ``length`` cached columns are
    valid tokens, and the position the first decoded token takes in this layer."""
    key_valid: torch.Tensor     # [B, length] bool
    next_position: torch.Tensor  # [B]
    length: int


def _pruned_prefill(lm, pending: _PendingPrefill, hidden, attention_mask, position_ids, cache) -> torch.Tensor:
    B, L, _ = hidden.shape
    dev = hidden.device
    valid = torch.ones(B, L, dtype=torch.bool, device=dev) if attention_mask is None else attention_mask.bool()
    if position_ids is None:                           # as LlamaModel: 0..L-1 (generate passes cumsum - 1)
        position_ids = torch.arange(L, device=dev)[None]
    position_ids = position_ids.expand(B, L)
    image_mask, pruner = pending.image_mask.to(dev), pending.pruner
    if image_mask.shape[0] != B:                       # num_return_sequences > 1: generate repeats the rows
        repeats = B // image_mask.shape[0]
        image_mask, pruner = image_mask.repeat_interleave(repeats, 0), _repeat_pruner(pruner, repeats)

    # left- or un-padded HF rows -> the right-padded valid prefix the pruner works on
    order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices
    lengths = valid.sum(1)
    rmask = torch.arange(L, device=dev)[None] < lengths[:, None]
    image = image_mask.gather(1, order) & rmask
    state = LMState(hidden.gather(1, order[..., None].expand_as(hidden)), position_ids.gather(1, order) * rmask,
                    rmask, image.long().argmax(1), image.sum(1), lengths - 1)
    adapter, records = _LlamaAdapter(lm), []
    for i, layer in enumerate(lm.layers[:lm.config.num_hidden_layers]):
        state = pruner.before_layer(i, state, adapter)
        Li = state.hidden.shape[1]
        last = state.attention_mask.sum(1) - 1
        records.append(_LayerRecord(state.attention_mask, state.position_ids.gather(1, last[:, None])[:, 0] + 1, Li))
        query_key = torch.arange(Li, device=dev).expand(B, Li)
        state.hidden = layer(state.hidden, attention_mask=_additive_mask(state.attention_mask, query_key, hidden.dtype),
                             position_ids=state.position_ids, **{_cache_kw(): cache}, use_cache=cache is not None,
                             position_embeddings=lm.rotary_emb(state.hidden, state.position_ids))
    if cache is not None:
        cache._vtp_ext_layers = records
    out = lm.norm(state.hidden)
    # back to HF's layout: each row's last token in the last column
    keep = state.attention_mask
    return _left_pad(keep, [out], [0.0])[0]


def _pruned_decode(lm, records: List[_LayerRecord], hidden, attention_mask, cache) -> torch.Tensor:
    B, s, _ = hidden.shape
    dev = hidden.device
    steps = torch.arange(s, device=dev)
    for i, layer in enumerate(lm.layers[:lm.config.num_hidden_layers]):
        rec = records[i]
        t = cache.get_seq_length(i) - rec.length                   # tokens decoded before this call
        if attention_mask is None:
            tail = torch.ones(B, t + s, dtype=torch.bool, device=dev)
        else:
            tail = attention_mask[:, attention_mask.shape[1] - (t + s):].bool()
        key_valid = torch.cat([rec.key_valid, tail], 1)
        query_key = (rec.length + t + steps).expand(B, s)
        positions = rec.next_position[:, None] + t + steps
        hidden = layer(hidden, attention_mask=_additive_mask(key_valid, query_key, hidden.dtype),
                       position_ids=positions, **{_cache_kw(): cache}, use_cache=True,
                       position_embeddings=lm.rotary_emb(hidden, positions))
    return lm.norm(hidden)
