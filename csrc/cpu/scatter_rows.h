// The row scatter-add behind gather_tokens_backward and segmented_topk_backward (CPU glue side):
// out[b, l, :] = sum of src[b, j, :] over the j with indices[b, j] == l (see ScatterRowsArgs).
#pragma once
#include <torch/csrc/stable/ops.h>

#include <atomic>

#include "cpu/isa.h"
#include "cpu/glue.h"
#include "vtp_ext/gather_tokens.h"

namespace vtp_ext::cpu {

// src is [B, K, D] addressed by its strides; out is a fresh contiguous [B, L, D] tensor.
inline void scatter_rows(const Tensor& src, int64_t src_sb, int64_t src_sk, int64_t src_sd, const Tensor& indices,
                         int64_t B, int64_t K, int64_t L, int64_t D, Tensor& out, const char* op) {
  if (B == 0) return;
  const int64_t map_shape[2] = {2, B * L};
  Tensor map =
      torch::stable::new_empty(src, torch::headeronly::IntHeaderOnlyArrayRef(map_shape, 2), ScalarType::Int);
  int32_t* first = static_cast<int32_t*>(map.mutable_data_ptr());
  const ScatterRowsArgs args{src.const_data_ptr(), src_sb, src_sk, src_sd, indices.const_data_ptr<int64_t>(),
                             indices.stride(0), indices.stride(1), first, first + B * L, out.mutable_data_ptr(),
                             B, K, L, D, kernel_dtype(src.scalar_type())};
  const auto& kt = kernels();
  std::atomic<bool> ok{true};
  // ~256K entries per parallel chunk: a second thread woken for less can cost a scheduler time slice
  // on a busy machine (segmented_topk_backward of [32, 288] -> [32, 576] measured milliseconds).
  torch::stable::parallel_for(0, B, 1 + (int64_t{1} << 18) / (K + L + 1), [&](int64_t b, int64_t e) {
    if (!kt.scatter_rows_index(args, b, e)) ok = false;
  });
  STD_TORCH_CHECK(ok.load(), index_range_message(op, L));
  if (L == 0) return;
  const int64_t grain = D > 0 ? (int64_t{1} << 16) / D + 1 : int64_t{1} << 16;
  torch::stable::parallel_for(0, B * L, grain, [&](int64_t b, int64_t e) { kt.scatter_rows_sum(args, b, e); });
}

}  // namespace vtp_ext::cpu
