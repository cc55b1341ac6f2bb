"""LLM-side methods: the vision tokens pass unchanged; a pruner drops image tokens between LM layers.
Batched over samples with different image spans and budgets (the references use batch 0's scores for the
whole batch); rows are right-padded and re-padded after every drop."""
from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch

from ..models.lm import LMState
from ..ops.segmented_topk import segmented_topk
from . import register
from .vision import Full


def image_scores(row_attention: torch.Tensor, state: LMState) -> tuple[torch.Tensor, torch.Tensor]:
    """Slice each row's image span out of ``row_attention [B, L]`` -> ``[B, max image_len]`` (-inf past the
    span) and the span offsets."""
    span = int(state.image_len.max()) if state.image_len.numel() else 0
    cols = state.image_start[:, None] + torch.arange(span, device=row_attention.device)
    inside = torch.arange(span, device=row_attention.device)[None] < state.image_len[:, None]
    s = torch.gather(row_attention, 1, cols.clamp(max=row_attention.shape[1] - 1))
    return s.masked_fill(~inside, float("-inf")), span


def keep_image_tokens(state: LMState, scores: torch.Tensor, keep: torch.Tensor, reset_positions: bool) -> LMState:
    """Keep the top-``keep[b]`` image tokens of each row (by ``scores [B, span]``, kept in their order), all
    text tokens, and compact the rows. FastV keeps the original position ids (gaps), PyramidDrop renumbers."""
    B, L = state.attention_mask.shape
    span = scores.shape[1]
    keep = torch.minimum(keep, state.image_len)
    _, sel, _ = segmented_topk(scores.float(), torch.tensor([0, span]), keep[:, None].cpu(), max(int(keep.max()), 1),
                               order="index")
    pos = torch.arange(L, device=scores.device)
    in_image = (pos[None] >= state.image_start[:, None]) & (pos[None] < (state.image_start + state.image_len)[:, None])
    cols = torch.where(sel >= 0, sel + state.image_start[:, None], L)   # column L is a dump for padding
    kept = torch.cat([state.attention_mask & ~in_image, in_image[:, :1]], 1).scatter(1, cols, True)[:, :L]
    new_len = kept.sum(1)
    L_new = int(new_len.max()) if B else 0
    order = torch.sort((~kept).to(torch.int8), dim=1, stable=True).indices[:, :L_new]
    take = lambda t: torch.gather(t, 1, order if t.dim() == 2 else order[..., None].expand(-1, -1, t.shape[-1]))  # noqa: E731
    mask = torch.arange(L_new, device=scores.device)[None] < new_len[:, None]
    positions = torch.arange(L_new, device=scores.device).expand(B, -1) * mask if reset_positions \
        else take(state.position_ids) * mask
    before_query = (kept.cumsum(1) - 1).gather(1, state.query_index[:, None])[:, 0]
    return LMState(take(state.hidden), positions, mask, state.image_start, keep, before_query,
                   None if state.labels is None else take(state.labels).masked_fill(~mask, -100))


class _Pruner:
    """Per-sample settings are tensors over the batch the method saw; ``select(rows)`` re-indexes them for
    an LM batch built from those samples (e.g. several questions per image)."""

    def select(self, rows: torch.Tensor) -> "_Pruner":
        new = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor) and name != "_scores":
                setattr(new, name, value[rows.to(value.device)])
        return new

    def image_tokens_per_layer(self, num_tokens: torch.Tensor, num_layers: int) -> torch.Tensor:
        counts = torch.stack([self.kept_at(layer, num_tokens) for layer in range(num_layers)], 1)
        return counts


class FastVPruner(_Pruner):
    """Before layer ``k``: the last prompt token's attention in layer ``k - 1`` (head mean, softmax over all
    keys) ranks the image tokens; the top ``keep[b]`` stay, text stays, position ids keep their gaps."""

    def __init__(self, k: int, keep: torch.Tensor):
        self.k, self.keep, self._scores = k, keep, None

    def kept_at(self, layer, num_tokens):
        return num_tokens if layer < self.k else torch.minimum(self.keep.to(num_tokens.device), num_tokens)

    def before_layer(self, i: int, state: LMState, lm) -> LMState:
        if i == self.k - 1:
            self._scores = image_scores(lm.attention_row(i, state), state)[0]
        if i == self.k:
            state = keep_image_tokens(state, self._scores, self.keep.to(state.hidden.device), reset_positions=False)
        return state


