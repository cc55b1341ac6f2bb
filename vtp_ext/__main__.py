"""`python -m vtp_ext info`: what this installation is and what it can run."""
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


def demo() -> str:
    """A short saliency example until the main job (train + evaluate) exists: rank the patch tokens of
    a batch of CLIP-L/14-336-shaped features by variance and keep the top quarter."""
    import time

    import torch

    import vtp_ext

    torch.manual_seed(0)
    feats = torch.randn(8, 577, 1024)  # [batch, CLS + 24x24 patches, dim]
    patches = feats[:, 1:]  # a strided view: no copy is made
    t0 = time.perf_counter()
    saliency = vtp_ext.token_saliency(patches, "variance", 1)
    t1 = time.perf_counter()
    reference = torch.var(patches, dim=-1)
    t2 = time.perf_counter()
    keep = saliency.topk(patches.shape[1] // 4, dim=-1).indices.sort(dim=-1).values
    kept = torch.cat([feats[:, :1], patches.gather(1, keep[..., None].expand(-1, -1, patches.shape[-1]))], 1)
    err = (saliency - reference).abs().max().item()
    return "\n".join([
        f"features {list(feats.shape)} -> saliency {list(saliency.shape)} in {1e3 * (t1 - t0):.2f} ms "
        f"(torch.var: {1e3 * (t2 - t1):.2f} ms, max |difference| {err:.1e})",
        f"kept CLS + top-25% patches by variance: {list(kept.shape)}",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vtp_ext")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, torch, CUDA build and registered ops")
    sub.add_parser("demo", help="a short token-saliency example")
    args = parser.parse_args(argv)
    if args.command == "info":
        print(info())
    elif args.command == "demo":
        print(demo())
    return 0


if __name__ == "__main__":
    sys.exit(main())
