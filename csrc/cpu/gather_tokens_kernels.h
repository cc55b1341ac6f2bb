// CPU kernels of gather_tokens (row gather) and of its backward and segmented_topk's backward (row
// scatter-add). Compiled per ISA from kernels_isa.cpp; the callers split rows over threads.
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/dispatch.h"
#include "cpu/isa.h"
#include "cpu/scalar.h"

namespace vtp_ext::cpu::VTP_ISA {

template <typename T>
static bool gather_rows_typed(const GatherRowsArgs& a, int64_t begin, int64_t end) {
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  bool ok = true;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t b = r / a.K, k = r % a.K;
    const int64_t idx = a.indices[b * a.idx_sb + k * a.idx_sk];
    T* o = out + r * a.D;
    if (idx < 0 || idx >= a.L) {
      ok = ok && idx == -1;
      std::memset(static_cast<void*>(o), 0, sizeof(T) * size_t(a.D));  // +0.0 in every float format
      continue;
    }
    const T* src = x + b * a.x_sb + idx * a.x_sl;
    if (a.x_sd == 1) {
      std::memcpy(static_cast<void*>(o), static_cast<const void*>(src), sizeof(T) * size_t(a.D));
    } else {
      for (int64_t d = 0; d < a.D; ++d) o[d] = src[d * a.x_sd];
    }
  }
  return ok;
}

static bool gather_rows(const GatherRowsArgs& a, int64_t begin, int64_t end) {
  return with_storage_type(a.dtype, [&](auto tag) { return gather_rows_typed<decltype(tag)>(a, begin, end); });
}

static bool scatter_rows_index(const ScatterRowsArgs& a, int64_t begin, int64_t end) {
  bool ok = true;
  for (int64_t b = begin; b < end; ++b) {
    int32_t* first = a.first + b * a.L;
    int32_t* count = a.count + b * a.L;
    std::fill(count, count + a.L, 0);
    for (int64_t j = 0; j < a.K; ++j) {
      const int64_t idx = a.indices[b * a.idx_sb + j * a.idx_sk];
      if (idx < 0 || idx >= a.L) {
        ok = ok && idx == -1;
        continue;
      }
      if (count[idx]++ == 0) first[idx] = int32_t(j);
    }
  }
  return ok;
}

template <typename T>
static void scatter_rows_sum_typed(const ScatterRowsArgs& a, int64_t begin, int64_t end) {
  using acc_t = acc_of<T>;
  const T* src = static_cast<const T*>(a.src);
  T* out = static_cast<T*>(a.out);
  std::vector<acc_t> acc;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t b = r / a.L, l = r % a.L;
    const int32_t c = a.count[r];
    T* o = out + r * a.D;
    if (c == 0) {
      std::memset(static_cast<void*>(o), 0, sizeof(T) * size_t(a.D));
      continue;
    }
    const int64_t j0 = a.first[r];
    const T* s0 = src + b * a.src_sb + j0 * a.src_sk;
    if (c == 1) {  // the common case (indices from a top-k are unique): a copy, no rounding
      for (int64_t d = 0; d < a.D; ++d) o[d] = s0[d * a.src_sd];
      continue;
    }
    acc.assign(size_t(a.D), acc_t(0));
    for (int64_t j = j0; j < a.K; ++j) {
      if (a.indices[b * a.idx_sb + j * a.idx_sk] != l) continue;
      const T* sj = src + b * a.src_sb + j * a.src_sk;
      for (int64_t d = 0; d < a.D; ++d) acc[d] += to_acc(sj[d * a.src_sd]);
    }
    for (int64_t d = 0; d < a.D; ++d) o[d] = from_acc<T>(acc[d]);
  }
}

static void scatter_rows_sum(const ScatterRowsArgs& a, int64_t begin, int64_t end) {
  with_storage_type(a.dtype, [&](auto tag) { scatter_rows_sum_typed<decltype(tag)>(a, begin, end); });
}

}  // namespace vtp_ext::cpu::VTP_ISA
