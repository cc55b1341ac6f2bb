// CPU kernel applying a separable operator to images (blur_downsample forward and backward). Per
// (plane, output row): a vertical pass combines the operator's input rows into one buffered row in a
// single sweep (vectorised along the row, accumulators in registers), then a horizontal pass produces
// the output pixels from that buffer: a vectorised stride-2 stencil over the buffer's even/odd halves
// where the operator is uniform, a gather at the borders and for irregular operators. The
// full-resolution blurred image is never written to memory. Compiled per ISA from kernels_isa.cpp.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "cpu/isa.h"
#include "cpu/scalar.h"

namespace vtp_ext::cpu::VTP_ISA {

// dst[k] = sum_t w[t] * rows[t][k] for k < n. kTaps > 0 fixes the tap count at compile time (the
// common 5- and 6-tap pyramids), so the tap loop unrolls and all accumulators stay in registers.
// pf[0], pf[1]: rows the next output row reads first, fetched while this one computes -- each image
// row is its own 4 KB page at 1024 floats, where the hardware prefetcher restarts cold.
template <int kTaps, typename T, typename acc_t = acc_of<T>>
static inline void combine_rows(acc_t* __restrict__ dst, const T* const* rows, const acc_t* w, int32_t taps,
                                int64_t n, const T* const* pf) {
  using V = typename Vec<T>::V;
  constexpr int W = Vec<T>::W;
  const int32_t nt = kTaps > 0 ? kTaps : taps;
  int64_t k = 0;
  for (; k + 2 * W <= n; k += 2 * W) {
    __builtin_prefetch(pf[0] + k);
    __builtin_prefetch(pf[1] + k);
    V s0 = Vec<T>::load(rows[0] + k) * w[0], s1 = Vec<T>::load(rows[0] + k + W) * w[0];
#pragma GCC unroll 8
    for (int32_t t = 1; t < nt; ++t) {
      s0 += Vec<T>::load(rows[t] + k) * w[t];
      s1 += Vec<T>::load(rows[t] + k + W) * w[t];
    }
    __builtin_memcpy(dst + k, &s0, sizeof(V));
    __builtin_memcpy(dst + k + W, &s1, sizeof(V));
  }
  for (; k < n; ++k) {
    acc_t s = to_acc(rows[0][k]) * w[0];
    for (int32_t t = 1; t < nt; ++t) s += to_acc(rows[t][k]) * w[t];
    dst[k] = s;
  }
}

template <typename T, typename acc_t = acc_of<T>>
static inline void combine_rows_any(acc_t* dst, const T* const* rows, const acc_t* w, int32_t taps, int64_t n,
                                    const T* const* pf) {
  switch (taps) {  // the forward's 5 and 6 taps, the backward's 2 and 3
    case 2: combine_rows<2, T>(dst, rows, w, taps, n, pf); break;
    case 3: combine_rows<3, T>(dst, rows, w, taps, n, pf); break;
    case 5: combine_rows<5, T>(dst, rows, w, taps, n, pf); break;
    case 6: combine_rows<6, T>(dst, rows, w, taps, n, pf); break;
    default: combine_rows<0, T>(dst, rows, w, taps, n, pf); break;
  }
}

// The two rows after the last one output row i reads (what row i + 1 adds), or row 0 of the plane
// (harmless to fetch) past the plane's end.
template <typename T>
static inline void next_rows(const SeparableApplyArgs& a, const T* plane, int64_t i, int32_t ny, const T** pf) {
  const int64_t last = ny > 0 ? a.y_index[i * a.y_taps + ny - 1] : 0;
  for (int r = 0; r < 2; ++r) pf[r] = plane + (last + 1 + r < a.in_rows ? (last + 1 + r) * a.in_row_stride : 0);
}

// dst[j] = sum_e s[e] * src[e][j] for j in [jb, je) in vectors of W (src[e] = the even or odd half of
// the buffered row, pre-offset for tap e). Returns the first j not done.
template <int kTaps, typename T, typename acc_t = acc_of<T>>
static inline int64_t stencil_row(T* dst, const acc_t* const* src, const acc_t* s, int64_t taps, int64_t jb,
                                  int64_t je) {
  using V = typename Vec<acc_t>::V;
  constexpr int W = Vec<acc_t>::W;
  const int64_t nt = kTaps > 0 ? kTaps : taps;
  int64_t j = jb;
  for (; j + W <= je; j += W) {
    V acc{};
#pragma GCC unroll 8
    for (int64_t e = 0; e < nt; ++e) {
      V v;
      __builtin_memcpy(&v, src[e] + j, sizeof(V));
      acc += v * s[e];
    }
    store_acc(dst + j, acc);
  }
  return j;
}

// Interior outputs [jb, je) of one planar row: the vector stencil, then the scalar tail.
template <typename T, typename acc_t = acc_of<T>>
static inline void stencil_interior(T* dst, const acc_t* const* src, const acc_t* s, int64_t taps, const acc_t* row,
                                    int64_t offset, int64_t jb, int64_t je);

// even[m] = buf[2m], odd[m] = buf[2m + 1].
template <typename acc_t>
static inline void split_even_odd(const acc_t* __restrict__ buf, int64_t n, acc_t* __restrict__ even,
                                  acc_t* __restrict__ odd) {
  using V = typename Vec<acc_t>::V;
  constexpr int W = Vec<acc_t>::W;
  int64_t m = 0;
  for (; 2 * m + 2 * W <= n; m += W) {
    V a, b, e, o;
    __builtin_memcpy(&a, buf + 2 * m, sizeof(V));
    __builtin_memcpy(&b, buf + 2 * m + W, sizeof(V));
    deinterleave(a, b, e, o);
    __builtin_memcpy(even + m, &e, sizeof(V));
    __builtin_memcpy(odd + m, &o, sizeof(V));
  }
  for (; 2 * m < n; ++m) {
    even[m] = buf[2 * m];
    if (2 * m + 1 < n) odd[m] = buf[2 * m + 1];
  }
}

template <typename T, typename acc_t>
static inline void stencil_interior(T* dst, const acc_t* const* src, const acc_t* s, int64_t taps, const acc_t* row,
                                    int64_t offset, int64_t jb, int64_t je) {
  int64_t j;
  switch (taps) {
    case 5: j = stencil_row<5, T>(dst, src, s, 5, jb, je); break;
    case 6: j = stencil_row<6, T>(dst, src, s, 6, jb, je); break;
    default: j = stencil_row<0, T>(dst, src, s, taps, jb, je); break;
  }
  for (; j < je; ++j) {
    acc_t v = 0;
    for (int64_t e = 0; e < taps; ++e) v += s[e] * row[2 * j + offset + e];
    dst[j] = from_acc<T>(v);
  }
}

// h[k] = sum_e s[e] * buf[k + first + e*C] for k in [kb, ke): the horizontal stencil at every pixel
// of an interleaved span.
template <int kTaps, typename acc_t>
static inline void stencil_full(acc_t* __restrict__ h, const acc_t* __restrict__ buf, const acc_t* s, int64_t taps,
                                int64_t first, int64_t C, int64_t kb, int64_t ke) {
  using V = typename Vec<acc_t>::V;
  constexpr int W = Vec<acc_t>::W;
  const int64_t nt = kTaps > 0 ? kTaps : taps;
  const acc_t* src = buf + first;
  int64_t k = kb;
  for (; k + W <= ke; k += W) {
    V acc = Vec<acc_t>::load(src + k) * s[0];
#pragma GCC unroll 8
    for (int64_t e = 1; e < nt; ++e) acc += Vec<acc_t>::load(src + k + e * C) * s[e];
    std::memcpy(h + k, &acc, sizeof(V));
  }
  for (; k < ke; ++k) {
    acc_t acc = 0;
    for (int64_t e = 0; e < nt; ++e) acc += s[e] * src[k + e * C];
    h[k] = acc;
  }
}

// The two output phases of an upsampling row for j in [jb, je) (both even), interleaved on store.
template <typename T, typename acc_t>
static inline void polyphase_row(T* dst, const acc_t* buf, const SeparableApplyArgs& a, int64_t jb, int64_t je) {
  using V = typename Vec<acc_t>::V;
  constexpr int W = Vec<acc_t>::W;
  const acc_t* s0 = static_cast<const acc_t*>(a.x_poly[0]);
  const acc_t* s1 = static_cast<const acc_t*>(a.x_poly[1]);
  const int64_t n0 = a.x_poly_len[0], n1 = a.x_poly_len[1];
  const acc_t* b0 = buf + a.x_poly_offset[0];
  const acc_t* b1 = buf + a.x_poly_offset[1];
  int64_t m = jb / 2;
  const int64_t me = je / 2;
  for (; m + W <= me; m += W) {
    V e = Vec<acc_t>::load(b0 + m) * s0[0], o = Vec<acc_t>::load(b1 + m) * s1[0];
    for (int64_t t = 1; t < n0; ++t) e += Vec<acc_t>::load(b0 + m + t) * s0[t];
    for (int64_t t = 1; t < n1; ++t) o += Vec<acc_t>::load(b1 + m + t) * s1[t];
    V lo, hi;
    interleave(e, o, lo, hi);
    store_acc(dst + 2 * m, lo);
    store_acc(dst + 2 * m + W, hi);
  }
  for (; m < me; ++m) {
    acc_t e = b0[m] * s0[0], o = b1[m] * s1[0];
    for (int64_t t = 1; t < n0; ++t) e += b0[m + t] * s0[t];
    for (int64_t t = 1; t < n1; ++t) o += b1[m + t] * s1[t];
    dst[2 * m] = from_acc<T>(e);
    dst[2 * m + 1] = from_acc<T>(o);
  }
}

template <typename T>
static void separable_apply_rows(const SeparableApplyArgs& a, int64_t begin, int64_t end) {
  using acc_t = acc_of<T>;
  constexpr int W = Vec<acc_t>::W;
  const T* in = static_cast<const T*>(a.in);
  T* out = static_cast<T*>(a.out);
  const acc_t* wy = static_cast<const acc_t*>(a.y_weight);
  const acc_t* wx = static_cast<const acc_t*>(a.x_weight);
  const acc_t* stencil = static_cast<const acc_t*>(a.x_stencil);
  const int64_t C = a.channels, row_len = a.in_cols * C;
  const int64_t half = (a.in_cols + 1) / 2 + W > C ? (a.in_cols + 1) / 2 + W : C;  // also holds one pixel
  // The interior stencil for planar rows and pixels of a few channels (RGB); the gather of wide
  // pixels (C >= 8) vectorises over the channels instead.
  constexpr int64_t kMaxStencilChannels = 8;
  // (Interleaved rows filter the whole span of pixels [2 begin, 2 end - 1), which must lie in the row.)
  const bool use_stencil = C < kMaxStencilChannels && a.x_interior_end > a.x_interior_begin &&
                           (C == 1 || 2 * a.x_interior_end - 1 <= a.in_cols);
  const bool use_poly = C == 1 && !use_stencil && a.x_poly_end > a.x_poly_begin;
  // Scratch: the buffered row, its even/odd halves (planar) or its filtered span (interleaved).
  acc_t* buf = new acc_t[2 * row_len + 2 * half];
  acc_t* even = buf + row_len;
  acc_t* odd = even + half;
  acc_t* hbuf = odd + half;
  const T** rows = new const T*[a.y_taps > 0 ? a.y_taps : 1];
  const acc_t** src = new const acc_t*[a.x_stencil_len > 0 ? a.x_stencil_len : 1];
  for (int64_t item = begin; item < end; ++item) {
    const int64_t p = item / a.out_rows, i = item % a.out_rows;
    const T* plane = in + a.in_planes.offset(p);
    T* dst = out + a.out_planes.offset(p) + i * a.out_row_stride;
    const int32_t ny = a.y_count[i];
    for (int32_t t = 0; t < ny; ++t) rows[t] = plane + a.y_index[i * a.y_taps + t] * a.in_row_stride;
    if (ny > 0) {
      const T* pf[2];
      next_rows(a, plane, i, ny, pf);
      combine_rows_any<T>(buf, rows, wy + i * a.y_taps, ny, row_len, pf);
    } else {
      for (int64_t k = 0; k < row_len; ++k) buf[k] = acc_t(0);
    }
    // Horizontal: gather everywhere except the uniform interior.
    const int64_t jb = use_stencil ? a.x_interior_begin : (use_poly ? a.x_poly_begin : a.out_cols);
    const int64_t je = use_stencil ? a.x_interior_end : (use_poly ? a.x_poly_end : a.out_cols);
    for (int64_t j = 0; j < a.out_cols; ++j) {
      if (j == jb) j = je;
      if (j >= a.out_cols) break;
      const int32_t nx = a.x_count[j];
      const int32_t* ix = a.x_index + j * a.x_taps;
      const acc_t* w = wx + j * a.x_taps;
      if (C == 1) {
        acc_t s = 0;
        for (int32_t e = 0; e < nx; ++e) s += w[e] * buf[ix[e]];
        dst[j] = from_acc<T>(s);
      } else {  // channels_last: accumulate whole pixels, vectorised over the channels
        acc_t* acc = even;  // the even/odd scratch is free outside the planar stencil path
        for (int64_t c = 0; c < C; ++c) acc[c] = acc_t(0);
        for (int32_t e = 0; e < nx; ++e) {
          const acc_t* px = buf + ix[e] * C;
          const acc_t we = w[e];
          for (int64_t c = 0; c < C; ++c) acc[c] += we * px[c];
        }
        for (int64_t c = 0; c < C; ++c) dst[j * C + c] = from_acc<T>(acc[c]);
      }
    }
    if (use_poly) {
      polyphase_row<T>(dst, buf, a, jb, je);
    } else if (use_stencil && C == 1) {
      // out[j] = sum_e s_e * row[2j + q_e]: even q reads even[j + q/2], odd q reads odd[j + (q - 1)/2];
      // every read of an interior output is in range by construction.
      split_even_odd(buf, a.in_cols, even, odd);
      for (int64_t e = 0; e < a.x_stencil_len; ++e) {
        const int64_t q = a.x_stencil_offset + e;
        src[e] = (q & 1) ? odd + (q - 1) / 2 : even + q / 2;
      }
      stencil_interior<T>(dst, src, stencil, a.x_stencil_len, buf, a.x_stencil_offset, jb, je);
    } else if (use_stencil) {
      // Interleaved channels: filter every pixel of the span with taps C apart (contiguous over the
      // channels, no per-channel copy), then keep the even pixels.
      const int64_t kb = 2 * jb * C, ke = (2 * je - 1) * C;
      if (a.x_stencil_len == 5) {
        stencil_full<5>(hbuf, buf, stencil, 5, a.x_stencil_offset * C, C, kb, ke);
      } else {
        stencil_full<0>(hbuf, buf, stencil, a.x_stencil_len, a.x_stencil_offset * C, C, kb, ke);
      }
      for (int64_t j = jb; j < je; ++j)
        for (int64_t c = 0; c < C; ++c) dst[j * C + c] = from_acc<T>(hbuf[2 * j * C + c]);
    }
  }
  delete[] src;
  delete[] rows;
  delete[] buf;
}

// ---- uint8 in exact 16-bit integer arithmetic (OpenCV's binomial: weights in 1/16ths per axis) ----
// Channels stay interleaved: the vertical pass is one contiguous sweep over W*C bytes, the horizontal
// stencil reads its taps C elements apart, so neither needs a per-channel copy.

typedef uint16_t vu16x16 __attribute__((vector_size(32)));
typedef uint8_t vu8x16 __attribute__((vector_size(16)));
typedef uint8_t vu8x32 __attribute__((vector_size(32)));
typedef uint32_t vu32x8q __attribute__((vector_size(32)));
typedef uint16_t vu16x8q __attribute__((vector_size(16)));
typedef uint32_t vu32x4q __attribute__((vector_size(16)));

// 16 bytes widened to 16-bit lanes. GCC 12 scalarises __builtin_convertvector between these types.
static inline vu16x16 load_u8_u16(const uint8_t* p) {
  vu16x16 v;
#if defined(__AVX2__)
  const __m256i w = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  std::memcpy(&v, &w, sizeof(v));
#elif defined(__SSE2__)
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), z = _mm_setzero_si128();
  const __m128i lo = _mm_unpacklo_epi8(b, z), hi = _mm_unpackhi_epi8(b, z);
  std::memcpy(&v, &lo, 16);
  std::memcpy(reinterpret_cast<char*>(&v) + 16, &hi, 16);
#else
  vu8x16 b;
  std::memcpy(&b, p, sizeof(b));
  v = __builtin_convertvector(b, vu16x16);
#endif
  return v;
}

