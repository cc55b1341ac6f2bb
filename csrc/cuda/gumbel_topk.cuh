// CUDA kernels and launchers of gumbel_topk (forward, backward), gumbel_noise and philox4x32_10.
// Torch-free: raw pointers, sizes and a stream.
//
// One block per row (grid-stride over rows). A thread owns the columns of the Philox blocks
// tid, tid + blockDim, ... (4 columns per block for float32 noise, 2 for float64), so one Philox
// evaluation serves several columns and every element-wise pass touches only the thread's own
// columns: only the block reductions need barriers. Per-row state (masked logits, the step's values,
// the upstream gradient, the accumulated gradient, picked flags) lives in shared memory when it fits,
// else in a global scratch row; the single-mode backward keeps its sqrt(k) checkpoints and one
// segment of softmaxes in global scratch. The noise and the picks are bit-identical to the CPU
// kernels (vtp_ext/gumbel_math.h; the argmax reduction breaks ties to the lower index).
// Rows holding NaN or +inf logits set *bad (the glue raises) and produce unspecified values.
#pragma once
#include <cfloat>
#include <cmath>

#include "cuda/block_reduce.cuh"
#include "cuda/common.cuh"
#include "cuda/segmented_topk.cuh"
#include "vtp_ext/gumbel_math.h"
#include "vtp_ext/select_math.h"

