// CUDA kernels and launchers of token_saliency (forward and backward). Torch-free: raw pointers,
// sizes and a stream. One warp per token row: lanes stride over D with 16-byte loads when every row
// start is 16-byte aligned, then reduce with shuffles. The formulas are the CPU kernels' (shared
// vtp_ext/saliency_math.h).
#pragma once
#include "cuda/common.cuh"
#include "vtp_ext/row_indexer.h"
#include "vtp_ext/saliency_math.h"

namespace vtp_ext::cuda {

constexpr int kSaliencyRowsPerBlock = 8;  // 8 warps, 256 threads
constexpr int kSaliencyMaxBlocks = 65535;

// Lane-local shifted sums over the lane's share of one row.
template <bool kCentred, bool kVec, typename T, typename acc_t = acc_of<T>>
__device__ __forceinline__ void lane_sums(const T* p, int64_t D, acc_t shift, int lane, acc_t& s, acc_t& q) {
  if constexpr (kVec) {
    constexpr int V = Pack16<T>::kN;
    for (int64_t i = int64_t(lane) * V; i < D; i += int64_t(kWarpSize) * V) {
      const Pack16<T> pk = *reinterpret_cast<const Pack16<T>*>(p + i);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const acc_t v = to_acc(pk.v[j]) - shift;
        if constexpr (kCentred) s += v;
        q += v * v;
      }
    }
  } else {
    for (int64_t i = lane; i < D; i += kWarpSize) {
      const acc_t v = to_acc(p[i]) - shift;
      if constexpr (kCentred) s += v;
      q += v * v;
    }
  }
}

template <typename T, bool kVec>
__global__ void __launch_bounds__(kSaliencyRowsPerBlock * kWarpSize)
token_saliency_fwd_kernel(const T* __restrict__ x, T* __restrict__ out, RowIndexer rows, int64_t n_rows,
                          int64_t D, int64_t correction, SaliencyMethod method) {
  using acc_t = acc_of<T>;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t first = int64_t(blockIdx.x) * kSaliencyRowsPerBlock + threadIdx.x / kWarpSize;
  const int64_t step = int64_t(gridDim.x) * kSaliencyRowsPerBlock;
  for (int64_t row = first; row < n_rows; row += step) {  // uniform per warp: shuffles stay converged
    const T* p = x + rows.offset(row);
    acc_t s = 0, q = 0, result;
    if (method == SaliencyMethod::kVariance) {
      const acc_t shift = D > 0 ? to_acc(p[0]) : acc_t(0);
      lane_sums<true, kVec>(p, D, shift, lane, s, q);
      s = warp_sum(s);
      q = warp_sum(q);
      result = variance_from_sums(s, q, D, correction);
    } else {
      lane_sums<false, kVec>(p, D, acc_t(0), lane, s, q);
      result = sqrt_acc(warp_sum(q));
    }
    if (lane == 0) out[row] = from_acc<T>(result);
  }
}

template <typename T, bool kVec>
__global__ void __launch_bounds__(kSaliencyRowsPerBlock * kWarpSize)
token_saliency_bwd_kernel(const T* __restrict__ grad, const T* __restrict__ x, const T* __restrict__ out,
                          T* __restrict__ grad_x, RowIndexer grad_rows, RowIndexer x_rows,
                          RowIndexer out_rows, int64_t n_rows, int64_t D, int64_t correction,
                          SaliencyMethod method) {
  using acc_t = acc_of<T>;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t first = int64_t(blockIdx.x) * kSaliencyRowsPerBlock + threadIdx.x / kWarpSize;
  const int64_t step = int64_t(gridDim.x) * kSaliencyRowsPerBlock;
  for (int64_t row = first; row < n_rows; row += step) {
    const T* p = x + x_rows.offset(row);
    T* g = grad_x + row * D;
    const acc_t gv = to_acc(grad[grad_rows.offset(row)]);
    acc_t centre = 0, scale;
    if (method == SaliencyMethod::kVariance) {
      const acc_t shift = D > 0 ? to_acc(p[0]) : acc_t(0);
      acc_t s = 0, unused = 0;
      lane_sums<true, kVec>(p, D, shift, lane, s, unused);
      centre = shift + warp_sum(s) / static_cast<acc_t>(D);
      scale = gv * variance_grad_scale<acc_t>(D, correction);
    } else {
      scale = l2norm_grad_scale<acc_t>(gv, to_acc(out[out_rows.offset(row)]));
    }
    if constexpr (kVec) {
      constexpr int V = Pack16<T>::kN;
      for (int64_t i = int64_t(lane) * V; i < D; i += int64_t(kWarpSize) * V) {
        const Pack16<T> in = *reinterpret_cast<const Pack16<T>*>(p + i);
        Pack16<T> o;
#pragma unroll
        for (int j = 0; j < V; ++j) o.v[j] = from_acc<T>((to_acc(in.v[j]) - centre) * scale);
        *reinterpret_cast<Pack16<T>*>(g + i) = o;
      }
    } else {
      for (int64_t i = lane; i < D; i += kWarpSize) g[i] = from_acc<T>((to_acc(p[i]) - centre) * scale);
    }
  }
}

