"""Training (seed 002 section 3.3). Stage ``vlm``: the tiny VLM at full tokens, next-token loss on the answer
tokens (plus an optional per-patch auxiliary loss that speeds up learning the vision side from scratch).
Stage ``controller``: the adaptive token controller (option A or B) with the language-model loss only, a
budget b ~ U[budget_min, budget_max] per batch (or per sample), Gumbel straight-through, AdamW; the VLM
frozen or tuned jointly.

Checkpoints are atomic (temp file + rename) and hold the model, optimizer, scheduler, RNG states and the
data position, so ``resume=True`` continues a killed run on the same loss curve. Under ``torchrun`` the
same code runs DDP (gloo on CPU, nccl on GPUs); each rank takes an equal slice of every global batch.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import os
import random
import sys
import time
from typing import Optional

import torch
from torch import nn

from .data import shapes_vqa as data
from .models.vlm import TinyVLM, VLMConfig
from .nn.controller import AdaptiveTokenController
from .nn.reduction import budget_to_k


@dataclasses.dataclass
class TrainConfig:
    out_dir: str = "runs/demo/vlm"
    stage: str = "vlm"                 # "vlm" | "controller"
    init: Optional[str] = None         # controller stage: the stage-1 checkpoint
    steps: int = 600
    images_per_batch: int = 16         # global batch (split over ranks); every image brings questions_per_image rows
    questions_per_image: int = 8
    lr: float = 2e-3
    warmup: float = 0.1
    weight_decay: float = 0.01
    seed: int = 0
    data_seed: int = 0
    checkpoint_every: int = 100
    resume: bool = False
    aux_weight: float = 1.0            # vlm stage: per-patch auxiliary loss weight (0 = language-model loss only)
    curriculum: bool = False           # easy question kinds first, then medium, then all (seed 000 section 4)
    fusion: str = "A"                  # controller options (vtp_ext.nn.AdaptiveTokenController)
    logits: str = "per_patch"
    output: str = "compact"            # how the trained controller returns tokens in evaluation
    key_gate: bool = True              # training: dropped tokens stay behind the LM's key gate (they get a gradient)
    tau: float = 5.0
    budget_min: float = 0.2
    budget_max: float = 1.0
    per_sample_budget: bool = False
    joint: bool = False                # controller stage: also tune the VLM
    vlm: dict = dataclasses.field(default_factory=dict)   # VLMConfig overrides for the vlm stage
    train_json: Optional[str] = None   # train on a LLaVA conversation JSON instead of generated ShapesVQA
    progress: bool = True


def _dist():
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def atomic_save(obj, path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_vlm(path: str) -> tuple[TinyVLM, data.WordTokenizer, dict]:
    """A stage-1 checkpoint -> (model in eval mode, tokenizer, checkpoint dict)."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    tok = data.WordTokenizer([])
    tok.vocab = ck["vocab"]
    tok.index = {w: i for i, w in enumerate(tok.vocab)}
    model = TinyVLM(VLMConfig(**ck["vlm_config"]))
    model.load_state_dict(ck["model"])
    return model.eval(), tok, ck


def build_controller(model: TinyVLM, fusion="A", logits="per_patch", output="compact", tau=5.0) -> AdaptiveTokenController:
    return AdaptiveTokenController(model.tower, fusion=fusion, logits=logits, output=output, tau=tau)


class _Step(nn.Module):
    """The trained computation as one module (what DDP wraps): batch -> (loss, lm loss)."""

    def __init__(self, cfg: TrainConfig, model: TinyVLM, controller: Optional[AdaptiveTokenController], tok):
        super().__init__()
        self.cfg, self.model, self.controller, self.tok = cfg, model, controller, tok

    def forward(self, batch, budget, gumbel_seed):
        m = self.model
        if self.controller is None:
            red = m.full_reduction(batch["images"])
            lm_loss = m.loss(m(batch["images"], batch["text"], batch["image_index"], self.tok, batch["target"], red))
            if m.aux_head is None or self.cfg.aux_weight == 0 or "patch_labels" not in batch:
                return lm_loss, lm_loss
            patches = red.tokens[:, 1:]
            aux = nn.functional.cross_entropy(m.aux_head(patches).flatten(0, 1), batch["patch_labels"].flatten())
            return lm_loss + self.cfg.aux_weight * aux, lm_loss
        red = self.controller(batch["images"], budget, seed=gumbel_seed, output="gated" if self.cfg.key_gate else None)
        lm_loss = m.loss(m(batch["images"], batch["text"], batch["image_index"], self.tok, batch["target"], red))
        return lm_loss, lm_loss


