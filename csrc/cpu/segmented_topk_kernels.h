// CPU kernel of segmented_topk: one (row, segment) per task. Compiled per ISA from kernels_isa.cpp;
// tasks are split over threads by the caller (csrc/cpu/segmented_topk_op.cpp).
//
// Integer work on the rank keys of vtp_ext/select_math.h (the CUDA kernel's), no comparison sorts:
//  1. MSB-first radix select, 8 bits per pass, each pass over the previous pass's boundary bucket
//     only, gives the key T of the k-th best entry and how many entries equal to T are needed;
//  2. one pass in index order picks every key > T and the first needed keys == T (ties: lower index);
//  3. order="score": a stable LSD radix sort of the picks by key (passes whose digit is the same for
//     every pick are skipped); stability keeps equal keys in index order.
// The AVX-512 and AVX2 builds do order="score" of 32-bit keys (float, half, bfloat16 scores)
// differently: a partial quicksort of (key, ~index) packed into distinct 64-bit values, partitioning
// 8 (AVX-512: compress) or 4 (AVX2: a permutation table) values per step; see top_sorted_desc. On
// [32, 576] rows with per-sample k it takes about half (AVX-512) or four fifths (AVX2) of the time of
// steps 1-3.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>
#if defined(__AVX2__)
#include <immintrin.h>
#define VTP_TOPK_PARTITION 1
#else
#define VTP_TOPK_PARTITION 0
#endif

#include "cpu/dispatch.h"
#include "cpu/isa.h"
#include "cpu/scalar.h"
#include "vtp_ext/select_math.h"

