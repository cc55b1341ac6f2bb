// CPU kernels of gumbel_topk (forward, backward) and gumbel_noise: one row per task, compiled per ISA
// from kernels_isa.cpp; rows are split over threads by the caller (csrc/cpu/gumbel_topk_op.cpp), or,
// with two threads or more per row, one sequential-mode row's steps are (GumbelArgs::parallel_steps).
//
// The noise comes from vtp_ext/gumbel_math.h, bit-identical to the CUDA kernels. Every per-step pass is
// a dense loop over the row (picked entries are -inf in a masked copy of the logits rather than being
// skipped), so the compiler can vectorise the Philox blocks, the log/exp evaluations and the reductions.
// Scratch is O(N) per thread, plus a chunk of at most 64 steps' scores (~256 KB) for the sequential
// mode and O(N sqrt(k)) for the single-mode backward's checkpoints.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "cpu/dispatch.h"
#include "cpu/isa.h"
#include "cpu/scalar.h"
#include "cpu/segmented_topk_kernels.h"
#include "vtp_ext/gumbel_math.h"
#include "vtp_ext/select_math.h"

namespace vtp_ext::cpu::VTP_ISA {

template <typename acc_t>
struct GumbelScratch {
  std::vector<uint32_t> words;
  std::vector<acc_t> logits, z, grad, acc, alpha, alpha_bar, checkpoints, probs, chunk, maxima;
  std::vector<acc_t> block_max;
  std::vector<int64_t> picks, block_arg;
  std::vector<uint8_t> picked;
  TopkScratch<rank_key_t<acc_t>> topk;
  std::vector<rank_key_t<acc_t>> keys;
};

// words[4 (blk - blk0) + w] = word w of Philox block blk (vtp_ext/gumbel_math.h), for the `blocks`
// blocks from blk0. The SIMD versions run 16 (AVX-512) or 8 (AVX2) blocks side by side -- counter word
// w of every block in one register, 32x32 -> 64-bit products from the even and odd lanes -- and
// transpose them into the layout above; what they return is how many blocks they did. Bit-identical
// to philox4x32_10 (tested against it and against the Random123 vectors through every CPU build).
// Per ISA: PhiloxVec holds one 32-bit word of kPhiloxLanes blocks; philox_mul gives the low and high
// halves of each lane's 32x32 -> 64-bit product (even lanes, then odd lanes shifted down); philox_store
// transposes four such words into blocks of 4 consecutive words.
// GCC 12 reports its own headers' "undefined" pass-through operands as maybe-uninitialized (GCC bug
// 105593) once the AVX-512 intrinsics are inlined.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#if defined(__AVX512F__) && defined(__AVX512VL__)
#define VTP_PHILOX_SIMD 1
using PhiloxVec = __m512i;
constexpr int64_t kPhiloxLanes = 16;
inline PhiloxVec philox_set1(uint32_t x) { return _mm512_set1_epi32(int(x)); }
inline PhiloxVec philox_iota(uint32_t first) {
  return _mm512_add_epi32(philox_set1(first), _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}
inline void philox_mul(PhiloxVec a, PhiloxVec m, PhiloxVec* lo, PhiloxVec* hi) {
  const __m512i even = _mm512_mul_epu32(a, m), odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  *lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  *hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}
inline PhiloxVec philox_xor3(PhiloxVec a, PhiloxVec b, PhiloxVec c) { return _mm512_ternarylogic_epi32(a, b, c, 0x96); }
inline void philox_store(uint32_t* out, PhiloxVec c0, PhiloxVec c1, PhiloxVec c2, PhiloxVec c3) {
  const __m512i t01lo = _mm512_unpacklo_epi32(c0, c1), t01hi = _mm512_unpackhi_epi32(c0, c1);
  const __m512i t23lo = _mm512_unpacklo_epi32(c2, c3), t23hi = _mm512_unpackhi_epi32(c2, c3);
  // 128-bit lane q of a / b / c / d: blocks 4q + 0 / 1 / 2 / 3
  const __m512i a = _mm512_unpacklo_epi64(t01lo, t23lo), b = _mm512_unpackhi_epi64(t01lo, t23lo);
  const __m512i c = _mm512_unpacklo_epi64(t01hi, t23hi), d = _mm512_unpackhi_epi64(t01hi, t23hi);
  const __m512i x0 = _mm512_shuffle_i32x4(a, b, 0x44), x1 = _mm512_shuffle_i32x4(c, d, 0x44);
  const __m512i x2 = _mm512_shuffle_i32x4(a, b, 0xEE), x3 = _mm512_shuffle_i32x4(c, d, 0xEE);
  _mm512_storeu_si512(out, _mm512_shuffle_i32x4(x0, x1, 0x88));
  _mm512_storeu_si512(out + 16, _mm512_shuffle_i32x4(x0, x1, 0xDD));
  _mm512_storeu_si512(out + 32, _mm512_shuffle_i32x4(x2, x3, 0x88));
  _mm512_storeu_si512(out + 48, _mm512_shuffle_i32x4(x2, x3, 0xDD));
}
#elif defined(__AVX2__)
#define VTP_PHILOX_SIMD 1
using PhiloxVec = __m256i;
constexpr int64_t kPhiloxLanes = 8;
inline PhiloxVec philox_set1(uint32_t x) { return _mm256_set1_epi32(int(x)); }
inline PhiloxVec philox_iota(uint32_t first) {
  return _mm256_add_epi32(philox_set1(first), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline void philox_mul(PhiloxVec a, PhiloxVec m, PhiloxVec* lo, PhiloxVec* hi) {
  const __m256i even = _mm256_mul_epu32(a, m), odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}
inline PhiloxVec philox_xor3(PhiloxVec a, PhiloxVec b, PhiloxVec c) {
  return _mm256_xor_si256(_mm256_xor_si256(a, b), c);
}
inline void philox_store(uint32_t* out, PhiloxVec c0, PhiloxVec c1, PhiloxVec c2, PhiloxVec c3) {
  const __m256i t01lo = _mm256_unpacklo_epi32(c0, c1), t01hi = _mm256_unpackhi_epi32(c0, c1);
  const __m256i t23lo = _mm256_unpacklo_epi32(c2, c3), t23hi = _mm256_unpackhi_epi32(c2, c3);
  // 128-bit lane q of a / b / c / d: blocks 4q + 0 / 1 / 2 / 3
  const __m256i a = _mm256_unpacklo_epi64(t01lo, t23lo), b = _mm256_unpackhi_epi64(t01lo, t23lo);
  const __m256i c = _mm256_unpacklo_epi64(t01hi, t23hi), d = _mm256_unpackhi_epi64(t01hi, t23hi);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_permute2x128_si256(a, b, 0x20));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 8), _mm256_permute2x128_si256(c, d, 0x20));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16), _mm256_permute2x128_si256(a, b, 0x31));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 24), _mm256_permute2x128_si256(c, d, 0x31));
}
#else
#define VTP_PHILOX_SIMD 0
#endif