namespace vtp_ext::cuda {

constexpr int kGumbelThreads = kTopkThreads;  // the radix select and block scan assume this size
constexpr int kGumbelMaxBlocks = 65535;
constexpr int64_t kGumbelSmemBytes = 40 * 1024;

template <typename acc_t> struct AccLimits;
template <> struct AccLimits<float> {
  __device__ static float tiny() { return FLT_MIN; }
  __device__ static float neg_inf() { return -INFINITY; }
};
template <> struct AccLimits<double> {
  __device__ static double tiny() { return DBL_MIN; }
  __device__ static double neg_inf() { return -HUGE_VAL; }
};

// Visits the columns this thread owns: f(j, noise_lane) for the kPerBlock columns of every owned block.
template <typename acc_t, typename F>
__device__ __forceinline__ void for_own_columns(int64_t N, F&& f) {
  constexpr int kPer = GumbelNoise<acc_t>::kPerBlock;
  const int64_t blocks = (N + kPer - 1) / kPer;
  for (int64_t blk = threadIdx.x; blk < blocks; blk += blockDim.x) {
#pragma unroll
    for (int w = 0; w < kPer; ++w) {
      const int64_t j = blk * kPer + w;
      if (j < N) f(j, blk, w);
    }
  }
}

// Per-row buffers, in shared memory or in the row's slice of the global scratch.
template <typename acc_t>
struct RowBuffers {
  acc_t* a[4];
  uint8_t* picked;
};

template <typename acc_t>
__device__ __forceinline__ RowBuffers<acc_t> row_buffers(unsigned char* smem, bool in_smem, acc_t* scratch,
                                                         uint8_t* picked_scratch, int64_t row, int64_t N,
                                                         int n_arrays) {
  RowBuffers<acc_t> r{};
  acc_t* base = in_smem ? reinterpret_cast<acc_t*>(smem) : scratch + row * n_arrays * N;
  for (int i = 0; i < n_arrays; ++i) r.a[i] = base + i * N;
  if (in_smem) r.picked = reinterpret_cast<uint8_t*>(smem + sizeof(acc_t) * n_arrays * N);
  else if (picked_scratch != nullptr) r.picked = picked_scratch + row * N;
  return r;
}

// Loads the thread's logits of a row into lz (accumulation type); flags NaN and +inf.
template <typename T, typename acc_t>
__device__ __forceinline__ void load_row(const T* logits, int64_t rs, int64_t cs, int64_t row, int64_t N, acc_t* lz,
                                         int32_t* bad) {
  for_own_columns<acc_t>(N, [&](int64_t j, int64_t, int) {
    const acc_t v = to_acc(logits[row * rs + j * cs]);
    if (!(v == v) || v == -AccLimits<acc_t>::neg_inf()) atomicOr(bad, 1);
    lz[j] = v;
  });
}

// One sequential step: z = lz + noise(step) over the thread's columns (lz is -inf where picked), and the
// block's argmax over the unpicked columns (ties and an all -inf remainder: the lowest index).
template <typename acc_t>
__device__ __forceinline__ ArgMax<acc_t> sequential_step(uint64_t seed, int64_t row, int64_t step, int64_t N,
                                                         const acc_t* lz, acc_t* z, const uint8_t* picked,
                                                         acc_t* slot_v, int32_t* slot_j) {
  using G = GumbelNoise<acc_t>;
  ArgMax<acc_t> best{AccLimits<acc_t>::neg_inf(), INT32_MAX};
  Philox4x32 p{};
  int64_t last_blk = -1;
  for_own_columns<acc_t>(N, [&](int64_t j, int64_t blk, int w) {
    if (blk != last_blk) {
      p = noise_block(seed, row, step, uint32_t(blk));
      last_blk = blk;
    }
    const acc_t v = G::from_block(p, w) + lz[j];  // the CPU kernel's order of operands
    z[j] = v;
    if (!picked[j]) best = better(best, ArgMax<acc_t>{v, int32_t(j)});
  });
  return block_argmax(best, slot_v, slot_j);
}

template <typename T>
__global__ void __launch_bounds__(kGumbelThreads)
gumbel_sequential_fwd_kernel(const T* __restrict__ logits, int64_t rs, int64_t cs, const int64_t* __restrict__ k,
                             T* __restrict__ mask, int64_t B, int64_t N, uint64_t seed, bool in_smem,
                             acc_of<T>* scratch, uint8_t* picked_scratch, int32_t* bad) {
  using acc_t = acc_of<T>;
  __shared__ acc_t slot_v[kGumbelThreads / kWarpSize];
  __shared__ int32_t slot_j[kGumbelThreads / kWarpSize];
  VTP_DYNAMIC_SHARED(unsigned char, smem);
  for (int64_t row = blockIdx.x; row < B; row += gridDim.x) {
    const RowBuffers<acc_t> buf = row_buffers<acc_t>(smem, in_smem, scratch, picked_scratch, row, N, 2);
    acc_t *lz = buf.a[0], *z = buf.a[1];
    load_row(logits, rs, cs, row, N, lz, bad);
    for_own_columns<acc_t>(N, [&](int64_t j, int64_t, int) {
      buf.picked[j] = 0;
      mask[row * N + j] = from_acc<T>(acc_t(0));
    });
    const int64_t steps = k[row];
    for (int64_t t = 0; t < steps; ++t) {
      const ArgMax<acc_t> pick = sequential_step(seed, row, t, N, lz, z, buf.picked, slot_v, slot_j);
      // Only the owner of a column reads its state, so the owner updates it without a barrier.
      for_own_columns<acc_t>(N, [&](int64_t j, int64_t, int) {
        if (j == pick.j) {
          buf.picked[j] = 1;
          lz[j] = AccLimits<acc_t>::neg_inf();
          mask[row * N + j] = from_acc<T>(acc_t(1));
        }
      });
    }
    __syncthreads();  // shared buffers are reused by the next row
  }
}

template <typename T>
__global__ void __launch_bounds__(kGumbelThreads)
gumbel_sequential_bwd_kernel(const T* __restrict__ grad, int64_t grs, int64_t gcs, const T* __restrict__ logits,
                             int64_t rs, int64_t cs, const int64_t* __restrict__ k, T* __restrict__ out, int64_t B,
                             int64_t N, acc_of<T> inv_tau, uint64_t seed, bool training, bool in_smem,
                             acc_of<T>* scratch, uint8_t* picked_scratch, int32_t* bad) {
  using acc_t = acc_of<T>;
  __shared__ acc_t slot_v[kGumbelThreads / kWarpSize], slot_w[kGumbelThreads / kWarpSize];
  __shared__ int32_t slot_j[kGumbelThreads / kWarpSize];
  VTP_DYNAMIC_SHARED(unsigned char, smem);
  for (int64_t row = blockIdx.x; row < B; row += gridDim.x) {
    const RowBuffers<acc_t> buf = row_buffers<acc_t>(smem, in_smem, scratch, picked_scratch, row, N, 4);
    acc_t *lz = buf.a[0], *z = buf.a[1], *g = buf.a[2], *acc = buf.a[3];
    load_row(logits, rs, cs, row, N, lz, bad);
    for_own_columns<acc_t>(N, [&](int64_t j, int64_t, int) {
      buf.picked[j] = 0;
      g[j] = to_acc(grad[row * grs + j * gcs]);
      acc[j] = 0;
    });
    const int64_t steps = training ? k[row] : 0;  // eval: zero gradient (the logits are still checked)
    for (int64_t t = 0; t < steps; ++t) {
      const ArgMax<acc_t> pick = sequential_step(seed, row, t, N, lz, z, buf.picked, slot_v, slot_j);
      const acc_t m = pick.v;
      if (m != AccLimits<acc_t>::neg_inf()) {  // block-uniform
        acc_t sum = 0, dot = 0;
        for_own_columns<acc_t>(N, [&](int64_t j, int64_t, int) {
          const acc_t e = exp_nonpositive((z[j] - m) * inv_tau);  // 0 where picked (z = -inf)
          z[j] = e;
          sum += e;
          dot += e * g[j];
        });
        block_sum2(sum, dot, slot_v, slot_w);
        const acc_t inv = acc_t(1) / sum, centre = dot * inv;
        for_own_columns<acc_t>(N, [&](int64_t j, int64_t, int) { acc[j] += z[j] * inv * (g[j] - centre); });
      }
      for_own_columns<acc_t>(N, [&](int64_t j, int64_t, int) {
        if (j == pick.j) {
          buf.picked[j] = 1;
          lz[j] = AccLimits<acc_t>::neg_inf();
        }
      });
    }
    for_own_columns<acc_t>(N, [&](int64_t j, int64_t, int) { out[row * N + j] = from_acc<T>(acc[j] * inv_tau); });
    __syncthreads();
  }
}

// Top-k of (logits + noise of step 0) -- or of the logits alone (eval) -- as a 0/1 mask; ties to the
// lower index through segmented_topk's radix select and ordered compaction.
template <typename acc_t>
struct RowKeys {
  const acc_t* z;
  __device__ __forceinline__ rank_key_t<acc_t> operator()(int64_t i) const { return rank_key(z[i], true); }
};

template <typename T>
__global__ void __launch_bounds__(kGumbelThreads)
gumbel_topk_mask_kernel(const T* __restrict__ logits, int64_t rs, int64_t cs, const int64_t* __restrict__ k,
                        T* __restrict__ mask, int64_t B, int64_t N, uint64_t seed, bool add_noise, bool in_smem,
                        acc_of<T>* scratch, int32_t* bad) {
  using acc_t = acc_of<T>;
  using key_t = rank_key_t<acc_t>;
  using G = GumbelNoise<acc_t>;
  __shared__ unsigned hist[256];
  __shared__ unsigned warp_sums[kTopkWarps];
  VTP_DYNAMIC_SHARED(unsigned char, smem);
  for (int64_t row = blockIdx.x; row < B; row += gridDim.x) {
    acc_t* z = in_smem ? reinterpret_cast<acc_t*>(smem) : scratch + row * N;
    load_row(logits, rs, cs, row, N, z, bad);
    if (add_noise) {
      for_own_columns<acc_t>(N, [&](int64_t j, int64_t blk, int w) {
        z[j] = G::from_block(noise_block(seed, row, 0, uint32_t(blk)), w) + z[j];
      });
    }
    const unsigned kk = unsigned(k[row]);
    T* out = mask + row * N;
    if (kk == 0 || kk == N) {  // block-uniform
      for (int64_t j = threadIdx.x; j < N; j += blockDim.x) out[j] = from_acc<T>(acc_t(kk == 0 ? 0 : 1));
      __syncthreads();
      continue;
    }
    unsigned need_eq = 0;
    const RowKeys<acc_t> keys{z};
    const key_t threshold = radix_select<key_t>(keys, N, kk, hist, &need_eq);  // syncs before reading z
    unsigned eq_seen = 0;
    for (int64_t c = 0; c < N; c += blockDim.x) {
      const int64_t i = c + threadIdx.x;
      const bool valid = i < N;
      const key_t key = valid ? keys(i) : key_t(0);
      const unsigned gt = valid && key > threshold, eq = valid && key == threshold;
      unsigned chunk;
      const unsigned before = block_exclusive_scan(eq, warp_sums, &chunk);
      if (valid) out[i] = from_acc<T>(acc_t(gt || (eq && eq_seen + before < need_eq) ? 1 : 0));
      eq_seen += chunk;
    }
    __syncthreads();
  }
}

// Single mode backward (see the CPU kernel for the recursion): per row, state buffers alpha, alpha_bar,
// g, z (shared or global scratch) and, in global scratch, ceil(k / c) checkpoints of alpha and c
// softmaxes, c = ceil(sqrt(k)).
template <typename acc_t>
__device__ void softmax_tempered_row(const acc_t* v, int64_t N, acc_t inv_tau, acc_t* p, acc_t* slot_a,
                                     acc_t* slot_b) {
  acc_t m = AccLimits<acc_t>::neg_inf();
  for_own_columns<acc_t>(N, [&](int64_t j, int64_t, int) { m = v[j] > m ? v[j] : m; });
  m = block_max(m, slot_a);
  if (m == AccLimits<acc_t>::neg_inf()) {  // block-uniform
    for_own_columns<acc_t>(N, [&](int64_t j, int64_t, int) { p[j] = 0; });
    return;
  }
  acc_t sum = 0, unused = 0;
  for_own_columns<acc_t>(N, [&](int64_t j, int64_t, int) {
    p[j] = exp_nonpositive((v[j] - m) * inv_tau);
    sum += p[j];
  });
  block_sum2(sum, unused, slot_a, slot_b);
  for_own_columns<acc_t>(N, [&](int64_t j, int64_t, int) { p[j] /= sum; });  // p <= 1 (see log_keep)
}

template <typename acc_t>
__device__ __forceinline__ void soft_remove_row(acc_t* alpha, const acc_t* p, int64_t N) {
  for_own_columns<acc_t>(N, [&](int64_t j, int64_t, int) { alpha[j] += log_keep(p[j], AccLimits<acc_t>::tiny()); });
}

template <typename T>
__global__ void __launch_bounds__(kGumbelThreads)
gumbel_single_bwd_kernel(const T* __restrict__ grad, int64_t grs, int64_t gcs, const T* __restrict__ logits,
                         int64_t rs, int64_t cs, const int64_t* __restrict__ k, T* __restrict__ out, int64_t B,
                         int64_t N, acc_of<T> inv_tau, uint64_t seed, bool training, bool in_smem,
                         acc_of<T>* scratch, acc_of<T>* history, int64_t history_rows, int32_t* bad) {
  using acc_t = acc_of<T>;
  using G = GumbelNoise<acc_t>;
  __shared__ acc_t slot_a[kGumbelThreads / kWarpSize], slot_b[kGumbelThreads / kWarpSize];
  VTP_DYNAMIC_SHARED(unsigned char, smem);
  for (int64_t row = blockIdx.x; row < B; row += gridDim.x) {
    const RowBuffers<acc_t> buf = row_buffers<acc_t>(smem, in_smem, scratch, nullptr, row, N, 4);
    acc_t *alpha = buf.a[0], *alpha_bar = buf.a[1], *g = buf.a[2], *z = buf.a[3];
    load_row(logits, rs, cs, row, N, alpha, bad);
    for_own_columns<acc_t>(N, [&](int64_t j, int64_t blk, int w) {
      alpha[j] = G::from_block(noise_block(seed, row, 0, uint32_t(blk)), w) + alpha[j];
      g[j] = to_acc(grad[row * grs + j * gcs]);
      alpha_bar[j] = 0;
    });
    const int64_t kk = training ? k[row] : 0;
    if (kk > 0) {  // block-uniform
      const int64_t c = ceil_sqrt(kk), segments = (kk + c - 1) / c;
      acc_t* checkpoints = history + row * history_rows * N;
      acc_t* probs = checkpoints + segments * N;
      for (int64_t step = 0; step <= (segments - 1) * c; ++step) {
        if (step % c == 0) {
          acc_t* ck = checkpoints + (step / c) * N;
          for_own_columns<acc_t>(N, [&](int64_t j, int64_t, int) { ck[j] = alpha[j]; });
        }
        if (step == (segments - 1) * c) break;
        softmax_tempered_row(alpha, N, inv_tau, z, slot_a, slot_b);
        soft_remove_row(alpha, z, N);
      }
      for (int64_t seg = segments - 1; seg >= 0; --seg) {
        const int64_t j0 = seg * c, j1 = j0 + c < kk ? j0 + c : kk;
        const acc_t* ck = checkpoints + seg * N;
        for_own_columns<acc_t>(N, [&](int64_t j, int64_t, int) { alpha[j] = ck[j]; });
        for (int64_t s = j0; s < j1; ++s) {
          acc_t* p = probs + (s - j0) * N;
          softmax_tempered_row(alpha, N, inv_tau, p, slot_a, slot_b);
          if (s + 1 < j1) soft_remove_row(alpha, p, N);
        }
        for (int64_t s = j1 - 1; s >= j0; --s) {
          const acc_t* p = probs + (s - j0) * N;
          acc_t dot = 0, unused = 0;
          for_own_columns<acc_t>(N, [&](int64_t j, int64_t, int) {
            const acc_t keep = acc_t(1) - p[j];
            z[j] = g[j] - zero_unless(keep > AccLimits<acc_t>::tiny(), alpha_bar[j] / keep);
            dot += p[j] * z[j];
          });
          block_sum2(dot, unused, slot_a, slot_b);
          for_own_columns<acc_t>(N, [&](int64_t j, int64_t, int) { alpha_bar[j] += inv_tau * p[j] * (z[j] - dot); });
        }
      }
    }
    for_own_columns<acc_t>(N, [&](int64_t j, int64_t, int) { out[row * N + j] = from_acc<T>(alpha_bar[j]); });
    __syncthreads();
  }
}

template <typename acc_t>
__global__ void __launch_bounds__(kGumbelThreads)
gumbel_noise_kernel(acc_t* __restrict__ out, int64_t B, int64_t N, uint64_t seed, int64_t step) {
  using G = GumbelNoise<acc_t>;
  const int64_t blocks = (N + G::kPerBlock - 1) / G::kPerBlock;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < B * blocks;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = e / blocks, blk = e - row * blocks;
    const Philox4x32 p = noise_block(seed, row, step, uint32_t(blk));
#pragma unroll
    for (int w = 0; w < G::kPerBlock; ++w) {
      const int64_t j = blk * G::kPerBlock + w;
      if (j < N) out[row * N + j] = G::from_block(p, w);
    }
  }
}