static inline vu16x16 load_u16(const uint16_t* p) {
  vu16x16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// 16 lanes, each <= 255, narrowed to bytes.
static inline void store_u16_u8(uint8_t* p, vu16x16 v) {
#if defined(__AVX2__)
  __m256i w;
  std::memcpy(&w, &v, sizeof(w));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1)));
#elif defined(__SSE2__)
  __m128i lo, hi;
  std::memcpy(&lo, &v, 16);
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + 16, 16);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm_packus_epi16(lo, hi));
#else
  const vu8x16 b = __builtin_convertvector(v, vu8x16);
  std::memcpy(p, &b, sizeof(b));
#endif
}

// dst[k] = sum_t w[t] * rows[t][k] for k < n; w in 1/16ths summing to <= 16, so every sum fits 16 bits.
template <int kTaps>
static inline void combine_rows_q4(uint16_t* __restrict__ dst, const uint8_t* const* rows, const uint16_t* w,
                                   int32_t taps, int64_t n, const uint8_t* const* pf) {
  const int32_t nt = kTaps > 0 ? kTaps : taps;
  int64_t k = 0;
  for (; k + 32 <= n; k += 32) {
    if ((k & 63) == 0) {  // one cache line per two steps (see combine_rows)
      __builtin_prefetch(pf[0] + k);
      __builtin_prefetch(pf[1] + k);
    }
    vu16x16 s0 = load_u8_u16(rows[0] + k) * w[0], s1 = load_u8_u16(rows[0] + k + 16) * w[0];
#pragma GCC unroll 8
    for (int32_t t = 1; t < nt; ++t) {
      s0 += load_u8_u16(rows[t] + k) * w[t];
      s1 += load_u8_u16(rows[t] + k + 16) * w[t];
    }
    std::memcpy(dst + k, &s0, sizeof(s0));
    std::memcpy(dst + k + 16, &s1, sizeof(s1));
  }
  for (; k < n; ++k) {
    uint32_t s = 0;
    for (int32_t t = 0; t < nt; ++t) s += uint32_t{w[t]} * rows[t][k];
    dst[k] = static_cast<uint16_t>(s);
  }
}

