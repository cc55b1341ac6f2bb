"""`python -m vtp_ext info`: what this installation is and what it can run."""
from __future__ import annotations

import argparse
import sys


def info() -> str:
    import torch

    import vtp_ext
    from vtp_ext import _build_info

    ops = sorted(name for name in dir(torch.ops.vtp_ext) if not name.startswith("_"))
    ops = [name for name in ops if isinstance(getattr(torch.ops.vtp_ext, name), torch._ops.OpOverloadPacket)]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vtp_ext")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, torch, CUDA build and registered ops")
    args = parser.parse_args(argv)
    if args.command == "info":
        print(info())
    return 0


if __name__ == "__main__":
    sys.exit(main())