namespace vtp_ext::cpu::VTP_ISA {

template <typename key_t>
struct TopkItem {
  key_t key;
  uint32_t idx;
};

template <typename key_t>
struct TopkScratch {
  std::vector<key_t> keys;
  std::vector<uint32_t> cand;
  std::vector<TopkItem<key_t>> picks, sorted;
  std::vector<uint64_t> packed, partition;
};

// Histogram of one 8-bit digit of keys[idx[c]] (keys[c] without idx), c in [0, m). Four partial
// histograms: the high digits of float keys take few distinct values, and with one histogram every
// increment would wait for the previous one to the same bucket (a store-to-load chain).
template <typename key_t>
static void digit_histogram(const key_t* keys, const uint32_t* idx, uint32_t m, int shift, uint32_t* hist) {
  if (m < 256) {  // clearing and summing four histograms would cost more than the chains
    std::memset(hist, 0, 256 * sizeof(uint32_t));
    for (uint32_t c = 0; c < m; ++c) ++hist[(keys[idx == nullptr ? c : idx[c]] >> shift) & 255u];
    return;
  }
  uint32_t part[4][256];
  std::memset(part, 0, sizeof(part));
  uint32_t c = 0;
  if (idx == nullptr) {
    for (; c + 4 <= m; c += 4)
      for (int p = 0; p < 4; ++p) ++part[p][(keys[c + p] >> shift) & 255u];
    for (; c < m; ++c) ++part[0][(keys[c] >> shift) & 255u];
  } else {
    for (; c + 4 <= m; c += 4)
      for (int p = 0; p < 4; ++p) ++part[p][(keys[idx[c + p]] >> shift) & 255u];
    for (; c < m; ++c) ++part[0][(keys[idx[c]] >> shift) & 255u];
  }
  for (int b = 0; b < 256; ++b) hist[b] = part[0][b] + part[1][b] + part[2][b] + part[3][b];
}

// Key T of the k-th best of keys[0, n) (0 < k < n) and, in *need_eq, how many keys equal to T are in
// the top k; *all_eq tells whether that is every key equal to T (then the top k are the keys >= T).
// Candidate lists are compacted without branches: whether a key falls in the boundary bucket is
// data-dependent and random, so a branch would mispredict about as often as it is taken.
template <typename key_t>
static key_t radix_threshold(const key_t* keys, uint32_t n, uint32_t k, TopkScratch<key_t>& s, uint32_t* need_eq,
                             bool* all_eq) {
  uint32_t hist[256];
  uint32_t remaining = k;
  key_t prefix = 0;
  s.cand.resize(n);
  uint32_t* cand = s.cand.data();
  uint32_t m = n;
  for (int shift = int(sizeof(key_t)) * 8 - 8; shift >= 0; shift -= 8) {
    const bool all = shift == int(sizeof(key_t)) * 8 - 8;  // the first pass reads keys in place
    digit_histogram(keys, all ? nullptr : cand, m, shift, hist);
    uint32_t digit = 255, cum = 0;
    for (;; --digit) {
      if (cum + hist[digit] >= remaining) break;
      cum += hist[digit];
    }
    remaining -= cum;
    prefix |= key_t(digit) << shift;
    const uint32_t bucket = hist[digit];
    uint32_t out = 0;
    if (all) {
      for (uint32_t c = 0; c < m; ++c) {
        cand[out] = c;
        out += ((keys[c] >> shift) & 255u) == digit;
      }
    } else {
      for (uint32_t c = 0; c < m; ++c) {
        const uint32_t i = cand[c];
        cand[out] = i;
        out += ((keys[i] >> shift) & 255u) == digit;
      }
    }
    m = bucket;
    if (m == remaining) {
      // The whole boundary bucket is picked: T is its smallest key, needed as often as it occurs.
      key_t lo = keys[cand[0]];
      for (uint32_t c = 1; c < m; ++c) lo = keys[cand[c]] < lo ? keys[cand[c]] : lo;
      uint32_t eq = 0;
      for (uint32_t c = 0; c < m; ++c) eq += keys[cand[c]] == lo;
      *need_eq = eq;
      *all_eq = true;
      return lo;
    }
  }
  *need_eq = remaining;
  *all_eq = remaining == m;  // the last bucket holds exactly the keys equal to T
  return prefix;
}

// Visits keys[0, n) in index order, telling which are in the top k: every key > T and the first
// need_eq keys == T. f(out, i, take) is called for every i, out being the number of picks before i
// (a caller may store slot `out` unconditionally: it is overwritten until it holds a pick).
template <typename key_t, typename F>
static void select_in_index_order(const key_t* keys, uint32_t n, key_t threshold, uint32_t need_eq, bool all_eq,
                                  const F& f) {
  uint32_t out = 0;
  if (all_eq) {  // the usual case: no chain through a count of remaining ties
    for (uint32_t i = 0; i < n; ++i) {
      const bool take = keys[i] >= threshold;
      f(out, i, take);
      out += take;
    }
    return;
  }
  for (uint32_t i = 0; i < n; ++i) {
    const key_t key = keys[i];
    const bool eq = key == threshold;
    const bool take = (key > threshold) | (eq & (need_eq > 0));
    need_eq -= uint32_t(eq & take);
    f(out, i, take);
    out += take;
  }
}

// Stable LSD radix sort of s.picks by key, best (largest) first; the result is left in s.picks. The
// histograms of every digit come from one pass; a digit shared by every pick is skipped. Items carry
// their key, so the passes read and write sequential memory only. The high digits of float keys take
// few distinct values, so consecutive items tend to hit the same bucket, and every increment of its
// counter would wait for the previous one (a store-to-load chain): each pass handles the items as two
// halves with their own counters -- two independent chains -- placing the first half's items of a
// bucket before the second half's, which keeps the sort stable. (Comparison sorts -- std::sort,
// nth_element on packed (key, index) items -- measured 2-3x slower on fresh rows: their branches
// mispredict.)
template <typename key_t>
static void radix_sort_best_first(TopkScratch<key_t>& s) {
  constexpr int kDigits = int(sizeof(key_t));
  const uint32_t m = uint32_t(s.picks.size());
  if (m < 2) return;
  const uint32_t h = m / 2;  // halves [0, h) and [h, m)
  s.sorted.resize(m);
  uint32_t total[kDigits][256], odd[kDigits][256];
  std::memset(total, 0, sizeof(total));
  std::memset(odd, 0, sizeof(odd));
  auto bucket = [](key_t key, int d) { return 255u - uint32_t((key >> (8 * d)) & 255u); };
  const TopkItem<key_t>* items = s.picks.data();
  for (uint32_t r = 0; r + 1 < m; r += 2) {  // two partial histograms, for the same reason
    for (int d = 0; d < kDigits; ++d) {
      ++total[d][bucket(items[r].key, d)];
      ++odd[d][bucket(items[r + 1].key, d)];
    }
  }
  if (m % 2)
    for (int d = 0; d < kDigits; ++d) ++total[d][bucket(items[m - 1].key, d)];
  TopkItem<key_t>* src = s.picks.data();
  TopkItem<key_t>* dst = s.sorted.data();
  for (int d = 0; d < kDigits; ++d) {
    uint32_t* all = total[d];
    for (int b = 0; b < 256; ++b) all[b] += odd[d][b];
    if (all[bucket(src[0].key, d)] == m) continue;  // the pass would not move anything
    if (m < 256) {  // few items: one chain is short, and a second would cost a histogram pass
      uint32_t start = 0;
      for (int b = 0; b < 256; ++b) {
        const uint32_t c = all[b];
        all[b] = start;
        start += c;
      }
      for (uint32_t r = 0; r < m; ++r) dst[all[bucket(src[r].key, d)]++] = src[r];
      std::swap(src, dst);
      continue;
    }
    uint32_t first[256], second[256];
    std::memset(first, 0, sizeof(first));
    for (uint32_t r = 0; r < h; ++r) ++first[bucket(src[r].key, d)];
    uint32_t start = 0;
    for (int b = 0; b < 256; ++b) {
      const uint32_t c = first[b];
      first[b] = start;
      second[b] = start + c;
      start += all[b];
    }
    for (uint32_t r = 0; r < h; ++r) {
      const TopkItem<key_t> x = src[r], y = src[h + r];
      dst[first[bucket(x.key, d)]++] = x;
      dst[second[bucket(y.key, d)]++] = y;
    }
    if (m % 2) dst[second[bucket(src[m - 1].key, d)]++] = src[m - 1];
    std::swap(src, dst);
  }
  if (src != s.picks.data()) s.picks.swap(s.sorted);
}

#if VTP_TOPK_PARTITION
// ---- order="score" by partial quicksort (AVX-512 or AVX2) -----------------------------------------
// Values are (key << 32) | ~index: distinct, nonzero (index < 2^31), and descending value order is
// the op's order -- larger key first, equal keys by lower index.
//
// rank_sort_desc(a, m): a[0, m), m <= kRankSort, sorted descending -- each value's rank is the count
// of larger values (branch-free, and cheap for so few).
// partition_desc(a, m, pivot, need, front, back): a[0, m) around pivot (one of its values) into
// a[0, g) > pivot, then -- only if need > g, the back is not looked at otherwise -- a[g] = pivot and
// a[g + 1, m) < pivot; returns g. front and back are scratch of m + 8 values each (a compressed vector
// is stored whole).
constexpr uint32_t kRankSort = 32;

inline uint32_t gather_partition(uint64_t* a, const uint64_t* front, uint32_t nf, const uint64_t* back, uint32_t nb,
                                 uint64_t pivot, uint32_t need) {
  std::memcpy(a, front, sizeof(uint64_t) * nf);
  if (need > nf) {
    a[nf] = pivot;
    std::memcpy(a + nf + 1, back, sizeof(uint64_t) * nb);
  }
  return nf;
}

#if defined(__AVX512F__) && defined(__AVX512VL__)
inline __mmask8 lanes_below(uint32_t r) { return r >= 8 ? __mmask8(0xFF) : __mmask8((1u << r) - 1u); }

// Values as rank_sort_desc compares them: 8 lanes, unsigned compares.
using RankVec = __m512i;
constexpr uint32_t kRankLanes = 8;
inline RankVec rank_load(const uint64_t* p) { return _mm512_loadu_si512(p); }
inline RankVec rank_splat(uint64_t x) { return _mm512_set1_epi64(int64_t(x)); }
inline uint32_t count_greater(RankVec v, RankVec x) {
  return uint32_t(__builtin_popcount(_mm512_cmpgt_epu64_mask(v, x)));
}

inline uint32_t partition_desc(uint64_t* a, uint32_t m, uint64_t pivot, uint32_t need, uint64_t* front,
                               uint64_t* back) {
  const __m512i p = _mm512_set1_epi64(int64_t(pivot));
  uint32_t nf = 0, nb = 0;
  for (uint32_t i = 0; i < m; i += 8) {
    const __mmask8 valid = lanes_below(m - i);
    const __m512i v = _mm512_maskz_loadu_epi64(valid, a + i);
    const __mmask8 gt = _mm512_mask_cmpgt_epu64_mask(valid, v, p), lt = _mm512_mask_cmplt_epu64_mask(valid, v, p);
    _mm512_storeu_si512(front + nf, _mm512_maskz_compress_epi64(gt, v));
    _mm512_storeu_si512(back + nb, _mm512_maskz_compress_epi64(lt, v));
    nf += uint32_t(__builtin_popcount(gt));
    nb += uint32_t(__builtin_popcount(lt));
  }
  return gather_partition(a, front, nf, back, nb, pivot, need);
}
#else  // AVX2: unsigned 64-bit compares through the sign bias; compression by a permutation table
// kCompress[mask] moves the 64-bit lanes set in the 4-bit mask to the front (as 32-bit lane pairs).
constexpr std::array<std::array<int32_t, 8>, 16> compress_table() {
  std::array<std::array<int32_t, 8>, 16> t{};
  for (int mask = 0; mask < 16; ++mask) {
    int out = 0;
    for (int lane = 0; lane < 4; ++lane)
      if (mask >> lane & 1) {
        t[mask][2 * out] = 2 * lane;
        t[mask][2 * out + 1] = 2 * lane + 1;
        ++out;
      }
  }
  return t;
}
alignas(32) inline constexpr std::array<std::array<int32_t, 8>, 16> kCompress = compress_table();

inline __m256i biased(__m256i v) { return _mm256_xor_si256(v, _mm256_set1_epi64x(INT64_MIN)); }
inline int greater_mask(__m256i x_biased, __m256i y_biased) {  // lanes with x > y (unsigned)
  return _mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(x_biased, y_biased)));
}
inline __m256i compress(__m256i v, int mask) {
  return _mm256_permutevar8x32_epi32(v, _mm256_load_si256(reinterpret_cast<const __m256i*>(kCompress[mask].data())));
}

