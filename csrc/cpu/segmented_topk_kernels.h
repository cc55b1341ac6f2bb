// CPU kernel of segmented_topk: one (row, segment) per task. Compiled per ISA from kernels_isa.cpp;
// tasks are split over threads by the caller (csrc/cpu/segmented_topk_op.cpp).
//
// Each entry of a segment becomes one unsigned integer that packs its rank key (vtp_ext/select_math.h)
// above its complemented local index, so "picked before" is plain integer ">" and nth_element/sort
// run on integers: 64 bits for 32-bit keys, 128 bits for the 64-bit keys of float64.
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

#include "cpu/dispatch.h"
#include "cpu/isa.h"
#include "cpu/scalar.h"
#include "vtp_ext/select_math.h"

namespace vtp_ext::cpu::VTP_ISA {

template <typename acc_t> struct PackedEntry;
template <> struct PackedEntry<float> {
  using type = uint64_t;
  static type pack(uint32_t key, uint32_t i) { return (type(key) << 32) | type(~i); }
  static uint32_t index(type e) { return ~uint32_t(e); }
};
template <> struct PackedEntry<double> {
  using type = unsigned __int128;
  static type pack(uint64_t key, uint32_t i) { return (type(key) << 64) | type(~uint64_t(i)); }
  static uint32_t index(type e) { return uint32_t(~uint64_t(e)); }
};

template <typename T>
static void segmented_topk_tasks(const SegmentedTopkArgs& a, int64_t begin, int64_t end) {
  using acc_t = acc_of<T>;
  using P = PackedEntry<acc_t>;
  using E = typename P::type;
  const T* scores = static_cast<const T*>(a.scores);
  T* values = static_cast<T*>(a.values);
  std::vector<E> entries;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t b = task / a.S, s = task % a.S;
    const int64_t first = a.offsets[s], n = a.offsets[s + 1] - first, k = a.seg_k[task];
    T* out_v = values + b * a.max_k + a.seg_start[task];
    int64_t* out_i = a.indices + b * a.max_k + a.seg_start[task];
    if (k > 0) {
      const T* seg = scores + b * a.row_stride + first * a.col_stride;
      entries.resize(n);
      for (int64_t i = 0; i < n; ++i)
        entries[i] = P::pack(rank_key(to_acc(seg[i * a.col_stride]), a.largest), uint32_t(i));
      if (k < n) std::nth_element(entries.begin(), entries.begin() + k, entries.end(), std::greater<E>());
      if (a.by_index) {
        std::sort(entries.begin(), entries.begin() + k,
                  [](E x, E y) { return P::index(x) < P::index(y); });
      } else {
        std::sort(entries.begin(), entries.begin() + k, std::greater<E>());
      }
      for (int64_t r = 0; r < k; ++r) {
        const uint32_t i = P::index(entries[r]);
        out_v[r] = seg[int64_t(i) * a.col_stride];
        out_i[r] = first + int64_t(i);
      }
    }
    if (s == a.S - 1) {  // the row's last segment pads the row behind every selection
      for (int64_t j = a.lengths[b]; j < a.max_k; ++j) {
        values[b * a.max_k + j] = from_acc<T>(acc_t(0));
        a.indices[b * a.max_k + j] = -1;
      }
    }
  }
}

static void segmented_topk(const SegmentedTopkArgs& a, int64_t begin, int64_t end) {
  with_storage_type(a.dtype, [&](auto tag) { segmented_topk_tasks<decltype(tag)>(a, begin, end); });
}

}  // namespace vtp_ext::cpu::VTP_ISA
