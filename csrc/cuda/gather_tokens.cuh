// CUDA kernels and launchers of gather_tokens (row gather) and of the row scatter-add behind
// gather_tokens_backward and segmented_topk_backward. Torch-free: raw pointers, sizes and a stream.
//
// One thread per output element, consecutive threads along D, so any D (including 1, the scores of
// segmented_topk) is coalesced. The scatter-add never uses floating-point atomics: an inverse map
// (first j and count per output row, integer atomics only) lets every output element be written by
// exactly one thread, which sums its sources in increasing j -- deterministic, the CPU kernel's order.
// Index values outside [-1, L) set *bad and are skipped (zero rows); the glue turns that into an error.
#pragma once
#include "cuda/common.cuh"

namespace vtp_ext::cuda {

constexpr int kRowsThreads = 256;
constexpr int kRowsMaxBlocks = 65535;

template <typename T>
__global__ void __launch_bounds__(kRowsThreads)
gather_rows_kernel(const T* __restrict__ x, int64_t x_sb, int64_t x_sl, int64_t x_sd,
                   const int64_t* __restrict__ indices, int64_t idx_sb, int64_t idx_sk, T* __restrict__ out,
                   int64_t B, int64_t K, int64_t L, int64_t D, int32_t* bad) {
  const int64_t n = B * K * D;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = e / D, d = e - r * D;
    const int64_t b = r / K, k = r - b * K;
    const int64_t i = indices[b * idx_sb + k * idx_sk];
    T v = from_acc<T>(acc_of<T>(0));
    if (i >= 0 && i < L) {
      v = x[b * x_sb + i * x_sl + d * x_sd];
    } else if (i != -1) {
      atomicOr(bad, 1);
    }
    out[e] = v;
  }
}

__global__ void __launch_bounds__(kRowsThreads)
scatter_rows_index_kernel(const int64_t* __restrict__ indices, int64_t idx_sb, int64_t idx_sk, int32_t* first,
                          int32_t* count, int64_t B, int64_t K, int64_t L, int32_t* bad) {
  const int64_t n = B * K;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = e / K, j = e - b * K;
    const int64_t i = indices[b * idx_sb + j * idx_sk];
    if (i < 0 || i >= L) {
      if (i != -1) atomicOr(bad, 1);
      continue;
    }
    atomicAdd(count + b * L + i, 1);
    atomicMin(first + b * L + i, int32_t(j));
  }
}

template <typename T>
__global__ void __launch_bounds__(kRowsThreads)
scatter_rows_sum_kernel(const T* __restrict__ src, int64_t src_sb, int64_t src_sk, int64_t src_sd,
                        const int64_t* __restrict__ indices, int64_t idx_sb, int64_t idx_sk,
                        const int32_t* __restrict__ first, const int32_t* __restrict__ count, T* __restrict__ out,
                        int64_t B, int64_t K, int64_t L, int64_t D) {
  using acc_t = acc_of<T>;
  const int64_t n = B * L * D;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = e / D, d = e - r * D;
    const int64_t b = r / L, l = r - b * L;
    const int32_t c = count[r];
    if (c == 0) {
      out[e] = from_acc<T>(acc_t(0));
      continue;
    }
    const int64_t j0 = first[r];
    if (c == 1) {  // unique index (always, for a top-k): a copy, as on the CPU
      out[e] = src[b * src_sb + j0 * src_sk + d * src_sd];
      continue;
    }
    acc_t acc = 0;
    for (int64_t j = j0; j < K; ++j)
      if (indices[b * idx_sb + j * idx_sk] == l) acc += to_acc(src[b * src_sb + j * src_sk + d * src_sd]);
    out[e] = from_acc<T>(acc);
  }
}

inline unsigned rows_blocks(int64_t n, int max_blocks) {
  const unsigned want = ceil_div(n, kRowsThreads);
  return want < unsigned(max_blocks) ? want : unsigned(max_blocks);
}

template <typename T>
cudaError_t launch_gather_rows(const T* x, int64_t x_sb, int64_t x_sl, int64_t x_sd, const int64_t* indices,
                               int64_t idx_sb, int64_t idx_sk, T* out, int64_t B, int64_t K, int64_t L, int64_t D,
                               int32_t* bad, cudaStream_t stream, int max_blocks = kRowsMaxBlocks) {
  if (B * K * D == 0) return cudaSuccess;
  VTP_LAUNCH((gather_rows_kernel<T>), rows_blocks(B * K * D, max_blocks), kRowsThreads, 0, stream, x, x_sb, x_sl,
             x_sd, indices, idx_sb, idx_sk, out, B, K, L, D, bad);
  return cudaGetLastError();
}

// first and count: [B, L] int32 scratch each (contents on entry do not matter); bad: one int32, zero.
template <typename T>
cudaError_t launch_scatter_rows(const T* src, int64_t src_sb, int64_t src_sk, int64_t src_sd,
                                const int64_t* indices, int64_t idx_sb, int64_t idx_sk, int32_t* first,
                                int32_t* count, T* out, int64_t B, int64_t K, int64_t L, int64_t D, int32_t* bad,
                                cudaStream_t stream, int max_blocks = kRowsMaxBlocks) {
  if (B == 0) return cudaSuccess;
  if (B * L > 0) {
    // first[] starts as the bytes 0x7F: 0x7F7F7F7F exceeds every j (K < 0x7F7F7F7F is checked).
    cudaError_t err = cudaMemsetAsync(first, 0x7F, sizeof(int32_t) * size_t(B * L), stream);
    if (err == cudaSuccess) err = cudaMemsetAsync(count, 0, sizeof(int32_t) * size_t(B * L), stream);
    if (err != cudaSuccess) return err;
  }
  if (B * K > 0) {
    VTP_LAUNCH(scatter_rows_index_kernel, rows_blocks(B * K, max_blocks), kRowsThreads, 0, stream, indices, idx_sb,
               idx_sk, first, count, B, K, L, bad);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  if (B * L * D > 0) {
    VTP_LAUNCH((scatter_rows_sum_kernel<T>), rows_blocks(B * L * D, max_blocks), kRowsThreads, 0, stream, src,
               src_sb, src_sk, src_sd, indices, idx_sb, idx_sk, first, count, out, B, K, L, D);
  }
  return cudaGetLastError();
}

}  // namespace vtp_ext::cuda
