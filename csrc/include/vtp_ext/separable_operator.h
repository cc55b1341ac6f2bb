// blur_downsample as a separable linear operator. Every mode is "blur along an axis, then resample
// that axis", so out = A_y · in · A_xᵀ with one small sparse matrix per axis. The matrices are built
// here on the host, in float64, once per call (they are tiny: n_out x taps); the CPU and CUDA kernels
// only apply them, and the backward pass applies their transposes with the same kernels.
//
// Host-only, torch-free (std only), shared by the CPU and CUDA glue.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "vtp_ext/macros.h"

namespace vtp_ext {

enum class PyramidMode : int32_t { kKornia = 0, kOpenCV = 1, kGaussAvgPool = 2 };
enum class PyramidBorder : int32_t { kReflect = 0, kZeros = 1 };

// exp(-t^2 / (2 sigma^2)), the unnormalised Gaussian tap at offset t (kornia's and the seed's form).
VTP_HD_INLINE double gaussian_tap(int64_t t, double sigma) {
  return exp(-static_cast<double>(t * t) / (2.0 * sigma * sigma));
}

// Mirror an index into [0, n) without repeating the edge sample (torch "reflect", OpenCV
// BORDER_REFLECT_101), folding as often as needed; n = 1 maps everything to 0 as OpenCV does.
inline int64_t reflect_index(int64_t t, int64_t n) {
  if (n == 1) return 0;
  while (t < 0 || t >= n) t = t < 0 ? -t : 2 * (n - 1) - t;
  return t;
}

// A sparse n_out x n_in matrix stored as rows of at most `taps` (index, weight) pairs; row i uses
// count[i] of them. Unused slots are never read (a padded 0-weight tap would turn an inf into NaN).
struct AxisOperator {
  int64_t n_in = 0, n_out = 0, taps = 0;
  std::vector<int32_t> index;  // [n_out * taps]
  std::vector<double> weight;  // [n_out * taps]
  std::vector<int32_t> count;  // [n_out]
};

namespace detail {

// Rows of at most `cap` (index, weight) pairs in flat, uninitialised arrays. Building an operator is
// then O(n * cap) with a handful of allocations: rows as vectors of vectors cost ~170 us for a
// 1024-pixel axis, more than the whole kernel on a small image.
class SparseRows {
 public:
  SparseRows(int64_t n, int64_t cap)
      : n_(n), cap_(cap), index_(new int32_t[n * cap]), weight_(new double[n * cap]), count_(n, 0) {}
  int64_t size() const { return n_; }
  int64_t cap() const { return cap_; }
  int32_t count(int64_t i) const { return count_[i]; }
  int32_t index(int64_t i, int64_t a) const { return index_[i * cap_ + a]; }
  double weight(int64_t i, int64_t a) const { return weight_[i * cap_ + a]; }

  // Row i += w * e_idx, merging a repeated index (reflected borders fold taps onto one sample).
  void add(int64_t i, int64_t idx, double w) {
    int32_t* ix = index_.get() + i * cap_;
    double* wt = weight_.get() + i * cap_;
    for (int32_t a = 0; a < count_[i]; ++a) {
      if (ix[a] == idx) {
        wt[a] += w;
        return;
      }
    }
    append(i, idx, w);
  }
  // Row i += w * e_idx for an index row i does not hold yet.
  void append(int64_t i, int64_t idx, double w) {
    if (count_[i] == cap_) throw std::logic_error("vtp_ext: SparseRows row capacity exceeded");
    index_[i * cap_ + count_[i]] = static_cast<int32_t>(idx);
    weight_[i * cap_ + count_[i]++] = w;
  }
  // Row i += scale * row j of src (a row's indices are distinct, so an empty row i needs no merging).
  void add_row(int64_t i, const SparseRows& src, int64_t j, double scale) {
    const bool fresh = count_[i] == 0;
    for (int32_t a = 0; a < src.count(j); ++a) {
      if (fresh) {
        append(i, src.index(j, a), scale * src.weight(j, a));
      } else {
        add(i, src.index(j, a), scale * src.weight(j, a));
      }
    }
  }
  // Drop exact zeros (kornia's odd-size positions can hit a sample exactly).
  void drop_zeros() {
    for (int64_t i = 0; i < n_; ++i) {
      int32_t k = 0;
      for (int32_t a = 0; a < count_[i]; ++a) {
        if (weight_[i * cap_ + a] == 0.0) continue;
        index_[i * cap_ + k] = index_[i * cap_ + a];
        weight_[i * cap_ + k++] = weight_[i * cap_ + a];
      }
      count_[i] = k;
    }
  }