// The blocks from blk0 that fill whole vectors, as philox4x32_10 computes them; returns how many.
inline int64_t philox_words_simd([[maybe_unused]] uint64_t seed, [[maybe_unused]] int64_t row,
                                 [[maybe_unused]] int64_t step, [[maybe_unused]] int64_t blk0,
                                 [[maybe_unused]] int64_t blocks,
                                 [[maybe_unused]] uint32_t* words) {
  int64_t b = 0;
#if VTP_PHILOX_SIMD
  const PhiloxVec M0 = philox_set1(0xD2511F53u), M1 = philox_set1(0xCD9E8D57u);
  for (; b + kPhiloxLanes <= blocks; b += kPhiloxLanes) {
    PhiloxVec c0 = philox_iota(uint32_t(blk0 + b)), c1 = philox_set1(uint32_t(step));
    PhiloxVec c2 = philox_set1(uint32_t(row)), c3 = philox_set1(uint32_t(uint64_t(row) >> 32));
    uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
    for (int r = 0; r < 10; ++r) {
      if (r > 0) {
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
      }
      PhiloxVec lo0, hi0, lo1, hi1;
      philox_mul(c0, M0, &lo0, &hi0);
      philox_mul(c2, M1, &lo1, &hi1);
      c0 = philox_xor3(hi1, c1, philox_set1(k0));
      c2 = philox_xor3(hi0, c3, philox_set1(k1));
      c1 = lo1;
      c3 = lo0;
    }
    philox_store(words + 4 * b, c0, c1, c2, c3);
  }
#endif
  return b;
}
#pragma GCC diagnostic pop

