"""token_saliency: values against independent plain-torch references, layouts, dtypes, NaN cases,
opcheck, gradcheck, bad inputs, torch.compile, and CUDA (skipped without a GPU)."""
from __future__ import annotations

import pytest
import torch

import vtp_ext
from op_testing import (FLOAT_DTYPES, Sample, assert_close_to_reference, layouts, requires_cuda, run_gradcheck,
                        run_opcheck)

OP = torch.ops.vtp_ext.token_saliency.default
BWD = torch.ops.vtp_ext.token_saliency_backward.default
METHODS = [("variance", 1), ("variance", 0), ("l2norm", 0)]


def reference(x: torch.Tensor, method: str, correction: int) -> torch.Tensor:
    """Two-pass float64 formula written out, independent of torch.var's kernel."""
    x = x.double()
    if method == "l2norm":
        return (x * x).sum(-1).sqrt()
    D = x.shape[-1]
    centred = x - x.sum(-1, keepdim=True) / D
    return (centred * centred).sum(-1) / max(D - correction, 0)


def reference_grad(x, grad, method, correction):
    x = x.double().detach().requires_grad_(True)
    reference(x, method, correction).backward(grad.double())
    return x.grad


SHAPES = [(1, 1, 1), (2, 3, 1), (5, 17), (2, 7, 37), (3, 4, 64), (2, 2, 3, 129), (1, 577, 96), (4, 33, 1000)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("method,correction", METHODS)
@pytest.mark.parametrize("dtype", (torch.float64,) + FLOAT_DTYPES, ids=str)
def test_matches_reference(shape, method, correction, dtype):
    x = (torch.randn(shape, dtype=torch.float64) * 3 + 5).to(dtype)
    y = vtp_ext.token_saliency(x, method, correction)
    assert y.shape == shape[:-1] and y.is_contiguous()
    assert_close_to_reference(y, reference(x, method, correction), dtype)


@pytest.mark.parametrize("method,correction", METHODS)
def test_matches_torch(method, correction):
    x = torch.randn(4, 50, 300)
    y = vtp_ext.token_saliency(x, method, correction)
    expected = torch.var(x, dim=-1, correction=correction) if method == "variance" else x.norm(dim=-1)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)


def test_large_mean_small_spread_is_accurate():
    # The naive E[x^2] - E[x]^2 formula loses every digit here; shifted sums must not.
    x = 1e4 + torch.randn(8, 16, 512, dtype=torch.float64)
    y = vtp_ext.token_saliency(x.float())
    torch.testing.assert_close(y.double(), reference(x.float(), "variance", 1), rtol=1e-4, atol=0)


@pytest.mark.parametrize("method,correction", METHODS)
@pytest.mark.parametrize("dtype", (torch.float64,) + FLOAT_DTYPES, ids=str)
def test_layouts(method, correction, dtype):
    x = torch.randn(3, 6, 5, 40, dtype=torch.float64).to(dtype)
    expected = vtp_ext.token_saliency(x.contiguous(), method, correction)
    for name, view in layouts(x).items():
        got = vtp_ext.token_saliency(view, method, correction)
        torch.testing.assert_close(got, expected, rtol=1e-6 if dtype == torch.float64 else 1e-3, atol=1e-6,
                                   msg=lambda m: f"{name}: {m}")


def test_expanded_and_many_leading_dims():
    x = torch.randn(1, 5, 33).expand(4, 5, 33)  # stride 0
    torch.testing.assert_close(vtp_ext.token_saliency(x), reference(x, "variance", 1).float())
    many = torch.randn(2, 1, 2, 1, 2, 2, 2, 2, 2, 2, 3, 7)[:, :, ::1, :, :, :, :, :, :, :, ::2]  # > 8 leading dims
    torch.testing.assert_close(vtp_ext.token_saliency(many), reference(many, "variance", 1).float())


