"""Load the compiled operator library and check that it fits the running torch."""
from __future__ import annotations

import importlib
from types import ModuleType

import torch


def load_extension() -> ModuleType:
    try:
        build_info = importlib.import_module("vtp_ext._build_info")
    except ImportError as e:
        raise ImportError(
            "vtp_ext's compiled extension is missing. If you are inside the source tree, run from another "
            "directory (the source folder shadows the installed package) or build it first with "
            "`pip install --no-build-isolation .` (see README.md)."
        ) from e
    if build_info.WITH_CUDA and not torch.version.cuda:
        raise ImportError(
            f"this vtp_ext was built with CUDA kernels (CUDA {build_info.TORCH_CUDA_VERSION}), but the installed "
            f"torch {torch.__version__} is a CPU-only build; install the vtp_ext '+cpu' wheel or a CUDA torch."
        )
    if build_info.WITH_CUDA and torch.version.cuda.split(".")[0] != build_info.TORCH_CUDA_VERSION.split(".")[0]:
        raise ImportError(
            f"this vtp_ext was built for CUDA {build_info.TORCH_CUDA_VERSION}, but torch {torch.__version__} uses "
            f"CUDA {torch.version.cuda}; install the vtp_ext wheel for CUDA {torch.version.cuda.split('.')[0]}."
        )
    major_minor = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    if major_minor < (2, 10):
        raise ImportError(f"vtp_ext needs torch >= 2.10 (LibTorch stable ABI), found {torch.__version__}")
    return importlib.import_module("vtp_ext._C")
