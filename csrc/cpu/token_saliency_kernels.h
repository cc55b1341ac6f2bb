// CPU kernels of token_saliency (forward and backward), one row at a time. Compiled per ISA from
// kernels_isa.cpp; rows are split over threads by the caller (csrc/cpu/token_saliency_op.cpp).
#pragma once
#include <cstdint>

#include "cpu/isa.h"
#include "cpu/scalar.h"
#include "vtp_ext/saliency_math.h"

namespace vtp_ext::cpu::VTP_ISA {

// Shifted sums of one row (see vtp_ext/saliency_math.h). kCentred=false gives the plain sum of
// squares (shift 0, no linear term) used by l2norm. Two independent vector accumulators per sum hide
// the add latency; the scalar tail uses its own accumulators.
template <bool kCentred, typename T, typename acc_t = acc_of<T>>
static inline ShiftedSums<acc_t> row_sums(const T* p, int64_t D, acc_t shift) {
  using V = typename Vec<T>::V;
  constexpr int W = Vec<T>::W;
  const V sh = V{} + shift;
  V s0{}, s1{}, q0{}, q1{};
  int64_t i = 0;
  for (; i + 2 * W <= D; i += 2 * W) {
    const V a = Vec<T>::load(p + i) - sh, b = Vec<T>::load(p + i + W) - sh;
    if constexpr (kCentred) { s0 += a; s1 += b; }
    q0 += a * a;
    q1 += b * b;
  }
  for (; i + W <= D; i += W) {
    const V a = Vec<T>::load(p + i) - sh;
    if constexpr (kCentred) s0 += a;
    q0 += a * a;
  }
  acc_t st = 0, qt = 0;
  for (; i < D; ++i) {
    const acc_t v = to_acc(p[i]) - shift;
    if constexpr (kCentred) st += v;
    qt += v * v;
  }
  return {hsum(s0 + s1) + st, hsum(q0 + q1) + qt};
}

// Shifted sum of one row (the linear term only), for the variance backward's mean.
template <typename T, typename acc_t = acc_of<T>>
static inline acc_t row_shifted_sum(const T* p, int64_t D, acc_t shift) {
  using V = typename Vec<T>::V;
  constexpr int W = Vec<T>::W;
  const V sh = V{} + shift;
  V s0{}, s1{};
  int64_t i = 0;
  for (; i + 2 * W <= D; i += 2 * W) {
    s0 += Vec<T>::load(p + i) - sh;
    s1 += Vec<T>::load(p + i + W) - sh;
  }
  for (; i + W <= D; i += W) s0 += Vec<T>::load(p + i) - sh;
  acc_t st = 0;
  for (; i < D; ++i) st += to_acc(p[i]) - shift;
  return hsum(s0 + s1) + st;
}

template <typename T>
static void token_saliency_fwd_rows(const TokenSaliencyFwdArgs& a, int64_t begin, int64_t end) {
  using acc_t = acc_of<T>;
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  for (int64_t r = begin; r < end; ++r) {
    const T* p = x + a.rows.offset(r);
    acc_t result;
    if (a.method == SaliencyMethod::kVariance) {
      const acc_t shift = a.D > 0 ? to_acc(p[0]) : acc_t(0);
      const auto s = row_sums<true>(p, a.D, shift);
      result = variance_from_sums(s.sum, s.sumsq, a.D, a.correction);
    } else {
      const acc_t ss = row_sums<false>(p, a.D, acc_t(0)).sumsq;
      if constexpr (sizeof(acc_t) == 8) result = __builtin_sqrt(ss);
      else result = __builtin_sqrtf(ss);
    }
    out[r] = from_acc<T>(result);
  }
}

template <typename T>
static void token_saliency_bwd_rows(const TokenSaliencyBwdArgs& a, int64_t begin, int64_t end) {
  using acc_t = acc_of<T>;
  const T* grad = static_cast<const T*>(a.grad);
  const T* x = static_cast<const T*>(a.x);
  const T* out = static_cast<const T*>(a.out);
  T* gx = static_cast<T*>(a.grad_x);
  for (int64_t r = begin; r < end; ++r) {
    const T* p = x + a.x_rows.offset(r);
    T* q = gx + r * a.D;
    const acc_t g = to_acc(grad[a.grad_rows.offset(r)]);
    acc_t scale, centre;
    if (a.method == SaliencyMethod::kVariance) {
      const acc_t shift = a.D > 0 ? to_acc(p[0]) : acc_t(0);
      centre = shift + row_shifted_sum(p, a.D, shift) / static_cast<acc_t>(a.D);
      scale = g * variance_grad_scale<acc_t>(a.D, a.correction);
    } else {
      centre = acc_t(0);
      scale = l2norm_grad_scale<acc_t>(g, to_acc(out[a.out_rows.offset(r)]));
    }
    for (int64_t i = 0; i < a.D; ++i) q[i] = from_acc<T>((to_acc(p[i]) - centre) * scale);
  }
}

template <template <typename> class Fn, typename Args>
static void dispatch_dtype(DType dt, const Args& a, int64_t begin, int64_t end) {
  switch (dt) {
    case DType::kFloat32: Fn<float>::run(a, begin, end); break;
    case DType::kFloat64: Fn<double>::run(a, begin, end); break;
    case DType::kFloat16: Fn<f16>::run(a, begin, end); break;
    case DType::kBFloat16: Fn<bf16>::run(a, begin, end); break;
    case DType::kUInt8: break;  // rejected by the glue: saliency is for floating-point features
  }
}

template <typename T> struct SaliencyFwd {
  static void run(const TokenSaliencyFwdArgs& a, int64_t b, int64_t e) { token_saliency_fwd_rows<T>(a, b, e); }
};
template <typename T> struct SaliencyBwd {
  static void run(const TokenSaliencyBwdArgs& a, int64_t b, int64_t e) { token_saliency_bwd_rows<T>(a, b, e); }
};

static void token_saliency_fwd(const TokenSaliencyFwdArgs& a, int64_t begin, int64_t end) {
  dispatch_dtype<SaliencyFwd>(a.dtype, a, begin, end);
}
static void token_saliency_bwd(const TokenSaliencyBwdArgs& a, int64_t begin, int64_t end) {
  dispatch_dtype<SaliencyBwd>(a.dtype, a, begin, end);
}

}  // namespace vtp_ext::cpu::VTP_ISA
