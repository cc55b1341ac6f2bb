// CUDA kernels and launchers of segmented_topk. Torch-free: raw pointers, sizes and a stream.
//
// One block per (row, segment) task (grid-stride over tasks). Every entry's rank key
// (vtp_ext/select_math.h, the CPU kernel's) is loaded once into shared memory when the longest segment
// fits the key budget (several thousand entries), else recomputed from global memory on every pass.
//  1. Radix select, MSB first, 8 bits per pass: the key T of the k-th best entry and how many entries
//     equal to T are still needed.
//  2. One ordered compaction pass (block scan over chunks of the segment) picks every key > T and the
//     first "needed" keys == T by index -- so ties go to the lower index, exactly as on the CPU.
//  3. order="index": the compaction already emits in index order, straight to the output.
//     order="score": the picks are bitonic-sorted by (key desc, index asc) in shared memory, or, when k
//     exceeds the sort budget, ranked by counting in a global scratch row (O(k^2), the rare fallback).
// Warp shuffles and ballots are executed by every warp of the block (uniform control flow).
#pragma once
#include "cuda/common.cuh"
#include "vtp_ext/select_math.h"

namespace vtp_ext::cuda {

constexpr int kTopkThreads = 256;
constexpr int kTopkWarps = kTopkThreads / kWarpSize;
constexpr int kTopkMaxBlocks = 65535;
// Dynamic shared memory budgets (together below the 48 KiB a launch gets without opting in).
constexpr int64_t kTopkKeyBytes = 24 * 1024;
constexpr int64_t kTopkSortBytes = 16 * 1024;

template <typename key_t>
struct TopkSortEntry {
  key_t key;
  uint32_t idx;
};

// Exclusive block-wide prefix sum of v; *total gets the block's sum. Every thread must call it.
__device__ __forceinline__ unsigned block_exclusive_scan(unsigned v, unsigned* warp_sums, unsigned* total) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  unsigned incl = v;
#pragma unroll
  for (int o = 1; o < kWarpSize; o <<= 1) {
    const unsigned t = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += t;
  }
  if (lane == kWarpSize - 1) warp_sums[warp] = incl;
  __syncthreads();
  unsigned before = 0, all = 0;
#pragma unroll
  for (int w = 0; w < kTopkWarps; ++w) {
    const unsigned s = warp_sums[w];
    if (w < warp) before += s;
    all += s;
  }
  __syncthreads();  // warp_sums is reused by the next scan
  *total = all;
  return before + incl - v;
}

// Reads the rank keys of one segment, from shared memory or from the scores themselves.
template <typename T, bool kKeysInSmem>
struct SegmentKeys {
  using key_t = rank_key_t<acc_of<T>>;
  const key_t* smem;
  const T* seg;
  int64_t col_stride;
  bool largest;
  __device__ __forceinline__ key_t operator()(int64_t i) const {
    if constexpr (kKeysInSmem) return smem[i];
    else return rank_key(to_acc(seg[i * col_stride]), largest);
  }
};

// Radix select: the key of the k-th best entry (1 <= k <= n) and, in *need_eq, how many entries with
// exactly that key belong to the top k. hist: 256 counters in shared memory.
template <typename key_t, typename Keys>
__device__ key_t radix_select(const Keys& keys, int64_t n, unsigned k, unsigned* hist, unsigned* need_eq) {
  const int lane = threadIdx.x % kWarpSize;
  key_t prefix = 0, mask = 0;
  unsigned remaining = k;
  for (int shift = int(sizeof(key_t)) * 8 - 8; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const key_t key = keys(i);
      if ((key & mask) == prefix) atomicAdd(hist + unsigned((key >> shift) & 255u), 1u);
    }
    __syncthreads();
    // Every warp finds the digit (redundantly, no broadcast needed): lane l owns the 8 digits
    // 255-8l .. 248-8l, best first; a scan over lanes finds the lane whose digits reach `remaining`.
    unsigned mine = 0;
#pragma unroll
    for (int q = 0; q < 8; ++q) mine += hist[255 - 8 * lane - q];
    unsigned incl = mine;
#pragma unroll
    for (int o = 1; o < kWarpSize; o <<= 1) {
      const unsigned t = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += t;
    }
    const unsigned reach = __ballot_sync(0xffffffffu, incl >= remaining);
    const int owner = __ffs(int(reach)) - 1;  // exists: the candidates number at least `remaining`
    unsigned digit = 0, left = remaining;
    if (lane == owner) {
      unsigned cum = incl - mine;
      for (int q = 0; q < 8; ++q) {
        const unsigned d = 255u - 8u * unsigned(lane) - unsigned(q), h = hist[d];
        if (cum + h >= remaining) {
          digit = d;
          left = remaining - cum;
          break;
        }
        cum += h;
      }
    }
    digit = __shfl_sync(0xffffffffu, digit, owner);
    remaining = __shfl_sync(0xffffffffu, left, owner);
    prefix |= key_t(digit) << shift;
    mask |= key_t(255u) << shift;
    __syncthreads();  // hist is cleared by the next pass
  }
  *need_eq = remaining;
  return prefix;
}

