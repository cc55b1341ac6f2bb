"""The main job: generate the ShapesVQA data, train the tiny VLM and the adaptive controller (options A and
B; cached checkpoints are reused), fit the difficulty classifier, evaluate every method at every budget,
and print the table and the plot's path."""
from __future__ import annotations

import dataclasses
import json
import os
import time

import torch

from . import evaluate as ev
from .data import shapes_vqa as data
from .train import TrainConfig, load_controller, load_vlm, train

# Step counts sized for <= 15 minutes on 2 CPU cores (see README: the main job).
VLM_STEPS, CONTROLLER_STEPS = 1000, 300


def _cached(cfg: TrainConfig) -> bool:
    """A finished run with the same configuration (progress output aside) is reused."""
    path = os.path.join(cfg.out_dir, "config.json")
    if not os.path.exists(os.path.join(cfg.out_dir, "final.pt")) or not os.path.exists(path):
        return False
    with open(path) as f:
        old = json.load(f)
    new = dataclasses.asdict(cfg)
    return {k: v for k, v in old.items() if k != "progress"} == {k: v for k, v in new.items() if k != "progress"}


def run(out_dir: str = "runs/demo", vlm_steps: int = VLM_STEPS, controller_steps: int = CONTROLLER_STEPS,
        test_images: int = 256, progress: bool = True) -> str:
    t0 = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "data", "test.json")
    if not os.path.exists(json_path):   # the task in the LLaVA conversation format, for other trainers
        data.write_llava_json(os.path.join(out_dir, "data"), "test", 64)
    stage1 = TrainConfig(out_dir=os.path.join(out_dir, "vlm"), steps=vlm_steps, progress=progress, resume=True)
    vlm_path = os.path.join(stage1.out_dir, "final.pt") if _cached(stage1) else train(stage1)
    controllers = {}
    for fusion in ("A", "B"):
        cfg = TrainConfig(out_dir=os.path.join(out_dir, f"controller_{fusion}"), stage="controller", init=vlm_path,
                          steps=controller_steps, fusion=fusion, lr=3e-3, progress=progress, resume=True)
        controllers[fusion] = os.path.join(cfg.out_dir, "final.pt") if _cached(cfg) else train(cfg)
    model, tok, _ = load_vlm(vlm_path)
    loaded = {f: load_controller(p, model) for f, p in controllers.items()}
    torch.manual_seed(0)
    clf = ev.train_difficulty(model, tok)
    results = ev.evaluate(model, tok, loaded, test_images=test_images, difficulty=clf, progress=progress)
    csv_path, png_path = ev.write_outputs(results, out_dir)
    lines = [ev.format_table(results), "",
             f"results: {csv_path}", f"plot:    {png_path}",
             f"data:    {json_path} (LLaVA conversation format)",
             f"total:   {time.perf_counter() - t0:.0f} s"]
    return "\n".join(lines)
