// Random numbers and transcendental functions of gumbel_topk, shared by the CPU and CUDA kernels.
//
// The noise must be *bit-identical* on both backends, so nothing here calls a math library (CUDA's
// logf and glibc's differ in the last bit): Philox4x32-10 is integer-only, and log is evaluated with
// IEEE-exact operations only -- +, -, *, / and explicitly fused fma. Every multiply whose result feeds
// an addition is written as fma(), so compilers that contract a*b+c (nvcc by default, the CPU kernels'
// -ffp-contract=fast) find nothing left to contract except multiplications by powers of two, which
// are exact either way.
//
// Noise of a [B, N] problem at selection step t (sequential mode draws fresh noise per step; single
// mode uses step 0): element (row b, column j) comes from one Philox4x32-10 block with
//   key = (seed low 32 bits, seed high 32 bits),  counter = (j / W, t, b low 32 bits, b high 32 bits)
// and W = 4 columns per block for float32 noise (word j % 4: 23 random bits), W = 2 for float64 noise
// (words 2(j % 2), 2(j % 2) + 1: 52 bits). u = (2m + 1) 2^-(bits+1) lies in (0, 1) -- never 0 or 1 --
// and the Gumbel sample is -log(-log(u)).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "vtp_ext/macros.h"

namespace vtp_ext {

enum class GumbelMode : int32_t { kSequential = 0, kSingle = 1 };

struct Philox4x32 {
  uint32_t v[4];
};

// Philox4x32-10 (Salmon et al., SC'11; the Random123 constants), checked against Random123's
// known-answer vectors in python_tests/test_gumbel_topk.py.
VTP_HD_INLINE Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                       uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;  // round multipliers
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;  // key schedule (golden ratio, sqrt(3) - 1)
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kW0;
      k1 += kW1;
    }
    const uint64_t p0 = uint64_t(kM0) * c0, p1 = uint64_t(kM1) * c2;
    const uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0, n2 = uint32_t(p0 >> 32) ^ c3 ^ k1;
    c1 = uint32_t(p1);
    c3 = uint32_t(p0);
    c0 = n0;
    c2 = n2;
  }
  return Philox4x32{{c0, c1, c2, c3}};
}

VTP_HD_INLINE float bits_to_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}
VTP_HD_INLINE uint32_t float_to_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof(u));
  return u;
}
VTP_HD_INLINE double bits_to_double(uint64_t u) {
  double f;
  memcpy(&f, &u, sizeof(f));
  return f;
}
VTP_HD_INLINE uint64_t double_to_bits(double f) {
  uint64_t u;
  memcpy(&u, &f, sizeof(u));
  return u;
}

// Natural log of a positive, finite, normal x (the only arguments the noise produces), < 1 ulp.
// x = 2^k (1 + f) with 1 + f in [sqrt(2)/2, sqrt(2)); log(1 + f) = f - f^2/2 + s (f^2/2 + R(s^2)),
// s = f / (2 + f), R a minimax polynomial (the coefficients of FreeBSD's e_logf.c / e_log.c).
VTP_HD_INLINE float exact_log(float x) {
  constexpr float kLn2Hi = 6.9313812256e-01f, kLn2Lo = 9.0580006145e-06f;
  constexpr float kLg1 = 0.66666662693f, kLg2 = 0.40000972152f, kLg3 = 0.28498786688f, kLg4 = 0.24279078841f;
  uint32_t ix = float_to_bits(x);
  int32_t k = int32_t(ix >> 23) - 127;
  ix &= 0x007FFFFFu;
  const uint32_t i = (ix + 0x4AFB20u) & 0x800000u;  // mantissa >= sqrt(2): halve it
  k += int32_t(i >> 23);
  const float f = bits_to_float(ix | (i ^ 0x3F800000u)) - 1.0f;
  const float s = f / (2.0f + f);
  const float z = s * s, w = z * z;
  const float r = fmaf(z, fmaf(w, kLg3, kLg1), w * fmaf(w, kLg4, kLg2));
  const float hfsq = 0.5f * (f * f);
  const float dk = float(k);
  return fmaf(dk, kLn2Hi, -((hfsq - fmaf(s, hfsq + r, dk * kLn2Lo)) - f));
}

