// CUDA kernels of ToMe: bipartite matching (normalise; tiled best match with destinations streamed
// through shared memory and a warp-level argmax; ranking) and the deterministic merge / unmerge
// reductions with their backward passes. Torch-free: raw pointers, sizes, a stream. The rules they
// share with the CPU kernels (clamp, tie-breaking, output order) are in vtp_ext/tome_math.h.
#pragma once
#include "cuda/common.cuh"
#include "vtp_ext/tome_math.h"

namespace vtp_ext::cuda {

constexpr int kTomeTile = 32;     // sources per block, destinations and channels per shared tile
constexpr int kTomeThreads = 256; // 32 sources x 8 threads, each thread owning 4 destinations of a tile
constexpr int kTomeRowThreads = 128;

// ------------------------------------------------------------------------------------ matching
// One warp per token: unit-norm copy (no epsilon, as ToMe) into sources [B][na][C] / destinations [B][nb][C].
template <typename T>
__global__ void tome_normalize_kernel(const T* __restrict__ metric, int64_t batch_stride, int64_t token_stride,
                                      int64_t B, int64_t N, int64_t C, int64_t na, int64_t nb,
                                      acc_of<T>* __restrict__ wa, acc_of<T>* __restrict__ wb) {
  using acc_t = acc_of<T>;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / kWarpSize);
  for (int64_t t = int64_t(blockIdx.x) * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize; t < B * N; t += warps) {
    const int64_t b = t / N, n = t % N;
    const T* row = metric + b * batch_stride + n * token_stride;
    acc_t ss = 0;
    for (int64_t k = lane; k < C; k += kWarpSize) {
      const acc_t v = to_acc(row[k]);
      ss += v * v;
    }
    const acc_t inv = acc_t(1) / sqrt_acc(warp_sum(ss));
    acc_t* dst = n % 2 == 0 ? wa + (b * na + n / 2) * C : wb + (b * nb + n / 2) * C;
    for (int64_t k = lane; k < C; k += kWarpSize) dst[k] = to_acc(row[k]) * inv;
  }
}

// Block (source tile, batch): cosine similarities of 32 sources against 32-destination tiles,
// accumulated over 32-channel slices in shared memory; each thread keeps the best of its columns,
// then the 8 threads of a source reduce with shuffles. The score matrix is never stored.
template <typename acc_t>
__global__ void __launch_bounds__(kTomeThreads)
tome_best_kernel(const acc_t* __restrict__ wa, const acc_t* __restrict__ wb, int64_t C, int64_t na, int64_t nb,
                 bool class_token, bool distill_token, acc_t* __restrict__ best_out, int64_t* __restrict__ best_idx_out) {
  __shared__ acc_t As[kTomeTile][kTomeTile + 1];
  __shared__ acc_t Bs[kTomeTile][kTomeTile + 1];
  const int64_t b = blockIdx.y, a0 = int64_t(blockIdx.x) * kTomeTile;
  const int ty = threadIdx.x / 8, tx = threadIdx.x % 8;
  acc_t best = 0;
  int64_t best_idx = -1;
  for (int64_t d0 = 0; d0 < nb; d0 += kTomeTile) {
    acc_t acc[4] = {0, 0, 0, 0};
    for (int64_t c0 = 0; c0 < C; c0 += kTomeTile) {
      for (int k = threadIdx.x; k < kTomeTile * kTomeTile; k += kTomeThreads) {
        const int row = k / kTomeTile, col = k % kTomeTile;
        const int64_t a = a0 + row, d = d0 + row, c = c0 + col;
        As[row][col] = (a < na && c < C) ? wa[(b * na + a) * C + c] : acc_t(0);
        Bs[row][col] = (d < nb && c < C) ? wb[(b * nb + d) * C + c] : acc_t(0);
      }
      __syncthreads();
#pragma unroll 8
      for (int k = 0; k < kTomeTile; ++k) {
        const acc_t av = As[ty][k];
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[q] += av * Bs[tx + 8 * q][k];
      }
      __syncthreads();
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int64_t d = d0 + tx + 8 * q;
      if (d < nb && !(distill_token && d == 0) && tome_better(acc[q], d, best, best_idx)) {
        best = acc[q];
        best_idx = d;
      }
    }
  }
#pragma unroll
  for (int off = 4; off > 0; off /= 2) {  // the 8 threads of a source are adjacent lanes of one warp
    const acc_t ob = __shfl_xor_sync(0xffffffffu, best, off);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, best_idx, off);
    if (oi >= 0 && tome_better(ob, oi, best, best_idx)) {
      best = ob;
      best_idx = oi;
    }
  }
  const int64_t a = a0 + ty;
  if (tx == 0 && a < na) {
    if (best_idx < 0 || (class_token && a == 0)) {
      best = -INFINITY;
      best_idx = best_idx < 0 ? 0 : best_idx;
    }
    best_out[b * na + a] = best;
    best_idx_out[b * na + a] = best_idx;
  }
}

