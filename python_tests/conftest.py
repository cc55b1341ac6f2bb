import pytest
import torch

import vtp_ext  # noqa: F401  (registers torch.ops.vtp_ext)


def pytest_report_header(config):
    from vtp_ext import _build_info

    return (f"vtp_ext {vtp_ext.__version__}, torch {torch.__version__}, CUDA kernels built: {vtp_ext.cuda_built()} "
            f"({_build_info.CUDA_ARCHS or '-'}), CUDA device: {torch.cuda.is_available()}, CPU kernels: {vtp_ext._C.cpu_isa}")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