__global__ void __launch_bounds__(kGumbelThreads)
philox_kernel(const int64_t* __restrict__ counter, const int64_t* __restrict__ key, int64_t* __restrict__ out,
              int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const Philox4x32 r = philox4x32_10(uint32_t(counter[4 * i]), uint32_t(counter[4 * i + 1]),
                                       uint32_t(counter[4 * i + 2]), uint32_t(counter[4 * i + 3]),
                                       uint32_t(key[2 * i]), uint32_t(key[2 * i + 1]));
#pragma unroll
    for (int w = 0; w < 4; ++w) out[4 * i + w] = int64_t(r.v[w]);
  }
}

// ------------------------------------------------------------------------------------------ launchers
// Shared-memory plan of the per-row kernels: `arrays` accumulation-type rows (+ picked flags).
struct GumbelLaunchPlan {
  bool in_smem;
  int64_t smem_bytes;
};

template <typename acc_t>
GumbelLaunchPlan plan_gumbel_launch(int64_t N, int arrays, bool flags, int64_t budget = kGumbelSmemBytes) {
  const int64_t bytes = (int64_t(sizeof(acc_t)) * arrays + (flags ? 1 : 0)) * N;
  return bytes <= budget ? GumbelLaunchPlan{true, bytes} : GumbelLaunchPlan{false, 0};
}

