// ToMe bipartite soft matching: the rules CPU and CUDA share (one definition each, host + device).
//
// Tokens alternate: even positions form the source set A (na = ceil(N/2)), odd positions the
// destination set B (nb = floor(N/2)). Every A token's score is its best cosine similarity to a B
// token; the r best-scoring A tokens merge into their best B token.
#pragma once
#include <cstdint>

#include "vtp_ext/macros.h"

namespace vtp_ext {

// ToMe's clamp: at most half of the unprotected tokens can merge in one step.
VTP_HD_INLINE int64_t tome_clamp_r(int64_t r, int64_t n, bool class_token, bool distill_token) {
  const int64_t cap = (n - int64_t(class_token) - int64_t(distill_token)) / 2;
  return r < 0 ? 0 : (r < cap ? r : (cap > 0 ? cap : 0));
}

// Is similarity s (to destination idx) better than the current best (best, best_idx; best_idx < 0
// means none yet)? Larger wins, ties go to the lower index, NaN (a zero-norm token's cosine) loses to
// every number. A total order, so any scan or reduction order picks the same destination.
template <typename acc_t>
VTP_HD_INLINE bool tome_better(acc_t s, int64_t idx, acc_t best, int64_t best_idx) {
  if (best_idx < 0) return true;
  if (s != s) return best != best && idx < best_idx;
  if (best != best) return true;
  return s > best || (s == best && idx < best_idx);
}

// Strict ranking of sources: does source a (score sa) come before source b (score sb)? Higher score
// first, ties to the lower index, NaN last among numbers; the protected class token (source 0) is
// always last, so it is never merged away.
template <typename acc_t>
VTP_HD_INLINE bool tome_ranks_before(acc_t sa, int64_t a, acc_t sb, int64_t b, bool class_token) {
  if (class_token && (a == 0 || b == 0)) return b == 0 && a != 0;
  const bool na = sa != sa, nb = sb != sb;
  if (na != nb) return nb;
  if (!na && sa != sb) return sa > sb;
  return a < b;
}

// Output row of the k-th kept source and of destination b, for na - r kept sources. With a
// distillation token the order is [kept[0], dst[0], kept[1:], dst[1:]] (class, distill, rest).
VTP_HD_INLINE int64_t tome_kept_row(int64_t k, int64_t n_kept, bool distill_token) {
  (void)n_kept;
  return distill_token && k > 0 ? k + 1 : k;
}
VTP_HD_INLINE int64_t tome_dst_row(int64_t b, int64_t n_kept, bool distill_token) {
  if (distill_token) return b == 0 ? 1 : n_kept + b;
  return n_kept + b;
}

}  // namespace vtp_ext

namespace vtp_ext {

// Inverse of tome_kept_row / tome_dst_row: is output row p a destination, and which kept source k or
// destination b is it?
VTP_HD_INLINE bool tome_row_is_dst(int64_t p, int64_t n_kept, bool distill_token, int64_t* which) {
  if (distill_token) {
    if (p == 0) { *which = 0; return false; }
    if (p == 1) { *which = 0; return true; }
    if (p <= n_kept) { *which = p - 1; return false; }
    *which = p - n_kept;
    return true;
  }
  if (p < n_kept) { *which = p; return false; }
  *which = p - n_kept;
  return true;
}

enum class TomeMode : int32_t { kWAvg = 0, kMean = 1, kSum = 2 };

}  // namespace vtp_ext
