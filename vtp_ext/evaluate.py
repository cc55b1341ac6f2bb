"""Evaluation (seed 002 sections 3.3, 5.8): every method of vtp_ext.methods at budgets of 20-100% of the
patch tokens, plus ``difficulty`` at its own budgets: accuracy, FLOPs (the tiny model's, and what the
same token fractions cost on LLaVA-1.5-7B), and wall time per question. Prints a table and writes a CSV
and a PNG plot of accuracy against FLOPs, one curve per method."""
from __future__ import annotations

import csv
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch

from . import flops, methods
from .data import shapes_vqa as data
from .methods.base import VisionInputs
from .methods.difficulty import DifficultyClassifier, difficulty_labels, fit_classifier
from .models.vlm import TinyVLM
from .nn.reduction import Reduction

BUDGETS = (0.2, 0.4, 0.6, 0.8, 1.0)
METHODS = ("full", "random", "pool", "saliency", "pyramid", "tome", "prumerge", "prumerge+", "fastv",
           "pyramiddrop", "adaptive-A", "adaptive-B")
LLAVA_TEXT_TOKENS = 64   # a typical LLaVA-1.5 prompt around the image


def controller_of(name: str, controllers: Dict[str, torch.nn.Module]) -> Optional[torch.nn.Module]:
    """``adaptive-<key>`` -> ``controllers[<key>]``; None for every other method."""
    return controllers[name.split("-", 1)[1]] if name.startswith("adaptive") else None


def build_method(name: str, model: TinyVLM, controllers: Dict[str, torch.nn.Module], seed: int = 0):
    if name.startswith("adaptive"):
        return methods.get("adaptive", controller=controller_of(name, controllers), seed=seed)
    config = {"random": dict(seed=seed), "pyramiddrop": dict(num_lm_layers=model.config.lm_layers),
              "fastv": dict(k=min(2, model.config.lm_layers - 1)), "pyramid": dict(levels=3)}.get(name, {})
    return methods.get(name, **config)


def token_counts(red: Reduction, lm_layers: int) -> Dict[str, torch.Tensor]:
    """What FLOPs depend on, per sample: encoder tokens per block, image tokens into the projector, and
    image tokens per LM layer."""
    return {"vision": red.vision_tokens.cpu(), "image": red.num_tokens.cpu(), "lm": red.lm_image_tokens(lm_layers).cpu()}


