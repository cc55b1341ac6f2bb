// Every operator schema of vtp_ext, declared once. csrc/vtp_ext.cpp registers them under
// torch.ops.vtp_ext; the CUDA-on-CPU test module registers the same list under its own namespace
// so the CUDA kernels can be run and compared on CPU tensors.
#pragma once
#include <torch/csrc/stable/library.h>

namespace vtp_ext {

inline void define_schemas(torch::stable::detail::StableLibrary& m) {
  // x [..., N, D] -> [..., N]; method "variance" (correction 0 or 1) or "l2norm".
  m.def("token_saliency(Tensor x, str method=\"variance\", int correction=1) -> Tensor");
  // grad [..., N], x [..., N, D], out = token_saliency(x) [..., N] -> grad_x [..., N, D]
  m.def("token_saliency_backward(Tensor grad, Tensor x, Tensor out, str method, int correction) -> Tensor");
}

}  // namespace vtp_ext
