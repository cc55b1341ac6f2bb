"""The main job: generate the ShapesVQA data, train the tiny VLM and the adaptive controller (options A and
B, with the VLM frozen and tuned jointly; cached checkpoints are reused), fit the difficulty classifier,
evaluate every method at every budget, and print the table and the plot's path."""
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
    """A finished run with the same configuration (progress output aside) is reused; a finished run of
    another configuration is cleared (its checkpoint must not be resumed). A run that was killed before
    it finished (no config.json yet) resumes."""
    path = os.path.join(cfg.out_dir, "config.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        old = json.load(f)
    new = dataclasses.asdict(cfg)
    same = {k: v for k, v in old.items() if k != "progress"} == {k: v for k, v in new.items() if k != "progress"}
    if same and os.path.exists(os.path.join(cfg.out_dir, "final.pt")):
        return True
    for name in ("config.json", "checkpoint.pt", "final.pt"):
        if os.path.exists(os.path.join(cfg.out_dir, name)):
            os.remove(os.path.join(cfg.out_dir, name))
    return False


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
    # Frozen VLM (every method shares one model: the fair comparison), then tuned with the controller as
    # AdaLLaVA does (the VLM adapts to seeing fewer tokens; it has its own copy of the weights).
    for fusion, joint in (("A", False), ("B", False), ("A", True), ("B", True)):
        name = fusion + ("-joint" if joint else "")
        cfg = TrainConfig(out_dir=os.path.join(out_dir, f"controller_{name}"), stage="controller", init=vlm_path,
                          steps=controller_steps, fusion=fusion, joint=joint, lr=1e-3 if joint else 3e-3,
                          progress=progress, resume=True)
        controllers[name] = os.path.join(cfg.out_dir, "final.pt") if _cached(cfg) else train(cfg)
    model, tok, _ = load_vlm(vlm_path)
    loaded = {f: load_controller(p, model) for f, p in controllers.items()}
    torch.manual_seed(0)
    clf = ev.train_difficulty(model, tok)
    names = [m for m in ev.METHODS if not m.startswith("adaptive")] + [f"adaptive-{n}" for n in loaded]
    results = ev.evaluate(model, tok, loaded, names, test_images=test_images, difficulty=clf, progress=progress)
    csv_path, png_path = ev.write_outputs(results, out_dir)
    lines = [ev.format_table(results), "",
             f"results: {csv_path}", f"plot:    {png_path}",
             f"data:    {json_path} (LLaVA conversation format)",
             f"total:   {time.perf_counter() - t0:.0f} s"]
    return "\n".join(lines)
