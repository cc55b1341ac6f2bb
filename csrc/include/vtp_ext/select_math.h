// Ranking rule of the selection ops (segmented_topk, gumbel_topk), shared by the CPU and CUDA kernels
// so both backends pick the same elements in the same order.
//
// A value becomes an unsigned key whose integer order is the preference order: larger key = picked
// first. Radix selection works on these keys directly, and comparing (key, index) pairs gives the
// tie rule "equal values: lower index first". NaN maps to key 0, below every number in both the
// largest and the smallest direction, so a NaN is only picked when a segment has too few numbers.
// -0.0 maps to the key of +0.0: they compare equal, as torch.sort and torch.topk treat them.
#pragma once
#include <cstdint>
#include <cstring>

#include "vtp_ext/macros.h"

namespace vtp_ext {

template <typename acc_t> struct RankKeyOf;
template <> struct RankKeyOf<float> { using type = uint32_t; };
template <> struct RankKeyOf<double> { using type = uint64_t; };
template <typename acc_t> using rank_key_t = typename RankKeyOf<acc_t>::type;

// IEEE bits -> an unsigned integer with the order of the values: negative numbers have their bits
// flipped (larger magnitude = smaller), positive ones get the sign bit set (above every negative).
// For "smallest first" the key is complemented. Keys of numbers are never 0 in either direction:
// the extreme keys are those of +-inf, 0x007FFFFF... and 0xFF80000..., so 0 is free for NaN.
VTP_HD_INLINE uint32_t rank_key(float v, bool largest) {
  if (v != v) return 0u;
  uint32_t u = 0;
  if (v != 0.0f) memcpy(&u, &v, sizeof(u));
  const uint32_t k = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return largest ? k : ~k;
}

VTP_HD_INLINE uint64_t rank_key(double v, bool largest) {
  if (v != v) return 0u;
  uint64_t u = 0;
  if (v != 0.0) memcpy(&u, &v, sizeof(u));
  const uint64_t k = (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
  return largest ? k : ~k;
}

// (key, index) total order: a is picked before b.
template <typename key_t>
VTP_HD_INLINE bool picked_before(key_t key_a, int64_t idx_a, key_t key_b, int64_t idx_b) {
  return key_a > key_b || (key_a == key_b && idx_a < idx_b);
}

}  // namespace vtp_ext
