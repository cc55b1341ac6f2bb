"""Difficulty-aware budgets (seed 000): a small image + question classifier predicts easy / medium / hard,
the class (or the expected value over classes) picks the budget, low confidence bumps it one level,
question-type rules override it, and any other method runs at that budget. Trained from the VLM's own
correctness at each budget level. Also the two-pass mode: answer cheaply, re-run the unsure ones."""
from __future__ import annotations

import re
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..nn.reduction import budget_to_k
from ..ops.blur_downsample import gaussian_pyramid
from . import get, register
from .base import Method, VisionInputs

# Seed 000's rules, as fractions of 576 patch tokens: OCR >= 400, counting >= 350, simple colour/yes-no <= 200.
QUERY_RULES: Tuple[Tuple[str, str, float], ...] = (
    (r"\b(read|text|written|sign|label)\b", "min", 400 / 576),
    (r"\b(how many|count|number of)\b", "min", 350 / 576),
    (r"\b(what colou?r|is this a|yes or no)\b", "max", 200 / 576),
)


class DifficultyClassifier(nn.Module):
    """Low-resolution image branch (a Gaussian pyramid down to <= ``image_side`` px, three strided convs)
    + question branch (mean of the question embeddings) -> logits over ``num_classes``."""

    def __init__(self, question_dim: int, num_classes: int = 3, image_side: int = 32, width: int = 32):
        super().__init__()
        self.image_side = image_side
        self.visual = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, 2 * width, 3, 2, 1),
                                    nn.ReLU(), nn.Conv2d(2 * width, 4 * width, 3, 2, 1), nn.ReLU(),
                                    nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.text = nn.Sequential(nn.Linear(question_dim, 4 * width), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(8 * width, 8 * width), nn.ReLU(), nn.Linear(8 * width, num_classes))

    def forward(self, images: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        levels = 0
        while (images.shape[-1] >> levels) > self.image_side and (images.shape[-2] >> levels) > 1:
            levels += 1
        small = gaussian_pyramid(images.float(), levels + 1, mode="opencv")[-1] if levels else images.float()
        q = question.float().mean(1) if question.dim() == 3 else question.float()
        return self.head(torch.cat([self.visual(small), self.text(q)], 1))


def difficulty_to_budget(probs: torch.Tensor, levels: Sequence[float], mapping: str = "discrete",
                         confidence: Optional[float] = 0.7) -> torch.Tensor:
    """Class probabilities ``[B, C]`` -> budgets ``[B]``: ``"discrete"`` takes the argmax class's level and,
    when the top probability is under ``confidence``, the next level up; ``"continuous"`` the expectation."""
    lv = torch.tensor(levels, dtype=torch.float64)
    p = probs.detach().double().cpu()
    if mapping == "continuous":
        return p @ lv
    if mapping != "discrete":
        raise ValueError(f"vtp_ext.methods.difficulty: mapping must be 'discrete' or 'continuous', got {mapping!r}")
    cls = p.argmax(1)
    if confidence is not None:
        cls = torch.where(p.max(1).values < confidence, (cls + 1).clamp(max=len(levels) - 1), cls)
    return lv[cls]


def apply_query_rules(budget: torch.Tensor, questions: Optional[List[str]]) -> torch.Tensor:
    if questions is None:
        return budget
    out = budget.clone()
    for b, text in enumerate(questions):
        for pattern, kind, level in QUERY_RULES:
            if re.search(pattern, text.lower()):
                out[b] = max(out[b], level) if kind == "min" else min(out[b], level)
                break
    return out


def difficulty_labels(correct: torch.Tensor) -> torch.Tensor:
    """Training labels from the model's own correctness ``[S, levels]`` (bool, one column per budget level,
    increasing): the lowest level at which the answer is right; never right -> the highest level."""
    c = correct.bool()
    first = torch.where(c.any(1), c.int().argmax(1), c.shape[1] - 1)
    return first.long()


@register("difficulty")
class Difficulty(Method):
    """Wraps ``inner`` (a method name or instance) and runs it at the classifier's budget per sample; the
    caller's budget is ignored. ``levels``: budgets of easy/medium/hard (seed 000: 150/273/450 of 576);
    ``depths``: pyramid levels per class when ``inner`` is ``pyramid`` (DPN-style)."""

    def __init__(self, classifier: nn.Module, inner="saliency", levels: Sequence[float] = (150 / 576, 273 / 576, 450 / 576),
                 mapping: str = "discrete", confidence: Optional[float] = 0.7, rules: bool = True,
                 depths: Optional[Sequence[int]] = None, **inner_config):
        super().__init__()
        self.classifier, self.levels, self.mapping, self.confidence, self.rules = classifier, list(levels), mapping, confidence, rules
        self.inner = get(inner, **inner_config) if isinstance(inner, str) else inner
        self.depths = depths

    def budgets(self, inputs: VisionInputs) -> tuple[torch.Tensor, torch.Tensor]:
        if inputs.question is None:
            raise ValueError("vtp_ext.methods.difficulty: needs question= (the question embeddings [B, Lq, D])")
        with torch.no_grad():
            probs = self.classifier(inputs.images, inputs.question).softmax(-1)
        b = difficulty_to_budget(probs, self.levels, self.mapping, self.confidence)
        return (apply_query_rules(b, inputs.question_text) if self.rules else b), probs

    def run(self, inputs: VisionInputs, budget=None):
        b, probs = self.budgets(inputs)
        if self.depths is not None and hasattr(self.inner, "levels"):
            cls = probs.argmax(1).cpu()
            default = self.inner.levels
            try:
                reds = {}
                for c in cls.unique().tolist():   # one inner run per depth; rows are merged below
                    self.inner.levels = self.depths[c]
                    self.inner.weights = [2.0 ** i for i in range(self.depths[c])]
                    reds[c] = self.inner.run(inputs, b)
            finally:
                self.inner.levels, self.inner.weights = default, [2.0 ** i for i in range(default)]
            red = _pick_rows(reds, cls)
        else:
            red = self.inner.run(inputs, b)
        red.extras.update(budget=b, k=budget_to_k(b, inputs.tower.num_patches), difficulty=probs)
        return red


def _pick_rows(reds, cls):
    from .base import pad_rows
    rows = [reds[c].tokens[b][reds[c].mask[b]] for b, c in enumerate(cls.tolist())]
    first = next(iter(reds.values()))
    tokens, mask = pad_rows(rows, first.tokens.shape[-1])
    idx = torch.full(mask.shape, -1, dtype=torch.int64)
    idx[:, 0] = 0
    passes = max((r.vision_tokens for r in reds.values()), key=lambda v: v.shape[1]).clone()
    for b, c in enumerate(cls.tolist()):
        v = reds[c].vision_tokens[b]
        passes[b].zero_()
        passes[b, :v.shape[0]] = v
    return type(first)(tokens, mask, idx, passes)


def fit_classifier(classifier: nn.Module, images: torch.Tensor, question: torch.Tensor, labels: torch.Tensor,
                   epochs: int = 20, lr: float = 3e-3, batch_size: int = 64, seed: int = 0) -> List[float]:
    """Cross-entropy training on (image, question, label) tensors; returns the per-epoch mean loss."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(classifier.parameters(), lr=lr)
    losses = []
    classifier.train()
    for _ in range(epochs):
        perm, total = torch.randperm(len(labels), generator=gen), 0.0
        for i in range(0, len(labels), batch_size):
            j = perm[i:i + batch_size]
            loss = nn.functional.cross_entropy(classifier(images[j], question[j]), labels[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(j)
        losses.append(total / max(len(labels), 1))
    classifier.eval()
    return losses


def two_pass(answer: Callable[[torch.Tensor, torch.Tensor], tuple], batch: int, low: float = 0.2, high: float = 1.0,
             threshold: float = 0.6):
    """Seed 000's two-pass mode. ``answer(budget [B], rows [R] int64) -> (answers [R], confidence [R])`` runs the
    model on the given rows; rows whose low-budget confidence is under ``threshold`` are answered again at
    ``high``. Returns ``(answers [B], budget used [B], second pass [B] bool)``; FLOPs count both passes."""
    rows = torch.arange(batch)
    answers, conf = answer(torch.full((batch,), low, dtype=torch.float64), rows)
    again = conf.cpu() < threshold
    answers, used = answers.clone(), torch.full((batch,), low, dtype=torch.float64)
    if again.any():
        redo = rows[again]
        answers[redo.to(answers.device)] = answer(torch.full((len(redo),), high, dtype=torch.float64), redo)[0]
        used[again] = high
    return answers, used, again
