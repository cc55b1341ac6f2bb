// Block-wide reductions whose result every thread receives, in a fixed combination order (xor
// butterfly within warps, then warps in index order), so the result does not depend on scheduling.
// Every thread of the block must call them (they contain __syncthreads). `slots` are shared arrays
// of at least blockDim.x / 32 entries.
#pragma once
#include "cuda/common.cuh"

namespace vtp_ext::cuda {

// Largest v; ties (and a block of -inf) resolve to the smallest j. Threads without a candidate pass
// j = INT32_MAX and any v.
template <typename acc_t>
struct ArgMax {
  acc_t v;
  int32_t j;
};

template <typename acc_t>
__device__ __forceinline__ ArgMax<acc_t> better(ArgMax<acc_t> a, ArgMax<acc_t> b) {
  if (b.j == INT32_MAX) return a;
  if (a.j == INT32_MAX) return b;
  return (b.v > a.v || (b.v == a.v && b.j < a.j)) ? b : a;
}

template <typename acc_t>
__device__ ArgMax<acc_t> block_argmax(ArgMax<acc_t> x, acc_t* slot_v, int32_t* slot_j) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1) {
    const ArgMax<acc_t> other{__shfl_xor_sync(0xffffffffu, x.v, o), __shfl_xor_sync(0xffffffffu, x.j, o)};
    x = lane < (lane ^ o) ? better(x, other) : better(other, x);
  }
  if (lane == 0) {
    slot_v[warp] = x.v;
    slot_j[warp] = x.j;
  }
  __syncthreads();
  ArgMax<acc_t> r{slot_v[0], slot_j[0]};
  for (int w = 1; w < int(blockDim.x) / kWarpSize; ++w) r = better(r, ArgMax<acc_t>{slot_v[w], slot_j[w]});
  __syncthreads();
  return r;
}

// (sum of a, sum of b) over the block.
template <typename acc_t>
__device__ void block_sum2(acc_t& a, acc_t& b, acc_t* slot_a, acc_t* slot_b) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  a = warp_sum(a);
  b = warp_sum(b);
  if (lane == 0) {
    slot_a[warp] = a;
    slot_b[warp] = b;
  }
  __syncthreads();
  a = slot_a[0];
  b = slot_b[0];
  for (int w = 1; w < int(blockDim.x) / kWarpSize; ++w) {
    a += slot_a[w];
    b += slot_b[w];
  }
  __syncthreads();
}

template <typename acc_t>
__device__ acc_t block_max(acc_t v, acc_t* slot) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1) {
    const acc_t other = __shfl_xor_sync(0xffffffffu, v, o);
    v = other > v ? other : v;
  }
  if (lane == 0) slot[warp] = v;
  __syncthreads();
  acc_t r = slot[0];
  for (int w = 1; w < int(blockDim.x) / kWarpSize; ++w) r = slot[w] > r ? slot[w] : r;
  __syncthreads();
  return r;
}

}  // namespace vtp_ext::cuda