using RankVec = __m256i;  // biased, 4 lanes
constexpr uint32_t kRankLanes = 4;
inline RankVec rank_load(const uint64_t* p) { return biased(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
inline RankVec rank_splat(uint64_t x) { return biased(_mm256_set1_epi64x(int64_t(x))); }
inline uint32_t count_greater(RankVec v, RankVec x) { return uint32_t(__builtin_popcount(greater_mask(v, x))); }

inline uint32_t partition_desc(uint64_t* a, uint32_t m, uint64_t pivot, uint32_t need, uint64_t* front,
                               uint64_t* back) {
  const __m256i p = biased(_mm256_set1_epi64x(int64_t(pivot)));
  uint32_t nf = 0, nb = 0, i = 0;
  for (; i + 4 <= m; i += 4) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i)), vb = biased(v);
    const int gt = greater_mask(vb, p), lt = greater_mask(p, vb);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(front + nf), compress(v, gt));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(back + nb), compress(v, lt));
    nf += uint32_t(__builtin_popcount(gt));
    nb += uint32_t(__builtin_popcount(lt));
  }
  for (; i < m; ++i) {  // stores past the count are overwritten or never read
    const uint64_t v = a[i];
    front[nf] = v;
    back[nb] = v;
    nf += v > pivot;
    nb += v < pivot;
  }
  return gather_partition(a, front, nf, back, nb, pivot, need);
}
#endif