inline void philox_words(uint64_t seed, int64_t row, int64_t step, int64_t blk0, int64_t blocks, uint32_t* words) {
  for (int64_t b = philox_words_simd(seed, row, step, blk0, blocks, words); b < blocks; ++b) {
    const Philox4x32 p = noise_block(seed, row, step, uint32_t(blk0 + b));
    for (int w = 0; w < 4; ++w) words[4 * b + w] = p.v[w];
  }
}

// noise[j] = the Gumbel noise of (row, step, j) for j in [j0, j1); j0 is a multiple of the columns per block.
template <typename acc_t>
static void fill_noise(uint64_t seed, int64_t row, int64_t step, int64_t j0, int64_t j1, std::vector<uint32_t>& buf,
                       acc_t* noise) {
  using G = GumbelNoise<acc_t>;
  const int64_t blk0 = j0 / G::kPerBlock, blocks = (j1 - j0 + G::kPerBlock - 1) / G::kPerBlock;
  buf.resize(size_t(blocks) * 4);
  uint32_t* words = buf.data();
  philox_words(seed, row, step, blk0, blocks, words);
  acc_t* out = noise + j0;
  const int64_t n = j1 - j0;
  if constexpr (sizeof(acc_t) == 4) {
    for (int64_t j = 0; j < n; ++j) out[j] = gumbel_from_bits(words[j]);
  } else {
    for (int64_t j = 0; j < n; ++j) out[j] = gumbel_from_bits(words[2 * j], words[2 * j + 1]);
  }
}

template <typename acc_t>
static void fill_noise(uint64_t seed, int64_t row, int64_t step, int64_t N, GumbelScratch<acc_t>& s, acc_t* noise) {
  fill_noise(seed, row, step, 0, N, s.words, noise);
}

// Loads row b of the logits in the accumulation type; false if it holds NaN or +inf.
template <typename T, typename acc_t = acc_of<T>>
static bool load_logits(const GumbelArgs& a, int64_t b, acc_t* out) {
  const T* row = static_cast<const T*>(a.logits) + b * a.logits_rs;
  bool ok = true;
  for (int64_t j = 0; j < a.N; ++j) {
    const acc_t v = to_acc(row[j * a.logits_cs]);
    ok = ok && v == v && v != std::numeric_limits<acc_t>::infinity();
    out[j] = v;
  }
  return ok;
}

// exp of x <= 0 over a row, in two passes (see exp_core in vtp_ext/gumbel_math.h for why).
template <typename acc_t>
static void exp_row(acc_t* x, int64_t N) {
  for (int64_t j = 0; j < N; ++j) x[j] = exp_floor(x[j]);
  for (int64_t j = 0; j < N; ++j) x[j] = zero_unless(x[j] > ExpFloor<acc_t>::value, exp_core(x[j]));
}

// Reductions over a row with 8 independent lanes, which the compiler turns into one SIMD accumulator
// (a single running sum would have to stay scalar to keep its rounding order).
constexpr int kLanes = 8;

