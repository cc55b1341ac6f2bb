"""Locate (or build) the CUDA-on-CPU test library: vtp_ext's CUDA kernels and glue compiled as C++
against ../shared/cuda-cpu and registered as torch.ops.vtp_ext_cucpu for CPU tensors.

Resolution order: $VTP_EXT_CUCPU_LIB (a built libvtp_ext_cucpu.so), else build it with CMake from
$VTP_EXT_CUCPU_DIR or <repo>/../shared/cuda-cpu into build/cucpu. Without the runtime the tests skip
with the reason; with VTP_EXT_REQUIRE_CUCPU=1 (CI) a missing runtime is a failure instead.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def _fail_or_skip(reason: str):
    if os.environ.get("VTP_EXT_REQUIRE_CUCPU", "0") not in ("", "0"):
        pytest.fail(f"CUDA-on-CPU kernels required (VTP_EXT_REQUIRE_CUCPU=1) but unavailable: {reason}")
    pytest.skip(f"CUDA kernels not executed on the CPU: {reason}")


@functools.lru_cache(maxsize=None)
def _load() -> str | None:
    """Returns None on success, else the reason the library is unavailable."""
    lib = os.environ.get("VTP_EXT_CUCPU_LIB")
    if not lib:
        runtime = Path(os.environ.get("VTP_EXT_CUCPU_DIR", REPO.parent / "shared" / "cuda-cpu"))
        if not (runtime / "cuda_cpu_runtime.h").exists():
            return f"the cuda-cpu runtime is not at {runtime} (set VTP_EXT_CUCPU_DIR)"
        build = REPO / "build" / "cucpu"
        venv_cmake = Path(sys.executable).parent / "cmake"  # pip's cmake>=3.26, beside this Python
        cmake = str(venv_cmake) if venv_cmake.exists() else (shutil.which("cmake") or "cmake")
        cmd_cfg = [cmake, "-S", str(REPO / "csrc" / "testing"), "-B", str(build), f"-DCUCPU_DIR={runtime}",
                   f"-DPython_EXECUTABLE={sys.executable}"]
        try:
            subprocess.run(cmd_cfg, check=True, capture_output=True, text=True)
            subprocess.run([cmake, "--build", str(build), "-j2"], check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as e:
            out = getattr(e, "stdout", "") + getattr(e, "stderr", "")
            # The runtime is here, so not running the kernels would hide a real problem: fail.
            pytest.fail(f"building csrc/testing failed (is libboost-context-dev installed?): {e}\n{out[-3000:]}")
        lib = str(build / "libvtp_ext_cucpu.so")
    torch.ops.load_library(lib)
    return None


def require_cucpu():
    """Call at the top of a test (or from a fixture) that runs the CUDA kernels on the CPU."""
    reason = _load()
    if reason is not None:
        _fail_or_skip(reason)
    return torch.ops.vtp_ext_cucpu
