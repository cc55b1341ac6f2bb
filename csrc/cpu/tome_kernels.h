// CPU kernels of ToMe: bipartite matching (normalise, tiled best-match, ranking) and the
// merge / unmerge reductions with their backward passes. Compiled per ISA from kernels_isa.cpp.
#pragma once
#include <algorithm>
#include <cstdint>

#include "cpu/isa.h"
#include "cpu/scalar.h"
#include "vtp_ext/tome_math.h"

namespace vtp_ext::cpu::VTP_ISA {

template <typename acc_t> static inline acc_t tome_sqrt(acc_t v);
template <> inline float tome_sqrt<float>(float v) { return __builtin_sqrtf(v); }
template <> inline double tome_sqrt<double>(double v) { return __builtin_sqrt(v); }

// ---------------------------------------------------------------------------------------- matching
template <typename T>
static void tome_normalize_rows(const TomeMatchArgs& a, int64_t begin, int64_t end) {
  using acc_t = acc_of<T>;
  const T* metric = static_cast<const T*>(a.metric);
  acc_t* wa = static_cast<acc_t*>(a.work_a);
  acc_t* wbt = static_cast<acc_t*>(a.work_bt);
  for (int64_t item = begin; item < end; ++item) {
    const int64_t b = item / a.N, n = item % a.N;
    const T* row = metric + b * a.metric_batch_stride + n * a.metric_token_stride;
    acc_t ss = 0;
    for (int64_t k = 0; k < a.C; ++k) {
      const acc_t v = to_acc(row[k]);
      ss += v * v;
    }
    const acc_t inv = acc_t(1) / tome_sqrt(ss);  // no epsilon, like ToMe: a zero row gives NaN
    if (n % 2 == 0) {
      acc_t* dst = wa + (b * a.na + n / 2) * a.C;
      for (int64_t k = 0; k < a.C; ++k) dst[k] = to_acc(row[k]) * inv;
    } else {
      acc_t* dst = wbt + b * a.C * a.nbp + n / 2;
      for (int64_t k = 0; k < a.C; ++k) dst[k * a.nbp] = to_acc(row[k]) * inv;
    }
  }
}

// Best destination of 4 sources at a time: a 4 x (2W) tile of cosine similarities accumulated over
// the channels in registers (broadcast a source value, multiply a vector of destinations), then
// folded into the running maxima.
template <typename acc_t>
static void tome_best_tiles(const TomeMatchArgs& a, int64_t begin, int64_t end) {
  using V = typename Vec<acc_t>::V;
  constexpr int W = Vec<acc_t>::W;
  constexpr int R = 4;
  const acc_t* wa = static_cast<const acc_t*>(a.work_a);
  const acc_t* wbt = static_cast<const acc_t*>(a.work_bt);
  acc_t* best_out = static_cast<acc_t*>(a.best);
  const int64_t tiles = (a.na + R - 1) / R;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t b = item / tiles, a0 = (item % tiles) * R;
    const acc_t* rows[R];
    for (int i = 0; i < R; ++i) rows[i] = wa + (b * a.na + (a0 + i < a.na ? a0 + i : a.na - 1)) * a.C;
    const acc_t* bt = wbt + b * a.C * a.nbp;
    acc_t best[R];
    int64_t best_idx[R];
    for (int i = 0; i < R; ++i) {
      best[i] = acc_t(0) / acc_t(0);  // NaN: "nothing yet" (any number beats it)
      best_idx[i] = -1;
    }
    for (int64_t c0 = 0; c0 < a.nbp; c0 += 2 * W) {
      V acc[R][2] = {};
      for (int64_t k = 0; k < a.C; ++k) {
        V d0, d1;
        __builtin_memcpy(&d0, bt + k * a.nbp + c0, sizeof(V));
        __builtin_memcpy(&d1, bt + k * a.nbp + c0 + W, sizeof(V));
#pragma GCC unroll 4
        for (int i = 0; i < R; ++i) {
          const acc_t s = rows[i][k];
          acc[i][0] += d0 * s;
          acc[i][1] += d1 * s;
        }
      }
      for (int i = 0; i < R; ++i) {
        for (int l = 0; l < 2 * W; ++l) {
          const int64_t col = c0 + l;
          if (col >= a.nb || (a.distill_token && col == 0)) continue;
          const acc_t s = acc[i][l / W][l % W];
          if (tome_better(s, col, best[i], best_idx[i])) {
            best[i] = s;
            best_idx[i] = col;
          }
        }
      }
    }
    for (int i = 0; i < R && a0 + i < a.na; ++i) {
      const int64_t src = a0 + i;
      acc_t s = best[i];
      int64_t idx = best_idx[i];
      if (idx < 0 || (a.class_token && src == 0)) {  // no candidate, or the protected class token
        s = -__builtin_inf();
        idx = idx < 0 ? 0 : idx;
      }
      best_out[b * a.na + src] = s;
      a.best_idx[b * a.na + src] = idx;
    }
  }
}