inline void rank_sort_desc(uint64_t* a, uint32_t m) {
  uint64_t padded[kRankSort] = {};  // padding: 0, below every value
  std::memcpy(padded, a, sizeof(uint64_t) * m);
  RankVec v[kRankSort / kRankLanes];
  const uint32_t vectors = (m + kRankLanes - 1) / kRankLanes;
  for (uint32_t j = 0; j < vectors; ++j) v[j] = rank_load(padded + kRankLanes * j);
  uint64_t sorted[kRankSort];
  for (uint32_t i = 0; i < m; ++i) {
    const RankVec x = rank_splat(a[i]);
    uint32_t rank = 0;
    for (uint32_t j = 0; j < vectors; ++j) rank += count_greater(v[j], x);
    sorted[rank] = a[i];
  }
  std::memcpy(a, sorted, sizeof(uint64_t) * m);
}

// The `need` largest values of a[0, m) (need <= m), sorted descending, into a[0, need): quicksort that
// only descends where the top `need` lie. scratch: 2 (m + 8) values. Past `depth` bad pivots, a
// comparison sort bounds the cost.
inline void top_sorted_desc(uint64_t* a, uint32_t m, uint32_t need, uint64_t* scratch, int depth) {
  while (need > 0) {
    if (m <= kRankSort) {
      rank_sort_desc(a, m);
      return;
    }
    if (depth-- <= 0) {
      std::sort(a, a + m, std::greater<uint64_t>());
      return;
    }
    const uint64_t x = a[0], y = a[m / 2], z = a[m - 1];
    const uint64_t pivot = std::max(std::min(x, y), std::min(std::max(x, y), z));  // median of three
    const uint32_t g = partition_desc(a, m, pivot, need, scratch, scratch + m + 8);
    if (need <= g) {
      m = g;
      continue;
    }
    top_sorted_desc(a, g, g, scratch, depth);
    a += g + 1;  // the pivot is in place; the rest comes from the back
    m -= g + 1;
    need -= g + 1;
  }
}