// hrow[k] = (sum_e s[e] * vbuf[k + first + e*C] + 128) >> 8 for k in [kb, ke): the horizontal stencil
// at every pixel of the span (even and odd), contiguous over the interleaved channels.
template <int kTaps>
static inline void stencil_full_q4(uint8_t* __restrict__ hrow, const uint16_t* __restrict__ vbuf, const uint16_t* s,
                                   int64_t taps, int64_t first, int64_t C, int64_t kb, int64_t ke) {
  const int64_t nt = kTaps > 0 ? kTaps : taps;
  const uint16_t* src = vbuf + first;
  int64_t k = kb;
  for (; k + 16 <= ke; k += 16) {
    vu16x16 acc = load_u16(src + k) * s[0];
#pragma GCC unroll 8
    for (int64_t e = 1; e < nt; ++e) acc += load_u16(src + k + e * C) * s[e];
    store_u16_u8(hrow + k, (acc + 128) >> 8);
  }
  for (; k < ke; ++k) {
    uint32_t acc = 0;
    for (int64_t e = 0; e < nt; ++e) acc += uint32_t{s[e]} * src[k + e * C];
    hrow[k] = static_cast<uint8_t>((acc + 128) >> 8);
  }
}

// dst pixel j = hrow pixel 2j for j in [jb, je), pixels of C bytes. hrow holds the pixels
// [2 jb, 2 je - 1) and is readable (but unset) one pixel past them.
static inline void decimate_pixels(uint8_t* __restrict__ dst, const uint8_t* __restrict__ hrow, int64_t C, int64_t jb,
                                   int64_t je) {
  int64_t j = jb;
  if (C == 1) {
    for (; j + 16 <= je; j += 16) {
      vu8x32 v;
      std::memcpy(&v, hrow + 2 * j, sizeof(v));
      const vu8x16 e = __builtin_shufflevector(v, v, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
      std::memcpy(dst + j, &e, sizeof(e));
    }
  } else if (C == 2) {
    for (; j + 8 <= je; j += 8) {
      vu16x16 v;
      std::memcpy(&v, hrow + 4 * j, sizeof(v));
      const vu16x8q e = __builtin_shufflevector(v, v, 0, 2, 4, 6, 8, 10, 12, 14);
      std::memcpy(dst + 2 * j, &e, sizeof(e));
    }
  } else if (C == 4) {
    for (; j + 4 <= je; j += 4) {
      vu32x8q v;
      std::memcpy(&v, hrow + 8 * j, sizeof(v));
      const vu32x4q e = __builtin_shufflevector(v, v, 0, 2, 4, 6);
      std::memcpy(dst + 4 * j, &e, sizeof(e));
    }
  } else if (C == 3) {  // 4-byte moves; each overwrites the next pixel's first byte before it is written
    for (; j + 1 < je; ++j) {
      uint32_t v;
      std::memcpy(&v, hrow + 6 * j, 4);
      std::memcpy(dst + 3 * j, &v, 4);
    }
  }
  for (; j < je; ++j) std::memcpy(dst + j * C, hrow + 2 * j * C, C);
}

static void separable_apply_rows_q4(const SeparableApplyArgs& a, int64_t begin, int64_t end) {
  const uint8_t* in = static_cast<const uint8_t*>(a.in);
  uint8_t* out = static_cast<uint8_t*>(a.out);
  const int64_t C = a.channels, row_len = a.in_cols * C;
  const bool use_stencil = a.x_interior_end > a.x_interior_begin && 2 * a.x_interior_end - 1 <= a.in_cols;
  const int64_t jb = use_stencil ? a.x_interior_begin : a.out_cols, je = use_stencil ? a.x_interior_end : a.out_cols;
  // Scratch: the vertical sums of one output row, and its horizontally filtered interior.
  uint16_t* vbuf = new uint16_t[row_len];
  uint8_t* hrow = new uint8_t[row_len + 32]();
  const uint8_t** rows = new const uint8_t*[a.y_taps > 0 ? a.y_taps : 1];
  for (int64_t item = begin; item < end; ++item) {
    const int64_t p = item / a.out_rows, i = item % a.out_rows;
    const uint8_t* plane = in + a.in_planes.offset(p);
    uint8_t* dst = out + a.out_planes.offset(p) + i * a.out_row_stride;
    const int32_t ny = a.y_count[i];
    const uint16_t* wy = a.y_weight_q4 + i * a.y_taps;
    for (int32_t t = 0; t < ny; ++t) rows[t] = plane + a.y_index[i * a.y_taps + t] * a.in_row_stride;
    const uint8_t* pf[2];
    next_rows(a, plane, i, ny, pf);
    switch (ny) {
      case 0: std::memset(vbuf, 0, row_len * sizeof(uint16_t)); break;
      case 5: combine_rows_q4<5>(vbuf, rows, wy, ny, row_len, pf); break;
      default: combine_rows_q4<0>(vbuf, rows, wy, ny, row_len, pf); break;
    }
    if (use_stencil) {
      // Only the even pixels are kept, but filtering every pixel of the span keeps the loop
      // contiguous for any C; the span's reads stay inside the interior outputs' footprint.
      const int64_t kb = 2 * jb * C, ke = (2 * je - 1) * C, first = a.x_stencil_offset * C;
      if (a.x_stencil_len == 5) {
        stencil_full_q4<5>(hrow, vbuf, a.x_stencil_q4, 5, first, C, kb, ke);
      } else {
        stencil_full_q4<0>(hrow, vbuf, a.x_stencil_q4, a.x_stencil_len, first, C, kb, ke);
      }
      decimate_pixels(dst, hrow, C, jb, je);
    }
    for (int64_t j = 0; j < a.out_cols; ++j) {  // borders (and everything without a uniform interior)
      if (j == jb) j = je;
      if (j >= a.out_cols) break;
      const int32_t nx = a.x_count[j];
      const int32_t* ix = a.x_index + j * a.x_taps;
      const uint16_t* w = a.x_weight_q4 + j * a.x_taps;
      for (int64_t c = 0; c < C; ++c) {
        uint32_t acc = 0;
        for (int32_t e = 0; e < nx; ++e) acc += uint32_t{w[e]} * vbuf[ix[e] * C + c];
        dst[j * C + c] = static_cast<uint8_t>((acc + 128) >> 8);
      }
    }
  }
  delete[] rows;
  delete[] hrow;
  delete[] vbuf;
}

template <typename T> struct SeparableApply {
  static void run(const SeparableApplyArgs& a, int64_t b, int64_t e) {
    if constexpr (std::is_same_v<T, uint8_t>) {
      if (a.y_weight_q4 != nullptr) return separable_apply_rows_q4(a, b, e);
    }
    separable_apply_rows<T>(a, b, e);
  }
};

static void separable_apply(const SeparableApplyArgs& a, int64_t begin, int64_t end) {
  switch (a.dtype) {
    case DType::kFloat32: SeparableApply<float>::run(a, begin, end); break;
    case DType::kFloat64: SeparableApply<double>::run(a, begin, end); break;
    case DType::kFloat16: SeparableApply<f16>::run(a, begin, end); break;
    case DType::kBFloat16: SeparableApply<bf16>::run(a, begin, end); break;
    case DType::kUInt8: SeparableApply<uint8_t>::run(a, begin, end); break;
  }
}

}  // namespace vtp_ext::cpu::VTP_ISA
