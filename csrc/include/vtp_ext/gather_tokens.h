// Host-side argument checks of gather_tokens and its backward, shared by the CPU and CUDA glue.
// Index *values* are checked by the kernels themselves (they read them anyway); see
// index_range_message for the one message both backends give.
#pragma once
#include <cstdint>
#include <string>

#include "vtp_ext/segmented_topk.h"
#include "vtp_ext/stable_utils.h"

namespace vtp_ext {

inline std::string index_range_message(const char* op, int64_t L) {
  return std::string(op) + ": indices must be -1 or in [0, L) = [0, " + std::to_string(L) +
         "), got an entry outside that range";
}

inline void check_gather_tokens(const Tensor& x, const Tensor& indices, const char* op) {
  check_strided(x, op, "x");
  STD_TORCH_CHECK(x.dim() == 3, op, ": x must have shape [B, L, D] (3 dimensions), got ", x.dim(),
                  " dimension(s)");
  check_floating(x, op, "x");
  STD_TORCH_CHECK(x.size(1) <= INT32_MAX, op, ": x must have at most 2^31-1 tokens, got ", x.size(1));
  STD_TORCH_CHECK(indices.dim() == 2, op, ": indices must have shape [B, K] (2 dimensions), got ", indices.dim(),
                  " dimension(s)");
  check_scatter_indices(indices, x.size(0), indices.size(1), op);
  check_same_device(x, indices, op, "x", "indices");
}

inline void check_gather_tokens_backward(const Tensor& grad, const Tensor& indices, int64_t L, const char* op) {
  check_strided(grad, op, "grad");
  STD_TORCH_CHECK(grad.dim() == 3, op, ": grad must have shape [B, K, D] (3 dimensions), got ", grad.dim(),
                  " dimension(s)");
  check_floating(grad, op, "grad");
  check_scatter_indices(indices, grad.size(0), grad.size(1), op);
  check_same_device(grad, indices, op, "grad", "indices");
  STD_TORCH_CHECK(L >= 0 && L <= INT32_MAX, op, ": L must be in [0, 2^31-1], got ", L);
}

}  // namespace vtp_ext
