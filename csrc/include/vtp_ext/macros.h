// Portability macros shared by the CPU kernels, the CUDA kernels compiled by nvcc, and the same
// CUDA kernels compiled as C++ against the CUDA-on-CPU test runtime (CUCPU defined).
#pragma once

#if defined(__CUDACC__) || defined(CUCPU)
#define VTP_HD __host__ __device__
#define VTP_HD_INLINE __host__ __device__ __forceinline__
#else
#define VTP_HD
#define VTP_HD_INLINE inline __attribute__((always_inline))
#endif

#if defined(__CUDACC__) || defined(CUCPU)
// One launch form for every kernel: <<<>>> under nvcc, CUDA_LAUNCH under the CPU runtime.
// Wrap a template kernel name that contains commas in parentheses.
#if defined(CUCPU)
#define VTP_LAUNCH(kernel, grid, block, smem, stream, ...) \
  CUDA_LAUNCH(kernel, grid, block, smem, stream, ##__VA_ARGS__)
#define VTP_DYNAMIC_SHARED(type, name) CUDA_DYNAMIC_SHARED(type, name)
#else
#define VTP_LAUNCH(kernel, grid, block, smem, stream, ...) \
  kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#define VTP_DYNAMIC_SHARED(type, name)                    \
  extern __shared__ __align__(16) unsigned char vtp_dyn_smem_[]; \
  type* name = reinterpret_cast<type*>(vtp_dyn_smem_)
#endif
#endif