template <typename acc_t>
static acc_t row_max(const acc_t* v, int64_t N) {
  constexpr int kMaxLanes = 2 * kLanes;  // max is exact in any order: two vectors hide its latency
  acc_t lane[kMaxLanes];
  for (int l = 0; l < kMaxLanes; ++l) lane[l] = -std::numeric_limits<acc_t>::infinity();
  int64_t j = 0;
  for (; j + kMaxLanes <= N; j += kMaxLanes)
    for (int l = 0; l < kMaxLanes; ++l) lane[l] = std::max(lane[l], v[j + l]);
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  for (; j < N; ++j) m = std::max(m, v[j]);
  for (int l = 0; l < kMaxLanes; ++l) m = std::max(m, lane[l]);
  return m;
}

template <typename acc_t>
static acc_t row_dot(const acc_t* a, const acc_t* b, int64_t N) {
  acc_t lane[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= N; j += kLanes)
    for (int l = 0; l < kLanes; ++l) lane[l] += a[j + l] * b[j + l];
  acc_t tail = 0;
  for (; j < N; ++j) tail += a[j] * b[j];
  for (int l = 0; l < kLanes; ++l) tail += lane[l];
  return tail;
}

template <typename acc_t>
static acc_t row_sum(const acc_t* a, int64_t N) {
  acc_t lane[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= N; j += kLanes)
    for (int l = 0; l < kLanes; ++l) lane[l] += a[j + l];
  acc_t tail = 0;
  for (; j < N; ++j) tail += a[j];
  for (int l = 0; l < kLanes; ++l) tail += lane[l];
  return tail;
}

// The maximum of v[j0, j1) and the lowest index holding it (-inf and j0 if every entry is -inf): a
// vectorised maximum, then a search for it that tests whole blocks at a time.
template <typename acc_t>
static void row_argmax(const acc_t* v, int64_t j0, int64_t j1, acc_t* max_out, int64_t* arg_out) {
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  const acc_t m = row_max(v + j0, j1 - j0);
  int64_t j = j0;
  if (m != kNegInf) {
    constexpr int kBlock = 32;
    for (; j + kBlock <= j1; j += kBlock) {
      int hit = 0;
      for (int l = 0; l < kBlock; ++l) hit |= v[j + l] == m;
      if (hit) break;
    }
    while (v[j] != m) ++j;
  }
  *max_out = m;
  *arg_out = j;
}

// Sequential argmax of z over the unpicked entries (picked ones are -inf in z); ties and an all -inf
// remainder go to the lowest unpicked index.
template <typename acc_t>
static int64_t pick_step(const acc_t* z, const uint8_t* picked, int64_t N, acc_t* max_out) {
  int64_t j;
  row_argmax(z, 0, N, max_out, &j);
  if (*max_out == -std::numeric_limits<acc_t>::infinity()) {
    j = 0;
    while (picked[j]) ++j;
  }
  return j;
}

// Top-k of v[0, N) with ties to the lower index, as a 0/1 mask (segmented_topk's radix selection).
template <typename T, typename acc_t>
static void topk_mask(const acc_t* v, int64_t N, int64_t k, GumbelScratch<acc_t>& s, T* mask) {
  const T one = from_acc<T>(acc_t(1)), zero = from_acc<T>(acc_t(0));
  if (k >= N) {
    for (int64_t j = 0; j < N; ++j) mask[j] = one;
    return;
  }
  if (k == 0) {
    for (int64_t j = 0; j < N; ++j) mask[j] = zero;
    return;
  }
  s.keys.resize(size_t(N));
  for (int64_t j = 0; j < N; ++j) s.keys[j] = rank_key(v[j], true);
  uint32_t need_eq = 0;
  bool all_eq = false;
  const auto threshold = radix_threshold(s.keys.data(), uint32_t(N), uint32_t(k), s.topk, &need_eq, &all_eq);
  select_in_index_order(s.keys.data(), uint32_t(N), threshold, need_eq, all_eq,
                        [&](uint32_t, uint32_t i, bool take) { mask[i] = take ? one : zero; });
}