VTP_HD_INLINE double exact_log(double x) {
  constexpr double kLn2Hi = 6.93147180369123816490e-01, kLn2Lo = 1.90821492927058770002e-10;
  constexpr double kLg1 = 6.666666666666735130e-01, kLg2 = 3.999999999940941908e-01;
  constexpr double kLg3 = 2.857142874366239149e-01, kLg4 = 2.222219843214978396e-01;
  constexpr double kLg5 = 1.818357216161805012e-01, kLg6 = 1.531383769920937332e-01;
  constexpr double kLg7 = 1.479819860511658591e-01;
  const uint64_t bits = double_to_bits(x);
  uint32_t hx = uint32_t(bits >> 32);
  int32_t k = int32_t(hx >> 20) - 1023;
  hx &= 0x000FFFFFu;
  const uint32_t i = (hx + 0x95F64u) & 0x100000u;
  k += int32_t(i >> 20);
  const double f = bits_to_double((uint64_t(hx | (i ^ 0x3FF00000u)) << 32) | (bits & 0xFFFFFFFFull)) - 1.0;
  const double s = f / (2.0 + f);
  const double z = s * s, w = z * z;
  const double t1 = w * fma(w, fma(w, kLg6, kLg4), kLg2);
  const double r = fma(z, fma(w, fma(w, fma(w, kLg7, kLg5), kLg3), kLg1), t1);
  const double hfsq = 0.5 * (f * f);
  const double dk = double(k);
  return fma(dk, kLn2Hi, -((hfsq - fma(s, hfsq + r, dk * kLn2Lo)) - f));
}

// Gumbel(0, 1) from uniform bits, as defined at the top of this file.
VTP_HD_INLINE float gumbel_from_bits(uint32_t word) {
  const float u = float(2u * (word >> 9) + 1u) * 0x1p-24f;  // exact: 2m + 1 < 2^24
  return -exact_log(-exact_log(u));
}

VTP_HD_INLINE double gumbel_from_bits(uint32_t hi, uint32_t lo) {
  const uint64_t m = (uint64_t(hi) << 20) | (lo >> 12);
  const double u = double(2u * m + 1u) * 0x1p-53;  // exact: 2m + 1 < 2^53
  return -exact_log(-exact_log(u));
}

VTP_HD_INLINE Philox4x32 noise_block(uint64_t seed, int64_t row, int64_t step, uint32_t block) {
  const uint64_t r = uint64_t(row);
  return philox4x32_10(block, uint32_t(step), uint32_t(r), uint32_t(r >> 32), uint32_t(seed), uint32_t(seed >> 32));
}

// The noise of one element (see the top of this file); kernels that produce consecutive columns use
// noise_block directly to share one Philox block among 4 (float) or 2 (double) columns.
template <typename acc_t> struct GumbelNoise;
template <> struct GumbelNoise<float> {
  static constexpr int kPerBlock = 4;
  // Selects instead of indexing p.v with a run-time lane, which would put p in GPU local memory.
  VTP_HD_INLINE static float from_block(const Philox4x32& p, int lane) {
    return gumbel_from_bits(lane == 0 ? p.v[0] : lane == 1 ? p.v[1] : lane == 2 ? p.v[2] : p.v[3]);
  }
};
template <> struct GumbelNoise<double> {
  static constexpr int kPerBlock = 2;
  VTP_HD_INLINE static double from_block(const Philox4x32& p, int lane) {
    return lane == 0 ? gumbel_from_bits(p.v[0], p.v[1]) : gumbel_from_bits(p.v[2], p.v[3]);
  }
};

template <typename acc_t>
VTP_HD_INLINE acc_t gumbel_noise_at(uint64_t seed, int64_t row, int64_t step, int64_t col) {
  using G = GumbelNoise<acc_t>;
  return G::from_block(noise_block(seed, row, step, uint32_t(col / G::kPerBlock)), int(col % G::kPerBlock));
}

// Smallest c with c * c >= k (k >= 1): the checkpoint interval of the single-mode backward.
VTP_HD_INLINE int64_t ceil_sqrt(int64_t k) {
  int64_t c = int64_t(sqrt(double(k)));
  while (c * c < k) ++c;
  while (c > 1 && (c - 1) * (c - 1) >= k) --c;
  return c;
}