inline unsigned gumbel_blocks(int64_t rows, int max_blocks) {
  return rows < max_blocks ? unsigned(rows) : unsigned(max_blocks);
}

template <typename T>
cudaError_t launch_gumbel_topk_fwd(const T* logits, int64_t rs, int64_t cs, const int64_t* k, T* mask, int64_t B,
                                   int64_t N, uint64_t seed, bool sequential, bool training,
                                   const GumbelLaunchPlan& lp, acc_of<T>* scratch, uint8_t* picked_scratch,
                                   int32_t* bad, cudaStream_t stream, int max_blocks = kGumbelMaxBlocks) {
  if (B * N == 0) return cudaSuccess;
  if (sequential && training) {
    VTP_LAUNCH((gumbel_sequential_fwd_kernel<T>), gumbel_blocks(B, max_blocks), kGumbelThreads,
               size_t(lp.smem_bytes), stream, logits, rs, cs, k, mask, B, N, seed, lp.in_smem, scratch,
               picked_scratch, bad);
  } else {
    VTP_LAUNCH((gumbel_topk_mask_kernel<T>), gumbel_blocks(B, max_blocks), kGumbelThreads, size_t(lp.smem_bytes),
               stream, logits, rs, cs, k, mask, B, N, seed, training, lp.in_smem, scratch, bad);
  }
  return cudaGetLastError();
}

