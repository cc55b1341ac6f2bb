// Storage types and float conversions for the CPU kernels. fp16 goes through the compiler's
// _Float16 (a vcvtph2ps with F16C, a libgcc call without); bf16 is the top half of a float, rounded
// to nearest even like torch. Only included by the per-ISA kernel translation units.
#pragma once
#include <cstdint>
#include <cstring>
#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace vtp_ext::cpu::VTP_ISA {

struct f16 { uint16_t bits; };
struct bf16 { uint16_t bits; };

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename T> using acc_of = typename AccOf<T>::type;

static inline float to_acc(f16 v) {
  _Float16 h;
  std::memcpy(&h, &v.bits, 2);
  return static_cast<float>(h);
}
static inline float to_acc(bf16 v) {
  const uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
static inline float to_acc(uint8_t v) { return static_cast<float>(v); }
static inline float to_acc(float v) { return v; }
static inline double to_acc(double v) { return v; }

template <typename T> static inline T from_acc(acc_of<T> v);
template <> inline float from_acc<float>(float v) { return v; }
template <> inline double from_acc<double>(double v) { return v; }
template <> inline f16 from_acc<f16>(float v) {
  const _Float16 h = static_cast<_Float16>(v);
  f16 r;
  std::memcpy(&r.bits, &h, 2);
  return r;
}
// Round half up and saturate, as OpenCV's (sum + 128) >> 8 does for its exact integer sums.
template <> inline uint8_t from_acc<uint8_t>(float v) {
  const float r = __builtin_floorf(v + 0.5f);
  return static_cast<uint8_t>(r <= 0.f ? 0.f : (r >= 255.f ? 255.f : r));
}
template <> inline bf16 from_acc<bf16>(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  bf16 r;
  if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it a quiet NaN
    r.bits = static_cast<uint16_t>((u >> 16) | 0x40);
  } else {
    u += 0x7fffu + ((u >> 16) & 1u);
    r.bits = static_cast<uint16_t>(u >> 16);
  }
  return r;
}

// 32-byte SIMD vectors through GCC/Clang vector extensions: AVX registers in the avx2 build, pairs of
// SSE registers in the baseline build. Vec<T>::load reads W elements of storage type T as acc type.
typedef float vf8 __attribute__((vector_size(32)));
typedef double vd4 __attribute__((vector_size(32)));
typedef uint16_t vu16x8 __attribute__((vector_size(16)));
typedef uint32_t vu32x8 __attribute__((vector_size(32)));
typedef _Float16 vh8 __attribute__((vector_size(16)));

template <typename T> struct Vec;
template <> struct Vec<float> {
  using V = vf8;
  static constexpr int W = 8;
  static V load(const float* p) { V v; std::memcpy(&v, p, sizeof(V)); return v; }
};
template <> struct Vec<double> {
  using V = vd4;
  static constexpr int W = 4;
  static V load(const double* p) { V v; std::memcpy(&v, p, sizeof(V)); return v; }
};
template <> struct Vec<bf16> {
  using V = vf8;
  static constexpr int W = 8;
  static V load(const bf16* p) {
    vu16x8 h;
    std::memcpy(&h, p, sizeof(h));
    const vu32x8 u = __builtin_convertvector(h, vu32x8) << 16;
    V v;
    std::memcpy(&v, &u, sizeof(V));
    return v;
  }
};
template <> struct Vec<f16> {
  using V = vf8;
  static constexpr int W = 8;
  static V load(const f16* p) {
#if defined(__F16C__)
    // GCC 12 scalarises __builtin_convertvector from _Float16; the F16C instruction does 8 at once.
    const __m256 f = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    V v;
    std::memcpy(&v, &f, sizeof(V));
    return v;
#else
    vh8 h;
    std::memcpy(&h, p, sizeof(h));
    return __builtin_convertvector(h, vf8);
#endif
  }
};

typedef uint8_t vu8x8 __attribute__((vector_size(8)));
template <> struct Vec<uint8_t> {
  using V = vf8;
  static constexpr int W = 8;
  static V load(const uint8_t* p) {
#if defined(__AVX2__)
    // GCC 12 scalarises the u8 -> f32 __builtin_convertvector.
    const __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
    V v;
    std::memcpy(&v, &f, sizeof(V));
    return v;
#else
    vu8x8 b;
    std::memcpy(&b, p, sizeof(b));
    return __builtin_convertvector(b, vf8);
#endif
  }
};

// Even and odd elements of the 2W values a ++ b.
static inline void deinterleave(vf8 a, vf8 b, vf8& even, vf8& odd) {
  even = __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14);
  odd = __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15);
}
static inline void deinterleave(vd4 a, vd4 b, vd4& even, vd4& odd) {
  even = __builtin_shufflevector(a, b, 0, 2, 4, 6);
  odd = __builtin_shufflevector(a, b, 1, 3, 5, 7);
}

// The inverse: lo ++ hi = even[0], odd[0], even[1], odd[1], ...
static inline void interleave(vf8 even, vf8 odd, vf8& lo, vf8& hi) {
  lo = __builtin_shufflevector(even, odd, 0, 8, 1, 9, 2, 10, 3, 11);
  hi = __builtin_shufflevector(even, odd, 4, 12, 5, 13, 6, 14, 7, 15);
}
static inline void interleave(vd4 even, vd4 odd, vd4& lo, vd4& hi) {
  lo = __builtin_shufflevector(even, odd, 0, 4, 1, 5);
  hi = __builtin_shufflevector(even, odd, 2, 6, 3, 7);
}

// Store W accumulated values as T (the vector form of from_acc).
static inline void store_acc(float* dst, vf8 v) { std::memcpy(dst, &v, sizeof(v)); }
static inline void store_acc(double* dst, vd4 v) { std::memcpy(dst, &v, sizeof(v)); }
static inline void store_acc(uint8_t* dst, vf8 v) {
  typedef int32_t vi8 __attribute__((vector_size(32)));
  v += 0.5f;  // round half up, then saturate: the vector form of from_acc<uint8_t>
  v = v < 0.f ? vf8{} : v;
  v = v > 255.f ? vf8{} + 255.f : v;
  const vi8 i = __builtin_convertvector(v, vi8);  // truncation = floor for v >= 0
#if defined(__AVX2__)
  __m256i i32;
  std::memcpy(&i32, &i, sizeof(i32));
  const __m128i i16 = _mm_packus_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), _mm_packus_epi16(i16, i16));
#else
  const vu8x8 b = __builtin_convertvector(i, vu8x8);
  std::memcpy(dst, &b, sizeof(b));
#endif
}
static inline void store_acc(f16* dst, vf8 v) {
#if defined(__F16C__)
  __m256 f;
  std::memcpy(&f, &v, sizeof(f));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT));
#else
  for (int l = 0; l < 8; ++l) dst[l] = from_acc<f16>(v[l]);
#endif
}
static inline void store_acc(bf16* dst, vf8 v) {
  for (int l = 0; l < 8; ++l) dst[l] = from_acc<bf16>(v[l]);
}

template <typename V> static inline auto hsum(V v) {
  auto r = v[0];
  for (unsigned j = 1; j < sizeof(V) / sizeof(r); ++j) r += v[j];
  return r;
}

}  // namespace vtp_ext::cpu::VTP_ISA
