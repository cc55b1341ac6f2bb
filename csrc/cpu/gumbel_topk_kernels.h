// CPU kernels of gumbel_topk (forward, backward) and gumbel_noise: one row per task, compiled per ISA
// from kernels_isa.cpp; rows are split over threads by the caller (csrc/cpu/gumbel_topk_op.cpp).
//
// The noise comes from vtp_ext/gumbel_math.h, bit-identical to the CUDA kernels. Every per-step pass is
// a dense loop over the row (picked entries are -inf in a masked copy of the logits rather than being
// skipped), so the compiler can vectorise the Philox blocks, the log/exp evaluations and the reductions.
// Scratch is O(N) per thread, plus O(N sqrt(k)) for the single-mode backward's checkpoints.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

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
  std::vector<acc_t> logits, z, grad, acc, alpha, alpha_bar, checkpoints, probs;
  std::vector<uint8_t> picked;
  TopkScratch<rank_key_t<acc_t>> topk;
  std::vector<rank_key_t<acc_t>> keys;
};

// noise[j] = the Gumbel noise of (row, step, j), j in [0, N).
template <typename acc_t>
static void fill_noise(uint64_t seed, int64_t row, int64_t step, int64_t N, GumbelScratch<acc_t>& s, acc_t* noise) {
  using G = GumbelNoise<acc_t>;
  const int64_t blocks = (N + G::kPerBlock - 1) / G::kPerBlock;
  s.words.resize(size_t(blocks) * 4);
  uint32_t* words = s.words.data();
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const Philox4x32 p = noise_block(seed, row, step, uint32_t(blk));
    for (int w = 0; w < 4; ++w) words[4 * blk + w] = p.v[w];
  }
  if constexpr (sizeof(acc_t) == 4) {
    for (int64_t j = 0; j < N; ++j) noise[j] = gumbel_from_bits(words[j]);
  } else {
    for (int64_t j = 0; j < N; ++j) noise[j] = gumbel_from_bits(words[2 * j], words[2 * j + 1]);
  }
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
  acc_t lane[kLanes];
  for (int l = 0; l < kLanes; ++l) lane[l] = -std::numeric_limits<acc_t>::infinity();
  int64_t j = 0;
  for (; j + kLanes <= N; j += kLanes)
    for (int l = 0; l < kLanes; ++l) lane[l] = std::max(lane[l], v[j + l]);
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  for (; j < N; ++j) m = std::max(m, v[j]);
  for (int l = 0; l < kLanes; ++l) m = std::max(m, lane[l]);
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

// Sequential argmax of z over the unpicked entries (picked ones are -inf in z); ties and an all -inf
// remainder go to the lowest unpicked index.
template <typename acc_t>
static int64_t pick_step(const acc_t* z, const uint8_t* picked, int64_t N, acc_t* max_out) {
  const acc_t m = row_max(z, N);
  *max_out = m;
  int64_t j = 0;
  if (m == -std::numeric_limits<acc_t>::infinity()) {
    while (picked[j]) ++j;
  } else {
    while (z[j] != m) ++j;
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

template <typename T>
static bool gumbel_fwd_rows(const GumbelArgs& a, int64_t begin, int64_t end) {
  using acc_t = acc_of<T>;
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  GumbelScratch<acc_t> s;
  const int64_t N = a.N;
  s.logits.resize(size_t(N));
  s.z.resize(size_t(N));
  s.picked.resize(size_t(N));
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
    const T zero = from_acc<T>(acc_t(0));
    for (int64_t j = 0; j < N; ++j) mask[j] = zero;
    std::memset(s.picked.data(), 0, size_t(N));
    for (int64_t t = 0; t < k; ++t) {
      fill_noise(a.seed, b, t, N, s, z);
      for (int64_t j = 0; j < N; ++j) z[j] += lz[j];  // lz is -inf where picked
      acc_t m;
      const int64_t pick = pick_step(z, s.picked.data(), N, &m);
      s.picked[pick] = 1;
      lz[pick] = kNegInf;
      mask[pick] = from_acc<T>(acc_t(1));
    }
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
  s.picked.resize(size_t(N));
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
        // (1/tau) p_t * (G - <p_t, G>), p_t the softmax over the entries not yet picked.
        std::memset(s.picked.data(), 0, size_t(N));
        for (int64_t t = 0; t < k; ++t) {
          fill_noise(a.seed, b, t, N, s, z);
          for (int64_t j = 0; j < N; ++j) z[j] += lz[j];
          acc_t m;
          const int64_t pick = pick_step(z, s.picked.data(), N, &m);
          if (m != kNegInf) {
            for (int64_t j = 0; j < N; ++j) z[j] = (z[j] - m) * inv_tau;
            exp_row(z, N);  // 0 where picked (z = -inf)
            const acc_t inv = acc_t(1) / row_sum(z, N), centre = row_dot(z, g, N) * inv;
            for (int64_t j = 0; j < N; ++j) acc[j] += z[j] * inv * (g[j] - centre);
          }
          s.picked[pick] = 1;
          lz[pick] = kNegInf;
        }
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