// Block per batch: rank every source (O(na^2) comparisons spread over the block, no sort needed) and
// write the plan. rank is a workspace [B][na].
template <typename acc_t>
__global__ void tome_plan_kernel(const acc_t* __restrict__ best, const int64_t* __restrict__ best_idx, int64_t na,
                                 int64_t r, bool class_token, int64_t* __restrict__ rank, int64_t* __restrict__ unm,
                                 int64_t* __restrict__ src, int64_t* __restrict__ dst) {
  const int64_t b = blockIdx.x;
  const acc_t* s = best + b * na;
  int64_t* rk = rank + b * na;
  for (int64_t i = threadIdx.x; i < na; i += blockDim.x) {
    int64_t n = 0;
    for (int64_t j = 0; j < na; ++j) n += tome_ranks_before(s[j], j, s[i], i, class_token);
    rk[i] = n;
    if (n < r) {
      src[b * r + n] = i;
      dst[b * r + n] = best_idx[b * na + i];
    } else if (!class_token) {
      unm[b * (na - r) + n - r] = i;
    }
  }
  if (!class_token) return;
  __syncthreads();
  for (int64_t i = threadIdx.x; i < na; i += blockDim.x) {  // kept sources in ascending order
    if (rk[i] < r) continue;
    int64_t k = 0;
    for (int64_t j = 0; j < i; ++j) k += rk[j] >= r;
    unm[b * (na - r) + k] = i;
  }
}

// ------------------------------------------------------------------------------------ merging
struct TomePlanView {
  const int64_t* unm;
  const int64_t* src;
  const int64_t* dst;
  int64_t B, N, na, nb, r, n_out;
  bool distill_token;
};

// Block per batch: positions[b][n] = output row of token n; counts[b][p] = tokens in row p
// (integer atomics: exact, so deterministic).
__global__ void tome_positions_kernel(TomePlanView p, int64_t* __restrict__ positions, int32_t* __restrict__ counts) {
  const int64_t b = blockIdx.x, n_kept = p.na - p.r;
  int64_t* pos = positions + b * p.N;
  int32_t* cnt = counts + b * p.n_out;
  for (int64_t i = threadIdx.x; i < p.n_out; i += blockDim.x) cnt[i] = 0;
  for (int64_t k = threadIdx.x; k < n_kept; k += blockDim.x) pos[2 * p.unm[b * n_kept + k]] = tome_kept_row(k, n_kept, p.distill_token);
  for (int64_t t = threadIdx.x; t < p.r; t += blockDim.x)
    pos[2 * p.src[b * p.r + t]] = tome_dst_row(p.dst[b * p.r + t], n_kept, p.distill_token);
  for (int64_t j = threadIdx.x; j < p.nb; j += blockDim.x) pos[2 * j + 1] = tome_dst_row(j, n_kept, p.distill_token);
  __syncthreads();
  for (int64_t n = threadIdx.x; n < p.N; n += blockDim.x) atomicAdd(&cnt[pos[n]], 1);
}

