// What the torch-facing CUDA glue needs beyond the stable API: the namespace and dispatch key it
// registers under, the current stream, and launch-error checks.
//
// The same glue files are compiled twice: by nvcc into vtp_ext._C (namespace vtp_ext, key CUDA), and
// as C++ against the CUDA-on-CPU runtime into the test module (CUCPU defined: namespace
// vtp_ext_cucpu, key CPU, tensors on the CPU, streams ignored). So the glue is tested together with
// the kernels.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdlib>
#include <string>
#include <torch/csrc/stable/accelerator.h>

#include "vtp_ext/stable_utils.h"

#if defined(CUCPU)
#define VTP_CUDA_NS vtp_ext_cucpu
#define VTP_CUDA_KEY CPU
#else
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#define VTP_CUDA_NS vtp_ext
#define VTP_CUDA_KEY CUDA
#endif

namespace vtp_ext::cuda {

inline void check_device(const Tensor& t, const char* op, const char* arg) {
#if defined(CUCPU)
  STD_TORCH_CHECK(t.is_cpu(), op, ": ", arg, " must be a CPU tensor for the CUDA-on-CPU test kernels");
#else
  STD_TORCH_CHECK(t.is_cuda(), op, ": ", arg, " must be a CUDA tensor for the CUDA kernel");
#endif
}

// Sets the current device to t's for the lifetime of the guard (no-op on the CPU runtime).
class DeviceScope {
 public:
  explicit DeviceScope(const Tensor& t)
#if !defined(CUCPU)
      : guard_(t.get_device_index())
#endif
  {
    (void)t;
  }

 private:
#if !defined(CUCPU)
  torch::stable::accelerator::DeviceGuard guard_;
#endif
};

inline cudaStream_t current_stream(const Tensor& t) {
#if defined(CUCPU)
  (void)t;
  return nullptr;
#else
  void* stream = nullptr;
  TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(t.get_device_index(), &stream));
  return static_cast<cudaStream_t>(stream);
#endif
}

// Upper bound on a kernel's grid. Under the CPU runtime, VTP_CUCPU_MAX_BLOCKS lowers it so tests reach
// the grid-stride loops with small inputs; on a GPU it is the kernel's own default.
inline int max_blocks(int default_blocks) {
#if defined(CUCPU)
  if (const char* env = std::getenv("VTP_CUCPU_MAX_BLOCKS")) {
    const int v = std::atoi(env);
    if (v > 0 && v < default_blocks) return v;
  }
#endif
  return default_blocks;
}

// A switch tests flip to reach a kernel's alternative path with small inputs (CPU runtime only).
inline bool test_flag(const char* name) {
#if defined(CUCPU)
  const char* env = std::getenv(name);
  return env != nullptr && *env != '\0' && *env != '0';
#else
  (void)name;
  return false;
#endif
}

// Calls f(T{}) with the CUDA storage type of a floating (or, with kUint8, also uint8) dtype.
template <bool kUint8 = false, typename F>
void dispatch_types(ScalarType t, F&& f) {
  switch (t) {
    case ScalarType::Float: f(float{}); return;
    case ScalarType::Double: f(double{}); return;
    case ScalarType::Half: f(__half{}); return;
    case ScalarType::BFloat16: f(__nv_bfloat16{}); return;
    default: break;
  }
  if constexpr (kUint8) {
    if (t == ScalarType::Byte) return f(uint8_t{});
  }
  STD_TORCH_CHECK(false, "vtp_ext: unsupported dtype ", dtype_name(t));
}

template <typename T> const T* cptr(const Tensor& t) { return static_cast<const T*>(t.const_data_ptr()); }
template <typename T> T* mptr(const Tensor& t) { return static_cast<T*>(t.mutable_data_ptr()); }

inline void check_launch(cudaError_t err, const char* op) {
  STD_TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

// A kernel-specific size limit (shared-memory budget, ...). Under the CPU runtime the environment
// variable `name` can lower it so tests reach the fallback paths with small inputs.
inline int64_t cucpu_limit(const char* name, int64_t default_value) {
#if defined(CUCPU)
  if (const char* env = std::getenv(name)) {
    const long long v = std::atoll(env);
    if (v >= 0 && v < default_value) return v;
  }
#endif
  (void)name;
  return default_value;
}

// Raises `message` if a kernel flagged bad input data in `flag` (a one-element int32 tensor on the
// kernels' device, zero before the launch). Reading it synchronises with the stream: this is how ops
// whose validity depends on device data (index ranges, NaN) fail with an error instead of a device assert.
inline void check_device_flag(const Tensor& flag, const std::string& message) {
  const Tensor host =
      flag.is_cpu() ? flag : torch::stable::to(flag, torch::stable::Device(torch::headeronly::DeviceType::CPU));
  STD_TORCH_CHECK(*static_cast<const int32_t*>(host.const_data_ptr()) == 0, message);
}

}  // namespace vtp_ext::cuda