// Rows can use 16-byte loads when D fills whole packs and every row start is 16-byte aligned.
inline bool rows_vectorisable(const void* base, const RowIndexer& rows, int64_t D, int64_t elem_size) {
  if (!aligned16(base) || (D * elem_size) % 16 != 0) return false;
  for (int d = 0; d < rows.ndim; ++d)
    if ((rows.strides[d] * elem_size) % 16 != 0) return false;
  return true;
}

template <typename T>
cudaError_t launch_token_saliency_fwd(const T* x, T* out, const RowIndexer& rows, int64_t n_rows, int64_t D,
                                      int64_t correction, SaliencyMethod method, cudaStream_t stream,
                                      int max_blocks = kSaliencyMaxBlocks) {
  if (n_rows == 0) return cudaSuccess;
  const unsigned blocks = ceil_div(n_rows, kSaliencyRowsPerBlock) < unsigned(max_blocks)
                              ? ceil_div(n_rows, kSaliencyRowsPerBlock)
                              : unsigned(max_blocks);
  const int threads = kSaliencyRowsPerBlock * kWarpSize;
  if (rows_vectorisable(x, rows, D, sizeof(T))) {
    VTP_LAUNCH((token_saliency_fwd_kernel<T, true>), blocks, threads, 0, stream, x, out, rows, n_rows, D,
               correction, method);
  } else {
    VTP_LAUNCH((token_saliency_fwd_kernel<T, false>), blocks, threads, 0, stream, x, out, rows, n_rows, D,
               correction, method);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_token_saliency_bwd(const T* grad, const T* x, const T* out, T* grad_x,
                                      const RowIndexer& grad_rows, const RowIndexer& x_rows,
                                      const RowIndexer& out_rows, int64_t n_rows, int64_t D,
                                      int64_t correction, SaliencyMethod method, cudaStream_t stream,
                                      int max_blocks = kSaliencyMaxBlocks) {
  if (n_rows == 0 || D == 0) return cudaSuccess;
  const unsigned blocks = ceil_div(n_rows, kSaliencyRowsPerBlock) < unsigned(max_blocks)
                              ? ceil_div(n_rows, kSaliencyRowsPerBlock)
                              : unsigned(max_blocks);
  const int threads = kSaliencyRowsPerBlock * kWarpSize;
  if (rows_vectorisable(x, x_rows, D, sizeof(T)) && aligned16(grad_x)) {
    VTP_LAUNCH((token_saliency_bwd_kernel<T, true>), blocks, threads, 0, stream, grad, x, out, grad_x,
               grad_rows, x_rows, out_rows, n_rows, D, correction, method);
  } else {
    VTP_LAUNCH((token_saliency_bwd_kernel<T, false>), blocks, threads, 0, stream, grad, x, out, grad_x,
               grad_rows, x_rows, out_rows, n_rows, D, correction, method);
  }
  return cudaGetLastError();
}

}  // namespace vtp_ext::cuda
