// The row scatter-add behind gather_tokens_backward and segmented_topk_backward (CUDA glue side,
// defined in gather_tokens.cu): out[b, l, :] = sum of src[b, j, :] over the j with indices[b, j] == l.
#pragma once
#include "vtp_ext/stable_utils.h"

namespace vtp_ext::cuda {

// src is [B, K, D] addressed by its strides; out is a fresh contiguous [B, L, D] tensor on src's device.
void scatter_rows_cuda(const Tensor& src, int64_t src_sb, int64_t src_sk, int64_t src_sd, const Tensor& indices,
                       int64_t B, int64_t K, int64_t L, int64_t D, Tensor& out, const char* op);

}  // namespace vtp_ext::cuda