@pytest.mark.parametrize("shape", [(0, 5, 8), (3, 0, 8), (0, 0)], ids=str)
@pytest.mark.parametrize("method,correction", METHODS)
def test_empty_rows(shape, method, correction):
    x = torch.randn(shape, requires_grad=True)
    y = vtp_ext.token_saliency(x, method, correction)
    assert y.shape == shape[:-1]
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("method,correction", METHODS)
def test_empty_feature_dim_matches_torch(method, correction):
    x = torch.randn(2, 3, 0)
    expected = torch.var(x, dim=-1, correction=correction) if method == "variance" else x.norm(dim=-1)
    torch.testing.assert_close(vtp_ext.token_saliency(x, method, correction), expected, equal_nan=True)


def test_nan_behaviour_matches_torch():
    # D = 1 with correction 1: 0/0 -> NaN in value and gradient, like torch.var.
    x = torch.randn(3, 4, 1, dtype=torch.float64, requires_grad=True)
    y = vtp_ext.token_saliency(x, "variance", 1)
    with pytest.warns(UserWarning):
        expected = torch.var(x.detach(), dim=-1, correction=1)
    assert torch.isnan(y).all() and torch.isnan(expected).all()
    y.sum().backward()
    assert torch.isnan(x.grad).all()
    # correction 0 with D = 1 is an ordinary zero.
    assert (vtp_ext.token_saliency(x.detach(), "variance", 0) == 0).all()
    # NaN and inf inputs propagate as in torch.
    z = torch.randn(4, 16)
    z[0, 3] = float("nan")
    z[1, 0] = float("inf")
    z[2, 5] = -float("inf")
    for method, correction in METHODS:
        expected = torch.var(z, dim=-1, correction=correction) if method == "variance" else z.norm(dim=-1)
        torch.testing.assert_close(vtp_ext.token_saliency(z, method, correction), expected, equal_nan=True)
    # l2norm of an all-zero row has gradient 0, as torch.norm's backward.
    zero = torch.zeros(2, 8, dtype=torch.float64, requires_grad=True)
    vtp_ext.token_saliency(zero, "l2norm", 0).sum().backward()
    assert (zero.grad == 0).all()


@pytest.mark.parametrize("method,correction", METHODS)
@pytest.mark.parametrize("dtype", (torch.float64,) + FLOAT_DTYPES, ids=str)
def test_backward_matches_reference(method, correction, dtype):
    x = (torch.randn(3, 9, 70, dtype=torch.float64) * 2 + 1).to(dtype)
    grad = torch.randn(3, 9, dtype=torch.float64).to(dtype)
    xr = x.clone().requires_grad_(True)
    vtp_ext.token_saliency(xr, method, correction).backward(grad)
    assert_close_to_reference(xr.grad, reference_grad(x, grad, method, correction), dtype)


def test_backward_with_expanded_and_strided_grad():
    x = torch.randn(4, 6, 32, dtype=torch.float64)
    out = vtp_ext.token_saliency(x)
    grad = torch.randn(6, dtype=torch.float64).expand(4, 6)
    torch.testing.assert_close(BWD(grad, x, out, "variance", 1), reference_grad(x, grad, "variance", 1))
    grad2 = torch.randn(6, 4, dtype=torch.float64).t()
    torch.testing.assert_close(BWD(grad2, x, out, "variance", 1), reference_grad(x, grad2, "variance", 1))


def gradcheck_samples():
    out = []
    for method, correction in METHODS:
        for shape in [(2, 3, 5), (4, 2), (1, 2, 2, 17)]:  # D > correction: NaN is tested elsewhere
            x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
            out.append(Sample((x, method, correction), name=f"{method}{correction}-{shape}"))
        xt = torch.randn(6, 3, 9, dtype=torch.float64).transpose(0, 1).requires_grad_(True)
        out.append(Sample((xt, method, correction), name=f"{method}{correction}-transposed"))
    return out


def test_gradcheck():
    run_gradcheck(vtp_ext.token_saliency, gradcheck_samples())


def test_gradgradcheck():
    # Second derivatives (through the backward op's own autograd) against finite differences.
    for method, correction in METHODS:
        x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradgradcheck(lambda t: vtp_ext.token_saliency(t, method, correction), (x,)), method