// Bitonic sort of n (a power of two) entries in shared memory, best first.
template <typename key_t>
__device__ void bitonic_sort_best_first(TopkSortEntry<key_t>* buf, unsigned n) {
  for (unsigned size = 2; size <= n; size <<= 1) {
    for (unsigned stride = size / 2; stride > 0; stride >>= 1) {
      for (unsigned t = threadIdx.x; t < n / 2; t += blockDim.x) {
        const unsigned i = 2 * t - (t & (stride - 1)), j = i + stride;
        const TopkSortEntry<key_t> a = buf[i], b = buf[j];
        const bool best_first = (i & size) == 0;
        const bool b_before_a = picked_before(b.key, int64_t(b.idx), a.key, int64_t(a.idx));
        if (best_first == b_before_a) {
          buf[i] = b;
          buf[j] = a;
        }
      }
      __syncthreads();
    }
  }
}

__host__ __device__ inline unsigned next_pow2(uint64_t v) {
  unsigned p = 1;
  while (p < v) p <<= 1;
  return p;
}

template <typename T, bool kKeysInSmem>
__global__ void __launch_bounds__(kTopkThreads)
segmented_topk_kernel(const T* __restrict__ scores, int64_t row_stride, int64_t col_stride,
                      const int64_t* __restrict__ plan, int64_t B, int64_t S, T* __restrict__ values,
                      int64_t* __restrict__ indices, int64_t max_k, int32_t* __restrict__ scratch, bool largest,
                      bool by_index, unsigned sort_capacity, int64_t key_bytes) {
  using key_t = rank_key_t<acc_of<T>>;
  using Entry = TopkSortEntry<key_t>;
  __shared__ unsigned hist[256];
  __shared__ unsigned warp_sums[kTopkWarps];
  VTP_DYNAMIC_SHARED(unsigned char, smem);
  key_t* keys_smem = reinterpret_cast<key_t*>(smem);
  Entry* sort_buf = reinterpret_cast<Entry*>(smem + key_bytes);
  const int64_t* offsets = plan;
  const int64_t* seg_k = plan + S + 1;
  const int64_t* seg_start = seg_k + B * S;

  for (int64_t task = blockIdx.x; task < B * S; task += gridDim.x) {  // uniform per block
    const unsigned k = unsigned(seg_k[task]);
    if (k == 0) continue;
    const int64_t b = task / S, s = task - b * S;
    const int64_t first = offsets[s], n = offsets[s + 1] - first;
    const T* seg = scores + b * row_stride + first * col_stride;
    T* out_v = values + b * max_k + seg_start[task];
    int64_t* out_i = indices + b * max_k + seg_start[task];
    if constexpr (kKeysInSmem) {
      for (int64_t i = threadIdx.x; i < n; i += blockDim.x) keys_smem[i] = rank_key(to_acc(seg[i * col_stride]), largest);
      __syncthreads();
    }
    const SegmentKeys<T, kKeysInSmem> keys{keys_smem, seg, col_stride, largest};

    const bool take_all = k == n;
    unsigned need_eq = 0;
    const key_t threshold = take_all ? key_t(0) : radix_select<key_t>(keys, n, k, hist, &need_eq);
    const unsigned sort_n = next_pow2(k);
    const bool sort_in_smem = !by_index && sort_n <= sort_capacity;
    int32_t* rank_row = scratch != nullptr ? scratch + b * max_k + seg_start[task] : nullptr;

    unsigned eq_seen = 0, picked = 0;
    for (int64_t c = 0; c < n && picked < k; c += blockDim.x) {  // picked is block-uniform
      const int64_t i = c + threadIdx.x;
      const bool valid = i < n;
      const key_t key = valid ? keys(i) : key_t(0);
      const unsigned gt = valid && (take_all || key > threshold);
      const unsigned eq = valid && !take_all && key == threshold;
      unsigned chunk;
      const unsigned before = block_exclusive_scan(gt | (eq << 16), warp_sums, &chunk);
      const unsigned eq_quota = need_eq > eq_seen ? need_eq - eq_seen : 0u;
      const unsigned gt_before = before & 0xFFFFu, eq_before = before >> 16;
      if (gt || (eq && eq_before < eq_quota)) {
        const unsigned pos = picked + gt_before + (eq_before < eq_quota ? eq_before : eq_quota);
        if (by_index) {
          out_v[pos] = seg[i * col_stride];
          out_i[pos] = first + i;
        } else if (sort_in_smem) {
          sort_buf[pos] = Entry{key, uint32_t(i)};
        } else {
          rank_row[pos] = int32_t(i);
        }
      }
      const unsigned chunk_eq = chunk >> 16;
      eq_seen += chunk_eq;
      picked += (chunk & 0xFFFFu) + (chunk_eq < eq_quota ? chunk_eq : eq_quota);
    }
    if (!by_index) {
      if (sort_in_smem) {
        // Sentinels sort behind every real entry (key 0 = NaN has a smaller index than UINT32_MAX).
        for (unsigned r = k + threadIdx.x; r < sort_n; r += blockDim.x) sort_buf[r] = Entry{key_t(0), 0xFFFFFFFFu};
        __syncthreads();
        bitonic_sort_best_first(sort_buf, sort_n);
        for (unsigned r = threadIdx.x; r < k; r += blockDim.x) {
          const uint32_t i = sort_buf[r].idx;
          out_v[r] = seg[int64_t(i) * col_stride];
          out_i[r] = first + int64_t(i);
        }
      } else {
        __syncthreads();  // rank_row complete (global writes of this block are visible after the barrier)
        for (unsigned r = threadIdx.x; r < k; r += blockDim.x) {
          const int64_t i = rank_row[r];
          const key_t key = keys(i);
          unsigned rank = 0;
          for (unsigned q = 0; q < k; ++q) {
            const int64_t j = rank_row[q];
            rank += picked_before(keys(j), j, key, i) ? 1u : 0u;
          }
          out_v[rank] = seg[i * col_stride];
          out_i[rank] = first + i;
        }
      }
    }
    __syncthreads();  // shared memory is reused by the next task
  }
}

