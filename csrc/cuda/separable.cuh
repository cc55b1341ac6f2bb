// CUDA kernels applying a separable operator to images (blur_downsample forward and backward):
// out[p] = A_y · in[p] · A_xᵀ. Torch-free: raw pointers, sizes, a stream.
//
// Tiled kernel: a block owns kTileRows x kTileCols outputs of one plane. It loads the input footprint
// of that tile (precomputed per tile on the host) into shared memory -- 16-byte loads where the
// footprint rows are aligned -- runs the vertical pass into a second shared buffer, and every thread
// then produces outputs from it. Pixels of `channels` contiguous elements make channels_last work
// without a transpose. Direct kernel: one thread per output from global memory, for footprints too
// large for shared memory.
#pragma once
#include "cuda/common.cuh"
#include "vtp_ext/row_indexer.h"

namespace vtp_ext::cuda {

constexpr int kSepTileRows = 8;
constexpr int kSepTileCols = 32;   // output pixels per tile row
constexpr int kSepThreads = 256;
constexpr int kSepMaxSmem = 48 * 1024;

template <typename acc_t>
struct SeparableParams {
  RowIndexer in_planes, out_planes;
  int64_t planes, channels;
  int64_t in_rows, in_cols, in_row_stride;
  int64_t out_rows, out_cols, out_row_stride;
  const int32_t* y_index; const acc_t* y_weight; const int32_t* y_count; int64_t y_taps;
  const int32_t* x_index; const acc_t* x_weight; const int32_t* x_count; int64_t x_taps;
  const int32_t* y_tiles;  // [lo, hi] input rows per tile of kSepTileRows output rows
  const int32_t* x_tiles;  // [lo, hi] input pixels per tile of kSepTileCols output pixels
  int64_t fp_rows, fp_cols;  // largest footprint over all tiles (rows, pixels)
};

template <typename T> __device__ __forceinline__ T from_acc_sat(acc_of<T> v) { return from_acc<T>(v); }
// uint8 rounds half up and saturates, like the CPU kernel and OpenCV.
template <> __device__ __forceinline__ uint8_t from_acc_sat<uint8_t>(float v) {
  const float r = floorf(v + 0.5f);
  return static_cast<uint8_t>(r <= 0.f ? 0.f : (r >= 255.f ? 255.f : r));
}
__device__ __forceinline__ float to_acc(uint8_t v) { return static_cast<float>(v); }

template <typename T>
__global__ void __launch_bounds__(kSepThreads)
separable_tiled_kernel(const T* __restrict__ in, T* __restrict__ out, SeparableParams<acc_of<T>> p) {
  using acc_t = acc_of<T>;
  VTP_DYNAMIC_SHARED(acc_t, smem);
  const int64_t C = p.channels;
  const int64_t i0 = int64_t(blockIdx.y) * kSepTileRows, j0 = int64_t(blockIdx.x) * kSepTileCols;
  const int64_t ylo = p.y_tiles[2 * blockIdx.y], yhi = p.y_tiles[2 * blockIdx.y + 1];
  const int64_t xlo = p.x_tiles[2 * blockIdx.x], xhi = p.x_tiles[2 * blockIdx.x + 1];
  const int64_t fr = yhi - ylo + 1, fc = (xhi - xlo + 1) * C;  // footprint rows, elements per row
  acc_t* tile = smem;                               // [fr][fc]
  acc_t* vert = smem + p.fp_rows * p.fp_cols * C;   // [kSepTileRows][fc]
  const int64_t rows_here = min(int64_t(kSepTileRows), p.out_rows - i0);
  const int64_t cols_here = min(int64_t(kSepTileCols), p.out_cols - j0);
  constexpr int V = Pack16<T>::kN;
  for (int64_t plane = blockIdx.z; plane < p.planes; plane += gridDim.z) {
    const T* src = in + p.in_planes.offset(plane) + xlo * C;
    for (int64_t r = 0; r < fr; ++r) {  // footprint -> shared, coalesced along the row
      const T* row = src + (ylo + r) * p.in_row_stride;
      int64_t u = 0;
      if (aligned16(row)) {
        for (int64_t k = threadIdx.x; (k + 1) * V <= fc; k += blockDim.x) {
          const Pack16<T> pk = *reinterpret_cast<const Pack16<T>*>(row + k * V);
#pragma unroll
          for (int l = 0; l < V; ++l) tile[r * fc + k * V + l] = to_acc(pk.v[l]);
        }
        u = fc / V * V;
      }
      for (int64_t k = u + threadIdx.x; k < fc; k += blockDim.x) tile[r * fc + k] = to_acc(row[k]);
    }
    __syncthreads();
    for (int64_t k = threadIdx.x; k < rows_here * fc; k += blockDim.x) {  // vertical pass
      const int64_t ii = k / fc, u = k % fc, i = i0 + ii;
      const int32_t* iy = p.y_index + i * p.y_taps;
      const acc_t* wy = p.y_weight + i * p.y_taps;
      acc_t s = 0;
      for (int32_t a = 0; a < p.y_count[i]; ++a) s += wy[a] * tile[(iy[a] - ylo) * fc + u];
      vert[ii * fc + u] = s;
    }
    __syncthreads();
    T* dst = out + p.out_planes.offset(plane);
    for (int64_t k = threadIdx.x; k < rows_here * cols_here * C; k += blockDim.x) {  // horizontal pass
      const int64_t c = k % C, jj = (k / C) % cols_here, ii = k / (C * cols_here);
      const int64_t i = i0 + ii, j = j0 + jj;
      const int32_t* ix = p.x_index + j * p.x_taps;
      const acc_t* wx = p.x_weight + j * p.x_taps;
      acc_t s = 0;
      for (int32_t e = 0; e < p.x_count[j]; ++e) s += wx[e] * vert[ii * fc + (ix[e] - xlo) * C + c];
      dst[i * p.out_row_stride + j * C + c] = from_acc_sat<T>(s);
    }
    __syncthreads();  // the next plane overwrites tile and vert
  }
}

template <typename T>
__global__ void __launch_bounds__(kSepThreads)
separable_direct_kernel(const T* __restrict__ in, T* __restrict__ out, SeparableParams<acc_of<T>> p) {
  using acc_t = acc_of<T>;
  const int64_t C = p.channels, per_plane = p.out_rows * p.out_cols * C, total = p.planes * per_plane;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < total; k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t plane = k / per_plane, r = k % per_plane;
    const int64_t i = r / (p.out_cols * C), j = (r / C) % p.out_cols, c = r % C;
    const T* src = in + p.in_planes.offset(plane) + c;
    acc_t s = 0;
    for (int32_t a = 0; a < p.y_count[i]; ++a) {
      const T* row = src + p.y_index[i * p.y_taps + a] * p.in_row_stride;
      acc_t h = 0;
      for (int32_t e = 0; e < p.x_count[j]; ++e) h += p.x_weight[j * p.x_taps + e] * to_acc(row[p.x_index[j * p.x_taps + e] * C]);
      s += p.y_weight[i * p.y_taps + a] * h;
    }
    out[p.out_planes.offset(plane) + i * p.out_row_stride + j * C + c] = from_acc_sat<T>(s);
  }
}

