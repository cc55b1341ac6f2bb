"""ToMe inside a ViT (Bolya et al., ICLR 2023): each patched block merges tokens between its attention
and MLP residual branches, with the attention keys averaged over heads as the similarity metric and
proportional attention (log(size) added to the attention logits). Works on vtp_ext.nn.ViT and HF
``transformers`` CLIP vision encoders (>= 5; any block with layer_norm1, self_attn.{q,k,v,out}_proj,
layer_norm2 and mlp)."""
from __future__ import annotations

import dataclasses
import math
import types
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..ops.tome import MergePlan, bipartite_matching, merge

RSpec = Union[int, Sequence[int], Tuple[int, float]]


def parse_r(num_layers: int, r: RSpec) -> List[int]:
    """ToMe's schedules: an int -> the same r in every layer; a list -> per layer (padded with 0); a
    tuple ``(r, inflect)`` -> a linear schedule from ``r*(1-inflect)`` to ``2r - r*(1-inflect)``
    (``(r, -1)`` is the paper's decreasing schedule)."""
    if isinstance(r, tuple):
        base, inflect = r
        lo = int(base * (1 - inflect))
        hi = 2 * base - lo
        step = (hi - lo) / max(num_layers - 1, 1)
        return [int(lo + step * i) for i in range(num_layers)]
    if isinstance(r, int):
        return [r] * num_layers
    r = list(r)
    if len(r) > num_layers:
        raise ValueError(f"vtp_ext.nn.parse_r: {len(r)} values for {num_layers} layers")
    return r + [0] * (num_layers - len(r))


def r_schedule_for_tokens(n_tokens: int, num_layers: int, target_tokens: int, class_token: bool = True,
                          distill_token: bool = False) -> List[int]:
    """A per-layer r list that takes ``n_tokens`` (CLS included) down to exactly ``target_tokens`` after
    ``num_layers`` ToMe layers, spreading the merges evenly and respecting ToMe's per-layer clamp
    (at most half of the unprotected tokens). Raises when the target is out of reach."""
    protected = int(class_token) + int(distill_token)
    if not protected <= target_tokens <= n_tokens:
        raise ValueError(f"vtp_ext.nn.r_schedule_for_tokens: target_tokens must be in [{protected}, {n_tokens}], got {target_tokens}")

    def most(n: int, layers: int) -> int:  # the largest total merge `layers` layers allow from n tokens
        total = 0
        for _ in range(layers):
            r = (n - protected) // 2
            total, n = total + r, n - r
        return total

    if most(n_tokens, num_layers) < n_tokens - target_tokens:
        raise ValueError(f"vtp_ext.nn.r_schedule_for_tokens: {num_layers} ToMe layers can take {n_tokens} tokens down "
                         f"to {n_tokens - most(n_tokens, num_layers)} at best (each layer merges at most half), "
                         f"not {target_tokens}")
    remaining, n, out = n_tokens - target_tokens, n_tokens, []
    for layer in range(num_layers):
        left = num_layers - layer - 1
        r = min(math.ceil(remaining / (left + 1)), (n - protected) // 2)
        while r < (n - protected) // 2 and most(n - r, left) < remaining - r:  # merge more now if later layers can't
            r += 1
        out.append(r)
        n, remaining = n - r, remaining - r
    return out


@dataclasses.dataclass
class ToMeState:
    r: List[int]
    class_token: bool = True
    distill_token: bool = False
    prop_attn: bool = True
    trace_source: bool = False
    size: Optional[torch.Tensor] = None          # [B, N, 1] patches per token, reset every forward
    plans: List[MergePlan] = dataclasses.field(default_factory=list)  # filled when trace_source


def _is_vit_block(m: nn.Module) -> bool:
    attn = getattr(m, "self_attn", None)
    return all(hasattr(m, a) for a in ("layer_norm1", "layer_norm2", "mlp")) and attn is not None and all(
        hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj", "out_proj"))


def _tome_block_forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, **kwargs):
    state: ToMeState = self._tome_state
    attn = self.self_attn
    B, N, _ = hidden_states.shape
    h = self.layer_norm1(hidden_states)
    heads = getattr(attn, "num_heads", None) or attn.config.num_attention_heads
    split = lambda t: t.view(B, N, heads, -1).transpose(1, 2)  # noqa: E731
    q, k, v = split(attn.q_proj(h)), split(attn.k_proj(h)), split(attn.v_proj(h))
    logits = (q @ k.transpose(-1, -2)) * attn.scale
    if attention_mask is not None:
        logits = logits + attention_mask
    if state.prop_attn and state.size is not None:
        logits = logits + state.size.log()[:, None, None, :, 0]
    weights = logits.softmax(dim=-1)
    if self.training and getattr(attn, "dropout", 0.0):
        weights = nn.functional.dropout(weights, p=float(attn.dropout))
    x = hidden_states + attn.out_proj((weights @ v).transpose(1, 2).reshape(B, N, -1))
    r = state.r[self._tome_index]
    if r > 0:
        plan = bipartite_matching(k.mean(dim=1), r, state.class_token, state.distill_token)
        x, state.size = merge(x, plan, state.size, mode="wavg")
        if state.trace_source:
            state.plans.append(plan)
    return x + self.mlp(self.layer_norm2(x))


def apply_tome(model: nn.Module, r: RSpec, class_token: bool = True, distill_token: bool = False,
               prop_attn: bool = True, trace_source: bool = False) -> ToMeState:
    """Patch every ViT block of ``model`` in place with ToMe and return the shared state (``state.r``
    can be changed between forwards; ``state.plans`` holds the merge plans of the last forward when
    ``trace_source``; ``vtp_ext.merge_source(state.plans)`` maps patches to final tokens)."""
    blocks = [m for m in model.modules() if _is_vit_block(m)]
    if not blocks:
        raise ValueError("vtp_ext.nn.apply_tome: found no ViT blocks (layer_norm1, self_attn.{q,k,v,out}_proj, "
                         "layer_norm2, mlp) in the model")
    remove_tome(model)
    state = ToMeState(parse_r(len(blocks), r), class_token, distill_token, prop_attn, trace_source)
    for i, block in enumerate(blocks):
        block._tome_state, block._tome_index = state, i
        block.forward = types.MethodType(_tome_block_forward, block)

    def reset(module, args, kwargs):
        state.size = None
        state.plans = []

    model._tome_hook = model.register_forward_pre_hook(reset, with_kwargs=True)
    model._tome_state = state
    return state


def remove_tome(model: nn.Module) -> None:
    """Undo :func:`apply_tome` (no-op when the model is not patched)."""
    for m in model.modules():
        if hasattr(m, "_tome_state") and "forward" in m.__dict__:
            del m.forward
        for attr in ("_tome_state", "_tome_index"):
            if attr in m.__dict__:
                delattr(m, attr)
    hook = model.__dict__.pop("_tome_hook", None)
    if hook is not None:
        hook.remove()