// history: single mode only, [B, history_rows, N] (checkpoints + one segment of softmaxes).
template <typename T>
cudaError_t launch_gumbel_topk_bwd(const T* grad, int64_t grs, int64_t gcs, const T* logits, int64_t rs, int64_t cs,
                                   const int64_t* k, T* out, int64_t B, int64_t N, double tau, uint64_t seed,
                                   bool sequential, bool training, const GumbelLaunchPlan& lp, acc_of<T>* scratch,
                                   uint8_t* picked_scratch, acc_of<T>* history, int64_t history_rows, int32_t* bad,
                                   cudaStream_t stream, int max_blocks = kGumbelMaxBlocks) {
  if (B * N == 0) return cudaSuccess;
  const acc_of<T> inv_tau = acc_of<T>(1) / acc_of<T>(tau);
  if (sequential) {
    VTP_LAUNCH((gumbel_sequential_bwd_kernel<T>), gumbel_blocks(B, max_blocks), kGumbelThreads,
               size_t(lp.smem_bytes), stream, grad, grs, gcs, logits, rs, cs, k, out, B, N, inv_tau, seed, training,
               lp.in_smem, scratch, picked_scratch, bad);
  } else {
    VTP_LAUNCH((gumbel_single_bwd_kernel<T>), gumbel_blocks(B, max_blocks), kGumbelThreads, size_t(lp.smem_bytes),
               stream, grad, grs, gcs, logits, rs, cs, k, out, B, N, inv_tau, seed, training, lp.in_smem, scratch,
               history, history_rows, bad);
  }
  return cudaGetLastError();
}