// Sorting by the shared ranking order gives the same ranks as the CUDA kernel's O(na^2) counting,
// in O(na log na).
template <typename acc_t>
static void tome_plan_batches(const TomeMatchArgs& a, int64_t begin, int64_t end) {
  const acc_t* best = static_cast<const acc_t*>(a.best);
  const int64_t n_kept = a.na - a.r;
  int64_t* order = new int64_t[a.na];
  for (int64_t b = begin; b < end; ++b) {
    const acc_t* s = best + b * a.na;
    int64_t* unm = a.unm_idx + b * n_kept;
    for (int64_t i = 0; i < a.na; ++i) order[i] = i;
    std::sort(order, order + a.na,
              [&](int64_t i, int64_t j) { return tome_ranks_before(s[i], i, s[j], j, a.class_token); });
    for (int64_t rank = 0; rank < a.r; ++rank) {
      a.src_idx[b * a.r + rank] = order[rank];
      a.dst_idx[b * a.r + rank] = a.best_idx[b * a.na + order[rank]];
    }
    for (int64_t k = 0; k < n_kept; ++k) unm[k] = order[a.r + k];
    // With a class token ToMe keeps the sources in ascending order (the class token first); without
    // one they stay in descending score order.
    if (a.class_token) std::sort(unm, unm + n_kept);
  }
  delete[] order;
}

// ---------------------------------------------------------------------------------------- merging
static inline const int64_t* tome_unm(const TomeMergeArgs& a, int64_t b) { return a.unm_idx + b * (a.na - a.r); }

template <typename T>
static void tome_merge_rows(const TomeMergeArgs& a, int64_t begin, int64_t end) {
  using acc_t = acc_of<T>;
  const T* x = static_cast<const T*>(a.x);
  const T* size = static_cast<const T*>(a.size);
  T* out = static_cast<T*>(a.out);
  T* size_out = static_cast<T*>(a.size_out);
  const int64_t n_kept = a.na - a.r;
  acc_t* acc = new acc_t[a.D > 0 ? a.D : 1];
  for (int64_t item = begin; item < end; ++item) {
    const int64_t b = item / a.n_out, p = item % a.n_out;
    T* o = out + (b * a.n_out + p) * a.D;
    auto row = [&](int64_t n) { return x + b * a.x_batch_stride + n * a.x_token_stride; };
    auto sz = [&](int64_t n) { return size ? to_acc(size[b * a.size_batch_stride + n * a.size_token_stride]) : acc_t(1); };
    int64_t which;
    if (!tome_row_is_dst(p, n_kept, a.distill_token, &which)) {
      const int64_t n = 2 * tome_unm(a, b)[which];
      const T* xr = row(n);
      for (int64_t d = 0; d < a.D; ++d) o[d] = xr[d];
      size_out[b * a.n_out + p] = from_acc<T>(sz(n));
      continue;
    }
    const int64_t self = 2 * which + 1;
    const bool weighted = a.mode == TomeMode::kWAvg;
    acc_t total = sz(self), w = weighted ? sz(self) : acc_t(1), members = 1;
    const T* xr = row(self);
    for (int64_t d = 0; d < a.D; ++d) acc[d] = to_acc(xr[d]) * w;
    for (int64_t t = 0; t < a.r; ++t) {
      if (a.dst_idx[b * a.r + t] != which) continue;
      const int64_t n = 2 * a.src_idx[b * a.r + t];
      const acc_t sn = sz(n);
      w = weighted ? sn : acc_t(1);
      total += sn;
      members += 1;
      const T* xs = row(n);
      for (int64_t d = 0; d < a.D; ++d) acc[d] += to_acc(xs[d]) * w;
    }
    const acc_t scale = a.mode == TomeMode::kSum ? acc_t(1) : acc_t(1) / (weighted ? total : members);
    for (int64_t d = 0; d < a.D; ++d) o[d] = from_acc<T>(acc[d] * scale);
    size_out[b * a.n_out + p] = from_acc<T>(total);
  }
  delete[] acc;
}