// v where keep, else +0.0, through a bit mask rather than a select (v may be inf or NaN where dropped).
VTP_HD_INLINE float zero_unless(bool keep, float v) { return bits_to_float(float_to_bits(v) & (0u - uint32_t(keep))); }
VTP_HD_INLINE double zero_unless(bool keep, double v) {
  return bits_to_double(double_to_bits(v) & (0ull - uint64_t(keep)));
}

// exp(x) for x <= 0 (softmax weights), about 1 ulp, with the same operations on both backends so the
// CPU and CUDA gradients agree closely: exp_nonpositive(x) = exp_core(exp_floor(x)), 0 below the floor.
// The pieces are separate so that CPU loops can apply them in separate passes: with the clamp and the
// polynomial in one loop, GCC specialises the clamped (constant) path and the loop no longer vectorises.
template <typename acc_t> struct ExpFloor;
template <> struct ExpFloor<float> { static constexpr float value = -87.0f; };
template <> struct ExpFloor<double> { static constexpr double value = -708.0; };
template <typename acc_t>
VTP_HD_INLINE acc_t exp_floor(acc_t x) { return x > ExpFloor<acc_t>::value ? x : ExpFloor<acc_t>::value; }

// exp(x) for x in [floor, 0]: x = n ln2 + r, |r| <= ln2/2 (n rounded by adding and removing 1.5 * 2^23),
// then Taylor in r.
VTP_HD_INLINE float exp_core(float x) {
  constexpr float kRound = 12582912.0f;
  const float n = fmaf(x, 1.44269504089f, kRound) - kRound;
  const float r = fmaf(n, -1.42860677e-6f, fmaf(n, -6.93145752e-1f, x));  // n ln2_hi is exact
  float p = fmaf(r, 1.0f / 5040.0f, 1.0f / 720.0f);
  p = fmaf(p, r, 1.0f / 120.0f);
  p = fmaf(p, r, 1.0f / 24.0f);
  p = fmaf(p, r, 1.0f / 6.0f);
  p = fmaf(p, r, 0.5f);
  p = fmaf(p, r, 1.0f);
  p = fmaf(p, r, 1.0f);
  return p * bits_to_float(uint32_t(int32_t(n) + 127) << 23);
}

VTP_HD_INLINE double exp_core(double x) {
  constexpr double kRound = 6755399441055744.0;  // 1.5 * 2^52
  const double n = fma(x, 1.4426950408889634, kRound) - kRound;
  const double r = fma(n, -1.90821492927058770002e-10, fma(n, -6.93147180369123816490e-01, x));
  double p = 1.0 / 6227020800.0;  // 1/13!, then Horner down to 1/0!
  p = fma(p, r, 1.0 / 479001600.0);
  p = fma(p, r, 1.0 / 39916800.0);
  p = fma(p, r, 1.0 / 3628800.0);
  p = fma(p, r, 1.0 / 362880.0);
  p = fma(p, r, 1.0 / 40320.0);
  p = fma(p, r, 1.0 / 5040.0);
  p = fma(p, r, 1.0 / 720.0);
  p = fma(p, r, 1.0 / 120.0);
  p = fma(p, r, 1.0 / 24.0);
  p = fma(p, r, 1.0 / 6.0);
  p = fma(p, r, 0.5);
  p = fma(p, r, 1.0);
  p = fma(p, r, 1.0);
  return p * bits_to_double(uint64_t(int64_t(n) + 1023) << 52);
}

template <typename acc_t>
VTP_HD_INLINE acc_t exp_nonpositive(acc_t x) {
  const acc_t clamped = exp_floor(x);
  return zero_unless(clamped > ExpFloor<acc_t>::value, exp_core(clamped));
}

// log(max(1 - p, tiny)) for a probability p <= 1 (computed as e / sum with e <= sum, so 1 - p >= 0):
// 1 - p is 0 or at least 2^-24 (2^-53), where adding tiny is exact, so no select is needed.
template <typename acc_t>
VTP_HD_INLINE acc_t log_keep(acc_t p, acc_t tiny) {
  return exact_log((acc_t(1) - p) + tiny);
}

}  // namespace vtp_ext
