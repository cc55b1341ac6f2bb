"""Build-time metadata provider (scikit-build-core): the wheel version with its variant tag.

``<base>+cpu`` for a CPU-only build, ``<base>+cu<major><minor>`` (e.g. ``+cu130``) for a CUDA build.
It mirrors the decision in CMakeLists.txt: ``VTP_EXT_CUDA=0|1|auto``; auto builds CUDA kernels when
the installed torch is a CUDA build and nvcc is found. Needs torch importable at build time, which
``pip install --no-build-isolation`` guarantees. Imported by scikit-build-core as a top-level
module (provider-path = "vtp_ext"), so it must not import the package. Not shipped in the wheel.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

__all__ = ["dynamic_metadata", "build_variant", "base_version"]


def base_version() -> str:
    text = (Path(__file__).resolve().parent / "_version.py").read_text()
    return re.search(r'__version__\s*=\s*"([^"]+)"', text).group(1)


def _nvcc_found() -> bool:
    candidates = [os.environ.get("CUDACXX", ""), shutil.which("nvcc") or ""]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "bin", "nvcc"))
    return any(c and os.access(c, os.X_OK) for c in candidates)


def build_variant() -> str:
    import torch

    want = os.environ.get("VTP_EXT_CUDA", "auto").strip().lower()
    cuda = torch.version.cuda
    if want in ("0", "off") or not cuda:
        return "cpu"  # CMake fails loudly for VTP_EXT_CUDA=1 with a CPU torch
    if want in ("1", "on") or _nvcc_found():
        return "cu" + cuda.replace(".", "")
    return "cpu"


def dynamic_metadata(field: str, settings: dict | None = None) -> str:
    if field != "version":
        raise ValueError(f"vtp_ext._build_meta provides only 'version', not {field!r}")
    return f"{base_version()}+{build_variant()}"