def test_double_backward_matches_torch():
    for method, correction in METHODS:
        x = torch.randn(3, 4, 9, dtype=torch.float64, requires_grad=True)
        w = torch.randn(3, 4, 9, dtype=torch.float64)
        g, = torch.autograd.grad(vtp_ext.token_saliency(x, method, correction).sum(), x, create_graph=True)
        (h,) = torch.autograd.grad((g * w).sum(), x)
        xr = x.detach().requires_grad_(True)
        gr, = torch.autograd.grad(reference(xr, method, correction).sum(), xr, create_graph=True)
        (hr,) = torch.autograd.grad((gr * w).sum(), xr)
        torch.testing.assert_close(h, hr)


def opcheck_samples():
    samples = []
    for method, correction in METHODS:
        for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            for rg in (False, True):
                x = torch.randn(3, 7, 20, dtype=dtype, requires_grad=rg and dtype == torch.float64)
                samples.append(Sample((x, method, correction), name=f"{method}{correction}-{dtype}-{rg}"))
        samples.append(Sample((torch.randn(5, 4, 12)[:, 1:, ::2], method, correction), name="sliced"))
        samples.append(Sample((torch.randn(0, 4, 3, requires_grad=True), method, correction), name="empty"))
    return samples


def test_opcheck_forward():
    run_opcheck(OP, opcheck_samples())


def test_opcheck_backward():
    samples = []
    for method, correction in METHODS:
        x = torch.randn(2, 5, 16)
        out = OP(x, method, correction)
        samples.append(Sample((torch.randn(2, 5), x, out, method, correction), name=method))
        samples.append(Sample((torch.randn(5, 2).t(), x.transpose(0, 1).contiguous().transpose(0, 1), out, method,
                               correction), name=method + "-noncontig"))
        xd = torch.randn(2, 5, 16, dtype=torch.float64, requires_grad=True)
        samples.append(Sample((torch.randn(2, 5, dtype=torch.float64, requires_grad=True), xd,
                               OP(xd.detach(), method, correction).requires_grad_(True), method, correction),
                              name=method + "-requires-grad"))
    run_opcheck(BWD, samples)


def test_torch_compile_fullgraph():
    def f(x):
        return vtp_ext.token_saliency(x * 2, "variance", 1).sum()

    x = torch.randn(2, 8, 32, requires_grad=True)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), f(x))
    compiled(x).backward()
    g = x.grad.clone()
    x.grad = None
    f(x).backward()
    torch.testing.assert_close(g, x.grad)


BAD_INPUTS = [
    # (args, exception type, message fragment)
    ((torch.randn(5), "variance", 1), RuntimeError, "x must have shape [..., N, D]"),
    ((torch.tensor(1.0), "variance", 1), RuntimeError, "at least 2 dimensions"),
    ((torch.ones(2, 3, dtype=torch.int64), "variance", 1), RuntimeError, "x must be float32, float64, float16 or bfloat16, got int64"),
    ((torch.ones(2, 3, dtype=torch.int32), "l2norm", 0), RuntimeError, "got int32"),
    ((torch.ones(2, 3, dtype=torch.bool), "variance", 1), RuntimeError, "got bool"),
    ((torch.ones(2, 3, dtype=torch.uint8), "variance", 1), RuntimeError, "got uint8"),
    ((torch.ones(2, 3, dtype=torch.complex64), "variance", 1), RuntimeError, "got complex64"),
    ((torch.randn(2, 3), "std", 1), RuntimeError, 'method must be "variance" or "l2norm", got "std"'),
    ((torch.randn(2, 3), "", 1), RuntimeError, 'method must be "variance" or "l2norm", got ""'),
    ((torch.randn(2, 3), "Variance", 1), RuntimeError, 'got "Variance"'),
    ((torch.randn(2, 3), "variance", 2), RuntimeError, "correction must be 0 or 1, got 2"),
    ((torch.randn(2, 3), "variance", -1), RuntimeError, "correction must be 0 or 1, got -1"),
    ((torch.randn(2, 3), "l2norm", 5), RuntimeError, "correction must be 0 or 1, got 5"),
    ((torch.randn(2, 3).to_sparse(), "variance", 1), (RuntimeError, NotImplementedError), ""),
    (([[1.0, 2.0]], "variance", 1), TypeError, "x must be a torch.Tensor"),
    ((torch.randn(2, 3), 3, 1), TypeError, "method must be a str"),
    ((torch.randn(2, 3), "variance", 1.0), TypeError, "correction must be the int 0 or 1"),
    ((torch.randn(2, 3), "variance", True), TypeError, "correction must be the int 0 or 1"),
]


