// CPU kernel of segmented_topk: one (row, segment) per task. Compiled per ISA from kernels_isa.cpp;
// tasks are split over threads by the caller (csrc/cpu/segmented_topk_op.cpp).
//
// Integer work on the rank keys of vtp_ext/select_math.h (the CUDA kernel's), no comparison sorts:
//  1. MSB-first radix select, 8 bits per pass, each pass over the previous pass's boundary bucket
//     only, gives the key T of the k-th best entry and how many entries equal to T are needed;
//  2. one pass in index order picks every key > T and the first needed keys == T (ties: lower index);
//  3. order="score": a stable LSD radix sort of the picks by key (passes whose digit is the same for
//     every pick are skipped); stability keeps equal keys in index order.
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/dispatch.h"
#include "cpu/isa.h"
#include "cpu/scalar.h"
#include "vtp_ext/select_math.h"

namespace vtp_ext::cpu::VTP_ISA {

template <typename key_t>
struct TopkScratch {
  std::vector<key_t> keys;
  std::vector<uint32_t> cand, next, picks, sorted;
};

// Key T of the k-th best of keys[0, n) (0 < k < n) and, in *need_eq, how many keys equal to T are in
// the top k.
template <typename key_t>
static key_t radix_threshold(const key_t* keys, uint32_t n, uint32_t k, TopkScratch<key_t>& s, uint32_t* need_eq) {
  uint32_t hist[256];
  uint32_t remaining = k;
  key_t prefix = 0;
  bool all = true;  // the first pass scans every key, later ones the boundary bucket in s.cand
  for (int shift = int(sizeof(key_t)) * 8 - 8; shift >= 0; shift -= 8) {
    std::memset(hist, 0, sizeof(hist));
    const uint32_t m = all ? n : uint32_t(s.cand.size());
    for (uint32_t c = 0; c < m; ++c) ++hist[(keys[all ? c : s.cand[c]] >> shift) & 255u];
    uint32_t digit = 255, cum = 0;
    for (;; --digit) {
      if (cum + hist[digit] >= remaining) break;
      cum += hist[digit];
    }
    remaining -= cum;
    prefix |= key_t(digit) << shift;
    s.next.clear();
    for (uint32_t c = 0; c < m; ++c) {
      const uint32_t i = all ? c : s.cand[c];
      if (((keys[i] >> shift) & 255u) == digit) s.next.push_back(i);
    }
    s.cand.swap(s.next);
    all = false;
    if (s.cand.size() == remaining) {
      // The whole boundary bucket is picked: T is its smallest key, needed as often as it occurs.
      key_t lo = keys[s.cand[0]];
      for (uint32_t i : s.cand) lo = keys[i] < lo ? keys[i] : lo;
      uint32_t eq = 0;
      for (uint32_t i : s.cand) eq += keys[i] == lo;
      *need_eq = eq;
      return lo;
    }
  }
  *need_eq = remaining;
  return prefix;
}

// Stable sort of s.picks by key, best (largest) first; the result is left in s.picks.
template <typename key_t>
static void radix_sort_best_first(const key_t* keys, TopkScratch<key_t>& s) {
  const uint32_t m = uint32_t(s.picks.size());
  s.sorted.resize(m);
  uint32_t hist[256];
  for (int shift = 0; shift < int(sizeof(key_t)) * 8; shift += 8) {
    std::memset(hist, 0, sizeof(hist));
    for (uint32_t i : s.picks) ++hist[255u - ((keys[i] >> shift) & 255u)];
    bool trivial = false;
    for (uint32_t h : hist) trivial = trivial || h == m;
    if (trivial) continue;  // every pick has this digit: the pass would not move anything
    uint32_t start = 0;
    for (uint32_t& h : hist) {
      const uint32_t c = h;
      h = start;
      start += c;
    }
    for (uint32_t i : s.picks) s.sorted[hist[255u - ((keys[i] >> shift) & 255u)]++] = i;
    s.picks.swap(s.sorted);
  }
}

template <typename T>
static void segmented_topk_tasks(const SegmentedTopkArgs& a, int64_t begin, int64_t end) {
  using acc_t = acc_of<T>;
  using key_t = rank_key_t<acc_t>;
  const T* scores = static_cast<const T*>(a.scores);
  T* values = static_cast<T*>(a.values);
  TopkScratch<key_t> s;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t b = task / a.S, seg_id = task % a.S;
    const int64_t first = a.offsets[seg_id];
    const uint32_t n = uint32_t(a.offsets[seg_id + 1] - first), k = uint32_t(a.seg_k[task]);
    T* out_v = values + b * a.max_k + a.seg_start[task];
    int64_t* out_i = a.indices + b * a.max_k + a.seg_start[task];
    if (k > 0) {
      const T* seg = scores + b * a.row_stride + first * a.col_stride;
      s.keys.resize(n);
      key_t* keys = s.keys.data();
      for (uint32_t i = 0; i < n; ++i) keys[i] = rank_key(to_acc(seg[int64_t(i) * a.col_stride]), a.largest);
      s.picks.clear();
      if (k == n) {
        for (uint32_t i = 0; i < n; ++i) s.picks.push_back(i);
      } else {
        uint32_t need_eq = 0;
        const key_t threshold = radix_threshold(keys, n, k, s, &need_eq);
        for (uint32_t i = 0; i < n; ++i) {
          if (keys[i] > threshold || (keys[i] == threshold && need_eq > 0 && need_eq--)) s.picks.push_back(i);
        }
      }
      if (!a.by_index) radix_sort_best_first(keys, s);
      for (uint32_t r = 0; r < k; ++r) {
        const uint32_t i = s.picks[r];
        out_v[r] = seg[int64_t(i) * a.col_stride];
        out_i[r] = first + int64_t(i);
      }
    }
    if (seg_id == a.S - 1) {  // the row's last segment pads the row behind every selection
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