def _kinds(cfg: TrainConfig, step: int):
    if not cfg.curriculum:
        return data.KINDS
    frac = step / max(cfg.steps, 1)
    level = 0 if frac < 0.2 else 1 if frac < 0.4 else 2
    return tuple(k for k in data.KINDS if data.DIFFICULTY[k] <= level)


def train(cfg: TrainConfig) -> str:
    """Run (or resume) one stage; returns the path of the final checkpoint (``<out_dir>/final.pt``)."""
    rank, world = _dist()
    if cfg.images_per_batch % world:
        raise ValueError(f"vtp_ext.train: images_per_batch {cfg.images_per_batch} must be divisible by the {world} ranks")
    os.makedirs(cfg.out_dir, exist_ok=True)
    ckpt_path, log_path = os.path.join(cfg.out_dir, "checkpoint.pt"), os.path.join(cfg.out_dir, "log.csv")
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    tok = data.WordTokenizer.task_vocabulary()
    pool = data.load_llava_json(cfg.train_json, cfg.vlm.get("image_size", data.IMAGE)) if cfg.train_json else None
    if pool is not None and cfg.stage == "vlm":   # the user's words join the task vocabulary
        tok = data.WordTokenizer(tok.vocab + [w for smp in pool for t in smp.questions + smp.answers
                                              for w in t.lower().split()])
    if cfg.stage == "vlm":
        vlm_cfg = VLMConfig(len(tok), aux_classes=data.PATCH_CLASSES if cfg.aux_weight else 0, **cfg.vlm)
        model, controller = TinyVLM(vlm_cfg), None
        params = list(model.parameters())
    elif cfg.stage == "controller":
        if cfg.init is None:
            raise ValueError("vtp_ext.train: the controller stage needs init= (a stage-1 checkpoint)")
        model, tok, ck = load_vlm(cfg.init)
        if cfg.train_json:
            pool = data.load_llava_json(cfg.train_json, model.config.image_size)
        vlm_cfg = VLMConfig(**ck["vlm_config"])
        torch.manual_seed(cfg.seed)
        controller = build_controller(model, cfg.fusion, cfg.logits, cfg.output, cfg.tau)
        model.requires_grad_(cfg.joint)
        model.freeze_unused()
        if model.aux_head is not None:   # stage-1 only: unused here (DDP needs it frozen)
            model.aux_head.requires_grad_(False)
        # the controller's tower is the VLM's: its parameters follow the joint flag, and are listed once
        params = list({id(p): p for p in [*controller.parameters(), *(model.parameters() if cfg.joint else [])]
                       if p.requires_grad}.values())
    else:
        raise ValueError(f"vtp_ext.train: stage must be 'vlm' or 'controller', got {cfg.stage!r}")
    step_module = _Step(cfg, model, controller, tok).train()
    if not cfg.joint and controller is not None:
        model.eval()
    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, int(cfg.warmup * cfg.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    start, pos = 0, 0
    if cfg.resume and os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        if controller is not None:
            controller.load_state_dict(ck["controller"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["rng"]["torch"])
        random.setstate(ck["rng"]["python"])
        start, pos = ck["step"], ck["data_pos"]
    if rank == 0:   # the log holds exactly the steps the checkpoint has seen
        rows = []
        if start and os.path.exists(log_path):
            with open(log_path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) < start]
        with open(log_path, "w", newline="") as f:
            w = csv.DictWriter(f, ["step", "loss", "lm_loss", "budget", "lr", "seconds"])
            w.writeheader()
            w.writerows(rows)
    ddp = torch.nn.parallel.DistributedDataParallel(step_module) if world > 1 else step_module

    def save(step, final=False):
        if rank:
            return
        state = {"model": model.state_dict(), "controller": controller.state_dict() if controller is not None else None,
                 "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step, "data_pos": pos,
                 "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
                 "config": dataclasses.asdict(cfg), "vlm_config": dataclasses.asdict(vlm_cfg), "vocab": tok.vocab}
        atomic_save(state, ckpt_path)
        if final:
            atomic_save(state, os.path.join(cfg.out_dir, "final.pt"))

    bar = None
    if cfg.progress and rank == 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.stage}" + (f" {cfg.fusion}" if controller else ""),
                   dynamic_ncols=True,
                   mininterval=0.1 if sys.stderr.isatty() else 10.0)   # a CI log gets a line per 10 s
    kill_at = int(os.environ.get("VTP_EXT_KILL_AT_STEP", "-1"))   # tests: a hard kill right after that step
    t0, lm_tokens = time.perf_counter(), 0
    for step in range(start, cfg.steps):
        if pool is not None:   # the user's records, in order, cycling (the position is what a resume restores)
            samples = [pool[(pos + j) % len(pool)] for j in range(cfg.images_per_batch)]
        else:
            samples = [data.make_sample(cfg.data_seed, "train", pos + j, cfg.questions_per_image, _kinds(cfg, step))
                       for j in range(cfg.images_per_batch)]
        pos += cfg.images_per_batch
        share = cfg.images_per_batch // world
        batch = data.encode_batch(samples[rank * share:(rank + 1) * share], tok, multi_turn=True)
        # budgets and Gumbel seeds from (seed, step): identical on every rank and after a resume
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        n_b = batch["images"].shape[0] if cfg.per_sample_budget else 1
        budget = cfg.budget_min + (cfg.budget_max - cfg.budget_min) * torch.rand(n_b, generator=g, dtype=torch.float64)
        budget = budget.expand(batch["images"].shape[0]).clone() if controller is not None else torch.ones(1)
        gumbel_seed = int(torch.randint(0, 2**62, (), generator=g)) + rank
        loss, lm_loss = ddp(batch, budget, gumbel_seed)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        stats = torch.stack([loss.detach(), lm_loss.detach()])
        if world > 1:
            torch.distributed.all_reduce(stats)
            stats /= world
        if rank == 0:
            with open(log_path, "a", newline="") as f:
                csv.writer(f).writerow([step, f"{stats[0].item():.8f}", f"{stats[1].item():.8f}",
                                        f"{budget.mean().item():.4f}", f"{sched.get_last_lr()[0]:.6g}",
                                        f"{time.perf_counter() - t0:.2f}"])
        if bar is not None:
            # tokens the LM read this step on this rank: <bos> + the image tokens kept + the text of each row
            n_img = 1 + (budget_to_k(budget, model.tower.num_patches) if controller is not None
                         else torch.full((batch["images"].shape[0],), model.tower.num_patches))
            lm_tokens += int(n_img[batch["image_index"]].sum() + (batch["text"] != tok.pad).sum()) + len(batch["text"])
            seconds = time.perf_counter() - t0
            questions = (step + 1 - start) * cfg.images_per_batch * cfg.questions_per_image
            bar.set_postfix(loss=f"{stats[1].item():.3f}", budget=f"{budget.mean().item():.2f}",
                            qa_per_s=f"{questions / seconds:.0f}", tok_per_s=f"{lm_tokens / seconds:.0f}", refresh=False)
            bar.update(1)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            save(step + 1, final=step + 1 == cfg.steps)
        if step == kill_at:
            os._exit(137)
    if bar is not None:
        bar.close()
    if start >= cfg.steps:
        save(cfg.steps, final=True)
    if world > 1:
        torch.distributed.barrier()
    with open(os.path.join(cfg.out_dir, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=1)
    return os.path.join(cfg.out_dir, "final.pt")


def load_controller(path: str, model: TinyVLM) -> AdaptiveTokenController:
    """A controller-stage checkpoint on top of ``model``. A controller tuned jointly with the VLM comes with
    its own copy of it (``controller.tuned_vlm``, ``model`` is left alone); otherwise ``tuned_vlm`` is None."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    c = ck["config"]
    tuned = None
    if c.get("joint"):
        tuned = copy.deepcopy(model)
        tuned.load_state_dict(ck["model"])
        tuned.eval()
    controller = build_controller(tuned or model, c["fusion"], c["logits"], c["output"], c["tau"])
    controller.load_state_dict(ck["controller"])
    controller.__dict__["tuned_vlm"] = tuned   # a plain attribute: not a submodule of the controller
    return controller.eval()