@pytest.mark.parametrize("args,exc,fragment", BAD_INPUTS, ids=[str(i) for i in range(len(BAD_INPUTS))])
def test_bad_inputs(args, exc, fragment):
    with pytest.raises(exc) as info:
        vtp_ext.token_saliency(*args)
    assert fragment in str(info.value)


BAD_BACKWARD = [
    (lambda x, o: (torch.randn(3), x, o, "variance", 1), "grad must have shape x.shape[:-1]"),
    (lambda x, o: (torch.randn(2, 3, dtype=torch.float64), x, o, "variance", 1), "x and grad must have the same dtype"),
    (lambda x, o: (torch.randn(2, 3), x, o[:, :2], "variance", 1), "out must have the shape of grad"),
    (lambda x, o: (torch.randn(2, 3), x, o.double(), "variance", 1), "x and out must have the same dtype"),
    (lambda x, o: (torch.randn(2, 3), x, o, "bogus", 1), 'method must be "variance" or "l2norm"'),
    (lambda x, o: (torch.randn(2, 3), x, o, "variance", 3), "correction must be 0 or 1"),
]


@pytest.mark.parametrize("make,fragment", BAD_BACKWARD, ids=[str(i) for i in range(len(BAD_BACKWARD))])
def test_bad_backward_inputs(make, fragment):
    x = torch.randn(2, 3, 8)
    out = OP(x, "variance", 1)
    with pytest.raises(RuntimeError, match=None) as info:
        BWD(*make(x, out))
    assert fragment in str(info.value)


def test_mismatched_devices_rejected():
    x = torch.randn(2, 3, 8)
    out = OP(x, "variance", 1)
    with pytest.raises(RuntimeError, match="same device"):
        BWD(torch.randn(2, 3, device="meta"), x, out, "variance", 1)


def test_cuda_kernels_compiled_flag_matches_build():
    from vtp_ext import _build_info

    assert vtp_ext.cuda_built() == _build_info.WITH_CUDA


@requires_cuda
@pytest.mark.parametrize("method,correction", METHODS)
@pytest.mark.parametrize("dtype", (torch.float64,) + FLOAT_DTYPES, ids=str)
def test_cuda_matches_cpu(method, correction, dtype):
    assert vtp_ext.cuda_built(), "a CUDA device is present but vtp_ext was built without CUDA kernels"
    for shape in [(2, 7, 37), (3, 5, 64), (1, 577, 1024), (0, 3, 8)]:
        x = torch.randn(shape, dtype=torch.float64).to(dtype)
        grad = torch.randn(shape[:-1], dtype=dtype)
        xc = x.cuda().requires_grad_(dtype == torch.float64)
        y = vtp_ext.token_saliency(xc, method, correction)
        assert y.is_cuda
        assert_close_to_reference(y.cpu(), reference(x, method, correction), dtype)
        gx = BWD(grad.cuda(), x.cuda(), y, method, correction)
        assert_close_to_reference(gx.cpu(), reference_grad(x, grad, method, correction), dtype)
        for name, view in layouts(x.cuda()).items():
            torch.testing.assert_close(vtp_ext.token_saliency(view, method, correction).cpu(), y.detach().cpu(),
                                       rtol=1e-3, atol=1e-5, msg=lambda m: f"{name}: {m}")


@requires_cuda
def test_cuda_gradcheck_and_opcheck():
    x = torch.randn(2, 5, 33, dtype=torch.float64, device="cuda", requires_grad=True)
    run_gradcheck(vtp_ext.token_saliency, [Sample((x, m, c), name=m) for m, c in METHODS])
    run_opcheck(OP, [Sample((torch.randn(3, 4, 40, device="cuda", dtype=d), m, c)) for m, c in METHODS
                     for d in (torch.float32, torch.bfloat16)])
    with pytest.raises(RuntimeError, match="same device"):
        BWD(torch.randn(2, 5, dtype=torch.float64), x.detach(), OP(x.detach(), "variance", 1), "variance", 1)