// The sequential mode runs in chunks of steps. Step t's scores z_t = logits + noise_t (-inf where
// picked) depend on the earlier steps only through which entries they picked, so a chunk's noise is
// drawn for all its steps at once -- in parallel over (step, column block) when a.parallel_steps is
// set, which is how one row uses several threads -- and the picks are then made one step at a time,
// each step masking what the chunk's earlier steps took. Every pick and step probability is
// bit-identical to stepping one at a time; the backward adds its step terms in groups of 8 within a
// chunk (the chunk size depends on N only), so its rounding is fixed whatever the thread count.
constexpr int64_t kNoiseColumns = 4096;  // columns of one noise task (a multiple of 4 and 2)

// Steps per chunk: the chunk's scores (steps x N) stay within ~256 KB (float).
inline int64_t chunk_steps(int64_t N) { return std::clamp<int64_t>((int64_t{1} << 16) / (N + 1), 1, 64); }

template <typename F>
static void for_steps(const GumbelArgs& a, int64_t n, const F& f) {
  if (a.parallel_steps == nullptr || n <= 1) {
    if (n > 0) f(int64_t{0}, n);
    return;
  }
  a.parallel_steps(n, [](void* ctx, int64_t b, int64_t e) { (*static_cast<const F*>(ctx))(b, e); },
                   const_cast<void*>(static_cast<const void*>(&f)));
}

// z[i N + j] = lz[j] + noise(row b, step t0 + i, column j) for the chunk's c steps, and each (step,
// column block)'s maximum and first index of it in s.block_max / s.block_arg.
template <typename acc_t>
static void draw_chunk(const GumbelArgs& a, int64_t b, int64_t t0, int64_t c, const acc_t* lz, acc_t* z,
                       GumbelScratch<acc_t>& s) {
  const int64_t N = a.N, col_blocks = (N + kNoiseColumns - 1) / kNoiseColumns;
  s.block_max.resize(size_t(c * col_blocks));
  s.block_arg.resize(size_t(c * col_blocks));
  for_steps(a, c * col_blocks, [&](int64_t begin, int64_t end) {
    std::vector<uint32_t> words;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t i = item / col_blocks, j0 = (item % col_blocks) * kNoiseColumns;
      const int64_t j1 = std::min(N, j0 + kNoiseColumns);
      acc_t* zi = z + i * N;
      fill_noise(a.seed, b, t0 + i, j0, j1, words, zi);
      for (int64_t j = j0; j < j1; ++j) zi[j] += lz[j];  // lz is -inf where picked before the chunk
      row_argmax(zi, j0, j1, &s.block_max[size_t(item)], &s.block_arg[size_t(item)]);
    }
  });
}

// Step i's scores as the step sees them: -inf where the chunk's steps before it picked.
template <typename acc_t>
static void mask_chunk_picks(acc_t* zi, const int64_t* picks, int64_t i) {
  for (int64_t q = 0; q < i; ++q) zi[picks[q]] = -std::numeric_limits<acc_t>::infinity();
}

// The chunk's c picks in step order: picks[i] and the maximum maxima[i] of step i, as pick_step finds
// them after mask_chunk_picks. The argmax drawn with the noise stands unless one of the chunk's earlier
// picks is it; only then is the row masked and searched again (a row the other thread wrote is slow to
// touch). picked and lz (-inf) are updated.
template <typename acc_t>
static void pick_chunk(int64_t N, int64_t c, acc_t* z, GumbelScratch<acc_t>& s, acc_t* lz) {
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  const int64_t col_blocks = (N + kNoiseColumns - 1) / kNoiseColumns;
  int64_t* picks = s.picks.data();
  for (int64_t i = 0; i < c; ++i) {
    acc_t* zi = z + i * N;
    acc_t m = kNegInf;
    int64_t arg = -1;
    for (int64_t blk = 0; blk < col_blocks; ++blk)  // in column order: a later block must be larger
      if (s.block_max[size_t(i * col_blocks + blk)] > m) {
        m = s.block_max[size_t(i * col_blocks + blk)];
        arg = s.block_arg[size_t(i * col_blocks + blk)];
      }
    bool taken = false;
    for (int64_t q = 0; q < i; ++q) taken = taken || picks[q] == arg;
    if (m == kNegInf || taken) {
      mask_chunk_picks(zi, picks, i);
      picks[i] = pick_step(zi, s.picked.data(), N, &s.maxima[size_t(i)]);
    } else {
      picks[i] = arg;
      s.maxima[size_t(i)] = m;
    }
    s.picked[size_t(picks[i])] = 1;
    lz[picks[i]] = kNegInf;
  }
}

