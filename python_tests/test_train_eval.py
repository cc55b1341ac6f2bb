"""The end-to-end pieces on a tiny configuration: the generated task and the LLaVA JSON format, the tiny
VLM's sequence assembly, training (loss goes down; a killed run resumes on the same loss curve; DDP over
2 gloo processes equals one process on the same global batch), and the evaluation outputs."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from vtp_ext import evaluate as ev
from vtp_ext.data import shapes_vqa as data
from vtp_ext.models.vlm import TinyVLM, VLMConfig
from vtp_ext.nn.reduction import Reduction
from vtp_ext.train import TrainConfig, load_controller, load_vlm, train

TINY = {"vision_dim": 32, "vision_depth": 2, "vision_heads": 2, "lm_dim": 32, "lm_layers": 2, "lm_heads": 2}


def losses(out_dir):
    with open(os.path.join(out_dir, "log.csv")) as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def test_task_is_deterministic_and_answers_are_right():
    a, b = data.make_sample(3, "train", 17), data.make_sample(3, "train", 17)
    assert np.array_equal(a.image, b.image) and a.questions == b.questions and a.answers == b.answers
    assert not np.array_equal(a.image, data.make_sample(3, "test", 17).image)
    seen = set()
    for i in range(50):   # check every answer against the drawn scene
        s = data.make_sample(0, "val", i, questions_per_image=8, kinds=data.ALL_KINDS)
        cells = np.flatnonzero(s.patch_labels)
        code = s.patch_labels[cells] - 1
        colors = [list(data.COLORS)[c // 12] for c in code]
        shapes = [data.SHAPES[(c // 4) % 3] for c in code]
        corners = [data.CORNERS[c % 4] for c in code]
        seen.update(s.kinds)
        for q, a, kind in zip(s.questions, s.answers, s.kinds):
            w = q.split()
            if kind == "colour":
                assert [colors[j] for j in range(len(cells)) if shapes[j] == w[4]] == [a]
            elif kind == "shape":
                assert shapes[colors.index(w[3])] == a
            elif kind == "detail":
                assert corners[colors.index(w[5])] == a
            elif kind == "position":
                r, c = divmod(int(cells[colors.index(w[3])]), 8)
                assert a == ("top" if r < 4 else "bottom") + ("left" if c < 4 else "right")
            elif kind == "count":
                assert int(a) == (len(cells) if w[2] == "objects" else shapes.count(w[2][:-1]))
            else:
                ci, cj = [x for x in w if x in data.COLORS]
                i, j = cells[colors.index(ci)], cells[colors.index(cj)]
                yes = (i % 8 < j % 8) if w[2] == "left" else (i // 8 < j // 8)
                assert a == ("yes" if yes else "no")
        assert not set(data.make_sample(0, "val", i, 8).kinds) & {"relation", "position"}   # not in the default mix
        # the pixels show it: each object's colour fills its cell's centre
        for cell, color in zip(cells, colors):
            r, c = (cell // 8) * 8 + 4, (cell % 8) * 8 + 3
            assert tuple(s.image[:, r, c]) == data.COLORS[color]
    assert seen == set(data.ALL_KINDS)


def test_llava_json_round_trip(tmp_path):
    path = data.write_llava_json(str(tmp_path), "test", 5, seed=1)
    loaded = data.load_llava_json(path)
    for i, s in enumerate(loaded):
        ref = data.make_sample(1, "test", i)
        assert np.array_equal(s.image, ref.image) and s.questions == ref.questions and s.answers == ref.answers
    import json
    rec = json.load(open(path))[0]
    assert rec["conversations"][0]["value"].startswith("<image>\n") and rec["conversations"][1]["from"] == "gpt"


def test_assemble_rows_and_labels():
    tok = data.WordTokenizer.task_vocabulary()
    torch.manual_seed(0)
    m = TinyVLM(VLMConfig(len(tok), **TINY))
    samples = [data.make_sample(0, "train", i, 2) for i in range(3)]
    b = data.encode_batch(samples, tok, multi_turn=True)
    img = torch.randn(3, 5, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    out = m.assemble(img, mask, b["text"], tok.pad, tok.bos, b["target"])
    for r in range(3):
        n_img, text = int(mask[r].sum()), [t for t in b["text"][r].tolist() if t != tok.pad]
        L = 1 + n_img + len(text)
        assert int(out["attention_mask"][r].sum()) == L and int(out["query_index"][r]) == L - 1
        torch.testing.assert_close(out["inputs_embeds"][r, 1:1 + n_img], img[r, :n_img])
        torch.testing.assert_close(out["inputs_embeds"][r, 1 + n_img:L], m.lm.embed_tokens(torch.tensor(text)))
        want = [-100] * L
        for j, (t, is_t) in enumerate(zip(text, b["target"][r].tolist())):
            if is_t:
                want[n_img + j] = t     # predicted at the previous position
        assert out["labels"][r, :L].tolist() == want
        answers = {tok.encode(a)[0] for a in samples[r].answers}
        assert {t for t in want if t >= 0} == answers | {tok.eos}


def test_key_gate_equals_dropping_and_has_the_derivative():
    """Tokens gated out stay in the LM's rows but are seen by no one: the forward equals the rows without
    them, and the loss's derivative with respect to a gate (including a closed one) is the finite
    difference of the relaxed gate (float64)."""
    tok = data.WordTokenizer.task_vocabulary()
    torch.manual_seed(0)
    m = TinyVLM(VLMConfig(len(tok), **TINY)).double().eval()
    b = data.encode_batch([data.make_sample(0, "train", i, 2) for i in range(3)], tok, multi_turn=True)
    images = b["images"].double()
    feats = m.tower.features(images)
    gate = (torch.rand(3, feats.shape[1], dtype=torch.float64) < 0.4).double()
    gate[:, 0] = 1
    n = int(gate.sum(1).max())
    keep = torch.stack([torch.cat([torch.nonzero(g).flatten(), torch.full((n - int(g.sum()),), -1)]) for g in gate])
    dropped = Reduction(torch.stack([torch.where(keep[r, :, None] >= 0, feats[r, keep[r].clamp(min=0)], 0) for r in range(3)]),
                        keep >= 0, keep, torch.zeros(3, 1, 1, dtype=torch.long))

    def gated(g):
        return Reduction(feats, torch.ones(feats.shape[:2], dtype=torch.bool), None, torch.zeros(3, 1, 1, dtype=torch.long),
                         extras={"key_gate": g})

    def loss(red):   # in float64 (TinyVLM.loss computes in float32)
        out = m(images, b["text"], b["image_index"], tok, b["target"], red)
        return torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), out.state.labels.flatten(), ignore_index=-100)

    torch.testing.assert_close(loss(gated(gate)), loss(dropped), rtol=0, atol=1e-12)
    g = gate.clone().requires_grad_(True)
    loss(gated(g)).backward()
    closed = torch.nonzero(gate[0] == 0).flatten()[:3].tolist()
    opened = torch.nonzero(gate[0] == 1).flatten()[1:3].tolist()
    for j in closed + opened:
        eps = 1e-6
        hi, lo = gate.clone(), gate.clone()
        hi[0, j] += eps
        lo[0, j] -= eps
        fd = (loss(gated(hi)) - loss(gated(lo))) / (2 * eps)
        assert abs(fd.item() - g.grad[0, j].item()) < 1e-6 * max(1.0, abs(fd.item()))
    assert g.grad[0, closed].abs().min() > 0     # the closed gates get a derivative


def small_cfg(tmp_path, name, **kw):
    base = dict(out_dir=str(tmp_path / name), steps=6, images_per_batch=4, questions_per_image=2, checkpoint_every=2,
                vlm=TINY, progress=False, lr=3e-3)
    base.update(kw)
    return TrainConfig(**base)


def test_training_resumes_on_the_same_loss_curve(tmp_path):
    ref = losses(os.path.dirname(train(small_cfg(tmp_path, "straight"))))
    cfg = small_cfg(tmp_path, "killed", resume=True)
    code = ("import sys; from vtp_ext.train import TrainConfig, train; "
            f"train(TrainConfig(**{cfg.__dict__!r}))")
    env = dict(os.environ, VTP_EXT_KILL_AT_STEP="2")   # dies (os._exit) after step 2; the last checkpoint is step 2
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path)   # cwd: never the source tree
    assert proc.returncode == 137
    assert len(losses(cfg.out_dir)) == 3
    train(cfg)                                            # resume
    got = losses(cfg.out_dir)
    assert [s for s, _ in got] == list(range(6))
    np.testing.assert_allclose([v for _, v in got], [v for _, v in ref], rtol=0, atol=1e-6)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_equal_one(tmp_path):
    one = small_cfg(tmp_path, "one", steps=3)
    train(one)
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", "-m", "vtp_ext",
           "train", "--out-dir", str(two), "--steps", "3", "--images-per-batch", "4", "--questions-per-image", "2",
           "--checkpoint-every", "2", "--vlm", __import__("json").dumps(TINY), "--no-progress", "--lr", "0.003"]
    subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600, cwd=tmp_path)
    np.testing.assert_allclose([v for _, v in losses(str(two))], [v for _, v in losses(one.out_dir)], rtol=0, atol=1e-5)


def test_controller_stage_and_evaluation(tmp_path):
    vlm = train(small_cfg(tmp_path, "vlm", steps=4))
    ctrl = train(small_cfg(tmp_path, "ctrl", stage="controller", init=vlm, steps=3, fusion="B"))
    model, tok, _ = load_vlm(vlm)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    controller = load_controller(ctrl, model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # frozen VLM untouched
    log = losses(os.path.dirname(ctrl))
    assert len(log) == 3
    budgets = [float(r["budget"]) for r in csv.DictReader(open(os.path.join(os.path.dirname(ctrl), "log.csv")))]
    assert all(0.2 <= b <= 1.0 for b in budgets) and len(set(budgets)) == 3
    results = ev.evaluate(model, tok, {"B": controller}, ["full", "saliency", "fastv", "adaptive-B"], [0.2, 1.0],
                          test_images=8, progress=False, out_dir=str(tmp_path / "eval"))
    assert len(results) == 7   # full runs once: it ignores the budget
    by = {(r["method"], r["budget"]): r for r in results}
    assert by[("saliency", 0.2)]["tokens"] == 1 + 12 and by[("full", 1.0)]["tokens"] == 65
    assert by[("saliency", 0.2)]["gflops_tiny"] < by[("full", 1.0)]["gflops_tiny"]
    assert by[("fastv", 0.2)]["tflops_llava7b"] < by[("full", 1.0)]["tflops_llava7b"]
    assert os.path.getsize(tmp_path / "eval" / "accuracy_vs_flops.png") > 1000
    assert "saliency" in ev.format_table(results)


def test_joint_controller_brings_its_own_vlm(tmp_path, recwarn):
    vlm = train(small_cfg(tmp_path, "vlm", steps=3))
    ctrl = train(small_cfg(tmp_path, "ctrl", stage="controller", init=vlm, steps=2, fusion="A", joint=True))
    # the tower is both the controller's and the VLM's: the optimizer must list its parameters once
    assert not [w for w in recwarn if "duplicate" in str(w.message)]
    model, tok, _ = load_vlm(vlm)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    controller = load_controller(ctrl, model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # the caller's model is untouched
    tuned = controller.tuned_vlm
    assert tuned is not None and controller.tower is tuned.tower
    assert any(not torch.equal(before[k], v) for k, v in tuned.state_dict().items())
    assert "tuned_vlm" not in dict(controller.named_children())
    results = ev.evaluate(model, tok, {"A-joint": controller}, ["adaptive-A-joint"], [1.0], test_images=4, progress=False)
    full = ev.evaluate(tuned, tok, {}, ["full"], [1.0], test_images=4, progress=False)
    assert results[0]["accuracy"] == full[0]["accuracy"]   # K = N: the tuned VLM at every token


def test_train_and_evaluate_on_a_llava_json(tmp_path):
    """A user's own data: training and evaluation read the LLaVA conversation format; its words join the
    vocabulary."""
    import json
    path = data.write_llava_json(str(tmp_path / "data"), "train", 6, seed=2)
    records = json.load(open(path))
    records[0]["conversations"][1]["value"] = "vermilion"        # a word the task vocabulary lacks
    json.dump(records, open(path, "w"))
    final = train(small_cfg(tmp_path, "own", steps=3, train_json=path))
    model, tok, _ = load_vlm(final)
    assert "vermilion" in tok.vocab and len(losses(os.path.dirname(final))) == 3
    samples = data.load_llava_json(path)
    results = ev.evaluate(model, tok, {}, ["full", "saliency"], [0.5], progress=False, samples=samples)
    assert [r["method"] for r in results] == ["full", "saliency"]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in results) and results[1]["tokens"] == 1 + 32