// Pads every row behind its selections: index -1, value 0.
template <typename T>
__global__ void __launch_bounds__(kTopkThreads)
topk_pad_kernel(T* __restrict__ values, int64_t* __restrict__ indices, const int64_t* __restrict__ lengths,
                int64_t B, int64_t max_k) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < B * max_k;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = e / max_k;
    if (e - b * max_k >= lengths[b]) {
      values[e] = from_acc<T>(acc_of<T>(0));
      indices[e] = -1;
    }
  }
}

// How a launch uses shared memory; the glue allocates `scratch` ([B, max_k] int32) when needed.
struct TopkLaunchPlan {
  bool keys_in_smem;
  unsigned sort_capacity;  // entries of the shared sort buffer (a power of two, or 0)
  bool needs_scratch;      // some task sorts more than sort_capacity entries
  int64_t key_bytes;       // offset of the sort buffer in dynamic shared memory
  int64_t smem_bytes;
};

template <typename T>
TopkLaunchPlan plan_topk_launch(int64_t max_segment, int64_t max_select, bool by_index,
                                int64_t key_budget = kTopkKeyBytes, int64_t sort_budget = kTopkSortBytes) {
  using key_t = rank_key_t<acc_of<T>>;
  TopkLaunchPlan p{};
  p.keys_in_smem = int64_t(sizeof(key_t)) * max_segment <= key_budget;
  p.key_bytes = p.keys_in_smem ? (int64_t(sizeof(key_t)) * max_segment + 15) / 16 * 16 : 0;
  if (!by_index && max_select > 0) {
    unsigned cap = next_pow2(uint64_t(max_select));
    while (cap > 0 && int64_t(sizeof(TopkSortEntry<key_t>)) * cap > sort_budget) cap >>= 1;
    p.sort_capacity = cap;
    p.needs_scratch = next_pow2(uint64_t(max_select)) > cap;
  }
  p.smem_bytes = p.key_bytes + int64_t(sizeof(TopkSortEntry<key_t>)) * p.sort_capacity;
  return p;
}

// plan: device int64 [offsets (S+1) | clamped k (B*S) | output start (B*S)]; lengths: device [B].
template <typename T>
cudaError_t launch_segmented_topk(const T* scores, int64_t row_stride, int64_t col_stride, const int64_t* plan,
                                  const int64_t* lengths, int64_t B, int64_t S, T* values, int64_t* indices,
                                  int64_t max_k, int32_t* scratch, bool largest, bool by_index,
                                  const TopkLaunchPlan& lp, cudaStream_t stream, int max_blocks = kTopkMaxBlocks) {
  if (B * S > 0) {
    const unsigned blocks = B * S < max_blocks ? unsigned(B * S) : unsigned(max_blocks);
    if (lp.keys_in_smem) {
      VTP_LAUNCH((segmented_topk_kernel<T, true>), blocks, kTopkThreads, size_t(lp.smem_bytes), stream, scores,
                 row_stride, col_stride, plan, B, S, values, indices, max_k, scratch, largest, by_index,
                 lp.sort_capacity, lp.key_bytes);
    } else {
      VTP_LAUNCH((segmented_topk_kernel<T, false>), blocks, kTopkThreads, size_t(lp.smem_bytes), stream, scores,
                 row_stride, col_stride, plan, B, S, values, indices, max_k, scratch, largest, by_index,
                 lp.sort_capacity, lp.key_bytes);
    }
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  if (B * max_k > 0) {
    const unsigned want = ceil_div(B * max_k, kTopkThreads);
    VTP_LAUNCH((topk_pad_kernel<T>), want < unsigned(max_blocks) ? want : unsigned(max_blocks), kTopkThreads, 0,
               stream, values, indices, lengths, B, max_k);
  }
  return cudaGetLastError();
}

}  // namespace vtp_ext::cuda