// Runs body(c) for each chunk (c steps) of a row's k sequential steps, after drawing and picking it;
// body sees the chunk's scores in s.chunk (mask_chunk_picks gives step i's view), picks and maxima.
template <typename acc_t, typename Body>
static void sequential_steps(const GumbelArgs& a, int64_t b, int64_t k, acc_t* lz, GumbelScratch<acc_t>& s,
                             const Body& body) {
  const int64_t N = a.N, C = chunk_steps(N);
  s.chunk.resize(size_t(std::min(C, k) * N));
  s.maxima.resize(size_t(C));
  s.picks.resize(size_t(C));
  s.picked.assign(size_t(N), 0);
  for (int64_t t0 = 0; t0 < k; t0 += C) {
    const int64_t c = std::min(C, k - t0);
    draw_chunk(a, b, t0, c, lz, s.chunk.data(), s);
    pick_chunk(N, c, s.chunk.data(), s, lz);
    body(c);
  }
}

template <typename T>
static bool gumbel_fwd_rows(const GumbelArgs& a, int64_t begin, int64_t end) {
  using acc_t = acc_of<T>;
  GumbelScratch<acc_t> s;
  const int64_t N = a.N;
  s.logits.resize(size_t(N));
  s.z.resize(size_t(N));
  acc_t* lz = s.logits.data();
  acc_t* z = s.z.data();
  bool ok = true;
  for (int64_t b = begin; b < end; ++b) {
    T* mask = static_cast<T*>(a.out) + b * N;
    if (!load_logits<T>(a, b, lz)) {
      ok = false;
      continue;
    }
    const int64_t k = a.k[b];
    if (!a.training || a.mode == GumbelMode::kSingle) {
      if (a.training) {
        fill_noise(a.seed, b, 0, N, s, z);
        for (int64_t j = 0; j < N; ++j) z[j] += lz[j];
      } else {
        std::memcpy(z, lz, sizeof(acc_t) * size_t(N));
      }
      topk_mask<T>(z, N, k, s, mask);
      continue;
    }
    const T zero = from_acc<T>(acc_t(0)), one = from_acc<T>(acc_t(1));
    for (int64_t j = 0; j < N; ++j) mask[j] = zero;
    sequential_steps(a, b, k, lz, s, [&](int64_t c) {
      for (int64_t i = 0; i < c; ++i) mask[s.picks[i]] = one;
    });
  }
  return ok;
}

// Softmax of v / tau into p (0 everywhere when every v is -inf).
template <typename acc_t>
static void softmax_tempered(const acc_t* v, int64_t N, acc_t inv_tau, acc_t* p) {
  const acc_t m = row_max(v, N);
  if (m == -std::numeric_limits<acc_t>::infinity()) {
    for (int64_t j = 0; j < N; ++j) p[j] = 0;
    return;
  }
  for (int64_t j = 0; j < N; ++j) p[j] = (v[j] - m) * inv_tau;
  exp_row(p, N);
  const acc_t sum = row_sum(p, N);
  for (int64_t j = 0; j < N; ++j) p[j] /= sum;  // a division keeps every p <= 1 (see log_keep)
}

// alpha += log(max(1 - p, tiny)): Xie & Ermon's soft removal of what step p took.
template <typename acc_t>
static void soft_remove(acc_t* alpha, const acc_t* p, int64_t N) {
  constexpr acc_t kTiny = std::numeric_limits<acc_t>::min();
  for (int64_t j = 0; j < N; ++j) alpha[j] += log_keep(p[j], kTiny);
}

