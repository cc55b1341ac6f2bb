"""``python -m vtp_ext info | demo | train | eval | bench``."""
from __future__ import annotations

import argparse
import sys


def info() -> str:
    import torch

    import vtp_ext
    from vtp_ext import _build_info

    ops = sorted({s.name.split("::", 1)[1] for s in torch._C._jit_get_all_schemas() if s.name.startswith("vtp_ext::")})
    cuda = f"yes (archs {_build_info.CUDA_ARCHS}, nvcc {_build_info.CUDA_COMPILER})" if vtp_ext.cuda_built() else "no"
    lines = [
        f"vtp_ext {vtp_ext.__version__}",
        f"torch {torch.__version__} (built against torch {_build_info.TORCH_VERSION}; stable ABI, torch >= 2.10)",
        f"CUDA kernels compiled: {cuda}",
        f"CUDA device available: {torch.cuda.is_available()}",
        f"CPU kernels: {vtp_ext._C.cpu_isa}",
        f"ops: {', '.join('torch.ops.vtp_ext.' + o for o in ops)}",
    ]
    return "\n".join(lines)


def _train_parser(sub):
    import dataclasses
    import json

    from .train import TrainConfig

    p = sub.add_parser("train", help="train one stage (vlm | controller); torchrun-able")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif isinstance(default, dict):
            p.add_argument(flag, type=json.loads, default=default, help="JSON object")
        else:
            p.add_argument(flag, type=type(default) if default is not None else str, default=default)
    return p


def bench(bench_dir: str, quick: bool) -> str:
    """Run the op benchmarks (pytest-benchmark) and tabulate vtp_ext's speed-up over every reference."""
    import json
    import os
    import subprocess
    import tempfile

    if not os.path.isdir(bench_dir):
        raise SystemExit(f"python -m vtp_ext bench: no benchmark folder at {bench_dir!r} (run from the repository root "
                         "or pass --bench-dir)")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bench.json")
        env = dict(os.environ, VTP_BENCH_QUICK="1" if quick else os.environ.get("VTP_BENCH_QUICK", "0"))
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", bench_dir, f"--benchmark-json={out}",
               "--benchmark-disable-gc"]
        subprocess.run(cmd, env=env, check=False, cwd=os.path.dirname(os.path.abspath(bench_dir)))
        with open(out) as f:
            report = json.load(f)
    groups = {}
    for b in report["benchmarks"]:
        impl = b.get("params", {}).get("impl", b["name"])
        groups.setdefault(b["group"], {})[impl] = b["stats"]["min"]
    lines = [f"{'benchmark':<70} {'vtp_ext ms':>10}  {'reference':<34} {'ref ms':>9} {'speed-up':>8}"]
    for group, impls in groups.items():
        ours = {k: v for k, v in impls.items() if k.startswith("vtp_ext")}
        if not ours:
            continue
        name, t = min(ours.items(), key=lambda kv: kv[1])
        for ref, tr in impls.items():
            if not ref.startswith("vtp_ext"):
                lines.append(f"{group[:70]:<70} {1e3 * t:>10.3f}  {ref[:34]:<34} {1e3 * tr:>9.3f} {tr / t:>7.1f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vtp_ext")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, torch, CUDA build and registered ops")
    d = sub.add_parser("demo", help="the main job: data, training (cached), evaluation of every method, table + plot")
    d.add_argument("--out-dir", default="runs/demo")
    d.add_argument("--vlm-steps", type=int, default=None)
    d.add_argument("--controller-steps", type=int, default=None)
    d.add_argument("--test-images", type=int, default=256)
    _train_parser(sub)
    e = sub.add_parser("eval", help="evaluate every method at every budget from trained checkpoints")
    e.add_argument("--vlm", required=True, help="stage-1 checkpoint (final.pt)")
    e.add_argument("--controller", action="append", default=[], metavar="NAME=PATH",
                   help="controller checkpoints, e.g. A=runs/demo/controller_A/final.pt")
    e.add_argument("--methods", default=None, help="comma-separated method names (default: all)")
    e.add_argument("--budgets", default="0.2,0.4,0.6,0.8,1.0")
    e.add_argument("--test-images", type=int, default=256)
    e.add_argument("--test-json", default=None, help="evaluate on a LLaVA conversation JSON instead of ShapesVQA")
    e.add_argument("--out-dir", default="runs/eval")
    b = sub.add_parser("bench", help="run the op benchmarks and print one table of speed-up ratios")
    b.add_argument("--bench-dir", default="bench")
    b.add_argument("--quick", action="store_true", help="one shape per benchmark (VTP_BENCH_QUICK=1)")
    args = parser.parse_args(argv)
    if args.command == "info":
        print(info())
    elif args.command == "demo":
        from . import demo
        kw = {k: v for k, v in (("vlm_steps", args.vlm_steps), ("controller_steps", args.controller_steps)) if v}
        print(demo.run(args.out_dir, test_images=args.test_images, **kw))
    elif args.command == "train":
        from .train import TrainConfig, train
        cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k != "command"})
        print(train(cfg))
    elif args.command == "eval":
        from . import evaluate as ev
        from .train import load_controller, load_vlm
        model, tok, _ = load_vlm(args.vlm)
        controllers = {}
        for spec in args.controller:
            name, _, path = spec.partition("=")
            controllers[name] = load_controller(path, model)
        names = args.methods.split(",") if args.methods else [m for m in ev.METHODS if not m.startswith("adaptive")] + \
            [f"adaptive-{n}" for n in controllers]
        budgets = [float(x) for x in args.budgets.split(",")]
        samples = None
        if args.test_json:
            from .data import load_llava_json
            samples = load_llava_json(args.test_json, model.config.image_size)
        results = ev.evaluate(model, tok, controllers, names, budgets, test_images=args.test_images, samples=samples)
        csv_path, png_path = ev.write_outputs(results, args.out_dir)
        print(ev.format_table(results) + f"\n\nresults: {csv_path}\nplot:    {png_path}")
    elif args.command == "bench":
        print(bench(args.bench_dir, args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