def scaled_to_llava(counts: Dict[str, torch.Tensor], num_patches: int, llava_patches: int = 576) -> Dict[str, torch.Tensor]:
    """The same token *fractions* at the same relative depths on LLaVA-1.5-7B: 576 patches + CLS, the ViT-L
    running 23 of its 24 blocks (LLaVA's penultimate layer), 32 LM layers."""
    def scale(n):
        return torch.round((n.double() - 1).clamp(min=0) * llava_patches / num_patches).long() + 1
    vt = counts["vision"]
    vt = vt[..., torch.linspace(0, vt.shape[-1] - 1, 24).round().long()]
    lm = counts["lm"]
    lm = lm[:, torch.arange(32) * lm.shape[1] // 32]
    return {"vision": scale(vt) * (vt > 0), "image": scale(counts["image"]), "lm": scale(lm)}


def row_flops(spec, counts: Dict[str, torch.Tensor], rows: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
    """Prefill FLOPs per question row. A vision pass serves all of its image's questions, so it is charged
    once per image and shared by that image's rows."""
    per_image = flops.vision_flops(spec, counts["vision"]) + flops.projector_flops(spec, counts["image"])
    shared = torch.bincount(rows, minlength=len(per_image)).clamp(min=1).double()
    return per_image[rows] / shared[rows] + flops.lm_flops(spec, counts["lm"][rows], text_tokens)


@torch.no_grad()
def run_method(model: TinyVLM, tok, method, batch, budget, question_aware: bool) -> tuple:
    """-> (correct [Q] bool, reduction over the rows it ran on, rows' image index, seconds)."""
    t0 = time.perf_counter()
    images, idx = batch["images"], batch["image_index"]
    if question_aware:   # one vision pass per question (the method reads the question)
        q_emb = model.lm.embed_tokens(batch["text"])
        q_text = [tok.decode([t for t in row.tolist() if t != tok.pad]) for row in batch["text"]]
        red = method.run(VisionInputs(model.tower, images[idx], q_emb, q_text), budget)
        rows = torch.arange(len(idx))
    else:
        red = method.run(VisionInputs(model.tower, images), budget)
        rows = idx
    out = model(images, batch["text"], rows, tok, reduction=red) if not question_aware else \
        model(images[idx], batch["text"], rows, tok, reduction=red)
    pred = model.first_answer_logits(out).argmax(-1)
    return pred == batch["answer"][:, 0], red, rows, time.perf_counter() - t0


def train_difficulty(model: TinyVLM, tok, inner: str = "saliency", levels=(0.2, 0.4, 0.8), images: int = 256,
                     seed: int = 0, epochs: int = 30) -> DifficultyClassifier:
    """Seed 000: label each validation question with the lowest budget level at which the model answers it
    correctly, then fit the image + question classifier on those labels."""
    batch = data.encode_batch([data.make_sample(seed, "val", i) for i in range(images)], tok)
    method = methods.get(inner)
    correct = torch.stack([run_method(model, tok, method, batch, lv, False)[0] for lv in levels], 1)
    labels = difficulty_labels(correct)
    clf = DifficultyClassifier(model.config.lm_dim)
    q = model.lm.embed_tokens(batch["text"]).detach()
    fit_classifier(clf, batch["images"][batch["image_index"]], q, labels, epochs=epochs, seed=seed)
    return clf


def evaluate(model: TinyVLM, tok, controllers: Dict[str, torch.nn.Module], method_names: Sequence[str] = METHODS,
             budgets: Sequence[float] = BUDGETS, test_images: int = 256, seed: int = 0,
             difficulty: Optional[DifficultyClassifier] = None, out_dir: Optional[str] = None,
             progress: bool = True, samples: Optional[Sequence[data.Sample]] = None) -> List[dict]:
    """``samples``: evaluate on these (e.g. ``data.load_llava_json(path)``) instead of ``test_images``
    generated ShapesVQA test images."""
    model.eval()
    if samples is None:
        samples = [data.make_sample(seed, "test", i) for i in range(test_images)]
    batch = data.encode_batch(samples, tok)
    spec, llava = model.flops_spec(), flops.PRESETS["llava-1.5-7b"]
    n_patches = model.tower.num_patches
    jobs = [(m, b) for m in method_names for b in (budgets if m != "full" else [1.0])]   # full ignores the budget
    if difficulty is not None:
        jobs.append(("difficulty", None))
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(jobs), desc="evaluate", dynamic_ncols=True,
                   mininterval=0.1 if sys.stderr.isatty() else 10.0)   # a CI log gets a line per 10 s
    results = []
    for name, budget in jobs:
        if name == "difficulty":
            method = methods.get("difficulty", classifier=difficulty, inner="saliency", levels=(0.2, 0.4, 0.8))
            correct, red, rows, sec = run_method(model, tok, method, batch, 1.0, True)
            budget = float(red.extras["budget"].mean())
        else:
            method = build_method(name, model, controllers, seed)
            aware = name == "pyramid-ptp"
            # a controller tuned jointly with the VLM runs with its own copy of it
            vlm = getattr(controller_of(name, controllers), "tuned_vlm", None)
            correct, red, rows, sec = run_method(vlm or model, tok, method, batch, budget, aware)
        counts = token_counts(red, spec.lm.layers)
        f_tiny = row_flops(spec, counts, rows, (batch["text"] != tok.pad).sum(1) + 1)
        f_llava = row_flops(llava, scaled_to_llava(counts, n_patches), rows, torch.full((len(rows),), LLAVA_TEXT_TOKENS))
        acc = correct.float()
        row = {"method": name, "budget": round(budget, 4), "accuracy": acc.mean().item(),
               "tokens": red.num_tokens.double()[rows].mean().item(), "gflops_tiny": f_tiny.mean().item() / 1e9,
               "tflops_llava7b": f_llava.mean().item() / 1e12, "ms_per_question": 1e3 * sec / len(rows)}
        for d, kind in enumerate(("easy", "medium", "hard")):
            sel = batch["difficulty"] == d
            row[f"acc_{kind}"] = acc[sel].mean().item() if sel.any() else float("nan")
        results.append(row)
        if bar is not None:
            bar.set_postfix(method=name, acc=f"{row['accuracy']:.3f}", refresh=False)
            bar.update(1)
    if bar is not None:
        bar.close()
    if out_dir:
        write_outputs(results, out_dir)
    return results


def format_table(results: List[dict]) -> str:
    head = f"{'method':<16} {'budget':>6} {'tokens':>7} {'acc':>6} {'easy':>6} {'med':>6} {'hard':>6} " \
           f"{'GFLOPs':>8} {'LLaVA-7B TFLOPs':>15} {'ms/q':>6}"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r['method']:<16} {r['budget']:>6.2f} {r['tokens']:>7.1f} {r['accuracy']:>6.3f} "
                     f"{r['acc_easy']:>6.3f} {r['acc_medium']:>6.3f} {r['acc_hard']:>6.3f} {r['gflops_tiny']:>8.4f} "
                     f"{r['tflops_llava7b']:>15.3f} {r['ms_per_question']:>6.2f}")
    return "\n".join(lines)


def write_outputs(results: List[dict], out_dir: str) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    csv_path, png_path = os.path.join(out_dir, "results.csv"), os.path.join(out_dir, "accuracy_vs_flops.png")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, list(results[0]))
        w.writeheader()
        w.writerows(results)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name in dict.fromkeys(r["method"] for r in results):
        pts = sorted((r["tflops_llava7b"], r["accuracy"]) for r in results if r["method"] == name)
        ax.plot(*zip(*pts), marker="o" if len(pts) > 1 else "*", markersize=5 if len(pts) > 1 else 12, label=name)
    ax.set_xlabel("prefill TFLOPs at the same token fractions on LLaVA-1.5-7B")
    ax.set_ylabel("accuracy (ShapesVQA test)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return csv_path, png_path