template <typename acc_t>
cudaError_t launch_gumbel_noise(acc_t* out, int64_t B, int64_t N, uint64_t seed, int64_t step, cudaStream_t stream,
                                int max_blocks = kGumbelMaxBlocks) {
  constexpr int kPer = GumbelNoise<acc_t>::kPerBlock;
  const int64_t work = B * ((N + kPer - 1) / kPer);
  if (work == 0) return cudaSuccess;
  const unsigned want = ceil_div(work, kGumbelThreads);
  VTP_LAUNCH((gumbel_noise_kernel<acc_t>), want < unsigned(max_blocks) ? want : unsigned(max_blocks), kGumbelThreads,
             0, stream, out, B, N, seed, step);
  return cudaGetLastError();
}

inline cudaError_t launch_philox(const int64_t* counter, const int64_t* key, int64_t* out, int64_t n,
                                 cudaStream_t stream, int max_blocks = kGumbelMaxBlocks) {
  if (n == 0) return cudaSuccess;
  const unsigned want = ceil_div(n, kGumbelThreads);
  VTP_LAUNCH(philox_kernel, want < unsigned(max_blocks) ? want : unsigned(max_blocks), kGumbelThreads, 0, stream,
             counter, key, out, n);
  return cudaGetLastError();
}

}  // namespace vtp_ext::cuda