// positions[b][n] = output row of input token n; counts[b][p] = number of input tokens in row p.
static void tome_positions_batches(const TomeMergeArgs& a, int64_t begin, int64_t end) {
  const int64_t n_kept = a.na - a.r;
  for (int64_t b = begin; b < end; ++b) {
    int64_t* pos = a.positions + b * a.N;
    int32_t* cnt = a.counts + b * a.n_out;
    for (int64_t p = 0; p < a.n_out; ++p) cnt[p] = 0;
    for (int64_t k = 0; k < n_kept; ++k) pos[2 * tome_unm(a, b)[k]] = tome_kept_row(k, n_kept, a.distill_token);
    for (int64_t t = 0; t < a.r; ++t)
      pos[2 * a.src_idx[b * a.r + t]] = tome_dst_row(a.dst_idx[b * a.r + t], n_kept, a.distill_token);
    for (int64_t j = 0; j < a.nb; ++j) pos[2 * j + 1] = tome_dst_row(j, n_kept, a.distill_token);
    for (int64_t n = 0; n < a.N; ++n) ++cnt[pos[n]];
  }
}

// grad_x[n] = coef(n) * grad_out[pos(n)]; for wavg with sizes also
// grad_size[n] = <grad_out[p], x[n] - out[p]> / S[p] + grad_size_out[p]; otherwise grad_size_out[p].
template <typename T>
static void tome_merge_bwd_rows(const TomeMergeArgs& a, int64_t begin, int64_t end) {
  using acc_t = acc_of<T>;
  const T* x = static_cast<const T*>(a.x);
  const T* size = static_cast<const T*>(a.size);
  const T* g = static_cast<const T*>(a.grad_out);
  const T* gs = static_cast<const T*>(a.grad_size_out);
  const T* merged = static_cast<const T*>(a.merged);
  const T* msize = static_cast<const T*>(a.merged_size);
  T* gx = static_cast<T*>(a.grad_x);
  T* gsize = static_cast<T*>(a.grad_size);
  for (int64_t item = begin; item < end; ++item) {
    const int64_t b = item / a.N, n = item % a.N;
    const int64_t p = a.positions[b * a.N + n];
    const T* gp = g + b * a.g_batch_stride + p * a.g_token_stride;
    const T* xn = x + b * a.x_batch_stride + n * a.x_token_stride;
    const acc_t sn = size ? to_acc(size[b * a.size_batch_stride + n * a.size_token_stride]) : acc_t(1);
    const acc_t S = to_acc(msize[b * a.ms_batch_stride + p * a.ms_token_stride]);
    const acc_t members = static_cast<acc_t>(a.counts[b * a.n_out + p]);
    const acc_t coef = a.mode == TomeMode::kSum ? acc_t(1) : (a.mode == TomeMode::kMean ? acc_t(1) / members : sn / S);
    T* gxn = gx + (b * a.N + n) * a.D;
    for (int64_t d = 0; d < a.D; ++d) gxn[d] = from_acc<T>(coef * to_acc(gp[d]));
    if (gsize) {
      acc_t v = gs ? to_acc(gs[b * a.gs_batch_stride + p * a.gs_token_stride]) : acc_t(0);
      if (a.mode == TomeMode::kWAvg) {
        const T* op = merged + b * a.m_batch_stride + p * a.m_token_stride;
        acc_t dot = 0;
        for (int64_t d = 0; d < a.D; ++d) dot += to_acc(gp[d]) * (to_acc(xn[d]) - to_acc(op[d]));
        v += dot / S;
      }
      gsize[b * a.N + n] = from_acc<T>(v);
    }
  }
}