// Shared memory the tiled kernel needs, or 0 when the footprint is too large (use the direct kernel).
template <typename T>
inline size_t separable_tiled_smem(const SeparableParams<acc_of<T>>& p) {
  const size_t bytes = size_t(p.fp_rows + kSepTileRows) * size_t(p.fp_cols * p.channels) * sizeof(acc_of<T>);
  return bytes <= size_t(kSepMaxSmem) ? bytes : 0;
}

template <typename T>
cudaError_t launch_separable(const T* in, T* out, const SeparableParams<acc_of<T>>& p, cudaStream_t stream,
                             bool force_direct = false, int max_blocks = 65535) {
  if (p.planes == 0 || p.out_rows == 0 || p.out_cols == 0) return cudaSuccess;
  const size_t smem = separable_tiled_smem<T>(p);
  if (smem > 0 && !force_direct) {
    const dim3 grid(ceil_div(p.out_cols, kSepTileCols), ceil_div(p.out_rows, kSepTileRows),
                    unsigned(p.planes < max_blocks ? p.planes : max_blocks));
    VTP_LAUNCH(separable_tiled_kernel<T>, grid, kSepThreads, smem, stream, in, out, p);
  } else {
    const int64_t total = p.planes * p.out_rows * p.out_cols * p.channels;
    const unsigned blocks = ceil_div(total, kSepThreads) < unsigned(max_blocks) ? ceil_div(total, kSepThreads)
                                                                                 : unsigned(max_blocks);
    VTP_LAUNCH(separable_direct_kernel<T>, blocks, kSepThreads, 0, stream, in, out, p);
  }
  return cudaGetLastError();
}

}  // namespace vtp_ext::cuda
