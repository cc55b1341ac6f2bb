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
  // x [B, C, H, W] -> one pyramid level, blurred and downsampled in one pass; mode "kornia" | "opencv" |
  // "gauss_avgpool" (sigma, kernel_size, border "reflect" | "zeros" apply to gauss_avgpool).
  m.def("blur_downsample(Tensor x, str mode=\"kornia\", float sigma=1.0, int kernel_size=5, str border=\"reflect\") -> Tensor");
  // grad [B, C, h, w] of a height x width input -> grad_x [B, C, height, width] (the adjoint operator)
  // ToMe. metric [B, N, C] -> plan: kept sources [B, ceil(N/2) - r], merged sources [B, r] and their
  // destinations [B, r] (indices into the even / odd tokens); r is clamped as ToMe does.
  m.def("tome_match(Tensor metric, int r, bool class_token=False, bool distill_token=False) -> (Tensor unm_idx, Tensor src_idx, Tensor dst_idx)");
  // x [B, N, D], size [B, N] or None -> merged [B, N - r, D] and merged sizes [B, N - r]; mode "wavg" | "mean" | "sum"
  m.def("tome_merge(Tensor x, Tensor? size, Tensor unm_idx, Tensor src_idx, Tensor dst_idx, str mode, bool distill_token) -> (Tensor, Tensor)");
  m.def("tome_merge_backward(Tensor grad, Tensor? grad_size, Tensor x, Tensor? size, Tensor out, Tensor size_out, Tensor unm_idx, Tensor src_idx, Tensor dst_idx, str mode, bool distill_token) -> (Tensor, Tensor)");
  // merged [B, N - r, D] -> [B, N, D]: every token gets the value of the row it was merged into
  m.def("tome_unmerge(Tensor x_merged, Tensor unm_idx, Tensor src_idx, Tensor dst_idx, int n, bool distill_token) -> Tensor");
  m.def("tome_unmerge_backward(Tensor grad, Tensor unm_idx, Tensor src_idx, Tensor dst_idx, bool distill_token) -> Tensor");
  m.def("blur_downsample_backward(Tensor grad, int height, int width, str mode, float sigma, int kernel_size, str border) -> Tensor");
}

}  // namespace vtp_ext