// Block (output row, batch), threads over D. Destination rows sum the destination, then its sources
// in plan order -- the CPU kernel's order.
template <typename T>
__global__ void tome_merge_kernel(TomePlanView p, TomeMode mode, const T* __restrict__ x, int64_t xb, int64_t xn,
                                  const T* __restrict__ size, int64_t sb, int64_t sn, int64_t D, T* __restrict__ out,
                                  T* __restrict__ size_out) {
  using acc_t = acc_of<T>;
  const int64_t row = blockIdx.x, b = blockIdx.y, n_kept = p.na - p.r;
  auto sz = [&](int64_t n) { return size ? to_acc(size[b * sb + n * sn]) : acc_t(1); };
  T* o = out + (b * p.n_out + row) * D;
  int64_t which;
  if (!tome_row_is_dst(row, n_kept, p.distill_token, &which)) {
    const int64_t n = 2 * p.unm[b * n_kept + which];
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) o[d] = x[b * xb + n * xn + d];
    if (threadIdx.x == 0) size_out[b * p.n_out + row] = from_acc<T>(sz(n));
    return;
  }
  const bool weighted = mode == TomeMode::kWAvg;
  const int64_t self = 2 * which + 1;
  acc_t total = sz(self), members = 1;
  for (int64_t t = 0; t < p.r; ++t) {
    if (p.dst[b * p.r + t] != which) continue;
    total += sz(2 * p.src[b * p.r + t]);
    members += 1;
  }
  const acc_t scale = mode == TomeMode::kSum ? acc_t(1) : acc_t(1) / (weighted ? total : members);
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    acc_t acc = to_acc(x[b * xb + self * xn + d]) * (weighted ? sz(self) : acc_t(1));
    for (int64_t t = 0; t < p.r; ++t) {
      if (p.dst[b * p.r + t] != which) continue;
      const int64_t n = 2 * p.src[b * p.r + t];
      acc += to_acc(x[b * xb + n * xn + d]) * (weighted ? sz(n) : acc_t(1));
    }
    o[d] = from_acc<T>(acc * scale);
  }
  if (threadIdx.x == 0) size_out[b * p.n_out + row] = from_acc<T>(total);
}

template <typename acc_t>
__device__ acc_t block_sum(acc_t v, acc_t* shared) {  // shared: one slot per warp
  v = warp_sum(v);
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize, warps = blockDim.x / kWarpSize;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  acc_t total = 0;
  for (int w = 0; w < warps; ++w) total += shared[w];
  __syncthreads();
  return total;
}

// Block (token, batch): grad_x[n] = coef * g[pos(n)]; grad_size[n] as in the CPU kernel.
template <typename T>
__global__ void tome_merge_bwd_kernel(TomePlanView p, TomeMode mode, const int64_t* __restrict__ positions,
                                      const int32_t* __restrict__ counts, const T* __restrict__ g, int64_t gb,
                                      int64_t gn, const T* __restrict__ gs, int64_t gsb, int64_t gsn,
                                      const T* __restrict__ x, int64_t xb, int64_t xn, const T* __restrict__ size,
                                      int64_t sb, int64_t sn, const T* __restrict__ merged, int64_t mb, int64_t mn,
                                      const T* __restrict__ msize, int64_t msb, int64_t msn, int64_t D,
                                      T* __restrict__ gx, T* __restrict__ gsize) {
  using acc_t = acc_of<T>;
  __shared__ acc_t red[kTomeRowThreads / kWarpSize];
  const int64_t n = blockIdx.x, b = blockIdx.y;
  const int64_t row = positions[b * p.N + n];
  const acc_t s_n = size ? to_acc(size[b * sb + n * sn]) : acc_t(1);
  const acc_t S = to_acc(msize[b * msb + row * msn]);
  const acc_t members = static_cast<acc_t>(counts[b * p.n_out + row]);
  const acc_t coef = mode == TomeMode::kSum ? acc_t(1) : (mode == TomeMode::kMean ? acc_t(1) / members : s_n / S);
  const T* gp = g + b * gb + row * gn;
  acc_t dot = 0;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    const acc_t gv = to_acc(gp[d]);
    gx[(b * p.N + n) * D + d] = from_acc<T>(coef * gv);
    if (mode == TomeMode::kWAvg) dot += gv * (to_acc(x[b * xb + n * xn + d]) - to_acc(merged[b * mb + row * mn + d]));
  }
  if (gsize == nullptr) return;
  dot = block_sum(dot, red);
  if (threadIdx.x == 0) {
    acc_t v = gs ? to_acc(gs[b * gsb + row * gsn]) : acc_t(0);
    if (mode == TomeMode::kWAvg) v += dot / S;
    gsize[b * p.N + n] = from_acc<T>(v);
  }
}