// Unmerge: out[b][n] = x[b][pos(n)] with x = the merged tokens [B, n_out, D] and out [B, N, D].
template <typename T>
static void tome_unmerge_rows(const TomeMergeArgs& a, int64_t begin, int64_t end) {
  const T* y = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  for (int64_t item = begin; item < end; ++item) {
    const int64_t b = item / a.N, n = item % a.N;
    const T* src = y + b * a.x_batch_stride + a.positions[b * a.N + n] * a.x_token_stride;
    T* dst = out + (b * a.N + n) * a.D;
    for (int64_t d = 0; d < a.D; ++d) dst[d] = src[d];
  }
}

// Unmerge backward: grad_y[b][p] = sum of grad[b][n] over the tokens n of row p, in merge order
// (kept source; or destination, then its sources in plan order). grad = grad_out [B, N, D].
template <typename T>
static void tome_unmerge_bwd_rows(const TomeMergeArgs& a, int64_t begin, int64_t end) {
  using acc_t = acc_of<T>;
  const T* g = static_cast<const T*>(a.grad_out);
  T* gy = static_cast<T*>(a.grad_x);
  const int64_t n_kept = a.na - a.r;
  acc_t* acc = new acc_t[a.D > 0 ? a.D : 1];
  for (int64_t item = begin; item < end; ++item) {
    const int64_t b = item / a.n_out, p = item % a.n_out;
    auto row = [&](int64_t n) { return g + b * a.g_batch_stride + n * a.g_token_stride; };
    T* o = gy + (b * a.n_out + p) * a.D;
    int64_t which;
    if (!tome_row_is_dst(p, n_kept, a.distill_token, &which)) {
      const T* gr = row(2 * tome_unm(a, b)[which]);
      for (int64_t d = 0; d < a.D; ++d) o[d] = gr[d];
      continue;
    }
    const T* gr = row(2 * which + 1);
    for (int64_t d = 0; d < a.D; ++d) acc[d] = to_acc(gr[d]);
    for (int64_t t = 0; t < a.r; ++t) {
      if (a.dst_idx[b * a.r + t] != which) continue;
      const T* gsrc = row(2 * a.src_idx[b * a.r + t]);
      for (int64_t d = 0; d < a.D; ++d) acc[d] += to_acc(gsrc[d]);
    }
    for (int64_t d = 0; d < a.D; ++d) o[d] = from_acc<T>(acc[d]);
  }
  delete[] acc;
}

// ---------------------------------------------------------------------------------------- dispatch
#define VTP_TOME_DISPATCH(fn, args, begin, end)                        \
  switch ((args).dtype) {                                              \
    case DType::kFloat32: fn<float>(args, begin, end); break;          \
    case DType::kFloat64: fn<double>(args, begin, end); break;         \
    case DType::kFloat16: fn<f16>(args, begin, end); break;            \
    case DType::kBFloat16: fn<bf16>(args, begin, end); break;          \
    case DType::kUInt8: break; /* rejected by the glue */              \
  }

static void tome_normalize(const TomeMatchArgs& a, int64_t b, int64_t e) { VTP_TOME_DISPATCH(tome_normalize_rows, a, b, e) }
static void tome_best(const TomeMatchArgs& a, int64_t b, int64_t e) {
  if (a.dtype == DType::kFloat64) tome_best_tiles<double>(a, b, e);
  else tome_best_tiles<float>(a, b, e);
}
static void tome_plan(const TomeMatchArgs& a, int64_t b, int64_t e) {
  if (a.dtype == DType::kFloat64) tome_plan_batches<double>(a, b, e);
  else tome_plan_batches<float>(a, b, e);
}
static void tome_positions(const TomeMergeArgs& a, int64_t b, int64_t e) { tome_positions_batches(a, b, e); }
static void tome_merge(const TomeMergeArgs& a, int64_t b, int64_t e) { VTP_TOME_DISPATCH(tome_merge_rows, a, b, e) }
static void tome_merge_bwd(const TomeMergeArgs& a, int64_t b, int64_t e) { VTP_TOME_DISPATCH(tome_merge_bwd_rows, a, b, e) }
static void tome_unmerge(const TomeMergeArgs& a, int64_t b, int64_t e) { VTP_TOME_DISPATCH(tome_unmerge_rows, a, b, e) }
static void tome_unmerge_bwd(const TomeMergeArgs& a, int64_t b, int64_t e) { VTP_TOME_DISPATCH(tome_unmerge_bwd_rows, a, b, e) }
#undef VTP_TOME_DISPATCH

}  // namespace vtp_ext::cpu::VTP_ISA
