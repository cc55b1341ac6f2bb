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
  m.def("blur_downsample_backward(Tensor grad, int height, int width, str mode, float sigma, int kernel_size, str border) -> Tensor");
  // ToMe. metric [B, N, C] -> plan: kept sources [B, ceil(N/2) - r], merged sources [B, r] and their
  // destinations [B, r] (indices into the even / odd tokens); r is clamped as ToMe does.
  m.def("tome_match(Tensor metric, int r, bool class_token=False, bool distill_token=False) -> (Tensor unm_idx, Tensor src_idx, Tensor dst_idx)");
  // x [B, N, D], size [B, N] or None -> merged [B, N - r, D] and merged sizes [B, N - r]; mode "wavg" | "mean" | "sum"
  m.def("tome_merge(Tensor x, Tensor? size, Tensor unm_idx, Tensor src_idx, Tensor dst_idx, str mode, bool distill_token) -> (Tensor, Tensor)");
  m.def("tome_merge_backward(Tensor grad, Tensor? grad_size, Tensor x, Tensor? size, Tensor out, Tensor size_out, Tensor unm_idx, Tensor src_idx, Tensor dst_idx, str mode, bool distill_token) -> (Tensor, Tensor)");
  // merged [B, N - r, D] -> [B, N, D]: every token gets the value of the row it was merged into
  m.def("tome_unmerge(Tensor x_merged, Tensor unm_idx, Tensor src_idx, Tensor dst_idx, int n, bool distill_token) -> Tensor");
  m.def("tome_unmerge_backward(Tensor grad, Tensor unm_idx, Tensor src_idx, Tensor dst_idx, bool distill_token) -> Tensor");

  // scores [B, L], offsets [S+1] int64, k [B, S] int64 -> values [B, max_k], indices [B, max_k] int64
  // (-1 = padding), lengths [B] int64; order "score" or "index".
  m.def("segmented_topk(Tensor scores, Tensor offsets, Tensor k, int max_k, bool largest=True, "
        "str order=\"score\") -> (Tensor, Tensor, Tensor)");
  // grad_values [B, max_k], indices [B, max_k] -> grad_scores [B, L] (scatter-add at indices)
  m.def("segmented_topk_backward(Tensor grad_values, Tensor indices, int L) -> Tensor");
  // x [B, L, D], indices [B, K] int64 (-1 = zeros) -> [B, K, D]
  m.def("gather_tokens(Tensor x, Tensor indices) -> Tensor");
  // grad [B, K, D], indices [B, K] -> grad_x [B, L, D] (scatter-add at indices)
  m.def("gather_tokens_backward(Tensor grad, Tensor indices, int L) -> Tensor");
  // logits [B, N], k [B] int64 -> 0/1 mask [B, N]; mode "sequential" or "single"
  m.def("gumbel_topk(Tensor logits, Tensor k, float tau, int seed, str mode, bool training) -> Tensor");
  // grad [B, N] (of the mask) -> grad_logits [B, N]; regenerates the forward's noise
  m.def("gumbel_topk_backward(Tensor grad, Tensor logits, Tensor k, float tau, int seed, str mode, "
        "bool training) -> Tensor");
  // the noise gumbel_topk adds at `step` to logits shaped like `logits` ([B, N]; float32, or float64)
  m.def("gumbel_noise(Tensor logits, int seed, int step) -> Tensor");
  // counter [n, 4], key [n, 2] (int64 holding uint32 words) -> [n, 4]: the generator behind the noise
  m.def("philox4x32_10(Tensor counter, Tensor key) -> Tensor");
}

}  // namespace vtp_ext