template <typename T>
static bool gumbel_bwd_rows(const GumbelArgs& a, int64_t begin, int64_t end) {
  using acc_t = acc_of<T>;
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  constexpr acc_t kTiny = std::numeric_limits<acc_t>::min();
  GumbelScratch<acc_t> s;
  const int64_t N = a.N;
  const acc_t inv_tau = acc_t(1) / acc_t(a.tau);
  s.logits.resize(size_t(N));
  s.z.resize(size_t(N));
  s.grad.resize(size_t(N));
  s.acc.resize(size_t(N));
  acc_t* lz = s.logits.data();
  acc_t* z = s.z.data();
  acc_t* g = s.grad.data();
  acc_t* acc = s.acc.data();
  bool ok = true;
  for (int64_t b = begin; b < end; ++b) {
    T* out = static_cast<T*>(a.out) + b * N;
    const bool row_ok = load_logits<T>(a, b, lz);
    ok = ok && row_ok;
    const int64_t k = a.k[b];
    std::memset(static_cast<void*>(acc), 0, sizeof(acc_t) * size_t(N));
    acc_t scale = inv_tau;  // the sequential sum carries 1/tau outside; the single-mode one inside
    if (row_ok && a.training && k > 0) {
      const T* grow = static_cast<const T*>(a.grad) + b * a.grad_rs;
      for (int64_t j = 0; j < N; ++j) g[j] = to_acc(grow[j * a.grad_cs]);
      if (a.mode == GumbelMode::kSequential) {
        // Replays the forward's steps with the same noise; step t adds
        // (1/tau) p_t * (G - <p_t, G>), p_t the softmax over the entries not yet picked. A chunk's terms
        // are computed in parallel over groups of kSumSteps steps, each group summing its terms in step
        // order into its first step's scores, then the groups are added in order: the same sums
        // whatever the thread count.
        constexpr int64_t kSumSteps = 8;
        sequential_steps(a, b, k, lz, s, [&](int64_t c) {
          acc_t* chunk = s.chunk.data();
          const int64_t groups = (c + kSumSteps - 1) / kSumSteps;
          for_steps(a, groups, [&](int64_t group_begin, int64_t group_end) {
            for (int64_t grp = group_begin; grp < group_end; ++grp) {
              const int64_t i0 = grp * kSumSteps, i1 = std::min(c, i0 + kSumSteps);
              acc_t* sum = chunk + i0 * N;
              for (int64_t i = i0; i < i1; ++i) {
                acc_t* p = chunk + i * N;
                mask_chunk_picks(p, s.picks.data(), i);
                const acc_t m = s.maxima[size_t(i)];
                if (m == kNegInf) {  // nothing finite left: the step adds nothing
                  if (i == i0) std::memset(static_cast<void*>(sum), 0, sizeof(acc_t) * size_t(N));
                  continue;
                }
                for (int64_t j = 0; j < N; ++j) p[j] = (p[j] - m) * inv_tau;
                exp_row(p, N);  // 0 where picked (-inf)
                const acc_t inv = acc_t(1) / row_sum(p, N), centre = row_dot(p, g, N) * inv;
                if (i == i0) {
                  for (int64_t j = 0; j < N; ++j) sum[j] = p[j] * inv * (g[j] - centre);
                } else {
                  for (int64_t j = 0; j < N; ++j) sum[j] += p[j] * inv * (g[j] - centre);
                }
              }
            }
          });
          for (int64_t grp = 0; grp < groups; ++grp)
            for (int64_t j = 0; j < N; ++j) acc[j] += chunk[grp * kSumSteps * N + j];
        });
      } else {
        // Relaxed top-k (Xie & Ermon 2019) of x = logits + noise: alpha_0 = x, and for j < k
        // p_j = softmax(alpha_j / tau), alpha_{j+1} = alpha_j + log(max(1 - p_j, tiny)); output sum_j p_j.
        // Reverse mode needs p_j backwards: alpha is checkpointed every c = ceil(sqrt(k)) steps and each
        // segment's p_j recomputed from its checkpoint (two forward sweeps, O(N sqrt(k)) memory).
        const int64_t c = ceil_sqrt(k), segments = (k + c - 1) / c;
        s.alpha.resize(size_t(N));
        s.alpha_bar.resize(size_t(N));
        s.checkpoints.resize(size_t(segments * N));
        s.probs.resize(size_t(c * N));
        acc_t* alpha = s.alpha.data();
        acc_t* alpha_bar = s.alpha_bar.data();
        fill_noise(a.seed, b, 0, N, s, alpha);
        for (int64_t j = 0; j < N; ++j) alpha[j] += lz[j];
        for (int64_t step = 0; step <= (segments - 1) * c; ++step) {
          if (step % c == 0) std::memcpy(s.checkpoints.data() + (step / c) * N, alpha, sizeof(acc_t) * size_t(N));
          if (step == (segments - 1) * c) break;
          softmax_tempered(alpha, N, inv_tau, z);
          soft_remove(alpha, z, N);
        }
        std::memset(static_cast<void*>(alpha_bar), 0, sizeof(acc_t) * size_t(N));
        for (int64_t seg = segments - 1; seg >= 0; --seg) {
          const int64_t j0 = seg * c, j1 = j0 + c < k ? j0 + c : k;
          std::memcpy(alpha, s.checkpoints.data() + seg * N, sizeof(acc_t) * size_t(N));
          for (int64_t j = j0; j < j1; ++j) {
            acc_t* p = s.probs.data() + (j - j0) * N;
            softmax_tempered(alpha, N, inv_tau, p);
            if (j + 1 < j1) soft_remove(alpha, p, N);
          }
          for (int64_t j = j1 - 1; j >= j0; --j) {
            const acc_t* p = s.probs.data() + (j - j0) * N;
            for (int64_t i = 0; i < N; ++i) {  // d L / d p_j; no gradient where the clamp is active
              const acc_t keep = acc_t(1) - p[i];
              z[i] = g[i] - zero_unless(keep > kTiny, alpha_bar[i] / keep);
            }
            const acc_t dot = row_dot(p, z, N);
            for (int64_t i = 0; i < N; ++i) alpha_bar[i] += inv_tau * p[i] * (z[i] - dot);
          }
        }
        std::memcpy(acc, alpha_bar, sizeof(acc_t) * size_t(N));
        scale = acc_t(1);
      }
    }
    for (int64_t j = 0; j < N; ++j) out[j] = from_acc<T>(acc[j] * scale);
  }
  return ok;
}

template <typename acc_t>
static void gumbel_noise_rows_typed(const GumbelArgs& a, int64_t begin, int64_t end) {
  GumbelScratch<acc_t> s;
  for (int64_t b = begin; b < end; ++b) fill_noise(a.seed, b, a.step, a.N, s, static_cast<acc_t*>(a.out) + b * a.N);
}

static void gumbel_noise(const GumbelArgs& a, int64_t begin, int64_t end) {
  if (a.dtype == DType::kFloat64) gumbel_noise_rows_typed<double>(a, begin, end);
  else gumbel_noise_rows_typed<float>(a, begin, end);
}

static bool gumbel_topk_fwd(const GumbelArgs& a, int64_t begin, int64_t end) {
  return with_storage_type(a.dtype, [&](auto tag) { return gumbel_fwd_rows<decltype(tag)>(a, begin, end); });
}

static bool gumbel_topk_bwd(const GumbelArgs& a, int64_t begin, int64_t end) {
  return with_storage_type(a.dtype, [&](auto tag) { return gumbel_bwd_rows<decltype(tag)>(a, begin, end); });
}

}  // namespace vtp_ext::cpu::VTP_ISA