@register("fastv")
class FastV(Full):
    """FastV (inplace mode): keeps 1 + K image tokens (CLS counts as an image token) from LM layer ``k``
    (default 2, as the paper) on; ``k >= 1``."""

    def __init__(self, k: int = 2):
        super().__init__()
        if k < 1:
            raise ValueError(f"vtp_ext.methods.fastv: k must be >= 1 (the layer whose input is pruned), got {k}")
        self.k = k

    def reduce(self, inputs, k):
        red = super().reduce(inputs, k)
        red.lm_pruner = FastVPruner(self.k, k + 1)
        return red


def pdrop_ratio_for_budget(budget: torch.Tensor, stage_layers: Sequence[int]) -> torch.Tensor:
    """The lambda whose stage ratios 1, l, l^2, ... make the layer-averaged image-token fraction equal
    ``budget`` (bisection; stage ``s`` lasts ``stage_layers[s]`` layers)."""
    total = sum(stage_layers)
    lo, hi = torch.zeros_like(budget, dtype=torch.float64), torch.ones_like(budget, dtype=torch.float64)
    for _ in range(60):
        mid = (lo + hi) / 2
        avg = sum(n * mid ** s for s, n in enumerate(stage_layers)) / total
        lo, hi = torch.where(avg < budget, mid, lo), torch.where(avg < budget, hi, mid)
    return (lo + hi) / 2


class PyramidDropPruner(_Pruner):
    """Before each layer in ``layers``: that layer's attention from the last prompt token ranks the image
    tokens (computed from its own q/k on its input); stage ``s`` keeps ``int(N0 * ratio^s)`` (at least 1),
    counted from the original image length N0; kept tokens stay in order; positions renumbered."""

    def __init__(self, layers: Sequence[int], ratio: torch.Tensor, n0: torch.Tensor):
        self.layers, self.ratio, self.n0 = list(layers), ratio.double(), n0

    def _count(self, stage: int) -> torch.Tensor:
        return torch.floor(self.n0.double() * self.ratio ** stage).long().clamp(min=1)

    def kept_at(self, layer, num_tokens):
        stage = sum(1 for lay in self.layers if lay <= layer)
        return torch.minimum(self._count(stage).to(num_tokens.device), num_tokens)

    def before_layer(self, i: int, state: LMState, lm) -> LMState:
        if i in self.layers:
            scores = image_scores(lm.attention_row(i, state), state)[0]
            keep = self._count(self.layers.index(i) + 1).to(state.hidden.device)
            state = keep_image_tokens(state, scores, keep, reset_positions=True)
        return state


@register("pyramiddrop")
class PyramidDrop(Full):
    """PyramidDrop: rank-and-drop at ``layers`` (default: quarters of the LM's depth, [8, 16, 24] for 32
    layers; set ``num_lm_layers``) with ratio ``lam`` per stage (the paper's 0.5), or, with ``lam=None``,
    the lambda that makes the layer-averaged image tokens equal the budget."""

    def __init__(self, num_lm_layers: int = 32, layers: Optional[Sequence[int]] = None, lam: Optional[float] = None):
        super().__init__()
        self.layers = list(layers) if layers is not None else sorted({max(1, num_lm_layers * s // 4) for s in (1, 2, 3)})
        if any(not 0 < lay < num_lm_layers for lay in self.layers):
            raise ValueError(f"vtp_ext.methods.pyramiddrop: layers must be in [1, {num_lm_layers - 1}], got {self.layers}")
        bounds = [0] + self.layers + [num_lm_layers]
        self.stage_layers = [b - a for a, b in zip(bounds, bounds[1:])]
        self.lam = lam

    def reduce(self, inputs, k):
        red = super().reduce(inputs, k)
        n0 = red.num_tokens.cpu()
        if self.lam is None:
            ratio = pdrop_ratio_for_budget((k + 1).double() / n0.double(), self.stage_layers)
        else:
            ratio = torch.full(n0.shape, float(self.lam), dtype=torch.float64)
        red.lm_pruner = PyramidDropPruner(self.layers, ratio, n0)
        return red
