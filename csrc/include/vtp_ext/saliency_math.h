// Per-token saliency math shared by the CPU kernels and the CUDA kernels (one definition, so both
// backends agree on the formula, the NaN cases and the accumulation order within a lane).
//
// Variance uses shifted sums: every element of a row is shifted by the row's first element before
// it is summed and squared. The shift keeps the sums O(std) instead of O(mean), which avoids the
// catastrophic cancellation of the naive sum-of-squares formula, and -- unlike Welford's update --
// needs no division per element, so the inner loop vectorises. All partial sums of a row share the
// same shift, so lanes, threads and warps merge by plain addition.
#pragma once
#include <cstdint>

#include "vtp_ext/macros.h"

namespace vtp_ext {

enum class SaliencyMethod : int32_t { kVariance = 0, kL2Norm = 1 };

template <typename acc_t>
struct ShiftedSums {
  acc_t sum;    // sum of (x - shift)
  acc_t sumsq;  // sum of (x - shift)^2
};

// var = (S2 - S1^2 / n) / (n - correction). n - correction <= 0 gives 0/0 = NaN like torch.var
// (n = 0 gives NaN for correction 0 too, as torch.var over an empty dim does).
template <typename acc_t>
VTP_HD_INLINE acc_t variance_from_sums(acc_t sum, acc_t sumsq, int64_t n, int64_t correction) {
  const acc_t m2 = n > 0 ? sumsq - sum * sum / static_cast<acc_t>(n) : acc_t(0);
  const int64_t dof = n - correction > 0 ? n - correction : 0;
  // A tiny negative m2 from rounding would give a negative variance; clamp like torch does.
  return (m2 > acc_t(0) ? m2 : (m2 == m2 ? acc_t(0) : m2)) / static_cast<acc_t>(dof);
}

// d var / d x_i = 2 (x_i - mean) / (n - correction). With n - correction <= 0 the factor is inf and
// (x_i - mean) is 0, giving NaN exactly where torch.var's backward gives NaN.
template <typename acc_t>
VTP_HD_INLINE acc_t variance_grad_scale(int64_t n, int64_t correction) {
  const int64_t dof = n - correction > 0 ? n - correction : 0;
  return acc_t(2) / static_cast<acc_t>(dof);
}

// d ||x|| / d x_i = x_i / ||x||, defined as 0 where ||x|| = 0 (torch's vector_norm backward does the same).
template <typename acc_t>
VTP_HD_INLINE acc_t l2norm_grad_scale(acc_t grad, acc_t norm) {
  return norm == acc_t(0) ? acc_t(0) : grad / norm;
}

}  // namespace vtp_ext