// Block (token, batch): out[n] = y[pos(n)].
template <typename T>
__global__ void tome_unmerge_kernel(TomePlanView p, const int64_t* __restrict__ positions, const T* __restrict__ y,
                                    int64_t yb, int64_t yn, int64_t D, T* __restrict__ out) {
  const int64_t n = blockIdx.x, b = blockIdx.y;
  const T* src = y + b * yb + positions[b * p.N + n] * yn;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) out[(b * p.N + n) * D + d] = src[d];
}

// Block (merged row, batch): grad_y[row] = sum of grad over the row's tokens, in merge order.
template <typename T>
__global__ void tome_unmerge_bwd_kernel(TomePlanView p, const T* __restrict__ g, int64_t gb, int64_t gn, int64_t D,
                                        T* __restrict__ gy) {
  using acc_t = acc_of<T>;
  const int64_t row = blockIdx.x, b = blockIdx.y, n_kept = p.na - p.r;
  T* o = gy + (b * p.n_out + row) * D;
  int64_t which;
  if (!tome_row_is_dst(row, n_kept, p.distill_token, &which)) {
    const T* gr = g + b * gb + 2 * p.unm[b * n_kept + which] * gn;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) o[d] = gr[d];
    return;
  }
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    acc_t acc = to_acc(g[b * gb + (2 * which + 1) * gn + d]);
    for (int64_t t = 0; t < p.r; ++t)
      if (p.dst[b * p.r + t] == which) acc += to_acc(g[b * gb + 2 * p.src[b * p.r + t] * gn + d]);
    o[d] = from_acc<T>(acc);
  }
}

// ------------------------------------------------------------------------------------ launchers
template <typename T>
cudaError_t launch_tome_match(const T* metric, int64_t batch_stride, int64_t token_stride, int64_t B, int64_t N,
                              int64_t C, int64_t r, bool class_token, bool distill_token, acc_of<T>* wa,
                              acc_of<T>* wb, acc_of<T>* best, int64_t* best_idx, int64_t* rank, int64_t* unm,
                              int64_t* src, int64_t* dst, cudaStream_t stream, int max_blocks = 65535) {
  const int64_t na = (N + 1) / 2, nb = N / 2;
  if (B == 0 || na == 0) return cudaSuccess;
  const unsigned warps_per_block = 8;
  const unsigned nblocks = ceil_div(B * N, warps_per_block) < unsigned(max_blocks) ? ceil_div(B * N, warps_per_block)
                                                                                   : unsigned(max_blocks);
  VTP_LAUNCH(tome_normalize_kernel<T>, nblocks, warps_per_block * kWarpSize, 0, stream, metric, batch_stride,
             token_stride, B, N, C, na, nb, wa, wb);
  VTP_LAUNCH(tome_best_kernel<acc_of<T>>, dim3(ceil_div(na, kTomeTile), unsigned(B)), kTomeThreads, 0, stream, wa, wb,
             C, na, nb, class_token, distill_token, best, best_idx);
  VTP_LAUNCH(tome_plan_kernel<acc_of<T>>, unsigned(B), 256, 0, stream, best, best_idx, na, r, class_token, rank, unm,
             src, dst);
  return cudaGetLastError();
}

}  // namespace vtp_ext::cuda
