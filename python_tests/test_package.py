"""The package as a user meets it: `python -m vtp_ext info`, the build metadata, and the CPU kernels
of the lower instruction sets (portable, AVX2) that other CPUs would run."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import vtp_ext


def run_python(code: str, **env: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            env={**os.environ, **env}, cwd=os.path.dirname(__file__))
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_info_command():
    out = subprocess.run([sys.executable, "-m", "vtp_ext", "info"], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(__file__)).stdout
    assert f"vtp_ext {vtp_ext.__version__}" in out
    assert f"torch {torch.__version__}" in out
    assert ("CUDA kernels compiled: yes" in out) == vtp_ext.cuda_built()
    assert "torch.ops.vtp_ext.token_saliency" in out and "torch.ops.vtp_ext.token_saliency_backward" in out


def test_console_script():
    script = os.path.join(os.path.dirname(sys.executable), "vtp-ext")   # installed beside this interpreter
    out = subprocess.run([script, "info"], capture_output=True, text=True, check=True, cwd=os.path.dirname(__file__)).stdout
    assert f"vtp_ext {vtp_ext.__version__}" in out


def test_version_tag_matches_build():
    from importlib.metadata import version

    from vtp_ext import _build_info

    tag = version("vtp_ext").split("+")[-1]
    assert tag == ("cu" + _build_info.TORCH_CUDA_VERSION.replace(".", "") if _build_info.WITH_CUDA else "cpu")


@pytest.mark.parametrize("isa", ["base", "avx2"])
def test_portable_cpu_kernels_match_default(isa):
    code = """
        import torch, vtp_ext
        torch.manual_seed(0)
        for dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            x = torch.randn(3, 17, 77, dtype=dt, requires_grad=True)
            y = vtp_ext.token_saliency(x, "variance", 1)
            y.sum().backward()
            print(vtp_ext._C.cpu_isa, repr(y.double().sum().item()), repr(x.grad.double().abs().sum().item()))
    """
    base = run_python(code, VTP_EXT_CPU_ISA=isa).split("\n")
    best = run_python(code).split("\n")
    if not base[0].startswith(isa + " "):
        pytest.skip(f"this CPU cannot run the {isa} kernels")
    for b, d in zip(base[:-1], best[:-1]):
        vb, vd = [float(v) for v in b.split()[1:]], [float(v) for v in d.split()[1:]]
        for p, q in zip(vb, vd):
            assert abs(p - q) <= 1e-3 * abs(q), (b, d)


@pytest.mark.parametrize("section", ["## Example", "## Token-reduction methods"])
def test_readme_example_runs(section):
    readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
    if not os.path.exists(readme):
        pytest.skip("README.md not beside python_tests (tests copied out of the repository)")
    text = open(readme).read()
    block = text.split(section, 1)[1].split("```python", 1)[1].split("```", 1)[0]
    run_python(block)
