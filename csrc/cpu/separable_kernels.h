// CPU kernel applying a separable operator to images (blur_downsample forward and backward). Per
// (plane, output row): a vertical pass combines the operator's input rows into one buffered row in a
// single sweep (vectorised along the row, accumulators in registers), then a horizontal pass produces
// the output pixels from that buffer: a vectorised stride-2 stencil over the buffer's even/odd halves
// where the operator is uniform, a gather at the borders and for irregular operators. The
// full-resolution blurred image is never written to memory. Compiled per ISA from kernels_isa.cpp.
#pragma once
#include <cstdint>

#include "cpu/isa.h"
#include "cpu/scalar.h"

namespace vtp_ext::cpu::VTP_ISA {

// dst[k] = sum_t w[t] * rows[t][k] for k < n. kTaps > 0 fixes the tap count at compile time (the
// common 5- and 6-tap pyramids), so the tap loop unrolls and all accumulators stay in registers.
template <int kTaps, typename T, typename acc_t = acc_of<T>>
static inline void combine_rows(acc_t* __restrict__ dst, const T* const* rows, const acc_t* w, int32_t taps,
                                int64_t n) {
  using V = typename Vec<T>::V;
  constexpr int W = Vec<T>::W;
  const int32_t nt = kTaps > 0 ? kTaps : taps;
  int64_t k = 0;
  for (; k + 2 * W <= n; k += 2 * W) {
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
static inline void combine_rows_any(acc_t* dst, const T* const* rows, const acc_t* w, int32_t taps, int64_t n) {
  switch (taps) {
    case 5: combine_rows<5, T>(dst, rows, w, taps, n); break;
    case 6: combine_rows<6, T>(dst, rows, w, taps, n); break;
    default: combine_rows<0, T>(dst, rows, w, taps, n); break;
  }
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
  // The stencil runs on one channel at a time: directly for planar rows, through a de-interleaved
  // copy for channels_last rows of a few channels (RGB); wide pixels (C >= 8) vectorise over channels.
  constexpr int64_t kMaxStencilChannels = 8;
  const bool use_stencil = C < kMaxStencilChannels && a.x_interior_end > a.x_interior_begin;
  // Scratch: the buffered row, its even/odd halves, the row pointers of one output row.
  acc_t* buf = new acc_t[row_len + 2 * half + a.in_cols + a.out_cols + 1];
  acc_t* even = buf + row_len;
  acc_t* odd = even + half;
  acc_t* chan = odd + half;            // one channel of a channels_last row
  acc_t* chan_out = chan + a.in_cols;  // its stencil outputs
  const T** rows = new const T*[a.y_taps > 0 ? a.y_taps : 1];
  const acc_t** src = new const acc_t*[a.x_stencil_len > 0 ? a.x_stencil_len : 1];
  for (int64_t item = begin; item < end; ++item) {
    const int64_t p = item / a.out_rows, i = item % a.out_rows;
    const T* plane = in + a.in_planes.offset(p);
    T* dst = out + a.out_planes.offset(p) + i * a.out_row_stride;
    const int32_t ny = a.y_count[i];
    for (int32_t t = 0; t < ny; ++t) rows[t] = plane + a.y_index[i * a.y_taps + t] * a.in_row_stride;
    if (ny > 0) {
      combine_rows_any<T>(buf, rows, wy + i * a.y_taps, ny, row_len);
    } else {
      for (int64_t k = 0; k < row_len; ++k) buf[k] = acc_t(0);
    }
    // Horizontal: gather everywhere except the uniform interior.
    const int64_t jb = use_stencil ? a.x_interior_begin : a.out_cols, je = use_stencil ? a.x_interior_end : a.out_cols;
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
    if (use_stencil) {
      for (int64_t c = 0; c < C; ++c) {
        const acc_t* plane = buf;
        if (C > 1) {
          for (int64_t xx = 0; xx < a.in_cols; ++xx) chan[xx] = buf[xx * C + c];
          plane = chan;
        }
        // out[j] = sum_e s_e * row[2j + q_e]: even q reads even[j + q/2], odd q reads odd[j + (q - 1)/2];
        // every read of an interior output is in range by construction.
        split_even_odd(plane, a.in_cols, even, odd);
        for (int64_t e = 0; e < a.x_stencil_len; ++e) {
          const int64_t q = a.x_stencil_offset + e;
          src[e] = (q & 1) ? odd + (q - 1) / 2 : even + q / 2;
        }
        if (C == 1) {
          stencil_interior<T>(dst, src, stencil, a.x_stencil_len, plane, a.x_stencil_offset, jb, je);
        } else {
          stencil_interior<acc_t>(chan_out, src, stencil, a.x_stencil_len, plane, a.x_stencil_offset, jb, je);
          for (int64_t j = jb; j < je; ++j) dst[j * C + c] = from_acc<T>(chan_out[j]);
        }
      }
    }
  }
  delete[] src;
  delete[] rows;
  delete[] buf;
}

template <typename T> struct SeparableApply {
  static void run(const SeparableApplyArgs& a, int64_t b, int64_t e) { separable_apply_rows<T>(a, b, e); }
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