// Column indices of the k best of keys[0, n), in the op's order, into idx[0, k).
inline void topk_by_partition(const uint32_t* keys, uint32_t n, uint32_t k, TopkScratch<uint32_t>& s,
                              uint32_t* idx) {
  s.packed.resize(n);
  s.partition.resize(2 * (size_t(n) + 8));
  uint64_t* packed = s.packed.data();
  for (uint32_t i = 0; i < n; ++i) packed[i] = (uint64_t(keys[i]) << 32) | uint32_t(~i);
  const int depth = 2 * (32 - __builtin_clz(n)) + 4;
  top_sorted_desc(packed, n, k, s.partition.data(), depth);
  for (uint32_t r = 0; r < k; ++r) idx[r] = ~uint32_t(packed[r]);
}
#endif

template <typename T, typename key_t>
static void load_keys(const T* seg, int64_t col_stride, uint32_t n, bool largest, key_t* keys) {
  // The dense case is its own loop so that it vectorises.
  if (col_stride == 1) {
    for (uint32_t i = 0; i < n; ++i) keys[i] = rank_key(to_acc(seg[i]), largest);
  } else {
    for (uint32_t i = 0; i < n; ++i) keys[i] = rank_key(to_acc(seg[int64_t(i) * col_stride]), largest);
  }
}

// Column indices (within the segment) of the k best of keys[0, n), 0 < k <= n, into idx[0, k): in the
// op's order (by score, or by index).
template <typename key_t>
static void select_topk(const key_t* keys, uint32_t n, uint32_t k, bool by_index, TopkScratch<key_t>& s,
                        uint32_t* idx) {
#if VTP_TOPK_PARTITION
  if constexpr (sizeof(key_t) == 4) {
    // Its scratch is 24 bytes per entry against the radix path's ~8: segments past 1M entries keep radix.
    if (!by_index && n <= (1u << 20)) return topk_by_partition(keys, n, k, s, idx);
  }
#endif
  s.picks.resize(size_t(k) + 1);  // select_in_index_order may write the slot after the last pick
  TopkItem<key_t>* picks = s.picks.data();
  if (k == n) {
    for (uint32_t i = 0; i < n; ++i) picks[i] = {keys[i], i};
  } else {
    uint32_t need_eq = 0;
    bool all_eq = false;
    const key_t threshold = radix_threshold(keys, n, k, s, &need_eq, &all_eq);
    select_in_index_order(keys, n, threshold, need_eq, all_eq,
                          [&](uint32_t out, uint32_t i, bool) { picks[out] = {keys[i], i}; });
  }
  s.picks.resize(k);
  if (!by_index) radix_sort_best_first(s);
  for (uint32_t r = 0; r < k; ++r) idx[r] = s.picks[r].idx;
}

template <typename T>
static void segmented_topk_tasks(const SegmentedTopkArgs& a, int64_t begin, int64_t end) {
  using acc_t = acc_of<T>;
  using key_t = rank_key_t<acc_t>;
  const T* scores = static_cast<const T*>(a.scores);
  T* values = static_cast<T*>(a.values);
  TopkScratch<key_t> s;
  std::vector<uint32_t> idx;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t b = task / a.S, seg_id = task % a.S;
    const int64_t first = a.offsets[seg_id];
    const uint32_t n = uint32_t(a.offsets[seg_id + 1] - first), k = uint32_t(a.seg_k[task]);
    T* out_v = values + b * a.max_k + a.seg_start[task];
    int64_t* out_i = a.indices + b * a.max_k + a.seg_start[task];
    if (k > 0) {
      const T* seg = scores + b * a.row_stride + first * a.col_stride;
      s.keys.resize(n);
      load_keys(seg, a.col_stride, n, a.largest, s.keys.data());
      idx.resize(k);
      select_topk(s.keys.data(), n, k, a.by_index, s, idx.data());
      for (uint32_t r = 0; r < k; ++r) {
        out_v[r] = seg[int64_t(idx[r]) * a.col_stride];
        out_i[r] = first + int64_t(idx[r]);
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
