import pytest

from bench_utils import QUICK, measure_copy_bandwidth

_BANDWIDTH: dict = {}


@pytest.fixture(scope="session")
def bandwidth():
    """bandwidth(device) -> bytes/s of a large copy on this machine, measured once per session."""
    def get(device: str = "cpu") -> float:
        if device not in _BANDWIDTH:
            _BANDWIDTH[device] = measure_copy_bandwidth(device, nbytes=(64 << 20) if QUICK else (256 << 20))
        return _BANDWIDTH[device]
    return get