 private:
  int64_t n_, cap_;
  std::unique_ptr<int32_t[]> index_;
  std::unique_ptr<double[]> weight_;
  std::vector<int32_t> count_;
};

inline AxisOperator pack(const SparseRows& rows, int64_t n_in) {
  AxisOperator op;
  op.n_in = n_in;
  op.n_out = rows.size();
  for (int64_t i = 0; i < op.n_out; ++i) op.taps = std::max<int64_t>(op.taps, rows.count(i));
  op.taps = std::max<int64_t>(op.taps, 1);
  op.index.assign(op.n_out * op.taps, 0);
  op.weight.assign(op.n_out * op.taps, 0.0);
  op.count.assign(op.n_out, 0);
  for (int64_t i = 0; i < op.n_out; ++i) {
    const int32_t c = rows.count(i);
    op.count[i] = c;
    int32_t* ix = op.index.data() + i * op.taps;
    double* wt = op.weight.data() + i * op.taps;
    // Ascending input index (the kernels read rows in memory order); rows are a few taps long.
    for (int32_t a = 0; a < c; ++a) {
      const int32_t idx = rows.index(i, a);
      const double w = rows.weight(i, a);
      int32_t b = a;
      for (; b > 0 && ix[b - 1] > idx; --b) {
        ix[b] = ix[b - 1];
        wt[b] = wt[b - 1];
      }
      ix[b] = idx;
      wt[b] = w;
    }
  }
  return op;
}

// The 1-d blur of one axis: blur[i] = sum_t w[t] x[border(i + t - half)].
inline SparseRows blur_rows(int64_t n, const std::vector<double>& w, PyramidBorder border) {
  const int64_t half = static_cast<int64_t>(w.size()) / 2;
  SparseRows rows(n, static_cast<int64_t>(w.size()));
  for (int64_t i = 0; i < n; ++i) {
    if (i >= half && i + half < n) {  // interior: every tap in range and distinct
      for (int64_t t = 0; t < static_cast<int64_t>(w.size()); ++t) rows.append(i, i + t - half, w[t]);
      continue;
    }
    for (int64_t t = 0; t < static_cast<int64_t>(w.size()); ++t) {
      const int64_t src = i + t - half;
      if (border == PyramidBorder::kZeros) {
        if (src >= 0 && src < n) rows.add(i, src, w[t]);
      } else {
        rows.add(i, reflect_index(src, n), w[t]);
      }
    }
  }
  return rows;
}

}  // namespace detail

struct BlurDownsampleConfig {
  PyramidMode mode;
  PyramidBorder border;
  double sigma;
  int64_t kernel_size;
};

inline int64_t blur_downsample_out_size(int64_t n, PyramidMode mode) {
  return mode == PyramidMode::kOpenCV ? (n + 1) / 2 : n / 2;
}

// The forward operator of one axis of length n. `float_positions`: compute kornia's bilinear sample
// positions in float32 as PyTorch's upsample kernel does for non-float64 inputs.
inline AxisOperator blur_downsample_axis(int64_t n, const BlurDownsampleConfig& cfg, bool float_positions) {
  const int64_t n_out = blur_downsample_out_size(n, cfg.mode);
  const std::vector<double> binomial{1 / 16.0, 4 / 16.0, 6 / 16.0, 4 / 16.0, 1 / 16.0};
  if (cfg.mode == PyramidMode::kOpenCV) {
    const auto blur = detail::blur_rows(n, binomial, PyramidBorder::kReflect);
    detail::SparseRows out(n_out, blur.cap());
    for (int64_t i = 0; i < n_out; ++i) out.add_row(i, blur, 2 * i, 1.0);
    out.drop_zeros();
    return detail::pack(out, n);
  }
  if (cfg.mode == PyramidMode::kKornia) {
    const auto blur = detail::blur_rows(n, binomial, PyramidBorder::kReflect);
    detail::SparseRows out(n_out, 2 * blur.cap());
    // F.interpolate(size=n_out, mode="bilinear", align_corners=False): src = (i + 0.5) * n/n_out - 0.5,
    // clamped at 0; the upper neighbour is clamped at n - 1.
    for (int64_t i = 0; i < n_out; ++i) {
      double l0, l1;
      int64_t i0;
      if (float_positions) {
        const float scale = static_cast<float>(n) / static_cast<float>(n_out);
        const float s = std::max(scale * (static_cast<float>(i) + 0.5f) - 0.5f, 0.f);
        i0 = static_cast<int64_t>(s);
        const float lf = s - static_cast<float>(i0);
        l1 = lf;
        l0 = 1.0f - lf;
      } else {
        const double scale = static_cast<double>(n) / static_cast<double>(n_out);
        const double s = std::max(scale * (static_cast<double>(i) + 0.5) - 0.5, 0.0);
        i0 = static_cast<int64_t>(s);
        l1 = s - static_cast<double>(i0);
        l0 = 1.0 - l1;
      }
      const int64_t i1 = i0 + (i0 < n - 1 ? 1 : 0);
      out.add_row(i, blur, i0, l0);
      out.add_row(i, blur, i1, l1);
    }
    out.drop_zeros();
    return detail::pack(out, n);
  }
  const int64_t half = cfg.kernel_size / 2;
  std::vector<double> g(cfg.kernel_size);
  double total = 0;
  for (int64_t t = 0; t < cfg.kernel_size; ++t) total += g[t] = gaussian_tap(t - half, cfg.sigma);
  for (auto& v : g) v /= total;
  const auto blur = detail::blur_rows(n, g, cfg.border);
  detail::SparseRows out(n_out, 2 * blur.cap());
  for (int64_t i = 0; i < n_out; ++i) {  // 2x2 average pooling, floor
    out.add_row(i, blur, 2 * i, 0.5);
    out.add_row(i, blur, 2 * i + 1, 0.5);
  }
  out.drop_zeros();
  return detail::pack(out, n);
}

// The widest run of output rows [begin, end) around the middle whose taps are one fixed stencil at
// stride 2 -- row j reads indices 2j + offset + e with weights[e]. Kernels vectorise that run and
// gather the rest (borders, and operators with fractional positions, which have no such run).
struct UniformStencil {
  int64_t begin = 0, end = 0, offset = 0;
  std::vector<double> weight;
};

inline UniformStencil find_uniform_stencil(const AxisOperator& op) {
  UniformStencil st;
  if (op.n_out == 0) return st;
  const int64_t m = op.n_out / 2, c = op.count[m];
  if (c == 0) return st;
  const int32_t* im = op.index.data() + m * op.taps;
  for (int64_t e = 1; e < c; ++e)
    if (im[e] != im[0] + e) return st;
  st.offset = im[0] - 2 * m;
  st.weight.assign(op.weight.begin() + m * op.taps, op.weight.begin() + m * op.taps + c);
  auto matches = [&](int64_t j) {
    if (op.count[j] != c) return false;
    for (int64_t e = 0; e < c; ++e)
      if (op.index[j * op.taps + e] != 2 * j + st.offset + e || op.weight[j * op.taps + e] != st.weight[e]) return false;
    return true;
  };
  st.begin = m;
  st.end = m + 1;
  while (st.begin > 0 && matches(st.begin - 1)) --st.begin;
  while (st.end < op.n_out && matches(st.end)) ++st.end;
  return st;
}

// For tiles of `tile` consecutive output rows: the first and last input index any of them reads
// (indices within a row are sorted). [lo_0, hi_0, lo_1, hi_1, ...]. `align` rounds lo down and hi+1
// up to a multiple (16-byte loads), clamped to [0, n_in).
inline std::vector<int32_t> tile_footprints(const AxisOperator& op, int64_t tile, int64_t align) {
  const int64_t n_tiles = (op.n_out + tile - 1) / tile;
  std::vector<int32_t> out(2 * n_tiles);
  for (int64_t t = 0; t < n_tiles; ++t) {
    int64_t lo = op.n_in, hi = -1;
    for (int64_t i = t * tile; i < std::min(op.n_out, (t + 1) * tile); ++i) {
      if (op.count[i] == 0) continue;
      lo = std::min<int64_t>(lo, op.index[i * op.taps]);
      hi = std::max<int64_t>(hi, op.index[i * op.taps + op.count[i] - 1]);
    }
    if (hi < lo) lo = hi = 0;  // a tile that reads nothing (all-zero rows) still gets a 1-wide footprint
    lo = lo / align * align;
    hi = std::min<int64_t>((hi + align) / align * align, op.n_in) - 1;
    out[2 * t] = static_cast<int32_t>(lo);
    out[2 * t + 1] = static_cast<int32_t>(hi);
  }
  return out;
}

// Aᵀ: the backward operator (gradient of the input = Aᵀ · gradient of the output).
inline AxisOperator transpose(const AxisOperator& a) {
  std::vector<int64_t> uses(a.n_in, 0);
  for (int64_t i = 0; i < a.n_out; ++i)
    for (int64_t t = 0; t < a.count[i]; ++t) ++uses[a.index[i * a.taps + t]];
  const int64_t cap = a.n_in > 0 ? *std::max_element(uses.begin(), uses.end()) : 0;
  detail::SparseRows rows(a.n_in, cap);
  for (int64_t i = 0; i < a.n_out; ++i)
    for (int64_t t = 0; t < a.count[i]; ++t) rows.add(a.index[i * a.taps + t], i, a.weight[i * a.taps + t]);
  return detail::pack(rows, a.n_out);
}

}  // namespace vtp_ext
